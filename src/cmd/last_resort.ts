/**
 * The process's last line of defence: an `unhandledrejection` (a bug: some code path let a
 * promise reject with nobody waiting) is logged, counted in `internal_errors`, and kept from
 * ending the process, so one connection's bug never drops every other client.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Stats } from "../stats/stats.ts";

/**
 * Installs the handler on `globalThis`; `remove()` takes it away again.
 */
export function installLastResort(stats: Stats, logger: Logger): { remove: () => void } {
  const onRejection = (event: PromiseRejectionEvent) => {
    event.preventDefault();
    stats.internalErrors++;
    const reason = event.reason;
    logger.error("Internal error (unhandled rejection), kept serving: {error}", {
      error: reason instanceof Error ? `${reason.name}: ${reason.message}` : String(reason),
      stack: reason instanceof Error ? reason.stack ?? "" : "",
    });
  };
  globalThis.addEventListener("unhandledrejection", onRejection);
  return { remove: () => globalThis.removeEventListener("unhandledrejection", onRejection) };
}
