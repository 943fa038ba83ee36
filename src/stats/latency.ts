/**
 * Per-request latency: matching each reply (ACK/NAK) to the REQ with the same Seq on the same
 * connection, recording REQ→reply time in a shared histogram, and counting protocol anomalies.
 *
 * The bridge reads the clock once per chunk ({@linkcode LatencyTracker.setTime}); the analyzer
 * hook then calls {@linkcode LatencyTracker.onMessage} for every message of that chunk without
 * reading the clock again.
 *
 * @module
 */
import { MSG_REQ } from "../protocol/analyzer.ts";
import { buildLatencySection } from "./counter_schema.ts";
import { Histogram } from "./histogram.ts";

/**
 * What every connection's tracker adds to: the latency histogram and the anomaly counters. One
 * per proxy.
 */
export class LatencyStats {
  /** REQ→reply latencies in seconds. */
  readonly histogram: Histogram;
  /** Replies whose Seq had no outstanding REQ on their connection. */
  unmatchedReplies = 0;
  /** REQs whose Seq was already outstanding on their connection. */
  duplicateSeq = 0;
  /**
   * REQs not tracked because their connection already had the maximum outstanding, or because
   * their Seq was too large to represent exactly. They are still forwarded and counted.
   */
  untrackedRequests = 0;
  /** Tracked REQs still unanswered when their connection ended. */
  unansweredRequests = 0;
  /** Tracked REQs awaiting a reply, over all connections (a gauge). */
  inFlight = 0;

  /** Creates zeroed latency stats; `histogram` defaults to the 100 µs…10 s buckets. */
  constructor(histogram: Histogram = new Histogram()) {
    this.histogram = histogram;
  }
}

/** The latency figures `/stats` adds to the snapshot. */
export interface LatencySummary {
  /** Median REQ→reply latency estimate (seconds), 0 before the first reply. */
  latency_p50_seconds: number;
  /** 99th percentile REQ→reply latency estimate (seconds). */
  latency_p99_seconds: number;
  /** Largest REQ→reply latency seen (seconds). */
  latency_max_seconds: number;
  /** Replies matched to a REQ (the histogram's count). */
  latency_samples: number;
  /** REQs awaiting a reply now. */
  requests_in_flight: number;
  /** Replies with no outstanding REQ of that Seq. */
  unmatched_replies: number;
  /** REQs whose Seq was already outstanding. */
  duplicate_seq: number;
  /** REQs over the per-connection tracking cap (or with an unrepresentable Seq). */
  untracked_requests: number;
  /** Tracked REQs never answered before their connection ended. */
  unanswered_requests: number;
}

/** Summarizes `latency` for `/stats` (quantiles rounded to the microsecond), from the schema. */
export function summarizeLatency(latency: LatencyStats): LatencySummary {
  return buildLatencySection(latency) as unknown as LatencySummary;
}

/** Options for {@linkcode LatencyTracker}. */
export interface LatencyTrackerOptions {
  /**
   * Most REQs matched by Seq at once on this connection; past it REQs are forwarded and counted
   * in `untrackedRequests`, and their replies are counted, not matched. Bounds the tracker's
   * memory; the engine sets it to at least its in-flight limit, so that within the limit every
   * reply is matched. @default {10000}
   */
  maxOutstanding?: number;
  /** Record REQ→reply times in the histogram (matching happens either way). @default {true} */
  timing?: boolean;
  /** Also records this connection's latencies here (the access log's p50/max); unset: no. */
  connection?: Histogram;
}

// Small enough (2 × 32 bytes) for V8 to keep the two rings on its heap with no separate backing
// store, so an idle connection pays little; a pipelining one doubles it a few times, once.
const INITIAL_RING = 4;

/**
 * Matches replies to REQs by Seq on one connection: the engine's count of replies owed (the
 * in-flight gate, the end of a half-closed exchange) in every mode, and the REQ→reply latency.
 * A reply counts only against an unanswered REQ with its Seq; a duplicate or unsolicited reply
 * answers nothing. Memory is bounded by `maxOutstanding` entries.
 *
 * Pipelined clients send increasing Seqs and servers answer in order, so outstanding REQs are
 * kept in a ring sorted by Seq (appending a larger Seq keeps it sorted): an in-order reply pops
 * the head without hashing or allocating, and an out-of-order one is found by binary search and
 * marked answered. Only a REQ whose Seq is not larger than every outstanding one goes to a
 * fallback map; a second REQ with a Seq already outstanding is kept in a count per Seq, so each
 * of its replies is matched exactly too.
 *
 * Past the cap, REQs are counted instead of kept (with the range of their Seqs), and a reply that
 * matches no kept REQ but falls in that range answers one of them: the only place a reply is
 * counted rather than matched.
 */
