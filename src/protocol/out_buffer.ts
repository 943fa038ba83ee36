/**
 * The growable output buffer the stream rewriters (`ReplyRewriter`, `RequestLog`) write into:
 * the bytes of a step are `out[0, outLength)`, and `out` is replaced by one twice as large when
 * it runs out, so a rewriter allocates only while its output grows past anything it has written
 * before.
 *
 * @module
 */

/** Something that writes its output into `out[0, outLength)`. */
export interface OutBuffer {
  /** The output; replaced (never shrunk) by {@linkcode reserveOut}. */
  out: Uint8Array;
  /** How many bytes of `out` are output. */
  outLength: number;
}

/** Makes room in `buffer.out` for `n` more bytes after `outLength`, keeping what is there. */
export function reserveOut(buffer: OutBuffer, n: number): void {
  const need = buffer.outLength + n;
  if (need <= buffer.out.length) return;
  let size = buffer.out.length * 2;
  while (size < need) size *= 2;
  const bigger = new Uint8Array(size);
  bigger.set(buffer.out.subarray(0, buffer.outLength));
  buffer.out = bigger;
}

/** Appends `chunk[from, to)` to the output. */
export function appendOut(buffer: OutBuffer, chunk: Uint8Array, from: number, to: number): void {
  const n = to - from;
  if (n <= 0) return;
  reserveOut(buffer, n);
  if (n < 64) {
    // A short run is cheaper to copy byte by byte than through subarray() and set().
    const out = buffer.out;
    let o = buffer.outLength;
    for (let k = from; k < to; k++) out[o++] = chunk[k];
    buffer.outLength = o;
  } else {
    buffer.out.set(chunk.subarray(from, to), buffer.outLength);
    buffer.outLength += n;
  }
}
