/**
 * A fixed-bucket latency histogram (the Prometheus model): O(1) memory and record, cumulative
 * buckets for `/metrics`, and quantile estimates for `/stats`.
 *
 * @module
 */

/**
 * Upper bounds (seconds) of the default buckets: 100 µs to 10 s in 1-2.5-5 steps. A `+Inf`
 * bucket is always implied after the last one.
 */
export const DEFAULT_LATENCY_BUCKETS: readonly number[] = Object.freeze([
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
]);

/** A histogram's state as plain data (for persistence and exposition). */
export interface HistogramData {
  /** Upper bounds of the finite buckets, ascending (seconds). */
  bounds: number[];
  /** Observations per bucket, not cumulative; one more entry than `bounds` (the `+Inf` bucket). */
  counts: number[];
  /** Sum of every observation (seconds). */
  sum: number;
  /** Number of observations. */
  count: number;
  /** Largest observation, or 0 when there is none. */
  max: number;
}

/** Bounds checked once and shared by every histogram built from the same array. */
interface SharedBounds {
  frozen: readonly number[];
  typed: Float64Array;
}

const checkedBounds = new WeakMap<readonly number[], SharedBounds>();

/**
 * `bounds` validated and copied once per array: a histogram per connection (the access log's
 * latency figures) then costs one small allocation, not a validation and two copies.
 *
 * @throws {RangeError} unless the bounds are finite, positive and strictly ascending.
 */
function sharedBounds(bounds: readonly number[]): SharedBounds {
  const known = checkedBounds.get(bounds);
  // Only frozen arrays are remembered: one that may change is checked every time.
  if (known) return known;
  // Copied by index, then the copy is checked: what is checked is what is kept.
  const copy: number[] = [];
  for (let i = 0; i < bounds.length; i++) copy.push(bounds[i]);
  if (copy.length === 0) throw new RangeError("Invalid histogram: no buckets");
  for (let i = 0; i < copy.length; i++) {
    const b = copy[i];
    if (!Number.isFinite(b) || b <= 0 || (i > 0 && b <= copy[i - 1])) {
      throw new RangeError(
        `Invalid histogram bucket ${b}: bounds must be finite, positive and strictly ascending`,
      );
    }
  }
  const checked = { frozen: Object.freeze(copy), typed: Float64Array.from(copy) };
  if (Object.isFrozen(bounds)) checkedBounds.set(bounds, checked);
  return checked;
}

/**
 * Counts observations (seconds) in fixed buckets. Recording is a short scan of at most
 * `bounds.length` comparisons and allocates nothing.
 */
export class Histogram {
  /** Upper bounds of the finite buckets, ascending. */
  readonly bounds: readonly number[];
  #bounds: Float64Array;
  // A plain array: a Float64Array this small is an off-heap buffer, which costs an allocation
  // and sweeping per histogram (one per connection with the access log on).
  #counts: number[];
  #sum = 0;
  #count = 0;
  #max = 0;
  #min = Infinity;

  /**
   * Creates an empty histogram with the given bucket upper bounds (seconds).
   *
   * @throws {RangeError} unless the bounds are finite, positive and strictly ascending.
   */
  constructor(bounds: readonly number[] = DEFAULT_LATENCY_BUCKETS) {
    const shared = sharedBounds(bounds);
    this.bounds = shared.frozen;
    this.#bounds = shared.typed;
    const counts: number[] = []; // pushed, not `new Array(n)`: packed elements, no holes
    for (let i = 0; i <= shared.typed.length; i++) counts.push(0);
    this.#counts = counts;
  }

  /** Number of observations. */
  get count(): number {
    return this.#count;
  }

  /** Sum of the observations (seconds). */
  get sum(): number {
    return this.#sum;
  }

  /** Largest observation (seconds), 0 when empty. */
  get max(): number {
    return this.#max;
  }

