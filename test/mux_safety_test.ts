/**
 * `--mux N` under attack (issue 19): no client's bytes may shift another client's replies. Every
 * test runs real sockets through a {@linkcode Proxy} sharing N upstream connections, with clients
 * that validate every line they get against `hashReply` of their own REQs (the server computes
 * each reply from the Seq and the data, so a reply routed to the wrong client is seen).
 *
 * @module
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { hashReply } from "../src/protocol/reply_hash.ts";
import type { Proxy } from "../src/proxy/proxy.ts";
import { UpstreamPool } from "../src/proxy/upstream_pool.ts";
import {
  chunked,
  connectTo,
  freePort,
  LineReader,
  listenLocal,
  startProxy,
  startUpstream,
  waitUntil,
  writeAll,
} from "./_util.ts";

const decoder = new TextDecoder();

/** Whether `line` is a REQ the proxy forwards: valid, with a Seq of at most 18 digits. */
function isValid(line: string): boolean {
  return hashReply(line) !== undefined && /^REQ[ \t]+\d{1,18}(\D|$)/.test(line);
}

/** The replies a hash server owes `lines` (refused lines get none), one string with newlines. */
function expectedReplies(lines: string[]): string {
  return lines.filter(isValid).map((line) => hashReply(line) + "\n").join("");
}

/** Reads everything until the proxy closes the connection (EOF or reset). */
async function readUntilClosed(conn: Deno.Conn, timeoutMs = 10_000): Promise<string> {
  const reader = new LineReader(conn);
  try {
    return decoder.decode(await reader.readAll(timeoutMs));
  } catch (error) {
    if (error instanceof Deno.errors.ConnectionReset) return decoder.decode(reader.buffered);
    throw error;
  }
}

/** The client's lines joined with newlines: `REQ <seq> <data>`, all valid. */
function reqs(seqs: number[], data: string): string[] {
  return seqs.map((seq) => `REQ ${seq} ${data}`);
}

const VALID_LINE = fc
  .tuple(
    fc.integer({ min: 0, max: 99_999 }),
    fc.stringMatching(/^[a-z0-9 ]{0,12}$/),
    fc.boolean(),
  )
  .map(([seq, data, cr]) => `REQ ${seq}${data === "" ? "" : " " + data}${cr ? "\r" : ""}`);

const INVALID_LINE = fc.constantFrom(
  "",
  "\r",
  "req 1",
  "REQ",
  "REQ x",
  "REQ 5x",
  "REQ +1",
  "REQ -1",
  " REQ 1",
  "ACK 3",
  "NAK 4 z",
  "hello world",
  `REQ ${"0".repeat(18)}1 too long`,
);

Deno.test("--mux 1 property: any interleaving of K clients' chunkings gets each client exactly the direct replies to its REQs, in order", async () => {
  // Like real servers, it answers invalid lines too: one forwarded would shift every reply after.
  await using upstream = await startUpstream({ reply: "hash", answerInvalid: true });
  await using proxy = await startProxy(upstream.addr, { mux: 1 });
  const client = fc.record({
    lines: fc.array(fc.oneof({ weight: 4, arbitrary: VALID_LINE }, INVALID_LINE), {
      minLength: 1,
      maxLength: 12,
    }),
    cuts: fc.array(fc.nat(), { maxLength: 8 }),
  });
  await fc.assert(
    fc.asyncProperty(
      fc.array(client, { minLength: 2, maxLength: 5 }),
      fc.array(fc.nat(), { minLength: 1, maxLength: 40 }),
      async (clients, order) => {
        const stats = proxy.stats;
        const before = { req: stats.counts.msg_req, refused: stats.muxRefusedLines };
        const conns = await Promise.all(clients.map(() => connectTo(proxy.addr)));
        try {
          const chunks = clients.map((c) => chunked(c.lines.map((l) => l + "\n").join(""), c.cuts));
          const next = clients.map(() => 0);
          // Write every chunk in the interleaving `order` picks, one write at a time.
          for (let step = 0;; step++) {
            const active = chunks.flatMap((list, k) => next[k] < list.length ? [k] : []);
            if (active.length === 0) break;
            const k = active[order[step % order.length] % active.length];
            await writeAll(conns[k], chunks[k][next[k]++]);
          }
          await Promise.all(conns.map((conn) => conn.closeWrite()));
          const got = await Promise.all(conns.map((conn) => readUntilClosed(conn)));
          got.forEach((text, k) =>
            assert.equal(text, expectedReplies(clients[k].lines), `client ${k}`)
          );
          const all = clients.flatMap((c) => c.lines);
          assert.equal(stats.counts.msg_req - before.req, all.filter(isValid).length);
          assert.equal(
            stats.muxRefusedLines - before.refused,
            all.filter((l) => !isValid(l)).length,
          );
        } finally {
          for (const conn of conns) conn.close();
        }
      },
    ),
    { numRuns: 30 },
  );
  assert.equal(upstream.accepted, 1, "every run shared the one upstream connection");
  assert.equal(upstream.invalid, 0, "no invalid line reached the server");
  assert.equal(proxy.stats.muxDesyncs, 0);
});

