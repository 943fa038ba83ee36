/**
 * A comparison, as data ({@linkcode Comparison}: targets, loads, idle memory), and the one loop
 * that runs it: start the upstream and the targets, settle each proxy, then interleaved rounds
 * whose target order rotates every round, measuring every load run the same way; idle memory on
 * a fresh process per target and round. Every process is stopped whatever fails.
 *
 * @module
 */
import { type IdleSample, measureIdle } from "./idle.ts";
import { runLoad, type Sample, settle } from "./load.ts";
import type { MetricId } from "./report.ts";
import { rotate } from "./numbers.ts";
import { pinProcess } from "./pinning.ts";
import { type ServerOptions, startServer, type Upstream } from "./foo_server.ts";
import { REPO_ROOT } from "./spawn.ts";
import { type RunningTarget, startTarget, type TargetSpec } from "./target.ts";

/** A load scenario: one `foo-proxy bench` invocation and the rows it fills. */
export interface LoadScenario {
  /** Its key in samples, e.g. `throughput`. */
  id: string;
  /** Its label in the table's first column, e.g. `1 throughput`. */
  label: string;
  /** One line saying what it is, for the report. */
  title: string;
  /** `foo-proxy bench` flags. */
  args: readonly string[];
  /** The rows it shows. */
  metrics: readonly MetricId[];
  /** Which targets it runs on. @default all */
  targets?: (spec: TargetSpec) => boolean;
}

/** Idle memory: `connections` held through a fresh process of each proxy target. */
export interface IdleScenario {
  /** Connections held. */
  connections: number;
  /** Rounds of it. @default the run's rounds */
  rounds?: number;
  /** Which targets it runs on. @default every target but direct */
  targets?: (spec: TargetSpec) => boolean;
}

/** What to compare. */
export interface Comparison {
  /** The columns, in order. */
  targets: readonly TargetSpec[];
  /** The load scenarios. @default [] */
  loads?: readonly LoadScenario[];
  /** Idle memory; unset: not measured. */
  idle?: IdleScenario;
  /** The Foo servers behind the targets. @default one, `foo-proxy server` as it starts */
  upstreams?: readonly ServerOptions[];
  /**
   * A fresh process per target and round (settled, then every load run), instead of one process
   * per target for the whole run. @default false
   */
  fresh?: boolean;
}

/** How to run it. */
export interface RunOptions {
  /** Interleaved rounds. */
  rounds: number;
  /** Measured seconds per load run (at least 2). */
  seconds: number;
  /** Unmeasured seconds before each load run. @default 1 */
  warmup?: number;
  /** Unmeasured seconds of the throughput load on each proxy once started. @default 0 */
  settle?: number;
  /** Pin processes with each target's `pin`. @default false */
  taskset?: boolean;
  /** fd limit of every process. @default 65536 */
  fdLimit?: number;
  /** The checkout whose Foo server and load generator are used. @default this checkout */
  checkout?: string;
  /**
   * Run a load run again (at most twice) when the rest of the machine used more than this many
   * cores during it, keeping the quietest. @default Infinity (never)
   */
  maxOtherCores?: number;
  /** At most this many such repeats in the whole run. @default 6 */
  maxReruns?: number;
  /** Progress lines (to stderr, say). */
  log: (line: string) => void;
}

/** What a run measured. */
export interface ComparisonResults {
  /** Load runs by `scenario/target`, in round order. */
  loads: Map<string, Sample[]>;
  /** Idle measurements by target key, in round order. */
  idle: Map<string, IdleSample[]>;
  /** Data-plane workers each foo target ran, from its `/stats`. */
  workers: Map<string, number>;
  /** What the watchers of each watched target did over its load runs. */
  watching: Map<string, { events: number; frames: number; seconds: number }>;
  /** Access-log lines each target with an access log wrote. */
  accessLogLines: Map<string, number>;
  /** The generated HAProxy configuration, when HAProxy ran. */
  haproxyConfig?: string;
  /** Load runs repeated for other work on the machine. */
  reruns: number;
  /** When the run started. */
  started: Date;
  /** Seconds it took. */
  elapsedS: number;
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  map.set(key, [...(map.get(key) ?? []), value]);
}