  /** Records one observation of `seconds`; negative or NaN values count as 0. */
  record(seconds: number): void {
    const v = seconds > 0 ? seconds : 0;
    const bounds = this.#bounds;
    const n = bounds.length;
    // Latencies cluster in the low buckets, so a forward scan ends after a few comparisons.
    let i = 0;
    while (i < n && v > bounds[i]) i++;
    this.#counts[i]++;
    this.#sum += v;
    this.#count++;
    if (v > this.#max) this.#max = v;
    if (v < this.#min) this.#min = v;
  }

  /**
   * Estimates the `q` quantile (0 ≤ q ≤ 1) in seconds, or 0 when empty. Like Prometheus'
   * `histogram_quantile` it interpolates linearly inside the bucket holding the rank, but the
   * estimate is clamped to the smallest and largest values really seen, so `quantile(1)` is the
   * exact maximum and an answer never lies beyond it.
   *
   * @throws {RangeError} when `q` is outside [0, 1].
   */
  quantile(q: number): number {
    if (!(q >= 0 && q <= 1)) throw new RangeError(`Invalid quantile ${q}: expected 0 to 1`);
    const total = this.#count;
    if (total === 0) return 0;
    if (q === 1) return this.#max;
    const rank = q * total;
    const counts = this.#counts;
    const bounds = this.#bounds;
    let seen = 0;
    for (let i = 0; i < counts.length; i++) {
      const c = counts[i];
      if (c === 0) continue;
      if (seen + c >= rank) {
        const lower = Math.max(i === 0 ? 0 : bounds[i - 1], this.#min);
        const upper = Math.min(i < bounds.length ? bounds[i] : this.#max, this.#max);
        if (upper <= lower) return upper;
        return lower + (upper - lower) * ((rank - seen) / c);
      }
      seen += c;
    }
    return this.#max;
  }

  /**
   * Cumulative counts per bucket (`le` semantics), one per bound plus the `+Inf` bucket last,
   * which equals {@linkcode Histogram.count}.
   */
  cumulativeCounts(): number[] {
    const out = new Array<number>(this.#counts.length);
    let running = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      running += this.#counts[i];
      out[i] = running;
    }
    return out;
  }

  /** Empties the histogram (a merged view about to be summed again). */
  reset(): void {
    for (let i = 0; i < this.#counts.length; i++) this.#counts[i] = 0;
    this.#sum = 0;
    this.#count = 0;
    this.#max = 0;
    this.#min = Infinity;
  }

  /** The state as plain data. */
  toData(): HistogramData {
    return {
      bounds: [...this.bounds],
      counts: this.#counts.slice(),
      sum: this.#sum,
      count: this.#count,
      max: this.#max,
    };
  }

  /**
   * Adds persisted `data` to this histogram (used on restore). The minimum is not persisted, so
   * after a restore quantile estimates in the lowest bucket interpolate from its lower bound.
   *
   * @throws {RangeError} when the bounds differ from this histogram's or the data is malformed.
   */
  addData(data: HistogramData): void {
    const sameBounds = data.bounds.length === this.#bounds.length &&
      data.bounds.every((b, i) => b === this.#bounds[i]);
    if (!sameBounds) throw new RangeError("Cannot merge histograms with different buckets");
    if (data.counts.length !== this.#counts.length) {
      throw new RangeError(
        `Invalid histogram data: ${data.counts.length} counts for ${this.#counts.length} buckets`,
      );
    }
    let count = 0;
    let lowest = -1;
    for (let i = 0; i < data.counts.length; i++) {
      const c = data.counts[i];
      if (!Number.isFinite(c) || c < 0) throw new RangeError(`Invalid histogram count ${c}`);
      count += c;
      if (c > 0 && lowest < 0) lowest = i;
    }
    if (count === 0) return;
    for (let i = 0; i < data.counts.length; i++) this.#counts[i] += data.counts[i];
    this.#count += count;
    this.#sum += Math.max(0, data.sum);
    if (data.max > this.#max) this.#max = data.max;
    const floor = lowest === 0 ? 0 : this.#bounds[lowest - 1];
    if (floor < this.#min) this.#min = floor;
  }
}
