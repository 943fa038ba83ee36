/**
 * What a `--takeover` costs clients, measured: our Foo server, a proxy with `--pid-file`,
 * `--recovery-path` and `--http`, a load of many short clients (connect, pipeline a few REQs, read
 * every reply, close, again, as fast as they can) and some long ones (one connection, paced REQs,
 * each reply awaited, a new connection after `--long-life`), while N takeovers run in a row: each
 * new proxy is the same command plus `--takeover`, and the next starts once it logged "Took over"
 * (the proxy taken over has drained and exited). Afterwards the last proxy's `/stats` is checked
 * against what the clients sent and received.
 *
 * It reports connections attempted, connects refused, connections reset (or closed) before and
 * after their first reply, replies lost (a REQ written and never answered), the counters check,
 * the time from starting a new proxy to its "Serving" and "Took over" lines, and
 * `net.ipv4.tcp_migrate_req`. `--migrate both` (root only) runs everything with it at 0 and at 1,
 * side by side, and puts the value back at the end, also on failure, Ctrl-C or SIGTERM.
 *
 * ```sh
 * deno run -A bench/takeover.ts                      # --help for the flags
 * sudo deno run -A bench/takeover.ts --migrate both  # 0 and 1 side by side
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import type { Child } from "../scripts/child.ts";
import { startServer } from "./harness/foo_server.ts";
import { numberFlag } from "./harness/number_flag.ts";
import { fmt, median } from "./harness/numbers.ts";
import { machineFacts, markdownTable, writeReport } from "./harness/report.ts";
import { freePorts, HOST, REPO_ROOT, spawnProcess, waitForPort } from "./harness/spawn.ts";

const RESULTS = new URL("./TAKEOVER.md", import.meta.url).pathname;
const MIGRATE_PATH = "/proc/sys/net/ipv4/tcp_migrate_req";
/** The processes and temporary directories of the run under way (for an interrupt). */
const live = { children: new Set<Child>(), dirs: new Set<string>() };

/** Kills what a run started and removes its directory, synchronously (an interrupt's exit). */
function abandonRun(): void {
  for (const child of live.children) child.kill("SIGKILL");
  for (const dir of live.dirs) {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // gone already
    }
  }
}

/** How long a client waits for a reply before it counts the connection as stalled. */
const REPLY_TIMEOUT_MS = 5000;

/** The bench's settings. */
export interface TakeoverConfig {
  takeovers: number;
  /** Short clients running at once. */
  clients: number;
  /** REQs each short connection pipelines. */
  pipeline: number;
  /** Long clients running at once. */
  long: number;
  /** Pause between a long client's reply and its next REQ (ms). */
  intervalMs: number;
  /** How long a long client keeps a connection before it opens the next (ms). */
  lifeMs: number;
  /** Load before the first takeover, between two and after the last (ms). */
  settleMs: number;
  /** `tcp_migrate_req` values to run with; `undefined`: as it is. */
  migrate: (0 | 1)[] | undefined;
}

/** What the clients saw and the last proxy counted, in one run. */
export interface RunReport {
  /** `net.ipv4.tcp_migrate_req` during the run ("unknown" when unreadable). */
  migrate: string;
  attempted: number;
  /** Connections that got at least one reply. */
  served: number;
  refused: number;
  /** Reset (ECONNRESET, EPIPE) or closed by the peer before the first reply. */
  resetBefore: number;
  closedBefore: number;
  /** Reset or closed after the first reply, with REQs still unanswered. */
  resetAfter: number;
  closedAfter: number;
  timeouts: number;
  otherErrors: number;
  /** REQs written without error. */
  reqsWritten: number;
  /** Of those, on connections that never got a reply (the proxy may never have read them). */
  reqsOnUnserved: number;
  replies: number;
  /** REQs written on a connection that got a reply, never answered. */
  lostReplies: number;
  /** The last proxy's counters. */
  msgReq: number;
  msgReplies: number;
  takeoverFailures: number;
  /** ms from starting each new proxy to its "Serving" line, and to its "Took over" line. */
  toServing: number[];
  toTookOver: number[];
  /**
   * Each failure: kind and when, in ms after the start of the takeover under way and after its
   * "Serving" line (`undefined`: before that line).
   */
  failures: { kind: string; afterStartMs: number; afterServingMs?: number; takeover: number }[];
  seconds: number;
}

