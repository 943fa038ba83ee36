/**
 * The counter schema: every counter, gauge, window and histogram of the proxy declared once, in
 * the order of the stats object (the SIGUSR2 line and `GET /stats`). The snapshot
 * (`Stats.snapshot()`), the latency part of `/stats` (`summarizeLatency()`), the Prometheus text
 * (`renderMetrics()`) and the recovery file (`captureRecoveryState()`, `parseRecoveryState()`,
 * `restoreRecoveryState()`) are derived from {@linkcode COUNTER_SCHEMA}; none of them names a
 * counter by hand.
 *
 * A stored number (a {@linkcode StoredSpec}) has an index ({@linkcode counterIndex}): the slot
 * it will take in a worker's row of a `SharedArrayBuffer` when the data plane is split into
 * workers (one writer per row, rows summed on read when `summed`). Until then it lives where
 * `store` says: a field of `Stats`, of its `counts` (the analyzers add to those) or of its
 * `LatencyStats`, so the hot path keeps incrementing plain fields.
 *
 * @module
 */
import type { MessageCounts } from "../protocol/analyzer.ts";
import type { LatencyStats } from "./latency.ts";
import type { Stats, StatsSnapshot } from "./stats.ts";

/** Every reason a proxied connection ends with, in the order reports list them. */
export const CLOSE_REASONS = [
  "client_closed",
  "completed",
  "half_close_timeout",
  "upstream_closed",
  "upstream_error",
  "downstream_error",
  "upstream_unreachable",
  "shutdown",
  "idle_timeout",
  "max_connections",
  "proxy_header",
  // Source access (--allow/--deny, --max-connections-per-source): refused before a byte is read.
  "denied",
  "source_limit",
  "tls_handshake",
] as const;

/** Why a proxied connection ended (a metrics label: a closed set, never an address). */
export type CloseReason = typeof CLOSE_REASONS[number];

/**
 * How a TLS handshake with a client failed (`--tls-cert`; see `tls_termination.ts`), in the order
 * reports list them: a metrics label, a closed set.
 */
export const TLS_HANDSHAKE_FAILURES = [
  "timeout",
  "eof",
  "not_tls",
  "alert",
  "incompatible",
  "other",
] as const;

/** How a TLS handshake failed. */
export type TlsHandshakeFailure = typeof TLS_HANDSHAKE_FAILURES[number];

/** The `Stats` field each kind of handshake failure is counted in. */
export const TLS_FAILURE_FIELDS = {
  timeout: "tlsHandshakeTimeout",
  eof: "tlsHandshakeEof",
  not_tls: "tlsHandshakeNotTls",
  alert: "tlsHandshakeAlert",
  incompatible: "tlsHandshakeIncompatible",
  other: "tlsHandshakeOther",
} as const satisfies Record<TlsHandshakeFailure, NumericField<Stats>>;

/** The numeric fields of `T` (where a counter may be stored). */
export type NumericField<T> = { [K in keyof T]: T[K] extends number ? K : never }[keyof T];

/** Where a stored number lives until it moves into per-worker slots. */
export type CounterStore =
  /** `stats.counts[key]`: added to by the analyzers. */
  | { readonly counts: keyof MessageCounts }
  /** `stats[field]`. */
  | { readonly field: NumericField<Stats> }
  /** `latency[field]` (the stats' `LatencyStats`). */
  | { readonly latency: NumericField<LatencyStats> };

/** How an entry appears on `/metrics`: its family, and the labels of its series. */
export interface MetricSpec {
  /** The family name (`foo_proxy_…`; counters end in `_total`). */
  readonly family: string;
  /** The series' labels; unset: none. Entries of one family differ by their labels. */
  readonly labels?: Readonly<Record<string, string>>;
  /** `# HELP` text; given by the first entry of a family, the others leave it unset. */
  readonly help?: string;
}

/** Fields every schema entry has. */
interface EntryBase {
  /**
   * The field name in the stats object (snake_case, never renamed). For a member of a `group`,
   * its key inside the group's object. Also its key in the recovery file.
   */
  readonly name: string;
  /**
   * Which object the entry is a field of: `snapshot` (the SIGUSR2 line, the start of `/stats`)
   * or `latency` (what `/stats` adds after it).
   */
  readonly section: "snapshot" | "latency";
  /** What it means (also the `# HELP` text unless `metric.help` says otherwise). */
  readonly help: string;
  /** Its series on `/metrics`; unset: not exposed there. */
  readonly metric?: MetricSpec;
}

/** A number the proxy stores and adds to: a counter (only grows) or a gauge (goes up and down). */
export interface StoredSpec extends EntryBase {
  readonly kind: "counter" | "gauge";
  /** Where it lives now. */
  readonly store: CounterStore;
  /**
   * Whether the recovery file keeps it: `required` (a file without it is corrupt), `optional`
   * (added later: a file without it reads as 0) or `false` (gauges, and what is not persisted).
   */
  readonly recovered: "required" | "optional" | false;
  /** Whether the total over workers is the sum of theirs (true for every stored number so far). */
  readonly summed: boolean;
  /**
   * The object of the stats object it is a field of (`msg_invalid_by_kind`); unset: a field of
   * the section itself. A group sits where its first member is.
   */
  readonly group?: string;
  /** What the snapshot shows instead of the stored value (`upstream_errors` with upstream rows). */
  readonly show?: (stats: Stats) => number;
}

