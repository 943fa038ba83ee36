/**
 * Where `--taskset` puts a proxy and what runs beside it.
 *
 * @module
 */

/** A `--workers` value: a count of data-plane workers, or `auto` (one per CPU). */
export type WorkerCount = number | "auto";

/** A proxy's cores and the cores of everything else, as `taskset -c` core lists. */
export interface Pinning {
  /** The proxy's cores, e.g. `0` or `0-1`. */
  proxy: string;
  /** The load generator's and the upstream's cores; unset: every core (none is left). */
  rest: string | undefined;
}

/**
 * The pinning of a proxy with `workers` threads on a machine with `cpus` cores: the first
 * `workers` cores (all of them for `auto` or more workers than cores), the rest for the load.
 */
export function pinning(workers: WorkerCount, cpus: number): Pinning {
  const n = workers === "auto" ? cpus : Math.min(workers, cpus);
  const range = (from: number, to: number) => from === to ? `${from}` : `${from}-${to}`;
  return { proxy: range(0, n - 1), rest: n < cpus ? range(n, cpus - 1) : undefined };
}

/** Moves every thread of `pid` to the cores `cpus` (unset: all of them) with `taskset -a -p`. */
export async function pinProcess(pid: number, cpus: string | undefined): Promise<void> {
  const list = cpus ?? `0-${navigator.hardwareConcurrency - 1}`;
  const out = await new Deno.Command("taskset", {
    args: ["-a", "-p", "-c", list, String(pid)],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`taskset -a -p -c ${list} ${pid}: ${new TextDecoder().decode(out.stderr)}`);
  }
}
