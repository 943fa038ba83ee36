/**
 * `--mux N`: every client of a data plane shares N upstream connections per upstream
 * ({@linkcode MuxHub}). A client's whole REQ lines are forwarded verbatim on the shared
 * connection its unanswered REQs are on (so its order is kept), interleaved with other clients'
 * only at line boundaries; each shared connection writes once per event-loop turn what every
 * client queued meanwhile; replies come back in order and are routed first-in first-out to
 * their clients (a Foo server answers each line in order), each client's in its own order.
 *
 * Safety rules, each so that no client's bytes can shift another's replies:
 * - only whole, valid REQ lines are forwarded: an invalid line (which some servers answer and
 *   some do not), a REQ whose Seq has more digits than a server decodes (18), or one holding a
 *   byte a server might split lines at (a control character, a Unicode line separator), is
 *   refused and counted, never forwarded; a line still arriving waits in its client's buffer; a
 *   line at end of stream without its newline is refused;
 * - every reply must answer the REQ at the head of the queue (its Seq, and ACK/NAK): a reply that
 *   does not (an unsolicited or invalid line, a duplicate followed by a REQ of another Seq) means
 *   the connection is out of step, and it is closed as failed rather than routing anything
 *   further on it. The limit: the proxy trusts the server to answer each line once (Foo servers
 *   do); a duplicate reply whose next REQ in line has the same Seq cannot be told from that REQ's
 *   answer;
 * - a client that does not read gets its replies buffered (bounded), never blocking the shared
 *   connection; past `--max-inflight` unwritten replies its reads pause, and past a hard byte
 *   limit it is closed;
 * - a client holds a shared connection only while it has REQs unanswered there: an idle client
 *   holds no upstream socket, and takes the least busy connection when it speaks again.
 *
 * When a shared connection dies, its clients with REQs unanswered there are closed (nothing else
 * is touched), or, with `--resume`, their unanswered REQs are sent again, in order, on another.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { MSG_ACK } from "../protocol/analyzer.ts";
import {
  hasInnerBreak,
  INVALID_DIRECTION,
  INVALID_SEQ,
  INVALID_TYPE,
  type LineHead,
  readLineHead,
} from "../protocol/line_head.ts";
import { Histogram } from "../stats/histogram.ts";
import type { CloseReason, Stats } from "../stats/stats.ts";
import type { BridgeState, ConnectionSummary } from "./bridge.ts";
import { ChunkSource } from "./chunk_source.ts";
import type { EngineConfig } from "./engine_config.ts";
import type { TargetConnection, UpstreamTarget } from "./upstream_target.ts";
import { type SourceRate, takeTokens } from "./source_table.ts";

/** Options for {@linkcode MuxHub}. */
export interface MuxHubOptions {
  /** Where counters go. */
  stats: Stats;
  /** Where shared connections come from (balancing, health, ejection). */
  target: UpstreamTarget;
  /** Shared connections per upstream (`--mux N`), at least 1. */
  connections: number;
  /** Log sink; unset: nothing is logged. */
  logger?: Logger;
  /** Connect attempts after a failed one, per shared connection dialed. @default {3} */
  connectRetries?: number;
  /** Backoff before the first connect retry in ms. @default {100} */
  connectBackoffMs?: number;
  /** Keep each forwarded REQ's bytes until answered, to replay them (`--resume`). */
  resume?: boolean;
  /**
   * Called when a client has ended (its socket closed), with its `owner` and why: one function
   * for every client, so an idle client keeps no closure of its own.
   */
  ended?: (owner: unknown, reason: CloseReason) => void;
}

/** Options for {@linkcode MuxHub.serve}: what is particular to one client. */
export interface MuxClientOptions {
  /** The engine's settings (in-flight limit, timeouts, buffers, resume). */
  config: EngineConfig;
  /** Text naming the client in log lines. */
  label?: string;
  /** Live state for the owner (idle checks, shutdown order). */
  state?: BridgeState;
  /** Called once at the end with this client's own figures (the access log). */
  onEnd?: (summary: ConnectionSummary) => void;
  /** Handed to {@linkcode MuxHubOptions.ended} when the client has ended. */
  owner?: unknown;
  /**
   * `--rate-limit-per-source`: the token bucket of the client's source; each REQ forwarded takes
   * a token, and with none left the client is not read until there is one. Unset: no limit.
   */
  rate?: SourceRate;
}

const NL = 10;
/**
 * Unwritten reply bytes a client may have buffered before it is closed: replies to REQs already
 * forwarded keep coming whether the client reads or not, and must not block the shared
 * connection, so a client that stopped reading is cut off here.
 */
const MAX_UNWRITTEN = 4 * 1024 * 1024;
/**
 * The longest Seq forwarded, in digits: servers that answer every line answer a longer one as
 * invalid (`NAK 0 ERRDECODE`, Seq 0: more than their integer holds) and others may skip it;
 * either way the replies behind it would be out of step.
 */
