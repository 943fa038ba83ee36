/**
 * The request side of `--resume`: the REQ lines of one connection that still owe a reply, kept
 * so they can be replayed on a new upstream connection, and the renumbering of the request
 * stream once a failover has happened.
 *
 * Before any failover the log only watches: the proxy forwards the client's bytes unchanged and
 * the log copies the bytes of each valid REQ line into one {@linkcode ByteDeque} and notes where
 * it lies in a ring of entries. A reply (matched by Seq, the head of the ring first) marks its
 * entry answered, and answered entries at the head are dropped, so the log holds only the
 * unanswered lines. Nothing is allocated per message.
 *
 * {@linkcode RequestLog.replay} switches the log to renumbering: it returns the unanswered REQs
 * with new Seqs 1, 2, … for the new upstream connection, and from then on
 * {@linkcode RequestLog.feed} writes the client's stream to {@linkcode RequestLog.out} with every
 * REQ's Seq replaced by the next proxy Seq. {@linkcode ReplyRewriter} (reply_rewriter.ts) maps
 * the replies back through the {@linkcode SeqMap} methods.
 *
 * The grammar of a valid REQ is exactly the analyzer's (downstream direction), so the log's
 * entries are the REQs the analyzer counts.
 *
 * @module
 */
import { ByteDeque, decimalLength, writeDecimal } from "./byte_deque.ts";
import { appendOut, reserveOut } from "./out_buffer.ts";
import type { SeqMap } from "./reply_rewriter.ts";

/** Options for {@linkcode RequestLog}. */
export interface RequestLogOptions {
  /**
   * Bytes of REQ lines kept for replay. A line that does not fit is kept head-only (type and
   * Seq): the connection cannot be resumed while such a REQ is unanswered.
   * @default {1048576}
   */
  retainLimit?: number;
  /**
   * Most REQs tracked at once (each costs 64 bytes of bookkeeping, whether its bytes are kept or
   * not). One more turns tracking off for the connection, like a head longer than `maxHead`, so
   * a client that pipelines without limit costs bounded memory. Unset: `retainLimit / 64`, at
   * least 1024.
   */
  maxEntries?: number;
  /**
   * Longest line head (type, whitespace and Seq digits) the log follows. A longer one turns
   * tracking off for the connection (it cannot be resumed any more), or, once renumbering,
   * makes {@linkcode RequestLog.feed} fail.
   * @default {4096}
   */
  maxHead?: number;
}

/** What {@linkcode RequestLog.replay} hands back. */
export interface Replay {
  /** The unanswered REQs renumbered from 1, to write first on the new upstream connection. */
  bytes: Uint8Array;
  /** How many REQs `bytes` holds (complete ones and a partial last line). */
  requests: number;
}

const NL = 10;
const CR = 13;
const SP = 32;
const TAB = 9;

// Line states. L_R … L_CR are the undecided head: its bytes are kept tentatively.
const L_START = 0;
const L_R = 1;
const L_RE = 2;
const L_REQ = 3; // "REQ" seen: whitespace must follow
const L_WS = 4;
const L_SEQ = 5;
const L_CR = 6; // "\r" after the Seq: only "\n" may follow
const L_DATA = 7; // a valid REQ (the open entry): skip to the newline
const L_SKIP = 8; // not a REQ: skip to the newline

// Entry fields (absolute positions in #lines).
const E_LINE = 0; // first byte of the line
const E_SEQ = 1; // first Seq digit
const E_SEQ_END = 2; // after the last Seq digit
const E_END = 3; // after the last byte kept (complete entries)
const E_VALUE = 4; // the Seq as a number (-1 when above 2^53)
const E_PROXY = 5; // Seq on the current upstream connection (0: not sent on it)
const E_FLAGS = 6;
const STRIDE = 8;

const F_COMPLETE = 1;
const F_ANSWERED = 2;
const F_HEAD_ONLY = 4;

const REQ_SP = [82, 69, 81, 32]; // "REQ "

