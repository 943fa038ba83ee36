/**
 * What the viewers cost (issue 13): whether the dashboard's event stream, `foo-proxy top` and the
 * access log take measurable throughput from the proxy. In one run, against one upstream (our Foo
 * server in its own process), foo-proxy (started with the flags of `deno task start`, plus
 * `--http` on a free port and `--health=off`) is measured in five configurations:
 *
 * - **a** baseline: `--http` on, nobody reading it, no access log;
 * - **a′** the baseline again, as another process: the noise floor of the run (how far two
 *   identical configurations land apart);
 * - **b** 5 viewers: 5 `GET /events` SSE streams held open and read (by fetch readers in this
 *   process), plus one `foo-proxy top --stats 127.0.0.1:<http port>` child (stdin null, stdout a
 *   pipe this script drains, counting the frames it draws so the report can show it fetched);
 * - **c** 5 viewers + `--access-log text`, the proxy's stderr piped and drained (lines counted);
 * - **d** the same 5 viewers and `top` watching a twin (a second, idle proxy process) while the
 *   measured proxy has none: what the viewers cost the machine, apart from the proxy's share.
 *
 * Each run starts a fresh proxy (so no idle proxy with viewers attached competes with the one
 * measured, except d's twin), attaches its viewers, waits until every stream has an event and
 * `top` has drawn numbers, gives it `--settle` seconds of unmeasured throughput load (V8's heap
 * changes regime after its first full GC, 6–8 s into that load; see `settle` in `_common.ts`),
 * then runs two loads with `foo-proxy bench --json` in its own process: throughput
 * (64 connections x 16 pipelined) and churn (16 connections, 10 REQs each, then a new
 * connection; this is where access-log lines are produced). Rounds are interleaved, the order of
 * the configurations rotated per round. Proxy CPU per reply is the proxy's CPU time (user +
 * system, `/proc/<pid>/stat`) between the load generator's first and last progress lines divided
 * by the replies it counted in between, as in `bench/engine_cost.ts`.
 *
 * ```sh
 * deno run -A bench/viewers_cost.ts            # --help for the flags; ~10 minutes by default
 * ```
 *
 * (`-A` because Deno asks for it to read another process's `/proc` entries.) The tables go to
 * stdout and, unless `--no-write`, to `bench/VIEWERS_COST.md` with the machine, date and commit.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  CHURN_LOAD,
  commandOutput,
  countBytes,
  cpuSeconds,
  delay,
  fmt,
  machineBusySeconds,
  median,
  rotate,
  settle,
  SseViewer,
  THROUGHPUT_LOAD,
} from "./_common.ts";

const REPO_ROOT = new URL("..", import.meta.url).pathname;
const RESULTS = new URL("./VIEWERS_COST.md", import.meta.url).pathname;
const HOST = "127.0.0.1";
const VIEWERS = 5;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The flags of `deno task start` without its `--allow-read=examples` (no config file here). */
const START_FLAGS = [
  "--allow-net",
  "--allow-env=FOO_PROXY_*",
  "--v8-flags=--max-semi-space-size=8",
];

type ConfigId = "a" | "a2" | "b" | "c" | "d";

interface Variant {
  id: ConfigId;
  title: string;
  viewers: boolean;
  accessLog: boolean;
  /**
   * The viewers watch a twin: a second proxy process, idle, started the same way, while the
   * measured one has none. Everything the viewers do on the machine happens (their processes
   * wake, a proxy builds and sends snapshots) except the measured proxy's part in it.
   */
  twin?: boolean;
}

const VARIANTS: Variant[] = [
  { id: "a", title: "a: baseline", viewers: false, accessLog: false },
  // The baseline once more, as a separate process: how far two identical configurations differ
  // in one run (the noise floor a viewers' cost must rise above to count as measurable).
  { id: "a2", title: "a′: baseline again", viewers: false, accessLog: false },
  { id: "b", title: "b: 5 viewers", viewers: true, accessLog: false },
  { id: "c", title: "c: 5 viewers + access log", viewers: true, accessLog: true },
  { id: "d", title: "d: 5 viewers on a twin", viewers: true, accessLog: false, twin: true },
];

