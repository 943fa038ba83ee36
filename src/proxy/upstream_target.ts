/**
 * The routing seam between the proxy and the bridge engine: where a connection's upstream
 * connection comes from, for its first dial and for every failover. One upstream today
 * ({@linkcode SingleUpstream}); a set of upstreams with balancing and health is another
 * {@linkcode UpstreamTarget}, and the engine does not change.
 *
 * @module
 */
import { type Address, formatAddress } from "../net/address.ts";
import { dialWithRetry } from "./dial_with_retry.ts";
import { IdleConnections, type IdlePoolCounters } from "./idle_connections.ts";
import type { Logger } from "@logtape/logtape";
import type { Timers } from "../async/timers.ts";
import { UpstreamError, type UpstreamTls } from "./upstream.ts";

/** Options for one {@linkcode UpstreamTarget.dial}. */
export interface TargetDialOptions {
  /** Aborting ends the attempts at once. */
  signal?: AbortSignal;
  /** Attempts after a refused or timed-out one. @default {0} */
  retries?: number;
  /** Backoff before the first retry in ms, doubling after each (jittered). @default {100} */
  backoffMs?: number;
  /** Cap on one backoff wait in ms. @default {5000} */
  maxBackoffMs?: number;
  /** Called before each backoff wait. */
  onRetry?: (retry: number, delayMs: number, error: UpstreamError) => void;
  /** An upstream to pass over when another can take the connection (the one that just died). */
  avoid?: string;
  /**
   * Bytes written first on a new connection, before any TLS handshake (`--send-proxy`'s PROXY
   * header); a connection asked for with one is always dialed, never taken from an idle pool.
   * Unset: none.
   */
  preamble?: Uint8Array;
}

/** A dialed upstream connection and the name of the upstream it goes to. */
export interface TargetConnection {
  conn: Deno.Conn;
  /** The upstream's name for logs and labels (its address). */
  upstream: string;
  /** Per-upstream counters the engine adds the REQs and replies of this connection to. */
  counters?: { requests: number; replies: number };
  /**
   * Called once when this upstream connection ends; `failed`: it failed mid-stream (counts
   * toward ejecting the upstream). Unset: nothing to report.
   */
  release?: (failed: boolean) => void;
  /**
   * Whether the upstream still takes new work (not draining, ejected, down or removed): a shared
   * connection (`--mux`) stops taking clients when it turns false. Unset: always.
   */
  usable?: () => boolean;
  /**
   * Whether the upstream may take new work at all (not draining or removed; it may be down or
   * ejected, and be used when nothing is up). Unset: always.
   */
  accepting?: () => boolean;
  /**
   * A connection taken from an idle pool (`--pool`): the read that was pending on it, to serve
   * before reading again. Unset: a fresh connection.
   */
  rest?: Promise<Uint8Array | null>;
  /**
   * Offers the connection back for the next client (`--pool`), with the read pending on it. True:
   * the pool took it and the lease is released (not failed); false: the caller closes it and
   * releases as usual. Unset: never pooled.
   */
  recycle?: (conn: Deno.Conn, rest: Promise<Uint8Array | null>) => boolean;
}

/** Where upstream connections come from. */
export interface UpstreamTarget {
  /** The upstream(s), for log lines. */
  readonly label: string;
  /** How many upstreams there are (`--mux` opens N connections per upstream). Unset: 1. */
  readonly upstreamCount?: number;
  /**
   * Opens an upstream connection (with `setNoDelay(true)`).
   *
   * @throws {UpstreamError} when every attempt failed or the dial was aborted.
   */
  dial(options?: TargetDialOptions): Promise<TargetConnection>;
  /**
   * Closes every idle pooled connection (`--pool`: the proxy stops accepting or closes); resolves
   * once their pending reads have ended. Unset: nothing is pooled.
   */
  closeIdle?(): Promise<void>;
}

/** The idle-pool options a target takes (`--pool`, `--pool-idle-timeout`). */
export interface IdlePoolOptions {
  /** Idle connections kept per upstream; 0: no pooling. @default {0} */
  idleMax?: number;
  /** An idle connection unused this long (ms) is closed; 0: never. @default {30000} */
  idleTimeoutMs?: number;
  /** Counters of the pooled connections. Unset: not counted. */
  idleCounters?: IdlePoolCounters;
  /** Timers of the idle timeouts. @default {the global timers} */
  timers?: Timers;
  /** Log sink for pooled connections. Unset: nothing logged. */
  logger?: Logger;
}