/** A counter with one value per label: `connections_closed` by reason. */
export interface LabelledSpec extends EntryBase {
  readonly kind: "labelled_counter";
  /** The label name on `/metrics`. */
  readonly label: string;
  /** Every value the proxy counts (each a slot); others read from a file are ignored. */
  readonly values: readonly string[];
  /** Where the counts live now: `stats[record]`, by value, only those seen. */
  readonly record: "closed";
  /** Kept by the recovery file (as an object of its own under `name`). */
  readonly recovered: "required";
  readonly summed: true;
}

/**
 * A moving-window rate: REQs (or replies) per second over the window. Summed across workers
 * bucket by bucket (each worker's window counts its own messages).
 */
export interface WindowSpec extends EntryBase {
  readonly kind: "window";
  /** Which of `stats.windows` it reads. */
  readonly window: keyof Stats["windows"];
  /**
   * Whether the recovery file keeps its buckets: the 10 s windows are persisted (as
   * `windows.requests` / `windows.responses`) and seed the 1 s ones on restore.
   */
  readonly recovered: boolean;
  readonly summed: true;
}

/**
 * The REQ→reply latency histogram (`latency.histogram`), merged across workers bucket by bucket;
 * its figures in `/stats` are derived entries.
 */
export interface HistogramSpec extends EntryBase {
  readonly kind: "histogram";
  readonly recovered: "required";
  readonly summed: true;
}

/** The sources a derived entry reads. */
export interface DeriveSources {
  /** The stats (only for the `snapshot` section: unset while building the `latency` one). */
  readonly stats: Stats;
  /** The latency stats (only for the `latency` section). */
  readonly latency: LatencyStats;
  /** The clock reading of this snapshot. */
  readonly now: number;
}

/**
 * A figure computed from others, never stored: `msg_total`, the uptime, a latency quantile. Not
 * summed across workers: computed again from the merged values.
 */
export interface DerivedSpec extends EntryBase {
  readonly kind: "derived";
  /** The Prometheus type when it has a `metric`. */
  readonly metricType?: "gauge" | "counter";
  /** Computes it. */
  readonly value: (from: DeriveSources) => unknown;
}

/** One entry of {@linkcode COUNTER_SCHEMA}. */
export type SchemaEntry = StoredSpec | LabelledSpec | WindowSpec | HistogramSpec | DerivedSpec;

const round3 = (value: number) => Math.round(value * 1000) / 1000;
const roundMicros = (seconds: number) => Math.round(seconds * 1e6) / 1e6;

/** A `StoredSpec` of a `Stats` field, summed across workers, on `/metrics` as `options.family`. */
function field(
  name: string,
  store: NumericField<Stats>,
  help: string,
  options: {
    family?: string;
    kind?: "counter" | "gauge";
    recovered?: "required" | "optional";
  } = {},
): StoredSpec {
  return {
    name,
    section: "snapshot",
    kind: options.kind ?? "counter",
    help,
    store: { field: store },
    recovered: options.recovered ?? false,
    summed: true,
    metric: options.family === undefined ? undefined : { family: options.family },
  };
}

/**
 * Every statistic, in the order of the stats object. Order matters: it is the order of the
 * fields of the SIGUSR2 line and `/stats`, and of the families on `/metrics`.
 */
