/**
 * The WebSocket opening handshake, server side (RFC 6455 §4.2): reads the HTTP request with the
 * admin server's bounded, strict reader, checks that it is an upgrade to WebSocket from an
 * allowed `Origin`, and answers 101, or refuses with a status and a short text.
 *
 * Origins: browsers send `Origin`, and a page on any site can open a WebSocket to any address the
 * browser reaches (an intranet proxy included), so the check matters even though the Foo protocol
 * has no login to steal. With no list, only a page served by the same host and port the client
 * connected to (the `Host` it sent) is let in, as Gorilla's WebSocket `CheckOrigin` does by
 * default; `*` lets any page in; `null` names the opaque origin (a `file:` page, a sandboxed
 * frame, `about:blank`). A request with no `Origin` is not from a browser page and is let in: any
 * other program can send whatever `Origin` it likes, so refusing it would protect nothing.
 *
 * @module
 */
import { type HeadRefusal, isRefusal, type RequestHead } from "./http_head.ts";
import { readRequestHead } from "./read_request_head.ts";
import { reasonPhrase } from "./http_status.ts";
import { WEBSOCKET_GUID } from "./websocket_conn.ts";

/** Why an upgrade was refused (a metrics label: a closed set). */
export type UpgradeRefusalReason = "origin" | "not_websocket" | "bad_request";

/** A refused upgrade: what to answer, and why (for the counters). */
export interface UpgradeRefusal extends HeadRefusal {
  reason: UpgradeRefusalReason;
  /** Extra response header lines (`Name: value`). */
  headers?: string[];
}

/** An accepted upgrade: the request, and the bytes that came after it (the first frames). */
export interface Upgrade {
  head: RequestHead;
  rest: Uint8Array;
}

/** Options for {@linkcode acceptUpgrade}. */
export interface AcceptUpgradeOptions {
  /**
   * The origins let in (see the module docs; each as `scheme://host[:port]`, `null` or `*`).
   * Unset or empty: the page's host and port must be the ones the client connected to.
   */
  origins?: readonly string[];
  /** Largest request head, in bytes. @default {16384} */
  maxHeadBytes?: number;
  /** Called when the first byte arrives. */
  onFirstByte?: () => void;
}

const encoder = new TextEncoder();
const TOKEN_LIST = /\s*,\s*/;
/** A `Sec-WebSocket-Key`: 16 bytes in base64. */
const KEY = /^[A-Za-z0-9+/]{22}==$/;

/**
 * Reads the upgrade request from `conn` and answers it: resolves with the upgrade once the 101
 * is written, with the refusal once it is written, or null when the client left first.
 */
export async function acceptUpgrade(
  conn: Deno.Conn,
  options: AcceptUpgradeOptions = {},
): Promise<Upgrade | UpgradeRefusal | null> {
  const read = await readRequestHead(conn, {
    maxBytes: options.maxHeadBytes,
    onFirstByte: options.onFirstByte,
  });
  if (read === null) return null;
  const refusal = isRefusal(read)
    ? { ...read, reason: "bad_request" as const }
    : checkUpgrade(read.head, options.origins);
  if (refusal !== undefined) {
    await writeQuietly(conn, refusalBytes(refusal));
    return refusal;
  }
  const upgrade = read as Upgrade;
  const key = upgrade.head.headers.get("sec-websocket-key")!;
  const digest = await crypto.subtle.digest("SHA-1", encoder.encode(key + WEBSOCKET_GUID));
  const accept = btoa(String.fromCharCode(...new Uint8Array(digest)));
  const response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
    `Connection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`;
  if (!await writeQuietly(conn, encoder.encode(response))) return null;
  return upgrade;
}

/** What is wrong with `head` as a WebSocket upgrade from an allowed origin, or undefined. */
export function checkUpgrade(
  head: RequestHead,
  origins: readonly string[] | undefined,
): UpgradeRefusal | undefined {
  const h = head.headers;
  const upgrade = tokens(h.get("upgrade")).includes("websocket");
  if (!upgrade || !tokens(h.get("connection")).includes("upgrade")) {
    return {
      status: 426,
      reason: "not_websocket",
      message: "this port speaks WebSocket only: send an Upgrade: websocket request",
      headers: ["Upgrade: websocket", "Connection: Upgrade"],
    };
  }
  if (head.method !== "GET" || head.minor !== 1) {
    return {
      status: 400,
      reason: "bad_request",
      message: "a WebSocket upgrade is a GET in HTTP/1.1",
    };
  }
  if (h.get("sec-websocket-version") !== "13") {
    return {
      status: 426,
      reason: "bad_request",
      message: "only WebSocket version 13 is spoken",
      headers: ["Sec-WebSocket-Version: 13"],
    };
  }
  if (!KEY.test(h.get("sec-websocket-key") ?? "")) {
    return { status: 400, reason: "bad_request", message: "bad Sec-WebSocket-Key" };
  }
  const origin = h.get("origin");
  if (origin !== null && !originAllowed(origin, h.get("host") ?? "", origins)) {
    return {
      status: 403,
      reason: "origin",
      message: `Origin "${origin}" is not allowed (--ws-origin)`,
    };
  }
  return undefined;
}

/** Whether a page of `origin` may open a WebSocket that reached us as `host` (see the module docs). */
export function originAllowed(
  origin: string,
  host: string,
  origins: readonly string[] | undefined,
): boolean {
  if (origins === undefined || origins.length === 0) {
    const page = normalizeOrigin(origin);
    if (page === undefined || page === "null" || host === "") return false;
    try {
      return new URL(page).host === new URL(`http://${host}`).host;
    } catch {
      return false;
    }
  }
  if (origins.includes("*")) return true;
  const page = normalizeOrigin(origin);
  return page !== undefined && origins.includes(page);
}

/**
 * `text` as an origin in the form browsers send (`scheme://host[:port]`, lower case, no default
 * port, no path), `null`, `*`; undefined if it is none of those.
 */
export function normalizeOrigin(text: string): string | undefined {
  const t = text.trim();
  if (t === "*" || t === "null") return t;
  try {
    const url = new URL(t);
    if (url.origin === "null" || url.pathname !== "/" || url.search || url.hash) return undefined;
    if (url.username || url.password || t.endsWith("/")) return undefined;
    return url.origin;
  } catch {
    return undefined;
  }
}

function tokens(value: string | null): string[] {
  return value === null ? [] : value.toLowerCase().split(TOKEN_LIST);
}

function refusalBytes(refusal: UpgradeRefusal): Uint8Array {
  const body = encoder.encode(refusal.message + "\n");
  const extra = (refusal.headers ?? []).map((line) => `${line}\r\n`).join("");
  return encoder.encode(
    `HTTP/1.1 ${refusal.status} ${reasonPhrase(refusal.status)}\r\n${extra}` +
      `Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n` +
      `Connection: close\r\nContent-Length: ${body.length}\r\n\r\n${refusal.message}\n`,
  );
}

async function writeQuietly(conn: Deno.Conn, bytes: Uint8Array): Promise<boolean> {
  try {
    for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
    return true;
  } catch {
    return false; // the client left, or the deadline closed it
  }
}
