/**
 * Joins one downstream connection to one upstream connection: one pump per direction, each
 * feeding the analyzer every chunk it forwards.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { Analyzer, type AnalyzerOptions } from "../protocol/analyzer.ts";
import { LatencyTracker } from "../stats/latency.ts";
import type { CloseReason, Stats } from "../stats/stats.ts";
import type { HeldBytes } from "./first_bytes_reader.ts";

/** Options for {@linkcode bridge}. */
export interface BridgeOptions {
  /** Where counters go. */
  stats: Stats;
  /** Log sink; unset: a silent logger is not assumed, so pass one (component `bridge`). */
  logger?: Logger;
  /**
   * First read-buffer size per direction, in bytes. A pending read pins its buffer, so idle
   * connections cost this much per side. @default {1024}
   */
  initialBufferSize?: number;
  /** Largest read buffer a busy direction grows to (doubling when a read fills it). @default {65536} */
  maxBufferSize?: number;
  /** Analyzer options for the downstream → upstream direction (REQs). Unset: counting only. */
  requestAnalyzer?: AnalyzerOptions;
  /** Analyzer options for the upstream → downstream direction (replies). Unset: counting only. */
  replyAnalyzer?: AnalyzerOptions;
  /** Aborting closes both sockets at once (shutdown). Unset: only the peers end it. */
  signal?: AbortSignal;
  /** Text naming the connection in log lines, e.g. `127.0.0.1:5555 -> 127.0.0.1:8001`. */
  label?: string;
  /**
   * Most valid REQs forwarded upstream and not yet answered on this connection. At the limit the
   * downstream is not read (TCP backpressure holds the client) until replies come back; 0: no
   * limit. A REQ the upstream never answers holds its place until the connection ends.
   * @default {10000}
   */
  maxInflight?: number;
  /**
   * Closes the connection (reason `idle_timeout`) after this many ms with no bytes in either
   * direction and nothing in flight (no unanswered REQ, no chunk waiting to be written). Measured
   * on `stats.clock`. 0: never. @default {0}
   */
  idleTimeoutMs?: number;
  /** Downstream bytes read while the upstream was dialed, forwarded before anything else. */
  held?: HeldBytes;
  /** Live state for the owner to read (idle checks, shutdown order); unset: kept private. */
  state?: BridgeState;
  /**
   * Most REQs timed at once on this connection for the latency histogram (`stats.latency`);
   * past it REQs are still forwarded, just not timed. 0: no latency tracking. @default {10000}
   */
  maxTrackedRequests?: number;
}

/** Live state of one bridged connection, updated by {@linkcode bridge} as bytes move. */
export class BridgeState {
  /** Valid REQs forwarded upstream minus valid replies relayed downstream (never below 0). */
  outstanding = 0;
  /** Chunks read but not yet fully written (one per direction at most). */
  writing = 0;
  /** `stats.clock` time of the last chunk either way (kept only with an idle timeout). */
  lastActivity = 0;

  /** Whether nothing is in flight: every forwarded REQ answered and no chunk being written. */
  get idle(): boolean {
    return this.outstanding === 0 && this.writing === 0;
  }
}

type PumpEnd = "eof" | "read_error" | "write_error";

interface PumpResult {
  end: PumpEnd;
  error?: unknown;
}

/**
 * What the two pumps of one bridge share. One object with its methods on the prototype rather
 * than a handful of closures (close, gate, chunk hooks, abort listener) per connection: an idle
 * connection keeps all of it alive, so this is measured in heap per idle connection.
 */
class Link {
  readonly downstream: Deno.TcpConn;
  readonly upstream: Deno.TcpConn;
  readonly stats: Stats;
  readonly state: BridgeState;
  readonly tracker: LatencyTracker | undefined;
  readonly initial: number;
  readonly max: number;
  /** 0: no in-flight limit. */
  readonly maxInflight: number;
  /** 0: no idle timeout. */
  readonly idleMs: number;
  reason: CloseReason | undefined = undefined;
  closed = false;
  clientHalfClosed = false;
  /** Resolved when replies make room under `maxInflight`, or on close. */
  room: PromiseWithResolvers<void> | undefined = undefined;

