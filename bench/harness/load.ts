/**
 * The loads: `foo-proxy bench --json` runs in their own process, and what is measured over them.
 * Proxy CPU per reply is the proxy's CPU time (user + system, every thread) between the load
 * generator's first and last progress lines divided by the replies it counted in between, so both
 * figures cover the same window; each reading is taken the moment a progress line arrives.
 *
 * @module
 */
import { cpuSeconds, machineBusySeconds } from "./proc_stat.ts";
import { HOST } from "./spawn.ts";

/** `foo-proxy bench` flags of a closed-loop load: `connections` x `pipeline`, 32-byte payloads. */
export function closedLoop(connections: number, pipeline: number): string[] {
  return ["--connections", `${connections}`, "--pipeline", `${pipeline}`, "--payload", "32"];
}

/** The throughput load: 64 connections x 16 pipelined, 32-byte payloads. */
export const THROUGHPUT_LOAD: readonly string[] = Object.freeze(closedLoop(64, 16));

/** The churn load: 16 connections of 10 lock-step REQs each, then new ones. */
export const CHURN_LOAD: readonly string[] = Object.freeze([
  ...closedLoop(16, 1),
  "--requests-per-connection",
  "10",
]);

/** The JSON `foo-proxy bench --json` prints (the fields the harness uses). */
export interface BenchJson {
  requests: number;
  responses: number;
  responses_per_sec: number;
  connections_per_sec: number;
  latency_p50_ms: number;
  latency_p99_ms: number;
  latency_p999_ms: number;
  errors_total: number;
  errors: Record<string, number>;
}

/** One measured load run. */
export interface Sample {
  /** The load generator's report. */
  bench: BenchJson;
  /** Proxy CPU over the progress window, in cores; NaN for direct. */
  proxyCores: number;
  /** Proxy CPU per reply over the progress window, µs; NaN for direct. */
  cpuPerReplyUs: number;
  /** Proxy CPU per new connection (the cores ÷ the generator's connections/s), µs. */
  cpuPerConnectionUs: number;
  /** The upstream servers' CPU over the window, in cores (summed). */
  serverCores: number;
  /** CPU the rest of the machine used over the window (competing work), in cores. */
  otherCores: number;
  /** The load generator's progress lines (stderr) in order: per-second rates. */
  progress: string[];
}

/** Options of {@linkcode runLoad}. */
export interface LoadOptions {
  /** `foo-proxy bench` flags of the load (connections, pipeline, …). */
  args: readonly string[];
  /** Measured seconds (at least 2, so there are two progress lines). */
  seconds: number;
  /** Unmeasured seconds before them. @default 0 */
  warmup?: number;
  /** The checkout whose `src/main.ts` runs the generator. */
  checkout: string;
  /** The proxy's pid; unset: direct (no proxy CPU). */
  proxyPid?: number;
  /** The upstream servers' pids. @default [] */
  serverPids?: readonly number[];
  /** Other processes of the bench whose CPU is not competing work (top, a twin). @default [] */
  helperPids?: readonly number[];
  /** `taskset -c` cores of the generator; unset: not pinned. */
  cpus?: string;
  /** Called on each progress line, as it arrives (e.g. to kill an upstream at second 2). */
  onProgress?: (line: string) => void;
}

/** `deno run` arguments of `foo-proxy bench` against `port` with `flags`, from a checkout. */
function benchArgs(port: number, flags: readonly string[]): string[] {
  // Read access for a TLS load's `--ca` file.
  return [
    "run",
    "--allow-net",
    "--allow-read",
    "src/main.ts",
    "bench",
    "--connect",
    `${HOST}:${port}`,
    ...flags,
  ];
}

const PROGRESS = /^bench: (?:warm-up \d+s left|\d+s): \d+ replies\/s, (\d+) total/;

interface Mark {
  at: number;
  total: number;
  proxy: number;
  server: number;
  load: number;
  helpers: number;
  machine: number;
}

function sum(pids: readonly number[]): number {
  return pids.reduce((n, pid) => n + cpuSeconds(pid), 0);
}

/**
 * Runs `foo-proxy bench --json` against `port` and measures the proxy over its progress window.
 *
 * @throws {Error} when the generator prints no JSON (with its exit status and stderr) or fewer
 * than two progress lines.
 */
