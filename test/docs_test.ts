/**
 * The reference in the README and docs/ is generated from the flag definitions: these tests fail
 * when a table and the parser disagree, or when `--help` does not list a flag.
 */
import assert from "node:assert/strict";
import { flagUsage } from "../src/cli/flag_help.ts";
import { PROXY_USAGE } from "../src/cmd/proxy.ts";
import { renderMetrics } from "../src/http/metrics.ts";
import { CLOSE_REASONS } from "../src/stats/counter_schema.ts";
import { Stats } from "../src/stats/stats.ts";
import { DOC_FILES, FLAG_TABLES, flagTableNames, renderFlagTables } from "../scripts/docs.ts";
import { REPO_ROOT } from "./_util.ts";

/** A Markdown table's cells, trimmed, without the separator row: deno fmt pads them. */
function cells(text: string): string[][] {
  return text.split("\n")
    .filter((line) => line.startsWith("|") && !/^\|[\s|:-]+\|$/.test(line))
    .map((line) => line.slice(1, -1).split(/(?<!\\)\|/).map((cell) => cell.trim()));
}

Deno.test("the flag tables of README.md and docs/tools.md are what the flag definitions say", async () => {
  const seen: string[] = [];
  for (const file of DOC_FILES) {
    const text = await Deno.readTextFile(`${REPO_ROOT}/${file}`);
    assert.deepEqual(cells(text), cells(renderFlagTables(text)), `${file}: run deno task docs`);
    seen.push(...flagTableNames(text));
  }
  assert.deepEqual(seen.sort(), Object.keys(FLAG_TABLES).sort(), "every subcommand has a table");
});

Deno.test("--help lists every flag of the proxy", () => {
  for (const [name, spec] of Object.entries(FLAG_TABLES.proxy)) {
    assert.ok(PROXY_USAGE.includes(flagUsage(name, spec)), name);
  }
});

Deno.test("docs/observability.md lists every metric family /metrics exposes", async () => {
  const stats = new Stats({ clock: () => 0 });
  // Per-worker families appear only with data-plane workers.
  stats.workers = () => [{ worker: 0, connections_active: 0, replies_per_second: 0, restarts: 0 }];
  const text = renderMetrics(stats.snapshot(), {});
  const families = [...text.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]);
  assert.ok(families.length > 20);
  const doc = await Deno.readTextFile(`${REPO_ROOT}/docs/observability.md`);
  assert.deepEqual(families.filter((family) => !doc.includes(family)), []);
});

Deno.test("the edge docs name every counter as /stats or /metrics spells it", async () => {
  const stats = new Stats({ clock: () => 0 });
  const snapshot = stats.snapshot() as unknown as Record<string, unknown>;
  const text = renderMetrics(stats.snapshot(), {});
  // Each family with the label names its samples carry, and every label value.
  const labels = new Map<string, Set<string>>();
  const values = new Set<string>();
  for (const [, family, body] of text.matchAll(/^(foo_proxy_\w+?)(?:\{([^}]*)\})? /gm)) {
    const base = family.replace(/_(bucket|sum|count)$/, "");
    const names = labels.get(base) ?? labels.set(base, new Set()).get(base)!;
    for (const [, name, value] of (body ?? "").matchAll(/(\w+)="([^"]*)"/g)) {
      names.add(name);
      values.add(value);
    }
  }
  // connections_closed lists only the reasons seen so far: its members are the schema's reasons.
  const nested = (key: string): readonly string[] =>
    key === "connections_closed" ? CLOSE_REASONS : Object.keys((snapshot[key] ?? {}) as object);
  const words = new Set([...Object.keys(snapshot), ...nested("connections_closed"), ...values]);
  const readme = await Deno.readTextFile(`${REPO_ROOT}/README.md`);
  const edge = readme.slice(readme.indexOf("## The edge"), readme.indexOf("## Flags"));
  const docs = edge + (await Deno.readTextFile(`${REPO_ROOT}/docs/edge.md`));
  const wrong: string[] = [];
  for (const [, name] of docs.matchAll(/`([a-z][a-z0-9_.]*(?:\{[^`}]*\})?)`/g)) {
    const brace = /^([\w.]+)\{(.*)\}$/.exec(name);
    if (brace !== null) {
      // A label set is /metrics' spelling: the family must exist and carry those labels.
      const keys = [...brace[2].matchAll(/(\w+)(?:=|,|$)/g)].map((m) => m[1]);
      const family = labels.get(brace[1]);
      if (family === undefined || keys.some((k) => !family.has(k))) wrong.push(name);
    } else if (name.startsWith("foo_proxy_")) {
      if (!labels.has(name)) wrong.push(name);
    } else if (/^(connections_closed|tls_handshake_failures)\./.test(name)) {
      const [group, member] = name.split(".");
      if (!nested(group).includes(member)) wrong.push(name);
    } else if (/^(ws|tls|upstream_tls|proxy_header|rate_limit|source_table)_/.test(name)) {
      if (!words.has(name)) wrong.push(name);
    }
  }
  assert.deepEqual(wrong, []);
});