/**
 * Clients that each send `count` REQs with Seqs no other client uses, then read every line they
 * get until the proxy closes them: each must have got a prefix of exactly its own replies.
 */
async function validatePrefixes(proxy: Proxy, clients: number, count: number): Promise<number> {
  let complete = 0;
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    using conn = await connectTo(proxy.addr);
    const lines = reqs(Array.from({ length: count }, (_, i) => 1000 * (c + 1) + i), `c${c}`);
    await writeAll(conn, lines.map((l) => l + "\n").join(""));
    await conn.closeWrite();
    const text = await readUntilClosed(conn);
    const want = expectedReplies(lines);
    assert.ok(want.startsWith(text), `client ${c} got a reply that is not its own: ${text}`);
    if (text === want) complete++;
  }));
  return complete;
}

for (const resume of [false, true]) {
  Deno.test(`--mux${resume ? " --resume" : ""}: a server that answers twice is out of step: the shared connection closes, no client gets another's reply`, async () => {
    await using upstream = await startUpstream({ reply: "hash", duplicateReplies: true });
    await using proxy = await startProxy(upstream.addr, {
      mux: 2,
      resume: resume ? "verbatim" : "off",
    });
    await validatePrefixes(proxy, 30, 5);
    assert.ok(proxy.stats.muxDesyncs >= 1, "the duplicates were seen");
    if (resume) assert.ok(proxy.stats.failovers >= 1, "replayed on another connection");
    else assert.equal(proxy.stats.muxUpstreamConnections, 0, "none kept after a desync");
    // The proxy is still up: a client is served (and closed when its connection desyncs too).
    using conn = await connectTo(proxy.addr);
    await writeAll(conn, "REQ 1 alive\n");
    assert.equal(await new LineReader(conn).readLine(), hashReply("REQ 1 alive"));
  });
}

Deno.test("--mux: an unsolicited line from the server closes the shared connection; every client got only its own replies", async () => {
  // A hand-written server: answers like the hash server, and after 10 replies slips in a line
  // nobody asked for.
  const listener = listenLocal();
  const tasks: Promise<void>[] = [];
  let unsolicited = 0;
  const serve = async (conn: Deno.TcpConn) => {
    const reader = new LineReader(conn);
    let replies = 0;
    try {
      for (;;) {
        const line = await reader.readLine(10_000);
        if (line === null) return;
        let out = hashReply(line)! + "\n";
        if (++replies === 10) {
          out += "ACK 424242 00000000\n";
          unsolicited++;
        }
        await writeAll(conn, out);
      }
    } catch {
      // The proxy closed it.
    } finally {
      conn.close();
    }
  };
  const accepting = (async () => {
    for await (const conn of listener) tasks.push(serve(conn));
  })();
  await using proxy = await startProxy(listener.addr as Deno.NetAddr, { mux: 1 });
  const complete = await validatePrefixes(proxy, 10, 3);
  assert.equal(proxy.stats.muxDesyncs, unsolicited);
  assert.ok(unsolicited >= 1 && complete < 10, "the clients owed replies on it were closed");
  await proxy.close();
  listener.close();
  await accepting;
  await Promise.all(tasks);
});

/** Random bytes that can never form a valid REQ (no `R`), with a newline every so often. */
function junk(length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) {
    const b = Math.floor(Math.random() * 256);
    out[i] = b === 82 ? 83 : Math.random() < 0.05 ? 10 : b;
  }
  return out;
}

