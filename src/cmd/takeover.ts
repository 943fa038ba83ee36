/**
 * `--takeover`: a zero-downtime upgrade. Every proxy run with `--pid-file FILE` listens on a Unix
 * socket beside it, `FILE.sock` (mode 0600: the same user only). A new proxy started with the
 * same `--pid-file` and `--takeover` binds its ports beside the running one (`SO_REUSEPORT`),
 * and once it serves, asks over that socket:
 *
 * 1. new → old `{"t":"takeover","pid":N}`: the old one answers with its statistics now
 *    (`{"t":"stats","final":false,"state":…,"upstreams":…}`, the recovery file's state as text
 *    and the per-upstream totals, which the recovery file does not keep), changing nothing yet;
 * 2. new → old `{"t":"go"}`: the new one counts the old one's totals as its own from here on; the
 *    old one stops accepting, closes its admin ports and drains, sending its statistics again
 *    every {@linkcode UPDATE_MS} and a last time (`"final":true`) once every client is gone;
 *    then it exits, letting go of the pid file, which the new one takes.
 *
 * A proxy already shutting down (a signal) answers the request, or a `go` that came after it
 * began, with `{"t":"stopping"}`: it drains and exits on its own. A new proxy that goes away before `go` leaves the old one serving as
 * before. Each message is one
 * line of JSON, at most {@linkcode MAX_LINE_BYTES}.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { acceptLoop } from "../net/accept_loop.ts";
import { parseRecoveryState, type RecoveryState } from "../stats/recovery.ts";

/** How often a draining old proxy sends its statistics. */
export const UPDATE_MS = 250;
/** The longest message line (a recovery state is a few KiB). */
export const MAX_LINE_BYTES = 1024 * 1024;
/** How long either side waits for the other's next step (an answer, a `go`). */
export const STEP_TIMEOUT_MS = 10_000;
/** Connections to a takeover socket not yet committed, at most; more are closed at once. */
export const MAX_PENDING = 8;
/** The longest path a Unix socket address holds on Linux (`sun_path`, less its NUL). */
export const MAX_SOCKET_PATH_BYTES = 107;

/** The per-upstream counters a takeover carries over (those of `/metrics` `foo_proxy_upstream_*_total`). */
export const UPSTREAM_TOTALS = [
  "connections_total",
  "requests",
  "replies",
  "connect_failures",
  "stream_errors",
  "ejections",
] as const;

/** One upstream's counters, as carried over. */
export type UpstreamTotals = Record<typeof UPSTREAM_TOTALS[number], number>;

/** Each upstream's counters by its configured name. */
export type CarriedUpstreams = Record<string, UpstreamTotals>;

/** An empty {@linkcode CarriedUpstreams}: no prototype, so any upstream name is a plain key. */
export function carriedUpstreams(): CarriedUpstreams {
  return Object.create(null);
}

/** A proxy's statistics as sent over the socket. */
export interface Carried {
  /** The recovery file's state: counters, close reasons, windows, histogram. */
  state: RecoveryState;
  /** The per-upstream counters (not in the recovery state); empty from a proxy that sent none. */
  upstreams: CarriedUpstreams;
}

/** The takeover socket of a proxy with `--pid-file pidFile`. */
export function takeoverSocketPath(pidFile: string): string {
  return `${pidFile}.sock`;
}

