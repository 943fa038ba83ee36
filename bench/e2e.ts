/**
 * The end-to-end benchmark (`deno task bench:e2e`), a suite of the bench harness
 * (`bench/harness/`): against one upstream (our Foo server in its own process) it measures, side
 * by side in interleaved rounds, direct (no proxy), foo-proxy (started like `deno task start`;
 * one column per `--workers` count, `--modes` entry or `--target`, each with its own extra proxy
 * flags), a watched foo-proxy (`--viewers`, `--access-log`) and HAProxy in TCP mode (when
 * installed; `scripts/setup_haproxy.sh`). The table gives medians and ratios; it is printed and
 * written, with the machine, the date and the commit, to `--results FILE` (else a new temporary
 * file); the tracked `bench/RESULTS.md` changes only with `--write-results`.
 *
 * Scenarios: 1 throughput (64 connections x 16 pipelined), 2 latency (16 connections, 5 000
 * REQ/s open loop), 3 churn (10 REQs per connection, then a new one), 4 idle memory (RSS growth
 * per proxied idle connection), 5 lock-step (64 connections, 1 in flight), 6 lock-step at 256
 * clients.
 *
 * @module
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { numberFlag } from "./harness/number_flag.ts";
import { type ComparisonResults, type LoadScenario, runComparison } from "./harness/comparison.ts";
import { CHURN_LOAD, closedLoop, type Sample, THROUGHPUT_LOAD } from "./harness/load.ts";
import { fmt, median, ratio } from "./harness/numbers.ts";
import { pinning, type WorkerCount } from "./harness/pinning.ts";
import {
  comparisonTable,
  idleRows,
  loadRows,
  machineFacts,
  type RatioPair,
  ratiosTo,
  rawRounds,
  summaryTable,
  type ValueRow,
  writeReport,
} from "./harness/report.ts";
import { fooVariants } from "./harness/target_list.ts";
import { haproxyConfig } from "./harness/haproxy_config.ts";
import { REPO_ROOT } from "./harness/spawn.ts";
import type { TargetSpec } from "./harness/target.ts";

const RESULTS = new URL("./RESULTS.md", import.meta.url).pathname;
const DENO_JSON = new URL("../deno.json", import.meta.url).pathname;

/** The load scenarios, by the number `--only` names them with (4, idle memory, is apart). */
export const E2E_LOADS: ReadonlyMap<number, LoadScenario> = new Map(
  [
    [1, {
      id: "throughput",
      label: "1 throughput",
      title: "64 connections x 16 pipelined, 32-byte payloads",
      args: THROUGHPUT_LOAD,
      metrics: ["replies", "proxyCores", "serverCores", "cpuPerReply"],
    }],
    [2, {
      id: "latency",
      label: "2 latency",
      title: "16 connections, 1 in flight, 5 000 REQ/s total (open loop)",
      args: [...closedLoop(16, 1), "--rate", "5000"],
      metrics: ["p50", "p99", "p999"],
    }],
    [3, {
      id: "churn",
      label: "3 churn",
      title: "16 connections at once, 10 REQs each (1 in flight), then reconnect",
      args: CHURN_LOAD,
      metrics: ["connections", "cpuPerConnection"],
    }],
    [5, {
      id: "lockstep",
      label: "5 lock-step",
      title: "64 connections, 1 REQ in flight each (closed loop)",
      args: closedLoop(64, 1),
      metrics: ["replies", "proxyCores", "cpuPerReply"],
    }],
    [6, {
      id: "lockstep256",
      label: "6 lock-step 256",
      title: "256 connections, 1 REQ in flight each (closed loop)",
      args: closedLoop(256, 1),
      metrics: ["replies", "proxyCores", "cpuPerReply"],
    }],
  ] satisfies [number, LoadScenario][],
);

