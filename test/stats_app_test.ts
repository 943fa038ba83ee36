import assert from "node:assert/strict";
import { combineApps } from "../src/http/combine_apps.ts";
import { createHealthApp } from "../src/http/health_app.ts";
import { createStatsApp } from "../src/http/stats_app.ts";
import { MSG_ACK, MSG_REQ } from "../src/protocol/analyzer.ts";
import { LatencyStats, LatencyTracker } from "../src/stats/latency.ts";
import { Stats } from "../src/stats/stats.ts";

function fixture() {
  const now = 5_000;
  const stats = new Stats({ clock: () => now });
  stats.counts.msg_req = 3;
  stats.counts.msg_ack = 2;
  stats.connectionsTotal = 1;
  stats.recordClose("client_closed");
  const latency = new LatencyStats();
  const t = new LatencyTracker(latency);
  t.setTime(0);
  t.onMessage(MSG_REQ, 1);
  t.onMessage(MSG_REQ, 2);
  t.setTime(4);
  t.onMessage(MSG_ACK, 1);
  t.onMessage(MSG_ACK, 2);
  t.onMessage(MSG_ACK, 2);
  const source = { snapshot: () => stats.snapshot(), latency };
  return { stats, latency, source };
}

Deno.test("GET /stats returns the snapshot fields plus the latency figures", async () => {
  const { stats, source } = fixture();
  const app = createStatsApp({ stats: source });
  const res = await app.request("/stats");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
  assert.equal(res.headers.get("cache-control"), "no-store");
  const body = await res.json();
  const snapshot = stats.snapshot();
  for (const [key, value] of Object.entries(snapshot)) assert.deepEqual(body[key], value, key);
  assert.equal(body.msg_total, 5);
  assert.equal(body.latency_samples, 2);
  assert.equal(body.latency_max_seconds, 0.004);
  assert.ok(body.latency_p50_seconds > 0 && body.latency_p50_seconds <= 0.004);
  assert.ok(body.latency_p99_seconds >= body.latency_p50_seconds);
  assert.equal(body.unmatched_replies, 1);
  assert.equal(body.duplicate_seq, 0);
  assert.equal(body.untracked_requests, 0);
  assert.equal(body.requests_in_flight, 0);
});

Deno.test("GET /stats works with a plain Stats (no latency tracked): figures are 0", async () => {
  const stats = new Stats({ clock: () => 0 });
  const body = await (await createStatsApp({ stats }).request("/stats")).json();
  assert.equal(body.msg_total, 0);
  assert.equal(body.latency_p99_seconds, 0);
  assert.equal(body.unmatched_replies, 0);
});

Deno.test("GET /metrics serves Prometheus text 0.0.4", async () => {
  const { source } = fixture();
  const app = createStatsApp({ stats: source, version: "7.7.7" });
  const res = await app.request("/metrics");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const text = await res.text();
  assert.match(text, /^foo_proxy_build_info\{version="7\.7\.7"\} 1$/m);
  assert.match(text, /^foo_proxy_messages_total\{direction="downstream",type="req"\} 3$/m);
  assert.match(text, /^foo_proxy_request_duration_seconds_count 2$/m);
});

Deno.test("GET /version reports the versions handed in", async () => {
  const { source } = fixture();
  const app = createStatsApp({
    stats: source,
    version: "1.0.0",
    denoVersion: "2.9.6",
    target: "x86_64-unknown-linux-gnu",
  });
  const res = await app.request("/version");
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {
    version: "1.0.0",
    deno: "2.9.6",
    target: "x86_64-unknown-linux-gnu",
  });
});

Deno.test("the stats app answers an unknown path with 404 JSON naming the path", async () => {
  const app = createStatsApp({ stats: fixture().source });
  for (const path of ["/nope", "/stats/extra", "/index.html"]) {
    const res = await app.request(path);
    assert.equal(res.status, 404, path);
    assert.deepEqual(await res.json(), { error: "not found", path });
  }
});

Deno.test("the stats app answers a wrong method with 405 JSON and an Allow header", async () => {
  const app = createStatsApp({ stats: fixture().source });
  for (const method of ["POST", "PUT", "DELETE", "PATCH"]) {
    for (const path of ["/stats", "/metrics", "/version"]) {
      const res = await app.request(path, { method });
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.equal(res.headers.get("allow"), "GET, HEAD");
      const body = await res.json();
      assert.equal(body.error, "method not allowed");
      assert.equal(body.method, method);
    }
  }
});

Deno.test("the stats app answers HEAD like GET without a body", async () => {
  const res = await createStatsApp({ stats: fixture().source }).request("/metrics", {
    method: "HEAD",
  });
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "");
});

Deno.test("the stats app hides a failing stats source behind a 500 JSON", async () => {
  const broken = {
    snapshot(): never {
      throw new Error("secret detail");
    },
  };
  const res = await createStatsApp({ stats: broken }).request("/stats");
  assert.equal(res.status, 500);
  const text = await res.text();
  assert.doesNotMatch(text, /secret/);
  assert.deepEqual(JSON.parse(text), { error: "internal error" });
});

Deno.test("combineApps() serves both route sets with JSON 404 and 405", async () => {
  const { source } = fixture();
  const app = combineApps(createStatsApp({ stats: source }), createHealthApp());
  assert.equal((await app.request("/stats")).status, 200);
  assert.equal((await app.request("/metrics")).status, 200);
  assert.equal((await app.request("/livez")).status, 200);
  assert.equal((await app.request("/readyz")).status, 200);
  const missing = await app.request("/missing");
  assert.equal(missing.status, 404);
  assert.deepEqual(await missing.json(), { error: "not found", path: "/missing" });
  const wrong = await app.request("/readyz", { method: "POST" });
  assert.equal(wrong.status, 405);
  assert.equal(wrong.headers.get("allow"), "GET, HEAD");
  const wrong2 = await app.request("/stats", { method: "DELETE" });
  assert.equal(wrong2.status, 405);
});

Deno.test("every answer of the stats app is Cache-Control: no-store, 404 and 405 included", async () => {
  const app = createStatsApp({ stats: new Stats({ clock: () => 0 }) });
  for (
    const [path, method, status] of [
      ["/stats", "GET", 200],
      ["/metrics", "GET", 200],
      ["/version", "GET", 200],
      ["/nope", "GET", 404],
      ["/stats", "POST", 405],
    ] as const
  ) {
    const response = await app.request(path, { method });
    assert.equal(response.status, status, path);
    assert.equal(response.headers.get("cache-control"), "no-store", `${method} ${path}`);
    await response.body?.cancel();
  }
});
