/**
 * `foo-proxy wait [ADDR…] [--pid-file FILE]`: flags and the exit code around
 * {@linkcode waitReady}. Exit 0 once everything named is ready, 1 (one stderr line saying what and
 * why) when the timeout passes first, 2 for a usage error.
 *
 * @module
 */
import { DURATION_HELP, parseDuration } from "../cli/duration.ts";
import { formatAddress, parseAddress } from "../net/address.ts";
import { formatFlagHelp, formatSynopsis } from "../cli/flag_help.ts";
import { denoEnvReader, type FlagSpec, parseFlags, UsageError } from "../cli/flags.ts";
import { NotReadyError, type ReadyTarget, waitReady } from "../tools/wait_ready.ts";
import { startCommand } from "./command_start.ts";
import { type CommandContext, writeStderrLine, writeStdoutLine } from "./output.ts";

/** Flags of `foo-proxy wait`: the one definition the parser, `--help` and the docs use. */
export const WAIT_FLAGS: Record<string, FlagSpec> = {
  "pid-file": {
    type: "string",
    value: "FILE",
    defaultText: "none",
    help:
      "also wait until a running foo-proxy holds FILE (its --pid-file) and has written its pid there, which it does once it serves",
  },
  timeout: {
    type: "string",
    default: "10s",
    value: "DUR",
    help: "give up after this long: exit 1 saying what was not ready and why (0 = check once)",
  },
  help: { type: "boolean", short: "h", env: false, help: "print this help" },
  version: { type: "boolean", short: "V", env: false, help: "print the version" },
};

/** One-line synopsis of `foo-proxy wait`. */
export const WAIT_SYNOPSIS = `foo-proxy wait [ADDR…] ${formatSynopsis(WAIT_FLAGS)}`;

/** Usage text of `foo-proxy wait`. */
export const WAIT_USAGE = `Usage: foo-proxy wait [ADDR…] [flags]

Waits until every ADDR accepts a TCP connection (a bare PORT means localhost) and, with
--pid-file, until a running foo-proxy has written its pid to that file; then exits 0, printing
nothing. For scripts that start a server or the proxy in the background:

  foo-proxy server --listen 127.0.0.1:8001 &
  foo-proxy wait 127.0.0.1:8001 && foo-proxy client --connect 8001

Exits 1 with one line on stderr when --timeout passes first, 2 for a bad flag.

Flags (each also from FOO_PROXY_<NAME>, e.g. FOO_PROXY_TIMEOUT; flags win):
${formatFlagHelp(WAIT_FLAGS)}

ADDR is :PORT, PORT, HOST:PORT or [IPv6]:PORT. ${DURATION_HELP}`;

/** Parsed configuration of `foo-proxy wait`. */
export interface WaitConfig {
  /** What to wait for, in order. */
  targets: ReadyTarget[];
  timeoutMs: number;
  /** Not a flag: wait logs nothing (its one line of outcome is not a log). */
  logLevel: string;
  /** Not a flag (see `logLevel`). */
  logFormat: string;
  help: boolean;
  version: boolean;
}

/**
 * Parses the arguments of `foo-proxy wait` (and `FOO_PROXY_*` through `getEnv`).
 *
 * @throws {UsageError} naming the bad flag or address, or when there is nothing to wait for.
 */
export function parseWaitConfig(
  args: readonly string[],
  getEnv?: (name: string) => string | undefined,
): WaitConfig {
  const positionals: string[] = [];
  const v = parseFlags(args, WAIT_FLAGS, { getEnv, positionals });
  const targets: ReadyTarget[] = positionals.map((text) => {
    let address;
    try {
      address = parseAddress(text, { defaultHost: "localhost" });
    } catch (error) {
      throw new UsageError((error as Error).message, { cause: error });
    }
    if (address.port === 0) throw new UsageError(`"${text}": port 0 cannot be connected to`);
    return { address };
  });
  const pidFile = v["pid-file"];
  if (pidFile === "") throw new UsageError("--pid-file: the path is empty");
  if (typeof pidFile === "string") targets.push({ pidFile });
  const help = v.help === true;
  const version = v.version === true;
  if (targets.length === 0 && !help && !version) {
    throw new UsageError("nothing to wait for: name an ADDR or --pid-file FILE");
  }
  return {
    targets,
    timeoutMs: parseDuration("timeout", v.timeout),
    logLevel: "error",
    logFormat: "text",
    help,
    version,
  };
}

/** Runs `foo-proxy wait`; resolves with the exit code. */
export async function runWait(args: string[], context: CommandContext = {}): Promise<number> {
  const started = startCommand(() => parseWaitConfig(args, denoEnvReader()), {
    usage: WAIT_USAGE,
    command: "foo-proxy wait",
    stdout: context.stdout ?? writeStdoutLine,
  });
  if (typeof started === "number") return started;
  using _logging = started.logging;
  // A missing grant never comes by waiting: say which at once.
  const missing = missingGrants(started.config.targets);
  if (missing.length > 0) {
    writeStderrLine(
      `foo-proxy wait: Missing permission${missing.length > 1 ? "s" : ""}: ${
        missing.map((m) => m.what).join(", ")
      }; run it with ${missing.map((m) => m.flag).join(" ")}`,
    );
    return 2;
  }
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  context.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    await waitReady(started.config.targets, {
      timeoutMs: started.config.timeoutMs,
      signal: stop.signal,
    });
    return 0;
  } catch (error) {
    if (!(error instanceof NotReadyError)) throw error;
    writeStderrLine(`foo-proxy wait: ${error.message}`);
    return 1;
  } finally {
    context.signal?.removeEventListener("abort", onAbort);
  }
}

/** The grants `targets` need that this process lacks, each as words and the flag that adds it. */
function missingGrants(targets: readonly ReadyTarget[]): { what: string; flag: string }[] {
  const missing: { what: string; flag: string }[] = [];
  for (const target of targets) {
    if (target.address !== undefined) {
      const host = formatAddress(target.address);
      if (Deno.permissions.querySync({ name: "net", host }).state !== "granted") {
        missing.push({ what: `net access to ${host}`, flag: `--allow-net=${host}` });
      }
    } else {
      const path = target.pidFile;
      if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") {
        missing.push({ what: `read access to ${path}`, flag: `--allow-read=${path}` });
      }
    }
  }
  return missing;
}
