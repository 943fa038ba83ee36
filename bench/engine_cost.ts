/**
 * What the bridge engine costs, side by side in one run against one upstream (our Foo server in
 * its own process): the bare forwarder of `bench/bare_forwarder.ts` (the floor: 16 KiB buffers,
 * no analysis), foo-proxy from this tree (or `--new DIR`) in plain mode and with `--resume`, and
 * foo-proxy from an older checkout (by default the worktree `/tmp/old`) in both modes.
 *
 * ```sh
 * git worktree add /tmp/old 8aa3b95      # the engine being replaced
 * deno run -A bench/engine_cost.ts       # --help for the flags
 * git worktree remove /tmp/old
 * ```
 *
 * While others edit this tree, pin the new engine too: `git worktree add --detach /tmp/new
 * <commit>` and pass `--new /tmp/new` (its Foo server and load generator then serve every target).
 *
 * (`-A` because Deno asks for it to read another process's `/proc` entries, which this script
 * does synchronously on every progress line of the load generator.)
 *
 * Load scenarios, run by `foo-proxy bench --json` in its own process: 64 connections x 16
 * pipelined, and 64 connections x 1 lock-step (closed loop), 32-byte payloads. Rounds are
 * interleaved (each round runs every target once per scenario, in an order rotated per round)
 * and the table gives medians. Proxy CPU per reply is the proxy's CPU time (user + system,
 * `/proc/<pid>/stat`) between the load generator's first and last progress lines divided by the
 * replies it counted in between, so both figures cover the same window.
 *
 * Idle memory: a fresh process per target and round, 50 connections opened and closed (to warm
 * lazily built code paths), then N connections opened with one REQ/ACK each (so both sides are
 * bridged) and held; the figure is the growth of VmRSS divided by N.
 *
 * The results go to stdout and to `bench/ENGINE_COST.md` with the machine, date and commits.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Child } from "../scripts/child.ts";
import {
  commandOutput,
  cpuSeconds,
  delay,
  fmt,
  machineBusySeconds,
  median,
  ratio,
  rotate,
  THROUGHPUT_LOAD,
} from "./_common.ts";

const REPO_ROOT = new URL("..", import.meta.url).pathname;
const RESULTS = new URL("./ENGINE_COST.md", import.meta.url).pathname;
const BARE = new URL("./bare_forwarder.ts", import.meta.url).pathname;
const HOST = "127.0.0.1";
const encoder = new TextEncoder();

/** The flags of `deno task start` (kept in step with deno.json by hand). */
const START_FLAGS = [
  "--allow-net",
  "--allow-env=FOO_PROXY_*",
  "--v8-flags=--max-semi-space-size=8",
];

type TargetId = "bare" | "new" | "new-resume" | "old" | "old-resume";

interface Target {
  id: TargetId;
  title: string;
  cwd: string;
  args: (upstream: string) => string[];
}

interface Scenario {
  id: "pipelined" | "lockstep";
  title: string;
  args: readonly string[];
}

const SCENARIOS: Scenario[] = [
  {
    id: "pipelined",
    title: "64 connections x 16 pipelined",
    args: THROUGHPUT_LOAD,
  },
  {
    id: "lockstep",
    title: "64 connections x 1 lock-step",
    args: ["--connections", "64", "--pipeline", "1", "--payload", "32"],
  },
];

function usage(): string {
  return `Usage: deno run -A bench/engine_cost.ts [flags]

  --rounds N       interleaved rounds of every load run                    (default 3)
  --idle-rounds N  rounds of the idle-memory measurement                   (default 3)
  --seconds S      measured seconds per load run, at least 2               (default 5)
  --warmup S       unmeasured seconds before each load run                 (default 1)
  --idle N         idle connections held per idle measurement              (default 2000)
  --old DIR        checkout of the engine being replaced                   (default /tmp/old)
  --new DIR        checkout of the new engine, e.g. a worktree pinned at a commit while
                   others edit this one; its Foo server and load generator serve every
                   target                                     (default this script's checkout)
  --only LIST      parts to run: load, idle                                (default load,idle)
  --max-other C    run a load run again (up to 2 times) when the rest of the machine used
                   more than C cores during it                             (default 0.25)
  --results FILE   where the tables go, e.g. bench/REPLY_MATCHING_COST.md for another
                   pair of commits                     (default bench/ENGINE_COST.md)
  --no-write       print the tables only, write no results file`;
}

