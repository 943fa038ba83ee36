/**
 * The server side of a WebSocket connection (RFC 6455) as a `Deno.Conn`, so the one engine serves
 * WebSocket clients without knowing it: `read` gives the payload bytes of the client's data
 * frames (text or binary, fragmented or not) as one byte stream, the frames' boundaries forgotten
 * (a Foo line may span messages, and a message may carry many lines); `write` sends its bytes as
 * one message.
 *
 * The frames are read and written on the TCP (or TLS) connection itself, not through
 * `Deno.upgradeWebSocket`: a frame's payload goes straight into the engine's buffer, and a write
 * resolves only once the kernel took it, so TCP backpressure reaches the client both ways, as it
 * does for a TCP client. Nothing here queues: a client that floods without reading is slowed by
 * its own socket (the engine stops reading it), and holds no more memory than a TCP client would.
 *
 * Replies go as text messages if the client's first message was text (a browser page then gets
 * strings), else as binary ones. A text message must be valid UTF-8: a character cut between two
 * of the engine's chunks waits (at most 3 bytes) for the rest, and a chunk that is not UTF-8 at
 * all goes as a binary message rather than breaking the connection.
 *
 * Control frames: a ping is answered with a pong (only the latest, RFC 6455 §5.5.3, so a ping
 * flood queues nothing); a close from the client is the end of its stream (`read` returns null,
 * like a FIN: replies owed are still written), and our close frame goes when the engine closes.
 * A protocol violation (an unmasked frame, reserved bits, a bad opcode or length, a broken
 * fragmentation, invalid UTF-8 in a text message) sends a close frame with 1002 or 1007 and makes
 * `read` throw a {@linkcode WebSocketProtocolError}.
 *
 * @module
 */
import { incompleteTail, utf8Step } from "./utf8.ts";

/** The GUID RFC 6455 §1.3 appends to the client's key. */
export const WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** A client broke the WebSocket protocol; `code` is the close code sent to it. */
export class WebSocketProtocolError extends Error {
  /** The close code sent (1002 protocol error, 1007 invalid UTF-8). */
  readonly code: number;
  /** Creates the error. */
  constructor(code: number, message: string) {
    super(message);
    this.name = "WebSocketProtocolError";
    this.code = code;
  }
}

/** Options for {@linkcode WebSocketConn}. */
export interface WebSocketConnOptions {
  /** Bytes already read past the handshake (the start of the first frames). @default {empty} */
  head?: Uint8Array;
  /** Called when the client begins a data message. Unset: not counted. */
  onMessageIn?: () => void;
  /** Called when a data message is sent. Unset: not counted. */
  onMessageOut?: () => void;
  /** Called once when the client breaks the protocol (before `read` throws). Unset: nothing. */
  onProtocolError?: (error: WebSocketProtocolError) => void;
  /**
   * How long `close()` lets our close frame take to be written before the socket is closed
   * anyway, in ms. @default {1000}
   */
  closeTimeoutMs?: number;
}

const OP_CONTINUATION = 0;
const OP_TEXT = 1;
const OP_BINARY = 2;
const OP_CLOSE = 8;
const OP_PING = 9;
const OP_PONG = 10;
/** Largest header of a frame from a client: 2 bytes, 8 of length, 4 of mask. */
const MAX_CLIENT_HEADER = 14;
/** A frame up to this size is written with one write (its header and payload copied together). */
const SCRATCH_BYTES = 16384;

/** A WebSocket connection's server side as a `Deno.Conn`; see the module docs. */
export class WebSocketConn implements Deno.Conn<Deno.NetAddr> {
  #inner: Deno.Conn;
  #options: WebSocketConnOptions;
  // Frame headers, control frames and whatever else came with them.
  #buf = new Uint8Array(4096);
  #start = 0;
  #end = 0;
  /** Payload bytes of the current data frame still to read. */
  #left = 0;
  #mask = new Uint8Array(4);
  #maskAt = 0;
  /** Whether the current data frame is its message's last. */
  #final = true;
  /** Whether a fragmented message is open (its last frame not seen yet). */
  #fragmented = false;
  /** Whether the current message is text (validated), and the validator's state. */
  #text = false;
  #utf8 = 0;
  #eof = false;
  #failed: WebSocketProtocolError | undefined;
  /** Text or binary replies: decided by the client's first message (binary until then). */
  #replyText: boolean | undefined;
  /** The start of a UTF-8 character cut by the end of the last write (text replies). */
  #held = new Uint8Array(0);
  #out: Uint8Array | undefined;
  /** Every frame we send goes through this chain, one at a time. */
  #chain: Promise<unknown> = Promise.resolve();
  /** Writes of the engine under way (a peer that does not read keeps one pending). */
  #writing = 0;
  /** The payload of a pong not yet written (a newer ping replaces it). */
  #pong: Uint8Array | undefined;
  #closeSent = false;
  #closed = false;
  #innerClosed = false;
  #readable: ReadableStream<Uint8Array<ArrayBuffer>> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;

