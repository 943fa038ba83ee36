import assert from "node:assert/strict";
import fc from "fast-check";
import { Analyzer, createMessageCounts, invalidTotal } from "../src/protocol/analyzer.ts";
import { parseServerConfig, runServer } from "../src/cmd/server.ts";
import { hashReply } from "../src/protocol/reply_hash.ts";
import { FooServer, RequestScanner } from "../src/tools/server.ts";
import {
  acks,
  connectTo,
  lineReader,
  readLine,
  readLines,
  readText,
  requests,
  spawnMain,
  startUpstream,
  TimeoutError,
  waitUntil,
  withTimeout,
  writeAll,
} from "./_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function scan(
  chunks: Uint8Array[],
  nakEvery = 0,
  reply: "seq" | "hash" = "seq",
): { out: string; invalid: number } {
  const scanner = new RequestScanner(nakEvery, reply);
  let out = "";
  for (const chunk of chunks) {
    scanner.feed(chunk);
    out += decoder.decode(scanner.out.subarray(0, scanner.outLength));
  }
  scanner.end();
  return { out, invalid: scanner.invalid };
}

function splitAt(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let last = 0;
  for (const p of points) {
    chunks.push(bytes.subarray(last, p));
    last = p;
  }
  chunks.push(bytes.subarray(last));
  return chunks;
}

// Lines that look like REQs, almost-REQs and junk, so the property explores the grammar's edges.
const lineArb = fc.oneof(
  fc.nat({ max: 10 ** 9 }).map((n) => `REQ ${n}`),
  fc.tuple(fc.nat(), fc.string({ maxLength: 20 })).map(([n, d]) =>
    `REQ\t ${n} ${d.replaceAll("\n", "")}`
  ),
  fc.nat().map((n) => `REQ ${n}\r`),
  fc.nat().map((n) => `REQ ${n}\rx`),
  fc.stringMatching(/^[0-9]{15,40}$/).map((digits) => `REQ ${digits}`),
  fc.nat().map((n) => `ACK ${n}`),
  fc.constantFrom("", "REQ", "REQ ", "REQ x", "REQ 1x", "RE", "REQ5", "req 1", "\r", "REQ -1"),
  fc.string({ maxLength: 12 }).map((s) => s.replaceAll("\n", "")),
);

Deno.test("RequestScanner gives the same replies however the stream is chunked", () => {
  fc.assert(
    fc.property(
      fc.array(lineArb, { maxLength: 30 }),
      fc.boolean(),
      fc.array(fc.nat(), { maxLength: 12 }),
      fc.nat({ max: 4 }),
      (lines, newlineAtEnd, cuts, nakEvery) => {
        const bytes = encoder.encode(lines.join("\n") + (newlineAtEnd ? "\n" : ""));
        const whole = scan([bytes], nakEvery);
        const split = scan(splitAt(bytes, cuts), nakEvery);
        assert.deepEqual(split, whole);
        const byteWise = scan(Array.from(bytes, (_, i) => bytes.subarray(i, i + 1)), nakEvery);
        assert.deepEqual(byteWise, whole);
      },
    ),
  );
});

Deno.test("RequestScanner answers exactly the REQs the proxy's analyzer counts as valid", () => {
  fc.assert(
    fc.property(fc.array(lineArb, { maxLength: 30 }), fc.boolean(), (lines, newlineAtEnd) => {
      const bytes = encoder.encode(lines.join("\n") + (newlineAtEnd ? "\n" : ""));
      const seqs: number[] = [];
      const counts = createMessageCounts();
      const analyzer = new Analyzer("downstream", counts, {
        onMessage: (_type, seq) => seqs.push(seq),
      });
      analyzer.feed(bytes);
      analyzer.end();
      const { out, invalid } = scan([bytes]);
      const replies = out === "" ? [] : out.slice(0, -1).split("\n");
      assert.equal(replies.length, counts.msg_req);
      assert.equal(invalid, invalidTotal(counts));
      replies.forEach((reply, i) => {
        const m = /^ACK (\d+)$/.exec(reply);
        assert.ok(m, `bad reply ${JSON.stringify(reply)}`);
        if (seqs[i] >= 0) assert.equal(Number(m[1]), seqs[i]);
      });
    }),
  );
});

