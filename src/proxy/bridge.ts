/**
 * The bridge engine: joins one downstream connection to an upstream connection with one pump per
 * direction, feeding the analyzers every chunk it forwards. Every mode runs this one engine:
 *
 * - a {@linkcode ChunkSource} per direction (connection, held bytes, buffer growth; it owns its
 *   pending read);
 * - a {@linkcode Session} (accounting, the exact in-flight gate, the idle and half-close timers,
 *   abort wiring, the close reason, logging);
 * - transforms on the bytes: none by default; with `resume` the {@linkcode RequestLog} keeps the
 *   unanswered REQs and replies are relayed whole lines only (plus Seq renumbering when asked);
 * - an upstream strategy for when the upstream connection ends: close (default), or replace it
 *   through the {@linkcode UpstreamTarget} and replay ({@linkcode Failover}, `resume.ts`).
 * - `--pool`: a client that ends cleanly (its EOF with nothing owed, so its FIN is not passed on)
 *   offers its upstream connection back ({@linkcode TargetConnection.recycle}) instead of closing
 *   it, handing over the read pending on it; one taken from the pool comes with that read
 *   (`rest`), served first. One that ends before the client sent a byte on it (the server closed
 *   it as it was taken) is replaced by a fresh dial, as if it had never been handed out.
 *
 * An exchange that is complete ends: once the client has half-closed and every REQ it sent has
 * its reply relayed, the connection is closed (`completed`) without waiting for an upstream FIN
 * that some servers never send.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { Analyzer, createMessageCounts, type MessageCounts } from "../protocol/analyzer.ts";
import { Histogram } from "../stats/histogram.ts";
import { ReplyRewriter } from "../protocol/reply_rewriter.ts";
import { RequestLog } from "../protocol/request_log.ts";
import { LatencyTracker } from "../stats/latency.ts";
import type { CloseReason, Stats } from "../stats/stats.ts";
import { ChunkSource } from "./chunk_source.ts";
import { ENGINE_DEFAULTS, type EngineConfig } from "./engine_config.ts";
import type { HeldBytes } from "./first_bytes_reader.ts";
import { Failover } from "./resume.ts";
import type { TargetConnection, UpstreamTarget } from "./upstream_target.ts";
import { type SourceRate, takeTokens } from "./source_table.ts";

/** Options for {@linkcode bridge}: what is particular to one connection. */
export interface BridgeOptions {
  /** Where counters go. */
  stats: Stats;
  /** The engine's settings, shared by every connection. @default {ENGINE_DEFAULTS} */
  config?: EngineConfig;
  /** Where replacement upstream connections come from; required when `config.resume` is on. */
  target?: UpstreamTarget;
  /** Log sink; unset: nothing is logged. */
  logger?: Logger;
  /** Aborting closes both sockets at once (reason `shutdown`). Unset: only the peers end it. */
  signal?: AbortSignal;
  /** Text naming the connection in log lines, e.g. `127.0.0.1:5555 -> 127.0.0.1:8001`. */
  label?: string;
  /** Downstream bytes read while the upstream was dialed, forwarded before anything else. */
  held?: HeldBytes;
  /** Live state for the owner to read (idle checks, shutdown order); unset: kept private. */
  state?: BridgeState;
  /**
   * What the target said about `upstream` when it was dialed: its name, per-upstream counters to
   * add to, and whom to tell when it ends. Unset: nothing to report.
   */
  lease?: TargetConnection;
  /**
   * Called once at the end with this connection's own figures (the access log). Unset: they are
   * not collected, and the connection costs nothing extra.
   */
  onEnd?: (summary: ConnectionSummary) => void;
  /**
   * `--rate-limit-per-source`: the token bucket of the client's source; each REQ forwarded takes
   * a token, and with none left the client is not read until there is one. Unset: no limit.
   */
  rate?: SourceRate;
}

/** One connection's own figures, for its access-log line. */
export interface ConnectionSummary {
  /** `stats.clock` time the bridge started. */
  startedAt: number;
  /** ms from start to end. */
  durationMs: number;
  /** Bytes from the client, and from the upstream(s). */
  bytesFromClient: number;
  bytesFromUpstream: number;
  reqs: number;
  acks: number;
  naks: number;
  /** Invalid lines both ways. */
  invalid: number;
  /** REQ→reply latency of this connection in ms (NaN without replies). */
  latencyP50Ms: number;
  latencyMaxMs: number;
  /** The upstream it ended on. */
  upstream: string;
  /** Failovers (--resume). */
  failovers: number;
  reason: CloseReason;
}

/** Live state of one bridged connection, updated by {@linkcode bridge} as bytes move. */
export class BridgeState {
  /** Valid REQs forwarded upstream and not answered yet: only a reply with a REQ's Seq answers it. */
  outstanding = 0;
  /**
   * REQs forwarded whose Seq is above 2^53 and not answered yet, as far as counting can tell (a
   * reply that matches nothing answers one): in flight like {@linkcode outstanding} ones.
   */
  unmatchablePending = 0;
  /** Chunks read but not yet fully written (one per direction at most). */
  writing = 0;
  /** `stats.clock` time of the last chunk either way. */
  lastActivity = 0;

