/**
 * The counter schema is the one place a statistic is declared: these tests fail when a counter
 * is stored but not declared, declared but missing from a surface, or when the snapshot,
 * `/metrics`, the recovery file and the admin plumbing disagree with what the schema says.
 */
import assert from "node:assert/strict";
import { ADMIN_COUNTERS, statsCounters } from "../src/cmd/observability.ts";
import { renderMetrics } from "../src/http/metrics.ts";
import { statsResponse } from "../src/http/stats_app.ts";
import { HttpServerCounters } from "../src/net/http_server.ts";
import {
  CLOSE_REASONS,
  COUNTER_SCHEMA,
  COUNTER_SLOTS,
  counterIndex,
  readCounter,
  recoveryKey,
  type SchemaEntry,
  STORED_COUNTERS,
  type StoredSpec,
  writeCounter,
} from "../src/stats/counter_schema.ts";
import { LatencyStats } from "../src/stats/latency.ts";
import {
  captureRecoveryState,
  parseRecoveryState,
  RecoveryFormatError,
  restoreRecoveryState,
  serializeRecoveryState,
} from "../src/stats/recovery.ts";
import { Stats } from "../src/stats/stats.ts";

const NOW = 1_700_000_000_000;

/** Stats whose every stored counter holds a distinct value: 1000 + 7 × its slot. */
function distinct(): { stats: Stats; latency: LatencyStats; value: (spec: StoredSpec) => number } {
  const stats = new Stats({ clock: () => NOW });
  const value = (spec: StoredSpec) => 1000 + 7 * STORED_COUNTERS.indexOf(spec);
  for (const spec of STORED_COUNTERS) writeCounter(spec, stats, stats.latency, value(spec));
  CLOSE_REASONS.forEach((reason, i) => (stats.closed[reason] = 500 + i));
  return { stats, latency: stats.latency, value };
}

/** The samples of a Prometheus text page: `name{labels}` → value, and each family's HELP/TYPE. */
function scrape(text: string) {
  const samples = new Map<string, number>();
  const help = new Map<string, string>();
  const type = new Map<string, string>();
  for (const line of text.trimEnd().split("\n")) {
    const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (m) (m[1] === "HELP" ? help : type).set(m[2], m[3]);
    else {samples.set(
        line.slice(0, line.lastIndexOf(" ")),
        Number(line.slice(line.lastIndexOf(" "))),
      );}
  }
  return { samples, help, type };
}

function series(family: string, labels: Readonly<Record<string, string>> = {}): string {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  return pairs.length > 0 ? `${family}{${pairs.join(",")}}` : family;
}

function where(entry: SchemaEntry): string {
  return `${entry.section}.${entry.name}`;
}

Deno.test("the counter schema names each entry once, and each /metrics series once", () => {
  const names = COUNTER_SCHEMA.map((e) => `${"group" in e ? e.group ?? "" : ""}.${where(e)}`);
  assert.equal(new Set(names).size, names.length, "a name declared twice");
  const seriesSeen = COUNTER_SCHEMA.filter((e) => e.metric)
    .map((e) => series(e.metric!.family, e.metric!.labels));
  assert.equal(new Set(seriesSeen).size, seriesSeen.length, "a series declared twice");
  assert.equal(new Set(COUNTER_SLOTS).size, COUNTER_SLOTS.length, "a slot declared twice");
  STORED_COUNTERS.forEach((spec, i) => assert.equal(counterIndex(spec.name, spec.section), i));
  for (const reason of CLOSE_REASONS) {
    assert.ok(counterIndex(`connections_closed.${reason}`) >= STORED_COUNTERS.length, reason);
  }
});

Deno.test("the counter schema's kinds agree with their names, persistence and summing", () => {
  for (const entry of COUNTER_SCHEMA) {
    const family = entry.metric?.family;
    if (entry.kind === "counter" || entry.kind === "labelled_counter") {
      if (family) assert.match(family, /^foo_proxy_\w+_total$/, where(entry));
    } else if (family) {
      assert.doesNotMatch(family, /_total$/, where(entry));
    }
    if (entry.kind === "gauge") {
      assert.equal(entry.recovered, false, `${where(entry)}: a gauge starts from zero`);
    }
    if (entry.kind === "counter" && entry.recovered !== false) {
      assert.ok(entry.summed, `${where(entry)}: a persisted counter is a process total`);
    }
  }
});

