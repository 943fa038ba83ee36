/**
 * Issue 6 resilience: backpressure, --max-inflight, --idle-timeout, upstream connect retries and
 * hostile input, over real sockets with our Foo server (or a hand-written peer) as upstream.
 */
import assert from "node:assert/strict";
import { backoffDelay, dialWithRetry } from "../src/proxy/dial_with_retry.ts";
import type { Proxy } from "../src/proxy/proxy.ts";
import { UpstreamError } from "../src/proxy/upstream.ts";
import {
  acks,
  connectTo,
  ENGINE_MODES,
  fakeTimers,
  freePort,
  listenLocal,
  readLines,
  readText,
  requests,
  spawnProxy,
  startProxy,
  startUpstream,
  waitUntil,
  withTimeout,
  writeAll,
} from "./_util.ts";

const encoder = new TextEncoder();
const MiB = 1 << 20;

/**
 * Writes chunks from `next()` to `conn` in the background until {@linkcode Flood.stop} or until
 * `limit` bytes went out; counts what the kernel took.
 */
class Flood {
  /** Bytes of the writes that completed. */
  written = 0;
  /** Length of the chunk being written now (0 between writes). */
  writing = 0;
  /** Resolves with the bytes written once the flood stops or reaches its limit. */
  readonly done: Promise<number>;
  #stopped = false;

  constructor(conn: Deno.Conn, next: () => Uint8Array, limit: number) {
    this.done = (async () => {
      while (!this.#stopped && this.written < limit) {
        const chunk = next();
        this.writing = chunk.length;
        await writeAll(conn, chunk);
        this.written += chunk.length;
        this.writing = 0;
      }
      return this.written;
    })();
    this.done.catch(() => {}); // awaited by the test; a close under a pending write is fine
  }

  /** Writes nothing after the pending write; returns what will have gone out once it completes. */
  stop(): number {
    this.#stopped = true;
    return this.written + this.writing;
  }
}

/**
 * Floods `conn` until the flood is held back, and returns it still pending. Held back means: a
 * write is pending, and a whole `probe()` (a round trip through the proxy on another connection)
 * went by with neither the flood's written bytes nor `accepted()` (what the proxy, or the peer
 * behind it, took in from the flood) moving. No timer decides it; a flood that gets `limit` bytes
 * out first, while the far end reads nothing, fails the test.
 */
async function floodUntilHeld(
  conn: Deno.Conn,
  next: () => Uint8Array,
  options: { limit: number; accepted: () => number; probe: () => Promise<void>; what: string },
): Promise<Flood> {
  const { limit, accepted, probe, what } = options;
  const flood = new Flood(conn, next, limit);
  let ended = false;
  flood.done.then(() => ended = true, () => ended = true);
  await withTimeout(
    (async () => {
      for (;;) {
        const written = flood.written;
        const before = accepted();
        await probe();
        assert.ok(
          !ended,
          `${what}: ${flood.written} bytes went out while the far end read none: nothing held the flood back`,
        );
        if (flood.writing > 0 && flood.written === written && accepted() === before) return;
      }
    })(),
    60_000,
    `${what} to be held back`,
  );
  return flood;
}

/** Reads `conn` until `total` bytes came (or EOF); returns how many did. */
async function readCount(conn: Deno.Conn, total: number, what: string): Promise<number> {
  const buf = new Uint8Array(MiB);
  let got = 0;
  while (got < total) {
    const n = await withTimeout(conn.read(buf), 30_000, what);
    if (n === null) break;
    got += n;
  }
  return got;
}

/**
 * Resident set size of process `pid` in bytes (Linux). Read through `cat`: Deno wants
 * `--allow-all` to read `/proc` itself.
 */
async function rssOf(pid: number): Promise<number> {
  const out = await new Deno.Command("cat", { args: [`/proc/${pid}/status`] }).output();
  const status = new TextDecoder().decode(out.stdout);
  const kib = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!kib) throw new Error(`No VmRSS in /proc/${pid}/status`);
  return Number(kib[1]) * 1024;
}

