/**
 * A data-plane worker's statistics as one row of numbers in a `SharedArrayBuffer`: the worker is
 * its only writer (it copies its plain `Stats` in, a few times a second and when asked), the
 * supervisor reads every row and sums them. The hot path keeps incrementing plain fields; only a
 * flush touches shared memory.
 *
 * Layout, derived from the counter schema: every slot of {@linkcode COUNTER_SLOTS} (stored
 * counters and gauges, then each close reason), then each window's live buckets (a count, then
 * `start, count` pairs), then the latency histogram (its counts, sum and max). A sequence number
 * before the numbers makes a read that overlapped a write retry (a seqlock): a reader never sums
 * half a flush.
 *
 * @module
 */
import {
  addCounter,
  COUNTER_SCHEMA,
  COUNTER_SLOTS,
  readCounter,
  STORED_COUNTERS,
  type StoredSpec,
} from "./counter_schema.ts";
import type { HistogramData } from "./histogram.ts";
import type { Stats } from "./stats.ts";
import type { WindowBucket } from "./window.ts";

const WINDOWS = ["request1s", "request10s", "response1s", "response10s"] as const;

/** Buckets a window holds at most (the 1 s and 10 s windows have 100 each). */
const WINDOW_CAPACITY = 100;

const LABELLED = COUNTER_SCHEMA.flatMap((entry) =>
  entry.kind === "labelled_counter" ? entry.values.map((value) => ({ entry, value })) : []
);

/** Where each part of a row starts. */
const COUNTERS_AT = 0;
const WINDOWS_AT = COUNTER_SLOTS.length;
const WINDOW_FLOATS = 1 + 2 * WINDOW_CAPACITY;
const HISTOGRAM_AT = WINDOWS_AT + WINDOWS.length * WINDOW_FLOATS;

/** A histogram's counts (bounds + 1), its sum and its max. */
function histogramFloats(buckets: number): number {
  return buckets + 1 + 2;
}

/** One worker's row: a sequence word and the numbers. */
export class StatsRow {
  /** The shared memory (hand it to the worker). */
  readonly buffer: SharedArrayBuffer;
  #seq: Int32Array;
  #values: Float64Array;
  #buckets: number;
  #lastGood: Float64Array | undefined;

  /**
   * A row over `buffer`, or a new zeroed one for a histogram of `buckets` bounds.
   *
   * @throws {RangeError} when `buffer` is too small for the layout.
   */
  constructor(buckets: number, buffer?: SharedArrayBuffer) {
    this.#buckets = buckets;
    const floats = HISTOGRAM_AT + histogramFloats(buckets);
    this.buffer = buffer ?? new SharedArrayBuffer(8 + floats * 8);
    if (this.buffer.byteLength < 8 + floats * 8) {
      throw new RangeError(`A stats row needs ${8 + floats * 8} bytes`);
    }
    this.#seq = new Int32Array(this.buffer, 0, 2);
    this.#values = new Float64Array(this.buffer, 8, floats);
  }

