/**
 * The layering of DESIGN.md §2, checked on every import under src/: `protocol/` and `stats/` are
 * pure, `async/` (the abortable wait, injectable timers) and `net/` (addresses, dial helpers) sit
 * under both the proxy and the bundled tools, then `proxy/` ← `http/` ← `cmd/`.
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "./_util.ts";

/** The folders each folder of src/ may import from (its own always). */
const MAY_IMPORT: Record<string, string[]> = {
  protocol: [],
  stats: ["protocol"],
  async: [],
  net: ["async"],
  proxy: ["async", "net", "protocol", "stats"],
  http: ["async", "net", "protocol", "stats", "proxy"],
  tools: ["async", "net", "protocol", "stats"],
  cli: ["async", "net", "protocol", "stats", "proxy"],
  cmd: ["async", "net", "protocol", "stats", "proxy", "http", "tools", "cli"],
};

/** The relative imports of `text` (static, re-exports and dynamic). */
function importsOf(text: string): string[] {
  return [...text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)"(\.[^"]+)"/g)].map((m) => m[1]);
}

/** `src/<folder>/…` → folder; a file directly in src/ (version.ts, main.ts) → its name. */
function layerOf(path: string): string {
  const parts = path.split("/");
  return parts[1];
}

async function sourceFiles(dir = "src"): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(`${REPO_ROOT}/${dir}`)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) out.push(...await sourceFiles(path));
    else if (entry.name.endsWith(".ts")) out.push(path);
  }
  return out;
}

function resolve(from: string, spec: string): string {
  return new URL(spec, `file:///${from}`).pathname.slice(1);
}

Deno.test("every import under src/ follows the layering (protocol/stats pure ← async/net ← proxy ← http ← cmd)", async () => {
  const files = await sourceFiles();
  const folders = new Set(files.filter((f) => f.split("/").length > 2).map(layerOf));
  assert.deepEqual([...folders].sort(), Object.keys(MAY_IMPORT).sort(), "a folder without rules");
  const broken: string[] = [];
  for (const file of files) {
    const from = layerOf(file);
    if (!(from in MAY_IMPORT)) continue; // main.ts, version.ts
    for (const spec of importsOf(await Deno.readTextFile(`${REPO_ROOT}/${file}`))) {
      const target = resolve(file, spec);
      const to = layerOf(target);
      if (target === "src/main.ts") broken.push(`${file} imports ${target}`);
      if (to === from || !(to in MAY_IMPORT)) continue; // its own folder, or version.ts
      if (!MAY_IMPORT[from].includes(to)) broken.push(`${file} imports ${target}`);
    }
  }
  assert.deepEqual(broken, []);
});

Deno.test("importsOf() finds static, type-only, multi-line, re-export and dynamic imports", () => {
  const text = `import { a } from "../x/a.ts";
import type { B } from "./b.ts";
import {
  c,
} from "../y/c.ts";
export { d } from "../z/d.ts";
import "../side.ts";
const e = await import("../w/e.ts");
import x from "npm:x";`;
  assert.deepEqual(importsOf(text), [
    "../x/a.ts",
    "./b.ts",
    "../y/c.ts",
    "../z/d.ts",
    "../side.ts",
    "../w/e.ts",
  ]);
});