  /** Whether nothing is in flight: every forwarded REQ answered and no chunk being written. */
  get idle(): boolean {
    return this.outstanding === 0 && this.unmatchablePending === 0 && this.writing === 0;
  }
}

/**
 * Relays bytes both ways until the exchange is over, then closes both sockets and resolves with
 * the reason; never rejects. See the module docs for how it ends.
 */
export function bridge(
  downstream: Deno.Conn,
  upstream: Deno.Conn,
  options: BridgeOptions,
): Promise<CloseReason> {
  return new Session(downstream, upstream, options).run();
}

/** How one direction's pump ended. */
interface PumpEnd {
  end: "eof" | "read_error" | "write_error";
  error?: unknown;
}

const NL = 10;
const EMPTY = new Uint8Array(0);
/** Shortest valid REQ line: `REQ 1\n`. */
const MIN_REQ_LINE = 6;

/**
 * One connection. One object with its methods on the prototype rather than closures: an idle
 * connection keeps all of it alive, so its size is heap per idle connection.
 */
class Session {
  readonly down: Deno.Conn;
  readonly downSource: ChunkSource;
  readonly stats: Stats;
  readonly config: EngineConfig;
  readonly logger: Logger | undefined;
  readonly label: string;
  readonly state: BridgeState;
  /** Matches replies to REQs by Seq: what is owed, in every mode (and the latency). */
  readonly tracker: LatencyTracker;
  readonly requests: Analyzer;
  readonly replies: Analyzer;
  readonly signal: AbortSignal | undefined;
  /** The resume transforms and strategy; undefined without resume. */
  readonly log: RequestLog | undefined;
  readonly failover: Failover | undefined;
  rewriter: ReplyRewriter | undefined = undefined;
  up: Deno.Conn;
  upSource: ChunkSource;
  /** The current upstream connection's lease (released when it ends). */
  lease: TargetConnection | undefined;
  /** Its per-upstream counters, when the target keeps them. */
  counters: { requests: number; replies: number } | undefined;
  /** The name of the upstream last connected to (the access log). */
  lastUpstream = "";
  reason: CloseReason | undefined = undefined;
  closed = false;
  clientEof = false;
  /** A reply write is under way (the exchange is not complete before it finishes). */
  replyBusy = false;
  /** Resume: the upstream connection is dead and not replaced yet. */
  failing = false;
  /** Resume: the rest of the line in progress is not sent on (its start went to a dead upstream). */
  muteLine = false;
  /** Resume: the client got part of a reply line (a failover now would corrupt it). */
  clientMidLine = false;
  /** Resume: the tracker's matched count when the current upstream connection began. */
  matchedAtConnect = 0;
  /** Resume: the tracker's unmatched count then (answers to REQs whose Seq is above 2^53). */
  unmatchedAtConnect = 0;
  /** The client's stream ended inside a line (a line the server may still answer). */
  partialAtEof = false;
  /** Every REQ is answered after the client's FIN, but other lines may still get answers. */
  lingering = false;
  /** Upstream lines that answered nothing (unmatched replies, invalid lines), as last seen. */
  answersSeen = 0;
  /** Those of them that can answer a client's other line: never more than were sent before. */
  othersCredit = 0;
  /** Why the request pump gave up on the current upstream connection. */
  writeError: unknown = undefined;
  /** Counts failovers begun: a replay finishing for an older one must not touch the state. */
  generation = 0;
  room: PromiseWithResolvers<void> | undefined = undefined;
  ready: PromiseWithResolvers<boolean> | undefined = undefined;
  need: PromiseWithResolvers<void> | undefined = undefined;
  timer: unknown = undefined;
  timerBound: (() => void) | undefined = undefined;
  /** The access log's own figures of this connection; undefined when not asked for. */
  own: OwnFigures | undefined = undefined;
  /** `--pool`: the upstream connection went to the idle pool (it is not closed here). */
  pooled = false;
  /** `--pool`: wakes {@linkcode run} once the connection is pooled (its reply pump is detached). */
  detachedPump: PromiseWithResolvers<PumpEnd> | undefined = undefined;
  /** Where another upstream connection comes from (a dead pooled one is replaced). */
  readonly target: UpstreamTarget | undefined;
  /** `--pool`: the upstream connection came from the idle pool and no client byte went on it. */
  untried = false;
  /** `--pool`: ends the dial replacing a pooled connection found dead (the session ended). */
  redialing: AbortController | undefined = undefined;
  /** `--rate-limit-per-source`: the source's token bucket; undefined: no limit. */
  readonly rate: SourceRate | undefined;

