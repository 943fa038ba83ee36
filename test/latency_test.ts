import assert from "node:assert/strict";
import fc from "fast-check";
import {
  Analyzer,
  createMessageCounts,
  MSG_ACK,
  MSG_NAK,
  MSG_REQ,
} from "../src/protocol/analyzer.ts";
import { Histogram } from "../src/stats/histogram.ts";
import { LatencyStats, LatencyTracker, summarizeLatency } from "../src/stats/latency.ts";

Deno.test("LatencyTracker times pipelined in-order replies from the chunk time", () => {
  const stats = new LatencyStats(new Histogram([0.001, 0.01, 0.1, 1]));
  const t = new LatencyTracker(stats);
  t.setTime(1000);
  for (let seq = 1; seq <= 3; seq++) t.onMessage(MSG_REQ, seq);
  assert.equal(t.inFlight, 3);
  assert.equal(stats.inFlight, 3);
  t.setTime(1005); // 5 ms later
  t.onMessage(MSG_ACK, 1);
  t.onMessage(MSG_NAK, 2);
  t.setTime(1050); // 50 ms after the REQ
  t.onMessage(MSG_ACK, 3);
  assert.equal(t.inFlight, 0);
  assert.equal(stats.inFlight, 0);
  assert.deepEqual(stats.histogram.toData().counts, [0, 2, 1, 0, 0]);
  assert.ok(Math.abs(stats.histogram.max - 0.05) < 1e-12);
  assert.equal(stats.unmatchedReplies + stats.duplicateSeq + stats.untrackedRequests, 0);
});

Deno.test("LatencyTracker matches out-of-order replies and non-increasing Seqs", () => {
  const stats = new LatencyStats();
  const t = new LatencyTracker(stats);
  t.setTime(0);
  for (const seq of [5, 6, 7, 3, 1]) t.onMessage(MSG_REQ, seq);
  t.setTime(2);
  for (const seq of [7, 1, 5, 3, 6]) t.onMessage(MSG_ACK, seq);
  assert.equal(stats.histogram.count, 5);
  assert.equal(stats.unmatchedReplies, 0);
  assert.equal(t.inFlight, 0);
  // The tracker is reusable after draining: Seqs may restart.
  t.onMessage(MSG_REQ, 1);
  t.onMessage(MSG_ACK, 1);
  assert.equal(stats.histogram.count, 6);
});

Deno.test("LatencyTracker counts a reply with no outstanding REQ as unmatched", () => {
  const stats = new LatencyStats();
  const t = new LatencyTracker(stats);
  t.onMessage(MSG_ACK, 9);
  t.onMessage(MSG_REQ, 1);
  t.onMessage(MSG_ACK, 1);
  t.onMessage(MSG_ACK, 1); // answered twice
  assert.equal(stats.unmatchedReplies, 2);
  assert.equal(stats.histogram.count, 1);
});

Deno.test("LatencyTracker counts a duplicate outstanding Seq once, not again for its reply", () => {
  const stats = new LatencyStats();
  const t = new LatencyTracker(stats);
  t.setTime(10);
  t.onMessage(MSG_REQ, 4);
  t.setTime(20);
  t.onMessage(MSG_REQ, 4);
  assert.equal(stats.duplicateSeq, 1);
  assert.equal(t.inFlight, 1);
  t.setTime(30);
  t.onMessage(MSG_ACK, 4); // times the first REQ
  t.onMessage(MSG_ACK, 4); // the duplicate's reply: already counted
  assert.equal(stats.unmatchedReplies, 0);
  assert.equal(stats.histogram.count, 1);
  assert.ok(Math.abs(stats.histogram.max - 0.02) < 1e-12);
});

Deno.test("LatencyTracker caps tracking per connection and counts what it skipped", () => {
  const stats = new LatencyStats();
  const t = new LatencyTracker(stats, { maxOutstanding: 100 });
  for (let seq = 1; seq <= 1_000; seq++) t.onMessage(MSG_REQ, seq);
  assert.equal(t.inFlight, 100);
  assert.equal(stats.untrackedRequests, 900);
  for (let seq = 1; seq <= 1_000; seq++) t.onMessage(MSG_ACK, seq);
  // Replies to untracked REQs are expected, not anomalies.
  assert.equal(stats.unmatchedReplies, 0);
  assert.equal(stats.histogram.count, 100);
  assert.equal(t.inFlight, 0);
});

Deno.test("LatencyTracker bounds memory under 1 M pipelined REQs", () => {
  const stats = new LatencyStats();
  const t = new LatencyTracker(stats, { maxOutstanding: 10_000 });
  for (let seq = 1; seq <= 1_000_000; seq++) t.onMessage(MSG_REQ, seq);
  assert.equal(t.inFlight, 10_000);
  assert.equal(stats.untrackedRequests, 990_000);
  assert.equal(stats.inFlight, 10_000);
});

