/**
 * The load generator behind `foo-proxy bench`: many connections sending pipelined REQs to a Foo
 * endpoint, closed-loop (as fast as replies allow) or open-loop at a fixed total rate, optionally
 * reconnecting every K requests. Every reply is verified (Seq, order) and, against a server that
 * computes its replies (`foo-proxy server --reply hash`, option `replies: "hash"`), its type and
 * data too: each must be what `hashReply` gives for the REQ sent with that Seq.
 *
 * It must never be the bottleneck of what it measures, so the hot path works on bytes only: each
 * connection owns one read and one write buffer, requests are encoded in place and batched into
 * one write per refill, replies are parsed byte by byte without decoding, and all the replies of
 * one read share one clock reading. Latency is measured from the *intended* send time in
 * open-loop mode, so a stalled server cannot hide its stall (no coordinated omission).
 *
 * @module
 */
import type { Address } from "../net/address.ts";
import { dialTcpOrTls, type TlsClientOptions } from "../net/tls_dial.ts";
import { FNV_START, fnvUpdate, isNakHash } from "../protocol/reply_hash.ts";

/** Why a request or a connection failed, as counted in {@linkcode LoadReport.errors}. */
export type LoadErrorKind =
  | "connect"
  | "read"
  | "write"
  | "closed"
  | "bad_reply"
  | "wrong_seq"
  | "wrong_reply"
  | "timeout";

/** Every {@linkcode LoadErrorKind}, in report order. */
export const LOAD_ERROR_KINDS: readonly LoadErrorKind[] = Object.freeze([
  "connect",
  "read",
  "write",
  "closed",
  "bad_reply",
  "wrong_seq",
  "wrong_reply",
  "timeout",
]);

/** A progress sample, handed to {@linkcode LoadOptions.onProgress}. */
export interface LoadProgress {
  /** Milliseconds since the measurement started (negative while warming up). */
  elapsedMs: number;
  /** Replies received so far (including the warm-up). */
  responses: number;
  /** Replies per second since the previous sample. */
  responsesPerSec: number;
  /** Connections open now. */
  openConnections: number;
  /** Errors so far, all kinds. */
  errors: number;
}

/** What a run measured. Latencies are in milliseconds; rates per second of measured time. */
export interface LoadReport {
  /** Measured time in seconds (the warm-up excluded). */
  durationSec: number;
  /** REQs written during the measured time. */
  requests: number;
  /**
   * Verified replies received during the measured time (a reply with the right Seq but the wrong
   * content is not one: it counts as a `wrong_reply` error instead).
   */
  responses: number;
  /** Of those, ACKs. */
  acks: number;
  /** Of those, NAKs. */
  naks: number;
  /** `responses / durationSec`. */
  responsesPerSec: number;
  /** Connections established during the measured time. */
  connectionsOpened: number;
  /** Connections closed cleanly (every reply received) during the measured time. */
  connectionsCompleted: number;
  /** `connectionsCompleted / durationSec`: the churn rate when reconnecting every K requests. */
  connectionsPerSec: number;
  /** Latency quantiles (ms), from the intended send time in open-loop mode. */
  latencyMs: LatencySummary;
  /** Open-loop only: latency from the actual send time (ms); equals `latencyMs` closed-loop. */
  serviceLatencyMs: LatencySummary;
  /** Errors by kind (every kind present, zero when none). */
  errors: Record<LoadErrorKind, number>;
  /** Sum of `errors`. */
  errorsTotal: number;
}

/** Latency quantiles in milliseconds (0 when nothing was measured). */
export interface LatencySummary {
  /** Number of latencies measured. */
  count: number;
  /** Mean. */
  mean: number;
  /** Median. */
  p50: number;
  /** 90th percentile. */
  p90: number;
  /** 99th percentile. */
  p99: number;
  /** 99.9th percentile. */
  p999: number;
  /** Largest. */
  max: number;
}

