/**
 * Where a pump's chunks come from: one connection, the bytes read from it before the pump started
 * (held while the upstream was dialed), and the pump's read buffer with its size policy.
 *
 * Read buffers adapt to the traffic: a pending read pins its buffer, so a connection waits on a
 * small one; a read that fills it means data flows, and the next reads go into a large buffer
 * borrowed from the plane's {@linkcode BufferPool}; when reads turn small again (the pipeline
 * drained) the large one goes back and the small one serves again.
 *
 * @module
 */
import type { BufferPool } from "./buffer_pool.ts";
import type { HeldBytes } from "./first_bytes_reader.ts";

/** Options for {@linkcode ChunkSource}. */
export interface ChunkSourceOptions {
  /**
   * The small read buffer, in bytes: what an idle connection's pending read pins per direction.
   * @default {64}
   */
  initialSize?: number;
  /**
   * Largest buffer: a partial line kept for the next chunk (a whole-line relay) may grow the
   * buffer up to this, beyond the pool's size. @default {65536}
   */
  maxSize?: number;
  /**
   * Where large buffers are borrowed while data flows. Unset: a large buffer of
   * `min(16384, maxSize)` bytes is allocated when needed and left to the GC after.
   */
  pool?: BufferPool;
  /** Bytes read before this source existed, and the read that was pending then: served first. */
  held?: HeldBytes;
}

const EMPTY = new Uint8Array(0);
const NO_REST: Promise<Uint8Array | null> = Promise.resolve(EMPTY);
/** The large buffer's size without a pool. */
const LARGE = 16384;

/**
 * Serves a connection's bytes as chunks. It owns every read it starts or is handed: a read that
 * fails while nobody waits for it (the connection was closed under a pump paused at its in-flight
 * limit) is never an unhandled rejection.
 */
export class ChunkSource {
  /** The connection read from. */
  readonly conn: Deno.Conn;
  #buf: Uint8Array;
  /** The small buffer (allocated when first needed, kept for the connection's life). */
  #small: Uint8Array | undefined;
  #smallSize: number;
  #max: number;
  #pool: BufferPool | undefined;
  #large: number;
  /** Whether #buf was borrowed from the pool. */
  #borrowed = false;
  /** The size the next read's buffer should have. */
  #want: number;
  /** A read is pending on #buf (its buffer cannot be given back or reused). */
  #pending = false;
  #first: Uint8Array | undefined;
  #rest: Promise<Uint8Array | null> | undefined;
  /** Bytes at the front of #buf kept from the last chunk, served again before new ones. */
  #carry = 0;
  /** Where the pending read writes into #buf (the carry it started after). */
  #at = 0;
  /** The pending read's promise (what {@linkcode detach} hands over). */
  #reading: Promise<number | null> | undefined;
  #detached = false;

