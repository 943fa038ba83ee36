/**
 * A small HTTP/1.1 server for the admin apps (`/stats`, `/metrics`, health), in place of
 * `Deno.serve`, which cannot be bounded: it has no cap on connections and no deadline for a
 * request's headers (a slowloris of half-open requests holds file descriptors until the process
 * runs out), and an accept that fails with EMFILE ends the whole process (measured with Deno
 * 2.9.6: `Uncaught (in promise) Http: Error: Too many open files`).
 *
 * Here every connection serves one request and closes (`Connection: close`; scrapers and probes
 * reconnect, and a closed connection holds nothing), connections past a cap are closed at once,
 * and each phase has a deadline: the request line and headers, the body, and writing the
 * response. Request bodies must carry `Content-Length` (no chunked uploads) and are bounded.
 * Responses are buffered, except `text/event-stream` ones, which are streamed with chunked
 * encoding.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { acceptLoop } from "./accept_loop.ts";
import { hostAllowed } from "./host_allowed.ts";
import { isRefusal } from "./http_head.ts";
import { readRequestHead } from "./read_request_head.ts";
import { hasNoContent, reasonPhrase } from "./http_status.ts";

/** Options for {@linkcode HttpServer}. */
export interface HttpServerOptions {
  /** Where to listen (port 0: any free port). */
  hostname: string;
  port: number;
  /** Answers one request. A throw becomes a 500. */
  handler: (request: Request) => Response | Promise<Response>;
  /** Connections served at once; more are closed at once and counted. @default {64} */
  maxConnections?: number;
  /** Deadline for the request line and headers, from accept, in ms. @default {5000} */
  headerTimeoutMs?: number;
  /** Deadline for the whole request including its body, from accept, in ms. @default {10000} */
  requestTimeoutMs?: number;
  /** Deadline for writing a buffered response, in ms (a peer that does not read). @default {10000} */
  writeTimeoutMs?: number;
  /** Largest request line plus headers, in bytes (past it: 431). @default {16384} */
  maxHeaderBytes?: number;
  /** Largest request body, in bytes (past it: 413). @default {65536} */
  maxBodyBytes?: number;
  /**
   * Names a request's `Host` may give besides the server's own address (see `hostAllowed` in
   * host_allowed.ts): past them, 421. `"*"`: any. A function is asked on every request (reload).
   * @default {[]}
   */
  allowedHosts?: readonly string[] | (() => readonly string[]);
  /** Logger for failures (a refused request: one debug line); unset: nothing is logged. */
  logger?: Logger;
  /** Counters to add to; unset: kept on the server only. */
  counters?: HttpServerCounters;
  /** Set `SO_REUSEPORT` (needs `--unstable-net`): a takeover's server binds beside. @default {false} */
  reusePort?: boolean;
}

/** What an {@linkcode HttpServer} counts. */
export class HttpServerCounters {
  /**
   * Connections closed because `maxConnections` were open: a new one when every open one is
   * being answered, else the oldest whose request was still incomplete (evicted for the new one).
   */
  rejected = 0;
  /** Requests whose headers or body did not arrive in time, or whose reader stalled. */
  timeouts = 0;
  /**
   * Connections closed at the headers deadline without having sent a byte: a browser's spare
   * pre-connected socket, a port scan. Not an error (HAProxy's `http-ignore-probes` does not
   * count them either); a request that started and stalled is a timeout.
   */
  idleClosed = 0;
  /** Requests refused as malformed, too large or of a method not implemented (4xx/501). */
  badRequests = 0;
  /** Requests whose `Host` does not name this server (421): DNS rebinding, or a name to allow. */
  misdirected = 0;
  /** Accept errors (one connection's, or resource exhaustion). */
  acceptErrors = 0;
}