// ---------------------------------------------------------------------------------------------
// --max-inflight

for (const mode of ENGINE_MODES) {
  Deno.test(`--max-inflight: the upstream never sees more than N unanswered REQs of a client [${mode.name}]`, async () => {
    using raw = listenLocal();
    await using proxy = await startProxy(raw.addr as Deno.NetAddr, {
      ...mode.options,
      maxInflight: 5,
    });
    using client = await connectTo(proxy.addr);
    await writeAll(client, requests(1, 100)); // all at once: the proxy reads it in one go
    using server = await raw.accept();
    // A slow upstream: one reply per read (the oldest REQ), everything once all 100 are in.
    let received = 0;
    let replied = 0;
    let maxOutstanding = 0;
    const buf = new Uint8Array(65536);
    while (replied < 100) {
      const n = await withTimeout(server.read(buf), 5000, "REQs from the proxy");
      assert.notEqual(n, null);
      for (let i = 0; i < n!; i++) if (buf[i] === 10) received++;
      maxOutstanding = Math.max(maxOutstanding, received - replied);
      const upTo = received === 100 ? 100 : replied + 1;
      await writeAll(server, acks(replied + 1, upTo).map((line) => line + "\n").join(""));
      replied = upTo;
    }
    assert.equal(maxOutstanding, 5, "the limit is reached and never passed");
    assert.deepEqual(await readLines(client, 100), acks(1, 100));
    assert.ok(proxy.stats.snapshot().inflight_limit_pauses > 0);
  });
}

for (const mode of ENGINE_MODES) {
  Deno.test(`--max-inflight: a slow upstream still answers every pipelined REQ, in order [${mode.name}]`, async () => {
    await using upstream = await startUpstream({ delayMs: 2 });
    await using proxy = await startProxy(upstream.addr, { ...mode.options, maxInflight: 8 });
    using client = await connectTo(proxy.addr);
    await writeAll(client, requests(1, 400, "x".repeat(40)));
    await client.closeWrite(); // the FIN waits behind the held-back REQs
    assert.deepEqual(await readLines(client, 400, 15_000), acks(1, 400));
    assert.equal(await readText(client), "");
    await proxy.drained();
    const snap = proxy.stats.snapshot();
    assert.equal(snap.msg_req, 400);
    assert.equal(snap.msg_ack, 400);
    assert.ok(snap.inflight_limit_pauses > 0);
    assert.deepEqual(snap.connections_closed, { completed: 1 });
  });
}

// ---------------------------------------------------------------------------------------------
// Backpressure

/**
 * A second client of `proxy` whose upstream connection the test serves by hand; each `probe()` is
 * one exchange on it. `upBytes`/`downBytes`: what its exchanges added to the proxy's byte counts.
 */
async function probeClient(proxy: Proxy, raw: Deno.TcpListener) {
  const client = await connectTo(proxy.addr);
  let seq = 0;
  let server: Deno.Conn | undefined;
  const counts = { upBytes: 0, downBytes: 0 };
  const probe = async () => {
    seq++;
    const request = `REQ ${seq}\n`;
    await writeAll(client, request);
    server ??= await withTimeout(raw.accept(), 5000, "the probe's upstream connection");
    assert.deepEqual(await readLines(server, 1), [`REQ ${seq}`]);
    const reply = `ACK ${seq}\n`;
    await writeAll(server, reply);
    assert.deepEqual(await readLines(client, 1), [`ACK ${seq}`]);
    counts.downBytes += request.length;
    counts.upBytes += reply.length;
  };
  await probe();
  return Object.assign(counts, {
    probe,
    [Symbol.dispose]() {
      client.close();
      server?.close();
    },
  });
}

