/**
 * What the viewers cost (issue 13), a suite of the bench harness (`bench/harness/`): whether the
 * dashboard's event stream, `foo-proxy top` and the access log take measurable throughput from
 * the proxy. foo-proxy (the flags of `deno task start`, plus `--http` on a free port) is measured
 * in five configurations, a fresh process per configuration and round, settled, then the
 * throughput and churn loads; the order of the configurations rotates per round:
 *
 * - **a** baseline: `--http` on, nobody reading it, no access log;
 * - **a′** the baseline again, as another process: the noise floor of the run;
 * - **b** 5 viewers: 5 `GET /events` streams read in this process, plus one `foo-proxy top`;
 * - **c** 5 viewers + `--access-log text` (to a file);
 * - **d** the same viewers and `top` watching an idle twin while the measured proxy has none:
 *   what the viewers cost the machine, apart from the proxy's share.
 *
 * ```sh
 * deno run -A bench/viewers_cost.ts            # --help for the flags; ~10 minutes by default
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { numberFlag } from "./harness/number_flag.ts";
import { type LoadScenario, runComparison } from "./harness/comparison.ts";
import { CHURN_LOAD, THROUGHPUT_LOAD } from "./harness/load.ts";
import { fmt } from "./harness/numbers.ts";
import {
  comparisonTable,
  loadRows,
  machineFacts,
  ratiosTo,
  rawRounds,
  writeReport,
} from "./harness/report.ts";
import { REPO_ROOT } from "./harness/spawn.ts";
import type { TargetSpec } from "./harness/target.ts";

const RESULTS = new URL("./VIEWERS_COST.md", import.meta.url).pathname;
const VIEWERS = 5;

const CONFIGS: TargetSpec[] = [
  { key: "a", kind: "foo", title: "a: baseline" },
  // The baseline once more, as a separate process: how far two identical configurations differ
  // in one run (the noise floor a viewers' cost must rise above to count as measurable).
  { key: "a2", kind: "foo", title: "a′: baseline again" },
  { key: "b", kind: "foo", title: "b: 5 viewers", viewers: VIEWERS },
  {
    key: "c",
    kind: "foo",
    title: "c: 5 viewers + access log",
    viewers: VIEWERS,
    accessLog: "text",
  },
  { key: "d", kind: "foo", title: "d: 5 viewers on a twin", viewers: VIEWERS, viewersOnTwin: true },
];

const LOADS: LoadScenario[] = [
  {
    id: "throughput",
    label: "throughput: 64 conns x 16 pipelined",
    title: "64 connections x 16 pipelined",
    args: THROUGHPUT_LOAD,
    metrics: ["replies", "proxyCores", "cpuPerReply", "otherCores"],
  },
  {
    id: "churn",
    label: "churn: 16 conns, 10 REQs each",
    title: "16 connections, 10 lock-step REQs each, then new ones",
    args: CHURN_LOAD,
    metrics: ["replies", "connections", "proxyCores", "cpuPerReply", "otherCores"],
  },
];

function usage(): string {
  return `Usage: deno run -A bench/viewers_cost.ts [flags]

  --rounds N     interleaved rounds (every configuration, both loads)   (default 5)
  --seconds S    measured seconds per load run, at least 2              (default 5)
  --warmup S     unmeasured seconds before each load run                (default 1)
  --settle S     unmeasured seconds of the throughput load on each fresh proxy process
                                                                        (default 10)
  --quick        a smoke run: 1 round, 2 s runs, 2 s settle
  --configs L    configurations to run, from a,a2,b,c,d (a is always run) (default all)
  --loads L      loads to run: throughput, churn                        (default both)
  --max-other C  measure a load run again when the rest of the machine used more than C
                 cores during it                                        (default 0.3)
  --max-reruns N at most N such repeats in the whole run                (default 6)
  --results FILE write the report there                  (default bench/VIEWERS_COST.md)
  --no-write     print the tables only, write no report`;
}

/** The entries of `all` whose keys `text` lists (plus `always`), in `all`'s order. */
function pick<T extends { key?: string; id?: string }>(
  flag: string,
  text: string,
  all: T[],
  always: string[],
): T[] {
  const id = (x: T) => x.key ?? x.id ?? "";
  const ids = new Set([...always, ...text.split(",").map((w) => w.trim()).filter((w) => w)]);
  for (const k of ids) {
    if (!all.some((x) => id(x) === k)) {
      throw new RangeError(`Invalid --${flag} "${k}": expected ${all.map(id).join(", ")}`);
    }
  }
  if (ids.size === 0) throw new RangeError(`Invalid --${flag}: none given`);
  return all.filter((x) => ids.has(id(x)));
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      rounds: { type: "string" },
      seconds: { type: "string" },
      warmup: { type: "string", default: "1" },
      settle: { type: "string" },
      quick: { type: "boolean" },
      "max-other": { type: "string", default: "0.3" },
      "max-reruns": { type: "string", default: "6" },
      "no-write": { type: "boolean" },
      results: { type: "string", default: RESULTS },
      configs: { type: "string", default: CONFIGS.map((c) => c.key).join(",") },
      loads: { type: "string", default: LOADS.map((s) => s.id).join(",") },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    writeStdoutLine(usage());
    return 0;
  }
  const quick = values.quick === true;
  const configs = pick("configs", values.configs, CONFIGS, ["a"]);
  const loads = pick("loads", values.loads, LOADS, []);
  const rounds = Math.round(numberFlag("rounds", values.rounds, quick ? 1 : 5, 1));
  const results = await runComparison({ targets: configs, loads, fresh: true }, {
    rounds,
    seconds: numberFlag("seconds", values.seconds, quick ? 2 : 5, 2),
    warmup: numberFlag("warmup", values.warmup, 1, 0),
    settle: numberFlag("settle", values.settle, quick ? 2 : 10, 0),
    maxOtherCores: numberFlag("max-other", values["max-other"], 0.3, 0),
    maxReruns: Math.round(numberFlag("max-reruns", values["max-reruns"], 6, 0)),
    log: (line) => writeStderrLine(`viewers_cost: ${line}`),
  });
  const rows = loads.flatMap((s) => loadRows(results, s, configs));
  const ratios = ratiosTo("a", configs.map((c) => c.key));
  const table = comparisonTable(rows, {
    targets: configs,
    ratios,
    title: (t) => t.title ?? t.key,
  }).replaceAll("a2 ÷", "a′ ÷");
  const watching = configs.filter((c) => results.watching.has(c.key)).map((c) => {
    const w = results.watching.get(c.key)!;
    return `- ${c.title}: ${
      fmt(w.events / VIEWERS / Math.max(1, w.seconds), 2)
    } SSE events/s per stream, \`top\` ${fmt(w.frames / Math.max(1, w.seconds), 2)} frames/s${
      results.accessLogLines.has(c.key)
        ? `; ${fmt(results.accessLogLines.get(c.key)!)} access-log lines`
        : ""
    }`;
  });
  const errors = [...results.loads.values()].flat().reduce((n, s) => n + s.bench.errors_total, 0);
  writeStdoutLine([table, watching.join("\n")].filter((t) => t).join("\n\n"));
  if (errors > 0) writeStdoutLine(`\n${errors} errors in load runs (see stderr)`);
  if (values["no-write"]) return errors > 0 ? 1 : 0;
  const command = `deno run -A bench/viewers_cost.ts ${args.join(" ")}`.trim();
  const md = `# Viewers' cost: dashboard stream, \`foo-proxy top\` and the access log

Generated by \`bench/viewers_cost.ts\` (the bench harness); re-run \`${command}\`.

${await machineFacts({ started: results.started, command, checkout: REPO_ROOT })}
- ${rounds} interleaved rounds, a fresh settled proxy per configuration and round;
  ${fmt(results.elapsedS)} s in all; ${results.reruns} run(s) repeated for other work on the machine

Configurations: ${configs.map((c) => `**${c.title}**`).join(", ")}. Values are medians over the
rounds; ratios are to a. Proxy CPU per reply = the proxy's CPU time between the load generator's
first and last progress lines, divided by the replies counted in between. "Other work" is the
machine's busy time minus that of every process of the bench (top and the twin included).

${table}

What the viewers did over the load runs:

${watching.join("\n")}

## Raw rounds

${rawRounds(results)}
`;
  await writeReport([values.results], md, `${REPO_ROOT}deno.json`);
  writeStderrLine(`viewers_cost: wrote ${values.results}`);
  return errors > 0 ? 1 : 0;
}

if (import.meta.main) {
  Deno.exit(
    await main(Deno.args).catch((error) => {
      writeStderrLine(`viewers_cost: ${error instanceof Error ? error.message : error}`);
      return error instanceof RangeError || error instanceof TypeError ? 2 : 1;
    }),
  );
}
