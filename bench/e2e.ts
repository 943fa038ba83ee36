/**
 * The end-to-end benchmark (`deno task bench:e2e`): in one run and against one upstream (our Foo
 * server in its own process) it measures, side by side, direct (no proxy), foo-proxy (its own
 * process, started like `deno task start`) and HAProxy in TCP mode (when `haproxy` is
 * installed; `scripts/setup_haproxy.sh` installs it). The load comes from `foo-proxy bench
 * --json` in yet another process. Rounds are interleaved (direct, foo-proxy, HAProxy, direct, …)
 * and the table gives medians and ratios; it is printed and written, with the machine and the
 * date, to a report file (`--results FILE`, else a new temporary file): `bench/RESULTS.md`, which
 * is tracked, changes only with `--write-results`.
 *
 * Scenarios: 1 throughput (64 connections x 16 pipelined, 32-byte payloads), 2 latency (16
 * connections, 1 in flight, 5 000 REQ/s open loop), 3 churn (10 REQs per connection, then a new
 * connection), 4 idle memory (RSS growth per proxied idle connection), 5 lock-step (64
 * connections, 1 in flight, closed loop: what one round trip through the proxy costs).
 *
 * `--viewers N` and `--access-log MODE` add a target to the load scenarios (1-3, 5): a second
 * foo-proxy, started the same way, watched by N readers of the dashboard's `GET /events` stream
 * (in this process) and one `foo-proxy top` (its own process), and writing its access log to a
 * file; its column beside plain foo-proxy's says what watching costs.
 *
 * foo-proxy runs data-plane workers (`--workers`, default auto: one per CPU); the report says how
 * many the plain target ran. `--workers 1,2` measures one foo-proxy target per count instead, in
 * the same interleaved rounds, with ratios to HAProxy and to the first count. `--taskset` pins
 * each proxy to as many cores as it has workers (`taskset -c 0` for one) and the load generator
 * and the upstream to the cores left, where any are: the scaling figure.
 *
 * @module
 */
import { dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { Child } from "../scripts/child.ts";
import {
  CHURN_LOAD,
  commandOutput,
  delay,
  fmt,
  median,
  ratio,
  rotate,
  settle,
  SseViewer,
  THROUGHPUT_LOAD,
} from "./_common.ts";

const REPO_ROOT = new URL("..", import.meta.url).pathname;
const MAIN = new URL("../src/main.ts", import.meta.url).pathname;
const RESULTS = new URL("./RESULTS.md", import.meta.url).pathname;
const DENO_JSON = new URL("../deno.json", import.meta.url).pathname;
const HOST = "127.0.0.1";

/** A `--workers` value: a count of data-plane workers, or `auto` (one per CPU). */
export type WorkerCount = number | "auto";

/** One column of the table: a process the load runs against (or none, for direct). */
interface Target {
  /** Key of its samples, and its short name in ratio headings: `direct`, `foo-proxy`, `w2`. */
  key: string;
  kind: "direct" | "foo" | "watched" | "haproxy";
  /** foo-proxy's `--workers`; unset: the flag is not passed (auto). */
  workers?: WorkerCount;
  /** With `--taskset`: the proxy's cores and the cores of the load and the upstream. */
  pin?: Pinning;
}

/** One measured run of `foo-proxy bench --json` (the fields e2e uses). */
interface BenchJson {
  responses_per_sec: number;
  connections_per_sec: number;
  latency_p50_ms: number;
  latency_p99_ms: number;
  latency_p999_ms: number;
  errors_total: number;
  errors: Record<string, number>;
}

interface Sample {
  bench: BenchJson;
  /** CPU used by the proxy process during the run, in cores (direct: the server's). */
  proxyCpu: number;
  /** CPU used by the upstream server during the run, in cores. */
  serverCpu: number;
}

interface LoadScenario {
  id: "throughput" | "latency" | "churn" | "lockstep";
  title: string;
  args: readonly string[];
}

const LOAD_SCENARIOS: LoadScenario[] = [
  {
    id: "throughput",
    title: "1. throughput: 64 connections x 16 pipelined, 32-byte payloads",
    args: THROUGHPUT_LOAD,
  },
  {
    id: "latency",
    title: "2. latency: 16 connections, 1 in flight, 5 000 REQ/s total (open loop)",
    args: ["--connections", "16", "--pipeline", "1", "--payload", "32", "--rate", "5000"],
  },
  {
    id: "churn",
    title: "3. churn: 16 connections at once, 10 REQs each (1 in flight), then reconnect",
    args: CHURN_LOAD,
  },
  {
    id: "lockstep",
    title: "5. lock-step: 64 connections, 1 REQ in flight each (closed loop)",
    args: ["--connections", "64", "--pipeline", "1", "--payload", "32"],
  },
];

/** Scenario numbers as `--only` names them (4, idle memory, is not a load run). */
const SCENARIO_NUMBERS: Record<LoadScenario["id"], number> = {
  throughput: 1,
  latency: 2,
  churn: 3,
  lockstep: 5,
};

function usage(): string {
  return `Usage: deno task bench:e2e [flags]

  --rounds N         interleaved rounds per scenario        (default 3)
  --seconds S        measured seconds per load run          (default 5)
  --warmup S         unmeasured seconds before each run     (default 1)
  --settle S         unmeasured seconds of scenario 1's load on each proxy
                     once it has started (V8's heap reaches its steady state)
                                                              (default 10)
  --idle N           idle connections for scenario 4        (default 5000)
  --only LIST        scenarios to run, e.g. 1,2 or 4        (default 1,2,3,4,5)
  --no-haproxy       skip HAProxy even when installed
  --workers LIST     one foo-proxy target per --workers value, e.g. 1,2 or 1,2,auto;
                     ratios to HAProxy and to the first     (default: one target,
                                                              --workers not passed: auto)
  --taskset          pin each proxy with taskset -c to as many cores as it has workers
                     (HAProxy: as many as the most workers), and the load generator and
                     the upstream to the cores left (all cores when none are left)
  --viewers N        add a foo-proxy watched by N dashboard streams and a \`top\`
                     (scenarios 1-3, 5)                       (default 0: none)
  --access-log MODE  that watched foo-proxy's access log: off, text or json, to a file
                                                              (default off)
  --results FILE     write the report to FILE               (default: a new temporary file)
  --write-results    also update the tracked bench/RESULTS.md (otherwise it is left alone)
  --no-write         print the table only, write no report
  --deno-flags=F     extra deno flags for foo-proxy after those of \`deno task start\`,
                     e.g. --deno-flags=--v8-flags=--max-semi-space-size=8 (in RESULTS.md)`;
}

interface E2eConfig {
  rounds: number;
  seconds: number;
  warmup: number;
  /** Unmeasured seconds of the throughput load on each proxy after it starts. */
  settle: number;
  idle: number;
  only: Set<number>;
  haproxy: boolean;
  /** Dashboard streams (`GET /events`) held open on the watched foo-proxy; 0: no such target. */
  viewers: number;
  /** The watched foo-proxy's `--access-log`. */
  accessLog: "off" | "text" | "json";
  /** Whether a report is written at all (`--no-write`: no). */
  write: boolean;
  /** Where the report goes; unset: a new temporary file. */
  results: string | undefined;
  /** Whether bench/RESULTS.md is updated too. */
  writeResults: boolean;
  denoFlags: string[];
  /** `--workers`: one foo-proxy target per value; unset: one target without the flag. */
  workers: WorkerCount[] | undefined;
  /** `--taskset`: pin the proxies, the load and the upstream to cores. */
  taskset: boolean;
}

/**
 * Parses `--workers 1,2,auto`: whole numbers from 1, or `auto`, each at most once.
 *
 * @throws {RangeError} for anything else.
 */
export function parseWorkersList(text: string): WorkerCount[] {
  const list = text.split(",").map((word): WorkerCount => {
    const w = word.trim();
    if (w === "auto") return w;
    if (!/^[1-9]\d*$/.test(w)) {
      throw new RangeError(`Invalid --workers "${text}": expected counts from 1 or auto, e.g. 1,2`);
    }
    return Number(w);
  });
  if (new Set(list).size !== list.length) {
    throw new RangeError(`Invalid --workers "${text}": a value is repeated`);
  }
  return list;
}

/** Where `--taskset` puts a proxy and what runs beside it, as `taskset -c` core lists. */
export interface Pinning {
  /** The proxy's cores, e.g. `0` or `0-1`. */
  proxy: string;
  /** The load generator's and the upstream's cores; unset: every core (none is left). */
  rest: string | undefined;
}

/**
 * The pinning of a proxy with `workers` threads on a machine with `cpus` cores: the first
 * `workers` cores (all of them for `auto` or more workers than cores), the rest for the load.
 */
export function pinning(workers: WorkerCount, cpus: number): Pinning {
  const n = workers === "auto" ? cpus : Math.min(workers, cpus);
  const range = (from: number, to: number) => from === to ? `${from}` : `${from}-${to}`;
  return { proxy: range(0, n - 1), rest: n < cpus ? range(n, cpus - 1) : undefined };
}

function parseConfig(args: string[]): E2eConfig {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      rounds: { type: "string", default: "3" },
      seconds: { type: "string", default: "5" },
      warmup: { type: "string", default: "1" },
      settle: { type: "string", default: "10" },
      idle: { type: "string", default: "5000" },
      only: { type: "string", default: "1,2,3,4,5" },
      "no-haproxy": { type: "boolean" },
      workers: { type: "string" },
      taskset: { type: "boolean" },
      viewers: { type: "string", default: "0" },
      "access-log": { type: "string", default: "off" },
      "no-write": { type: "boolean" },
      results: { type: "string" },
      "write-results": { type: "boolean" },
      "deno-flags": { type: "string", default: "" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    writeStdoutLine(usage());
    Deno.exit(0);
  }
  if (values["no-write"] && (values.results !== undefined || values["write-results"])) {
    throw new RangeError("--no-write cannot be combined with --results or --write-results");
  }
  if (values.results === "") throw new RangeError("Invalid --results: expected a file path");
  const num = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isFinite(n) || n < min) throw new RangeError(`Invalid --${name} "${text}"`);
    return n;
  };
  const accessLog = values["access-log"];
  if (accessLog !== "off" && accessLog !== "text" && accessLog !== "json") {
    throw new RangeError(`Invalid --access-log "${accessLog}": expected off, text or json`);
  }
  return {
    rounds: Math.round(num("rounds", values.rounds, 1)),
    seconds: num("seconds", values.seconds, 0.1),
    warmup: num("warmup", values.warmup, 0),
    settle: num("settle", values.settle, 0),
    idle: Math.round(num("idle", values.idle, 1)),
    only: new Set(values.only.split(",").map((s) => Math.round(num("only", s, 1)))),
    haproxy: !values["no-haproxy"],
    viewers: Math.round(num("viewers", values.viewers, 0)),
    accessLog,
    write: !values["no-write"],
    results: values.results === undefined ? undefined : resolve(values.results),
    writeResults: values["write-results"] === true,
    denoFlags: values["deno-flags"].split(/\s+/).filter((f) => f !== ""),
    workers: values.workers === undefined ? undefined : parseWorkersList(values.workers),
    taskset: values.taskset === true,
  };
}

// ---------------------------------------------------------------------------------------------
// Processes

/**
 * Starts `command` through sh, for a raised fd limit (scenario 4 holds thousands of sockets), on
 * the cores `cpus` (a `taskset -c` list; unset: anywhere). sh and taskset exec the command, so
 * the child's pid is the command's.
 */
function spawn(
  name: string,
  command: string,
  args: string[],
  fdLimit: number,
  cpus?: string,
): Child {
  const script = `ulimit -n ${fdLimit} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`;
  const argv = cpus === undefined ? [command, ...args] : ["taskset", "-c", cpus, command, ...args];
  return new Child(["-c", script, "sh", ...argv], {
    name,
    command: "sh",
    cwd: REPO_ROOT,
    env: {},
    disposeSignal: "SIGTERM",
    disposeGraceMs: 5000,
  });
}

function freePort(): number {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

/** Polls until `port` accepts a connection (a child process finished starting). */
async function waitForPort(port: number, child: Child, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const conn = await Deno.connect({ hostname: HOST, port });
      conn.close();
      return;
    } catch {
      if (child.exited || Date.now() > deadline) {
        throw new Error(`${child.name} is not listening on ${port}: ${child.stderr.tail()}`);
      }
      await delay(50);
    }
  }
}

