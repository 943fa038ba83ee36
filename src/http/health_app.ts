/**
 * The health app (`--health`): `/health`, `/heartbeat` and `/status` (the original proxy's names)
 * and the Kubernetes-style `/livez` and `/readyz`.
 *
 * @module
 */
import { Hono } from "hono";
import { VERSION } from "../version.ts";
import { methodNotAllowedJson, withJsonErrors } from "./errors.ts";
import type { ReadinessCheck } from "./readiness.ts";

/** Options for {@linkcode createHealthApp}. */
export interface HealthAppOptions {
  /**
   * Readiness checks, called on every `/readyz` request; a throw counts as a failed check.
   * Unset: always ready (the process answers).
   */
  checks?: () => ReadinessCheck[];
  /**
   * Why the process cannot recover by itself (`/livez` then answers 503 with it, so an
   * orchestrator restarts it), or `undefined` while it can. Unset: `/livez` answers 200 whenever
   * the process answers.
   */
  stuck?: () => string | undefined;
  /** Seconds since start, for the liveness answers; unset: left out. */
  uptimeSeconds?: () => number;
  /** foo-proxy's version, for the liveness answers. @default {VERSION} */
  version?: string;
}

const GET_ONLY = ["GET", "HEAD"] as const;
const NO_STORE = { "Cache-Control": "no-store" };

/**
 * Creates the health app. Liveness paths answer 200 whenever the process can answer at all;
 * `/readyz` answers 200 only when every check passes, else 503 naming the failing checks, and
 * `?verbose` lists every check with `ok` or `failed`.
 */
export function createHealthApp(options: HealthAppOptions = {}): Hono {
  const version = options.version ?? VERSION;
  const app = new Hono();
  const alive = () => {
    const body: Record<string, unknown> = { status: "ok", version };
    if (options.uptimeSeconds) body.uptime_seconds = options.uptimeSeconds();
    return body;
  };
  for (const path of ["/health", "/heartbeat", "/status"]) {
    app.get(path, (c) => c.json(alive(), 200, NO_STORE));
  }
  app.get("/livez", (c) => {
    const stuck = options.stuck?.();
    return stuck === undefined
      ? c.json({ status: "ok" }, 200, NO_STORE)
      : c.json({ status: "stuck", detail: stuck }, 503, NO_STORE);
  });
  app.get("/readyz", (c) => {
    let checks: ReadinessCheck[];
    try {
      checks = options.checks?.() ?? [];
    } catch (error) {
      checks = [{ name: "checks", ok: false, detail: `readiness checks failed: ${error}` }];
    }
    const failed = checks.filter((check) => !check.ok);
    const ready = failed.length === 0;
    const body: Record<string, unknown> = { status: ready ? "ready" : "not ready" };
    if (!ready) body.failed = failed.map(({ name, detail }) => ({ name, detail }));
    if (c.req.query("verbose") !== undefined) {
      body.checks = checks.map(({ name, ok, detail }) => ({
        name,
        status: ok ? "ok" : "failed",
        detail,
      }));
    }
    return c.json(body, ready ? 200 : 503, NO_STORE);
  });
  const wrongMethod = methodNotAllowedJson(GET_ONLY);
  for (const path of ["/health", "/heartbeat", "/status", "/livez", "/readyz"]) {
    app.all(path, wrongMethod);
  }
  return withJsonErrors(app);
}
