/**
 * The three-upstream benchmark (issue 12): three Foo servers (`foo-proxy server --reply hash`, each
 * its own process) behind, in turn, foo-proxy with `--resume`, foo-proxy without it, and HAProxy
 * (`balance leastconn`, `check` on every server, TCP mode). Rounds are interleaved (the target
 * order rotates every round) and the report gives medians and ratios within the run:
 *
 * 1. throughput: `foo-proxy bench --connections 48 --pipeline 8 --replies hash`, against servers
 *    that answer after 5 ms (`--delay-ms 5`: latency-bound), and the same against servers that
 *    answer at once (CPU-bound: the figure to compare with bench/RESULTS.md); proxy CPU per reply
 *    from /proc/PID/stat (utime + stime);
 * 2. resilience: the same load against the 5 ms servers, without warm-up, and one of the three
 *    servers is SIGKILLed mid-run. The load generator's report counts failed client connections
 *    (errors by kind) and, since there is no warm-up, `requests − responses` is the replies lost
 *    or wrong.
 *
 * Run: `deno run -A bench/multi_upstream.ts [--rounds 3] [--results FILE | --write-results]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { Child } from "../scripts/child.ts";
import { commandOutput, delay, fmt, ratio } from "./_common.ts";

const REPO_ROOT = new URL("..", import.meta.url).pathname;
const TRACKED_RESULTS = new URL("./MULTI_UPSTREAM.md", import.meta.url).pathname;
const HOST = "127.0.0.1";
const UPSTREAM_NAMES = ["a", "b", "c"] as const;
/**
 * The upstream the resilience run kills when the target's connections are spread evenly (as
 * leastconn should: 16 each); otherwise the one holding the most connections just before the kill,
 * so the run always takes down a loaded upstream.
 */
const DEFAULT_VICTIM = "b";
const LOAD_FLAGS = ["--connections", "48", "--pipeline", "8", "--replies", "hash"];

type TargetName = "foo-proxy --resume" | "foo-proxy" | "haproxy";
const TARGETS: TargetName[] = ["foo-proxy --resume", "foo-proxy", "haproxy"];

interface Config {
  rounds: number;
  seconds: number;
  warmup: number;
  resilienceSeconds: number;
  killAt: number;
  delayMs: number;
  healthMs: number;
  cpuBound: boolean;
  /** Measure the working tree as it is (and as it changes), not a snapshot of HEAD. */
  worktree: boolean;
  /** The src/main.ts that is run: the snapshot's, or the working tree's. */
  mainPath: string;
  single: boolean;
  results: string | undefined;
  writeResults: boolean;
}

function usage(): string {
  return `Usage: deno run -A bench/multi_upstream.ts [flags]

  --rounds N              interleaved rounds                          (default 3)
  --seconds S             measured seconds per throughput run         (default 5)
  --warmup S              unmeasured seconds before a throughput run  (default 1)
  --resilience-seconds S  length of the resilience run (no warm-up)   (default 6)
  --kill-at S             SIGKILL the busiest upstream after S seconds    (default 2)
  --delay-ms N            the servers' reply delay (--delay-ms)       (default 5)
  --health-ms N           health-check interval, both proxies         (default 500)
  --no-cpu-bound          skip the throughput run against three 0 ms servers
  --no-single             skip the control: the same run through one 0 ms server
  --worktree              run the working tree's src/ (default: a snapshot of HEAD taken
                          with git archive, so edits made meanwhile do not change the code
                          measured halfway through)
  --results FILE          write the report there (default: a new temporary file)
  --write-results         write it to bench/MULTI_UPSTREAM.md`;
}