Deno.test("RequestScanner echoes the Seq digits exactly and NAKs every Nth", () => {
  const input = "REQ 007\nREQ 2 x\r\nREQ\t\t3\r\nREQ 123456789012345678901234567890\n";
  assert.deepEqual(scan([encoder.encode(input)], 2), {
    out: "ACK 007\nNAK 2\nACK 3\nNAK 123456789012345678901234567890\n",
    invalid: 0,
  });
});

// Valid REQs with and without data, "\r\n" endings, tabs, a "\r" inside the data, UTF-8, an
// empty data part, and invalid lines between them.
const HASH_TEXT_LINES = [
  "REQ 7 Hey",
  "REQ 7 Hey\r",
  "REQ 4 Hey",
  "junk",
  "REQ 12",
  "REQ 13\r",
  "REQ x 1",
  "REQ\t\t99\tdata with  spaces\r",
  "",
  "ACK 5 not a request",
  "REQ 5 a\rb",
  "REQ 6 ",
  "REQ 8\rx",
  "REQ 0001 héllo wörld",
  "REQ 9 \r",
  "REQ5",
  "REQ 123456789012345678901234567890 long seq",
];
const HASH_TEXT = HASH_TEXT_LINES.map((line) => line + "\n").join("");

Deno.test("RequestScanner in hash mode answers every REQ with hashReply(line), however chunked", () => {
  const expected = HASH_TEXT_LINES.map(hashReply).filter((r) => r !== undefined)
    .map((r) => r + "\n").join("");
  const invalid = HASH_TEXT_LINES.filter((line) => hashReply(line) === undefined).length;
  assert.equal(expected.split("\n").length - 1, 11); // the table above has 11 valid REQs
  const bytes = encoder.encode(HASH_TEXT);
  const n = bytes.length;
  const want = { out: expected, invalid };
  assert.deepEqual(scan([bytes], 0, "hash"), want);
  // Every split into two and three pieces (empty pieces included), then byte by byte.
  for (let a = 0; a <= n; a++) {
    assert.deepEqual(scan([bytes.subarray(0, a), bytes.subarray(a)], 0, "hash"), want, `${a}`);
    for (let b = a; b <= n; b++) {
      const pieces = [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)];
      const got = scan(pieces, 0, "hash");
      if (got.out !== want.out || got.invalid !== want.invalid) {
        assert.deepEqual(got, want, `cut at ${a} and ${b}`);
      }
    }
  }
  assert.deepEqual(scan(Array.from(bytes, (_, i) => bytes.subarray(i, i + 1)), 0, "hash"), want);
});

Deno.test("RequestScanner in hash mode: same REQ, same reply; other Seq, other reply", () => {
  const { out } = scan([encoder.encode("REQ 7 Hey\nREQ 7 Hey\r\nREQ 4 Hey\n")], 3, "hash");
  const [first, second, other] = out.split("\n");
  assert.equal(first, hashReply("REQ 7 Hey"));
  assert.equal(second, first);
  assert.match(first, /^(ACK|NAK) 7 [0-9a-f]{8}$/);
  assert.match(other, /^(ACK|NAK) 4 [0-9a-f]{8}$/);
  assert.notEqual(other.slice(-8), first.slice(-8));
});

Deno.test("FooServer answers 200 REQs pipelined in one write, in order", async () => {
  await using server = await startUpstream();
  using conn = await connectTo(server.addr);
  await writeAll(conn, requests(1, 200, "payload"));
  assert.deepEqual(await readLines(conn, 200), acks(1, 200));
  assert.equal(server.requests, 200);
  assert.equal(server.connections, 1);
});

Deno.test("FooServer answers REQs split across writes and coalesced with others", async () => {
  await using server = await startUpstream();
  using conn = await connectTo(server.addr);
  const reader = lineReader(conn);
  await writeAll(conn, "REQ 1\nRE");
  assert.equal(await reader.readLine(), "ACK 1");
  for (const piece of ["Q 2", " da", "ta\r", "\nREQ 3\nREQ ", "4"]) await writeAll(conn, piece);
  assert.deepEqual(await reader.readLines(2), ["ACK 2", "ACK 3"]);
  await writeAll(conn, "\n");
  assert.equal(await reader.readLine(), "ACK 4");
  assert.equal(server.requests, 4);
  assert.equal(server.invalid, 0);
});