/** A flood at the connection cap is worth one warning, not one per connection. */
const FULL_WARNING_EVERY_MS = 60_000;
/** A Host header: a name, an IPv4 or a bracketed IPv6 address, and an optional port. */
const HOST_HEADER = /^(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;
const encoder = new TextEncoder();

/** A bounded HTTP/1.1 server; see the module docs. */
export class HttpServer implements AsyncDisposable {
  /** Its counters. */
  readonly counters: HttpServerCounters;
  #options: HttpServerOptions;
  #listener: Deno.TcpListener | undefined;
  #open = new Set<Deno.TcpConn>();
  /** Connections whose request is incomplete, oldest first, and how to evict each. */
  #evictable = new Map<Deno.TcpConn, () => void>();
  #tasks = new Set<Promise<void>>();
  #accepting: Promise<void> | undefined;
  #closed = false;
  #lastFullWarning = -Infinity;

  /** Creates the server; nothing is bound until {@linkcode start}. */
  constructor(options: HttpServerOptions) {
    this.#options = options;
    this.counters = options.counters ?? new HttpServerCounters();
  }

  /**
   * Binds and starts accepting; returns the bound address.
   *
   * @throws {Deno.errors.AddrInUse} (and other listen errors).
   */
  start(): Deno.NetAddr {
    if (this.#listener) throw new Error("HttpServer already started");
    const { hostname, port, reusePort } = this.#options;
    this.#listener = reusePort
      ? Deno.listen({ hostname, port, reusePort: true })
      : Deno.listen({ hostname, port });
    this.#accepting = acceptLoop(this.#listener, (conn) => this.#accept(conn), {
      closed: () => this.#closed,
      label: `${this.#options.hostname}:${this.#listener.addr.port}`,
      logger: this.#options.logger,
      onConnectionError: () => this.counters.acceptErrors++,
      onResourceError: () => this.counters.acceptErrors++,
    });
    return this.#listener.addr;
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    if (!this.#listener) throw new Error("HttpServer is not started");
    return this.#listener.addr;
  }

  /** Connections open now. */
  get connections(): number {
    return this.#open.size;
  }

  /**
   * Stops accepting; requests in progress get up to `graceMs` to finish, then their connections
   * are closed. Resolves when every connection has ended.
   */
  async close(graceMs = 1000): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#listener?.close();
      } catch {
        // Already closed.
      }
    }
    await this.#accepting;
    if (this.#tasks.size > 0 && graceMs > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<void>((resolve) => timer = setTimeout(resolve, graceMs));
      await Promise.race([Promise.all([...this.#tasks]), late]);
      clearTimeout(timer);
    }
    for (const conn of this.#open) closeQuietly(conn);
    while (this.#tasks.size > 0) await Promise.all([...this.#tasks]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close(0);
  }

  #accept(conn: Deno.TcpConn): void {
    const max = this.#options.maxConnections ?? 64;
    if (!this.#closed && this.#open.size >= max) {
      // Full: the oldest incomplete request makes room, so a flood of stalled requests cannot
      // keep a probe out (its request is complete in one read); when every slot is being
      // answered, the newcomer is refused.
      this.#evictable.values().next().value?.();
      const now = performance.now();
      if (now - this.#lastFullWarning >= FULL_WARNING_EVERY_MS) {
        this.#lastFullWarning = now;
        this.#options.logger?.warning(
          "Admin HTTP server {address} is at its cap of {max} connections: the oldest incomplete requests are closed to make room (counted in admin_connections_rejected; said at most once a minute)",
          { address: `${this.#options.hostname}:${this.addr.port}`, max },
        );
      }
    }
    if (this.#closed || this.#open.size >= max) {
      if (!this.#closed) this.counters.rejected++;
      closeQuietly(conn);
      return;
    }
    this.#open.add(conn);
    const task = this.#serve(conn).catch((error) => {
      // A peer that resets or leaves mid-answer is its own business: no error line per client.
      const peerLeft = error instanceof Deno.errors.ConnectionReset ||
        error instanceof Deno.errors.BrokenPipe || error instanceof Deno.errors.NotConnected ||
        error instanceof Deno.errors.ConnectionAborted;
      const log = this.#options.logger;
      if (peerLeft) log?.debug("HTTP client left: {error}", { error: String(error) });
      else log?.error("HTTP connection failed: {error}", { error: String(error) });
    }).finally(() => {
      closeQuietly(conn);
      this.#open.delete(conn);
      this.#tasks.delete(task);
    });
    this.#tasks.add(task);
  }

  async #serve(conn: Deno.TcpConn): Promise<void> {
    const o = this.#options;
    const counters = this.counters;
    // One timer at a time closes the connection when the phase it guards overruns.
    let timedOut = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let silent = true; // no byte of a request yet
    let answered = false; // the response is written; what is left is an unread body
    const deadline = (ms: number) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        timedOut = true;
        if (answered) {
          // Served already: a body nobody needed that never came is nobody's failure.
        } else if (silent) counters.idleClosed++;
        else counters.timeouts++;
        closeQuietly(conn);
      }, ms);
    };
    // Until its request is complete (and again while an unneeded body drains) a connection may
    // be evicted to make room for a new one: see #accept.
    const evict = () => {
      timedOut = true;
      if (answered) {
        // Served already.
      } else if (silent) counters.idleClosed++;
      else counters.rejected++;
      clearTimeout(timer);
      this.#evictable.delete(conn);
      this.#open.delete(conn);
      closeQuietly(conn);
    };
    this.#evictable.set(conn, evict);
    const started = performance.now();
    const remaining = () =>
      Math.max(1, (o.requestTimeoutMs ?? 10_000) - (performance.now() - started));
    deadline(o.headerTimeoutMs ?? 5000);
    try {
      const read = await readRequestHead(conn, {
        maxBytes: o.maxHeaderBytes,
        onFirstByte: () => silent = false,
      });
      if (read === null) return;
      if (isRefusal(read)) return await this.#refuse(conn, read.status, read.message);
      const parsed = read.head;
      const given = parsed.headers.get("host") ?? "";
      if (given !== "" && !HOST_HEADER.test(given)) {
        return await this.#refuse(conn, 400, "bad Host header");
      }
      const allowed = typeof o.allowedHosts === "function" ? o.allowedHosts() : o.allowedHosts;
      if (!hostAllowed(given, { bound: o.hostname, allowed })) {
        return await this.#refuse(
          conn,
          421,
          `Host "${given}" does not name this server: use its address or localhost, or allow the name (--admin-hosts)`,
        );
      }
      let size = 0;
      const contentLength = parsed.headers.get("content-length");
      if (parsed.headers.has("transfer-encoding")) {
        return await this.#refuse(conn, 411, "send the body with Content-Length");
      }
      if (contentLength !== null) {
        size = /^\d+$/.test(contentLength) ? Number(contentLength) : NaN;
        if (!Number.isSafeInteger(size)) return await this.#refuse(conn, 400, "bad Content-Length");
        if (size > (o.maxBodyBytes ?? 65536)) {
          return await this.#refuse(conn, 413, "request body too large");
        }
      }
      const buffered = read.rest;
      // GET and HEAD bodies mean nothing to the apps: answered without waiting for them.
      const needsBody = parsed.method !== "GET" && parsed.method !== "HEAD";
      let body: Uint8Array<ArrayBuffer> | undefined;
      if (size > 0 && needsBody) {
        deadline(remaining());
        body = new Uint8Array(size);
        const already = Math.min(size, buffered.length);
        body.set(buffered.subarray(0, already));
        if (!await readInto(conn, body, already)) return;
      }
      clearTimeout(timer);
      this.#evictable.delete(conn);
      // The route comes from the request line alone: a target must be a path in normal form, and a
      // Host only a host[:port] (a `Host: x/metrics?` once chose the route, past any path ACL).
      const host = given === "" ? hostForUrl(o.hostname, this.addr.port) : given;
      let request: Request;
      try {
        const url = new URL(`http://${host}${parsed.target}`);
        if (url.pathname !== parsed.path) throw new TypeError("not in normal form");
        request = new Request(url, { method: parsed.method, headers: parsed.headers, body });
      } catch {
        // Defence in depth: what the URL parser would change was refused above already.
        return await this.#refuse(conn, 400, "bad Host header or request target");
      }
      let response: Response;
      try {
        response = await o.handler(request);
      } catch (error) {
        o.logger?.error("HTTP handler failed: {error}", { error: String(error) });
        response = Response.json({ error: "internal error" }, { status: 500 });
      }
      await this.#respond(conn, response, parsed.method === "HEAD", deadline);
      if (!needsBody && size > buffered.length && !timedOut) {
        // Drain the unneeded body before closing (closing on unread bytes sends a reset, which can
        // destroy the answer before the client reads it), evictable, within the request deadline.
        answered = true;
        this.#evictable.set(conn, evict);
        deadline(remaining());
        await readInto(conn, new Uint8Array(size - buffered.length), 0);
      }
    } finally {
      clearTimeout(timer);
      this.#evictable.delete(conn);
      if (timedOut) closeQuietly(conn);
    }
  }

  async #respond(
    conn: Deno.TcpConn,
    response: Response,
    head: boolean,
    deadline: (ms: number) => void,
  ): Promise<void> {
    const writeMs = this.#options.writeTimeoutMs ?? 10_000;
    const streaming = response.headers.get("content-type")?.startsWith("text/event-stream") &&
      response.body !== null && !head;
    const status = response.status;
    let lines = `HTTP/1.1 ${status} ${reasonPhrase(status, response.statusText)}\r\n`;
    response.headers.forEach((value, name) => {
      if (name !== "content-length" && name !== "connection" && name !== "transfer-encoding") {
        lines += `${name}: ${value}\r\n`;
      }
    });
    lines += "connection: close\r\n";
    if (streaming) {
      lines += "transfer-encoding: chunked\r\n\r\n";
      deadline(writeMs);
      await writeAll(conn, encoder.encode(lines));
      const reader = response.body!.getReader();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          if (value.length === 0) continue;
          deadline(writeMs); // each chunk must be taken by the peer in time
          await writeAll(conn, encoder.encode(`${value.length.toString(16)}\r\n`));
          await writeAll(conn, value);
          await writeAll(conn, encoder.encode("\r\n"));
        }
        await writeAll(conn, encoder.encode("0\r\n\r\n"));
      } catch {
        // The peer left (a closed dashboard tab), or the write deadline closed it.
      } finally {
        await reader.cancel().catch(() => {});
      }
      return;
    }
    const empty = head || hasNoContent(status);
    const body = empty ? new Uint8Array(0) : new Uint8Array(await response.arrayBuffer());
    if (empty) await response.body?.cancel().catch(() => {});
    lines += hasNoContent(status) ? "\r\n" : `content-length: ${body.length}\r\n\r\n`;
    deadline(writeMs);
    const headBytes = encoder.encode(lines);
    const out = new Uint8Array(headBytes.length + body.length);
    out.set(headBytes);
    out.set(body, headBytes.length);
    try {
      await writeAll(conn, out);
    } catch {
      // The peer left (or the write deadline closed it).
    }
  }

  /** Answers a request refused before the app: counted, one debug line, a plain-text reason. */
  async #refuse(conn: Deno.TcpConn, status: number, message: string): Promise<void> {
    if (status === 421) this.counters.misdirected++;
    else this.counters.badRequests++;
    const peer = conn.remoteAddr;
    this.#options.logger?.debug("Admin HTTP request from {peer} refused: {status} {message}", {
      peer: `${peer.hostname}:${peer.port}`,
      status,
      message,
    });
    const body = encoder.encode(message + "\n");
    const head = encoder.encode(
      `HTTP/1.1 ${status} ${reasonPhrase(status)}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
        `cache-control: no-store\r\nconnection: close\r\ncontent-length: ${body.length}\r\n\r\n`,
    );
    try {
      await writeAll(conn, head);
      await writeAll(conn, body);
    } catch {
      // The peer left.
    }
  }
}

/** Reads into `target` from `from` until it is full; false when the peer left first. */
async function readInto(conn: Deno.Conn, target: Uint8Array, from: number): Promise<boolean> {
  for (let got = from; got < target.length;) {
    let n: number | null;
    try {
      n = await conn.read(target.subarray(got));
    } catch {
      return false; // reset, or closed by a deadline or an eviction
    }
    if (n === null) return false;
    got += n;
  }
  return true;
}

/** `hostname:port` as a URL authority (IPv6 in brackets). */
function hostForUrl(hostname: string, port: number): string {
  return `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) {
    off += await conn.write(off === 0 ? bytes : bytes.subarray(off));
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