  constructor(downstream: Deno.Conn, upstream: Deno.Conn, options: BridgeOptions) {
    const config = options.config ?? ENGINE_DEFAULTS;
    const stats = options.stats;
    this.down = downstream;
    this.up = upstream;
    this.lease = options.lease;
    this.target = options.target;
    this.untried = options.lease?.rest !== undefined;
    this.counters = options.lease?.counters;
    this.lastUpstream = options.lease?.upstream ?? options.target?.label ?? "";
    this.stats = stats;
    this.config = config;
    this.logger = options.logger;
    this.label = options.label ?? "";
    this.signal = options.signal;
    this.rate = options.rate;
    this.state = options.state ?? new BridgeState();
    if (options.onEnd) this.own = new OwnFigures(options.onEnd, stats.counts);
    // With the access log the analyzers count into this connection's own counters, added to the
    // shared ones after every chunk; without it they count into the shared ones directly.
    const counts = this.own?.counts ?? stats.counts;
    const sizes = {
      initialSize: config.initialBufferSize,
      maxSize: config.maxBufferSize,
      pool: config.bufferPool ?? undefined,
    };
    this.downSource = new ChunkSource(downstream, { ...sizes, held: options.held });
    this.upSource = upstreamSource(upstream, config, options.lease?.rest);
    // Within the in-flight limit every REQ is matched by Seq (never merely counted).
    const tracker = new LatencyTracker(stats.latency, {
      maxOutstanding: Math.max(config.maxInflight, config.maxTrackedRequests, MIN_MATCHED),
      timing: config.maxTrackedRequests > 0,
      connection: this.own?.latency,
    });
    this.tracker = tracker;
    const trackerHook = (type: number, seq: number) => {
      tracker.onMessage(type, seq);
    };
    this.requests = new Analyzer("downstream", counts, { onMessage: trackerHook });
    if (config.resume !== "off") {
      if (!options.target) throw new TypeError("bridge: resume needs options.target");
      // Every REQ the in-flight limit lets through must fit the log, or a client within its
      // limit could not be resumed (or, renumbering, would be closed).
      const log = new RequestLog({
        retainLimit: config.retainLimit,
        maxEntries: config.maxInflight > 0
          ? Math.max(config.maxInflight + 1, defaultMaxEntries(config.retainLimit))
          : undefined,
      });
      this.log = log;
      this.failover = new Failover(config, options.target, stats, options.logger, this.label);
      // A reply that answers a REQ (by the client's Seq: always, unless renumbering after a
      // failover, when the rewriter maps them) also marks that REQ's log entry answered.
      this.replies = new Analyzer("upstream", counts, {
        onMessage: (type, seq) => {
          // A Seq above 2^53 (-1) answers nothing, but is kept in the log's order.
          if ((tracker.onMessage(type, seq) || seq < 0) && !log.renumbering) log.answerSeq(seq);
        },
      });
    } else {
      this.log = undefined;
      this.failover = undefined;
      this.replies = new Analyzer("upstream", counts, { onMessage: trackerHook });
    }
  }

  async run(): Promise<CloseReason> {
    const { signal, state, stats } = this;
    signal?.addEventListener("abort", this, { once: true });
    if (signal?.aborted) this.handleEvent();
    state.lastActivity = stats.clock();
    if (this.own !== undefined) this.own.startedAt = state.lastActivity;
    if (this.config.idleTimeoutMs > 0) this.arm(this.config.idleTimeoutMs);
    const requests = this.pumpRequests();
    let replies = this.pumpReplies(this.upSource);
    // A pooled connection's reply pump stays parked on a read the pool now owns: not awaited.
    if (this.lease?.recycle !== undefined) this.detachedPump = Promise.withResolvers();
    try {
      for (;;) {
        const end = this.detachedPump === undefined
          ? await replies
          : await Promise.race([replies, this.detachedPump.promise]);
        if (this.closed) break;
        if (end.end === "write_error") {
          this.downstreamFailed(end.error);
          break;
        }
        // The upstream connection ended: its EOF, its error, or a failed write to it.
        if (this.untried && this.failover === undefined && this.target !== undefined) {
          // A pooled connection that died before this client sent a byte on it was dead when
          // handed out (the server closed it as it was taken): a fresh dial would have served.
          const source = await this.redial();
          if (source === undefined) break;
          replies = this.pumpReplies(source);
          continue;
        }
        const error = this.writeError ?? end.error;
        this.writeError = undefined;
        const why: CloseReason = error !== undefined ? "upstream_error" : "upstream_closed";
        // With resume, a REQ whose Seq is above 2^53 and that got no answer yet is replayed.
        if (this.clientEof && this.answered()) {
          this.finish("completed");
          break;
        }
        if (this.failover === undefined) {
          this.upstreamEnded(why, error);
          break;
        }
        const source = await this.resume(why, error);
        if (source === undefined) break;
        replies = this.pumpReplies(source);
      }
    } catch (error) {
      this.internalError(error);
    }
    await requests;
    this.downSource.release();
    this.upSource.release();
    signal?.removeEventListener("abort", this);
    this.config.timers.clearTimeout(this.timer);
    this.requests.end();
    this.replies.end();
    this.tracker.close();
    const reason = this.reason ?? "client_closed";
    if (this.own !== undefined) {
      this.own.fold();
      this.own.report(this, reason);
    }
    return reason;
  }

  /** The abort signal's listener (an EventListenerObject: no closure needed). */
  handleEvent(): void {
    // A reload that denied the client's source aborts with "denied" (see Proxy.setAccess).
    this.finish(this.signal?.reason === "denied" ? "denied" : "shutdown");
  }

  /** Ends the connection: closes both sockets and wakes every waiter. The first reason wins. */
  finish(reason: CloseReason): void {
    if (this.closed) return;
    this.closed = true;
    this.reason = reason;
    closeQuietly(this.down);
    if (!this.pooled) closeQuietly(this.up);
    // An upstream that closed while replies were owed failed this client as surely as a reset.
    this.releaseLease(
      reason === "upstream_error" || (reason === "upstream_closed" && this.state.outstanding > 0),
    );
    this.failover?.abort();
    this.redialing?.abort();
    this.room?.resolve();
    this.need?.resolve();
    this.setReady(false);
  }