/** The permission flags of `deno task start`, so foo-proxy runs exactly as users start it. */
async function startPermissions(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}deno.json`));
  const start = String(config.tasks?.start ?? "");
  const words = start.split(/\s+/);
  const flags = words.slice(words.indexOf("run") + 1, words.indexOf("src/main.ts"));
  return flags.filter((w) => w.startsWith("--"));
}

async function startServer(fdLimit: number): Promise<{ child: Child; port: number }> {
  const child = spawn(
    "foo server",
    Deno.execPath(),
    [
      "run",
      "--allow-net",
      "--allow-env=FOO_PROXY_*",
      MAIN,
      "server",
      "--listen",
      `${HOST}:0`,
      "--log-level",
      "warning",
    ],
    fdLimit,
  );
  const m = await child.stdout.waitFor(/listening on \S+:(\d+)/, "listening on").catch((e) => {
    throw new Error(
      `${child.name} did not print "listening on" (${e.message}): ${child.stderr.tail()}`,
    );
  });
  return { child, port: Number(m[1]) };
}

/** A foo-proxy process; `httpPort` serves its stats app (nobody reads it unless watched). */
interface FooProxy {
  child: Child;
  port: number;
  httpPort: number;
  /** Data-plane workers it runs (the length of `workers` in its `/stats`). */
  workers: number;
}

/** How to start one foo-proxy (beyond the upstream, permissions and fd limit every one shares). */
interface FooProxyOptions {
  /** Its name in errors; @default "foo-proxy" */
  name?: string;
  /** Permissions beyond `deno task start`'s (the watched one's access-log file). */
  permissions?: string[];
  /** Flags beyond the common ones (the watched one's access log). */
  flags?: string[];
  /** `--workers`; unset: not passed (auto). */
  workers?: WorkerCount;
  /** Cores (`taskset -c`); unset: not pinned. */
  cpus?: string;
}

/**
 * Starts foo-proxy with the permissions of `deno task start`; resolves once its port and its
 * stats app answer (the stats app starts after every worker listens).
 */
async function startFooProxy(
  upstreamPort: number,
  permissions: string[],
  fdLimit: number,
  extra: FooProxyOptions = {},
): Promise<FooProxy> {
  const port = freePort();
  const httpPort = freePort();
  const child = spawn(
    extra.name ?? "foo-proxy",
    Deno.execPath(),
    [
      "run",
      ...permissions,
      ...(extra.permissions ?? []),
      MAIN,
      "proxy",
      "--listen",
      `${HOST}:${port}`,
      "--forward",
      `${HOST}:${upstreamPort}`,
      "--http",
      `${HOST}:${httpPort}`,
      "--log-level",
      "warning",
      "--max-connections",
      "100000",
      // Health checks stay on, as by default, but on a free port: several proxies run at once.
      "--health",
      `${HOST}:${freePort()}`,
      ...(extra.workers === undefined ? [] : ["--workers", String(extra.workers)]),
      ...(extra.flags ?? []),
    ],
    fdLimit,
    extra.cpus,
  );
  await waitForPort(port, child);
  await waitForPort(httpPort, child);
  const stats = await (await fetch(`http://${HOST}:${httpPort}/stats`)).json();
  return {
    child,
    port,
    httpPort,
    workers: Array.isArray(stats.workers) ? stats.workers.length : 0,
  };
}

/** What watches the watched foo-proxy: dashboard streams and a `foo-proxy top`. */
class Watchers implements AsyncDisposable {
  readonly streams: SseViewer[];
  readonly top: Child;

  private constructor(streams: SseViewer[], top: Child) {
    this.streams = streams;
    this.top = top;
  }

  /** Attaches `count` streams and a `top` to `httpPort`; resolves once each has shown numbers. */
  static async attach(httpPort: number, count: number): Promise<Watchers> {
    const streams = Array.from(
      { length: count },
      () => new SseViewer(`http://${HOST}:${httpPort}/events`),
    );
    const top = new Child(["run", "-A", MAIN, "top", "--stats", `${HOST}:${httpPort}`], {
      name: "foo-proxy top",
      disposeSignal: "SIGTERM",
      disposeGraceMs: 5000,
    });
    const watchers = new Watchers(streams, top);
    try {
      await Promise.all(streams.map((s) => s.first()));
      // "Requests/s" is drawn only once top has numbers from /stats.
      await top.stdout.waitFor(/Requests\/s/, "foo-proxy top's first frame");
    } catch (error) {
      await watchers[Symbol.asyncDispose]();
      throw error;
    }
    return watchers;
  }

  /** Events read so far, summed over the streams. */
  get events(): number {
    return this.streams.reduce((n, s) => n + s.events, 0);
  }

  /** Frames `top` has drawn with numbers so far. */
  get frames(): number {
    return this.top.stdout.lines.filter((l) => l.includes("Requests/s")).length;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.streams.map((s) => s.close()));
    await this.top[Symbol.asyncDispose]();
  }
}

/**
 * HAProxy's configuration: TCP mode, one frontend, one backend server, and nothing else beyond
 * the timeouts HAProxy warns about when they are missing. Everything else (threads, maxconn,
 * buffer sizes) is left at its defaults.
 */
export function haproxyConfig(listenPort: number, upstreamPort: number): string {
  return `# Generated by bench/e2e.ts: HAProxy in plain TCP mode with its default settings.
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend foo
    bind ${HOST}:${listenPort}
    default_backend foo_upstream

backend foo_upstream
    server upstream ${HOST}:${upstreamPort}
`;
}

/** Starts HAProxy on `cpus` (unset: anywhere); it runs one thread per core it may use. */
async function startHaproxy(
  upstreamPort: number,
  dir: string,
  fdLimit: number,
  cpus?: string,
): Promise<{ child: Child; port: number }> {
  const port = freePort();
  const path = `${dir}/haproxy.cfg`;
  await Deno.writeTextFile(path, haproxyConfig(port, upstreamPort));
  const child = spawn("haproxy", "haproxy", ["-f", path], fdLimit, cpus);
  await waitForPort(port, child);
  return { child, port };
}

// ---------------------------------------------------------------------------------------------
// /proc readings