Deno.test("LatencyTracker treats an unrepresentable Seq (-1) as untracked and owing nothing", () => {
  const stats = new LatencyStats();
  const t = new LatencyTracker(stats);
  t.onMessage(MSG_REQ, -1);
  t.onMessage(MSG_REQ, -1);
  assert.equal(t.outstanding, 0, "no reply can be matched to it");
  assert.equal(t.unmatchable, 2);
  assert.equal(t.unmatchablePending, 2, "held by the in-flight gate until answered");
  assert.equal(t.onMessage(MSG_ACK, -1), false);
  assert.equal(t.unmatched, 1);
  assert.equal(t.unmatchablePending, 1);
  assert.equal(t.onMessage(MSG_NAK, 0), false, "NAK 0: a server that cannot parse it");
  assert.equal(t.onMessage(MSG_NAK, 0), false);
  assert.equal(t.unmatchablePending, 0, "never below 0");
  assert.equal(stats.untrackedRequests, 2);
  assert.equal(stats.unmatchedReplies, 2);
  assert.equal(stats.histogram.count, 0);
});

Deno.test("LatencyTracker: a reply answers only an unanswered REQ with its Seq, duplicates exactly", () => {
  const stats = new LatencyStats();
  const t = new LatencyTracker(stats);
  t.onMessage(MSG_REQ, 5);
  t.onMessage(MSG_REQ, 5); // the same Seq again: owes a second reply
  t.onMessage(MSG_REQ, 6);
  assert.equal(t.outstanding, 3);
  assert.equal(t.onMessage(MSG_NAK, 0), false, "NAK 0 ERRDECODE answers no REQ");
  assert.equal(t.onMessage(MSG_ACK, 99), false, "unsolicited");
  assert.equal(t.outstanding, 3);
  assert.equal(t.onMessage(MSG_ACK, 5), true);
  assert.equal(t.onMessage(MSG_ACK, 6), true);
  assert.equal(t.onMessage(MSG_ACK, 6), false, "a second answer to 6");
  assert.equal(t.repeated, 1, "a copy of the reply just matched: no answer to another line");
  assert.equal(t.outstanding, 1, "the second REQ 5 is still owed");
  assert.equal(t.onMessage(MSG_ACK, 5), true);
  assert.equal(t.outstanding, 0);
  assert.equal(t.unmatched, 2);
  assert.equal(stats.unmatchedReplies, 3);
  assert.equal(t.matched, 3);
});

Deno.test("LatencyTracker.close() releases the in-flight gauge and counts unanswered REQs", () => {
  const stats = new LatencyStats();
  {
    using t = new LatencyTracker(stats);
    t.onMessage(MSG_REQ, 1);
    t.onMessage(MSG_REQ, 2);
    t.onMessage(MSG_REQ, 0);
    t.onMessage(MSG_ACK, 2);
    assert.equal(stats.inFlight, 2);
  }
  assert.equal(stats.inFlight, 0);
  assert.equal(stats.unansweredRequests, 2);
});

Deno.test("LatencyTracker records a negative elapsed time (clock stepped back) as 0", () => {
  const stats = new LatencyStats();
  const t = new LatencyTracker(stats);
  t.setTime(100);
  t.onMessage(MSG_REQ, 1);
  t.setTime(50);
  t.onMessage(MSG_ACK, 1);
  assert.equal(stats.histogram.count, 1);
  assert.equal(stats.histogram.max, 0);
});

Deno.test("LatencyTracker rejects a non-positive cap", () => {
  assert.throws(() => new LatencyTracker(new LatencyStats(), { maxOutstanding: 0 }), RangeError);
});

Deno.test("LatencyTracker is fed by the analyzer hook, one clock read per chunk", () => {
  const stats = new LatencyStats();
  const t = new LatencyTracker(stats);
  const counts = createMessageCounts();
  const onMessage = (type: number, seq: number) => t.onMessage(type, seq);
  const requests = new Analyzer("downstream", counts, { onMessage });
  const replies = new Analyzer("upstream", counts, { onMessage });
  const enc = new TextEncoder();
  t.setTime(0);
  requests.feed(enc.encode("REQ 1 a\nREQ 2 b\nRE"));
  t.setTime(1);
  requests.feed(enc.encode("Q 3\n"));
  t.setTime(3);
  replies.feed(enc.encode("ACK 1\nNAK 3 no\n"));
  t.setTime(4);
  replies.feed(enc.encode("ACK 2\nACK 77\n"));
  assert.equal(stats.histogram.count, 3);
  assert.equal(stats.unmatchedReplies, 1);
  assert.ok(Math.abs(stats.histogram.sum - (0.003 + 0.002 + 0.004)) < 1e-12);
});

