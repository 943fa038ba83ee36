/**
 * The stats app (`--http`): `GET /` (the dashboard page), `GET /events` (the stats as
 * Server-Sent Events), `GET /stats` (JSON), `GET /metrics` (Prometheus text) and `GET /version`.
 * Built by a factory, never listening itself: `cmd/` serves it (src/net/http_server.ts).
 *
 * @module
 */
import { Hono } from "hono";
import { LatencyStats, summarizeLatency } from "../stats/latency.ts";
import type { StatsSnapshot } from "../stats/stats.ts";
import { VERSION } from "../version.ts";
import { DASHBOARD_CSP, DASHBOARD_HTML } from "./dashboard.ts";
import { methodNotAllowedJson, withJsonErrors } from "./errors.ts";
import type { SnapshotBroadcaster } from "./events.ts";
import { METRICS_CONTENT_TYPE, renderMetrics } from "./metrics.ts";

/** What the stats app reads: a snapshot source and, when tracked, the latency stats. */
export interface StatsSource {
  /** The same object as the SIGUSR2 line. */
  snapshot(): StatsSnapshot;
  /** Latency histogram and anomaly counters; unset: reported as zero. */
  readonly latency?: LatencyStats;
}

/** Options for {@linkcode createStatsApp}. */
export interface StatsAppOptions {
  /** The statistics to serve (a `Stats`). */
  stats: StatsSource;
  /** foo-proxy's version. @default {VERSION} */
  version?: string;
  /** The Deno runtime version (`Deno.version.deno`), for `/version`. @default {"unknown"} */
  denoVersion?: string;
  /** The build target (`Deno.build.target`), for `/version`. @default {"unknown"} */
  target?: string;
  /** The upstream set, for `GET /upstreams` and the drain/enable endpoints; unset: none. */
  upstreams?: UpstreamControl;
  /**
   * Who may use the write endpoints (`POST /upstreams/NAME/drain|enable`): with a `token`, a
   * request bearing it (compared in constant time); without one, anyone when `loopback` (the
   * app listens on a loopback address only), else nobody. @default {{ loopback: false }}
   */
  writes?: { loopback: boolean; token?: string };
  /**
   * What `GET /events` streams: a started broadcaster of {@linkcode statsResponse} (its owner
   * stops it on shutdown). Unset: `/events` is not served and the dashboard says so.
   */
  events?: SnapshotBroadcaster;
  /** `POST /reload` (a write endpoint): reads the config file again. Unset: not served. */
  reload?: () => Promise<{ ok: boolean; generation: number; changed: string[]; error?: string }>;
  /**
   * Test hook (`FOO_PROXY_TEST_HOOKS=1` only): `POST /debug/crash-worker/N` (a write endpoint)
   * makes data-plane worker N throw an uncaught error. Unset: not served.
   */
  crashWorker?: (index: number) => boolean;
  /**
   * Awaited before `GET /stats`, `GET /metrics` and `GET /upstreams` are built and before a
   * `GET /events` stream opens (the data-plane workers copy their counters out; after a takeover,
   * the totals carried over are the newest), so a read right after traffic counts all of it, and
   * a stream's first event is never older than a read. Unset: nothing to wait for.
   */
  beforeRead?: () => Promise<void>;
}

/** What the admin endpoints may do to the upstream set (an `UpstreamPool` fits). */
export interface UpstreamControl {
  /** Every upstream's figures. */
  snapshot(): StatsSnapshot["upstreams"];
  /** No new connections to `name`; false when there is none. */
  drain(name: string): boolean;
  /** Undoes drain; false when there is no such upstream. */
  enable(name: string): boolean;
}

/** The JSON of `GET /stats`: the snapshot plus the latency figures. */
export type StatsResponse = StatsSnapshot & ReturnType<typeof summarizeLatency>;

const GET_ONLY = ["GET", "HEAD"] as const;
const NO_STORE = { "Cache-Control": "no-store" };

const EMPTY_LATENCY = new LatencyStats();

/** The object of `GET /stats` (and of each `GET /events` event), read afresh. */
export function statsResponse(stats: StatsSource): StatsResponse {
  return { ...stats.snapshot(), ...summarizeLatency(stats.latency ?? EMPTY_LATENCY) };
}

