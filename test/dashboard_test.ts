import assert from "node:assert/strict";
import { getLogger } from "@logtape/logtape";
import { startObservability } from "../src/cmd/observability.ts";
import { DASHBOARD_HTML } from "../src/http/dashboard.ts";
import { SnapshotBroadcaster } from "../src/http/events.ts";
import { createStatsApp, statsResponse } from "../src/http/stats_app.ts";
import { Stats } from "../src/stats/stats.ts";
import { fakeTimers, withTimeout } from "./_util.ts";

const decoder = new TextDecoder();

/** Reads `reader` up to the end of the first `data:` event; returns its data and what preceded. */
async function readEvent(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): Promise<{ data: string; text: string }> {
  let text = "";
  for (;;) {
    const match = /(?:^|\n)data: ([^\n]*)\n\n/.exec(text);
    if (match) return { data: match[1], text };
    const { value, done } = await withTimeout(reader.read(), 5000, "an event");
    if (done) throw new Error(`stream ended before an event; got ${JSON.stringify(text)}`);
    text += decoder.decode(value, { stream: true });
  }
}

function setup(options: { maxClients?: number; maxQueued?: number } = {}) {
  let now = 1_000;
  const stats = new Stats({ clock: () => now });
  const timers = fakeTimers();
  let built = 0;
  const events = new SnapshotBroadcaster(() => {
    built++;
    return statsResponse(stats);
  }, {
    timers,
    clock: () => now,
    onRefused: () => stats.sseClientsRefused++,
    ...options,
  });
  events.start();
  const app = createStatsApp({ stats, events });
  return {
    stats,
    timers,
    events,
    app,
    built: () => built,
    advance: (ms: number) => now += ms,
  };
}