export async function runLoad(port: number, options: LoadOptions): Promise<Sample> {
  const args = benchArgs(port, [
    "--json",
    "--duration",
    `${options.seconds}s`,
    "--warmup",
    `${options.warmup ?? 0}s`,
    ...options.args,
  ]);
  const [command, argv] = options.cpus === undefined
    ? [Deno.execPath(), args]
    : ["taskset", ["-c", options.cpus, Deno.execPath(), ...args]];
  const proc = new Deno.Command(command, {
    args: argv,
    cwd: options.checkout,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const servers = options.serverPids ?? [];
  const helpers = [Deno.pid, ...(options.helperPids ?? [])];
  const marks: Mark[] = [];
  const progress: string[] = [];
  const tail: string[] = [];
  const readErr = (async () => {
    let partial = "";
    for await (const chunk of proc.stderr.pipeThrough(new TextDecoderStream())) {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        const m = PROGRESS.exec(line);
        if (!m) {
          tail.push(line);
          continue;
        }
        // Read at once: the line was printed a moment ago, with the total at that moment.
        marks.push({
          at: performance.now(),
          total: Number(m[1]),
          proxy: options.proxyPid === undefined ? NaN : cpuSeconds(options.proxyPid),
          server: sum(servers),
          load: cpuSeconds(proc.pid),
          helpers: sum(helpers),
          machine: machineBusySeconds(),
        });
        progress.push(line);
        options.onProgress?.(line);
      }
    }
  })();
  const [out, status] = await Promise.all([
    new Response(proc.stdout).text(),
    proc.status,
    readErr,
  ]);
  let bench: BenchJson;
  try {
    bench = JSON.parse(out.trim().split("\n").at(-1) ?? "");
  } catch {
    throw new Error(
      `foo-proxy bench failed (exit ${status.code}): ${tail.slice(-12).join(" / ")}`,
    );
  }
  if (marks.length < 2) throw new Error(`Only ${marks.length} progress lines from the bench`);
  const first = marks[0];
  const last = marks.at(-1)!;
  const d = (pick: (m: Mark) => number) => pick(last) - pick(first);
  const span = d((m) => m.at) / 1000;
  const proxyCores = d((m) => m.proxy) / span;
  return {
    bench,
    proxyCores,
    cpuPerReplyUs: d((m) => m.proxy) * 1e6 / Math.max(1, d((m) => m.total)),
    cpuPerConnectionUs: proxyCores * 1e6 / bench.connections_per_sec,
    serverCores: d((m) => m.server) / span,
    otherCores: Math.max(
      0,
      d((m) => m.machine) - (Number.isFinite(proxyCores) ? d((m) => m.proxy) : 0) -
        d((m) => m.server) - d((m) => m.load) - d((m) => m.helpers),
    ) / span,
    progress,
  };
}

/** Options of {@linkcode settle}. */
export interface SettleOptions {
  /** `foo-proxy bench` flags of the load. @default THROUGHPUT_LOAD */
  args?: readonly string[];
  /** The checkout whose `src/main.ts` runs the generator. */
  checkout: string;
}

/**
 * Runs a load against `port` for `seconds`, unmeasured, so a fresh proxy reaches its steady
 * state before it is measured. Why: V8's heap changes regime after the first full GC (seen with
 * `--trace-gc` under the throughput load: no mark-compact for the first 6–8 s, then one or two a
 * second); from then on each scavenge moves two whole young pages (512 KB), pinned because the
 * native stack pointed into them, to the old generation. A proxy measured before that looks
 * faster than the same proxy later, and whatever brings its first full GC forward (a viewer's
 * requests, say) looks like a cost of its own.
 *
 * @throws {Error} when the load generator fails.
 */
export async function settle(port: number, seconds: number, options: SettleOptions): Promise<void> {
  if (seconds <= 0) return;
  const out = await new Deno.Command(Deno.execPath(), {
    args: benchArgs(port, [
      "--quiet",
      "--duration",
      `${seconds}s`,
      ...(options.args ?? THROUGHPUT_LOAD),
    ]),
    cwd: options.checkout,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    const tail = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" / ");
    throw new Error(`The settling load on ${HOST}:${port} failed (exit ${out.code}): ${tail}`);
  }
}
