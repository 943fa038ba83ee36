/**
 * The dashboard served at `GET /` of the stats app: one HTML page with its CSS and script inline,
 * built once from constants shipped in the program, so it works offline and from a compiled
 * binary, and loads nothing from anywhere but its own origin (`GET /events`). A
 * `Content-Security-Policy` header says the same to the browser.
 *
 * Every value is written as text next to its label, and every chart has its current and
 * 5-minute maximum values in words beside it, so nothing depends on colour or on seeing the
 * chart. Elements carry the `/stats` field they show (`data-field`) and, once filled, the raw
 * number (`data-value`); the id of a plain value is its field name (e.g. `request_rate_10s`).
 *
 * @module
 */
import { CLOSE_REASONS } from "../stats/stats.ts";
import { DASHBOARD_SCRIPT } from "./dashboard_script.ts";
import { DASHBOARD_CSS } from "./dashboard_style.ts";

/** The `Content-Security-Policy` of the page: inline code, and connections to its origin only. */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'unsafe-inline'",
  "style-src 'unsafe-inline'",
  "connect-src 'self'",
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

type Format = "rate" | "seconds" | "bytes" | "int" | "duration";

/** One labelled value: `[field, label, format]`; `alert` marks counters that should stay 0. */
type Row = readonly [field: string, label: string, format: Format, alert?: "alert"];

const TRAFFIC: readonly Row[] = [
  ["request_rate_1s", "Requests/s (last 1 s)", "rate"],
  ["request_rate_10s", "Requests/s (last 10 s)", "rate"],
  ["response_rate_1s", "Responses/s (last 1 s)", "rate"],
  ["response_rate_10s", "Responses/s (last 10 s)", "rate"],
  ["msg_req", "REQ messages", "int"],
  ["msg_ack", "ACK messages", "int"],
  ["msg_nak", "NAK messages", "int"],
  ["requests_in_flight", "Requests in flight", "int"],
];

const LATENCY: readonly Row[] = [
  ["latency_p50_seconds", "p50 (median)", "seconds"],
  ["latency_p99_seconds", "p99", "seconds"],
  ["latency_max_seconds", "Maximum", "seconds"],
  ["latency_samples", "Replies timed", "int"],
];

const CONNECTIONS: readonly Row[] = [
  ["connections_active", "Active", "int"],
  ["connections_total", "Accepted in total", "int"],
  ["connections_rejected", "Rejected at the limit", "int", "alert"],
];

const BYTES: readonly Row[] = [
  ["bytes_downstream", "From clients (downstream)", "bytes"],
  ["bytes_upstream", "From upstreams", "bytes"],
];

const INVALID: readonly Row[] = [
  ["msg_invalid", "All kinds", "int", "alert"],
  ["msg_invalid_by_kind.type", "Unknown type", "int", "alert"],
  ["msg_invalid_by_kind.seq", "Missing or bad Seq", "int", "alert"],
  ["msg_invalid_by_kind.direction", "Wrong direction", "int", "alert"],
  ["msg_invalid_by_kind.truncated", "Truncated at close", "int", "alert"],
];

const TLS: readonly Row[] = [
  ["tls_handshakes", "Handshakes", "int"],
  ["tls_handshake_failures.timeout", "Failed: too slow", "int", "alert"],
  ["tls_handshake_failures.eof", "Failed: client left", "int"],
  ["tls_handshake_failures.not_tls", "Failed: not TLS", "int", "alert"],
  ["tls_handshake_failures.alert", "Failed: client refused our certificate", "int", "alert"],
  ["tls_handshake_failures.incompatible", "Failed: no version or cipher in common", "int", "alert"],
  ["tls_handshake_failures.other", "Failed: other", "int", "alert"],
  ["tls_reloads", "Certificate reloads", "int"],
  ["tls_reload_failures", "Certificate reload failures", "int", "alert"],
];