export const COUNTER_SCHEMA: readonly SchemaEntry[] = [
  {
    name: "msg_total",
    section: "snapshot",
    kind: "derived",
    help: "`msg_req + msg_ack + msg_nak`: valid messages only.",
    value: ({ stats: { counts: c } }) => c.msg_req + c.msg_ack + c.msg_nak,
  },
  {
    name: "msg_req",
    section: "snapshot",
    kind: "counter",
    help: "Valid REQ messages from clients.",
    store: { counts: "msg_req" },
    recovered: "required",
    summed: true,
    metric: {
      family: "foo_proxy_messages_total",
      labels: { direction: "downstream", type: "req" },
      help: "Valid Foo messages seen, by direction (downstream: from clients) and type.",
    },
  },
  {
    name: "msg_ack",
    section: "snapshot",
    kind: "counter",
    help: "Valid ACK messages from the upstream.",
    store: { counts: "msg_ack" },
    recovered: "required",
    summed: true,
    metric: { family: "foo_proxy_messages_total", labels: { direction: "upstream", type: "ack" } },
  },
  {
    name: "msg_nak",
    section: "snapshot",
    kind: "counter",
    help: "Valid NAK messages from the upstream.",
    store: { counts: "msg_nak" },
    recovered: "required",
    summed: true,
    metric: { family: "foo_proxy_messages_total", labels: { direction: "upstream", type: "nak" } },
  },
  {
    name: "msg_invalid",
    section: "snapshot",
    kind: "derived",
    help: "Invalid lines, all kinds (forwarded unchanged, never in `msg_total`).",
    value: ({ stats: { counts: c } }) =>
      c.invalid_type + c.invalid_seq + c.invalid_direction + c.invalid_truncated,
  },
  window("request_rate_1s", "request1s", "1s", false),
  window("request_rate_10s", "request10s", "10s", true),
  window("response_rate_1s", "response1s", "1s", false),
  window("response_rate_10s", "response10s", "10s", true),
  field("connections_active", "connectionsActive", "Downstream connections being served.", {
    kind: "gauge",
    family: "foo_proxy_connections_active",
  }),
  field(
    "connections_total",
    "connectionsTotal",
    "Downstream connections accepted, including rejected ones.",
    { family: "foo_proxy_connections_accepted_total", recovered: "required" },
  ),
  field(
    "connections_rejected",
    "connectionsRejected",
    "Downstream connections closed at once because the connection limit was reached.",
    { family: "foo_proxy_connections_rejected_total", recovered: "required" },
  ),
  {
    ...field(
      "upstream_errors",
      "upstreamErrors",
      "Failed connects to an upstream plus upstream connections that failed mid-stream (the sum " +
        "of the per-upstream connect failures and stream errors, and of upstreams removed since).",
      { family: "foo_proxy_upstream_errors_total", recovered: "required" },
    ),
    // With upstream rows (a pool), the pool counts each failure in the two counters below; the
    // engine's own count is what is persisted.
    show: (stats) =>
      stats.upstreams === undefined
        ? stats.upstreamErrors
        : stats.upstreamConnectFailures + stats.upstreamStreamErrors,
  },
  field(
    "upstream_connect_failures",
    "upstreamConnectFailures",
    "Connects to an upstream that failed (every attempt, failovers included).",
  ),
  field(
    "upstream_stream_errors",
    "upstreamStreamErrors",
    "Upstream connections that failed mid-stream (reset, or closed with replies owed).",
  ),
  field(
    "upstream_local_errors",
    "upstreamLocalErrors",
    "Upstream connects that failed for want of a local resource (EMFILE, ENFILE, ENOBUFS, " +
      "ENOMEM): the proxy's trouble, never counted against an upstream.",
    { family: "foo_proxy_upstream_local_errors_total" },
  ),
  {
    ...field(
      "upstream_tls_verify_failures",
      "upstreamTlsVerifyFailures",
      "--upstream-tls: connects whose TLS handshake refused the upstream's certificate (unknown " +
        "issuer, wrong name, expired); each is also a connect failure.",
      { recovered: "optional" },
    ),
    metric: {
      family: "foo_proxy_upstream_tls_failures_total",
      labels: { kind: "verify" },
      help:
        "--upstream-tls: upstream connects whose TLS handshake failed, by kind (each is also a connect failure).",
    },
  },
  {
    ...field(
      "upstream_tls_handshake_failures",
      "upstreamTlsHandshakeFailures",
      "--upstream-tls: connects whose TLS handshake failed otherwise (an alert, a peer that does " +
        "not speak TLS, the connect timeout); each is also a connect failure.",
      { recovered: "optional" },
    ),
    metric: { family: "foo_proxy_upstream_tls_failures_total", labels: { kind: "handshake" } },
  },
  field(
    "upstream_pool_reused",
    "upstreamPoolReused",
    "--pool: upstream connections handed to a client from the idle pool instead of dialed.",
    { family: "foo_proxy_upstream_pool_reused_total" },
  ),
  field(
    "upstream_pool_idle",
    "upstreamPoolIdle",
    "--pool: upstream connections idle in the pool now.",
    { kind: "gauge", family: "foo_proxy_upstream_pool_idle" },
  ),
  field(
    "upstream_pool_discarded",
    "upstreamPoolDiscarded",
    "--pool: idle pooled connections the server closed, reset or sent unsolicited bytes on " +
      "(closed, never handed out).",
    { family: "foo_proxy_upstream_pool_discarded_total" },
  ),
  field(
    "upstream_pool_expired",
    "upstreamPoolExpired",
    "--pool: idle pooled connections closed after --pool-idle-timeout.",
    { family: "foo_proxy_upstream_pool_expired_total" },
  ),
  {
    ...field(
      "bytes_downstream",
      "bytesDownstream",
      "Bytes received from downstream clients (and forwarded upstream).",
      { recovered: "required" },
    ),
    metric: {
      family: "foo_proxy_received_bytes_total",
      labels: { side: "downstream" },
      help: "Bytes received from each side (and forwarded to the other).",
    },
  },
  {
    ...field(
      "bytes_upstream",
      "bytesUpstream",
      "Bytes received from the upstream (and forwarded to clients).",
      { recovered: "required" },
    ),
    metric: { family: "foo_proxy_received_bytes_total", labels: { side: "upstream" } },
  },
  {
    name: "uptime_seconds",
    section: "snapshot",
    kind: "derived",
    help: "Seconds since the proxy started.",
    metricType: "gauge",
    metric: { family: "foo_proxy_uptime_seconds" },
    value: ({ stats, now }) => round3((now - stats.startedAt) / 1000),
  },
  {
    ...invalid("type", "Lines whose type is not REQ, ACK or NAK (includes empty lines)."),
    metric: {
      family: "foo_proxy_invalid_messages_total",
      labels: { kind: "type" },
      help: "Lines that do not follow the protocol (forwarded unchanged), by kind.",
    },
  },
  invalid("seq", "Lines with a missing or non-numeric Seq."),
  invalid("direction", "Well-formed lines going the wrong way."),
  invalid("truncated", "A partial line left when the stream ended."),
  {
    name: "connections_closed",
    section: "snapshot",
    kind: "labelled_counter",
    help: "Downstream connections closed, by reason.",
    label: "reason",
    values: CLOSE_REASONS,
    record: "closed",
    recovered: "required",
    summed: true,
    metric: { family: "foo_proxy_connections_closed_total" },
  },
  // --accept-proxy / --send-proxy: one block.
  field(
    "proxy_headers",
    "proxyHeaders",
    "--accept-proxy: PROXY headers read from listed peers (the client they name is the connection's address).",
    { family: "foo_proxy_proxy_headers_total" },
  ),
  proxyHeaderError(
    "missing",
    "proxyHeaderMissing",
    "Connections from a listed peer that did not start with a PROXY header.",
  ),
  proxyHeaderError("malformed", "proxyHeaderMalformed", "PROXY headers that broke the spec."),
  proxyHeaderError(
    "oversized",
    "proxyHeaderOversized",
    "PROXY headers over the bounds (v1 107 bytes, v2 4 KiB).",
  ),
  proxyHeaderError(
    "untrusted",
    "proxyHeaderUntrusted",
    "PROXY headers from peers not in --accept-proxy.",
  ),
  proxyHeaderError(
    "timeout",
    "proxyHeaderTimeout",
    "Listed peers whose header did not come within --accept-proxy-timeout.",
  ),
  proxyHeaderError(
    "truncated",
    "proxyHeaderTruncated",
    "Connections that ended in the middle of their PROXY header.",
  ),
  field(
    "upstream_connect_retries",
    "upstreamConnectRetries",
    "Upstream connect attempts that failed and were retried (--connect-retries).",
    { family: "foo_proxy_upstream_connect_retries_total", recovered: "optional" },
  ),
  field(
    "inflight_limit_pauses",
    "inflightLimitPauses",
    "Times reading a downstream paused at --max-inflight unanswered REQs.",
    { family: "foo_proxy_inflight_limit_pauses_total", recovered: "optional" },
  ),
  // Source access and per-source limits (--rate-limit-per-source, the per-source table).
  field(
    "rate_limit_pauses",
    "rateLimitPauses",
    "Times reading a downstream paused because its source had used its --rate-limit-per-source tokens.",
    { family: "foo_proxy_rate_limit_pauses_total", recovered: "optional" },
  ),
  field(
    "source_table_full",
    "sourceTableFull",
    "Connections served without per-source limits because the per-source table had no room for their source.",
    { family: "foo_proxy_source_table_full_total" },
  ),
  field(
    "failovers",
    "failovers",
    "Upstream connections replaced after dying with REQs outstanding (--resume).",
    { family: "foo_proxy_failovers_total", recovered: "optional" },
  ),
  field(
    "replays",
    "replays",
    "REQs sent again on a new upstream connection after a failover (--resume; at-least-once).",
    { family: "foo_proxy_replayed_requests_total", recovered: "optional" },
  ),
  field(
    "resume_failures",
    "resumeFailures",
    "Connections --resume could not carry over to a new upstream connection (closed instead).",
    { family: "foo_proxy_resume_failures_total", recovered: "optional" },
  ),
  field(
    "internal_errors",
    "internalErrors",
    "Unexpected errors caught before they could end the process (each closed one connection at most).",
    { family: "foo_proxy_internal_errors_total", recovered: "optional" },
  ),
  field(
    "replies_dropped",
    "repliesDropped",
    "--resume=renumber: replies whose Seq matches no REQ sent upstream, dropped rather than relayed wrong.",
    { family: "foo_proxy_replies_dropped_total" },
  ),
  field(
    "mux_refused_lines",
    "muxRefusedLines",
    "--mux: client lines not forwarded: invalid lines (a server may or may not answer them, which would put every reply after out of step), a last line without its newline, a line too long.",
    { family: "foo_proxy_mux_refused_lines_total" },
  ),
  field(
    "mux_desyncs",
    "muxDesyncs",
    "--mux: shared upstream connections closed because a reply did not answer the REQ first in line (unsolicited, wrong Seq, invalid).",
    { family: "foo_proxy_mux_desyncs_total" },
  ),
  field(
    "mux_slow_clients",
    "muxSlowClients",
    "--mux: clients closed for leaving over 4 MiB of replies unread (a shared connection never waits for one client).",
    { family: "foo_proxy_mux_slow_clients_total" },
  ),
  field(
    "mux_upstream_connections",
    "muxUpstreamConnections",
    "--mux: shared upstream connections open.",
    { family: "foo_proxy_mux_upstream_connections", kind: "gauge" },
  ),
  field(
    "mux_upstream_writes",
    "muxUpstreamWrites",
    "--mux: writes to shared upstream connections (REQs forwarded per write: how much clients' lines were coalesced).",
    { family: "foo_proxy_mux_upstream_writes_total" },
  ),
  field(
    "tls_handshakes",
    "tlsHandshakes",
    "--tls-cert: TLS handshakes with clients that succeeded.",
    { family: "foo_proxy_tls_handshakes_total" },
  ),
  {
    ...tlsFailure("timeout", "No handshake within --tls-handshake-timeout (closed)."),
    metric: {
      family: "foo_proxy_tls_handshake_failures_total",
      labels: { kind: "timeout" },
      help: "--tls-cert: TLS handshakes with clients that failed (the client is closed), by kind.",
    },
  },
  tlsFailure("eof", "The client closed or reset the connection mid-handshake."),
  tlsFailure("not_tls", "The client sent bytes that are not TLS (plain text, HTTP, a Foo line)."),
  tlsFailure(
    "alert",
    "The client refused our certificate (a fatal alert: UnknownCA, BadCertificate).",
  ),
  tlsFailure("incompatible", "No TLS version, cipher or group in common (an old client)."),
  tlsFailure("other", "Any other handshake error."),
  {
    ...field(
      "tls_reloads",
      "tlsReloads",
      "--tls-cert: reloads (SIGHUP, POST /reload) that put a new key pair in service.",
      { family: "foo_proxy_tls_reloads_total" },
    ),
    summed: false,
  },
  {
    ...field(
      "tls_reload_failures",
      "tlsReloadFailures",
      "--tls-cert: reloads whose key pair could not be read or used (the running one kept serving).",
      { family: "foo_proxy_tls_reload_failures_total" },
    ),
    summed: false,
  },
  field(
    "usr1_ignored",
    "usr1Ignored",
    "SIGUSR1 signals neutralised (the debugger Deno opens on it is closed; stats are on SIGUSR2).",
    { family: "foo_proxy_usr1_ignored_total" },
  ),
  field(
    "log_lines_dropped",
    "logLinesDropped",
    "Log lines dropped because stderr was not being read (output never blocks traffic).",
    { family: "foo_proxy_log_lines_dropped_total" },
  ),
  field(
    "access_log_lines_dropped",
    "accessLogLinesDropped",
    "Access-log lines dropped because their reader stalled (the access log never blocks traffic).",
    { family: "foo_proxy_access_log_lines_dropped_total" },
  ),
  field(
    "stats_lines_dropped",
    "statsLinesDropped",
    "SIGUSR2 stats lines dropped because stdout was not being read.",
    { family: "foo_proxy_stats_lines_dropped_total" },
  ),
  field(
    "accept_errors",
    "acceptErrors",
    "Accept errors that concerned one connection; accepting carries on at once.",
    { family: "foo_proxy_accept_errors_total" },
  ),
  field(
    "accept_resource_errors",
    "acceptResourceErrors",
    "Accept errors from resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM); accepting pauses 5-100 ms.",
    { family: "foo_proxy_accept_resource_errors_total" },
  ),
  field(
    "admin_connections_rejected",
    "adminConnectionsRejected",
    "Admin HTTP connections closed at once because the admin connection cap was reached.",
    { family: "foo_proxy_admin_connections_rejected_total" },
  ),
  field(
    "admin_request_timeouts",
    "adminRequestTimeouts",
    "Admin HTTP requests whose headers or body came too slowly, or whose reader stalled.",
    { family: "foo_proxy_admin_request_timeouts_total" },
  ),
  field(
    "admin_bad_requests",
    "adminBadRequests",
    "Admin HTTP requests refused as malformed or too large before reaching the app.",
    { family: "foo_proxy_admin_bad_requests_total" },
  ),
  field(
    "admin_idle_closed",
    "adminIdleClosed",
    "Admin HTTP connections closed at the headers deadline having sent nothing (browser pre-connects); not errors.",
    { family: "foo_proxy_admin_idle_closed_total" },
  ),
  field(
    "admin_misdirected_requests",
    "adminMisdirectedRequests",
    "Admin HTTP requests refused (421) because their Host named no address of the admin server: DNS rebinding, or a name to allow.",
    { family: "foo_proxy_admin_misdirected_requests_total" },
  ),
  field(
    "sse_clients_refused",
    "sseClientsRefused",
    "Dashboard event-stream clients (GET /events) refused because the cap on streams was reached.",
    { family: "foo_proxy_sse_clients_refused_total" },
  ),
  // ---- WebSocket ingress (--ws-listen) ----
  field(
    "ws_connections",
    "wsConnections",
    "WebSocket clients upgraded (--ws-listen) and handed to the engine like TCP clients.",
    { family: "foo_proxy_ws_connections_total" },
  ),
  wsRejected("origin", "wsRejectedOrigin", "an Origin not allowed (403, --ws-origin)"),
  wsRejected("not_websocket", "wsRejectedNotWebsocket", "not an upgrade request (426)"),
  wsRejected(
    "bad_request",
    "wsRejectedBadRequest",
    "a malformed or too large request, a bad key or version (400, 426, 431)",
  ),
  wsRejected("timeout", "wsRejectedTimeout", "no whole request within the handshake deadline"),
  wsRejected("busy", "wsRejectedBusy", "closed in its handshake to make room (handshake cap)"),
  wsRejected("tls", "wsRejectedTls", "a failed TLS handshake (wss)"),
  {
    ...field("ws_messages_in", "wsMessagesIn", "WebSocket data messages received from clients."),
    metric: {
      family: "foo_proxy_ws_messages_total",
      labels: { direction: "in" },
      help: "WebSocket data messages, by direction.",
    },
  },
  {
    ...field(
      "ws_messages_out",
      "wsMessagesOut",
      "WebSocket data messages sent to clients (one per chunk of replies).",
    ),
    metric: { family: "foo_proxy_ws_messages_total", labels: { direction: "out" } },
  },
  field(
    "ws_protocol_errors",
    "wsProtocolErrors",
    "WebSocket clients closed for breaking the protocol (1002: unmasked frame, bad opcode or fragmentation; 1007: invalid UTF-8 in a text message).",
    { family: "foo_proxy_ws_protocol_errors_total" },
  ),
  field(
    "worker_restarts",
    "workerRestarts",
    "Data-plane workers that died (an uncaught error) and were replaced; their counted totals are kept.",
    { family: "foo_proxy_worker_restarts_total", recovered: "optional" },
  ),
  {
    name: "workers",
    section: "snapshot",
    kind: "derived",
    help:
      "Per data-plane worker: connections open, replies per second, restarts (the balance across cores).",
    value: ({ stats }) => stats.workers?.() ?? [],
  },
  {
    name: "upstreams",
    section: "snapshot",
    kind: "derived",
    help: "Per upstream: state, connections, requests, replies, errors, last check.",
    value: ({ stats }) => stats.upstreams?.() ?? [],
  },
  {
    name: "config_generation",
    section: "snapshot",
    kind: "gauge",
    help: "`--config`: how many times the file was loaded (0: no file).",
    store: { field: "configGeneration" },
    recovered: false,
    // Set by the supervisor alone: the workers' rows would count it N times.
    summed: false,
  },
  {
    name: "config_loaded_at",
    section: "snapshot",
    kind: "derived",
    help: "When the file was last loaded (ISO 8601); `null`: no file.",
    value: ({ stats }) =>
      stats.configLoadedAt > 0 ? new Date(stats.configLoadedAt).toISOString() : null,
  },
  {
    ...field(
      "config_reload_failures",
      "configReloadFailures",
      "Reloads that changed nothing because the file did not parse or validate.",
    ),
    summed: false,
  },
  {
    ...field(
      "config_watch_failures",
      "configWatchFailures",
      "`--config-watch`: times the file's directory could not be watched (no read grant, the inotify limit); reloads then need SIGHUP.",
    ),
    summed: false,
  },
  {
    ...field(
      "dns_resolve_failures",
      "dnsResolveFailures",
      "Resolutions of a `--forward dns+NAME:PORT` name that failed or found no record: the last good set is kept.",
      { family: "foo_proxy_dns_resolve_failures_total" },
    ),
    summed: false,
  },
  {
    ...field(
      "takeover_failures",
      "takeoverFailures",
      "`--takeover` steps that failed: a bad or abandoned request on this proxy's takeover socket (it serves on), the socket could not be opened, or the proxy taken over went away before its final statistics.",
      { family: "foo_proxy_takeover_failures_total" },
    ),
    summed: false,
  },

  // What `GET /stats` adds after the snapshot (and `/metrics` exposes): latency and anomalies.
  {
    name: "latency_histogram",
    section: "latency",
    kind: "histogram",
    help: "Time from a REQ to its ACK or NAK on the same connection.",
    recovered: "required",
    summed: true,
    metric: { family: "foo_proxy_request_duration_seconds" },
  },
  quantile("latency_p50_seconds", "Median REQ→reply latency estimate (seconds).", 0.5),
  quantile("latency_p99_seconds", "99th percentile REQ→reply latency estimate (seconds).", 0.99),
  {
    name: "latency_max_seconds",
    section: "latency",
    kind: "derived",
    help: "Largest REQ→reply latency seen (seconds).",
    value: ({ latency }) => roundMicros(latency.histogram.max),
  },
  {
    name: "latency_samples",
    section: "latency",
    kind: "derived",
    help: "Replies matched to a REQ (the histogram's count).",
    value: ({ latency }) => latency.histogram.count,
  },
  {
    name: "requests_in_flight",
    section: "latency",
    kind: "gauge",
    help: "REQ messages forwarded and awaiting their reply (tracked ones).",
    store: { latency: "inFlight" },
    recovered: false,
    summed: true,
    metric: { family: "foo_proxy_requests_in_flight" },
  },
  {
    name: "unmatched_replies",
    section: "latency",
    kind: "counter",
    help: "Replies with no outstanding REQ of that Seq on their connection.",
    store: { latency: "unmatchedReplies" },
    recovered: "required",
    summed: true,
    metric: {
      family: "foo_proxy_protocol_anomalies_total",
      labels: { kind: "unmatched_reply" },
      help: "Replies with no outstanding REQ of their Seq (unmatched_reply) and REQs reusing an " +
        "outstanding Seq (duplicate_seq).",
    },
  },
  {
    name: "duplicate_seq",
    section: "latency",
    kind: "counter",
    help: "REQs whose Seq was already outstanding on their connection.",
    store: { latency: "duplicateSeq" },
    recovered: "required",
    summed: true,
    metric: { family: "foo_proxy_protocol_anomalies_total", labels: { kind: "duplicate_seq" } },
  },
  {
    name: "untracked_requests",
    section: "latency",
    kind: "counter",
    help:
      "REQs forwarded but not timed (over 10000 outstanding on one connection, or a Seq above 2^53).",
    store: { latency: "untrackedRequests" },
    recovered: "required",
    summed: true,
    metric: { family: "foo_proxy_untracked_requests_total" },
  },
  {
    name: "unanswered_requests",
    section: "latency",
    kind: "counter",
    help: "Timed REQ messages whose connection ended before their reply.",
    store: { latency: "unansweredRequests" },
    recovered: "required",
    summed: true,
    metric: { family: "foo_proxy_unanswered_requests_total" },
  },
];