Deno.test("every number Stats and LatencyStats keep is declared in the counter schema", () => {
  const stats = new Stats({ clock: () => NOW });
  const declared = new Set(STORED_COUNTERS.map((spec) => JSON.stringify(spec.store)));
  // Not counters: the start time (uptime is derived from it) and the config's load time (a date).
  const notCounters = new Set(["startedAt", "configLoadedAt"]);
  for (const [field, value] of Object.entries(stats)) {
    if (typeof value === "number" && !notCounters.has(field)) {
      assert.ok(declared.has(JSON.stringify({ field })), `Stats.${field} is not in the schema`);
    }
  }
  for (const key of Object.keys(stats.counts)) {
    assert.ok(declared.has(JSON.stringify({ counts: key })), `counts.${key} is not in the schema`);
  }
  for (const [field, value] of Object.entries(new LatencyStats())) {
    if (typeof value === "number") {
      assert.ok(declared.has(JSON.stringify({ latency: field })), `latency.${field} undeclared`);
    }
  }
  for (const spec of STORED_COUNTERS) {
    assert.equal(typeof readCounter(spec, stats, stats.latency), "number", where(spec));
  }
});

Deno.test("the snapshot and /stats have every schema entry of their section, in schema order", () => {
  const { stats, value } = distinct();
  const snapshot = stats.snapshot() as unknown as Record<string, unknown>;
  const response = statsResponse(stats) as unknown as Record<string, unknown>;
  const order: string[] = [];
  for (const entry of COUNTER_SCHEMA) {
    if (entry.kind === "histogram") continue; // on /metrics; its figures are entries of their own
    const name = "group" in entry && entry.group !== undefined ? entry.group : entry.name;
    if (!order.includes(name)) order.push(name);
    const object = entry.section === "snapshot" ? snapshot : response;
    const field = "group" in entry && entry.group !== undefined
      ? (object[entry.group] as Record<string, unknown>)[entry.name]
      : object[entry.name];
    assert.notEqual(field, undefined, where(entry));
    if ((entry.kind === "counter" || entry.kind === "gauge") && entry.show === undefined) {
      assert.equal(field, value(entry), where(entry));
    }
  }
  assert.deepEqual(Object.keys(response), order);
  assert.deepEqual(
    snapshot.connections_closed,
    Object.fromEntries(
      CLOSE_REASONS.map((reason, i) => [reason, 500 + i]),
    ),
  );
  // The SIGUSR2 line is the same object as JSON.
  assert.deepEqual(JSON.parse(JSON.stringify(stats.snapshot())), snapshot);
});

Deno.test("/metrics has one family per schema family, with the schema's help, type and values", () => {
  const { stats, latency, value } = distinct();
  const snapshot = stats.snapshot() as unknown as Record<string, unknown>;
  const { samples, help, type } = scrape(renderMetrics(stats.snapshot(), { latency }));
  const families = new Set<string>();
  for (const entry of COUNTER_SCHEMA) {
    const metric = entry.metric;
    if (!metric) continue;
    if (!families.has(metric.family)) {
      families.add(metric.family);
      assert.equal(help.get(metric.family), metric.help ?? entry.help, metric.family);
    }
    const wanted = {
      counter: "counter",
      labelled_counter: "counter",
      gauge: "gauge",
      window: "gauge",
      histogram: "histogram",
      derived: entry.kind === "derived" ? entry.metricType ?? "gauge" : "gauge",
    }[entry.kind];
    assert.equal(type.get(metric.family), wanted, metric.family);
    switch (entry.kind) {
      case "counter":
      case "gauge": {
        const shown = entry.show?.(stats) ?? value(entry);
        assert.equal(samples.get(series(metric.family, metric.labels)), shown, where(entry));
        break;
      }
      case "labelled_counter":
        entry.values.forEach((v, i) =>
          assert.equal(samples.get(series(metric.family, { [entry.label]: v })), 500 + i, v)
        );
        break;
      case "histogram":
        assert.equal(samples.get(`${metric.family}_count`), latency.histogram.count);
        break;
      default:
        assert.equal(
          samples.get(series(metric.family, metric.labels)),
          snapshot[entry.name],
          where(entry),
        );
    }
  }
  // Besides the schema's: build_info, and the per-upstream families (none without upstreams).
  assert.deepEqual([...type.keys()].filter((f) => !families.has(f)), ["foo_proxy_build_info"]);
});

