/**
 * Several upstreams (issue 12): balancing by policy and weight, Foo-aware health checks, passive
 * ejection, failover of connects and of --resume, over real sockets with our own Foo servers.
 */
import assert from "node:assert/strict";
import { parseUpstreams } from "../src/cli/upstreams.ts";
import { constantTimeEqual, createStatsApp } from "../src/http/stats_app.ts";
import { Stats } from "../src/stats/stats.ts";
import { checkUpstream } from "../src/proxy/health_check.ts";
import { type BalancePolicy, UpstreamPool } from "../src/proxy/upstream_pool.ts";
import { hashReply } from "../src/protocol/reply_hash.ts";
import { FooServer } from "../src/tools/server.ts";
import {
  connectTo,
  LineReader,
  requests,
  startProxy,
  startUpstream,
  waitUntil,
  writeAll,
} from "./_util.ts";

const LOCAL = "127.0.0.1";

function specs(servers: { addr: Deno.NetAddr }[], weights: number[] = []) {
  return servers.map((s, i) => ({
    name: `u${i}`,
    address: { hostname: LOCAL, port: s.addr.port },
    weight: weights[i] ?? 1,
  }));
}

/** Opens `count` clients through `proxy`, each answered once; returns them (still open). */
async function clients(port: number, count: number): Promise<Deno.TcpConn[]> {
  const conns: Deno.TcpConn[] = [];
  for (let k = 1; k <= count; k++) {
    const conn = await connectTo(port);
    conns.push(conn);
    await writeAll(conn, `REQ ${k}\n`);
    await new LineReader(conn).readLines(1);
  }
  return conns;
}

Deno.test("parseUpstreams: lists, repeated values, names and weights; bad entries are named", () => {
  assert.deepEqual(parseUpstreams(["a:1,b:2*3", "c=127.0.0.1:3"]), [
    { name: "a:1", address: { hostname: "a", port: 1 }, weight: 1 },
    { name: "b:2", address: { hostname: "b", port: 2 }, weight: 3 },
    { name: "c", address: { hostname: "127.0.0.1", port: 3 }, weight: 1 },
  ]);
  assert.throws(() => parseUpstreams(["a:1,"]), /an empty entry/);
  assert.throws(() => parseUpstreams(["a:1*0"]), /invalid weight/);
  assert.throws(() => parseUpstreams(["a:1,a:1"]), /given twice/);
});

for (
  const [policy, weights, expected] of [
    ["leastconn", [1, 3], [10, 30]],
    ["roundrobin", [1, 3], [10, 30]],
    ["first", [1, 3], [40, 0]],
  ] as [BalancePolicy, number[], number[]][]
) {
  Deno.test(`${policy} with weights ${weights.join(":")} spreads 40 long-lived clients ${expected.join(":")}`, async () => {
    await using a = await startUpstream();
    await using b = await startUpstream();
    await using pool = new UpstreamPool(specs([a, b], weights), { policy, intervalMs: 0 });
    await using proxy = await startProxy(a.addr, { target: pool });
    const conns = await clients(proxy.addr.port, 40);
    try {
      assert.deepEqual([a.connections, b.connections], expected);
      assert.deepEqual(pool.snapshot().map((u) => u.connections_active), expected);
    } finally {
      for (const conn of conns) conn.close();
    }
  });
}

Deno.test("a Foo health check finds a server that accepts but never answers; a TCP check would not", async () => {
  await using silent = await startUpstream({ silent: true });
  await using good = await startUpstream();
  const foo = await checkUpstream(silent.addr, { timeoutMs: 200 });
  assert.equal(foo.ok, false);
  assert.match(foo.error ?? "", /no answer to the probe within 200 ms/);
  assert.equal((await checkUpstream(silent.addr, { mode: "tcp", timeoutMs: 200 })).ok, true);
  assert.equal((await checkUpstream(good.addr, { timeoutMs: 1000 })).ok, true);
});