/** The default of {@linkcode IdlePoolOptions.idleTimeoutMs}. */
export const POOL_IDLE_TIMEOUT_MS = 30_000;

/** The idle list of upstream `name` as `options` say; undefined when pooling is off. */
export function idleConnectionsFor(
  name: string,
  options: IdlePoolOptions,
): IdleConnections | undefined {
  const max = options.idleMax ?? 0;
  if (max <= 0) return undefined;
  return new IdleConnections({
    max,
    idleTimeoutMs: options.idleTimeoutMs ?? POOL_IDLE_TIMEOUT_MS,
    name,
    counters: options.idleCounters,
    logger: options.logger,
    timers: options.timers,
  });
}

/** Options for {@linkcode SingleUpstream}. */
export interface SingleUpstreamOptions extends IdlePoolOptions {
  /** Connect timeout per attempt in ms; 0: none. @default {5000} */
  connectTimeoutMs?: number;
  /** Random numbers in [0, 1) for backoff jitter. @default {Math.random} */
  random?: () => number;
  /** Speak TLS to the upstream (see {@linkcode UpstreamTls}). Unset: plain TCP. */
  tls?: UpstreamTls;
  /** Where failed TLS handshakes are counted (`Stats` fits). Unset: not counted. */
  tlsCounters?: TlsFailureCounters;
}

/** Counters of failed TLS handshakes with upstreams, by kind. */
export interface TlsFailureCounters {
  upstreamTlsVerifyFailures: number;
  upstreamTlsHandshakeFailures: number;
}

/** Adds a failed dial to `counters` when its TLS handshake failed. */
export function countTlsFailure(counters: TlsFailureCounters | undefined, error: unknown): void {
  if (counters === undefined || !(error instanceof UpstreamError)) return;
  if (error.tls === "verify") counters.upstreamTlsVerifyFailures++;
  else if (error.tls === "handshake") counters.upstreamTlsHandshakeFailures++;
}

/** One upstream address. */
export class SingleUpstream implements UpstreamTarget {
  /** The upstream's address text. */
  readonly label: string;
  /** One. */
  readonly upstreamCount = 1;
  #address: Address;
  #options: SingleUpstreamOptions;
  #idle: IdleConnections | undefined;
  #closed = false;

  /** A target dialing `address`. */
  constructor(address: Address, options: SingleUpstreamOptions = {}) {
    this.#address = address;
    this.#options = options;
    this.label = formatAddress(address);
    this.#idle = idleConnectionsFor(this.label, options);
  }

  /** Closes the idle connections; none are kept after. */
  async closeIdle(): Promise<void> {
    this.#closed = true;
    this.#idle?.clear("the proxy stops");
    await this.#idle?.closed();
  }

  /** Hands out an idle connection, or dials the address, retrying as `options` say. */
  async dial(options: TargetDialOptions = {}): Promise<TargetConnection> {
    const pooled = options.preamble === undefined ? this.#idle?.take() : undefined;
    if (pooled !== undefined) {
      return { conn: pooled.conn, upstream: this.label, rest: pooled.rest, recycle: this.#recycle };
    }
    const counters = this.#options.tlsCounters;
    let conn: Deno.Conn;
    try {
      conn = await dialWithRetry(this.#address, {
        timeoutMs: this.#options.connectTimeoutMs,
        random: this.#options.random,
        retries: options.retries ?? 0,
        backoffMs: options.backoffMs,
        maxBackoffMs: options.maxBackoffMs,
        signal: options.signal,
        tls: this.#options.tls,
        preamble: options.preamble,
        onRetry: (retry, delayMs, error) => {
          countTlsFailure(counters, error);
          options.onRetry?.(retry, delayMs, error);
        },
      });
    } catch (error) {
      countTlsFailure(counters, error);
      throw error;
    }
    return { conn, upstream: this.label, recycle: this.#idle && this.#recycle };
  }

  #recycle = (conn: Deno.Conn, rest: Promise<Uint8Array | null>): boolean =>
    !this.#closed && this.#idle !== undefined && this.#idle.put(conn, rest);
}