function window(
  name: string,
  which: keyof Stats["windows"],
  span: "1s" | "10s",
  recovered: boolean,
): WindowSpec {
  const requests = which.startsWith("request");
  const messages = requests ? "REQ messages" : "ACK and NAK messages";
  const over = span === "1s" ? "the last second" : "the last 10 seconds";
  return {
    name,
    section: "snapshot",
    kind: "window",
    help: `${requests ? "REQs" : "ACK+NAK"} per second over ${over}.`,
    window: which,
    recovered,
    summed: true,
    metric: {
      family: `foo_proxy_${requests ? "requests" : "responses"}_per_second`,
      labels: { window: span },
      help: `${messages} per second over a window.`,
    },
  };
}

/** A `ws_rejected_<reason>` counter: one series of `foo_proxy_ws_rejected_total`. */
function wsRejected(reason: string, store: NumericField<Stats>, what: string): StoredSpec {
  return {
    ...field(
      `ws_rejected_${reason}`,
      store,
      `WebSocket connections refused before the upgrade: ${what}.`,
    ),
    metric: {
      family: "foo_proxy_ws_rejected_total",
      labels: { reason },
      help: reason === "origin"
        ? "WebSocket connections refused before the upgrade, by reason."
        : undefined,
    },
  };
}

function invalid(kind: "type" | "seq" | "direction" | "truncated", help: string): StoredSpec {
  return {
    name: kind,
    section: "snapshot",
    kind: "counter",
    help,
    group: "msg_invalid_by_kind",
    store: { counts: `invalid_${kind}` },
    recovered: "required",
    summed: true,
    metric: { family: "foo_proxy_invalid_messages_total", labels: { kind } },
  };
}

