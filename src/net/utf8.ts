/**
 * A streaming UTF-8 validator that allocates nothing: WebSocket text frames must carry valid UTF-8
 * (RFC 6455 §8.1), checked as their bytes pass and across frame boundaries.
 *
 * @module
 */

/** The state between two calls: 0 at a character boundary, else what the next byte must be. */
export type Utf8State = number;

/** The validator's state when `bytes[from, to)` has been fed after `state`; -1: invalid UTF-8. */
export function utf8Step(state: Utf8State, bytes: Uint8Array, from: number, to: number): number {
  let need = state & 3;
  let lo = (state >> 2) & 0xff;
  let hi = (state >> 10) & 0xff;
  for (let i = from; i < to; i++) {
    const b = bytes[i];
    if (need === 0) {
      if (b < 0x80) continue;
      lo = 0x80;
      hi = 0xbf;
      if (b >= 0xc2 && b <= 0xdf) need = 1;
      else if (b === 0xe0) (need = 2, lo = 0xa0);
      else if (b === 0xed) (need = 2, hi = 0x9f); // no UTF-16 surrogates
      else if (b >= 0xe1 && b <= 0xef) need = 2;
      else if (b === 0xf0) (need = 3, lo = 0x90);
      else if (b >= 0xf1 && b <= 0xf3) need = 3;
      else if (b === 0xf4) (need = 3, hi = 0x8f); // nothing past U+10FFFF
      else return -1;
    } else {
      if (b < lo || b > hi) return -1;
      need--;
      lo = 0x80;
      hi = 0xbf;
    }
  }
  return need === 0 ? 0 : need | (lo << 2) | (hi << 10);
}

/**
 * Where the last character of `bytes[0, to)` begins if it is cut short (its lead byte is there
 * but not all its continuation bytes), else `to`.
 */
export function incompleteTail(bytes: Uint8Array, to: number): number {
  for (let i = to - 1; i >= 0 && i >= to - 3; i--) {
    const b = bytes[i];
    if ((b & 0xc0) === 0x80) continue; // a continuation byte: look further back
    const length = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return i + length > to ? i : to;
  }
  return to;
}
