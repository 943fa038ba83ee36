import assert from "node:assert/strict";
import { createHealthApp } from "../src/http/health_app.ts";
import { proxyReadinessChecks, type ReadinessCheck } from "../src/http/readiness.ts";

Deno.test("/health, /heartbeat and /status answer 200 JSON while the process is alive", async () => {
  const app = createHealthApp({ version: "1.2.3", uptimeSeconds: () => 12.5 });
  for (const path of ["/health", "/heartbeat", "/status"]) {
    const res = await app.request(path);
    assert.equal(res.status, 200, path);
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    assert.deepEqual(await res.json(), { status: "ok", version: "1.2.3", uptime_seconds: 12.5 });
  }
});

Deno.test("/livez answers 200 even when readiness fails", async () => {
  const app = createHealthApp({ checks: () => [{ name: "upstream", ok: false }] });
  const res = await app.request("/livez");
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { status: "ok" });
});

Deno.test("/livez answers 503 with the reason when the process cannot recover by itself (a stuck worker)", async () => {
  let stuck: string | undefined = undefined;
  const app = createHealthApp({ stuck: () => stuck });
  assert.equal((await app.request("/livez")).status, 200);
  stuck = "data-plane worker 1 not running for 31 s: restart the process";
  const res = await app.request("/livez");
  assert.equal(res.status, 503);
  assert.deepEqual(await res.json(), { status: "stuck", detail: stuck });
  // The original names stay what they were: the process answers.
  assert.equal((await app.request("/health")).status, 200);
});

Deno.test("/readyz answers 200 when every check passes", async () => {
  const app = createHealthApp({
    checks: () => [{ name: "listener", ok: true }, { name: "upstream", ok: true }],
  });
  const res = await app.request("/readyz");
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { status: "ready" });
});

Deno.test("/readyz answers 503 naming only the failing checks", async () => {
  const app = createHealthApp({
    checks: () => [
      { name: "listener", ok: true },
      { name: "upstream", ok: false, detail: "connection refused" },
      { name: "connections", ok: false, detail: "10 of 10 connections in use" },
    ],
  });
  const res = await app.request("/readyz");
  assert.equal(res.status, 503);
  assert.deepEqual(await res.json(), {
    status: "not ready",
    failed: [
      { name: "upstream", detail: "connection refused" },
      { name: "connections", detail: "10 of 10 connections in use" },
    ],
  });
});

Deno.test("/readyz?verbose lists every check with ok or failed", async () => {
  const checks: ReadinessCheck[] = [
    { name: "listener", ok: true },
    { name: "upstream", ok: false, detail: "refused" },
  ];
  const app = createHealthApp({ checks: () => checks });
  const res = await app.request("/readyz?verbose");
  assert.equal(res.status, 503);
  const body = await res.json();
  assert.deepEqual(body.checks, [
    { name: "listener", status: "ok" },
    { name: "upstream", status: "failed", detail: "refused" },
  ]);
  checks[1].ok = true;
  const ok = await app.request("/readyz?verbose=1");
  assert.equal(ok.status, 200);
  assert.deepEqual((await ok.json()).checks.map((c: { status: string }) => c.status), [
    "ok",
    "ok",
  ]);
});

Deno.test("/readyz treats a throwing check function as not ready", async () => {
  const app = createHealthApp({
    checks: () => {
      throw new Error("boom");
    },
  });
  const res = await app.request("/readyz");
  assert.equal(res.status, 503);
  const body = await res.json();
  assert.equal(body.failed[0].name, "checks");
  assert.match(body.failed[0].detail, /boom/);
});

Deno.test("the health app answers 404 and 405 as JSON", async () => {
  const app = createHealthApp();
  const missing = await app.request("/healthz");
  assert.equal(missing.status, 404);
  assert.deepEqual(await missing.json(), { error: "not found", path: "/healthz" });
  const wrong = await app.request("/livez", { method: "POST" });
  assert.equal(wrong.status, 405);
  assert.equal(wrong.headers.get("allow"), "GET, HEAD");
});

Deno.test("proxyReadinessChecks() fails each check for its own reason", () => {
  const state = {
    listening: true,
    stopping: false,
    reachable: true,
    active: 3,
  };
  const checks = proxyReadinessChecks({
    listening: () => state.listening,
    shuttingDown: () => state.stopping,
    upstream: {
      get reachable() {
        return state.reachable;
      },
      get detail() {
        return state.reachable ? "last connect ok" : "connection refused";
      },
    },
    activeConnections: () => state.active,
    maxConnections: 4,
  });
  const failing = () => checks().filter((c) => !c.ok).map((c) => c.name);
  assert.deepEqual(checks().map((c) => c.name), [
    "listener",
    "shutdown",
    "upstream",
    "connections",
  ]);
  assert.deepEqual(failing(), []);
  state.active = 4;
  assert.deepEqual(failing(), ["connections"]);
  state.active = 0;
  state.reachable = false;
  assert.deepEqual(failing(), ["upstream"]);
  assert.equal(checks()[2].detail, "connection refused");
  state.reachable = true;
  state.stopping = true;
  assert.deepEqual(failing(), ["shutdown"]);
  state.stopping = false;
  state.listening = false;
  assert.deepEqual(failing(), ["listener"]);
});

Deno.test("proxyReadinessChecks() leaves out the checks it has no input for", () => {
  const checks = proxyReadinessChecks({ listening: () => true, activeConnections: () => 99 });
  assert.deepEqual(checks().map((c) => c.name), ["listener", "shutdown"]);
});
