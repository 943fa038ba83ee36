import assert from "node:assert/strict";
import { getLogger } from "@logtape/logtape";
import { HttpBindError, startObservability } from "../src/cmd/observability.ts";
import { Proxy } from "../src/proxy/proxy.ts";
import { systemClock } from "../src/stats/clock.ts";
import { Stats } from "../src/stats/stats.ts";
import {
  connectTo,
  listenLocal,
  readLines,
  readText,
  startUpstream,
  withTimeout,
  writeAll,
} from "./_util.ts";

const LOCAL = { hostname: "127.0.0.1", port: 0 };
const logger = getLogger(["foo-proxy", "test"]);

async function startProxy(forward: Deno.NetAddr): Promise<Proxy> {
  const proxy = new Proxy({ listen: LOCAL, forward, stats: new Stats({ clock: systemClock }) });
  await proxy.start();
  return proxy;
}

function url(addr: Deno.NetAddr | undefined, path: string): string {
  assert.ok(addr, "served");
  return `http://${addr.hostname}:${addr.port}${path}`;
}

async function getJson(u: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(u);
  return { status: res.status, body: await res.json() };
}

Deno.test("the stats and health apps served for real report proxied traffic and its latency", async () => {
  await using upstream = await startUpstream({ nakEvery: 5 });
  await using proxy = await startProxy(upstream.addr);
  await using obs = await startObservability({
    stats: proxy.stats,
    listening: () => proxy.listening,
    forward: upstream.addr,
    maxConnections: 100,
    http: LOCAL,
    health: LOCAL,
    logger,
  });
  assert.notEqual(obs.httpAddr?.port, obs.healthAddr?.port);
  {
    using conn = await connectTo(proxy.addr);
    const reqs = Array.from({ length: 50 }, (_, i) => `REQ ${i + 1} payload\n`).join("");
    await writeAll(conn, reqs);
    const replies = await readLines(conn, 50);
    assert.equal(replies[4], "NAK 5");
  }
  const stats = await getJson(url(obs.httpAddr, "/stats"));
  assert.equal(stats.status, 200);
  assert.equal(stats.body.msg_req, 50);
  assert.equal(stats.body.msg_nak, 10);
  assert.equal(stats.body.latency_samples, 50);
  assert.equal(stats.body.unmatched_replies, 0);
  assert.ok((stats.body.latency_max_seconds as number) > 0);
  assert.ok(
    (stats.body.latency_p99_seconds as number) <= (stats.body.latency_max_seconds as number),
  );

  const metrics = await fetch(url(obs.httpAddr, "/metrics"));
  assert.equal(metrics.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const text = await metrics.text();
  assert.match(text, /^foo_proxy_request_duration_seconds_count 50$/m);
  assert.match(text, /^foo_proxy_messages_total\{direction="upstream",type="nak"\} 10$/m);

  const version = await getJson(url(obs.httpAddr, "/version"));
  assert.equal(version.body.deno, Deno.version.deno);
  assert.equal(version.body.target, Deno.build.target);

  assert.equal(await withTimeout(obs.firstProbe, 5000, "the first upstream probe"), true);
  const ready = await getJson(url(obs.healthAddr, "/readyz?verbose"));
  assert.equal(ready.status, 200, JSON.stringify(ready.body));
  assert.deepEqual(
    (ready.body.checks as { name: string }[]).map((c) => c.name),
    ["listener", "shutdown", "upstream", "connections"],
  );
  assert.equal((await getJson(url(obs.healthAddr, "/livez"))).status, 200);
  // Each app only on its own address.
  assert.equal((await getJson(url(obs.healthAddr, "/stats"))).status, 404);
  assert.equal((await getJson(url(obs.httpAddr, "/readyz"))).status, 404);

  obs.markStopping();
  const stopping = await getJson(url(obs.healthAddr, "/readyz"));
  assert.equal(stopping.status, 503);
  assert.deepEqual(stopping.body.failed, [{
    name: "shutdown",
    detail: "the proxy is shutting down",
  }]);
});

Deno.test("the same address for --http and --health serves both route sets on one server", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr);
  // Bind a free port first so both flags can name the same concrete address.
  const port = (() => {
    using l = listenLocal();
    return l.addr.port;
  })();
  const both = { hostname: "127.0.0.1", port };
  await using obs = await startObservability({
    stats: proxy.stats,
    listening: () => proxy.listening,
    forward: upstream.addr,
    maxConnections: 100,
    http: both,
    health: both,
    logger,
  });
  assert.equal(obs.httpAddr?.port, port);
  assert.equal(obs.healthAddr?.port, port);
  await obs.firstProbe;
  for (
    const path of [
      "/stats",
      "/metrics",
      "/version",
      "/health",
      "/heartbeat",
      "/status",
      "/livez",
      "/readyz",
    ]
  ) {
    const res: Response = await fetch(url(obs.httpAddr, path));
    await res.body?.cancel();
    assert.equal(res.status, 200, path);
  }
  const missing = await getJson(url(obs.httpAddr, "/nope"));
  assert.deepEqual(missing, { status: 404, body: { error: "not found", path: "/nope" } });
  const wrong = await fetch(url(obs.httpAddr, "/metrics"), { method: "POST" });
  await wrong.body?.cancel();
  assert.equal(wrong.status, 405);
  assert.equal(wrong.headers.get("allow"), "GET, HEAD");
});