Deno.test("FooServer with nakEvery NAKs every Nth REQ of each connection", async () => {
  await using server = await startUpstream({ nakEvery: 3 });
  for (let round = 0; round < 2; round++) {
    using conn = await connectTo(server.addr);
    await writeAll(conn, requests(1, 7));
    assert.deepEqual(await readLines(conn, 7), [
      "ACK 1",
      "ACK 2",
      "NAK 3",
      "ACK 4",
      "ACK 5",
      "NAK 6",
      "ACK 7",
    ]);
  }
});

Deno.test("FooServer with fragment splits every reply into several writes", async () => {
  await using server = await startUpstream({ fragment: true });
  using conn = await connectTo(server.addr);
  await writeAll(conn, requests(1, 20));
  assert.deepEqual(await readLines(conn, 20), acks(1, 20));
  assert.equal(server.writes, 60);
  conn.closeWrite();
  assert.equal(await readText(conn), "");
});

Deno.test("FooServer sends every owed reply after the client half-closes, then closes", async () => {
  for (const options of [{}, { delayMs: 30 }, { delayMs: 5, fragment: true, nakEvery: 10 }]) {
    await using server = await startUpstream(options);
    using conn = await connectTo(server.addr);
    await writeAll(conn, requests(1, 100) + "REQ 101"); // the last line is cut off by the FIN
    conn.closeWrite();
    const lines = (await readText(conn)).split("\n");
    assert.equal(lines.pop(), "");
    assert.deepEqual(
      lines.map((l) => l.replace(/^NAK/, "ACK")),
      acks(1, 100),
      JSON.stringify(options),
    );
    assert.equal(server.invalid, 1);
    await waitUntil(() => server.connections === 0, "the server to drop the connection");
  }
});

Deno.test("FooServer with closeAfterFin false answers every REQ after a FIN, then never closes", async () => {
  for (const options of [{}, { delayMs: 20 }, { reply: "hash" as const, fragment: true }]) {
    await using server = await startUpstream({ ...options, closeAfterFin: false });
    using conn = await connectTo(server.addr);
    const text = requests(1, 50, "after fin");
    await writeAll(conn, text);
    conn.closeWrite();
    const expected = options.reply === "hash"
      ? text.split("\n").slice(0, -1).map((line) => hashReply(line)!)
      : acks(1, 50);
    assert.deepEqual(await readLines(conn, 50), expected, JSON.stringify(options));
    // Every reply came, and then no EOF: the read is still pending when the bound runs out.
    await assert.rejects(readLine(conn, 300), TimeoutError, JSON.stringify(options));
    assert.equal(server.connections, 1);
    assert.equal(server.requests, 50);
    // Only the server's close ends it; the pending read then sees EOF.
    await server.close();
    assert.equal(await readLine(conn), null);
  }
});

Deno.test("FooServer with silent reads REQs but never answers", async () => {
  await using server = await startUpstream({ silent: true });
  using conn = await connectTo(server.addr);
  await writeAll(conn, requests(1, 10));
  await waitUntil(() => server.received === 10, "the server to read the REQs");
  conn.closeWrite();
  await assert.rejects(readLine(conn, 200), TimeoutError);
  assert.equal(server.requests, 0);
  await server.close();
  assert.equal(await readLine(conn), null);
});

Deno.test("FooServer with delayMs holds each reply at least that long, order kept", async () => {
  await using server = await startUpstream({ delayMs: 40 });
  using conn = await connectTo(server.addr);
  const reader = lineReader(conn);
  const sent = performance.now();
  await writeAll(conn, "REQ 1\n");
  await writeAll(conn, "REQ 2\nREQ 3\n");
  assert.deepEqual(await reader.readLines(3), acks(1, 3));
  assert.ok(performance.now() - sent >= 39, "replies came before the delay");
});

Deno.test("FooServer ignores invalid lines and answers the next REQ", async () => {
  await using server = await startUpstream();
  using conn = await connectTo(server.addr);
  await writeAll(conn, "hello\nREQ 1\nACK 2\nREQ x\nREQ\n\nREQ 3 data\nREQ 4\r\n");
  assert.deepEqual(await readLines(conn, 3), ["ACK 1", "ACK 3", "ACK 4"]);
  assert.equal(server.invalid, 5);
  assert.equal(server.requests, 3);
});

