/**
 * Reading a downstream's first bytes while its upstream is still being dialed (and redialed), so
 * a client that speaks at once loses nothing, and a client that leaves during the dial is noticed.
 *
 * @module
 */

/** What a {@linkcode FirstBytesReader} hands over when released. */
export interface HeldBytes {
  /** Every byte read before the release, to forward first. */
  bytes: Uint8Array;
  /**
   * The read still pending at the release: resolves with the bytes it brought (empty when no read
   * was pending), `null` at end of stream; rejects with the read's error.
   */
  rest: Promise<Uint8Array | null>;
}

/** Options for {@linkcode FirstBytesReader}. */
export interface FirstBytesReaderOptions {
  /**
   * Most bytes held. Once this many are held reading stops, so a client that sends more waits on
   * TCP backpressure instead of growing our memory. @default {65536}
   */
  limit?: number;
  /** First buffer size; it doubles as it fills, up to `limit`. @default {2048} */
  initialSize?: number;
  /**
   * Called once when the downstream ends before the release: `"eof"` (with how many bytes are
   * held) or `"error"` (reset and the like). Unset: not called.
   */
  onEnd?: (end: "eof" | "error", held: number) => void;
}

/**
 * Reads a connection into a bounded buffer until {@linkcode FirstBytesReader.release}. Starts at
 * construction; always `release()` (and forward what it returns) or close the connection and
 * await {@linkcode FirstBytesReader.done}.
 */
export class FirstBytesReader {
  #conn: Deno.Conn;
  #limit: number;
  #onEnd: FirstBytesReaderOptions["onEnd"];
  #buf: Uint8Array;
  #length = 0;
  #released = false;
  #loop: Promise<Uint8Array | null>;

  /** Starts reading `conn`. */
  constructor(conn: Deno.Conn, options: FirstBytesReaderOptions = {}) {
    this.#conn = conn;
    this.#limit = Math.max(1, options.limit ?? 65536);
    this.#onEnd = options.onEnd;
    this.#buf = new Uint8Array(Math.min(this.#limit, Math.max(1, options.initialSize ?? 2048)));
    this.#loop = this.#run();
    // Errors reach the caller through `rest`; an abandoned reader must not leave them unhandled.
    this.#loop.catch(() => {});
  }

  /** Bytes held so far. */
  get length(): number {
    return this.#length;
  }

  /** Resolves once no read is pending any more (after a release, an end, or a close). */
  get done(): Promise<void> {
    return this.#loop.then(() => {}, () => {});
  }

  /** Stops reading more and hands over what was read; call at most once. */
  release(): HeldBytes {
    if (this.#released) throw new Error("FirstBytesReader already released");
    this.#released = true;
    // Not called after the release; dropping it frees whatever the caller's callback holds while
    // the last read stays pending (an idle connection's whole life).
    this.#onEnd = undefined;
    const buf = this.#buf;
    const heldAt = this.#length;
    return {
      bytes: buf.subarray(0, heldAt),
      // The pending read (if any) fills the same buffer after `heldAt`: nothing is copied.
      rest: this.#loop.then((end) => end === null ? null : buf.subarray(heldAt, this.#length)),
    };
  }

  async #run(): Promise<Uint8Array | null> {
    try {
      while (!this.#released && this.#length < this.#limit) {
        if (this.#length === this.#buf.length) {
          const bigger = new Uint8Array(Math.min(this.#limit, this.#buf.length * 2));
          bigger.set(this.#buf);
          this.#buf = bigger;
        }
        const n = await this.#conn.read(this.#buf.subarray(this.#length));
        if (n === null) {
          if (!this.#released) this.#onEnd?.("eof", this.#length);
          return null;
        }
        this.#length += n;
      }
      return this.#buf.subarray(0, 0);
    } catch (error) {
      if (!this.#released) this.#onEnd?.("error", this.#length);
      throw error;
    }
  }
}