/** Who may come in: source lists and limits, PROXY headers, the WebSocket door. */
const ACCESS: readonly Row[] = [
  ["connections_closed.denied", "Refused: --allow / --deny", "int", "alert"],
  ["connections_closed.source_limit", "Refused: --max-connections-per-source", "int", "alert"],
  ["rate_limit_pauses", "Reads paused: --rate-limit-per-source", "int"],
  ["source_table_full", "Per-source table full (served unlimited)", "int", "alert"],
  ["proxy_headers", "PROXY headers taken", "int"],
  ["proxy_header_untrusted", "PROXY header from a peer not listed", "int", "alert"],
  ["proxy_header_missing", "PROXY header missing", "int", "alert"],
  ["proxy_header_malformed", "PROXY header malformed", "int", "alert"],
  ["proxy_header_oversized", "PROXY header oversized", "int", "alert"],
  ["proxy_header_truncated", "PROXY header cut short", "int", "alert"],
  ["proxy_header_timeout", "PROXY header too slow", "int", "alert"],
  ["ws_connections", "ws clients upgraded (--ws-listen)", "int"],
  ["ws_rejected_origin", "ws: Origin refused (403)", "int", "alert"],
  ["ws_rejected_not_websocket", "ws: not an upgrade (426)", "int", "alert"],
  ["ws_rejected_bad_request", "ws: bad handshake", "int", "alert"],
  ["ws_rejected_timeout", "ws: handshake too slow", "int", "alert"],
  ["ws_rejected_busy", "ws: handshakes over the cap", "int", "alert"],
  ["ws_rejected_tls", "ws: TLS handshake failed", "int", "alert"],
  ["ws_protocol_errors", "ws: protocol errors", "int", "alert"],
];

const RESILIENCE: readonly Row[] = [
  ["failovers", "Failovers (--resume)", "int", "alert"],
  ["replays", "Replayed REQs (--resume)", "int", "alert"],
  ["resume_failures", "Resume failures", "int", "alert"],
  ["replies_dropped", "Replies dropped (renumber)", "int", "alert"],
  ["internal_errors", "Internal errors", "int", "alert"],
  ["upstream_errors", "Upstream errors", "int", "alert"],
  ["upstream_connect_retries", "Upstream connect retries", "int", "alert"],
  ["upstream_tls_verify_failures", "Upstream TLS: certificate refused", "int", "alert"],
  ["upstream_tls_handshake_failures", "Upstream TLS: handshake failed", "int", "alert"],
  ["inflight_limit_pauses", "Pauses at --max-inflight", "int"],
  ["accept_errors", "Accept errors", "int", "alert"],
  ["accept_resource_errors", "Accept errors (out of resources)", "int", "alert"],
  ["log_lines_dropped", "Log lines dropped", "int", "alert"],
  ["stats_lines_dropped", "Stats lines dropped", "int", "alert"],
  ["unmatched_replies", "Unmatched replies", "int", "alert"],
  ["duplicate_seq", "Duplicate Seqs", "int", "alert"],
  ["untracked_requests", "Untimed REQs", "int"],
  ["unanswered_requests", "Unanswered REQs", "int", "alert"],
  ["admin_connections_rejected", "Admin connections rejected", "int", "alert"],
  ["admin_request_timeouts", "Admin request timeouts", "int", "alert"],
  ["admin_bad_requests", "Admin bad requests", "int", "alert"],
  ["admin_idle_closed", "Admin idle connections closed", "int"],
  ["admin_misdirected_requests", "Admin requests for another Host", "int", "alert"],
  ["sse_clients_refused", "Dashboard streams refused", "int", "alert"],
  ["worker_restarts", "Data-plane worker restarts", "int", "alert"],
  ["config_reload_failures", "Config reload failures", "int", "alert"],
  ["usr1_ignored", "SIGUSR1 ignored", "int"],
];

/** The charts: id, heading, and one legend entry per series (solid line first, then dashed). */
const CHARTS = [
  ["chart-rates", "Requests and responses per second (1 s rate)", ["requests/s", "responses/s"]],
  ["chart-latency", "Latency p50 and p99 (since start)", ["p50", "p99"]],
  ["chart-connections", "Active connections", ["active connections"]],
] as const;

function value(field: string, format: Format, alert?: string): string {
  const id = field.includes(".") ? "" : ` id="${field}"`;
  const flag = alert ? " data-alert" : "";
  return `<dd${id} data-field="${field}" data-format="${format}" data-zero${flag}>–</dd>`;
}

function list(rows: readonly Row[]): string {
  return `<dl>${
    rows.map(([field, label, format, alert]) =>
      `<div><dt>${label}</dt>${value(field, format, alert)}</div>`
    ).join("")
  }</dl>`;
}

/** How many grid columns a section takes: one (unset), two where there are two, or all. */
type Span = "wide" | "span2";