Deno.test("an explicit HTTP address that cannot be bound is an error; a default one is skipped", async () => {
  await using upstream = await startUpstream();
  using taken = listenLocal();
  const busy = { hostname: "127.0.0.1", port: taken.addr.port };
  const stats = new Stats({ clock: systemClock });
  const base = { stats, listening: () => true, forward: upstream.addr, maxConnections: 1, logger };
  await assert.rejects(
    () => startObservability({ ...base, http: LOCAL, health: busy, required: { health: true } }),
    (error: unknown) => {
      assert.ok(error instanceof HttpBindError);
      assert.match(
        error.message,
        /Cannot serve health HTTP on "127\.0\.0\.1:\d+" \(--health\): address already in use/,
      );
      return true;
    },
  );
  await using obs = await startObservability({ ...base, http: busy, health: null });
  assert.equal(obs.httpAddr, undefined);
  assert.equal(obs.probe, undefined);
});

Deno.test("a stalled HTTP client blocks neither proxy traffic, nor other HTTP clients, nor shutdown", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr);
  const obs = await startObservability({
    stats: proxy.stats,
    listening: () => proxy.listening,
    forward: upstream.addr,
    maxConnections: 100,
    http: LOCAL,
    health: null,
    logger,
  });
  // Half a request, never finished.
  using stalled = await connectTo(obs.httpAddr!);
  await writeAll(stalled, "GET /metrics HTTP/1.1\r\nHost: x\r\n");
  // Round trips one after another, each answered within a bound far above a normal one.
  const ROUND_TRIPS = 100;
  {
    using conn = await connectTo(proxy.addr);
    for (let seq = 1; seq <= ROUND_TRIPS; seq++) {
      await writeAll(conn, `REQ ${seq}\n`);
      assert.deepEqual(await readLines(conn, 1, 2000), [`ACK ${seq}`]);
    }
  }
  // Another HTTP client is answered beside the stalled one, and sees that traffic.
  const stats = await withTimeout(getJson(url(obs.httpAddr, "/stats")), 2000, "/stats");
  assert.equal(stats.status, 200);
  assert.equal(stats.body.msg_req, ROUND_TRIPS);
  assert.equal(stats.body.msg_ack, ROUND_TRIPS);
  await withTimeout(obs.close(), 5000, "the HTTP servers to close");
  assert.equal(await readText(stalled, 5000), "", "the stalled request is closed unanswered");
});