Deno.test("GET / serves the dashboard: one HTML page with everything inline", async () => {
  const app = createStatsApp({ stats: new Stats({ clock: () => 0 }) });
  const res = await app.request("/");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/html; charset=utf-8$/i);
  assert.equal(res.headers.get("cache-control"), "no-store");
  assert.match(res.headers.get("content-security-policy") ?? "", /default-src 'none'/);
  assert.match(res.headers.get("content-security-policy") ?? "", /connect-src 'self'/);
  const html = await res.text();
  assert.equal(html, DASHBOARD_HTML);
  assert.match(html, /^<!doctype html>\n<html lang="en">/);
  assert.match(html, /<title>foo-proxy dashboard<\/title>/);
  assert.match(html, /<main>[\s\S]*<\/main>/);
  assert.match(html, /role="status" aria-live="polite"/);
  // Nothing is fetched from elsewhere: no URL, protocol-relative or not, and no external file.
  assert.doesNotMatch(html, /https?:/i);
  assert.doesNotMatch(html, /\/\/cdn/i);
  assert.doesNotMatch(html, /["'(]\/\/[a-z0-9]/i);
  assert.doesNotMatch(html, /\bsrc\s*=/i);
  assert.doesNotMatch(html, /@import|url\(|\bimport\s*\(|\bfetch\(|XMLHttpRequest|WebSocket/);
  assert.deepEqual([...html.matchAll(/<link\b[^>]*>/g)].map((m) => m[0]), [
    '<link rel="icon" href="data:,">',
  ]);
  assert.equal([...html.matchAll(/<script>/g)].length, 1);
  assert.match(html, /new EventSource\("events"\)/);
  assert.doesNotMatch(html, /innerHTML/);
});

Deno.test("every value on the dashboard names a field that /stats has", () => {
  const body = statsResponse(new Stats({ clock: () => 0 }));
  const fields = [...DASHBOARD_HTML.matchAll(/data-field="([^"]+)"/g)].map((m) => m[1]);
  assert.ok(fields.length > 40, `${fields.length} fields`);
  for (const field of fields) {
    if (field.startsWith("connections_closed.")) continue; // absent until one closes that way
    let value: unknown = body;
    for (const part of field.split(".")) value = (value as Record<string, unknown>)[part];
    assert.equal(typeof value, "number", field);
  }
  for (
    const wanted of [
      "request_rate_1s",
      "request_rate_10s",
      "response_rate_1s",
      "response_rate_10s",
      "latency_p50_seconds",
      "latency_p99_seconds",
      "latency_max_seconds",
      "connections_active",
      "connections_total",
      "connections_rejected",
      "bytes_downstream",
      "bytes_upstream",
      "failovers",
      "replays",
      "resume_failures",
      "internal_errors",
      "accept_errors",
      "log_lines_dropped",
      "sse_clients_refused",
      "worker_restarts",
      "msg_invalid_by_kind.truncated",
      "connections_closed.completed",
    ]
  ) {
    assert.ok(fields.includes(wanted), wanted);
  }
  assert.match(DASHBOARD_HTML, /<dd id="request_rate_10s" data-field="request_rate_10s"/);
  // The workers' table, filled from /stats `workers` (test/browser_test.ts checks the rows).
  assert.match(DASHBOARD_HTML, /<tbody id="workers"><\/tbody>/);
  assert.match(DASHBOARD_HTML, /fillWorkers\(s\.workers\)/);
  // Each chart is described in words next to it, not only drawn.
  for (const id of ["chart-rates", "chart-latency", "chart-connections"]) {
    assert.match(DASHBOARD_HTML, new RegExp(`<canvas id="${id}" role="img" aria-label="[^"]+">`));
    assert.match(DASHBOARD_HTML, new RegExp(`<li id="${id}-0">`));
  }
});

Deno.test("GET / answers HEAD without a body and other methods with 405", async () => {
  const app = createStatsApp({ stats: new Stats({ clock: () => 0 }) });
  const head = await app.request("/", { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(await head.text(), "");
  const post = await app.request("/", { method: "POST" });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET, HEAD");
  await post.body?.cancel();
});

Deno.test("GET /events is not served without a broadcaster", async () => {
  const res = await createStatsApp({ stats: new Stats({ clock: () => 0 }) }).request("/events");
  assert.equal(res.status, 404);
  await res.body?.cancel();
});

Deno.test("GET /events streams the /stats object as `data: {json}` events", async () => {
  const { app, stats, events, timers, advance } = setup();
  stats.counts.msg_req = 7;
  const res = await app.request("/events");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  assert.equal(res.headers.get("cache-control"), "no-store");
  const reader = res.body!.getReader();
  const first = await readEvent(reader);
  assert.match(first.text, /^retry: 1000\n\n/);
  const event = JSON.parse(first.data);
  assert.deepEqual(Object.keys(event).sort(), Object.keys(statsResponse(stats)).sort());
  assert.equal(event.msg_req, 7);
  assert.equal(event.sse_clients_refused, 0);
  assert.equal(events.clients, 1);

  stats.counts.msg_req = 9;
  advance(1000);
  assert.deepEqual(timers.delays, [1000]);
  timers.fire();
  const second = JSON.parse((await readEvent(reader)).data);
  assert.equal(second.msg_req, 9);
  assert.equal(second.uptime_seconds, 1);

  await reader.cancel(); // the viewer left
  assert.equal(events.clients, 0);
  assert.deepEqual(timers.delays, [], "no timer runs while nobody watches");
  events.stop();
});

Deno.test("SnapshotBroadcaster builds one snapshot per tick for any number of streams", async () => {
  const { events, timers, built, advance } = setup();
  assert.deepEqual(timers.delays, [], "no timer before the first stream");
  const readers = Array.from({ length: 10 }, () => events.connect()!.getReader());
  assert.equal(events.clients, 10);
  assert.equal(built(), 1, "viewers arriving together share the first snapshot");
  const firsts = await Promise.all(readers.map(readEvent));
  assert.equal(new Set(firsts.map((e) => e.data)).size, 1);
  for (let tick = 1; tick <= 3; tick++) {
    advance(1000);
    timers.fire();
    assert.equal(built(), 1 + tick);
    assert.equal(timers.delays.length, 1, "one timer for all streams");
    const got = await Promise.all(readers.map(readEvent));
    assert.equal(new Set(got.map((e) => e.data)).size, 1, "every stream gets the same event");
    assert.equal(JSON.parse(got[0].data).uptime_seconds, tick);
  }
  events.stop();
  for (const reader of readers) assert.equal((await reader.read()).done, true);
});

Deno.test("SnapshotBroadcaster stays on its 1 s grid when a tick runs late", () => {
  const { events, timers, advance } = setup();
  const stream = events.connect()!;
  assert.deepEqual(timers.delays, [1000]);
  advance(1250); // the timer fired 250 ms late
  timers.fire();
  assert.deepEqual(timers.delays, [750]);
  events.stop();
  assert.deepEqual(timers.delays, []);
  stream.cancel();
});

Deno.test("GET /events refuses streams past the cap with 503 and counts them in /stats and /metrics", async () => {
  const { app, events, stats } = setup({ maxClients: 2 });
  const open = [await app.request("/events"), await app.request("/events")];
  assert.deepEqual(open.map((r) => r.status), [200, 200]);
  const refused = await app.request("/events");
  assert.equal(refused.status, 503);
  assert.equal(refused.headers.get("retry-after"), "5");
  assert.deepEqual(await refused.json(), { error: "too many event streams", max: 2 });
  assert.equal(events.refused, 1);
  assert.equal(stats.sseClientsRefused, 1);
  assert.equal((await (await app.request("/stats")).json()).sse_clients_refused, 1);
  assert.match(
    await (await app.request("/metrics")).text(),
    /^foo_proxy_sse_clients_refused_total 1$/m,
  );
  // A place freed is a place taken again.
  await open[0].body!.cancel();
  assert.equal(events.clients, 1);
  const again = await app.request("/events");
  assert.equal(again.status, 200);
  events.stop();
  for (const res of [open[1], again]) {
    const reader = res.body!.getReader();
    await readEvent(reader);
    assert.equal((await reader.read()).done, true, "stop() ends every stream");
  }
  const late = await app.request("/events");
  assert.equal(late.status, 503, "no stream opens after stop()");
  await late.body?.cancel();
});

Deno.test("HEAD /events opens no stream", async () => {
  const { app, events } = setup();
  const res = await app.request("/events", { method: "HEAD" });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  assert.equal(events.clients, 0);
  events.stop();
});

Deno.test("SnapshotBroadcaster ends a stream whose reader falls behind instead of queueing", async () => {
  const { events, timers, advance } = setup({ maxQueued: 4 });
  const stalled = events.connect()!; // never read
  const reader = events.connect()!.getReader();
  await readEvent(reader);
  for (let i = 0; i < 4; i++) {
    advance(1000);
    timers.fire();
    await readEvent(reader);
  }
  assert.equal(events.evicted, 1);
  assert.equal(events.clients, 1, "the reading stream goes on");
  // The stalled stream ends after what was queued: its peer reconnects and starts afresh.
  const stalledReader = stalled.getReader();
  let chunks = 0;
  while (!(await stalledReader.read()).done) chunks++;
  assert.equal(chunks, 4);
  events.stop();
});

Deno.test("SnapshotBroadcaster rejects bad options", () => {
  assert.throws(() => new SnapshotBroadcaster(() => ({}), { intervalMs: 0 }), RangeError);
  assert.throws(() => new SnapshotBroadcaster(() => ({}), { maxClients: -1 }), RangeError);
  assert.throws(() => new SnapshotBroadcaster(() => ({}), { maxQueued: 1.5 }), RangeError);
});

Deno.test("the served dashboard's event stream ends at once when the apps close", async () => {
  const stats = new Stats({ clock: () => performance.now() });
  const obs = await startObservability({
    stats,
    listening: () => true,
    forward: { hostname: "127.0.0.1", port: 1 },
    maxConnections: 10,
    http: { hostname: "127.0.0.1", port: 0 },
    health: null,
    logger: getLogger(["foo-proxy", "test"]),
    maxEventStreams: 1,
  });
  try {
    const base = `http://127.0.0.1:${obs.httpAddr!.port}`;
    const page = await fetch(`${base}/`);
    assert.match(await page.text(), /<title>/);
    const res = await fetch(`${base}/events`);
    assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
    const reader = res.body!.getReader();
    const event = JSON.parse((await readEvent(reader)).data);
    assert.equal(event.connections_active, 0);
    const refused = await fetch(`${base}/events`);
    assert.equal(refused.status, 503);
    await refused.body?.cancel();
    assert.equal(stats.sseClientsRefused, 1);
    const started = performance.now();
    await withTimeout(obs.close(5000), 4000, "close() with a viewer connected");
    assert.ok(performance.now() - started < 4000);
    for (;;) {
      const { done } = await withTimeout(reader.read(), 2000, "the end of the stream");
      if (done) break;
    }
  } finally {
    await obs.close();
  }
});

Deno.test("a tick timer that fires a little early does not bring the next tick milliseconds later", async () => {
  const t = setup();
  const stream = t.events.connect()!;
  try {
    assert.deepEqual(t.timers.delays, [1000]);
    t.advance(997); // the timer fires 3 ms early, as real timers may
    t.timers.fire();
    assert.equal(t.built(), 2);
    // The next tick is one interval on, not 3 ms away (that sent two events 3 ms apart).
    assert.ok(t.timers.pending >= 500, `next tick in ${t.timers.pending} ms`);
    assert.equal(t.timers.pending, 1003);
  } finally {
    await stream.cancel();
    t.events.stop();
  }
});

Deno.test("a GET /events stream opens after beforeRead, as /stats is read: its first event is never older (a takeover's carried totals)", async () => {
  const { stats, events } = setup();
  stats.counts.msg_req = 10; // as the proxy taken over answered, before its newest totals came
  const ready = Promise.withResolvers<void>();
  const app = createStatsApp({ stats, events, beforeRead: () => ready.promise });
  const pending = app.request("/events");
  stats.counts.msg_req = 15; // its newest totals, then the wait is over
  ready.resolve();
  const res = await pending;
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  try {
    assert.equal(JSON.parse((await readEvent(reader)).data).msg_req, 15);
  } finally {
    await reader.cancel();
    events.stop();
  }
});