Deno.test("FooServer serves many concurrent pipelining connections", async () => {
  await using server = await startUpstream();
  const conns = await Promise.all(Array.from({ length: 20 }, () => connectTo(server.addr)));
  try {
    await Promise.all(conns.map(async (conn, i) => {
      await writeAll(conn, requests(1, 100, `conn${i}`));
      assert.deepEqual(await readLines(conn, 100), acks(1, 100));
    }));
    assert.equal(server.connections, 20);
    assert.equal(server.requests, 2000);
  } finally {
    for (const conn of conns) conn.close();
  }
});

Deno.test("FooServer survives a client that resets the connection", async () => {
  await using server = await startUpstream();
  {
    using conn = await connectTo(server.addr);
    await writeAll(conn, requests(1, 5000, "x".repeat(100)));
    // Closing with replies unread makes the kernel send RST instead of FIN.
  }
  await waitUntil(() => server.connections === 0, "the server to drop the reset client");
  using conn = await connectTo(server.addr);
  await writeAll(conn, "REQ 1\n");
  assert.deepEqual(await readLines(conn, 1), ["ACK 1"]);
});

Deno.test("FooServer.close() closes open connections and resolves finished", async () => {
  const server = await startUpstream();
  using conn = await connectTo(server.addr);
  await writeAll(conn, "REQ 1\n");
  assert.deepEqual(await readLines(conn, 1), ["ACK 1"]);
  await server.close();
  await server.finished;
  assert.equal(server.connections, 0);
  assert.equal(await readText(conn), "");
  await assert.rejects(connectTo(server.addr));
});

Deno.test("FooServer closes when its signal is aborted", async () => {
  const controller = new AbortController();
  const server = new FooServer({
    listen: { hostname: "127.0.0.1", port: 0 },
    signal: controller.signal,
  });
  await server.start();
  controller.abort();
  await withTimeout(server.finished, 5000, "the server to finish");
});

Deno.test("FooServer.start() rejects when the port is taken", async () => {
  await using first = await startUpstream();
  const second = new FooServer({ listen: { hostname: "127.0.0.1", port: first.addr.port } });
  await assert.rejects(second.start(), Deno.errors.AddrInUse);
  await second.close();
});

Deno.test("parseServerConfig reads flags, Go-style flags and FOO_PROXY_* variables", () => {
  assert.deepEqual(parseServerConfig([]), {
    listen: { hostname: "0.0.0.0", port: 8001 },
    tls: null,
    nakEvery: 0,
    fragment: false,
    delayMs: 0,
    reply: "seq",
    keepOpen: false,
    silent: false,
    answerInvalid: false,
    duplicateReplies: false,
    logLevel: "info",
    logFormat: "text",
    help: false,
    version: false,
  });
  const hashConfig = parseServerConfig(["--reply", "hash", "--keep-open", "--silent"]);
  assert.deepEqual(
    [hashConfig.reply, hashConfig.keepOpen, hashConfig.silent],
    ["hash", true, true],
  );
  const fromEnv = parseServerConfig(
    ["-reply=seq"],
    (name) => ({ FOO_PROXY_REPLY: "hash", FOO_PROXY_KEEP_OPEN: "1" })[name],
  );
  assert.deepEqual([fromEnv.reply, fromEnv.keepOpen, fromEnv.silent], ["seq", true, false]);
  assert.equal(
    parseServerConfig([], (name) => name === "FOO_PROXY_REPLY" ? "hash" : undefined)
      .reply,
    "hash",
  );
  assert.throws(() => parseServerConfig(["--reply", "md5"]), {
    name: "UsageError",
    message: /"md5" for --reply: expected seq\|hash/,
  });
  assert.throws(() => parseServerConfig(["--keep-open=yes"]), { name: "UsageError" });
  const config = parseServerConfig(
    ["-listen=127.0.0.1:9", "--nak-every", "5", "--fragment"],
    (name) => ({ FOO_PROXY_DELAY_MS: "20", FOO_PROXY_NAK_EVERY: "7" })[name],
  );
  assert.deepEqual(
    [config.listen, config.nakEvery, config.fragment, config.delayMs],
    [{ hostname: "127.0.0.1", port: 9 }, 5, true, 20],
  );
  for (
    const bad of [["--nak-every", "x"], ["--delay-ms", "-1"], ["--listen", "a:b"], ["--bogus"]]
  ) {
    assert.throws(() => parseServerConfig(bad), { name: "UsageError" }, bad.join(" "));
  }
});

