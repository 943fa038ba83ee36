/**
 * WebSocket clients for the tests: the WebSocket API's (a browser's behaviour, in Deno), and a
 * raw one written by hand on a TCP or TLS connection for what the API never sends (unmasked
 * frames, bad opcodes, a flood that never reads, any `Origin`).
 *
 * @module
 */
import { withTimeout } from "./_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A WebSocket API client that keeps every message it gets. */
export class ApiClient implements AsyncDisposable {
  readonly socket: WebSocket;
  /** Every message received, as sent (string for text, bytes for binary). */
  readonly messages: (string | Uint8Array)[] = [];
  readonly closed: Promise<CloseEvent>;
  #wake: (() => void) | undefined;

  private constructor(socket: WebSocket) {
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => {
      this.messages.push(
        typeof event.data === "string" ? event.data : new Uint8Array(event.data as ArrayBuffer),
      );
      this.#wake?.();
    };
    this.closed = new Promise((resolve) => socket.addEventListener("close", resolve));
    this.closed.then(() => this.#wake?.());
  }

  /** Opens a WebSocket to `url` and waits until it is open. */
  static async open(url: string): Promise<ApiClient> {
    const client = new ApiClient(new WebSocket(url));
    const opened = new Promise<void>((resolve, reject) => {
      client.socket.addEventListener("open", () => resolve(), { once: true });
      client.socket.addEventListener("close", () => reject(new Error("closed before open")));
    });
    await withTimeout(opened, 5000, `WebSocket ${url} to open`);
    return client;
  }

  /** Everything received so far as one string. */
  text(): string {
    return this.messages.map((m) => typeof m === "string" ? m : decoder.decode(m)).join("");
  }

  /** Waits until the replies received hold `count` lines; returns them. */
  async lines(count: number, timeoutMs = 5000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lines = this.text().split("\n");
      if (lines.length - 1 >= count) return lines.slice(0, count);
      if (this.socket.readyState === WebSocket.CLOSED) {
        throw new Error(`closed after ${lines.length - 1} of ${count} lines`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`only ${lines.length - 1} of ${count} lines came`);
      await withTimeout(new Promise<void>((r) => this.#wake = r), left, `${count} lines`).catch(
        () => {},
      );
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.socket.readyState !== WebSocket.CLOSED) {
      this.socket.close();
      await withTimeout(this.closed, 5000, "the WebSocket to close").catch(() => {});
    }
  }
}

/** The response head of a raw handshake, and the bytes after it. */
export interface RawResponse {
  status: number;
  head: string;
  rest: Uint8Array;
}

/** Sends an HTTP request head on `conn` and reads the response head. */
export async function rawRequest(conn: Deno.Conn, head: string): Promise<RawResponse> {
  await writeAllBytes(conn, encoder.encode(head));
  let buf = new Uint8Array(0);
  for (;;) {
    const chunk = new Uint8Array(4096);
    const n = await withTimeout(conn.read(chunk), 5000, "the response head");
    if (n === null) break;
    const joined = new Uint8Array(buf.length + n);
    joined.set(buf);
    joined.set(chunk.subarray(0, n), buf.length);
    buf = joined;
    const text = decoder.decode(buf);
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) {
      const headBytes = encoder.encode(text.slice(0, end + 4)).length;
      return {
        status: Number(text.slice(9, 12)),
        head: text.slice(0, end),
        rest: buf.subarray(headBytes),
      };
    }
  }
  const text = decoder.decode(buf);
  return { status: Number(text.slice(9, 12)) || 0, head: text, rest: new Uint8Array(0) };
}

/** An upgrade request head for `host`, with extra header lines. */
export function upgradeHead(host: string, extra: string[] = []): string {
  return [
    "GET / HTTP/1.1",
    `Host: ${host}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
    ...extra,
    "",
    "",
  ].join("\r\n");
}

/** A client frame: FIN set, `opcode`, masked (with `mask`, default zeros) unless `masked` is false. */
export function frame(
  opcode: number,
  payload: string | Uint8Array,
  options: { fin?: boolean; masked?: boolean; mask?: number[] } = {},
): Uint8Array {
  const body = typeof payload === "string" ? encoder.encode(payload) : payload;
  const masked = options.masked ?? true;
  const mask = options.mask ?? [0, 0, 0, 0];
  const length = body.length;
  const lengthBytes = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const out = new Uint8Array(2 + lengthBytes + (masked ? 4 : 0) + length);
  out[0] = (options.fin ?? true ? 0x80 : 0) | opcode;
  out[1] = (masked ? 0x80 : 0) | (length < 126 ? length : length < 65536 ? 126 : 127);
  const view = new DataView(out.buffer);
  if (lengthBytes === 2) view.setUint16(2, length);
  if (lengthBytes === 8) view.setBigUint64(2, BigInt(length));
  let at = 2 + lengthBytes;
  if (masked) {
    out.set(mask, at);
    at += 4;
  }
  for (let i = 0; i < length; i++) out[at + i] = body[i] ^ (masked ? mask[i & 3] : 0);
  return out;
}

/** A server frame read by {@linkcode readFrame}. */
export interface ServerFrame {
  fin: boolean;
  opcode: number;
  payload: Uint8Array;
}

/** Reads server frames from `conn` (with `rest`, bytes already read) one by one. */
export class FrameReader {
  #conn: Deno.Conn;
  #buf: Uint8Array;

  constructor(conn: Deno.Conn, rest: Uint8Array = new Uint8Array(0)) {
    this.#conn = conn;
    this.#buf = rest;
  }

  async #need(n: number): Promise<boolean> {
    while (this.#buf.length < n) {
      const chunk = new Uint8Array(65536);
      const got = await this.#conn.read(chunk);
      if (got === null) return false;
      const joined = new Uint8Array(this.#buf.length + got);
      joined.set(this.#buf);
      joined.set(chunk.subarray(0, got), this.#buf.length);
      this.#buf = joined;
    }
    return true;
  }

  /** The next frame, or null at the end of the stream. */
  async next(timeoutMs = 5000): Promise<ServerFrame | null> {
    return await withTimeout(this.#next(), timeoutMs, "a frame");
  }

  async #next(): Promise<ServerFrame | null> {
    if (!await this.#need(2)) return null;
    const short = this.#buf[1] & 0x7f;
    const header = 2 + (short === 126 ? 2 : short === 127 ? 8 : 0);
    if (!await this.#need(header)) return null;
    const view = new DataView(this.#buf.buffer, this.#buf.byteOffset);
    const length = short === 126
      ? view.getUint16(2)
      : short === 127
      ? Number(view.getBigUint64(2))
      : short;
    if (!await this.#need(header + length)) return null;
    const out = {
      fin: (this.#buf[0] & 0x80) !== 0,
      opcode: this.#buf[0] & 0x0f,
      payload: this.#buf.slice(header, header + length),
    };
    this.#buf = this.#buf.subarray(header + length);
    return out;
  }
}

/** The close code of a close frame's payload (1005 when it has none). */
export function closeCode(payload: Uint8Array): number {
  return payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005;
}

export async function writeAllBytes(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}
