/**
 * The injectable timer functions: every timeout, back-off and poll takes a {@linkcode Timers}, so
 * tests drive time without sleeping.
 *
 * @module
 */

/** The timer functions timeouts use (injectable so timeouts are tested without sleeping). */
export interface Timers {
  /** Like `setTimeout`; returns an id for {@linkcode Timers.clearTimeout}. */
  setTimeout(callback: () => void, ms: number): unknown;
  /** Like `clearTimeout`; `undefined` is ignored. */
  clearTimeout(id: unknown): void;
}

/** The global timers. */
export const systemTimers: Timers = {
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (id) => clearTimeout(id as ReturnType<typeof setTimeout> | undefined),
};
