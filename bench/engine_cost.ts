/**
 * What the bridge engine costs, a suite of the bench harness (`bench/harness/`): side by side in
 * one run against one upstream, the bare forwarder of `bench/bare_forwarder.ts` (the floor: 16 KiB
 * buffers, no analysis), foo-proxy from this tree (or `--new DIR`) in plain mode and with
 * `--resume`, and foo-proxy from an older checkout (by default the worktree `/tmp/old`) in both
 * modes; load runs interleaved, then idle memory on a fresh process per target and round.
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
 * @module
 */
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { numberFlag } from "./harness/number_flag.ts";
import { type LoadScenario, runComparison } from "./harness/comparison.ts";
import { closedLoop, THROUGHPUT_LOAD } from "./harness/load.ts";
import { pairedRatio, ratio } from "./harness/numbers.ts";
import {
  comparisonTable,
  idleRows,
  loadRows,
  machineFacts,
  type RatioPair,
  rawRounds,
  writeReport,
} from "./harness/report.ts";
import { codeMeasured } from "./harness/report.ts";
import { REPO_ROOT } from "./harness/spawn.ts";
import type { TargetSpec } from "./harness/target.ts";

const RESULTS = new URL("./ENGINE_COST.md", import.meta.url).pathname;

const LOADS: LoadScenario[] = [
  {
    id: "pipelined",
    label: "64 connections x 16 pipelined",
    title: "64 connections x 16 pipelined",
    args: THROUGHPUT_LOAD,
    metrics: ["replies", "proxyCores", "cpuPerReply", "serverCores"],
  },
  {
    id: "lockstep",
    label: "64 connections x 1 lock-step",
    title: "64 connections x 1 lock-step",
    args: closedLoop(64, 1),
    metrics: ["replies", "proxyCores", "cpuPerReply", "serverCores"],
  },
];

/** The five columns: the floor, then the new and the old engine in both modes. */
function targets(oldDir: string, newDir: string): TargetSpec[] {
  const foo = (key: string, checkout: string, flags: string[]): TargetSpec => ({
    key,
    kind: "foo",
    checkout,
    flags,
    admin: false,
  });
  return [
    { key: "bare", kind: "bare", title: "bare forwarder" },
    { ...foo("new", newDir, []), title: "new plain" },
    { ...foo("new-resume", newDir, ["--resume"]), title: "new --resume" },
    { ...foo("old", oldDir, []), title: "old plain" },
    { ...foo("old-resume", oldDir, ["--resume"]), title: "old --resume" },
  ];
}

/** Every engine ÷ the floor, and each new mode ÷ the same old mode. */
const RATIOS: RatioPair[] = [
  ["new", "bare"],
  ["new-resume", "bare"],
  ["old", "bare"],
  ["old-resume", "bare"],
  ["new", "old"],
  ["new-resume", "old-resume"],
];