/** Options for {@linkcode runLoad}. */
export interface LoadOptions {
  /** Connections kept open at once. @default {1} */
  connections?: number;
  /** REQs in flight per connection (sent without waiting for their replies). @default {1} */
  pipeline?: number;
  /** Bytes of data after the Seq of each REQ; 0 sends `REQ <seq>` alone. @default {32} */
  payloadBytes?: number;
  /** Measured time in ms after the warm-up; 0 runs until `signal` aborts. @default {10000} */
  durationMs?: number;
  /** Time in ms at the start whose replies and latencies are not counted. @default {0} */
  warmupMs?: number;
  /**
   * Total REQs per second over all connections (open loop, evenly spaced); 0 sends as fast as
   * replies allow (closed loop, `pipeline` in flight per connection). @default {0}
   */
  rate?: number;
  /** Close and reconnect after this many replies on a connection; 0 never. @default {0} */
  requestsPerConnection?: number;
  /** After the end, wait at most this many ms for replies still in flight. @default {5000} */
  drainTimeoutMs?: number;
  /** Called about every `progressIntervalMs` while running. Unset: no progress. */
  onProgress?: (progress: LoadProgress) => void;
  /** Interval of `onProgress` calls in ms. @default {1000} */
  progressIntervalMs?: number;
  /** Aborting ends the run early (the report covers the time until then). Unset: duration only. */
  signal?: AbortSignal;
  /**
   * How replies are verified: `"seq"` checks the type is ACK/NAK and the Seq is the next one owed
   * (any data is ignored); `"hash"` also checks the type and the data are exactly what a server
   * computing its replies gives (`foo-proxy server --reply hash`, see `reply_hash.ts`). A reply
   * with the right Seq but the wrong type or data counts as a `wrong_reply` error and the
   * connection goes on (its framing is intact). @default {"seq"}
   */
  replies?: "seq" | "hash";
  /** Monotonic clock in ms. @default {performance.now} */
  now?: () => number;
  /** Speak TLS, verifying the server's certificate; a failed handshake counts as `connect`. */
  tls?: TlsClientOptions;
}

/**
 * Runs load against the Foo endpoint at `target` and resolves with what it measured.
 *
 * @throws {RangeError} when an option is out of range.
 */
export async function runLoad(target: Address, options: LoadOptions = {}): Promise<LoadReport> {
  const run = new LoadRun(target, options);
  return await run.execute();
}

const NL = 10;
const CR = 13;
const SP = 32;
const TAB = 9;
const MAX_SEQ_DIGITS = 16;
const READ_BUFFER = 16 * 1024;
const CONNECT_RETRY_MS = 50;

function checkInteger(name: string, value: number, min: number): number {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`Invalid ${name} ${value}: expected an integer >= ${min}`);
  }
  return value;
}

/** Counters that restart when the warm-up ends. */
class Counters {
  requests = 0;
  responses = 0;
  acks = 0;
  naks = 0;
  opened = 0;
  completed = 0;
  errors: Record<LoadErrorKind, number> = Object.fromEntries(
    LOAD_ERROR_KINDS.map((k) => [k, 0]),
  ) as Record<LoadErrorKind, number>;
  latency = new LatencyHistogram();
  service = new LatencyHistogram();
}

/** One run: the shared schedule, counters and stop logic for all connection slots. */
class LoadRun {
  readonly target: Address;
  readonly connections: number;
  readonly pipeline: number;
  readonly payload: Uint8Array;
  /** Hash mode: the bytes of each REQ after its Seq digits (`" " + payload`, or none). */
  readonly hashTail: Uint8Array | undefined;
  readonly durationMs: number;
  readonly warmupMs: number;
  readonly rate: number;
  readonly perConnection: number;
  readonly drainTimeoutMs: number;
  readonly now: () => number;
  readonly options: LoadOptions;
  counters = new Counters();
  totalResponses = 0;
  totalErrors = 0;
  openConnections = 0;
  stopping = false;
  measuring = false;
  t0 = 0;
  slots: Slot[] = [];
  #stop = new AbortController();
  #ticker: Ticker | undefined;

