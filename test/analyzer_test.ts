import assert from "node:assert/strict";
import fc from "fast-check";
import {
  Analyzer,
  createMessageCounts,
  type Direction,
  invalidTotal,
  type MessageCounts,
  MSG_ACK,
  MSG_NAK,
  MSG_REQ,
} from "../src/protocol/analyzer.ts";

const encoder = new TextEncoder();

function analyze(
  direction: Direction,
  chunks: (string | Uint8Array)[],
  seen: [number, number][] = [],
): MessageCounts & { valid: number } {
  const counts = createMessageCounts();
  const analyzer = new Analyzer(direction, counts, {
    onMessage: (type, seq) => seen.push([type, seq]),
  });
  let valid = 0;
  for (const chunk of chunks) {
    valid += analyzer.feed(typeof chunk === "string" ? encoder.encode(chunk) : chunk);
  }
  analyzer.end();
  return { ...counts, valid };
}

type Expect = Partial<MessageCounts>;

const TABLE: [string, Direction, string, Expect][] = [
  ["a REQ", "downstream", "REQ 1\n", { msg_req: 1 }],
  ["a REQ with data", "downstream", "REQ 7 hello world\n", { msg_req: 1 }],
  ["a tab as whitespace", "downstream", "REQ\t7\tdata\n", { msg_req: 1 }],
  ["several spaces", "downstream", "REQ   7   data\n", { msg_req: 1 }],
  ["trailing whitespace, empty data", "downstream", "REQ 7 \n", { msg_req: 1 }],
  ["telnet CRLF", "downstream", "REQ 7\r\n", { msg_req: 1 }],
  ["CRLF after data", "downstream", "REQ 7 x\r\n", { msg_req: 1 }],
  ["ACK and NAK", "upstream", "ACK 1\nNAK 2\nACK 3 ok\n", { msg_ack: 2, msg_nak: 1 }],
  ["empty line", "downstream", "\n", { invalid_type: 1 }],
  ["CR only line", "downstream", "\r\n", { invalid_type: 1 }],
  ["unknown type", "downstream", "FOO 1\n", { invalid_type: 1 }],
  ["lower-case type", "downstream", "req 1\n", { invalid_type: 1 }],
  ["type too long", "downstream", "REQX 1\n", { invalid_type: 1 }],
  ["short line", "downstream", "RE\n", { invalid_type: 1 }],
  ["leading space", "downstream", " REQ 1\n", { invalid_type: 1 }],
  ["missing seq", "downstream", "REQ\n", { invalid_seq: 1 }],
  ["missing seq after space", "downstream", "REQ \n", { invalid_seq: 1 }],
  ["non-numeric seq", "downstream", "REQ abc\n", { invalid_seq: 1 }],
  ["seq with letters", "downstream", "REQ 12a\n", { invalid_seq: 1 }],
  ["negative seq", "downstream", "REQ -1\n", { invalid_seq: 1 }],
  ["CR inside seq", "downstream", "REQ 1\r2\n", { invalid_seq: 1 }],
  ["ACK from the client", "downstream", "ACK 1\n", { invalid_direction: 1 }],
  ["NAK from the client", "downstream", "NAK 1\n", { invalid_direction: 1 }],
  ["REQ from the server", "upstream", "REQ 1\n", { invalid_direction: 1 }],
  ["truncated at end", "downstream", "REQ 1\nREQ 2", { msg_req: 1, invalid_truncated: 1 }],
  ["NUL bytes", "downstream", "REQ 1 \0\0\nREQ\0 2\n", { msg_req: 1, invalid_type: 1 }],
  [
    "a 10 000-digit seq",
    "downstream",
    `REQ ${"9".repeat(10_000)} x\n`,
    { msg_req: 1 },
  ],
  [
    "mixed",
    "downstream",
    "REQ 1\nbogus\nREQ 2 d\nACK 3\n\nREQ 4\r\n",
    { msg_req: 3, invalid_type: 2, invalid_direction: 1 },
  ],
];