function usage(): string {
  return `Usage: deno task bench:e2e [flags]

  --rounds N         interleaved rounds per scenario        (default 3)
  --seconds S        measured seconds per load run, at least 2 (default 5; alias --duration)
  --warmup S         unmeasured seconds before each run     (default 1)
  --settle S         unmeasured seconds of scenario 1's load on each proxy
                     once it has started (V8's heap reaches its steady state)
                                                              (default 10)
  --quick            a smoke run: 1 round, 2 s runs, 0.5 s warm-up, 2 s settle, 500 idle
                     connections (flags given as well win)
  --idle N           idle connections for scenario 4        (default 5000)
  --only LIST        scenarios to run, e.g. 1,2 or 4        (default 1,2,3,4,5,6)
  --no-haproxy       skip HAProxy even when installed
  --workers LIST     one foo-proxy target per --workers value, e.g. 1,2 or 1,2,auto
  --modes LIST       one foo-proxy target per connection mode, e.g. 1:1,pool=64,mux=2
                     (1:1: no extra flag; NAME=VALUE: --NAME VALUE; NAME: --NAME)
  --target K=FLAGS   one foo-proxy target named K with extra proxy flags, e.g.
                     --target 'mux2=--mux 2' (repeatable)
                     (none of these three: one foo-proxy, --workers not passed: auto)
  --taskset          pin each proxy with taskset -c to as many cores as it has workers
                     (HAProxy: as many as the most workers), and the load generator and
                     the upstream to the cores left (all cores when none are left)
  --viewers N        add a foo-proxy (the first target's flags) watched by N dashboard
                     streams and a \`top\` (scenarios 1-3, 5, 6)   (default 0: none)
  --access-log MODE  that watched foo-proxy's access log: off, text or json, to a file
                                                              (default off)
  --results FILE     write the report to FILE               (default: a new temporary file)
  --write-results    also update the tracked bench/RESULTS.md (otherwise it is left alone)
  --no-write         print the tables only, write no report
  --deno-flags=F     extra deno flags for foo-proxy after those of \`deno task start\``;
}

/** The parsed command line of bench:e2e. */
export interface E2eConfig {
  rounds: number;
  seconds: number;
  warmup: number;
  settle: number;
  idle: number;
  only: Set<number>;
  haproxy: boolean;
  viewers: number;
  accessLog: "off" | "text" | "json";
  write: boolean;
  results: string | undefined;
  writeResults: boolean;
  denoFlags: string[];
  /** One entry per foo-proxy column: its key, extra flags and (from --workers) worker count. */
  variants: { key: string; flags: string[]; workers?: WorkerCount }[];
  taskset: boolean;
}

/**
 * Parses bench:e2e's flags.
 *
 * @throws {RangeError} on a bad value; {TypeError} on an unknown flag.
 */
export function parseE2eConfig(args: string[]): E2eConfig & { help: boolean } {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      rounds: { type: "string" },
      seconds: { type: "string" },
      duration: { type: "string" },
      warmup: { type: "string" },
      settle: { type: "string" },
      quick: { type: "boolean" },
      idle: { type: "string" },
      only: { type: "string", default: "1,2,3,4,5,6" },
      "no-haproxy": { type: "boolean" },
      workers: { type: "string" },
      modes: { type: "string" },
      target: { type: "string", multiple: true },
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
  if (values["no-write"] && (values.results !== undefined || values["write-results"])) {
    throw new RangeError("--no-write cannot be combined with --results or --write-results");
  }
  if (values.results === "") throw new RangeError("Invalid --results: expected a file path");
  if (values.seconds !== undefined && values.duration !== undefined) {
    throw new RangeError("--seconds and --duration are the same flag: give one");
  }
  const quick = values.quick === true;
  const accessLog = values["access-log"];
  if (accessLog !== "off" && accessLog !== "text" && accessLog !== "json") {
    throw new RangeError(`Invalid --access-log "${accessLog}": expected off, text or json`);
  }
  const only = new Set(values.only.split(",").map((s) => Math.round(numberFlag("only", s, 0, 1))));
  for (const n of only) {
    if (n !== 4 && !E2E_LOADS.has(n)) {
      throw new RangeError(`Invalid --only "${values.only}": scenarios are 1 to 6`);
    }
  }
  return {
    help: values.help === true,
    rounds: Math.round(numberFlag("rounds", values.rounds, quick ? 1 : 3, 1)),
    seconds: numberFlag("seconds", values.seconds ?? values.duration, quick ? 2 : 5, 2),
    warmup: numberFlag("warmup", values.warmup, quick ? 0.5 : 1, 0),
    settle: numberFlag("settle", values.settle, quick ? 2 : 10, 0),
    idle: Math.round(numberFlag("idle", values.idle, quick ? 500 : 5000, 1)),
    only,
    haproxy: !values["no-haproxy"],
    viewers: Math.round(numberFlag("viewers", values.viewers, 0, 0)),
    accessLog,
    write: !values["no-write"],
    results: values.results === undefined ? undefined : resolve(values.results),
    writeResults: values["write-results"] === true,
    denoFlags: values["deno-flags"].split(/\s+/).filter((f) => f !== ""),
    variants: fooVariants({
      workers: values.workers,
      modes: values.modes,
      targets: values.target,
    }),
    taskset: values.taskset === true,
  };
}

