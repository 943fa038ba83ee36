/**
 * A moving-window event rate built from a ring of fixed-width time buckets.
 *
 * @module
 */

/** One bucket of a window, as persisted: its start time (ms) and its count. */
export interface WindowBucket {
  /** Start of the bucket in clock milliseconds (a multiple of the bucket width). */
  start: number;
  /** Events counted in the bucket. */
  count: number;
}

/**
 * Counts events in the last `spanMs` milliseconds with `bucketMs` granularity. Time is always
 * handed in (clock milliseconds), never read, so the window is tested without sleeping.
 *
 * The rate divides by the time the live buckets really cover (the full span minus the unfinished
 * part of the current bucket), so a steady load reads its true rate; once no event has been added
 * for `spanMs`, every bucket has aged out and the rate is exactly 0.
 */
export class MovingWindow {
  readonly spanMs: number;
  readonly bucketMs: number;
  #ids: Float64Array;
  #counts: Float64Array;
  /** The bucket the last {@linkcode add} counted in, and its slot. */
  #lastId = NaN;
  #lastSlot = 0;

  /**
   * Creates a window of `spanMs` split into buckets of `bucketMs`.
   *
   * @throws {RangeError} unless `spanMs` is a positive multiple of a positive `bucketMs`.
   */
  constructor(spanMs: number, bucketMs: number) {
    if (!(bucketMs > 0) || !(spanMs > 0) || spanMs % bucketMs !== 0) {
      throw new RangeError(
        `Invalid window ${spanMs} ms / ${bucketMs} ms: the span must be a positive multiple of the bucket`,
      );
    }
    this.spanMs = spanMs;
    this.bucketMs = bucketMs;
    const size = spanMs / bucketMs;
    this.#ids = new Float64Array(size).fill(-Infinity);
    this.#counts = new Float64Array(size);
  }

  /** Adds `count` events at time `now` (ms). */
  add(now: number, count = 1): void {
    const id = Math.floor(now / this.bucketMs);
    // Hot path: the bucket of the last add (its slot still holds it: only add writes #ids).
    if (id === this.#lastId) {
      this.#counts[this.#lastSlot] += count;
      return;
    }
    const slot = id % this.#ids.length;
    if (this.#ids[slot] !== id) {
      // An older bucket's slot is reused; a clock that stepped back keeps adding to the newest.
      if (this.#ids[slot] > id) return this.add(this.#ids[slot] * this.bucketMs, count);
      this.#ids[slot] = id;
      this.#counts[slot] = 0;
    }
    this.#counts[slot] += count;
    this.#lastId = id;
    this.#lastSlot = slot;
  }

  /** Events in the window ending at `now`. */
  sum(now: number): number {
    const id = Math.floor(now / this.bucketMs);
    const oldest = id - this.#ids.length;
    let total = 0;
    for (let i = 0; i < this.#ids.length; i++) {
      const bucketId = this.#ids[i];
      if (bucketId > oldest && bucketId <= id) total += this.#counts[i];
    }
    return total;
  }

  /** Events per second over the window ending at `now`. */
  rate(now: number): number {
    const total = this.sum(now);
    if (total === 0) return 0;
    const intoBucket = now - Math.floor(now / this.bucketMs) * this.bucketMs;
    const coveredMs = this.spanMs - this.bucketMs + Math.max(intoBucket, 1);
    return (total * 1000) / coveredMs;
  }

  /** The non-empty buckets still inside the window at `now`, oldest first (for persistence). */
  buckets(now: number): WindowBucket[] {
    const id = Math.floor(now / this.bucketMs);
    const oldest = id - this.#ids.length;
    const out: WindowBucket[] = [];
    for (let i = 0; i < this.#ids.length; i++) {
      const bucketId = this.#ids[i];
      if (bucketId > oldest && bucketId <= id && this.#counts[i] > 0) {
        out.push({ start: bucketId * this.bucketMs, count: this.#counts[i] });
      }
    }
    return out.sort((a, b) => a.start - b.start);
  }

  /** Adds persisted buckets back; those that fell out of the window by `now` are dropped. */
  restore(buckets: readonly WindowBucket[], now: number): void {
    const oldestStart = (Math.floor(now / this.bucketMs) - this.#ids.length + 1) * this.bucketMs;
    for (const bucket of buckets) {
      if (bucket.start >= oldestStart && bucket.start <= now && bucket.count > 0) {
        this.add(bucket.start, bucket.count);
      }
    }
  }
}
