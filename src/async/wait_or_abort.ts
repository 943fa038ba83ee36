/**
 * An abortable wait for back-offs and poll intervals: a stopping part must not sit out a timer.
 *
 * @module
 */
import { systemTimers, type Timers } from "./timers.ts";

/**
 * Waits `ms`, or less when `signal` aborts first (at once when it already has). Always resolves;
 * the timer and the abort listener are removed either way. `timers` unset: the global ones.
 */
export function waitOrAbort(
  ms: number,
  signal?: AbortSignal,
  timers: Timers = systemTimers,
): Promise<void> {
  if (signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      timers.clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = timers.setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