/** Creates the stats app. Each request reads the stats afresh; nothing is cached. */
export function createStatsApp(options: StatsAppOptions): Hono {
  const { stats } = options;
  const version = options.version ?? VERSION;
  const app = new Hono();
  app.get("/", (c) =>
    c.html(DASHBOARD_HTML, 200, {
      ...NO_STORE,
      "Content-Security-Policy": DASHBOARD_CSP,
      "X-Content-Type-Options": "nosniff",
    }));
  const events = options.events;
  const beforeRead = options.beforeRead ?? (() => Promise.resolve());
  if (events) {
    app.get("/events", async (c) => {
      const headers = { ...NO_STORE, "Content-Type": "text/event-stream; charset=utf-8" };
      // Hono answers HEAD from this handler and drops the body unread: open no stream for it.
      if (c.req.method === "HEAD") return c.body(null, 200, headers);
      await beforeRead();
      const stream = events.connect();
      if (!stream) {
        return c.json(
          { error: "too many event streams", max: events.maxClients },
          503,
          { ...NO_STORE, "Retry-After": "5" },
        );
      }
      return c.body(stream, 200, { ...headers, "X-Accel-Buffering": "no" });
    });
  }
  app.get("/stats", async (c) => {
    await beforeRead();
    return c.json(statsResponse(stats), 200, NO_STORE);
  });
  app.get("/metrics", async (c) => {
    await beforeRead();
    const text = renderMetrics(stats.snapshot(), { latency: stats.latency, version });
    return c.body(text, 200, { "Content-Type": METRICS_CONTENT_TYPE, ...NO_STORE });
  });
  app.get("/version", (c) =>
    c.json(
      {
        version,
        deno: options.denoVersion ?? "unknown",
        target: options.target ?? "unknown",
      },
      200,
      NO_STORE,
    ));
  const crashWorker = options.crashWorker;
  if (crashWorker) {
    app.post("/debug/crash-worker/:index", (c) => {
      const denied = writeDenied(c.req.raw.headers, options.writes ?? { loopback: false });
      if (denied !== undefined) {
        return c.json({ error: denied }, denied.startsWith("bad") ? 401 : 403, NO_STORE);
      }
      const ok = crashWorker(Number(c.req.param("index")));
      return c.json({ ok }, ok ? 200 : 404, NO_STORE);
    });
  }
  const reload = options.reload;
  if (reload) {
    app.post("/reload", async (c) => {
      const denied = writeDenied(c.req.raw.headers, options.writes ?? { loopback: false });
      if (denied !== undefined) {
        return c.json({ error: denied }, denied.startsWith("bad") ? 401 : 403, NO_STORE);
      }
      const result = await reload();
      return c.json(result, result.ok ? 200 : 422, NO_STORE);
    });
    app.all("/reload", methodNotAllowedJson(["POST"]));
  }
  const upstreams = options.upstreams;
  if (upstreams) {
    app.get("/upstreams", async (c) => {
      await beforeRead();
      return c.json(upstreams.snapshot(), 200, NO_STORE);
    });
    const writes = options.writes ?? { loopback: false };
    for (const action of ["drain", "enable"] as const) {
      app.post(`/upstreams/:name/${action}`, (c) => {
        const denied = writeDenied(c.req.raw.headers, writes);
        if (denied !== undefined) {
          return c.json({ error: denied }, denied.startsWith("bad") ? 401 : 403, NO_STORE);
        }
        const name = c.req.param("name");
        if (!upstreams[action](name)) {
          return c.json({ error: "no such upstream", name }, 404, NO_STORE);
        }
        const state = upstreams.snapshot().find((u) => u.name === name)?.state;
        return c.json({ name, state }, 200, NO_STORE);
      });
      app.all(`/upstreams/:name/${action}`, methodNotAllowedJson(["POST"]));
    }
  }
  const wrongMethod = methodNotAllowedJson(GET_ONLY);
  const paths = ["/", "/stats", "/metrics", "/version", ...(events ? ["/events"] : [])];
  for (const path of paths) app.all(path, wrongMethod);
  return withJsonErrors(app);
}

/**
 * Why a write request is refused, or `undefined` when it may go on. A request a browser sent from
 * another site's page is refused first (cross-site request forgery: any page the operator opens
 * could otherwise POST to a loopback admin port): its `Sec-Fetch-Site` says so, or its `Origin`
 * names another host than the request's `Host`.
 */
function writeDenied(
  headers: Headers,
  writes: { loopback: boolean; token?: string },
): string | undefined {
  const site = headers.get("sec-fetch-site");
  if (site !== null && site !== "same-origin" && site !== "none") {
    return "cross-site requests to the write endpoints are refused";
  }
  const origin = headers.get("origin");
  if (origin !== null) {
    let from = "";
    try {
      from = new URL(origin).host;
    } catch {
      // "null" or garbage: not this host.
    }
    if (from === "" || from !== headers.get("host")) {
      return "cross-site requests to the write endpoints are refused";
    }
  }
  const authorization = headers.get("authorization") ?? undefined;
  if (writes.token !== undefined && writes.token !== "") {
    const given = /^Bearer (.+)$/.exec(authorization ?? "")?.[1] ?? "";
    return constantTimeEqual(given, writes.token) ? undefined : "bad or missing bearer token";
  }
  if (writes.loopback) return undefined;
  return "write endpoints need --admin-token, or --http on a loopback address";
}

/** Compares two strings in time that depends on their lengths only, not on where they differ. */
export function constantTimeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < y.length; i++) diff |= (x[i % Math.max(1, x.length)] ?? 0) ^ y[i];
  return diff === 0;
}