Deno.test("--mux 2: 200 validating clients beside 20 fuzzing clients each get exactly their replies; counters are exact", async () => {
  await using upstream = await startUpstream({ reply: "hash" });
  await using proxy = await startProxy(upstream.addr, { mux: 2 });
  const stats = proxy.stats;
  let fuzzReqs = 0; // valid REQ lines the fuzzers sent (and the proxy surely read)
  let fuzzRefused = 0; // invalid lines the fuzzers sent that the proxy surely saw whole
  let mayRefuse = 0; // partial lines cut by a reset: refused only if the close came as a FIN
  let huge = 0;
  const validators = Array.from({ length: 200 }, async (_, c) => {
    using conn = await connectTo(proxy.addr);
    const reader = new LineReader(conn);
    // Every client starts at Seq 1, as real ones do: only the data tells them apart.
    for (let round = 0; round < 3; round++) {
      const lines = reqs(Array.from({ length: 7 }, (_, i) => round * 7 + i + 1), `v${c}`);
      await writeAll(conn, lines.map((l) => l + "\n").join(""));
      assert.deepEqual(await reader.readLines(7, 15_000), lines.map((l) => hashReply(l)));
    }
  });
  const fuzzers = Array.from({ length: 20 }, async (_, f) => {
    const conn = await connectTo(proxy.addr);
    try {
      switch (f % 6) {
        case 0: { // random bytes, then FIN: every complete line refused, the tail too
          const bytes = junk(3000);
          const lines = bytes.filter((b) => b === 10).length;
          await writeAll(conn, bytes);
          await conn.closeWrite();
          await readUntilClosed(conn);
          fuzzRefused += lines + (bytes.at(-1) === 10 ? 0 : 1);
          break;
        }
        case 1: { // invalid lines between valid ones: only the valid ones answered
          const lines = [`REQ 1 f${f}`, "req 2", "", `REQ 3 f${f}`, "ACK 4", "REQ 5x", `REQ 6`];
          await writeAll(conn, lines.map((l) => l + "\n").join(""));
          await conn.closeWrite();
          assert.equal(await readUntilClosed(conn), expectedReplies(lines));
          fuzzReqs += 3;
          fuzzRefused += 4;
          break;
        }
        case 2: { // a line without its newline, then reset (or FIN, if nothing was unread)
          await writeAll(conn, `REQ 1 f${f}\n`);
          assert.equal(await new LineReader(conn).readLine(), hashReply(`REQ 1 f${f}`));
          await writeAll(conn, `REQ 2 f${f} never ends`);
          fuzzReqs += 1;
          mayRefuse += 1;
          break;
        }
        case 3: { // half-close mid-line: the complete line answered, the partial refused
          await writeAll(conn, `REQ 1 f${f}\nREQ 2 f${f} par`);
          await conn.closeWrite();
          assert.equal(await readUntilClosed(conn), expectedReplies([`REQ 1 f${f}`]));
          fuzzReqs += 1;
          fuzzRefused += 1;
          break;
        }
        case 4: // connect and go
          break;
        case 5: { // a line longer than 64 KiB: the client is closed, nobody else notices
          try {
            await writeAll(conn, "REQ 1 " + "x".repeat(100_000));
          } catch {
            // Closed by the proxy while writing.
          }
          await readUntilClosed(conn);
          huge++;
          break;
        }
      }
    } finally {
      conn.close();
    }
  });
  await Promise.all([...validators, ...fuzzers]);
  await waitUntil(() => stats.connectionsActive === 0, "every client to have ended");
  const validatorReqs = 200 * 21;
  assert.equal(stats.counts.msg_req, validatorReqs + fuzzReqs);
  assert.equal(stats.counts.msg_ack + stats.counts.msg_nak, validatorReqs + fuzzReqs);
  assert.equal(upstream.received, validatorReqs + fuzzReqs, "the server saw only valid REQs");
  assert.equal(upstream.invalid, 0, "no invalid line reached the server");
  const refusedBase = fuzzRefused + huge;
  assert.ok(
    stats.muxRefusedLines >= refusedBase && stats.muxRefusedLines <= refusedBase + mayRefuse,
    `refused ${stats.muxRefusedLines}, expected ${refusedBase}..${refusedBase + mayRefuse}`,
  );
  assert.equal(stats.muxDesyncs, 0);
  assert.equal(upstream.accepted, 2);
  assert.equal(stats.latency.inFlight, 0, "nothing left in flight");
});