function parseConfig(args: string[]): Config {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      rounds: { type: "string", default: "3" },
      seconds: { type: "string", default: "5" },
      warmup: { type: "string", default: "1" },
      "resilience-seconds": { type: "string", default: "6" },
      "kill-at": { type: "string", default: "2" },
      "delay-ms": { type: "string", default: "5" },
      "health-ms": { type: "string", default: "500" },
      "no-cpu-bound": { type: "boolean" },
      "no-single": { type: "boolean" },
      worktree: { type: "boolean" },
      results: { type: "string" },
      "write-results": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    writeStdoutLine(usage());
    Deno.exit(0);
  }
  const num = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isFinite(n) || n < min) throw new RangeError(`Invalid --${name} "${text}"`);
    return n;
  };
  const config: Config = {
    rounds: Math.round(num("rounds", values.rounds, 1)),
    seconds: num("seconds", values.seconds, 1),
    warmup: num("warmup", values.warmup, 0),
    resilienceSeconds: Math.round(num("resilience-seconds", values["resilience-seconds"], 2)),
    killAt: Math.round(num("kill-at", values["kill-at"], 1)),
    delayMs: Math.round(num("delay-ms", values["delay-ms"], 0)),
    healthMs: Math.round(num("health-ms", values["health-ms"], 10)),
    cpuBound: !values["no-cpu-bound"],
    single: !values["no-single"],
    worktree: values.worktree === true,
    mainPath: `${REPO_ROOT}src/main.ts`,
    results: values["write-results"] ? TRACKED_RESULTS : values.results,
    writeResults: values["write-results"] === true,
  };
  if (config.killAt >= config.resilienceSeconds) {
    throw new RangeError("--kill-at must be below --resilience-seconds");
  }
  return config;
}

// ---------------------------------------------------------------------------------------------
// Processes

/** `count` distinct free ports (all held open at once, so none is handed out twice). */
function freePorts(count: number): number[] {
  const listeners = Array.from({ length: count }, () => Deno.listen({ hostname: HOST, port: 0 }));
  const ports = listeners.map((l) => l.addr.port);
  for (const l of listeners) l.close();
  return ports;
}

async function waitForPort(port: number, child: Child, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      (await Deno.connect({ hostname: HOST, port })).close();
      return;
    } catch {
      if (child.exited || Date.now() > deadline) {
        throw new Error(`${child.name} is not listening on ${port}: ${child.stderr.tail()}`);
      }
      await delay(50);
    }
  }
}

