/**
 * A growable FIFO of raw bytes addressed by absolute stream positions: append at the end,
 * discard from the front, truncate the end. It backs the request log of `--resume`, which keeps
 * the bytes of unanswered REQ lines without allocating per message.
 *
 * @module
 */

/** Appends shorter than this are copied byte by byte (no `subarray` view is allocated). */
const SHORT_COPY = 64;
/** An empty deque holding a buffer larger than this gives it back. */
const KEEP_CAPACITY = 64 * 1024;

/**
 * Bytes `[start, end)` of a stream, where positions only grow: {@linkcode ByteDeque.discardBefore}
 * advances `start`, {@linkcode ByteDeque.append} advances `end`, and
 * {@linkcode ByteDeque.truncate} moves `end` back. Space is reused by compacting, so a
 * steady stream costs no allocation once the buffer has grown to its working size.
 */
export class ByteDeque {
  #buf: Uint8Array;
  #head = 0; // index in #buf of position `start`
  #tail = 0; // index in #buf of position `end`
  #start = 0;
  #initial: number;

  /** Creates an empty deque whose first buffer has `initialCapacity` bytes. */
  constructor(initialCapacity = 256) {
    this.#initial = Math.max(16, initialCapacity);
    this.#buf = new Uint8Array(this.#initial);
  }

  /** Position of the first byte held. */
  get start(): number {
    return this.#start;
  }

  /** Position just after the last byte held (where the next append lands). */
  get end(): number {
    return this.#start + this.#tail - this.#head;
  }

  /** Bytes held. */
  get length(): number {
    return this.#tail - this.#head;
  }

  /** Size of the buffer now allocated (for tests and memory accounting). */
  get capacity(): number {
    return this.#buf.length;
  }

  /** Appends `src[from, to)`. */
  append(src: Uint8Array, from: number, to: number): void {
    const n = to - from;
    if (n <= 0) return;
    if (this.#tail + n > this.#buf.length) this.#makeRoom(n);
    const buf = this.#buf;
    let t = this.#tail;
    if (n < SHORT_COPY) {
      for (let i = from; i < to; i++) buf[t++] = src[i];
    } else {
      buf.set(src.subarray(from, to), t);
      t += n;
    }
    this.#tail = t;
  }

  /** Appends the ASCII decimal digits of the non-negative integer `value`. */
  appendDecimal(value: number): void {
    if (this.#tail + 17 > this.#buf.length) this.#makeRoom(17);
    this.#tail = writeDecimal(value, this.#buf, this.#tail);
  }

  /** The byte at position `pos` (`start <= pos < end`). */
  at(pos: number): number {
    return this.#buf[this.#head + pos - this.#start];
  }

  /**
   * Copies positions `[from, to)` into `dst` at `at`; returns the index after the last byte
   * written. `dst` must have room.
   */
  copyTo(from: number, to: number, dst: Uint8Array, at: number): number {
    const n = to - from;
    const i = this.#head + from - this.#start;
    if (n < SHORT_COPY) {
      const buf = this.#buf;
      for (let k = 0; k < n; k++) dst[at + k] = buf[i + k];
    } else {
      dst.set(this.#buf.subarray(i, i + n), at);
    }
    return at + n;
  }

  /** Drops every byte before position `pos` (clamped to `[start, end]`). */
  discardBefore(pos: number): void {
    const end = this.end;
    if (pos <= this.#start) return;
    if (pos >= end) pos = end;
    this.#head += pos - this.#start;
    this.#start = pos;
    if (this.#head === this.#tail) {
      this.#head = this.#tail = 0;
      // A burst grew the buffer; an idle connection should not keep pinning it.
      if (this.#buf.length > KEEP_CAPACITY) this.#buf = new Uint8Array(this.#initial);
    }
  }

  /** Drops every byte from position `pos` on (clamped to `[start, end]`). */
  truncate(pos: number): void {
    if (pos >= this.end) return;
    if (pos < this.#start) pos = this.#start;
    this.#tail = this.#head + pos - this.#start;
  }

  /** Empties the deque; positions carry on from `end`. */
  clear(): void {
    this.discardBefore(this.end);
  }

  #makeRoom(n: number): void {
    const live = this.#tail - this.#head;
    const need = live + n;
    if (need <= this.#buf.length >> 1) {
      // Plenty of room once the discarded front is reclaimed: compact in place.
      this.#buf.copyWithin(0, this.#head, this.#tail);
    } else {
      let size = this.#buf.length * 2;
      while (size < need) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.#buf.subarray(this.#head, this.#tail));
      this.#buf = bigger;
    }
    this.#head = 0;
    this.#tail = live;
  }
}

/** Writes the decimal digits of the non-negative safe integer `value` at `dst[at]`; returns the end. */
export function writeDecimal(value: number, dst: Uint8Array, at: number): number {
  const len = decimalLength(value);
  let v = value;
  for (let k = at + len - 1; k >= at; k--) {
    const q = Math.floor(v / 10);
    dst[k] = 48 + (v - q * 10);
    v = q;
  }
  return at + len;
}

/** Number of decimal digits of the non-negative integer `value`. */
export function decimalLength(value: number): number {
  let len = 1;
  for (let v = value; v >= 10; v = Math.floor(v / 10)) len++;
  return len;
}
