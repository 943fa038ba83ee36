/**
 * The WebSocket ingress (`--ws-listen`): a listener that takes each connection through the
 * WebSocket opening handshake (and first TLS, for wss) and hands the upgraded connection, as a
 * `Deno.Conn` ({@linkcode WebSocketConn}), to the proxy's one engine (`serve`): admission,
 * `--max-connections`, the connection modes, the stats and the access log are the TCP clients'.
 *
 * It is not built on `Deno.serve`: that server has no deadline for a request's headers and no
 * cap on connections (a slowloris holds descriptors without limit), an EMFILE on its accept ends
 * the process, and its WebSocket has no backpressure (messages queue in memory while the engine
 * does not read; `send` never waits). Here the accept loop is the Foo listener's (EMFILE pauses
 * it), the handshake has a deadline and a size limit, connections still in their handshake are
 * capped (the oldest makes room), and frames are read and written on the socket itself.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { type Address, formatAddress } from "../net/address.ts";
import { acceptLoop } from "../net/accept_loop.ts";
import { WebSocketConn } from "../net/websocket_conn.ts";
import { acceptUpgrade, type UpgradeRefusalReason } from "../net/websocket_upgrade.ts";
import type { Stats } from "../stats/stats.ts";
import { listenTls, replaceTlsListener, type TlsKeyPair } from "./tls_termination.ts";
import { heldText, LogLimiter } from "./proxy_header_step.ts";

/** Options for {@linkcode WebSocketListener}. */
export interface WebSocketListenerOptions {
  /** Where to listen (port 0: any free port). */
  listen: Address;
  /** Takes each upgraded connection (the proxy's `serve`). */
  serve: (conn: Deno.Conn) => void;
  /**
   * Asked first of each accepted connection, before a byte is read (the proxy's `--allow` and
   * `--deny`): false when it was refused (and closed). Unset: every connection is taken.
   */
  admit?: (conn: Deno.Conn) => boolean;
  /**
   * Runs first on each accepted connection, under the handshake's deadline (the proxy's PROXY
   * header step, `--accept-proxy`): resolves with the connection to go on with (its `remoteAddr`
   * the client's), or undefined when it closed it. `signal` aborts when this listener cuts the
   * handshake short (deadline, cap, close: counted here). With it, `admit` is asked of what it
   * gives. Unset: none.
   */
  preface?: (conn: Deno.Conn, signal: AbortSignal) => Promise<Deno.Conn | undefined>;
  /** Counters to add to. */
  stats: Stats;
  /** Logger; unset: nothing is logged. */
  logger?: Logger;
  /** Serve wss: TLS with this certificate. Unset: plain ws. */
  tls?: TlsKeyPair;
  /**
   * The origins let in (`--ws-origin`; see `websocket_upgrade.ts`); a function is asked at each
   * handshake. Unset or empty: same host only.
   */
  origins?: readonly string[] | (() => readonly string[] | undefined);
  /** Bind with `SO_REUSEPORT` (one listener per data-plane worker). @default {false} */
  reusePort?: boolean;
  /** Deadline for the TLS handshake and the upgrade request, from accept, in ms. @default {5000} */
  handshakeTimeoutMs?: number;
  /** Largest upgrade request head, in bytes (past it: 431). @default {16384} */
  maxHeadBytes?: number;
  /** Connections in their handshake at once; past it the oldest is closed. @default {256} */
  maxHandshakes?: number;
}

/** A running WebSocket listener; see the module docs. */
export class WebSocketListener implements AsyncDisposable {
  #options: WebSocketListenerOptions;
  #listener: Deno.Listener | undefined;
  #accepting: Promise<void> | undefined;
  #closed = false;
  /**
   * Connections in their handshake, oldest first, and how to close each: `evicted` to make room
   * (counted), `closed` by the listener's close (not counted: no client did anything wrong).
   */
  #pending = new Map<Deno.Conn, (why: "evicted" | "closed") => void>();
  #tasks = new Set<Promise<void>>();
  /** Refusal and protocol-error lines: one a second per kind (a flood must not flood the log). */
  #log = new LogLimiter();

  /** Creates the listener; nothing is bound until {@linkcode start}. */
  constructor(options: WebSocketListenerOptions) {
    this.#options = options;
  }

  /**
   * Binds and starts accepting; returns the bound address.
   *
   * @throws {Deno.errors.AddrInUse} (and other listen or certificate errors).
   */
  start(): Deno.NetAddr {
    if (this.#listener) throw new Error("WebSocketListener already started");
    const { listen, tls, reusePort } = this.#options;
    const where = { hostname: listen.hostname, port: listen.port };
    const reuse = reusePort ? { reusePort: true } : {};
    // wss always takes SO_REUSEPORT when it can: a new key pair is served by a second listener
    // on the port, opened before the old one closes (setTls).
    this.#listen(
      tls === undefined ? Deno.listen({ ...where, ...reuse }) : listenTls(listen, tls),
    );
    return this.addr;
  }

