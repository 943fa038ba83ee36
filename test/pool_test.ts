/**
 * `--pool N`: a client that ends cleanly leaves its upstream connection in an idle pool, and the
 * next client takes it instead of dialing. Real sockets, our Foo server upstream; every wait is on
 * an event or a counter with a deadline.
 */
import assert from "node:assert/strict";
import type { AccessRecord } from "../src/proxy/access_log.ts";
import type { ProxyOptions } from "../src/proxy/proxy.ts";
import { UpstreamPool } from "../src/proxy/upstream_pool.ts";
import type { FooServer } from "../src/tools/server.ts";
import type { Proxy } from "../src/proxy/proxy.ts";
import {
  acks,
  connectTo,
  ENGINE_MODES,
  fakeTimers,
  readLines,
  readText,
  requests,
  spawnProxy,
  startProxy,
  startUpstream,
  waitUntil,
  writeAll,
} from "./_util.ts";

/**
 * One short client: sends REQs `from`..`to`, reads exactly their ACKs, half-closes and waits for
 * the proxy to close (by then a clean end has pooled the upstream connection).
 */
async function shortClient(port: number, from: number, to: number): Promise<void> {
  const conn = await connectTo(port);
  try {
    await writeAll(conn, requests(from, to));
    assert.deepEqual(await readLines(conn, to - from + 1), acks(from, to));
    await conn.closeWrite();
    assert.equal(await readText(conn), "", "nothing after the replies");
  } finally {
    conn.close();
  }
}

/** A client that leaves as `send` says, then waits for the proxy to close it. */
async function leavingClient(port: number, send: (conn: Deno.TcpConn) => Promise<void>) {
  const conn = await connectTo(port);
  try {
    await send(conn);
    await conn.closeWrite();
    await readText(conn, 5000);
  } finally {
    conn.close();
  }
}

for (const mode of ENGINE_MODES) {
  Deno.test(`--pool 4: 100 sequential short clients share at most 4 upstream connections, each getting its own replies (${mode.name})`, async () => {
    await using upstream = await startUpstream();
    await using proxy = await startProxy(upstream.addr, { ...mode.options, pool: 4 });
    for (let i = 0; i < 100; i++) await shortClient(proxy.addr.port, i * 10 + 1, i * 10 + 3);
    assert.ok(upstream.accepted <= 4, `upstream accepted ${upstream.accepted} connections`);
    assert.equal(proxy.stats.upstreamPoolReused, 100 - upstream.accepted);
    assert.equal(proxy.stats.counts.msg_req, 300);
    assert.equal(proxy.stats.counts.msg_ack, 300);
    assert.equal(upstream.requests, 300);
    await waitUntil(() => proxy.stats.connectionsActive === 0, "clients to be counted closed");
    assert.deepEqual(proxy.stats.closed, { client_closed: 100 });
    assert.equal(proxy.stats.upstreamPoolIdle, 1);
  });
}

Deno.test("without --pool every client dials its own upstream connection (the default)", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr);
  for (let i = 0; i < 5; i++) await shortClient(proxy.addr.port, 1, 2);
  assert.equal(upstream.accepted, 5);
  assert.equal(proxy.stats.upstreamPoolReused, 0);
  assert.equal(proxy.stats.upstreamPoolIdle, 0);
});

/** A pooled proxy with one idle connection in it (after one client). */
async function pooledOnce(
  upstream: FooServer,
  options: Partial<ProxyOptions> = {},
): Promise<Proxy> {
  const proxy = await startProxy(upstream.addr, { pool: 4, ...options });
  await shortClient(proxy.addr.port, 1, 2);
  assert.equal(proxy.stats.upstreamPoolIdle, 1);
  assert.equal(upstream.accepted, 1);
  return proxy;
}

Deno.test("--pool: a pooled connection the server closes while idle is discarded, never handed out", async () => {
  await using upstream = await startUpstream();
  await using proxy = await pooledOnce(upstream);
  upstream.dropConnections();
  await waitUntil(() => proxy.stats.upstreamPoolDiscarded === 1, "the discard");
  assert.equal(proxy.stats.upstreamPoolIdle, 0);
  await shortClient(proxy.addr.port, 7, 9);
  assert.equal(upstream.accepted, 2, "the next client got a fresh connection");
  assert.equal(proxy.stats.upstreamPoolReused, 0);
  assert.equal(proxy.stats.upstreamStreamErrors + proxy.stats.upstreamErrors, 0);
});