Deno.test("--mux 3: 1 000 concurrent clients use exactly 3 upstream connections", async () => {
  await using upstream = await startUpstream({ reply: "hash" });
  await using proxy = await startProxy(upstream.addr, { mux: 3 });
  const conns = await Promise.all(Array.from({ length: 1000 }, () => connectTo(proxy.addr)));
  try {
    await Promise.all(conns.map(async (conn, c) => {
      const lines = reqs([1, 2, 3], `n${c}`);
      await writeAll(conn, lines.map((l) => l + "\n").join(""));
      assert.deepEqual(await new LineReader(conn).readLines(3, 20_000), lines.map(hashReply));
    }));
  } finally {
    for (const conn of conns) conn.close();
  }
  assert.equal(upstream.accepted, 3);
  assert.equal(proxy.stats.muxUpstreamConnections, 3);
  assert.equal(proxy.stats.counts.msg_req, 3000);
});

/** `REQ 1` … `REQ count` as bytes. */
function seqReqs(count: number): Uint8Array {
  const parts: string[] = [];
  for (let seq = 1; seq <= count; seq++) parts.push(`REQ ${seq}\n`);
  return new TextEncoder().encode(parts.join(""));
}

/** Reads the replies to `seqReqs(count)` and checks them, every one in order. */
async function expectSeqReplies(conn: Deno.Conn, count: number, timeoutMs: number): Promise<void> {
  const want: string[] = [];
  for (let seq = 1; seq <= count; seq++) want.push(hashReply(`REQ ${seq}`) + "\n");
  const expected = want.join("");
  const got = await new LineReader(conn).readExactly(expected.length, timeoutMs);
  if (got !== expected) {
    const at = [...got].findIndex((ch, i) => ch !== expected[i]);
    assert.fail(`replies differ at byte ${at}: ${JSON.stringify(got.slice(at, at + 40))}`);
  }
}

/** Fast clients that each do `rounds` pipelined batches of 10, validating every reply. */
function fastClients(proxy: Proxy, count: number, rounds: number): Promise<void[]> {
  return Promise.all(Array.from({ length: count }, async (_, c) => {
    using conn = await connectTo(proxy.addr);
    const reader = new LineReader(conn);
    for (let round = 0; round < rounds; round++) {
      const lines = reqs(Array.from({ length: 10 }, (_, i) => round * 10 + i + 1), `fast${c}`);
      await writeAll(conn, lines.map((l) => l + "\n").join(""));
      assert.deepEqual(await reader.readLines(10, 10_000), lines.map(hashReply));
    }
  }));
}

Deno.test("--mux: a client that never reads is paused at --max-inflight and never blocks the fast clients beside it", async () => {
  await using upstream = await startUpstream({ reply: "hash" });
  await using proxy = await startProxy(upstream.addr, { mux: 1, maxInflight: 100 });
  const count = 100_000;
  const slow = await connectTo(proxy.addr);
  try {
    // Far more replies than the socket buffers hold: the proxy must stop reading it.
    const writing = writeAll(slow, seqReqs(count)).catch(() => {});
    await waitUntil(
      () => proxy.stats.inflightLimitPauses > 0,
      "the slow client to be paused",
      20_000,
    );
    await fastClients(proxy, 20, 10);
    assert.ok(upstream.maxUnanswered <= 100 + 20 * 10, `unanswered ${upstream.maxUnanswered}`);
    assert.equal(proxy.stats.muxSlowClients, 0, "paused, not cut off");
    const forwarded = upstream.received - 20 * 10 * 10;
    assert.ok(forwarded < count, `stuck: only ${forwarded} of its ${count} REQs forwarded so far`);
    assert.equal(upstream.accepted, 1);
    // It reads at last, and gets every reply, in order.
    await expectSeqReplies(slow, count, 60_000);
    await writing;
  } finally {
    slow.close();
  }
  assert.equal(proxy.stats.muxDesyncs, 0);
});