function usage(): string {
  return `Usage: deno run -A bench/takeover.ts [flags]

  --takeovers N      takeovers in a row                                    (default 10)
  --clients C        short clients at once (connect, pipeline, read, close) (default 32)
  --pipeline P       REQs per short connection                            (default 4)
  --long L           long clients at once (one connection, paced REQs)    (default 8)
  --interval MS      a long client's pause between reply and next REQ     (default 20)
  --long-life S      seconds a long client keeps a connection             (default 2)
  --settle S         seconds of load before, between and after takeovers  (default 1)
  --migrate M        net.ipv4.tcp_migrate_req: current, 0, 1 or both (0 and 1 need root;
                     the value is restored at the end)                    (default current)
  --results FILE     write the report there                 (default bench/TAKEOVER.md)
  --no-write         print the tables only, write no report`;
}

/** Parses the flags (exported for the test). */
export function parseTakeoverArgs(args: string[]): TakeoverConfig & {
  results: string;
  write: boolean;
  help: boolean;
} {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      takeovers: { type: "string" },
      clients: { type: "string" },
      pipeline: { type: "string" },
      long: { type: "string" },
      interval: { type: "string" },
      "long-life": { type: "string" },
      settle: { type: "string" },
      migrate: { type: "string", default: "current" },
      results: { type: "string", default: RESULTS },
      "no-write": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  const migrates: Record<string, (0 | 1)[] | undefined> = {
    current: undefined,
    "0": [0],
    "1": [1],
    both: [0, 1],
  };
  if (!(values.migrate in migrates)) {
    throw new RangeError(`Invalid --migrate "${values.migrate}": expected current, 0, 1 or both`);
  }
  return {
    takeovers: Math.round(numberFlag("takeovers", values.takeovers, 10, 1)),
    clients: Math.round(numberFlag("clients", values.clients, 32, 0)),
    pipeline: Math.round(numberFlag("pipeline", values.pipeline, 4, 1)),
    long: Math.round(numberFlag("long", values.long, 8, 0)),
    intervalMs: numberFlag("interval", values.interval, 20, 0),
    lifeMs: numberFlag("long-life", values["long-life"], 2, 0.1) * 1000,
    settleMs: numberFlag("settle", values.settle, 1, 0) * 1000,
    migrate: migrates[values.migrate],
    results: values.results,
    write: !values["no-write"],
    help: values.help === true,
  };
}