const MAX_SEQ_DIGITS = 18;
/** Bytes queued on a shared connection past which its clients wait for the write under way. */
const CHANNEL_HIGH_WATER = 1024 * 1024;
/** After a failed dial, how long working shared connections carry on before another is tried. */
const REDIAL_MS = 1000;

/** The shared upstream connections of one data plane, and the clients they serve. */
export class MuxHub {
  readonly stats: Stats;
  readonly target: UpstreamTarget;
  readonly logger: Logger | undefined;
  readonly perUpstream: number;
  readonly connectRetries: number;
  readonly connectBackoffMs: number | undefined;
  readonly resume: boolean;
  readonly ended: ((owner: unknown, reason: CloseReason) => void) | undefined;
  /** Open shared connections (dying ones are removed at once). */
  readonly channels: Channel[] = [];
  /** Shared connections being dialed. */
  dialing: Promise<Channel | CloseReason> | undefined = undefined;
  /** No dial for more connections (while some work) before this `stats.clock` time. */
  nextDialAt = 0;
  closed = false;
  /** Aborts a dial under way when the hub closes (a dial backing off could take many seconds). */
  readonly #abort = new AbortController();
  /** Reused by the line parsers (single-threaded, never held across an await). */
  readonly head: LineHead = { type: 0, seq: 0, digits: 0 };

  /** A hub dialing through `options.target`; nothing is dialed before a client needs it. */
  constructor(options: MuxHubOptions) {
    if (!Number.isSafeInteger(options.connections) || options.connections < 1) {
      throw new RangeError(`Invalid mux connections ${options.connections}: expected >= 1`);
    }
    this.stats = options.stats;
    this.target = options.target;
    this.logger = options.logger;
    this.perUpstream = options.connections;
    this.connectRetries = options.connectRetries ?? 3;
    this.connectBackoffMs = options.connectBackoffMs;
    this.resume = options.resume ?? false;
    this.ended = options.ended;
  }

  /** Shared connections open now. */
  get size(): number {
    return this.channels.length;
  }

  /** Most shared connections: N per upstream. */
  get limit(): number {
    return this.perUpstream * Math.max(1, this.target.upstreamCount ?? 1);
  }

  /**
   * A client to serve: `run()` it (it resolves with why it ended, never rejects; the downstream
   * is closed by then); `stop()` ends it (reason `shutdown`).
   */
  client(downstream: Deno.Conn, options: MuxClientOptions): MuxClient {
    return new MuxClient(this, downstream, options);
  }

  /**
   * The shared connection a client with nothing unanswered should use: the least busy usable
   * one, unless every one is busy and fewer than the limit are open (then a new one is dialed).
   * A promise while one must be dialed; a reason when none can be had.
   */
  acquire(): Channel | Promise<Channel | CloseReason> | CloseReason {
    if (this.closed) return "shutdown";
    let best: Channel | undefined;
    /** The least busy connection to an upstream that is down or ejected but not draining. */
    let fallback: Channel | undefined;
    // Backwards: a retired connection leaves the list at once.
    for (let i = this.channels.length - 1; i >= 0; i--) {
      const channel = this.channels[i];
      if (!channel.usable()) {
        // Its upstream is draining, ejected or down: closed once idle.
        if (channel.size === 0 && !channel.writing) {
          channel.fail("shutdown", undefined);
        } else if (
          channel.accepting() && (fallback === undefined || channel.size < fallback.size)
        ) {
          fallback = channel;
        }
        continue;
      }
      if (best === undefined || channel.size < best.size) best = channel;
    }
    // Every open connection counts toward the limit, usable or not, so the upstream never sees
    // more than N per worker even while its state flaps.
    const full = this.channels.length >= this.limit;
    if (best !== undefined && (best.size === 0 || full)) return best;
    if (this.dialing !== undefined) return best ?? this.dialing;
    // At the limit with nothing up: the least busy connection anyway, as a 1:1 client is dialed
    // to an upstream that is down when none is up (never to one that is draining).
    if (full && fallback !== undefined) return fallback;
    // After a failed dial, the working connections carry on alone for a while.
    if (best !== undefined && this.stats.clock() < this.nextDialAt) return best;
    const dialing = this.#dial();
    if (best !== undefined) {
      // Busy but working: use it now; the new one takes later clients.
      dialing.catch(() => {});
      return best;
    }
    return dialing;
  }

