/**
 * Serving several apps' routes from one address (`--http` and `--health` on the same port).
 *
 * @module
 */
import { Hono } from "hono";
import { withJsonErrors } from "./errors.ts";

/**
 * Returns one app with the routes of every app in `apps` (their paths must not overlap) and the
 * JSON 404/500 answers.
 */
export function combineApps(...apps: Hono[]): Hono {
  const combined = new Hono();
  for (const app of apps) combined.route("/", app);
  return withJsonErrors(combined);
}