/** Each configuration in the written report. */
const DESCRIPTIONS: Record<ConfigId, string> = {
  a: "nothing reads `--http`, no access log;",
  a2: "the same as a, in another process: the noise floor of the run;",
  b: `${VIEWERS} \`GET /events\` SSE streams held open and read by fetch readers in the bench
  process, and one \`foo-proxy top --stats 127.0.0.1:<http port>\` child (stdin null, stdout a pipe
  the bench drains and counts frames on, to show it really fetched);`,
  c: "as b, plus `--access-log text`, the proxy's stderr piped and drained by the bench;",
  d: `the viewers of b watch a second proxy process (idle, started the same way) while the
  measured one has none: the viewers' cost to the machine without the proxy's own share (b ÷ d is
  that share).`,
};

/** The configurations compared with the baseline a, in the ratio table. */
const COMPARED: ConfigId[] = ["a2", "b", "c", "d"];

/** A configuration's short name in the ratio table: `a′`, `b`, `c`. */
function label(id: ConfigId): string {
  return id === "a2" ? "a′" : id;
}

interface Scenario {
  id: "throughput" | "churn";
  title: string;
  args: readonly string[];
}

const SCENARIOS: Scenario[] = [
  {
    id: "throughput",
    title: "throughput: 64 conns x 16 pipelined",
    args: THROUGHPUT_LOAD,
  },
  {
    id: "churn",
    title: "churn: 16 conns, 10 REQs each",
    args: CHURN_LOAD,
  },
];

function usage(): string {
  return `Usage: deno run -A bench/viewers_cost.ts [flags]

  --rounds N     interleaved rounds (every configuration, both loads)   (default 5)
  --seconds S    measured seconds per load run, at least 2              (default 5)
  --warmup S     unmeasured seconds before each load run                (default 1)
  --settle S     unmeasured seconds of the throughput load on each fresh proxy process,
                 so V8's heap is in its steady state before any run     (default 10)
  --configs L    configurations to run, from a,a2,b,c,d (a is always run) (default all)
  --loads L      loads to run: throughput, churn                        (default both)
  --max-other C  measure a load run again when the rest of the machine used more than C
                 cores during it                                        (default 0.3)
  --max-reruns N at most N such repeats in the whole run                (default 6)
  --no-write     print the tables only, leave bench/VIEWERS_COST.md alone`;
}

interface Config {
  rounds: number;
  seconds: number;
  warmup: number;
  settle: number;
  maxOther: number;
  maxReruns: number;
  write: boolean;
  /** The configurations run, in VARIANTS order (always with a). */
  variants: Variant[];
  /** The loads run. */
  scenarios: Scenario[];
}

function parseConfig(args: string[]): Config {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      rounds: { type: "string", default: "5" },
      seconds: { type: "string", default: "5" },
      warmup: { type: "string", default: "1" },
      settle: { type: "string", default: "10" },
      "max-other": { type: "string", default: "0.3" },
      "max-reruns": { type: "string", default: "6" },
      "no-write": { type: "boolean" },
      configs: { type: "string", default: VARIANTS.map((v) => v.id).join(",") },
      loads: { type: "string", default: SCENARIOS.map((s) => s.id).join(",") },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    writeLine(Deno.stdout, usage());
    Deno.exit(0);
  }
  const pick = <T extends { id: string }>(
    name: string,
    text: string,
    all: T[],
    always: string[],
  ) => {
    const ids = new Set([...always, ...text.split(",").map((w) => w.trim()).filter((w) => w)]);
    for (const id of ids) {
      if (!all.some((x) => x.id === id)) {
        throw new RangeError(
          `Invalid --${name} "${id}": expected ${all.map((x) => x.id).join(", ")}`,
        );
      }
    }
    if (ids.size === 0) throw new RangeError(`Invalid --${name}: none given`);
    return all.filter((x) => ids.has(x.id));
  };
  const num = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isFinite(n) || n < min) throw new RangeError(`Invalid --${name} "${text}"`);
    return n;
  };
  return {
    rounds: Math.round(num("rounds", values.rounds, 1)),
    seconds: num("seconds", values.seconds, 2),
    warmup: num("warmup", values.warmup, 0.5),
    settle: num("settle", values.settle, 0),
    maxOther: num("max-other", values["max-other"], 0),
    maxReruns: Math.round(num("max-reruns", values["max-reruns"], 0)),
    write: !values["no-write"],
    variants: pick("configs", values.configs, VARIANTS, ["a"]),
    scenarios: pick("loads", values.loads, SCENARIOS, []),
  };
}