/** Runs `comparison`; throws (after stopping everything) when a target fails to start or run. */
export async function runComparison(
  comparison: Comparison,
  options: RunOptions,
): Promise<ComparisonResults> {
  const checkout = options.checkout ?? REPO_ROOT;
  const results: ComparisonResults = {
    loads: new Map(),
    idle: new Map(),
    workers: new Map(),
    watching: new Map(),
    accessLogLines: new Map(),
    reruns: 0,
    started: new Date(),
    elapsedS: 0,
  };
  const tmpDir = await Deno.makeTempDir({ prefix: "foo_bench_" });
  try {
    await using stack = new AsyncDisposableStack();
    const upstreams: Upstream[] = [];
    for (const [i, u] of (comparison.upstreams ?? [{}]).entries()) {
      const server = await startServer({
        name: String.fromCharCode(97 + i),
        checkout,
        fdLimit: options.fdLimit,
        ...u,
      });
      stack.use(server.child);
      upstreams.push(server);
    }
    const ctx = { upstreams, tmpDir, fdLimit: options.fdLimit, taskset: options.taskset };
    const start = async (spec: TargetSpec) => {
      const t = await startTarget(spec, ctx);
      if (t.workers !== undefined) results.workers.set(spec.key, t.workers);
      if (t.haproxyConfig) results.haproxyConfig = t.haproxyConfig;
      return t;
    };
    const settled = async (t: RunningTarget) => {
      if (t.spec.kind !== "direct") {
        await settle(t.port, options.settle ?? 0, { checkout, args: t.spec.settleArgs });
      }
      return t;
    };
    const measure = (t: RunningTarget, scenario: LoadScenario, round: number) =>
      measureRun(t, scenario, round, { options, results, upstreams, checkout });
    const loads = comparison.loads ?? [];
    const runsOn = (s: LoadScenario) => comparison.targets.filter((t) => s.targets?.(t) ?? true);
    const loadTargets = comparison.targets.filter((t) => loads.some((s) => runsOn(s).includes(t)));
    if (loads.length > 0 && comparison.fresh) {
      for (let round = 1; round <= options.rounds; round++) {
        for (const spec of rotate(loadTargets, round - 1)) {
          await using t = await settled(await start(spec));
          for (const scenario of loads.filter((s) => runsOn(s).includes(spec))) {
            await measure(t, scenario, round);
          }
          await countAccessLog(t, results);
        }
      }
    } else if (loads.length > 0) {
      await using running = new AsyncDisposableStack();
      const byKey = new Map<string, RunningTarget>();
      for (const spec of loadTargets) byKey.set(spec.key, running.use(await start(spec)));
      // Every proxy (HAProxy too, for the same treatment) takes the settling load.
      for (const t of byKey.values()) await settled(t);
      for (let round = 1; round <= options.rounds; round++) {
        for (const scenario of loads) {
          for (const spec of rotate(runsOn(scenario), round - 1)) {
            await measure(byKey.get(spec.key)!, scenario, round);
          }
        }
      }
      for (const t of byKey.values()) await countAccessLog(t, results);
    }
    if (comparison.idle) {
      const pick = comparison.idle.targets ?? ((t: TargetSpec) => t.kind !== "direct");
      const specs = comparison.targets.filter(pick);
      for (let round = 1; round <= (comparison.idle.rounds ?? options.rounds); round++) {
        for (const spec of rotate(specs, round - 1)) {
          // A fresh process each time, so earlier garbage does not blur the growth.
          await using t = await start(spec);
          const s = await measureIdle(t.port, t.child!.pid, comparison.idle.connections);
          push(results.idle, spec.key, s);
          options.log(
            `round ${round} idle ${spec.key.padEnd(12)} ${s.kibPerConnection.toFixed(2)} KiB/conn` +
              `, marginal ${
                s.marginalKib.toFixed(2)
              } (RSS ${s.beforeKib} -> ${s.halfKib} -> ${s.afterKib} KiB)`,
          );
        }
      }
    }
  } finally {
    await Deno.remove(tmpDir, { recursive: true }).catch(() => {});
  }
  results.elapsedS = (Date.now() - results.started.getTime()) / 1000;
  return results;
}