  constructor(target: Address, options: LoadOptions) {
    this.target = target;
    this.options = options;
    this.connections = checkInteger("connections", options.connections ?? 1, 1);
    this.pipeline = checkInteger("pipeline", options.pipeline ?? 1, 1);
    const payloadBytes = checkInteger("payloadBytes", options.payloadBytes ?? 32, 0);
    this.durationMs = options.durationMs ?? 10_000;
    this.warmupMs = options.warmupMs ?? 0;
    this.rate = options.rate ?? 0;
    this.perConnection = checkInteger(
      "requestsPerConnection",
      options.requestsPerConnection ?? 0,
      0,
    );
    this.drainTimeoutMs = options.drainTimeoutMs ?? 5000;
    for (const [name, value] of [["durationMs", this.durationMs], ["warmupMs", this.warmupMs]]) {
      if (!Number.isFinite(value as number) || (value as number) < 0) {
        throw new RangeError(`Invalid ${name} ${value}: expected a number >= 0`);
      }
    }
    if (!Number.isFinite(this.rate) || this.rate < 0) {
      throw new RangeError(`Invalid rate ${this.rate}: expected a number >= 0`);
    }
    this.now = options.now ?? (() => performance.now());
    // "REQ 123 xxxx…\n": the payload is fixed, so it is encoded once.
    this.payload = new Uint8Array(payloadBytes).fill(120); // 'x'
    const replies = options.replies ?? "seq";
    if (replies !== "seq" && replies !== "hash") {
      throw new RangeError(`Invalid replies "${replies}": expected "seq" or "hash"`);
    }
    if (replies === "hash") {
      this.hashTail = new Uint8Array(payloadBytes === 0 ? 0 : payloadBytes + 1);
      if (payloadBytes > 0) {
        this.hashTail[0] = SP;
        this.hashTail.set(this.payload, 1);
      }
    }
  }

  get stopSignal(): AbortSignal {
    return this.#stop.signal;
  }

  async execute(): Promise<LoadReport> {
    const signal = this.options.signal;
    const tasks: Promise<void>[] = [];
    for (let i = 0; i < this.connections; i++) this.slots.push(new Slot(this, i));
    const stopped = Promise.withResolvers<void>();
    const onAbort = () => stopped.resolve();
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) stopped.resolve();
    const timers: ReturnType<typeof setTimeout>[] = [];
    try {
      if (this.rate > 0) {
        // Timers here fire at best every ~2 ms: too coarse to pace REQs 0.2 ms apart.
        this.#ticker = new Ticker(Math.min(2, Math.max(0.1, 1000 / this.rate)), () => this.#tick());
      }
      // The schedule and the clock start now, after the set-up.
      this.t0 = this.now();
      let measureStart = this.t0;
      // The warm-up ends: counting restarts from zero.
      const startMeasuring = () => {
        if (this.stopping) return;
        measureStart = this.now();
        this.counters = new Counters();
        this.counters.opened = this.openConnections;
        this.measuring = true;
      };
      if (this.warmupMs > 0) {
        timers.push(setTimeout(startMeasuring, this.warmupMs));
      } else {
        startMeasuring();
      }
      for (const slot of this.slots) tasks.push(slot.run());
      if (this.durationMs > 0) {
        timers.push(setTimeout(() => stopped.resolve(), this.warmupMs + this.durationMs));
      }
      const onProgress = this.options.onProgress;
      if (onProgress) {
        let last = { at: this.now(), responses: 0 };
        timers.push(setInterval(() => {
          const at = this.now();
          const responses = this.totalResponses;
          onProgress({
            elapsedMs: at - this.t0 - this.warmupMs,
            responses,
            responsesPerSec: (responses - last.responses) * 1000 / Math.max(1, at - last.at),
            openConnections: this.openConnections,
            errors: this.totalErrors,
          });
          last = { at, responses };
        }, this.options.progressIntervalMs ?? 1000));
      }
      await stopped.promise;
      const stopAt = this.now();
      if (!this.measuring) {
        // Stopped during the warm-up: nothing was measured.
        measureStart = stopAt;
        this.counters = new Counters();
        this.measuring = true;
      }
      // Replies that arrive while draining still count (and are verified); the rates use the
      // counts at the stop.
      const counters = this.counters;
      const snapshot = { responses: counters.responses, completed: counters.completed };
      this.#beginStop();
      // Replies to REQs already sent are still owed: wait for them, within the drain timeout.
      const drainTimer = setTimeout(() => this.#abandon(), this.drainTimeoutMs);
      timers.push(drainTimer);
      await Promise.all(tasks);
      const durationSec = Math.max(1e-9, (stopAt - measureStart) / 1000);
      const errorsTotal = LOAD_ERROR_KINDS.reduce((sum, k) => sum + counters.errors[k], 0);
      return {
        durationSec,
        requests: counters.requests,
        responses: counters.responses,
        acks: counters.acks,
        naks: counters.naks,
        responsesPerSec: snapshot.responses / durationSec,
        connectionsOpened: counters.opened,
        connectionsCompleted: counters.completed,
        connectionsPerSec: snapshot.completed / durationSec,
        latencyMs: counters.latency.summary(),
        serviceLatencyMs: (this.rate > 0 ? counters.service : counters.latency).summary(),
        errors: { ...counters.errors },
        errorsTotal,
      };
    } finally {
      signal?.removeEventListener("abort", onAbort);
      for (const t of timers) clearTimeout(t);
      this.#stop.abort();
      this.#ticker?.stop();
      for (const slot of this.slots) slot.abort();
      await Promise.allSettled(tasks);
    }
  }

