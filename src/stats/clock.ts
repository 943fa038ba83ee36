/**
 * The clock type stats and windows are handed.
 *
 * @module
 */

/** Returns the current time in milliseconds since the Unix epoch (fractions allowed). */
export type Clock = () => number;

/** Wall-clock milliseconds that never step backwards within the process (monotonic base). */
export function systemClock(): number {
  return performance.timeOrigin + performance.now();
}
