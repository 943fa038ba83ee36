/**
 * The streaming Foo classifier a pump feeds every chunk it forwards.
 *
 * It is a byte-level state machine over the head of each line (type and seq) that skips the rest
 * of the line with `indexOf(10)`. State is O(1) per direction whatever the line length, nothing is
 * allocated per message, and bytes are never decoded to strings, so counts do not depend on how
 * the stream is chunked.
 *
 * @module
 */

/** Which way the bytes flow: `downstream` is client → server (REQs), `upstream` is server → client (ACK/NAK). */
export type Direction = "downstream" | "upstream";

/** Message type codes passed to {@linkcode AnalyzerOptions.onMessage}. */
export const MSG_REQ = 1;
/** ACK type code. */
export const MSG_ACK = 2;
/** NAK type code. */
export const MSG_NAK = 3;

/** Why a line was invalid. */
export type InvalidKind = "type" | "seq" | "direction" | "truncated";

/**
 * Message counters an analyzer adds to. One object may be shared by many analyzers (all the
 * connections of a proxy); the field names are the stats' own.
 */
export interface MessageCounts {
  /** Valid REQ lines. */
  msg_req: number;
  /** Valid ACK lines. */
  msg_ack: number;
  /** Valid NAK lines. */
  msg_nak: number;
  /** Lines whose type is not REQ, ACK or NAK (includes empty lines). */
  invalid_type: number;
  /** Lines with a missing or non-numeric Seq. */
  invalid_seq: number;
  /** Well-formed lines going the wrong way (a REQ from the server, an ACK/NAK from the client). */
  invalid_direction: number;
  /** A partial line left when the stream ended. */
  invalid_truncated: number;
}

/** Returns a zeroed {@linkcode MessageCounts}. */
export function createMessageCounts(): MessageCounts {
  return {
    msg_req: 0,
    msg_ack: 0,
    msg_nak: 0,
    invalid_type: 0,
    invalid_seq: 0,
    invalid_direction: 0,
    invalid_truncated: 0,
  };
}

/** Sum of the invalid counters. */
export function invalidTotal(counts: MessageCounts): number {
  return counts.invalid_type + counts.invalid_seq + counts.invalid_direction +
    counts.invalid_truncated;
}

/** Options for {@linkcode Analyzer}. */
export interface AnalyzerOptions {
  /**
   * Called once per valid message with its type code and Seq (`-1` when the Seq is larger than
   * 2^53 and cannot be represented exactly). Unset: not called.
   */
  onMessage?: (type: number, seq: number) => void;
}

// States of the line-head machine.
const S_TYPE0 = 0; // at the start of a line
const S_TYPE1 = 1;
const S_TYPE2 = 2;
const S_AFTER_TYPE = 3; // three type bytes seen, whitespace must follow
const S_WS = 4; // whitespace before the seq
const S_SEQ = 5; // in the seq digits
const S_SEQ_CR = 6; // a '\r' after the seq: only '\n' may follow
const S_DATA = 7; // a valid head: skip to the newline
const S_INVALID = 8; // an invalid line: skip to the newline

const NL = 10;
const CR = 13;
const SP = 32;
const TAB = 9;
const TYPE_REQ = 0x524551; // "REQ"
const TYPE_ACK = 0x41434b; // "ACK"
const TYPE_NAK = 0x4e414b; // "NAK"

/**
 * The message type code (`MSG_REQ`, `MSG_ACK`, `MSG_NAK`) of a line whose first three bytes are
 * `head` (big-endian, `b0 << 16 | b1 << 8 | b2`); 0 for any other type.
 */
export function messageType(head: number): number {
  return head === TYPE_REQ
    ? MSG_REQ
    : head === TYPE_ACK
    ? MSG_ACK
    : head === TYPE_NAK
    ? MSG_NAK
    : 0;
}

const K_TYPE = 0;
const K_SEQ = 1;
const K_DIRECTION = 2;

/**
 * Classifies one direction of one connection. Feed it every chunk in order, then call
 * {@linkcode Analyzer.end} when the stream ends.
 */
export class Analyzer {
  /**
   * Complete lines of this stream that were not valid messages (the shared counters say which
   * kind): a line a server may still answer, so the engine weighs them when an exchange ends.
   */
  invalidLines = 0;
  #counts: MessageCounts;
  #fromClient: boolean;
  #onMessage: ((type: number, seq: number) => void) | undefined;
  #state = S_TYPE0;
  #head = 0; // accumulated type bytes
  #type = 0; // type code of the current line once known
  #seq = 0; // seq value (-1 once too large)
  #invalidKind = K_TYPE;

  /** Creates an analyzer for bytes flowing in `direction`, adding to `counts`. */
  constructor(direction: Direction, counts: MessageCounts, options: AnalyzerOptions = {}) {
    this.#fromClient = direction === "downstream";
    this.#counts = counts;
    this.#onMessage = options.onMessage;
  }

  /** Whether the analyzer is in the middle of a line. */
  get midLine(): boolean {
    return this.#state !== S_TYPE0;
  }

