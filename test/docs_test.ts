/**
 * The reference in the README and docs/ is generated from the flag definitions: these tests fail
 * when a table and the parser disagree, or when `--help` does not list a flag.
 */
import assert from "node:assert/strict";
import { flagUsage } from "../src/cli/flag_help.ts";
import { PROXY_USAGE } from "../src/cmd/proxy.ts";
import { renderMetrics } from "../src/http/metrics.ts";
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
