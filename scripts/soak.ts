/**
 * `deno task soak`: minutes of mixed load against a `foo-proxy --resume` process, with the
 * upstream Foo server killed (SIGKILL) and restarted on the same port while replies are owed,
 * then a report: replies lost (must be 0 with `--resume`), wrong replies (must be 0 in every
 * mode: a reply whose type or data is not what the server gives that REQ directly, e.g. after a
 * replay that changed a Seq), the proxy's file descriptors (must
 * return to their baseline) and RSS (must stay bounded) at start and end, the message counts on
 * both sides (must agree), data-plane workers that died (must be none), and errors by kind.
 * The proxy starts like `deno task start`; `--workers N|auto` is passed to it.
 *
 * The load, all on 127.0.0.1:
 * - pipelining: long-lived connections with REQs in flight (`foo-proxy bench`'s generator,
 *   which verifies the Seq and order of every reply, and its type and data by hash);
 * - churn: connections that send a few REQs and reconnect (the same generator and checks);
 * - idle connections that speak once every few seconds (each reply checked the same way);
 * - invalid-line clients: connections that mix invalid lines (blank, `req 1`, `REQ +1`, `REQ 1x`,
 *   `FOO`, `ACK 5`, `\r\n`) among pipelined REQs, half-close and read to EOF, and reconnect
 *   (`scripts/invalid_line_clients.ts`, which says what each connection checks);
 * - unsolicited-reply clients, read as: clients whose connections get replies that answer no
 *   REQ. They send replies the wrong way (`ACK <seq>`, `NAK <seq>` with the Seqs of their own REQs
 *   in flight) among their REQs, and each gets a `NAK 0 ERRDECODE` that matches nothing. (A server
 *   sending unsolicited replies by itself, `--duplicate-replies`, would need a second upstream and
 *   would give every other client extra lines too; the soak keeps one upstream.)
 * - the Foo server runs with `--reply hash`: each reply is computed from the REQ's Seq and data
 *   (see `src/protocol/reply_hash.ts`), so every reply's content can be checked; and with
 *   `--answer-invalid`, like real Foo servers: every invalid line gets `NAK 0 ERRDECODE`, in order
 *   (only the clients above send any);
 * - it answers after `--delay-ms`, so replies are owed whenever it is killed;
 * - a reset flood against the proxy's Foo port: connections opened and reset (RST, `SO_LINGER`
 *   0) at once or 20 ms later, about 200 a second, by a `python3` child (Deno cannot set
 *   `SO_LINGER`; without python3 the flood is skipped, with a line saying so);
 * - an admin slowloris: about 100 half-open `GET /stats` requests (headers never finished) held
 *   against the proxy's HTTP port and re-opened as the proxy closes them (its admin server caps
 *   64 connections and gives a request 5 s for its headers), while a normal `GET /stats` once a
 *   second must still succeed at least once.
 *
 * Both run for the whole load period, are bounded in count and time and stop by themselves; their
 * connections are all closed before the "clients gone" sample, so the descriptor check covers
 * them too.
 *
 * Exits 0 when every check passes, 1 otherwise, 2 on bad flags.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { hashReply } from "../src/protocol/reply_hash.ts";
import { waitOrAbort as sleep } from "../src/async/wait_or_abort.ts";
import { LOAD_ERROR_KINDS, type LoadReport, runLoad } from "../src/tools/load.ts";
import { Child } from "./child.ts";
import { InvalidLineClients, RestartWindows } from "./invalid_line_clients.ts";
import {
  START_READ,
  startPermissionFlags,
  startUnstableFlags,
  startV8Flags,
} from "./permissions.ts";

const LOCAL = "127.0.0.1";
/** How long a part may take to start or stop. */
const PATIENCE_MS = 20_000;
const MiB = 1024 * 1024;

/** Usage text of the soak. */
export const SOAK_USAGE =
  `Usage: deno task soak [--seconds N] [--restarts N] [--idle N] [--rate N] [--reset-rate N]
                      [--invalid N] [--wrong-way N] [--workers N|auto] [--mux N]
                      [--no-reset-flood] [--no-slowloris] [--no-resume]

Runs mixed load (pipelining, churn, idle connections, connections mixing invalid lines or
wrong-way replies among their REQs, then half-closing) through foo-proxy --resume for N seconds
while the upstream Foo server (foo-proxy server --reply hash --answer-invalid: replies computed
from the Seq and the data, NAK 0 ERRDECODE to every invalid line) is killed and restarted, a
reset flood hits the proxy's Foo port (connections reset with RST right after connecting; needs
python3, skipped without it) and a slowloris of ~100 half-open GET /stats requests holds its
admin HTTP port (normal GET /stats once a second must still get through at least once). Then it
prints a report and exits 0 when no reply was lost or wrong (every reply's type, Seq and data is
checked, and where each NAK 0 ERRDECODE comes), the proxy caught no internal error, descriptors
and memory are stable, and the counts agree. Exits 1 otherwise; a wrong reply fails
the soak even with --no-resume.

  --seconds N       how long the load runs                          (default 180)
  --restarts N      upstream kills and restarts, evenly spread      (default 2)
  --idle N          idle connections (one REQ every 3-8 s each)     (default 50)
  --rate N          REQs per second of the pipelining load          (default 2000)
  --reset-rate N    connections the reset flood resets per second   (default 200)
  --invalid N       invalid-line clients (blank, req 1, REQ +1, …)  (default 4)
  --wrong-way N     unsolicited-reply clients (send ACK n, NAK n)   (default 2)
  --workers N|auto  the proxy's data-plane workers (passed to it; it starts like
                    deno task start)                  (default: not passed, auto)
  --mux N           run the proxy with --mux N; the invalid-line and wrong-way clients are
                    left out (--mux refuses those lines)   (default: not passed, 1:1)
  --no-reset-flood  leave out the reset flood
  --no-slowloris    leave out the admin slowloris and its GET /stats probes
  --no-resume       run the proxy without --resume (replies are then expected to be lost)
  -h, --help        print this help`;