Deno.test("--mux: without an in-flight limit, a client that never reads is cut off past 4 MiB of unread replies; the others flow on", async () => {
  await using upstream = await startUpstream({ reply: "hash" });
  await using proxy = await startProxy(upstream.addr, { mux: 1, maxInflight: 0 });
  const slow = await connectTo(proxy.addr);
  try {
    const writing = writeAll(slow, seqReqs(1_000_000)).catch(() => {});
    await waitUntil(
      () => proxy.stats.muxSlowClients === 1,
      "the slow client to be cut off",
      30_000,
    );
    await writing;
    await fastClients(proxy, 20, 10);
    assert.equal(upstream.accepted, 1, "the shared connection survived it");
  } finally {
    slow.close();
  }
  assert.equal(proxy.stats.muxDesyncs, 0);
});

for (const resume of [false, true]) {
  Deno.test(`--mux: the upstream connections dropped mid-flight ${resume ? "with --resume: every client gets every reply exactly once, in order" : "without --resume: exactly the clients with REQs outstanding are closed"}`, async () => {
    await using upstream = await startUpstream({ reply: "hash", delayMs: 300 });
    await using proxy = await startProxy(upstream.addr, {
      mux: 2,
      resume: resume ? "verbatim" : "off",
    });
    const stats = proxy.stats;
    // Idle clients: answered once, owe nothing now.
    const idle = await Promise.all(Array.from({ length: 3 }, () => connectTo(proxy.addr)));
    const busy = await Promise.all(Array.from({ length: 4 }, () => connectTo(proxy.addr)));
    try {
      await Promise.all(idle.map(async (conn, c) => {
        await writeAll(conn, `REQ 1 idle${c}\n`);
        assert.equal(await new LineReader(conn).readLine(), hashReply(`REQ 1 idle${c}`));
      }));
      const sent = busy.map((_, c) => reqs([1, 2, 3, 4, 5], `busy${c}`));
      await Promise.all(
        busy.map((conn, c) => writeAll(conn, sent[c].map((l) => l + "\n").join(""))),
      );
      await waitUntil(() => upstream.received === 3 + 20, "the server to hold every busy REQ");
      assert.equal(stats.counts.msg_ack + stats.counts.msg_nak, 3, "none answered yet");
      assert.ok(upstream.dropConnections() >= 1);
      const got = await Promise.all(
        busy.map((conn) => readUntilClosedOrLines(conn, resume ? 5 : 0)),
      );
      got.forEach((text, c) =>
        assert.equal(text, resume ? expectedReplies(sent[c]) : "", `busy ${c}`)
      );
      if (resume) {
        assert.equal(stats.failovers, 4, "one failover per busy client");
        assert.equal(stats.replays, 20, "every unanswered REQ replayed once");
      } else {
        assert.equal(stats.failovers, 0);
        await waitUntil(() => stats.connectionsActive === 3, "only the idle clients to be left");
      }
      // The idle clients were never touched, and keep working.
      await Promise.all(idle.map(async (conn, c) => {
        await writeAll(conn, `REQ 2 idle${c}\n`);
        assert.equal(await new LineReader(conn).readLine(), hashReply(`REQ 2 idle${c}`));
      }));
      if (resume) {
        // ...and so do the busy ones.
        await Promise.all(busy.map(async (conn, c) => {
          await writeAll(conn, `REQ 6 busy${c}\n`);
          assert.equal(await new LineReader(conn).readLine(), hashReply(`REQ 6 busy${c}`));
        }));
      }
      assert.equal(stats.muxDesyncs, 0);
    } finally {
      for (const conn of [...idle, ...busy]) conn.close();
    }
  });
}

/** `count` lines when `count` > 0 (as text with newlines); else everything up to the close. */
async function readUntilClosedOrLines(conn: Deno.Conn, count: number): Promise<string> {
  if (count === 0) return await readUntilClosed(conn);
  const lines = await new LineReader(conn).readLines(count, 10_000);
  return lines.map((l) => l + "\n").join("");
}