/** The permission and runtime flags of `deno task start`, so foo-proxy runs as users start it. */
async function startFlags(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}deno.json`));
  const words = String(config.tasks?.start ?? "").split(/\s+/);
  return words.slice(words.indexOf("run") + 1, words.indexOf("src/main.ts"))
    .filter((w) => w.startsWith("--"));
}

interface Server {
  name: string;
  port: number;
  child: Child;
}

/** Starts the three Foo servers (run directly by deno, so SIGKILL hits the server itself). */
function startServers(
  config: Config,
  delayMs: number,
  names: readonly string[] = UPSTREAM_NAMES,
): Promise<Server[]> {
  return Promise.all(names.map(async (name) => {
    const child = new Child([
      "run",
      "--allow-net",
      "--allow-env=FOO_PROXY_*",
      config.mainPath,
      "server",
      "--listen",
      `${HOST}:0`,
      "--reply",
      "hash",
      "--delay-ms",
      String(delayMs),
      "--log-level",
      "warning",
    ], { name: `server ${name}`, disposeSignal: "SIGTERM", disposeGraceMs: 3000 });
    const m = await child.stdout.waitFor(/listening on \S+:(\d+)/, `server ${name}`);
    return { name, port: Number(m[1]), child };
  }));
}

interface Target {
  name: TargetName;
  child: Child;
  port: number;
  /** foo-proxy's --http port. */
  httpPort?: number;
  /** HAProxy's stats socket. */
  socket?: string;
  config?: string;
}

async function startFooProxy(
  servers: Server[],
  resume: boolean,
  config: Config,
  flags: string[],
): Promise<Target> {
  const [port, httpPort] = freePorts(2);
  const child = new Child([
    "run",
    ...flags,
    config.mainPath,
    "proxy",
    "--listen",
    `${HOST}:${port}`,
    "--forward",
    servers.map((s) => `${s.name}=${HOST}:${s.port}`).join(","),
    "--balance",
    "leastconn",
    "--health-interval",
    `${config.healthMs}ms`,
    ...(resume ? ["--resume"] : []),
    "--http",
    `${HOST}:${httpPort}`,
    "--health",
    "off",
    "--drain-timeout",
    "1s",
    "--log-level",
    "info",
  ], {
    name: resume ? "foo-proxy --resume" : "foo-proxy",
    disposeSignal: "SIGTERM",
    disposeGraceMs: 5000,
  });
  await waitForPort(port, child);
  return { name: resume ? "foo-proxy --resume" : "foo-proxy", child, port, httpPort };
}

/**
 * HAProxy's configuration: TCP mode, leastconn over the three servers, each with `check` at the
 * interval foo-proxy uses and HAProxy's default rise 2 / fall 3. `option redispatch` lets a
 * connect that fails on a dead-but-not-yet-down server go to another one on its last retry, as
 * foo-proxy's failover does; everything else is at its default.
 */
export function haproxyConfig(
  listenPort: number,
  servers: { name: string; port: number }[],
  options: { healthMs: number; socket: string },
): string {
  const lines = [
    "# Generated by bench/multi_upstream.ts: HAProxy in TCP mode, leastconn, checked servers.",
    "global",
    `    stats socket ${options.socket} mode 600 level admin`,
    "",
    "defaults",
    "    mode tcp",
    "    timeout connect 5s",
    "    timeout client 1m",
    "    timeout server 1m",
    "    retries 3",
    "    option redispatch",
    "",
    "frontend foo",
    `    bind ${HOST}:${listenPort}`,
    "    default_backend foo_upstreams",
    "",
    "backend foo_upstreams",
    "    balance leastconn",
    ...servers.map((s) =>
      `    server ${s.name} ${HOST}:${s.port} check inter ${options.healthMs}ms rise 2 fall 3`
    ),
  ];
  return lines.join("\n") + "\n";
}

async function startHaproxy(servers: Server[], config: Config, dir: string): Promise<Target> {
  const [port] = freePorts(1);
  const socket = `${dir}/haproxy_${port}.sock`;
  const path = `${dir}/haproxy_${port}.cfg`;
  const text = haproxyConfig(port, servers, { healthMs: config.healthMs, socket });
  await Deno.writeTextFile(path, text);
  const child = new Child(["-f", path], {
    name: "haproxy",
    command: "haproxy",
    disposeSignal: "SIGTERM",
    disposeGraceMs: 3000,
  });
  await waitForPort(port, child);
  return { name: "haproxy", child, port, socket, config: text };
}

function startTarget(
  name: TargetName,
  servers: Server[],
  config: Config,
  flags: string[],
  dir: string,
): Promise<Target> {
  if (name === "haproxy") return startHaproxy(servers, config, dir);
  return startFooProxy(servers, name === "foo-proxy --resume", config, flags);
}

/** Fresh servers that answer at once (`names`: which), a fresh target, one throughput run. */
async function cpuBoundRun(
  name: TargetName,
  names: readonly string[],
  config: Config,
  flags: string[],
  dir: string,
): Promise<ThroughputSample> {
  const servers = await startServers(config, 0, names);
  try {
    const target = await startTarget(name, servers, config, flags, dir);
    try {
      return await throughputRun(target, servers, config);
    } finally {
      await target.child.stop("SIGTERM");
    }
  } finally {
    await Promise.all(servers.map((s) => s.child[Symbol.asyncDispose]()));
  }
}

// ---------------------------------------------------------------------------------------------
// Readings

/** CPU time (user + system) used by `pid` so far, in seconds. */
async function cpuSeconds(pid: number): Promise<number> {
  let stat: string;
  try {
    stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  } catch {
    return NaN; // it exited: the sample is reported as missing (—), and the run goes on
  }
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime; USER_HZ = 100
}

/** Per-upstream open connections as the target sees them ("a=16 b=16 c=16"). */
async function upstreamConnections(target: Target): Promise<string> {
  return formatSpread(await upstreamSpread(target));
}

function formatSpread(spread: Map<string, number> | string): string {
  if (typeof spread === "string") return spread;
  return [...spread].map(([name, n]) => `${name}=${n}`).join(" ");
}

async function upstreamSpread(target: Target): Promise<Map<string, number> | string> {
  try {
    if (target.httpPort) {
      const res = await fetch(`http://${HOST}:${target.httpPort}/upstreams`);
      const list = await res.json() as { name: string; connections_active: number }[];
      return new Map(list.map((u) => [u.name, u.connections_active]));
    }
    if (target.socket) {
      const csv = await haproxyCommand(target.socket, "show stat");
      // pxname,svname,qcur,qmax,scur,…,status is column 17.
      return new Map(
        csv.split("\n").filter((l) => l.startsWith("foo_upstreams,"))
          .map((l) => l.split(","))
          .filter((f) => f[1] !== "BACKEND")
          .map((f) => [f[1], Number(f[4])]),
      );
    }
  } catch (error) {
    return `? (${(error as Error).message})`;
  }
  return "?";
}

async function haproxyCommand(socket: string, command: string): Promise<string> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  try {
    await conn.write(new TextEncoder().encode(command + "\n"));
    let text = "";
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    return text;
  } finally {
    conn.close();
  }
}

