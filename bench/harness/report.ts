/**
 * The tables of a comparison and the results file: metrics as data, a column per target, ratio
 * columns for chosen pairs, and the facts a result needs to mean anything later (machine, date,
 * commit).
 *
 * @module
 */
import type { ComparisonResults, LoadScenario } from "./comparison.ts";
import type { IdleSample } from "./idle.ts";
import type { Sample } from "./load.ts";
import { fmt, median, ratio } from "./numbers.ts";
import { type TargetSpec, targetTitle } from "./target.ts";

/** A figure read from each load run. */
export interface Metric {
  /** Its row label. */
  label: string;
  /** Decimals shown. */
  digits: number;
  /** The figure of one run. */
  pick: (s: Sample) => number;
  /** Only proxies have it (direct shows "—"). @default false */
  proxyOnly?: boolean;
  /** Not a figure to divide (ratio columns show "—"). @default false */
  noRatio?: boolean;
}

/** The metrics a load scenario may show, by name. */
export const METRICS = {
  replies: { label: "replies/s", digits: 0, pick: (s) => s.bench.responses_per_sec },
  cpuPerReply: {
    label: "proxy CPU per reply (µs)",
    digits: 2,
    pick: (s) => s.cpuPerReplyUs,
    proxyOnly: true,
  },
  proxyCores: { label: "proxy CPU (cores)", digits: 2, pick: (s) => s.proxyCores, proxyOnly: true },
  serverCores: { label: "server CPU (cores)", digits: 2, pick: (s) => s.serverCores },
  p50: { label: "p50 (ms)", digits: 3, pick: (s) => s.bench.latency_p50_ms },
  p99: { label: "p99 (ms)", digits: 3, pick: (s) => s.bench.latency_p99_ms },
  p999: { label: "p99.9 (ms)", digits: 3, pick: (s) => s.bench.latency_p999_ms },
  connections: { label: "connections/s", digits: 0, pick: (s) => s.bench.connections_per_sec },
  cpuPerConnection: {
    label: "proxy CPU per connection (µs)",
    digits: 0,
    pick: (s) => s.cpuPerConnectionUs,
    proxyOnly: true,
  },
  otherCores: {
    label: "other work on the machine (cores)",
    digits: 2,
    pick: (s) => s.otherCores,
    noRatio: true,
  },
} satisfies Record<string, Metric>;

/** A metric's name. */
export type MetricId = keyof typeof METRICS;

/** A ratio column: `numerator ÷ denominator`, by target key. */
export type RatioPair = readonly [numerator: string, denominator: string];

/** Ratio pairs of every target in `numerators` (but `baseline` itself) to `baseline`. */
export function ratiosTo(baseline: string, numerators: readonly string[]): RatioPair[] {
  return numerators.filter((k) => k !== baseline).map((k) => [k, baseline] as const);
}

/** A Markdown table; the first `textColumns` columns are left-aligned, the rest right-aligned. */
export function markdownTable(header: string[], rows: string[][], textColumns = 2): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [
    line(header),
    line(header.map((_, i) => (i < textColumns ? "---" : "---:"))),
    ...rows.map(line),
  ].join("\n");
}

/** A table of medians: one row per value, a column per target, then the ratio columns. */
export interface ValueRow {
  scenario: string;
  metric: string;
  /** Median per target key (missing: "—"). */
  values: Record<string, number>;
  digits: number;
  /** Ratio columns show "—". @default false */
  noRatio?: boolean;
}

/** Options of {@linkcode comparisonTable}. */
export interface TableOptions {
  /** The columns, in order. */
  targets: readonly TargetSpec[];
  /** The ratio columns. */
  ratios: readonly RatioPair[];
  /** Title of a target's column. @default its title or key */
  title?: (spec: TargetSpec) => string;
}

/** The Markdown table of `rows`. */
export function comparisonTable(rows: readonly ValueRow[], options: TableOptions): string {
  const title = options.title ?? targetTitle;
  const name = (key: string) =>
    key === "haproxy" ? "HAProxy" : options.targets.find((t) => t.key === key)?.key ?? key;
  return markdownTable(
    [
      "scenario",
      "metric",
      ...options.targets.map(title),
      ...options.ratios.map(([a, b]) => `${name(a)} ÷ ${name(b)}`),
    ],
    rows.map((r) => [
      r.scenario,
      r.metric,
      ...options.targets.map((t) => fmt(r.values[t.key] ?? NaN, r.digits)),
      ...options.ratios.map(([a, b]) =>
        r.noRatio ? "—" : ratio(r.values[a] ?? NaN, r.values[b] ?? NaN)
      ),
    ]),
  );
}

/** The medians of `scenario`'s `metrics` per target, one row each. */
export function loadRows(
  results: ComparisonResults,
  scenario: LoadScenario,
  targets: readonly TargetSpec[],
): ValueRow[] {
  return scenario.metrics.map((id) => {
    const m: Metric = METRICS[id];
    return {
      scenario: scenario.label,
      metric: m.label,
      digits: m.digits,
      noRatio: m.noRatio,
      values: Object.fromEntries(targets.map((t) => [
        t.key,
        m.proxyOnly && t.kind === "direct"
          ? NaN
          : median((results.loads.get(`${scenario.id}/${t.key}`) ?? []).map(m.pick)),
      ])),
    };
  }).filter((r) => Object.values(r.values).some(Number.isFinite));
}