/** Stops `t` (so its last buffered lines are written) and counts its access-log lines. */
async function countAccessLog(t: RunningTarget, results: ComparisonResults): Promise<void> {
  if (!t.accessLogFile) return;
  await t.child?.stop();
  const text = await Deno.readTextFile(t.accessLogFile).catch(() => "");
  results.accessLogLines.set(
    t.spec.key,
    (results.accessLogLines.get(t.spec.key) ?? 0) + text.split("\n").length - 1,
  );
}

interface RunContext {
  options: RunOptions;
  results: ComparisonResults;
  upstreams: readonly Upstream[];
  checkout: string;
}

async function measureRun(
  t: RunningTarget,
  scenario: LoadScenario,
  round: number,
  { options, results, upstreams, checkout }: RunContext,
): Promise<void> {
  if (t.child?.exited) {
    throw new Error(`${t.child.name} exited during the run: ${t.child.stderr.tail()}`);
  }
  const serverPids = upstreams.map((u) => u.child.pid);
  const rest = options.taskset ? t.spec.pin?.rest : undefined;
  const once = async () => {
    if (options.taskset) { for (const pid of serverPids) await pinProcess(pid, rest); }
    const seen = { events: t.watchers?.events ?? 0, frames: t.watchers?.frames ?? 0 };
    const t0 = performance.now();
    const load = () =>
      runLoad(t.port, {
        args: scenario.args,
        seconds: options.seconds,
        warmup: options.warmup ?? 1,
        checkout,
        proxyPid: t.child?.pid,
        serverPids,
        helperPids: t.helperPids,
        cpus: rest,
      });
    // Seen on a loaded machine: the load generator died. Once more, unless the target is gone.
    const s = await load().catch((error) => {
      if (t.child?.exited) throw error;
      options.log(`${t.spec.key} ${scenario.id}: ${error.message}; running it again`);
      return load();
    });
    if (t.watchers) {
      const w = results.watching.get(t.spec.key) ?? { events: 0, frames: 0, seconds: 0 };
      w.seconds += (performance.now() - t0) / 1000;
      w.events += t.watchers.events - seen.events;
      w.frames += t.watchers.frames - seen.frames;
      results.watching.set(t.spec.key, w);
    }
    return s;
  };
  let s = await once();
  const maxOther = options.maxOtherCores ?? Infinity;
  for (let retry = 1; s.otherCores > maxOther && retry <= 2; retry++) {
    if (results.reruns >= (options.maxReruns ?? 6)) break;
    results.reruns++;
    const again = await once();
    options.log(
      `${t.spec.key} ${scenario.id}: ${s.otherCores.toFixed(2)}, then ${
        again.otherCores.toFixed(2)
      } cores of other work`,
    );
    if (again.otherCores < s.otherCores) s = again;
  }
  push(results.loads, `${scenario.id}/${t.spec.key}`, s);
  const b = s.bench;
  options.log(
    `round ${round} ${scenario.id.padEnd(11)} ${t.spec.key.padEnd(12)} ${
      Math.round(b.responses_per_sec).toLocaleString("en-US").padStart(9)
    } replies/s ${Math.round(b.connections_per_sec).toLocaleString("en-US").padStart(7)} conn/s ${
      s.cpuPerReplyUs.toFixed(3)
    } µs/reply (${s.proxyCores.toFixed(2)} cores) p99 ${b.latency_p99_ms.toFixed(3)} ms other ${
      s.otherCores.toFixed(2)
    } cores errors ${b.errors_total}`,
  );
}
