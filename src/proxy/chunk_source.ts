/**
 * Where a pump's chunks come from: one connection, the bytes read from it before the pump started
 * (held while the upstream was dialed), and the pump's read buffer with its growth policy.
 *
 * @module
 */
import type { HeldBytes } from "./first_bytes_reader.ts";

/** Options for {@linkcode ChunkSource}. */
export interface ChunkSourceOptions {
  /**
   * First read-buffer size in bytes. A pending read pins its buffer, so an idle connection costs
   * this much per direction. @default {1024}
   */
  initialSize?: number;
  /** Largest the buffer grows to, doubling when a read fills it. @default {65536} */
  maxSize?: number;
  /** Bytes read before this source existed, and the read that was pending then: served first. */
  held?: HeldBytes;
}

const EMPTY = new Uint8Array(0);
const NO_REST: Promise<Uint8Array | null> = Promise.resolve(EMPTY);

/**
 * Serves a connection's bytes as chunks. It owns every read it starts or is handed: a read that
 * fails while nobody waits for it (the connection was closed under a pump paused at its in-flight
 * limit) is never an unhandled rejection.
 */
export class ChunkSource {
  /** The connection read from. */
  readonly conn: Deno.Conn;
  #buf: Uint8Array;
  #max: number;
  #first: Uint8Array | undefined;
  #rest: Promise<Uint8Array | null> | undefined;
  /** Bytes at the front of #buf kept from the last chunk, served again before new ones. */
  #carry = 0;
  /** Where the pending read writes into #buf (the carry it started after). */
  #at = 0;
  #grow = false;

  /** Creates a source reading `conn`; nothing is read until {@linkcode next}. */
  constructor(conn: Deno.Conn, options: ChunkSourceOptions = {}) {
    this.conn = conn;
    const initial = Math.max(1, options.initialSize ?? 1024);
    this.#max = Math.max(initial, options.maxSize ?? 65536);
    const held = options.held;
    if (held) {
      this.#first = held.bytes.length > 0 ? held.bytes : undefined;
      const rest = held.rest;
      // Handled here, once: awaiting it in next() still sees the error.
      rest.catch(() => {});
      this.#rest = rest;
      // The hand-over's buffer becomes the read buffer (its pending read fills the part after
      // the held bytes, which are served first), and the hand-over lets go of it, so an idle
      // connection pins one buffer per direction, not two.
      const buffer = held.bytes.buffer;
      this.#buf = buffer.byteLength >= initial && buffer instanceof ArrayBuffer
        ? new Uint8Array(buffer)
        : new Uint8Array(initial);
      held.bytes = EMPTY;
      held.rest = NO_REST;
    } else {
      this.#buf = new Uint8Array(initial);
    }
  }

  /** Size of the read buffer now. */
  get bufferSize(): number {
    return this.#buf.length;
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
      this.#rest = undefined;
      const got = await rest;
      if (got === null) return null;
      if (got.length > 0) return got;
    }
    const n = await this.read();
    return n === null ? null : this.take(n);
  }

  /**
   * The hot path of {@linkcode next} once nothing is {@linkcode holding}: starts a read into the
   * buffer and returns the connection's own promise (no async frame of ours per chunk); pass what
   * it resolves with, unless `null` (end of stream), to {@linkcode take}.
   *
   * @throws (the promise rejects with) the read's error.
   */
  read(): Promise<number | null> {
    if (this.#grow) {
      this.#grow = false;
      const bigger = new Uint8Array(Math.min(this.#max, this.#buf.length * 2));
      if (this.#carry > 0) bigger.set(this.#buf.subarray(0, this.#carry));
      this.#buf = bigger;
    }
    const carry = this.#carry;
    this.#carry = 0;
    this.#at = carry;
    return this.conn.read(carry === 0 ? this.#buf : this.#buf.subarray(carry));
  }

  /** The chunk that a {@linkcode read} of `n` bytes completed, valid until the next read. */
  take(n: number): Uint8Array {
    const buf = this.#buf;
    const total = this.#at + n;
    // A read that filled the buffer means more is queued: grow before the next one, so busy
    // connections move large chunks while idle ones pin only the small initial buffer.
    if (total === buf.length) {
      if (total < this.#max) this.#grow = true;
      return buf;
    }
    return buf.subarray(0, total);
  }

  /**
   * Serves `chunk[from..]` (the last chunk's tail, e.g. a partial line) again at the front of the
   * next chunk. Returns false, keeping nothing, when the tail fills the largest buffer already.
   */
  keep(chunk: Uint8Array, from: number): boolean {
    const length = chunk.length - from;
    if (length <= 0) return true;
    if (length >= this.#max) return false;
    if (chunk.buffer === this.#buf.buffer && chunk.byteOffset === 0) {
      this.#buf.copyWithin(0, from, chunk.length);
    } else {
      // A held chunk: not in our buffer.
      if (length > this.#buf.length) this.#buf = new Uint8Array(Math.min(this.#max, length * 2));
      this.#buf.set(chunk.subarray(from));
    }
    this.#carry = length;
    // A full buffer leaves no room to read into: grow (the tail is below the largest size).
    if (length === this.#buf.length) this.#grow = true;
    return true;
  }
}