  #dial(): Promise<Channel | CloseReason> {
    const dialing = (async (): Promise<Channel | CloseReason> => {
      try {
        const lease = await this.target.dial({
          signal: this.#abort.signal,
          retries: this.connectRetries,
          backoffMs: this.connectBackoffMs,
          onRetry: () => this.stats.upstreamConnectRetries++,
        });
        if (this.closed) {
          closeQuietly(lease.conn);
          lease.release?.(false);
          return "shutdown";
        }
        const channel = new Channel(this, lease);
        this.channels.push(channel);
        this.stats.muxUpstreamConnections = this.channels.length;
        this.logger?.debug("Shared upstream connection {n} open to {upstream}", {
          n: this.channels.length,
          upstream: lease.upstream,
        });
        void channel.pump();
        return channel;
      } catch (error) {
        this.stats.upstreamErrors++;
        this.logger?.warning("Cannot open a shared upstream connection: {error}", {
          error: error instanceof Error ? error.message : String(error),
        });
        this.nextDialAt = this.stats.clock() + REDIAL_MS;
        return "upstream_unreachable";
      } finally {
        this.dialing = undefined;
      }
    })();
    this.dialing = dialing;
    return dialing;
  }

  /** Forgets a dead shared connection. */
  remove(channel: Channel): void {
    const at = this.channels.indexOf(channel);
    if (at >= 0) this.channels.splice(at, 1);
    this.stats.muxUpstreamConnections = this.channels.length;
  }

  /** Closes every shared connection (the proxy is closing; its clients have ended). */
  close(): void {
    this.closed = true;
    this.#abort.abort();
    for (const channel of [...this.channels]) channel.fail("shutdown", undefined);
  }
}

/** One shared upstream connection: a write queue out, and the FIFO of owed replies in. */
class Channel {
  readonly hub: MuxHub;
  readonly conn: Deno.Conn;
  readonly source: ChunkSource;
  readonly lease: TargetConnection;
  readonly name: string;
  /** Keeps each queued REQ's bytes for a replay (with `--resume`). */
  readonly keepLines: boolean;
  // The FIFO of REQs sent (or queued) and not answered: a ring.
  owners: (MuxClient | undefined)[] = new Array(64);
  seqs = new Float64Array(64);
  times = new Float64Array(64);
  lines: (Uint8Array | undefined)[] | undefined;
  first = 0;
  size = 0;
  // Bytes queued for the next write, and the buffer the write in progress uses.
  out = new Uint8Array(4096);
  outLength = 0;
  spare = new Uint8Array(4096);
  writing = false;
  flushQueued = false;
  dead = false;
  /** Clients waiting for the queue to fall below its high-water mark. */
  room: PromiseWithResolvers<void> | undefined = undefined;
  readonly flushBound: () => void;

  constructor(hub: MuxHub, lease: TargetConnection) {
    this.hub = hub;
    this.lease = lease;
    this.conn = lease.conn;
    this.name = lease.upstream;
    this.source = new ChunkSource(lease.conn, { initialSize: 1024, maxSize: 65536 });
    this.keepLines = hub.resume;
    if (hub.resume) this.lines = new Array(64);
    this.flushBound = () => void this.flush();
  }

  /** Whether new clients may be put on it (alive, and its upstream is taking connections). */
  usable(): boolean {
    return !this.dead && this.lease.usable?.() !== false;
  }

  /** Whether its upstream may still take clients at all (alive, not draining or removed). */
  accepting(): boolean {
    return !this.dead && this.lease.accepting?.() !== false;
  }

