/**
 * Starting the processes a bench compares: through `sh` for a raised fd limit (idle scenarios
 * hold thousands of sockets) and optionally under `taskset`; sh and taskset exec the command, so
 * the child's pid is the command's. Also free ports, and waiting for a child to listen.
 *
 * @module
 */
import { Child } from "../../scripts/child.ts";
import { freePorts as freePortsBelowEphemeral } from "../../scripts/free_port.ts";

/** The address every bench process listens on. */
export const HOST = "127.0.0.1";

/** The checkout this harness belongs to (with a trailing slash). */
export const REPO_ROOT: string = new URL("../../", import.meta.url).pathname;

/** Options of {@linkcode spawnProcess}. */
export interface SpawnOptions {
  /** The name in messages. */
  name: string;
  /** Working directory. */
  cwd: string;
  /** The fd limit to raise to (the hard limit when lower). @default 65536 */
  fdLimit?: number;
  /** `taskset -c` core list; unset: not pinned. */
  cpus?: string;
}

/** Starts `command args` with a raised fd limit, optionally pinned. */
export function spawnProcess(command: string, args: string[], options: SpawnOptions): Child {
  const script = `ulimit -n ${
    options.fdLimit ?? 65536
  } 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`;
  const argv = options.cpus === undefined
    ? [command, ...args]
    : ["taskset", "-c", options.cpus, command, ...args];
  return new Child(["-c", script, "sh", ...argv], {
    name: options.name,
    command: "sh",
    cwd: options.cwd,
    env: { NO_COLOR: "1" },
    disposeSignal: "SIGTERM",
    disposeGraceMs: 5000,
  });
}

/** `count` distinct free ports on {@linkcode HOST}, below the ephemeral range (`scripts/free_port.ts`). */
export function freePorts(count: number): number[] {
  return freePortsBelowEphemeral(count, HOST);
}

/**
 * Why a child that should be listening is not: its exit status (2 is a usage error, e.g. a flag
 * this build does not know) and the tail of its stderr.
 */
export async function exitReason(child: Child): Promise<string> {
  const status = await child.status;
  const hint = status.code === 2
    ? " (foo-proxy's status for a usage or permission error, e.g. a flag this build does not know)"
    : "";
  const tail = child.stderr.tail(600).trim();
  return `${child.name} exited with status ${status.code}${hint} before it listened${
    tail ? `:\n${tail}` : ""
  }`;
}

/**
 * Polls until `port` accepts a connection; throws, naming the exit status and stderr, as soon as
 * `child` exits instead, and after `timeoutMs`.
 */
export async function waitForPort(port: number, child: Child, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      (await Deno.connect({ hostname: HOST, port })).close();
      return;
    } catch {
      if (child.exited) throw new Error(await exitReason(child));
      if (Date.now() > deadline) {
        throw new Error(`${child.name} is not listening on ${port}: ${child.stderr.tail()}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}
