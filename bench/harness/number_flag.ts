/**
 * The numeric flags of the bench suites (`--rounds`, `--seconds`, …).
 *
 * @module
 */

/**
 * The number `text` gives for `--name` (`fallback` when unset).
 *
 * @throws {RangeError} when it is not a finite number of at least `min`.
 */
export function numberFlag(
  name: string,
  text: string | undefined,
  fallback: number,
  min: number,
): number {
  const n = text === undefined ? fallback : Number(text);
  if (!Number.isFinite(n) || n < min) throw new RangeError(`Invalid --${name} "${text}"`);
  return n;
}