  /** Queues `buf[start, end)` (one whole REQ line with its newline) for `client`. */
  send(client: MuxClient, buf: Uint8Array, start: number, end: number, seq: number, now: number) {
    if (this.size === this.owners.length) this.#grow();
    const at = (this.first + this.size) % this.owners.length;
    this.owners[at] = client;
    this.seqs[at] = seq;
    this.times[at] = now;
    if (this.lines !== undefined) this.lines[at] = buf.slice(start, end);
    this.size++;
    const n = end - start;
    if (this.outLength + n > this.out.length) {
      let size = this.out.length * 2;
      while (size < this.outLength + n) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.out.subarray(0, this.outLength));
      this.out = bigger;
    }
    this.out.set(buf.subarray(start, end), this.outLength);
    this.outLength += n;
    if (!this.flushQueued && !this.writing) {
      this.flushQueued = true;
      queueMicrotask(this.flushBound);
    }
  }

  /** Writes what is queued: once per event-loop turn, and again after a write while more came. */
  async flush(): Promise<void> {
    this.flushQueued = false;
    if (this.writing || this.dead) return;
    this.writing = true;
    try {
      while (this.outLength > 0 && !this.dead) {
        const bytes = this.out.subarray(0, this.outLength);
        const spare = this.spare;
        this.spare = this.out;
        this.out = spare;
        this.outLength = 0;
        this.hub.stats.muxUpstreamWrites++;
        const room = this.room;
        if (room !== undefined) {
          // What was queued is on its way: waiting clients may queue again.
          this.room = undefined;
          room.resolve();
        }
        for (let off = 0; off < bytes.length;) {
          off += await this.conn.write(off === 0 ? bytes : bytes.subarray(off));
        }
      }
    } catch (error) {
      this.fail("upstream_error", error);
    } finally {
      this.writing = false;
    }
  }

  /** Resolves when the queued bytes went to the socket (or the connection died). */
  drained(): Promise<void> {
    this.room ??= Promise.withResolvers();
    return this.room.promise;
  }

  /** Reads replies and routes each to the client at the head of the FIFO. */
  async pump(): Promise<void> {
    const hub = this.hub;
    const stats = hub.stats;
    const head = hub.head;
    const source = this.source;
    for (;;) {
      let chunk: Uint8Array;
      try {
        const n = await source.read();
        if (n === null) return this.fail("upstream_closed", undefined);
        chunk = source.take(n);
      } catch (error) {
        return this.fail("upstream_error", error);
      }
      if (this.dead) return;
      const now = stats.clock();
      stats.bytesUpstream += chunk.length;
      let start = 0;
      let replies = 0;
      for (;;) {
        const nl = chunk.indexOf(NL, start);
        if (nl < 0) break;
        if (!readLineHead(chunk, start, nl, false, head)) {
          countInvalid(stats, head.type);
          return this.desync(`an invalid line`);
        }
        if (this.size === 0) {
          countReply(stats, head.type);
          return this.desync(`a reply (Seq ${head.seq}) with no REQ waiting`);
        }
        const at = this.first;
        const seq = this.seqs[at];
        if (seq >= 0 && head.seq >= 0 && seq !== head.seq) {
          countReply(stats, head.type);
          return this.desync(`a reply with Seq ${head.seq} where the REQ first in line has ${seq}`);
        }
        const client = this.owners[at];
        this.owners[at] = undefined;
        if (this.lines !== undefined) this.lines[at] = undefined;
        this.first = (at + 1) % this.owners.length;
        this.size--;
        countReply(stats, head.type);
        replies++;
        const latency = (now - this.times[at]) / 1000;
        stats.latency.histogram.record(latency);
        stats.latency.inFlight--;
        if (this.lease.counters !== undefined) this.lease.counters.replies++;
        if (client !== undefined) client.deliver(chunk, start, nl + 1, head.type, latency, this);
        start = nl + 1;
      }
      if (replies > 0) stats.recordResponses(replies, now);
      if (start < chunk.length && !source.keep(chunk, start)) {
        return this.desync("a reply line longer than 64 KiB");
      }
    }
  }

  /** A reply that answers nothing in line: the connection is out of step; it fails. */
  desync(what: string): void {
    this.hub.stats.muxDesyncs++;
    this.hub.logger?.warning(
      "Closing shared upstream connection to {upstream}: it sent {what}; {owed} REQ(s) were unanswered on it",
      { upstream: this.name, what, owed: this.size },
    );
    this.fail("upstream_error", new Error(`out of step: ${what}`));
  }

  /**
   * The connection ended or failed: forget it, and hand each client with REQs unanswered here
   * to {@linkcode MuxClient.lost} in the order they were sent.
   */
  fail(why: CloseReason, error: unknown): void {
    if (this.dead) return;
    this.dead = true;
    closeQuietly(this.conn);
    this.room?.resolve();
    this.hub.remove(this);
    const stats = this.hub.stats;
    const owed = this.size;
    if (why !== "shutdown") {
      if (why === "upstream_error") stats.upstreamErrors++;
      if (owed > 0 || error !== undefined) {
        this.hub.logger?.warning("Shared upstream connection to {upstream} {what}", {
          upstream: this.name,
          what: error !== undefined ? `failed: ${String(error)}` : "closed",
        });
      }
    }
    this.lease.release?.(why === "upstream_error" || (why === "upstream_closed" && owed > 0));
    // Each affected client once, in FIFO order, with its lines (when kept) in order.
    const affected = new Map<MuxClient, Uint8Array[]>();
    for (let k = 0; k < owed; k++) {
      const at = (this.first + k) % this.owners.length;
      const client = this.owners[at];
      stats.latency.inFlight--;
      if (client === undefined) continue;
      let list = affected.get(client);
      if (list === undefined) affected.set(client, list = []);
      const line = this.lines?.[at];
      if (line !== undefined) list.push(line);
    }
    this.size = 0;
    this.owners.fill(undefined);
    for (const [client, lines] of affected) client.lost(this, why, lines);
  }

  #grow(): void {
    const size = this.owners.length;
    const owners: (MuxClient | undefined)[] = new Array(size * 2);
    const seqs = new Float64Array(size * 2);
    const times = new Float64Array(size * 2);
    const lines = this.lines === undefined
      ? undefined
      : new Array<Uint8Array | undefined>(size * 2);
    for (let k = 0; k < this.size; k++) {
      const at = (this.first + k) % size;
      owners[k] = this.owners[at];
      seqs[k] = this.seqs[at];
      times[k] = this.times[at];
      if (lines !== undefined) lines[k] = this.lines![at];
    }
    this.owners = owners;
    this.seqs = seqs;
    this.times = times;
    this.lines = lines;
    this.first = 0;
  }
}

