/**
 * `foo-proxy top`: a full-screen terminal view of a running proxy's `GET /stats`, refreshed every
 * `--interval`, for operators on a server without a browser. Plain ANSI escape codes only, so it
 * works over SSH: the alternate screen buffer (the shell's screen comes back on exit), a hidden
 * cursor, no line wrapping, and raw mode on a terminal stdin so `q` or Ctrl-C quit at once. The
 * terminal is restored on every way out: `q`, Ctrl-C, SIGINT/SIGTERM/SIGHUP, or an error.
 *
 * The screen itself is the pure {@linkcode renderTop}; this file owns the terminal and the polling.
 *
 * @module
 */
import { formatAddress, parseAddress } from "../net/address.ts";
import { DURATION_HELP, parseDuration } from "../cli/duration.ts";
import { formatFlagHelp, formatSynopsis } from "../cli/flag_help.ts";
import { denoEnvReader, type FlagSpec, parseFlags, UsageError } from "../cli/flags.ts";
import { renderTop, type TopSize, type TopSnapshot, type TopState } from "../tools/top_view.ts";
import { startCommand } from "./command_start.ts";
import { type CommandContext, writeStdoutLine } from "./output.ts";

/** Flags of `foo-proxy top`: the one definition the parser, `--help` and the docs use. */
export const TOP_FLAGS: Record<string, FlagSpec> = {
  stats: {
    type: "string",
    default: "http://127.0.0.1:8088/stats",
    value: "URL",
    help:
      "the proxy's stats endpoint (its --http address); a bare PORT or HOST:PORT means http://HOST:PORT/stats",
  },
  interval: {
    type: "string",
    default: "1s",
    value: "DUR",
    help: "time between refreshes, from 100ms; each fetch gives up after it (at least 1s)",
  },
  help: { type: "boolean", short: "h", env: false, help: "print this help" },
  version: { type: "boolean", short: "V", env: false, help: "print the version" },
};

/** One-line synopsis of `foo-proxy top`. */
export const TOP_SYNOPSIS = `foo-proxy top ${formatSynopsis(TOP_FLAGS)}`;

/** Usage text of `foo-proxy top`. */
export const TOP_USAGE = `Usage: foo-proxy top [flags]

A full-screen terminal view of a running proxy (started with --http): request and response
rates, latency, connections, invalid lines, close reasons, bytes, resilience counters and one
row per upstream, refreshed every --interval. When the proxy cannot be reached it says so and
keeps retrying. Press q (or Ctrl-C) to quit; the terminal is restored. Plain ANSI, works over SSH.

Flags (each also from FOO_PROXY_<NAME>, e.g. FOO_PROXY_STATS; flags win):
${formatFlagHelp(TOP_FLAGS)}

${DURATION_HELP}`;

/** Parsed configuration of `foo-proxy top`. */
export interface TopConfig {
  /** `--stats`, as a full URL. */
  statsUrl: string;
  /** `--interval` in ms. */
  intervalMs: number;
  /** Not a flag: top draws on the screen, so only errors would be logged (there are none). */
  logLevel: string;
  /** Not a flag (see `logLevel`). */
  logFormat: string;
  help: boolean;
  version: boolean;
}

/** The shortest `--interval`: faster would only load the proxy's admin port. */
export const MIN_INTERVAL_MS = 100;

/**
 * The URL `--stats` means: an `http://` or `https://` URL as given (`/stats` added when it has no
 * path), or `PORT`, `:PORT`, `HOST:PORT`, `[IPv6]:PORT` as `http://HOST:PORT/stats` (host
 * `127.0.0.1` when only a port is given).
 *
 * @throws {UsageError} naming `--stats` when the text is neither.
 */
export function parseStatsUrl(text: string): string {
  const trimmed = text.trim();
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(trimmed)) {
    let url: URL;
    try {
      url = new URL(trimmed);
    } catch (error) {
      throw new UsageError(`--stats: Invalid URL "${text}"`, { cause: error });
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new UsageError(`--stats: Invalid URL "${text}": expected http:// or https://`);
    }
    if (url.pathname === "/" && url.search === "") url.pathname = "/stats";
    return url.href;
  }
  let address;
  try {
    address = parseAddress(trimmed, { defaultHost: "127.0.0.1" });
  } catch (error) {
    throw new UsageError(
      `--stats: Invalid value "${text}": expected a URL, PORT or HOST:PORT`,
      { cause: error },
    );
  }
  if (address.port === 0) throw new UsageError(`--stats: port 0 cannot be connected to`);
  return `http://${formatAddress(address)}/stats`;
}