  // ---- downstream -> upstream ----

  /** Tells the target the current upstream connection ended (once). */
  releaseLease(failed: boolean): void {
    const lease = this.lease;
    this.lease = undefined;
    this.counters = undefined;
    lease?.release?.(failed);
  }

  /** A bug, not a peer: end this connection only, count it, and say so. */
  internalError(error: unknown): void {
    this.stats.internalErrors++;
    this.logger?.error("Internal error on {connection}: {error}", {
      connection: this.label,
      error: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
    });
    this.finish("downstream_error");
  }

  /**
   * The request pump. One async frame per direction, no wrapper (an idle connection keeps every
   * suspended frame alive); a bug thrown here ends this connection only.
   */
  async pumpRequests(): Promise<void> {
    const { state, stats, config, log } = this;
    const source = this.downSource;
    const gated = config.maxInflight > 0;
    const rate = this.rate;
    try {
      for (;;) {
        let chunk: Uint8Array | null;
        try {
          if (source.holding) {
            chunk = await source.next();
          } else {
            const got = await source.read();
            chunk = got === null ? source.end() : source.take(got);
          }
        } catch (error) {
          if (!this.closed) this.downstreamFailed(error);
          return;
        }
        if (chunk === null) return this.clientEnded();
        if (this.closed) return;
        const n = chunk.length;
        state.writing++;
        try {
          // Without a gate (or with room for the whole chunk) this runs once over the whole chunk.
          for (let start = 0; start < n;) {
            let budget = Infinity;
            if (gated) {
              budget = config.maxInflight - this.inFlight();
              while (budget <= 0) {
                if (this.closed) return;
                stats.inflightLimitPauses++;
                this.room = Promise.withResolvers();
                await this.room.promise;
                budget = config.maxInflight - this.inFlight();
              }
            }
            // Tokens for at most the REQs the budget allows, given back below if unused; only
            // an empty bucket costs a wait (no promise per chunk while tokens are there).
            if (rate !== undefined) {
              const got = rate.take(budget);
              budget = got > 0 ? got : await takeTokens(rate, budget, this, config.timers, stats);
              if (budget === 0) return;
            }
            // The chunk waits while the upstream is being replaced: its REQs follow the replay.
            if (this.failing && !await this.waitReady()) return;
            if (this.closed) return;
            // Tracking that a burst turned off starts again once nothing is owed, at a line start.
            if (
              log?.disabled && !log.renumbering && state.outstanding === 0 && !this.requests.midLine
            ) {
              log.restart();
            }
            // One clock reading per chunk serves the rate windows, timers and latency tracker.
            const now = stats.clock();
            this.tracker.setTime(now);
            // Feed the analyzer as far as the budget allows (in steps that each stay within what
            // is left of it), then forward that much at once.
            let end = start;
            let valid = 0;
            while (end < n && valid < budget) {
              const stop = cutForBudget(chunk, end, budget - valid);
              valid += this.requests.feed(
                end === 0 && stop === n ? chunk : chunk.subarray(end, stop),
              );
              end = stop;
            }
            if (rate !== undefined && valid < budget) rate.giveBack(budget - valid);
            const part = start === 0 && end === n ? chunk : chunk.subarray(start, end);
            start = end;
            stats.bytesDownstream += part.length;
            if (this.own !== undefined) this.own.fromClient(part.length);
            state.lastActivity = now;
            if (valid > 0) {
              state.outstanding = this.tracker.outstanding;
              state.unmatchablePending = this.tracker.unmatchablePending;
              stats.recordRequests(valid, now);
              if (this.counters !== undefined) this.counters.requests += valid;
            }
            let bytes = part;
            if (log !== undefined) {
              const length = log.feed(part);
              if (length < 0) {
                stats.resumeFailures++;
                this.logger?.warning(
                  "Closing {connection}: cannot renumber a REQ head longer than 4096 bytes or more than {max} REQs unanswered",
                  { connection: this.label, max: log.maxEntries },
                );
                this.finish("downstream_error");
                return;
              }
              if (log.renumbering) bytes = log.out.subarray(0, length);
              else if (this.muteLine) bytes = this.unmute(part);
            }
            if (bytes.length === 0) continue;
            const up = this.up;
            this.untried = false;
            try {
              let off = 0;
              while (off < bytes.length) {
                off += await up.write(off === 0 ? bytes : bytes.subarray(off));
              }
            } catch (error) {
              if (this.closed) return;
              if (this.failover === undefined) {
                this.upstreamEnded("upstream_error", error);
                return;
              }
              // The REQs of this part are in the log: they are replayed on the next upstream.
              if (up === this.up && !this.failing) {
                this.writeError = error;
                closeQuietly(up);
              }
            }
          }
        } finally {
          state.writing--;
        }
      }
    } catch (error) {
      this.internalError(error);
    }
  }

  /**
   * What the in-flight gate holds: the REQs owed a reply, and those whose Seq is above 2^53 (no
   * reply can be matched to them, but they are as much work for the server).
   */
  inFlight(): number {
    return this.state.outstanding + this.state.unmatchablePending;
  }

