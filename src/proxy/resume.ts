/**
 * `--resume`: a bridge that outlives its upstream connection. When the upstream dies with REQs
 * unanswered, {@linkcode resumableBridge} dials a new connection, replays those REQs on it with
 * Seqs renumbered from 1, and maps each reply's Seq back to the client's, so the client sees
 * exactly one reply per REQ and no error. Replayed REQs may be processed twice by the upstream
 * (at-least-once).
 *
 * While nothing has failed the bytes are forwarded exactly as received; the only extra work is
 * the {@linkcode RequestLog} copying each REQ line until its reply is relayed, and replies being
 * relayed whole lines at a time (a partial line is held back until its newline, so that a reply
 * cut by the upstream's death never reaches the client half-written). After the first failover
 * the request stream is renumbered and the reply stream rewritten for the rest of the
 * connection.
 *
 * A connection cannot be resumed (it is closed like {@linkcode bridge} would, and counted in
 * `resume_failures`) when an unanswered REQ was too long to keep (`retainLimit`), when the client
 * had already received part of a reply line longer than the largest read buffer, or when no new
 * upstream connection can be made.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { type Address, formatAddress } from "../cli/address.ts";
import { Analyzer, type AnalyzerOptions } from "../protocol/analyzer.ts";
import { ReplyRewriter } from "../protocol/reply_rewriter.ts";
import { RequestLog } from "../protocol/request_log.ts";
import { LatencyTracker } from "../stats/latency.ts";
import type { CloseReason, Stats } from "../stats/stats.ts";
import { type BridgeOptions, BridgeState } from "./bridge.ts";
import { backoffDelay, dialWithRetry } from "./dial_with_retry.ts";

/** Options for {@linkcode resumableBridge}: those of {@linkcode bridge}, plus how to resume. */
export interface ResumableBridgeOptions extends BridgeOptions {
  /** The upstream to dial again when the connection dies. */
  forward: Address;
  /** Connect timeout per attempt in ms; 0 means none. @default {5000} */
  connectTimeoutMs?: number;
  /**
   * Dial attempts after a refused or timed-out one, per failover, with exponential backoff and
   * jitter (the defaults wait up to about 6 s in all, long enough for a process restart).
   * @default {6}
   */
  reconnectRetries?: number;
  /** Backoff before the first retry in ms, doubling after each. @default {100} */
  reconnectBackoffMs?: number;
  /** Cap on one backoff wait in ms. @default {2000} */
  maxReconnectBackoffMs?: number;
  /**
   * Failovers in a row whose new upstream connection died before relaying a reply and within a
   * second (a poison REQ, an upstream that accepts and closes): past it the client is closed.
   * Later failovers in a row wait a backoff first. @default {4}
   */
  maxFailovers?: number;
  /**
   * Bytes of unanswered REQ lines kept per connection for replay. A REQ longer than what is left
   * is forwarded but kept head-only: the connection cannot be resumed until it is answered.
   * @default {1048576}
   */
  retainLimit?: number;
  /** Random numbers in [0, 1) for the backoff jitter; unset: `Math.random`. */
  random?: () => number;
}

/** The upstream counts as healthy once it relayed a reply or lived this long. */
const HEALTHY_AFTER_MS = 1000;
const NL = 10;

/**
 * Relays bytes both ways like {@linkcode bridge} (same contract: resolves with the close reason
 * once both sockets are closed), replacing a dead upstream connection as described in the module
 * docs.
 */
export async function resumableBridge(
  downstream: Deno.TcpConn,
  upstream: Deno.TcpConn,
  options: ResumableBridgeOptions,
): Promise<CloseReason> {
  return await new ResumeSession(downstream, upstream, options).run();
}

interface ReplyEnd {
  end: "eof" | "read_error" | "write_error";
  error?: unknown;
}