// Deno asks for --allow-all to read another process's /proc entries, so `cat` reads them.
async function readProc(path: string): Promise<string> {
  const out = await new Deno.Command("cat", { args: [path], stdout: "piped" }).output();
  if (!out.success) throw new Error(`Cannot read ${path}`);
  return new TextDecoder().decode(out.stdout);
}

/** Resident set size of `pid` in KiB (VmRSS in /proc/<pid>/status). */
async function rssKib(pid: number): Promise<number> {
  const status = await readProc(`/proc/${pid}/status`);
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (!m) throw new Error(`No VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/**
 * CPU time (user + system) used by `pid` so far, in seconds: all its threads (the supervisor and
 * every data-plane worker), which is what /proc/<pid>/stat counts, unlike /proc/<pid>/task/*.
 */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readProc(`/proc/${pid}/stat`);
  // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
}

// ---------------------------------------------------------------------------------------------
// Runs

/** Moves every thread of `pid` to the cores `cpus` (unset: all of them). */
async function pinProcess(pid: number, cpus: string | undefined): Promise<void> {
  const list = cpus ?? `0-${navigator.hardwareConcurrency - 1}`;
  const out = await new Deno.Command("taskset", {
    args: ["-a", "-p", "-c", list, String(pid)],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`taskset -a -p -c ${list} ${pid}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/**
 * One load run of `scenario` against `port`. With `pin` (`--taskset`), the load generator starts
 * on the cores the proxy leaves and the upstream is moved there first.
 */
async function runBench(
  port: number,
  scenario: LoadScenario,
  config: E2eConfig,
  proxyPid: number | undefined,
  serverPid: number,
  pin?: Pinning,
): Promise<Sample> {
  if (config.taskset) await pinProcess(serverPid, pin?.rest);
  const load = [
    "run",
    "--allow-net",
    MAIN,
    "bench",
    "--connect",
    `${HOST}:${port}`,
    "--json",
    "--quiet",
    "--duration",
    `${config.seconds}s`,
    "--warmup",
    `${config.warmup}s`,
    ...scenario.args,
  ];
  const [command, args] = config.taskset && pin?.rest !== undefined
    ? ["taskset", ["-c", pin.rest, Deno.execPath(), ...load]]
    : [Deno.execPath(), load];
  for (let attempt = 1;; attempt++) {
    const cpu0 = {
      proxy: proxyPid ? await cpuSeconds(proxyPid) : 0,
      server: await cpuSeconds(serverPid),
    };
    const out = await new Deno.Command(command, {
      args,
      cwd: REPO_ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    // CPU time over the bench process's life, spread over the time load was applied (warm-up
    // and measurement; the proxy is idle while the bench starts), so cores ≈ busy cores.
    const loadSec = config.warmup + config.seconds;
    const proxyCpu = proxyPid ? (await cpuSeconds(proxyPid) - cpu0.proxy) / loadSec : 0;
    const serverCpu = (await cpuSeconds(serverPid) - cpu0.server) / loadSec;
    const text = new TextDecoder().decode(out.stdout).trim();
    const line = text.split("\n").at(-1) ?? "";
    try {
      return { bench: JSON.parse(line), proxyCpu, serverCpu };
    } catch (error) {
      const why = `foo-proxy bench failed (exit ${out.code}): ${
        new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" / ")
      }`;
      if (attempt >= 2) throw new Error(why, { cause: error });
      writeStderrLine(`e2e: ${why}; running it again`);
    }
  }
}

/** Opens `count` connections through `port`, one REQ/ACK on each, and leaves them idle. */
async function openIdle(port: number, count: number): Promise<Deno.TcpConn[]> {
  const conns: Deno.TcpConn[] = [];
  const request = new TextEncoder().encode("REQ 1\n");
  const batch = 200;
  for (let i = 0; i < count; i += batch) {
    const opened = await Promise.all(
      Array.from({ length: Math.min(batch, count - i) }, async () => {
        const conn = await Deno.connect({ hostname: HOST, port });
        conns.push(conn);
        await conn.write(request);
        const buf = new Uint8Array(64);
        let got = 0;
        while (!buf.subarray(0, got).includes(10)) {
          const n = await conn.read(buf.subarray(got));
          if (n === null) throw new Error("Connection closed before its ACK");
          got += n;
        }
        return conn;
      }),
    );
    if (opened.length === 0) break;
  }
  return conns;
}

/** Reads RSS until two readings 250 ms apart agree within 1 % (at most 3 s). */
async function settledRss(pid: number): Promise<number> {
  let last = await rssKib(pid);
  for (let i = 0; i < 12; i++) {
    await delay(250);
    const now = await rssKib(pid);
    if (Math.abs(now - last) <= last * 0.01) return now;
    last = now;
  }
  return last;
}

interface IdleSample {
  /** (RSS holding all − RSS before) / count: the figure the target is about. */
  kibPerConnection: number;
  /** (RSS holding all − RSS holding half) / (count/2): the slope, without one-off growth. */
  marginalKib: number;
  beforeKib: number;
  halfKib: number;
  afterKib: number;
}

async function measureIdle(
  proxy: { child: Child; port: number },
  count: number,
): Promise<IdleSample> {
  // A little traffic first so lazily initialised code paths are not counted as per-connection.
  for (const c of await openIdle(proxy.port, 50)) c.close();
  const beforeKib = await settledRss(proxy.child.pid);
  const half = Math.floor(count / 2);
  const conns = await openIdle(proxy.port, half);
  try {
    const halfKib = await settledRss(proxy.child.pid);
    conns.push(...await openIdle(proxy.port, count - half));
    const afterKib = await settledRss(proxy.child.pid);
    return {
      kibPerConnection: (afterKib - beforeKib) / count,
      marginalKib: (afterKib - halfKib) / (count - half),
      beforeKib,
      halfKib,
      afterKib,
    };
  } finally {
    for (const c of conns) {
      try {
        c.close();
      } catch {
        // Already closed.
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Report

type Row = string[];

function markdownTable(header: Row, rows: Row[]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [
    line(header),
    line(header.map((_, i) => (i < 2 ? "---" : "---:"))),
    ...rows.map(line),
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------

async function main(args: string[]): Promise<number> {
  let config: E2eConfig;
  try {
    config = parseConfig(args);
  } catch (error) {
    if (!(error instanceof RangeError) && !(error instanceof TypeError)) throw error;
    writeStderrLine(`e2e: ${error.message.split("\n")[0]} (see --help)`);
    return 2;
  }
  const fdNeeded = 2 * config.idle + 1000;
  const fdLimit = Math.max(65536, fdNeeded);
  const haproxyVersion = config.haproxy
    ? (await commandOutput("haproxy", ["-v"]))?.split("\n")[0]
    : undefined;
  if (config.haproxy && !haproxyVersion) {
    writeStderrLine("e2e: haproxy is not installed (scripts/setup_haproxy.sh): skipping it");
  }
  const childFdLimit = Number(
    await commandOutput("sh", ["-c", `ulimit -n ${fdLimit} 2>/dev/null; ulimit -n`]),
  );
  if (config.only.has(4) && childFdLimit < fdNeeded) {
    writeStderrLine(
      `e2e: the fd limit is ${childFdLimit}, below the ${fdNeeded} scenario 4 needs; lowering --idle`,
    );
    config.idle = Math.max(100, Math.floor((childFdLimit - 1000) / 2));
  }
  const permissions = [...await startPermissions(), ...config.denoFlags];
  // Machine facts first, so a missing permission fails now rather than after the runs.
  const cpu = /^model name\s*:\s*(.*)$/m.exec(await readProc("/proc/cpuinfo"))?.[1];
  const memKib = Number(
    /^MemTotal:\s+(\d+)/m.exec(await readProc("/proc/meminfo"))?.[1],
  );
  const kernel = (await commandOutput("uname", ["-r"])) ?? "unknown";
  // Which code was measured: the commit, and whether src/ differed from it.
  const commit = await commandOutput("git", ["-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]);
  const dirty = await commandOutput("git", ["-C", REPO_ROOT, "status", "--porcelain", "src"]);
  const code = commit === undefined
    ? "unknown (not a git checkout)"
    : `commit ${commit}${dirty ? " with uncommitted changes in src/" : ""}`;
  // Only the load scenarios run on the watched proxy; without them there is no such target.
  const loadScenarios = LOAD_SCENARIOS.filter((s) => config.only.has(SCENARIO_NUMBERS[s.id]));
  const watched = (config.viewers > 0 || config.accessLog !== "off") && loadScenarios.length > 0;
  const tasksetVersion = config.taskset ? await commandOutput("taskset", ["-V"]) : undefined;
  if (config.taskset && tasksetVersion === undefined) {
    writeStderrLine("e2e: --taskset needs taskset (util-linux), which is not installed");
    return 2;
  }
  const cpus = navigator.hardwareConcurrency;
  const fooTargets: Target[] = config.workers === undefined
    ? [{ key: "foo-proxy", kind: "foo" }]
    : config.workers.map((w) => ({
      key: w === "auto" ? "auto" : `w${w}`,
      kind: "foo",
      workers: w,
    }));
  if (config.taskset) { for (const t of fooTargets) t.pin = pinning(t.workers ?? "auto", cpus); }
  const first = fooTargets[0];
  const cores = (w: WorkerCount | undefined) =>
    w === undefined || w === "auto" ? cpus : Math.min(w, cpus);
  // HAProxy, pinned, gets as many cores as the widest foo-proxy (it runs a thread per core).
  const haPin = config.taskset
    ? pinning(Math.max(...fooTargets.map((t) => cores(t.workers))), cpus)
    : undefined;
  const targets: Target[] = [
    { key: "direct", kind: "direct" },
    ...fooTargets,
    ...(watched
      ? [{ key: "watched", kind: "watched", workers: first.workers, pin: first.pin }] as const
      : []),
    ...(haproxyVersion ? [{ key: "haproxy", kind: "haproxy", pin: haPin }] as const : []),
  ];
  const haTarget = targets.find((t) => t.kind === "haproxy");
  /** Data-plane workers each foo-proxy target ran, from its `/stats`. */
  const ran = new Map<string, number>();
  const watchedTitle = [
    first.key,
    ...(config.viewers > 0 ? [`${config.viewers} viewers + top`] : []),
    ...(config.accessLog !== "off" ? [`access log (${config.accessLog})`] : []),
  ].join(" + ");
  const onCores = (pin: Pinning | undefined) =>
    pin === undefined ? "" : ` [core${pin.proxy.includes("-") ? "s" : ""} ${pin.proxy}]`;
  const title = (t: Target): string => {
    switch (t.kind) {
      case "direct":
        return "direct";
      case "haproxy":
        return `HAProxy${onCores(t.pin)}`;
      case "watched":
        return `watched ${watchedTitle}`;
      case "foo": {
        const n = ran.get(t.key);
        const count = n === undefined ? "" : ` (${n} worker${n === 1 ? "" : "s"})`;
        return t.workers === undefined
          ? `foo-proxy, --workers auto${count}`
          : `foo-proxy --workers ${t.workers}${t.workers === "auto" ? count : ""}${onCores(t.pin)}`;
      }
    }
  };
  /** What the watched proxy's watchers did over the load runs (shows they were really there). */
  const watching = { events: 0, frames: 0, accessLogLines: 0, seconds: 0 };
  const tmp = await Deno.makeTempDir({ prefix: "foo_e2e_" });
  const samples = new Map<string, Sample[]>();
  const idle = new Map<string, IdleSample[]>();
  const started = new Date();
  try {
    const upstream = await startServer(fdLimit);
    await using _server = upstream.child;
    if (loadScenarios.length > 0) {
      // Disposed in reverse: the watchers before the watched proxy, then the proxies.
      await using running = new AsyncDisposableStack();
      const procs = new Map<string, { port: number; pid: number }>();
      for (const t of fooTargets) {
        const p = await startFooProxy(upstream.port, permissions, fdLimit, {
          name: `foo-proxy ${t.key}`,
          workers: t.workers,
          cpus: t.pin?.proxy,
        });
        running.use(p.child);
        procs.set(t.key, { port: p.port, pid: p.child.pid });
        ran.set(t.key, p.workers);
      }
      const accessLogFile = `${tmp}/access.log`;
      const watchedStarted = watched
        ? await startFooProxy(upstream.port, permissions, fdLimit, {
          name: "watched foo-proxy",
          permissions: config.accessLog === "off" ? [] : [`--allow-write=${accessLogFile}`],
          flags: config.accessLog === "off"
            ? []
            : ["--access-log", config.accessLog, "--access-log-file", accessLogFile],
          workers: first.workers,
          cpus: first.pin?.proxy,
        })
        : null;
      if (watchedStarted) {
        running.use(watchedStarted.child);
        procs.set("watched", { port: watchedStarted.port, pid: watchedStarted.child.pid });
      }
      const watchers = watchedStarted && config.viewers > 0
        ? running.use(await Watchers.attach(watchedStarted.httpPort, config.viewers))
        : null;
      if (haTarget) {
        const ha = await startHaproxy(upstream.port, tmp, fdLimit, haTarget.pin?.proxy);
        running.use(ha.child);
        procs.set("haproxy", { port: ha.port, pid: ha.child.pid });
      }
      // Every proxy (HAProxy too, for the same treatment) takes an unmeasured load first: a
      // fresh foo-proxy is faster until V8's first full GC, 6–8 s into this load.
      for (const { port } of procs.values()) {
        await settle(HOST, port, config.settle, THROUGHPUT_LOAD);
      }
      for (let round = 1; round <= config.rounds; round++) {
        for (const scenario of loadScenarios) {
          // Each round starts with another target, so none is always measured first or last.
          for (const target of rotate(targets, round - 1)) {
            const proc = procs.get(target.key);
            const seen = { events: watchers?.events ?? 0, frames: watchers?.frames ?? 0 };
            const t0 = performance.now();
            const sample = await runBench(
              proc?.port ?? upstream.port,
              scenario,
              config,
              proc?.pid,
              upstream.child.pid,
              target.pin,
            );
            if (target.kind === "watched") {
              watching.seconds += (performance.now() - t0) / 1000;
              watching.events += (watchers?.events ?? 0) - seen.events;
              watching.frames += (watchers?.frames ?? 0) - seen.frames;
            }
            const key = `${scenario.id}/${target.key}`;
            samples.set(key, [...(samples.get(key) ?? []), sample]);
            const b = sample.bench;
            writeStderrLine(
              `e2e: round ${round} ${scenario.id.padEnd(10)} ${target.key.padEnd(9)} ${
                fmt(b.responses_per_sec).padStart(9)
              } replies/s ${fmt(b.connections_per_sec).padStart(7)} conn/s p50 ${
                b.latency_p50_ms.toFixed(3)
              } ms p99 ${b.latency_p99_ms.toFixed(3)} ms proxy cpu ${
                sample.proxyCpu.toFixed(2)
              } server cpu ${sample.serverCpu.toFixed(2)} errors ${b.errors_total}`,
            );
          }
        }
      }
      if (watchedStarted && config.accessLog !== "off") {
        // Read after the proxy has stopped, so its last buffered lines are in the file.
        await watchedStarted.child.stop();
        const text = await Deno.readTextFile(accessLogFile).catch(() => "");
        watching.accessLogLines = text.split("\n").length - 1;
      }
    }
    if (config.only.has(4)) {
      // Scenario 4 compares the foo-proxy targets with HAProxy only: watched is for traffic.
      const proxies = targets.filter((t) => t.kind === "foo" || t.kind === "haproxy");
      for (let round = 1; round <= config.rounds; round++) {
        for (const target of rotate(proxies, round - 1)) {
          // A fresh proxy each time, so earlier garbage does not blur the growth.
          const proc: { child: Child; port: number; workers?: number } = target.kind === "foo"
            ? await startFooProxy(upstream.port, permissions, fdLimit, {
              name: `foo-proxy ${target.key}`,
              workers: target.workers,
              cpus: target.pin?.proxy,
            })
            : await startHaproxy(upstream.port, tmp, fdLimit, target.pin?.proxy);
          await using _proxy = proc.child;
          if (proc.workers !== undefined) ran.set(target.key, proc.workers);
          const sample = await measureIdle(proc, config.idle);
          idle.set(target.key, [...(idle.get(target.key) ?? []), sample]);
          writeStderrLine(
            `e2e: round ${round} idle       ${target.key.padEnd(9)} ${
              sample.kibPerConnection.toFixed(2)
            } KiB/connection, marginal ${sample.marginalKib.toFixed(2)} (RSS ${
              fmt(sample.beforeKib)
            } -> ${fmt(sample.halfKib)} -> ${fmt(sample.afterKib)} KiB)`,
          );
        }
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }

  // The table: a column per target, then the ratios of each foo-proxy target.
  type Values = Record<string, number>;
  const med = (scenario: string, key: string, pick: (s: Sample) => number) =>
    median((samples.get(`${scenario}/${key}`) ?? []).map(pick));
  const rows: Row[] = [];
  const has = (id: string) => samples.has(`${id}/direct`);
  const others = fooTargets.slice(1);
  const addRow = (
    scenario: string,
    metric: string,
    values: Values,
    digits: number,
    directRatio = true,
  ) => {
    rows.push([
      scenario,
      metric,
      ...targets.map((t) => fmt(values[t.key] ?? NaN, digits)),
      ...(haTarget ? fooTargets.map((t) => ratio(values[t.key], values.haproxy)) : []),
      ...others.map((t) => ratio(values[t.key], values[first.key])),
      ...fooTargets.map((t) => directRatio ? ratio(values[t.key], values.direct) : "—"),
      ...(watched ? [ratio(values.watched, values[first.key])] : []),
    ]);
  };
  const all = (scenario: string, pick: (s: Sample) => number): Values =>
    Object.fromEntries(targets.map((t) => [t.key, med(scenario, t.key, pick)]));
  const perReplyUs = (s: Sample) => s.proxyCpu * 1e6 / Math.max(1, s.bench.responses_per_sec);
  const rateRows = (scenario: string, label: string) => {
    addRow(label, "replies/s", all(scenario, (s) => s.bench.responses_per_sec), 0);
    addRow(
      label,
      "proxy CPU (cores)",
      { ...all(scenario, (s) => s.proxyCpu), direct: NaN },
      2,
      false,
    );
    addRow(label, "server CPU (cores)", all(scenario, (s) => s.serverCpu), 2);
    // CPU per reply barely moves when other processes compete for the CPUs; replies/s does.
    addRow(
      label,
      "proxy CPU per reply (µs)",
      { ...all(scenario, perReplyUs), direct: NaN },
      2,
      false,
    );
  };
  if (has("throughput")) rateRows("throughput", "1 throughput");
  if (has("latency")) {
    addRow("2 latency", "p50 (ms)", all("latency", (s) => s.bench.latency_p50_ms), 3);
    addRow("2 latency", "p99 (ms)", all("latency", (s) => s.bench.latency_p99_ms), 3);
    addRow("2 latency", "p99.9 (ms)", all("latency", (s) => s.bench.latency_p999_ms), 3);
    // Added over direct: per round (rounds are interleaved, so pairing cancels drift).
    const added = (pick: (s: Sample) => number): Values => {
      const direct = samples.get("latency/direct") ?? [];
      const per = (key: string) =>
        median((samples.get(`latency/${key}`) ?? []).map((s, i) => pick(s) - pick(direct[i])));
      return {
        direct: NaN,
        ...Object.fromEntries(targets.slice(1).map((t) => [t.key, per(t.key)])),
      };
    };
    addRow(
      "2 latency",
      "p50 added over direct (ms)",
      added((s) => s.bench.latency_p50_ms),
      3,
      false,
    );
    addRow(
      "2 latency",
      "p99 added over direct (ms)",
      added((s) => s.bench.latency_p99_ms),
      3,
      false,
    );
  }
  if (has("churn")) {
    addRow("3 churn", "connections/s", all("churn", (s) => s.bench.connections_per_sec), 0);
    addRow(
      "3 churn",
      "proxy CPU per connection (µs)",
      {
        ...all("churn", (s) => s.proxyCpu * 1e6 / Math.max(1, s.bench.connections_per_sec)),
        direct: NaN,
      },
      0,
      false,
    );
  }
  if (has("lockstep")) rateRows("lockstep", "5 lock-step");
  if (idle.size > 0) {
    const idleValues = (pick: (s: IdleSample) => number): Values =>
      Object.fromEntries([...idle.entries()].map(([key, list]) => [key, median(list.map(pick))]));
    addRow(
      "4 idle memory",
      `RSS growth per connection (KiB), ${fmt(config.idle)} held`,
      idleValues((s) => s.kibPerConnection),
      2,
      false,
    );
    addRow(
      "4 idle memory",
      "of which marginal (KiB per connection, 2nd half)",
      idleValues((s) => s.marginalKib),
      2,
      false,
    );
  }
  const errors = [...samples.values()].flat().reduce((sum, s) => sum + s.bench.errors_total, 0);
  const table = markdownTable(
    [
      "scenario",
      "metric",
      ...targets.map(title),
      ...(haTarget ? fooTargets.map((t) => `${t.key} ÷ HAProxy`) : []),
      ...others.map((t) => `${t.key} ÷ ${first.key}`),
      ...fooTargets.map((t) => `${t.key} ÷ direct`),
      ...(watched ? [`watched ÷ ${first.key}`] : []),
    ],
    rows,
  );
  // The workers issue's targets, where this run measured what they compare.
  const checks: string[] = [];
  if (has("throughput")) {
    const perReply = all("throughput", perReplyUs);
    const replies = all("throughput", (s) => s.bench.responses_per_sec);
    const one = fooTargets.find((t) => t.workers === 1);
    for (const t of fooTargets) {
      if (one && t !== one) {
        const r = perReply[t.key] / perReply[one.key];
        checks.push(
          `proxy CPU per reply (scenario 1), ${t.key} ÷ ${one.key}: ${
            ratio(r, 1)
          } (target: at most 1.10×, within 10 % of it; ${r <= 1.1 ? "met" : "not met"})`,
        );
      }
      if (haTarget && t !== one) {
        const r = replies[t.key] / replies.haproxy;
        checks.push(
          `replies/s (scenario 1), ${t.key} ÷ HAProxy: ${ratio(r, 1)} (target: at least 1.00×, ${
            r >= 1 ? "met" : "not met"
          })`,
        );
      }
    }
  }
  const checksText = checks.map((c) => `- ${c}`).join("\n");
  const watchingNote = !watched
    ? ""
    : `Watched foo-proxy (${watchedTitle}): over its load runs ${
      config.viewers > 0
        ? `its ${config.viewers} dashboard streams read ${
          fmt(watching.events / config.viewers / Math.max(1, watching.seconds), 2)
        } events per stream per second and \`top\` drew ${
          fmt(watching.frames / Math.max(1, watching.seconds), 2)
        } frames per second`
        : "nobody read its stats app"
    }${
      config.accessLog !== "off"
        ? `; it wrote ${fmt(watching.accessLogLines)} access-log lines (its settling load included)`
        : ""
    }.`;
  writeStdoutLine(table);
  if (checksText) writeStdoutLine(`\n${checksText}`);
  if (watchingNote) writeStdoutLine(`\n${watchingNote}`);
  if (errors > 0) writeStdoutLine(`\n${errors} errors in load runs (see stderr)`);
  if (config.write) {
    const raw = [...samples.entries()].map(([key, list]) =>
      `| ${key} | ${list.map((s) => fmt(s.bench.responses_per_sec)).join(", ")} | ${
        list.map((s) => fmt(s.bench.connections_per_sec)).join(", ")
      } | ${list.map((s) => s.bench.latency_p99_ms.toFixed(3)).join(", ")} | ${
        list.map((s) => s.proxyCpu.toFixed(2)).join(", ")
      } | ${list.reduce((n, s) => n + s.bench.errors_total, 0)} |`
    );
    const rawIdle = [...idle.entries()].map(([t, list]) =>
      `| ${t} | ${list.map((s) => s.kibPerConnection.toFixed(2)).join(", ")} | ${
        list.map((s) => s.marginalKib.toFixed(2)).join(", ")
      } | ${
        list.map((s) => `${fmt(s.beforeKib)} → ${fmt(s.halfKib)} → ${fmt(s.afterKib)}`).join(", ")
      } |`
    );
    const command = `deno task bench:e2e ${args.join(" ")}`.trim();
    const md = `# End-to-end benchmark results

Generated by \`bench/e2e.ts\` — do not edit by hand; re-run \`${command}\`.

- Date: ${started.toISOString()}
- Command: \`${command}\` (${config.rounds} interleaved rounds, ${config.warmup} s warm-up + ${config.seconds} s measured per load run, after ${config.settle} s of unmeasured throughput load on each proxy once it started)
- Machine: ${navigator.hardwareConcurrency} CPUs (${cpu ?? "unknown CPU"}), ${
      fmt(memKib / 1024 / 1024, 1)
    } GiB RAM, Linux ${kernel}
- Deno ${Deno.version.deno} (V8 ${Deno.version.v8})
- Code measured: ${code}
- HAProxy: ${haproxyVersion ?? "not installed (skipped)"}
- foo-proxy targets: ${
      fooTargets.map((t) =>
        `${title(t)}${ran.has(t.key) ? "" : " (its worker count was not read)"}`
      ).join("; ")
    }
- Pinning: ${
      config.taskset
        ? `\`--taskset\` (${tasksetVersion}): each proxy runs on the first cores, as many as its workers (HAProxy: as many as the widest foo-proxy); the load generator and the upstream run on the cores left, or on every core when none is left (the upstream moved there with \`taskset -a -p\` before each run): ${
          targets.filter((t) => t.pin !== undefined).map((t) =>
            `${t.key} on ${t.pin!.proxy}, load and upstream on ${t.pin!.rest ?? "every core"}`
          ).join("; ")
        }`
        : "none: every process may run on every core"
    }
- fd limit of the processes: ${childFdLimit}

Every process — the Foo server (upstream), the proxy under test and the load generator
(\`foo-proxy bench --json\`) — runs on the same machine, so they share its CPUs. Values are
medians over the rounds; ratios are foo-proxy's value divided by the other's (for throughput
and churn rates higher is better; for latency, CPU and memory lower is better).

${table}
${
      checks.length > 0
        ? `\nTargets of the workers issue, from the medians above:\n\n${checksText}\n`
        : ""
    }
How each target runs:

- **direct**: the load generator talks to the Foo server itself (\`foo-proxy server\`).
- **foo-proxy** (${fooTargets.map((t) => t.key).join(", ")}): \`deno run ${
      permissions.join(" ")
    } src/main.ts proxy --log-level warning
  --http 127.0.0.1:<free port> --health 127.0.0.1:<free port>${
      config.workers === undefined ? "" : " --workers N"
    }\` (the flags of \`deno task start\`${
      config.denoFlags.length > 0 ? `, plus ${config.denoFlags.join(" ")} from --deno-flags` : ""
    }): one process, a supervisor thread and its data-plane worker threads, each with its own
  SO_REUSEPORT listener (${
      config.workers === undefined
        ? "`--workers` not passed: auto, one per CPU"
        : `\`--workers ${config.workers.join("\`, \`")}\`, one process each`
    }); its CPU columns count every thread; nothing reads its stats app.${
      watched
        ? `
- **${watchedTitle}**: a second foo-proxy started the same way${
          config.accessLog !== "off"
            ? `, plus \`--access-log ${config.accessLog} --access-log-file <tmp>/access.log\` (and
  the grant to write that file)`
            : ""
        }${
          config.viewers > 0
            ? `; ${config.viewers} \`GET /events\` streams held open and read by this script, and one
  \`foo-proxy top --stats 127.0.0.1:<its http port>\` process, attached before the first run
  and kept through all of them (so their own CPU, ~0.002 cores for \`top\`, is on the machine
  while every column is measured; \`bench/viewers_cost.ts\` measures it apart)`
            : ""
        }. ${watchingNote}`
        : ""
    }
- **HAProxy**: \`haproxy -f haproxy.cfg\` with the generated configuration below: TCP mode, one
  frontend bound on 127.0.0.1, one backend server, connect/client/server timeouts (5 s, 1 min,
  1 min) and every other setting at its default (threads = CPUs, maxconn derived from the fd
  limit, 16 KiB buffers).

\`\`\`
${haproxyConfig(0, 0).replace(":0\n", ":<port>\n").replace(":0\n", ":<upstream port>\n")}\`\`\`

Scenarios (\`foo-proxy bench\` flags):

${LOAD_SCENARIOS.map((s) => `- ${s.title}: \`${s.args.join(" ")}\``).join("\n")}
- 4. idle memory: open ${
      fmt(config.idle)
    } connections through the proxy (one REQ/ACK each, so both sockets are bridged), then
  hold them idle; the figure is the growth of the proxy's VmRSS (/proc/<pid>/status) divided by
  the connection count, on a fresh proxy process per round.

Before the load scenarios (1–3, 5), each proxy process takes ${config.settle} s of scenario 1's load,
unmeasured: V8's heap changes regime after its first full GC (seen 6–8 s into that load, then
one or two mark-compacts a second), so a fresh foo-proxy looks faster than the same process a
minute later.

CPU columns: CPU time (user + system, /proc/<pid>/stat: every thread) of the process during one bench run,
divided by the seconds load was applied (warm-up + measurement); per reply and per connection
divide that by the measured rate. They are steadier than rates when other processes compete for
the CPUs.

## Raw rounds

| scenario/target | replies/s | connections/s | p99 (ms) | proxy CPU | errors |
| --- | --- | --- | --- | --- | --- |
${raw.join("\n")}

${
      rawIdle.length > 0
        ? `| idle target | KiB per connection | marginal KiB (2nd half) | RSS before → half → all (KiB) |\n| --- | --- | --- | --- |\n${
          rawIdle.join("\n")
        }\n`
        : ""
    }`;
    const report = config.results ??
      await Deno.makeTempFile({ prefix: "foo_proxy_e2e_", suffix: ".md" });
    const files = [...new Set([report, ...(config.writeResults ? [RESULTS] : [])])];
    for (const file of files) {
      await Deno.mkdir(dirname(file), { recursive: true });
      await Deno.writeTextFile(file, md);
      // Formatted with the repository's settings: RESULTS.md is checked by `deno fmt --check`,
      // and a report elsewhere stays identical to what RESULTS.md would be.
      await new Deno.Command(Deno.execPath(), {
        args: ["fmt", "--quiet", "--config", DENO_JSON, file],
      }).output();
    }
    writeStdoutLine(`\ne2e: wrote the report to ${report}`);
    if (config.writeResults) writeStdoutLine(`e2e: updated ${RESULTS}`);
    else writeStdoutLine(`e2e: ${RESULTS} left alone (--write-results updates it)`);
  }
  return errors > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