function proxyHeaderError(
  kind: "missing" | "malformed" | "oversized" | "untrusted" | "timeout" | "truncated",
  store: NumericField<Stats>,
  help: string,
): StoredSpec {
  // Flat names: a group member's slot is named without its group, and other groups use these
  // kinds (`truncated`) already.
  return {
    name: `proxy_header_${kind}`,
    section: "snapshot",
    kind: "counter",
    help,
    store: { field: store },
    recovered: false,
    summed: true,
    metric: {
      family: "foo_proxy_proxy_header_errors_total",
      labels: { kind },
      help: kind === "missing"
        ? "--accept-proxy: connections closed at the PROXY header step, by kind."
        : undefined,
    },
  };
}

function tlsFailure(kind: TlsHandshakeFailure, help: string): StoredSpec {
  return {
    name: kind,
    section: "snapshot",
    kind: "counter",
    help,
    group: "tls_handshake_failures",
    store: { field: TLS_FAILURE_FIELDS[kind] },
    recovered: false,
    summed: true,
    metric: { family: "foo_proxy_tls_handshake_failures_total", labels: { kind } },
  };
}

function quantile(name: string, help: string, q: number): DerivedSpec {
  return {
    name,
    section: "latency",
    kind: "derived",
    help,
    value: ({ latency }) => roundMicros(latency.histogram.quantile(q)),
  };
}