Deno.test("summarizeLatency() reports quantiles, maximum and anomaly counters", () => {
  const stats = new LatencyStats();
  const empty = summarizeLatency(stats);
  assert.equal(empty.latency_p50_seconds, 0);
  assert.equal(empty.latency_max_seconds, 0);
  const t = new LatencyTracker(stats);
  for (let i = 1; i <= 100; i++) {
    t.setTime(0);
    t.onMessage(MSG_REQ, i);
    t.setTime(i === 100 ? 2000 : 1);
    t.onMessage(MSG_ACK, i);
  }
  t.onMessage(MSG_NAK, 5000);
  const s = summarizeLatency(stats);
  assert.equal(s.latency_samples, 100);
  assert.equal(s.latency_max_seconds, 2);
  assert.ok(
    s.latency_p50_seconds > 0 && s.latency_p50_seconds <= 0.001,
    String(s.latency_p50_seconds),
  );
  assert.ok(s.latency_p99_seconds <= 0.001, String(s.latency_p99_seconds));
  assert.equal(s.unmatched_replies, 1);
  assert.equal(s.requests_in_flight, 0);
});

// A plain model: outstanding REQs per Seq in a Map, duplicates counted per Seq, no cap shortcuts.
Deno.test("LatencyTracker agrees with a simple model on random traffic", () => {
  const op = fc.record({
    reply: fc.boolean(),
    seq: fc.integer({ min: 0, max: 40 }),
    dt: fc.integer({ min: 0, max: 5 }),
  });
  fc.assert(
    fc.property(fc.array(op, { maxLength: 400 }), fc.integer({ min: 1, max: 30 }), (ops, cap) => {
      const stats = new LatencyStats();
      const t = new LatencyTracker(stats, { maxOutstanding: cap });
      const outstanding = new Map<number, number>();
      const owedDup = new Map<number, number>();
      let owedUntracked = 0;
      let [low, high] = [0, 0];
      const model = { unmatched: 0, dup: 0, untracked: 0, sum: 0, count: 0 };
      let now = 0;
      for (const { reply, seq, dt } of ops) {
        now += dt;
        t.setTime(now);
        if (!reply) {
          t.onMessage(MSG_REQ, seq);
          if (outstanding.has(seq)) {
            model.dup++;
            owedDup.set(seq, (owedDup.get(seq) ?? 0) + 1);
          } else if (outstanding.size >= cap) {
            model.untracked++;
            if (owedUntracked++ === 0) [low, high] = [seq, seq];
            else [low, high] = [Math.min(low, seq), Math.max(high, seq)];
          } else outstanding.set(seq, now);
        } else {
          const matched = t.onMessage(MSG_ACK, seq);
          const started = outstanding.get(seq);
          const dup = owedDup.get(seq) ?? 0;
          let answers = true;
          if (started !== undefined) {
            outstanding.delete(seq);
            model.count++;
            model.sum += (now - started) / 1000;
          } else if (dup > 0) owedDup.set(seq, dup - 1);
          // Past the cap, only a reply within the Seqs counted answers one of them.
          else if (owedUntracked > 0 && seq >= low && seq <= high) owedUntracked--;
          else {
            model.unmatched++;
            answers = false;
          }
          assert.equal(matched, answers);
        }
        assert.equal(t.inFlight, outstanding.size);
        const dups = [...owedDup.values()].reduce((a, b) => a + b, 0);
        assert.equal(t.outstanding, outstanding.size + dups + owedUntracked);
        assert.equal(t.unmatched + t.repeated, model.unmatched);
      }
      assert.equal(stats.duplicateSeq, model.dup);
      assert.equal(stats.untrackedRequests, model.untracked);
      assert.equal(stats.unmatchedReplies, model.unmatched);
      assert.equal(stats.histogram.count, model.count);
      assert.ok(Math.abs(stats.histogram.sum - model.sum) < 1e-9);
      t.close();
      assert.equal(stats.inFlight, 0);
      assert.equal(stats.unansweredRequests, outstanding.size);
    }),
    { numRuns: 300 },
  );
});

Deno.test("LatencyTracker agrees with the model for mostly increasing Seqs (ring path)", () => {
  // Increasing Seqs with occasional out-of-order replies exercise the ring and its compaction.
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 7 }), { minLength: 1, maxLength: 300 }),
      (skips) => {
        const stats = new LatencyStats();
        const t = new LatencyTracker(stats, { maxOutstanding: 64 });
        const pending: number[] = [];
        let seq = 0;
        let answered = 0;
        let tracked = 0;
        for (const skip of skips) {
          seq++;
          t.onMessage(MSG_REQ, seq);
          if (pending.length < 64) {
            pending.push(seq);
            tracked++;
          }
          // Answer the pending REQ `skip` places from the oldest, if any.
          if (skip < pending.length && skip % 2 === 0) {
            const [s] = pending.splice(skip, 1);
            t.onMessage(MSG_ACK, s);
            answered++;
          }
          assert.equal(t.inFlight, pending.length);
        }
        for (const s of pending.reverse()) t.onMessage(MSG_ACK, s);
        assert.equal(stats.histogram.count, tracked);
        assert.equal(stats.unmatchedReplies, 0);
        assert.equal(t.inFlight, 0);
        assert.ok(answered <= tracked);
      },
    ),
    { numRuns: 300 },
  );
});