interface Config {
  rounds: number;
  idleRounds: number;
  seconds: number;
  warmup: number;
  idle: number;
  old: string;
  /** The tree whose foo-proxy is "new"; its Foo server and load generator are used for all. */
  new: string;
  load: boolean;
  idleMemory: boolean;
  maxOther: number;
  write: boolean;
  /** The results file. */
  results: string;
}

function parseConfig(args: string[]): Config {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      rounds: { type: "string", default: "3" },
      "idle-rounds": { type: "string", default: "3" },
      seconds: { type: "string", default: "5" },
      warmup: { type: "string", default: "1" },
      idle: { type: "string", default: "2000" },
      old: { type: "string", default: "/tmp/old" },
      new: { type: "string", default: REPO_ROOT },
      only: { type: "string", default: "load,idle" },
      "max-other": { type: "string", default: "0.25" },
      "no-write": { type: "boolean" },
      results: { type: "string", default: RESULTS },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    writeLine(Deno.stdout, usage());
    Deno.exit(0);
  }
  const num = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isFinite(n) || n < min) throw new RangeError(`Invalid --${name} "${text}"`);
    return n;
  };
  const only = new Set(values.only.split(","));
  for (const part of only) {
    if (part !== "load" && part !== "idle") throw new RangeError(`Invalid --only "${part}"`);
  }
  return {
    rounds: Math.round(num("rounds", values.rounds, 1)),
    idleRounds: Math.round(num("idle-rounds", values["idle-rounds"], 1)),
    seconds: num("seconds", values.seconds, 2),
    warmup: num("warmup", values.warmup, 0.5),
    idle: Math.round(num("idle", values.idle, 1)),
    old: values.old.replace(/\/$/, ""),
    new: values.new.replace(/\/$/, ""),
    load: only.has("load"),
    idleMemory: only.has("idle"),
    maxOther: num("max-other", values["max-other"], 0),
    write: !values["no-write"],
    results: values.results,
  };
}

function targets(oldDir: string, newDir: string): Target[] {
  const proxy = (resume: boolean) => (upstream: string) => [
    "run",
    ...START_FLAGS,
    "src/main.ts",
    "proxy",
    `--listen=${HOST}:0`,
    `--forward=${upstream}`,
    "--http=off",
    "--health=off",
    ...(resume ? ["--resume"] : []),
  ];
  return [
    {
      id: "bare",
      title: "bare forwarder",
      cwd: REPO_ROOT,
      // The V8 flag of `deno task start` too, so the floor differs only in the engine.
      args: (upstream) => [
        "run",
        "--allow-net",
        "--v8-flags=--max-semi-space-size=8",
        BARE,
        "--listen",
        `${HOST}:0`,
        "--forward",
        upstream,
      ],
    },
    { id: "new", title: "new plain", cwd: newDir, args: proxy(false) },
    { id: "new-resume", title: "new --resume", cwd: newDir, args: proxy(true) },
    { id: "old", title: "old plain", cwd: oldDir, args: proxy(false) },
    { id: "old-resume", title: "old --resume", cwd: oldDir, args: proxy(true) },
  ];
}

// ---------------------------------------------------------------------------------------------
// Processes and /proc

function writeLine(file: { writeSync(p: Uint8Array): number }, line: string): void {
  let bytes = encoder.encode(line + "\n");
  while (bytes.length > 0) bytes = bytes.subarray(file.writeSync(bytes));
}

