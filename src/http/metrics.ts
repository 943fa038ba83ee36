/**
 * The Prometheus text exposition (format 0.0.4) of the proxy's statistics, served at `/metrics`.
 *
 * Every name starts with `foo_proxy_`, counters end in `_total`, and units are seconds and bytes.
 * Labels take values from small closed sets (direction, type, kind, reason, side, window, the
 * configured upstream names, the worker numbers): never an address, a connection id or a Seq.
 *
 * @module
 */
import {
  COUNTER_SCHEMA,
  type LabelledSpec,
  type NumericField,
  type SchemaEntry,
  snapshotValue,
  type StoredSpec,
} from "../stats/counter_schema.ts";
import type { Histogram } from "../stats/histogram.ts";
import { LatencyStats } from "../stats/latency.ts";
import type { StatsSnapshot, WorkerStats } from "../stats/stats.ts";
import { VERSION } from "../version.ts";

/** The `Content-Type` of the text exposition format 0.0.4. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Options for {@linkcode renderMetrics}. */
export interface RenderMetricsOptions {
  /** Latency histogram and anomaly counters; unset: exposed as empty (all zero). */
  latency?: LatencyStats;
  /** The `version` label of `foo_proxy_build_info`. @default {VERSION} */
  version?: string;
}

/**
 * Renders `snapshot` (and the latency stats) as Prometheus text, ending with a newline: one family
 * per `metric.family` of the counter schema, in the schema's order, then the per-upstream and
 * per-worker series.
 */
export function renderMetrics(snapshot: StatsSnapshot, options: RenderMetricsOptions = {}): string {
  const latency = options.latency ?? new LatencyStats();
  const out = new Exposition();

  out.family("foo_proxy_build_info", "gauge", "Build information; the value is always 1.");
  out.sample("foo_proxy_build_info", { version: options.version ?? VERSION }, 1);
  for (const [family, entries] of METRIC_FAMILIES) {
    const first = entries[0];
    const help = first.metric?.help ?? first.help;
    if (first.kind === "histogram") {
      out.family(family, "histogram", help);
      renderHistogram(out, family, latency.histogram);
      continue;
    }
    out.family(family, metricType(first), help);
    for (const entry of entries) {
      const labels = entry.metric?.labels ?? {};
      switch (entry.kind) {
        case "labelled_counter":
          renderLabelled(out, family, entry, snapshotValue(snapshot, entry));
          break;
        case "counter":
        case "gauge":
          out.sample(
            family,
            labels,
            entry.section === "latency"
              ? latency[storeField(entry)]
              : snapshotValue(snapshot, entry) as number,
          );
          break;
        default:
          out.sample(family, labels, snapshotValue(snapshot, entry) as number);
      }
    }
  }
  renderUpstreams(out, snapshot.upstreams ?? []);
  renderWorkers(out, snapshot.workers ?? []);
  return out.text();
}

/** The schema's entries that have a metric, by family, in the order each family first appears. */
const METRIC_FAMILIES: ReadonlyMap<string, readonly SchemaEntry[]> = metricFamilies();

function metricFamilies(): Map<string, SchemaEntry[]> {
  const families = new Map<string, SchemaEntry[]>();
  for (const entry of COUNTER_SCHEMA) {
    if (entry.metric === undefined) continue;
    const list = families.get(entry.metric.family);
    if (list) list.push(entry);
    else families.set(entry.metric.family, [entry]);
  }
  return families;
}

function metricType(entry: SchemaEntry): "counter" | "gauge" {
  switch (entry.kind) {
    case "counter":
    case "labelled_counter":
      return "counter";
    case "derived":
      return entry.metricType ?? "gauge";
    default:
      return "gauge";
  }
}

function storeField(entry: StoredSpec): NumericField<LatencyStats> {
  if (!("latency" in entry.store)) {
    throw new TypeError(`${entry.name} is in the latency section but not stored in LatencyStats`);
  }
  return entry.store.latency;
}

// Every declared value, zero or not, then any other a snapshot carries (escaped, never dropped).
function renderLabelled(out: Exposition, family: string, entry: LabelledSpec, value: unknown) {
  const counts = (value ?? {}) as Record<string, number | undefined>;
  for (const label of entry.values) {
    out.sample(family, { [entry.label]: label }, counts[label] ?? 0);
  }
  for (const [label, n] of Object.entries(counts)) {
    if (!entry.values.includes(label)) out.sample(family, { [entry.label]: label }, n ?? 0);
  }
}

function renderHistogram(out: Exposition, name: string, h: Histogram): void {
  const cumulative = h.cumulativeCounts();
  for (let i = 0; i < h.bounds.length; i++) {
    out.sample(`${name}_bucket`, { le: formatValue(h.bounds[i]) }, cumulative[i]);
  }
  out.sample(`${name}_bucket`, { le: "+Inf" }, h.count);
  out.sample(`${name}_sum`, {}, h.sum);
  out.sample(`${name}_count`, {}, h.count);
}