function usage(): string {
  return `Usage: deno run -A bench/engine_cost.ts [flags]

  --rounds N       interleaved rounds of every load run                    (default 3)
  --idle-rounds N  rounds of the idle-memory measurement                   (default 3)
  --seconds S      measured seconds per load run, at least 2               (default 5)
  --warmup S       unmeasured seconds before each load run                 (default 1)
  --idle N         idle connections held per idle measurement              (default 2000)
  --quick          a smoke run: 1 round of each, 2 s runs, 300 idle connections
  --old DIR        checkout of the engine being replaced                   (default /tmp/old)
  --new DIR        checkout of the new engine; its Foo server and load generator serve
                   every target                           (default this script's checkout)
  --only LIST      parts to run: load, idle                                (default load,idle)
  --max-other C    run a load run again (up to 2 times) when the rest of the machine used
                   more than C cores during it                             (default 0.25)
  --results FILE   where the tables go                     (default bench/ENGINE_COST.md)
  --no-write       print the tables only, write no results file`;
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      rounds: { type: "string" },
      "idle-rounds": { type: "string" },
      seconds: { type: "string" },
      warmup: { type: "string", default: "1" },
      idle: { type: "string" },
      quick: { type: "boolean" },
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
    writeStdoutLine(usage());
    return 0;
  }
  const quick = values.quick === true;
  const only = new Set(values.only.split(","));
  for (const part of only) {
    if (part !== "load" && part !== "idle") throw new RangeError(`Invalid --only "${part}"`);
  }
  const oldDir = values.old.replace(/\/$/, "");
  const newDir = values.new.replace(/\/$/, "");
  for (const [what, dir] of [["old", oldDir], ["new", newDir]]) {
    try {
      await Deno.stat(`${dir}/src/main.ts`);
    } catch {
      throw new Error(`No ${what} checkout at ${dir} (git worktree add ${dir} <commit>)`);
    }
  }
  const idle = Math.round(numberFlag("idle", values.idle, quick ? 300 : 2000, 1));
  const all = targets(oldDir, newDir);
  const results = await runComparison({
    targets: all,
    loads: only.has("load") ? LOADS : [],
    idle: only.has("idle")
      ? {
        connections: idle,
        rounds: Math.round(numberFlag("idle-rounds", values["idle-rounds"], quick ? 1 : 3, 1)),
      }
      : undefined,
  }, {
    rounds: Math.round(numberFlag("rounds", values.rounds, quick ? 1 : 3, 1)),
    seconds: numberFlag("seconds", values.seconds, quick ? 2 : 5, 2),
    warmup: numberFlag("warmup", values.warmup, 1, 0),
    checkout: newDir,
    fdLimit: 20_000,
    maxOtherCores: numberFlag("max-other", values["max-other"], 0.25, 0),
    log: (line) => writeStderrLine(`engine_cost: ${line}`),
  });
  const rows = [
    ...LOADS.flatMap((s) => loadRows(results, s, all)),
    ...idleRows(results, `${idle} idle connections`, idle),
  ];
  const table = comparisonTable(rows, { targets: all, ratios: RATIOS });
  // The target: CPU per reply within 10 % of the floor, as the median of per-round ratios.
  const cpu = (scenario: string, key: string) =>
    (results.loads.get(`${scenario}/${key}`) ?? []).map((s) => s.cpuPerReplyUs);
  const verdicts = LOADS.flatMap((s) =>
    (["new", "new-resume"] as const).map((key) => {
      const r = pairedRatio(cpu(s.id, key), cpu(s.id, "bare"));
      const old = pairedRatio(cpu(s.id, key), cpu(s.id, key.replace("new", "old")));
      return `- ${s.label}, ${key}: CPU per reply ÷ bare (paired) ${ratio(r, 1)} (within 10 %: ${
        !Number.isFinite(r) ? "—" : r <= 1.1 ? "yes" : "**no**"
      }); ÷ the old engine (paired) ${ratio(old, 1)}`;
    })
  ).filter(() => results.loads.size > 0);
  const errors = [...results.loads.values()].flat().reduce((n, s) => n + s.bench.errors_total, 0);
  writeStdoutLine([table, verdicts.join("\n")].filter((t) => t).join("\n\n"));
  if (errors > 0) writeStdoutLine(`\n${errors} errors in load runs (see stderr)`);
  if (values["no-write"]) return errors > 0 ? 1 : 0;
  const command = `deno run -A bench/engine_cost.ts ${args.join(" ")}`.trim();
  const md = `# Engine cost: the bridge engine against a bare forwarder

Generated by \`bench/engine_cost.ts\` (the bench harness); re-run \`${command}\` (with the old
engine checked out at \`${oldDir}\`).

${await machineFacts({ started: results.started, command, checkout: newDir })}
- Old engine: ${await codeMeasured(oldDir)} (\`${oldDir}\`)
- Load runs repeated for other work on the machine: ${results.reruns}

How each target runs (one process each, started once for all load rounds and afresh for each
idle round): **bare**: \`bench/bare_forwarder.ts\` (16 KiB buffers, no analysis: the floor; with
the V8 flag of \`deno task start\`); **new**, **old**: \`src/main.ts proxy --http=off
--health=off\` with the flags of \`deno task start\` from that checkout, plus \`--resume\` in the
resume columns. Values are medians over the rounds; "(paired)" is the median of per-round
ratios. Proxy CPU per reply = the target's CPU time (user + system, /proc/<pid>/stat) between the
load generator's first and last progress lines, divided by the replies counted in between.

${table}

${verdicts.join("\n")}

Targets of the issue: CPU per reply within 10 % of the bare forwarder (new ÷ bare ≤ 1.10) in both
scenarios, and no more RSS per idle connection than the old engine in either mode.

## Raw rounds

${rawRounds(results)}
`;
  await writeReport([values.results], md, `${REPO_ROOT}deno.json`);
  writeStderrLine(`engine_cost: wrote ${values.results}`);
  return errors > 0 ? 1 : 0;
}

if (import.meta.main) {
  Deno.exit(
    await main(Deno.args).catch((error) => {
      writeStderrLine(`engine_cost: ${error instanceof Error ? error.message : error}`);
      return error instanceof RangeError || error instanceof TypeError ? 2 : 1;
    }),
  );
}