/** One connection's state: the pumps, the supervisor that replaces dead upstreams, the log. */
class ResumeSession {
  #down: Deno.TcpConn;
  #up: Deno.TcpConn | null;
  #options: ResumableBridgeOptions;
  #stats: Stats;
  #logger: Logger | undefined;
  #log: RequestLog;
  #rewriter: ReplyRewriter | undefined;
  #requests: Analyzer;
  #replies: Analyzer;
  #tracker: LatencyTracker | undefined;
  #state: BridgeState;
  #initial: number;
  #max: number;
  #maxInflight: number;
  #closed = false;
  #reason: CloseReason | undefined;
  #done = Promise.withResolvers<void>();
  #abort = new AbortController(); // ends dials and backoff waits
  #clientEof = false;
  #clientMidLine = false; // the client got part of a reply line
  #failing = false; // the upstream is dead and not replaced yet
  #ready: PromiseWithResolvers<boolean> | undefined; // the request pump waits for an upstream
  #need: PromiseWithResolvers<void> | undefined; // the supervisor waits for the client to speak
  #room: PromiseWithResolvers<void> | undefined; // the request pump waits for in-flight room
  #replyTask: Promise<ReplyEnd>;
  #replyBuf: Uint8Array;
  #writeError: unknown; // why the request pump gave up on the current upstream
  #connectedAt: number;
  #gotReply = false;
  #strikes = 0;

  constructor(downstream: Deno.TcpConn, upstream: Deno.TcpConn, options: ResumableBridgeOptions) {
    this.#down = downstream;
    this.#up = upstream;
    this.#options = options;
    this.#stats = options.stats;
    this.#logger = options.logger;
    this.#initial = options.initialBufferSize ?? 2048;
    this.#max = Math.max(this.#initial, options.maxBufferSize ?? 65536);
    this.#maxInflight = options.maxInflight ?? 10_000;
    this.#state = options.state ?? new BridgeState();
    this.#log = new RequestLog({ retainLimit: options.retainLimit });
    const maxTracked = options.maxTrackedRequests ?? 10_000;
    this.#tracker = maxTracked > 0
      ? new LatencyTracker(this.#stats.latency, { maxOutstanding: maxTracked })
      : undefined;
    this.#requests = new Analyzer(
      "downstream",
      this.#stats.counts,
      hooked(options.requestAnalyzer, this.#tracker),
    );
    const log = this.#log;
    const replyHooks = hooked(options.replyAnalyzer, this.#tracker)?.onMessage;
    this.#replies = new Analyzer("upstream", this.#stats.counts, {
      onMessage: (type, seq) => {
        // Before any failover replies carry the client's Seqs; after, the rewriter matches them.
        if (!log.renumbering) log.answerSeq(seq);
        replyHooks?.(type, seq);
      },
    });
    this.#replyBuf = new Uint8Array(this.#initial);
    this.#connectedAt = this.#stats.clock();
    this.#replyTask = Promise.resolve({ end: "eof" });
  }

  async run(): Promise<CloseReason> {
    const { signal } = this.#options;
    const onAbort = () => this.#finish("shutdown");
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) onAbort();
    const idleTimer = this.#startIdleTimer();
    this.#replyTask = this.#pumpReplies(this.#up!);
    const requests = this.#pumpRequests();
    const supervisor = this.#supervise();
    await this.#done.promise;
    await Promise.all([requests, supervisor, this.#replyTask]);
    signal?.removeEventListener("abort", onAbort);
    idleTimer.stop();
    this.#requests.end();
    this.#replies.end();
    this.#tracker?.close();
    return this.#reason ?? "client_closed";
  }

  get #label(): string {
    return this.#options.label ?? "";
  }