/** The load generator's JSON (the fields used here). */
interface BenchJson {
  requests: number;
  responses: number;
  responses_per_sec: number;
  connections_opened: number;
  errors: Record<string, number>;
  errors_total: number;
}

interface ThroughputSample {
  repliesPerSec: number;
  cpuCores: number;
  /** CPU of the busiest of the three servers (cores): 1 is a saturated server. */
  busiestServerCores: number;
  cpuUsPerReply: number;
  errors: number;
  spread: string;
}

async function throughputRun(
  target: Target,
  servers: Server[],
  config: Config,
): Promise<ThroughputSample> {
  const pid = target.child.pid;
  const bench = new Child([
    "run",
    "--allow-net",
    config.mainPath,
    "bench",
    "--connect",
    `${HOST}:${target.port}`,
    ...LOAD_FLAGS,
    "--duration",
    `${config.seconds}s`,
    "--warmup",
    `${config.warmup}s`,
    "--json",
  ], { name: "bench" });
  // Start the CPU reading once load flows, and read the spread in the middle of the run.
  await bench.stderr.waitFor(/^bench: /, "bench progress");
  const cpu0 = await cpuSeconds(pid);
  const server0 = await Promise.all(servers.map((s) => cpuSeconds(s.child.pid)));
  const t0 = performance.now();
  await delay(config.warmup * 500 + config.seconds * 500);
  const spread = await upstreamConnections(target);
  await bench.status;
  const cpu1 = await cpuSeconds(pid);
  const server1 = await Promise.all(servers.map((s) => cpuSeconds(s.child.pid)));
  const elapsed = (performance.now() - t0) / 1000;
  await Promise.all([bench.stdout.done, bench.stderr.done]);
  for (const c of [target.child, ...servers.map((s) => s.child)]) {
    if (c.exited) writeStderrLine(`multi_upstream: ${c.name} exited: ${c.stderr.tail(300)}`);
  }
  const json = parseBench(bench);
  const cpuCores = (cpu1 - cpu0) / elapsed;
  return {
    repliesPerSec: json.responses_per_sec,
    cpuCores,
    busiestServerCores: Math.max(...server1.map((c, i) => c - server0[i])) / elapsed,
    cpuUsPerReply: cpuCores / json.responses_per_sec * 1e6,
    errors: json.errors_total,
    spread,
  };
}

function parseBench(bench: Child): BenchJson {
  const line = bench.stdout.lines.at(-1) ?? "";
  try {
    return JSON.parse(line);
  } catch (error) {
    throw new Error(`bench printed no JSON: ${bench.stderr.tail()}`, { cause: error });
  }
}

interface ResilienceSample {
  /** The upstream killed, and the client connections it carried just before. */
  victim: string;
  victimConnections: number;
  /** Client connections that ended in an error (all error kinds but `wrong_reply`). */
  failedConnections: number;
  /** Replies lost or wrong: requests − verified responses (no warm-up, so exact). */
  lostOrWrong: number;
  wrongReplies: number;
  errors: Record<string, number>;
  repliesPerSec: number;
  /** Replies/s in the progress seconds after the kill, vs before it. */
  afterKillRatio: number;
  spreadBefore: string;
  spreadAfter: string;
  /** foo-proxy: failovers, replays, resume_failures and upstream states; HAProxy: server status. */
  counters: string;
  /** The target's stderr lines from the kill on (first few). */
  log: string[];
}