  constructor(
    downstream: Deno.TcpConn,
    upstream: Deno.TcpConn,
    options: BridgeOptions,
    tracker: LatencyTracker | undefined,
  ) {
    this.downstream = downstream;
    this.upstream = upstream;
    this.stats = options.stats;
    this.state = options.state ?? new BridgeState();
    this.tracker = tracker;
    this.initial = options.initialBufferSize ?? 1024;
    this.max = Math.max(this.initial, options.maxBufferSize ?? 65536);
    this.maxInflight = options.maxInflight ?? 10_000;
    this.idleMs = options.idleTimeoutMs ?? 0;
  }

  closeBoth(): void {
    if (this.closed) return;
    this.closed = true;
    closeQuietly(this.downstream);
    closeQuietly(this.upstream);
    this.room?.resolve();
  }

  /** The signal's abort listener (an EventListenerObject: no closure needed). */
  handleEvent(): void {
    this.reason ??= "shutdown";
    this.closeBoth();
  }

  /** How many more valid REQs may be forwarded now (may be 0 or less). */
  budget(): number {
    return this.maxInflight - this.state.outstanding;
  }

  /** Resolves when replies came back, or the bridge is closing. */
  wait(): Promise<void> {
    this.stats.inflightLimitPauses++;
    this.room = Promise.withResolvers();
    return this.room.promise;
  }

  /** A chunk forwarded downstream → upstream with `valid` REQs in it. */
  requests(n: number, valid: number, now: number): void {
    const { stats, state } = this;
    stats.bytesDownstream += n;
    if (this.idleMs > 0) state.lastActivity = now;
    if (valid > 0) {
      state.outstanding += valid;
      stats.recordRequests(valid, now);
    }
  }

  /** A chunk relayed upstream → downstream with `valid` replies in it. */
  replies(n: number, valid: number, now: number): void {
    const { stats, state } = this;
    stats.bytesUpstream += n;
    if (this.idleMs > 0) state.lastActivity = now;
    if (valid > 0) {
      state.outstanding = Math.max(0, state.outstanding - valid);
      if (this.room !== undefined && state.outstanding < this.maxInflight) {
        this.room.resolve();
        this.room = undefined;
      }
      stats.recordResponses(valid, now);
    }
  }

  /** How a pump ended; the downstream → upstream one passes a FIN on or closes both. */
  ended(toUpstream: boolean, result: PumpResult): PumpResult {
    if (!toUpstream) return result;
    if (result.end === "eof") {
      this.clientHalfClosed = true;
      // The client half-closed: pass the FIN on and keep relaying the replies it is owed.
      // closeWrite() is async: a rejection (the upstream is already gone) must not go unhandled,
      // or it would end the whole process. The other pump ends on its own.
      try {
        this.upstream.closeWrite().catch(() => {});
      } catch {
        // Closed already.
      }
    } else {
      this.reason ??= result.end === "read_error" ? "downstream_error" : "upstream_error";
      this.closeBoth();
    }
    return result;
  }
}

/**
 * Relays bytes both ways until the connection is over, then closes both sockets and resolves
 * with the reason. Half-close: a downstream FIN half-closes the upstream and replies keep
 * flowing until the upstream closes. An upstream that closes or fails first gets the downstream
 * closed after everything it sent has been relayed.
 */
