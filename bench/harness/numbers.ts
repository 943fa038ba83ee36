/**
 * The arithmetic of the bench tables: medians, ratios, number formatting and the rotation that
 * interleaves targets between rounds.
 *
 * @module
 */

/** The median of the finite values of `xs`; NaN when there are none. */
export function median(xs: readonly number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * The median of the per-round ratios `xs[i] / ys[i]` (rounds are interleaved, so pairing a round's
 * runs cancels slow drift of the machine); NaN when no round has both.
 */
export function pairedRatio(xs: readonly number[], ys: readonly number[]): number {
  const n = Math.min(xs.length, ys.length);
  return median(Array.from({ length: n }, (_, i) => xs[i] / ys[i]));
}

/** `x` with thousands separators and `digits` decimals; "—" when not finite. */
export function fmt(x: number, digits = 0): string {
  if (!Number.isFinite(x)) return "—";
  return x.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** `a ÷ b` as `1.23×`; "—" when either is not finite or `b` is 0. */
export function ratio(a: number, b: number): string {
  return Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}×` : "—";
}

/** `xs` rotated left by `by` (so no target is always measured first or last). */
export function rotate<T>(xs: readonly T[], by: number): T[] {
  if (xs.length === 0) return [];
  const k = by % xs.length;
  return [...xs.slice(k), ...xs.slice(0, k)];
}