/** The idle-memory rows (growth per connection, and its second-half slope). */
export function idleRows(results: ComparisonResults, label: string, held: number): ValueRow[] {
  if (results.idle.size === 0) return [];
  const values = (pick: (s: IdleSample) => number) =>
    Object.fromEntries([...results.idle].map(([key, list]) => [key, median(list.map(pick))]));
  return [
    {
      scenario: label,
      metric: `RSS growth per connection (KiB), ${fmt(held)} held`,
      digits: 2,
      values: values((s) => s.kibPerConnection),
    },
    {
      scenario: label,
      metric: "of which marginal (KiB per connection, 2nd half)",
      digits: 2,
      values: values((s) => s.marginalKib),
    },
  ];
}

/** Every load run, round by round (the report's appendix). */
export function rawRounds(results: ComparisonResults): string {
  const loads = [...results.loads].map(([key, list]) => [
    key,
    list.map((s) => fmt(s.bench.responses_per_sec)).join(", "),
    list.map((s) => fmt(s.bench.connections_per_sec)).join(", "),
    list.map((s) => fmt(s.cpuPerReplyUs, 3)).join(", "),
    list.map((s) => fmt(s.bench.latency_p99_ms, 3)).join(", "),
    list.map((s) => fmt(s.otherCores, 2)).join(", "),
    String(list.reduce((n, s) => n + s.bench.errors_total, 0)),
  ]);
  const idle = [...results.idle].map(([key, list]) => [
    key,
    list.map((s) => s.kibPerConnection.toFixed(2)).join(", "),
    list.map((s) => s.marginalKib.toFixed(2)).join(", "),
    list.map((s) => `${fmt(s.beforeKib)} → ${fmt(s.halfKib)} → ${fmt(s.afterKib)}`).join(", "),
  ]);
  return [
    loads.length === 0 ? "" : markdownTable(
      [
        "scenario/target",
        "replies/s",
        "connections/s",
        "proxy CPU per reply (µs)",
        "p99 (ms)",
        "other work (cores)",
        "errors",
      ],
      loads,
      1,
    ),
    idle.length === 0 ? "" : markdownTable(
      ["idle target", "KiB per connection", "marginal KiB (2nd half)", "RSS before → half → all"],
      idle,
      1,
    ),
  ].filter((t) => t !== "").join("\n\n");
}

async function output(command: string, args: string[]): Promise<string | undefined> {
  try {
    const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "null" })
      .output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

/** The commit of `checkout` (short), and whether its src/ has uncommitted changes. */
export async function codeMeasured(checkout: string): Promise<string> {
  const commit = await output("git", ["-C", checkout, "rev-parse", "--short", "HEAD"]);
  if (commit === undefined) return `${checkout} (not a git checkout)`;
  const dirty = await output("git", ["-C", checkout, "status", "--porcelain", "src"]);
  return `commit ${commit}${dirty ? " with uncommitted changes in src/" : ""}`;
}

/** The facts a result file starts with: date, command, machine, Deno, HAProxy, code. */
export async function machineFacts(
  options: { started: Date; command: string; checkout: string },
): Promise<string> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const cpu = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown CPU";
  const memKib = Number(
    /^MemTotal:\s+(\d+)/m.exec(await Deno.readTextFile("/proc/meminfo").catch(() => ""))?.[1],
  );
  const kernel = (await output("uname", ["-r"])) ?? "unknown";
  const haproxy = (await output("haproxy", ["-v"]))?.split("\n")[0] ?? "not installed";
  return [
    `- Date: ${options.started.toISOString()}`,
    `- Command: \`${options.command}\``,
    `- Machine: ${navigator.hardwareConcurrency} CPUs (${cpu}), ${
      fmt(memKib / 1024 / 1024, 1)
    } GiB RAM, Linux ${kernel}`,
    `- Deno ${Deno.version.deno} (V8 ${Deno.version.v8}); HAProxy: ${haproxy}`,
    `- Code measured: ${await codeMeasured(options.checkout)}`,
  ].join("\n");
}

/** Writes `markdown` to each of `files` (directories made), formatted with `config`'s settings. */
export async function writeReport(
  files: readonly string[],
  markdown: string,
  config: string,
): Promise<void> {
  for (const file of new Set(files)) {
    await Deno.mkdir(file.slice(0, file.lastIndexOf("/")) || ".", { recursive: true });
    await Deno.writeTextFile(file, markdown);
    await new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--quiet", "--config", config, file],
      stderr: "null",
    }).output();
  }
}

/** Options of {@linkcode summaryTable}. */
export interface SummaryOptions {
  /** The rows: one per target. */
  targets: readonly TargetSpec[];
  /** The columns: figures picked from the comparison's rows. */
  columns: readonly { heading: string; row: ValueRow | undefined }[];
  /** The target every figure is also divided by (HAProxy); unset: no ratios. */
  baseline?: string;
  /** Title of a target's row. @default its title or key */
  title?: (spec: TargetSpec) => string;
}

/**
 * The figures that matter most, transposed: a row per target, a column per figure, each followed
 * by its ratio to `baseline` (so adding targets adds rows, not columns); "" when no figure was
 * measured.
 */
export function summaryTable(options: SummaryOptions): string {
  const title = options.title ?? targetTitle;
  const columns = options.columns.filter((c) => c.row !== undefined);
  if (columns.length === 0) return "";
  const base = options.baseline;
  return markdownTable(
    [
      "target",
      ...columns.flatMap((c) => base === undefined ? [c.heading] : [c.heading, "÷ HAProxy"]),
    ],
    options.targets.map((t) => [
      title(t),
      ...columns.flatMap((c) => {
        const v = c.row!.values[t.key] ?? NaN;
        const cell = fmt(v, c.row!.digits);
        return base === undefined ? [cell] : [cell, ratio(v, c.row!.values[base] ?? NaN)];
      }),
    ]),
    1,
  );
}
