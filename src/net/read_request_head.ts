/**
 * Reading an HTTP/1.1 request's head from a connection, bounded: the admin server and the
 * WebSocket listener read it the same way, with the same strict parser (`http_head.ts`).
 *
 * @module
 */
import { type HeadRefusal, isRefusal, parseRequestHead, type RequestHead } from "./http_head.ts";

/** Options for {@linkcode readRequestHead}. */
export interface ReadRequestHeadOptions {
  /** Largest request line plus headers, in bytes (past it: a 431 refusal). @default {16384} */
  maxBytes?: number;
  /** Called when the first byte arrives (a connection that sent nothing is no bad request). */
  onFirstByte?: () => void;
}

/** A request head read whole, and the bytes that came after it. */
export interface ReadHead {
  head: RequestHead;
  /** What the client sent after the blank line (a body's start, or a WebSocket's first frames). */
  rest: Uint8Array;
}

const CRLF_CRLF = [13, 10, 13, 10];

/**
 * Reads the request line and headers from `conn` and parses them: the head, the refusal to
 * answer (too large, a bare LF, anything `parseRequestHead` refuses), or null when the peer left
 * (or the connection was closed, by a deadline) first.
 */
export async function readRequestHead(
  conn: Deno.Conn,
  options: ReadRequestHeadOptions = {},
): Promise<ReadHead | HeadRefusal | null> {
  const maxHeader = options.maxBytes ?? 16384;
  let buf = new Uint8Array(Math.min(2048, maxHeader));
  let length = 0;
  let headEnd = -1;
  while (headEnd < 0) {
    if (length === buf.length) {
      if (buf.length >= maxHeader) return { status: 431, message: "request headers too large" };
      const bigger = new Uint8Array(Math.min(maxHeader, buf.length * 2));
      bigger.set(buf);
      buf = bigger;
    }
    let n: number | null;
    try {
      n = await conn.read(buf.subarray(length));
    } catch {
      return null; // reset, or closed by a deadline
    }
    if (n === null) return null;
    if (length === 0) options.onFirstByte?.();
    const from = Math.max(0, length - 3);
    const fresh = length;
    length += n;
    headEnd = indexOfSeq(buf, CRLF_CRLF, from, length);
    // A bare LF ends a line for some parsers and not for others: refused at once, not left to
    // wait for a CRLF CRLF that will not come (RFC 9112 §2.2 allows either).
    if (hasBareLf(buf, fresh, headEnd < 0 ? length : headEnd + 4)) {
      return { status: 400, message: "bare LF in the request head: lines end with CRLF" };
    }
  }
  // One character per octet (RFC 9110 §5.5: obs-text is octets): decoded as UTF-8, a value
  // past Latin-1 (an emoji, a lone 0xff) was no ByteString, Headers threw, and the request got
  // no answer and an error line.
  const parsed = parseRequestHead(octetsToString(buf.subarray(0, headEnd)));
  if (isRefusal(parsed)) return parsed;
  return { head: parsed, rest: buf.subarray(headEnd + 4, length) };
}

function indexOfSeq(buf: Uint8Array, seq: number[], from: number, to: number): number {
  for (
    let i = buf.indexOf(seq[0], from);
    i >= 0 && i + seq.length <= to;
    i = buf.indexOf(seq[0], i + 1)
  ) {
    let k = 1;
    while (k < seq.length && buf[i + k] === seq[k]) k++;
    if (k === seq.length) return i;
  }
  return -1;
}

/** `bytes` as a string of one character per octet (ISO-8859-1; not WHATWG `latin1`, which is windows-1252). */
function octetsToString(bytes: Uint8Array): string {
  let text = "";
  for (let at = 0; at < bytes.length; at += 8192) {
    text += String.fromCharCode(...bytes.subarray(at, at + 8192));
  }
  return text;
}

/** Whether `buf[from, to)` holds an LF not preceded by CR. */
function hasBareLf(buf: Uint8Array, from: number, to: number): boolean {
  for (let i = buf.indexOf(10, from); i >= 0 && i < to; i = buf.indexOf(10, i + 1)) {
    if (i === 0 || buf[i - 1] !== 13) return true;
  }
  return false;
}
