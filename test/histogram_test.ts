import assert from "node:assert/strict";
import fc from "fast-check";
import { DEFAULT_LATENCY_BUCKETS, Histogram } from "../src/stats/histogram.ts";

Deno.test("Histogram default buckets span 100 µs to 10 s in ascending order", () => {
  assert.equal(DEFAULT_LATENCY_BUCKETS[0], 0.0001);
  assert.equal(DEFAULT_LATENCY_BUCKETS.at(-1), 10);
  for (let i = 1; i < DEFAULT_LATENCY_BUCKETS.length; i++) {
    assert.ok(DEFAULT_LATENCY_BUCKETS[i] > DEFAULT_LATENCY_BUCKETS[i - 1]);
  }
});

Deno.test("Histogram.record() puts a value equal to a bound in that bound's bucket (le)", () => {
  const h = new Histogram([0.001, 0.01, 0.1]);
  h.record(0.001);
  h.record(0.0011);
  h.record(0.1);
  h.record(5);
  h.record(-1);
  assert.deepEqual(h.toData().counts, [2, 1, 1, 1]);
  assert.deepEqual(h.cumulativeCounts(), [2, 3, 4, 5]);
  assert.equal(h.count, 5);
  assert.ok(Math.abs(h.sum - (0.001 + 0.0011 + 0.1 + 5)) < 1e-12);
  assert.equal(h.max, 5);
});

Deno.test("Histogram.quantile() is 0 when empty and exact for a single repeated value", () => {
  const h = new Histogram();
  assert.equal(h.quantile(0.5), 0);
  assert.equal(h.quantile(0.99), 0);
  for (let i = 0; i < 100; i++) h.record(0.0003);
  assert.equal(h.quantile(0.5), 0.0003);
  assert.equal(h.quantile(0.99), 0.0003);
  assert.equal(h.quantile(1), 0.0003);
});

Deno.test("Histogram.quantile() interpolates inside the bucket holding the rank", () => {
  const h = new Histogram([1, 2, 3]);
  // 100 values spread evenly over (1, 2]: the median should land near 1.5.
  for (let i = 1; i <= 100; i++) h.record(1 + i / 100);
  assert.ok(Math.abs(h.quantile(0.5) - 1.5) < 0.02, `p50 ${h.quantile(0.5)}`);
  assert.equal(h.quantile(1), 2);
});

Deno.test("Histogram.quantile() uses the observed maximum for the +Inf bucket", () => {
  const h = new Histogram([0.1]);
  h.record(0.05);
  h.record(42);
  assert.equal(h.quantile(1), 42);
  const p99 = h.quantile(0.99);
  assert.ok(p99 > 0.1 && p99 <= 42, `p99 ${p99}`);
});

Deno.test("Histogram.quantile() never leaves [min, max] and is monotonic in q", () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: 0, max: 20, noNaN: true }), { minLength: 1, maxLength: 200 }),
      (values) => {
        const h = new Histogram();
        for (const v of values) h.record(v);
        const min = Math.min(...values);
        const max = Math.max(...values);
        let previous = -Infinity;
        for (const q of [0, 0.1, 0.5, 0.9, 0.99, 1]) {
          const est = h.quantile(q);
          assert.ok(est >= min - 1e-12 && est <= max + 1e-12, `q=${q} est=${est} [${min}, ${max}]`);
          assert.ok(est >= previous - 1e-12, `not monotonic at q=${q}`);
          previous = est;
        }
        assert.equal(h.quantile(1), max);
        assert.equal(h.cumulativeCounts().at(-1), values.length);
      },
    ),
  );
});

Deno.test("Histogram.quantile() estimate stays inside the true value's bucket", () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: 0.00001, max: 12, noNaN: true }), { minLength: 1, maxLength: 300 }),
      fc.constantFrom(0.5, 0.9, 0.99),
      (values, q) => {
        const h = new Histogram();
        for (const v of values) h.record(v);
        const sorted = [...values].sort((a, b) => a - b);
        const truth = sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
        const bounds = [0, ...DEFAULT_LATENCY_BUCKETS, Infinity];
        const i = bounds.findIndex((b, k) => k > 0 && truth <= b);
        const est = h.quantile(q);
        assert.ok(
          // Interpolation may land an ulp past a bucket edge: allow 1e-12 s either way.
          est >= Math.min(bounds[i - 1], truth) - 1e-12 &&
            est <= Math.max(bounds[i], truth) + 1e-12,
          `q=${q} truth=${truth} est=${est}`,
        );
      },
    ),
  );
});

Deno.test("Histogram rejects bad bounds and quantiles", () => {
  assert.throws(() => new Histogram([]), RangeError);
  assert.throws(() => new Histogram([0.1, 0.1]), RangeError);
  assert.throws(() => new Histogram([0, 1]), RangeError);
  assert.throws(() => new Histogram([1, Infinity]), RangeError);
  assert.throws(() => new Histogram().quantile(1.5), RangeError);
  assert.throws(() => new Histogram().quantile(NaN), RangeError);
});

Deno.test("Histogram.addData() merges persisted data with the same buckets", () => {
  const a = new Histogram([0.01, 0.1]);
  a.record(0.005);
  a.record(0.05);
  a.record(1);
  const b = new Histogram([0.01, 0.1]);
  b.record(0.02);
  b.addData(a.toData());
  assert.deepEqual(b.toData().counts, [1, 2, 1]);
  assert.equal(b.count, 4);
  assert.equal(b.max, 1);
  assert.ok(Math.abs(b.sum - 1.075) < 1e-12);
  assert.throws(() => b.addData({ ...a.toData(), bounds: [0.01, 0.2] }), RangeError);
  assert.throws(() => b.addData({ ...a.toData(), counts: [1, 2] }), RangeError);
  assert.throws(() => b.addData({ ...a.toData(), counts: [1, -2, 0] }), RangeError);
});
