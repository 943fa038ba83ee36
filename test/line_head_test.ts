import assert from "node:assert/strict";
import fc from "fast-check";
import { Analyzer, createMessageCounts, type MessageCounts } from "../src/protocol/analyzer.ts";
import {
  hasInnerBreak,
  INVALID_DIRECTION,
  INVALID_SEQ,
  INVALID_TYPE,
  type LineHead,
  readLineHead,
} from "../src/protocol/line_head.ts";

const KIND: Record<number, keyof MessageCounts> = {
  1: "msg_req",
  2: "msg_ack",
  3: "msg_nak",
  [INVALID_TYPE]: "invalid_type",
  [INVALID_SEQ]: "invalid_seq",
  [INVALID_DIRECTION]: "invalid_direction",
};

/** What the streaming analyzer says of one line (without its newline). */
function analyzed(line: Uint8Array, fromClient: boolean): { kind: string; seq?: number } {
  const counts = createMessageCounts();
  let seq: number | undefined;
  const analyzer = new Analyzer(fromClient ? "downstream" : "upstream", counts, {
    onMessage: (_type, s) => seq = s,
  });
  const withNl = new Uint8Array(line.length + 1);
  withNl.set(line);
  withNl[line.length] = 10;
  analyzer.feed(withNl);
  const kind = (Object.keys(counts) as (keyof MessageCounts)[]).find((k) => counts[k] === 1)!;
  return seq === undefined ? { kind } : { kind, seq };
}

function headed(line: Uint8Array, fromClient: boolean): { kind: string; seq?: number } {
  const out: LineHead = { type: 0, seq: 0, digits: 0 };
  // Embedded in a bigger buffer, so offsets matter.
  const buf = new Uint8Array(line.length + 6).fill(65);
  buf.set(line, 3);
  const valid = readLineHead(buf, 3, 3 + line.length, fromClient, out);
  assert.equal(valid, out.type > 0);
  return valid ? { kind: KIND[out.type], seq: out.seq } : { kind: KIND[out.type] };
}

const enc = (s: string) => new TextEncoder().encode(s);

Deno.test("readLineHead classifies lines as the analyzer does (table)", () => {
  const lines = [
    "REQ 1",
    "REQ 7 Hey",
    "REQ\t7\tHey",
    "REQ  12",
    "REQ 5\r",
    "REQ 5 data\r",
    "REQ 5\rx",
    "REQ",
    "REQ\r",
    "REQ ",
    "REQ x",
    "REQ 1x",
    "REQ +1",
    "req 1",
    "",
    "\r",
    "RE",
    "REQX 1",
    "ACK 1",
    "NAK 2 oops",
    "ACK",
    "ACKX",
    "REQ 99999999999999999999 big",
    "REQ 9007199254740993",
    "REQ 9007199254740991",
  ];
  for (const fromClient of [true, false]) {
    for (const line of lines) {
      assert.deepEqual(
        headed(enc(line), fromClient),
        analyzed(enc(line), fromClient),
        `${JSON.stringify(line)} from ${fromClient ? "client" : "server"}`,
      );
    }
  }
});

Deno.test("readLineHead agrees with the analyzer on any line (property)", () => {
  const alphabet = ["R", "E", "Q", "A", "C", "K", "N", " ", "\t", "\r", "0", "1", "9", "x", "-"];
  const line = fc.oneof(
    fc.array(fc.constantFrom(...alphabet), { maxLength: 12 }).map((a) => a.join("")),
    fc.tuple(
      fc.constantFrom("REQ", "ACK", "NAK", "REQ ", "ACK\t"),
      fc.array(fc.constantFrom(...alphabet), { maxLength: 10 }).map((a) => a.join("")),
    ).map(([a, b]) => a + b),
    fc.tuple(fc.constantFrom("REQ ", "ACK ", "NAK "), fc.bigInt({ min: 0n, max: 10n ** 20n }))
      .map(([a, n]) => a + n.toString()),
  );
  fc.assert(
    fc.property(line, fc.boolean(), (text, fromClient) => {
      const bytes = enc(text);
      assert.deepEqual(headed(bytes, fromClient), analyzed(bytes, fromClient));
    }),
    { numRuns: 5000 },
  );
});

Deno.test("readLineHead counts a valid line's Seq digits, leading zeros included", () => {
  const out: LineHead = { type: 0, seq: 0, digits: 0 };
  for (
    const [line, digits] of [
      ["REQ 7 Hey", 1],
      ["REQ 007\r", 3],
      ["ACK 123456789012345678", 18],
      [`REQ ${"0".repeat(18)}1 x`, 19],
    ] as const
  ) {
    const bytes = enc(line);
    assert.ok(readLineHead(bytes, 0, bytes.length, line.startsWith("REQ"), out), line);
    assert.equal(out.digits, digits, line);
  }
});

Deno.test("hasInnerBreak finds what a line-splitting server would split at, and nothing else", () => {
  const cases: [string, boolean][] = [
    ["REQ 1 plain data", false],
    ["REQ 1 tab\tdata", false],
    ["REQ 1 data\r", false],
    ["REQ 1 é € 😀 data", false],
    ["REQ 1 a\rb", true],
    ["REQ 1 a\r\r", true],
    ["REQ 1 a\vb", true],
    ["REQ 1 a\fb", true],
    ["REQ 1 a\0b", true],
    ["REQ 1 a\x1eb", true],
    ["REQ 1 a\u0085b", true],
    ["REQ 1 a\u2028b", true],
    ["REQ 1 a\u2029b", true],
    ["REQ 1 \u2027 \u202a", false],
  ];
  for (const [line, want] of cases) {
    const bytes = new TextEncoder().encode(`xx${line}yy`);
    assert.equal(hasInnerBreak(bytes, 2, bytes.length - 2), want, JSON.stringify(line));
  }
});