// ---------------------------------------------------------------------------------------------
// Processes and /proc

function writeLine(file: { writeSync(p: Uint8Array): number }, line: string): void {
  let bytes = encoder.encode(line + "\n");
  while (bytes.length > 0) bytes = bytes.subarray(file.writeSync(bytes));
}

function log(line: string): void {
  writeLine(Deno.stderr, `viewers_cost: ${line}`);
}

function freePort(): number {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

/**
 * A child process whose output streams are drained in the background: the text is kept until a
 * wanted line has been seen (`waitFor`), after which only newlines (lines) and, when asked,
 * occurrences of one marker are counted, so a chatty child (the access log) costs this process
 * little.
 */
class Proc {
  readonly process: Deno.ChildProcess;
  readonly status: Promise<Deno.CommandStatus>;
  exited = false;
  /** Lines seen on stderr / stdout so far. */
  lines = { stdout: 0, stderr: 0 };
  /** Occurrences of `marker` on stdout. */
  markers = 0;
  #text = { stdout: "", stderr: "" };
  #keep = { stdout: true, stderr: true };
  #waiters: (() => void)[] = [];
  #done: Promise<void>[];

  constructor(readonly name: string, args: string[], readonly marker?: string) {
    this.process = new Deno.Command(Deno.execPath(), {
      args,
      cwd: REPO_ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    this.status = this.process.status.then((s) => {
      this.exited = true;
      this.#wake();
      return s;
    });
    this.#done = [
      this.#drain("stdout", this.process.stdout),
      this.#drain("stderr", this.process.stderr),
    ];
  }

  get pid(): number {
    return this.process.pid;
  }

  tail(which: "stdout" | "stderr"): string {
    return this.#text[which].slice(-600);
  }

  /** Waits for `pattern` in the kept text of `which`, then stops keeping that text. */
  async waitFor(
    which: "stdout" | "stderr",
    pattern: RegExp,
    ms = 20_000,
  ): Promise<RegExpExecArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = pattern.exec(this.#text[which]);
      if (m) {
        this.#keep[which] = false;
        this.#text[which] = "";
        return m;
      }
      if (this.exited) throw new Error(`${this.name} exited: ${this.tail("stderr")}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no ${pattern} within ${ms} ms`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((r) => this.#waiters.push(r)),
        new Promise((r) => timer = setTimeout(r, Math.min(left, 200))),
      ]);
      clearTimeout(timer);
    }
  }

  async stop(): Promise<void> {
    if (!this.exited) {
      try {
        this.process.kill("SIGTERM");
      } catch {
        // It exited meanwhile.
      }
    }
    const timer = setTimeout(() => {
      try {
        if (!this.exited) this.process.kill("SIGKILL");
      } catch {
        // Likewise.
      }
    }, 5000);
    await this.status;
    clearTimeout(timer);
    await Promise.all(this.#done);
  }

  async #drain(which: "stdout" | "stderr", stream: ReadableStream<Uint8Array>): Promise<void> {
    const markerBytes = this.marker === undefined ? undefined : encoder.encode(this.marker);
    try {
      for await (const chunk of stream) {
        for (let i = chunk.indexOf(10); i >= 0; i = chunk.indexOf(10, i + 1)) this.lines[which]++;
        if (which === "stdout" && markerBytes) this.markers += countBytes(chunk, markerBytes);
        if (this.#keep[which]) {
          this.#text[which] = (this.#text[which] + decoder.decode(chunk)).slice(-20_000);
          this.#wake();
        }
      }
    } catch {
      // The pipe broke as the child died.
    }
  }

  #wake(): void {
    for (const wake of this.#waiters.splice(0)) wake();
  }
}

// ---------------------------------------------------------------------------------------------
// The proxy and its viewers

async function startServer(): Promise<{ proc: Proc; port: number }> {
  const proc = new Proc("foo server", [
    "run",
    "-A",
    "src/main.ts",
    "server",
    "--listen",
    `${HOST}:0`,
    "--log-level",
    "warning",
  ]);
  const m = await proc.waitFor("stdout", /listening on \S+:(\d+)/);
  return { proc, port: Number(m[1]) };
}

interface Running {
  proxy: Proc;
  port: number;
  httpPort: number;
  sse: SseViewer[];
  top: Proc | undefined;
  /** The idle twin the viewers watch instead (variant d). */
  twin?: Running;
}

async function startProxy(variant: Variant, upstreamPort: number): Promise<Running> {
  if (variant.twin) {
    const twin = await startProxy({ ...variant, twin: false, title: "twin" }, upstreamPort);
    try {
      const running = await startProxy({ ...variant, twin: false, viewers: false }, upstreamPort);
      return { ...running, sse: twin.sse, top: twin.top, twin };
    } catch (error) {
      await stopProxy(twin);
      throw error;
    }
  }
  const httpPort = freePort();
  const proxy = new Proc(variant.title, [
    "run",
    ...START_FLAGS,
    "src/main.ts",
    "proxy",
    `--listen=${HOST}:0`,
    `--forward=${HOST}:${upstreamPort}`,
    `--http=${HOST}:${httpPort}`,
    "--health=off",
    ...(variant.accessLog ? ["--access-log", "text"] : []),
  ]);
  const m = await proxy.waitFor("stderr", /Listening on [^\s,]+:(\d+)/);
  const running: Running = { proxy, port: Number(m[1]), httpPort, sse: [], top: undefined };
  if (!variant.viewers) return running;
  try {
    // The proxy serves /stats a moment after it listens for clients (5 s at most).
    for (let i = 0;; i++) {
      try {
        const res = await fetch(`http://${HOST}:${httpPort}/stats`);
        await res.body?.cancel();
        if (res.ok) break;
        if (i > 100) throw new Error(`GET /stats answered ${res.status}`);
      } catch (error) {
        if (i > 100) throw error;
      }
      await delay(50);
    }
    for (let i = 0; i < VIEWERS; i++) {
      running.sse.push(new SseViewer(`http://${HOST}:${httpPort}/events`));
    }
    // "Requests/s" is drawn only once top has numbers from /stats.
    running.top = new Proc(
      "foo-proxy top",
      ["run", "-A", "src/main.ts", "top", "--stats", `${HOST}:${httpPort}`],
      "Requests/s",
    );
    await Promise.all(running.sse.map((v) => v.first()));
    await running.top.waitFor("stdout", /Requests\/s/);
  } catch (error) {
    await stopProxy(running); // its viewers and top too: nothing is left running
    throw error;
  }
  return running;
}

async function stopProxy(running: Running): Promise<void> {
  if (running.twin) {
    await stopProxy(running.twin);
  } else {
    await Promise.all(running.sse.map((v) => v.close()));
    await running.top?.stop();
  }
  await running.proxy.stop();
}

// ---------------------------------------------------------------------------------------------
// Load runs

interface Sample {
  repliesPerSec: number;
  connectionsPerSec: number;
  /** Proxy CPU per reply over the progress-line window, µs. */
  cpuPerReplyUs: number;
  /** Proxy CPU over the window, in cores. */
  cores: number;
  /** CPU of the `top` child over the window, in cores. */
  topCores: number;
  /**
   * CPU the rest of the machine used over the window (all busy time minus the proxy's, the
   * server's, the load generator's, top's, the twin's and this script's), in cores: competing
   * work.
   */
  otherCores: number;
  /** SSE events read per stream per second over the run (0 without viewers). */
  sseEventsPerStreamPerSec: number;
  /** Frames `top` drew with numbers during the run, per second. */
  topFramesPerSec: number;
  /** Access-log lines (the proxy's stderr) during the run. */
  accessLogLines: number;
  errors: number;
}

interface Mark {
  at: number;
  total: number;
  cpu: number;
  serverCpu: number;
  loadCpu: number;
  topCpu: number;
  twinCpu: number;
  selfCpu: number;
  machineCpu: number;
}

const PROGRESS = /^bench: (?:warm-up \d+s left|\d+s): \d+ replies\/s, (\d+) total/;

async function runLoad(
  running: Running,
  scenario: Scenario,
  config: Config,
  serverPid: number,
): Promise<Sample> {
  const proc = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "src/main.ts",
      "bench",
      "--connect",
      `${HOST}:${running.port}`,
      "--json",
      "--duration",
      `${config.seconds}s`,
      "--warmup",
      `${config.warmup}s`,
      ...scenario.args,
    ],
    cwd: REPO_ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const t0 = performance.now();
  const sse0 = running.sse.reduce((n, v) => n + v.events, 0);
  const top0 = running.top?.markers ?? 0;
  const log0 = running.proxy.lines.stderr;
  const marks: Mark[] = [];
  const tail: string[] = [];
  const topPid = running.top?.pid;
  const twinPid = running.twin?.proxy.pid;
  const readErr = (async () => {
    let partial = "";
    for await (const chunk of proc.stderr.pipeThrough(new TextDecoderStream())) {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        const m = PROGRESS.exec(line);
        if (m) {
          // Read at once: the line was printed a moment ago, with the total at that moment.
          marks.push({
            at: performance.now(),
            total: Number(m[1]),
            cpu: cpuSeconds(running.proxy.pid),
            serverCpu: cpuSeconds(serverPid),
            loadCpu: cpuSeconds(proc.pid),
            topCpu: topPid === undefined ? 0 : cpuSeconds(topPid),
            twinCpu: twinPid === undefined ? 0 : cpuSeconds(twinPid),
            selfCpu: cpuSeconds(Deno.pid),
            machineCpu: machineBusySeconds(),
          });
        } else {
          tail.push(line);
        }
      }
    }
  })();
  const [out, status] = await Promise.all([
    new Response(proc.stdout).text(),
    proc.status,
    readErr,
  ]);
  const seconds = (performance.now() - t0) / 1000;
  const json = out.trim().split("\n").at(-1) ?? "";
  let report: { responses_per_sec: number; connections_per_sec: number; errors_total: number };
  try {
    report = JSON.parse(json);
  } catch {
    throw new Error(`foo-proxy bench failed (exit ${status.code}): ${tail.slice(-12).join(" / ")}`);
  }
  if (marks.length < 2) throw new Error(`Only ${marks.length} progress lines from the bench`);
  const first = marks[0];
  const last = marks.at(-1)!;
  const replies = Math.max(1, last.total - first.total);
  const span = (last.at - first.at) / 1000;
  const d = (pick: (m: Mark) => number) => pick(last) - pick(first);
  const events = running.sse.reduce((n, v) => n + v.events, 0) - sse0;
  return {
    repliesPerSec: report.responses_per_sec,
    connectionsPerSec: report.connections_per_sec,
    cpuPerReplyUs: d((m) => m.cpu) * 1e6 / replies,
    cores: d((m) => m.cpu) / span,
    topCores: d((m) => m.topCpu) / span,
    otherCores: Math.max(
      0,
      d((m) => m.machineCpu) - d((m) => m.cpu) - d((m) => m.serverCpu) - d((m) => m.loadCpu) -
        d((m) => m.topCpu) - d((m) => m.twinCpu) - d((m) => m.selfCpu),
    ) / span,
    sseEventsPerStreamPerSec: running.sse.length === 0 ? 0 : events / running.sse.length / seconds,
    topFramesPerSec: ((running.top?.markers ?? 0) - top0) / seconds,
    accessLogLines: running.proxy.lines.stderr - log0,
    errors: report.errors_total,
  };
}