function log(line: string): void {
  writeLine(Deno.stderr, `engine_cost: ${line}`);
}

/** Starts `args` under this Deno through sh, with a raised fd limit (idle runs hold thousands). */
function spawn(name: string, cwd: string, args: string[]): Child {
  const script = `ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`;
  return new Child(["-c", script, "sh", Deno.execPath(), ...args], {
    name,
    command: "sh",
    cwd,
    env: { NO_COLOR: "1" },
    disposeSignal: "SIGTERM",
    disposeGraceMs: 5000,
  });
}

interface Running {
  child: Child;
  port: number;
}

async function startServer(dir: string): Promise<Running> {
  const child = spawn("foo server", dir, [
    "run",
    "-A",
    "src/main.ts",
    "server",
    "--listen",
    `${HOST}:0`,
    "--log-level",
    "warning",
  ]);
  const m = await child.stdout.waitFor(/listening on \S+:(\d+)/, "listening on").catch((e) => {
    throw new Error(`${child.name}: ${e.message}: ${child.stderr.tail()}`);
  });
  return { child, port: Number(m[1]) };
}

async function startTarget(target: Target, upstreamPort: number): Promise<Running> {
  const child = spawn(target.title, target.cwd, target.args(`${HOST}:${upstreamPort}`));
  const m = await child.stderr.waitFor(/Listening on [^\s,]+:(\d+)/, "Listening on").catch(
    (e) => {
      throw new Error(`${target.title}: ${e.message}: ${child.stderr.tail()}`);
    },
  );
  return { child, port: Number(m[1]) };
}

/** CPU time (user + system) used by `pid` so far, in seconds. */

/** Busy time of all CPUs so far (the `cpu` line of /proc/stat without idle and iowait), in s. */

/** Resident set size of `pid` in KiB (VmRSS in /proc/<pid>/status). */
function rssKib(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  if (!m) throw new Error(`No VmRSS for pid ${pid}`);
  return Number(m[1]);
}

// ---------------------------------------------------------------------------------------------
// Load runs

interface LoadSample {
  repliesPerSec: number;
  /** Proxy CPU per reply over the progress-line window, µs. */
  cpuPerReplyUs: number;
  /** Proxy CPU over the window, in cores. */
  cores: number;
  /** Upstream server CPU per reply over the same window, µs (should not depend on the target). */
  serverUsPerReply: number;
  /**
   * CPU the rest of the machine used over the window (all CPUs' busy time minus the target's,
   * the server's and the load generator's), in cores: other work that competed for the CPUs.
   */
  otherCores: number;
  errors: number;
}

interface Mark {
  at: number;
  total: number;
  cpu: number;
  serverCpu: number;
  loadCpu: number;
  machineCpu: number;
}

const PROGRESS = /^bench: (?:warm-up \d+s left|\d+s): \d+ replies\/s, (\d+) total/;

async function runLoad(
  port: number,
  scenario: Scenario,
  config: Config,
  pid: number,
  serverPid: number,
): Promise<LoadSample> {
  const command = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "src/main.ts",
      "bench",
      "--connect",
      `${HOST}:${port}`,
      "--json",
      "--duration",
      `${config.seconds}s`,
      "--warmup",
      `${config.warmup}s`,
      ...scenario.args,
    ],
    cwd: config.new,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  });
  const proc = command.spawn();
  const marks: Mark[] = [];
  const tail: string[] = [];
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
            cpu: cpuSeconds(pid),
            serverCpu: cpuSeconds(serverPid),
            loadCpu: cpuSeconds(proc.pid),
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
  const json = out.trim().split("\n").at(-1) ?? "";
  let report: { responses_per_sec: number; errors_total: number };
  try {
    report = JSON.parse(json);
  } catch {
    throw new Error(`foo-proxy bench failed (exit ${status.code}): ${tail.slice(-12).join(" / ")}`);
  }
  if (marks.length < 2) throw new Error(`Only ${marks.length} progress lines from the bench`);
  const first = marks[0];
  const last = marks.at(-1)!;
  const replies = Math.max(1, last.total - first.total);
  return {
    repliesPerSec: report.responses_per_sec,
    cpuPerReplyUs: (last.cpu - first.cpu) * 1e6 / replies,
    cores: (last.cpu - first.cpu) * 1000 / (last.at - first.at),
    serverUsPerReply: (last.serverCpu - first.serverCpu) * 1e6 / replies,
    otherCores: Math.max(
      0,
      (last.machineCpu - first.machineCpu) - (last.cpu - first.cpu) -
        (last.serverCpu - first.serverCpu) - (last.loadCpu - first.loadCpu),
    ) * 1000 / (last.at - first.at),
    errors: report.errors_total,
  };
}