  /**
   * Whether every REQ forwarded has had its answer: those owed a matching reply, and those whose
   * Seq is above 2^53 (every REQ is answered; theirs is a reply that matches nothing).
   */
  answered(): boolean {
    return this.state.outstanding === 0 && this.state.unmatchablePending === 0;
  }

  /** The client half-closed: end now if nothing is owed, else pass the FIN on and wait. */
  clientEnded(): void {
    if (this.closed) return;
    this.clientEof = true;
    this.partialAtEof = this.requests.midLine;
    this.log?.end();
    if (this.answered() && !this.replyBusy && this.othersAnswered()) {
      // Nothing owed and the FIN not passed on: the upstream connection may serve another client.
      if (this.lease?.recycle !== undefined) this.recycle();
      this.finish("client_closed");
      return;
    }
    if (!this.failing) {
      try {
        // Async: a rejection (the upstream is gone already) must not go unhandled.
        this.up.closeWrite().catch(() => {});
      } catch {
        // Closed already: the reply pump notices.
      }
    }
    this.need?.resolve(); // a failover waiting for the client to speak re-checks
    if (this.answered()) this.linger();
    else if (this.config.halfCloseTimeoutMs > 0) this.arm(this.config.halfCloseTimeoutMs);
  }

  /**
   * `--pool`: offers the upstream connection to the idle pool when the exchange ended provably
   * clean: no partial line either way, nothing being written, not failing over (every REQ
   * answered and the FIN not sent upstream are the caller's part). The pending reply read goes
   * with it; the reply pump returns untouched when it completes.
   */
  recycle(): void {
    const lease = this.lease!;
    if (
      this.partialAtEof || this.requests.midLine || this.replies.midLine || this.failing ||
      this.replyBusy || this.state.writing > 0 || this.muteLine || this.writeError !== undefined
    ) return;
    const rest = this.upSource.detach();
    if (rest === undefined) return;
    if (lease.recycle!(this.up, rest)) {
      this.pooled = true;
      this.lease = undefined; // released by the pool, as not failed
      this.counters = undefined;
      // Only now: otherwise run() waits for the reply pump, which may be writing from its buffer.
      this.detachedPump?.resolve({ end: "eof" });
    }
    // Refused: finish() closes the connection; the detached pump's read then fails and returns.
  }

  /**
   * Whether the client's lines that owe no reply a proxy can match (invalid lines, REQs whose Seq
   * is above 2^53, a partial last line) have had as many answers that matched nothing (replies
   * with another Seq, invalid lines from the server). Servers that answer every line answer
   * these too, after the REQs before them; servers that do not are waited for only
   * {@linkcode EngineConfig.lingerMs}.
   */
  othersAnswered(): boolean {
    const sent = this.othersSent();
    return sent === 0 || this.othersCredit >= sent;
  }

  /** The client's lines that owe no reply a proxy can match, so far. */
  othersSent(): number {
    return this.requests.invalidLines + this.tracker.unmatchable + (this.partialAtEof ? 1 : 0);
  }

  /**
   * Credits upstream lines that answered nothing (`answers` in all) to the client's other lines.
   * A server answers a line only after it got it, so no more can be answers than such lines were
   * sent by now: a duplicate or unsolicited reply before a client's invalid line is not its answer.
   */
  creditAnswers(answers: number): void {
    const credit = this.othersCredit + answers - this.answersSeen;
    const sent = this.othersSent();
    this.othersCredit = credit < sent ? credit : sent;
    this.answersSeen = answers;
  }

  /** Every REQ is answered after the FIN: wait a little for answers to the other lines. */
  linger(): void {
    if (this.lingering) return;
    this.lingering = true;
    this.arm(lingerLimit(this.config));
  }

  /** Drops `part` up to and including its first newline while a line is muted. */
  unmute(part: Uint8Array): Uint8Array {
    const nl = part.indexOf(NL);
    if (nl < 0) return EMPTY;
    this.muteLine = false;
    return part.subarray(nl + 1);
  }

  // ---- upstream -> downstream ----