Deno.test("--mux: a client that half-closes gets every reply, then is closed; a partial last line is counted and never forwarded", async () => {
  await using upstream = await startUpstream({ reply: "hash", delayMs: 50, closeAfterFin: false });
  await using proxy = await startProxy(upstream.addr, { mux: 1 });
  const stats = proxy.stats;
  // A neighbour whose next line must not fuse with the partial one.
  using neighbour = await connectTo(proxy.addr);
  {
    using conn = await connectTo(proxy.addr);
    const lines = reqs([1, 2, 3, 4, 5], "fin");
    await writeAll(conn, lines.map((l) => l + "\n").join(""));
    await conn.closeWrite();
    assert.equal(await readUntilClosed(conn), expectedReplies(lines));
  }
  {
    using conn = await connectTo(proxy.addr);
    await writeAll(conn, "REQ 1 a\nREQ 2 b\nREQ 3 never fini");
    await conn.closeWrite();
    assert.equal(await readUntilClosed(conn), expectedReplies(["REQ 1 a", "REQ 2 b"]));
  }
  await writeAll(neighbour, "shed\nREQ 9 n\n");
  assert.equal(await new LineReader(neighbour).readLine(), hashReply("REQ 9 n"));
  assert.equal(stats.counts.invalid_truncated, 1);
  assert.equal(stats.muxRefusedLines, 2, "the partial line and the neighbour's junk");
  assert.equal(upstream.received, 8);
  assert.equal(upstream.invalid, 0, "neither reached the server");
  assert.equal(stats.closed.completed, 2);
});

Deno.test("--mux: idle clients hold no upstream socket; the first to speak opens one", async () => {
  await using upstream = await startUpstream({ reply: "hash" });
  await using proxy = await startProxy(upstream.addr, { mux: 2 });
  const conns = await Promise.all(Array.from({ length: 50 }, () => connectTo(proxy.addr)));
  try {
    await waitUntil(() => proxy.stats.connectionsActive === 50, "every client to be accepted");
    assert.equal(upstream.accepted, 0);
    await writeAll(conns[7], "REQ 1 speak\n");
    assert.equal(await new LineReader(conns[7]).readLine(), hashReply("REQ 1 speak"));
    assert.equal(upstream.accepted, 1);
  } finally {
    for (const conn of conns) conn.close();
  }
});

Deno.test("--mux: --idle-timeout closes an idle client, never one waiting on replies", async () => {
  await using upstream = await startUpstream({ reply: "hash", delayMs: 400 });
  await using proxy = await startProxy(upstream.addr, { mux: 1, idleTimeoutMs: 150 });
  using idle = await connectTo(proxy.addr);
  using waiting = await connectTo(proxy.addr);
  await writeAll(waiting, "REQ 1 slow\n");
  assert.equal(await readUntilClosed(idle), "", "the idle one is closed");
  assert.equal(proxy.stats.closed.idle_timeout, 1);
  // The one waiting 400 ms (> 150) for its reply is not idle: it gets it.
  assert.equal(await new LineReader(waiting).readLine(), hashReply("REQ 1 slow"));
});

Deno.test("--mux: shutdown drains: busy clients get their replies, idle ones are closed at the drain timeout", async () => {
  await using upstream = await startUpstream({ reply: "hash", delayMs: 100 });
  // The busy client reads its replies and leaves well within the drain timeout, loaded or not.
  await using proxy = await startProxy(upstream.addr, { mux: 2, drainTimeoutMs: 2000 });
  using idle = await connectTo(proxy.addr);
  using busy = await connectTo(proxy.addr);
  await waitUntil(() => proxy.stats.connectionsActive === 2, "both clients to be accepted");
  const lines = reqs([1, 2, 3], "drain");
  await writeAll(busy, lines.map((l) => l + "\n").join(""));
  await waitUntil(() => upstream.received === 3, "the REQs to reach the server");
  const report = proxy.shutdown();
  assert.deepEqual(await new LineReader(busy).readLines(3), lines.map(hashReply));
  await busy.closeWrite();
  assert.equal(await readUntilClosed(busy), "");
  assert.equal(await readUntilClosed(idle), "");
  assert.deepEqual(await report, { drained: false, closedIdle: 1, closedBusy: 0, aborted: false });
  await waitUntil(() => upstream.connections === 0, "the shared connections to be closed");
});