/** One client in mux mode (see {@linkcode MuxHub.client}). */
export class MuxClient {
  readonly hub: MuxHub;
  readonly down: Deno.Conn;
  readonly source: ChunkSource;
  readonly config: EngineConfig;
  readonly label: string;
  readonly state: BridgeState | undefined;
  readonly owner: unknown;
  /** Its own figures for the access log; unset when there is none. */
  readonly own: OwnFigures | undefined;
  /** The shared connection its unanswered REQs are on; unset while it owes nothing. */
  channel: Channel | undefined = undefined;
  /** Woken by {@linkcode finish}: a client waiting for a shared connection's dial stops waiting. */
  stopped: PromiseWithResolvers<CloseReason> | undefined = undefined;
  /** A replay under way (`--resume`): new lines wait for it. */
  rebinding: Promise<boolean> | undefined = undefined;
  /** REQs forwarded whose reply is not written to the client yet. */
  inflight = 0;
  /** REQs forwarded on `channel` and not answered there yet. */
  owed = 0;
  // Replies routed here and not written yet (double-buffered like a channel's writes).
  out: Uint8Array = EMPTY;
  outLength = 0;
  outReplies = 0;
  spare: Uint8Array = EMPTY;
  writing = false;
  flushQueued = false;
  /** `flush` bound, made on the first reply (an idle client keeps no closure). */
  flushBound: (() => void) | undefined = undefined;
  room: PromiseWithResolvers<void> | undefined = undefined;
  eof = false;
  closed = false;
  reason: CloseReason | undefined = undefined;
  /** Made when the read loop ends before the client is closed (replies still to write). */
  done: PromiseWithResolvers<void> | undefined = undefined;
  timer: unknown = undefined;
  lastActivity = 0;
  /** Failovers in a row without a reply (`--resume`). */
  strikes = 0;
  /** REQs forwarded (a client that sent some and half-closed ends `completed`). */
  reqs = 0;
  /**
   * Whether a chunk read from the client is still being forwarded (its REQs waiting for tokens,
   * the in-flight gate or a channel): not idle, even with nothing in flight.
   */
  forwarding = false;
  /** `--rate-limit-per-source`: the source's token bucket; undefined: no limit. */
  readonly rate: SourceRate | undefined;
  /** Tokens taken for the REQs of the chunk being forwarded (the rest given back after it). */
  credit = 0;

  constructor(hub: MuxHub, downstream: Deno.Conn, options: MuxClientOptions) {
    this.hub = hub;
    this.down = downstream;
    this.config = options.config;
    this.label = options.label ?? "";
    this.state = options.state;
    this.owner = options.owner;
    this.rate = options.rate;
    this.own = options.onEnd === undefined ? undefined : new OwnFigures(options.onEnd);
    this.source = new ChunkSource(downstream, {
      initialSize: this.config.initialBufferSize,
      maxSize: this.config.maxBufferSize,
      pool: this.config.bufferPool ?? undefined,
    });
  }

