/**
 * The Prometheus text exposition (format 0.0.4) of the proxy's statistics, served at `/metrics`.
 *
 * Every name starts with `foo_proxy_`, counters end in `_total`, and units are seconds and bytes.
 * Labels take values from small closed sets (direction, type, kind, reason, side, window): never
 * an address, a connection id or a Seq.
 *
 * @module
 */
import { CLOSE_REASONS, type StatsSnapshot } from "../stats/stats.ts";
import { LatencyStats } from "../stats/latency.ts";
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

/** Renders `snapshot` (and the latency stats) as Prometheus text, ending with a newline. */
export function renderMetrics(snapshot: StatsSnapshot, options: RenderMetricsOptions = {}): string {
  const latency = options.latency ?? new LatencyStats();
  const out = new Exposition();

  out.family("foo_proxy_build_info", "gauge", "Build information; the value is always 1.");
  out.sample("foo_proxy_build_info", { version: options.version ?? VERSION }, 1);
  out.family("foo_proxy_uptime_seconds", "gauge", "Seconds since the proxy started.");
  out.sample("foo_proxy_uptime_seconds", {}, snapshot.uptime_seconds);

  out.family(
    "foo_proxy_messages_total",
    "counter",
    "Valid Foo messages seen, by direction (downstream: from clients) and type.",
  );
  out.sample(
    "foo_proxy_messages_total",
    { direction: "downstream", type: "req" },
    snapshot.msg_req,
  );
  out.sample("foo_proxy_messages_total", { direction: "upstream", type: "ack" }, snapshot.msg_ack);
  out.sample("foo_proxy_messages_total", { direction: "upstream", type: "nak" }, snapshot.msg_nak);

  out.family(
    "foo_proxy_invalid_messages_total",
    "counter",
    "Lines that do not follow the protocol (forwarded unchanged), by kind.",
  );
  for (const [kind, value] of Object.entries(snapshot.msg_invalid_by_kind)) {
    out.sample("foo_proxy_invalid_messages_total", { kind }, value);
  }

  out.family("foo_proxy_requests_per_second", "gauge", "REQ messages per second over a window.");
  out.sample("foo_proxy_requests_per_second", { window: "1s" }, snapshot.request_rate_1s);
  out.sample("foo_proxy_requests_per_second", { window: "10s" }, snapshot.request_rate_10s);
  out.family(
    "foo_proxy_responses_per_second",
    "gauge",
    "ACK and NAK messages per second over a window.",
  );
  out.sample("foo_proxy_responses_per_second", { window: "1s" }, snapshot.response_rate_1s);
  out.sample("foo_proxy_responses_per_second", { window: "10s" }, snapshot.response_rate_10s);

  out.family(
    "foo_proxy_connections_accepted_total",
    "counter",
    "Downstream connections accepted, including rejected ones.",
  );
  out.sample("foo_proxy_connections_accepted_total", {}, snapshot.connections_total);
  out.family(
    "foo_proxy_connections_rejected_total",
    "counter",
    "Downstream connections closed at once because the connection limit was reached.",
  );
  out.sample("foo_proxy_connections_rejected_total", {}, snapshot.connections_rejected);
  out.family("foo_proxy_connections_active", "gauge", "Downstream connections being served.");
  out.sample("foo_proxy_connections_active", {}, snapshot.connections_active);
  out.family(
    "foo_proxy_connections_closed_total",
    "counter",
    "Downstream connections closed, by reason.",
  );
  const closed: Record<string, number | undefined> = snapshot.connections_closed;
  for (const reason of CLOSE_REASONS) {
    out.sample("foo_proxy_connections_closed_total", { reason }, closed[reason] ?? 0);
  }
  for (const [reason, value] of Object.entries(closed)) {
    if (!(CLOSE_REASONS as readonly string[]).includes(reason)) {
      out.sample("foo_proxy_connections_closed_total", { reason }, value ?? 0);
    }
  }

  out.family(
    "foo_proxy_upstream_errors_total",
    "counter",
    "Failed connects to an upstream plus upstream connections that failed mid-stream (the sum of " +
      "the per-upstream connect failures and stream errors, and of upstreams removed since).",
  );
  out.sample("foo_proxy_upstream_errors_total", {}, snapshot.upstream_errors);
  out.family(
    "foo_proxy_upstream_local_errors_total",
    "counter",
    "Upstream connects that failed for want of a local resource (EMFILE, ENFILE, ENOBUFS, " +
      "ENOMEM, EADDRNOTAVAIL): the proxy's trouble, never counted against an upstream.",
  );
  out.sample("foo_proxy_upstream_local_errors_total", {}, snapshot.upstream_local_errors);
  out.family(
    "foo_proxy_upstream_connect_retries_total",
    "counter",
    "Upstream connect attempts that failed and were retried (--connect-retries).",
  );
  out.sample(
    "foo_proxy_upstream_connect_retries_total",
    {},
    snapshot.upstream_connect_retries,
  );
  out.family(
    "foo_proxy_inflight_limit_pauses_total",
    "counter",
    "Times reading a downstream paused at --max-inflight unanswered REQs.",
  );
  out.sample("foo_proxy_inflight_limit_pauses_total", {}, snapshot.inflight_limit_pauses);
  out.family(
    "foo_proxy_failovers_total",
    "counter",
    "Upstream connections replaced after dying with REQs outstanding (--resume).",
  );
  out.sample("foo_proxy_failovers_total", {}, snapshot.failovers);
  out.family(
    "foo_proxy_replayed_requests_total",
    "counter",
    "REQs sent again on a new upstream connection after a failover (--resume; at-least-once).",
  );
  out.sample("foo_proxy_replayed_requests_total", {}, snapshot.replays);
  out.family(
    "foo_proxy_resume_failures_total",
    "counter",
    "Connections --resume could not carry over to a new upstream connection (closed instead).",
  );
  out.sample("foo_proxy_resume_failures_total", {}, snapshot.resume_failures);
  out.family(
    "foo_proxy_internal_errors_total",
    "counter",
    "Unexpected errors caught before they could end the process (each closed one connection at most).",
  );
  out.sample("foo_proxy_internal_errors_total", {}, snapshot.internal_errors);
  out.family(
    "foo_proxy_replies_dropped_total",
    "counter",
    "--resume=renumber: replies whose Seq matches no REQ sent upstream, dropped rather than relayed wrong.",
  );
  out.sample("foo_proxy_replies_dropped_total", {}, snapshot.replies_dropped);
  out.family(
    "foo_proxy_usr1_ignored_total",
    "counter",
    "SIGUSR1 signals neutralised (the debugger Deno opens on it is closed; stats are on SIGUSR2).",
  );
  out.sample("foo_proxy_usr1_ignored_total", {}, snapshot.usr1_ignored);
  out.family(
    "foo_proxy_log_lines_dropped_total",
    "counter",
    "Log lines dropped because stderr was not being read (output never blocks traffic).",
  );
  out.sample("foo_proxy_log_lines_dropped_total", {}, snapshot.log_lines_dropped);
  out.family(
    "foo_proxy_access_log_lines_dropped_total",
    "counter",
    "Access-log lines dropped because their reader stalled (the access log never blocks traffic).",
  );
  out.sample(
    "foo_proxy_access_log_lines_dropped_total",
    {},
    snapshot.access_log_lines_dropped,
  );
  out.family(
    "foo_proxy_stats_lines_dropped_total",
    "counter",
    "SIGUSR2 stats lines dropped because stdout was not being read.",
  );
  out.sample("foo_proxy_stats_lines_dropped_total", {}, snapshot.stats_lines_dropped);
  out.family(
    "foo_proxy_accept_errors_total",
    "counter",
    "Accept errors that concerned one connection; accepting carries on at once.",
  );
  out.sample("foo_proxy_accept_errors_total", {}, snapshot.accept_errors);
  out.family(
    "foo_proxy_accept_resource_errors_total",
    "counter",
    "Accept errors from resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM); accepting pauses 5-100 ms.",
  );
  out.sample("foo_proxy_accept_resource_errors_total", {}, snapshot.accept_resource_errors);
  out.family(
    "foo_proxy_admin_connections_rejected_total",
    "counter",
    "Admin HTTP connections closed at once because the admin connection cap was reached.",
  );
  out.sample("foo_proxy_admin_connections_rejected_total", {}, snapshot.admin_connections_rejected);
  out.family(
    "foo_proxy_admin_request_timeouts_total",
    "counter",
    "Admin HTTP requests whose headers or body came too slowly, or whose reader stalled.",
  );
  out.sample("foo_proxy_admin_request_timeouts_total", {}, snapshot.admin_request_timeouts);
  out.family(
    "foo_proxy_admin_bad_requests_total",
    "counter",
    "Admin HTTP requests refused as malformed or too large before reaching the app.",
  );
  out.sample("foo_proxy_admin_bad_requests_total", {}, snapshot.admin_bad_requests);
  out.family(
    "foo_proxy_admin_idle_closed_total",
    "counter",
    "Admin HTTP connections closed at the headers deadline having sent nothing (browser pre-connects); not errors.",
  );
  out.sample("foo_proxy_admin_idle_closed_total", {}, snapshot.admin_idle_closed);
  out.family(
    "foo_proxy_admin_misdirected_requests_total",
    "counter",
    "Admin HTTP requests refused (421) because their Host named no address of the admin server: DNS rebinding, or a name to allow.",
  );
  out.sample(
    "foo_proxy_admin_misdirected_requests_total",
    {},
    snapshot.admin_misdirected_requests,
  );
  out.family(
    "foo_proxy_sse_clients_refused_total",
    "counter",
    "Dashboard event-stream clients (GET /events) refused because the cap on streams was reached.",
  );
  out.sample("foo_proxy_sse_clients_refused_total", {}, snapshot.sse_clients_refused);

  out.family(
    "foo_proxy_received_bytes_total",
    "counter",
    "Bytes received from each side (and forwarded to the other).",
  );
  out.sample("foo_proxy_received_bytes_total", { side: "downstream" }, snapshot.bytes_downstream);
  out.sample("foo_proxy_received_bytes_total", { side: "upstream" }, snapshot.bytes_upstream);

  out.family(
    "foo_proxy_requests_in_flight",
    "gauge",
    "REQ messages forwarded and awaiting their reply (tracked ones).",
  );
  out.sample("foo_proxy_requests_in_flight", {}, latency.inFlight);

  const h = latency.histogram;
  const name = "foo_proxy_request_duration_seconds";
  out.family(name, "histogram", "Time from a REQ to its ACK or NAK on the same connection.");
  const cumulative = h.cumulativeCounts();
  for (let i = 0; i < h.bounds.length; i++) {
    out.sample(`${name}_bucket`, { le: formatValue(h.bounds[i]) }, cumulative[i]);
  }
  out.sample(`${name}_bucket`, { le: "+Inf" }, h.count);
  out.sample(`${name}_sum`, {}, h.sum);
  out.sample(`${name}_count`, {}, h.count);

  out.family(
    "foo_proxy_protocol_anomalies_total",
    "counter",
    "Replies with no outstanding REQ of their Seq (unmatched_reply) and REQs reusing an " +
      "outstanding Seq (duplicate_seq).",
  );
  out.sample(
    "foo_proxy_protocol_anomalies_total",
    { kind: "unmatched_reply" },
    latency.unmatchedReplies,
  );
  out.sample("foo_proxy_protocol_anomalies_total", { kind: "duplicate_seq" }, latency.duplicateSeq);
  out.family(
    "foo_proxy_untracked_requests_total",
    "counter",
    "REQs forwarded but not timed (over 10000 outstanding on one connection, or a Seq above 2^53).",
  );
  out.sample("foo_proxy_untracked_requests_total", {}, latency.untrackedRequests);
  out.family(
    "foo_proxy_unanswered_requests_total",
    "counter",
    "Timed REQ messages whose connection ended before their reply.",
  );
  out.sample("foo_proxy_unanswered_requests_total", {}, latency.unansweredRequests);
  renderUpstreams(out, snapshot.upstreams ?? []);
  return out.text();
}

/** States an upstream can be in: one `foo_proxy_upstream_state` series each, 1 for the current. */
const UPSTREAM_STATES = ["up", "down", "ejected", "draining"] as const;

// Per-upstream series, labelled with the configured name (bounded: the set is configured).
function renderUpstreams(out: Exposition, upstreams: StatsSnapshot["upstreams"]): void {
  if (upstreams.length === 0) return;
  const each = (
    name: string,
    type: "counter" | "gauge",
    help: string,
    value: (u: StatsSnapshot["upstreams"][number]) => number,
  ) => {
    out.family(name, type, help);
    for (const u of upstreams) out.sample(name, { upstream: u.name }, value(u));
  };
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