export async function bridge(
  downstream: Deno.TcpConn,
  upstream: Deno.TcpConn,
  options: BridgeOptions,
): Promise<CloseReason> {
  const { stats, logger, signal } = options;
  const maxTracked = options.maxTrackedRequests ?? 10_000;
  const tracker = maxTracked > 0
    ? new LatencyTracker(stats.latency, { maxOutstanding: maxTracked })
    : undefined;
  // One hook serves both directions: the tracker tells REQs from replies by their type.
  const hook = tracker ? (type: number, seq: number) => tracker.onMessage(type, seq) : undefined;
  const requests = new Analyzer(
    "downstream",
    stats.counts,
    tracked(options.requestAnalyzer, hook),
  );
  const replies = new Analyzer("upstream", stats.counts, tracked(options.replyAnalyzer, hook));

  const link = new Link(downstream, upstream, options, tracker);
  const state = link.state;
  signal?.addEventListener("abort", link, { once: true });
  if (signal?.aborted) link.handleEvent();

  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  const idleMs = link.idleMs;
  if (idleMs > 0) {
    state.lastActivity = stats.clock();
    const check = () => {
      const quiet = stats.clock() - state.lastActivity;
      if (!state.idle) {
        idleTimer = setTimeout(check, idleMs);
      } else if (quiet < idleMs) {
        idleTimer = setTimeout(check, Math.max(1, idleMs - quiet));
      } else {
        link.reason ??= "idle_timeout";
        link.closeBoth();
      }
    };
    idleTimer = setTimeout(check, idleMs);
  }

  const up = pump(downstream, upstream, requests, link, true, options.held);
  const down = await pump(upstream, downstream, replies, link, false, undefined);
  if (down.end === "eof") {
    // Upstream finished. If the client had half-closed this is a normal end; otherwise the
    // upstream went away first and the client is closed after getting every relayed byte.
    link.reason ??= link.clientHalfClosed ? "client_closed" : "upstream_closed";
  } else {
    link.reason ??= down.end === "read_error" ? "upstream_error" : "downstream_error";
  }
  link.closeBoth();
  const upResult = await up;
  const reason = link.reason;
  signal?.removeEventListener("abort", link);
  clearTimeout(idleTimer);
  requests.end();
  replies.end();
  tracker?.close();
  if (reason === "upstream_error" || reason === "upstream_closed") {
    if (reason === "upstream_error") stats.upstreamErrors++;
    logger?.warning("Upstream {reason} on {connection}: {error}", {
      reason: reason === "upstream_error" ? "failed" : "closed first",
      connection: options.label ?? "",
      error: String(down.error ?? upResult.error ?? "end of stream"),
    });
  } else if (reason === "downstream_error") {
    logger?.info("Downstream failed on {connection}: {error}", {
      connection: options.label ?? "",
      error: String(upResult.error ?? down.error),
    });
  }
  return reason ?? "client_closed";
}

