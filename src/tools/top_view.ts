/**
 * The screen of `foo-proxy top`, as a pure function: what `GET /stats` returned (or why it could
 * not be fetched) and the terminal's size in, plain text lines out. No escape codes, no clock
 * reads, no I/O: `cmd/top.ts` owns the terminal and the network.
 *
 * Every line is at most `columns` characters and there are at most `rows` lines; everything
 * drawn is ASCII, and text that comes from the network (upstream names, states, close reasons,
 * errors) has its control characters replaced, so a hostile endpoint cannot move the cursor.
 *
 * @module
 */
import type { LatencySummary } from "../stats/latency.ts";
import type { StatsSnapshot, UpstreamStats, WorkerStats } from "../stats/stats.ts";

/**
 * What `GET /stats` answers (the snapshot plus the latency figures). Every field may be missing:
 * the proxy on the other end may be an older or newer version, and missing numbers show as `-`.
 */
export type TopSnapshot = Partial<StatsSnapshot & LatencySummary>;

/** Everything one frame shows. */
export interface TopState {
  /** The stats URL being polled (shown in the title). */
  url: string;
  /** How often it is polled (ms), shown in the title and the retry message. */
  intervalMs: number;
  /** The current time (ms, same clock as `fetchedAt`), for the age of stale data. */
  now: number;
  /** The last snapshot fetched. Unset: none yet. */
  snapshot?: TopSnapshot;
  /**
   * The snapshot fetched before `snapshot`, for per-upstream rates (the proxy reports totals per
   * upstream; a rate is their difference over the uptime between the two). Unset: rates show `-`.
   */
  previous?: TopSnapshot;
  /** When `snapshot` was fetched (ms). Unset: never. */
  fetchedAt?: number;
  /** Why the last poll failed. Unset: it succeeded (or none finished yet). */
  error?: string;
  /** Polls that failed in a row. @default {0} */
  failures?: number;
}

/** The terminal's size in character cells. */
export interface TopSize {
  /** Width; lines are cut to it. */
  columns: number;
  /** Height; at most this many lines are returned. */
  rows: number;
}

/** The footer, always on the last row. */
export const TOP_FOOTER = "q: quit";

const LABEL = 15;
const GAP = "   ";

/**
 * The lines of one frame of `foo-proxy top` for `state` on a terminal of `size`: title, status
 * (or why the proxy is unreachable), the counters, one row per upstream, and the footer.
 */
export function renderTop(state: TopState, size: TopSize): string[] {
  const width = Math.max(1, Math.floor(size.columns));
  const height = Math.max(1, Math.floor(size.rows));
  const s = state.snapshot;
  const head: string[] = [title(state, width), status(state)];
  const body: string[] = [];
  if (s === undefined) {
    body.push("", state.error === undefined ? "Waiting for the first answer..." : "No data yet.");
  } else {
    body.push("");
    for (const [label, items] of sections(s)) body.push(...flow(label, items, width));
  }
  if (height === 1) return [fit(TOP_FOOTER, width)];
  const upstreams = upstreamRows(s);
  const rates = s === undefined ? new Map() : upstreamRates(s, state.previous);
  const room = height - 1 - head.length; // the footer takes the last row
  // The upstreams keep at least one line (a blank above it when there is room), taken from the
  // counters when the screen is short: a row that does not fit is counted, never silently lost.
  const keep = upstreams.length === 0 ? 0 : Math.min(Math.max(room, 0), 2);
  const shownBody = body.slice(0, Math.max(0, room - keep));
  const left = room - shownBody.length;
  const table = upstreams.length > 0 && left > 0
    ? upstreamTable(upstreams, rates, width, left >= 2 ? left - 1 : left)
    : [];
  const lines = [
    ...[...head, ...shownBody].map((line) => fit(line, width)),
    ...(table.length > 0 && left >= 2 ? [""] : []),
    ...table,
  ].slice(0, height - 1);
  while (lines.length < height - 1) lines.push("");
  return [...lines, fit(TOP_FOOTER, width)];
}

function title(state: TopState, width: number): string {
  const left = `foo-proxy top  ${clean(state.url)}  every ${formatDuration(state.intervalMs)}`;
  const uptime = state.snapshot?.uptime_seconds;
  const right = typeof uptime === "number" ? `proxy up ${formatUptime(uptime)}` : "";
  if (right === "" || left.length + 2 + right.length > width) return fit(left, width);
  return left + " ".repeat(width - left.length - right.length) + right;
}