  async pumpReplies(source: ChunkSource): Promise<PumpEnd> {
    const { state, stats, log } = this;
    // With resume, replies go out whole lines only: a reply cut by the upstream's death never
    // reaches the client half-written.
    const whole = log !== undefined;
    for (;;) {
      let chunk: Uint8Array | null;
      try {
        // A pooled connection's source first serves the read pending when it was pooled.
        if (source.holding) {
          chunk = await source.next();
        } else {
          const got = await source.read();
          // Pooled meanwhile: the bytes (or end) are the pool's, or the next client's.
          if (source.detached) return { end: "eof" };
          chunk = got === null ? source.end() : source.take(got);
        }
      } catch (error) {
        return { end: "read_error", error };
      }
      if (source.detached) return { end: "eof" };
      if (chunk === null) return { end: "eof" };
      let k = chunk.length;
      if (whole) {
        const nl = chunk.lastIndexOf(NL);
        if (nl >= 0) {
          k = nl + 1;
        } else if (source.keep(chunk, 0)) {
          // A reply line still arriving is activity (the idle and half-close timers).
          state.lastActivity = stats.clock();
          continue;
        }
        // else: a line longer than the largest buffer cannot be held back whole.
      }
      const raw = k === chunk.length ? chunk : chunk.subarray(0, k);
      let bytes = raw;
      if (log?.renumbering) {
        const rewriter = this.rewriter!;
        const dropped = rewriter.dropped;
        const length = rewriter.feed(raw); // may reallocate rewriter.out: read it after
        bytes = rewriter.out.subarray(0, length);
        if (rewriter.dropped > dropped) {
          stats.repliesDropped += rewriter.dropped - dropped;
          this.logger?.warning(
            "Dropped {count} reply(ies) on {connection}: their Seq matches no REQ sent on this upstream connection (--resume=renumber)",
            { count: rewriter.dropped - dropped, connection: this.label },
          );
        }
      }
      const now = stats.clock();
      this.tracker.setTime(now);
      const valid = this.replies.feed(bytes);
      const answers = this.replies.invalidLines + this.tracker.unmatched;
      if (answers !== this.answersSeen) this.creditAnswers(answers);
      stats.bytesUpstream += raw.length;
      if (this.own !== undefined) this.own.fromUpstream(raw.length);
      state.lastActivity = now;
      if (valid > 0) {
        // Only a reply with the Seq of an unanswered REQ answers it: a duplicate, unsolicited or
        // undecodable-line reply (`NAK 0`) neither ends the exchange nor opens the gate, unless
        // a REQ whose Seq is above 2^53 awaits an answer (then it is that answer).
        state.outstanding = this.tracker.outstanding;
        state.unmatchablePending = this.tracker.unmatchablePending;
        if (this.room !== undefined && this.inFlight() < this.config.maxInflight) {
          this.room.resolve();
          this.room = undefined;
        }
        stats.recordResponses(valid, now);
        if (this.counters !== undefined) this.counters.replies += valid;
      }
      if (bytes.length > 0) {
        state.writing++;
        this.replyBusy = true;
        try {
          let off = 0;
          while (off < bytes.length) {
            off += await this.down.write(off === 0 ? bytes : bytes.subarray(off));
          }
        } catch (error) {
          return { end: "write_error", error };
        } finally {
          state.writing--;
          this.replyBusy = false;
        }
        if (whole) this.clientMidLine = bytes[bytes.length - 1] !== NL;
      }
      if (k < chunk.length) source.keep(chunk, k);
      if (this.clientEof && this.answered() && !this.closed) {
        if (this.othersAnswered()) {
          this.finish("completed");
          return { end: "eof" };
        }
        this.linger();
      }
    }
  }

  // ---- upstream ends ----

  /** The upstream connection ended and is not replaced: count, log, close. */
  upstreamEnded(why: CloseReason, error: unknown): void {
    if (this.closed) return;
    if (why === "upstream_error") this.stats.upstreamErrors++;
    this.logger?.warning("Upstream {what} on {connection}: {error}", {
      what: why === "upstream_error" ? "failed" : "closed first",
      connection: this.label,
      error: String(error ?? "end of stream"),
    });
    this.finish(why);
  }

  downstreamFailed(error: unknown): void {
    if (this.closed) return;
    // A client that resets is routine (and a flood of them must not flood the log): debug only;
    // connections_closed.downstream_error counts every one.
    this.logger?.debug("Downstream failed on {connection}: {error}", {
      connection: this.label,
      error: String(error),
    });
    this.finish("downstream_error");
  }

  /**
   * `--pool`: replaces a pooled upstream connection that ended before this client sent a byte on
   * it; the request pump waits meanwhile. Returns the new connection's source, or undefined once
   * the session ended.
   */
  async redial(): Promise<ChunkSource | undefined> {
    const { config, stats } = this;
    this.untried = false;
    this.failing = true;
    closeQuietly(this.up);
    this.releaseLease(false);
    const abort = new AbortController();
    this.redialing = abort;
    let next: TargetConnection;
    try {
      next = await this.target!.dial({
        retries: config.reconnectRetries,
        backoffMs: config.reconnectBackoffMs,
        maxBackoffMs: config.maxReconnectBackoffMs,
        signal: this.signal === undefined
          ? abort.signal
          : AbortSignal.any([abort.signal, this.signal]),
        onRetry: () => stats.upstreamConnectRetries++,
      });
    } catch (error) {
      if (this.closed) return undefined;
      stats.upstreamErrors++;
      this.logger?.warning(
        "Cannot replace the dead pooled upstream connection of {connection}: {error}",
        {
          connection: this.label,
          error: String(error),
        },
      );
      this.finish("upstream_unreachable");
      return undefined;
    } finally {
      this.redialing = undefined;
    }
    if (this.closed) {
      closeQuietly(next.conn);
      next.release?.(false);
      return undefined;
    }
    this.up = next.conn;
    this.lease = next;
    this.counters = next.counters;
    this.lastUpstream = next.upstream;
    this.untried = next.rest !== undefined;
    this.upSource.release();
    this.upSource = upstreamSource(next.conn, config, next.rest);
    this.failing = false;
    this.setReady(true);
    return this.upSource;
  }