  /**
   * Classifies the bytes of `chunk` (continuing any line left open by the previous chunk) and
   * returns how many valid messages it completed.
   */
  feed(chunk: Uint8Array): number {
    const n = chunk.length;
    let i = 0;
    let valid = 0;
    let state = this.#state;
    const fromClient = this.#fromClient;
    while (i < n) {
      // Fast path for the common line, `TYPE SP digits` then `\n` or whitespace and data, with
      // its head inside this chunk: classified with locals, no per-byte state switch. Anything
      // else (a head split across chunks, CR, extra blanks, long Seqs, invalid lines) falls to
      // the state machine below from the same line start, so results never differ.
      if (state === S_TYPE0 && i + 5 < n) {
        const head = (chunk[i] << 16) | (chunk[i + 1] << 8) | chunk[i + 2];
        const type = messageType(head);
        const sep = chunk[i + 3];
        let d = chunk[i + 4] - 48;
        if (
          type !== 0 && (type === MSG_REQ) === fromClient && (sep === SP || sep === TAB) &&
          d >= 0 && d <= 9
        ) {
          let j = i + 5;
          let seq = d;
          const limit = Math.min(n, j + 14); // at most 15 digits: always exact
          while (j < limit && (d = chunk[j] - 48) >= 0 && d <= 9) {
            seq = seq * 10 + d;
            j++;
          }
          if (j < limit) {
            const c = chunk[j];
            if (c === NL) {
              this.#emit(type, seq);
              valid++;
              i = j + 1;
              continue;
            }
            if (c === SP || c === TAB) {
              // Short data is scanned inline; indexOf's call costs more than a few dozen bytes.
              let nl = -1;
              const near = Math.min(n, j + 64);
              for (let k = j + 1; k < near; k++) {
                if (chunk[k] === NL) {
                  nl = k;
                  break;
                }
              }
              if (nl < 0 && near < n) nl = chunk.indexOf(NL, near);
              if (nl < 0) {
                this.#type = type;
                this.#seq = seq;
                state = S_DATA;
                break;
              }
              this.#emit(type, seq);
              valid++;
              i = nl + 1;
              continue;
            }
          }
        }
      }
      if (state >= S_DATA) {
        const nl = chunk.indexOf(NL, i);
        if (nl < 0) break;
        i = nl + 1;
        if (state === S_DATA) {
          this.#accept();
          valid++;
        } else {
          this.#reject();
        }
        state = S_TYPE0;
        continue;
      }
      const c = chunk[i++];
      switch (state) {
        case S_TYPE0:
          if (c === NL) {
            this.#counts.invalid_type++;
            this.invalidLines++;
            break;
          }
          this.#head = c;
          state = S_TYPE1;
          break;
        case S_TYPE1:
        case S_TYPE2:
          if (c === NL) {
            this.#counts.invalid_type++;
            this.invalidLines++;
            state = S_TYPE0;
            break;
          }
          this.#head = (this.#head << 8) | c;
          state++;
          break;
        case S_AFTER_TYPE: {
          const head = this.#head;
          const type = messageType(head);
          if (type === 0) {
            state = this.#invalid(K_TYPE, c);
          } else if ((type === MSG_REQ) !== this.#fromClient) {
            state = this.#invalid(K_DIRECTION, c);
          } else if (c === SP || c === TAB) {
            this.#type = type;
            this.#seq = 0;
            state = S_WS;
          } else {
            // "REQ\n" lacks its seq; "REQX 1" is not a type we know.
            state = this.#invalid(c === NL || c === CR ? K_SEQ : K_TYPE, c);
          }
          break;
        }
        case S_WS:
          if (c >= 48 && c <= 57) {
            this.#seq = c - 48;
            state = S_SEQ;
          } else if (c !== SP && c !== TAB) {
            state = this.#invalid(K_SEQ, c);
          }
          break;
        case S_SEQ:
          if (c >= 48 && c <= 57) {
            const seq = this.#seq;
            if (seq >= 0) {
              const next = seq * 10 + (c - 48);
              this.#seq = next > Number.MAX_SAFE_INTEGER ? -1 : next;
            }
          } else if (c === NL) {
            this.#accept();
            valid++;
            state = S_TYPE0;
          } else if (c === SP || c === TAB) {
            state = S_DATA;
          } else if (c === CR) {
            state = S_SEQ_CR;
          } else {
            state = this.#invalid(K_SEQ, c);
          }
          break;
        case S_SEQ_CR:
          if (c === NL) {
            this.#accept();
            valid++;
            state = S_TYPE0;
          } else {
            state = this.#invalid(K_SEQ, c);
          }
          break;
      }
    }
    this.#state = state;
    return valid;
  }

  /** Ends the stream: a partial line left over counts as `invalid_truncated`. */
  end(): void {
    if (this.#state !== S_TYPE0) this.#counts.invalid_truncated++;
    this.#state = S_TYPE0;
  }

  // Enters the invalid state, or finishes the line at once when `c` is its newline.
  #invalid(kind: number, c: number): number {
    this.#invalidKind = kind;
    if (c === NL) {
      this.#reject();
      return S_TYPE0;
    }
    return S_INVALID;
  }

  #accept(): void {
    this.#emit(this.#type, this.#seq);
  }

  #emit(type: number, seq: number): void {
    if (type === MSG_REQ) this.#counts.msg_req++;
    else if (type === MSG_ACK) this.#counts.msg_ack++;
    else this.#counts.msg_nak++;
    if (this.#onMessage !== undefined) this.#onMessage(type, seq);
  }

  #reject(): void {
    this.invalidLines++;
    const kind = this.#invalidKind;
    if (kind === K_TYPE) this.#counts.invalid_type++;
    else if (kind === K_SEQ) this.#counts.invalid_seq++;
    else this.#counts.invalid_direction++;
  }
}