/** The stored numbers of the schema, in order: the index of each is its slot. */
export const STORED_COUNTERS: readonly StoredSpec[] = COUNTER_SCHEMA.filter(
  (entry): entry is StoredSpec => entry.kind === "counter" || entry.kind === "gauge",
);

/**
 * The slots of a worker's row, in order: each stored number (`STORED_COUNTERS`, named
 * `section.name`), then each value of each labelled counter
 * (`snapshot.connections_closed.client_closed`).
 * Windows and the histogram are not slots: each worker keeps its own buckets, merged bucket by
 * bucket on read.
 */
export const COUNTER_SLOTS: readonly string[] = [
  ...STORED_COUNTERS.map((spec) => `${spec.section}.${spec.name}`),
  ...COUNTER_SCHEMA.flatMap((entry) =>
    entry.kind === "labelled_counter"
      ? entry.values.map((v) => `${entry.section}.${entry.name}.${v}`)
      : []
  ),
];

/** The slot of a stored number (its index in {@linkcode COUNTER_SLOTS}); -1: not stored. */
export function counterIndex(name: string, section: SchemaEntry["section"] = "snapshot"): number {
  return COUNTER_SLOTS.indexOf(`${section}.${name}`);
}

/**
 * The stored number named `name` in the `snapshot` section.
 *
 * @throws {RangeError} when the schema declares no such stored number.
 */