/** The columns of a run: direct, each foo-proxy variant, the watched one, HAProxy. */
export function e2eTargets(
  config: E2eConfig,
  options: { haproxy: boolean; cpus: number; watched: boolean },
): TargetSpec[] {
  const common = {
    kind: "foo" as const,
    denoFlags: config.denoFlags,
    logLevel: "warning",
  };
  const foo: TargetSpec[] = config.variants.map((v) => ({
    ...common,
    key: v.key,
    flags: ["--max-connections", "100000", ...v.flags],
    workers: v.workers,
    pin: config.taskset ? pinning(v.workers ?? "auto", options.cpus) : undefined,
  }));
  const widest = Math.max(
    ...foo.map((t) => t.workers === undefined || t.workers === "auto" ? options.cpus : t.workers),
  );
  return [
    { key: "direct", kind: "direct" },
    ...foo,
    ...(options.watched
      ? [{
        ...foo[0],
        key: "watched",
        viewers: config.viewers,
        accessLog: config.accessLog,
      }]
      : []),
    ...(options.haproxy
      ? [{
        key: "haproxy",
        kind: "haproxy" as const,
        title: "HAProxy",
        pin: config.taskset ? pinning(Math.min(widest, options.cpus), options.cpus) : undefined,
      }]
      : []),
  ];
}

/**
 * The ratio columns: every foo-proxy ÷ HAProxy; with several `--workers` counts, the others ÷ the
 * first; the watched one ÷ the first foo-proxy; every unwatched foo-proxy ÷ direct.
 */
export function e2eRatios(targets: readonly TargetSpec[]): RatioPair[] {
  const foo = targets.filter((t) => t.kind === "foo");
  const keys = foo.map((t) => t.key);
  const unwatched = keys.filter((k) => k !== "watched");
  const workers = foo.filter((t) => t.workers !== undefined && t.key !== "watched");
  const has = (key: string) => targets.some((t) => t.key === key);
  return [
    ...(has("haproxy") ? ratiosTo("haproxy", keys) : []),
    ...(workers.length > 1 ? ratiosTo(workers[0].key, workers.map((t) => t.key)) : []),
    ...(has("watched") ? [["watched", keys[0]] as const] : []),
    ...ratiosTo("direct", unwatched),
  ];
}

