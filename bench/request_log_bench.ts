/**
 * What `--resume` adds on the fast path (before any failover): per 64 KiB chunk of 40-byte REQs,
 * the analyzer alone (what every connection pays) against the analyzer plus the request log
 * keeping each REQ until a reply with its Seq arrives, replies in order. Also the cost of
 * renumbering once a failover happened (request log + reply rewriter).
 *
 * @module
 */
import { Analyzer, createMessageCounts } from "../src/protocol/analyzer.ts";
import { ReplyRewriter } from "../src/protocol/reply_rewriter.ts";
import { RequestLog } from "../src/protocol/request_log.ts";

const MESSAGE_BYTES = 40;
const CHUNK = 64 * 1024;
const MESSAGES = 100_000;

function buildStream(prefix: string, messages: number): Uint8Array {
  const encoder = new TextEncoder();
  const out = new Uint8Array(messages * MESSAGE_BYTES);
  for (let seq = 1; seq <= messages; seq++) {
    const line = `${prefix} ${seq} `.padEnd(MESSAGE_BYTES - 1, "x") + "\n";
    out.set(encoder.encode(line), (seq - 1) * MESSAGE_BYTES);
  }
  return out;
}

const requests = buildStream("REQ", MESSAGES);
const replies = buildStream("ACK", MESSAGES);
// Whole messages per chunk, so a chunk of replies answers exactly a chunk of REQs.
const STEP = Math.floor(CHUNK / MESSAGE_BYTES) * MESSAGE_BYTES;

Deno.bench({
  name: "analyzers only (every connection)",
  group: "resume fast path",
  baseline: true,
  fn: () => {
    const counts = createMessageCounts();
    const req = new Analyzer("downstream", counts);
    const rep = new Analyzer("upstream", counts);
    for (let i = 0; i < requests.length; i += STEP) {
      req.feed(requests.subarray(i, i + STEP));
      rep.feed(replies.subarray(i, i + STEP));
    }
    if (counts.msg_ack !== MESSAGES) throw new Error("miscounted");
  },
});

Deno.bench({
  name: "analyzers + request log answered by Seq (--resume, no failover)",
  group: "resume fast path",
  fn: () => {
    const counts = createMessageCounts();
    const log = new RequestLog();
    const req = new Analyzer("downstream", counts);
    const rep = new Analyzer("upstream", counts, { onMessage: (_t, seq) => log.answerSeq(seq) });
    for (let i = 0; i < requests.length; i += STEP) {
      const chunk = requests.subarray(i, i + STEP);
      req.feed(chunk);
      log.feed(chunk);
      rep.feed(replies.subarray(i, i + STEP));
    }
    if (log.outstanding !== 0 || log.retainedBytes !== 0) throw new Error("not all answered");
  },
});

Deno.bench({
  name: "analyzers + renumbering both ways (--resume, after a failover)",
  group: "resume fast path",
  fn: () => {
    const counts = createMessageCounts();
    const log = new RequestLog();
    log.replay();
    const rewriter = new ReplyRewriter(log);
    const req = new Analyzer("downstream", counts);
    const rep = new Analyzer("upstream", counts);
    // The upstream's replies carry proxy Seqs 1…N, which here equal the client's.
    for (let i = 0; i < requests.length; i += STEP) {
      const chunk = requests.subarray(i, i + STEP);
      req.feed(chunk);
      log.feed(chunk);
      const n = rewriter.feed(replies.subarray(i, i + STEP));
      rep.feed(rewriter.out.subarray(0, n));
    }
    if (log.outstanding !== 0) throw new Error("not all answered");
  },
});