for (const mode of ENGINE_MODES) {
  Deno.test(`--pool: a pooled connection the server closes as it is handed out, before the client sent a byte, is replaced by a fresh one (${mode.name})`, async () => {
    await using upstream = await startUpstream();
    await using proxy = await pooledOnce(upstream, mode.options);
    using conn = await connectTo(proxy.addr.port);
    await waitUntil(
      () => proxy.stats.upstreamPoolReused === 1,
      "the client to take the pooled one",
    );
    // The server closes it (its idle timeout, say) before the new client's first REQ.
    upstream.dropConnections();
    // Plain mode has an upstream connection before it reads the client (it dials again at once);
    // --resume dials again when the client speaks.
    const settled = mode.options.resume === undefined
      ? () => upstream.accepted === 2 || proxy.stats.connectionsActive === 0
      : () => upstream.connections === 0;
    await waitUntil(settled, "the proxy to see the close");
    await writeAll(conn, requests(5, 6));
    assert.deepEqual(await readLines(conn, 2), acks(5, 6), "served on a fresh connection");
    assert.equal(upstream.accepted, 2);
    await conn.closeWrite();
    assert.equal(await readText(conn), "");
    assert.equal(proxy.stats.upstreamErrors, 0, "nothing failed that the client could see");
  });
}

Deno.test("--pool: unsolicited bytes on an idle pooled connection discard it; the next client never sees them", async () => {
  await using upstream = await startUpstream();
  await using proxy = await pooledOnce(upstream);
  await upstream.sendUnsolicited("ACK 8\n");
  await waitUntil(() => proxy.stats.upstreamPoolDiscarded === 1, "the discard");
  assert.equal(proxy.stats.upstreamPoolIdle, 0);
  // ACK 8 would answer this client's REQ 8 wrongly, had the connection been handed out.
  await shortClient(proxy.addr.port, 7, 9);
  assert.equal(upstream.accepted, 2);
  assert.equal(proxy.stats.counts.msg_ack, 5, "the unsolicited line was never relayed or counted");
});

Deno.test("--pool: an idle connection is closed after --pool-idle-timeout", async () => {
  const timers = fakeTimers();
  await using upstream = await startUpstream();
  await using proxy = await pooledOnce(upstream, { timers, poolIdleTimeoutMs: 30_000 });
  assert.ok(timers.delays.includes(30_000), `armed: ${timers.delays}`);
  timers.fire();
  assert.equal(proxy.stats.upstreamPoolExpired, 1);
  assert.equal(proxy.stats.upstreamPoolIdle, 0);
  await waitUntil(() => upstream.connections === 0, "the upstream to see the close");
  await shortClient(proxy.addr.port, 3, 4);
  assert.equal(upstream.accepted, 2);
});

for (
  const [what, send] of [
    [
      "with REQs owed",
      (conn: Deno.TcpConn) => writeAll(conn, "REQ 1\nREQ 2\n"),
    ],
    [
      "with a partial line",
      async (conn: Deno.TcpConn) => {
        await writeAll(conn, "REQ 1\n");
        await readLines(conn, 1);
        await writeAll(conn, "REQ 2 half");
      },
    ],
    [
      "after an invalid line the server does not answer",
      async (conn: Deno.TcpConn) => {
        await writeAll(conn, "REQ 1\nbogus\n");
        await readLines(conn, 1);
      },
    ],
  ] as const
) {
  Deno.test(`--pool: a client that leaves ${what} does not get its connection pooled`, async () => {
    // Replies come well after the client's FIN: the REQs are still owed when it ends.
    await using upstream = await startUpstream({ delayMs: 100 });
    await using proxy = await startProxy(upstream.addr, { pool: 4, lingerMs: 50 });
    await leavingClient(proxy.addr.port, send);
    await waitUntil(() => proxy.stats.connectionsActive === 0, "the client to end");
    assert.equal(proxy.stats.upstreamPoolIdle, 0);
    await waitUntil(() => upstream.connections === 0, "the upstream connection to close");
    await shortClient(proxy.addr.port, 5, 6);
    assert.equal(upstream.accepted, 2, "the next client dialed");
    assert.equal(proxy.stats.upstreamPoolReused, 0);
  });
}

Deno.test("--pool: an invalid line the server answers (NAK 0) still ends clean, and is pooled", async () => {
  await using upstream = await startUpstream({ answerInvalid: true });
  await using proxy = await startProxy(upstream.addr, { pool: 4 });
  await leavingClient(proxy.addr.port, async (conn) => {
    await writeAll(conn, "REQ 1\nbogus\n");
    assert.deepEqual(await readLines(conn, 2), ["ACK 1", "NAK 0 ERRDECODE"]);
  });
  assert.equal(proxy.stats.upstreamPoolIdle, 1);
});

Deno.test("--pool: shutdown closes the idle pooled connections", async () => {
  await using upstream = await startUpstream();
  const proxy = await pooledOnce(upstream);
  assert.equal(upstream.connections, 1);
  await proxy.close();
  assert.equal(proxy.stats.upstreamPoolIdle, 0);
  await waitUntil(() => upstream.connections === 0, "the upstream to see the close");
});

