/**
 * The targets a bench compares, as data ({@linkcode TargetSpec}), and how each is started and torn
 * down: direct (no proxy), foo-proxy from this or another checkout with any extra flags, a
 * watched foo-proxy (dashboard streams, `top`, an access log), the bare forwarder, and HAProxy
 * with a generated configuration (`haproxy_config.ts`). The Foo servers behind them are in
 * `foo_server.ts`.
 *
 * @module
 */
import type { Child } from "../../scripts/child.ts";
import type { Upstream } from "./foo_server.ts";
import { haproxyConfig } from "./haproxy_config.ts";
import type { Pinning, WorkerCount } from "./pinning.ts";
import { freePorts, HOST, REPO_ROOT, spawnProcess, waitForPort } from "./spawn.ts";
import { attachWatchers, type Watchers } from "./watchers.ts";

const BARE = new URL("../bare_forwarder.ts", import.meta.url).pathname;

/** The runtime flags of `deno task start` when a checkout's deno.json does not say. */
const FALLBACK_START_FLAGS = [
  "--allow-net",
  "--allow-env=FOO_PROXY_*",
  "--v8-flags=--max-semi-space-size=8",
];

/** One column of a comparison: what the load runs against. */
export interface TargetSpec {
  /** Its key in samples and ratio headings: `direct`, `foo-proxy`, `mux2`, `haproxy`. */
  key: string;
  /** What it is. */
  kind: "direct" | "foo" | "bare" | "haproxy";
  /** Its column heading. @default key */
  title?: string;
  /** foo: extra `proxy` flags, after the harness's own. @default [] */
  flags?: readonly string[];
  /** foo: the checkout to run `src/main.ts` from. @default this checkout */
  checkout?: string;
  /** foo: extra runtime flags after those of `deno task start`. @default [] */
  denoFlags?: readonly string[];
  /** foo: serve `--http` and `--health` on free ports (off: both `off`). @default true */
  admin?: boolean;
  /** foo: `--log-level`. @default "warning" */
  logLevel?: string;
  /** foo: `--workers`, for pinning only (pass the flag in `flags`). @default "auto" */
  workers?: WorkerCount;
  /** foo: dashboard streams plus one `top` watching it; 0: none. @default 0 */
  viewers?: number;
  /** foo: the viewers watch an idle twin process instead of this one. @default false */
  viewersOnTwin?: boolean;
  /** foo: `--access-log` mode, written to a file in the run's temp dir. @default "off" */
  accessLog?: "off" | "text" | "json";
  /** haproxy: `balance` of the backend; unset: HAProxy's default. */
  balance?: string;
  /** haproxy: `check inter` (ms) on every server, plus `option redispatch`; unset: no checks. */
  checkMs?: number;
  /** The settling load's `foo-proxy bench` flags (e.g. `--tls --ca FILE`); unset: throughput. */
  settleArgs?: readonly string[];
  /** haproxy: terminate TLS with this PEM (certificate then key); unset: plain TCP. */
  sslCrt?: string;
  /** With `--taskset`: the proxy's cores and the load's. Unset: not pinned. */
  pin?: Pinning;
}

/** A started target. Disposing it stops it and whatever watches it. */
export interface RunningTarget extends AsyncDisposable {
  spec: TargetSpec;
  /** Where the load connects. */
  port: number;
  /** The proxy process; unset for direct. */
  child?: Child;
  /** foo: its stats app's port (admin on). */
  httpPort?: number;
  /** foo: data-plane workers it runs, from its `/stats` (admin on). */
  workers?: number;
  /** foo: its watchers (on it, or on its twin). */
  watchers?: Watchers;
  /** foo: the access-log file. */
  accessLogFile?: string;
  /** Processes beside the proxy whose CPU is not "other work" (top, the twin). */
  helperPids: number[];
  /** HAProxy: its generated configuration. */
  haproxyConfig?: string;
  /** HAProxy: its stats socket (admin level). */
  haproxySocket?: string;
}

/** What every target of a run shares. */
export interface StartContext {
  /** Where the targets forward. */
  upstreams: readonly Upstream[];
  /** A directory for generated files (HAProxy's config, access logs). */
  tmpDir: string;
  /** fd limit of each process. @default 65536 */
  fdLimit?: number;
  /** Whether to pin processes with `spec.pin`. @default false */
  taskset?: boolean;
}