// ---------------------------------------------------------------------------------------------
// Idle memory

/** Opens `count` connections through `port`, one REQ/ACK on each, and leaves them open. */
async function openIdle(port: number, count: number, conns: Deno.TcpConn[]): Promise<void> {
  const request = encoder.encode("REQ 1\n");
  for (let i = 0; i < count; i += 200) {
    await Promise.all(
      Array.from({ length: Math.min(200, count - i) }, async () => {
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
      }),
    );
  }
}

/** Reads RSS until two readings 250 ms apart agree within 1 % (at most 3 s). */
async function settledRss(pid: number): Promise<number> {
  let last = rssKib(pid);
  for (let i = 0; i < 12; i++) {
    await delay(250);
    const now = rssKib(pid);
    if (Math.abs(now - last) <= last * 0.01) return now;
    last = now;
  }
  return last;
}

interface IdleSample {
  kibPerConnection: number;
  beforeKib: number;
  afterKib: number;
}

async function measureIdle(running: Running, count: number): Promise<IdleSample> {
  const warm: Deno.TcpConn[] = [];
  await openIdle(running.port, 50, warm);
  for (const c of warm) c.close();
  const pid = running.child.pid;
  const beforeKib = await settledRss(pid);
  const conns: Deno.TcpConn[] = [];
  try {
    await openIdle(running.port, count, conns);
    const afterKib = await settledRss(pid);
    return { kibPerConnection: (afterKib - beforeKib) / count, beforeKib, afterKib };
  } finally {
    for (const c of conns) {
      try {
        c.close();
      } catch {
        // Closed already.
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [
    line(header),
    line(header.map((_, i) => (i < 2 ? "---" : "---:"))),
    ...rows.map(line),
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------

async function main(args: string[]): Promise<number> {
  const config = parseConfig(args);
  try {
    await Deno.stat(`${config.old}/src/main.ts`);
  } catch {
    throw new Error(`No old checkout at ${config.old} (git worktree add ${config.old} <commit>)`);
  }
  try {
    await Deno.stat(`${config.new}/src/main.ts`);
  } catch {
    throw new Error(`No new checkout at ${config.new}`);
  }
  const all = targets(config.old, config.new);
  const started = new Date();
  // Another engineer may edit src/ meanwhile: the report says so when the tree changed.
  const gitStatus = async () =>
    `${await commandOutput("git", [
      "-C",
      config.new,
      "status",
      "--porcelain",
      "src",
    ])}\n${await commandOutput("git", ["-C", config.new, "diff", "HEAD", "--", "src"])}`;
  const srcAtStart = await gitStatus();
  const load = new Map<string, LoadSample[]>();
  const idle = new Map<TargetId, IdleSample[]>();
  let retries = 0;
  const upstream = await startServer(config.new);
  await using _server = upstream.child;
  if (config.load) {
    const running = new Map<TargetId, Running>();
    try {
      for (const t of all) running.set(t.id, await startTarget(t, upstream.port));
      for (let round = 0; round < config.rounds; round++) {
        for (const scenario of SCENARIOS) {
          for (const t of rotate(all, round)) {
            const r = running.get(t.id)!;
            if (r.child.exited) throw new Error(`${t.title} exited: ${r.child.stderr.tail()}`);
            const measure = async () => {
              try {
                return await runLoad(r.port, scenario, config, r.child.pid, upstream.child.pid);
              } catch (error) {
                // Seen once while other processes loaded the machine: the load generator died.
                log(`${t.title}: ${error instanceof Error ? error.message : error}; again`);
                retries++;
                return await runLoad(r.port, scenario, config, r.child.pid, upstream.child.pid);
              }
            };
            // Other work on the machine (it is shared) skews CPU per reply: measure again.
            let s = await measure();
            for (let retry = 1; s.otherCores > config.maxOther && retry <= 2; retry++) {
              retries++;
              const again = await measure();
              log(
                `${t.title}: ${s.otherCores.toFixed(2)}, then ${
                  again.otherCores.toFixed(2)
                } cores of other work`,
              );
              if (again.otherCores < s.otherCores) s = again;
            }
            const key = `${scenario.id}/${t.id}`;
            load.set(key, [...(load.get(key) ?? []), s]);
            log(
              `round ${round + 1} ${scenario.id.padEnd(9)} ${t.title.padEnd(14)} ${
                fmt(s.repliesPerSec).padStart(9)
              } replies/s  ${s.cpuPerReplyUs.toFixed(3)} µs/reply (${
                s.cores.toFixed(2)
              } cores)  server ${s.serverUsPerReply.toFixed(3)} µs/reply  other ${
                s.otherCores.toFixed(2)
              } cores  errors ${s.errors}`,
            );
          }
        }
      }
    } finally {
      for (const r of running.values()) await r.child[Symbol.asyncDispose]();
    }
  }
  if (config.idleMemory) {
    for (let round = 0; round < config.idleRounds; round++) {
      for (const t of rotate(all, round)) {
        const r = await startTarget(t, upstream.port);
        try {
          const s = await measureIdle(r, config.idle);
          idle.set(t.id, [...(idle.get(t.id) ?? []), s]);
          log(
            `round ${round + 1} idle ${t.title.padEnd(14)} ${
              s.kibPerConnection.toFixed(2)
            } KiB/connection (RSS ${fmt(s.beforeKib)} -> ${fmt(s.afterKib)} KiB)`,
          );
        } finally {
          await r.child[Symbol.asyncDispose]();
        }
      }
    }
  }

  // Tables.
  const med = (scenario: string, id: TargetId, pick: (s: LoadSample) => number) =>
    median((load.get(`${scenario}/${id}`) ?? []).map(pick));
  const ids: TargetId[] = ["bare", "new", "new-resume", "old", "old-resume"];
  const loadRows: string[][] = [];
  const ratioRows: string[][] = [];
  const metrics: [string, (s: LoadSample) => number, number][] = [
    ["replies/s", (s) => s.repliesPerSec, 0],
    ["proxy CPU (cores)", (s) => s.cores, 2],
    ["proxy CPU per reply (µs)", (s) => s.cpuPerReplyUs, 3],
    ["server CPU per reply (µs)", (s) => s.serverUsPerReply, 3],
  ];
  const verdict = (r: number) => !Number.isFinite(r) ? "—" : r <= 1.1 ? "yes" : "**no**";
  for (const scenario of SCENARIOS) {
    if (!load.has(`${scenario.id}/bare`)) continue;
    for (const [name, pick, digits] of metrics) {
      loadRows.push([
        scenario.title,
        name,
        ...ids.map((id) => fmt(med(scenario.id, id, pick), digits)),
      ]);
    }
    const cpu = (id: TargetId) => med(scenario.id, id, (s) => s.cpuPerReplyUs);
    const rate = (id: TargetId) => med(scenario.id, id, (s) => s.repliesPerSec);
    // The median of the per-round ratios: a round's runs are minutes apart at most.
    const paired = (id: string, a: TargetId, b: TargetId) => {
      const xs = load.get(`${id}/${a}`) ?? [];
      const ys = load.get(`${id}/${b}`) ?? [];
      return median(xs.map((x, i) => x.cpuPerReplyUs / ys[i].cpuPerReplyUs));
    };
    for (
      const [mode, now, before] of [["plain", "new", "old"], [
        "--resume",
        "new-resume",
        "old-resume",
      ]] as const
    ) {
      ratioRows.push([
        scenario.title,
        mode,
        ratio(cpu(now), cpu("bare")),
        `${paired(scenario.id, now, "bare").toFixed(2)}×`,
        verdict(cpu(now) / cpu("bare")),
        ratio(cpu(before), cpu("bare")),
        ratio(cpu(now), cpu(before)),
        `${paired(scenario.id, now, before).toFixed(2)}×`,
        ratio(rate(now), rate("bare")),
        ratio(rate(now), rate(before)),
      ]);
    }
  }
  const idleMed = (id: TargetId) => median((idle.get(id) ?? []).map((s) => s.kibPerConnection));
  const idleRows = idle.size === 0 ? [] : [
    [
      `${fmt(config.idle)} idle connections`,
      "RSS growth per connection (KiB)",
      ...ids.map((id) => fmt(idleMed(id), 2)),
    ],
  ];
  const idleRatioRows = idle.size === 0 ? [] : (
    [["plain", "new", "old"], ["--resume", "new-resume", "old-resume"]] as const
  ).map(([mode, now, before]) => [
    mode,
    fmt(idleMed(now), 2),
    fmt(idleMed(before), 2),
    ratio(idleMed(now), idleMed(before)),
    !Number.isFinite(idleMed(now)) ? "—" : idleMed(now) <= idleMed(before) ? "yes" : "**no**",
  ]);
  const header = [
    "scenario",
    "metric",
    "bare",
    "new plain",
    "new --resume",
    "old plain",
    "old --resume",
  ];
  const tables = [
    loadRows.length > 0 ? table(header, loadRows) : "",
    ratioRows.length > 0
      ? table(
        [
          "scenario",
          "mode",
          "CPU/reply new ÷ bare",
          "(paired)",
          "within 10 %",
          "CPU/reply old ÷ bare",
          "CPU/reply new ÷ old",
          "(paired)",
          "replies/s new ÷ bare",
          "replies/s new ÷ old",
        ],
        ratioRows,
      )
      : "",
    idleRows.length > 0 ? table(header, idleRows) : "",
    idleRatioRows.length > 0
      ? table(
        ["mode", "new (KiB/conn)", "old (KiB/conn)", "new ÷ old", "no more than today"],
        idleRatioRows,
      )
      : "",
  ].filter((t) => t !== "");
  writeLine(Deno.stdout, tables.join("\n\n"));
  const errors = [...load.values()].flat().reduce((n, s) => n + s.errors, 0);
  if (errors > 0) writeLine(Deno.stdout, `\n${errors} errors in load runs (see stderr)`);

  if (config.write) {
    const cpuModel = /^model name\s*:\s*(.*)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1];
    const nproc = await commandOutput("nproc", []);
    const kernel = await commandOutput("uname", ["-r"]);
    const commit = await commandOutput("git", ["-C", config.new, "rev-parse", "--short", "HEAD"]);
    const dirty = await commandOutput("git", ["-C", config.new, "status", "--porcelain"]);
    const srcChanged = (await gitStatus()) !== srcAtStart;
    const oldCommit = await commandOutput("git", [
      "-C",
      config.old,
      "rev-parse",
      "--short",
      "HEAD",
    ]);
    const command = `deno run -A bench/engine_cost.ts ${args.join(" ")}`.trim();
    const rawLoad = [...load.entries()].map(([key, list]) =>
      `| ${key} | ${list.map((s) => fmt(s.repliesPerSec)).join(", ")} | ${
        list.map((s) => s.cpuPerReplyUs.toFixed(3)).join(", ")
      } | ${list.map((s) => s.serverUsPerReply.toFixed(3)).join(", ")} | ${
        list.map((s) => s.otherCores.toFixed(2)).join(", ")
      } | ${list.reduce((n, s) => n + s.errors, 0)} |`
    );
    const rawIdle = [...idle.entries()].map(([id, list]) =>
      `| ${id} | ${list.map((s) => s.kibPerConnection.toFixed(2)).join(", ")} | ${
        list.map((s) => `${fmt(s.beforeKib)} → ${fmt(s.afterKib)}`).join(", ")
      } |`
    );
    const md = `# Engine cost: the bridge engine against a bare forwarder

Generated by \`bench/engine_cost.ts\`; re-run \`${command}\` (with the old engine checked out at
\`${config.old}\`).

- Date: ${started.toISOString()}
- Command: \`${command}\` (${config.rounds} interleaved load rounds, ${config.warmup} s warm-up +
  ${config.seconds} s measured per run; ${config.idleRounds} idle rounds of ${
      fmt(config.idle)
    } connections)
- Machine: nproc ${nproc ?? "?"} (${cpuModel ?? "unknown CPU"}), Linux ${kernel ?? "?"}; the
  upstream, the target and the load generator share these CPUs
- Deno ${Deno.version.deno} (V8 ${Deno.version.v8})
- New engine: commit ${commit ?? "?"} (\`${config.new}\`)${
      dirty
        ? " (working tree dirty: " + dirty.split("\n").map((l) => l.trim()).join(", ") + ")"
        : ""
    }${srcChanged ? "; **src/ changed during the run**" : ""}
- Old engine: commit ${oldCommit ?? "?"} (\`${config.old}\`)

How each target runs (one process each, started once for all load rounds and afresh for each
idle round):

- **bare**: \`deno run --allow-net --v8-flags=--max-semi-space-size=8 bench/bare_forwarder.ts --listen 127.0.0.1:0 --forward …\`
  (16 KiB buffers, no analysis: the floor; the V8 flag of \`deno task start\` too, so only the
  engine differs)
- **new**, **old**: \`deno run ${
      START_FLAGS.join(" ")
    } src/main.ts proxy --listen=127.0.0.1:0 --forward=… --http=off --health=off\`
  (the flags of \`deno task start\`), plus \`--resume\` in the resume columns
- load: \`foo-proxy bench\` from the new tree, ${
      SCENARIOS.map((s) => `\`${s.args.join(" ")}\` (${s.title})`).join(" and ")
    }, closed loop

Values are medians over the rounds; a ratio is of those medians, and "(paired)" is the median of
the per-round ratios instead (a round runs every target once, minutes apart at most). Proxy CPU per
reply = the target process's CPU time (user + system, /proc/<pid>/stat) between the load
generator's first and last progress lines, divided by the replies counted in between.

${tables.join("\n\n")}

Targets of the issue: CPU per reply within 10 % of the bare forwarder (new ÷ bare ≤ 1.10) in both
scenarios, and no more RSS per idle connection than the old engine in either mode.

The machine is shared: a load run during which the rest of the machine used more than
${config.maxOther} cores (all CPUs' busy time in /proc/stat minus the measured processes') was run
again, up to 2 times, keeping the quietest (${retries} extra runs in all; "other CPU" below).

## Raw rounds

| scenario/target | replies/s | proxy CPU per reply (µs) | server CPU per reply (µs) | other CPU (cores) | errors |
| --- | --- | --- | --- | --- | --- |
${rawLoad.join("\n")}

${
      rawIdle.length > 0
        ? `| idle target | KiB per connection | RSS before → holding all (KiB) |\n| --- | --- | --- |\n${
          rawIdle.join("\n")
        }\n`
        : ""
    }`;
    await Deno.writeTextFile(config.results, md);
    await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", config.results] })
      .output();
    log(`wrote ${config.results}`);
  }
  return errors > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
