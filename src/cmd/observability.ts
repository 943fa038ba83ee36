/**
 * Serving the stats and health apps for `foo-proxy proxy` with our bounded admin HTTP server
 * (`net/http_server.ts`, not `Deno.serve`): one server per distinct address, both route sets on
 * one server when `--http` and `--health` are the same, plus the upstream probe behind `/readyz`.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Hono } from "hono";
import { type Address, formatAddress } from "../net/address.ts";
import { combineApps } from "../http/combine_apps.ts";
import { createHealthApp } from "../http/health_app.ts";
import { proxyReadinessChecks, type UpstreamReachability } from "../http/readiness.ts";
import { SnapshotBroadcaster } from "../http/events.ts";
import { createStatsApp, statsResponse, type UpstreamControl } from "../http/stats_app.ts";
import { HttpServer, type HttpServerCounters } from "../net/http_server.ts";
import { describeError } from "../net/describe_error.ts";
import { UpstreamProbe } from "../proxy/upstream_probe.ts";
import { counterSpec, readCounter, writeCounter } from "../stats/counter_schema.ts";
import type { Stats } from "../stats/stats.ts";
import { VERSION } from "../version.ts";

/** An HTTP address that was asked for explicitly could not be bound. */
export class HttpBindError extends Error {
  /** The address that failed. */
  readonly address: Address;
  /** Creates the error; `message` names the address and the reason. */
  constructor(message: string, address: Address, options?: ErrorOptions) {
    super(message, options);
    this.name = "HttpBindError";
    this.address = address;
  }
}

/** Options for {@linkcode startObservability}. */
export interface ObservabilityOptions {
  /** The proxy's statistics. */
  stats: Stats;
  /** Whether the proxy listener is bound (a `Proxy`'s `listening`), for `/readyz`. */
  listening: () => boolean;
  /** Whether the proxy is draining (a `Proxy`'s `shuttingDown`); unset: only markStopping(). */
  shuttingDown?: () => boolean;
  /** The upstream, probed every `probeIntervalMs` for `/readyz` (unless `upstreams` is given). */
  forward: Address;
  /**
   * Where `/readyz` learns whether an upstream is up (the upstream pool's health checks); unset:
   * a TCP probe of `forward`.
   */
  upstreams?: UpstreamReachability & Partial<UpstreamControl>;
  /** `POST /reload`: reads the config file again; unset: not served. */
  reload?: () => Promise<{ ok: boolean; generation: number; changed: string[]; error?: string }>;
  /**
   * Bearer token that allows the admin write endpoints from anywhere; unset: loopback only. A
   * function is asked on every request, so a reload can change or revoke the token.
   */
  adminToken?: string | (() => string | undefined);
  /**
   * Names a request's `Host` may give besides the admin server's own address (DNS rebinding
   * defence); `"*"`: any. A function is asked on every request (a reload can change them).
   * @default {[]}
   */
  adminHosts?: readonly string[] | (() => readonly string[]);
  /** The connection limit, for `/readyz`; 0: no connections check. */
  maxConnections: number;
  /** Where to serve `/stats`, `/metrics`, `/version`; `null`: not served. */
  http: Address | null;
  /** Where to serve `/health`, `/livez`, `/readyz`, …; `null`: not served. */
  health: Address | null;
  /**
   * Whether failing to bind `http`/`health` is fatal ({@linkcode HttpBindError}) — true when the
   * address was given explicitly. Unset: a failure is logged and the proxy runs without it.
   */
  required?: { http?: boolean; health?: boolean };
  /** Logger for the bound addresses and failures. */
  logger: Logger;
  /** Time between upstream probes in ms. @default {2000} */
  probeIntervalMs?: number;
  /** Upstream probe connect timeout in ms. @default {1000} */
  probeTimeoutMs?: number;
  /** Admin HTTP connections served at once, per server; more are closed. @default {64} */
  maxAdminConnections?: number;
  /**
   * Dashboard event streams (`GET /events`) open at once; more get 503 and are counted in
   * `sse_clients_refused`. Each also holds one of the `maxAdminConnections`. @default {16}
   */
  maxEventStreams?: number;
  /** Time between two `GET /events` events in ms. @default {1000} */
  eventIntervalMs?: number;
  /**
   * Where the admin servers count (their connections, timeouts, refused event streams); unset:
   * `stats`. With data-plane workers `stats` is a merged view summed on every read, and the
   * supervisor's own counters are one of its parts.
   */
  counters?: Stats;
  /** Connections open in the process, for `/readyz`; unset: `stats.connectionsActive`. */
  activeConnections?: () => number;
  /** Awaited before `/stats` and `/metrics` are built (see `StatsAppOptions.beforeRead`). */
  beforeRead?: () => Promise<void>;
  /** Why the process cannot recover by itself (`/livez` fails with it); unset: it always can. */
  stuck?: () => string | undefined;
  /** The test hook `POST /debug/crash-worker/N`; unset: not served. */
  crashWorker?: (index: number) => boolean;
  /**
   * Bind with `SO_REUSEPORT` (needs `--unstable-net`), so that a takeover can bind beside; a
   * port is looked at first (nobody else may hold it) unless `share`. @default {false}
   */
  reusePort?: boolean;
  /** Join ports a running proxy holds (`--takeover`): no look first. @default {false} */
  share?: boolean;
}