function status(state: TopState): string {
  if (state.error === undefined) {
    if (state.fetchedAt === undefined) return "Connecting...";
    return "OK";
  }
  const failures = state.failures ?? 1;
  const stale = state.fetchedAt === undefined
    ? "no data yet"
    : `numbers below are ${formatDuration(Math.max(0, state.now - state.fetchedAt))} old`;
  return `UNREACHABLE: ${clean(state.error)}; retrying every ${
    formatDuration(state.intervalMs)
  } (${failures} failed in a row, ${stale})`;
}

function sections(s: TopSnapshot): [string, string[]][] {
  const kind = s.msg_invalid_by_kind;
  const closed = Object.entries(s.connections_closed ?? {})
    .filter(([, n]) => typeof n === "number")
    .sort(([a, x], [b, y]) => (y as number) - (x as number) || a.localeCompare(b))
    .map(([reason, n]) => `${clean(reason)} ${count(n)}`);
  return [
    ["Requests/s", [`1s ${rate(s.request_rate_1s)}`, `10s ${rate(s.request_rate_10s)}`]],
    ["Responses/s", [`1s ${rate(s.response_rate_1s)}`, `10s ${rate(s.response_rate_10s)}`]],
    ["Latency", [
      `p50 ${latency(s.latency_p50_seconds)}`,
      `p99 ${latency(s.latency_p99_seconds)}`,
      `max ${latency(s.latency_max_seconds)}`,
      `samples ${count(s.latency_samples)}`,
      `in flight ${count(s.requests_in_flight)}`,
    ]],
    ["Messages", [
      `REQ ${count(s.msg_req)}`,
      `ACK ${count(s.msg_ack)}`,
      `NAK ${count(s.msg_nak)}`,
      `total ${count(s.msg_total)}`,
    ]],
    ["Connections", [
      `active ${count(s.connections_active)}`,
      `total ${count(s.connections_total)}`,
      `rejected ${count(s.connections_rejected)}`,
    ]],
    ...workerSection(s),
    ["Invalid lines", [
      `total ${count(s.msg_invalid)}`,
      `type ${count(kind?.type)}`,
      `seq ${count(kind?.seq)}`,
      `direction ${count(kind?.direction)}`,
      `truncated ${count(kind?.truncated)}`,
    ]],
    ["Closed", closed.length > 0 ? closed : ["none yet"]],
    ["Bytes", [
      `from clients ${bytes(s.bytes_downstream)}`,
      `from upstream ${bytes(s.bytes_upstream)}`,
    ]],
    ["Resilience", [
      `upstream errors ${count(s.upstream_errors)}`,
      `connect retries ${count(s.upstream_connect_retries)}`,
      `failovers ${count(s.failovers)}`,
      `replays ${count(s.replays)}`,
      `resume failures ${count(s.resume_failures)}`,
      `in-flight pauses ${count(s.inflight_limit_pauses)}`,
      `replies dropped ${count(s.replies_dropped)}`,
      `internal errors ${count(s.internal_errors)}`,
    ]],
    ["Anomalies", [
      `unmatched replies ${count(s.unmatched_replies)}`,
      `duplicate Seq ${count(s.duplicate_seq)}`,
      `untracked ${count(s.untracked_requests)}`,
      `unanswered ${count(s.unanswered_requests)}`,
    ]],
  ];
}

// Each data-plane worker's connections and replies/s (the balance across cores); none without.
function workerSection(s: TopSnapshot): [string, string[]][] {
  const rows = objectRows<WorkerStats>(s.workers);
  if (rows.length === 0) return [];
  return [[
    "Workers",
    rows.map((w) =>
      `${count(w.worker)}: ${count(w.connections_active)} conns, ${
        rate(w.replies_per_second)
      } replies/s${isNumber(w.restarts) && w.restarts > 0 ? `, ${count(w.restarts)} restarts` : ""}`
    ),
  ]];
}

