/**
 * The process's statistics when the data plane runs in workers: a `Stats` whose every read
 * (`snapshot()`, and `refresh()` before reading fields) sums the recovered and retired totals,
 * the supervisor's own counters and each worker's row, as the counter schema says: summed
 * numbers added, windows merged bucket by bucket, histograms count by count, the rest (the config
 * generation) the supervisor's. Nothing adds to it directly: the supervisor counts in `own`.
 *
 * @module
 */
import { addCounter, readCounter, STORED_COUNTERS, writeCounter } from "./counter_schema.ts";
import { Stats, type StatsSnapshot } from "./stats.ts";
import type { Clock } from "./clock.ts";
import { MovingWindow } from "./window.ts";

/** Where a merged read takes its parts from. */
export interface MergeSources {
  clock: Clock;
  /** What the supervisor counts itself (admin HTTP, signals, reloads, dropped output lines). */
  own: Stats;
  /** Restored totals (`--recovery-path`) and the counters of workers that are gone. */
  base: Stats;
  /** Adds every live worker's row to `target` at `now`. */
  addRows: (target: Stats, now: number) => void;
  /** The totals of the proxy this one took over (`--takeover`), as last heard; unset: none. */
  carried?: () => Stats | undefined;
}

/** See the module docs. */
export class MergedStats extends Stats {
  #sources: MergeSources;

  /** A merged view; its uptime counts from now. */
  constructor(sources: MergeSources) {
    super({ clock: sources.clock });
    this.#sources = sources;
  }

  /** Sums every part again into this object's fields. */
  refresh(): void {
    const now = this.clock();
    const { own, base } = this.#sources;
    for (const spec of STORED_COUNTERS) writeCounter(spec, this, this.latency, 0);
    for (const key of Object.keys(this.closed)) delete (this.closed as Record<string, number>)[key];
    this.windows.request1s = new MovingWindow(1_000, 10);
    this.windows.request10s = new MovingWindow(10_000, 100);
    this.windows.response1s = new MovingWindow(1_000, 10);
    this.windows.response10s = new MovingWindow(10_000, 100);
    this.latency.histogram.reset();
    addStats(base, this, now);
    const carried = this.#sources.carried?.();
    if (carried !== undefined) addStats(carried, this, now);
    addStats(own, this, now);
    for (const spec of STORED_COUNTERS) {
      if (!spec.summed) writeCounter(spec, this, this.latency, readCounter(spec, own, own.latency));
    }
    this.configLoadedAt = own.configLoadedAt;
    this.#sources.addRows(this, now);
  }

  override snapshot(): StatsSnapshot {
    this.refresh();
    return super.snapshot();
  }
}

/** Adds the summed parts of `from` to `to`: counters, close reasons, windows, histogram. */
export function addStats(from: Stats, to: Stats, now: number): void {
  for (const spec of STORED_COUNTERS) {
    if (spec.summed) addCounter(spec, to, to.latency, readCounter(spec, from, from.latency));
  }
  const closed = to.closed as Record<string, number | undefined>;
  for (const [reason, n] of Object.entries(from.closed)) {
    if (n !== undefined && n > 0) closed[reason] = (closed[reason] ?? 0) + n;
  }
  for (const key of ["request1s", "request10s", "response1s", "response10s"] as const) {
    to.windows[key].restore(from.windows[key].buckets(now), now);
  }
  to.latency.histogram.addData(from.latency.histogram.toData());
}
