/**
 * The accept loop every listener of the process runs (the Foo listener and the admin HTTP
 * servers). An accept error that concerns one connection (it was reset or aborted before it
 * could be taken) is counted and the loop goes on at once: one client must never slow everyone
 * else's connects. Only resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) backs off, briefly
 * (5 ms doubling to 100 ms), with a log line at most once a second.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { waitOrAbort } from "../async/wait_or_abort.ts";

/** `code`s of accept errors that mean the process is out of something, not that a peer failed. */
export const RESOURCE_ERROR_CODES: ReadonlySet<string> = new Set([
  "EMFILE",
  "ENFILE",
  "ENOBUFS",
  "ENOMEM",
]);

/** Options for {@linkcode acceptLoop}. */
export interface AcceptLoopOptions {
  /** Whether the listener was closed on purpose (an accept error then ends the loop quietly). */
  closed: () => boolean;
  /** Names the listener in log lines, e.g. `127.0.0.1:8002`. */
  label: string;
  /** Logger; unset: nothing is logged. */
  logger?: Logger;
  /** Called for each accept error that concerned one connection. */
  onConnectionError?: (error: unknown) => void;
  /** Called for each accept error from resource exhaustion (before the backoff). */
  onResourceError?: (error: unknown) => void;
  /** Aborting ends a backoff wait at once. */
  signal?: AbortSignal;
}

const MIN_BACKOFF_MS = 5;
const MAX_BACKOFF_MS = 100;
const LOG_EVERY_MS = 1000;

/** Whether `error` is an accept error caused by resource exhaustion. */
export function isResourceError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && RESOURCE_ERROR_CODES.has(code);
}

/**
 * Accepts connections from `listener` and hands each to `handle` (synchronously: `handle` starts
 * its own task) until the listener is closed.
 */
export async function acceptLoop<C extends Deno.Conn>(
  listener: Deno.Listener<C>,
  handle: (conn: C) => void,
  options: AcceptLoopOptions,
): Promise<void> {
  let backoff = 0;
  let lastLog = -Infinity;
  let inARow = 0;
  for (;;) {
    let conn: C;
    try {
      conn = await listener.accept();
    } catch (error) {
      if (options.closed() || error instanceof Deno.errors.BadResource) return;
      const now = performance.now();
      const log = now - lastLog >= LOG_EVERY_MS;
      if (isResourceError(error)) {
        options.onResourceError?.(error);
        backoff = backoff === 0 ? MIN_BACKOFF_MS : Math.min(MAX_BACKOFF_MS, backoff * 2);
        if (log) {
          lastLog = now;
          options.logger?.error(
            "Accept on {listen} failed: {error}; pausing accepts for {ms} ms (connections open now keep being served)",
            { listen: options.label, error: String(error), ms: backoff },
          );
        }
        await waitOrAbort(backoff, options.signal);
        continue;
      }
      options.onConnectionError?.(error);
      if (log) {
        lastLog = now;
        options.logger?.info("Accept on {listen}: one connection failed ({error}); carrying on", {
          listen: options.label,
          error: String(error),
        });
      }
      // Never spin: after many such errors in a row, yield to the rest of the process once.
      if (++inARow % 64 === 0) await waitOrAbort(1, options.signal);
      continue;
    }
    backoff = 0;
    inARow = 0;
    handle(conn);
  }
}