export class LatencyTracker {
  /** Replies owed: matchable REQs not answered yet, tracked or counted past the cap. */
  outstanding = 0;
  /** Replies that answered a REQ of this connection (monotonic). */
  matched = 0;
  /**
   * Replies that answered nothing: unsolicited, a second answer, or an unrepresentable Seq; not
   * counting {@linkcode repeated} ones.
   */
  unmatched = 0;
  /**
   * Unmatched replies with the Seq of the reply matched last: a server that sends its replies
   * twice. Unlike other unmatched replies they cannot be the answer to a client's other line.
   */
  repeated = 0;
  /**
   * REQs whose Seq is above 2^53 (the analyzer reports `-1`): no reply can be matched to them, so
   * they are not owed; like an invalid line, whatever the server says to them is relayed.
   */
  unmatchable = 0;
  /**
   * Those of {@linkcode unmatchable} not answered yet, as far as counting can tell: a reply that
   * matches nothing (but a {@linkcode repeated} one) is taken as the answer of one, as servers
   * answer in order. The engine counts them in flight: real work for the server, and answered.
   */
  unmatchablePending = 0;
  #connection: Histogram | undefined;
  #stats: LatencyStats;
  #max: number;
  #timing: boolean;
  #now = 0;
  // Ring of outstanding REQs sorted by seq; a NaN time marks an entry answered out of order.
  #seqs: Float64Array;
  #times: Float64Array;
  #head = 0;
  #size = 0; // entries in the ring, answered ones included
  #ringLive = 0;
  // Created on the first REQ that is not larger than every outstanding one (rare).
  #fallback: Map<number, number> | undefined;
  // Second (third, …) REQs with a Seq already outstanding, per Seq: each owes its own reply.
  #duplicates: Map<number, number> | undefined;
  // REQs past the cap whose replies are still owed, and the range of their Seqs: a reply outside
  // it (NAK 0, a copy of an earlier reply) answers none of them.
  #owedUntracked = 0;
  #untrackedLow = 0;
  #untrackedHigh = 0;
  #lastMatched = -1;
  #closed = false;