/**
 * Starts `spec`; resolves once it accepts connections (foo with admin on: once its stats app
 * answers too). Throws, naming the exit status and stderr, when it exits first, e.g. status 2
 * for a flag this build does not know.
 */
export async function startTarget(spec: TargetSpec, ctx: StartContext): Promise<RunningTarget> {
  switch (spec.kind) {
    case "direct":
      return {
        spec,
        port: ctx.upstreams[0].port,
        helperPids: [],
        [Symbol.asyncDispose]: () => Promise.resolve(),
      };
    case "bare":
      return await startBare(spec, ctx);
    case "haproxy":
      return await startHaproxy(spec, ctx);
    case "foo":
      return spec.viewersOnTwin ? await startWithTwin(spec, ctx) : await startFoo(spec, ctx);
  }
}

/** The title of a target's column. */
export function targetTitle(spec: TargetSpec): string {
  return spec.title ?? spec.key;
}

function withChild(
  spec: TargetSpec,
  child: Child,
  port: number,
  extra: Partial<RunningTarget> = {},
): RunningTarget {
  return {
    spec,
    port,
    child,
    helperPids: [],
    ...extra,
    [Symbol.asyncDispose]: () => child[Symbol.asyncDispose](),
  };
}

async function started(child: Child, port: number): Promise<void> {
  try {
    await waitForPort(port, child);
  } catch (error) {
    await child[Symbol.asyncDispose]();
    throw error;
  }
}

async function startBare(spec: TargetSpec, ctx: StartContext): Promise<RunningTarget> {
  const [port] = freePorts(1);
  // The V8 flag of `deno task start` too, so the floor differs from foo-proxy only in the engine.
  const child = spawnProcess(Deno.execPath(), [
    "run",
    "--allow-net",
    "--v8-flags=--max-semi-space-size=8",
    BARE,
    "--listen",
    `${HOST}:${port}`,
    "--forward",
    `${HOST}:${ctx.upstreams[0].port}`,
  ], { name: targetTitle(spec), cwd: REPO_ROOT, fdLimit: ctx.fdLimit, cpus: cpus(spec, ctx) });
  await started(child, port);
  return withChild(spec, child, port);
}

function cpus(spec: TargetSpec, ctx: StartContext): string | undefined {
  return ctx.taskset ? spec.pin?.proxy : undefined;
}

async function startHaproxy(spec: TargetSpec, ctx: StartContext): Promise<RunningTarget> {
  const [port] = freePorts(1);
  const socket = `${ctx.tmpDir}/haproxy_${port}.sock`;
  const text = haproxyConfig(port, ctx.upstreams, {
    balance: spec.balance,
    checkMs: spec.checkMs,
    socket,
    sslCrt: spec.sslCrt,
  });
  const path = `${ctx.tmpDir}/haproxy_${port}.cfg`;
  await Deno.writeTextFile(path, text);
  const child = spawnProcess("haproxy", ["-f", path], {
    name: targetTitle(spec),
    cwd: ctx.tmpDir,
    fdLimit: ctx.fdLimit,
    cpus: cpus(spec, ctx),
  });
  await started(child, port);
  return withChild(spec, child, port, { haproxyConfig: text, haproxySocket: socket });
}

/**
 * The runtime flags of `deno task start` in `checkout`'s deno.json (so foo-proxy runs exactly as
 * users start it), else the usual ones.
 */
export async function startFlags(checkout: string): Promise<string[]> {
  try {
    const config = JSON.parse(await Deno.readTextFile(`${checkout}/deno.json`));
    const words = String(config.tasks?.start ?? "").split(/\s+/);
    const flags = words.slice(words.indexOf("run") + 1, words.indexOf("src/main.ts"));
    if (words.includes("src/main.ts") && flags.length > 0) {
      return flags.filter((w) => w.startsWith("--"));
    }
  } catch {
    // No deno.json: the usual flags.
  }
  return [...FALLBACK_START_FLAGS];
}