  /** Creates a source reading `conn`; nothing is read until {@linkcode next}. */
  constructor(conn: Deno.Conn, options: ChunkSourceOptions = {}) {
    this.conn = conn;
    const small = Math.max(1, options.initialSize ?? 64);
    this.#smallSize = small;
    this.#max = Math.max(small, options.maxSize ?? 65536);
    this.#pool = options.pool;
    this.#large = Math.max(small, Math.min(this.#max, options.pool?.size ?? LARGE));
    this.#want = small;
    const held = options.held;
    if (held) {
      this.#first = held.bytes.length > 0 ? held.bytes : undefined;
      const rest = held.rest;
      // Handled here, once: awaiting it in next() still sees the error.
      rest.catch(() => {});
      this.#rest = rest;
      // The hand-over's buffer (its pending read fills the part after the held bytes) is the
      // small buffer when it is one, and the hand-over lets go of it, so an idle connection pins
      // one buffer per direction, not two.
      const buffer = held.bytes.buffer;
      this.#buf = buffer.byteLength === small && buffer instanceof ArrayBuffer
        ? (this.#small = new Uint8Array(buffer))
        : (this.#small = new Uint8Array(small));
      held.bytes = EMPTY;
      held.rest = NO_REST;
    } else {
      this.#buf = this.#small = new Uint8Array(small);
    }
  }

  /** Size of the buffer the pending read, or else the next one, reads into. */
  get bufferSize(): number {
    return this.#want;
  }

  /**
   * Bytes at the front of the last chunk that an earlier chunk had already served (after a read
   * that found the end of stream: the partial line kept then).
   */
  get carried(): number {
    return this.#at;
  }

  /**
   * Whether {@linkcode detach} handed the connection's pending read over: a pump whose read
   * completes afterwards must return without touching the bytes (they are the new owner's).
   */
  get detached(): boolean {
    return this.#detached;
  }

  /**
   * Hands the pending read over to a new owner (an idle pool) and marks this source detached:
   * resolves with the bytes that read brings, `null` at end of stream; rejects with its error.
   * Undefined (nothing changes) when no read is pending or held bytes are still unserved. The
   * read's buffer stays pinned by it, so it is never given back to the pool.
   */
  detach(): Promise<Uint8Array | null> | undefined {
    if (this.#detached || this.#first !== undefined) return undefined;
    let handed: Promise<Uint8Array | null>;
    if (this.#rest !== undefined) {
      handed = this.#rest;
    } else if (this.#pending && this.#reading !== undefined) {
      const buf = this.#buf;
      const at = this.#at;
      handed = this.#reading.then((n) => n === null ? null : buf.subarray(at, at + n));
      // Handled here once (a refused hand-over is closed at once): its owner still sees it fail.
      handed.catch(() => {});
    } else {
      return undefined;
    }
    this.#detached = true;
    this.#pending = true;
    return handed;
  }

  /** Whether bytes handed over at construction are still to be served (by {@linkcode next}). */
  get holding(): boolean {
    return this.#first !== undefined || this.#rest !== undefined;
  }

  /**
   * The next chunk (valid until the next call), `null` at end of stream.
   *
   * @throws the read's error (reset, or `Interrupted`/`BadResource` once the connection is closed).
   */
  async next(): Promise<Uint8Array | null> {
    const first = this.#first;
    if (first !== undefined) {
      this.#first = undefined;
      return first;
    }
    const rest = this.#rest;
    if (rest !== undefined) {
      // Kept until it settles: a detach meanwhile hands this very read over.
      const got = await rest;
      if (this.#detached) return null;
      this.#rest = undefined;
      if (got === null) return null;
      if (got.length > 0) return this.#carry === 0 ? got : this.#join(got);
    }
    const n = await this.read();
    // Detached meanwhile: the read's bytes belong to the new owner.
    if (this.#detached) return null;
    return n === null ? this.end() : this.take(n);
  }

  /**
   * The hot path of {@linkcode next} once nothing is {@linkcode holding}: starts a read into the
   * buffer and returns the connection's own promise (no async frame of ours per chunk); pass what
   * it resolves with to {@linkcode take}, or, when `null` (end of stream), call {@linkcode end}.
   *
   * @throws (the promise rejects with) the read's error.
   */
  read(): Promise<number | null> {
    const carry = this.#carry;
    if (this.#want !== this.#buf.length) this.#switch(this.#want, carry);
    this.#carry = 0;
    this.#at = carry;
    this.#pending = true;
    return this.#reading = this.conn.read(carry === 0 ? this.#buf : this.#buf.subarray(carry));
  }

  /** The chunk that a {@linkcode read} of `n` bytes completed, valid until the next read. */
  take(n: number): Uint8Array {
    this.#pending = false;
    const buf = this.#buf;
    const size = buf.length;
    const total = this.#at + n;
    if (total === size) {
      // A read that filled the buffer means more is queued: read large from now on.
      if (size < this.#large) this.#want = this.#large;
      return buf;
    }
    // A read that the small buffer could have held means the flow stopped (or is lock-step): back
    // to the small buffer, so a connection that goes idle now pins only that. (A bigger bound
    // costs pipelined load a second read whenever a few lines come at once.)
    if (n <= this.#smallSize) this.#want = this.#smallSize;
    else if (size > this.#large) this.#want = this.#large;
    return buf.subarray(0, total);
  }

  /**
   * The {@linkcode read} found the end of stream: its buffer is free again, so
   * {@linkcode release} gives a borrowed one back (a stream that ended after a burst would
   * otherwise leave it to the GC, and the pool would allocate anew). Returns `null`.
   */
  end(): null {
    if (!this.#detached) this.#pending = false;
    return null;
  }

  /**
   * Serves `chunk[from..]` (the last chunk's tail, e.g. a partial line) again at the front of the
   * next chunk. Returns false, keeping nothing, when the tail fills the largest buffer already.
   */
  keep(chunk: Uint8Array, from: number): boolean {
    const length = chunk.length - from;
    if (length <= 0) return true;
    if (length >= this.#max) return false;
    // Room for the tail and for at least as many bytes again.
    const need = length < this.#smallSize
      ? this.#smallSize
      : length < this.#large
      ? this.#large
      : Math.min(this.#max, 2 * length);
    if (need > this.#want) this.#want = need;
    if (chunk.buffer === this.#buf.buffer && chunk.byteOffset === 0) {
      this.#buf.copyWithin(0, from, chunk.length);
    } else {
      // A held chunk: not in our buffer (whose pending read, if any, has completed: holding
      // sources serve the hand-over's read before starting one).
      if (length >= this.#buf.length) this.#switch(this.#want, 0);
      this.#buf.set(chunk.subarray(from));
    }
    this.#carry = length;
    return true;
  }

  /**
   * Gives a borrowed buffer back to the pool; the source must not be read again. A buffer a read
   * may still write into (a read that failed or is still pending) is left to the GC instead.
   */
  release(): void {
    if (this.#borrowed && !this.#pending) this.#pool!.give(this.#buf);
    this.#borrowed = false;
    this.#buf = this.#small ?? EMPTY;
  }

  /**
   * The tail kept from a held chunk, then the hand-over's bytes `got` (which may lie in the
   * buffer, after where the held bytes were): a new array, on this once-per-connection path.
   */
  #join(got: Uint8Array): Uint8Array {
    const carry = this.#carry;
    const joined = new Uint8Array(carry + got.length);
    joined.set(this.#buf.subarray(0, carry));
    joined.set(got, carry);
    this.#carry = 0;
    this.#at = carry;
    return joined;
  }

  /** Moves to a buffer of `size` bytes, bringing the first `carry` bytes along. */
  #switch(size: number, carry: number): void {
    const old = this.#buf;
    let next: Uint8Array;
    let borrowed = false;
    if (size === this.#smallSize) {
      next = this.#small ??= new Uint8Array(size);
    } else if (size === this.#large && this.#pool !== undefined) {
      next = this.#pool.take();
      borrowed = true;
    } else {
      next = new Uint8Array(size);
    }
    if (carry > 0) next.set(old.subarray(0, carry));
    if (this.#borrowed) this.#pool!.give(old);
    this.#buf = next;
    this.#borrowed = borrowed;
  }
}