/** `label` then `items` separated by gaps, wrapped under the label's column to fit `width`. */
function flow(label: string, items: string[], width: number): string[] {
  const indent = width >= LABEL + 12 ? LABEL : 2;
  const lines: string[] = [];
  let line = indent === LABEL ? label.padEnd(LABEL) : label;
  let empty = indent === LABEL;
  if (!empty) {
    lines.push(fit(line, width));
    line = " ".repeat(indent);
    empty = true;
  }
  for (const item of items) {
    if (!empty && line.length + GAP.length + item.length > width) {
      lines.push(line);
      line = " ".repeat(indent);
      empty = true;
    }
    line += (empty ? "" : GAP) + item;
    empty = false;
  }
  lines.push(fit(line, width));
  return lines;
}

/** Requests and replies per second of one upstream between two snapshots (NaN: unknown). */
export interface UpstreamRate {
  requests: number;
  replies: number;
}

/**
 * Each upstream's requests/s and replies/s between `before` and `now`, by name. An upstream
 * missing from `before`, with another address there, or whose counters went back (a restarted
 * proxy, an upstream removed and added again) gets none; so does every one when no time passed.
 */
export function upstreamRates(
  now: TopSnapshot,
  before: TopSnapshot | undefined,
): Map<string, UpstreamRate> {
  const rates = new Map<string, UpstreamRate>();
  if (before === undefined) return rates;
  const dt = Number(now.uptime_seconds) - Number(before.uptime_seconds);
  if (!(dt > 0)) return rates;
  const earlier = new Map(upstreamRows(before).map((u) => [u.name, u]));
  const per = (a: unknown, b: unknown) => isNumber(a) && isNumber(b) && a >= b ? (a - b) / dt : NaN;
  for (const u of upstreamRows(now)) {
    const was = earlier.get(u.name);
    if (was === undefined || was.address !== u.address) continue;
    rates.set(u.name, {
      requests: per(u.requests, was.requests),
      replies: per(u.replies, was.replies),
    });
  }
  return rates;
}

interface Column {
  head: string;
  width: number;
  cell: (u: UpstreamStats, rate: UpstreamRate | undefined) => string;
  /** Left-aligned (text) rather than right-aligned (numbers). */
  left?: boolean;
}

const UPSTREAM_COLUMNS: Column[] = [
  { head: "STATE", width: 8, left: true, cell: (u) => text(u.state) },
  { head: "ACTIVE", width: 7, cell: (u) => count(u.connections_active) },
  { head: "REQ/S", width: 9, cell: (_, r) => rate(r?.requests) },
  { head: "REPLY/S", width: 9, cell: (_, r) => rate(r?.replies) },
  { head: "REQUESTS", width: 12, cell: (u) => count(u.requests) },
  { head: "REPLIES", width: 12, cell: (u) => count(u.replies) },
  { head: "ERRORS", width: 8, cell: (u) => count(sum(u.connect_failures, u.stream_errors)) },
];

/**
 * The heading and one row per upstream, in at most `room` lines; rows that do not fit are
 * counted in a last line, `... and N more` (with the heading on the same line when `room` is 1).
 */
function upstreamTable(
  upstreams: UpstreamStats[],
  rates: Map<string, UpstreamRate>,
  width: number,
  room: number,
): string[] {
  if (room < 1) return [];
  const heading = `Upstreams (${upstreams.length})`;
  const moreText = (n: number) => `... and ${n} more (enlarge the terminal)`;
  if (room === 1) return [fit(`${heading} ${moreText(upstreams.length)}`, width)];
  // Rows shown: all when heading, column heads and rows fit; else one line goes to "more".
  const shown = upstreams.length <= room - 2 ? upstreams.length : Math.max(0, room - 3);
  const lines = [fit(heading, width)];
  if (shown > 0) {
    const cells = upstreams.slice(0, shown).map((u) => {
      const r = rates.get(u.name);
      return { name: text(u.name), cells: UPSTREAM_COLUMNS.map((c) => c.cell(u, r)) };
    });
    // A loop, not Math.max(...list): an answer with a million rows must not overflow the stack.
    let longest = 4;
    for (const u of upstreams) longest = Math.max(longest, text(u.name, "").length);
    const widths = columnWidths(cells.map((c) => c.cells), width - 2 - Math.min(longest, 16));
    const fixed = widths.reduce((n, w) => n + 1 + w, 0);
    const nameWidth = Math.max(4, Math.min(longest, width - fixed - 2));
    const row = (name: string, values: string[]) =>
      fit(
        "  " + name.padEnd(nameWidth).slice(0, nameWidth) +
          values.map((value, i) => {
            const cut = value.slice(0, widths[i]);
            return " " +
              (UPSTREAM_COLUMNS[i].left ? cut.padEnd(widths[i]) : cut.padStart(widths[i]));
          }).join(""),
        width,
      );
    lines.push(row("NAME", UPSTREAM_COLUMNS.map((c) => c.head)));
    for (const c of cells) lines.push(row(c.name, c.cells));
  }
  if (shown < upstreams.length) lines.push(fit(`  ${moreText(upstreams.length - shown)}`, width));
  return lines.slice(0, room);
}

