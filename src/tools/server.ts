/**
 * The bundled Foo server (`foo-proxy server`): answers every valid REQ with ACK (or NAK) and the
 * same Seq, in order, for any number of pipelining connections. It is the upstream of the tests
 * and of the throughput benchmarks, so the request scanner works on bytes, allocates nothing per
 * message and coalesces the replies to one read into one write. Options make it behave like a
 * hostile real server: NAK every Nth request, fragment replies, delay replies.
 *
 * @module
 */
import { getLogger, type Logger } from "@logtape/logtape";
import { type Address, formatAddress } from "../net/address.ts";
import { waitOrAbort } from "../async/wait_or_abort.ts";
import { FNV_START, fnvUpdate, isNakHash, writeHash } from "../protocol/reply_hash.ts";

/** Options for {@linkcode FooServer}. */
export interface FooServerOptions {
  /** Where to listen; port 0 asks the OS for a free port. */
  listen: Address;
  /**
   * Serve TLS with this PEM certificate chain and key (`Deno.listenTls`): a TLS upstream for
   * tests and demos. Unset: plain TCP.
   */
  tls?: { cert: string; key: string };
  /** Every Nth valid REQ of a connection (counting from its first) gets NAK; 0/unset: never. */
  nakEvery?: number;
  /**
   * Write each reply line in three writes split inside the line (`"AC"`, `"K 7"`, `"\n"`), like a
   * real server whose replies arrive fragmented. Unset: one coalesced write per read.
   * @default {false}
   */
  fragment?: boolean;
  /** Send each reply this many ms after its REQ arrived, order preserved; 0/unset: at once. */
  delayMs?: number;
  /**
   * How a reply is made: `"seq"` answers `ACK <seq>` (NAK every `nakEvery`th); `"hash"` computes
   * the reply from the Seq and the data, like real Foo servers (see `reply_hash.ts`), so a REQ
   * sent with another Seq gets another answer. @default {"seq"}
   */
  reply?: "seq" | "hash";
  /**
   * What to do after a client's FIN: `true` closes once every reply is written (a polite
   * server); `false` never closes (servers like that exist: the peer must end the exchange).
   * @default {true}
   */
  closeAfterFin?: boolean;
  /**
   * Answer every complete line, like real Foo servers: a line that is not a valid REQ (a blank
   * line, `req 1`, `REQ +1`, an ACK) gets `NAK 0 ERRDECODE`, in order, and so does a REQ whose Seq
   * has more than 18 digits (more than the server's integer holds). @default {false}
   */
  answerInvalid?: boolean;
  /** Send every reply line twice: a broken server whose second answers match nothing. @default {false} */
  duplicateReplies?: boolean;
  /** Never answer (reads and counts REQs only): a hung upstream. @default {false} */
  silent?: boolean;
  /** Close every connection right after accepting it: an upstream that is broken. @default {false} */
  closeOnAccept?: boolean;
  /** LogTape logger; unset: the `foo-proxy.server` category. */
  logger?: Logger;
  /** Aborting closes the server like {@linkcode FooServer.close}. Unset: only `close()` does. */
  signal?: AbortSignal;
}

const INITIAL_READ = 4096;
const MAX_READ = 65536;
/** Seqs longer than this many digits are treated as invalid rather than buffered without end. */
const MAX_SEQ_DIGITS = 4096;
/** With `answerInvalid`, the longest Seq the server decodes (a signed 64-bit integer's worth). */
const DECODABLE_SEQ_DIGITS = 18;
const ERRDECODE = new TextEncoder().encode("NAK 0 ERRDECODE\n");
/** With a delay, stop reading while this many reply bytes wait to be sent. */
const DELAY_HIGH_WATER = 1 << 20;

/**
 * A Foo server. `await using server = new FooServer({ listen }); await server.start();`
 */
export class FooServer implements AsyncDisposable {
  #options: FooServerOptions;
  #logger: Logger;
  #listener: Deno.Listener | undefined;
  #conns = new Set<Deno.Conn>();
  #tasks = new Set<Promise<void>>();
  #accepting: Promise<void> | undefined;
  #closeAll = new AbortController();
  #closing: Promise<void> | undefined;
  #finished = Promise.withResolvers<void>();
  #accepted = 0;
  #requests = 0;
  #received = 0;
  #maxUnanswered = 0;
  #invalid = 0;
  #writes = 0;

