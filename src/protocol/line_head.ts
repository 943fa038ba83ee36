/**
 * Classifies one whole line from its head, by the same grammar as the streaming
 * {@linkcode Analyzer}: the multiplexer routes by line, so it needs each line's type and Seq
 * where it stands, without a state machine. Nothing is allocated: the result goes into a
 * {@linkcode LineHead} the caller reuses.
 *
 * @module
 */
import { messageType, MSG_REQ } from "./analyzer.ts";

/** Why a line is invalid (the analyzer's counters: `invalid_type`, `invalid_seq`, …). */
export const INVALID_TYPE = -1;
/** Missing or non-numeric Seq. */
export const INVALID_SEQ = -2;
/** A well-formed line going the wrong way. */
export const INVALID_DIRECTION = -3;

/** What {@linkcode readLineHead} found. */
export interface LineHead {
  /** `MSG_REQ`, `MSG_ACK` or `MSG_NAK`; or `INVALID_TYPE`, `INVALID_SEQ`, `INVALID_DIRECTION`. */
  type: number;
  /** The Seq of a valid line; -1 when it is above 2^53 (not exact). */
  seq: number;
  /** How many digits the Seq of a valid line has (leading zeros included). */
  digits: number;
}

const CR = 13;
const SP = 32;
const TAB = 9;

/**
 * Classifies `buf[start, end)`, one line without its `\n`, as sent by a client (`fromClient`) or
 * a server, into `out`. Returns whether it is a valid message.
 */
export function readLineHead(
  buf: Uint8Array,
  start: number,
  end: number,
  fromClient: boolean,
  out: LineHead,
): boolean {
  if (end - start < 4) {
    // Too short for a type and a separator: "REQ" alone lacks its Seq, anything else its type.
    out.type = end - start === 3 && knownType(buf, start) !== 0
      ? wrongWay(knownType(buf, start), fromClient) ? INVALID_DIRECTION : INVALID_SEQ
      : INVALID_TYPE;
    // "REQ\r" is a missing Seq too (CR before the newline).
    return false;
  }
  const type = knownType(buf, start);
  if (type === 0) return invalid(out, INVALID_TYPE);
  if (wrongWay(type, fromClient)) return invalid(out, INVALID_DIRECTION);
  const sep = buf[start + 3];
  if (sep !== SP && sep !== TAB) return invalid(out, sep === CR ? INVALID_SEQ : INVALID_TYPE);
  let i = start + 4;
  while (i < end && (buf[i] === SP || buf[i] === TAB)) i++;
  if (i === end) return invalid(out, INVALID_SEQ);
  let d = buf[i] - 48;
  if (d < 0 || d > 9) return invalid(out, INVALID_SEQ);
  let seq = 0;
  const first = i;
  while (i < end && (d = buf[i] - 48) >= 0 && d <= 9) {
    if (seq >= 0) {
      const next = seq * 10 + d;
      seq = next > Number.MAX_SAFE_INTEGER ? -1 : next;
    }
    i++;
  }
  if (i < end) {
    const c = buf[i];
    if (c === CR) {
      if (i + 1 !== end) return invalid(out, INVALID_SEQ);
    } else if (c !== SP && c !== TAB) {
      return invalid(out, INVALID_SEQ);
    }
  }
  out.type = type;
  out.seq = seq;
  out.digits = i - first;
  return true;
}

function knownType(buf: Uint8Array, at: number): number {
  return messageType((buf[at] << 16) | (buf[at + 1] << 8) | buf[at + 2]);
}

function wrongWay(type: number, fromClient: boolean): boolean {
  return (type === MSG_REQ) !== fromClient;
}

function invalid(out: LineHead, kind: number): false {
  out.type = kind;
  return false;
}

/**
 * Whether `buf[start, end)` (one line without its `\n`) holds a byte a line-splitting server might
 * end a line at, so that it would read two lines and answer twice: a control character other than
 * TAB (a CR is allowed only last, before the newline), or the UTF-8 forms of U+0085 NEL, U+2028
 * and U+2029 (Python's `splitlines`, for one, splits on all of these).
 */
export function hasInnerBreak(buf: Uint8Array, start: number, end: number): boolean {
  const last = buf[end - 1] === CR ? end - 1 : end;
  for (let i = start; i < last; i++) {
    const c = buf[i];
    if (c < 0x20) {
      if (c !== TAB) return true;
    } else if (c === 0xc2) {
      if (buf[i + 1] === 0x85 && i + 1 < last) return true;
    } else if (c === 0xe2) {
      if (i + 2 < last && buf[i + 1] === 0x80 && (buf[i + 2] === 0xa8 || buf[i + 2] === 0xa9)) {
        return true;
      }
    }
  }
  return false;
}
