/**
 * The JSON error answers shared by the stats and health apps: 404 for an unknown path, 405 with
 * `Allow` for a known path and the wrong method, 500 for a handler that threw.
 *
 * @module
 */
import type { Context, Hono } from "hono";

/** Every answer of the admin apps, errors too, is fresh: caches must not keep any of them. */
const NO_STORE = { "Cache-Control": "no-store" };

/** Answers 404 with `{ "error": "not found", "path": … }`. */
export function notFoundJson(c: Context): Response {
  return c.json({ error: "not found", path: c.req.path }, 404, NO_STORE);
}

/**
 * Returns a handler answering 405 with `Allow: <methods>` and
 * `{ "error": "method not allowed", "method": …, "allow": […] }`.
 */
export function methodNotAllowedJson(allow: readonly string[]): (c: Context) => Response {
  const header = allow.join(", ");
  return (c) =>
    c.json({ error: "method not allowed", method: c.req.method, allow: [...allow] }, 405, {
      Allow: header,
      ...NO_STORE,
    });
}

/** Answers 500 with `{ "error": "internal error" }`, hiding the exception from the client. */
export function internalErrorJson(_error: Error, c: Context): Response {
  return c.json({ error: "internal error" }, 500, NO_STORE);
}

/** Installs the JSON 404 and 500 answers on `app` and returns it. */
export function withJsonErrors<T extends Hono>(app: T): T {
  app.notFound(notFoundJson);
  app.onError(internalErrorJson);
  return app;
}