Deno.test("--mux: the access log has one record per client with its own REQs and replies", async () => {
  await using upstream = await startUpstream({ reply: "hash" });
  const records: { client: string; reqs: number; acks: number; naks: number; invalid: number }[] =
    [];
  await using proxy = await startProxy(upstream.addr, {
    mux: 1,
    accessLog: (record) => records.push(record),
  });
  const ports: number[] = [];
  await Promise.all([3, 5, 8].map(async (count, c) => {
    using conn = await connectTo(proxy.addr);
    ports[c] = (conn.localAddr as Deno.NetAddr).port;
    const lines = [...reqs(Array.from({ length: count }, (_, i) => i + 1), `log${c}`), "junk"];
    await writeAll(conn, lines.map((l) => l + "\n").join(""));
    await conn.closeWrite();
    assert.equal(await readUntilClosed(conn), expectedReplies(lines));
  }));
  await waitUntil(() => records.length === 3, "three records");
  [3, 5, 8].forEach((count, c) => {
    const record = records.find((r) => r.client.endsWith(`:${ports[c]}`));
    assert.ok(record, `a record for client ${c}`);
    assert.equal(record.reqs, count);
    assert.equal(record.acks + record.naks, count);
    assert.equal(record.invalid, 1);
  });
});

Deno.test("--mux with two upstreams: a drained one finishes its clients' REQs, takes no new ones, and its shared connection closes", async () => {
  const options = { reply: "hash" as const, delayMs: 30 };
  await using a = await startUpstream(options);
  await using b = await startUpstream(options);
  const specs = [a, b].map((server, k) => ({
    name: `u${k}`,
    address: { hostname: "127.0.0.1", port: server.addr.port },
    weight: 1,
  }));
  await using pool = new UpstreamPool(specs, { policy: "roundrobin", intervalMs: 0 });
  await using proxy = await startProxy(a.addr, { mux: 1, target: pool });
  const batch = (count: number, tag: string) =>
    Promise.all(Array.from({ length: count }, async (_, c) => {
      using conn = await connectTo(proxy.addr);
      const lines = reqs([1, 2, 3, 4, 5], `${tag}${c}`);
      await writeAll(conn, lines.map((l) => l + "\n").join(""));
      assert.deepEqual(await new LineReader(conn).readLines(5, 10_000), lines.map(hashReply));
    }));
  // Both upstreams get a shared connection, and the drain comes while b owes replies.
  // (clients that speak while the first shared connection is busy have a second one dialed, and
  // the clients after that take the less busy one).
  const first = batch(20, "first");
  await waitUntil(() => a.received > 0, "the first shared connection to be busy");
  const second = batch(20, "second");
  await waitUntil(() => proxy.stats.muxUpstreamConnections === 2, "a second shared connection");
  const third = batch(20, "third");
  await waitUntil(() => b.received > 0, "the second upstream to have work");
  assert.ok(pool.drain("u1"));
  await Promise.all([first, second, third]); // b's clients got every reply
  const atDrain = b.received;
  await batch(20, "after");
  assert.equal(b.received, atDrain, "no new REQ went to the drained upstream");
  await waitUntil(() => b.connections === 0, "the drained upstream's shared connection to close");
  assert.equal(b.accepted, 1);
  assert.equal(proxy.stats.muxDesyncs, 0);
});

for (const answerInvalid of [true, false]) {
  const digits = answerInvalid ? 19 : 5000;
  Deno.test(`--mux: a REQ with a ${digits}-digit Seq (which ${answerInvalid ? "a server answers NAK 0 ERRDECODE" : "a server never answers"}) is refused; its neighbours' replies stay in step`, async () => {
    // The server decodes at most 18 digits (answerInvalid) or 4096 (otherwise: it skips the line).
    await using upstream = await startUpstream({ reply: "hash", answerInvalid, delayMs: 20 });
    await using proxy = await startProxy(upstream.addr, { mux: 1 });
    using attacker = await connectTo(proxy.addr);
    // Leading zeros: a small value the proxy could check, but more digits than the server reads.
    await writeAll(attacker, `REQ ${"0".repeat(digits - 1)}7 mine\n`);
    await Promise.all(Array.from({ length: 10 }, async (_, c) => {
      using conn = await connectTo(proxy.addr);
      const lines = reqs([7, 8, 9], `victim${c}`);
      await writeAll(conn, lines.map((l) => l + "\n").join(""));
      await conn.closeWrite();
      assert.equal(await readUntilClosed(conn), expectedReplies(lines), `victim ${c}`);
    }));
    await attacker.closeWrite();
    assert.equal(await readUntilClosed(attacker), "", "the attacker got nobody's reply");
    assert.equal(proxy.stats.muxRefusedLines, 1);
    assert.equal(proxy.stats.muxDesyncs, 0);
    assert.equal(upstream.invalid, 0);
  });
}