for (const mode of ENGINE_MODES) {
  Deno.test(`backpressure: a client that stops reading makes the proxy stop reading its upstream [${mode.name}]`, async () => {
    using raw = listenLocal();
    await using proxy = await startProxy(raw.addr as Deno.NetAddr, mode.options);
    using lazy = await connectTo(proxy.addr);
    await writeAll(lazy, "REQ 1\n");
    using flooder = await raw.accept();
    await readLines(flooder, 1);
    // Another client is served all along, including once the flood is held back.
    using other = await probeClient(proxy, raw);
    // The upstream answers with an endless stream of replies; the client reads none of them.
    const replies = encoder.encode(acks(1, 6000).map((line) => line + "\n").join(""));
    const accepted = () => proxy.stats.bytesUpstream - other.upBytes;
    const flood = await floodUntilHeld(flooder, () => replies, {
      limit: 256 * MiB,
      accepted,
      probe: other.probe,
      what: "the upstream's replies",
    });
    // Once the client reads, the flood resumes and every byte arrives, once.
    const total = flood.stop();
    const got = await readCount(lazy, total, "the replies at the client");
    assert.equal(await withTimeout(flood.done, 30_000, "the held write"), total);
    assert.equal(got, total);
    assert.equal(accepted(), total);
  });
}

for (const mode of ENGINE_MODES) {
  Deno.test(`backpressure: an upstream that stops reading makes the proxy stop reading its client [${mode.name}]`, async () => {
    using raw = listenLocal();
    await using proxy = await startProxy(raw.addr as Deno.NetAddr, {
      ...mode.options,
      maxInflight: 0,
    });
    using flooder = await connectTo(proxy.addr);
    const chunk = encoder.encode(requests(1, 5000));
    await writeAll(flooder, chunk);
    using deaf = await raw.accept(); // accepted, not read until the end
    using other = await probeClient(proxy, raw);
    const accepted = () => proxy.stats.bytesDownstream - other.downBytes;
    const flood = await floodUntilHeld(flooder, () => chunk, {
      limit: 256 * MiB,
      accepted,
      probe: other.probe,
      what: "the client's REQs",
    });
    const total = chunk.length + flood.stop();
    const got = await readCount(deaf, total, "the REQs at the upstream");
    assert.equal(await withTimeout(flood.done, 30_000, "the held write"), total - chunk.length);
    assert.equal(got, total);
    assert.equal(accepted(), total);
  });
}

for (const mode of ENGINE_MODES) {
  Deno.test(`backpressure: proxy RSS stays flat while a client pipelines up to 512 MiB and never reads [${mode.name}]`, async () => {
    await using upstream = await startUpstream();
    const { child, port } = await spawnProxy(upstream.addr, [...mode.flags, "--max-inflight=0"]);
    await using _child = child;
    // Warm up, then take the baseline.
    using other = await connectTo(port);
    await writeAll(other, requests(1, 2000, "warm"));
    assert.equal((await readLines(other, 2000)).length, 2000);
    let otherSeq = 2000;
    // Another client keeps working while the flooder is held back.
    const probe = async () => {
      otherSeq++;
      await writeAll(other, `REQ ${otherSeq}\n`);
      assert.deepEqual(await readLines(other, 1), [`ACK ${otherSeq}`]);
    };
    const before = await rssOf(child.pid);

    using flooder = await connectTo(port);
    const LINE = 128; // "REQ <10-digit seq> <padding>\n"
    const LINES = 512;
    let seq = 0;
    const next = () => {
      const chunk = new Uint8Array(LINE * LINES).fill(0x78); // 'x'
      for (let i = 0; i < LINES; i++) {
        const head = encoder.encode(`REQ ${String(++seq).padStart(10, "0")} `);
        chunk.set(head, i * LINE);
        chunk[i * LINE + LINE - 1] = 10;
      }
      return chunk;
    };
    // The upstream (which answers every REQ it reads) stops reading once the replies back up.
    const flood = await floodUntilHeld(flooder, next, {
      limit: 512 * MiB,
      accepted: () => upstream.received - otherSeq,
      probe,
      what: "the pipelined REQs",
    });
    const during = await rssOf(child.pid);
    assert.ok(
      during - before < 48 * MiB,
      `RSS grew by ${((during - before) / MiB).toFixed(1)} MiB while ${
        (flood.written / MiB).toFixed(0)
      } MiB were pipelined`,
    );
    // The flooder reads at last: every REQ it sent gets its reply.
    const counting = (async () => {
      const buf = new Uint8Array(MiB);
      let head = new Uint8Array(0);
      let lines = 0;
      for (;;) {
        const n = await flooder.read(buf);
        if (n === null) return { head: new TextDecoder().decode(head), lines };
        if (head.length === 0) head = buf.slice(0, Math.min(n, 15));
        for (let i = 0; i < n; i++) if (buf[i] === 10) lines++;
      }
    })();
    const total = flood.stop() / LINE;
    await withTimeout(flood.done, 30_000, "the held write");
    await flooder.closeWrite();
    const replies = await withTimeout(counting, 60_000, "every reply");
    assert.equal(replies.head, "ACK 0000000001\n");
    assert.equal(replies.lines, total);
    child.kill("SIGTERM");
    other.close();
    const snap = JSON.parse((await child.readLine()) ?? "null");
    assert.equal(snap.msg_req, otherSeq + total);
    assert.equal(snap.msg_ack, otherSeq + total);
    assert.equal((await child.status()).code, 0);
  });
}