Deno.test("--pool: a client that ends while the proxy drains is not pooled", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr, { pool: 4 });
  const conn = await connectTo(proxy.addr.port);
  try {
    await writeAll(conn, "REQ 1\n");
    await readLines(conn, 1);
    proxy.stopAccepting();
    await conn.closeWrite();
    await readText(conn);
  } finally {
    conn.close();
  }
  await waitUntil(() => upstream.connections === 0, "the upstream connection to close");
  assert.equal(proxy.stats.upstreamPoolIdle, 0);
});

Deno.test("--pool: the access log has one line per client, with its own figures", async () => {
  await using upstream = await startUpstream();
  const records: AccessRecord[] = [];
  await using proxy = await startProxy(upstream.addr, {
    pool: 4,
    accessLog: (record) => records.push(record),
  });
  await shortClient(proxy.addr.port, 1, 1);
  await shortClient(proxy.addr.port, 1, 2);
  await shortClient(proxy.addr.port, 1, 3);
  await waitUntil(() => records.length === 3, "three access-log records");
  assert.deepEqual(records.map((r) => [r.reqs, r.acks, r.reason]), [
    [1, 1, "client_closed"],
    [2, 2, "client_closed"],
    [3, 3, "client_closed"],
  ]);
  assert.equal(upstream.accepted, 1);
});

Deno.test("--pool: draining or ejecting an upstream closes its idle connections; one drained pools none", async () => {
  await using upstream = await startUpstream();
  const counters = {
    upstreamPoolReused: 0,
    upstreamPoolIdle: 0,
    upstreamPoolDiscarded: 0,
    upstreamPoolExpired: 0,
  };
  await using pool = new UpstreamPool([{ name: "a", address: upstream.addr, weight: 1 }], {
    intervalMs: 0,
    idleMax: 4,
    idleCounters: counters,
  });
  await using proxy = await startProxy(upstream.addr, { target: pool });
  const port = proxy.addr.port;
  await shortClient(port, 1, 2);
  assert.equal(counters.upstreamPoolIdle, 1);
  assert.equal(pool.snapshot()[0].connections_active, 0, "an idle connection is not active");
  assert.ok(pool.drain("a"));
  assert.equal(counters.upstreamPoolIdle, 0);
  await waitUntil(() => upstream.connections === 0, "the idle connection to close");
  // Draining with one upstream: a dial fails, so hold a client from before the drain instead.
  assert.ok(pool.enable("a"));
  const held = await connectTo(port);
  try {
    await writeAll(held, "REQ 1\n");
    await readLines(held, 1);
    pool.drain("a");
    await held.closeWrite();
    await readText(held);
  } finally {
    held.close();
  }
  assert.equal(counters.upstreamPoolIdle, 0, "a draining upstream's connection is not pooled");
  pool.enable("a");
  await shortClient(port, 1, 2);
  assert.equal(counters.upstreamPoolIdle, 1);
  pool.applyStates({
    a: {
      healthy: true,
      ejected: true,
      ejectedForMs: 30_000,
      awaitingFirstCheck: false,
      draining: false,
    },
  });
  assert.equal(counters.upstreamPoolIdle, 0, "an ejected upstream's idle list is emptied");
  await waitUntil(() => upstream.connections === 0, "the idle connection to close");
  assert.equal(counters.upstreamPoolReused, 0);
  // A reload that removes the upstream closes its idle connections too.
  pool.applyStates({
    a: {
      healthy: true,
      ejected: false,
      ejectedForMs: 0,
      awaitingFirstCheck: false,
      draining: false,
    },
  });
  await shortClient(port, 1, 2);
  assert.equal(counters.upstreamPoolIdle, 1);
  pool.update([{ name: "b", address: upstream.addr, weight: 1 }]);
  assert.equal(counters.upstreamPoolIdle, 0, "a removed upstream's idle list is emptied");
  await shortClient(port, 1, 2);
  assert.equal(counters.upstreamPoolIdle, 1, "the new upstream pools its own");
});

Deno.test("--pool 4 --workers 2: each worker pools its own connections; the stats add up", async () => {
  await using upstream = await startUpstream();
  const { child, port } = await spawnProxy(upstream.addr, [
    "--pool=4",
    "--workers=2",
    "--health-interval=0",
  ]);
  await using _child = child;
  for (let i = 0; i < 20; i++) await shortClient(port, i * 10 + 1, i * 10 + 2);
  assert.ok(upstream.accepted <= 2, `upstream accepted ${upstream.accepted}`);
  child.kill("SIGUSR2");
  const line = JSON.parse((await child.readLine()) ?? "null");
  assert.equal(line.msg_req, 40);
  assert.equal(line.msg_ack, 40);
  assert.equal(line.upstream_pool_reused, 20 - upstream.accepted);
  assert.equal(line.upstream_pool_idle, upstream.accepted);
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0, child.stderr.text);
  await waitUntil(() => upstream.connections === 0, "the pooled connections to close");
});