Deno.test("runServer prints the bound address and returns 0 when its signal aborts", async () => {
  const controller = new AbortController();
  const listening = Promise.withResolvers<string>();
  const run = runServer(["--listen", "127.0.0.1:0", "--log-level", "error"], {
    signal: controller.signal,
    stdout: (line) => listening.resolve(line),
  });
  const line = await withTimeout(listening.promise, 5000, "the listening line");
  const port = Number(/^listening on 127\.0\.0\.1:(\d+)$/.exec(line)?.[1]);
  using conn = await connectTo(port);
  await writeAll(conn, "REQ 42\n");
  assert.deepEqual(await readLines(conn, 1), ["ACK 42"]);
  controller.abort();
  assert.equal(await withTimeout(run, 5000, "runServer to return"), 0);
});

Deno.test("runServer --reply hash --keep-open answers by hash and keeps the connection open", async () => {
  const controller = new AbortController();
  const listening = Promise.withResolvers<string>();
  const run = runServer(
    ["--listen", "127.0.0.1:0", "--reply", "hash", "--keep-open", "--log-level", "error"],
    { signal: controller.signal, stdout: (line) => listening.resolve(line) },
  );
  const line = await withTimeout(listening.promise, 5000, "the listening line");
  const port = Number(/^listening on 127\.0\.0\.1:(\d+)$/.exec(line)?.[1]);
  using conn = await connectTo(port);
  await writeAll(conn, "REQ 7 Hey\nREQ 8\r\n");
  conn.closeWrite();
  assert.deepEqual(await readLines(conn, 2), [hashReply("REQ 7 Hey"), hashReply("REQ 8")]);
  await assert.rejects(readLine(conn, 300), TimeoutError);
  controller.abort();
  assert.equal(await withTimeout(run, 5000, "runServer to return"), 0);
  assert.equal(await readLine(conn), null);
});

Deno.test("foo-proxy server prints 'listening on' and exits 0 on SIGTERM", async () => {
  await using child = spawnMain(["server", "--listen", "127.0.0.1:0", "--nak-every", "2"]);
  const [, port] = await child.waitForLine(/^listening on 127\.0\.0\.1:(\d+)$/);
  using conn = await connectTo(Number(port));
  await writeAll(conn, "REQ 1\nREQ 2\n");
  assert.deepEqual(await readLines(conn, 2), ["ACK 1", "NAK 2"]);
  child.kill("SIGTERM");
  const status = await child.status();
  assert.equal(status.code, 0, child.stderr.text);
  assert.equal(await readText(conn), "");
});

Deno.test("foo-proxy server exits 2 naming a bad flag", async () => {
  await using child = spawnMain(["server", "--nak-every", "often"]);
  const status = await child.status();
  assert.equal(status.code, 2);
  assert.match(child.stderr.text, /--nak-every/);
  assert.match(child.stderr.text, / \(see 'foo-proxy server --help'\)\n$/);
  assert.equal(child.stdout.text, "");
});

Deno.test("RequestScanner with answerInvalid answers every line in order, like real Foo servers", () => {
  const scanner = new RequestScanner(0, "seq", { answerInvalid: true });
  const text =
    "REQ 1\n\nreq 2\nREQ +3\nREQ 4x\nFOO\nACK 5\nREQ 99999999999999999999 x\nREQ 6\nREQ 7";
  scanner.feed(new TextEncoder().encode(text));
  assert.equal(
    new TextDecoder().decode(scanner.out.subarray(0, scanner.outLength)),
    "ACK 1\n" + "NAK 0 ERRDECODE\n".repeat(7) + "ACK 6\n",
    "a partial last line is not answered",
  );
});

Deno.test("RequestScanner with duplicateReplies writes every reply twice", () => {
  const scanner = new RequestScanner(0, "hash", { duplicateReplies: true });
  scanner.feed(new TextEncoder().encode("REQ 1 a\nREQ 2 b\n"));
  const lines = new TextDecoder().decode(scanner.out.subarray(0, scanner.outLength)).split("\n");
  assert.deepEqual([lines[0], lines[2]], [lines[1], lines[3]]);
  assert.match(lines[0], /^(ACK|NAK) 1 /);
  assert.match(lines[2], /^(ACK|NAK) 2 /);
});