  /** Serves the client until it ends; resolves with why (never rejects). */
  async run(): Promise<CloseReason> {
    const { hub, source, config } = this;
    const stats = hub.stats;
    const head = hub.head;
    const max = config.maxInflight;
    const rate = this.rate;
    this.lastActivity = stats.clock();
    if (this.own !== undefined) this.own.startedAt = this.lastActivity;
    if (config.idleTimeoutMs > 0) this.arm(config.idleTimeoutMs);
    // One async frame per client (an idle client keeps every suspended frame alive).
    try {
      read: for (;;) {
        let chunk: Uint8Array;
        try {
          const n = await source.read();
          if (n === null) {
            source.end();
            this.ended();
            break;
          }
          chunk = source.take(n);
        } catch (error) {
          if (!this.closed) {
            hub.logger?.debug("Downstream failed on {connection}: {error}", {
              connection: this.label,
              error: String(error),
            });
            this.finish("downstream_error");
          }
          break;
        }
        if (this.closed) break;
        this.forwarding = true;
        let now = stats.clock();
        this.lastActivity = now;
        const fresh = chunk.length - source.carried;
        stats.bytesDownstream += fresh;
        if (this.own !== undefined) this.own.bytesFromClient += fresh;
        let start = 0;
        let valid = 0;
        for (;;) {
          const nl = chunk.indexOf(NL, start);
          if (nl < 0) break;
          const lineStart = start;
          start = nl + 1;
          if (!readLineHead(chunk, lineStart, nl, true, head)) {
            countInvalid(stats, head.type);
            this.refuse();
            continue;
          }
          if (head.digits > MAX_SEQ_DIGITS || hasInnerBreak(chunk, lineStart, nl)) {
            // More Seq digits than a server decodes: answered as invalid (Seq 0) or not at all;
            // a byte a server may split lines at: answered twice. Either way out of step with
            // the REQs behind it.
            this.refuse();
            continue;
          }
          // Read now: the shared head is overwritten by other clients' lines during the awaits.
          const seq = head.seq;
          // A token for this REQ; out of them, wait for the refill (the chunk stays valid: no
          // read starts meanwhile). One taken for a REQ that is then not sent is lost: one.
          if (rate !== undefined) {
            if (this.credit === 0) {
              if (valid > 0) {
                stats.recordRequests(valid, now);
                valid = 0;
              }
              this.credit = await takeTokens(rate, Infinity, this, config.timers, stats);
              if (this.closed) break read;
              now = stats.clock();
            }
            this.credit--;
          }
          // The gate: at the limit, wait until replies are written (the chunk stays valid: no
          // read starts meanwhile).
          while (max > 0 && this.inflight >= max) {
            stats.inflightLimitPauses++;
            if (valid > 0) {
              stats.recordRequests(valid, now);
              valid = 0;
            }
            this.room = Promise.withResolvers();
            await this.room.promise;
            if (this.closed) break read;
            now = stats.clock();
          }
          let channel = this.channel;
          if (channel === undefined || channel.dead || this.rebinding !== undefined) {
            channel = await this.bind();
            if (channel === undefined) break read;
          }
          // The server reads slower than clients send: wait (TCP backpressure holds this
          // client) rather than queue without bound.
          while (channel.outLength >= CHANNEL_HIGH_WATER && !channel.dead) {
            // Woken by the queue's write, or by this client closing (finish() resolves room).
            const room = this.room = Promise.withResolvers();
            channel.drained().then(room.resolve);
            await room.promise;
            if (this.room === room) this.room = undefined;
            if (this.closed) break read;
          }
          if (channel.dead) {
            channel = await this.bind();
            if (channel === undefined) break read;
          } else if (this.channel !== channel) {
            // Its REQs there were all answered while it waited: it stays on this one.
            this.channel = channel;
            this.owed = 0;
          }
          stats.counts.msg_req++;
          this.reqs++;
          valid++;
          this.inflight++;
          this.owed++;
          stats.latency.inFlight++;
          if (channel.lease.counters !== undefined) channel.lease.counters.requests++;
          channel.send(this, chunk, lineStart, start, seq, now);
        }
        if (valid > 0) stats.recordRequests(valid, now);
        if (this.credit > 0) this.giveBackCredit();
        this.forwarding = false;
        this.updateState();
        if (start < chunk.length && !source.keep(chunk, start)) {
          stats.muxRefusedLines++;
          hub.logger?.warning(
            "Closing {connection}: a line longer than {max} bytes (--mux forwards whole lines only)",
            { connection: this.label, max: config.maxBufferSize },
          );
          this.finish("downstream_error");
          break read;
        }
      }
    } catch (error) {
      stats.internalErrors++;
      hub.logger?.error("Internal error on {connection}: {error}", {
        connection: this.label,
        error: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
      });
      this.finish("downstream_error");
    }
    if (!this.closed) {
      this.done = Promise.withResolvers();
      await this.done.promise;
    }
    config.timers.clearTimeout(this.timer);
    if (this.credit > 0) this.giveBackCredit();
    source.release();
    const reason = this.reason ?? "client_closed";
    this.own?.report(this, reason);
    hub.ended?.(this.owner, reason);
    return reason;
  }

  /** Tokens taken and not used go back to the source's other connections. */
  giveBackCredit(): void {
    this.rate?.giveBack(this.credit);
    this.credit = 0;
  }

  /** Ends the client (reason `shutdown`, or `denied` when a reload denied its source). */
  stop(reason: "shutdown" | "denied" = "shutdown"): void {
    this.finish(reason);
  }

  /** A shared connection for the next REQ: the current one, or one acquired now. */
  async bind(): Promise<Channel | undefined> {
    if (this.rebinding !== undefined && !await this.rebinding) return undefined;
    if (this.closed) return undefined;
    if (this.channel !== undefined && !this.channel.dead) return this.channel;
    return await this.take();
  }

  /** Binds to a shared connection from the hub; when there is none, the client ends. */
  async take(): Promise<Channel | undefined> {
    const channel = await this.acquire();
    if (this.closed) return undefined;
    if (typeof channel === "string") {
      this.finish(channel);
      return undefined;
    }
    this.channel = channel;
    this.owed = 0;
    if (this.own !== undefined) this.own.upstream = channel.name;
    return channel;
  }

  /** The hub's {@linkcode MuxHub.acquire}, waiting for a dial only while this client is open. */
  acquire(): Channel | CloseReason | Promise<Channel | CloseReason> {
    const got = this.hub.acquire();
    if (got instanceof Channel || typeof got === "string") return got;
    this.stopped = Promise.withResolvers();
    return Promise.race([got, this.stopped.promise]).finally(() => this.stopped = undefined);
  }