// ---------------------------------------------------------------------------------------------
// --idle-timeout

for (const mode of ENGINE_MODES) {
  Deno.test(`--idle-timeout closes a quiet connection when the clock reaches it, but not one with a REQ in flight [${mode.name}]`, async () => {
    // The clock and the timers are the test's: nothing here waits for time to pass.
    let now = 1_000;
    const timers = fakeTimers();
    using raw = listenLocal();
    await using proxy = await startProxy(raw.addr as Deno.NetAddr, {
      ...mode.options,
      idleTimeoutMs: 300,
      clock: () => now,
      timers,
    });
    // B's REQ stays unanswered.
    using b = await connectTo(proxy.addr);
    await writeAll(b, "REQ 1\n");
    using serverB = await raw.accept();
    assert.deepEqual(await readLines(serverB, 1), ["REQ 1"]);
    // A does one exchange, then goes quiet.
    using a = await connectTo(proxy.addr);
    await writeAll(a, "REQ 1\n");
    using serverA = await raw.accept();
    assert.deepEqual(await readLines(serverA, 1), ["REQ 1"]);
    await writeAll(serverA, "ACK 1\n");
    assert.deepEqual(await readLines(a, 1), ["ACK 1"]);
    assert.deepEqual(timers.delays, [300, 300], "one idle timer per connection");
    /**
     * Fires the timers at `at` (as if they went off then) until the connection that just went
     * quiet is seen idle (its last write done) and is re-armed for the last 1 ms; none may close.
     */
    const fireOneShort = async (at: number, open: number) => {
      now = at;
      await waitUntil(() => {
        timers.fire();
        assert.equal(timers.delays.length, open, "a connection was closed after 299 ms of quiet");
        return timers.delays.includes(1);
      }, "the quiet connection to be re-armed for its last millisecond");
      assert.equal(proxy.activeConnections, open);
    };
    // 299 ms of quiet: A stays open.
    await fireOneShort(1_299, 2);
    assert.deepEqual(proxy.stats.snapshot().connections_closed, {});
    // 300 ms: A is closed, by that one firing.
    now = 1_300;
    timers.fire();
    assert.deepEqual(timers.delays, [300], "B (a REQ in flight) re-armed; A not: closed");
    assert.equal(await readText(a, 5000), "", "the idle connection is closed");
    await waitUntil(() => proxy.activeConnections === 1, "A's connection to end");
    assert.deepEqual(proxy.stats.snapshot().connections_closed, { idle_timeout: 1 });
    // B, quiet ten timeouts long but with a REQ in flight, is not closed...
    now = 4_000;
    timers.fire();
    assert.deepEqual(timers.delays, [300], "B re-armed for a full timeout");
    // ...so its reply arrives; then it idles out 300 ms after it, like A.
    await writeAll(serverB, "ACK 1\n");
    assert.deepEqual(await readLines(b, 1), ["ACK 1"]);
    await fireOneShort(4_299, 1);
    now = 4_300;
    timers.fire();
    assert.equal(await readText(b, 5000), "", "then it idles out too");
    await proxy.drained();
    assert.deepEqual(proxy.stats.snapshot().connections_closed, { idle_timeout: 2 });
  });
}

