/**
 * foo-proxy's entry point: dispatches the subcommand (`proxy` when none is named).
 *
 * @module
 */
import { VERSION } from "./version.ts";
import { type CommandContext, reportUsageError, writeStdoutLine } from "./cmd/output.ts";
import { runProxy } from "./cmd/proxy.ts";
import { runClientCommand } from "./cmd/client.ts";
import { runServer } from "./cmd/server.ts";
import { runBench } from "./cmd/bench.ts";
import { runTop } from "./cmd/top.ts";
import { runWait } from "./cmd/wait.ts";

type Command = (args: string[], context?: CommandContext) => Promise<number>;

const COMMANDS: Record<string, { run: Command; summary: string }> = {
  proxy: { run: runProxy, summary: "proxy Foo traffic and count it (the default)" },
  server: { run: runServer, summary: "a Foo server for demos and tests" },
  client: { run: runClientCommand, summary: "drive a Foo server or proxy and verify every reply" },
  bench: { run: runBench, summary: "load-test a Foo endpoint and verify every reply" },
  top: { run: runTop, summary: "a live terminal view of a running proxy's /stats" },
  wait: { run: runWait, summary: "wait until addresses accept connections or a proxy serves" },
};

const USAGE = () =>
  `foo-proxy ${VERSION}: a protocol-aware TCP proxy for the Foo line protocol

Usage: foo-proxy [SUBCOMMAND] [flags]

Subcommands:
${Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`).join("\n")}

Run "foo-proxy SUBCOMMAND --help" for its flags.`;

/** Runs foo-proxy with `args` and resolves with the exit code. */
export async function main(args: string[]): Promise<number> {
  const [first, ...rest] = args;
  if (first !== undefined && first in COMMANDS) return await COMMANDS[first].run(rest);
  if (first === "help") {
    writeStdoutLine(USAGE());
    return 0;
  }
  if (first !== undefined && /^[a-z]/.test(first)) {
    return reportUsageError(
      `unknown subcommand "${first}" (expected ${Object.keys(COMMANDS).join(", ")})`,
    );
  }
  return await runProxy(args);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
