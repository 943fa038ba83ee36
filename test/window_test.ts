import assert from "node:assert/strict";
import { MovingWindow } from "../src/stats/window.ts";
import { Stats } from "../src/stats/stats.ts";

function within(actual: number, expected: number, fraction: number, what: string) {
  assert.ok(
    Math.abs(actual - expected) <= expected * fraction,
    `${what}: ${actual} is not within ${fraction * 100}% of ${expected}`,
  );
}

Deno.test("MovingWindow reads a steady load's true rate within 2% at every instant", () => {
  for (const [span, bucket, perSecond] of [[1000, 10, 1000], [10_000, 100, 250], [1000, 10, 37]]) {
    const window = new MovingWindow(span, bucket);
    const start = 1_700_000_000_123;
    const gap = 1000 / perSecond;
    let t = start;
    // Run steady traffic for three spans, checking the rate at many offsets once warmed up.
    for (; t < start + 3 * span; t += gap) {
      window.add(t, 1);
      if (t > start + span + 1) {
        within(window.rate(t), perSecond, 0.02, `${span} ms at ${t - start}`);
      }
    }
  }
});

Deno.test("MovingWindow falls to exactly 0 once idle for the window length", () => {
  const window = new MovingWindow(1000, 10);
  const t0 = 50_000.5;
  for (let i = 0; i < 100; i++) window.add(t0 + i * 5, 3);
  const last = t0 + 99 * 5;
  assert.ok(window.rate(last + 500) > 0);
  assert.ok(window.rate(last + 990) > 0, "still counts one bucket before the end");
  assert.equal(window.rate(last + 1000), 0);
  assert.equal(window.sum(last + 1000), 0);
  assert.equal(window.rate(last + 123_456), 0);
});

Deno.test("MovingWindow counts bursts and ages them out bucket by bucket", () => {
  const window = new MovingWindow(10_000, 100);
  window.add(0, 500);
  window.add(5_000, 500);
  assert.equal(window.sum(9_999), 1000);
  assert.equal(window.sum(10_000), 500, "the first burst left the window");
  assert.equal(window.sum(15_000), 0);
});

Deno.test("MovingWindow keeps counting when the clock steps backwards", () => {
  const window = new MovingWindow(1000, 10);
  window.add(10_000, 1);
  window.add(9_000, 1); // a clock step back must not drop or misplace the event
  assert.equal(window.sum(10_000), 2);
});

Deno.test("MovingWindow buckets() and restore() keep only what is still inside the window", () => {
  const window = new MovingWindow(10_000, 100);
  for (let t = 0; t < 10_000; t += 100) window.add(t, 1);
  const saved = window.buckets(9_999);
  assert.equal(saved.length, 100);
  const restored = new MovingWindow(10_000, 100);
  restored.restore(saved, 9_999 + 4_000); // 4 s of downtime: 60 buckets are still inside
  assert.equal(restored.sum(13_999), 60);
  const late = new MovingWindow(10_000, 100);
  late.restore(saved, 9_999 + 10_000);
  assert.equal(late.sum(19_999), 0);
});

Deno.test("MovingWindow rejects a span that is not a multiple of its bucket", () => {
  assert.throws(() => new MovingWindow(1000, 3), RangeError);
  assert.throws(() => new MovingWindow(0, 10), RangeError);
});

Deno.test("Stats snapshot has the exact field names and msg_total = req + ack + nak", () => {
  let now = 1_000_000;
  const stats = new Stats({ clock: () => now });
  stats.counts.msg_req = 5;
  stats.counts.msg_ack = 3;
  stats.counts.msg_nak = 1;
  stats.counts.invalid_seq = 2;
  stats.recordRequests(5);
  stats.recordResponses(4);
  now += 2500;
  const snap = stats.snapshot();
  for (
    const key of [
      "msg_total",
      "msg_req",
      "msg_ack",
      "msg_nak",
      "request_rate_1s",
      "request_rate_10s",
      "response_rate_1s",
      "response_rate_10s",
      "msg_invalid",
      "connections_active",
      "connections_total",
      "upstream_errors",
      "bytes_downstream",
      "bytes_upstream",
      "uptime_seconds",
    ]
  ) assert.ok(key in snap, key);
  assert.equal(snap.msg_total, 9);
  assert.equal(snap.msg_invalid, 2);
  assert.equal(snap.request_rate_1s, 0, "2.5 s idle empties the 1 s window");
  within(snap.request_rate_10s, 0.5, 0.02, "request_rate_10s");
  within(snap.response_rate_10s, 0.4, 0.02, "response_rate_10s");
  assert.equal(snap.uptime_seconds, 2.5);
  assert.equal(typeof JSON.parse(JSON.stringify(snap)).request_rate_10s, "number");
});
