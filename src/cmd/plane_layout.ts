/**
 * How many data planes `foo-proxy proxy` runs and where ({@linkcode planeLayout}), and the
 * per-upstream rows of `/stats` put together from the supervisor's states and the planes'
 * counts ({@linkcode mergeUpstreams}).
 *
 * @module
 */
import type { UpstreamSnapshot } from "../proxy/upstream_pool.ts";
import type { DataPlanes } from "./data_planes.ts";
import type { ProxyConfig } from "./proxy_config.ts";

/** The data planes to run: how many, and whether in Workers. */
export interface PlaneLayout {
  count: number;
  /** Workers (true), or one plane on the main thread. */
  thread: boolean;
  /** Why fewer planes run than `auto` would (logged as a warning); unset: nothing to say. */
  note?: string;
}

/** What the runtime allows, as {@linkcode planeLayout} asks it (tests hand their own). */
export interface PlaneRuntime {
  /** CPUs (`navigator.hardwareConcurrency`). */
  cpus: number;
  /** Whether the Worker modules can be loaded (read access to `src/`, or a compiled binary). */
  workerModules: boolean;
  /** Where the Worker modules are read from (for the message). */
  moduleDir: string;
  /** Whether `Deno.listen({ reusePort })` is available (`--unstable-net`). */
  reusePort: boolean;
}

/** The directory the data-plane Worker and its imports are loaded from (`src/`). */
export const PLANE_MODULE_DIR = new URL("..", import.meta.url);

/** What this process allows. */
export function currentRuntime(): PlaneRuntime {
  const dir = decodeURIComponent(PLANE_MODULE_DIR.pathname).replace(/\/$/, "");
  let readable = Deno.build.standalone;
  if (!readable && PLANE_MODULE_DIR.protocol === "file:") {
    readable = Deno.permissions.querySync({ name: "read", path: dir }).state === "granted";
  }
  return {
    cpus: Math.max(1, navigator.hardwareConcurrency || 1),
    workerModules: readable,
    moduleDir: dir,
    // `listenDatagram` exists exactly when --unstable-net is on, like `reusePort`.
    reusePort: typeof (Deno as unknown as Record<string, unknown>).listenDatagram === "function",
  };
}

/**
 * The planes for `config.workers` (`undefined`: auto, one per CPU) on `runtime`, or the one line
 * that says why the asked number cannot run (exit 2). `auto` takes what the runtime allows and
 * says what is missing; an explicit number gets exactly that or an error. One plane without
 * Worker modules runs on the main thread.
 */
export function planeLayout(
  config: Pick<ProxyConfig, "workers">,
  runtime: PlaneRuntime = currentRuntime(),
): PlaneLayout | string {
  const asked = config.workers;
  const wanted = asked ?? runtime.cpus;
  const readGrant = `--allow-read=${runtime.moduleDir}`;
  if (!runtime.workerModules) {
    if (asked !== undefined && asked > 1) {
      return `--workers ${asked}: the data-plane workers are loaded from ${runtime.moduleDir}, which is not readable: add ${readGrant} (the compiled binary needs nothing), or use --workers 1`;
    }
    return {
      count: 1,
      thread: false,
      note: asked === undefined && wanted > 1
        ? `Using 1 core of ${wanted}: the data-plane workers are loaded from ${runtime.moduleDir}, which is not readable (add ${readGrant}, as deno task start does; the compiled binary needs nothing)`
        : undefined,
    };
  }
  if (wanted > 1 && !runtime.reusePort) {
    if (asked !== undefined) {
      return `--workers ${asked} needs --unstable-net (each worker listens on the port with SO_REUSEPORT): run deno with --unstable-net, as deno task start does, or use --workers 1`;
    }
    return {
      count: 1,
      thread: true,
      note:
        `Using 1 core of ${wanted}: workers sharing the port need --unstable-net (SO_REUSEPORT); run deno with --unstable-net, as deno task start does`,
    };
  }
  return { count: wanted, thread: true };
}

/**
 * The per-upstream rows: each upstream the supervisor knows, with its state, checks and
 * ejections, and the connections, requests, replies and errors the planes counted (plus those
 * of planes that died); then those only the planes still have connections to (removed by a
 * reload, draining).
 */
export function mergeUpstreams(
  control: UpstreamSnapshot[],
  planes: Pick<DataPlanes, "upstreamCounts" | "upstreamRows"> | undefined,
): UpstreamSnapshot[] {
  const counts = planes?.upstreamCounts() ?? new Map();
  const rows = control.map((row) => ({ ...row, ...(counts.get(row.name) ?? {}) }));
  const known = new Set(control.map((row) => row.name));
  for (const row of planes?.upstreamRows() ?? []) {
    if (known.has(row.name)) continue;
    known.add(row.name);
    rows.push({ ...row, ...(counts.get(row.name) ?? {}), state: "draining" });
  }
  return rows;
}