Deno.test("an upstream that fails its checks goes down after the fall threshold, gets no new client, and comes back", async () => {
  await using a = await startUpstream();
  const b = new FooServer({ listen: { hostname: LOCAL, port: 0 }, silent: true });
  const bAddr = await b.start();
  await using pool = new UpstreamPool(specs([a, { addr: bAddr }]), {
    policy: "roundrobin",
    intervalMs: 20,
    checkTimeoutMs: 100,
    fall: 2,
    rise: 2,
  });
  pool.start();
  await using proxy = await startProxy(a.addr, { target: pool });
  try {
    await waitUntil(() => pool.snapshot()[1].state === "down", "u1 to be marked down");
    assert.match(pool.detail, /u1 \(down: no answer to the probe/);
    const before = bAddr.port;
    const conns = await clients(proxy.addr.port, 10);
    for (const conn of conns) conn.close();
    assert.equal(pool.snapshot()[1].connections_total, 0, `no client went to :${before}`);
    assert.equal(pool.snapshot()[0].connections_total, 10);
  } finally {
    await b.close();
  }
  // A working server on its port brings it back after `rise` good checks.
  await using back = new FooServer({ listen: { hostname: LOCAL, port: bAddr.port } });
  await back.start();
  await waitUntil(() => pool.snapshot()[1].state === "up", "u1 to come back", 5000);
  assert.equal(pool.reachable, true);
});

Deno.test("connect failures in a row eject an upstream at once, and a refused connect is retried on another", async () => {
  await using a = await startUpstream();
  const gone = Deno.listen({ hostname: LOCAL, port: 0 });
  const deadAddr = gone.addr as Deno.NetAddr;
  gone.close(); // refused from now on
  await using pool = new UpstreamPool(specs([{ addr: deadAddr }, a]), {
    policy: "first",
    intervalMs: 0,
    ejectAfter: 3,
    ejectMs: 60_000,
  });
  await using proxy = await startProxy(a.addr, { target: pool, connectRetries: 1 });
  const conns = await clients(proxy.addr.port, 5); // each would go to u0 first
  for (const conn of conns) conn.close();
  const [dead, live] = pool.snapshot();
  assert.equal(live.connections_total, 5, "every client served by the other upstream");
  assert.equal(dead.connect_failures, 3, "tried until ejected, then passed over");
  assert.equal(dead.state, "ejected");
  assert.equal(dead.ejections, 1);
  assert.equal(proxy.stats.snapshot().connections_closed.upstream_unreachable ?? 0, 0);
});

Deno.test("--resume across upstreams: one killed under load, every client gets every reply, the right one", async () => {
  const options = { listen: { hostname: LOCAL, port: 0 }, reply: "hash" as const, delayMs: 30 };
  const a = new FooServer(options);
  const b = new FooServer(options);
  await a.start();
  await b.start();
  await using pool = new UpstreamPool(specs([a, b]), { policy: "roundrobin", intervalMs: 0 });
  await using proxy = await startProxy(a.addr, { target: pool, resume: "verbatim" });
  const conns = await Promise.all(Array.from({ length: 6 }, () => connectTo(proxy.addr)));
  try {
    await Promise.all(conns.map((c, k) => writeAll(c, requests(100 * k + 1, 100 * k + 50, "x"))));
    await waitUntil(() => a.received > 0 && b.received > 0, "both upstreams to have work");
    await b.close(); // dies with replies owed
    const lines = await Promise.all(conns.map((c) => new LineReader(c).readLines(50, 15_000)));
    lines.forEach((got, k) => {
      const want = Array.from({ length: 50 }, (_, i) => hashReply(`REQ ${100 * k + i + 1} x`));
      assert.deepEqual(got, want, `client ${k}`);
    });
    assert.ok(proxy.stats.failovers >= 1);
  } finally {
    for (const conn of conns) conn.close();
    await a.close();
  }
});

Deno.test("POST /upstreams/NAME/drain: no new client goes there, open ones finish; enable undoes it", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  await using pool = new UpstreamPool(specs([a, b]), { policy: "roundrobin", intervalMs: 0 });
  await using proxy = await startProxy(a.addr, { target: pool });
  const app = createStatsApp({ stats: proxy.stats, upstreams: pool, writes: { loopback: true } });
  const open = await clients(proxy.addr.port, 2); // one on each
  const drained = await app.request("/upstreams/u1/drain", { method: "POST" });
  assert.deepEqual(await drained.json(), { name: "u1", state: "draining" });
  const more = await clients(proxy.addr.port, 6);
  assert.equal(pool.snapshot()[1].connections_total, 1, "none new on the drained one");
  // The client already on u1 is still served.
  await writeAll(open[1], "REQ 77\n");
  assert.deepEqual(await new LineReader(open[1]).readLines(1), ["ACK 77"]);
  assert.equal((await app.request("/upstreams/nope/drain", { method: "POST" })).status, 404);
  assert.equal((await app.request("/upstreams/u1/drain")).status, 405);
  const enabled = await app.request("/upstreams/u1/enable", { method: "POST" });
  assert.equal((await enabled.json()).state, "up");
  for (const conn of [...open, ...more]) conn.close();
});

Deno.test("the write endpoints refuse a browser's cross-site request (CSRF), even on loopback", async () => {
  await using a = await startUpstream();
  await using pool = new UpstreamPool(specs([a]), { intervalMs: 0 });
  const stats = new Stats({ clock: () => 0 });
  const app = createStatsApp({ stats, upstreams: pool, writes: { loopback: true } });
  const post = (headers: Record<string, string>) =>
    app.request("http://127.0.0.1:8088/upstreams/u0/drain", {
      method: "POST",
      headers: { host: "127.0.0.1:8088", ...headers },
    });
  for (
    const headers of [
      { origin: "http://evil.example" } as Record<string, string>,
      { origin: "null" },
      { "sec-fetch-site": "cross-site" },
      { "sec-fetch-site": "same-site", origin: "http://127.0.0.1:8088" },
    ]
  ) {
    const refused = await post(headers);
    assert.equal(refused.status, 403, JSON.stringify(headers));
    assert.match((await refused.json()).error, /cross-site/);
  }
  assert.equal(pool.snapshot()[0].state, "up", "nothing was drained");
  // The dashboard's own origin, and curl (no Origin at all), may.
  assert.equal((await post({ origin: "http://127.0.0.1:8088" })).status, 200);
  assert.equal((await post({ "sec-fetch-site": "same-origin" })).status, 200);
  assert.equal((await post({})).status, 200);
});

