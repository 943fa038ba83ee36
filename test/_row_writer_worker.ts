/**
 * A Worker for stats_row_test.ts: writes a stats row over and over, each write with every stored
 * counter at `k + 7 × slot` for the next k, until told to stop; then says how many it wrote.
 */
import { STORED_COUNTERS, writeCounter } from "../src/stats/counter_schema.ts";
import { DEFAULT_LATENCY_BUCKETS } from "../src/stats/histogram.ts";
import { Stats } from "../src/stats/stats.ts";
import { StatsRow } from "../src/stats/stats_row.ts";

const scope = self as unknown as Worker;
scope.onmessage = (event: MessageEvent) => {
  const { buffer, stop } = event.data as { buffer: SharedArrayBuffer; stop: SharedArrayBuffer };
  const row = new StatsRow(DEFAULT_LATENCY_BUCKETS.length, buffer);
  const flag = new Int32Array(stop);
  const stats = new Stats({ clock: () => 0 });
  let k = 0;
  while (Atomics.load(flag, 0) === 0) {
    k++;
    STORED_COUNTERS.forEach((spec, i) => writeCounter(spec, stats, stats.latency, k + 7 * i));
    row.write(stats, 0);
  }
  scope.postMessage(k);
};