async function pump(
  src: Deno.TcpConn,
  dst: Deno.TcpConn,
  analyzer: Analyzer,
  link: Link,
  toUpstream: boolean,
  held: HeldBytes | undefined,
): Promise<PumpResult> {
  const { state, initial, max } = link;
  // Only the downstream → upstream direction is held back by the in-flight limit.
  const gated = toUpstream && link.maxInflight > 0;
  // Bytes read before the bridge started go first, then the read that was pending then. Their
  // buffer then becomes this pump's read buffer, and the hand-over is emptied so that nothing
  // else pins it: an idle connection holds one buffer per direction, not three.
  let first = held && held.bytes.length > 0 ? held.bytes : undefined;
  let rest = held?.rest;
  let buf = held && held.bytes.buffer.byteLength >= initial
    ? new Uint8Array(held.bytes.buffer)
    : new Uint8Array(initial);
  if (held) {
    held.bytes = EMPTY;
    held.rest = NO_REST;
  }
  for (;;) {
    let chunk: Uint8Array;
    if (first !== undefined) {
      chunk = first;
      first = undefined;
    } else if (rest !== undefined) {
      let got: Uint8Array | null;
      try {
        got = await rest;
      } catch (error) {
        return link.ended(toUpstream, { end: "read_error", error });
      }
      rest = undefined;
      if (got === null) return link.ended(toUpstream, { end: "eof" });
      if (got.length === 0) continue;
      chunk = got;
    } else {
      let n: number | null;
      try {
        n = await src.read(buf);
      } catch (error) {
        return link.ended(toUpstream, { end: "read_error", error });
      }
      if (n === null) return link.ended(toUpstream, { end: "eof" });
      chunk = buf.subarray(0, n);
    }
    const n = chunk.length;
    state.writing++;
    try {
      // Without a gate (or with room for the whole chunk) this runs once over the whole chunk.
      for (let start = 0; start < n;) {
        let budget = Infinity;
        if (gated) {
          budget = link.budget();
          while (budget <= 0) {
            if (link.closed) {
              return link.ended(toUpstream, {
                end: "write_error",
                error: new Error("bridge closed"),
              });
            }
            await link.wait();
            budget = link.budget();
          }
        }
        // One clock reading per chunk serves the rate windows, idle timer and latency tracker.
        const now = link.stats.clock();
        link.tracker?.setTime(now);
        // Feed the analyzer as far as the budget allows (in steps that each stay within what is
        // left of it), then write that much at once.
        let end = start;
        let valid = 0;
        while (end < n && valid < budget) {
          const stop = cutForBudget(chunk, end, budget - valid);
          valid += analyzer.feed(end === 0 && stop === n ? chunk : chunk.subarray(end, stop));
          end = stop;
        }
        const part = start === 0 && end === n ? chunk : chunk.subarray(start, end);
        if (toUpstream) link.requests(part.length, valid, now);
        else link.replies(part.length, valid, now);
        let off = 0;
        while (off < part.length) off += await dst.write(off === 0 ? part : part.subarray(off));
        start = end;
      }
    } catch (error) {
      return link.ended(toUpstream, { end: "write_error", error });
    } finally {
      state.writing--;
    }
    // A read that filled the buffer means more is queued: grow, so busy connections move large
    // chunks while idle ones keep pinning only the small initial buffer.
    if (n === buf.length && buf.length < max) buf = new Uint8Array(Math.min(max, buf.length * 2));
  }
}

const EMPTY = new Uint8Array(0);
const NO_REST: Promise<Uint8Array | null> = Promise.resolve(EMPTY);

/** Shortest valid REQ line: `REQ 1\n`. */
const MIN_REQ_LINE = 6;

/**
 * The end of a prefix of `chunk[start..]` that cannot complete more than `budget` (≥ 1, or
 * `Infinity`: all of it) valid REQs. Every completed valid REQ but the first (which may finish a line begun in an
 * earlier chunk with just its newline) spans at least {@linkcode MIN_REQ_LINE} bytes of the
 * chunk, so a byte count bounds them without scanning; small budgets cut after the
 * `budget`-th newline instead, so one REQ is not forwarded a byte at a time.
 */
function cutForBudget(chunk: Uint8Array, start: number, budget: number): number {
  const n = chunk.length;
  if (budget >= 1 + Math.floor((n - start - 1) / MIN_REQ_LINE)) return n;
  const safe = 1 + MIN_REQ_LINE * (budget - 1);
  if (safe >= 4096) return start + safe;
  let i = start;
  for (let k = 0; k < budget; k++) {
    const nl = chunk.indexOf(10, i);
    if (nl < 0) return n;
    i = nl + 1;
  }
  return i;
}

// Analyzer options whose message hook also calls `hook` (the latency tracker's).
function tracked(
  options: AnalyzerOptions | undefined,
  hook: ((type: number, seq: number) => void) | undefined,
): AnalyzerOptions | undefined {
  if (!hook) return options;
  const other = options?.onMessage;
  const onMessage = other
    ? (type: number, seq: number) => {
      hook(type, seq);
      other(type, seq);
    }
    : hook;
  return { ...options, onMessage };
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
