/**
 * What matching every reply to its REQ by Seq costs on the hot path: the engine's per-chunk work
 * for a pipelined exchange (16 REQs in one chunk, then their 16 ACKs in one chunk, 100 000 of
 * each), fed through the two analyzers with the {@linkcode LatencyTracker} hooked in as the bridge
 * does, against the analyzers alone (the floor).
 *
 * To compare with an older tree's tracker (before issue 17 it only timed replies, and the engine
 * counted replies instead of matching them), check it out and name it:
 *
 * ```sh
 * git worktree add /tmp/bench-old bcd2ad6
 * FOO_PROXY_BENCH_OLD=/tmp/bench-old deno task bench bench/reply_matching_bench.ts
 * ```
 *
 * @module
 */
import { Analyzer, createMessageCounts } from "../src/protocol/analyzer.ts";
import { LatencyStats, LatencyTracker } from "../src/stats/latency.ts";

const EXCHANGES = 100_000;
const PIPELINE = 16;

function chunks(prefix: string): Uint8Array[] {
  const encoder = new TextEncoder();
  const out: Uint8Array[] = [];
  for (let first = 1; first <= EXCHANGES; first += PIPELINE) {
    let text = "";
    for (let seq = first; seq < first + PIPELINE; seq++) {
      text += prefix === "REQ" ? `REQ ${seq} some payload data\n` : `ACK ${seq}\n`;
    }
    out.push(encoder.encode(text));
  }
  return out;
}

const requestChunks = chunks("REQ");
const replyChunks = chunks("ACK");

Deno.bench({
  name: "analyzers alone (no matching, no timing)",
  group: "reply matching",
  baseline: true,
  fn: () => {
    const counts = createMessageCounts();
    const requests = new Analyzer("downstream", counts);
    const replies = new Analyzer("upstream", counts);
    for (let k = 0; k < requestChunks.length; k++) {
      requests.feed(requestChunks[k]);
      replies.feed(replyChunks[k]);
    }
    if (counts.msg_ack !== counts.msg_req) throw new Error("miscounted");
  },
});

Deno.bench({
  name: "this tree: every reply matched by Seq (owed count and latency)",
  group: "reply matching",
  fn: () => {
    const counts = createMessageCounts();
    const tracker = new LatencyTracker(new LatencyStats());
    const hook = (type: number, seq: number) => {
      tracker.onMessage(type, seq);
    };
    const requests = new Analyzer("downstream", counts, { onMessage: hook });
    const replies = new Analyzer("upstream", counts, { onMessage: hook });
    let owed = 0;
    for (let k = 0; k < requestChunks.length; k++) {
      // As the bridge does per chunk: read what is owed after each direction's feed.
      if (requests.feed(requestChunks[k]) > 0) owed = tracker.outstanding;
      if (replies.feed(replyChunks[k]) > 0) owed = tracker.outstanding;
    }
    if (counts.msg_ack !== counts.msg_req || owed !== 0) throw new Error("miscounted");
  },
});

const oldTree = Deno.env.get("FOO_PROXY_BENCH_OLD");
if (oldTree !== undefined) {
  const root = `file://${oldTree.replace(/\/$/, "")}/src`;
  const oldAnalyzer = await import(`${root}/protocol/analyzer.ts`);
  const oldLatency = await import(`${root}/stats/latency.ts`);
  Deno.bench({
    name: `old tree (${oldTree}): replies counted, latency matched by Seq`,
    group: "reply matching",
    fn: () => {
      const counts = oldAnalyzer.createMessageCounts();
      const tracker = new oldLatency.LatencyTracker(new oldLatency.LatencyStats());
      const hook = (type: number, seq: number) => tracker.onMessage(type, seq);
      const requests = new oldAnalyzer.Analyzer("downstream", counts, { onMessage: hook });
      const replies = new oldAnalyzer.Analyzer("upstream", counts, { onMessage: hook });
      let outstanding = 0;
      for (let k = 0; k < requestChunks.length; k++) {
        outstanding += requests.feed(requestChunks[k]);
        const valid = replies.feed(replyChunks[k]);
        if (valid > 0) outstanding = Math.max(0, outstanding - valid);
      }
      if (counts.msg_ack !== counts.msg_req || outstanding !== 0) throw new Error("miscounted");
    },
  });
}