  /**
   * Resume: replaces the dead upstream connection and replays the unanswered REQs on it.
   * Returns the new connection's source, or undefined once the session ended.
   */
  async resume(why: CloseReason, error: unknown): Promise<ChunkSource | undefined> {
    const { stats, log, state } = this;
    const failover = this.failover!;
    const generation = ++this.generation;
    // The failovers in a row start over only when this connection answered a REQ, or died
    // owing nothing (its death was not a REQ's doing). Time alone proves nothing: an upstream
    // that a poison REQ kills after 1.2 s would have it replayed for ever. A REQ whose Seq is
    // above 2^53 is owed no matchable reply yet is replayed: only an answer to it (one that
    // matches nothing, like `NAK 0`) clears it, or it could kill upstreams for ever.
    const tracker = this.tracker;
    const healthy = tracker.matched > this.matchedAtConnect ||
      (state.outstanding === 0 &&
        (log!.outstanding === 0 || tracker.unmatched > this.unmatchedAtConnect));
    this.failing = true;
    closeQuietly(this.up);
    const dead = this.lease?.upstream;
    this.releaseLease(why === "upstream_error" || state.outstanding > 0);
    if (why === "upstream_error") stats.upstreamErrors++;
    const what = why === "upstream_error" ? `failed (${String(error)})` : "closed";
    const cannot = log!.disabled
      ? `a REQ head was longer than 4096 bytes or more than ${log!.maxEntries} REQs were unanswered`
      : !log!.replayable
      ? "an unanswered REQ was too long to keep for replay"
      : this.clientMidLine
      ? "the client already got part of a reply line"
      : undefined;
    if (cannot !== undefined) {
      stats.resumeFailures++;
      this.logger?.warning("Upstream {what} on {connection}; cannot resume: {cannot}", {
        what,
        connection: this.label,
        cannot,
      });
      this.finish(why);
      return undefined;
    }
    if (log!.empty && this.ready === undefined) {
      // Nothing is owed: dial again only when the client speaks (or leave with it).
      if (!this.clientEof) {
        this.need = Promise.withResolvers();
        await this.need.promise;
        this.need = undefined;
      }
      if (this.closed) return undefined;
      if (this.clientEof && state.outstanding === 0) {
        this.finish("client_closed");
        return undefined;
      }
    }
    const next = await failover.replace(why, what, healthy, dead);
    if (this.closed) {
      if (typeof next !== "string") {
        closeQuietly(next.conn);
        next.release?.(false);
      }
      return undefined;
    }
    if (typeof next === "string") {
      this.finish(next);
      return undefined;
    }
    const up = next.conn;
    this.lease = next;
    this.counters = next.counters;
    this.lastUpstream = next.upstream;
    let bytes: Uint8Array;
    let count: number;
    if (this.config.resume === "renumber") {
      const replay = log!.replay()!;
      this.rewriter ??= new ReplyRewriter(log!);
      this.rewriter.reset();
      bytes = replay.bytes;
      count = replay.requests;
    } else {
      const replay = log!.replayVerbatim()!;
      this.muteLine = replay.muteRest;
      bytes = replay.bytes;
      count = replay.requests;
    }
    this.up = up;
    this.matchedAtConnect = this.tracker.matched;
    this.unmatchedAtConnect = this.tracker.unmatched;
    this.upSource.release();
    const source = upstreamSource(up, this.config, next.rest);
    this.upSource = source;
    stats.failovers++;
    if (this.own !== undefined) this.own.failovers++;
    stats.replays += count;
    this.logger?.info(
      "Upstream {what} on {connection}; resumed on {upstream}, replayed {count} REQ(s)",
      { what, connection: this.label, upstream: next.upstream, count },
    );
    // Replies may start before the replay is fully written: the caller reads them at once,
    // while this writes in the background and hands the connection to the request pump.
    void this.replay(up, bytes, generation);
    return source;
  }

  async replay(up: Deno.Conn, bytes: Uint8Array, generation: number): Promise<void> {
    try {
      let off = 0;
      while (off < bytes.length) off += await up.write(off === 0 ? bytes : bytes.subarray(off));
      if (this.clientEof && generation === this.generation) up.closeWrite().catch(() => {});
    } catch (error) {
      // The new connection died already: its reply pump ends and the supervisor goes again.
      if (generation === this.generation && !this.closed) {
        this.writeError = error;
        closeQuietly(up);
      }
      return;
    }
    // A later failover has begun meanwhile: this connection is dead, the next one is not ready.
    if (generation !== this.generation || this.closed) return;
    this.failing = false;
    this.setReady(true);
  }

  waitReady(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    this.ready ??= Promise.withResolvers<boolean>();
    this.need?.resolve();
    return this.ready.promise;
  }

  setReady(ok: boolean): void {
    const ready = this.ready;
    this.ready = undefined;
    ready?.resolve(ok);
  }

  // ---- timers: idle, and half-closed with replies owed ----

  arm(ms: number): void {
    const timers = this.config.timers;
    timers.clearTimeout(this.timer);
    this.timerBound ??= () => this.onTimer();
    this.timer = timers.setTimeout(this.timerBound, Math.max(1, ms));
  }