/** The running HTTP servers and probe. Close with {@linkcode Observability.close}. */
export class Observability implements AsyncDisposable {
  /** The upstream probe (only when the health app is served). */
  readonly probe: UpstreamProbe | undefined;
  /** The first probe's result (`false` at once without a probe). */
  readonly firstProbe: Promise<boolean>;
  /** The `GET /events` broadcaster (only when the stats app is served). */
  readonly events: SnapshotBroadcaster | undefined;
  #servers: { server: HttpServer; routes: string }[];
  #addrs: { http?: Deno.NetAddr; health?: Deno.NetAddr };
  #stopping: { value: boolean };
  #closing: Promise<void> | undefined;

  /** Use {@linkcode startObservability}. */
  constructor(
    servers: { server: HttpServer; routes: string }[],
    addrs: { http?: Deno.NetAddr; health?: Deno.NetAddr },
    probe: UpstreamProbe | undefined,
    stopping: { value: boolean },
    events?: SnapshotBroadcaster,
  ) {
    this.events = events;
    this.#servers = servers;
    this.#addrs = addrs;
    this.probe = probe;
    this.firstProbe = probe?.start() ?? Promise.resolve(false);
    this.#stopping = stopping;
  }

  /** Bound address of the stats app, if served. */
  get httpAddr(): Deno.NetAddr | undefined {
    return this.#addrs.http;
  }

  /** Bound address of the health app, if served. */
  get healthAddr(): Deno.NetAddr | undefined {
    return this.#addrs.health;
  }

  /** Makes `/readyz` fail its `shutdown` check from now on. */
  markStopping(): void {
    this.#stopping.value = true;
  }