  countError(kind: LoadErrorKind, n = 1): void {
    this.totalErrors += n;
    // Errors during the drain still count: they are failures of the measured requests.
    this.counters.errors[kind] += n;
  }

  #beginStop(): void {
    this.stopping = true;
    this.#stop.abort();
    this.#ticker?.stop();
    for (const slot of this.slots) slot.stopIfIdle();
  }

  #abandon(): void {
    for (const slot of this.slots) slot.abandon();
  }

  #tick(): void {
    if (this.stopping) return;
    for (const slot of this.slots) slot.flush();
  }
}

// Reply parser states.
const R_START = 0;
const R_A = 1;
const R_AC = 2;
const R_N = 3;
const R_NA = 4;
const R_TYPE = 5; // "ACK"/"NAK" seen: whitespace must follow
const R_WS = 6;
const R_SEQ = 7;
const R_CR = 8;
const R_DATA = 9; // skip to the newline
const R_HASH = 10; // hash mode: the data, which must be the expected 8 hex digits

type SessionEnd = "done" | "stopped" | "failed";

/** One connection slot: connects, sends, verifies, and reconnects until the run stops. */
class Slot {
  #run: LoadRun;
  #conn: Deno.Conn | undefined;
  #closedByUs = false;
  #failed = false;
  // Per connection.
  #sent = 0; // seq of the last REQ written
  #answered = 0; // seq of the last verified reply
  // Per slot, over reconnects: the open-loop schedule.
  #issued = 0;
  #interval = 0;
  #phase = 0;
  #intended: Float64Array;
  #actual: Float64Array;
  #wbuf: Uint8Array;
  #rbuf = new Uint8Array(READ_BUFFER);
  #writing = false;
  #dirty = false;
  #flushing: Promise<void> | undefined;
  // Reply parser.
  #state = R_START;
  #type = 0; // 1 ACK, 2 NAK
  #seq = 0;
  #seqDigits = 0;
  // Hash mode: the reply's data as parsed so far, and the expected reply's parts.
  #hashTail: Uint8Array | undefined;
  #gotHash = 0;
  #gotHashDigits = 0;
  #gotCr = false;
  #gotBad = false;
  #digits = new Uint8Array(MAX_SEQ_DIGITS);
  #connectRetry: { timer: ReturnType<typeof setTimeout>; resolve: () => void } | undefined;