// ---------------------------------------------------------------------------------------------
// Upstream connect failures

Deno.test("backoffDelay doubles from the base, is capped, and jitters into [half, all]", () => {
  const at = (retry: number, random: number) =>
    backoffDelay(retry, { backoffMs: 100, maxBackoffMs: 1000, random: () => random });
  assert.deepEqual([1, 2, 3, 4, 5].map((r) => at(r, 0)), [50, 100, 200, 400, 500]);
  assert.deepEqual([1, 2, 3, 4, 5].map((r) => at(r, 0.999999)).map(Math.round), [
    100,
    200,
    400,
    800,
    1000,
  ]);
});

Deno.test("dialWithRetry makes 1 + retries attempts against a refused port, then throws", async () => {
  const port = freePort();
  const seen: number[] = [];
  await assert.rejects(
    dialWithRetry({ hostname: "127.0.0.1", port }, {
      retries: 3,
      backoffMs: 1,
      onRetry: (retry, delayMs, error) => {
        assert.ok(delayMs >= 0.5 * 2 ** (retry - 1) && delayMs <= 2 ** (retry - 1));
        assert.match(error.message, /connection refused/);
        seen.push(retry);
      },
    }),
    (error) => error instanceof UpstreamError && /connection refused/.test(error.message),
  );
  assert.deepEqual(seen, [1, 2, 3]);
});

for (const mode of ENGINE_MODES) {
  Deno.test(`upstream down at first: the proxy holds the client's first bytes and retries until it is up [${mode.name}]`, async () => {
    const port = freePort();
    await using proxy = await startProxy({ hostname: "127.0.0.1", port } as Deno.NetAddr, {
      ...mode.options,
      connectRetries: 8,
      connectBackoffMs: 40,
    });
    using client = await connectTo(proxy.addr);
    await writeAll(client, "REQ 1\nREQ 2 held while dialing\n");
    await waitUntil(() => proxy.stats.upstreamConnectRetries >= 1, "a failed connect attempt");
    await using _upstream = await startUpstream({ listen: { hostname: "127.0.0.1", port } });
    assert.deepEqual(await readLines(client, 2), ["ACK 1", "ACK 2"]);
    await writeAll(client, "REQ 3\n");
    assert.deepEqual(await readLines(client, 1), ["ACK 3"]);
    const snap = proxy.stats.snapshot();
    assert.equal(snap.upstream_errors, 0);
    assert.ok(snap.upstream_connect_retries >= 1);
    assert.equal(snap.msg_req, 3);
  });
}

for (const mode of ENGINE_MODES) {
  Deno.test(`upstream unreachable: after --connect-retries the client is closed and counted [${mode.name}]`, async () => {
    const port = freePort();
    await using proxy = await startProxy({ hostname: "127.0.0.1", port } as Deno.NetAddr, {
      ...mode.options,
      connectRetries: 2,
      connectBackoffMs: 1,
    });
    using client = await connectTo(proxy.addr);
    await writeAll(client, "REQ 1\n");
    assert.equal(await readText(client), "");
    await proxy.drained();
    const snap = proxy.stats.snapshot();
    assert.equal(snap.upstream_connect_retries, 2);
    assert.equal(snap.upstream_errors, 1);
    assert.deepEqual(snap.connections_closed, { upstream_unreachable: 1 });
  });
}