async function resilienceRun(
  target: Target,
  servers: Server[],
  config: Config,
): Promise<ResilienceSample> {
  const bench = new Child([
    "run",
    "--allow-net",
    config.mainPath,
    "bench",
    "--connect",
    `${HOST}:${target.port}`,
    ...LOAD_FLAGS,
    "--duration",
    `${config.resilienceSeconds}s`,
    "--json",
  ], { name: "bench" });
  await bench.stderr.waitFor(new RegExp(`^bench: ${config.killAt}s:`), "bench progress");
  const spread = await upstreamSpread(target);
  const spreadBefore = formatSpread(spread);
  let victim = DEFAULT_VICTIM;
  if (typeof spread !== "string") {
    for (const [name, n] of spread) if (n > spread.get(victim)!) victim = name;
  }
  const victimConnections = typeof spread === "string" ? NaN : spread.get(victim)!;
  const logFrom = target.child.stderr.lines.length;
  servers.find((s) => s.name === victim)!.child.kill("SIGKILL");
  await delay(Math.min(1500, (config.resilienceSeconds - config.killAt) * 500));
  const spreadAfter = await upstreamConnections(target);
  await bench.status;
  await Promise.all([bench.stdout.done, bench.stderr.done]);
  const json = parseBench(bench);
  // Progress lines: "bench: Ns: R replies/s, …"; compare the seconds after the kill with before.
  const rates = bench.stderr.lines.map((l) => /^bench: (\d+)s: (\d+) replies/.exec(l))
    .filter((m) => m !== null).map((m) => ({ t: Number(m![1]), r: Number(m![2]) }));
  const before = rates.filter((x) => x.t > 1 && x.t <= config.killAt).map((x) => x.r);
  const after = rates.filter((x) => x.t > config.killAt + 1).map((x) => x.r);
  const counters = await targetCounters(target);
  const wrong = json.errors.wrong_reply ?? 0;
  return {
    victim,
    victimConnections,
    failedConnections: json.errors_total - wrong,
    lostOrWrong: json.requests - json.responses,
    wrongReplies: wrong,
    errors: Object.fromEntries(Object.entries(json.errors).filter(([, n]) => n > 0)),
    repliesPerSec: json.responses_per_sec,
    afterKillRatio: median(after) / median(before),
    spreadBefore,
    spreadAfter,
    counters,
    log: summariseLog(target.child.stderr.lines.slice(logFrom)),
  };
}

/** Distinct log messages with their counts: timestamps, ports and numbers masked. */
function summariseLog(lines: string[]): string[] {
  const counts = new Map<string, number>();
  for (const line of lines) {
    const key = line.replace(/^\d{4}-\d\d-\d\d \S+ \S+ /, "")
      .replace(/:\d+/g, ":PORT")
      .replace(/\b\d+(\.\d+)?\b/g, "N");
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([k, n]) => `${n} × ${k}`);
}

function describeThroughput(t: ThroughputSample): string {
  return `${fmt(t.repliesPerSec)} replies/s, ${fmt(t.cpuCores, 2)} cores = ${
    fmt(t.cpuUsPerReply, 2)
  } µs CPU/reply, busiest server ${fmt(t.busiestServerCores, 2)} cores, errors ${t.errors}, ` +
    `connections ${t.spread}`;
}

function describeResilience(s: ResilienceSample): string {
  return `kill ${s.victim} (${s.victimConnections} connections): failed connections ` +
    `${s.failedConnections}, lost/wrong ${s.lostOrWrong} (wrong ${s.wrongReplies}), errors ` +
    `${JSON.stringify(s.errors)}, ${fmt(s.repliesPerSec)} replies/s, after/before kill ` +
    `${s.afterKillRatio.toFixed(2)}, connections ${s.spreadBefore} -> ${s.spreadAfter}; ` +
    s.counters;
}

async function targetCounters(target: Target): Promise<string> {
  try {
    if (target.httpPort) {
      const res = await fetch(`http://${HOST}:${target.httpPort}/stats`);
      const s = await res.json() as Record<string, unknown> & {
        upstreams: { name: string; state: string; stream_errors: number; ejections: number }[];
      };
      const keys = ["failovers", "replays", "resume_failures", "upstream_errors"];
      const picked = keys.filter((k) => k in s).map((k) => `${k}=${s[k]}`);
      const ups = s.upstreams.map((u) =>
        `${u.name}:${u.state}/stream_errors=${u.stream_errors}/ejections=${u.ejections}`
      );
      return [...picked, ...ups].join(" ");
    }
    if (target.socket) {
      const csv = await haproxyCommand(target.socket, "show stat");
      return csv.split("\n").filter((l) => l.startsWith("foo_upstreams,")).map((l) => l.split(","))
        .map((f) => `${f[1]}:${f[17]}/eresp=${f[14]}/wretr=${f[15]}/wredis=${f[16]}`)
        .join(" ");
    }
  } catch (error) {
    return `? (${(error as Error).message})`;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Report

function median(xs: number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map((_, i) => (i === 0 ? "---" : "---:"))), ...rows.map(line)]
    .join("\n");
}

interface TargetResults {
  slow: ThroughputSample[];
  fast: ThroughputSample[];
  /** The control: the same CPU-bound load through one upstream. */
  single: ThroughputSample[];
  resilience: ResilienceSample[];
}

// ---------------------------------------------------------------------------------------------