  constructor(run: LoadRun, index: number) {
    this.#run = run;
    this.#hashTail = run.hashTail;
    const pipeline = run.pipeline;
    this.#intended = new Float64Array(pipeline);
    this.#actual = new Float64Array(pipeline);
    // "REQ " + seq + " " + payload + "\n", pipeline of them.
    this.#wbuf = new Uint8Array(pipeline * (4 + MAX_SEQ_DIGITS + 1 + run.payload.length + 1));
    if (run.rate > 0) {
      this.#interval = 1000 * run.connections / run.rate;
      // Spread the slots evenly over one interval so the total rate is smooth.
      this.#phase = this.#interval * index / run.connections;
    }
  }

  async run(): Promise<void> {
    const run = this.#run;
    while (!run.stopping) {
      let conn: Deno.Conn;
      try {
        conn = await dialTcpOrTls(run.target, { tls: run.options.tls, signal: run.stopSignal });
      } catch {
        if (run.stopping) return;
        run.countError("connect");
        await this.#pause(CONNECT_RETRY_MS);
        continue;
      }
      const end = await this.#session(conn);
      if (end === "done" || end === "stopped") run.counters.completed++;
    }
  }

  /** Closes the connection now if nothing is owed on it (the run is ending). */
  stopIfIdle(): void {
    this.#connectRetry?.resolve();
    if (this.#conn && this.#sent === this.#answered && !this.#writing) this.#closeConn();
  }

  /** The drain timed out: what is still owed counts as timeouts. */
  abandon(): void {
    if (!this.#conn) return;
    const owed = this.#sent - this.#answered;
    if (owed > 0) this.#run.countError("timeout", owed);
    this.#failed = true;
    this.#closeConn();
  }

  /** Final cleanup (also on exceptions). */
  abort(): void {
    this.#connectRetry?.resolve();
    if (this.#conn) this.#closeConn();
  }

  async #session(conn: Deno.Conn): Promise<SessionEnd> {
    const run = this.#run;
    this.#conn = conn;
    this.#closedByUs = false;
    this.#failed = false;
    this.#sent = 0;
    this.#answered = 0;
    this.#state = R_START;
    run.openConnections++;
    if (run.measuring) run.counters.opened++;
    if (run.stopping) {
      this.#closeConn();
      return "stopped";
    }
    this.flush();
    const buf = this.#rbuf;
    let end: SessionEnd = "failed";
    try {
      for (;;) {
        let n: number | null;
        try {
          n = await conn.read(buf);
        } catch {
          if (!this.#closedByUs) this.#fail("read");
          break;
        }
        if (n === null) {
          // The server closed first: what it still owed is lost.
          this.#fail("closed");
          break;
        }
        if (!this.#parse(buf, n)) break;
        const perConnection = run.perConnection;
        if (perConnection > 0 && this.#answered >= perConnection) {
          end = "done";
          break;
        }
        if (run.stopping && this.#answered === this.#sent) {
          end = "stopped";
          break;
        }
        this.flush();
      }
      if (this.#closedByUs && !this.#failed && this.#answered === this.#sent) end = "stopped";
    } finally {
      await this.#flushing;
      this.#closeConn();
      run.openConnections--;
    }
    return this.#failed ? "failed" : end;
  }

  /** Writes every REQ that may be sent now, in one write; never two writes at once. */
  flush(): void {
    if (this.#conn === undefined || this.#failed) return;
    if (this.#writing) {
      this.#dirty = true;
      return;
    }
    const length = this.#fill();
    if (length === 0) return;
    this.#writing = true;
    this.#flushing = this.#write(this.#conn, length);
  }

  async #write(conn: Deno.Conn, length: number): Promise<void> {
    try {
      for (;;) {
        let off = 0;
        const buf = this.#wbuf;
        while (off < length) off += await conn.write(buf.subarray(off, length));
        if (!this.#dirty) break;
        this.#dirty = false;
        length = this.#fill();
        if (length === 0) break;
      }
    } catch {
      if (!this.#closedByUs) this.#fail("write");
    } finally {
      this.#writing = false;
    }
    const run = this.#run;
    if (run.stopping && this.#conn !== undefined && this.#sent === this.#answered) {
      this.#closeConn();
    }
  }

  /** Encodes the REQs that may be sent now into the write buffer; returns its length. */
  #fill(): number {
    const run = this.#run;
    if (run.stopping || this.#failed) return 0;
    const pipeline = run.pipeline;
    let count = pipeline - (this.#sent - this.#answered);
    if (run.perConnection > 0) count = Math.min(count, run.perConnection - this.#sent);
    if (count <= 0) return 0;
    const now = run.now();
    if (run.rate > 0) {
      // Open loop: only what the schedule says is due by now.
      const due = Math.floor((now - run.t0 - this.#phase) / this.#interval) + 1 - this.#issued;
      if (due < count) count = due;
      if (count <= 0) return 0;
    }
    const buf = this.#wbuf;
    const payload = run.payload;
    const payloadLength = payload.length;
    const intended = this.#intended;
    const actual = this.#actual;
    let o = 0;
    let seq = this.#sent;
    for (let k = 0; k < count; k++) {
      seq++;
      buf[o] = 82; // R
      buf[o + 1] = 69; // E
      buf[o + 2] = 81; // Q
      buf[o + 3] = SP;
      o += 4;
      // Digits of seq, written backwards after counting them.
      let digits = 1;
      for (let v = seq; v >= 10; v = Math.floor(v / 10)) digits++;
      let v = seq;
      for (let d = digits - 1; d >= 0; d--) {
        buf[o + d] = 48 + (v % 10);
        v = Math.floor(v / 10);
      }
      o += digits;
      if (payloadLength > 0) {
        buf[o++] = SP;
        if (payloadLength <= 64) {
          for (let p = 0; p < payloadLength; p++) buf[o + p] = payload[p];
        } else {
          buf.set(payload, o);
        }
        o += payloadLength;
      }
      buf[o++] = NL;
      const slot = seq % pipeline;
      actual[slot] = now;
      intended[slot] = run.rate > 0 ? run.t0 + this.#phase + this.#issued * this.#interval : now;
      this.#issued++;
    }
    this.#sent = seq;
    if (run.measuring) run.counters.requests += count;
    return o;
  }

  /** Verifies the replies in `buf[0, n)`; false (after counting the error) on a bad one. */
  #parse(buf: Uint8Array, n: number): boolean {
    const run = this.#run;
    const now = run.now();
    const pipeline = run.pipeline;
    let state = this.#state;
    let i = 0;
    while (i < n) {
      if (state === R_DATA) {
        const nl = buf.indexOf(NL, i);
        if (nl < 0 || nl >= n) {
          i = n;
          break;
        }
        i = nl + 1;
        if (!this.#complete(now, pipeline)) return false;
        state = R_START;
        continue;
      }
      const c = buf[i++];
      switch (state) {
        case R_START:
          if (c === 65) state = R_A; // A
          else if (c === 78) state = R_N; // N
          else return this.#bad();
          break;
        case R_A:
          if (c !== 67) return this.#bad(); // C
          state = R_AC;
          break;
        case R_AC:
          if (c !== 75) return this.#bad(); // K
          this.#type = 1;
          state = R_TYPE;
          break;
        case R_N:
          if (c !== 65) return this.#bad(); // A
          state = R_NA;
          break;
        case R_NA:
          if (c !== 75) return this.#bad(); // K
          this.#type = 2;
          state = R_TYPE;
          break;
        case R_TYPE:
          if (c !== SP && c !== TAB) return this.#bad();
          state = R_WS;
          break;
        case R_WS:
          if (c >= 48 && c <= 57) {
            this.#seq = c - 48;
            this.#seqDigits = 1;
            this.#gotHash = 0;
            this.#gotHashDigits = 0;
            this.#gotCr = false;
            this.#gotBad = false;
            state = R_SEQ;
          } else if (c !== SP && c !== TAB) {
            return this.#bad();
          }
          break;
        case R_SEQ:
          if (c >= 48 && c <= 57) {
            if (++this.#seqDigits > MAX_SEQ_DIGITS) return this.#bad();
            this.#seq = this.#seq * 10 + (c - 48);
          } else if (c === NL) {
            if (!this.#complete(now, pipeline)) return false;
            state = R_START;
          } else if (c === CR) {
            state = R_CR;
          } else if (c === SP || c === TAB) {
            state = this.#hashTail === undefined ? R_DATA : R_HASH;
          } else {
            return this.#bad();
          }
          break;
        case R_HASH:
          if (c === NL) {
            if (!this.#complete(now, pipeline)) return false;
            state = R_START;
          } else if (this.#gotCr) {
            // A CR may only end the data (telnet); anything after it makes the data wrong.
            this.#gotBad = true;
            state = R_DATA;
          } else if (c === CR) {
            this.#gotCr = true;
          } else if (
            this.#gotHashDigits < 8 && ((c >= 48 && c <= 57) || (c >= 97 && c <= 102)) // 0-9 a-f
          ) {
            this.#gotHash = ((this.#gotHash << 4) | (c <= 57 ? c - 48 : c - 87)) >>> 0;
            this.#gotHashDigits++;
          } else if ((c !== SP && c !== TAB) || this.#gotHashDigits > 0) {
            // Not the expected data: no need to look at the rest of the line.
            this.#gotBad = true;
            state = R_DATA;
          }
          break;
        case R_CR:
          if (c !== NL) return this.#bad();
          if (!this.#complete(now, pipeline)) return false;
          state = R_START;
          break;
      }
    }
    this.#state = state;
    return true;
  }

  /** One whole reply: checks its Seq is the next one owed and records its latency. */
  #complete(now: number, pipeline: number): boolean {
    const expected = this.#answered + 1;
    if (this.#seq !== expected || expected > this.#sent) {
      this.#fail("wrong_seq");
      return false;
    }
    this.#answered = expected;
    const run = this.#run;
    if (this.#hashTail !== undefined && !this.#isExpectedHashReply(expected)) {
      run.countError("wrong_reply");
      return true;
    }
    run.totalResponses++;
    if (run.measuring) {
      const counters = run.counters;
      counters.responses++;
      if (this.#type === 1) counters.acks++;
      else counters.naks++;
      const slot = expected % pipeline;
      counters.latency.record(now - this.#intended[slot]);
      if (run.rate > 0) counters.service.record(now - this.#actual[slot]);
    }
    return true;
  }

  /**
   * Hash mode: whether the reply just parsed (its type, Seq digits and data) is exactly what a
   * hash-mode server answers to the REQ this slot sent with `seq` (see `reply_hash.ts`).
   */
  #isExpectedHashReply(seq: number): boolean {
    if (this.#gotBad || this.#gotHashDigits !== 8) return false;
    // The REQ's bytes from its first Seq digit: the digits, then " " + payload.
    const digits = this.#digits;
    let at = digits.length;
    for (let v = seq; at > 0;) {
      digits[--at] = 48 + (v % 10);
      v = Math.floor(v / 10);
      if (v === 0) break;
    }
    if (this.#seqDigits !== digits.length - at) return false; // e.g. "ACK 007" for REQ 7
    const h = fnvUpdate(fnvUpdate(FNV_START, digits, at, digits.length), this.#hashTail!);
    return this.#gotHash === h && this.#type === (isNakHash(h) ? 2 : 1);
  }

  #bad(): boolean {
    this.#fail("bad_reply");
    return false;
  }

  #fail(kind: LoadErrorKind): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#run.countError(kind);
    this.#closeConn();
  }

  #closeConn(): void {
    const conn = this.#conn;
    if (!conn) return;
    this.#conn = undefined;
    this.#closedByUs = true;
    try {
      conn.close();
    } catch {
      // Already closed.
    }
  }

  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#connectRetry = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#connectRetry = { timer, resolve: done };
    });
  }
}

// The ticker: a worker that sleeps with Atomics.wait (sub-millisecond, unlike timers) and posts
// a message every period; flag[0] = 1 stops it, flag[1] = 1 while a tick is not yet handled, so
// a busy main thread gets one pending tick rather than a growing queue.
const TICKER_SOURCE = `
self.onmessage = (event) => {
  const period = event.data.period;
  const flag = new Int32Array(event.data.control);
  let next = performance.now();
  while (Atomics.load(flag, 0) === 0) {
    next += period;
    let wait = next - performance.now();
    if (wait < -100 * period) {
      next = performance.now();
      wait = 0;
    }
    if (wait > 0) Atomics.wait(flag, 0, 0, wait);
    if (Atomics.load(flag, 0) !== 0) break;
    if (Atomics.compareExchange(flag, 1, 0, 1) === 0) postMessage(0);
  }
  self.close();
};
`;

/** Calls `onTick` about every `periodMs` (sub-millisecond periods work) until stopped. */
class Ticker {
  #worker: Worker;
  #flag = new Int32Array(new SharedArrayBuffer(8));
  #url: string;
  #stopped = false;

  constructor(periodMs: number, onTick: () => void) {
    this.#url = URL.createObjectURL(new Blob([TICKER_SOURCE], { type: "text/javascript" }));
    this.#worker = new Worker(this.#url, { type: "module" });
    this.#worker.onmessage = () => {
      Atomics.store(this.#flag, 1, 0);
      if (!this.#stopped) onTick();
    };
    this.#worker.postMessage({ period: periodMs, control: this.#flag.buffer });
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    Atomics.store(this.#flag, 0, 1);
    Atomics.notify(this.#flag, 0);
    this.#worker.terminate();
    URL.revokeObjectURL(this.#url);
  }
}

// Latency histogram: exact below 256 µs, then 128 sub-buckets per power of two (< 0.8 % error).
const SUB_BITS = 7;
const SUB = 1 << SUB_BITS;
const LINEAR = 2 * SUB;
const BUCKETS = LINEAR + (31 - SUB_BITS - 1) * SUB;

/** Records latencies (ms in, µs buckets) with O(1) memory; gives quantiles. */
class LatencyHistogram {
  #counts = new Float64Array(BUCKETS);
  #count = 0;
  #sum = 0;
  #max = 0;

  record(ms: number): void {
    const us = ms <= 0 ? 0 : Math.min(0x7fffffff, Math.round(ms * 1000));
    this.#counts[bucketOf(us)]++;
    this.#count++;
    this.#sum += us;
    if (us > this.#max) this.#max = us;
  }

  summary(): LatencySummary {
    const count = this.#count;
    const q = (p: number) => this.#quantile(p) / 1000;
    return {
      count,
      mean: count === 0 ? 0 : this.#sum / count / 1000,
      p50: q(0.5),
      p90: q(0.9),
      p99: q(0.99),
      p999: q(0.999),
      max: this.#max / 1000,
    };
  }

  #quantile(p: number): number {
    if (this.#count === 0) return 0;
    const rank = Math.max(1, Math.ceil(p * this.#count));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += this.#counts[b];
      if (seen >= rank) return Math.min(this.#max, bucketMid(b));
    }
    return this.#max;
  }
}

function bucketOf(us: number): number {
  if (us < LINEAR) return us;
  const e = 31 - Math.clz32(us); // us in [2^e, 2^(e+1)), e >= SUB_BITS + 1
  const shift = e - SUB_BITS;
  return LINEAR + (e - SUB_BITS - 1) * SUB + ((us >>> shift) - SUB);
}

function bucketMid(b: number): number {
  if (b < LINEAR) return b;
  const k = b - LINEAR;
  const shift = Math.floor(k / SUB) + 1;
  const m = SUB + (k % SUB);
  return (m << shift) + ((1 << shift) >>> 1);
}