async function readMigrate(): Promise<string> {
  return (await Deno.readTextFile(MIGRATE_PATH).catch(() => "unknown")).trim();
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A connection read line by line, each line with a deadline. */
class LineConn {
  #buffer = new Uint8Array(4096);
  #pending = "";
  #decoder = new TextDecoder();
  constructor(readonly conn: Deno.TcpConn) {}

  /** The next line; `null` at EOF; throws "timeout" when none comes in time. */
  async line(timeoutMs: number): Promise<string | null> {
    for (;;) {
      const end = this.#pending.indexOf("\n");
      if (end >= 0) {
        const line = this.#pending.slice(0, end);
        this.#pending = this.#pending.slice(end + 1);
        return line;
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeoutMs);
      });
      const n = await Promise.race([this.conn.read(this.#buffer), timeout]).finally(() =>
        clearTimeout(timer)
      );
      if (n === "timeout") throw new Error("timeout");
      if (n === null) return null;
      this.#pending += this.#decoder.decode(this.#buffer.subarray(0, n), { stream: true });
    }
  }

  async write(text: string): Promise<void> {
    const data = new TextEncoder().encode(text);
    for (let off = 0; off < data.length;) off += await this.conn.write(data.subarray(off));
  }
}

/** Which failure an error is. */
function kindOf(error: unknown): "reset" | "timeout" | "other" {
  if (error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BrokenPipe) {
    return "reset";
  }
  if (error instanceof Error && error.message === "timeout") return "timeout";
  return "other";
}

/** The clients' shared tally and the takeover clock their failures are timed by. */
class Tally {
  attempted = 0;
  served = 0;
  refused = 0;
  resetBefore = 0;
  closedBefore = 0;
  resetAfter = 0;
  closedAfter = 0;
  timeouts = 0;
  otherErrors = 0;
  otherSamples: string[] = [];
  reqsWritten = 0;
  reqsOnUnserved = 0;
  replies = 0;
  lostReplies = 0;
  failures: RunReport["failures"] = [];
  /** Start time of the takeover under way (or last begun), and its number (0: none yet). */
  takeoverStart = 0;
  takeover = 0;
  /** When the new proxy of the takeover under way logged "Serving" (0: not yet). */
  servingAt = 0;

  fail(kind: string) {
    const afterStartMs = this.takeover === 0
      ? -1
      : Math.round(performance.now() - this.takeoverStart);
    const afterServingMs = this.servingAt === 0
      ? undefined
      : Math.round(performance.now() - this.servingAt);
    this.failures.push({ kind, afterStartMs, afterServingMs, takeover: this.takeover });
  }

  /**
   * Runs one connection: `exchange` writes and reads through it and reports progress; every
   * outcome is counted here.
   */
  async connection(
    port: number,
    exchange: (c: LineConn, progress: { written: number; answered: number }) => Promise<void>,
  ): Promise<void> {
    this.attempted++;
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname: HOST, port });
    } catch (error) {
      if (error instanceof Deno.errors.ConnectionRefused) {
        this.refused++;
        this.fail("refused");
      } else if (
        error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.NotConnected
      ) {
        // Reset right after the handshake (a listener that closed before the proxy took it):
        // ECONNRESET, or ENOTCONN when Deno then asks the socket for its addresses.
        this.resetBefore++;
        this.fail(
          error instanceof Deno.errors.NotConnected
            ? "reset at connect (ENOTCONN)"
            : "reset at connect",
        );
      } else {
        this.otherErrors++;
        this.otherSamples.push(`connect: ${String(error)}`);
        this.fail("connect error");
      }
      return;
    }
    const progress = { written: 0, answered: 0 };
    try {
      await exchange(new LineConn(conn), progress);
    } catch (error) {
      const kind = kindOf(error);
      const closed = error instanceof Error && error.message === "closed";
      const before = progress.answered === 0;
      if (closed) before ? this.closedBefore++ : this.closedAfter++;
      else if (kind === "reset") before ? this.resetBefore++ : this.resetAfter++;
      else if (kind === "timeout") this.timeouts++;
      else {
        this.otherErrors++;
        if (this.otherSamples.length < 5) this.otherSamples.push(String(error));
      }
      this.fail(
        `${closed ? "closed" : kind}${kind === "timeout" ? "" : before ? " before" : " after"}`,
      );
    } finally {
      try {
        conn.close();
      } catch {
        // closed already
      }
      this.reqsWritten += progress.written;
      this.replies += progress.answered;
      if (progress.answered > 0) {
        this.served++;
        this.lostReplies += progress.written - progress.answered;
      } else {
        this.reqsOnUnserved += progress.written;
      }
    }
  }
}

async function readReply(c: LineConn): Promise<void> {
  const line = await c.line(REPLY_TIMEOUT_MS);
  if (line === null) throw new Error("closed");
  if (!/^(ACK|NAK) \d+/.test(line)) throw new Error(`not a reply: ${line.slice(0, 80)}`);
}

function shortClient(port: number, pipeline: number, tally: Tally, stop: () => boolean) {
  let text = "";
  for (let seq = 1; seq <= pipeline; seq++) text += `REQ ${seq} takeover-bench\n`;
  return (async () => {
    while (!stop()) {
      await tally.connection(port, async (c, p) => {
        await c.write(text);
        p.written = pipeline;
        for (let i = 0; i < pipeline; i++) {
          await readReply(c);
          p.answered++;
        }
      });
    }
  })();
}

function longClient(port: number, config: TakeoverConfig, tally: Tally, stop: () => boolean) {
  return (async () => {
    while (!stop()) {
      const until = performance.now() + config.lifeMs;
      await tally.connection(port, async (c, p) => {
        for (let seq = 1; !stop() && performance.now() < until; seq++) {
          await c.write(`REQ ${seq} takeover-bench-long\n`);
          p.written++;
          await readReply(c);
          p.answered++;
          if (config.intervalMs > 0) await sleep(config.intervalMs);
        }
      });
    }
  })();
}

async function proxyStats(port: number): Promise<Record<string, number>> {
  const response = await fetch(`http://${HOST}:${port}/stats`);
  if (!response.ok) throw new Error(`/stats answered ${response.status}`);
  return await response.json();
}