  /** Creates a tracker adding to `stats`. */
  constructor(stats: LatencyStats, options: LatencyTrackerOptions = {}) {
    this.#connection = options.connection;
    const max = options.maxOutstanding ?? 10_000;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new RangeError(`Invalid maxOutstanding ${max}: expected a positive integer`);
    }
    this.#stats = stats;
    this.#max = max;
    this.#timing = options.timing ?? true;
    this.#seqs = new Float64Array(INITIAL_RING);
    this.#times = new Float64Array(INITIAL_RING);
  }

  /** REQs of this connection awaiting a reply (tracked ones only). */
  get inFlight(): number {
    return this.#ringLive + (this.#fallback?.size ?? 0);
  }

  /** Sets the time (clock ms) that the following {@linkcode onMessage} calls are stamped with. */
  setTime(nowMs: number): void {
    this.#now = nowMs;
  }

  /**
   * Takes one message from an analyzer: a REQ starts a timing, an ACK/NAK ends the one with its
   * Seq. `seq` is `-1` when the analyzer could not represent it; such REQs are untracked and
   * unmatchable, and such replies answer nothing. Calls after {@linkcode close} are ignored.
   * Returns whether a reply answered a REQ (always false for a REQ).
   */
  onMessage(type: number, seq: number): boolean {
    if (this.#closed) return false;
    if (type === MSG_REQ) {
      this.#request(seq);
      return false;
    }
    return this.#reply(seq);
  }

  /**
   * Ends the connection: its unanswered REQs are counted and leave the in-flight gauge. Later
   * messages are ignored. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const live = this.inFlight;
    this.#stats.unansweredRequests += live;
    this.#stats.inFlight -= live;
    this.#fallback = undefined;
    this.#duplicates = undefined;
    this.#size = 0;
    this.#ringLive = 0;
    this.#seqs = new Float64Array(0);
    this.#times = new Float64Array(0);
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #request(seq: number): void {
    const stats = this.#stats;
    if (seq < 0) {
      stats.untrackedRequests++;
      this.unmatchable++;
      this.unmatchablePending++;
      return;
    }
    const size = this.#size;
    const tailSeq = size > 0 ? this.#seqs[(this.#head + size - 1) & (this.#seqs.length - 1)] : -1;
    if (seq <= tailSeq || (this.#fallback?.size ?? 0) > 0) {
      // Not the fast, increasing case: it may be a duplicate of an outstanding Seq.
      if (this.#ringFind(seq) >= 0 || this.#fallback?.has(seq)) {
        stats.duplicateSeq++;
        const duplicates = this.#duplicates ??= new Map();
        duplicates.set(seq, (duplicates.get(seq) ?? 0) + 1);
        this.outstanding++;
        return;
      }
    }
    this.outstanding++;
    if (this.inFlight >= this.#max) {
      stats.untrackedRequests++;
      if (this.#owedUntracked++ === 0) {
        this.#untrackedLow = seq;
        this.#untrackedHigh = seq;
      } else if (seq < this.#untrackedLow) {
        this.#untrackedLow = seq;
      } else if (seq > this.#untrackedHigh) {
        this.#untrackedHigh = seq;
      }
      return;
    }
    stats.inFlight++;
    if (seq > tailSeq) {
      this.#ringPush(seq);
    } else {
      (this.#fallback ??= new Map()).set(seq, this.#now);
    }
  }

  #reply(seq: number): boolean {
    if (seq < 0) {
      this.unmatched++;
      if (this.unmatchablePending > 0) this.unmatchablePending--;
      return false;
    }
    const stats = this.#stats;
    let started = NaN;
    if (this.#size > 0) {
      const mask = this.#seqs.length - 1;
      const head = this.#head;
      if (this.#seqs[head] === seq && this.#times[head] === this.#times[head]) {
        started = this.#times[head];
        this.#ringLive--;
        this.#popAnswered(1);
      } else {
        const at = this.#ringFind(seq);
        if (at >= 0) {
          const slot = (head + at) & mask;
          started = this.#times[slot];
          this.#times[slot] = NaN;
          this.#ringLive--;
        }
      }
    }
    const fallback = this.#fallback;
    if (started !== started && fallback !== undefined && fallback.size > 0) {
      const t = fallback.get(seq);
      if (t !== undefined) {
        started = t;
        fallback.delete(seq);
      }
    }
    if (started === started) {
      stats.inFlight--;
      this.outstanding--;
      this.matched++;
      this.#lastMatched = seq;
      if (this.#timing) {
        const ms = this.#now - started;
        const seconds = ms > 0 ? ms / 1000 : 0;
        stats.histogram.record(seconds);
        this.#connection?.record(seconds);
      }
      return true;
    }
    // No tracked REQ has this Seq: a duplicate REQ's reply, one past the cap, or an anomaly.
    const duplicates = this.#duplicates;
    const owed = duplicates?.get(seq);
    if (owed !== undefined) {
      if (owed > 1) duplicates!.set(seq, owed - 1);
      else duplicates!.delete(seq);
    } else if (
      this.#owedUntracked > 0 && seq >= this.#untrackedLow && seq <= this.#untrackedHigh
    ) {
      this.#owedUntracked--;
    } else {
      stats.unmatchedReplies++;
      if (seq === this.#lastMatched) {
        this.repeated++;
        return false;
      }
      this.unmatched++;
      if (this.unmatchablePending > 0) this.unmatchablePending--;
      return false;
    }
    this.outstanding--;
    this.matched++;
    this.#lastMatched = seq;
    return true;
  }

  // Drops `n` entries from the head, then any answered ones that follow.
  #popAnswered(n: number): void {
    const mask = this.#seqs.length - 1;
    let head = (this.#head + n) & mask;
    let size = this.#size - n;
    const times = this.#times;
    while (size > 0 && times[head] !== times[head]) {
      head = (head + 1) & mask;
      size--;
    }
    this.#head = size === 0 ? 0 : head;
    this.#size = size;
  }

  #ringPush(seq: number): void {
    if (this.#size === this.#seqs.length) this.#grow();
    const slot = (this.#head + this.#size) & (this.#seqs.length - 1);
    this.#seqs[slot] = seq;
    this.#times[slot] = this.#now;
    this.#size++;
    this.#ringLive++;
  }

  // Doubles the ring, or compacts it in place when answered entries fill half of it or more. It
  // only doubles while live entries fill over half, so it stays below 4 × `maxOutstanding`.
  #grow(): void {
    const old = this.#seqs.length;
    const capacity = this.#ringLive * 2 <= old ? old : old * 2;
    const seqs = new Float64Array(capacity);
    const times = new Float64Array(capacity);
    const mask = old - 1;
    let n = 0;
    for (let i = 0; i < this.#size; i++) {
      const slot = (this.#head + i) & mask;
      const t = this.#times[slot];
      if (t !== t) continue;
      seqs[n] = this.#seqs[slot];
      times[n] = t;
      n++;
    }
    this.#seqs = seqs;
    this.#times = times;
    this.#head = 0;
    this.#size = n;
  }

  // Index (from the head) of the live ring entry with `seq`, or -1.
  #ringFind(seq: number): number {
    const mask = this.#seqs.length - 1;
    const head = this.#head;
    let lo = 0;
    let hi = this.#size - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const s = this.#seqs[(head + mid) & mask];
      if (s < seq) lo = mid + 1;
      else if (s > seq) hi = mid - 1;
      else {
        const t = this.#times[(head + mid) & mask];
        return t === t ? mid : -1;
      }
    }
    return -1;
  }
}