  /** Wraps `inner`, whose upgrade has been answered (101). */
  constructor(inner: Deno.Conn, options: WebSocketConnOptions = {}) {
    this.#inner = inner;
    this.#options = options;
    const head = options.head;
    if (head !== undefined && head.length > 0) {
      if (head.length > this.#buf.length) this.#buf = new Uint8Array(head.length);
      this.#buf.set(head);
      this.#end = head.length;
    }
  }

  /** The client's address. */
  get remoteAddr(): Deno.NetAddr {
    return this.#inner.remoteAddr as Deno.NetAddr;
  }

  /** Our address. */
  get localAddr(): Deno.NetAddr {
    return this.#inner.localAddr as Deno.NetAddr;
  }

  /** Whether replies go as text messages (the client's first message was text). */
  get repliesAsText(): boolean {
    return this.#replyText === true;
  }

  /**
   * Reads payload bytes of the client's data messages into `p`; null once the client sent its
   * close frame or its connection ended.
   *
   * @throws {WebSocketProtocolError} when the client broke the protocol.
   */
  async read(p: Uint8Array): Promise<number | null> {
    if (this.#closed) throw new Deno.errors.BadResource("The WebSocket connection is closed");
    if (this.#failed !== undefined) throw this.#failed;
    if (p.length === 0) return 0;
    for (;;) {
      if (this.#eof) return null;
      if (this.#left > 0) {
        const want = Math.min(p.length, this.#left);
        let n: number;
        if (this.#end > this.#start) {
          n = Math.min(want, this.#end - this.#start);
          p.set(this.#buf.subarray(this.#start, this.#start + n));
          this.#start += n;
        } else {
          const got = await this.#inner.read(p.subarray(0, want));
          if (got === null) return this.#ended();
          if (got === 0) continue;
          n = got;
        }
        this.#payload(p, n);
        return n;
      }
      if (!await this.#frame()) return this.#ended();
    }
  }

  /** Sends `p` as one message (see the module docs); resolves with `p.length` once written. */
  write(p: Uint8Array): Promise<number> {
    if (this.#closed || this.#closeSent) {
      return Promise.reject(new Deno.errors.BrokenPipe("The WebSocket connection is closing"));
    }
    this.#writing++;
    const length = p.length;
    const run = this.#chain.then(() => this.#sendData(p)).then(() => length);
    this.#chain = run.finally(() => this.#writing--).catch(() => {});
    return run;
  }

  /** Sends our close frame (1000): no message follows it. */
  closeWrite(): Promise<void> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("closed"));
    return this.#sendClose(1000);
  }

  /**
   * Closes the connection: our close frame first when nothing is being written (a write pending
   * means the client does not read: it gets no more), then the socket.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#writing > 0) {
      this.#closeInner();
      return;
    }
    void this.#sendClose(1000).catch(() => {});
    const timer = setTimeout(() => this.#closeInner(), this.#options.closeTimeoutMs ?? 1000);
    void this.#chain.finally(() => {
      clearTimeout(timer);
      this.#closeInner();
    });
  }

  /** Keeps the event loop alive while the connection is open (as the inner connection's `ref`). */
  ref(): void {
    this.#inner.ref();
  }

  /** Lets the event loop end while the connection is open. */
  unref(): void {
    this.#inner.unref();
  }

  /** The payload bytes as a stream (made on first use). */
  get readable(): ReadableStream<Uint8Array<ArrayBuffer>> {
    this.#readable ??= new ReadableStream<Uint8Array<ArrayBuffer>>({
      pull: async (controller) => {
        const buf = new Uint8Array(16384);
        const n = await this.read(buf);
        if (n === null) controller.close();
        else controller.enqueue(buf.subarray(0, n));
      },
    });
    return this.#readable;
  }

  /** Messages as a stream: each chunk written is one message (made on first use). */
  get writable(): WritableStream<Uint8Array> {
    this.#writable ??= new WritableStream<Uint8Array>({
      write: async (chunk) => void await this.write(chunk),
      close: () => this.closeWrite(),
    });
    return this.#writable;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Unmasks (and validates) `n` payload bytes read into `p`. */
  #payload(p: Uint8Array, n: number): void {
    const mask = this.#mask;
    let at = this.#maskAt;
    for (let i = 0; i < n; i++) p[i] ^= mask[(at + i) & 3];
    at = (at + n) & 3;
    this.#maskAt = at;
    this.#left -= n;
    if (this.#text) {
      this.#utf8 = utf8Step(this.#utf8, p, 0, n);
      if (this.#utf8 < 0) this.#fail(1007, "a text message is not valid UTF-8");
    }
    if (this.#left === 0) this.#frameDone();
  }

  /** The current data frame is read through: a final one ends its message. */
  #frameDone(): void {
    if (this.#final && this.#text && this.#utf8 !== 0) {
      this.#fail(1007, "a text message ends inside a UTF-8 character");
    }
  }

  /** The client's connection ended (EOF) without a close frame: the end of its stream. */
  #ended(): null {
    this.#eof = true;
    return null;
  }

  /**
   * Reads the next frame's header (and a control frame whole, acting on it); false at the end of
   * the stream. A data frame leaves its payload to `read`.
   */
  async #frame(): Promise<boolean> {
    if (!await this.#fill(2)) return false;
    const buf = this.#buf;
    const b0 = buf[this.#start];
    const b1 = buf[this.#start + 1];
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    const short = b1 & 0x7f;
    const headerLength = 2 + (short === 126 ? 2 : short === 127 ? 8 : 0) + 4;
    if ((b0 & 0x70) !== 0) this.#fail(1002, "reserved bits set (no extension was agreed)");
    if ((b1 & 0x80) === 0) this.#fail(1002, "a frame from a client must be masked");
    if (!await this.#fill(headerLength)) return false;
    let at = this.#start + 2;
    let length = short;
    if (short === 126) {
      length = (buf[at] << 8) | buf[at + 1];
      at += 2;
    } else if (short === 127) {
      const high = ((buf[at] << 24) >>> 0) + (buf[at + 1] << 16) + (buf[at + 2] << 8) + buf[at + 3];
      const low = ((buf[at + 4] << 24) >>> 0) + (buf[at + 5] << 16) + (buf[at + 6] << 8) +
        buf[at + 7];
      if (high >= 0x200000) this.#fail(1009, "a frame longer than 2^53 bytes");
      length = high * 2 ** 32 + low;
      at += 8;
    }
    this.#mask.set(buf.subarray(at, at + 4));
    this.#maskAt = 0;
    this.#start = at + 4;
    if (opcode >= 8) return await this.#control(opcode, fin, length);
    if (opcode === OP_CONTINUATION) {
      if (!this.#fragmented) this.#fail(1002, "a continuation frame with no message begun");
    } else if (opcode === OP_TEXT || opcode === OP_BINARY) {
      if (this.#fragmented) this.#fail(1002, "a new message inside a fragmented one");
      this.#text = opcode === OP_TEXT;
      this.#utf8 = 0;
      this.#replyText ??= this.#text;
      this.#options.onMessageIn?.();
    } else {
      this.#fail(1002, `unknown opcode ${opcode}`);
    }
    this.#fragmented = !fin;
    this.#final = fin;
    this.#left = length;
    if (length === 0) this.#frameDone();
    return true;
  }

  /** Reads a control frame whole and acts on it; false at the end of the stream. */
  async #control(opcode: number, fin: boolean, length: number): Promise<boolean> {
    if (!fin || length > 125) this.#fail(1002, "a control frame must be whole and short");
    if (!await this.#fill(length)) return false;
    const payload = this.#buf.slice(this.#start, this.#start + length);
    this.#start += length;
    for (let i = 0; i < length; i++) payload[i] ^= this.#mask[i & 3];
    if (opcode === OP_CLOSE) {
      if (length === 1) this.#fail(1002, "a close frame with a 1-byte body");
      this.#eof = true; // the client sends nothing more; our close frame goes when we close
      return true;
    }
    if (opcode === OP_PING) this.#answerPing(payload);
    else if (opcode !== OP_PONG) this.#fail(1002, `unknown opcode ${opcode}`);
    return true;
  }

  /** Answers a ping; a pong still waiting to be written takes the newer payload instead. */
  #answerPing(payload: Uint8Array): void {
    if (this.#closed || this.#closeSent) return;
    const waiting = this.#pong !== undefined;
    this.#pong = payload;
    if (waiting) return;
    this.#chain = this.#chain.then(async () => {
      const body = this.#pong!;
      this.#pong = undefined;
      if (!this.#closeSent && !this.#innerClosed) await this.#writeFrame(OP_PONG, body);
    }).catch(() => {});
  }

  /** Makes at least `n` bytes readable from `#buf[#start]`; false when the stream ends first. */
  async #fill(n: number): Promise<boolean> {
    if (this.#end - this.#start >= n) return true;
    if (this.#buf.length - this.#start < Math.max(n, MAX_CLIENT_HEADER)) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    while (this.#end - this.#start < n) {
      const got = await this.#inner.read(this.#buf.subarray(this.#end));
      if (got === null) return false;
      this.#end += got;
    }
    return true;
  }

  /** Sends our close frame with `code` and stops reading; throws the error for `read`. */
  #fail(code: number, message: string): never {
    const error = new WebSocketProtocolError(code, `WebSocket protocol error: ${message}`);
    this.#failed = error;
    this.#options.onProtocolError?.(error);
    void this.#sendClose(code).catch(() => {});
    throw error;
  }

  /** Queues our close frame (once); resolves when it is written. */
  #sendClose(code: number): Promise<void> {
    if (this.#closeSent) return this.#chain.then(() => {});
    this.#closeSent = true;
    const body = new Uint8Array([code >> 8, code & 0xff]);
    const run = this.#chain.then(async () => {
      if (this.#held.length > 0) await this.#writeFrame(OP_BINARY, this.#takeHeld());
      await this.#writeFrame(OP_CLOSE, body);
    });
    this.#chain = run.catch(() => {});
    return run;
  }

  async #sendData(p: Uint8Array): Promise<void> {
    if (this.#replyText !== true) {
      await this.#writeFrame(OP_BINARY, p);
      this.#options.onMessageOut?.();
      return;
    }
    let bytes = p;
    if (this.#held.length > 0) {
      bytes = new Uint8Array(this.#held.length + p.length);
      bytes.set(this.#held);
      bytes.set(p, this.#held.length);
      this.#held = new Uint8Array(0);
    }
    const cut = incompleteTail(bytes, bytes.length);
    if (cut < bytes.length) this.#held = bytes.slice(cut);
    if (cut === 0) return;
    const whole = bytes.subarray(0, cut);
    const text = utf8Step(0, whole, 0, whole.length) === 0;
    await this.#writeFrame(text ? OP_TEXT : OP_BINARY, whole);
    this.#options.onMessageOut?.();
  }

  #takeHeld(): Uint8Array {
    const held = this.#held;
    this.#held = new Uint8Array(0);
    return held;
  }

  /**
   * Writes one unmasked frame (FIN set) with `payload`: copied behind its header into one write
   * when small, else header and payload written apart (the scratch buffer stays small).
   */
  async #writeFrame(opcode: number, payload: Uint8Array): Promise<void> {
    const length = payload.length;
    const header = length < 126 ? 2 : length < 65536 ? 4 : 10;
    const joined = header + length <= SCRATCH_BYTES;
    const out = this.#out ??= new Uint8Array(SCRATCH_BYTES);
    out[0] = 0x80 | opcode;
    if (header === 2) {
      out[1] = length;
    } else if (header === 4) {
      out[1] = 126;
      out[2] = length >> 8;
      out[3] = length & 0xff;
    } else {
      out[1] = 127;
      const view = new DataView(out.buffer);
      view.setUint32(2, Math.floor(length / 2 ** 32));
      view.setUint32(6, length >>> 0);
    }
    if (joined) {
      out.set(payload, header);
      await writeAll(this.#inner, out.subarray(0, header + length));
    } else {
      await writeAll(this.#inner, out.subarray(0, header));
      await writeAll(this.#inner, payload);
    }
  }

  #closeInner(): void {
    if (this.#innerClosed) return;
    this.#innerClosed = true;
    try {
      this.#inner.close();
    } catch {
      // Already closed.
    }
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) {
    off += await conn.write(off === 0 ? bytes : bytes.subarray(off));
  }
}