/** A takeover step failed; the message says which and why. */
export class TakeoverError extends Error {
  /** Creates the error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TakeoverError";
  }
}

/** One message of the exchange. */
type Message =
  | { t: "takeover"; pid: number }
  | { t: "go" }
  | {
    t: "stats";
    final: boolean;
    state: string;
    listen?: string;
    recovery?: string;
    upstreams?: CarriedUpstreams;
  }
  | { t: "busy" }
  | { t: "stopping" };

const encoder = new TextEncoder();

/** Lines of JSON read from `conn`, each bounded; throws {@linkcode TakeoverError} on garbage. */
async function* messages(conn: Deno.Conn): AsyncGenerator<Message> {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const buffer = new Uint8Array(64 * 1024);
  let pending = "";
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) {
      if (pending.length > 0) throw new TakeoverError("the peer closed in the middle of a line");
      return;
    }
    let text: string;
    try {
      text = decoder.decode(buffer.subarray(0, n), { stream: true });
    } catch {
      throw new TakeoverError("the peer sent bytes that are not UTF-8");
    }
    pending += text;
    for (let end = pending.indexOf("\n"); end >= 0; end = pending.indexOf("\n")) {
      const line = pending.slice(0, end);
      pending = pending.slice(end + 1);
      yield parseMessage(line);
    }
    if (pending.length > MAX_LINE_BYTES) {
      throw new TakeoverError(`the peer sent a line longer than ${MAX_LINE_BYTES} bytes`);
    }
  }
}

function parseMessage(line: string): Message {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new TakeoverError("the peer sent a line that is not JSON");
  }
  const m = value as Record<string, unknown> | null;
  if (typeof m !== "object" || m === null || Array.isArray(m)) {
    throw new TakeoverError("the peer sent a message that is not an object");
  }
  switch (m.t) {
    case "takeover":
      if (Number.isSafeInteger(m.pid) && (m.pid as number) > 0) {
        return { t: "takeover", pid: m.pid as number };
      }
      break;
    case "go":
      return { t: "go" };
    case "busy":
      return { t: "busy" };
    case "stopping":
      return { t: "stopping" };
    case "stats":
      if (typeof m.final === "boolean" && typeof m.state === "string") {
        const listen = typeof m.listen === "string" ? { listen: m.listen } : {};
        const recovery = typeof m.recovery === "string" ? { recovery: m.recovery } : {};
        const upstreams = parseUpstreams(m.upstreams);
        return { t: "stats", final: m.final, state: m.state, ...listen, ...recovery, upstreams };
      }
      break;
  }
  throw new TakeoverError(`the peer sent an unknown message (${JSON.stringify(String(m.t))})`);
}

/** The per-upstream totals sent, checked: anything but a non-negative integer counter is refused. */
function parseUpstreams(value: unknown): CarriedUpstreams {
  const out = carriedUpstreams();
  if (value === undefined) return out; // a proxy that sends none
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TakeoverError("the peer sent per-upstream totals that are not an object");
  }
  for (const [name, row] of Object.entries(value)) {
    const fields = row as Record<string, unknown> | null;
    if (typeof fields !== "object" || fields === null || Array.isArray(fields)) {
      throw new TakeoverError(
        `the peer sent per-upstream totals for "${name}" that are not an object`,
      );
    }
    const totals = {} as UpstreamTotals;
    for (const field of UPSTREAM_TOTALS) {
      const n = fields[field] ?? 0;
      if (!Number.isSafeInteger(n) || (n as number) < 0) {
        throw new TakeoverError(`the peer sent a bad ${field} for upstream "${name}"`);
      }
      totals[field] = n as number;
    }
    out[name] = totals;
  }
  return out;
}