Deno.test("--mux: an upstream that is down closes only the clients that speak; once it is up, they are served", async () => {
  const port = freePort();
  await using proxy = await startProxy({ hostname: "127.0.0.1", port, transport: "tcp" }, {
    mux: 2,
    connectRetries: 0,
  });
  using idle = await connectTo(proxy.addr);
  {
    using conn = await connectTo(proxy.addr);
    await writeAll(conn, "REQ 1 down\n");
    assert.equal(await readUntilClosed(conn), "");
  }
  assert.equal(proxy.stats.closed.upstream_unreachable, 1);
  await using _upstream = await startUpstream({
    reply: "hash",
    listen: { hostname: "127.0.0.1", port },
  });
  await writeAll(idle, "REQ 2 up\n");
  assert.equal(await new LineReader(idle).readLine(), hashReply("REQ 2 up"));
});

Deno.test("--mux refuses a REQ holding a byte a server might split lines at; its neighbours stay in step", async () => {
  await using upstream = await startUpstream({ reply: "hash", answerInvalid: true });
  await using proxy = await startProxy(upstream.addr, { mux: 1 });
  using attacker = await connectTo(proxy.addr);
  // Each would be two lines to a server that splits on CR, VT, FF, NEL, U+2028 or U+2029 (as
  // Python's splitlines does): two answers, the second one routed to whoever is next in line.
  const smuggled = [
    "REQ 1 a\rREQ 1 b",
    "REQ 1 a\vREQ 1 b",
    "REQ 1 a\fREQ 1 b",
    "REQ 1 a\u0085REQ 1 b",
    "REQ 1 a\u2028REQ 1 b",
    "REQ 1 a\u2029REQ 1 b",
    "REQ 1 a\0b",
  ];
  // A trailing CR (telnet), TABs and other UTF-8 stay fine.
  const fine = ["REQ 2 tab\there\r", "REQ 3 é€ok"];
  await writeAll(attacker, [...smuggled, ...fine].map((l) => l + "\n").join(""));
  await attacker.closeWrite();
  assert.equal(await readUntilClosed(attacker), expectedReplies(fine));
  await Promise.all(Array.from({ length: 5 }, async (_, c) => {
    using conn = await connectTo(proxy.addr);
    const lines = reqs([1, 2], `victim${c}`);
    await writeAll(conn, lines.map((l) => l + "\n").join(""));
    await conn.closeWrite();
    assert.equal(await readUntilClosed(conn), expectedReplies(lines), `victim ${c}`);
  }));
  assert.equal(proxy.stats.muxRefusedLines, smuggled.length);
  assert.equal(upstream.received, fine.length + 10, "no smuggled line reached the server");
  assert.equal(proxy.stats.muxDesyncs, 0);
});

Deno.test("--mux never opens more than N per upstream while the upstream's state flaps (down while busy, up again)", async () => {
  await using upstream = await startUpstream({ reply: "hash", delayMs: 200 });
  const spec = {
    name: "u0",
    address: { hostname: "127.0.0.1", port: upstream.addr.port },
    weight: 1,
  };
  await using pool = new UpstreamPool([spec], { intervalMs: 0 });
  await using proxy = await startProxy(upstream.addr, { mux: 1, target: pool });
  const state = (healthy: boolean) => ({
    u0: { healthy, ejected: false, ejectedForMs: 0, awaitingFirstCheck: false, draining: false },
  });
  const ask = async (tag: string) => {
    using conn = await connectTo(proxy.addr);
    const lines = reqs([1, 2], tag);
    await writeAll(conn, lines.map((l) => l + "\n").join(""));
    assert.deepEqual(await new LineReader(conn).readLines(2, 10_000), lines.map(hashReply));
  };
  // The shared connection is busy (replies take 200 ms) when the health checks mark the lone
  // upstream down: a client arriving then rides the busy connection (nothing is up, so the
  // down one is used, as 1:1 dials it) instead of opening a second.
  const first = ask("first");
  await waitUntil(() => upstream.received > 0, "the shared connection to be busy");
  pool.applyStates(state(false));
  const second = ask("second");
  await waitUntil(() => upstream.received >= 4, "the second client's REQs upstream");
  pool.applyStates(state(true));
  await Promise.all([first, second, ask("third")]);
  assert.equal(upstream.accepted, 1, "one shared connection, whatever the state did");
  assert.equal(proxy.stats.muxUpstreamConnections, 1);
});