Deno.test("the recovery file keeps exactly the counters the schema marks recovered", () => {
  const { stats, latency, value } = distinct();
  const text = serializeRecoveryState(captureRecoveryState(stats, { latency }));
  const file = JSON.parse(text);
  const kept = STORED_COUNTERS.filter((spec) => spec.recovered !== false);
  const keys = (section: StoredSpec["section"]) =>
    kept.filter((spec) => spec.section === section).map(recoveryKey).sort();
  assert.deepEqual(Object.keys(file.totals).sort(), keys("snapshot"));
  assert.deepEqual(
    Object.keys(file.latency).filter((k) => k !== "histogram").sort(),
    keys("latency"),
  );

  const fresh = new Stats({ clock: () => NOW + 60_000 });
  restoreRecoveryState(fresh, parseRecoveryState(text), { latency: fresh.latency });
  for (const spec of STORED_COUNTERS) {
    const want = spec.recovered === false ? 0 : value(spec);
    assert.equal(readCounter(spec, fresh, fresh.latency), want, where(spec));
  }
  assert.deepEqual(fresh.snapshot().connections_closed, stats.snapshot().connections_closed);
});

Deno.test("a recovery file without an optional counter reads it as 0; without a required one it is corrupt", () => {
  const { stats, latency } = distinct();
  const file = captureRecoveryState(stats, { latency });
  const optional = STORED_COUNTERS.filter((spec) => spec.recovered === "optional");
  const required = STORED_COUNTERS.filter((spec) => spec.recovered === "required");
  assert.ok(optional.length > 0 && required.length > 0);
  for (const spec of optional) {
    const older = structuredClone(file);
    delete older.totals[recoveryKey(spec)];
    const fresh = new Stats({ clock: () => NOW });
    restoreRecoveryState(fresh, parseRecoveryState(JSON.stringify(older)));
    assert.equal(readCounter(spec, fresh, fresh.latency), 0, where(spec));
  }
  for (const spec of required) {
    const broken = structuredClone(file) as unknown as Record<string, Record<string, unknown>>;
    const key = recoveryKey(spec);
    delete broken[spec.section === "latency" ? "latency" : "totals"][key];
    assert.throws(
      () => parseRecoveryState(JSON.stringify(broken)),
      (e) => e instanceof RecoveryFormatError && e.message.includes(`.${key}"`),
      where(spec),
    );
  }
});

Deno.test("the admin servers' counters are schema counters, shown in the snapshot", () => {
  const stats = new Stats({ clock: () => NOW });
  const counters = statsCounters(stats);
  const targets = Object.values(ADMIN_COUNTERS);
  assert.equal(new Set(targets).size, targets.length, "two admin counters kept in one");
  assert.deepEqual(Object.keys(counters).sort(), Object.keys(new HttpServerCounters()).sort());
  let n = 1;
  for (const name of Object.keys(ADMIN_COUNTERS) as (keyof typeof ADMIN_COUNTERS)[]) {
    counters[name] += n;
    counters[name]++;
    const snapshot = stats.snapshot() as unknown as Record<string, number>;
    assert.equal(snapshot[ADMIN_COUNTERS[name]], n + 1, name);
    n += 10;
  }
});

/** The field names of `interface NAME` in a source file, in order (two-space indented lines). */
async function interfaceFields(path: string, name: string): Promise<string[]> {
  const text = await Deno.readTextFile(new URL(`../${path}`, import.meta.url));
  const body = text.slice(text.indexOf(`export interface ${name} {`));
  return [...body.slice(0, body.indexOf("\n}")).matchAll(/^ {2}(\w+)\??:/gm)].map((m) => m[1]);
}

Deno.test("the StatsSnapshot and LatencySummary types list the schema's fields, in its order", async () => {
  const top = (section: SchemaEntry["section"]) => [
    ...new Set(
      COUNTER_SCHEMA.filter((e) => e.section === section && e.kind !== "histogram")
        .map((e) => ("group" in e && e.group !== undefined ? e.group : e.name)),
    ),
  ];
  assert.deepEqual(await interfaceFields("src/stats/stats.ts", "StatsSnapshot"), top("snapshot"));
  assert.deepEqual(await interfaceFields("src/stats/latency.ts", "LatencySummary"), top("latency"));
});
