/**
 * The Foo servers (`foo-proxy server`) behind a bench's targets.
 *
 * @module
 */
import type { Child } from "../../scripts/child.ts";
import { HOST, REPO_ROOT, spawnProcess } from "./spawn.ts";

/** A Foo server the targets forward to. */
export interface Upstream {
  /** Its name in `--forward name=addr` lists and HAProxy's backend. */
  name: string;
  port: number;
  child: Child;
}

/** Options of {@linkcode startServer}. */
export interface ServerOptions {
  /** Its name. @default "a" */
  name?: string;
  /** The checkout whose `src/main.ts` runs it. @default this checkout */
  checkout?: string;
  /** Extra `foo-proxy server` flags (`--reply hash`, `--delay-ms 5`). @default [] */
  flags?: readonly string[];
  /** fd limit. @default 65536 */
  fdLimit?: number;
}

/** Starts `foo-proxy server` on a free port; resolves once it listens. */
export async function startServer(options: ServerOptions = {}): Promise<Upstream> {
  const name = options.name ?? "a";
  const child = spawnProcess(Deno.execPath(), [
    "run",
    "--allow-net",
    "--allow-env=FOO_PROXY_*",
    "src/main.ts",
    "server",
    "--listen",
    `${HOST}:0`,
    "--log-level",
    "warning",
    ...(options.flags ?? []),
  ], { name: `Foo server ${name}`, cwd: options.checkout ?? REPO_ROOT, fdLimit: options.fdLimit });
  const m = await child.stdout.waitFor(/listening on \S+:(\d+)/, "listening on").catch(
    async (e) => {
      await child[Symbol.asyncDispose]();
      throw new Error(`${child.name} did not start (${e.message}): ${child.stderr.tail()}`);
    },
  );
  return { name, port: Number(m[1]), child };
}
