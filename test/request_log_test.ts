import assert from "node:assert/strict";
import fc from "fast-check";
import { Analyzer, createMessageCounts } from "../src/protocol/analyzer.ts";
import { ByteDeque } from "../src/protocol/byte_deque.ts";
import { RequestLog } from "../src/protocol/request_log.ts";
import { RequestScanner } from "../src/tools/server.ts";
import { bytes, chunked, latin1 } from "./_util.ts";

const encoder = new TextEncoder();

// The reference grammar of a valid REQ line (the analyzer's, checked against it below).
const VALID_REQ = /^REQ[ \t]+([0-9]+)(\n|\r\n|[ \t][^\n]*\n)$/;
// A line prefix known to be a REQ whose data has begun (the open entry).
const OPEN_REQ = /^REQ[ \t]+([0-9]+)([ \t][^\n]*)$/;
// A line prefix that may still become a valid REQ or not.
const UNDECIDED = /^(R|RE|REQ|REQ[ \t]+|REQ[ \t]+[0-9]+|REQ[ \t]+[0-9]+\r)$/;

function seqValue(digits: string): number {
  const value = BigInt(digits);
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(value);
}

/** Splits text into lines that keep their "\n"; a last line without one is included as is. */
function splitLines(text: string): string[] {
  return text.match(/[^\n]*\n|[^\n]+$/g) ?? [];
}

const seqArb = fc.oneof(
  fc.integer({ min: 0, max: 99_999 }).map(String),
  fc.constantFrom("007", "0", "9007199254740993", "18446744073709551616"),
);
const dataArb = fc.string({
  unit: fc.constantFrom("a", "b", " ", "\t", "\r", "\0", "\xff"),
  maxLength: 12,
});
const wsArb = fc.constantFrom(" ", "\t", "  ", " \t");
const validLineArb = fc.tuple(
  wsArb,
  seqArb,
  fc.oneof(
    fc.constant(""),
    fc.constant("\r"),
    dataArb.map((d) => ` ${d}`),
    dataArb.map((d) => `\t${d}`),
  ),
).map(([ws, seq, tail]) => `REQ${ws}${seq}${tail}\n`);
const invalidLineArb = fc.constantFrom(
  "REQ\n",
  "REQ \n",
  "REQ x\n",
  "REQ 1x\n",
  "REQ 1\r2\n",
  "REQ 1\r\r\n",
  "ACK 1\n",
  "NAK 2 x\n",
  "\n",
  "\r\n",
  "RE\n",
  "REQX 1\n",
  " REQ 1\n",
  "req 1\n",
  "REQ -1\n",
);
// Lines over a small alphabet: mostly near-misses of the grammar.
const noiseLineArb = fc.string({
  unit: fc.constantFrom("R", "E", "Q", " ", "\t", "1", "0", "\r", "x"),
  maxLength: 10,
}).map((s) => `${s}\n`);
const lineArb = fc.oneof(
  { arbitrary: validLineArb, weight: 4 },
  { arbitrary: invalidLineArb, weight: 1 },
  { arbitrary: noiseLineArb, weight: 2 },
);
const streamArb = fc.tuple(
  fc.array(lineArb, { maxLength: 25 }),
  fc.oneof(
    fc.constant(""),
    lineArb.map((l) => l.slice(0, -1)),
    validLineArb.map((l) => l.slice(0, 5)),
  ),
).map(([lines, tail]) => lines.join("") + tail);
const cutsArb = fc.array(fc.nat(), { maxLength: 12 });

Deno.test("the reference REQ grammar agrees with the analyzer on every generated line", () => {
  fc.assert(
    fc.property(lineArb, (line) => {
      const counts = createMessageCounts();
      const seqs: number[] = [];
      new Analyzer("downstream", counts, { onMessage: (_t, seq) => seqs.push(seq) }).feed(
        bytes(line),
      );
      const m = VALID_REQ.exec(line);
      assert.equal(counts.msg_req, m ? 1 : 0, JSON.stringify(line));
      if (m) assert.deepEqual(seqs, [seqValue(m[1])]);
    }),
    { numRuns: 2000 },
  );
});

/**
 * Marks entry `j` answered, and (servers answering in order) every unanswered entry before it
 * whose Seq is above 2^53: its answer could not carry its Seq.
 */
function answerInOrder(entries: { seq: string }[], answered: boolean[], j: number): void {
  for (let k = 0; k < j; k++) if (seqValue(entries[k].seq) < 0) answered[k] = true;
  answered[j] = true;
}

