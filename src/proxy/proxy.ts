/**
 * The proxy: a listener that accepts downstream connections, dials the upstream for each, and
 * bridges them while the analyzers count every message.
 *
 * @module
 */
import { getLogger, type Logger } from "@logtape/logtape";
import { type Address, formatAddress } from "../cli/address.ts";
import { type Clock, systemClock } from "../stats/clock.ts";
import { type CloseReason, Stats } from "../stats/stats.ts";
import { bridge } from "./bridge.ts";
import { dialUpstream, UpstreamError } from "./upstream.ts";

/** Options for {@linkcode Proxy}. */
export interface ProxyOptions {
  /** Where to accept downstream connections (port 0: any free port). */
  listen: Address;
  /** The upstream Foo server. */
  forward: Address;
  /** Counters to add to; unset: new stats on `clock`. */
  stats?: Stats;
  /** Time source for new stats; unset: the system clock. */
  clock?: Clock;
  /** Logger; unset: LogTape's `foo-proxy.proxy` category. */
  logger?: Logger;
  /** Upstream connect timeout in ms; 0 means none. @default {5000} */
  connectTimeoutMs?: number;
  /** Downstream connections served at once; past it new ones are closed at once. @default {10000} */
  maxConnections?: number;
  /** First read-buffer size per direction. @default {2048} */
  initialBufferSize?: number;
  /** Largest read buffer per direction. @default {65536} */
  maxBufferSize?: number;
  /** Aborting closes the proxy like {@linkcode Proxy.close}. Unset: only `close()` does. */
  signal?: AbortSignal;
}

/** A running proxy. `await using proxy = new Proxy(…); await proxy.start();` */
export class Proxy implements AsyncDisposable {
  /** The statistics this proxy adds to. */
  readonly stats: Stats;
  #options: ProxyOptions;
  #logger: Logger;
  #listener: Deno.TcpListener | undefined;
  #connections = new Set<Promise<void>>();
  #closeAll = new AbortController();
  #accepting: Promise<void> | undefined;
  #closing = false;
  #finished = Promise.withResolvers<void>();

  /** Creates a proxy; nothing is opened until {@linkcode Proxy.start}. */
  constructor(options: ProxyOptions) {
    this.#options = options;
    this.stats = options.stats ?? new Stats({ clock: options.clock ?? systemClock });
    this.#logger = options.logger ?? getLogger(["foo-proxy", "proxy"]);
    options.signal?.addEventListener("abort", () => void this.close(), { once: true });
  }

  /** Resolves once the proxy has closed and every connection has ended. */
  get finished(): Promise<void> {
    return this.#finished.promise;
  }

  /** The bound listen address (after start). */
  get addr(): Deno.NetAddr {
    if (!this.#listener) throw new Error("Proxy is not started");
    return this.#listener.addr;
  }

  /** Whether the listener is bound and the proxy is not closing. */
  get listening(): boolean {
    return this.#listener !== undefined && !this.#closing;
  }

  /**
   * Binds the listener and starts accepting; resolves with the bound address.
   *
   * @throws {Deno.errors.AddrInUse} (and other listen errors) when the address cannot be bound.
   */
  start(): Promise<Deno.NetAddr> {
    if (this.#listener) throw new Error("Proxy already started");
    const { listen } = this.#options;
    this.#listener = Deno.listen({ hostname: listen.hostname, port: listen.port });
    this.#accepting = this.#acceptLoop(this.#listener);
    this.#logger.info("Listening on {listen}, forwarding to {forward}", {
      listen: formatAddress({ hostname: this.addr.hostname, port: this.addr.port }),
      forward: formatAddress(this.#options.forward),
    });
    return Promise.resolve(this.addr);
  }

  /** Stops accepting new connections; open ones carry on. */
  stopAccepting(): void {
    if (this.#closing) return;
    this.#closing = true;
    try {
      this.#listener?.close();
    } catch {
      // Already closed.
    }
  }

  /** Stops accepting, closes every connection, and resolves when all have ended. */
  async close(): Promise<void> {
    this.stopAccepting();
    this.#closeAll.abort();
    await this.#accepting;
    while (this.#connections.size > 0) await Promise.all([...this.#connections]);
    this.#finished.resolve();
  }

  /** Number of connections currently being served. */
  get activeConnections(): number {
    return this.#connections.size;
  }

  /** Waits for every open connection to end on its own (use after {@linkcode stopAccepting}). */
  async drained(): Promise<void> {
    while (this.#connections.size > 0) await Promise.all([...this.#connections]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #acceptLoop(listener: Deno.TcpListener): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (this.#closing || error instanceof Deno.errors.BadResource) return;
        // Out of file descriptors and the like: say so and back off instead of spinning.
        this.#logger.error("Accept failed on {listen}: {error}", {
          listen: formatAddress(this.#options.listen),
          error: String(error),
        });
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      const task = this.#handle(conn).catch((error) => {
        this.#logger.error("Unexpected error in a connection: {error}", { error: String(error) });
      });
      this.#connections.add(task);
      task.finally(() => this.#connections.delete(task));
    }
  }

  async #handle(downstream: Deno.TcpConn): Promise<void> {
    const stats = this.stats;
    stats.connectionsTotal++;
    const peer = formatAddress(downstream.remoteAddr as Deno.NetAddr);
    const forward = formatAddress(this.#options.forward);
    const maxConnections = this.#options.maxConnections ?? 10_000;
    if (stats.connectionsActive >= maxConnections) {
      stats.connectionsRejected++;
      stats.recordClose("max_connections");
      this.#logger.warning("Rejected {downstream}: {active} connections open (--max-connections)", {
        downstream: peer,
        active: stats.connectionsActive,
      });
      downstream.close();
      return;
    }
    stats.connectionsActive++;
    let reason: CloseReason = "client_closed";
    try {
      downstream.setNoDelay(true);
      let upstream: Deno.TcpConn;
      try {
        upstream = await dialUpstream(this.#options.forward, {
          timeoutMs: this.#options.connectTimeoutMs,
          signal: this.#closeAll.signal,
        });
      } catch (error) {
        reason = this.#closeAll.signal.aborted ? "shutdown" : "upstream_unreachable";
        if (reason === "upstream_unreachable") stats.upstreamErrors++;
        this.#logger.warning("{message}; closing downstream {downstream}", {
          message: error instanceof UpstreamError ? error.message : String(error),
          downstream: peer,
          upstream: forward,
        });
        downstream.close();
        return;
      }
      this.#logger.debug("Bridging {downstream} -> {upstream}", {
        downstream: peer,
        upstream: forward,
      });
      reason = await bridge(downstream, upstream, {
        stats,
        logger: this.#logger,
        signal: this.#closeAll.signal,
        initialBufferSize: this.#options.initialBufferSize,
        maxBufferSize: this.#options.maxBufferSize,
        label: `${peer} -> ${forward}`,
      });
      this.#logger.debug("Closed {downstream} -> {upstream}: {reason}", {
        downstream: peer,
        upstream: forward,
        reason,
      });
    } finally {
      stats.connectionsActive--;
      stats.recordClose(reason);
    }
  }
}
