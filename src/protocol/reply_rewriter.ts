/**
 * The reply side of `--resume` after a failover: the new upstream connection answers with the
 * proxy's Seqs, and {@linkcode ReplyRewriter} puts each reply's Seq back into the client's
 * numbering (through a {@linkcode SeqMap}, the {@linkcode RequestLog}) as the bytes stream by.
 *
 * The grammar of a valid reply is exactly the analyzer's (upstream direction). Only the head of
 * a line (type, whitespace, Seq) is held until it is known; data bytes stream through. Lines that
 * are not valid replies pass unchanged, and so does `NAK 0` (a server's answer to a line it could
 * not decode; no renumbered REQ has Seq 0); other valid replies whose Seq the map does not know
 * are dropped and counted ({@linkcode ReplyRewriter.dropped}).
 *
 * @module
 */
import { appendOut, reserveOut } from "./out_buffer.ts";

/** Maps proxy Seqs on the current upstream connection back to the client's REQs. */
export interface SeqMap {
  /** The unanswered REQ sent with `proxySeq` (an opaque entry handle), or -1. */
  findProxySeq(proxySeq: number): number;
  /** Length in bytes of the client's Seq of `entry`. */
  clientSeqLength(entry: number): number;
  /** Copies the client's Seq digits of `entry` to `dst[at]`; returns the index after them. */
  copyClientSeq(entry: number, dst: Uint8Array, at: number): number;
  /** Marks `entry` answered (its reply has been rewritten). */
  answerEntry(entry: number): void;
}

/** Options for {@linkcode ReplyRewriter}. */
export interface ReplyRewriterOptions {
  /**
   * Longest head (type, whitespace, Seq) held back; a longer one is passed on unchanged (it
   * cannot carry one of the proxy's Seqs). @default {4096}
   */
  maxHead?: number;
}

const NL = 10;
const CR = 13;
const SP = 32;
const TAB = 9;

const R_START = 0;
const R_T1 = 1;
const R_T2 = 2;
const R_T3 = 3; // three type bytes seen: whitespace must follow
const R_WS = 4;
const R_SEQ = 5;
const R_CR = 6;
const R_PASS = 7; // copy to the newline
const R_DROP = 8; // a reply for no REQ of ours: skip to the newline

const TYPE_ACK = 0x41434b; // "ACK"
const TYPE_NAK = 0x4e414b; // "NAK"

/** Rewrites the Seqs of one upstream connection's replies; see the module docs. */
export class ReplyRewriter {
  /** Output of the last {@linkcode feed}: `out[0, outLength)`. */
  out: Uint8Array = new Uint8Array(256);
  /** Bytes of {@linkcode out} written by the last {@linkcode feed}. */
  outLength = 0;
  /**
   * Valid replies dropped because their Seq matches no unanswered REQ sent on this upstream
   * connection (a duplicate, or one nobody asked for): relayed, they would reach the client with
   * a Seq it never sent or as the answer to another request. A wrong reply is worse than none.
   */
  dropped = 0;
  #map: SeqMap;
  #maxHead: number;
  #head = new Uint8Array(64);
  #headLength = 0;
  #type = 0;
  #seqStart = 0;
  #seqEnd = 0;
  #seqValue = 0;
  #state = R_START;

  /** Creates a rewriter looking Seqs up in `map`. */
  constructor(map: SeqMap, options: ReplyRewriterOptions = {}) {
    this.#map = map;
    this.#maxHead = options.maxHead ?? 4096;
  }

  /** Whether the last chunk ended inside a line. */
  get midLine(): boolean {
    return this.#state !== R_START;
  }

  /** Starts over at a line boundary (a new upstream connection); a held head is dropped. */
  reset(): void {
    this.#state = R_START;
    this.#headLength = 0;
  }

