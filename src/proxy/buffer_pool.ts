/**
 * A free list of equal-sized read buffers, shared by every connection of one data plane: a busy
 * connection borrows one while data flows and gives it back when its reads turn small, so idle
 * connections pin only their small buffer (a pending read pins the buffer it reads into).
 *
 * @module
 */

/** Options for {@linkcode BufferPool}. */
export interface BufferPoolOptions {
  /** Buffers kept free at most; more given back are dropped (left to the GC). @default {256} */
  maxFree?: number;
}

/** Read buffers of one size, reused. */
export class BufferPool {
  /** The size of every buffer handed out. */
  readonly size: number;
  #free: Uint8Array[] = [];
  #maxFree: number;
  /** Buffers handed out and not given back (dropped ones included). */
  lent = 0;

  /** A pool of `size`-byte buffers. */
  constructor(size: number, options: BufferPoolOptions = {}) {
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError(`Invalid buffer size ${size}: expected an integer >= 1`);
    }
    this.size = size;
    this.#maxFree = Math.max(0, options.maxFree ?? 256);
  }

  /** Buffers kept free now. */
  get free(): number {
    return this.#free.length;
  }

  /** A buffer of {@linkcode size} bytes (its contents are whatever its last user left). */
  take(): Uint8Array {
    this.lent++;
    return this.#free.pop() ?? new Uint8Array(this.size);
  }

  /**
   * Takes `buffer` back. Only give back a buffer no pending read writes into any more, and no
   * chunk still in use points into.
   */
  give(buffer: Uint8Array): void {
    if (buffer.length !== this.size) return;
    this.lent--;
    if (this.#free.length < this.#maxFree) this.#free.push(buffer);
  }
}