async function send(conn: Deno.Conn, message: Message): Promise<void> {
  const bytes = encoder.encode(JSON.stringify(message) + "\n");
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/** `promise`, or a {@linkcode TakeoverError} saying `what` took too long. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new TakeoverError(`${what}: no answer in ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// --- The running (old) proxy's side ---------------------------------------------------------

/** What the old proxy does for a takeover. */
export interface TakeoverHooks {
  /**
   * Its statistics now, as recovery-state text, and its per-upstream totals (the planes flushed
   * first).
   */
  capture: () => Promise<{ state: string; upstreams: CarriedUpstreams }>;
  /** Where its clients connect (`host:port`), told to the new proxy with the first totals. */
  listen: () => string;
  /** Its `--recovery-path`, absolute (told with the first totals); unset: it has none. */
  recovery?: () => string | undefined;
  /**
   * The new proxy said `go` (its pid given): stop accepting and drain. `stopped` resolves once
   * this proxy no longer answers for its statistics (its admin ports closed: updates sent from
   * then on are the newest anyone saw), `drained` once every client is gone (the final
   * statistics are captured after). `undefined`: this proxy is shutting down already (a signal),
   * it cannot hand over.
   */
  handOver: (pid: number) => { stopped: Promise<void>; drained: Promise<void> } | undefined;
  /** Whether this proxy is shutting down already: a takeover request is refused. */
  stopping: () => boolean;
  /**
   * The new proxy went away after `go` (stopped, or killed), before the final statistics: it will
   * not take the pid file.
   */
  successorGone: () => void;
  /** A takeover that failed (a bad message, a peer gone before `go`): logged and counted. */
  failed: (why: string) => void;
  /** Where a failed accept (out of file descriptors) is logged; unset: nowhere. */
  logger?: Logger;
}

/**
 * The old proxy's takeover socket: listens at `path` (a stale socket left by a crash is replaced;
 * anything else there is refused), answers one takeover at a time.
 */
export class TakeoverListener {
  #listener: Deno.UnixListener;
  #path: string;
  #hooks: TakeoverHooks;
  #busy = false;
  #closed = false;
  #serving: Promise<void>;
  /** Connections not (yet) committed to a takeover: closed by {@linkcode close}. */
  #pending = new Set<Deno.Conn>();
  /** Every connection's handler, awaited by {@linkcode close} (the final statistics go out). */
  #handlers = new Set<Promise<void>>();

  private constructor(listener: Deno.UnixListener, path: string, hooks: TakeoverHooks) {
    this.#listener = listener;
    this.#path = path;
    this.#hooks = hooks;
    this.#serving = this.#accept();
  }

  /**
   * Listens at `path`. Call only while holding the pid file's lock: it guards this path too.
   *
   * @throws {TakeoverError} when the path is too long or holds something other than a socket.
   */
  static async listen(path: string, hooks: TakeoverHooks): Promise<TakeoverListener> {
    if (encoder.encode(path).length > MAX_SOCKET_PATH_BYTES) {
      throw new TakeoverError(
        `"${path}" is longer than the ${MAX_SOCKET_PATH_BYTES} bytes a Unix socket path may be: use a shorter --pid-file path`,
      );
    }
    try {
      const info = await Deno.lstat(path);
      if (!info.isSocket) {
        throw new TakeoverError(
          `"${path}" exists and is not a socket: remove it, or use another --pid-file`,
        );
      }
      await Deno.remove(path); // left by a proxy that was killed: nobody listens there
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        if (error instanceof TakeoverError) throw error;
        throw new TakeoverError(`cannot replace "${path}": ${describe(error)}`, { cause: error });
      }
    }
    let listener: Deno.UnixListener;
    try {
      listener = Deno.listen({ transport: "unix", path });
    } catch (error) {
      throw new TakeoverError(`cannot listen on "${path}": ${describe(error)}`, { cause: error });
    }
    try {
      await Deno.chmod(path, 0o600);
    } catch (error) {
      listener.close();
      await Deno.remove(path).catch(() => {});
      throw new TakeoverError(`cannot restrict "${path}" to this user: ${describe(error)}`, {
        cause: error,
      });
    }
    return new TakeoverListener(listener, path, hooks);
  }

  /** The socket's path. */
  get path(): string {
    return this.#path;
  }

  /**
   * Stops listening and removes the socket file; requests not committed are dropped, and a
   * takeover in progress is waited for (its final statistics go out first).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // Closed already.
    }
    await this.#serving;
    for (const conn of this.#pending) closeQuietly(conn);
    await Promise.all(this.#handlers);
    await Deno.remove(this.#path).catch(() => {});
  }

  /** Until closed: out of file descriptors, accepts pause and resume (the proxy's own loop). */
  #accept(): Promise<void> {
    return acceptLoop(this.#listener, (conn) => {
      // Only the same user can connect; still, a peer that never speaks holds a descriptor for
      // STEP_TIMEOUT_MS: past a few of them, more are closed at once.
      if (this.#pending.size >= MAX_PENDING) {
        closeQuietly(conn);
        this.#hooks.failed(`more than ${MAX_PENDING} connections waiting: one closed`);
        return;
      }
      this.#pending.add(conn);
      const handler: Promise<void> = this.#serve(conn).finally(() => {
        this.#pending.delete(conn);
        this.#handlers.delete(handler);
        closeQuietly(conn);
      });
      this.#handlers.add(handler);
    }, { closed: () => this.#closed, label: this.#path, logger: this.#hooks.logger });
  }

  async #serve(conn: Deno.Conn): Promise<void> {
    const hooks = this.#hooks;
    const incoming = messages(conn);
    let pid: number | undefined;
    let handing: ReturnType<TakeoverHooks["handOver"]>;
    try {
      const first = await within(
        incoming.next(),
        STEP_TIMEOUT_MS,
        "waiting for a takeover request",
      );
      if (first.done) return; // a connect and close: somebody checking the socket is there
      if (first.value.t !== "takeover") {
        throw new TakeoverError(`expected a takeover request, got "${first.value.t}"`);
      }
      if (hooks.stopping()) {
        await send(conn, { t: "stopping" });
        hooks.failed(`pid ${first.value.pid} asked while this proxy shuts down`);
        return;
      }
      if (this.#busy) {
        await send(conn, { t: "busy" });
        hooks.failed(`pid ${first.value.pid} asked while another takeover was under way`);
        return;
      }
      this.#busy = true;
      pid = first.value.pid;
      const captured = await hooks.capture();
      const recovery = hooks.recovery?.();
      await send(conn, {
        t: "stats",
        final: false,
        ...captured,
        listen: hooks.listen(),
        ...(recovery === undefined ? {} : { recovery }),
      });
      const go = await within(incoming.next(), STEP_TIMEOUT_MS, "waiting for go");
      if (go.done) {
        throw new TakeoverError("the new proxy went away before it took over; serving on");
      }
      if (go.value.t !== "go") throw new TakeoverError(`expected go, got "${go.value.t}"`);
      handing = hooks.handOver(pid);
      // A signal came between the request and go: nothing was handed over, the drain goes on.
      if (handing === undefined) {
        await send(conn, { t: "stopping" });
        throw new TakeoverError("go came after this proxy began to shut down");
      }
    } catch (error) {
      this.#busy = false;
      if (this.#closed) return; // dropped by close(): the proxy is stopping anyway
      hooks.failed(
        `${pid === undefined ? "" : `pid ${pid}: `}${
          error instanceof TakeoverError ? error.message : describe(error)
        }`,
      );
      return;
    }
    // Committed: from here the old proxy only drains. Updates go out until the last one.
    this.#pending.delete(conn);
    const { stopped, drained } = handing;
    let done = false;
    void drained.finally(() => done = true);
    let gone = false;
    try {
      await stopped;
      while (!done) {
        // Bounded: a successor that stops reading (frozen, stopped) must not hold this one's exit.
        const update = send(conn, { t: "stats", final: false, ...await hooks.capture() });
        await within(update, STEP_TIMEOUT_MS, "sending totals");
        await Promise.race([drained, new Promise((resolve) => setTimeout(resolve, UPDATE_MS))]);
      }
    } catch {
      // The new proxy is gone: it keeps the last totals it got; the drain goes on regardless.
      gone = true;
    }
    await drained;
    if (!gone) {
      const last = send(conn, { t: "stats", final: true, ...await hooks.capture() });
      await within(last, STEP_TIMEOUT_MS, "sending the final totals").catch(() => gone = true);
    }
    if (gone) hooks.successorGone();
  }
}

