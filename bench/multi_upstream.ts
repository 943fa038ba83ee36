/**
 * The three-upstream benchmark (issue 12), a suite of the bench harness (`bench/harness/`): three
 * Foo servers (`foo-proxy server --reply hash`, each its own process) behind, in turn, foo-proxy
 * with `--resume`, foo-proxy without it, and HAProxy (`balance leastconn`, `check` on every server,
 * TCP mode). Rounds are interleaved (the target order rotates every round); each target gets fresh
 * servers and a fresh proxy process per run:
 *
 * 1. throughput: `foo-proxy bench --connections 48 --pipeline 8 --replies hash` against servers
 *    that answer after 5 ms (latency-bound), the same against servers that answer at once
 *    (CPU-bound), and through one such server (the control);
 * 2. resilience: the same load against the 5 ms servers, without warm-up, and the busiest server
 *    is SIGKILLed mid-run; the generator's report counts failed client connections and, with no
 *    warm-up, `requests − responses` is the replies lost or wrong.
 *
 * Run: `deno run -A bench/multi_upstream.ts [--rounds 3] [--results FILE | --write-results]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { numberFlag } from "./harness/number_flag.ts";
import { runLoad, type Sample } from "./harness/load.ts";
import { fmt, median, ratio, rotate } from "./harness/numbers.ts";
import { codeMeasured, markdownTable, writeReport } from "./harness/report.ts";
import { startServer, type Upstream } from "./harness/foo_server.ts";
import { HOST, REPO_ROOT } from "./harness/spawn.ts";
import { type RunningTarget, startFlags, startTarget, type TargetSpec } from "./harness/target.ts";

const TRACKED_RESULTS = new URL("./MULTI_UPSTREAM.md", import.meta.url).pathname;
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

/** The three targets as harness data. */
function targetSpecs(config: Config): Record<TargetName, TargetSpec> {
  const flags = [
    "--balance",
    "leastconn",
    "--health-interval",
    `${config.healthMs}ms`,
    "--drain-timeout",
    "1s",
  ];
  const foo = { kind: "foo", checkout: config.checkout, logLevel: "info" } as const;
  return {
    "foo-proxy --resume": { ...foo, key: "foo-proxy --resume", flags: [...flags, "--resume"] },
    "foo-proxy": { ...foo, key: "foo-proxy", flags },
    haproxy: { key: "haproxy", kind: "haproxy", balance: "leastconn", checkMs: config.healthMs },
  };
}

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
  /** The checkout that runs: the snapshot, or the working tree. */
  checkout: string;
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
  --quick                 a smoke run: 1 round, 2 s throughput runs, a 4 s resilience run
  --no-cpu-bound          skip the throughput run against three 0 ms servers
  --no-single             skip the control: the same run through one 0 ms server
  --worktree              run the working tree's src/ (default: a snapshot of HEAD taken
                          with git archive, so edits made meanwhile do not change the code
                          measured halfway through)
  --results FILE          write the report there (default: a new temporary file)
  --write-results         write it to bench/MULTI_UPSTREAM.md`;
}

function parseConfig(args: string[]): Config & { help: boolean } {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      rounds: { type: "string" },
      seconds: { type: "string" },
      warmup: { type: "string", default: "1" },
      "resilience-seconds": { type: "string" },
      "kill-at": { type: "string", default: "2" },
      "delay-ms": { type: "string", default: "5" },
      "health-ms": { type: "string", default: "500" },
      quick: { type: "boolean" },
      "no-cpu-bound": { type: "boolean" },
      "no-single": { type: "boolean" },
      worktree: { type: "boolean" },
      results: { type: "string" },
      "write-results": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  const quick = values.quick === true;
  const config = {
    help: values.help === true,
    rounds: Math.round(numberFlag("rounds", values.rounds, quick ? 1 : 3, 1)),
    seconds: numberFlag("seconds", values.seconds, quick ? 2 : 5, 2),
    warmup: numberFlag("warmup", values.warmup, 1, 0),
    resilienceSeconds: Math.round(
      numberFlag("resilience-seconds", values["resilience-seconds"], quick ? 4 : 6, 2),
    ),
    killAt: Math.round(numberFlag("kill-at", values["kill-at"], 2, 1)),
    delayMs: Math.round(numberFlag("delay-ms", values["delay-ms"], 5, 0)),
    healthMs: Math.round(numberFlag("health-ms", values["health-ms"], 500, 10)),
    cpuBound: !values["no-cpu-bound"],
    single: !values["no-single"],
    worktree: values.worktree === true,
    checkout: REPO_ROOT,
    results: values["write-results"] ? TRACKED_RESULTS : values.results,
    writeResults: values["write-results"] === true,
  };
  if (config.killAt >= config.resilienceSeconds) {
    throw new RangeError("--kill-at must be below --resilience-seconds");
  }
  return config;
}

// ---------------------------------------------------------------------------------------------
// One run: fresh servers, a fresh target

/** Starts fresh servers answering after `delayMs` (`names`: which) and the target, runs `fn`. */
async function withTarget<T>(
  spec: TargetSpec,
  options: { config: Config; delayMs: number; names: readonly string[]; tmpDir: string },
  fn: (target: RunningTarget, servers: Upstream[]) => Promise<T>,
): Promise<T> {
  await using stack = new AsyncDisposableStack();
  const servers = await Promise.all(options.names.map(async (name) => {
    const server = await startServer({
      name,
      checkout: options.config.checkout,
      flags: ["--reply", "hash", "--delay-ms", String(options.delayMs)],
    });
    stack.use(server.child);
    return server;
  }));
  const target = stack.use(await startTarget(spec, { upstreams: servers, tmpDir: options.tmpDir }));
  return await fn(target, servers);
}

// ---------------------------------------------------------------------------------------------
// Readings

/** Per-upstream open connections as the target sees them ("a=16 b=16 c=16"). */
async function upstreamConnections(target: RunningTarget): Promise<string> {
  return formatSpread(await upstreamSpread(target));
}

function formatSpread(spread: Map<string, number> | string): string {
  if (typeof spread === "string") return spread;
  return [...spread].map(([name, n]) => `${name}=${n}`).join(" ");
}

async function upstreamSpread(target: RunningTarget): Promise<Map<string, number> | string> {
  try {
    if (target.httpPort) {
      const res = await fetch(`http://${HOST}:${target.httpPort}/upstreams`);
      const list = await res.json() as { name: string; connections_active: number }[];
      return new Map(list.map((u) => [u.name, u.connections_active]));
    }
    if (target.haproxySocket) {
      const csv = await haproxyCommand(target.haproxySocket, "show stat");
      // pxname,svname,qcur,qmax,scur,…
      return new Map(
        csv.split("\n").filter((l) => l.startsWith("foo_upstream,"))
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

async function targetCounters(target: RunningTarget): Promise<string> {
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
    if (target.haproxySocket) {
      const csv = await haproxyCommand(target.haproxySocket, "show stat");
      return csv.split("\n").filter((l) => l.startsWith("foo_upstream,")).map((l) => l.split(","))
        .map((f) => `${f[1]}:${f[17]}/eresp=${f[14]}/wretr=${f[15]}/wredis=${f[16]}`)
        .join(" ");
    }
  } catch (error) {
    return `? (${(error as Error).message})`;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Runs

interface ThroughputSample {
  repliesPerSec: number;
  cpuCores: number;
  /** CPU of the three servers (cores, summed). */
  serverCores: number;
  cpuUsPerReply: number;
  errors: number;
  spread: string;
}

async function throughputRun(
  target: RunningTarget,
  servers: Upstream[],
  config: Config,
): Promise<ThroughputSample> {
  // The spread is read in the middle of the run.
  const middle = Math.max(1, Math.round(config.seconds / 2));
  let spread: Promise<string> = Promise.resolve("?");
  const s: Sample = await runLoad(target.port, {
    args: LOAD_FLAGS,
    seconds: config.seconds,
    warmup: config.warmup,
    checkout: config.checkout,
    proxyPid: target.child?.pid,
    serverPids: servers.map((u) => u.child.pid),
    onProgress: (line) => {
      if (line.startsWith(`bench: ${middle}s:`)) spread = upstreamConnections(target);
    },
  });
  for (const c of [target.child!, ...servers.map((u) => u.child)]) {
    if (c.exited) writeStderrLine(`multi_upstream: ${c.name} exited: ${c.stderr.tail(300)}`);
  }
  return {
    repliesPerSec: s.bench.responses_per_sec,
    cpuCores: s.proxyCores,
    serverCores: s.serverCores,
    cpuUsPerReply: s.cpuPerReplyUs,
    errors: s.bench.errors_total,
    spread: await spread,
  };
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
  target: RunningTarget,
  servers: Upstream[],
  config: Config,
): Promise<ResilienceSample> {
  let kill:
    | Promise<
      { victim: string; victimConnections: number; before: string; after: string; logFrom: number }
    >
    | undefined;
  const killAt = async () => {
    const spread = await upstreamSpread(target);
    let victim = DEFAULT_VICTIM;
    if (typeof spread !== "string") {
      for (const [name, n] of spread) if (n > spread.get(victim)!) victim = name;
    }
    const logFrom = target.child!.stderr.lines.length;
    servers.find((s) => s.name === victim)!.child.kill("SIGKILL");
    await new Promise((r) =>
      setTimeout(r, Math.min(1500, (config.resilienceSeconds - config.killAt) * 500))
    );
    return {
      victim,
      victimConnections: typeof spread === "string" ? NaN : spread.get(victim)!,
      before: formatSpread(spread),
      after: await upstreamConnections(target),
      logFrom,
    };
  };
  const s = await runLoad(target.port, {
    args: LOAD_FLAGS,
    seconds: config.resilienceSeconds,
    checkout: config.checkout,
    proxyPid: target.child?.pid,
    onProgress: (line) => {
      if (kill === undefined && line.startsWith(`bench: ${config.killAt}s:`)) kill = killAt();
    },
  });
  if (kill === undefined) throw new Error(`The resilience run ended before ${config.killAt} s`);
  const k = await kill;
  // Progress lines: "bench: Ns: R replies/s, …"; compare the seconds after the kill with before.
  const rates = s.progress.map((l) => /^bench: (\d+)s: (\d+) replies/.exec(l))
    .filter((m) => m !== null).map((m) => ({ t: Number(m![1]), r: Number(m![2]) }));
  const before = rates.filter((x) => x.t > 1 && x.t <= config.killAt).map((x) => x.r);
  const after = rates.filter((x) => x.t > config.killAt + 1).map((x) => x.r);
  const json = s.bench;
  const wrong = json.errors.wrong_reply ?? 0;
  return {
    victim: k.victim,
    victimConnections: k.victimConnections,
    failedConnections: json.errors_total - wrong,
    lostOrWrong: json.requests - json.responses,
    wrongReplies: wrong,
    errors: Object.fromEntries(Object.entries(json.errors).filter(([, n]) => n > 0)),
    repliesPerSec: json.responses_per_sec,
    afterKillRatio: median(after) / median(before),
    spreadBefore: k.before,
    spreadAfter: k.after,
    counters: await targetCounters(target),
    log: summariseLog(target.child!.stderr.lines.slice(k.logFrom)),
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
  } µs CPU/reply, servers ${fmt(t.serverCores, 2)} cores, errors ${t.errors}, ` +
    `connections ${t.spread}`;
}

function describeResilience(s: ResilienceSample): string {
  return `kill ${s.victim} (${s.victimConnections} connections): failed connections ` +
    `${s.failedConnections}, lost/wrong ${s.lostOrWrong} (wrong ${s.wrongReplies}), errors ` +
    `${JSON.stringify(s.errors)}, ${fmt(s.repliesPerSec)} replies/s, after/before kill ` +
    `${s.afterKillRatio.toFixed(2)}, connections ${s.spreadBefore} -> ${s.spreadAfter}; ` +
    s.counters;
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
  let config: ReturnType<typeof parseConfig>;
  try {
    config = parseConfig(args);
  } catch (error) {
    if (!(error instanceof RangeError) && !(error instanceof TypeError)) throw error;
    writeStderrLine(`multi_upstream: ${error.message.split("\n")[0]} (see --help)`);
    return 2;
  }
  if (config.help) {
    writeStdoutLine(usage());
    return 0;
  }
  const version = await new Deno.Command("haproxy", { args: ["-v"], stdout: "piped" }).output()
    .then((o) => o.success ? new TextDecoder().decode(o.stdout).split("\n")[0] : "", () => "");
  if (!version) {
    writeStderrLine("multi_upstream: haproxy is not installed (scripts/setup_haproxy.sh)");
    return 1;
  }
  const started = new Date();
  const tmpDir = await Deno.makeTempDir({ prefix: "foo_multi_" });
  const code = await codeMeasured(REPO_ROOT);
  if (!config.worktree) {
    // A clean copy of HEAD: others may edit src/ while this runs, and every target restarts.
    const snapshot = `${tmpDir}/head`;
    await Deno.mkdir(snapshot);
    const archive = await new Deno.Command("sh", {
      args: ["-c", `git -C "$1" archive HEAD | tar -x -C "$2"`, "sh", REPO_ROOT, snapshot],
    }).output();
    if (!archive.success) throw new Error("git archive HEAD failed");
    config.checkout = `${snapshot}/`;
  }
  const specs = targetSpecs(config);
  const results = new Map<TargetName, TargetResults>(
    TARGETS.map((t) => [t, { slow: [], fast: [], single: [], resilience: [] }]),
  );
  let haproxyCfg = "";
  try {
    for (let round = 0; round < config.rounds; round++) {
      for (const name of rotate(TARGETS, round)) {
        const r = results.get(name)!;
        const run = { config, tmpDir, names: UPSTREAM_NAMES };
        // Servers answering after --delay-ms: throughput, then the kill.
        await withTarget(specs[name], { ...run, delayMs: config.delayMs }, async (t, servers) => {
          if (t.haproxyConfig) haproxyCfg = t.haproxyConfig;
          const s = await throughputRun(t, servers, config);
          r.slow.push(s);
          writeStderrLine(
            `round ${round + 1} ${name} ${config.delayMs} ms servers: ${describeThroughput(s)}`,
          );
          const k = await resilienceRun(t, servers, config);
          r.resilience.push(k);
          writeStderrLine(`round ${round + 1} ${name}: ${describeResilience(k)}`);
          for (const l of k.log) writeStderrLine(`    ${name}: ${l}`);
        });
        // Servers answering at once: CPU-bound throughput, three upstreams then one.
        const cpuBoundRuns = [
          { on: config.cpuBound, list: r.fast, names: UPSTREAM_NAMES, what: "0 ms servers" },
          { on: config.single, list: r.single, names: ["a"], what: "one 0 ms server" },
        ];
        for (const c of cpuBoundRuns.filter((c) => c.on)) {
          const s = await withTarget(
            specs[name],
            { ...run, names: c.names, delayMs: 0 },
            (t, servers) => throughputRun(t, servers, config),
          );
          c.list.push(s);
          writeStderrLine(`round ${round + 1} ${name} ${c.what}: ${describeThroughput(s)}`);
        }
      }
    }
  } finally {
    await Deno.remove(tmpDir, { recursive: true }).catch(() => {});
  }
  const elapsedS = (Date.now() - started.getTime()) / 1000;
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
  const report = renderReport({
    config,
    results,
    haproxyCfg,
    facts: {
      date: started.toISOString(),
      commit: code,
      dirty: [],
      nproc: String(navigator.hardwareConcurrency),
      cpuModel: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown",
      kernel: Deno.osRelease(),
      deno: `${Deno.version.deno} (V8 ${Deno.version.v8})`,
      haproxy: version,
      elapsedS,
      command: `deno run -A bench/multi_upstream.ts ${args.join(" ")}`.trim(),
      flags: await startFlags(config.checkout),
    },
  });
  writeStdoutLine(report);
  const path = config.results ??
    await Deno.makeTempFile({ prefix: "multi_upstream_", suffix: ".md" });
  await writeReport([path], report, `${REPO_ROOT}deno.json`);
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

/** The Markdown report of a run. */
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
      label: `${id} ${what}: the servers' CPU (cores, summed)`,
      pick: (r) => pick(r).map((s) => s.serverCores),
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
  const failTable = markdownTable(
    ["per round (one of three upstreams SIGKILLed)", ...TARGETS],
    failRows.map(([label, pick]) => [label, ...TARGETS.map((t) => perRound(t, pick))]),
    1,
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

Generated by \`bench/multi_upstream.ts\` (issue 12, on the bench harness); do not edit by hand, re-run
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

CPU: utime + stime (/proc/PID/stat, every thread) between the load generator's first and last
progress lines, divided by that window; per reply divides the CPU time by the replies counted in
that window.

## Results (medians)

${
    markdownTable(
      ["metric", ...TARGETS, "foo-proxy --resume ÷ HAProxy", "foo-proxy ÷ HAProxy"],
      rows,
      1,
    )
  }

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

if (import.meta.main) {
  Deno.exit(
    await main(Deno.args).catch((error) => {
      writeStderrLine(`multi_upstream: ${error instanceof Error ? error.message : error}`);
      return 1;
    }),
  );
}