/** The REQs of one connection awaiting a reply, and the request-stream renumbering. */
export class RequestLog implements SeqMap {
  /** The bytes to send upstream for the last {@linkcode feed}, once renumbering. */
  out: Uint8Array = new Uint8Array(256);
  /** Bytes of {@linkcode out} written by the last {@linkcode feed}. */
  outLength = 0;
  #lines = new ByteDeque(256);
  #retainLimit: number;
  #maxHead: number;
  #maxEntries: number;
  // Entry ring: handles are absolute indexes; slot = handle & (capacity - 1).
  #ring = new Float64Array(16 * STRIDE);
  #mask = 15;
  #first = 0;
  #count = 0;
  #open = false; // the last entry's line has not ended yet
  #unanswered = 0;
  #headOnlyUnanswered = 0;
  // The current line.
  #state = L_START;
  #lineStart = 0;
  #seqStart = 0;
  #seqEnd = 0;
  #seqValue = 0;
  #retaining = false; // L_DATA: the open entry's bytes are still kept
  #mute = false; // the rest of the current line is not sent on the new upstream
  #renumber = false;
  #nextProxy = 0;
  #disabled = false;

  /** Creates an empty log. */
  constructor(options: RequestLogOptions = {}) {
    this.#retainLimit = options.retainLimit ?? 1024 * 1024;
    this.#maxHead = options.maxHead ?? 4096;
    this.#maxEntries = options.maxEntries ?? Math.max(1024, Math.floor(this.#retainLimit / 64));
  }

  /** Whether {@linkcode replay} has switched the log to renumbering. */
  get renumbering(): boolean {
    return this.#renumber;
  }

  /** Complete REQs awaiting a reply. */
  get outstanding(): number {
    return this.#open && !(this.#flags(this.#first + this.#count - 1) & F_ANSWERED)
      ? this.#unanswered - 1
      : this.#unanswered;
  }

  /** Whether no REQ is tracked at all: none unanswered, none partly received. */
  get empty(): boolean {
    return this.#count === 0;
  }

  /** Bytes held for replay (unanswered lines and what lies between them). */
  get retainedBytes(): number {
    return this.#lines.length;
  }

  /** Whether {@linkcode replay} would succeed now. */
  get replayable(): boolean {
    return !this.#disabled && this.#headOnlyUnanswered === 0;
  }

