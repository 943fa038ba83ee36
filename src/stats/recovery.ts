/**
 * The persisted statistics state (`--recovery-path`): capturing it from {@linkcode Stats},
 * serializing, parsing and validating it, and restoring it after a restart. Pure: the file I/O is
 * in `proxy/recovery_file.ts`.
 *
 * Which counters the file keeps, and their keys, come from the counter schema (`recovered`).
 *
 * Restore rule: the totals always come back; the 10 s window's buckets come back only for the
 * part still inside the window, so after a downtime of 10 s or more the rates start from zero.
 *
 * @module
 */
import type { HistogramData } from "./histogram.ts";
import type { LatencyStats } from "./latency.ts";
import {
  addCounter,
  CLOSE_REASONS,
  readCounter,
  recoveryKey,
  STORED_COUNTERS,
  type StoredSpec,
} from "./counter_schema.ts";
import type { Stats } from "./stats.ts";
import type { WindowBucket } from "./window.ts";

/** The `format` marker of a recovery file. */
export const RECOVERY_FORMAT = "foo-proxy-recovery";
/** The version of the layout written by this build. */
export const RECOVERY_VERSION = 1;
/** Span of the persisted window: a downtime this long or longer restores totals only. */
export const RECOVERY_WINDOW_MS = 10_000;

/** The counters of the stats object the file keeps, by `recovered` (from the counter schema). */
const TOTALS = persisted("snapshot");
/** The latency counters the file keeps (beside the histogram). */
const LATENCY_COUNTERS = persisted("latency");
/** Close reasons this build counts: the only ones restored. */
const KNOWN_REASONS: ReadonlySet<string> = new Set(CLOSE_REASONS);

function persisted(section: StoredSpec["section"]): { spec: StoredSpec; key: string }[] {
  return STORED_COUNTERS.filter((spec) => spec.section === section && spec.recovered !== false)
    .map((spec) => ({ spec, key: recoveryKey(spec) }));
}

/**
 * Monotonic counters that survive a restart, by their key in the file (`recovered` in the counter
 * schema). An `optional` one (added after the format was set) may be missing from an older file:
 * it reads as 0, so adding one never turns an older file into a "corrupt" one.
 */
export type RecoveryTotals = Record<string, number>;

/**
 * Latency counters that survive a restart: the histogram, and the latency counters the counter
 * schema marks `recovered` (`unmatched_replies`, …) by name.
 */
export interface RecoveryLatency {
  /** The REQ→reply histogram. */
  histogram: HistogramData;
  /** Each recovered latency counter. */
  [counter: string]: number | HistogramData;
}

/** The persisted state, as written to the recovery file (one JSON object). */
export interface RecoveryState {
  /** Always {@linkcode RECOVERY_FORMAT}. */
  format: typeof RECOVERY_FORMAT;
  /** Layout version ({@linkcode RECOVERY_VERSION}). */
  version: number;
  /** When it was captured, in clock milliseconds (Unix epoch). */
  saved_at: number;
  /** The counters. */
  totals: RecoveryTotals;
  /** Closed connections by reason. */
  connections_closed: Record<string, number>;
  /** The 10 s windows' non-empty buckets (100 ms each), oldest first. */
  windows: { requests: WindowBucket[]; responses: WindowBucket[] };
  /** Latency histogram and anomaly counters; absent when latency is not tracked. */
  latency?: RecoveryLatency;
}

