import assert from "node:assert/strict";
import fc from "fast-check";
import { Analyzer, createMessageCounts } from "../src/protocol/analyzer.ts";
import { ReplyRewriter, type SeqMap } from "../src/protocol/reply_rewriter.ts";
import { RequestLog } from "../src/protocol/request_log.ts";
import { RequestScanner } from "../src/tools/server.ts";
import { bytes, chunked, latin1 } from "./_util.ts";

/** A map from proxy Seqs to client Seq strings, recording what was answered. */
class FakeMap implements SeqMap {
  answered: number[] = [];
  constructor(readonly clientSeqs: Map<number, string>) {}
  findProxySeq(proxySeq: number): number {
    return this.clientSeqs.has(proxySeq) && !this.answered.includes(proxySeq) ? proxySeq : -1;
  }
  clientSeqLength(entry: number): number {
    return this.clientSeqs.get(entry)!.length;
  }
  copyClientSeq(entry: number, dst: Uint8Array, at: number): number {
    const seq = bytes(this.clientSeqs.get(entry)!);
    dst.set(seq, at);
    return at + seq.length;
  }
  answerEntry(entry: number): void {
    this.answered.push(entry);
  }
}

const VALID_REPLY = /^(ACK|NAK)([ \t]+)([0-9]+)(\n|\r\n|[ \t][^\n]*\n)$/;

const replyLineArb = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.tuple(
      fc.constantFrom("ACK", "NAK"),
      fc.constantFrom(" ", "\t", "  "),
      fc.integer({ min: 0, max: 40 }),
      fc.constantFrom("", "\r", " ok", "\tdata with spaces", " x\r"),
    ).map(([type, ws, seq, tail]) => `${type}${ws}${seq}${tail}\n`),
  },
  {
    weight: 2,
    arbitrary: fc.string({
      unit: fc.constantFrom("A", "C", "K", "N", " ", "1", "2", "\r", "\t", "\xff", "\0"),
      maxLength: 9,
    }).map((s) => `${s}\n`),
  },
  { weight: 1, arbitrary: fc.constantFrom("REQ 1\n", "ACK\n", "ACK x\n", "ACK 1x\n", "\n") },
);

Deno.test("ReplyRewriter maps known proxy Seqs back, drops replies to unknown ones, passes other lines and NAK 0, in any chunking", () => {
  fc.assert(
    fc.property(
      fc.array(replyLineArb, { maxLength: 30 }),
      fc.dictionary(
        fc.integer({ min: 0, max: 40 }).map(String),
        fc.stringMatching(/^[0-9]{1,12}$/),
      ),
      fc.array(fc.nat(), { maxLength: 15 }),
      (lines, dict, cuts) => {
        const clientSeqs = new Map(Object.entries(dict).map(([k, v]) => [Number(k), v]));
        const map = new FakeMap(clientSeqs);
        const rewriter = new ReplyRewriter(map);
        const text = lines.join("");
        let out = "";
        for (const chunk of chunked(text, cuts)) {
          const n = rewriter.feed(chunk);
          out += latin1(rewriter.out.subarray(0, n));
        }
        assert.equal(rewriter.midLine, false);
        const used = new Set<number>();
        let dropped = 0;
        const expected = lines.map((line) => {
          const m = VALID_REPLY.exec(line);
          if (!m) return line;
          const seq = Number(m[3]);
          // No renumbered REQ has Seq 0: NAK 0 answers a line the server could not decode.
          if (m[1] === "NAK" && seq === 0) return line;
          if (!clientSeqs.has(seq) || used.has(seq)) {
            dropped++; // it would reach the client as the answer to a REQ it did not send
            return "";
          }
          used.add(seq);
          return `${m[1]}${m[2]}${clientSeqs.get(seq)}${m[4]}`;
        }).join("");
        assert.equal(out, expected);
        assert.deepEqual(map.answered, [...used]);
        assert.equal(rewriter.dropped, dropped);
      },
    ),
    { numRuns: 1000 },
  );
});

Deno.test("ReplyRewriter passes a head longer than maxHead unchanged", () => {
  const rewriter = new ReplyRewriter(new FakeMap(new Map([[1, "77"]])), { maxHead: 8 });
  const line = `ACK ${"0".repeat(20)}1\nACK 1\n`;
  assert.equal(
    latin1(rewriter.out.subarray(0, rewriter.feed(bytes(line)))),
    `ACK ${"0".repeat(20)}1\nACK 77\n`,
  );
});

/** Our Foo server's reply core, standing in for one upstream connection. */
function upstream(nakEvery: number) {
  const scanner = new RequestScanner(nakEvery);
  return (data: Uint8Array) => {
    scanner.feed(data);
    return latin1(scanner.out.subarray(0, scanner.outLength));
  };
}

Deno.test("log + rewriter: every REQ gets exactly one reply in the client's numbering across failovers", () => {
  const reqArb = fc.tuple(
    fc.stringMatching(/^[0-9]{1,6}$/),
    fc.constantFrom("", " data", "\tx y", "\r"),
  ).map(([seq, tail]) => ({ seq, line: `REQ ${seq}${tail}\n` }));
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof({ weight: 5, arbitrary: reqArb }, {
          weight: 1,
          arbitrary: fc.constantFrom("junk\n", "ACK 3\n", "REQ x\n").map((line) => ({
            seq: "",
            line,
          })),
        }),
        { minLength: 1, maxLength: 40 },
      ),
      fc.array(fc.nat(), { maxLength: 12 }),
      fc.array(fc.tuple(fc.nat(), fc.nat()), { minLength: 1, maxLength: 3 }),
      (reqs, cuts, failures) => {
        const text = reqs.map((r) => r.line).join("");
        const wanted = reqs.filter((r) => r.seq !== "").map((r) => r.seq);
        const log = new RequestLog();
        const rewriter = new ReplyRewriter(log);
        const counts = createMessageCounts();
        const analyzer = new Analyzer("upstream", counts, {
          onMessage: (_type, seq) => {
            if (!log.renumbering) log.answerSeq(seq);
          },
        });
        let server = upstream(3);
        let received = ""; // what the client got
        const deliver = (replies: string, lines: number) => {
          // Only whole lines reach the client (the bridge holds a partial line back).
          const kept = replies.split(/(?<=\n)/).slice(0, lines).join("");
          let out = kept;
          if (log.renumbering) out = latin1(rewriter.out.subarray(0, rewriter.feed(bytes(kept))));
          analyzer.feed(bytes(out));
          received += out;
        };
        const chunks = chunked(text, cuts);
        const failAt = new Map(failures.map(([c, lines]) => [c % chunks.length, lines]));
        chunks.forEach((chunk, k) => {
          const n = log.feed(chunk);
          const sent = log.renumbering ? log.out.subarray(0, n) : chunk;
          const replies = server(sent);
          if (!failAt.has(k)) {
            deliver(replies, Infinity);
            return;
          }
          // The upstream dies after only some of its replies got through.
          deliver(replies, failAt.get(k)! % 4);
          server = upstream(3);
          rewriter.reset();
          const replay = log.replay();
          assert.ok(replay);
          deliver(server(replay.bytes), Infinity);
        });
        assert.equal(log.outstanding, 0);
        assert.equal(log.retainedBytes, 0);
        const got = received.split("\n").slice(0, -1);
        assert.deepEqual(got.map((l) => l.split(" ")[1]), wanted);
        assert.equal(counts.msg_ack + counts.msg_nak, wanted.length);
      },
    ),
    { numRuns: 500 },
  );
});