Deno.test("the write endpoints refuse off loopback without a token, and check the token", async () => {
  await using a = await startUpstream();
  await using pool = new UpstreamPool(specs([a]), { intervalMs: 0 });
  const stats = new Stats({ clock: () => 0 });
  const open = createStatsApp({ stats, upstreams: pool, writes: { loopback: false } });
  const refused = await open.request("/upstreams/u0/drain", { method: "POST" });
  assert.equal(refused.status, 403);
  assert.match((await refused.json()).error, /--admin-token/);
  const guarded = createStatsApp({
    stats,
    upstreams: pool,
    writes: { loopback: false, token: "s3cret" },
  });
  const post = (auth?: string) =>
    guarded.request("/upstreams/u0/drain", {
      method: "POST",
      headers: auth ? { authorization: auth } : {},
    });
  assert.equal((await post()).status, 401);
  assert.equal((await post("Bearer s3cre")).status, 401);
  assert.equal((await post("Bearer s3cret!")).status, 401);
  assert.equal((await post("Bearer s3cret")).status, 200);
  assert.equal(pool.snapshot()[0].state, "draining");
  assert.equal(constantTimeEqual("abc", "abc"), true);
  assert.equal(constantTimeEqual("abc", "abd"), false);
  assert.equal(constantTimeEqual("", "a"), false);
});

Deno.test("/stats and the SIGUSR2 object carry one block per upstream; /metrics labels them by name", async () => {
  await using a = await startUpstream();
  await using pool = new UpstreamPool(specs([a]), { intervalMs: 0 });
  const stats = new Stats({ clock: () => 0 });
  stats.upstreams = () => pool.snapshot();
  const snap = stats.snapshot();
  assert.equal(snap.upstreams.length, 1);
  assert.equal(snap.upstreams[0].name, "u0");
  assert.equal(snap.upstreams[0].state, "up");
  const metrics = await (await createStatsApp({ stats }).request("/metrics")).text();
  assert.match(metrics, /foo_proxy_upstream_state\{upstream="u0",state="up"\} 1/);
  assert.match(metrics, /foo_proxy_upstream_connections_total\{upstream="u0"\} 0/);
});

Deno.test("without active checks an ejection ends when its time is up", async () => {
  const gone = Deno.listen({ hostname: LOCAL, port: 0 });
  const deadAddr = gone.addr as Deno.NetAddr;
  gone.close();
  let now = 0;
  await using pool = new UpstreamPool(specs([{ addr: deadAddr }]), {
    intervalMs: 0,
    ejectAfter: 1,
    ejectMs: 1000,
    now: () => now,
  });
  await assert.rejects(pool.dial());
  assert.equal(pool.snapshot()[0].state, "ejected");
  now = 999;
  assert.equal(pool.snapshot()[0].state, "ejected");
  now = 1000;
  assert.equal(pool.snapshot()[0].state, "up");
});

Deno.test("leastconn counts connects under way: 40 clients arriving together spread 20:20", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  await using pool = new UpstreamPool(specs([a, b]), { policy: "leastconn", intervalMs: 0 });
  await using proxy = await startProxy(a.addr, { target: pool });
  const conns = await Promise.all(Array.from({ length: 40 }, () => connectTo(proxy.addr)));
  try {
    await Promise.all(conns.map((c, k) => writeAll(c, `REQ ${k + 1}\n`)));
    await Promise.all(conns.map((c) => new LineReader(c).readLines(1)));
    assert.deepEqual(pool.snapshot().map((u) => u.connections_active), [20, 20]);
  } finally {
    for (const conn of conns) conn.close();
  }
});

Deno.test("UpstreamPool: an upstream removed while a connect to it is under way still lists that connection as draining", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  const [specA, specB] = specs([a, b]);
  await using pool = new UpstreamPool([specA], { intervalMs: 0 });
  const dialing = pool.dial(); // picks u0 now; the connect completes after the reload
  pool.update([{ ...specB, name: "u1" }]);
  const lease = await dialing;
  try {
    assert.equal(lease.upstream, "u0");
    const row = pool.snapshot().find((r) => r.name === "u0");
    assert.ok(row, "the removed upstream with an open connection is listed");
    assert.equal(row.state, "draining");
    assert.equal(row.connections_active, 1);
    assert.equal(row.connections_total, 1);
  } finally {
    lease.conn.close();
    lease.release?.(false);
  }
  assert.deepEqual(pool.snapshot().map((r) => r.name), ["u1"]);
});