/** What the reference expects the log to hold after `text`: complete REQs and an open one. */
function reference(text: string) {
  const complete: { seq: string; rest: string }[] = [];
  let open: { seq: string; rest: string } | undefined;
  for (const line of splitLines(text)) {
    const m = VALID_REQ.exec(line);
    if (m) complete.push({ seq: m[1], rest: m[2] });
    else if (!line.endsWith("\n")) {
      const o = OPEN_REQ.exec(line);
      if (o) open = { seq: o[1], rest: o[2] };
    }
  }
  return { complete, open };
}

Deno.test("RequestLog keeps exactly the analyzer's REQs, forwarding untouched, in any chunking", () => {
  fc.assert(
    fc.property(streamArb, cutsArb, (text, cuts) => {
      const log = new RequestLog();
      const counts = createMessageCounts();
      const analyzer = new Analyzer("downstream", counts);
      for (const chunk of chunked(text, cuts)) {
        analyzer.feed(chunk);
        assert.equal(log.feed(chunk), 0, "before a failover nothing is rewritten");
        assert.equal(log.outLength, 0);
      }
      const { complete, open } = reference(text);
      assert.equal(log.outstanding, counts.msg_req);
      assert.equal(log.outstanding, complete.length);
      const replay = log.replay();
      assert.ok(replay);
      const entries = open ? [...complete, open] : complete;
      assert.equal(replay.requests, entries.length);
      assert.equal(latin1(replay.bytes), entries.map((e, i) => `REQ ${i + 1}${e.rest}`).join(""));
    }),
    { numRuns: 500 },
  );
});

Deno.test("RequestLog forgets answered REQs (any order) and frees their bytes", () => {
  fc.assert(
    fc.property(
      fc.array(validLineArb, { minLength: 1, maxLength: 20 }),
      cutsArb,
      fc.array(fc.nat(), { maxLength: 30 }),
      (lines, cuts, picks) => {
        const text = lines.join("");
        const log = new RequestLog();
        for (const chunk of chunked(text, cuts)) log.feed(chunk);
        const { complete } = reference(text);
        const answered = complete.map(() => false);
        for (const pick of picks) {
          // answerSeq answers the first unanswered REQ with that Seq value: model the same.
          const value = seqValue(complete[pick % complete.length].seq);
          const j = complete.findIndex((e, k) => !answered[k] && seqValue(e.seq) === value);
          assert.equal(log.answerSeq(value), j >= 0);
          if (j >= 0) answerInOrder(complete, answered, j);
        }
        const left = complete.filter((_e, k) => !answered[k]);
        assert.equal(log.outstanding, left.length);
        const firstLeft = answered.indexOf(false);
        const keptFrom = firstLeft < 0 ? text.length : splitLines(text).slice(0, firstLeft)
          .join("").length;
        assert.equal(log.retainedBytes, text.length - keptFrom, "only from the oldest unanswered");
        for (const e of left) log.answerSeq(seqValue(e.seq));
        assert.equal(log.outstanding, 0);
        assert.equal(log.retainedBytes, 0);
      },
    ),
    { numRuns: 300 },
  );
});

/**
 * The reference output after a failover at byte `at`: the replay of what was unanswered, then
 * the rest of the stream with each REQ renumbered, in order.
 */
function referenceAfterFailover(text: string, at: number, answeredSeqs: number[]) {
  const before = reference(text.slice(0, at));
  // A reply may even answer the open REQ before its newline (the log accepts that).
  const entries = before.open ? [...before.complete, before.open] : before.complete;
  const answered = entries.map(() => false);
  for (const value of answeredSeqs) {
    const j = entries.findIndex((e, k) => !answered[k] && seqValue(e.seq) === value);
    if (j >= 0) answerInOrder(entries, answered, j);
  }
  let proxy = 0;
  let replay = "";
  let requests = 0;
  before.complete.forEach((e, k) => {
    if (answered[k]) return;
    replay += `REQ ${++proxy}${e.rest}`;
    requests++;
  });
  const openAnswered = before.open !== undefined && answered[entries.length - 1];
  // The line cut by the failover: open REQ, undecided head, or a line that is not a REQ.
  const lineStart = text.lastIndexOf("\n", at - 1) + 1;
  const pre = text.slice(lineStart, at);
  let rest = text.slice(at);
  let after = "";
  if (pre !== "") {
    const nl = rest.indexOf("\n");
    const lineEnd = nl < 0 ? rest.length : nl + 1;
    if (OPEN_REQ.test(pre)) {
      if (!openAnswered) {
        replay += `REQ ${++proxy}${OPEN_REQ.exec(pre)![2]}`;
        requests++;
        after += rest.slice(0, lineEnd);
      }
      rest = rest.slice(lineEnd);
    } else if (UNDECIDED.test(pre)) {
      rest = pre + rest; // decided after the failover: handled like any later line
    } else {
      rest = rest.slice(lineEnd); // the start went to the dead upstream: the rest is dropped
    }
  }
  for (const line of splitLines(rest)) {
    const m = VALID_REQ.exec(line);
    if (m) after += `REQ ${++proxy}${m[2]}`;
    else if (line.endsWith("\n")) after += line;
    else if (OPEN_REQ.test(line)) after += `REQ ${++proxy}${OPEN_REQ.exec(line)![2]}`;
    else if (!UNDECIDED.test(line)) after += line;
  }
  return { replay, requests, after };
}