  /** An invalid line: never forwarded (a server may or may not answer it: the FIFO would slip). */
  refuse(): void {
    if (this.own !== undefined) this.own.invalid++;
    this.hub.stats.muxRefusedLines++;
    this.hub.logger?.debug("Refused an invalid line from {connection} (--mux forwards REQs only)", {
      connection: this.label,
    });
  }

  /** A reply routed here: buffered, and written at the end of this turn. */
  deliver(
    buf: Uint8Array,
    start: number,
    end: number,
    type: number,
    latency: number,
    from: Channel,
  ): void {
    if (from === this.channel && --this.owed === 0) this.channel = undefined;
    this.strikes = 0;
    this.own?.reply(type, latency);
    if (this.closed) return;
    const n = end - start;
    if (this.outLength + n > this.out.length) {
      if (this.outLength + n > MAX_UNWRITTEN) return this.tooSlow();
      let size = Math.max(256, this.out.length * 2);
      while (size < this.outLength + n) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.out.subarray(0, this.outLength));
      this.out = bigger;
    }
    this.out.set(buf.subarray(start, end), this.outLength);
    this.outLength += n;
    this.outReplies++;
    if (!this.flushQueued && !this.writing) {
      this.flushQueued = true;
      queueMicrotask(this.flushBound ??= () => void this.flush());
    }
  }

  async flush(): Promise<void> {
    this.flushQueued = false;
    if (this.writing || this.closed) return;
    this.writing = true;
    const stats = this.hub.stats;
    try {
      while (this.outLength > 0 && !this.closed) {
        const bytes = this.out.subarray(0, this.outLength);
        const replies = this.outReplies;
        const spare = this.spare;
        this.spare = this.out;
        this.out = spare;
        this.outLength = 0;
        this.outReplies = 0;
        for (let off = 0; off < bytes.length;) {
          off += await this.down.write(off === 0 ? bytes : bytes.subarray(off));
        }
        if (this.own !== undefined) this.own.bytesFromUpstream += bytes.length;
        this.inflight -= replies;
        this.lastActivity = stats.clock();
        const room = this.room;
        if (room !== undefined && this.inflight < this.config.maxInflight) {
          this.room = undefined;
          room.resolve();
        }
      }
    } catch (error) {
      if (!this.closed) {
        this.hub.logger?.debug("Downstream failed on {connection}: {error}", {
          connection: this.label,
          error: String(error),
        });
        this.finish("downstream_error");
      }
      return;
    } finally {
      this.writing = false;
    }
    // Small buffers again once everything is written: an idle client keeps none.
    if (this.outLength === 0 && this.out.length > 4096) {
      this.out = EMPTY;
      this.spare = EMPTY;
    }
    this.updateState();
    if (this.eof && this.inflight === 0) this.finish(this.reqs > 0 ? "completed" : "client_closed");
  }

  /** Never reads its replies while they pile up: cut off, so the shared connection flows on. */
  tooSlow(): void {
    this.hub.stats.muxSlowClients++;
    this.hub.logger?.warning(
      "Closing {connection}: {bytes} bytes of replies unread (it stopped reading; --mux never lets one client hold up the others)",
      { connection: this.label, bytes: this.outLength },
    );
    this.finish("downstream_error");
  }

  /** The client half-closed: done once every REQ is answered and written. */
  ended(): void {
    if (this.closed) return;
    this.eof = true;
    if (this.source.carried > 0) {
      // A last line without its newline: never forwarded (it would fuse with another client's).
      this.hub.stats.counts.invalid_truncated++;
      this.refuse();
    }
    if (this.inflight === 0 && !this.writing) {
      this.finish("client_closed");
      return;
    }
    if (this.config.halfCloseTimeoutMs > 0) this.arm(this.config.halfCloseTimeoutMs);
  }

  /**
   * The shared connection `from` died with REQs of this client unanswered (`lines`: their bytes,
   * in order, when kept): replay them on another (`--resume`), or close.
   */
  lost(from: Channel, why: CloseReason, lines: Uint8Array[]): void {
    if (this.closed || from !== this.channel) return;
    const stats = this.hub.stats;
    this.channel = undefined;
    const owed = this.owed;
    this.owed = 0;
    if (why === "shutdown" || this.config.resume === "off" || lines.length !== owed) {
      this.finish(why);
      return;
    }
    if (++this.strikes > this.config.maxFailovers) {
      stats.resumeFailures++;
      this.hub.logger?.warning(
        "Closing {connection}: {count} shared upstream connections in a row died with its REQs unanswered",
        { connection: this.label, count: this.config.maxFailovers },
      );
      this.finish(why);
      return;
    }
    // Replies for these REQs will not come: they are sent again, in order, before any new line
    // (the read loop waits for `rebinding`).
    this.inflight -= owed;
    const replaying = this.replay(lines);
    this.rebinding = replaying;
    replaying.then(() => {
      if (this.rebinding === replaying) this.rebinding = undefined;
    });
  }

  async replay(lines: Uint8Array[]): Promise<boolean> {
    const { hub } = this;
    const stats = hub.stats;
    // Let the dying connection's other clients go first: they all land on the same new one.
    await Promise.resolve();
    const channel = await this.take();
    if (channel === undefined) return false;
    const now = stats.clock();
    const head = hub.head;
    for (const line of lines) {
      this.inflight++;
      this.owed++;
      stats.latency.inFlight++;
      const seq = readLineHead(line, 0, line.length - 1, true, head) ? head.seq : -1;
      channel.send(this, line, 0, line.length, seq, now);
    }
    stats.failovers++;
    stats.replays += lines.length;
    if (this.own !== undefined) this.own.failovers++;
    this.hub.logger?.info("Resumed {connection} on {upstream}, replayed {count} REQ(s)", {
      connection: this.label,
      upstream: channel.name,
      count: lines.length,
    });
    return true;
  }

  updateState(): void {
    const state = this.state;
    if (state === undefined) return;
    state.outstanding = this.inflight;
    state.writing = this.writing ? 1 : 0;
    state.lastActivity = this.lastActivity;
  }

  finish(reason: CloseReason): void {
    if (this.closed) return;
    this.closed = true;
    this.reason = reason;
    try {
      this.down.close();
    } catch {
      // Already closed.
    }
    this.out = EMPTY;
    this.spare = EMPTY;
    this.outLength = 0;
    const room = this.room;
    this.room = undefined;
    room?.resolve();
    this.stopped?.resolve(reason);
    if (this.state !== undefined) {
      this.state.outstanding = 0;
      this.state.writing = 0;
    }
    this.done?.resolve();
  }

  arm(ms: number): void {
    const timers = this.config.timers;
    timers.clearTimeout(this.timer);
    this.timer = timers.setTimeout(() => this.onTimer(), Math.max(1, ms));
  }

  onTimer(): void {
    this.timer = undefined;
    if (this.closed) return;
    const quiet = this.hub.stats.clock() - this.lastActivity;
    if (this.eof) {
      const limit = this.config.halfCloseTimeoutMs;
      if (quiet < limit) return this.arm(limit - quiet);
      this.hub.logger?.info(
        "Closing {connection}: half-closed with {owed} REQ(s) unanswered and no reply for {ms} ms",
        { connection: this.label, owed: this.inflight, ms: limit },
      );
      this.finish("half_close_timeout");
      return;
    }
    const limit = this.config.idleTimeoutMs;
    if (limit <= 0) return;
    if (this.inflight > 0 || this.writing || this.forwarding) return this.arm(limit);
    if (quiet < limit) return this.arm(limit - quiet);
    this.finish("idle_timeout");
  }
}