  /** Rewrites `chunk` into {@linkcode out}; returns {@linkcode outLength}. */
  feed(chunk: Uint8Array): number {
    this.outLength = 0;
    reserveOut(this, chunk.length);
    const n = chunk.length;
    let state = this.#state;
    let i = 0;
    while (i < n) {
      if (state === R_PASS || state === R_DROP) {
        const nl = chunk.indexOf(NL, i);
        const end = nl < 0 ? n : nl + 1;
        if (state === R_PASS) appendOut(this, chunk, i, end);
        i = end;
        if (nl >= 0) state = R_START;
        continue;
      }
      const c = chunk[i++];
      if (this.#headLength >= this.#maxHead) {
        this.#flushHead();
        this.#emitByte(c);
        state = c === NL ? R_START : R_PASS;
        continue;
      }
      if (this.#headLength === this.#head.length) {
        const bigger = new Uint8Array(Math.min(this.#maxHead, this.#head.length * 4));
        bigger.set(this.#head);
        this.#head = bigger;
      }
      this.#head[this.#headLength++] = c;
      switch (state) {
        case R_START:
          this.#type = c;
          state = c === NL ? this.#reject(c) : R_T1;
          break;
        case R_T1:
        case R_T2:
          this.#type = (this.#type << 8) | c;
          state = c === NL ? this.#reject(c) : state + 1;
          break;
        case R_T3:
          state = (this.#type === TYPE_ACK || this.#type === TYPE_NAK) && (c === SP || c === TAB)
            ? R_WS
            : this.#reject(c);
          break;
        case R_WS:
          if (c >= 48 && c <= 57) {
            this.#seqStart = this.#headLength - 1;
            this.#seqValue = c - 48;
            state = R_SEQ;
          } else if (c !== SP && c !== TAB) {
            state = this.#reject(c);
          }
          break;
        case R_SEQ:
          if (c >= 48 && c <= 57) {
            const seq = this.#seqValue;
            if (seq >= 0) {
              const next = seq * 10 + (c - 48);
              this.#seqValue = next > Number.MAX_SAFE_INTEGER ? -1 : next;
            }
          } else if (c === NL || c === SP || c === TAB) {
            this.#seqEnd = this.#headLength - 1;
            const known = this.#accept();
            state = c === NL ? R_START : known ? R_PASS : R_DROP;
          } else if (c === CR) {
            this.#seqEnd = this.#headLength - 1;
            state = R_CR;
          } else {
            state = this.#reject(c);
          }
          break;
        case R_CR:
          if (c === NL) {
            this.#accept();
            state = R_START;
          } else {
            state = this.#reject(c);
          }
          break;
      }
    }
    this.#state = state;
    return this.outLength;
  }

  // A valid reply head is complete: write it with the client's Seq when the map knows it, else
  // drop it (and, the caller sees to it, the rest of its line). Returns whether it was known.
  #accept(): boolean {
    const seq = this.#seqValue;
    if (seq === 0 && this.#type === TYPE_NAK) {
      // No renumbered REQ has Seq 0 (they start at 1): `NAK 0` is the server's answer to a line
      // it could not decode, the client's own invalid line, and goes out as the server said it.
      this.#flushHead();
      return true;
    }
    const entry = seq >= 0 ? this.#map.findProxySeq(seq) : -1;
    if (entry < 0) {
      this.#headLength = 0;
      this.dropped++;
      return false;
    }
    const head = this.#head;
    const length = this.#headLength;
    reserveOut(this, this.#seqStart + this.#map.clientSeqLength(entry) + length - this.#seqEnd);
    const out = this.out;
    let o = this.outLength;
    for (let k = 0; k < this.#seqStart; k++) out[o++] = head[k];
    o = this.#map.copyClientSeq(entry, out, o);
    for (let k = this.#seqEnd; k < length; k++) out[o++] = head[k];
    this.outLength = o;
    this.#headLength = 0;
    this.#map.answerEntry(entry);
    return true;
  }

  // Not a valid reply: what was held goes out unchanged, then the rest of the line.
  #reject(c: number): number {
    this.#flushHead();
    return c === NL ? R_START : R_PASS;
  }

  #flushHead(): void {
    reserveOut(this, this.#headLength);
    this.out.set(this.#head.subarray(0, this.#headLength), this.outLength);
    this.outLength += this.#headLength;
    this.#headLength = 0;
  }

  #emitByte(c: number): void {
    reserveOut(this, 1);
    this.out[this.outLength++] = c;
  }
}