/**
 * Parses top's flags (and `FOO_PROXY_*` through `getEnv`).
 *
 * @throws {UsageError} naming the bad flag or value.
 */
export function parseTopConfig(
  args: readonly string[],
  getEnv?: (name: string) => string | undefined,
): TopConfig {
  const v = parseFlags(args, TOP_FLAGS, { getEnv });
  const intervalMs = parseDuration("interval", v.interval);
  if (intervalMs < MIN_INTERVAL_MS) {
    throw new UsageError(
      `Invalid value "${v.interval}" for --interval: expected at least ${MIN_INTERVAL_MS}ms`,
    );
  }
  return {
    statsUrl: parseStatsUrl(String(v.stats)),
    intervalMs,
    logLevel: "error",
    logFormat: "text",
    help: v.help === true,
    version: v.version === true,
  };
}

/** Why `GET /stats` gave no snapshot; `message` is short enough for one screen line. */
export class StatsFetchError extends Error {
  /** Creates the error; `message` says what went wrong. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StatsFetchError";
  }
}

/** Options for {@linkcode fetchStats}. */
export interface FetchStatsOptions {
  /** Longest wait for the whole answer (ms). @default {1000} */
  timeoutMs?: number;
  /** Aborting cancels the request (it then rejects with the signal's reason). Unset: none. */
  signal?: AbortSignal;
  /** The fetch to use. @default globalThis.fetch */
  fetch?: typeof fetch;
  /**
   * Largest answer read, in bytes: past it the fetch is cancelled and fails. /stats is a few KiB
   * (a few hundred with hundreds of upstreams). @default {STATS_MAX_BYTES}
   */
  maxBytes?: number;
}

/** The default cap of one /stats answer: 4 MiB. */
export const STATS_MAX_BYTES = 4 * 1024 * 1024;

/**
 * The body of `response` as text, reading at most `maxBytes`: a declared length over it is
 * refused unread, and a body that runs past it (an endless one) is cancelled there.
 *
 * @throws {StatsFetchError} past the cap.
 */
export async function readCappedText(response: Response, maxBytes: number): Promise<string> {
  const tooLarge = () =>
    new StatsFetchError(
      `the answer is over ${formatMiB(maxBytes)} (is this the proxy's /stats?)`,
    );
  const declared = Number(response.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) {
    await response.body?.cancel().catch(() => {});
    throw tooLarge();
  }
  if (!response.body) return "";
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let total = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > maxBytes) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      text += decoder.decode(value, { stream: true });
    }
  } finally {
    reader.releaseLock();
  }
  return text + decoder.decode();
}