for (const mode of ENGINE_MODES) {
  Deno.test(`a client that leaves while the upstream is being retried is let go at once [${mode.name}]`, async () => {
    const port = freePort();
    await using proxy = await startProxy({ hostname: "127.0.0.1", port } as Deno.NetAddr, {
      ...mode.options,
      connectRetries: 50,
      connectBackoffMs: 200,
    });
    const client = await connectTo(proxy.addr);
    await waitUntil(() => proxy.stats.upstreamConnectRetries >= 1, "a failed connect attempt");
    client.close();
    await withTimeout(proxy.drained(), 5000, "the connection to end (retries would take minutes)");
    const snap = proxy.stats.snapshot();
    assert.equal(snap.upstream_errors, 0);
    assert.deepEqual(snap.connections_closed, { client_closed: 1 });
  });
}

// ---------------------------------------------------------------------------------------------
// Hostile input

for (const mode of ENGINE_MODES) {
  Deno.test(`hostile bytes are forwarded exactly and counted, and valid REQs among them answered [${mode.name}]`, async () => {
    using raw = listenLocal();
    await using proxy = await startProxy(raw.addr as Deno.NetAddr, mode.options);
    using client = await connectTo(proxy.addr);
    const longSeq = "9".repeat(10_000);
    const hostile = Uint8Array.from([
      ...encoder.encode("REQ 1\r\n"), // telnet: valid
      0,
      0,
      10, // NULs: invalid type
      ...encoder.encode("REQ 2 "),
      0xff,
      0xfe,
      0xc3,
      0x28,
      10, // invalid UTF-8 in the data: valid
      0xc3,
      0x28,
      ...encoder.encode(" 3\n"), // invalid UTF-8 type
      ...encoder.encode(`REQ ${longSeq}\n`), // a 10 000-digit Seq: valid, not representable
      ...encoder.encode(`REQ 12${"x".repeat(9_000)}\n`), // a long non-numeric Seq
      ...encoder.encode("\r\n\n"),
      ...encoder.encode("REQ 4\n"),
    ]);
    // Fragment it the hard way: one byte, then odd sizes.
    for (let i = 0; i < hostile.length;) {
      const size = i === 0 ? 1 : 1 + (i % 4093);
      await writeAll(client, hostile.subarray(i, i + size));
      i += size;
    }
    using server = await raw.accept();
    const got = new Uint8Array(hostile.length);
    for (let off = 0; off < got.length;) {
      const n = await withTimeout(server.read(got.subarray(off)), 5000, "the hostile bytes");
      assert.notEqual(n, null);
      off += n!;
    }
    assert.deepEqual(got, hostile);
    await writeAll(server, `ACK 1\nACK 2\nACK ${longSeq}\nACK 4\n`);
    assert.deepEqual(await readLines(client, 4), ["ACK 1", "ACK 2", `ACK ${longSeq}`, "ACK 4"]);
    const snap = proxy.stats.snapshot();
    assert.equal(snap.msg_req, 4);
    assert.equal(snap.msg_ack, 4);
    assert.deepEqual(snap.msg_invalid_by_kind, { type: 4, seq: 1, direction: 0, truncated: 0 });
  });
}