for (const [name, direction, input, expect] of TABLE) {
  Deno.test(`Analyzer classifies ${name} the same under every two-way and byte-wise split`, () => {
    const want = { ...createMessageCounts(), ...expect };
    const whole = analyze(direction, [input]);
    const { valid: _, ...counts } = whole;
    assert.deepEqual(counts, want);
    assert.equal(whole.valid, want.msg_req + want.msg_ack + want.msg_nak);
    const bytes = encoder.encode(input);
    if (bytes.length < 200) {
      for (let cut = 0; cut <= bytes.length; cut++) {
        const { valid: _v, ...split } = analyze(direction, [
          bytes.subarray(0, cut),
          bytes.subarray(cut),
        ]);
        assert.deepEqual(split, want, `split at ${cut}`);
      }
    }
    const { valid: _b, ...bytewise } = analyze(direction, [...bytes].map((b) => Uint8Array.of(b)));
    assert.deepEqual(bytewise, want);
  });
}

Deno.test("Analyzer reports type and seq of each valid message to onMessage", () => {
  const seen: [number, number][] = [];
  analyze("upstream", ["ACK 12\nNA", "K 13 x\nACK 1", "4\r\n", `ACK ${"1".repeat(30)}\n`], seen);
  assert.deepEqual(seen, [[MSG_ACK, 12], [MSG_NAK, 13], [MSG_ACK, 14], [MSG_ACK, -1]]);
  const reqs: [number, number][] = [];
  analyze("downstream", ["REQ 9007199254740991\n"], reqs);
  assert.deepEqual(reqs, [[MSG_REQ, 9007199254740991]]);
});

Deno.test("Analyzer keeps O(1) state across a 100 MB line with no newline", () => {
  const counts = createMessageCounts();
  const analyzer = new Analyzer("downstream", counts);
  const chunk = new Uint8Array(1 << 20).fill(0x41);
  analyzer.feed(encoder.encode("REQ 1 "));
  for (let i = 0; i < 100; i++) assert.equal(analyzer.feed(chunk), 0);
  assert.equal(analyzer.midLine, true);
  assert.equal(analyzer.feed(encoder.encode("\nREQ 2\n")), 2);
  assert.equal(counts.msg_req, 2);
});

// A generator of plausible and hostile lines: valid messages, near-misses and random bytes.
const lineArb = fc.oneof(
  fc.tuple(fc.constantFrom("REQ", "ACK", "NAK"), fc.nat(), fc.string()).map(([t, s, d]) =>
    `${t} ${s}${d.length > 0 ? " " + d.replaceAll("\n", "") : ""}\n`
  ),
  fc.tuple(fc.constantFrom("REQ", "ACK", "NAK", "REQ ", "RE", "", "XYZ"), fc.string()).map((
    [t, s],
  ) => `${t}${s.replaceAll("\n", "")}\n`),
  fc.string().map((s) => s + "\n"),
  fc.string(),
);

const streamArb = fc.array(lineArb, { maxLength: 40 }).map((lines) =>
  encoder.encode(lines.join(""))
);
const bytesArb = fc.uint8Array({ maxLength: 600 });

function splitAt(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const parts: Uint8Array[] = [];
  let from = 0;
  for (const p of points) {
    parts.push(bytes.subarray(from, p));
    from = p;
  }
  parts.push(bytes.subarray(from));
  return parts;
}

for (const direction of ["downstream", "upstream"] as const) {
  Deno.test(`Analyzer (${direction}) counts the same for any chunking of a stream`, () => {
    fc.assert(
      fc.property(fc.oneof(streamArb, bytesArb), fc.array(fc.nat(), { maxLength: 20 }), (
        bytes,
        cuts,
      ) => {
        const whole = analyze(direction, [bytes]);
        const split = analyze(direction, splitAt(bytes, cuts));
        assert.deepEqual(split, whole);
      }),
      { numRuns: 500 },
    );
  });

  Deno.test(`Analyzer (${direction}) never throws on random bytes and counts every line once`, () => {
    fc.assert(
      fc.property(bytesArb, (bytes) => {
        const counts = analyze(direction, [bytes]);
        const newlines = bytes.filter((b) => b === 10).length;
        const endsOpen = bytes.length > 0 && bytes[bytes.length - 1] !== 10 ? 1 : 0;
        const lines = counts.msg_req + counts.msg_ack + counts.msg_nak + invalidTotal(counts);
        assert.equal(lines, newlines + endsOpen);
        if (direction === "downstream") assert.equal(counts.msg_ack + counts.msg_nak, 0);
        else assert.equal(counts.msg_req, 0);
      }),
      { numRuns: 500 },
    );
  });
}