Deno.test("RequestLog after a failover: replay, then every later REQ renumbered, in any chunking", () => {
  fc.assert(
    fc.property(
      streamArb,
      fc.nat(),
      cutsArb,
      cutsArb,
      fc.array(seqArb.map(seqValue), { maxLength: 8 }),
      (text, atSeed, cutsBefore, cutsAfter, answers) => {
        const at = atSeed % (text.length + 1);
        const log = new RequestLog();
        for (const chunk of chunked(text.slice(0, at), cutsBefore)) log.feed(chunk);
        for (const value of answers) log.answerSeq(value);
        const expected = referenceAfterFailover(text, at, answers);
        const replay = log.replay();
        assert.ok(replay);
        assert.equal(latin1(replay.bytes), expected.replay);
        assert.equal(replay.requests, expected.requests);
        assert.equal(log.renumbering, true);
        let after = "";
        for (const chunk of chunked(text.slice(at), cutsAfter)) {
          const n = log.feed(chunk);
          assert.equal(n, log.outLength);
          after += latin1(log.out.subarray(0, n));
        }
        assert.equal(after, expected.after);
      },
    ),
    { numRuns: 1000 },
  );
});

Deno.test("RequestLog replays again from Seq 1 on a second failover", () => {
  const log = new RequestLog();
  log.feed(encoder.encode("REQ 5 a\nREQ 6 b\n"));
  assert.equal(latin1(log.replay()!.bytes), "REQ 1 a\nREQ 2 b\n");
  assert.equal(latin1(log.out.subarray(0, log.feed(encoder.encode("REQ 7 c\n")))), "REQ 3 c\n");
  const first = log.findProxySeq(1);
  assert.equal(log.clientSeqLength(first), 1);
  log.answerEntry(first);
  assert.equal(latin1(log.replay()!.bytes), "REQ 1 b\nREQ 2 c\n");
  assert.equal(log.findProxySeq(3), -1);
  const out = new Uint8Array(4);
  assert.equal(log.copyClientSeq(log.findProxySeq(2), out, 1), 2);
  assert.equal(out[1], "7".charCodeAt(0));
});

Deno.test("RequestLog keeps a line longer than retainLimit head-only: not replayable until answered", () => {
  const log = new RequestLog({ retainLimit: 64 });
  log.feed(encoder.encode("REQ 1 short\nREQ 2 "));
  assert.equal(log.replayable, true);
  log.feed(encoder.encode("x".repeat(100)));
  assert.equal(log.replayable, false, "the open REQ outgrew the limit");
  assert.ok(log.retainedBytes <= 64);
  log.feed(encoder.encode("y".repeat(1000) + "\nREQ 3\n"));
  assert.equal(log.outstanding, 3);
  assert.equal(log.replay(), null);
  log.answerSeq(2);
  assert.equal(log.replayable, true, "the head-only REQ was answered");
  assert.equal(latin1(log.replay()!.bytes), "REQ 1 short\nREQ 2\n");
});

Deno.test("RequestLog stops tracking at a head longer than maxHead, and fails once renumbering", () => {
  const passthrough = new RequestLog({ maxHead: 32 });
  passthrough.feed(encoder.encode("REQ 1\nREQ " + "9".repeat(40) + "\nREQ 2\n"));
  assert.equal(passthrough.disabled, true);
  assert.equal(passthrough.replayable, false);
  assert.equal(passthrough.replay(), null);
  const renumbering = new RequestLog({ maxHead: 32 });
  renumbering.replay();
  assert.equal(renumbering.feed(encoder.encode("REQ 1\n")), "REQ 1\n".length);
  assert.equal(renumbering.feed(encoder.encode("REQ" + " ".repeat(40) + "1\n")), -1);
});