function formatMiB(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${+(bytes / 1024 / 1024).toFixed(1)} MiB` : `${bytes} bytes`;
}

/**
 * Fetches and parses one stats snapshot from `url`.
 *
 * @throws {StatsFetchError} saying briefly why (refused, timed out, HTTP status, not stats).
 */
export async function fetchStats(
  url: string,
  options: FetchStatsOptions = {},
): Promise<TopSnapshot> {
  const timeoutMs = options.timeoutMs ?? 1000;
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new StatsFetchError(`no answer within ${timeoutMs} ms`)),
    timeoutMs,
  );
  const outer = options.signal;
  const onAbort = () => controller.abort(outer?.reason);
  outer?.addEventListener("abort", onAbort, { once: true });
  if (outer?.aborted) onAbort();
  try {
    const response = await (options.fetch ?? fetch)(url, {
      signal: controller.signal,
      headers: { accept: "application/json" },
    });
    if (!response.ok) {
      await response.body?.cancel().catch(() => {}); // an error page is not read at all
      throw new StatsFetchError(`HTTP ${response.status} ${response.statusText}`.trimEnd());
    }
    const text = await readCappedText(response, options.maxBytes ?? STATS_MAX_BYTES);
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch (error) {
      throw new StatsFetchError("the answer is not JSON (is this the proxy's /stats?)", {
        cause: error,
      });
    }
    if (
      typeof body !== "object" || body === null || Array.isArray(body) || !("msg_total" in body)
    ) {
      throw new StatsFetchError("the answer is not foo-proxy stats (is this the proxy's /stats?)");
    }
    return body as TopSnapshot;
  } catch (error) {
    if (outer?.aborted) throw outer.reason;
    if (controller.signal.aborted && controller.signal.reason instanceof StatsFetchError) {
      throw controller.signal.reason;
    }
    if (error instanceof StatsFetchError) throw error;
    throw new StatsFetchError(describeFetchError(error), { cause: error });
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener("abort", onAbort);
  }
}

/**
 * The useful end of a fetch error (its innermost cause): Deno's `error sending request for url
 * (…): client error (Connect): tcp connect error: Connection refused (os error 111)` becomes
 * `connection refused`.
 */
export function describeFetchError(error: unknown): string {
  // Deno's TypeError says only "fetch failed"; the cause says what failed.
  let inner = error;
  while (inner instanceof Error && inner.cause instanceof Error) inner = inner.cause;
  const message = inner instanceof Error ? inner.message : String(inner);
  const last = message.split(": ").at(-1) ?? message;
  const text = last.replace(/\s*\(os error \d+\)$/, "").trim();
  return text === "" ? message : text.charAt(0).toLowerCase() + text.slice(1);
}

// Alternate screen, hide the cursor, no autowrap (a line never spills onto the next), clear.
const ENTER = "\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[H\x1b[2J";
// The reverse of ENTER, and attributes reset.
const LEAVE = "\x1b[0m\x1b[?7h\x1b[?25h\x1b[?1049l";

/**
 * One frame as bytes for the terminal: cursor home, then each line over a cleared line; the
 * title in reverse video and an `UNREACHABLE` status in bold. Lines are never followed by a
 * newline on the last row, so the screen never scrolls.
 */
export function frameText(lines: readonly string[]): string {
  return "\x1b[H" + lines.map((line, i) => {
    const styled = i === 0
      ? `\x1b[7m${line}\x1b[0m`
      : line.startsWith("UNREACHABLE")
      ? `\x1b[1m${line}\x1b[0m`
      : line;
    return `\x1b[2K${styled}`;
  }).join("\r\n");
}

/** Options for {@linkcode runTopLoop}. */
export interface TopLoopOptions {
  /** The stats URL (shown in the title). */
  url: string;
  /** Time between polls (ms). */
  intervalMs: number;
  /** The terminal's current size. */
  size: () => TopSize;
  /** Writes one frame (see {@linkcode frameText}). */
  write: (text: string) => void;
  /** Fetches one snapshot. @default fetchStats of `url`, timing out after the interval (≥ 1 s) */
  poll?: (signal: AbortSignal) => Promise<TopSnapshot>;
  /** Key presses (raw bytes): `q`, `Q`, Ctrl-C or Ctrl-D end the loop. Unset: none. */
  keys?: ReadableStream<Uint8Array>;
  /** Aborting ends the loop (SIGTERM, a test). Unset: only keys end it. */
  signal?: AbortSignal;
  /** Time source (ms). @default Date.now */
  clock?: () => number;
  /** A `"redraw"` event on it draws the last state again at once (a resize). Unset: none. */
  redraw?: EventTarget;
  /** Called after each frame with what it showed (tests watch it). Unset: none. */
  onFrame?: (lines: string[], state: TopState) => void;
}

/** Bytes that quit: `q`, `Q`, Ctrl-C (raw mode delivers it as a byte) and Ctrl-D. */
const QUIT_KEYS = new Set([0x71, 0x51, 0x03, 0x04]);

/**
 * Polls and draws until a quit key or `signal`: the end of `keys` only stops key reading (a
 * closed stdin must not end the view). Any other key, or a `redraw` event, redraws at once.
 * Resolves when done; rejects only when `write` throws (the terminal is gone).
 */
export async function runTopLoop(options: TopLoopOptions): Promise<void> {
  const clock = options.clock ?? Date.now;
  const quit = new AbortController();
  const onAbort = () => quit.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  if (options.signal?.aborted) onAbort();
  const poll = options.poll ??
    ((signal: AbortSignal) =>
      fetchStats(options.url, { timeoutMs: Math.max(1000, options.intervalMs), signal }));
  let state: TopState = { url: options.url, intervalMs: options.intervalMs, now: clock() };
  let writeError: unknown;
  const draw = () => {
    if (writeError !== undefined) return;
    state = { ...state, now: clock() };
    const lines = renderTop(state, options.size());
    try {
      options.write(frameText(lines));
    } catch (error) {
      writeError = error;
      quit.abort();
      return;
    }
    options.onFrame?.(lines, state);
  };
  options.redraw?.addEventListener("redraw", draw);
  const reader = options.keys?.getReader();
  const keysDone = reader ? readKeys(reader, quit, draw) : Promise.resolve();
  let wake = Promise.withResolvers<void>();
  quit.signal.addEventListener("abort", () => wake.resolve(), { once: true });
  try {
    draw();
    while (!quit.signal.aborted) {
      const started = clock();
      try {
        const snapshot = await poll(quit.signal);
        state = {
          ...state,
          previous: state.snapshot,
          snapshot,
          fetchedAt: clock(),
          error: undefined,
          failures: 0,
        };
      } catch (error) {
        if (quit.signal.aborted) break;
        const message = error instanceof StatsFetchError
          ? error.message
          : describeFetchError(error);
        state = { ...state, error: message, failures: (state.failures ?? 0) + 1 };
      }
      draw();
      const wait = Math.max(0, started + options.intervalMs - clock());
      if (quit.signal.aborted) break;
      const timer = setTimeout(() => wake.resolve(), wait);
      await wake.promise;
      clearTimeout(timer);
      wake = Promise.withResolvers<void>();
    }
  } finally {
    quit.abort();
    options.redraw?.removeEventListener("redraw", draw);
    options.signal?.removeEventListener("abort", onAbort);
    reader?.cancel().catch(() => {});
    await keysDone;
  }
  if (writeError !== undefined) throw writeError;
}

async function readKeys(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  quit: AbortController,
  draw: () => void,
): Promise<void> {
  try {
    while (!quit.signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      if (value.some((byte) => QUIT_KEYS.has(byte))) {
        quit.abort();
        return;
      }
      draw();
    }
  } catch {
    // stdin went away: keep showing the numbers; signals still end the view.
  } finally {
    reader.releaseLock();
  }
}

const encoder = new TextEncoder();

function writeRaw(text: string): void {
  let bytes = encoder.encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(Deno.stdout.writeSync(bytes));
}

function terminalSize(): TopSize {
  try {
    const { columns, rows } = Deno.consoleSize();
    if (columns > 0 && rows > 0) return { columns, rows };
  } catch {
    // Not a terminal (output redirected): draw a classic 80x24 screen.
  }
  return { columns: 80, rows: 24 };
}

/**
 * Runs the terminal view until `q`, Ctrl-C, SIGINT/SIGTERM/SIGHUP or `context.signal`; resolves
 * with 0, 2 after a usage error, or 1 when the terminal could not be written to.
 */
export async function runTop(args: string[], context: CommandContext = {}): Promise<number> {
  const stdout = context.stdout ?? writeStdoutLine;
  const started = startCommand(() => parseTopConfig(args, denoEnvReader()), {
    usage: TOP_USAGE,
    command: "foo-proxy top",
    stdout,
  });
  if (typeof started === "number") return started;
  const { config } = started;
  using _logging = started.logging;

  const stop = new AbortController();
  const onStop = () => stop.abort();
  context.signal?.addEventListener("abort", onStop, { once: true });
  if (context.signal?.aborted) onStop();
  const unix = Deno.build.os !== "windows";
  const signals: Deno.Signal[] = unix ? ["SIGINT", "SIGTERM", "SIGHUP"] : ["SIGINT", "SIGBREAK"];
  for (const signal of signals) Deno.addSignalListener(signal, onStop);
  const redraw = new EventTarget();
  const onResize = () => redraw.dispatchEvent(new Event("redraw"));
  if (unix) Deno.addSignalListener("SIGWINCH", onResize);

  const raw = Deno.stdin.isTerminal();
  let entered = false;
  let terminalGone = false;
  try {
    if (raw) Deno.stdin.setRaw(true);
    writeRaw(ENTER);
    entered = true;
    await runTopLoop({
      url: config.statsUrl,
      intervalMs: config.intervalMs,
      size: terminalSize,
      write: (text) => {
        try {
          writeRaw(text);
        } catch (error) {
          terminalGone = true;
          throw error;
        }
      },
      keys: Deno.stdin.readable,
      signal: stop.signal,
      redraw,
    });
    return 0;
  } catch (error) {
    if (!terminalGone) throw error;
    return 1; // The terminal (or the SSH session) went away: nobody is left to tell.
  } finally {
    try {
      if (entered) writeRaw(LEAVE);
    } catch {
      // The terminal is gone; nothing left to restore.
    }
    try {
      if (raw) Deno.stdin.setRaw(false);
    } catch {
      // Likewise.
    }
    if (unix) Deno.removeSignalListener("SIGWINCH", onResize);
    for (const signal of signals) Deno.removeSignalListener(signal, onStop);
    context.signal?.removeEventListener("abort", onStop);
  }
}