export function counterSpec(name: string): StoredSpec {
  const spec = STORED_COUNTERS.find((s) => s.name === name && s.section === "snapshot");
  if (spec === undefined) throw new RangeError(`No stored counter "${name}" in the counter schema`);
  return spec;
}

/** Its key in the recovery file: a group member's is its store key (`invalid_type`). */
export function recoveryKey(spec: StoredSpec): string {
  return "counts" in spec.store ? spec.store.counts : spec.name;
}

/** Reads the stored value of `spec`. */
export function readCounter(spec: StoredSpec, stats: Stats, latency: LatencyStats): number {
  const store = spec.store;
  if ("counts" in store) return stats.counts[store.counts];
  if ("field" in store) return stats[store.field];
  return latency[store.latency];
}

/** Sets the stored value of `spec` (a counter kept by a component with its own counters object). */
export function writeCounter(
  spec: StoredSpec,
  stats: Stats,
  latency: LatencyStats,
  value: number,
): void {
  const store = spec.store;
  if ("counts" in store) stats.counts[store.counts] = value;
  else if ("field" in store) (stats[store.field] as number) = value;
  else (latency[store.latency] as number) = value;
}

/** Adds `n` to the stored value of `spec` (restoring, merging). */
export function addCounter(
  spec: StoredSpec,
  stats: Stats,
  latency: LatencyStats,
  n: number,
): void {
  const store = spec.store;
  if ("counts" in store) stats.counts[store.counts] += n;
  else if ("field" in store) (stats[store.field] as number) += n;
  else (latency[store.latency] as number) += n;
}