function section(id: string, title: string, body: string, span?: Span): string {
  return `<section aria-labelledby="h-${id}"${span ? ` class="${span}"` : ""}>` +
    `<h2 id="h-${id}">${title}</h2>${body}</section>`;
}

function chart([id, title, series]: (typeof CHARTS)[number]): string {
  const keys = series.map((label, k) =>
    `<li id="${id}-${k}"><span class="${
      k === 0 ? "key-solid" : "key-dashed"
    }" aria-hidden="true">` +
    `</span><span>${label} (${k === 0 ? "solid" : "dashed"} line)</span></li>`
  ).join("");
  return `<figure aria-labelledby="${id}-title"><h2 id="${id}-title">${title}</h2>` +
    `<canvas id="${id}" role="img" aria-label="${title}: no data yet"></canvas>` +
    `<figcaption>Last 5 minutes (since the page was opened).<ul>${keys}</ul></figcaption></figure>`;
}

function closeReasons(): string {
  const rows = CLOSE_REASONS.map((reason) =>
    `<tr data-reason="${reason}"><th scope="row">${reason.replaceAll("_", " ")}</th>` +
    `<td class="n" data-field="connections_closed.${reason}" data-format="int" data-zero>–</td></tr>`
  ).join("");
  return `<table><caption>Connections closed, by reason</caption>` +
    `<thead><tr><th scope="col">Reason</th><th scope="col" class="n">Count</th></tr></thead>` +
    `<tbody id="close-reasons">${rows}</tbody></table>`;
}

function upstreams(): string {
  const heads = [
    ["Name"],
    ["Address"],
    ["State"],
    ["Connections (active / total)", "n"],
    ["Requests", "n"],
    ["Replies", "n"],
    ["Requests/s", "n"],
    ["Replies/s", "n"],
    ["Errors (connect / stream)", "n"],
    ["Ejections", "n"],
    ["Last health check"],
  ].map(([h, n]) => `<th scope="col"${n ? ` class="n"` : ""}>${h}</th>`).join("");
  return `<table><caption>One row per upstream; state is up, down, ejected or draining</caption>` +
    `<thead><tr>${heads}</tr></thead><tbody id="upstreams"></tbody></table>`;
}

// Filled by the script (fillWorkers); the section stays hidden while no worker is reported (the
// data plane runs on the main thread), and the Restarts column while none has restarted.
function workers(): string {
  return `<table><caption id="workers-caption">One row per data-plane worker</caption>` +
    `<thead><tr><th scope="col">Worker</th><th scope="col" class="n">Connections</th>` +
    `<th scope="col" class="n">Replies/s</th>` +
    `<th scope="col" class="n" id="workers-restarts" hidden>Restarts</th></tr></thead>` +
    `<tbody id="workers"></tbody></table>`;
}

function renderPage(): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>foo-proxy dashboard</title>
<link rel="icon" href="data:,">
<style>${DASHBOARD_CSS}</style>
</head>
<body data-state="connecting">
<header>
<h1>foo-proxy</h1>
<p id="status" role="status" aria-live="polite" data-state="connecting">Connecting to the proxy…</p>
<p class="meta">Up <span id="uptime_seconds" data-field="uptime_seconds" data-format="duration">–</span>;
last update <span id="updated">never</span></p>
</header>
<main>
<div class="grid">
${section("traffic", "Traffic", list(TRAFFIC))}
${section("latency", "Latency (REQ to reply, since start)", list(LATENCY))}
${section("connections", "Connections", list(CONNECTIONS))}
${section("bytes", "Bytes received", list(BYTES))}
<div class="charts wide">${CHARTS.map(chart).join("\n")}</div>
${section("upstreams", "Upstreams", upstreams(), "wide")}
${section("workers", "Data-plane workers", workers(), "span2")}
${section("invalid", "Invalid lines (forwarded unchanged)", list(INVALID))}
${section("closed", "Close reasons", closeReasons())}
${section("tls", "TLS (--tls-cert)", list(TLS))}
${section("access", "Access control and other doors", list(ACCESS))}
${section("resilience", "Resilience and dropped output", list(RESILIENCE), "wide")}
</div>
</main>
<script>${DASHBOARD_SCRIPT}</script>
</body>
</html>
`;
}

/** The dashboard page, built once at start-up. */
export const DASHBOARD_HTML: string = renderPage();