  onTimer(): void {
    this.timer = undefined;
    if (this.closed) return;
    const { config, state } = this;
    const quiet = this.stats.clock() - state.lastActivity;
    if (this.clientEof && this.answered() && this.lingering) {
      const limit = lingerLimit(config);
      if (quiet < limit) return this.arm(limit - quiet);
      this.logger?.debug(
        "Closing {connection}: every REQ answered; no answer to its other lines for {ms} ms",
        { connection: this.label, ms: limit },
      );
      this.finish("completed");
      return;
    }
    if (this.clientEof && config.halfCloseTimeoutMs > 0) {
      const limit = config.halfCloseTimeoutMs;
      if (quiet < limit) return this.arm(limit - quiet);
      this.logger?.info(
        "Closing {connection}: half-closed with {owed} REQ(s) unanswered and no reply for {ms} ms",
        { connection: this.label, owed: state.outstanding + state.unmatchablePending, ms: limit },
      );
      this.finish("half_close_timeout");
      return;
    }
    const limit = config.idleTimeoutMs;
    if (limit <= 0) return;
    if (!state.idle) return this.arm(limit);
    if (quiet < limit) return this.arm(limit - quiet);
    this.finish("idle_timeout");
  }
}

/** The reply pump's source on `up`, serving first the read pending when it was pooled (`rest`). */
function upstreamSource(
  up: Deno.Conn,
  config: EngineConfig,
  rest: Promise<Uint8Array | null> | undefined,
): ChunkSource {
  return new ChunkSource(up, {
    initialSize: config.initialBufferSize,
    maxSize: config.maxBufferSize,
    pool: config.bufferPool ?? undefined,
    held: rest === undefined ? undefined : { bytes: EMPTY, rest },
  });
}

/** Fewest REQs matched by Seq per connection, whatever the in-flight limit. */
const MIN_MATCHED = 1024;

/** How long a finished exchange waits for answers to the client's other lines. */
function lingerLimit(config: EngineConfig): number {
  return config.halfCloseTimeoutMs > 0
    ? Math.min(config.lingerMs, config.halfCloseTimeoutMs)
    : config.lingerMs;
}

/** RequestLog's own default entry cap for `retainLimit`. */
function defaultMaxEntries(retainLimit: number): number {
  return Math.max(1024, Math.floor(retainLimit / 64));
}

/**
 * The end of a prefix of `chunk[start..]` that cannot complete more than `budget` (≥ 1, or
 * `Infinity`: all of it) valid REQs. Every completed valid REQ but the first (which may finish a
 * line begun in an earlier chunk with just its newline) spans at least {@linkcode MIN_REQ_LINE}
 * bytes of the chunk, so a byte count bounds them without scanning; small budgets cut after the
 * `budget`-th newline instead, so one REQ is not forwarded a byte at a time.
 */
function cutForBudget(chunk: Uint8Array, start: number, budget: number): number {
  const n = chunk.length;
  if (budget >= 1 + Math.floor((n - start - 1) / MIN_REQ_LINE)) return n;
  const safe = 1 + MIN_REQ_LINE * (budget - 1);
  if (safe >= 4096) return start + safe;
  let i = start;
  for (let k = 0; k < budget; k++) {
    const nl = chunk.indexOf(NL, i);
    if (nl < 0) return n;
    i = nl + 1;
  }
  return i;
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

/** A connection's own counters for the access log (only allocated when it is on). */
class OwnFigures {
  readonly onEnd: (summary: ConnectionSummary) => void;
  readonly shared: MessageCounts;
  /** What the analyzers counted since the last fold. */
  readonly counts: MessageCounts = createMessageCounts();
  readonly totals: MessageCounts = createMessageCounts();
  readonly latency = new Histogram();
  bytesFromClient = 0;
  bytesFromUpstream = 0;
  failovers = 0;
  startedAt = NaN;

  constructor(onEnd: (summary: ConnectionSummary) => void, shared: MessageCounts) {
    this.onEnd = onEnd;
    this.shared = shared;
  }

  fromClient(n: number): void {
    this.bytesFromClient += n;
    this.fold();
  }

  fromUpstream(n: number): void {
    this.bytesFromUpstream += n;
    this.fold();
  }

  /** Adds what was counted since the last fold to the shared counters and the totals. */
  fold(): void {
    const c = this.counts;
    for (const key of COUNT_KEYS) {
      const n = c[key];
      if (n !== 0) {
        this.shared[key] += n;
        this.totals[key] += n;
        c[key] = 0;
      }
    }
  }

  report(session: Session, reason: CloseReason): void {
    const t = this.totals;
    const now = session.stats.clock();
    const latency = this.latency;
    this.onEnd({
      startedAt: this.startedAt,
      durationMs: now - this.startedAt,
      bytesFromClient: this.bytesFromClient,
      bytesFromUpstream: this.bytesFromUpstream,
      reqs: t.msg_req,
      acks: t.msg_ack,
      naks: t.msg_nak,
      invalid: t.invalid_type + t.invalid_seq + t.invalid_direction + t.invalid_truncated,
      latencyP50Ms: latency.count > 0 ? latency.quantile(0.5) * 1000 : NaN,
      latencyMaxMs: latency.count > 0 ? latency.max * 1000 : NaN,
      upstream: session.lastUpstream,
      failovers: this.failovers,
      reason,
    });
  }
}

const COUNT_KEYS = [
  "msg_req",
  "msg_ack",
  "msg_nak",
  "invalid_type",
  "invalid_seq",
  "invalid_direction",
  "invalid_truncated",
] as const satisfies readonly (keyof MessageCounts)[];
