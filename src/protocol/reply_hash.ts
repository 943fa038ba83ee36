/**
 * The reply a Seq-and-data-computing Foo server gives (`foo-proxy server --reply hash`): real Foo
 * servers compute their answer from the Seq and the data, so a proxy that renumbers, reorders or
 * mixes up REQs produces wrong answers. This module is the one definition of that answer, shared
 * by the server, the load generator and the tests that check every reply's content.
 *
 * The reply to `REQ <seq> <data>` is `<type> <seq> <hash>` where `hash` is the FNV-1a 32-bit hash
 * of the line's bytes from the first Seq digit to the byte before the newline, as 8 lowercase hex
 * digits, and `type` is `NAK` when the hash's low three bits are zero (one REQ in eight) and
 * `ACK` otherwise.
 *
 * @module
 */

/** FNV-1a 32-bit offset basis: the hash of no bytes. */
export const FNV_START = 0x811c9dc5;

/** Adds `bytes[from, to)` to the running FNV-1a 32-bit hash `h`. */
export function fnvUpdate(h: number, bytes: Uint8Array, from = 0, to = bytes.length): number {
  for (let i = from; i < to; i++) h = Math.imul(h ^ bytes[i], 0x01000193) >>> 0;
  return h;
}

/** Whether the hash-mode reply for a line hashing to `h` is a NAK. */
export function isNakHash(h: number): boolean {
  return (h & 7) === 0;
}

const HEX = "0123456789abcdef";

/** Writes `h` as 8 lowercase hex digits at `out[at]`; returns the index after them. */
export function writeHash(h: number, out: Uint8Array, at: number): number {
  for (let k = 7; k >= 0; k--) out[at++] = HEX.charCodeAt((h >>> (k * 4)) & 15);
  return at;
}

const encoder = new TextEncoder();

/**
 * The hash-mode reply line (without its newline) to one REQ line given as text, e.g.
 * `hashReply("REQ 7 Hey")`; `undefined` when the line is not a valid REQ.
 */
export function hashReply(line: string): string | undefined {
  const m = /^REQ[ \t]+(\d[^\n]*)$/.exec(line.replace(/\r?\n?$/, ""));
  if (!m || !/^\d+([ \t]|$)/.test(m[1])) return undefined;
  const h = fnvUpdate(FNV_START, encoder.encode(m[1]));
  const digits = /^\d+/.exec(m[1])![0];
  return `${isNakHash(h) ? "NAK" : "ACK"} ${digits} ${h.toString(16).padStart(8, "0")}`;
}