function freePort(): number {
  using listener = Deno.listen({ hostname: LOCAL, port: 0 });
  return listener.addr.port;
}

/** One reading of the proxy process's resources. */
interface Sample {
  /** Seconds since the load started (negative: before it). */
  t: number;
  fds: number;
  rssBytes: number;
}

async function sample(pid: number, t: number): Promise<Sample> {
  // Deno wants --allow-all to read /proc/<pid>/ itself; `ls` and `cat` only need --allow-run.
  const run = async (command: string, path: string) => {
    const out = await new Deno.Command(command, { args: [path] }).output();
    if (!out.success) throw new Error(`${command} ${path} failed`);
    return new TextDecoder().decode(out.stdout);
  };
  const fds = (await run("ls", `/proc/${pid}/fd`)).split("\n").filter((l) => l !== "").length;
  const status = await run("cat", `/proc/${pid}/status`);
  const kb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? NaN);
  return { t: Math.round(t * 10) / 10, fds, rssBytes: kb * 1024 };
}

/**
 * Connections that stay open and send one REQ every few seconds, verifying each reply: its Seq
 * (a wrong one ends the connection) and its content (`hashReply`; a wrong one is counted in
 * `wrong` and the connection goes on).
 */
class IdleClients {
  sent = 0;
  /** Replies that were right. */
  received = 0;
  /** Replies with the right Seq but the wrong type or data. */
  wrong = 0;
  reconnects = 0;
  errors: Record<string, number> = {};

  constructor(readonly port: number, readonly count: number) {}