  /** Creates a server; nothing is opened until {@linkcode FooServer.start}. */
  constructor(options: FooServerOptions) {
    const { nakEvery = 0, delayMs = 0 } = options;
    if (!Number.isSafeInteger(nakEvery) || nakEvery < 0) {
      throw new RangeError(`Invalid nakEvery ${nakEvery}: expected an integer >= 0`);
    }
    if (!Number.isFinite(delayMs) || delayMs < 0) {
      throw new RangeError(`Invalid delayMs ${delayMs}: expected a number >= 0`);
    }
    this.#options = options;
    this.#logger = options.logger ?? getLogger(["foo-proxy", "server"]);
    if (options.signal?.aborted) void this.close();
    options.signal?.addEventListener("abort", () => void this.close(), { once: true });
  }

  /**
   * Binds the listener and starts accepting; resolves with the bound address.
   *
   * @throws {Deno.errors.AddrInUse} (and other listen errors) when the address cannot be bound.
   */
  start(): Promise<Deno.NetAddr> {
    try {
      if (this.#closing) throw new Error("FooServer is closed");
      if (this.#listener) throw new Error("FooServer already started");
      const { hostname, port } = this.#options.listen;
      const tls = this.#options.tls;
      this.#listener = tls
        ? Deno.listenTls({ hostname, port, transport: "tcp", cert: tls.cert, key: tls.key })
        : Deno.listen({ hostname, port, transport: "tcp" });
    } catch (error) {
      return Promise.reject(error);
    }
    this.#accepting = this.#acceptLoop(this.#listener);
    this.#logger.info("Foo server listening on {listen}", { listen: formatAddress(this.addr) });
    return Promise.resolve(this.addr);
  }

  /** The bound address (after {@linkcode FooServer.start}). */
  get addr(): Deno.NetAddr {
    if (!this.#listener) throw new Error("FooServer is not started");
    return this.#listener.addr as Deno.NetAddr;
  }

  /** Connections currently open. */
  get connections(): number {
    return this.#conns.size;
  }

  /** Connections accepted since start (health checks included). */
  get accepted(): number {
    return this.#accepted;
  }

  /** REQs answered (their reply fully written) since start, over all connections. */
  get requests(): number {
    return this.#requests;
  }

  /** Valid REQs read since start, over all connections (answered or not). */
  get received(): number {
    return this.#received;
  }

  /**
   * Most REQs one connection had read and not yet answered at any moment since start: what a
   * proxy's in-flight limit must bound.
   */
  get maxUnanswered(): number {
    return this.#maxUnanswered;
  }

  /** Lines ignored because they were not valid REQs (including a partial line at EOF). */
  get invalid(): number {
    return this.#invalid;
  }

  /** Socket writes made so far (lets tests see that `fragment` really splits replies). */
  get writes(): number {
    return this.#writes;
  }

  /**
   * Writes `text` to every open connection, unasked (a misbehaving server: a line nobody asked
   * for). Resolves once written; a connection that fails is skipped.
   */
  async sendUnsolicited(text: string): Promise<void> {
    const bytes = new TextEncoder().encode(text);
    await Promise.all([...this.#conns].map((conn) => this.#writeAll(conn, bytes).catch(() => {})));
  }

  /** Resolves once the server has closed and every connection has ended. */
  get finished(): Promise<void> {
    return this.#finished.promise;
  }

  /**
   * Closes every open connection at once (replies owed are lost) and keeps accepting: an upstream
   * that restarts, or a load balancer that cuts connections. Returns how many were closed.
   */
  dropConnections(): number {
    const count = this.#conns.size;
    for (const conn of this.#conns) closeQuietly(conn);
    return count;
  }

  /** Stops accepting, closes every connection, and resolves when all have ended. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #close(): Promise<void> {
    this.#closeAll.abort();
    try {
      this.#listener?.close();
    } catch {
      // Already closed.
    }
    await this.#accepting;
    for (const conn of this.#conns) closeQuietly(conn);
    while (this.#tasks.size > 0) await Promise.all([...this.#tasks]);
    this.#finished.resolve();
  }

  async #acceptLoop(listener: Deno.Listener): Promise<void> {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (this.#closing || error instanceof Deno.errors.BadResource) return;
        // Out of file descriptors and the like: say so and back off instead of spinning.
        this.#logger.error("Accept failed on {listen}: {error}", {
          listen: formatAddress(this.addr),
          error: String(error),
        });
        await waitOrAbort(100, this.#closeAll.signal);
        continue;
      }
      if (this.#closing) {
        closeQuietly(conn);
        return;
      }
      this.#accepted++;
      if (this.#options.closeOnAccept) {
        closeQuietly(conn);
        continue;
      }
      this.#conns.add(conn);
      const task = this.#serve(conn)
        .catch((error) => {
          this.#logger.error("Unexpected error in a connection: {error}", { error: String(error) });
        })
        .finally(() => {
          closeQuietly(conn);
          this.#conns.delete(conn);
          this.#tasks.delete(task);
        });
      this.#tasks.add(task);
    }
  }

  async #serve(conn: Deno.Conn): Promise<void> {
    const peer = formatAddress(conn.remoteAddr as Deno.NetAddr);
    this.#logger.debug("Accepted {peer}", { peer });
    try {
      // A TlsConn has none (its handshake runs at the first read).
      (conn as Partial<Deno.TcpConn>).setNoDelay?.(true);
    } catch {
      // The peer is already gone; the first read says so.
    }
    const scanner = new RequestScanner(this.#options.nakEvery ?? 0, this.#options.reply ?? "seq", {
      answerInvalid: this.#options.answerInvalid,
      duplicateReplies: this.#options.duplicateReplies,
    });
    const silent = this.#options.silent === true;
    let unanswered = 0;
    const delayMs = this.#options.delayMs ?? 0;
    const queue = delayMs > 0 ? new DelayedWriter(delayMs, (b, n) => this.#send(conn, b, n)) : null;
    let buf = new Uint8Array(INITIAL_READ);
    let why = "client closed";
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        const invalidBefore = scanner.invalid;
        const replies = scanner.feed(buf.subarray(0, n));
        this.#noteInvalid(scanner.invalid - invalidBefore, peer);
        this.#received += replies;
        unanswered += replies;
        if (unanswered > this.#maxUnanswered) this.#maxUnanswered = unanswered;
        if (scanner.outLength > 0 && !silent) {
          const written = () => unanswered -= replies;
          if (queue) {
            await queue.push(scanner.out.slice(0, scanner.outLength), replies, written);
          } else {
            await this.#send(conn, scanner.out.subarray(0, scanner.outLength), replies);
            written();
          }
        }
        // A full read means more is queued: grow, so busy connections move large chunks while
        // idle ones keep pinning only the small initial buffer.
        if (n === buf.length && buf.length < MAX_READ) buf = new Uint8Array(buf.length * 2);
      }
      // EOF (half-close or close): the client still gets every reply it is owed.
      if (scanner.end()) this.#noteInvalid(1, peer);
      if (queue) await queue.drain(this.#closeAll.signal);
      if (this.#options.closeAfterFin === false || silent) {
        // Like servers that never close after a FIN: hold the connection until the server closes
        // (a read after EOF returns EOF at once, so there is nothing to wait on but our close).
        await waitOrAbort(2 ** 31 - 1, this.#closeAll.signal);
      }
    } catch (error) {
      why = this.#closeAll.signal.aborted ? "server closing" : String(error);
    } finally {
      if (queue) {
        // Closing first unblocks a write the peer stopped reading; the queue is empty otherwise.
        closeQuietly(conn);
        await queue.stop();
      }
    }
    this.#logger.debug("Closed {peer}: {why}", { peer, why });
  }

  async #send(conn: Deno.Conn, bytes: Uint8Array, replies: number): Promise<void> {
    if (this.#options.fragment) {
      for (let start = 0; start < bytes.length;) {
        const end = bytes.indexOf(NL, start) + 1 || bytes.length;
        // "AC" | "K 7" | "\n": the split lands inside the type and right before the newline.
        await this.#writeAll(conn, bytes.subarray(start, start + 2));
        await this.#writeAll(conn, bytes.subarray(start + 2, end - 1));
        await this.#writeAll(conn, bytes.subarray(end - 1, end));
        start = end;
      }
    } else {
      await this.#writeAll(conn, bytes);
    }
    this.#requests += replies;
  }

  async #writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
    for (let off = 0; off < bytes.length;) {
      this.#writes++;
      off += await conn.write(off === 0 ? bytes : bytes.subarray(off));
    }
  }

  #noteInvalid(count: number, peer: string): void {
    if (count === 0) return;
    this.#invalid += count;
    this.#logger.debug("Ignored {count} invalid line(s) from {peer}", { count, peer });
  }
}

/**
 * Sends reply batches `delayMs` after they were queued, in order, while the reader carries on;
 * the reader waits (backpressure) once too many bytes are queued.
 */
class DelayedWriter {
  #delayMs: number;
  #send: (bytes: Uint8Array, replies: number) => Promise<void>;
  #queue: { due: number; bytes: Uint8Array; replies: number; written?: () => void }[] = [];
  #queuedBytes = 0;
  #wake: PromiseWithResolvers<void> | undefined;
  #room: PromiseWithResolvers<void> | undefined;
  #stop = new AbortController();
  #loop: Promise<void>;
  #error: unknown;
  #failed = false;

  constructor(delayMs: number, send: (bytes: Uint8Array, replies: number) => Promise<void>) {
    this.#delayMs = delayMs;
    this.#send = send;
    this.#loop = this.#run().catch((error) => {
      this.#failed = true;
      this.#error = error;
      this.#room?.resolve();
    });
  }

  /** Queues a batch; resolves when there is room for more (rejects once a write failed). */
  async push(bytes: Uint8Array, replies: number, written?: () => void): Promise<void> {
    if (this.#failed) throw this.#error;
    this.#queue.push({ due: performance.now() + this.#delayMs, bytes, replies, written });
    this.#queuedBytes += bytes.length;
    this.#wake?.resolve();
    while (this.#queuedBytes > DELAY_HIGH_WATER && !this.#failed) {
      this.#room = Promise.withResolvers();
      await this.#room.promise;
    }
    if (this.#failed) throw this.#error;
  }

  /** Resolves once everything queued has been written (rejects if a write failed). */
  async drain(signal: AbortSignal): Promise<void> {
    this.#queue.push({ due: 0, bytes: new Uint8Array(0), replies: -1 }); // end marker
    this.#wake?.resolve();
    const aborted = Promise.withResolvers<void>();
    const onAbort = () => aborted.resolve();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      await Promise.race([this.#loop, aborted.promise]);
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
    if (this.#failed) throw this.#error;
  }

  /** Stops the writer (pending batches are dropped) and waits for it. */
  async stop(): Promise<void> {
    this.#stop.abort();
    this.#wake?.resolve();
    await this.#loop;
  }

  async #run(): Promise<void> {
    for (;;) {
      if (this.#stop.signal.aborted) return;
      const next = this.#queue[0];
      if (next === undefined) {
        this.#wake = Promise.withResolvers();
        await this.#wake.promise;
        continue;
      }
      if (next.replies < 0) return;
      const wait = next.due - performance.now();
      if (wait > 0) {
        await waitOrAbort(wait, this.#stop.signal);
        continue;
      }
      await this.#send(next.bytes, next.replies);
      next.written?.();
      this.#queue.shift();
      this.#queuedBytes -= next.bytes.length;
      if (this.#queuedBytes <= DELAY_HIGH_WATER) this.#room?.resolve();
    }
  }
}

const NL = 10;
const CR = 13;
const CR_BYTE = new Uint8Array([CR]);
const SP = 32;
const TAB = 9;

// Scanner states: where in a line the previous chunk stopped.
const S_LINE = 0; // at the start of a line
const S_R = 1; // "R" seen
const S_RE = 2; // "RE" seen
const S_REQ = 3; // "REQ" seen: whitespace must follow
const S_WS = 4; // whitespace before the seq
const S_SEQ = 5; // in the seq digits
const S_CR = 6; // "\r" after the seq: only "\n" may follow
const S_DATA = 7; // a valid head: skip the data to the newline, then reply
const S_SKIP = 8; // an invalid line: skip to the newline

/** Misbehaviours of {@linkcode RequestScanner}, as in {@linkcode FooServerOptions}. */
export interface ScannerOptions {
  /** Answer invalid lines (and Seqs over 18 digits) with `NAK 0 ERRDECODE`. @default {false} */
  answerInvalid?: boolean;
  /** Write every reply line twice. @default {false} */
  duplicateReplies?: boolean;
}

/**
 * Byte-level scanner of one connection's REQ stream that writes the replies into `out` (the
 * server's core, exported for tests). It accepts exactly what the proxy's analyzer counts as a
 * valid REQ, so counts on both sides agree, and its output does not depend on chunking.
 */
export class RequestScanner {
  /** Replies produced by the last {@linkcode RequestScanner.feed}, in `out[0, outLength)`. */
  out: Uint8Array = new Uint8Array(INITIAL_READ);
  /** Bytes of `out` holding the last feed's replies. */
  outLength = 0;
  /** Invalid lines seen so far. */
  invalid = 0;
  #state = S_LINE;
  #seq = new Uint8Array(32);
  #seqLength = 0;
  #nakEvery: number;
  #count = 0;
  #hashMode: boolean;
  #hash = FNV_START; // of the current line from its first Seq digit (hash mode)
  #answerInvalid: boolean;
  #duplicate: boolean;
  #pendingCr = false; // a "\r" ended the last chunk inside the data: hashed unless "\n" follows

  /**
   * Creates a scanner that NAKs every `nakEvery`th REQ (0: never), or, with `reply` `"hash"`,
   * answers from the Seq and the data (see `reply_hash.ts`; `nakEvery` is then ignored).
   */
  constructor(nakEvery = 0, reply: "seq" | "hash" = "seq", options: ScannerOptions = {}) {
    this.#nakEvery = nakEvery;
    this.#hashMode = reply === "hash";
    this.#answerInvalid = options.answerInvalid ?? false;
    this.#duplicate = options.duplicateReplies ?? false;
  }

  /** Scans `chunk`; returns how many replies it completed (written to `out`). */
  feed(chunk: Uint8Array): number {
    const n = chunk.length;
    let state = this.#state;
    let replies = 0;
    let i = 0;
    this.outLength = 0;
    while (i < n) {
      switch (state) {
        case S_DATA:
        case S_SKIP: {
          const nl = chunk.indexOf(NL, i);
          if (state === S_DATA && this.#hashMode) {
            this.#hashData(chunk, i, nl < 0 ? n : nl, nl >= 0);
          }
          if (nl < 0) {
            i = n;
            break;
          }
          i = nl + 1;
          if (state === S_DATA) {
            this.#reply();
            replies++;
          } else {
            this.#invalidLine();
          }
          state = S_LINE;
          break;
        }
        case S_SEQ: {
          let c = chunk[i];
          let seqLength = this.#seqLength;
          const seq = this.#seq;
          const from = i;
          while (c >= 48 && c <= 57 && seqLength < seq.length) {
            seq[seqLength++] = c;
            if (++i === n) break;
            c = chunk[i];
          }
          this.#seqLength = seqLength;
          if (this.#hashMode) this.#hash = fnvUpdate(this.#hash, chunk, from, i);
          if (this.#answerInvalid && seqLength > DECODABLE_SEQ_DIGITS) {
            state = S_SKIP;
            continue;
          }
          if (i === n) break;
          if (c >= 48 && c <= 57) {
            // The seq buffer is full: grow it, or give up on absurdly long seqs.
            if (seq.length >= MAX_SEQ_DIGITS) state = S_SKIP;
            else this.#growSeq();
            break;
          }
          i++;
          if (c === NL) {
            this.#reply();
            replies++;
            state = S_LINE;
          } else if (c === SP || c === TAB) {
            if (this.#hashMode) this.#hash = fnvUpdate(this.#hash, chunk, i - 1, i);
            state = S_DATA;
          } else if (c === CR) {
            state = S_CR;
          } else {
            state = S_SKIP;
          }
          break;
        }
        default: {
          const c = chunk[i++];
          if (c === NL) {
            // A complete line ended before its seq (or "\r" after the seq was not the end).
            if (state === S_CR) {
              this.#reply();
              replies++;
            } else {
              this.#invalidLine();
            }
            state = S_LINE;
            break;
          }
          switch (state) {
            case S_LINE:
              state = c === 82 ? S_R : S_SKIP; // R
              break;
            case S_R:
              state = c === 69 ? S_RE : S_SKIP; // E
              break;
            case S_RE:
              state = c === 81 ? S_REQ : S_SKIP; // Q
              break;
            case S_REQ:
              state = c === SP || c === TAB ? S_WS : S_SKIP;
              break;
            case S_WS:
              if (c >= 48 && c <= 57) {
                this.#seq[0] = c;
                this.#seqLength = 1;
                this.#hash = fnvUpdate(FNV_START, chunk, i - 1, i);
                this.#pendingCr = false;
                state = S_SEQ;
              } else if (c !== SP && c !== TAB) {
                state = S_SKIP;
              }
              break;
            case S_CR:
              state = S_SKIP;
              break;
          }
        }
      }
    }
    this.#state = state;
    return replies;
  }

  /** Ends the stream; returns true when a partial line was left (it is counted as invalid). */
  end(): boolean {
    const partial = this.#state !== S_LINE;
    if (partial) this.invalid++;
    this.#state = S_LINE;
    return partial;
  }

  // A complete line that is not a valid REQ: counted, and answered when asked to.
  #invalidLine(): void {
    this.invalid++;
    if (this.#answerInvalid) this.#write(ERRDECODE, 0, ERRDECODE.length);
  }

  // Appends bytes[from, to) to `out`.
  #write(bytes: Uint8Array, from: number, to: number): void {
    const o = this.outLength;
    if (o + to - from > this.out.length) {
      const bigger = new Uint8Array(Math.max(this.out.length * 2, o + to - from));
      bigger.set(this.out.subarray(0, o));
      this.out = bigger;
    }
    this.out.set(bytes.subarray(from, to), o);
    this.outLength = o + to - from;
  }

  #reply(): void {
    const start = this.outLength;
    this.#replyLine();
    if (this.#duplicate) this.#write(this.out, start, this.outLength);
  }

  #replyLine(): void {
    const seqLength = this.#seqLength;
    let o = this.outLength;
    if (o + seqLength + 14 > this.out.length) {
      const bigger = new Uint8Array(Math.max(this.out.length * 2, o + seqLength + 14));
      bigger.set(this.out.subarray(0, o));
      this.out = bigger;
    }
    const out = this.out;
    const hashMode = this.#hashMode;
    const nak = hashMode
      ? isNakHash(this.#hash)
      : this.#nakEvery > 0 && ++this.#count % this.#nakEvery === 0;
    if (nak) {
      out[o] = 78; // N
      out[o + 1] = 65; // A
    } else {
      out[o] = 65; // A
      out[o + 1] = 67; // C
    }
    out[o + 2] = 75; // K
    out[o + 3] = SP;
    o += 4;
    const seq = this.#seq;
    for (let k = 0; k < seqLength; k++) out[o + k] = seq[k];
    o += seqLength;
    if (hashMode) {
      out[o++] = SP;
      o = writeHash(this.#hash, out, o);
    }
    out[o] = NL;
    this.outLength = o + 1;
  }

  // Hashes data bytes chunk[from, to) of a valid REQ, leaving out a "\r" right before the
  // newline (`ended`: chunk[to] is the newline), even when the "\r" ended the previous chunk.
  #hashData(chunk: Uint8Array, from: number, to: number, ended: boolean): void {
    let h = this.#hash;
    if (this.#pendingCr) {
      this.#pendingCr = false;
      if (!(ended && to === from)) h = fnvUpdate(h, CR_BYTE);
    }
    let end = to;
    if (end > from && chunk[end - 1] === CR) {
      end--;
      if (!ended) this.#pendingCr = true;
    }
    this.#hash = fnvUpdate(h, chunk, from, end);
  }

  #growSeq(): void {
    const bigger = new Uint8Array(Math.min(MAX_SEQ_DIGITS, this.#seq.length * 4));
    bigger.set(this.#seq);
    this.#seq = bigger;
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