  /** Ends the connection: closes everything and wakes every waiter. The first reason wins. */
  #finish(reason: CloseReason): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#reason = reason;
    closeQuietly(this.#down);
    if (this.#up) closeQuietly(this.#up);
    this.#abort.abort();
    this.#need?.resolve();
    this.#room?.resolve();
    this.#setReady(false);
    this.#done.resolve();
  }

  /** Client → upstream: count, log, forward (renumbered once a failover happened). */
  async #pumpRequests(): Promise<void> {
    const stats = this.#stats;
    const state = this.#state;
    const log = this.#log;
    const held = this.#options.held;
    let first = held && held.bytes.length > 0 ? held.bytes : undefined;
    let rest = held?.rest;
    let buf = new Uint8Array(this.#initial);
    for (;;) {
      while (this.#maxInflight > 0 && state.outstanding >= this.#maxInflight && !this.#closed) {
        stats.inflightLimitPauses++;
        this.#room = Promise.withResolvers();
        await this.#room.promise;
      }
      if (this.#closed) return;
      let chunk: Uint8Array;
      try {
        if (first !== undefined) {
          chunk = first;
          first = undefined;
        } else if (rest !== undefined) {
          const got = await rest;
          rest = undefined;
          if (got === null) return this.#endOfRequests();
          if (got.length === 0) continue;
          chunk = got;
        } else {
          const n = await this.#down.read(buf);
          if (n === null) return this.#endOfRequests();
          chunk = buf.subarray(0, n);
        }
      } catch (error) {
        if (!this.#closed) {
          this.#logger?.info("Downstream failed on {connection}: {error}", {
            connection: this.#label,
            error: String(error),
          });
          this.#finish("downstream_error");
        }
        return;
      }
      // The chunk waits while the upstream is being replaced: its REQs follow the replay.
      if (this.#up === null || this.#failing) {
        if (!await this.#waitReady()) return;
      }
      const n = chunk.length;
      const now = stats.clock();
      this.#tracker?.setTime(now);
      const valid = this.#requests.feed(chunk);
      stats.bytesDownstream += n;
      state.lastActivity = now;
      if (valid > 0) {
        state.outstanding += valid;
        stats.recordRequests(valid, now);
      }
      const length = log.feed(chunk);
      if (length < 0) {
        this.#stats.resumeFailures++;
        this.#logger?.warning(
          "Closing {connection}: a REQ head longer than 4096 bytes cannot be renumbered",
          { connection: this.#label },
        );
        this.#finish("downstream_error");
        return;
      }
      const bytes = log.renumbering ? log.out.subarray(0, length) : chunk;
      const up = this.#up!;
      state.writing++;
      try {
        await writeAll(up, bytes);
      } catch (error) {
        if (this.#closed) return;
        // The REQs of this chunk are in the log: the supervisor replays them on a new upstream.
        if (up === this.#up && !this.#failing) {
          this.#writeError = error;
          closeQuietly(up);
        }
      } finally {
        state.writing--;
      }
      if (n === buf.length && buf.length < this.#max) {
        buf = new Uint8Array(Math.min(this.#max, buf.length * 2));
      }
    }
  }

  #endOfRequests(): void {
    this.#clientEof = true;
    this.#log.end();
    if (this.#up !== null && !this.#failing) {
      // Pass the FIN on; the replies the client is owed keep flowing.
      try {
        this.#up.closeWrite().catch(() => {});
      } catch {
        // Closed already: the reply pump notices.
      }
    } else {
      this.#need?.resolve(); // a supervisor waiting for the client re-checks
    }
  }

  /** Upstream → client, whole lines at a time; rewritten once a failover happened. */
  async #pumpReplies(up: Deno.TcpConn): Promise<ReplyEnd> {
    const stats = this.#stats;
    const state = this.#state;
    let buf = this.#replyBuf;
    let held = 0; // bytes of a partial line kept at the front of buf
    for (;;) {
      let n: number | null;
      try {
        n = await up.read(held === 0 ? buf : buf.subarray(held));
      } catch (error) {
        return { end: "read_error", error };
      }
      if (n === null) return { end: "eof" };
      const total = held + n;
      const nl = buf.lastIndexOf(NL, total - 1);
      let k: number;
      if (nl >= 0) {
        k = nl + 1;
      } else if (total < buf.length) {
        held = total;
        continue;
      } else if (buf.length < this.#max) {
        const bigger = new Uint8Array(Math.min(this.#max, buf.length * 2));
        bigger.set(buf.subarray(0, total));
        buf = this.#replyBuf = bigger;
        held = total;
        continue;
      } else {
        k = total; // a line longer than the buffer: it cannot be held back whole
      }
      const raw = buf.subarray(0, k);
      let bytes = raw;
      if (this.#log.renumbering) {
        const rewriter = this.#rewriter!;
        const length = rewriter.feed(raw); // may reallocate rewriter.out: read it after
        bytes = rewriter.out.subarray(0, length);
      }
      const now = stats.clock();
      this.#tracker?.setTime(now);
      const valid = this.#replies.feed(bytes);
      stats.bytesUpstream += k;
      state.lastActivity = now;
      if (valid > 0) {
        this.#gotReply = true;
        state.outstanding = Math.max(0, state.outstanding - valid);
        if (this.#room !== undefined && state.outstanding < this.#maxInflight) {
          this.#room.resolve();
          this.#room = undefined;
        }
        stats.recordResponses(valid, now);
      }
      if (bytes.length > 0) {
        state.writing++;
        try {
          await writeAll(this.#down, bytes);
        } catch (error) {
          return { end: "write_error", error };
        } finally {
          state.writing--;
        }
        this.#clientMidLine = bytes[bytes.length - 1] !== NL;
      }
      if (k < total) buf.copyWithin(0, k, total);
      held = total - k;
    }
  }

  /** Watches the upstream connection and replaces it when it dies; decides how the end comes. */
  async #supervise(): Promise<void> {
    const stats = this.#stats;
    for (;;) {
      const result = await this.#replyTask;
      if (this.#closed) return;
      if (result.end === "write_error") {
        this.#logger?.info("Downstream failed on {connection}: {error}", {
          connection: this.#label,
          error: String(result.error),
        });
        this.#finish("downstream_error");
        return;
      }
      const dead = this.#up!;
      this.#up = null;
      this.#failing = true;
      closeQuietly(dead);
      const error = this.#writeError ?? result.error; // a failed write is the root cause
      this.#writeError = undefined;
      const why: CloseReason = error !== undefined ? "upstream_error" : "upstream_closed";
      if (why === "upstream_error") stats.upstreamErrors++;
      const settled = this.#log.disabled ? this.#state.outstanding === 0 : this.#log.empty;
      if (this.#clientEof && settled) {
        this.#finish("client_closed"); // the client half-closed and got every reply
        return;
      }
      const cannot = this.#log.disabled
        ? "a REQ head was longer than 4096 bytes"
        : !this.#log.replayable
        ? "an unanswered REQ was too long to keep for replay"
        : this.#clientMidLine
        ? "the client already got part of a reply line"
        : undefined;
      if (cannot !== undefined) {
        stats.resumeFailures++;
        this.#logger?.warning("Upstream {what} on {connection}; cannot resume: {cannot}", {
          what: why === "upstream_error" ? `failed (${String(error)})` : "closed",
          connection: this.#label,
          cannot,
        });
        this.#finish(why);
        return;
      }
      if (this.#gotReply || stats.clock() - this.#connectedAt >= HEALTHY_AFTER_MS) {
        this.#strikes = 0;
      }
      if (this.#log.empty && this.#ready === undefined) {
        // Nothing is owed: dial again only when the client speaks (or leave with it).
        this.#need = Promise.withResolvers();
        await this.#need.promise;
        this.#need = undefined;
        if (this.#closed) return;
        if (this.#clientEof && this.#log.empty) {
          this.#finish("client_closed");
          return;
        }
      }
      if (!await this.#reconnect(why, error)) return;
    }
  }

  /** Dials a new upstream, replays, and hands it to the pumps; false once the session ended. */
  async #reconnect(why: CloseReason, error: unknown): Promise<boolean> {
    const stats = this.#stats;
    const options = this.#options;
    const maxFailovers = options.maxFailovers ?? 4;
    const backoff = {
      backoffMs: options.reconnectBackoffMs ?? 100,
      maxBackoffMs: options.maxReconnectBackoffMs ?? 2000,
      random: options.random,
    };
    this.#strikes++;
    if (this.#strikes > maxFailovers) {
      stats.resumeFailures++;
      this.#logger?.warning(
        "Upstream {what} on {connection}; giving up after {count} failovers in a row without a reply",
        {
          what: why === "upstream_error" ? `failed (${String(error)})` : "closed",
          connection: this.#label,
          count: maxFailovers,
        },
      );
      this.#finish(why);
      return false;
    }
    if (this.#strikes > 1) {
      const delayMs = backoffDelay(this.#strikes - 1, backoff);
      if (!await sleep(delayMs, this.#abort.signal)) return false;
    }
    let up: Deno.TcpConn;
    try {
      up = await dialWithRetry(options.forward, {
        ...backoff,
        timeoutMs: options.connectTimeoutMs,
        retries: options.reconnectRetries ?? 6,
        signal: this.#abort.signal,
        onRetry: () => stats.upstreamConnectRetries++,
      });
    } catch (dialError) {
      if (this.#closed) return false;
      stats.upstreamErrors++;
      stats.resumeFailures++;
      this.#logger?.warning("Cannot resume {connection}: {error}", {
        connection: this.#label,
        error: dialError instanceof Error ? dialError.message : String(dialError),
      });
      this.#finish("upstream_unreachable");
      return false;
    }
    if (this.#closed) {
      closeQuietly(up);
      return false;
    }
    const replay = this.#log.replay()!;
    this.#rewriter ??= new ReplyRewriter(this.#log);
    this.#rewriter.reset();
    this.#up = up;
    this.#connectedAt = stats.clock();
    this.#gotReply = false;
    // Replies may start before the replay is fully written: read them at once.
    this.#replyTask = this.#pumpReplies(up);
    stats.failovers++;
    stats.replays += replay.requests;
    this.#logger?.info(
      "Upstream {what} on {connection}; resumed on {upstream}, replayed {count} REQ(s)",
      {
        what: why === "upstream_error" ? `failed (${String(error)})` : "closed",
        connection: this.#label,
        upstream: formatAddress(options.forward),
        count: replay.requests,
      },
    );
    try {
      await writeAll(up, replay.bytes);
      if (this.#clientEof) up.closeWrite().catch(() => {});
    } catch (writeError) {
      // The new connection died already: its reply pump ends and the supervisor goes again.
      this.#writeError = writeError;
      closeQuietly(up);
      return !this.#closed;
    }
    this.#failing = false;
    this.#setReady(true);
    return !this.#closed;
  }

  #waitReady(): Promise<boolean> {
    if (this.#closed) return Promise.resolve(false);
    this.#ready ??= Promise.withResolvers<boolean>();
    this.#need?.resolve();
    return this.#ready.promise;
  }

  #setReady(ok: boolean): void {
    const ready = this.#ready;
    this.#ready = undefined;
    ready?.resolve(ok);
  }

  #startIdleTimer(): { stop: () => void } {
    const idleMs = this.#options.idleTimeoutMs ?? 0;
    if (idleMs <= 0) return { stop: () => {} };
    const state = this.#state;
    const clock = this.#stats.clock;
    state.lastActivity = clock();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const check = () => {
      const quiet = clock() - state.lastActivity;
      if (!state.idle) {
        timer = setTimeout(check, idleMs);
      } else if (quiet < idleMs) {
        timer = setTimeout(check, Math.max(1, idleMs - quiet));
      } else {
        this.#finish("idle_timeout");
      }
    };
    timer = setTimeout(check, idleMs);
    return { stop: () => clearTimeout(timer) };
  }
}

// Analyzer options whose message hook also feeds `tracker`.
function hooked(
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

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(off === 0 ? bytes : bytes.subarray(off));
}

/** Waits `ms`; resolves false at once when `signal` aborts first. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