  /**
   * Serves wss with `pair` from now on: a second listener on the port, then the old one closes
   * (connections open on it keep going; see `Proxy.setTls` for what Linux does to any still in
   * its accept queue). Nothing is done for plain ws, or once closed.
   *
   * @throws when the pair cannot be used (the old listener then keeps serving).
   */
  async setTls(pair: TlsKeyPair): Promise<void> {
    const old = this.#listener;
    if (this.#options.tls === undefined || old === undefined || this.#closed) return;
    const address = { hostname: this.#options.listen.hostname, port: this.addr.port };
    await replaceTlsListener(old, address, pair, this.#options.tls, (l) => this.#listen(l));
    this.#options = { ...this.#options, tls: pair };
  }

  /** Accepts from `listener` from now on (besides any loop still ending on a retired one). */
  #listen(listener: Deno.Listener): void {
    this.#listener = listener;
    const stats = this.#options.stats;
    const loop = acceptLoop(listener, (conn) => this.#accept(conn), {
      closed: () => this.#closed,
      label: formatAddress(this.addr),
      logger: this.#options.logger,
      onConnectionError: () => stats.acceptErrors++,
      onResourceError: () => stats.acceptResourceErrors++,
    });
    const before = this.#accepting;
    this.#accepting = before === undefined ? loop : Promise.all([before, loop]).then(() => {});
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    if (!this.#listener) throw new Error("WebSocketListener is not started");
    return this.#listener.addr as Deno.NetAddr;
  }

  /** Stops accepting and closes the connections still in their handshake. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#listener?.close();
      } catch {
        // Already closed.
      }
    }
    for (const close of this.#pending.values()) close("closed");
    await this.#accepting;
    while (this.#tasks.size > 0) await Promise.all([...this.#tasks]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #accept(conn: Deno.Conn): void {
    if (this.#closed) return closeQuietly(conn);
    const { admit, preface } = this.#options;
    if (preface === undefined && admit !== undefined && !admit(conn)) return;
    const max = this.#options.maxHandshakes ?? 256;
    if (this.#pending.size >= max) {
      // A flood of stalled handshakes cannot keep a real client out: the oldest makes room.
      this.#pending.values().next().value?.("evicted");
    }
    const task = this.#handshake(conn).catch((error) => {
      this.#options.logger?.error("WebSocket handshake failed: {error}", { error: String(error) });
      closeQuietly(conn);
    }).finally(() => this.#tasks.delete(task));
    this.#tasks.add(task);
  }

  async #handshake(conn: Deno.Conn): Promise<void> {
    const stats = this.#options.stats;
    let peer = formatAddress(conn.remoteAddr as Deno.NetAddr);
    let why: "timeout" | "evicted" | "closed" | undefined;
    const cut = new AbortController();
    const end = (reason: "timeout" | "evicted" | "closed") => {
      if (why !== undefined) return;
      why = reason;
      cut.abort();
      // Counted here, whichever stage (TLS or the upgrade request) it cuts short.
      if (reason === "evicted") stats.wsRejectedBusy++;
      else if (reason === "timeout") stats.wsRejectedTimeout++;
      this.#pending.delete(conn);
      closeQuietly(conn);
    };
    this.#pending.set(conn, end);
    const timer = setTimeout(() => end("timeout"), this.#options.handshakeTimeoutMs ?? 5000);
    let upgrade;
    // The client's connection: `conn`, or what the preface made of it.
    let client = conn;
    try {
      const { admit, preface } = this.#options;
      if (preface !== undefined) {
        const given = await preface(conn, cut.signal);
        if (given === undefined || why !== undefined) return closeQuietly(conn);
        if (admit !== undefined && !admit(given)) return;
        client = given;
        peer = formatAddress(given.remoteAddr as Deno.NetAddr);
      }
      if (this.#options.tls !== undefined) {
        try {
          await (conn as Deno.TlsConn).handshake();
        } catch (error) {
          if (why === undefined) {
            stats.wsRejectedTls++;
            this.#options.logger?.debug("WebSocket TLS handshake from {peer} failed: {error}", {
              peer,
              error: String(error),
            });
          }
          return closeQuietly(conn);
        }
      }
      const origins = this.#options.origins;
      upgrade = await acceptUpgrade(client, {
        origins: typeof origins === "function" ? origins() : origins,
        maxHeadBytes: this.#options.maxHeadBytes,
      });
    } finally {
      clearTimeout(timer);
      this.#pending.delete(conn);
    }
    if (upgrade === null || why !== undefined) return closeQuietly(conn);
    if ("status" in upgrade) {
      countRefusal(stats, upgrade.reason);
      const held = this.#log.take("refused", Date.now());
      if (held !== undefined) {
        this.#options.logger?.info(
          "WebSocket upgrade from {peer} refused: {status} {message}{held}",
          { peer, status: upgrade.status, message: upgrade.message, held: heldText(held) },
        );
      }
      return closeQuietly(conn);
    }
    stats.wsConnections++;
    const ws = new WebSocketConn(client, {
      head: upgrade.rest,
      onMessageIn: () => stats.wsMessagesIn++,
      onMessageOut: () => stats.wsMessagesOut++,
      onProtocolError: (error) => {
        stats.wsProtocolErrors++;
        const held = this.#log.take("protocol", Date.now());
        if (held === undefined) return;
        this.#options.logger?.info("WebSocket client {peer} closed ({code}): {message}{held}", {
          peer,
          code: error.code,
          message: error.message,
          held: heldText(held),
        });
      },
    });
    this.#options.serve(ws);
  }
}

function countRefusal(stats: Stats, reason: UpgradeRefusalReason): void {
  if (reason === "origin") stats.wsRejectedOrigin++;
  else if (reason === "not_websocket") stats.wsRejectedNotWebsocket++;
  else stats.wsRejectedBadRequest++;
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
