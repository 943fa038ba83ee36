/**
 * The stats app (`--http`): `GET /stats` (JSON), `GET /metrics` (Prometheus text) and
 * `GET /version`. Built by a factory, never listening itself: `cmd/` serves it (src/net/http_server.ts).
 *
 * @module
 */
import { Hono } from "hono";
import { LatencyStats, summarizeLatency } from "../stats/latency.ts";
import type { StatsSnapshot } from "../stats/stats.ts";
import { VERSION } from "../version.ts";
import { methodNotAllowedJson, withJsonErrors } from "./errors.ts";
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
}

/** The JSON of `GET /stats`: the snapshot plus the latency figures. */
export type StatsResponse = StatsSnapshot & ReturnType<typeof summarizeLatency>;

const GET_ONLY = ["GET", "HEAD"] as const;
const NO_STORE = { "Cache-Control": "no-store" };

/** Creates the stats app. Each request reads the stats afresh; nothing is cached. */
export function createStatsApp(options: StatsAppOptions): Hono {
  const { stats } = options;
  const version = options.version ?? VERSION;
  const empty = new LatencyStats();
  const app = new Hono();
  app.get("/stats", (c) => {
    const body: StatsResponse = {
      ...stats.snapshot(),
      ...summarizeLatency(stats.latency ?? empty),
    };
    return c.json(body, 200, NO_STORE);
  });
  app.get("/metrics", (c) => {
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
  const wrongMethod = methodNotAllowedJson(GET_ONLY);
  for (const path of ["/stats", "/metrics", "/version"]) app.all(path, wrongMethod);
  return withJsonErrors(app);
}