async function main(args: string[]): Promise<number> {
  let config: ReturnType<typeof parseE2eConfig>;
  try {
    config = parseE2eConfig(args);
  } catch (error) {
    if (!(error instanceof RangeError) && !(error instanceof TypeError)) throw error;
    writeStderrLine(`e2e: ${error.message.split("\n")[0]} (see --help)`);
    return 2;
  }
  if (config.help) {
    writeStdoutLine(usage());
    return 0;
  }
  const fdNeeded = 2 * config.idle + 1000;
  const fdLimit = Math.max(65536, fdNeeded);
  const childFdLimit = Number(
    new TextDecoder().decode(
      (await new Deno.Command("sh", {
        args: ["-c", `ulimit -n ${fdLimit} 2>/dev/null; ulimit -n`],
        stdout: "piped",
      }).output()).stdout,
    ),
  );
  if (config.only.has(4) && childFdLimit < fdNeeded) {
    config.idle = Math.max(100, Math.floor((childFdLimit - 1000) / 2));
    writeStderrLine(`e2e: the fd limit is ${childFdLimit}: scenario 4 holds ${config.idle}`);
  }
  const haproxyInstalled = config.haproxy &&
    (await new Deno.Command("haproxy", { args: ["-v"], stdout: "null", stderr: "null" })
      .output().then((o) => o.success, () => false));
  if (config.haproxy && !haproxyInstalled) {
    writeStderrLine("e2e: haproxy is not installed (scripts/setup_haproxy.sh): skipping it");
  }
  if (config.taskset) {
    const ok = await new Deno.Command("taskset", { args: ["-V"], stdout: "null" }).output()
      .then((o) => o.success, () => false);
    if (!ok) {
      writeStderrLine("e2e: --taskset needs taskset (util-linux), which is not installed");
      return 2;
    }
  }
  const loads = [...E2E_LOADS].filter(([n]) => config.only.has(n)).map(([, s]) => s);
  const watched = (config.viewers > 0 || config.accessLog !== "off") && loads.length > 0;
  const targets = e2eTargets(config, {
    haproxy: haproxyInstalled,
    cpus: navigator.hardwareConcurrency,
    watched,
  });
  let results: ComparisonResults;
  try {
    results = await runComparison({
      targets,
      loads,
      // Idle memory compares the proxies with HAProxy only: watched is for traffic.
      idle: config.only.has(4)
        ? { connections: config.idle, targets: (t) => t.kind !== "direct" && t.key !== "watched" }
        : undefined,
    }, {
      rounds: config.rounds,
      seconds: config.seconds,
      warmup: config.warmup,
      settle: config.settle,
      taskset: config.taskset,
      fdLimit,
      log: (line) => writeStderrLine(`e2e: ${line}`),
    });
  } catch (error) {
    writeStderrLine(`e2e: ${error instanceof Error ? error.message : error}`);
    return 1;
  }
  const title = (t: TargetSpec): string => {
    const n = results.workers.get(t.key);
    const ran = n === undefined ? "" : ` (${n} worker${n === 1 ? "" : "s"})`;
    const pin = t.pin ? ` [cores ${t.pin.proxy}]` : "";
    if (t.kind === "direct") return "direct";
    if (t.kind === "haproxy") return `HAProxy${pin}`;
    if (t.key === "watched") {
      return `watched ${config.variants[0].key}${
        config.viewers > 0 ? ` + ${config.viewers} viewers + top` : ""
      }${config.accessLog !== "off" ? ` + access log (${config.accessLog})` : ""}`;
    }
    return `${t.key === "foo-proxy" ? t.key : `foo-proxy ${t.key}`}${ran}${pin}`;
  };
  const rows: ValueRow[] = [
    ...loads.flatMap((s) => [
      ...loadRows(results, s, targets),
      ...(s.id === "latency" ? addedOverDirect(results, targets) : []),
    ]),
    ...idleRows(results, "4 idle memory", config.idle),
  ];
  const table = comparisonTable(rows, { targets, ratios: e2eRatios(targets), title });
  const find = (scenario: string, metric: string) =>
    rows.find((r) => r.scenario.endsWith(scenario) && r.metric.startsWith(metric));
  const summary = summaryTable({
    targets: targets.filter((t) => t.kind !== "direct"),
    baseline: haproxyInstalled ? "haproxy" : undefined,
    title,
    columns: [
      { heading: "replies/s (1)", row: find("throughput", "replies/s") },
      { heading: "CPU/reply µs (1)", row: find("throughput", "proxy CPU per reply") },
      { heading: "CPU/reply µs (6: 256 lock-step)", row: find("lock-step 256", "proxy CPU per") },
      { heading: "churn conn/s (3)", row: find("churn", "connections/s") },
      { heading: "idle KiB/client (4)", row: find("idle memory", "RSS growth") },
    ],
  });
  const checks = workersChecks(results, targets);
  const errors = [...results.loads.values()].flat().reduce((n, s) => n + s.bench.errors_total, 0);
  writeStdoutLine(table);
  if (summary) writeStdoutLine(`\n${summary}`);
  if (checks.length > 0) writeStdoutLine(`\n${checks.map((c) => `- ${c}`).join("\n")}`);
  for (const [key, w] of results.watching) {
    writeStdoutLine(
      `\n${key}: ${fmt(w.events / Math.max(1, config.viewers) / Math.max(1, w.seconds), 2)} ` +
        `events per stream per second, top drew ${fmt(w.frames / Math.max(1, w.seconds), 2)} ` +
        `frames per second over its load runs`,
    );
  }
  for (const [key, n] of results.accessLogLines) {
    writeStdoutLine(`${key}: ${fmt(n)} access-log lines (its settling load included)`);
  }
  if (errors > 0) writeStdoutLine(`\n${errors} errors in load runs (see stderr)`);
  if (!config.write) return errors > 0 ? 1 : 0;
  const command = `deno task bench:e2e ${args.join(" ")}`.trim();
  const md = `# End-to-end benchmark results

Generated by \`bench/e2e.ts\` (the bench harness) — do not edit by hand; re-run \`${command}\`.

${await machineFacts({ started: results.started, command, checkout: REPO_ROOT })}
- Rounds: ${config.rounds} interleaved, ${config.warmup} s warm-up + ${config.seconds} s measured per load run, after ${config.settle} s of unmeasured throughput load on each proxy once it started; ${
    fmt(results.elapsedS)
  } s in all
- Pinning: ${
    config.taskset
      ? targets.filter((t) => t.pin).map((t) =>
        `${t.key} on ${t.pin!.proxy}, load and upstream on ${t.pin!.rest ?? "every core"}`
      ).join("; ")
      : "none: every process may run on every core"
  }

Every process — the Foo server (upstream), the proxy under test and the load generator
(\`foo-proxy bench --json\`) — runs on the same machine, so they share its CPUs. Values are
medians over the rounds; ratios are of those medians (for rates higher is better; for latency,
CPU and memory lower is better). Proxy CPU per reply is the proxy's CPU time (user + system,
every thread, /proc/<pid>/stat) between the load generator's first and last progress lines,
divided by the replies counted in between; per connection divides the CPU rate by connections/s.

${table}

${summary}
${checks.length > 0 ? `\n${checks.map((c) => `- ${c}`).join("\n")}\n` : ""}
Targets: ${
    targets.map((t) =>
      `**${title(t)}**${t.kind === "foo" ? ` (\`${(t.flags ?? []).join(" ")}\`)` : ""}`
    ).join(", ")
  }. foo-proxy runs as
\`deno run <the flags of deno task start> src/main.ts proxy --listen … --forward … --log-level
warning --http … --health … --max-connections 100000\` plus each target's flags${
    config.denoFlags.length > 0 ? ` (and ${config.denoFlags.join(" ")} from --deno-flags)` : ""
  }. HAProxy runs the generated configuration below.

\`\`\`
${haproxyConfig(0, [{ name: "a", port: 0 }]).trim()}
\`\`\`

Scenarios (\`foo-proxy bench\` flags):

${loads.map((s) => `- ${s.label}: ${s.title}: \`${s.args.join(" ")}\``).join("\n")}
- 4 idle memory: open ${
    fmt(config.idle)
  } connections through a fresh proxy (one REQ/ACK each, so both sockets are bridged) and hold
  them; the figure is the growth of its VmRSS divided by the connection count.

