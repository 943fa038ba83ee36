import assert from "node:assert/strict";
import {
  escapeHelp,
  escapeLabelValue,
  formatValue,
  METRICS_CONTENT_TYPE,
  renderMetrics,
  WORKER_RESTARTS_FAMILY,
} from "../src/http/metrics.ts";
import { MSG_ACK, MSG_REQ } from "../src/protocol/analyzer.ts";
import { LatencyStats, LatencyTracker } from "../src/stats/latency.ts";
import { Stats, type UpstreamStats } from "../src/stats/stats.ts";
import { createStatsApp } from "../src/http/stats_app.ts";
import { UpstreamPool } from "../src/proxy/upstream_pool.ts";
import {
  connectTo,
  LineReader,
  listenLocal,
  spawnMain,
  startProxy,
  startUpstream,
  writeAll,
} from "./_util.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * A strict reader of the 0.0.4 text format (what promtool checks): throws on any line it does not
 * understand, a family declared twice or with TYPE before HELP, a sample before its TYPE, the
 * samples of one family not contiguous, a duplicate series (name and labels), a bad value.
 */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  assert.ok(text.endsWith("\n"), "the exposition must end with a newline");
  const types = new Map<string, string>();
  const helps = new Set<string>();
  const samples: Sample[] = [];
  const seen = new Set<string>();
  const finished = new Set<string>(); // families whose samples ended: none may follow
  let current: string | undefined;
  for (const line of text.slice(0, -1).split("\n")) {
    let m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      assert.ok(!helps.has(m[1]), `second HELP for ${m[1]}`);
      helps.add(m[1]);
      continue;
    }
    m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (m) {
      assert.ok(helps.has(m[1]), `TYPE before HELP for ${m[1]}`);
      assert.ok(!types.has(m[1]), `second TYPE for ${m[1]}`);
      types.set(m[1], m[2]);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `unparsable line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    if (m[2] !== undefined) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/gy;
      let lm: RegExpExecArray | null;
      let consumed = 0;
      while ((lm = re.exec(m[2])) !== null) {
        labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
        consumed = re.lastIndex;
      }
      assert.equal(consumed, m[2].length, `bad labels in ${line}`);
    }
    const value = m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
    assert.ok(!Number.isNaN(value) || m[3] === "NaN", `bad value in ${line}`);
    const family = types.has(m[1]) ? m[1] : m[1].replace(/_(bucket|sum|count)$/, "");
    assert.ok(types.has(m[1]) || types.get(family) === "histogram", `no TYPE for ${m[1]}`);
    if (family !== current) {
      assert.ok(!finished.has(family), `the samples of ${family} are not contiguous`);
      if (current !== undefined) finished.add(current);
      current = family;
    }
    const key = line.slice(0, line.lastIndexOf(" "));
    assert.ok(!seen.has(key), `duplicate series ${key}`);
    seen.add(key);
    samples.push({ name: m[1], labels, value });
  }
  return { samples, types };
}

function find(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const hit = samples.find((s) =>
    s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  );
  assert.ok(hit, `no sample ${name} ${JSON.stringify(labels)}`);
  return hit.value;
}

function busyStats(): { stats: Stats; latency: LatencyStats } {
  let now = 1_000_000;
  const stats = new Stats({ clock: () => now });
  stats.counts.msg_req = 7;
  stats.counts.msg_ack = 5;
  stats.counts.msg_nak = 1;
  stats.counts.invalid_seq = 2;
  stats.counts.invalid_direction = 1;
  stats.recordRequests(7);
  stats.recordResponses(6);
  stats.connectionsActive = 2;
  stats.connectionsTotal = 9;
  stats.connectionsRejected = 1;
  stats.upstreamErrors = 3;
  stats.upstreamConnectRetries = 2;
  stats.inflightLimitPauses = 5;
  stats.failovers = 4;
  stats.replays = 11;
  stats.resumeFailures = 1;
  stats.bytesDownstream = 1234;
  stats.bytesUpstream = 567;
  stats.recordClose("client_closed");
  stats.recordClose("client_closed");
  stats.recordClose("upstream_unreachable");
  now += 500;
  const latency = new LatencyStats();
  const t = new LatencyTracker(latency);
  t.setTime(0);
  t.onMessage(MSG_REQ, 1);
  t.onMessage(MSG_REQ, 2);
  t.onMessage(MSG_REQ, 3);
  t.setTime(3); // 3 ms
  t.onMessage(MSG_ACK, 1);
  t.setTime(20_000); // 20 s: beyond the last bucket
  t.onMessage(MSG_ACK, 2);
  t.onMessage(MSG_ACK, 99);
  return { stats, latency };
}

Deno.test("renderMetrics() output parses as text format 0.0.4 with HELP and TYPE per family", () => {
  const { stats, latency } = busyStats();
  const { samples, types } = parseExposition(
    renderMetrics(stats.snapshot(), { latency, version: "1.2.3" }),
  );
  assert.ok(samples.length > 20);
  for (const [name, type] of types) {
    assert.match(name, /^foo_proxy_/);
    if (type === "counter") assert.match(name, /_total$/, `${name} is a counter`);
    else assert.doesNotMatch(name, /_total$/, `${name} is a ${type}`);
  }
  assert.equal(METRICS_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
});

Deno.test("renderMetrics() exposes messages, invalid, connections, bytes and rates", () => {
  const { stats, latency } = busyStats();
  const { samples } = parseExposition(renderMetrics(stats.snapshot(), { latency }));
  const m = "foo_proxy_messages_total";
  assert.equal(find(samples, m, { direction: "downstream", type: "req" }), 7);
  assert.equal(find(samples, m, { direction: "upstream", type: "ack" }), 5);
  assert.equal(find(samples, m, { direction: "upstream", type: "nak" }), 1);
  assert.equal(find(samples, "foo_proxy_invalid_messages_total", { kind: "seq" }), 2);
  assert.equal(find(samples, "foo_proxy_invalid_messages_total", { kind: "direction" }), 1);
  assert.equal(find(samples, "foo_proxy_invalid_messages_total", { kind: "type" }), 0);
  assert.equal(find(samples, "foo_proxy_invalid_messages_total", { kind: "truncated" }), 0);
  assert.equal(find(samples, "foo_proxy_connections_accepted_total"), 9);
  assert.equal(find(samples, "foo_proxy_connections_rejected_total"), 1);
  assert.equal(find(samples, "foo_proxy_connections_active"), 2);
  const closed = "foo_proxy_connections_closed_total";
  assert.equal(find(samples, closed, { reason: "client_closed" }), 2);
  assert.equal(find(samples, closed, { reason: "upstream_unreachable" }), 1);
  assert.equal(find(samples, closed, { reason: "shutdown" }), 0);
  assert.equal(find(samples, "foo_proxy_upstream_errors_total"), 3);
  assert.equal(find(samples, "foo_proxy_upstream_connect_retries_total"), 2);
  assert.equal(find(samples, "foo_proxy_inflight_limit_pauses_total"), 5);
  assert.equal(find(samples, "foo_proxy_failovers_total"), 4);
  assert.equal(find(samples, "foo_proxy_replayed_requests_total"), 11);
  assert.equal(find(samples, "foo_proxy_resume_failures_total"), 1);
  assert.equal(find(samples, "foo_proxy_received_bytes_total", { side: "downstream" }), 1234);
  assert.equal(find(samples, "foo_proxy_received_bytes_total", { side: "upstream" }), 567);
  const snap = stats.snapshot();
  assert.ok(snap.request_rate_1s > 0);
  assert.equal(
    find(samples, "foo_proxy_requests_per_second", { window: "1s" }),
    snap.request_rate_1s,
  );
  assert.equal(
    find(samples, "foo_proxy_responses_per_second", { window: "10s" }),
    snap.response_rate_10s,
  );
  assert.equal(find(samples, "foo_proxy_uptime_seconds"), 0.5);
});

Deno.test("renderMetrics() exposes the latency histogram cumulatively with +Inf = count", () => {
  const { stats, latency } = busyStats();
  const { samples, types } = parseExposition(renderMetrics(stats.snapshot(), { latency }));
  const name = "foo_proxy_request_duration_seconds";
  assert.equal(types.get(name), "histogram");
  const buckets = samples.filter((s) => s.name === `${name}_bucket`);
  assert.equal(buckets[0].labels.le, "0.0001");
  assert.equal(buckets.at(-2)?.labels.le, "10");
  assert.equal(buckets.at(-1)?.labels.le, "+Inf");
  for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i].value >= buckets[i - 1].value);
  assert.equal(find(samples, `${name}_bucket`, { le: "0.0025" }), 0);
  assert.equal(find(samples, `${name}_bucket`, { le: "0.005" }), 1);
  assert.equal(find(samples, `${name}_bucket`, { le: "10" }), 1);
  assert.equal(find(samples, `${name}_bucket`, { le: "+Inf" }), 2);
  assert.equal(find(samples, `${name}_count`), 2);
  assert.ok(Math.abs(find(samples, `${name}_sum`) - 20.003) < 1e-9);
  assert.equal(find(samples, "foo_proxy_requests_in_flight"), 1);
  const anomalies = "foo_proxy_protocol_anomalies_total";
  assert.equal(find(samples, anomalies, { kind: "unmatched_reply" }), 1);
  assert.equal(find(samples, anomalies, { kind: "duplicate_seq" }), 0);
  assert.equal(find(samples, "foo_proxy_untracked_requests_total"), 0);
});

Deno.test("renderMetrics() without latency stats exposes an empty histogram", () => {
  const stats = new Stats({ clock: () => 0 });
  const { samples } = parseExposition(renderMetrics(stats.snapshot()));
  assert.equal(find(samples, "foo_proxy_request_duration_seconds_count"), 0);
  assert.equal(find(samples, "foo_proxy_request_duration_seconds_bucket", { le: "+Inf" }), 0);
});

Deno.test("renderMetrics() puts the version in build_info and no address in any label", () => {
  const { stats, latency } = busyStats();
  const { samples } = parseExposition(
    renderMetrics(stats.snapshot(), { latency, version: "0.9.0" }),
  );
  assert.equal(find(samples, "foo_proxy_build_info", { version: "0.9.0" }), 1);
  const allowed = new Set([
    "direction",
    "type",
    "kind",
    "reason",
    "side",
    "window",
    "le",
    "version",
  ]);
  for (const s of samples) {
    for (const [label, value] of Object.entries(s.labels)) {
      assert.ok(allowed.has(label), `unexpected label ${label} on ${s.name}`);
      assert.doesNotMatch(value, /\d+\.\d+\.\d+\.\d+|:\d{2,5}$/, `address-like ${value}`);
    }
  }
});

Deno.test("renderMetrics() escapes an odd close reason instead of breaking the format", () => {
  const stats = new Stats({ clock: () => 0 });
  const snap = stats.snapshot();
  (snap.connections_closed as Record<string, number>)['we"ird\\\nreason'] = 4;
  const { samples } = parseExposition(renderMetrics(snap));
  assert.equal(
    find(samples, "foo_proxy_connections_closed_total", { reason: 'we"ird\\\nreason' }),
    4,
  );
});

Deno.test("escaping helpers follow the exposition format rules", () => {
  assert.equal(escapeLabelValue('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  assert.equal(escapeHelp('a"b\\c\nd'), 'a"b\\\\c\\nd');
  assert.equal(formatValue(Infinity), "+Inf");
  assert.equal(formatValue(-Infinity), "-Inf");
  assert.equal(formatValue(NaN), "NaN");
  assert.equal(formatValue(0.00025), "0.00025");
  assert.equal(formatValue(12), "12");
});

function upstreamRow(name: string, figures: Partial<UpstreamStats> = {}): UpstreamStats {
  return {
    name,
    address: "127.0.0.1:1",
    weight: 1,
    state: "up",
    connections_active: 0,
    connections_total: 0,
    requests: 0,
    replies: 0,
    connect_failures: 0,
    stream_errors: 0,
    ejections: 0,
    last_check: null,
    ...figures,
  };
}

Deno.test("renderMetrics() with upstreams declares every family once, its samples together, no series twice", () => {
  const { stats, latency } = busyStats();
  stats.upstreams = () => [
    upstreamRow("a", { connect_failures: 3 }),
    upstreamRow("b", { stream_errors: 2, state: "draining" }),
  ];
  const { samples, types } = parseExposition(renderMetrics(stats.snapshot(), { latency }));
  assert.equal(types.get("foo_proxy_upstream_connect_failures_total"), "counter");
  assert.equal(find(samples, "foo_proxy_upstream_connect_failures_total", { upstream: "a" }), 3);
  assert.equal(find(samples, "foo_proxy_upstream_stream_errors_total", { upstream: "b" }), 2);
  assert.equal(
    samples.filter((s) => s.name === "foo_proxy_upstream_connect_failures_total").length,
    2,
    "one series per upstream, and no unlabelled one mixed in",
  );
});

Deno.test("renderMetrics() has one series per data-plane worker, labelled with its number, and keeps the restart total on its own", () => {
  const { stats, latency } = busyStats();
  stats.workerRestarts = 5; // recovered from an earlier run: more than the rows' restarts
  stats.workers = () => [
    { worker: 0, connections_active: 13, replies_per_second: 1087.5, restarts: 0 },
    { worker: 1, connections_active: 3, replies_per_second: 357, restarts: 2 },
  ];
  const { samples, types } = parseExposition(renderMetrics(stats.snapshot(), { latency }));
  const rows = (name: string) =>
    samples.filter((s) => s.name === name).map((s) => [s.labels, s.value]);
  assert.equal(types.get("foo_proxy_worker_connections_active"), "gauge");
  assert.deepEqual(rows("foo_proxy_worker_connections_active"), [
    [{ worker: "0" }, 13],
    [{ worker: "1" }, 3],
  ]);
  assert.equal(types.get("foo_proxy_worker_replies_per_second"), "gauge");
  assert.deepEqual(rows("foo_proxy_worker_replies_per_second"), [
    [{ worker: "0" }, 1087.5],
    [{ worker: "1" }, 357],
  ]);
  assert.equal(types.get(WORKER_RESTARTS_FAMILY), "counter");
  assert.deepEqual(rows(WORKER_RESTARTS_FAMILY), [[{ worker: "0" }, 0], [{ worker: "1" }, 2]]);
  assert.deepEqual(
    rows("foo_proxy_worker_restarts_total"),
    [[{}, 5]],
    "the total stays one unlabelled series, so sum() over either family counts a restart once",
  );
});

Deno.test("the /metrics page of a proxy whose upstreams failed parses strictly, and its totals are the sums of the rows", async () => {
  const gone = listenLocal();
  const dead = gone.addr;
  gone.close(); // refused from now on
  using flaky = listenLocal(); // accepts, reads a REQ, closes with its reply owed
  const stats = new Stats({ clock: () => performance.now() });
  await using pool = new UpstreamPool([
    { name: "dead", address: { hostname: "127.0.0.1", port: dead.port }, weight: 1 },
    { name: "flaky", address: { hostname: "127.0.0.1", port: flaky.addr.port }, weight: 1 },
  ], { policy: "first", intervalMs: 0, ejectAfter: 0, counters: stats });
  stats.upstreams = () => pool.snapshot();
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr, { target: pool, stats, connectRetries: 1 });
  for (let k = 1; k <= 3; k++) {
    using client = await connectTo(proxy.addr);
    await writeAll(client, `REQ ${k}\n`);
    const server = await flaky.accept();
    await new LineReader(server).readLines(1);
    server.close();
    assert.equal(await new LineReader(client).readLine(), null, "closed after the upstream left");
  }
  await proxy.drained();
  const snap = stats.snapshot();
  const rows = snap.upstreams;
  assert.deepEqual(rows.map((u) => [u.name, u.connect_failures, u.stream_errors]), [
    ["dead", 3, 0],
    ["flaky", 0, 3],
  ]);
  assert.equal(snap.upstream_errors, 6, "connect failures plus stream errors, as the rows say");
  const page = await (await createStatsApp({ stats }).request("/metrics")).text();
  const { samples } = parseExposition(page);
  const sum = (name: string) =>
    samples.filter((s) => s.name === name).reduce((total, s) => total + s.value, 0);
  assert.equal(
    find(samples, "foo_proxy_upstream_errors_total"),
    sum("foo_proxy_upstream_connect_failures_total") +
      sum("foo_proxy_upstream_stream_errors_total"),
  );
  assert.equal(sum("foo_proxy_upstream_connect_failures_total"), 3);
});

Deno.test("the /metrics page of a proxy with two data-plane workers has each worker's series, and their connections add up", async () => {
  await using upstream = await startUpstream();
  await using proxy = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${upstream.addr.port}`,
    "--http=127.0.0.1:0",
    "--health=off",
    "--workers=2",
  ]);
  const port = Number((await proxy.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
  const httpPort = Number(
    (await proxy.stderr.waitFor(/Serving stats on http:\/\/127\.0\.0\.1:(\d+)/, 20_000))[1],
  );
  using client = await connectTo(port);
  await writeAll(client, "REQ 1 hi\n");
  assert.match((await new LineReader(client).readLine()) ?? "", /^(ACK|NAK) 1\b/);

  const response = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
  const { samples } = parseExposition(await response.text());
  const workers = (name: string) =>
    samples.filter((s) => s.name === name).map((s) => s.labels.worker).sort();
  for (const family of ["foo_proxy_worker_connections_active", WORKER_RESTARTS_FAMILY]) {
    assert.deepEqual(workers(family), ["0", "1"], family);
  }
  assert.deepEqual(workers("foo_proxy_worker_replies_per_second"), ["0", "1"]);
  const open = samples.filter((s) => s.name === "foo_proxy_worker_connections_active");
  assert.equal(open[0].value + open[1].value, 1, "the one open connection, on one worker");
  assert.equal(find(samples, "foo_proxy_connections_active"), 1);
});