  /** How many writes have begun (it moves while the writer runs: a watchdog's pulse). */
  get writes(): number {
    return Atomics.load(this.#seq, 0);
  }

  /** Copies `stats` in (the worker, its only writer). */
  write(stats: Stats, now: number): void {
    const v = this.#values;
    const before = Atomics.add(this.#seq, 0, 1); // odd: a write is under way
    try {
      let i = COUNTERS_AT;
      for (const spec of STORED_COUNTERS) v[i++] = readCounter(spec, stats, stats.latency);
      for (const { entry, value } of LABELLED) {
        v[i++] = (stats[entry.record] as Record<string, number | undefined>)[value] ?? 0;
      }
      for (let w = 0; w < WINDOWS.length; w++) {
        const at = WINDOWS_AT + w * WINDOW_FLOATS;
        const buckets = stats.windows[WINDOWS[w]].buckets(now).slice(-WINDOW_CAPACITY);
        v[at] = buckets.length;
        for (let b = 0; b < buckets.length; b++) {
          v[at + 1 + 2 * b] = buckets[b].start;
          v[at + 2 + 2 * b] = buckets[b].count;
        }
      }
      const data = stats.latency.histogram.toData();
      if (data.counts.length !== this.#buckets + 1) {
        throw new RangeError("The histogram's buckets differ from the row's");
      }
      for (let b = 0; b < data.counts.length; b++) v[HISTOGRAM_AT + b] = data.counts[b];
      v[HISTOGRAM_AT + data.counts.length] = data.sum;
      v[HISTOGRAM_AT + data.counts.length + 1] = data.max;
    } finally {
      Atomics.store(this.#seq, 0, before + 2);
    }
  }

  /**
   * A consistent copy of the numbers: retried while a write overlaps (a write takes
   * microseconds). A row whose writer never lets go (it died mid-write, or writes without a
   * pause) is read as the last consistent copy this reader made, after 20 ms of trying: stale,
   * never half of one write and half of another.
   */
  read(): Float64Array {
    let deadline = 0;
    for (let attempt = 0;; attempt++) {
      const before = Atomics.load(this.#seq, 0);
      if ((before & 1) === 0) {
        const copy = this.#values.slice();
        if (Atomics.load(this.#seq, 0) === before) {
          this.#lastGood = copy;
          return copy;
        }
      }
      if (attempt === 100) deadline = performance.now() + 20;
      if (attempt > 100 && performance.now() > deadline) {
        return this.#lastGood?.slice() ?? new Float64Array(this.#values.length);
      }
    }
  }

  /**
   * Adds a copy made by {@linkcode StatsRow.read} to `target`: every summed counter (gauges
   * too unless `gauges` is false: a worker that is gone serves nobody), the close reasons, the
   * histogram, and (when `windows`) the window buckets still live at `now`.
   */
  addTo(
    values: Float64Array,
    target: Stats,
    options: { now: number; gauges?: boolean; windows?: boolean },
  ): void {
    addRowTo(values, target, this.#buckets, options);
  }

  /** Connections open and replies per second over the last second, from a copy. */
  static breakdown(
    values: Float64Array,
    now: number,
  ): { connections: number; repliesPerSecond: number } {
    const connections =
      values[COUNTERS_AT + STORED_COUNTERS.findIndex((s) => s.name === "connections_active")];
    const at = WINDOWS_AT + WINDOWS.indexOf("response1s") * WINDOW_FLOATS;
    let sum = 0;
    for (const b of windowBuckets(values, at)) {
      if (b.start > now - 1000 && b.start <= now) sum += b.count;
    }
    return { connections, repliesPerSecond: sum };
  }
}

function windowBuckets(values: Float64Array, at: number): WindowBucket[] {
  const n = Math.min(values[at], WINDOW_CAPACITY);
  const out: WindowBucket[] = [];
  for (let b = 0; b < n; b++) {
    out.push({ start: values[at + 1 + 2 * b], count: values[at + 2 + 2 * b] });
  }
  return out;
}

function addRowTo(
  values: Float64Array,
  target: Stats,
  buckets: number,
  options: { now: number; gauges?: boolean; windows?: boolean },
): void {
  let i = COUNTERS_AT;
  for (const spec of STORED_COUNTERS) {
    const n = values[i++];
    if (!summable(spec, options.gauges ?? true)) continue;
    addCounter(spec, target, target.latency, n);
  }
  for (const { entry, value } of LABELLED) {
    const n = values[i++];
    if (n === 0) continue;
    const record = target[entry.record] as Record<string, number | undefined>;
    record[value] = (record[value] ?? 0) + n;
  }
  if (options.windows ?? true) {
    for (let w = 0; w < WINDOWS.length; w++) {
      target.windows[WINDOWS[w]].restore(
        windowBuckets(values, WINDOWS_AT + w * WINDOW_FLOATS),
        options.now,
      );
    }
  }
  const counts: number[] = [];
  for (let b = 0; b <= buckets; b++) counts.push(values[HISTOGRAM_AT + b]);
  const data: HistogramData = {
    bounds: [...target.latency.histogram.bounds],
    counts,
    sum: values[HISTOGRAM_AT + buckets + 1],
    count: counts.reduce((a, b) => a + b, 0),
    max: values[HISTOGRAM_AT + buckets + 2],
  };
  target.latency.histogram.addData(data);
}

function summable(spec: StoredSpec, gauges: boolean): boolean {
  return spec.summed && (gauges || spec.kind !== "gauge");
}