## Raw rounds

${rawRounds(results)}
`;
  const report = config.results ??
    await Deno.makeTempFile({ prefix: "foo_proxy_e2e_", suffix: ".md" });
  await writeReport([report, ...(config.writeResults ? [RESULTS] : [])], md, DENO_JSON);
  writeStdoutLine(`\ne2e: wrote the report to ${report}`);
  writeStdoutLine(
    config.writeResults
      ? `e2e: updated ${RESULTS}`
      : `e2e: ${RESULTS} left alone (--write-results updates it)`,
  );
  return errors > 0 ? 1 : 0;
}

/**
 * p50 and p99 added over direct, per round (rounds are interleaved, so pairing a target's run with
 * direct's of the same round cancels drift), then the median.
 */
function addedOverDirect(results: ComparisonResults, targets: readonly TargetSpec[]): ValueRow[] {
  const direct = results.loads.get("latency/direct") ?? [];
  const row = (metric: string, pick: (s: Sample) => number): ValueRow => ({
    scenario: "2 latency",
    metric,
    digits: 3,
    noRatio: true,
    values: Object.fromEntries(
      targets.filter((t) => t.kind !== "direct").map((t) => [
        t.key,
        median(
          (results.loads.get(`latency/${t.key}`) ?? []).map((s, i) =>
            direct[i] ? pick(s) - pick(direct[i]) : NaN
          ),
        ),
      ]),
    ),
  });
  return [
    row("p50 added over direct (ms)", (s) => s.bench.latency_p50_ms),
    row("p99 added over direct (ms)", (s) => s.bench.latency_p99_ms),
  ];
}

/** The workers issue's targets, where this run measured what they compare. */
function workersChecks(results: ComparisonResults, targets: readonly TargetSpec[]): string[] {
  const med = (key: string, pick: (s: Sample) => number) =>
    median((results.loads.get(`throughput/${key}`) ?? []).map(pick));
  const one = targets.find((t) => t.workers === 1 && t.key !== "watched");
  const checks: string[] = [];
  if (!one) return checks;
  // Only targets that differ by their worker count alone (`--workers LIST`), not other modes.
  const onlyWorkers = (t: TargetSpec) =>
    t.workers !== undefined && t.flags?.filter((f) => f.startsWith("--")).length === 2;
  if (!onlyWorkers(one)) return checks;
  for (
    const t of targets.filter((t) => onlyWorkers(t) && t !== one && t.key !== "watched")
  ) {
    const r = med(t.key, (s) => s.cpuPerReplyUs) / med(one.key, (s) => s.cpuPerReplyUs);
    checks.push(
      `proxy CPU per reply (scenario 1), ${t.key} ÷ ${one.key}: ${
        ratio(r, 1)
      } (target: at most 1.10×; ${r <= 1.1 ? "met" : "not met"})`,
    );
    if (targets.some((h) => h.key === "haproxy")) {
      const q = med(t.key, (s) => s.bench.responses_per_sec) /
        med("haproxy", (s) => s.bench.responses_per_sec);
      checks.push(
        `replies/s (scenario 1), ${t.key} ÷ HAProxy: ${ratio(q, 1)} (target: at least 1.00×; ${
          q >= 1 ? "met" : "not met"
        })`,
      );
    }
  }
  return checks;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