for (const mode of ENGINE_MODES) {
  Deno.test(`connections that open and close at once, and a client reset mid-message, leave others unharmed [${mode.name}]`, async () => {
    await using upstream = await startUpstream();
    await using proxy = await startProxy(upstream.addr, mode.options);
    using steady = await connectTo(proxy.addr);
    let seq = 0;
    const roundTrip = async () => {
      seq++;
      await writeAll(steady, `REQ ${seq}\n`);
      assert.deepEqual(await readLines(steady, 1), [`ACK ${seq}`]);
    };
    await roundTrip();
    // Churn: 200 connections that close at once, some after a partial line.
    await Promise.all(Array.from({ length: 200 }, async (_, i) => {
      const conn = await connectTo(proxy.addr);
      if (i % 2 === 1) await writeAll(conn, "REQ 1 no newline").catch(() => {});
      conn.close();
    }));
    await roundTrip();
    // A reset: unread data is pending when the client closes, so the kernel sends RST.
    const resetter = await connectTo(proxy.addr);
    await writeAll(resetter, "REQ 1\nREQ 2\n");
    const one = new Uint8Array(1);
    assert.equal(await withTimeout(resetter.read(one), 5000, "a reply byte"), 1); // "A", rest unread
    await writeAll(resetter, "REQ 3 half a mess");
    resetter.close();
    await roundTrip();
    await waitUntil(() => proxy.activeConnections === 1, "every short-lived connection to end");
    const snap = proxy.stats.snapshot();
    assert.equal(snap.connections_total, 202);
    assert.equal(snap.connections_active, 1);
    const closed = Object.values(snap.connections_closed).reduce((a, b) => a + (b ?? 0), 0);
    assert.equal(closed, 201);
    await roundTrip();
  });
}

for (const mode of ENGINE_MODES) {
  Deno.test(`the proxy process survives a 100 MB line, resets and churn, with flat RSS [${mode.name}]`, async () => {
    await using upstream = await startUpstream();
    const { child, port } = await spawnProxy(upstream.addr, mode.flags);
    await using _child = child;
    using steady = await connectTo(port);
    await writeAll(steady, "REQ 1\n");
    assert.deepEqual(await readLines(steady, 1), ["ACK 1"]);
    const before = await rssOf(child.pid);

    // "REQ 5 " and 100 MB with no newline. The server answers only after the newline, so the ACK
    // proves every byte went through; RSS is sampled while the line streams.
    const SIZE = 100 * 1000 * 1000;
    using big = await connectTo(port);
    const chunk = new Uint8Array(MiB).fill(0x61);
    await writeAll(big, "REQ 5 ");
    let peakRss = before;
    for (let sent = 0; sent < SIZE; sent += MiB) {
      await writeAll(big, sent + MiB <= SIZE ? chunk : chunk.subarray(0, SIZE - sent));
      if (sent % (8 * MiB) === 0) peakRss = Math.max(peakRss, await rssOf(child.pid));
    }
    peakRss = Math.max(peakRss, await rssOf(child.pid));
    await writeAll(big, "\n");
    assert.deepEqual(await readLines(big, 1, 30_000), ["ACK 5"]);
    assert.ok(
      peakRss - before < 48 * MiB,
      `RSS grew by ${((peakRss - before) / MiB).toFixed(1)} MiB for a 100 MB line`,
    );

    // Churn, and a client reset mid-message (unread reply bytes pending when it closes).
    await Promise.all(Array.from({ length: 100 }, async () => (await connectTo(port)).close()));
    const resetter = await connectTo(port);
    await writeAll(resetter, "REQ 1\nREQ 2\n");
    assert.equal(await withTimeout(resetter.read(new Uint8Array(1)), 5000, "a reply byte"), 1);
    await writeAll(resetter, "REQ 3 cut sh");
    resetter.close();

    await writeAll(steady, "REQ 2\n");
    assert.deepEqual(await readLines(steady, 1), ["ACK 2"]);
    steady.close();
    big.close();
    child.kill("SIGTERM");
    const snap = JSON.parse((await child.readLine(20_000)) ?? "null");
    assert.equal((await child.status()).code, 0);
    assert.equal(snap.msg_req, 5);
    assert.equal(snap.msg_ack, 5);
    assert.ok(snap.bytes_downstream > SIZE);
    assert.equal(snap.connections_total, 103);
    assert.equal(snap.connections_active, 0);
  });
}