Deno.test("RequestLog.end() drops a partial last line that can never be answered", () => {
  const log = new RequestLog();
  log.feed(encoder.encode("REQ 1\nREQ 2 dat"));
  assert.equal(log.outstanding, 1);
  log.end();
  assert.equal(latin1(log.replay()!.bytes), "REQ 1\n");
  log.answerEntry(log.findProxySeq(1));
  assert.equal(log.retainedBytes, 0);
});

Deno.test("RequestLog holds nothing once an in-order stream is answered, round after round", () => {
  const log = new RequestLog();
  const chunk = encoder.encode("REQ 123 some data\n".repeat(50));
  for (let round = 0; round < 3; round++) {
    log.feed(chunk);
    for (let k = 0; k < 50; k++) assert.ok(log.answerSeq(123));
  }
  assert.equal(log.retainedBytes, 0);
  assert.equal(log.outstanding, 0);
});

Deno.test("ByteDeque appends, discards and truncates by absolute position", () => {
  const deque = new ByteDeque(16);
  const data = encoder.encode("0123456789abcdefghijklmnopqrstuvwxyz");
  deque.append(data, 0, 10);
  deque.discardBefore(4);
  deque.append(data, 10, 36);
  assert.equal(deque.start, 4);
  assert.equal(deque.end, 36);
  assert.equal(String.fromCharCode(deque.at(4), deque.at(35)), "4z");
  deque.truncate(30);
  const out = new Uint8Array(26);
  assert.equal(deque.copyTo(4, 30, out, 0), 26);
  assert.equal(new TextDecoder().decode(out), "456789abcdefghijklmnopqrst");
  deque.discardBefore(100);
  assert.equal(deque.length, 0);
  assert.equal(deque.start, 30);
  deque.appendDecimal(9007199254740991);
  assert.equal(deque.length, 16);
  assert.equal(deque.end, 46);
});

/** Replies a hash-mode Foo server gives to everything in `chunks`, as text lines. */
function serverReplies(scanner: RequestScanner, chunk: Uint8Array): string[] {
  if (chunk.length === 0) return [];
  scanner.feed(chunk);
  const text = latin1(scanner.out.subarray(0, scanner.outLength));
  return text === "" ? [] : text.slice(0, -1).split("\n");
}

Deno.test("verbatim replay: for any chunking and failover point, one reply per REQ, equal to the direct one", () => {
  fc.assert(
    fc.property(
      streamArb,
      cutsArb,
      fc.nat(),
      fc.nat(),
      (text, cuts, failAt, answeredPick) => {
        const chunks = chunked(text, cuts);
        const direct = serverReplies(new RequestScanner(0, "hash"), bytes(text));
        const at = failAt % (chunks.length + 1);
        const log = new RequestLog();
        // The first upstream gets the stream as sent up to the failover.
        const first = new RequestScanner(0, "hash");
        const produced: string[] = [];
        for (const chunk of chunks.slice(0, at)) {
          assert.equal(log.feed(chunk), 0);
          produced.push(...serverReplies(first, chunk));
        }
        // It dies having relayed only some of its replies (whole lines, in order).
        const relayed = produced.slice(0, answeredPick % (produced.length + 1));
        for (const line of relayed) {
          const seq = Number(line.split(" ")[1]); // the analyzer reports Seqs above 2^53 as -1
          assert.ok(log.answerSeq(Number.isSafeInteger(seq) ? seq : -1));
        }
        const replay = log.replayVerbatim();
        assert.ok(replay, "every REQ here fits the retain limit");
        // The next upstream gets the replay, then the rest of the stream as the client sends it.
        const second = new RequestScanner(0, "hash");
        const after = serverReplies(second, replay.bytes);
        let mute = replay.muteRest;
        for (const chunk of chunks.slice(at)) {
          assert.equal(log.feed(chunk), 0, "verbatim: the client's bytes go on unchanged");
          let send = chunk;
          if (mute) {
            const nl = chunk.indexOf(10);
            send = nl < 0 ? new Uint8Array(0) : chunk.subarray(nl + 1);
            mute = nl < 0;
          }
          after.push(...serverReplies(second, send));
        }
        assert.deepEqual([...relayed, ...after], direct, JSON.stringify({ text, at }));
      },
    ),
    { numRuns: 3000 },
  );
});