// ---------------------------------------------------------------------------------------------
// Report

function times(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(3)}×` : "—";
}

function table(header: string[], rows: string[][], textColumns = 2): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [
    line(header),
    line(header.map((_, i) => (i < textColumns ? "---" : "---:"))),
    ...rows.map(line),
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------

async function main(args: string[]): Promise<number> {
  let config: Config;
  try {
    config = parseConfig(args);
  } catch (error) {
    if (!(error instanceof RangeError) && !(error instanceof TypeError)) throw error;
    log(`${error.message.split("\n")[0]} (see --help)`);
    return 2;
  }
  const started = new Date();
  const compared = COMPARED.filter((id) => config.variants.some((v) => v.id === id));
  const srcStatus = () => commandOutput("git", ["status", "--porcelain", "src"], REPO_ROOT);
  const srcAtStart = await srcStatus();
  const samples = new Map<string, Sample[]>();
  const key = (scenario: Scenario, variant: Variant) => `${scenario.id}/${variant.id}`;
  let reruns = 0;
  const server = await startServer();
  try {
    for (let round = 0; round < config.rounds; round++) {
      for (const variant of rotate(config.variants, round)) {
        const running = await startProxy(variant, server.port);
        try {
          await settle(HOST, running.port, config.settle, THROUGHPUT_LOAD);
          for (const scenario of config.scenarios) {
            let s = await runLoad(running, scenario, config, server.proc.pid);
            // Other work on the shared machine skews the figures: measure once more if so (a
            // bounded number of times, so the whole run stays within a few minutes).
            if (s.otherCores > config.maxOther && reruns < config.maxReruns) {
              reruns++;
              await delay(1000);
              const again = await runLoad(running, scenario, config, server.proc.pid);
              log(
                `${variant.title} ${scenario.id}: ${s.otherCores.toFixed(2)}, then ${
                  again.otherCores.toFixed(2)
                } cores of other work`,
              );
              if (again.otherCores < s.otherCores) s = again;
            }
            samples.set(key(scenario, variant), [
              ...(samples.get(key(scenario, variant)) ?? []),
              s,
            ]);
            log(
              `round ${round + 1} ${scenario.id.padEnd(10)} ${variant.title.padEnd(26)} ${
                fmt(s.repliesPerSec).padStart(9)
              } replies/s ${fmt(s.connectionsPerSec).padStart(6)} conns/s ${
                s.cpuPerReplyUs.toFixed(3)
              } µs/reply (${s.cores.toFixed(2)} cores) sse ${
                s.sseEventsPerStreamPerSec.toFixed(2)
              }/s/stream top ${s.topFramesPerSec.toFixed(2)} frames/s (${
                s.topCores.toFixed(3)
              } cores) log ${s.accessLogLines} lines other ${
                s.otherCores.toFixed(2)
              } cores errors ${s.errors}`,
            );
          }
        } finally {
          await stopProxy(running);
        }
      }
    }
  } finally {
    await server.proc.stop();
  }
  const elapsed = (Date.now() - started.getTime()) / 1000;

  const all = (scenario: Scenario, id: ConfigId) => samples.get(`${scenario.id}/${id}`) ?? [];
  const med = (scenario: Scenario, id: ConfigId, pick: (s: Sample) => number) =>
    median(all(scenario, id).map(pick));
  // The median of per-round ratios: a round runs a, b and c within a minute.
  const paired = (scenario: Scenario, id: ConfigId, pick: (s: Sample) => number) => {
    const base = all(scenario, "a");
    return median(all(scenario, id).map((s, i) => pick(s) / pick(base[i])));
  };
  const metrics: [string, (s: Sample) => number, number, boolean][] = [
    ["replies/s", (s) => s.repliesPerSec, 0, true],
    ["connections/s", (s) => s.connectionsPerSec, 0, true],
    ["proxy CPU (cores)", (s) => s.cores, 2, false],
    ["proxy CPU per reply (µs)", (s) => s.cpuPerReplyUs, 3, true],
  ];
  const rows: string[][] = [];
  const ratioRows: string[][] = [];
  for (const scenario of config.scenarios) {
    for (const [name, pick, digits, ratioed] of metrics) {
      if (scenario.id === "throughput" && name === "connections/s") continue;
      rows.push([
        scenario.title,
        name,
        ...config.variants.map((v) => fmt(med(scenario, v.id, pick), digits)),
      ]);
      if (!ratioed) continue;
      const a = med(scenario, "a", pick);
      ratioRows.push([
        scenario.title,
        name,
        ...compared.flatMap((id) => [
          times(med(scenario, id, pick) / a),
          times(paired(scenario, id, pick)),
        ]),
      ]);
    }
    rows.push([
      scenario.title,
      "viewers: SSE events/s per stream, top frames/s (top CPU, cores)",
      ...config.variants.map((v) =>
        !v.viewers
          ? "—"
          : `${fmt(med(scenario, v.id, (s) => s.sseEventsPerStreamPerSec), 2)}, ${
            fmt(med(scenario, v.id, (s) => s.topFramesPerSec), 2)
          } (${fmt(med(scenario, v.id, (s) => s.topCores), 3)})`
      ),
    ]);
    rows.push([
      scenario.title,
      "proxy stderr lines per run (the access log)",
      ...config.variants.map((v) => fmt(med(scenario, v.id, (s) => s.accessLogLines))),
    ]);
    rows.push([
      scenario.title,
      "other work on the machine (cores)",
      ...config.variants.map((v) => fmt(med(scenario, v.id, (s) => s.otherCores), 2)),
    ]);
  }
  const tables = [
    table(["load", "metric", ...config.variants.map((v) => v.title)], rows),
  ];
  // With only a run there is nothing to compare.
  if (compared.length > 0) {
    tables.push(table(
      [
        "load",
        "metric",
        ...compared.flatMap((id) => [`${label(id)} ÷ a`, `${label(id)} ÷ a (paired)`]),
      ],
      ratioRows,
    ));
  }
  const errors = [...samples.values()].flat().reduce((n, s) => n + s.errors, 0);
  writeLine(Deno.stdout, tables.join("\n\n"));
  if (errors > 0) writeLine(Deno.stdout, `\n${errors} errors in load runs (see stderr)`);
  log(`done in ${elapsed.toFixed(0)} s`);

  if (config.write) {
    const cpuModel = /^model name\s*:\s*(.*)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1];
    const nproc = await commandOutput("nproc", []);
    const kernel = await commandOutput("uname", ["-r"]);
    const commit = await commandOutput("git", ["rev-parse", "--short", "HEAD"], REPO_ROOT);
    const srcAtEnd = await srcStatus();
    const command = `deno run -A bench/viewers_cost.ts${args.length ? " " + args.join(" ") : ""}`;
    const treeNote = srcAtStart === "" && srcAtEnd === ""
      ? "src/ clean (as committed)"
      : srcAtStart === srcAtEnd
      ? "src/ had uncommitted changes (unchanged during the run)"
      : "**src/ changed during the run**";
    const report = `# Viewers' cost: dashboard stream, \`foo-proxy top\` and the access log

