/**
 * Parsing of duration flag values: `5s`, `250ms`, `2m`, `1h`, or a bare number of seconds.
 *
 * @module
 */
import { UsageError } from "./flags.ts";

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * Parses a duration into milliseconds; `off` and `0` give 0.
 *
 * @throws {UsageError} naming the flag when the text is not a duration.
 */
export function parseDuration(flag: string, text: string | boolean | undefined): number {
  if (typeof text !== "string") throw new UsageError(`Missing value for --${flag}`);
  const value = text.trim();
  if (value === "off") return 0;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value);
  if (!m) {
    throw new UsageError(
      `Invalid value "${text}" for --${flag}: expected a duration like 5s, 250ms or 2m`,
    );
  }
  return Math.round(Number(m[1]) * UNITS[m[2] ?? "s"]);
}
