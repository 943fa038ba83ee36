/**
 * `deno task docs`: writes the flag tables of README.md and docs/tools.md from the flag
 * definitions (the same ones `--help` is made from), between `<!-- BEGIN flags NAME -->` and
 * `<!-- END flags NAME -->`. `test/docs_test.ts` fails when a table and its definitions disagree.
 *
 * @module
 */
import { formatFlagTable } from "../src/cli/flag_help.ts";
import { envName, type FlagSpec } from "../src/cli/flags.ts";
import { BENCH_FLAGS } from "../src/cmd/bench.ts";
import { CLIENT_FLAGS } from "../src/cmd/client.ts";
import { PROXY_FLAGS } from "../src/cmd/proxy.ts";
import { SERVER_FLAGS } from "../src/cmd/server.ts";
import { TOP_FLAGS } from "../src/cmd/top.ts";
import { WAIT_FLAGS } from "../src/cmd/wait.ts";

/** The flag definitions of each table, by the name its markers use. */
export const FLAG_TABLES: Record<string, Record<string, FlagSpec>> = {
  proxy: PROXY_FLAGS,
  server: SERVER_FLAGS,
  client: CLIENT_FLAGS,
  bench: BENCH_FLAGS,
  top: TOP_FLAGS,
  wait: WAIT_FLAGS,
};

/** The files that hold flag tables, relative to the repository root. */
export const DOC_FILES = ["README.md", "docs/tools.md"];

const BLOCK = /(<!-- BEGIN flags (\w+) -->\n)[\s\S]*?(<!-- END flags \2 -->)/g;

/** `text` with every marked flag table written afresh from its definitions. */
export function renderFlagTables(text: string): string {
  return text.replace(BLOCK, (_all, begin: string, name: string, end: string) => {
    const specs = FLAG_TABLES[name];
    if (!specs) throw new Error(`No flag definitions named "${name}"`);
    return `${begin}\n${formatFlagTable(specs, envName)}\n\n${end}`;
  });
}

/** The names of the marked tables in `text`. */
export function flagTableNames(text: string): string[] {
  return [...text.matchAll(BLOCK)].map((m) => m[2]);
}

if (import.meta.main) {
  const root = new URL("..", import.meta.url);
  for (const file of DOC_FILES) {
    const url = new URL(file, root);
    const text = await Deno.readTextFile(url);
    await Deno.writeTextFile(url, renderFlagTables(text));
  }
}