/**
 * `flags` with read and write access to `file` added (to the existing `--allow-read` list, so
 * what `deno task start` grants stays granted); `flags` as they are without a file.
 */
export function grantFile(flags: readonly string[], file: string | undefined): string[] {
  if (file === undefined) return [...flags];
  const read = flags.findIndex((f) => f.startsWith("--allow-read"));
  const out = [...flags];
  if (read < 0) out.push(`--allow-read=${file}`);
  else if (out[read].includes("=")) out[read] = `${out[read]},${file}`;
  return [...out, `--allow-write=${file}`];
}

/** The `--forward` value for `upstreams`: one address, or `name=addr,…`. */
export function forwardFlag(upstreams: readonly { name: string; port: number }[]): string {
  return upstreams.length === 1
    ? `${HOST}:${upstreams[0].port}`
    : upstreams.map((u) => `${u.name}=${HOST}:${u.port}`).join(",");
}

async function startFoo(spec: TargetSpec, ctx: StartContext): Promise<RunningTarget> {
  const checkout = (spec.checkout ?? REPO_ROOT).replace(/\/?$/, "/");
  const admin = spec.admin ?? true;
  const [port, httpPort, healthPort] = freePorts(3);
  const accessLog = spec.accessLog ?? "off";
  const accessLogFile = accessLog === "off"
    ? undefined
    : `${ctx.tmpDir}/access_${spec.key.replace(/\W/g, "_")}_${port}.log`;
  const child = spawnProcess(Deno.execPath(), [
    "run",
    ...grantFile(await startFlags(checkout), accessLogFile),
    ...(spec.denoFlags ?? []),
    "src/main.ts",
    "proxy",
    "--listen",
    `${HOST}:${port}`,
    "--forward",
    forwardFlag(ctx.upstreams),
    "--log-level",
    spec.logLevel ?? "warning",
    ...(admin
      ? ["--http", `${HOST}:${httpPort}`, "--health", `${HOST}:${healthPort}`]
      : ["--http=off", "--health=off"]),
    ...(accessLogFile ? ["--access-log", accessLog, "--access-log-file", accessLogFile] : []),
    ...(spec.flags ?? []),
  ], { name: `foo-proxy ${spec.key}`, cwd: checkout, fdLimit: ctx.fdLimit, cpus: cpus(spec, ctx) });
  await started(child, port);
  if (!admin) return withChild(spec, child, port, { accessLogFile });
  let workers: number | undefined;
  let watchers: Watchers | undefined;
  try {
    await waitForPort(httpPort, child);
    const stats = await (await fetch(`http://${HOST}:${httpPort}/stats`)).json();
    workers = Array.isArray(stats.workers) ? stats.workers.length : undefined;
    if ((spec.viewers ?? 0) > 0) {
      watchers = await attachWatchers(httpPort, {
        streams: spec.viewers!,
        main: `${checkout}src/main.ts`,
      });
    }
  } catch (error) {
    await child[Symbol.asyncDispose]();
    throw error;
  }
  return {
    spec,
    port,
    child,
    httpPort,
    workers,
    watchers,
    accessLogFile,
    helperPids: watchers ? [watchers.top.pid] : [],
    [Symbol.asyncDispose]: async () => {
      // The watchers first, so they do not see the proxy go away.
      await watchers?.[Symbol.asyncDispose]();
      await child[Symbol.asyncDispose]();
    },
  };
}

/** `spec` measured without viewers while its viewers watch an idle twin started the same way. */
async function startWithTwin(spec: TargetSpec, ctx: StartContext): Promise<RunningTarget> {
  const twin = await startFoo(
    { ...spec, key: `${spec.key}-twin`, viewersOnTwin: false, accessLog: "off" },
    ctx,
  );
  try {
    const measured = await startFoo({ ...spec, viewers: 0, viewersOnTwin: false }, ctx);
    return {
      ...measured,
      spec,
      watchers: twin.watchers,
      helperPids: [twin.child!.pid, ...twin.helperPids],
      [Symbol.asyncDispose]: async () => {
        await twin[Symbol.asyncDispose]();
        await measured[Symbol.asyncDispose]();
      },
    };
  } catch (error) {
    await twin[Symbol.asyncDispose]();
    throw error;
  }
}