/** Writes one family at a time with a series per row (an upstream, a worker), labelled by `labels`. */
function rowFamilies<Row>(
  out: Exposition,
  rows: readonly Row[],
  labels: (row: Row) => Record<string, string>,
) {
  return (name: string, type: "counter" | "gauge", help: string, value: (row: Row) => number) => {
    out.family(name, type, help);
    for (const row of rows) out.sample(name, labels(row), value(row));
  };
}

/** States an upstream can be in: one `foo_proxy_upstream_state` series each, 1 for the current. */
const UPSTREAM_STATES = ["up", "down", "ejected", "draining"] as const;

// Per-upstream series, labelled with the configured name (bounded: the set is configured).
function renderUpstreams(out: Exposition, upstreams: StatsSnapshot["upstreams"]): void {
  if (upstreams.length === 0) return;
  const each = rowFamilies(out, upstreams, (u) => ({ upstream: u.name }));
  out.family(
    "foo_proxy_upstream_state",
    "gauge",
    "1 for the state each upstream is in (up, down, ejected, draining), 0 for the others.",
  );
  for (const u of upstreams) {
    for (const state of UPSTREAM_STATES) {
      out.sample(
        "foo_proxy_upstream_state",
        { upstream: u.name, state },
        u.state === state ? 1 : 0,
      );
    }
  }
  each(
    "foo_proxy_upstream_weight",
    "gauge",
    "Configured weight of each upstream.",
    (u) => u.weight,
  );
  each(
    "foo_proxy_upstream_connections_active",
    "gauge",
    "Connections open to each upstream.",
    (u) => u.connections_active,
  );
  each(
    "foo_proxy_upstream_connections_total",
    "counter",
    "Connections opened to each upstream.",
    (u) => u.connections_total,
  );
  each(
    "foo_proxy_upstream_requests_total",
    "counter",
    "Valid REQs forwarded to each upstream.",
    (u) => u.requests,
  );
  each(
    "foo_proxy_upstream_replies_total",
    "counter",
    "Valid replies relayed from each upstream.",
    (u) => u.replies,
  );
  each(
    "foo_proxy_upstream_connect_failures_total",
    "counter",
    "Failed connects to each upstream (every attempt, failovers included).",
    (u) => u.connect_failures,
  );
  each(
    "foo_proxy_upstream_stream_errors_total",
    "counter",
    "Connections to each upstream that failed mid-stream (reset, or closed with replies owed).",
    (u) => u.stream_errors,
  );
  each(
    "foo_proxy_upstream_ejections_total",
    "counter",
    "Times each upstream was ejected for failing in a row.",
    (u) => u.ejections,
  );
  each(
    "foo_proxy_upstream_check_latency_seconds",
    "gauge",
    "Duration of each upstream's last health check (0 before the first).",
    (u) => (u.last_check?.latency_ms ?? 0) / 1000,
  );
}

/**
 * The family of each worker's restarts. Not `foo_proxy_worker_restarts_total`: that is the total,
 * kept across a recovery (the rows are not), and one family mixing an unlabelled total with its
 * rows would make `sum()` count every restart twice.
 */
export const WORKER_RESTARTS_FAMILY = "foo_proxy_worker_restarts_by_worker_total";

// Per data-plane worker, labelled with its number (bounded: at most --workers of them).
function renderWorkers(out: Exposition, workers: readonly WorkerStats[]): void {
  if (workers.length === 0) return;
  const each = rowFamilies(out, workers, (w) => ({ worker: String(w.worker) }));
  each(
    "foo_proxy_worker_connections_active",
    "gauge",
    "Downstream connections each data-plane worker serves.",
    (w) => w.connections_active,
  );
  each(
    "foo_proxy_worker_replies_per_second",
    "gauge",
    "ACK+NAK each data-plane worker relayed per second over the last second.",
    (w) => w.replies_per_second,
  );
  each(
    WORKER_RESTARTS_FAMILY,
    "counter",
    "Times each data-plane worker was replaced after dying, since the process started.",
    (w) => w.restarts,
  );
}

/** Formats a sample value the way Prometheus parses it (`+Inf`, `-Inf`, `NaN`). */
export function formatValue(value: number): string {
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  if (Number.isNaN(value)) return "NaN";
  return String(value);
}

/** Escapes a label value: backslash, double quote and newline. */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
}

/** Escapes `# HELP` text: backslash and newline. */
export function escapeHelp(text: string): string {
  return text.replace(/[\\\n]/g, (c) => (c === "\n" ? "\\n" : "\\\\"));
}

class Exposition {
  #lines: string[] = [];

  family(name: string, type: "counter" | "gauge" | "histogram", help: string): void {
    this.#lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`);
  }

  sample(name: string, labels: Record<string, string>, value: number): void {
    const pairs = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabelValue(v)}"`);
    const labelText = pairs.length > 0 ? `{${pairs.join(",")}}` : "";
    this.#lines.push(`${name}${labelText} ${formatValue(value)}`);
  }

  text(): string {
    return this.#lines.join("\n") + "\n";
  }
}
