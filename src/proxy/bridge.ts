/**
 * Joins one downstream connection to one upstream connection: one pump per direction, each
 * feeding the analyzer every chunk it forwards.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { Analyzer, type AnalyzerOptions } from "../protocol/analyzer.ts";
import type { Clock } from "../stats/clock.ts";
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

/** Holds a pump back while too many REQs are outstanding. */
interface InflightGate {
  /** How many more valid REQs may be forwarded now (may be 0 or less). */
  budget(): number;
  /** Resolves when replies came back, or the bridge is closing. */
  wait(): Promise<void>;
  /** Whether the bridge is closing (waiting is over for good). */
  readonly closed: boolean;
}

interface PumpExtras {
  state: BridgeState;
  clock: Clock;
  tracker?: LatencyTracker;
  gate?: InflightGate;
  held?: HeldBytes;
}

interface PumpResult {
  end: PumpEnd;
  error?: unknown;
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
  const initial = options.initialBufferSize ?? 1024;
  const max = Math.max(initial, options.maxBufferSize ?? 65536);
  const maxTracked = options.maxTrackedRequests ?? 10_000;
  const tracker = maxTracked > 0
    ? new LatencyTracker(stats.latency, { maxOutstanding: maxTracked })
    : undefined;
  const requests = new Analyzer(
    "downstream",
    stats.counts,
    tracked(options.requestAnalyzer, tracker),
  );
  const replies = new Analyzer("upstream", stats.counts, tracked(options.replyAnalyzer, tracker));

  const state = options.state ?? new BridgeState();
  const maxInflight = options.maxInflight ?? 10_000;
  const idleMs = options.idleTimeoutMs ?? 0;
  let room: PromiseWithResolvers<void> | undefined;
  let closed = false;
  const closeBoth = () => {
    if (closed) return;
    closed = true;
    closeQuietly(downstream);
    closeQuietly(upstream);
    room?.resolve();
  };
  const gate: InflightGate | undefined = maxInflight > 0
    ? {
      budget: () => maxInflight - state.outstanding,
      wait: () => {
        stats.inflightLimitPauses++;
        room = Promise.withResolvers();
        return room.promise;
      },
      get closed() {
        return closed;
      },
    }
    : undefined;
  const onAbort = () => {
    if (!reason) reason = "shutdown";
    closeBoth();
  };
  let reason: CloseReason | undefined;
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();

  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  if (idleMs > 0) {
    state.lastActivity = stats.clock();
    const check = () => {
      const quiet = stats.clock() - state.lastActivity;
      if (!state.idle) {
        idleTimer = setTimeout(check, idleMs);
      } else if (quiet < idleMs) {
        idleTimer = setTimeout(check, Math.max(1, idleMs - quiet));
      } else {
        reason ??= "idle_timeout";
        closeBoth();
      }
    };
    idleTimer = setTimeout(check, idleMs);
  }

  let clientHalfClosed = false;
  const up = pump(downstream, upstream, requests, initial, max, (n, valid, now) => {
    stats.bytesDownstream += n;
    if (idleMs > 0) state.lastActivity = now;
    if (valid > 0) {
      state.outstanding += valid;
      stats.recordRequests(valid, now);
    }
  }, { state, gate, held: options.held, clock: stats.clock, tracker }).then((result) => {
    if (result.end === "eof") {
      clientHalfClosed = true;
      // The client half-closed: pass the FIN on and keep relaying the replies it is owed.
      // closeWrite() is async: a rejection (the upstream is already gone) must not go unhandled,
      // or it would end the whole process. The other pump ends on its own.
      try {
        upstream.closeWrite().catch(() => {});
      } catch {
        // Closed already.
      }
    } else {
      reason ??= result.end === "read_error" ? "downstream_error" : "upstream_error";
      closeBoth();
    }
    return result;
  });
  const down = await pump(upstream, downstream, replies, initial, max, (n, valid, now) => {
    stats.bytesUpstream += n;
    if (idleMs > 0) state.lastActivity = now;
    if (valid > 0) {
      state.outstanding = Math.max(0, state.outstanding - valid);
      if (room !== undefined && state.outstanding < maxInflight) {
        room.resolve();
        room = undefined;
      }
      stats.recordResponses(valid, now);
    }
  }, { state, clock: stats.clock, tracker });
  const upResult = await (async () => {
    if (down.end === "eof") {
      // Upstream finished. If the client had half-closed this is a normal end; otherwise the
      // upstream went away first and the client is closed after getting every relayed byte.
      reason ??= clientHalfClosed ? "client_closed" : "upstream_closed";
      closeBoth();
      return await up;
    }
    reason ??= down.end === "read_error" ? "upstream_error" : "downstream_error";
    closeBoth();
    return await up;
  })();
  signal?.removeEventListener("abort", onAbort);
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
  initial: number,
  max: number,
  onChunk: (bytes: number, valid: number, now: number) => void,
  extras: PumpExtras,
): Promise<PumpResult> {
  const { state, gate } = extras;
  // Bytes read before the bridge started go first, then the read that was pending then. Their
  // buffer then becomes this pump's read buffer, and the hand-over is emptied so that nothing
  // else pins it: an idle connection holds one buffer per direction, not three.
  const held = extras.held;
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
        return { end: "read_error", error };
      }
      rest = undefined;
      if (got === null) return { end: "eof" };
      if (got.length === 0) continue;
      chunk = got;
    } else {
      let n: number | null;
      try {
        n = await src.read(buf);
      } catch (error) {
        return { end: "read_error", error };
      }
      if (n === null) return { end: "eof" };
      chunk = buf.subarray(0, n);
    }
    const n = chunk.length;
    state.writing++;
    try {
      // Without a gate (or with room for the whole chunk) this runs once over the whole chunk.
      for (let start = 0; start < n;) {
        let budget = Infinity;
        if (gate !== undefined) {
          budget = gate.budget();
          while (budget <= 0) {
            if (gate.closed) return { end: "write_error", error: new Error("bridge closed") };
            await gate.wait();
            budget = gate.budget();
          }
        }
        // One clock reading per chunk serves the rate windows, idle timer and latency tracker.
        const now = extras.clock();
        extras.tracker?.setTime(now);
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
        onChunk(part.length, valid, now);
        let off = 0;
        while (off < part.length) off += await dst.write(off === 0 ? part : part.subarray(off));
        start = end;
      }
    } catch (error) {
      return { end: "write_error", error };
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

// Analyzer options whose message hook also feeds `tracker` (REQs start timings, replies end them).
function tracked(
  options: AnalyzerOptions | undefined,
  tracker: LatencyTracker | undefined,
): AnalyzerOptions | undefined {
  if (!tracker) return options;
  const other = options?.onMessage;
  const onMessage = other
    ? (type: number, seq: number) => {
      tracker.onMessage(type, seq);
      other(type, seq);
    }
    : (type: number, seq: number) => tracker.onMessage(type, seq);
  return { ...options, onMessage };
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