const EMPTY = new Uint8Array(0);

/** A client's own figures, for its access-log line (only made when the log is on). */
class OwnFigures {
  readonly onEnd: (summary: ConnectionSummary) => void;
  readonly latency = new Histogram();
  startedAt = 0;
  acks = 0;
  naks = 0;
  invalid = 0;
  bytesFromClient = 0;
  bytesFromUpstream = 0;
  failovers = 0;
  upstream = "";

  constructor(onEnd: (summary: ConnectionSummary) => void) {
    this.onEnd = onEnd;
  }

  reply(type: number, latency: number): void {
    if (type === MSG_ACK) this.acks++;
    else this.naks++;
    this.latency.record(latency);
  }

  report(client: MuxClient, reason: CloseReason): void {
    const latency = this.latency;
    this.onEnd({
      startedAt: this.startedAt,
      durationMs: client.hub.stats.clock() - this.startedAt,
      bytesFromClient: this.bytesFromClient,
      bytesFromUpstream: this.bytesFromUpstream,
      reqs: client.reqs,
      acks: this.acks,
      naks: this.naks,
      invalid: this.invalid,
      latencyP50Ms: latency.count > 0 ? latency.quantile(0.5) * 1000 : NaN,
      latencyMaxMs: latency.count > 0 ? latency.max * 1000 : NaN,
      upstream: this.upstream,
      failovers: this.failovers,
      reason,
    });
  }
}

function countReply(stats: Stats, type: number): void {
  if (type === MSG_ACK) stats.counts.msg_ack++;
  else stats.counts.msg_nak++;
}

function countInvalid(stats: Stats, kind: number): void {
  if (kind === INVALID_TYPE) stats.counts.invalid_type++;
  else if (kind === INVALID_SEQ) stats.counts.invalid_seq++;
  else if (kind === INVALID_DIRECTION) stats.counts.invalid_direction++;
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
