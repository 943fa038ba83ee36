/**
 * Parsing of duration flag values, Go style: `1.5s`, `250ms`, `2m30s`, `1h`, `500us`, or a bare
 * number of seconds.
 *
 * @module
 */
import { UsageError } from "./flags.ts";

/** One line for `--help`: what a `DUR` value may be. */
export const DURATION_HELP =
  "DUR is a duration: 1.5s, 250ms, 2m30s, 1h, 500us; 0 or off where allowed";

/** The longest duration a timer can hold (setTimeout's signed 32-bit limit), in ms: about 596h. */
export const MAX_DURATION_MS = 2 ** 31 - 1;

/** Milliseconds per unit; `µs` (micro sign) and `μs` (Greek mu) both mean microseconds, as in Go. */
const UNITS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "\u00b5s": 1e-3,
  "\u03bcs": 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

const NUMBER = String.raw`(?:\d+(?:\.\d*)?|\.\d+)`;
const PLAIN = new RegExp(`^${NUMBER}$`);
const COMPOUND = new RegExp(`^(?:${NUMBER}(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+$`);
const PART = new RegExp(`(${NUMBER})(ns|us|\u00b5s|\u03bcs|ms|s|m|h)`, "g");

/**
 * Parses a duration into whole milliseconds.
 *
 * Accepts `off` (0), a bare number of seconds (`0`, `5`, `1.5`), or one or more
 * number-and-unit parts as in Go's `time.ParseDuration` (`2m30s`, `1.5s`, `500us`), with units
 * `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`. The total is rounded to the nearest millisecond, except
 * that a positive duration under 1 ms rounds up to 1 ms, so it never silently becomes 0 (off).
 * Whether 0 is meaningful is the caller's business.
 *
 * @throws {UsageError} naming the flag and giving examples when the text is not a duration, is
 * negative, or exceeds {@linkcode MAX_DURATION_MS}.
 */
export function parseDuration(flag: string, text: string | boolean | undefined): number {
  if (typeof text !== "string") throw new UsageError(`Missing value for --${flag}`);
  const value = text.trim();
  if (value === "off") return 0;
  let ms: number;
  if (PLAIN.test(value)) {
    ms = Number(value) * UNITS.s;
  } else if (COMPOUND.test(value)) {
    ms = 0;
    for (const [, n, unit] of value.matchAll(PART)) ms += Number(n) * UNITS[unit];
  } else {
    throw new UsageError(
      `Invalid value "${text}" for --${flag}: expected a duration like 1.5s, 250ms, 2m30s, 1h or 500us`,
    );
  }
  const rounded = ms > 0 && ms < 1 ? 1 : Math.round(ms);
  if (!(rounded <= MAX_DURATION_MS)) {
    throw new UsageError(
      `Invalid value "${text}" for --${flag}: a duration may be at most 596h (${MAX_DURATION_MS} ms)`,
    );
  }
  return rounded;
}