  /**
   * Stops the probe and the servers: event streams end at once (the dashboards say the proxy is
   * gone), no new requests; requests in progress get up to `graceMs` to finish, then their
   * connections are dropped. Idempotent.
   */
  close(graceMs = 1000): Promise<void> {
    this.#closing ??= (async () => {
      this.markStopping();
      this.events?.stop();
      await Promise.all([
        this.probe?.close(),
        ...this.#servers.map(({ server }) => shutdownWithin(server, graceMs)),
      ]);
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function shutdownWithin(server: HttpServer, graceMs: number): Promise<void> {
  // Requests in progress get `graceMs`; then their connections are closed.
  return server.close(graceMs);
}

/** Which counter of the counter schema keeps each admin server counter. */
export const ADMIN_COUNTERS = {
  rejected: "admin_connections_rejected",
  timeouts: "admin_request_timeouts",
  idleClosed: "admin_idle_closed",
  badRequests: "admin_bad_requests",
  misdirected: "admin_misdirected_requests",
  acceptErrors: "accept_errors",
} as const satisfies Record<keyof HttpServerCounters, string>;

/** The admin servers' counters, kept in the proxy's stats (where the schema stores them). */
export function statsCounters(stats: Stats): HttpServerCounters {
  const counters = {} as HttpServerCounters;
  for (const [name, counter] of Object.entries(ADMIN_COUNTERS)) {
    const spec = counterSpec(counter);
    Object.defineProperty(counters, name, {
      get: () => readCounter(spec, stats, stats.latency),
      set: (n: number) => writeCounter(spec, stats, stats.latency, n),
      enumerable: true,
    });
  }
  return counters;
}

/**
 * Builds the apps and serves them: the stats app on `http`, the health app on `health` (one
 * server when both are the same address), and starts the upstream probe when health is served.
 *
 * @throws {HttpBindError} when a `required` address cannot be bound (servers already started
 * are shut down first).
 */
export async function startObservability(options: ObservabilityOptions): Promise<Observability> {
  const { stats, logger } = options;
  const stopping = { value: false };
  const probe = options.health && !options.upstreams
    ? new UpstreamProbe(options.forward, {
      intervalMs: options.probeIntervalMs ?? 2000,
      timeoutMs: options.probeTimeoutMs ?? 1000,
      logger,
    })
    : undefined;
  // One snapshot a second for every dashboard, however many are open.
  const events = options.http
    ? new SnapshotBroadcaster(() => statsResponse(stats), {
      maxClients: options.maxEventStreams ?? 16,
      intervalMs: options.eventIntervalMs ?? 1000,
      onRefused: () => (options.counters ?? stats).sseClientsRefused++,
    })
    : undefined;
  events?.start();
  const statsApp = options.http
    ? createStatsApp({
      stats,
      events,
      upstreams: options.upstreams?.drain && options.upstreams.enable && options.upstreams.snapshot
        ? options.upstreams as UpstreamControl
        : undefined,
      writes: {
        loopback: isLoopback(options.http.hostname),
        get token() {
          const token = options.adminToken;
          return typeof token === "function" ? token() : token;
        },
      },
      reload: options.reload,
      crashWorker: options.crashWorker,
      beforeRead: options.beforeRead,
      version: VERSION,
      denoVersion: Deno.version.deno,
      target: Deno.build.target,
    })
    : undefined;
  const healthApp = options.health
    ? createHealthApp({
      version: VERSION,
      uptimeSeconds: () => Math.round((stats.clock() - stats.startedAt) / 1000),
      stuck: options.stuck,
      checks: proxyReadinessChecks({
        listening: options.listening,
        shuttingDown: () => stopping.value || (options.shuttingDown?.() ?? false),
        upstream: options.upstreams ?? probe,
        activeConnections: options.activeConnections ?? (() => stats.connectionsActive),
        maxConnections: options.maxConnections,
      }),
    })
    : undefined;

  interface Plan {
    address: Address;
    apps: Hono[];
    names: ("http" | "health")[];
    required: boolean;
  }
  const plans: Plan[] = [];
  const add = (name: "http" | "health", address: Address | null, app: Hono | undefined) => {
    if (!address || !app) return;
    const required = options.required?.[name] ?? false;
    // Port 0 means "any free port" for each flag on its own, so two of them are not the same.
    const same = address.port === 0
      ? undefined
      : plans.find((p) => formatAddress(p.address) === formatAddress(address));
    if (same) {
      same.apps.push(app);
      same.names.push(name);
      same.required ||= required;
    } else {
      plans.push({ address, apps: [app], names: [name], required });
    }
  };
  add("http", options.http, statsApp);
  add("health", options.health, healthApp);

  const servers: { server: HttpServer; routes: string }[] = [];
  const counters = statsCounters(options.counters ?? stats);
  const addrs: { http?: Deno.NetAddr; health?: Deno.NetAddr } = {};
  for (const plan of plans) {
    const routes = plan.names.map((n) => (n === "http" ? "stats" : "health")).join(" and ");
    const app = plan.apps.length === 1 ? plan.apps[0] : combineApps(...plan.apps);
    let server: HttpServer;
    try {
      // Our bounded server, not Deno.serve: capped connections, header and body deadlines, and
      // an accept loop that survives running out of file descriptors.
      const { hostname, port } = plan.address;
      // SO_REUSEPORT would let this join a port another process serves: unless asked to
      // (a takeover), a bind without it looks first.
      if (options.reusePort && options.share !== true && port !== 0) {
        Deno.listen({ hostname, port }).close();
      }
      server = new HttpServer({
        hostname,
        port,
        reusePort: options.reusePort,
        handler: (request) => app.fetch(request),
        maxConnections: options.maxAdminConnections,
        allowedHosts: options.adminHosts,
        logger,
        counters,
      });
      server.start();
    } catch (error) {
      const flag = plan.names.map((n) => `--${n}`).join("/");
      const message = `Cannot serve ${routes} HTTP on "${formatAddress(plan.address)}" (${flag}): ${
        describeError(error)
      }`;
      if (plan.required) {
        events?.stop();
        await Promise.all(servers.map(({ server }) => shutdownWithin(server, 0)));
        throw new HttpBindError(message, plan.address, { cause: error });
      }
      logger.warning("{message}; running without it (set {flag} to another address or off)", {
        message,
        flag,
      });
      continue;
    }
    servers.push({ server, routes });
    for (const name of plan.names) addrs[name] = server.addr;
    logger.info("Serving {routes} on http://{address}", {
      routes,
      address: formatAddress(server.addr),
    });
  }
  if (!addrs.http) events?.stop(); // not served after all
  return new Observability(
    servers,
    addrs,
    addrs.health ? probe : undefined,
    stopping,
    addrs.http ? events : undefined,
  );
}

/** Whether `hostname` is a loopback address (the admin app is then reachable from this host only). */
export function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "::1" || /^127\./.test(hostname);
}