async function main(args: string[]): Promise<number> {
  let config: Config;
  try {
    config = parseConfig(args);
  } catch (error) {
    if (!(error instanceof RangeError) && !(error instanceof TypeError)) throw error;
    writeStderrLine(`multi_upstream: ${error.message.split("\n")[0]} (see --help)`);
    return 2;
  }
  const haproxyVersion = (await commandOutput("haproxy", ["-v"]))?.split("\n")[0];
  if (!haproxyVersion) {
    writeStderrLine("multi_upstream: haproxy is not installed (scripts/setup_haproxy.sh)");
    return 1;
  }
  const flags = await startFlags();
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
  const cpuModel = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown";
  const nproc = (await commandOutput("nproc", [])) ?? "?";
  const kernel = (await commandOutput("uname", ["-r"])) ?? "?";
  const commit = (await commandOutput("git", ["-C", REPO_ROOT, "rev-parse", "--short", "HEAD"])) ??
    "unknown";
  const dirty = config.worktree
    ? (await commandOutput("git", ["-C", REPO_ROOT, "status", "--porcelain", "src"]))
      ?.split("\n").map((l) => /^\s*\S+\s+(.+)$/.exec(l)?.[1]).filter((f) => f !== undefined) ??
      []
    : [];
  const started = new Date();
  const dir = await Deno.makeTempDir({ prefix: "foo_multi_" });
  if (!config.worktree) {
    // A clean copy of HEAD: others may edit src/ while this runs, and every target restarts.
    const snapshot = `${dir}/head`;
    await Deno.mkdir(snapshot);
    const archive = await new Deno.Command("sh", {
      args: ["-c", `git -C "$1" archive "$3" | tar -x -C "$2"`, "sh", REPO_ROOT, snapshot, commit],
    }).output();
    if (!archive.success) throw new Error(`git archive ${commit} failed`);
    config.mainPath = `${snapshot}/src/main.ts`;
  }
  const results = new Map<TargetName, TargetResults>(
    TARGETS.map((t) => [t, { slow: [], fast: [], single: [], resilience: [] }]),
  );
  let haproxyCfg = "";
  try {
    for (let round = 0; round < config.rounds; round++) {
      const order = TARGETS.map((_, i) => TARGETS[(i + round) % TARGETS.length]);
      for (const name of order) {
        const r = results.get(name)!;
        // Servers answering after --delay-ms: throughput, then the kill.
        {
          const servers = await startServers(config, config.delayMs);
          try {
            const target = await startTarget(name, servers, config, flags, dir);
            if (target.config) haproxyCfg = target.config;
            try {
              const t = await throughputRun(target, servers, config);
              r.slow.push(t);
              writeStderrLine(
                `round ${round + 1} ${name} ${config.delayMs} ms servers: ${describeThroughput(t)}`,
              );
              const s = await resilienceRun(target, servers, config);
              r.resilience.push(s);
              writeStderrLine(`round ${round + 1} ${name}: ${describeResilience(s)}`);
              for (const l of s.log) writeStderrLine(`    ${name}: ${l}`);
            } finally {
              await target.child.stop("SIGTERM");
            }
          } finally {
            await Promise.all(servers.map((s) => s.child[Symbol.asyncDispose]()));
          }
        }
        // Servers answering at once: CPU-bound throughput, three upstreams then one.
        if (config.cpuBound) {
          const t = await cpuBoundRun(name, UPSTREAM_NAMES, config, flags, dir);
          r.fast.push(t);
          writeStderrLine(`round ${round + 1} ${name} 0 ms servers: ${describeThroughput(t)}`);
        }
        if (config.single) {
          const t = await cpuBoundRun(name, ["a"], config, flags, dir);
          r.single.push(t);
          writeStderrLine(`round ${round + 1} ${name} one 0 ms server: ${describeThroughput(t)}`);
        }
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const elapsedS = (Date.now() - started.getTime()) / 1000;
  const report = renderReport({
    config,
    results,
    haproxyCfg,
    facts: {
      date: started.toISOString(),
      commit,
      dirty,
      nproc,
      cpuModel,
      kernel,
      deno: `${Deno.version.deno} (V8 ${Deno.version.v8})`,
      haproxy: haproxyVersion,
      elapsedS,
      command: `deno run -A bench/multi_upstream.ts ${args.join(" ")}`.trim(),
      flags,
    },
  });
  writeStdoutLine(report);
  const path = config.results ??
    await Deno.makeTempFile({ prefix: "multi_upstream_", suffix: ".md" });
  await Deno.writeTextFile(path, report);
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", "--config", `${REPO_ROOT}deno.json`, path],
    stderr: "null",
  })
    .output();
  writeStderrLine(`multi_upstream: report written to ${path}`);
  return 0;
}

interface Facts {
  date: string;
  commit: string;
  dirty: string[];
  nproc: string;
  cpuModel: string;
  kernel: string;
  deno: string;
  haproxy: string;
  elapsedS: number;
  command: string;
  flags: string[];
}

function renderReport(
  input: {
    config: Config;
    results: Map<TargetName, TargetResults>;
    haproxyCfg: string;
    facts: Facts;
  },
): string {
  const { config, results, facts } = input;
  const res = (t: TargetName) => results.get(t)!;
  type Metric = { label: string; pick: (r: TargetResults) => number[]; digits: number };
  const throughputMetrics = (
    id: string,
    what: string,
    pick: (r: TargetResults) => ThroughputSample[],
  ): Metric[] => [
    {
      label: `${id} ${what}: replies/s`,
      pick: (r) => pick(r).map((s) => s.repliesPerSec),
      digits: 0,
    },
    {
      label: `${id} ${what}: proxy CPU (cores)`,
      pick: (r) => pick(r).map((s) => s.cpuCores),
      digits: 2,
    },
    {
      label: `${id} ${what}: proxy CPU per reply (µs)`,
      pick: (r) => pick(r).map((s) => s.cpuUsPerReply),
      digits: 2,
    },
    {
      label: `${id} ${what}: busiest server's CPU (cores)`,
      pick: (r) => pick(r).map((s) => s.busiestServerCores),
      digits: 2,
    },
  ];
  const metrics: Metric[] = [
    ...throughputMetrics("1a", `${config.delayMs} ms servers`, (r) => r.slow),
    ...(config.cpuBound ? throughputMetrics("1b", "0 ms servers", (r) => r.fast) : []),
    ...(config.single ? throughputMetrics("1c", "one 0 ms server", (r) => r.single) : []),
    {
      label: "2 kill: replies/s over the run",
      pick: (r) => r.resilience.map((s) => s.repliesPerSec),
      digits: 0,
    },
    {
      label: "2 kill: replies/s after ÷ before the kill",
      pick: (r) => r.resilience.map((s) => s.afterKillRatio),
      digits: 2,
    },
  ];
  const rows = metrics.map((m) => {
    const [a, b, h] = TARGETS.map((t) => median(m.pick(res(t))));
    return [
      m.label,
      fmt(a, m.digits),
      fmt(b, m.digits),
      fmt(h, m.digits),
      ratio(a, h),
      ratio(b, h),
    ];
  });
  const perRound = (t: TargetName, pick: (s: ResilienceSample) => number) => {
    const xs = res(t).resilience.map(pick);
    return `${xs.join(" / ")} (total ${xs.reduce((x, y) => x + y, 0)})`;
  };
  const failRows: [string, (s: ResilienceSample) => number][] = [
    ["client connections on the killed upstream", (s) => s.victimConnections],
    ["**failed client connections**", (s) => s.failedConnections],
    ["replies lost or wrong (requests − verified replies)", (s) => s.lostOrWrong],
    ["of which wrong replies (`wrong_reply`)", (s) => s.wrongReplies],
  ];
  const failTable = table(
    ["per round (one of three upstreams SIGKILLed)", ...TARGETS],
    failRows.map(([label, pick]) => [label, ...TARGETS.map((t) => perRound(t, pick))]),
  );
  const spreads = TARGETS.flatMap((t) => [
    `- ${t}: 1a ${res(t).slow.map((s) => s.spread).join(" / ")}` +
    (config.cpuBound ? `; 1b ${res(t).fast.map((s) => s.spread).join(" / ")}` : ""),
  ]);
  const detail = TARGETS.flatMap((t) =>
    res(t).resilience.map((s, i) =>
      `- ${t}, round ${i + 1}: killed ${s.victim}; errors ${JSON.stringify(s.errors)}; ` +
      `connections ${s.spreadBefore} before the kill, ${s.spreadAfter} 0.5–1.5 s after; ` +
      `after the run: ${s.counters}`
    )
  );
  const logs = TARGETS.flatMap((t) => {
    const merged = new Map<string, number>();
    for (const s of res(t).resilience) {
      for (const line of s.log) {
        const m = /^(\d+) × (.*)$/.exec(line)!;
        merged.set(m[2], (merged.get(m[2]) ?? 0) + Number(m[1]));
      }
    }
    if (merged.size === 0) return [];
    const lines = [...merged].sort((a, b) => b[1] - a[1]).slice(0, 10)
      .map(([k, n]) => `${n} × ${k}`);
    return [`${t}, all rounds:`, "", "```", ...lines, "```", ""];
  });
  const dirty = !config.worktree
    ? "a clean snapshot of it, \`git archive HEAD\`; the working tree had other engineers' " +
      "uncommitted edits"
    : facts.dirty.length === 0
    ? "clean"
    : `working tree with uncommitted changes in ${facts.dirty.join(", ")}`;
  return `# Three upstreams: foo-proxy and HAProxy side by side

Generated by \`bench/multi_upstream.ts\` (issue 12); do not edit by hand, re-run
\`deno run -A bench/multi_upstream.ts --rounds ${config.rounds} --write-results\`.

- Date: ${facts.date}
- Command: \`${facts.command}\` (${config.rounds} interleaved rounds, target order rotated every
  round; ${fmt(facts.elapsedS)} s in all)
- Machine: ${facts.nproc} CPUs (${facts.cpuModel}), Linux ${facts.kernel}. It was shared with
  other engineers' builds and benchmarks while this ran: compare ratios within this run only.
- Deno ${facts.deno}; ${facts.haproxy}
- Code measured: commit ${facts.commit} (${dirty})

Setup: three \`foo-proxy server --reply hash --delay-ms ${config.delayMs}\` processes (a, b, c)
behind the target, and the load \`foo-proxy bench ${LOAD_FLAGS.join(" ")} --json\`, which checks
every reply's type, Seq and data. Each target gets fresh servers and a fresh proxy process per
round.

- **foo-proxy --resume**: \`deno run ${facts.flags.join(" ")} src/main.ts proxy
  --forward a=…,b=…,c=… --balance leastconn --health-interval ${config.healthMs}ms --resume
  --log-level info\`
- **foo-proxy**: the same without \`--resume\`
- **HAProxy**: the configuration below: TCP mode, \`balance leastconn\`,
  \`check inter ${config.healthMs}ms\` on each server, \`option redispatch\`.

Scenarios:

- **1a**: ${config.warmup} s warm-up + ${config.seconds} s measured against the ${config.delayMs} ms
  servers. 48 × 8 in flight with ${config.delayMs} ms per reply caps the rate near ${
    fmt(48 * 8 / (config.delayMs || 1) * 1000)
  }/s, so this is latency-bound: the replies/s ratio says little, CPU per reply is the comparison.
- **1b**: the same against servers that answer at once (\`--delay-ms 0\`): CPU-bound, every process
  shares the ${facts.nproc} CPUs. This is the figure to hold against bench/RESULTS.md's single
  upstream (foo-proxy ≈ 0.95× HAProxy).
- **1c** (control): the 1b run through a single upstream (one 0 ms server; foo-proxy then
  runs its one-upstream path, HAProxy a one-server backend), in the same rounds, so the
  single-upstream ratio is measured under the same conditions as the three-upstream one.
- **2**: ${config.resilienceSeconds} s, no warm-up, against the ${config.delayMs} ms servers; after ${config.killAt} s the
  upstream holding the most client connections (per the proxy's own count; b on a tie) gets
  SIGKILL. Failed client connections are the load generator's errors except \`wrong_reply\`: a
  failed connection counts once, as \`closed\`, \`read\`, \`write\`, \`connect\`,
  \`bad_reply\`, \`wrong_seq\` or \`timeout\`, and the generator then reconnects. With no
  warm-up, \`requests − responses\` is exactly the replies lost or wrong. "after ÷ before"
  compares the generator's per-second rates from ${
    config.killAt + 2
  } s on with those before the kill.

CPU: utime + stime (/proc/PID/stat) while the load ran, divided by the elapsed time; per reply
divides that by the measured replies/s.

## Results (medians)

${table(["metric", ...TARGETS, "foo-proxy --resume ÷ HAProxy", "foo-proxy ÷ HAProxy"], rows)}

Client connections per upstream in the middle of each throughput run (round by round):

${spreads.join("\n")}

## Killing one upstream mid-run

${failTable}

${detail.join("\n")}

Log lines from the kill to the end of the run (timestamps, ports and numbers masked):

${logs.join("\n")}
## HAProxy configuration

\`\`\`
${input.haproxyCfg.trim()}
\`\`\`
`;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
