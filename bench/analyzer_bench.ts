/**
 * Analyzer throughput: 40-byte messages through one analyzer, in 64 KiB chunks.
 *
 * @module
 */
import { Analyzer, createMessageCounts } from "../src/protocol/analyzer.ts";

const MESSAGE_BYTES = 40;
const CHUNK = 64 * 1024;

function buildStream(prefix: string, messages: number): Uint8Array {
  const encoder = new TextEncoder();
  const parts: Uint8Array[] = [];
  for (let seq = 1; seq <= messages; seq++) {
    const head = `${prefix} ${seq} `;
    parts.push(encoder.encode(head.padEnd(MESSAGE_BYTES - 1, "x") + "\n"));
  }
  const out = new Uint8Array(parts.length * MESSAGE_BYTES);
  parts.forEach((p, i) => out.set(p, i * MESSAGE_BYTES));
  return out;
}

const MESSAGES = 100_000;
const requests = buildStream("REQ", MESSAGES);
const replies = buildStream("ACK", MESSAGES);

function run(direction: "downstream" | "upstream", stream: Uint8Array, onMessage?: () => void) {
  const counts = createMessageCounts();
  const analyzer = new Analyzer(direction, counts, { onMessage });
  for (let i = 0; i < stream.length; i += CHUNK) analyzer.feed(stream.subarray(i, i + CHUNK));
  analyzer.end();
  if (counts.msg_req + counts.msg_ack !== MESSAGES) throw new Error("miscounted");
}

Deno.bench({
  name: `REQ stream, ${MESSAGES} x ${MESSAGE_BYTES} B messages`,
  group: "analyzer",
  baseline: true,
  fn: () => run("downstream", requests),
});

Deno.bench({
  name: `ACK stream, ${MESSAGES} x ${MESSAGE_BYTES} B messages`,
  group: "analyzer",
  fn: () => run("upstream", replies),
});

Deno.bench({
  name: `REQ stream with an onMessage hook (latency tracking)`,
  group: "analyzer",
  fn: () => run("downstream", requests, () => {}),
});

// Replies as servers send them, `ACK <seq>\n` with no data: the line head dominates.
function buildShortReplies(messages: number): Uint8Array {
  let text = "";
  for (let seq = 1; seq <= messages; seq++) text += `ACK ${seq}\n`;
  return new TextEncoder().encode(text);
}

const shortReplies = buildShortReplies(MESSAGES);

Deno.bench({
  name: `ACK stream, ${MESSAGES} short replies (ACK <seq>, no data)`,
  group: "analyzer",
  fn: () => run("upstream", shortReplies),
});