/** One whole run: server, first proxy, load, `config.takeovers` takeovers, the check. */
export async function runTakeovers(config: TakeoverConfig): Promise<RunReport> {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-bench-takeover-" });
  live.dirs.add(dir);
  const server = await startServer();
  live.children.add(server.child);
  const [port, http] = freePorts(2);
  const pidFile = `${dir}/foo-proxy.pid`;
  const args = [
    "run",
    "--allow-net",
    "--allow-env=FOO_PROXY_*",
    `--allow-read=${REPO_ROOT}src,${dir}`,
    `--allow-write=${dir}`,
    "--unstable-net",
    "src/main.ts",
    "proxy",
    `--listen=${HOST}:${port}`,
    `--forward=${HOST}:${server.port}`,
    `--http=${HOST}:${http}`,
    "--health=off",
    `--pid-file=${pidFile}`,
    `--recovery-path=${dir}/stats.json`,
  ];
  const proxies: Child[] = [];
  const spawnProxy = (extra: string[]) => {
    const child = spawnProcess(Deno.execPath(), [...args, ...extra], {
      name: `proxy ${proxies.length}`,
      cwd: REPO_ROOT,
    });
    proxies.push(child);
    live.children.add(child);
    return child;
  };
  const tally = new Tally();
  let stop = false;
  const loads: Promise<void>[] = [];
  const started = performance.now();
  const toServing: number[] = [];
  const toTookOver: number[] = [];
  try {
    const first = spawnProxy([]);
    await waitForPort(port, first, 30_000);
    // The pid file is written once the takeover socket listens.
    const deadline = Date.now() + 30_000;
    while ((await Deno.readTextFile(pidFile).catch(() => "")).trim() !== String(first.pid)) {
      if (Date.now() > deadline) throw new Error(`no pid in ${pidFile}: ${first.stderr.tail()}`);
      await sleep(50);
    }
    const migrate = await readMigrate();
    for (let i = 0; i < config.clients; i++) {
      loads.push(shortClient(port, config.pipeline, tally, () => stop));
    }
    for (let i = 0; i < config.long; i++) loads.push(longClient(port, config, tally, () => stop));
    await sleep(config.settleMs);
    for (let n = 1; n <= config.takeovers; n++) {
      const old = proxies[proxies.length - 1];
      tally.takeover = n;
      tally.takeoverStart = performance.now();
      tally.servingAt = 0;
      const next = spawnProxy(["--takeover"]);
      await next.stderr.waitFor(/Serving: the running proxy stops accepting/, `takeover ${n}`);
      tally.servingAt = performance.now();
      toServing.push(tally.servingAt - tally.takeoverStart);
      await next.stderr.waitFor(/Took over: this proxy/, `takeover ${n}: Took over`);
      toTookOver.push(performance.now() - tally.takeoverStart);
      const status = await old.status;
      if (status.code !== 0) {
        throw new Error(`${old.name} exited with ${status.code}: ${old.stderr.tail()}`);
      }
      await sleep(config.settleMs);
    }
    stop = true;
    await Promise.all(loads);
    const stats = await proxyStats(http);
    const last = proxies[proxies.length - 1];
    const errors = proxies.flatMap((p) => p.stderr.lines.filter((l) => /ERROR/.test(l)));
    if (errors.length > 0) writeStderrLine(`takeover: proxy errors:\n${errors.join("\n")}`);
    if (tally.otherSamples.length > 0) {
      writeStderrLine(`takeover: other client errors, e.g.:\n${tally.otherSamples.join("\n")}`);
    }
    last.kill("SIGTERM");
    return {
      migrate,
      attempted: tally.attempted,
      served: tally.served,
      refused: tally.refused,
      resetBefore: tally.resetBefore,
      closedBefore: tally.closedBefore,
      resetAfter: tally.resetAfter,
      closedAfter: tally.closedAfter,
      timeouts: tally.timeouts,
      otherErrors: tally.otherErrors,
      reqsWritten: tally.reqsWritten,
      reqsOnUnserved: tally.reqsOnUnserved,
      replies: tally.replies,
      lostReplies: tally.lostReplies,
      msgReq: stats.msg_req,
      msgReplies: stats.msg_ack + stats.msg_nak,
      takeoverFailures: stats.takeover_failures,
      toServing,
      toTookOver,
      failures: tally.failures,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    stop = true;
    await Promise.allSettled(loads);
    for (const p of proxies.reverse()) await p[Symbol.asyncDispose]();
    await server.child[Symbol.asyncDispose]();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    live.children.clear();
    live.dirs.clear();
  }
}

/** Whether the last proxy's counters match what the clients wrote and read. */
export function countersMatch(r: RunReport): { reqs: boolean; replies: boolean } {
  return {
    // REQs on a connection reset before any reply may never have reached a proxy.
    reqs: r.msgReq === r.reqsWritten || r.msgReq === r.reqsWritten - r.reqsOnUnserved,
    replies: r.msgReplies === r.replies,
  };
}

/** "min–max" of `xs`, "—" when empty. */
const ms = (xs: number[]) =>
  xs.length === 0 ? "—" : `${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}`;

/** The report's table: a row per figure, a column per run. */
export function reportTable(runs: RunReport[]): string {
  const rows: [string, (r: RunReport) => string][] = [
    ["net.ipv4.tcp_migrate_req", (r) => r.migrate],
    ["connections attempted", (r) => fmt(r.attempted)],
    ["connects refused", (r) => fmt(r.refused)],
    ["reset before the first reply", (r) => fmt(r.resetBefore)],
    ["closed by the proxy before the first reply", (r) => fmt(r.closedBefore)],
    ["reset after the first reply", (r) => fmt(r.resetAfter)],
    ["closed by the proxy after the first reply", (r) => fmt(r.closedAfter)],
    ["no reply within 5 s", (r) => fmt(r.timeouts)],
    ["other client errors", (r) => fmt(r.otherErrors)],
    ["REQs written", (r) => fmt(r.reqsWritten)],
    ["of those, on connections that never got a reply", (r) => fmt(r.reqsOnUnserved)],
    ["replies received", (r) => fmt(r.replies)],
    [
      "replies lost (REQ written on a served connection, never answered)",
      (r) => fmt(r.lostReplies),
    ],
    ["last proxy's msg_req", (r) => fmt(r.msgReq)],
    [
      "msg_req check",
      (r) =>
        countersMatch(r).reqs
          ? r.msgReq === r.reqsWritten ? "= REQs written" : "= REQs written on served connections"
          : `MISMATCH (${fmt(r.msgReq - r.reqsWritten)} vs written)`,
    ],
    ["last proxy's msg_ack + msg_nak", (r) => fmt(r.msgReplies)],
    [
      "reply check",
      (r) =>
        countersMatch(r).replies
          ? "= replies received"
          : `MISMATCH (${fmt(r.msgReplies - r.replies)})`,
    ],
    ["takeover_failures", (r) => fmt(r.takeoverFailures)],
    ["start → Serving (ms, median)", (r) => fmt(median(r.toServing))],
    ["start → Serving (ms, min–max)", (r) => ms(r.toServing)],
    ["start → Took over (ms, median)", (r) => fmt(median(r.toTookOver))],
    ["start → Took over (ms, min–max)", (r) => ms(r.toTookOver)],
    ["run time (s)", (r) => fmt(r.seconds, 1)],
  ];
  const header = ["", ...runs.map((r) => `tcp_migrate_req=${r.migrate}`)];
  return markdownTable(header, rows.map(([label, f]) => [label, ...runs.map(f)]), 1);
}

/** A range of ms, "a–b" or "a" when they are equal. */
function span(xs: number[]): string {
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  return lo === hi ? `${lo}` : `${lo}–${hi}`;
}

/**
 * The failures of each run, grouped by takeover and kind, with when they happened: ms after the
 * new proxy was started and after the bench saw its "Serving" line.
 */
export function failureLines(runs: RunReport[]): string {
  const lines: string[] = [];
  for (const r of runs) {
    if (r.failures.length === 0) {
      lines.push(`- tcp_migrate_req=${r.migrate}: no client failure`);
      continue;
    }
    const groups = new Map<string, RunReport["failures"]>();
    for (const f of r.failures) {
      const key = `${f.takeover}\t${f.kind}`;
      groups.set(key, [...(groups.get(key) ?? []), f]);
    }
    const parts = [...groups.values()].map((fs) => {
      const f = fs[0];
      if (f.takeover === 0) return `${fs.length} × ${f.kind} before the first takeover`;
      const serving = fs.filter((x) => x.afterServingMs !== undefined);
      const after = serving.length === 0
        ? "before its Serving line"
        : `${span(serving.map((x) => x.afterServingMs!))} ms after its Serving line${
          serving.length < fs.length ? ` (${fs.length - serving.length} before it)` : ""
        }`;
      return `takeover ${f.takeover}: ${fs.length} × ${f.kind}, ${
        span(fs.map((x) => x.afterStartMs))
      } ms after its start, ${after}`;
    });
    lines.push(
      `- tcp_migrate_req=${r.migrate}: ${r.failures.length} failure(s)\n${
        parts.map((p) => `  - ${p}`).join("\n")
      }`,
    );
  }
  return lines.join("\n");
}

async function main(args: string[]): Promise<number> {
  const config = parseTakeoverArgs(args);
  if (config.help) {
    writeStdoutLine(usage());
    return 0;
  }
  const command = `deno run -A bench/takeover.ts${args.length ? ` ${args.join(" ")}` : ""}`;
  const startedAt = new Date();
  const original = await readMigrate();
  const runs: RunReport[] = [];
  // Ctrl-C or SIGTERM mid-run: the processes stop and the sysctl goes back before the exit too.
  const interrupted = () => {
    try {
      abandonRun();
      if (original !== "unknown") Deno.writeTextFileSync(MIGRATE_PATH, `${original}\n`);
    } finally {
      Deno.exit(130);
    }
  };
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const signal of signals) Deno.addSignalListener(signal, interrupted);
  try {
    for (const value of config.migrate ?? [undefined]) {
      if (value !== undefined && String(value) !== (await readMigrate())) {
        try {
          await Deno.writeTextFile(MIGRATE_PATH, `${value}\n`);
        } catch (error) {
          throw new Error(`cannot set ${MIGRATE_PATH} to ${value} (root only): ${error}`);
        }
      }
      writeStderrLine(`takeover: running with tcp_migrate_req=${await readMigrate()}`);
      runs.push(await runTakeovers(config));
    }
  } finally {
    for (const signal of signals) Deno.removeSignalListener(signal, interrupted);
    if (original !== "unknown" && (await readMigrate()) !== original) {
      await Deno.writeTextFile(MIGRATE_PATH, `${original}\n`);
      writeStderrLine(`takeover: ${MIGRATE_PATH} restored to ${original}`);
    }
  }
  const settings = `${config.takeovers} takeovers in a row; ${config.clients} short clients ` +
    `(${config.pipeline} pipelined REQs a connection) and ${config.long} long clients ` +
    `(a REQ every ${config.intervalMs} ms after each reply, a new connection every ` +
    `${config.lifeMs / 1000} s); ${config.settleMs / 1000} s of load before, between and after`;
  const table = reportTable(runs);
  const failures = failureLines(runs);
  writeStdoutLine(`\n${settings}\n\n${table}\n\nFailures, when:\n${failures}\n\n\`${command}\``);
  const ok = runs.every((r) => {
    const m = countersMatch(r);
    return m.reqs && m.replies;
  });
  if (config.write) {
    const md = `# What a takeover costs clients (\`bench/takeover.ts\`)

Generated by \`bench/takeover.ts\`; re-run \`${command}\`.

${await machineFacts({ started: startedAt, command, checkout: REPO_ROOT })}

${settings}. Every proxy runs with \`--pid-file\`, \`--recovery-path\` and \`--http\`; each new
one is the same command plus \`--takeover\`, and the next starts once it has logged "Took over"
(the proxy taken over has drained and exited; a long client holds it up to its connection's life).

- "reset before the first reply": the connect, the write or the first read failed with ECONNRESET
  or EPIPE (or the connect with ENOTCONN: Deno asks a socket reset right after its handshake for its
  addresses); such a connection's REQs may never have reached a proxy, so the msg_req check also
  accepts "REQs written on connections that got a reply".
- "replies lost": REQs written on a connection that got at least one reply and never answered.
- Times are when this bench saw the line on the new proxy's stderr (a pipe read under load: a few
  ms late at times), counted from its spawn (a Deno start, so mostly start-up).

${table}

Client failures, grouped by takeover and kind, with when they happened:

${failures}
`;
    await writeReport([config.results], md, `${REPO_ROOT}deno.json`);
    writeStderrLine(`takeover: wrote ${config.results}`);
  }
  return ok ? 0 : 1;
}

if (import.meta.main) {
  Deno.exit(
    await main(Deno.args).catch((error) => {
      writeStderrLine(`takeover: ${error instanceof Error ? error.message : String(error)}`);
      return 2;
    }),
  );
}