Generated by \`bench/viewers_cost.ts\`; re-run \`${command}\`.

- Date: ${started.toISOString()}
- Command: \`${command}\` (${config.rounds} interleaved rounds, the order of the configurations
  rotated per round; ${config.settle} s of unmeasured throughput load on each fresh proxy process,
  then ${config.warmup} s warm-up + ${config.seconds} s measured per load run; ${
      elapsed.toFixed(0)
    } s in all; ${reruns} run(s) repeated for other work on the machine)
- Commit: ${commit} (${treeNote})
- Machine: nproc ${nproc} (${cpuModel}), Linux ${kernel}; the upstream, the proxy, the viewers and
  the load generator share these CPUs, and the machine was shared with other work
- Deno ${Deno.version.deno} (V8 ${Deno.version.v8})

Proxy: \`deno run ${START_FLAGS.join(" ")} src/main.ts proxy --listen=127.0.0.1:0
--forward=… --http=127.0.0.1:<free port> --health=off\` (the flags of \`deno task start\`), a fresh
process per configuration and round:

${config.variants.map((v) => `- **${v.title}**: ${DESCRIPTIONS[v.id]}`).join("\n")}

Each fresh proxy process first gets ${config.settle} s of the throughput load, unmeasured:
V8's heap changes regime after its first full GC (seen 6–8 s into that load: then one or two
mark-compacts a second), so a proxy measured before it looks faster than the same proxy later,
and whatever brings its first full GC forward (viewers do) looks like a cost of its own.

Loads (\`foo-proxy bench --json\` in its own process): ${
      config.scenarios.map((s) => `**${s.title}** (\`${s.args.join(" ")}\`)`).join("; ")
    }. Values are medians over the rounds; "(paired)" is the median of the per-round ratios. Proxy
CPU per reply = the proxy's CPU time (user + system, /proc/<pid>/stat) between the load
generator's first and last progress lines, divided by the replies counted in between.
"Other work" is the machine's busy time minus that of every process of the bench.

${tables.join("\n\n")}
${errors > 0 ? `\n${errors} errors in load runs.\n` : ""}`;
    await Deno.writeTextFile(RESULTS, report);
    await commandOutput(Deno.execPath(), ["fmt", RESULTS]);
    log(`wrote ${RESULTS}`);
  }
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
