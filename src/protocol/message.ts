/**
 * Foo messages as strings, for the bundled tools (the proxy's hot path never decodes: see
 * `analyzer.ts`). The grammar is the analyzer's: `Type <ws> Seq [<ws> Data]`, `<ws>` being spaces
 * or tabs, with a trailing `"\r"` tolerated.
 *
 * @module
 */

/** The three message types. */
export type MessageType = "REQ" | "ACK" | "NAK";

/** One parsed message. */
export interface Message {
  /** `REQ` from a client, `ACK`/`NAK` from a server. */
  type: MessageType;
  /** The Seq (exact up to 2^53; longer digit strings lose precision, see `seqText`). */
  seq: number;
  /** The Seq digits exactly as sent (leading zeros included). */
  seqText: string;
  /** Text after the whitespace following the Seq; unset when the line has none. */
  data?: string;
}

const MESSAGE = /^(REQ|ACK|NAK)[ \t]+(\d+)(?:[ \t]([^\n]*))?$/;

/** Formats a message line, newline included: `formatMessage("REQ", 7, "hi")` → `"REQ 7 hi\n"`. */
export function formatMessage(type: MessageType, seq: number, data?: string): string {
  return data === undefined || data === "" ? `${type} ${seq}\n` : `${type} ${seq} ${data}\n`;
}

/**
 * Parses one line given without its `"\n"` (a trailing `"\r"` is dropped first); returns `null`
 * when the line is not a valid message.
 */
export function parseMessage(line: string): Message | null {
  const m = MESSAGE.exec(line.endsWith("\r") ? line.slice(0, -1) : line);
  if (!m) return null;
  const message: Message = { type: m[1] as MessageType, seq: Number(m[2]), seqText: m[2] };
  if (m[3] !== undefined) message.data = m[3];
  return message;
}