  /**
   * Turns tracking back on after it was turned off (see {@linkcode disabled}); call only at a
   * line start of the client's stream with no REQ unanswered. Not while renumbering.
   */
  restart(): void {
    if (!this.#disabled || this.#renumber) return;
    this.#disabled = false;
    this.#count = 0;
    this.#unanswered = 0;
    this.#headOnlyUnanswered = 0;
    this.#open = false;
    this.#state = L_START;
    this.#retaining = false;
    this.#mute = false;
    this.#lines.clear();
  }

  /** Most REQs tracked at once (see {@linkcode RequestLogOptions.maxEntries}). */
  get maxEntries(): number {
    return this.#maxEntries;
  }

  /** Whether tracking was turned off by a head longer than `maxHead`, or too many REQs. */
  get disabled(): boolean {
    return this.#disabled;
  }

  /**
   * Takes the next chunk of the client's stream. While not renumbering, returns 0 (forward the
   * chunk itself); once renumbering, returns how many bytes of {@linkcode out} to send instead,
   * or -1 when a REQ head longer than `maxHead` cannot be renumbered.
   */
  feed(chunk: Uint8Array): number {
    this.outLength = 0;
    if (this.#disabled) return 0;
    const lines = this.#lines;
    const renumber = this.#renumber;
    const n = chunk.length;
    let state = this.#state;
    // The current line, in locals for speed; written back before returning.
    let lineStart = this.#lineStart;
    let seqStart = this.#seqStart;
    let seqEnd = this.#seqEnd;
    let seqValue = this.#seqValue;
    let retaining = this.#retaining;
    let mute = this.#mute;
    let i = 0;
    // chunk[seg, i) is kept but not yet appended: consecutive REQ lines form one run, copied
    // with one append per chunk. Meanwhile chunk[k] lies at position base + k, and the open
    // REQ outgrows retainLimit when its line reaches past chunk index `limitAt`.
    let seg = 0;
    let base = lines.end;
    let limitAt = this.#retainLimit - lines.length;
    while (i < n) {
      if (state === L_DATA || state === L_SKIP) {
        const nl = chunk.indexOf(NL, i);
        const end = nl < 0 ? n : nl + 1;
        if (renumber && !mute) appendOut(this, chunk, i, end);
        if (state === L_DATA && retaining) {
          if (end > limitAt) {
            lines.append(chunk, seg, i);
            this.#dropData();
            retaining = false;
            seg = end;
            base = lines.end - seg;
            limitAt = this.#retainLimit - lines.length + seg;
          }
        } else {
          seg = end;
          base = lines.end - seg;
          limitAt = this.#retainLimit - lines.length + seg;
        }
        i = end;
        if (nl >= 0) {
          if (state === L_DATA) {
            // The open REQ is complete.
            const s = ((this.#first + this.#count - 1) & this.#mask) * STRIDE;
            const ring = this.#ring;
            if (retaining) ring[s + E_END] = base + end;
            const flags = ring[s + E_FLAGS] | F_COMPLETE;
            ring[s + E_FLAGS] = flags;
            this.#open = false;
            retaining = false;
            if (flags & F_ANSWERED && this.#count === 1) this.#trim();
          }
          state = L_START;
          mute = false;
        }
        continue;
      }
      const c = chunk[i];
      switch (state) {
        case L_START:
          lineStart = base + i;
          if (c === 82) { // R
            state = L_R;
            i++;
            continue;
          }
          break;
        case L_R:
          if (c === 69) { // E
            state = L_RE;
            i++;
            continue;
          }
          break;
        case L_RE:
          if (c === 81) { // Q
            state = L_REQ;
            i++;
            continue;
          }
          break;
        case L_REQ:
          if (c === SP || c === TAB) {
            state = L_WS;
            i++;
            continue;
          }
          break;
        case L_WS:
          if (c >= 48 && c <= 57) {
            seqStart = base + i;
            seqValue = c - 48;
            state = L_SEQ;
            i++;
            continue;
          }
          if (c === SP || c === TAB) {
            i++;
            continue;
          }
          break;
        case L_SEQ: {
          let d = c;
          while (d >= 48 && d <= 57) {
            if (seqValue >= 0) {
              seqValue = seqValue * 10 + (d - 48);
              if (seqValue > Number.MAX_SAFE_INTEGER) seqValue = -1;
            }
            if (++i === n) break;
            d = chunk[i];
          }
          if (i === n) continue;
          if (d === NL || d === SP || d === TAB) {
            seqEnd = base + i;
            i++;
            if (base + i - lineStart > this.#maxHead) return this.#tooLong();
            if (renumber) {
              lines.append(chunk, seg, i); // the renumbered head is written from #lines
              seg = i;
              base = lines.end - seg;
              limitAt = this.#retainLimit - lines.length + seg;
            }
            const open = d !== NL;
            if (this.#count >= this.#maxEntries) return this.#tooLong();
            this.#push(lineStart, seqStart, seqEnd, base + i, seqValue, open);
            state = open ? L_DATA : L_START;
            retaining = open;
            continue;
          }
          if (d === CR) {
            seqEnd = base + i;
            state = L_CR;
            i++;
            continue;
          }
          break;
        }
        case L_CR:
          if (c === NL) {
            i++;
            if (base + i - lineStart > this.#maxHead) return this.#tooLong();
            if (renumber) {
              lines.append(chunk, seg, i);
              seg = i;
              base = lines.end - seg;
              limitAt = this.#retainLimit - lines.length + seg;
            }
            if (this.#count >= this.#maxEntries) return this.#tooLong();
            this.#push(lineStart, seqStart, seqEnd, base + i, seqValue, false);
            state = L_START;
            continue;
          }
          break;
      }
      // Not a REQ: keep the run up to this line, not the line.
      if (renumber) {
        // Its tentative head goes out as it came, then the rest of the line.
        lines.append(chunk, seg, i + 1);
        reserveOut(this, lines.end - lineStart);
        this.outLength = lines.copyTo(lineStart, lines.end, this.out, this.outLength);
        lines.truncate(lineStart);
      } else if (lineStart >= lines.end) {
        lines.append(chunk, seg, seg + lineStart - lines.end);
      } else {
        lines.truncate(lineStart); // the line began in an earlier chunk
      }
      state = chunk[i] === NL ? L_START : L_SKIP;
      i = seg = i + 1;
      base = lines.end - seg;
      limitAt = this.#retainLimit - lines.length + seg;
    }
    lines.append(chunk, seg, n);
    this.#state = state;
    this.#lineStart = lineStart;
    this.#seqStart = seqStart;
    this.#seqEnd = seqEnd;
    this.#seqValue = seqValue;
    this.#retaining = retaining;
    this.#mute = mute;
    // A head still undecided at the end of a chunk must not grow without bound either.
    if (state >= L_R && state <= L_CR && lines.end - lineStart > this.#maxHead) {
      return this.#tooLong();
    }
    if (this.#count === 0 && state !== L_DATA) this.#discard();
    return this.outLength;
  }

  /** The client's stream ended: a partial last line will never be answered, so it is dropped. */
  end(): void {
    if (this.#disabled) return;
    if (this.#state === L_DATA) {
      const h = this.#first + this.#count - 1;
      const flags = this.#flags(h);
      if (!(flags & F_ANSWERED)) {
        this.#unanswered--;
        if (flags & F_HEAD_ONLY) this.#headOnlyUnanswered--;
      }
      this.#lines.truncate(this.#ring[(h & this.#mask) * STRIDE + E_LINE]);
      this.#count--;
      this.#open = false;
      this.#retaining = false;
    } else if (this.#state !== L_SKIP && this.#state !== L_START) {
      this.#lines.truncate(this.#lineStart);
    }
    this.#state = L_START;
    this.#mute = false;
    this.#discard();
  }

  /**
   * Matches a reply carrying the client's Seq (before any failover): marks the first
   * unanswered REQ with that Seq answered. Returns whether one was found.
   */
  answerSeq(seq: number): boolean {
    const ring = this.#ring;
    // Replies in order: the oldest entry, answered and dropped at once.
    if (this.#count > 0) {
      const s = (this.#first & this.#mask) * STRIDE;
      const flags = ring[s + E_FLAGS];
      if (flags === F_COMPLETE && ring[s + E_VALUE] === seq) {
        ring[s + E_FLAGS] = F_COMPLETE | F_ANSWERED;
        this.#unanswered--;
        this.#first++;
        this.#count--;
        if (this.#count === 0 || this.#flags(this.#first) & F_ANSWERED) this.#trim();
        else this.#lines.discardBefore(ring[(this.#first & this.#mask) * STRIDE + E_LINE]);
        return true;
      }
    }
    for (let k = 0; k < this.#count; k++) {
      const h = this.#first + k;
      const s = (h & this.#mask) * STRIDE;
      if (!(ring[s + E_FLAGS] & F_ANSWERED) && ring[s + E_VALUE] === seq) {
        // Servers answer in order: an earlier REQ whose Seq is above 2^53 got an answer that
        // no Seq can show (a server that cannot parse it says `NAK 0`), so it is no longer owed
        // and must not pin the log's head.
        for (let e = this.#first; e < h; e++) {
          const f = this.#flags(e);
          if (
            !(f & F_ANSWERED) && f & F_COMPLETE && ring[(e & this.#mask) * STRIDE + E_VALUE] < 0
          ) {
            this.answerEntry(e);
          }
        }
        this.answerEntry(h);
        return true;
      }
    }
    return false;
  }

  /**
   * Switches to renumbering (or restarts it for another new upstream connection) and returns
   * the unanswered REQs with Seqs from 1; `null` when some unanswered REQ was not kept whole
   * (the connection cannot be resumed).
   */
  replay(): Replay | null {
    if (!this.replayable) return null;
    this.#renumber = true;
    this.#nextProxy = 0;
    this.outLength = 0;
    // The start of a line that is not a REQ went to the dead upstream: drop its rest.
    this.#mute = this.#state === L_SKIP;
    const ring = this.#ring;
    let requests = 0;
    for (let k = 0; k < this.#count; k++) {
      const h = this.#first + k;
      const s = (h & this.#mask) * STRIDE;
      const last = k === this.#count - 1;
      if (ring[s + E_FLAGS] & F_ANSWERED) {
        ring[s + E_PROXY] = 0;
        if (last && this.#open) this.#mute = true;
        continue;
      }
      this.#emitRenumbered(h, last && this.#open ? this.#lines.end : ring[s + E_END]);
      requests++;
    }
    const bytes = this.out.slice(0, this.outLength);
    this.outLength = 0;
    return { bytes, requests };
  }

  /**
   * The unanswered REQs exactly as the client sent them (same Seqs, same bytes), to write first
   * on a new upstream connection, followed by the client's stream unchanged: the server then
   * answers exactly the requests the client made. A REQ line still arriving is included as far
   * as it came, and so is an undecided line head (the rest of both follows in the stream).
   * `muteRest` says that the line in progress is not to be sent on (a line that is not a REQ, or
   * one already answered, whose start went to the dead upstream): drop the stream's bytes up to
   * and including its next newline. The log keeps matching replies by the client's Seqs
   * ({@linkcode answerSeq}). `null` when some unanswered REQ was not kept whole.
   */
  replayVerbatim(): (Replay & { muteRest: boolean }) | null {
    if (!this.replayable || this.#renumber) return null;
    const ring = this.#ring;
    const lines = this.#lines;
    let muteRest = this.#state === L_SKIP;
    let length = 0;
    let requests = 0;
    const last = this.#first + this.#count - 1;
    for (let h = this.#first; h <= last; h++) {
      const s = (h & this.#mask) * STRIDE;
      const open = h === last && this.#open;
      if (ring[s + E_FLAGS] & F_ANSWERED) {
        if (open) muteRest = true;
        continue;
      }
      length += (open ? lines.end : ring[s + E_END]) - ring[s + E_LINE];
      requests++;
    }
    const undecided = this.#state >= L_R && this.#state <= L_CR;
    if (undecided) length += lines.end - this.#lineStart;
    const bytes = new Uint8Array(length);
    let o = 0;
    for (let h = this.#first; h <= last; h++) {
      const s = (h & this.#mask) * STRIDE;
      if (ring[s + E_FLAGS] & F_ANSWERED) continue;
      const open = h === last && this.#open;
      o = lines.copyTo(ring[s + E_LINE], open ? lines.end : ring[s + E_END], bytes, o);
    }
    if (undecided) o = lines.copyTo(this.#lineStart, lines.end, bytes, o);
    return { bytes: o === length ? bytes : bytes.subarray(0, o), requests, muteRest };
  }

  /** The unanswered REQ sent with `proxySeq` on the current upstream connection, or -1. */
  findProxySeq(proxySeq: number): number {
    const ring = this.#ring;
    for (let k = 0; k < this.#count; k++) {
      const h = this.#first + k;
      const s = (h & this.#mask) * STRIDE;
      if (ring[s + E_PROXY] === proxySeq && !(ring[s + E_FLAGS] & F_ANSWERED)) return h;
    }
    return -1;
  }

  /** Length of the client's Seq digits of entry `entry`. */
  clientSeqLength(entry: number): number {
    const s = (entry & this.#mask) * STRIDE;
    return this.#ring[s + E_SEQ_END] - this.#ring[s + E_SEQ];
  }

  /** Copies the client's Seq digits of `entry` to `dst[at]`; returns the index after them. */
  copyClientSeq(entry: number, dst: Uint8Array, at: number): number {
    const s = (entry & this.#mask) * STRIDE;
    return this.#lines.copyTo(this.#ring[s + E_SEQ], this.#ring[s + E_SEQ_END], dst, at);
  }

  /** Marks `entry` answered and drops the answered entries at the head. */
  answerEntry(entry: number): void {
    const s = (entry & this.#mask) * STRIDE;
    const flags = this.#ring[s + E_FLAGS];
    if (flags & F_ANSWERED) return;
    this.#ring[s + E_FLAGS] = flags | F_ANSWERED;
    this.#unanswered--;
    if (flags & F_HEAD_ONLY) this.#headOnlyUnanswered--;
    if (entry === this.#first) this.#trim();
  }

  // Adds the entry of a valid REQ head that ends just before position `end`.
  #push(
    line: number,
    seq: number,
    seqEnd: number,
    end: number,
    value: number,
    open: boolean,
  ): void {
    if (this.#count > this.#mask) this.#grow();
    const h = this.#first + this.#count++;
    const s = (h & this.#mask) * STRIDE;
    const ring = this.#ring;
    ring[s + E_LINE] = line;
    ring[s + E_SEQ] = seq;
    ring[s + E_SEQ_END] = seqEnd;
    ring[s + E_END] = end;
    ring[s + E_VALUE] = value;
    ring[s + E_PROXY] = 0;
    ring[s + E_FLAGS] = open ? 0 : F_COMPLETE;
    this.#unanswered++;
    this.#open = open;
    if (this.#renumber) this.#emitRenumbered(h, end);
  }

  // The open entry's line outgrew retainLimit: keep only its head.
  #dropData(): void {
    const h = this.#first + this.#count - 1;
    const s = (h & this.#mask) * STRIDE;
    const headEnd = this.#ring[s + E_SEQ_END] + 1;
    this.#lines.truncate(headEnd);
    this.#ring[s + E_END] = headEnd;
    const flags = this.#ring[s + E_FLAGS];
    this.#ring[s + E_FLAGS] = flags | F_HEAD_ONLY;
    if (!(flags & F_ANSWERED)) this.#headOnlyUnanswered++;
    this.#retaining = false;
  }

  #tooLong(): number {
    if (this.#renumber) return -1;
    // Hostile input: stop tracking rather than hold an unbounded head.
    this.#disabled = true;
    this.#count = 0;
    this.#unanswered = 0;
    this.#headOnlyUnanswered = 0;
    this.#open = false;
    this.#lines.clear();
    return 0;
  }

  #trim(): void {
    const ring = this.#ring;
    while (this.#count > 0) {
      const s = (this.#first & this.#mask) * STRIDE;
      const flags = ring[s + E_FLAGS];
      if (!(flags & F_ANSWERED) || !(flags & F_COMPLETE)) break;
      this.#first++;
      this.#count--;
    }
    this.#discard();
  }

  // Frees the bytes before the oldest entry (or the current tentative head).
  #discard(): void {
    if (this.#count > 0) {
      this.#lines.discardBefore(this.#ring[(this.#first & this.#mask) * STRIDE + E_LINE]);
    } else if (this.#state >= L_R && this.#state <= L_CR) {
      this.#lines.discardBefore(this.#lineStart);
    } else {
      this.#lines.clear();
    }
  }

  #flags(h: number): number {
    return this.#ring[(h & this.#mask) * STRIDE + E_FLAGS];
  }

  #grow(): void {
    const old = this.#ring;
    const oldMask = this.#mask;
    const mask = oldMask * 2 + 1;
    const ring = new Float64Array((mask + 1) * STRIDE);
    for (let k = 0; k < this.#count; k++) {
      const h = this.#first + k;
      const from = (h & oldMask) * STRIDE;
      ring.set(old.subarray(from, from + STRIDE), (h & mask) * STRIDE);
    }
    this.#ring = ring;
    this.#mask = mask;
  }

  // "REQ <next proxy Seq>" then the entry's bytes after its Seq up to `to`.
  #emitRenumbered(h: number, to: number): void {
    const s = (h & this.#mask) * STRIDE;
    const proxy = ++this.#nextProxy;
    this.#ring[s + E_PROXY] = proxy;
    const from = this.#ring[s + E_SEQ_END];
    reserveOut(this, 4 + decimalLength(proxy) + to - from);
    const out = this.out;
    let o = this.outLength;
    for (let k = 0; k < 4; k++) out[o++] = REQ_SP[k];
    o = writeDecimal(proxy, out, o);
    this.outLength = this.#lines.copyTo(from, to, out, o);
  }
}
