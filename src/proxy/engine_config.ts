/**
 * The bridge engine's settings, resolved once with their defaults: every connection of a proxy
 * shares one frozen {@linkcode EngineConfig}, in every mode, so the modes cannot drift apart.
 *
 * @module
 */

import { systemTimers, type Timers } from "../async/timers.ts";
import { BufferPool } from "./buffer_pool.ts";

/** What happens to a connection whose upstream connection dies (`--resume`). */
export type ResumeMode = "off" | "verbatim" | "renumber";

/** Settings of the bridge engine; each unset one takes its default. */
export interface EngineOptions {
  /**
   * Small read-buffer size per direction, in bytes: a pending read pins its buffer, so an idle
   * connection costs this much per side. A read that fills it moves the connection to a large
   * buffer from {@linkcode bufferPool} until its reads turn small again. @default {64}
   */
  initialBufferSize?: number;
  /**
   * Largest read buffer per direction: a partial reply line held back whole (`resume`) may grow
   * the buffer beyond the pool's size up to this. @default {65536}
   */
  maxBufferSize?: number;
  /**
   * Where connections borrow a large read buffer while data flows (16 KiB). `null`: each
   * connection allocates its own when needed. @default {a new pool per resolved config}
   */
  bufferPool?: BufferPool | null;
  /**
   * Most valid REQs forwarded upstream and not yet answered per connection; at the limit the
   * downstream is not read (TCP backpressure holds the client). Exact: a chunk holding more is
   * forwarded in parts. 0: no limit. @default {10000}
   */
  maxInflight?: number;
  /**
   * Close a connection (reason `idle_timeout`) after this many ms with no bytes either way and
   * nothing in flight. 0: never. @default {0}
   */
  idleTimeoutMs?: number;
  /**
   * After the client half-closes with replies still owed, close the connection (reason
   * `half_close_timeout`) once no reply has come for this many ms. 0: wait as long as the
   * upstream keeps the connection open. @default {30000}
   */
  halfCloseTimeoutMs?: number;
  /**
   * After the client half-closes and every REQ is answered, how long to wait (with no bytes
   * from the upstream) for answers to the client's other lines: invalid lines, which servers
   * that answer every line answer too (`NAK 0 ERRDECODE`). Capped by `halfCloseTimeoutMs`.
   * The exchange ends at once when as many such answers came as there were lines.
   * @default {1000}
   */
  lingerMs?: number;
  /**
   * REQs timed at once per connection for the latency histogram; past it REQs are forwarded
   * untimed. 0: no latency timing. Replies are matched to REQs by Seq regardless, for at least
   * `max(maxInflight, this, 1024)` REQs per connection. @default {10000}
   */
  maxTrackedRequests?: number;
  /**
   * `off`: a connection ends with its upstream connection. `verbatim`: a new upstream connection
   * replaces a dead one and the unanswered REQs are sent on it exactly as the client sent them.
   * `renumber`: the same, with Seqs renumbered from 1 on each new upstream connection and the
   * replies' Seqs mapped back. @default {"off"}
   */
  resume?: ResumeMode;
  /**
   * Resume: bytes of unanswered REQ lines kept per connection for replay; while a REQ longer
   * than what is left is unanswered the connection cannot be resumed. @default {1048576}
   */
  retainLimit?: number;
  /**
   * Resume: dial attempts after a refused or timed-out one, per failover (the defaults wait up
   * to about 6 s in all, long enough for a process restart). @default {6}
   */
  reconnectRetries?: number;
  /** Resume: backoff before the first reconnect retry in ms, doubling after each. @default {100} */
  reconnectBackoffMs?: number;
  /** Resume: cap on one reconnect backoff wait in ms. @default {2000} */
  maxReconnectBackoffMs?: number;
  /**
   * Resume: failovers in a row whose new upstream connection died within a second without
   * relaying a reply (a poison REQ, an upstream that accepts and closes); past it the client is
   * closed. @default {4}
   */
  maxFailovers?: number;
  /** Random numbers in [0, 1) for backoff jitter. @default {Math.random} */
  random?: () => number;
  /** Timer functions. @default {systemTimers} */
  timers?: Timers;
}

/** {@linkcode EngineOptions} with every default applied. */
export type EngineConfig = Readonly<Required<EngineOptions>>;

/** Size of the large read buffers a resolved config's pool lends. */
const LARGE_BUFFER = 16384;

/** The defaults of {@linkcode EngineOptions}. */
export const ENGINE_DEFAULTS: EngineConfig = Object.freeze({
  initialBufferSize: 64,
  maxBufferSize: 65536,
  bufferPool: null,
  maxInflight: 10_000,
  idleTimeoutMs: 0,
  halfCloseTimeoutMs: 30_000,
  lingerMs: 1000,
  maxTrackedRequests: 10_000,
  resume: "off",
  retainLimit: 1024 * 1024,
  reconnectRetries: 6,
  reconnectBackoffMs: 100,
  maxReconnectBackoffMs: 2000,
  maxFailovers: 4,
  random: Math.random,
  timers: systemTimers,
});

/**
 * Applies the defaults and checks the values.
 *
 * @throws {RangeError} for a negative, fractional or zero-where-impossible value.
 */
export function resolveEngineConfig(options: EngineOptions = {}): EngineConfig {
  const config: Required<EngineOptions> = { ...ENGINE_DEFAULTS };
  for (const [key, value] of Object.entries(options)) {
    if (value !== undefined) (config as Record<string, unknown>)[key] = value;
  }
  const integers: [keyof EngineOptions, number][] = [
    ["initialBufferSize", 1],
    ["maxBufferSize", 1],
    ["maxInflight", 0],
    ["idleTimeoutMs", 0],
    ["halfCloseTimeoutMs", 0],
    ["lingerMs", 0],
    ["maxTrackedRequests", 0],
    ["retainLimit", 0],
    ["reconnectRetries", 0],
    ["reconnectBackoffMs", 0],
    ["maxReconnectBackoffMs", 0],
    ["maxFailovers", 0],
  ];
  for (const [key, min] of integers) {
    const value = config[key] as number;
    if (!Number.isSafeInteger(value) || value < min) {
      throw new RangeError(`Invalid ${key} ${value}: expected an integer >= ${min}`);
    }
  }
  if (!["off", "verbatim", "renumber"].includes(config.resume)) {
    throw new RangeError(
      `Invalid resume mode "${config.resume}": expected off, verbatim or renumber`,
    );
  }
  config.maxBufferSize = Math.max(config.initialBufferSize, config.maxBufferSize);
  if (options.bufferPool === undefined) {
    config.bufferPool = new BufferPool(Math.min(LARGE_BUFFER, config.maxBufferSize));
  }
  return Object.freeze(config);
}