/** Builds the `snapshot` section from `stats` at `now`: a `StatsSnapshot`. */
export function buildSnapshot(stats: Stats, now: number): Record<string, unknown> {
  return buildSection("snapshot", { stats, latency: stats.latency, now });
}

/** Builds the `latency` section from `latency`: what `/stats` adds after the snapshot. */
export function buildLatencySection(latency: LatencyStats): Record<string, unknown> {
  return buildSection("latency", { latency, now: NaN });
}

function buildSection(
  section: SchemaEntry["section"],
  from: { stats?: Stats; latency: LatencyStats; now: number },
): Record<string, unknown> {
  const built: Record<string, unknown> = {};
  const { latency, now } = from;
  // The snapshot section reads `stats`; only the latency section is built without it.
  const stats = from.stats as Stats;
  for (const entry of COUNTER_SCHEMA) {
    if (entry.section !== section) continue;
    switch (entry.kind) {
      case "counter":
      case "gauge": {
        const value = entry.show?.(stats) ?? readCounter(entry, stats, latency);
        if (entry.group === undefined) built[entry.name] = value;
        else ((built[entry.group] ??= {}) as Record<string, number>)[entry.name] = value;
        break;
      }
      case "labelled_counter":
        // Only the reasons seen, in the order first seen (the stats object never lists zeros).
        built[entry.name] = { ...stats[entry.record] };
        break;
      case "window":
        built[entry.name] = round3(stats.windows[entry.window].rate(now));
        break;
      case "histogram":
        break; // on /metrics only; its figures in /stats are derived entries
      case "derived":
        built[entry.name] = entry.value({ stats, latency, now });
        break;
    }
  }
  return built;
}

/** The value of a `snapshot` entry (or group member) in a built snapshot. */
export function snapshotValue(snapshot: StatsSnapshot, entry: SchemaEntry): unknown {
  const object = snapshot as unknown as Record<string, unknown>;
  if ("group" in entry && entry.group !== undefined) {
    return (object[entry.group] as Record<string, unknown>)[entry.name];
  }
  return object[entry.name];
}