  async run(stop: AbortSignal): Promise<void> {
    await Promise.all(Array.from({ length: this.count }, () => this.#one(stop)));
  }

  #error(kind: string): void {
    this.errors[kind] = (this.errors[kind] ?? 0) + 1;
  }

  async #one(stop: AbortSignal): Promise<void> {
    let conn: Deno.TcpConn | undefined;
    let seq = 0;
    const buf = new Uint8Array(256);
    const encoder = new TextEncoder();
    const decoder = new TextDecoder();
    let pending = "";
    try {
      while (!stop.aborted) {
        if (conn === undefined) {
          try {
            conn = await Deno.connect({ hostname: LOCAL, port: this.port });
          } catch {
            this.#error("connect");
            await sleep(500, stop);
            continue;
          }
          seq = 0;
          pending = "";
        }
        await sleep(3000 + Math.random() * 5000, stop);
        if (stop.aborted) break;
        seq++;
        this.sent++;
        const c = conn;
        const timer = setTimeout(() => c.close(), 15_000);
        try {
          await c.write(encoder.encode(`REQ ${seq} idle\n`));
          while (!pending.includes("\n")) {
            const n = await c.read(buf);
            if (n === null) throw new Error("closed");
            pending += decoder.decode(buf.subarray(0, n));
          }
          const line = pending.slice(0, pending.indexOf("\n"));
          pending = pending.slice(line.length + 1);
          if (!new RegExp(`^(ACK|NAK)[ \t]+${seq}([ \t\r]|$)`).test(line)) {
            throw new Error("wrong_seq");
          }
          if (line.replace(/\r$/, "") === hashReply(`REQ ${seq} idle`)) {
            this.received++;
          } else {
            this.wrong++;
            this.#error("wrong_reply");
          }
        } catch (error) {
          const kind =
            error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted
              ? "timeout"
              : error instanceof Error && /^(closed|wrong_seq)$/.test(error.message)
              ? error.message
              : "read";
          this.#error(kind);
          try {
            c.close();
          } catch {
            // Closed by the timer already.
          }
          conn = undefined;
          this.reconnects++;
        } finally {
          clearTimeout(timer);
        }
      }
    } finally {
      try {
        conn?.close();
      } catch {
        // Already closed.
      }
    }
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

/**
 * The reset flood, run by `python3` because Deno cannot set `SO_LINGER`: argv is the port, the
 * resets per second, the most connections and the most seconds. Every connection is reset
 * (`SO_LINGER` 0, then close: RST, no FIN); odd ones at once, even ones 20 ms later (once the
 * proxy has taken them and is dialing the upstream for them). SIGTERM ends it early. Its one line
 * of output is a JSON summary.
 */
const RESET_FLOOD_PY = `
import errno, json, signal, socket, struct, sys, time
from collections import deque
port, rate, limit, seconds = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
linger = struct.pack("ii", 1, 0)
made = {"at_once": 0, "after_20ms": 0}
errors = {}
later = deque()
start = time.monotonic()
due = start
attempts = 0
def reset(s):
    try:
        s.close()
    except OSError:
        pass
while not stop and attempts < limit and time.monotonic() - start < seconds:
    attempts += 1
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
        if attempts % 2:
            reset(s)
            made["at_once"] += 1
        else:
            later.append((time.monotonic() + 0.02, s))
    except OSError as e:
        kind = errno.errorcode.get(e.errno or 0, type(e).__name__)
        errors[kind] = errors.get(kind, 0) + 1
        reset(s)
    while later and later[0][0] <= time.monotonic():
        reset(later.popleft()[1])
        made["after_20ms"] += 1
    due += 1 / rate
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    elif delay < -1:
        due = time.monotonic()  # fell behind (CPU starved): do not burst to catch up
while later:
    reset(later.popleft()[1])
    made["after_20ms"] += 1
print(json.dumps({"resets": made["at_once"] + made["after_20ms"], **made, "errors": errors,
                  "seconds": round(time.monotonic() - start, 1)}), flush=True)
`;

/** What the reset flood says when it ends. */
interface ResetFloodReport {
  resets: number;
  at_once: number;
  after_20ms: number;
  /** Connects that failed, by errno name. */
  errors: Record<string, number>;
  seconds: number;
}

/**
 * Starts the reset flood against `port`, or returns why it cannot run (python3 missing).
 * Bounded: `rate * seconds` connections, `seconds` seconds.
 */
function startResetFlood(port: number, rate: number, seconds: number): Child | string {
  try {
    return new Child(
      ["-c", RESET_FLOOD_PY, String(port), String(rate), String(rate * seconds), String(seconds)],
      { command: "python3", name: "reset flood (python3)" },
    );
  } catch (error) {
    return error instanceof Deno.errors.NotFound
      ? "python3 not found"
      : `python3 could not start: ${(error as Error).message}`;
  }
}

/** Stops the reset flood (SIGTERM: it prints its summary) and reads the summary. */
async function stopResetFlood(flood: Child): Promise<ResetFloodReport | string> {
  const status = await flood.stop("SIGTERM");
  const last = flood.stdout.lines.findLast((l) => l.startsWith("{"));
  if (!status.success || last === undefined) {
    return `python3 exited with ${status.code}: ${flood.stderr.tail(300) || "no output"}`;
  }
  return JSON.parse(last);
}

const HALF_REQUEST = new TextEncoder().encode("GET /stats HTTP/1.1\r\nHost: x\r\n");

/**
 * The admin slowloris: `count` connections to the admin HTTP port, each sending the start of a
 * request whose headers never end, re-opened when the proxy closes it. The first `count` opens go
 * at once, later ones at most `opensPerSecond` (enough to take each slot the 5 s header deadline
 * frees, so the cap stays full), `maxOpens` in all.
 */
class Slowloris {
  opens = 0;
  connectErrors = 0;
  /** Closed by the proxy within 1 s (the connection cap). */
  refused = 0;
  /**
   * Closed by the proxy after 1 s or more: the header deadline, or (the admin server at its cap
   * closes its oldest incomplete request to make room) evicted for a newer connection.
   */
  timedOut = 0;
  /** Half-open requests the proxy answered (it should not: their headers never end). */
  answered = 0;
  /** Held `HOLD_LIMIT_MS` without the proxy closing them: a missing header deadline. */
  heldTooLong = 0;
  /** Longest a half-open request was held open by the proxy, in ms. */
  longestMs = 0;
  #nextOpen = 0;

  static readonly HOLD_LIMIT_MS = 15_000;

  constructor(
    readonly port: number,
    readonly count: number,
    readonly opensPerSecond: number,
    readonly maxOpens: number,
  ) {}

  async run(stop: AbortSignal): Promise<void> {
    await Promise.all(Array.from({ length: this.count }, () => this.#one(stop)));
  }

  /** Waits for this worker's turn to open; false when the budget is spent or the soak stops. */
  async #turn(stop: AbortSignal): Promise<boolean> {
    if (this.opens >= this.count) {
      const now = performance.now();
      const at = Math.max(now, this.#nextOpen);
      this.#nextOpen = at + 1000 / this.opensPerSecond;
      await sleep(at - now, stop);
    }
    if (stop.aborted || this.opens >= this.maxOpens) return false;
    this.opens++;
    return true;
  }

  async #one(stop: AbortSignal): Promise<void> {
    const buf = new Uint8Array(512);
    while (await this.#turn(stop)) {
      let conn: Deno.TcpConn;
      try {
        conn = await Deno.connect({ hostname: LOCAL, port: this.port });
      } catch {
        this.connectErrors++;
        await sleep(500, stop);
        continue;
      }
      const opened = performance.now();
      let ours = false;
      const close = () => {
        ours = true;
        closeQuietly(conn);
      };
      const timer = setTimeout(() => {
        this.heldTooLong++;
        close();
      }, Slowloris.HOLD_LIMIT_MS);
      stop.addEventListener("abort", close, { once: true });
      let bytes = 0;
      try {
        await conn.write(HALF_REQUEST);
        for (;;) {
          const n = await conn.read(buf);
          if (n === null) break;
          bytes += n;
        }
      } catch {
        // Reset by the proxy, or closed here.
      } finally {
        clearTimeout(timer);
        stop.removeEventListener("abort", close);
        closeQuietly(conn);
      }
      if (ours) continue;
      const heldMs = performance.now() - opened;
      if (bytes > 0) this.answered++;
      else if (heldMs < 1000) this.refused++;
      else {
        this.timedOut++;
        this.longestMs = Math.max(this.longestMs, heldMs);
      }
    }
  }
}

/**
 * `GET path` on a fresh connection (the request whole, `Connection: close`); resolves with the
 * status and body, or throws an Error whose message is the kind of failure.
 */
async function httpGet(
  port: number,
  path: string,
  timeoutMs: number,
): Promise<{ status: number; body: string }> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: LOCAL, port });
  } catch {
    throw new Error("connect");
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    closeQuietly(conn);
  }, timeoutMs);
  const chunks: Uint8Array[] = [];
  try {
    await conn.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: ${LOCAL}\r\nConnection: close\r\n\r\n`,
      ),
    );
    const buf = new Uint8Array(16384);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
  } catch {
    if (timedOut) throw new Error("timeout");
    if (chunks.length === 0) throw new Error("refused");
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
  if (timedOut) throw new Error("timeout");
  const text = new TextDecoder().decode(
    chunks.reduce((all, c) => {
      const joined = new Uint8Array(all.length + c.length);
      joined.set(all);
      joined.set(c, all.length);
      return joined;
    }, new Uint8Array(0)),
  );
  if (text === "") throw new Error("refused");
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? NaN);
  const headEnd = text.indexOf("\r\n\r\n");
  if (!Number.isFinite(status) || headEnd < 0) throw new Error("malformed");
  return { status, body: text.slice(headEnd + 4) };
}

/** A normal `GET /stats` about once a second; counts what worked and what did not, by kind. */
class AdminProbe {
  ok = 0;
  failed: Record<string, number> = {};
  /** Longest successful request, in ms. */
  slowestMs = 0;

  constructor(readonly port: number) {}

  get failures(): number {
    return Object.values(this.failed).reduce((a, b) => a + b, 0);
  }

  async run(stop: AbortSignal): Promise<void> {
    while (!stop.aborted) {
      await sleep(1000, stop);
      if (stop.aborted) break;
      const started = performance.now();
      try {
        const { status, body } = await httpGet(this.port, "/stats", 3000);
        if (status !== 200) throw new Error(`status_${status}`);
        if (typeof JSON.parse(body).msg_req !== "number") throw new Error("bad_json");
        this.ok++;
        this.slowestMs = Math.max(this.slowestMs, performance.now() - started);
      } catch (error) {
        const kind = error instanceof SyntaxError ? "bad_json" : (error as Error).message;
        this.failed[kind] = (this.failed[kind] ?? 0) + 1;
      }
    }
  }
}

/** What the proxy's SIGUSR2 line says (the fields the report uses). */
interface ProxySnapshot {
  msg_req: number;
  msg_ack: number;
  msg_nak: number;
  msg_invalid: number;
  connections_active: number;
  connections_total: number;
  upstream_errors: number;
  upstream_connect_retries?: number;
  failovers?: number;
  replays?: number;
  resume_failures?: number;
  internal_errors?: number;
  accept_errors?: number;
  accept_resource_errors?: number;
  admin_connections_rejected?: number;
  admin_request_timeouts?: number;
  admin_bad_requests?: number;
  connections_closed: Record<string, number>;
  /** One row per data-plane worker (none when the data plane runs on the main thread). */
  workers?: { worker: number; connections_active: number; restarts: number }[];
  /** Data-plane workers that died and were started again. */
  worker_restarts?: number;
  /** `--mux`: shared upstream connections open. */
  mux_upstream_connections?: number;
}

async function proxyStats(proxy: Child): Promise<ProxySnapshot> {
  const from = proxy.stdout.lines.length;
  proxy.kill("SIGUSR2");
  const match = await proxy.stdout.waitFor(/^\{.*\}$/, "the proxy's stats line", from);
  return JSON.parse(match[0]);
}

/** Runs the soak; resolves with the exit code. */
export async function main(args: string[]): Promise<number> {
  let seconds: number;
  let restarts: number;
  let idle: number;
  let rate: number;
  let resetRate: number;
  let invalidClients: number;
  let wrongWayClients: number;
  let resetFlood: boolean;
  let slowloris: boolean;
  let resume: boolean;
  let workers: string | undefined;
  let mux: number;
  try {
    const { values } = parseArgs({
      args,
      strict: true,
      options: {
        seconds: { type: "string", default: "180" },
        restarts: { type: "string", default: "2" },
        idle: { type: "string", default: "50" },
        rate: { type: "string", default: "2000" },
        "reset-rate": { type: "string", default: "200" },
        invalid: { type: "string", default: "4" },
        "wrong-way": { type: "string", default: "2" },
        "no-reset-flood": { type: "boolean", default: false },
        "no-slowloris": { type: "boolean", default: false },
        "no-resume": { type: "boolean", default: false },
        workers: { type: "string" },
        mux: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
    if (values.help) {
      writeStdoutLine(SOAK_USAGE);
      return 0;
    }
    const whole = (flag: string, text: string, min: number) => {
      if (!/^\d+$/.test(text) || Number(text) < min) {
        throw new Error(`--${flag}: expected a whole number >= ${min}, got "${text}"`);
      }
      return Number(text);
    };
    seconds = whole("seconds", values.seconds, 10);
    restarts = whole("restarts", values.restarts, 0);
    idle = whole("idle", values.idle, 0);
    rate = whole("rate", values.rate, 1);
    resetRate = whole("reset-rate", values["reset-rate"], 1);
    invalidClients = whole("invalid", values.invalid, 0);
    wrongWayClients = whole("wrong-way", values["wrong-way"], 0);
    resetFlood = !values["no-reset-flood"];
    slowloris = !values["no-slowloris"];
    resume = !values["no-resume"];
    workers = values.workers === undefined || values.workers === "auto"
      ? values.workers
      : String(whole("workers", values.workers, 1));
    mux = values.mux === undefined ? 0 : whole("mux", values.mux, 1);
    if (mux > 0) {
      // --mux refuses invalid and wrong-way lines (their answers would put a shared connection
      // out of step): those clients expect the server's answers, so they are left out.
      invalidClients = 0;
      wrongWayClients = 0;
    }
  } catch (error) {
    writeStderrLine(`soak: ${(error as Error).message.split("\n")[0]} (see --help)`);
    return 2;
  }

  const permissions = startPermissionFlags();
  const upstreamPort = freePort();
  const proxyPort = freePort();
  const httpPort = freePort();
  const serverArgs = [
    "run",
    ...permissions,
    "src/main.ts",
    "server",
    "--listen",
    `${LOCAL}:${upstreamPort}`,
    "--delay-ms",
    "20",
    "--reply",
    "hash",
    // Like real Foo servers: every line is answered, an invalid one with NAK 0 ERRDECODE.
    "--answer-invalid",
    "--log-level",
    "warning",
  ];
  const startServer = async () => {
    const server = new Child(serverArgs, { detached: true });
    await server.stdout.waitFor(/listening on/, "the Foo server to listen");
    return server;
  };
  const say = (line: string) => writeStdoutLine(line);
  say(
    `soak: ${seconds} s, ${restarts} upstream restart(s), ${idle} idle connections, ` +
      `pipelining at ${rate} REQ/s, churn, ${invalidClients} invalid-line and ${wrongWayClients} ` +
      `unsolicited-reply clients, ${
        resetFlood ? `reset flood at ${resetRate}/s` : "no reset flood"
      }, ${slowloris ? "admin slowloris" : "no slowloris"}, proxy ${
        resume ? "with" : "WITHOUT"
      } --resume, --workers ${workers ?? "not passed (auto)"}${mux > 0 ? `, --mux ${mux}` : ""}`,
  );

  let server = await startServer();
  // The proxy starts like `deno task start`: its data-plane workers load from src/ and share the
  // port with SO_REUSEPORT (--unstable-net).
  await using proxy = new Child([
    "run",
    ...permissions,
    START_READ,
    ...startUnstableFlags(),
    ...startV8Flags(),
    "src/main.ts",
    "proxy",
    ...(workers === undefined ? [] : ["--workers", workers]),
    ...(mux > 0 ? ["--mux", String(mux)] : []),
    "--listen",
    `${LOCAL}:${proxyPort}`,
    "--forward",
    `${LOCAL}:${upstreamPort}`,
    ...(resume ? ["--resume"] : []),
    // New connections made while the upstream is down wait for it too (about 6 s of backoff).
    "--connect-retries",
    "6",
    // The stats app on its own port: the slowloris's target and the probes'.
    `--http=${LOCAL}:${httpPort}`,
    "--health",
    "off",
    "--log-format",
    "json",
  ], { detached: true });
  try {
    await proxy.stderr.waitFor(/Listening on/, "the proxy to listen");
    await proxy.stderr.waitFor(/Serving .* on http:/, "the proxy's stats app to listen");
    // One normal request first: a soak whose admin port never worked would blame the slowloris.
    const first = await httpGet(httpPort, "/stats", 5000);
    if (first.status !== 200) throw new Error(`GET /stats before the load: ${first.status}`);
    const baseline = await sample(proxy.pid, -1);
    const samples: Sample[] = [];
    const t0 = performance.now();
    const elapsed = () => (performance.now() - t0) / 1000;

    // The load.
    const target = { hostname: LOCAL, port: proxyPort };
    const durationMs = seconds * 1000;
    const pipelining = runLoad(target, {
      connections: 8,
      pipeline: 16,
      rate,
      payloadBytes: 32,
      replies: "hash",
      durationMs,
      drainTimeoutMs: 20_000,
    });
    const churn = runLoad(target, {
      connections: 4,
      pipeline: 4,
      rate: Math.max(1, Math.round(rate / 5)),
      requestsPerConnection: 20,
      payloadBytes: 8,
      replies: "hash",
      durationMs,
      drainTimeoutMs: 20_000,
    });
    const stopIdle = new AbortController();
    const idleClients = new IdleClients(proxyPort, idle);
    const idleRun = idleClients.run(stopIdle.signal);
    const restartWindows = new RestartWindows();
    const invalidLine = new InvalidLineClients(
      proxyPort,
      invalidClients,
      "invalid",
      restartWindows,
    );
    const wrongWay = new InvalidLineClients(
      proxyPort,
      wrongWayClients,
      "wrong-way",
      restartWindows,
    );
    const invalidRun = Promise.all([
      invalidLine.run(stopIdle.signal),
      wrongWay.run(stopIdle.signal),
    ]);

    // The attacks, for the whole load period (each bounded in count and time as well).
    let flood: Child | undefined;
    let floodSkipped: string | undefined;
    if (resetFlood) {
      const started = startResetFlood(proxyPort, resetRate, seconds);
      if (typeof started === "string") {
        floodSkipped = started;
        say(`  reset flood skipped: ${started}`);
      } else flood = started;
    }
    const stopAdmin = new AbortController();
    // ~100 half-open requests; 15 opens/s take the slots the 5 s deadline frees (64 / 5 s);
    // at most 3000 opens in all.
    const loris = new Slowloris(httpPort, 100, 15, 3000);
    const probe = new AdminProbe(httpPort);
    const adminRun = slowloris
      ? Promise.all([loris.run(stopAdmin.signal), probe.run(stopAdmin.signal)])
      : Promise.resolve();

    // Samples every 5 s while the load runs; the upstream restarts at even intervals.
    const stopSampling = new AbortController();
    const sampling = (async () => {
      while (!stopSampling.signal.aborted) {
        await sleep(5000, stopSampling.signal);
        if (!stopSampling.signal.aborted) samples.push(await sample(proxy.pid, elapsed()));
      }
    })();
    const downtimes: number[] = [];
    for (let k = 1; k <= restarts; k++) {
      await sleep(t0 + (durationMs * k) / (restarts + 1) - performance.now());
      const killedAt = performance.now();
      restartWindows.begin();
      await server.stop("SIGKILL");
      server = await startServer();
      restartWindows.end();
      const down = (performance.now() - killedAt) / 1000;
      downtimes.push(down);
      say(
        `  t=${elapsed().toFixed(1)} s: upstream killed and restarted (down ${down.toFixed(2)} s)`,
      );
    }
    await sleep(t0 + durationMs - performance.now());
    const end = await sample(proxy.pid, elapsed());
    // Which worker holds which connections while the load still runs.
    const endStats = await proxyStats(proxy);
    stopIdle.abort();
    stopAdmin.abort();
    const floodResult = flood ? stopResetFlood(flood) : undefined;
    const [pipeReport, churnReport] = await Promise.all([pipelining, churn]);
    await idleRun;
    await invalidRun;
    await adminRun;
    const floodReport = await floodResult;
    stopSampling.abort();
    await sampling;

    // The admin port once the slowloris is gone (its connections are closed by now).
    let adminAfter: string;
    try {
      const { status } = await httpGet(httpPort, "/stats", 5000);
      adminAfter = status === 200 ? "ok" : `status ${status}`;
    } catch (error) {
      adminAfter = (error as Error).message;
    }

    // Every client is gone: the proxy should be back to where it started.
    let stats = await proxyStats(proxy);
    for (let waited = 0; stats.connections_active > 0 && waited < PATIENCE_MS; waited += 100) {
      await sleep(100);
      stats = await proxyStats(proxy);
    }
    const after = await sample(proxy.pid, elapsed());
    // --mux keeps its shared connections once opened (N per upstream per worker at most).
    const shared = stats.mux_upstream_connections ?? 0;
    const start = samples[0] ?? end;
    const peak = Math.max(end.rssBytes, ...samples.map((x) => x.rssBytes));

    const reports: [string, LoadReport][] = [["pipelining", pipeReport], ["churn", churnReport]];
    const odd: [string, InvalidLineClients][] = [["invalid", invalidLine], ["wrong-way", wrongWay]];
    const oddSum = (key: keyof InvalidLineClients["figures"]) =>
      invalidLine.figures[key] + wrongWay.figures[key];
    const requests = pipeReport.requests + churnReport.requests + idleClients.sent +
      oddSum("sent");
    const wrongReplies = pipeReport.errors.wrong_reply + churnReport.errors.wrong_reply +
      idleClients.wrong + oddSum("wrong");
    // A NAK 0 ERRDECODE out of its place is a wrong line too.
    const wrong = wrongReplies + oddSum("misplaced");
    // Right replies, then every reply to a REQ that arrived (a wrong reply is not lost, it is
    // worse).
    const responses = pipeReport.responses + churnReport.responses + idleClients.received +
      oddSum("received");
    const received = responses + wrongReplies;
    const lost = requests - received;
    // The answers to invalid lines: valid NAKs to the proxy, so in its msg_nak.
    const errdecode = oddSum("errdecode");
    const invalidSent = oddSum("invalidSent");
    const errors: Record<string, number> = {};
    for (const [, report] of reports) {
      for (const kind of LOAD_ERROR_KINDS) {
        if (report.errors[kind] > 0) errors[kind] = (errors[kind] ?? 0) + report.errors[kind];
      }
    }
    for (const [prefix, clients] of [["idle", idleClients], ...odd] as const) {
      for (const [kind, n] of Object.entries(clients.errors)) {
        errors[`${prefix}_${kind}`] = (errors[`${prefix}_${kind}`] ?? 0) + n;
      }
    }
    const logLevels: Record<string, number> = {};
    const warnings = new Map<string, number>();
    for (const line of proxy.stderr.lines) {
      try {
        const record = JSON.parse(line);
        const level = String(record.level ?? "?");
        logLevels[level] = (logLevels[level] ?? 0) + 1;
        if (/^(WARN|WARNING|ERROR|FATAL)$/i.test(level)) {
          const kind = String(record.message ?? "").replace(/\d+(\.\d+)*(:\d+)?/g, "#");
          warnings.set(kind, (warnings.get(kind) ?? 0) + 1);
        }
      } catch {
        logLevels.unparsed = (logLevels.unparsed ?? 0) + 1;
      }
    }

    const mb = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
    // V8 grows its heap lazily (RSS climbs for minutes and jumps when the process is starved of
    // CPU, then plateaus) even though the live heap stays flat, so RSS cannot be expected to be
    // flat: a leak shows as unbounded growth. The bound: neither double nor grow by 64 MiB.
    const rssGrowth = end.rssBytes - start.rssBytes;
    const rssLimit = Math.min(64 * MiB, start.rssBytes);
    // Without --resume, clients of a dead upstream lose replies (and REQs the proxy never read):
    // those checks are then only reported.
    const checks: [string, boolean | "info"][] = [
      [`replies lost: ${lost}`, resume ? lost === 0 : "info"],
      [
        `wrong replies (type or data not what the server gives that REQ, or a NAK 0 ERRDECODE ` +
        `before the reply to a REQ sent before its invalid line): ${wrong}`,
        wrong === 0,
      ],
      [
        `replies lost by invalid-line and unsolicited-reply clients on connections no upstream ` +
        `restart touched: ${oddSum("lostWithoutRestart")}`,
        oddSum("lostWithoutRestart") === 0,
      ],
      [
        `NAK 0 ERRDECODE missing on connections no upstream restart touched: ${
          oddSum("missingWithoutRestart")
        }`,
        oddSum("missingWithoutRestart") === 0,
      ],
      [
        `client errors: ${Object.values(errors).reduce((a, b) => a + b, 0)}`,
        resume ? Object.keys(errors).length === 0 : "info",
      ],
      [
        `descriptors back to baseline after the clients left: ${baseline.fds} -> ${after.fds}${
          shared > 0 ? ` (${shared} shared upstream connections of --mux stay open)` : ""
        }`,
        after.fds <= baseline.fds + 2 + shared,
      ],
      [
        `RSS bounded under load: ${mb(start.rssBytes)} at t=${start.t} s -> ${
          mb(end.rssBytes)
        } at the end (limit +${mb(rssLimit)}), peak ${mb(peak)}`,
        rssGrowth <= rssLimit,
      ],
      [
        `proxy msg_req ${stats.msg_req} = REQs the clients sent ${requests}`,
        resume ? stats.msg_req === requests : "info",
      ],
      [
        `proxy ACK+NAK ${stats.msg_ack + stats.msg_nak} = replies the clients got ${received} + ` +
        `NAK 0 ERRDECODE ${errdecode}`,
        stats.msg_ack + stats.msg_nak === received + errdecode,
      ],
      // Without --resume the proxy may not read what a client sent after its upstream died.
      [
        `proxy msg_invalid ${stats.msg_invalid} ${
          resume ? "=" : "<="
        } invalid lines the clients sent ${invalidSent}`,
        resume ? stats.msg_invalid === invalidSent : stats.msg_invalid <= invalidSent,
      ],
      [
        `internal errors (bugs the proxy caught): ${stats.internal_errors ?? "?"}`,
        stats.internal_errors === 0,
      ],
      [
        `data-plane worker restarts (a worker died): ${stats.worker_restarts ?? "?"}`,
        (stats.worker_restarts ?? 0) === 0,
      ],
    ];
    if (slowloris) {
      checks.push(
        [
          `admin GET /stats answered during the slowloris: ${probe.ok} of ${
            probe.ok + probe.failures
          } (at least 1)`,
          probe.ok >= 1,
        ],
        [
          `half-open admin requests the proxy left open ${
            Slowloris.HOLD_LIMIT_MS / 1000
          } s: ${loris.heldTooLong}`,
          loris.heldTooLong === 0,
        ],
        [`admin GET /stats after the slowloris: ${adminAfter}`, adminAfter === "ok"],
      );
    }
    if (floodReport !== undefined) {
      checks.push([
        typeof floodReport === "string"
          ? `reset flood: ${floodReport}`
          : `reset flood made resets: ${floodReport.resets}`,
        typeof floodReport !== "string" && floodReport.resets > 0,
      ]);
    }
    if (resume) {
      checks.push([
        `connections the proxy could not resume: ${stats.resume_failures ?? "?"}`,
        stats.resume_failures === 0,
      ]);
    }

    say("");
    say("== soak report ==");
    say(
      `load ran ${seconds} s; upstream killed ${restarts} time(s), down ${
        downtimes.map((d) => d.toFixed(2) + " s").join(", ") || "never"
      }`,
    );
    for (const [name, r] of reports) {
      say(
        `  ${
          name.padEnd(10)
        } ${r.requests} REQs, ${r.responses} replies, ${r.connectionsOpened} connections, p99 ${
          r.latencyMs.p99.toFixed(1)
        } ms, max ${r.latencyMs.max.toFixed(1)} ms`,
      );
    }
    say(
      `  ${
        "idle".padEnd(10)
      } ${idleClients.sent} REQs, ${idleClients.received} replies, ${idle} connections, ${idleClients.reconnects} reconnects`,
    );
    for (const [name, { figures: f, count }] of odd) {
      say(
        `  ${
          name.padEnd(10)
        } ${f.sent} REQs, ${f.received} replies, ${f.lost} lost (${f.lostWithoutRestart} without a restart), ${f.wrong} wrong, ${f.invalidSent} ${
          name === "invalid" ? "invalid lines" : "wrong-way replies"
        } sent, ${f.errdecode} NAK 0 ERRDECODE (${f.misplaced} misplaced, ${f.missingAfterRestart} missing after a restart, ${f.missingWithoutRestart} missing otherwise), ${count} clients, ${f.connections} connections (${f.touched} during a restart)`,
      );
    }
    say(
      `client side: ${requests} REQs sent, ${received} replies received, ${lost} lost; ` +
        `${invalidSent} invalid lines sent, ${errdecode} NAK 0 ERRDECODE received`,
    );
    say(
      `wrong replies: ${wrong} (pipelining ${pipeReport.errors.wrong_reply}, churn ${churnReport.errors.wrong_reply}, idle ${idleClients.wrong}, invalid ${invalidLine.figures.wrong}, wrong-way ${wrongWay.figures.wrong}, misplaced NAK 0 ERRDECODE ${
        oddSum("misplaced")
      })`,
    );
    say(`client errors by kind: ${JSON.stringify(errors)}`);
    say(
      `proxy: failovers ${stats.failovers ?? "-"}, replays ${
        stats.replays ?? "-"
      }, resume_failures ${
        stats.resume_failures ?? "-"
      }, upstream_errors ${stats.upstream_errors}, connect retries ${
        stats.upstream_connect_retries ?? "-"
      }, connections ${stats.connections_total}`,
    );
    say(`proxy connections closed by reason: ${JSON.stringify(stats.connections_closed)}`);
    const planes = endStats.workers ?? [];
    say(
      planes.length === 0
        ? "proxy data plane: on the main thread (no workers)"
        : `proxy data plane: ${planes.length} worker(s); connections each held at the end of the load: ${
          planes.map((w) => `worker ${w.worker} ${w.connections_active}`).join(", ")
        }; restarts ${stats.worker_restarts ?? "?"}`,
    );
    if (typeof floodReport === "object") {
      say(
        `reset flood: ${floodReport.resets} resets in ${floodReport.seconds} s (${floodReport.at_once} at once, ${floodReport.after_20ms} after 20 ms), connect errors ${
          JSON.stringify(floodReport.errors)
        }`,
      );
    } else if (floodReport !== undefined) say(`reset flood failed: ${floodReport}`);
    else say(`reset flood: ${floodSkipped ? `skipped (${floodSkipped})` : "off"}`);
    if (slowloris) {
      say(
        `admin slowloris: ${loris.opens} half-open requests opened (100 at a time), ${loris.refused} refused at once, ${loris.timedOut} closed later (the header deadline, or evicted for a newer connection at the cap; longest held ${
          (loris.longestMs / 1000).toFixed(1)
        } s), ${loris.answered} answered, ${loris.heldTooLong} left open, ${loris.connectErrors} connect errors`,
      );
      say(
        `admin GET /stats probes: ${probe.ok} ok (slowest ${
          probe.slowestMs.toFixed(0)
        } ms), failed by kind ${JSON.stringify(probe.failed)}`,
      );
    } else say("admin slowloris: off");
    say(
      `proxy: admin_connections_rejected ${
        stats.admin_connections_rejected ?? "?"
      }, admin_request_timeouts ${stats.admin_request_timeouts ?? "?"}, admin_bad_requests ${
        stats.admin_bad_requests ?? "?"
      }, accept_errors ${stats.accept_errors ?? "?"}, accept_resource_errors ${
        stats.accept_resource_errors ?? "?"
      }, internal_errors ${stats.internal_errors ?? "?"}`,
    );
    say(`proxy log lines by level: ${JSON.stringify(logLevels)}`);
    for (const [kind, n] of warnings) say(`  ${n} x ${kind}`);
    say(`proxy process (pid ${proxy.pid}): descriptors / RSS`);
    say(`  before load      ${String(baseline.fds).padStart(5)}  ${mb(baseline.rssBytes)}`);
    for (const s of samples) {
      say(`  t=${String(s.t).padEnd(6)} s     ${String(s.fds).padStart(5)}  ${mb(s.rssBytes)}`);
    }
    say(`  end of load     ${String(end.fds).padStart(5)}  ${mb(end.rssBytes)}`);
    say(`  clients gone    ${String(after.fds).padStart(5)}  ${mb(after.rssBytes)}`);
    say("checks:");
    for (const [text, ok] of checks) {
      say(`  ${ok === "info" ? "INFO" : ok ? "PASS" : "FAIL"}  ${text}`);
    }

    const stopped = await proxy.stop("SIGTERM");
    await server.stop("SIGTERM");
    const passed = checks.every(([, ok]) => ok !== false) && stopped.code === 0;
    say(`proxy exited with ${stopped.code}; soak ${passed ? "PASSED" : "FAILED"}`);
    return passed ? 0 : 1;
  } finally {
    await server[Symbol.asyncDispose]();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