/** The recovery text is not a valid state (corrupt, truncated, or from an unknown version). */
export class RecoveryFormatError extends Error {
  /** Creates the error; `message` says what is wrong. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "RecoveryFormatError";
  }
}

/** Options for {@linkcode captureRecoveryState} and {@linkcode restoreRecoveryState}. */
export interface RecoveryOptions {
  /** Latency stats to persist or restore too; unset: latency is left out. */
  latency?: LatencyStats;
}

/** Captures the state of `stats` (and its latency) at `stats.clock()`. */
export function captureRecoveryState(stats: Stats, options: RecoveryOptions = {}): RecoveryState {
  const now = stats.clock();
  const closed: Record<string, number> = {};
  for (const [reason, n] of Object.entries(stats.closed)) if (n !== undefined) closed[reason] = n;
  const totals: RecoveryTotals = {};
  for (const { spec, key } of TOTALS) totals[key] = readCounter(spec, stats, stats.latency);
  const state: RecoveryState = {
    format: RECOVERY_FORMAT,
    version: RECOVERY_VERSION,
    saved_at: now,
    totals,
    connections_closed: closed,
    windows: {
      requests: stats.windows.request10s.buckets(now),
      responses: stats.windows.response10s.buckets(now),
    },
  };
  const latency = options.latency;
  if (latency) {
    const saved: RecoveryLatency = { histogram: latency.histogram.toData() };
    for (const { spec, key } of LATENCY_COUNTERS) saved[key] = readCounter(spec, stats, latency);
    state.latency = saved;
  }
  return state;
}

/** Serializes `state` as one line of JSON. */
export function serializeRecoveryState(state: RecoveryState): string {
  return JSON.stringify(state) + "\n";
}

/**
 * Parses and validates recovery text.
 *
 * @throws {RecoveryFormatError} naming the first problem found.
 */
export function parseRecoveryState(text: string): RecoveryState {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    // V8's message quotes the text it choked on: the file's bytes (multi-line, anyone's) must
    // not reach the log. Keep only where it failed.
    const at = /at position (\d+)/.exec((error as Error).message)?.[1];
    throw new RecoveryFormatError(`not valid JSON${at === undefined ? "" : ` (at byte ${at})`}`, {
      cause: error,
    });
  }
  const root = object(value, "the file");
  if (root.format !== RECOVERY_FORMAT) {
    throw new RecoveryFormatError(`"format" is not "${RECOVERY_FORMAT}"`);
  }
  if (root.version !== RECOVERY_VERSION) {
    throw new RecoveryFormatError(
      `unsupported version ${JSON.stringify(root.version)} (this build reads ${RECOVERY_VERSION})`,
    );
  }
  const savedAt = root.saved_at;
  if (typeof savedAt !== "number" || !Number.isFinite(savedAt) || savedAt < 0) {
    throw new RecoveryFormatError(`"saved_at" is not a time in milliseconds`);
  }
  const totalsIn = object(root.totals, `"totals"`);
  const totals: RecoveryTotals = {};
  for (const { spec, key } of TOTALS) {
    if (spec.recovered === "optional" && totalsIn[key] === undefined) continue;
    totals[key] = count(totalsIn[key], `"totals.${key}"`);
  }
  const closedIn = object(root.connections_closed, `"connections_closed"`);
  const closed: Record<string, number> = {};
  for (const [reason, n] of Object.entries(closedIn)) {
    if (!/^[a-z][a-z0-9_]{0,63}$/.test(reason)) {
      throw new RecoveryFormatError(`bad close reason ${JSON.stringify(reason.slice(0, 64))}`);
    }
    closed[reason] = count(n, `"connections_closed.${reason}"`);
  }
  const windowsIn = object(root.windows, `"windows"`);
  const state: RecoveryState = {
    format: RECOVERY_FORMAT,
    version: RECOVERY_VERSION,
    saved_at: savedAt,
    totals,
    connections_closed: closed,
    windows: {
      requests: buckets(windowsIn.requests, `"windows.requests"`),
      responses: buckets(windowsIn.responses, `"windows.responses"`),
    },
  };
  if (root.latency !== undefined) state.latency = latencyData(root.latency);
  return state;
}

/** What {@linkcode restoreRecoveryState} did. */
export interface RestoreResult {
  /** Time between the save and now, in ms (negative if the clock went back). */
  downtimeMs: number;
  /** Whether window buckets were restored (downtime under 10 s). */
  windowsRestored: boolean;
  /** Whether latency data was restored (present, and with this build's buckets). */
  latencyRestored: boolean;
  /**
   * Close reasons in the file that this build does not have (another build's, or a hand-edited
   * file's, such as `constructor`): left out, and the rest restored.
   */
  ignoredReasons: string[];
}

/**
 * Adds a persisted `state` to fresh `stats` (and latency): the totals always; the 10 s windows'
 * buckets (also seeding the 1 s windows) only when the downtime is under 10 s and the clock did
 * not step back. Gauges (active connections, requests in flight) are not restored.
 */