/**
 * The widths of the upstream columns: their usual widths when they fit in `width` columns (a
 * steady layout from frame to frame), else just what each column's heading and cells need, so a
 * narrow terminal (70 columns) still shows whole names and numbers.
 */
function columnWidths(rows: string[][], width: number): number[] {
  const usual = UPSTREAM_COLUMNS.map((c) => c.width);
  if (usual.reduce((n, w) => n + 1 + w, 0) <= width) return usual;
  return UPSTREAM_COLUMNS.map((c, i) => {
    let need = c.head.length;
    for (const row of rows) need = Math.max(need, row[i].length);
    return Math.min(need, c.width);
  });
}

/** `text` cut to `width` columns (with `~` marking the cut). */
function fit(text: string, width: number): string {
  if (text.length <= width) return text;
  return width <= 1 ? text.slice(0, width) : text.slice(0, width - 1) + "~";
}

/** Network text made printable: control characters and non-ASCII become `?`. */
function clean(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, "?");
}

/**
 * A field from the network as screen text: a string (control characters replaced) or a number as
 * it is, anything else (an object, null, a missing field) as `missing`. `String()` of a hostile
 * object can throw.
 */
function text(value: unknown, missing = "-"): string {
  if (typeof value === "string") return clean(value);
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return missing;
}

/** The rows of a snapshot's `upstreams` that are objects (an answer may hold anything). */
function upstreamRows(s: TopSnapshot | undefined): UpstreamStats[] {
  return objectRows<UpstreamStats>(s?.upstreams);
}

/** The items of `list` that are objects, taken as `Row`s (their fields are checked on use). */
function objectRows<Row>(list: unknown): Row[] {
  if (!Array.isArray(list)) return [];
  return list.filter((row): row is Row =>
    typeof row === "object" && row !== null && !Array.isArray(row)
  );
}

function isNumber(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value);
}

function sum(...values: unknown[]): number | undefined {
  return values.every(isNumber) ? values.reduce((a, b) => a + b, 0) : undefined;
}

/** An integer with thousands separators (`12,345`), `-` when not a number. */
export function count(value: unknown): string {
  if (!isNumber(value)) return "-";
  const text = String(Math.round(Math.abs(value)));
  return (value < 0 ? "-" : "") + text.replace(/\B(?=(\d{3})+$)/g, ",");
}

/** A rate per second: one decimal under 1,000, whole numbers above. */
export function rate(value: unknown): string {
  if (!isNumber(value)) return "-";
  return value < 1000 ? value.toFixed(1) : count(value);
}

/** A latency given in seconds, in us, ms or s. */
export function latency(seconds: unknown): string {
  if (!isNumber(seconds)) return "-";
  if (seconds < 0.001) return `${Math.round(seconds * 1e6)} us`;
  if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms`;
  return `${seconds.toFixed(2)} s`;
}

/** A byte count in B, KiB, MiB, GiB or TiB. */
export function bytes(value: unknown): string {
  if (!isNumber(value)) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = value;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit++;
  }
  return unit === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[unit]}`;
}

/** A duration given in ms, as `250ms`, `1s`, `1.5s` or `2m`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${Number((ms / 1000).toFixed(1))}s`;
  return `${Number((ms / 60_000).toFixed(1))}m`;
}

/** An uptime given in seconds, as `05:03`, `1:02:03` or `3d 04:05:06`. */
export function formatUptime(seconds: number): string {
  const total = Math.max(0, Math.floor(seconds));
  const d = Math.floor(total / 86_400);
  const h = Math.floor(total / 3600) % 24;
  const m = Math.floor(total / 60) % 60;
  const sec = total % 60;
  const two = (n: number) => String(n).padStart(2, "0");
  if (d > 0) return `${d}d ${two(h)}:${two(m)}:${two(sec)}`;
  if (h > 0) return `${h}:${two(m)}:${two(sec)}`;
  return `${two(m)}:${two(sec)}`;
}