// --- The new proxy's side -------------------------------------------------------------------

/** A takeover under way, from the new proxy's side. */
export interface Takeover {
  /** The old proxy's statistics when it was asked (before `go`). */
  first: Carried;
  /** Where the old proxy's clients connect (`host:port`); unset: it did not say. */
  listen?: string;
  /** The old proxy's `--recovery-path`, absolute; unset: it has none (or did not say). */
  recovery?: string;
  /**
   * Commits: the old proxy stops accepting and drains. `onStats` hears each later update (the
   * first once the old proxy no longer answers for its statistics); the promise resolves when the
   * old proxy sent its final statistics (`"final"`), went away without them (`"gone"`: the last
   * update stands), or began to shut down (a signal) before the go came (`"stopping"`: it drains
   * on its own, its totals from then on not sent).
   */
  go: (onStats: (carried: Carried) => void) => Promise<"final" | "gone" | "stopping">;
  /** Abandons it before `go`: the old proxy serves on. */
  cancel: () => void;
}

/**
 * Connects to the old proxy's socket at `path` and asks for its statistics (`pid`: this
 * process's).
 *
 * @throws {TakeoverError} when it cannot be reached, refuses, or answers badly.
 */
export async function requestTakeover(path: string, pid = Deno.pid): Promise<Takeover> {
  let conn: Deno.UnixConn;
  try {
    conn = await within(
      Deno.connect({ transport: "unix", path }),
      STEP_TIMEOUT_MS,
      `connecting to "${path}"`,
    );
  } catch (error) {
    throw new TakeoverError(
      `cannot reach the running proxy's takeover socket "${path}": ${describe(error)}`,
      { cause: error },
    );
  }
  const close = () => closeQuietly(conn);
  const incoming = messages(conn);
  const next = async (what: string): Promise<Message | undefined> => {
    const result = await within(incoming.next(), STEP_TIMEOUT_MS, what);
    return result.done ? undefined : result.value;
  };
  let first: Carried;
  let listen: string | undefined;
  let recovery: string | undefined;
  try {
    await send(conn, { t: "takeover", pid });
    const answer = await next("asking the running proxy for its statistics");
    if (answer === undefined) throw new TakeoverError("the running proxy closed the socket");
    if (answer.t === "busy") {
      throw new TakeoverError("another takeover of the running proxy is under way");
    }
    if (answer.t === "stopping") {
      throw new TakeoverError(
        "the running proxy is shutting down (a signal): start this one once it has exited",
      );
    }
    if (answer.t !== "stats") throw new TakeoverError(`unexpected answer "${answer.t}"`);
    first = { state: parseState(answer.state), upstreams: answer.upstreams ?? carriedUpstreams() };
    listen = answer.listen;
    recovery = answer.recovery;
  } catch (error) {
    close();
    throw error instanceof TakeoverError ? error : new TakeoverError(describe(error), {
      cause: error,
    });
  }
  return {
    first,
    listen,
    recovery,
    cancel: close,
    go: async (onStats) => {
      try {
        await send(conn, { t: "go" });
        // No deadline: the old proxy drains for as long as its --drain-timeout allows.
        for await (const message of incoming) {
          if (message.t === "stopping") return "stopping";
          if (message.t !== "stats") continue;
          onStats({
            state: parseState(message.state),
            upstreams: message.upstreams ?? carriedUpstreams(),
          });
          if (message.final) return "final";
        }
        return "gone";
      } catch {
        return "gone";
      } finally {
        close();
      }
    },
  };
}

function parseState(text: string): RecoveryState {
  try {
    return parseRecoveryState(text);
  } catch (error) {
    throw new TakeoverError(
      `the running proxy sent statistics that do not parse: ${(error as Error).message}`,
    );
  }
}

function describe(error: unknown): string {
  if (error instanceof Deno.errors.NotCapable) {
    return "not permitted (grant --allow-read and --allow-write of this path)";
  }
  if (error instanceof Error) return error.message.replace(/\s*\(os error \d+\)/, "");
  return String(error);
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}