export function restoreRecoveryState(
  stats: Stats,
  state: RecoveryState,
  options: RecoveryOptions = {},
): RestoreResult {
  const now = stats.clock();
  for (const { spec, key } of TOTALS) {
    addCounter(spec, stats, stats.latency, state.totals[key] ?? 0);
  }
  const closed = stats.closed as Record<string, number | undefined>;
  const ignoredReasons: string[] = [];
  for (const [reason, n] of Object.entries(state.connections_closed)) {
    // Against the schema, never the prototype: `closed.constructor` is Object's function.
    if (!KNOWN_REASONS.has(reason)) {
      ignoredReasons.push(reason);
      continue;
    }
    closed[reason] = (Object.hasOwn(closed, reason) ? closed[reason] ?? 0 : 0) + n;
  }
  const downtimeMs = now - state.saved_at;
  const windowsRestored = downtimeMs >= 0 && downtimeMs < RECOVERY_WINDOW_MS;
  if (windowsRestored) {
    const w = stats.windows;
    w.request10s.restore(state.windows.requests, now);
    w.request1s.restore(state.windows.requests, now);
    w.response10s.restore(state.windows.responses, now);
    w.response1s.restore(state.windows.responses, now);
  }
  let latencyRestored = false;
  const latency = options.latency;
  if (latency && state.latency) {
    try {
      latency.histogram.addData(state.latency.histogram);
      latencyRestored = true;
    } catch {
      // Different buckets (another build): the histogram starts empty, the counters still add.
    }
    for (const { spec, key } of LATENCY_COUNTERS) {
      addCounter(spec, stats, latency, state.latency[key] as number);
    }
  }
  return { downtimeMs, windowsRestored, latencyRestored, ignoredReasons };
}

function object(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new RecoveryFormatError(`${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

function count(value: unknown, what: string): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new RecoveryFormatError(`${what} is not a non-negative integer`);
  }
  return value;
}

// A 10 s window of 100 ms buckets has 100 of them; allow slack for other layouts, not for junk.
const MAX_BUCKETS = 1000;

function buckets(value: unknown, what: string): WindowBucket[] {
  if (!Array.isArray(value)) throw new RecoveryFormatError(`${what} is not an array`);
  if (value.length > MAX_BUCKETS) {
    throw new RecoveryFormatError(`${what} has ${value.length} buckets (at most ${MAX_BUCKETS})`);
  }
  return value.map((item, i) => {
    const b = object(item, `${what}[${i}]`);
    if (typeof b.start !== "number" || !Number.isFinite(b.start)) {
      throw new RecoveryFormatError(`${what}[${i}].start is not a time in milliseconds`);
    }
    return { start: b.start, count: count(b.count, `${what}[${i}].count`) };
  });
}

function latencyData(value: unknown): RecoveryLatency {
  const l = object(value, `"latency"`);
  const h = object(l.histogram, `"latency.histogram"`);
  const numbers = (v: unknown, what: string, finiteOnly: (n: number) => boolean) => {
    if (
      !Array.isArray(v) || v.length > 1000 ||
      !v.every((n) => typeof n === "number" && finiteOnly(n))
    ) {
      throw new RecoveryFormatError(`${what} is not a list of numbers`);
    }
    return v as number[];
  };
  const bounds = numbers(
    h.bounds,
    `"latency.histogram.bounds"`,
    (n) => Number.isFinite(n) && n > 0,
  );
  const counts = numbers(
    h.counts,
    `"latency.histogram.counts"`,
    (n) => Number.isSafeInteger(n) && n >= 0,
  );
  if (counts.length !== bounds.length + 1) {
    throw new RecoveryFormatError(`"latency.histogram.counts" does not match its bounds`);
  }
  const seconds = (v: unknown, what: string) => {
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
      throw new RecoveryFormatError(`${what} is not a non-negative number`);
    }
    return v;
  };
  const latency: RecoveryLatency = {
    histogram: {
      bounds,
      counts,
      sum: seconds(h.sum, `"latency.histogram.sum"`),
      count: count(h.count, `"latency.histogram.count"`),
      max: seconds(h.max, `"latency.histogram.max"`),
    },
  };
  for (const { key } of LATENCY_COUNTERS) latency[key] = count(l[key], `"latency.${key}"`);
  return latency;
}
