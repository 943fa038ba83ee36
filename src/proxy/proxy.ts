/**
 * The proxy: a listener that accepts downstream connections, dials the upstream for each, and
 * bridges them while the analyzers count every message.
 *
 * @module
 */
import { getLogger, type Logger } from "@logtape/logtape";
import { type Address, formatAddress } from "../net/address.ts";
import { type Clock, systemClock } from "../stats/clock.ts";
import { type CloseReason, Stats } from "../stats/stats.ts";
import { acceptLoop } from "../net/accept_loop.ts";
import { waitOrAbort } from "../async/wait_or_abort.ts";
import type { AccessRecord } from "./access_log.ts";
import { bridge, BridgeState, type ConnectionSummary } from "./bridge.ts";
import { type MuxClient, MuxHub } from "./mux.ts";
import {
  type EngineConfig,
  type EngineOptions,
  resolveEngineConfig,
  type ResumeMode,
} from "./engine_config.ts";
import { FirstBytesReader, type HeldBytes } from "./first_bytes_reader.ts";
import { UpstreamError, type UpstreamTls } from "./upstream.ts";
import { SingleUpstream, type TargetConnection, type UpstreamTarget } from "./upstream_target.ts";
import { CidrList, parseIp } from "../net/cidr.ts";
import {
  heldText,
  LogLimiter,
  ProxiedConn,
  type ProxyHeaderFailure,
  readProxyHeader,
  sendProxyHeader,
  SendProxyTarget,
} from "./proxy_header_step.ts";
import { WebSocketListener, type WebSocketListenerOptions } from "./websocket_listener.ts";
import {
  createSourceTableBuffer,
  SOURCE_LIMITED,
  sourceClock,
  SourceRate,
  SourceTable,
  TABLE_FULL,
} from "./source_table.ts";
import {
  listenTls,
  replaceTlsListener,
  TlsHandshakes,
  type TlsKeyPair,
} from "./tls_termination.ts";

/**
 * Options for {@linkcode Proxy}: where to listen and forward, the accept and drain behaviour,
 * and the bridge engine's settings ({@linkcode EngineOptions}, resolved once for every
 * connection).
 */
export interface ProxyOptions extends Omit<EngineOptions, "resume"> {
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
  /** Upstream connect timeout in ms, per attempt; 0 means none. @default {5000} */
  connectTimeoutMs?: number;
  /**
   * Extra upstream connect attempts after a refused or timed-out one, with exponential backoff
   * and jitter; the downstream's first bytes are held meanwhile. 0: give up at once.
   * @default {3}
   */
  connectRetries?: number;
  /** Backoff before the first retry in ms, doubling after each (jittered to [½, 1]). @default {100} */
  connectBackoffMs?: number;
  /**
   * Downstream bytes read and held while the upstream is dialed; past it the client waits on TCP
   * backpressure. @default {65536}
   */
  maxHeldBytes?: number;
  /**
   * On {@linkcode Proxy.shutdown}, keep accepting this many ms (while `shuttingDown` already
   * turns readiness off) so load balancers stop sending first. @default {0}
   */
  drainDelayMs?: number;
  /**
   * On {@linkcode Proxy.shutdown}, wait up to this many ms for connections to end on their own
   * before closing them (those with nothing in flight first). 0: close at once. @default {30000}
   */
  drainTimeoutMs?: number;
  /** Downstream connections served at once; past it new ones are closed at once. @default {10000} */
  maxConnections?: number;
  /**
   * When an upstream connection dies with REQs unanswered, dial a new one and replay them there
   * (`--resume`, see `resume.ts`): `true` or `"verbatim"` sends them exactly as the client did,
   * `"renumber"` with Seqs from 1. @default {"off"}
   */
  resume?: ResumeMode | boolean;
  /** Where upstream connections come from; unset: `forward` alone. */
  target?: UpstreamTarget;
  /**
   * Idle upstream connections kept for the next client, per upstream (`--pool`): a client that
   * ends cleanly leaves its connection there. 0: none, every client dials. Applies to `forward`
   * alone; a `target` is given its own. @default {0}
   */
  pool?: number;
  /** A pooled connection unused this long (ms) is closed; 0: never. @default {30000} */
  poolIdleTimeoutMs?: number;
  /**
   * Speak TLS to `forward` (`--upstream-tls`; a `target` is given its own), its failed
   * handshakes counted in `stats`. Unset: plain TCP.
   */
  upstreamTls?: UpstreamTls;
  /** Gets one record per finished connection (the access log); unset: none are made. */
  accessLog?: (record: AccessRecord) => void;
  /** Aborting closes the proxy like {@linkcode Proxy.close}. Unset: only `close()` does. */
  signal?: AbortSignal;
  /**
   * Bind with `SO_REUSEPORT` (several data-plane workers on one port; needs `--unstable-net`).
   * @default {false}
   */
  reusePort?: boolean;
  /**
   * The process-wide connection count shared by every worker: `[0]` connections open, `[1]` the
   * limit (`--max-connections` is a process total), `[2 + gateSlot]` this proxy's own (what the
   * supervisor takes back if its worker dies). Unset: this proxy's own count and
   * `maxConnections`.
   */
  connectionGate?: Int32Array;
  /** This proxy's slot in `connectionGate`. @default {0} */
  gateSlot?: number;
  /** Log "Listening on …" at start (a data plane leaves it to the supervisor). @default {true} */
  announce?: boolean;
  /**
   * Share this many upstream connections per upstream among every client (`--mux`, see
   * `mux.ts`); `resume` then replays a dead shared connection's REQs on another. 0: each client
   * gets its own upstream connection. @default {0}
   */
  mux?: number;
  /**
   * `--accept-proxy`: peers (a list, or its text) whose connections must start with a PROXY
   * header (v1 or v2), read before anything else; the client it names is then the connection's
   * address everywhere. A header from any other peer closes its connection. Unset or empty: no
   * header is read or looked for. Changed by {@linkcode Proxy.setAcceptProxy}.
   */
  acceptProxy?: CidrList | string;
  /** `--accept-proxy-timeout`: ms a listed peer has to send its whole header; 0: no limit. @default {3000} */
  acceptProxyTimeoutMs?: number;
  /**
   * `--send-proxy`: start each upstream connection with a PROXY header of this version carrying
   * the client's address (1:1 connections only: refused with `mux` or `pool`). @default {"off"}
   */
  sendProxy?: "off" | "v1" | "v2";
  /**
   * Also accept WebSocket clients there (`--ws-listen`; see `websocket_listener.ts`), bound with
   * `reusePort` like `listen`: served by {@linkcode Proxy.serve}. Unset: none.
   */
  webSocket?: Omit<WebSocketListenerOptions, "serve" | "stats" | "logger" | "reusePort">;
  // ---- Source access (step 2 of the accept pipeline: see #checkSource) ----
  /**
   * `--allow`: the only sources let in (a list or its text, `10.0.0.0/8,::1`). Unset or empty:
   * every source not denied.
   */
  allow?: CidrList | string;
  /** `--deny`: sources closed at accept, before a byte is read; wins over `allow`. Unset: none. */
  deny?: CidrList | string;
  /** `--max-connections-per-source`: connections one source address may have open; 0: any. @default {0} */
  maxConnectionsPerSource?: number;
  /**
   * `--rate-limit-per-source`: REQs a second one source address may send, over all its
   * connections (a token bucket holding a second's worth); past it its reads pause. 0: no limit.
   * @default {0}
   */
  rateLimitPerSource?: number;
  /**
   * The process-wide per-source table (`source_table.ts`) the two limits above count in, shared
   * by every worker. Unset: this proxy makes its own when a limit is first set.
   */
  sourceTable?: SourceTable;
  /**
   * Terminate TLS on the listener with this key pair (`--tls-cert`, `--tls-key`): each client's
   * handshake completes, within `tlsHandshakeTimeoutMs`, after it is admitted and before its
   * upstream is dialed. {@linkcode Proxy.setTls} changes it. Unset: plain TCP.
   */
  tls?: TlsKeyPair;
  /**
   * The deadline of a TLS client's handshake in ms (the client is closed then, counted); 0: none.
   * @default {5000}
   */
  tlsHandshakeTimeoutMs?: number;
}

/** The source-access settings {@linkcode Proxy.setAccess} changes (a reload). */
export type SourceAccess = Pick<
  ProxyOptions,
  "allow" | "deny" | "maxConnectionsPerSource" | "rateLimitPerSource"
>;

/** Source access as the accept path reads it; `undefined` when no rule is set (the fast path). */
interface AccessRules {
  allow: CidrList | undefined;
  deny: CidrList | undefined;
  maxPerSource: number;
  rate: number;
}

/** The rules of `access`, or `undefined` when it sets none. */
function accessRules(access: SourceAccess): AccessRules | undefined {
  const list = (value: CidrList | string | undefined) => {
    const parsed = typeof value === "string" ? CidrList.parse(value) : value;
    return parsed === undefined || parsed.empty ? undefined : parsed;
  };
  const rules: AccessRules = {
    allow: list(access.allow),
    deny: list(access.deny),
    maxPerSource: access.maxConnectionsPerSource ?? 0,
    rate: access.rateLimitPerSource ?? 0,
  };
  const none = rules.allow === undefined && rules.deny === undefined && rules.maxPerSource <= 0 &&
    rules.rate <= 0;
  return none ? undefined : rules;
}

/**
 * The defaults of the {@linkcode ProxyOptions} the CLI also sets, written once: the proxy applies
 * them, and the CLI's settings table shows them as the flags' defaults.
 */
export const PROXY_DEFAULTS = Object.freeze({
  connectTimeoutMs: 5000,
  connectRetries: 3,
  drainDelayMs: 0,
  drainTimeoutMs: 30_000,
  maxConnections: 10_000,
  acceptProxyTimeoutMs: 3000,
});

/**
 * The {@linkcode ProxyOptions} that are not engine settings but that, like them, a reload gives
 * to connections accepted from then on ({@linkcode Proxy.updateEngine} takes them too).
 */
export const CONNECTION_SETTINGS = ["acceptProxy"] as const;

/** Options for {@linkcode Proxy.shutdown}. */
export interface ShutdownOptions {
  /**
   * Aborting ends the drain delay and the drain wait at once and closes every connection (a
   * second signal). Unset: only the drain timeout ends the wait.
   */
  signal?: AbortSignal;
}

/** What {@linkcode Proxy.shutdown} did. */
export interface ShutdownReport {
  /** Whether every connection ended on its own before the drain timeout. */
  drained: boolean;
  /** Connections closed with nothing in flight (closed first). */
  closedIdle: number;
  /** Connections closed with REQs unanswered or bytes still on their way (closed last). */
  closedBusy: number;
  /** Whether `signal` cut the shutdown short. */
  aborted: boolean;
}

/** One downstream connection being served. */
interface Connection {
  /** Aborting closes this connection (reason `shutdown`); a 1:1 connection's. */
  controller: AbortController | undefined;
  /** A `--mux` client (stopped instead: it needs no signal of its own). */
  client: MuxClient | undefined;
  /** What the bridge has in flight. */
  state: BridgeState;
  /** Whether the upstream is still being dialed (held bytes count as in flight). */
  dialing: boolean;
  /** Settles when the connection has ended. */
  task: Promise<unknown>;
  /** Its place in the per-source table (and token bucket); unset without per-source limits. */
  source: SourceRate | undefined;
  /**
   * Its source address while `--allow`/`--deny` are set (a reload that denies it closes the
   * connection); unset otherwise.
   */
  address: Uint8Array | undefined;
  /**
   * The downstream as served (its `remoteAddr` is the client, after `--accept-proxy` the one its
   * header names): a reload that sets `--allow`/`--deny` finds there the source of a connection
   * accepted while none was set. Unset while its PROXY header is read.
   */
  downstream: Deno.Conn | undefined;
  /** `--accept-proxy`: the downstream as the PROXY header step wrapped it (its close reason). */
  proxied: ProxiedConn | undefined;
}

/** What dialing the upstream gave: the connection and the downstream bytes held meanwhile. */
interface Dialed {
  upstream: Deno.Conn;
  /** The upstream's name. */
  name: string;
  /** What the target handed out with the connection (released when it ends). */
  lease: TargetConnection;
  held: HeldBytes;
}

/** A running proxy. `await using proxy = new Proxy(…); await proxy.start();` */
export class Proxy implements AsyncDisposable {
  /** The statistics this proxy adds to. */
  readonly stats: Stats;
  #options: ProxyOptions;
  #logger: Logger;
  #listener: Deno.Listener | undefined;
  #webSocket: WebSocketListener | undefined;
  /** The TLS handshake step (`tls` set); undefined: plain TCP. */
  #handshakes: TlsHandshakes | undefined;
  // A set of plain records rather than a map keyed by task promises: no `.catch`/`.finally`
  // promises and closures per connection (measured: less heap per idle connection).
  #connections = new Set<Connection>();
  #forwardText: string;
  #engine: EngineConfig;
  #accessLog: ((record: AccessRecord) => void) | undefined;
  #target: UpstreamTarget;
  #mux: MuxHub | undefined;
  #closeAll = new AbortController();
  #accepting: Promise<void> | undefined;
  #closing = false;
  #shuttingDown = false;
  #shutdown: Promise<ShutdownReport> | undefined;
  #finished = Promise.withResolvers<void>();
  /** Settles once the idle pooled connections closed at stopAccepting have ended. */
  #idleClosed: Promise<void> | undefined;
  /** Source access; `undefined` when no rule is set (then the accept path checks nothing). */
  #access: AccessRules | undefined;
  #sourceTable: SourceTable | undefined;
  /** A refusal line a second per kind at most (a flood of denied connects must not flood the log). */
  #refusalLog = new LogLimiter();
  /** `--accept-proxy`; undefined: off. */
  #acceptProxy: CidrList | undefined;
  #proxyHeaderLog = new LogLimiter();
  /** `--send-proxy`'s version; 0: off. */
  #sendProxy: 0 | 1 | 2;
  /** Settles once the WebSocket listener and its handshakes have ended. */
  #webSocketClosed: Promise<void> | undefined;

  /** Creates a proxy; nothing is opened until {@linkcode Proxy.start}. */
  constructor(options: ProxyOptions) {
    this.#options = options;
    this.stats = options.stats ?? new Stats({ clock: options.clock ?? systemClock });
    this.#logger = options.logger ?? getLogger(["foo-proxy", "proxy"]);
    const resume = options.resume === true
      ? "verbatim"
      : options.resume === false || options.resume === undefined
      ? "off"
      : options.resume;
    // Resolved once: every connection shares one frozen config, whatever the mode.
    this.#engine = resolveEngineConfig({ ...options, resume });
    this.#target = options.target ??
      new SingleUpstream(options.forward, {
        connectTimeoutMs: options.connectTimeoutMs ?? PROXY_DEFAULTS.connectTimeoutMs,
        random: options.random,
        idleMax: options.pool,
        idleTimeoutMs: options.poolIdleTimeoutMs,
        tls: options.upstreamTls,
        tlsCounters: this.stats,
        idleCounters: this.stats,
        timers: options.timers,
        logger: this.#logger,
      });
    this.#forwardText = this.#target.label;
    const mux = options.mux ?? 0;
    if (mux > 0) {
      if (resume === "renumber") {
        throw new RangeError("--mux cannot renumber Seqs (--resume=renumber): use --resume");
      }
      this.#mux = new MuxHub({
        stats: this.stats,
        target: this.#target,
        connections: mux,
        logger: this.#logger,
        connectRetries: options.connectRetries ?? PROXY_DEFAULTS.connectRetries,
        connectBackoffMs: options.connectBackoffMs,
        resume: resume !== "off",
        ended: (owner, reason) => this.#muxEnded(owner, reason),
      });
    }
    this.setAcceptProxy(options.acceptProxy);
    this.#sendProxy = options.sendProxy === "v1" ? 1 : options.sendProxy === "v2" ? 2 : 0;
    if (this.#sendProxy > 0 && (mux > 0 || (options.pool ?? 0) > 0)) {
      throw new RangeError(
        "--send-proxy needs a connection per client: --mux and --pool share upstream connections among clients",
      );
    }
    this.#accessLog = options.accessLog;
    this.#access = accessRules(options);
    this.#sourceTable = options.sourceTable;
    if (options.tls !== undefined) {
      this.#handshakes = new TlsHandshakes({
        stats: this.stats,
        logger: this.#logger,
        timeoutMs: options.tlsHandshakeTimeoutMs,
        timers: options.timers,
      });
    }
    options.signal?.addEventListener("abort", () => void this.close(), { once: true });
  }

  /** Resolves once the proxy has closed and every connection has ended. */
  get finished(): Promise<void> {
    return this.#finished.promise;
  }

  /** The bound listen address (after start). */
  get addr(): Deno.NetAddr {
    if (!this.#listener) throw new Error("Proxy is not started");
    return this.#listener.addr as Deno.NetAddr;
  }

  /** The bound WebSocket listen address (after start), or undefined without `webSocket`. */
  get webSocketAddr(): Deno.NetAddr | undefined {
    return this.#webSocket?.addr;
  }

  /** Whether the listener is bound and the proxy is not closing. */
  get listening(): boolean {
    return this.#listener !== undefined && !this.#closing;
  }

  /** Whether {@linkcode Proxy.shutdown} or {@linkcode Proxy.close} has begun (`/readyz` fails). */
  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /**
   * Binds the listener and starts accepting; resolves with the bound address.
   *
   * @throws {Deno.errors.AddrInUse} (and other listen errors) when the address cannot be bound.
   */
  start(): Promise<Deno.NetAddr> {
    if (this.#listener) throw new Error("Proxy already started");
    const { listen, tls } = this.#options;
    this.#listener = tls !== undefined
      ? listenTls(listen, tls)
      : this.#options.reusePort
      ? Deno.listen({ hostname: listen.hostname, port: listen.port, reusePort: true })
      : Deno.listen({ hostname: listen.hostname, port: listen.port });
    this.#accepting = this.#acceptLoop(this.#listener);
    if (this.#options.webSocket !== undefined) {
      this.#webSocket = new WebSocketListener({
        // wss with the Foo listener's key pair (and its rotations: see setTls).
        tls,
        ...this.#options.webSocket,
        reusePort: this.#options.reusePort,
        admit: (conn) => this.#allowedSource(conn),
        // `--accept-proxy`: a listed balancer's header comes before the upgrade request (not
        // with wss: Deno cannot read one in front of a TLS ClientHello).
        preface: tls === undefined
          ? (conn, signal) => this.#webSocketProxyHeader(conn, signal)
          : undefined,
        serve: (conn) => this.serve(conn),
        stats: this.stats,
        logger: this.#logger,
      });
      try {
        this.#webSocket.start();
      } catch (error) {
        this.#listener.close();
        throw error;
      }
    }
    if (this.#options.announce === false) return Promise.resolve(this.addr);
    const everywhere = this.addr.hostname === "0.0.0.0" || this.addr.hostname === "::";
    this.#logger.info("Listening on {listen}{scope}, forwarding to {forward}", {
      listen: formatAddress({ hostname: this.addr.hostname, port: this.addr.port }),
      // Binding every interface is what `:8002` meant in the original tool; say so plainly.
      scope: everywhere ? " (all interfaces: --listen 127.0.0.1:PORT for this host only)" : "",
      forward: this.#target.label,
    });
    return Promise.resolve(this.addr);
  }

  /** Stops accepting new connections (and closes the idle pooled ones); open ones carry on. */
  stopAccepting(): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#idleClosed = this.#target.closeIdle?.();
    try {
      this.#listener?.close();
    } catch {
      // Already closed.
    }
    this.#webSocketClosed = this.#webSocket?.close();
  }

  /** Stops accepting, closes every connection, and resolves when all have ended. */
  async close(): Promise<void> {
    this.#shuttingDown = true;
    this.stopAccepting();
    this.#closeAll.abort();
    for (const connection of this.#connections) stop(connection);
    await this.#accepting;
    await this.#webSocketClosed;
    await this.drained();
    this.#mux?.close();
    await this.#idleClosed;
    // Connections that ended while draining were not pooled; this waits for the last reads.
    await this.#target.closeIdle?.();
    this.#finished.resolve();
  }

  /**
   * Graceful shutdown: `shuttingDown` turns true at once; the listener keeps accepting for
   * `drainDelayMs`, then closes; open connections get up to `drainTimeoutMs` to end on their
   * own; then those with nothing in flight are closed, then the rest. Resolves when every
   * connection has ended (a second call returns the same promise).
   */
  shutdown(options: ShutdownOptions = {}): Promise<ShutdownReport> {
    this.#shutdown ??= this.#runShutdown(options.signal);
    return this.#shutdown;
  }

  async #runShutdown(signal: AbortSignal | undefined): Promise<ShutdownReport> {
    this.#shuttingDown = true;
    const delayMs = this.#options.drainDelayMs ?? PROXY_DEFAULTS.drainDelayMs;
    const timeoutMs = this.#options.drainTimeoutMs ?? PROXY_DEFAULTS.drainTimeoutMs;
    if (delayMs > 0 && !this.#closing) {
      this.#logger.info("Shutting down: accepting for {delayMs} ms more (--drain-delay)", {
        delayMs,
      });
      await waitOrAbort(delayMs, signal);
    }
    this.stopAccepting();
    let drained = this.#connections.size === 0;
    if (!drained && timeoutMs > 0 && !signal?.aborted) {
      this.#logger.info(
        "Stopped accepting; waiting up to {timeoutMs} ms for {active} connection(s) to finish",
        { timeoutMs, active: this.#connections.size },
      );
      const done = this.drained().then(() => true);
      drained = await Promise.race([done, waitOrAbort(timeoutMs, signal).then(() => false)]);
    }
    let closedIdle = 0;
    let closedBusy = 0;
    if (!drained) {
      const counts = await this.closeIdle((idle, busy) =>
        this.#logger.info(
          "{why}: closing {idle} idle connection(s), then {busy} with requests in flight",
          { why: signal?.aborted ? "Shutdown forced" : "Drain timeout", idle, busy },
        )
      );
      closedIdle = counts.idle;
      closedBusy = counts.busy;
    }
    await this.close();
    return { drained, closedIdle, closedBusy, aborted: signal?.aborted ?? false };
  }

  /**
   * Closes the connections with nothing in flight (no REQ unanswered, nothing being dialed) and
   * waits for them to end; the others stay open. `before` hears how many of each there are
   * before anything closes. Resolves with those counts.
   */
  async closeIdle(
    before?: (idle: number, busy: number) => void,
  ): Promise<{ idle: number; busy: number }> {
    const idle: Connection[] = [];
    let busy = 0;
    for (const connection of this.#connections) {
      if (connection.dialing || !connection.state.idle) busy++;
      else idle.push(connection);
    }
    before?.(idle.length, busy);
    for (const connection of idle) stop(connection);
    await Promise.all(idle.map((connection) => connection.task));
    return { idle: idle.length, busy };
  }

  /**
   * Changes engine settings for connections accepted from now on (a reload); open connections
   * keep what they started with.
   */
  updateEngine(
    changes: Omit<EngineOptions, "resume" | "timers" | "random"> & { acceptProxy?: string },
  ): void {
    // `--accept-proxy` reloads with the engine rows (new connections get it), but is not one.
    const { acceptProxy, ...engine } = changes;
    if (acceptProxy !== undefined) this.setAcceptProxy(acceptProxy);
    this.#engine = resolveEngineConfig({ ...this.#engine, ...engine });
  }

  /**
   * Changes `--accept-proxy` (a reload): connections accepted from now on use the new list.
   *
   * @throws {RangeError} for an invalid list text.
   */
  setAcceptProxy(list: CidrList | string | undefined): void {
    const parsed = typeof list === "string" ? CidrList.parse(list) : list;
    this.#acceptProxy = parsed === undefined || parsed.empty ? undefined : parsed;
  }

  /**
   * Serves `pair` to clients from now on (a reload of `--tls-cert`/`--tls-key`), dropping no
   * connection: Deno's TLS listener keeps the pair it was opened with, so a second listener opens
   * on the same port (`SO_REUSEPORT`) and accepts, then the old one closes. Open connections keep
   * their sessions; `tlsHandshakeTimeoutMs`, when given, applies to handshakes from now on.
   *
   * @throws {Error} when the proxy does not terminate TLS or is not accepting, and the listen
   * errors of the new listener (the old pair keeps serving then).
   */
  async setTls(pair: TlsKeyPair, tlsHandshakeTimeoutMs?: number): Promise<void> {
    const old = this.#listener;
    if (this.#handshakes === undefined) throw new Error("This proxy does not terminate TLS");
    if (old === undefined || this.#closing) throw new Error("This proxy is not accepting");
    const address = { hostname: this.#options.listen.hostname, port: this.addr.port };
    await replaceTlsListener(old, address, pair, this.#options.tls!, (l) => this.#acceptFrom(l));
    this.#options = { ...this.#options, tls: pair };
    if (tlsHandshakeTimeoutMs !== undefined) this.#handshakes.timeoutMs = tlsHandshakeTimeoutMs;
    await this.#webSocket?.setTls(pair);
  }

  /** Accepts from `listener` from now on (besides any loop still ending on a retired one). */
  #acceptFrom(listener: Deno.Listener): void {
    this.#listener = listener;
    const accepting = this.#accepting;
    const loop = this.#acceptLoop(listener);
    this.#accepting = Promise.all([accepting, loop]).then(() => {});
  }

  /** Changes `maxConnections` (a reload); open connections above it are not closed. */
  setMaxConnections(max: number): void {
    this.#options = { ...this.#options, maxConnections: max };
  }

  /**
   * Changes source access (a reload): connections accepted from now on see the new lists and
   * limits, and open connections from a source the new lists refuse are closed (reason
   * `denied`: an operator who denies a source wants it out, not only kept from coming back).
   * Open connections are not counted against a per-source limit turned on now, nor closed by a
   * lower one, and keep the rate they started with.
   *
   * @throws {RangeError} for a list that does not parse (nothing changes then).
   */
  setAccess(access: SourceAccess): void {
    const rules = accessRules(access);
    this.#access = rules;
    if (rules === undefined || (rules.allow === undefined && rules.deny === undefined)) return;
    let closed = 0;
    for (const connection of this.#connections) {
      // Accepted while no list was set, a connection kept no address: its downstream has it.
      const address = connection.address ?? addressOf(connection.downstream);
      if (address === undefined || refusal(rules, address) === undefined) continue;
      stop(connection, "denied");
      closed++;
    }
    if (closed > 0) {
      this.#logger.warning(
        "Closing {count} open connection(s) from sources the reloaded --allow/--deny refuse",
        { count: closed },
      );
    }
  }

  /**
   * Gives back every per-source place this proxy's open connections hold (its worker is about to
   * be ended, and no connection of it will end on its own).
   */
  releaseSources(): void {
    for (const connection of this.#connections) this.#releaseSource(connection);
  }

  /** Number of connections currently being served. */
  get activeConnections(): number {
    return this.#connections.size;
  }

  /** Waits for every open connection to end on its own (use after {@linkcode stopAccepting}). */
  async drained(): Promise<void> {
    while (this.#connections.size > 0) {
      await Promise.all([...this.#connections].map((connection) => connection.task));
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #acceptLoop(listener: Deno.Listener): Promise<void> {
    return acceptLoop(listener, (conn) => this.#accept(conn), {
      // A listener retired by setTls is closed on purpose too.
      closed: () => this.#closing || this.#listener !== listener,
      label: formatAddress(this.#options.listen),
      logger: this.#logger,
      signal: this.#closeAll.signal,
      onConnectionError: () => this.stats.acceptErrors++,
      onResourceError: () => this.stats.acceptResourceErrors++,
    });
  }

  /**
   * Serves a downstream connection that did not come from this proxy's listener (a WebSocket
   * client, see `websocket_listener.ts`) exactly as an accepted one: admission and
   * `--max-connections`, the connection mode, dial, bridge, stats, access log and close reasons.
   * Once the proxy stops accepting, `conn` is closed at once.
   */
  serve(conn: Deno.Conn): void {
    if (this.#closing) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
      return;
    }
    // Step 1 ran before the upgrade request was read (#webSocketProxyHeader): `conn`'s address
    // is the header's client.
    this.#serve(conn, formatAddress(conn.remoteAddr as Deno.NetAddr));
  }

  /** Step 1 (`--accept-proxy`) if it is on, then the rest: every accepted connection. */
  #accept(conn: Deno.Conn): void {
    const peer = formatAddress(conn.remoteAddr as Deno.NetAddr);
    if (this.#acceptProxy !== undefined) return this.#readProxyHeader(conn, peer);
    this.#serve(conn, peer);
  }

  /** Steps 2 to 4 of a connection whose client is `peer` (the real one, after step 1). */
  #serve(conn: Deno.Conn, peer: string, pending?: Connection): void {
    if (this.#mux !== undefined) {
      if (pending !== undefined) this.#connections.delete(pending);
      return this.#acceptMux(this.#mux, conn, peer);
    }
    const proxied = conn instanceof ProxiedConn ? conn : undefined;
    // Every field in the literal: one shape for every connection record.
    const connection: Connection = pending ?? {
      controller: new AbortController(),
      client: undefined,
      state: new BridgeState(),
      dialing: false,
      task: DONE,
      proxied,
      source: undefined,
      address: undefined,
      downstream: conn,
    };
    connection.proxied = proxied;
    connection.downstream = conn;
    // Added first: #handle removes it when it ends, possibly before returning its promise.
    this.#connections.add(connection);
    connection.task = this.#handle(conn, connection, peer);
  }

  /**
   * Step 1, `--accept-proxy`: a listed peer's connection is served once its PROXY header is read
   * (with the client it names as `peer`); any other's at once, its first bytes watched for a
   * header it may not send.
   */
  #readProxyHeader(conn: Deno.Conn, transport: string): void {
    if (!this.#acceptProxy!.has((conn.remoteAddr as Deno.NetAddr).hostname)) {
      const watched = new ProxiedConn(conn, {
        onHeader: () =>
          this.#proxyHeaderFailed(
            "untrusted",
            transport,
            "a PROXY header from a peer not in --accept-proxy",
          ),
      });
      return this.#serve(watched, transport);
    }
    const connection: Connection = {
      controller: new AbortController(),
      client: undefined,
      state: new BridgeState(),
      dialing: false,
      task: DONE,
      proxied: undefined,
      source: undefined,
      address: undefined,
      downstream: undefined,
    };
    this.#connections.add(connection);
    if (this.#closeAll.signal.aborted) connection.controller!.abort();
    connection.task = this.#headerOf(conn, transport, connection.controller!.signal).then(
      (read) => {
        if (read === undefined) this.#connections.delete(connection);
        else this.#serve(read.downstream, read.peer, connection);
      },
    ).catch((error) => {
      this.#connections.delete(connection);
      this.#logger.error("Unexpected error in a connection: {error}", { error: String(error) });
    });
  }

  /**
   * Reads the PROXY header of `conn`, from the listed peer `transport`: resolves with the
   * connection as the header's client, or undefined when it was closed (counted, logged,
   * access-logged; aborted by `signal`: only when `countAborted`).
   */
  async #headerOf(
    conn: Deno.Conn,
    transport: string,
    signal: AbortSignal,
    countAborted = true,
  ): Promise<{ downstream: Deno.Conn; peer: string } | undefined> {
    const result = await readProxyHeader(conn, {
      timeoutMs: this.#options.acceptProxyTimeoutMs ?? PROXY_DEFAULTS.acceptProxyTimeoutMs,
      signal,
    });
    if (!result.ok && result.kind === "aborted" && !countAborted) return undefined;
    if (!result.ok) {
      this.stats.connectionsTotal++;
      const reason: CloseReason = result.kind === "closed"
        ? "client_closed"
        : result.kind === "aborted"
        ? "shutdown"
        : "proxy_header";
      this.stats.recordClose(reason);
      this.#logRefused(transport, reason);
      if (reason === "proxy_header") {
        this.#proxyHeaderFailed(result.kind as ProxyHeaderFailure, transport, result.reason);
      }
      return undefined;
    }
    this.stats.proxyHeaders++;
    const { source, destination } = result.header;
    const downstream = source === undefined && result.held.length === 0
      ? conn
      : new ProxiedConn(conn, {
        remoteAddr: source && { transport: "tcp", ...source },
        localAddr: destination && { transport: "tcp", ...destination },
        held: result.held,
      });
    const peer = source === undefined ? transport : formatAddress(source);
    this.#logger.debug("PROXY header from {transport}: client {downstream}", {
      transport,
      downstream: peer,
    });
    return { downstream, peer };
  }

  /**
   * Step 1 for a WebSocket client (`--accept-proxy`): a listed peer's header, read before its
   * upgrade request; any other peer's connection as it is. `signal`: the WebSocket listener cut
   * the handshake short (and counted it).
   */
  #webSocketProxyHeader(conn: Deno.Conn, signal: AbortSignal): Promise<Deno.Conn | undefined> {
    const remote = conn.remoteAddr as Deno.NetAddr;
    if (this.#acceptProxy === undefined || !this.#acceptProxy.has(remote.hostname)) {
      return Promise.resolve(conn);
    }
    return this.#headerOf(conn, formatAddress(remote), signal, false).then((read) =>
      read?.downstream
    );
  }

  /** Counts and logs (at most a line a second per kind) a connection closed at step 1. */
  #proxyHeaderFailed(kind: ProxyHeaderFailure, transport: string, reason: string): void {
    this.stats[PROXY_HEADER_COUNTERS[kind]]++;
    const skipped = this.#proxyHeaderLog.take(kind, Date.now());
    if (skipped === undefined) return;
    this.#logger.warning("Closed {downstream}: {reason} (PROXY header {kind}){skipped}", {
      downstream: transport,
      reason,
      kind,
      skipped: heldText(skipped),
    });
  }

  // The access-log callback of one connection: field by field, one object per line, not a rest
  // copy and a spread.
  #recordEnd(
    acceptedAtMs: number,
    peer: string,
    proxied: ProxiedConn | undefined,
  ): (s: ConnectionSummary) => void {
    return (s) =>
      this.#accessLog?.({
        startedAtMs: acceptedAtMs,
        client: peer,
        upstream: s.upstream,
        durationMs: s.durationMs,
        bytesFromClient: s.bytesFromClient,
        bytesFromUpstream: s.bytesFromUpstream,
        reqs: s.reqs,
        acks: s.acks,
        naks: s.naks,
        invalid: s.invalid,
        latencyP50Ms: s.latencyP50Ms,
        latencyMaxMs: s.latencyMaxMs,
        failovers: s.failovers,
        reason: closeReason(proxied, s.reason),
      });
  }

  // An access-log line for a connection that ended before it was bridged.
  #logRefused(client: string, reason: CloseReason): void {
    this.#accessLog?.({
      startedAtMs: Date.now(),
      client,
      upstream: "",
      durationMs: 0,
      bytesFromClient: 0,
      bytesFromUpstream: 0,
      reqs: 0,
      acks: 0,
      naks: 0,
      invalid: 0,
      latencyP50Ms: NaN,
      latencyMaxMs: NaN,
      failovers: 0,
      reason,
    });
  }

  /**
   * Counts a new downstream from client `peer` in, or refuses it at `--max-connections` (closing
   * it): returns `peer` when admitted. Undo with {@linkcode #release}.
   */
  #admit(downstream: Deno.Conn, peer: string): string | undefined {
    const stats = this.stats;
    stats.connectionsTotal++;
    const gate = this.#options.connectionGate;
    const maxConnections = gate
      ? Atomics.load(gate, 1)
      : this.#options.maxConnections ?? PROXY_DEFAULTS.maxConnections;
    // With a shared gate the count is the process's: taken first, given back when refused.
    const open = gate ? Atomics.add(gate, 0, 1) : stats.connectionsActive;
    if (open >= maxConnections) {
      if (gate) Atomics.sub(gate, 0, 1);
      stats.connectionsRejected++;
      stats.recordClose("max_connections");
      this.#logRefused(peer, "max_connections");
      // A line a second at most: a connect flood at the limit must not flood the log too.
      const held = this.#refusalLog.take("max_connections", Date.now());
      if (held !== undefined) {
        this.#logger.warning(
          "Rejected {downstream}: {active} connections open (--max-connections){held}",
          { downstream: peer, active: open, held: heldText(held) },
        );
      }
      downstream.close();
      return undefined;
    }
    stats.connectionsActive++;
    if (gate) Atomics.add(gate, 2 + (this.#options.gateSlot ?? 0), 1);
    try {
      // A TLS or WebSocket downstream has no socket option of its own to set.
      (downstream as Partial<Deno.TcpConn>).setNoDelay?.(true);
    } catch {
      // The client is already gone; the first read says so.
    }
    return peer;
  }

  /** Counts an admitted connection out, with why it ended. */
  #release(reason: CloseReason): void {
    const stats = this.stats;
    stats.connectionsActive--;
    const gate = this.#options.connectionGate;
    if (gate) {
      Atomics.sub(gate, 2 + (this.#options.gateSlot ?? 0), 1);
      Atomics.sub(gate, 0, 1);
    }
    stats.recordClose(reason);
  }

  /**
   * A `--mux` client: no frame of this proxy's waits for it (an idle client keeps only its own);
   * the hub's `ended` hook counts it out.
   */
  #acceptMux(hub: MuxHub, downstream: Deno.Conn, source: string): void {
    const connection: Connection = {
      controller: undefined,
      client: undefined,
      state: new BridgeState(),
      dialing: false,
      task: DONE,
      proxied: downstream instanceof ProxiedConn ? downstream : undefined,
      source: undefined,
      address: undefined,
      downstream,
    };
    if (
      this.#access !== undefined &&
      !this.#checkSource(downstream, (downstream.remoteAddr as Deno.NetAddr).hostname, connection)
    ) return;
    const peer = this.#admit(downstream, source);
    if (peer === undefined) {
      this.#releaseSource(connection);
      return;
    }
    this.#connections.add(connection);
    if (this.#handshakes !== undefined && isTls(downstream)) {
      // Only a TLS client waits here: the plain path stays synchronous.
      connection.controller = new AbortController();
      if (this.#closeAll.signal.aborted) connection.controller.abort();
      connection.task = this.#muxAfterHandshake(hub, downstream, connection, peer);
      return;
    }
    this.#startMuxClient(hub, downstream, connection, peer);
  }

  /** A TLS `--mux` client: its handshake, then the hub (or counted out). */
  async #muxAfterHandshake(
    hub: MuxHub,
    downstream: Deno.Conn,
    connection: Connection,
    peer: string,
  ): Promise<unknown> {
    const cut = await this.#handshake(downstream, peer, connection.controller!.signal);
    connection.controller = undefined;
    if (cut !== undefined) {
      this.#connections.delete(connection);
      this.#releaseSource(connection);
      this.#release(cut);
      return;
    }
    this.#startMuxClient(hub, downstream, connection, peer);
    return connection.task;
  }

  #startMuxClient(
    hub: MuxHub,
    downstream: Deno.Conn,
    connection: Connection,
    peer: string,
  ): void {
    const accessLog = this.#accessLog;
    const grant = connection.source;
    const client = hub.client(downstream, {
      config: this.#engine,
      label: peer,
      state: connection.state,
      owner: connection,
      onEnd: accessLog === undefined
        ? undefined
        : this.#recordEnd(Date.now(), peer, connection.proxied),
      rate: grant !== undefined && grant.rate > 0 ? grant : undefined,
    });
    connection.client = client;
    if (this.#closeAll.signal.aborted) client.stop();
    connection.task = client.run();
  }

  /**
   * Step 3, the TLS handshake of an admitted client (with `tls`): resolves with `undefined` once
   * done, or with why the client was closed (counted, logged, access-logged).
   */
  async #handshake(
    downstream: Deno.Conn,
    peer: string,
    signal: AbortSignal,
  ): Promise<CloseReason | undefined> {
    const cut = await this.#handshakes!.run(downstream, peer, signal);
    if (cut !== undefined) this.#logRefused(peer, cut);
    return cut;
  }

  /** The hub's `ended` hook: a mux client has ended. */
  #muxEnded(owner: unknown, reason: CloseReason): void {
    const connection = owner as Connection;
    if (!this.#connections.delete(connection)) return;
    this.#releaseSource(connection);
    this.#release(closeReason(connection.proxied, reason));
  }

  // Serves one connection and removes it from #connections when done; never rejects.
  async #handle(downstream: Deno.Conn, connection: Connection, source: string): Promise<void> {
    try {
      if (
        this.#access !== undefined &&
        !this.#checkSource(downstream, (downstream.remoteAddr as Deno.NetAddr).hostname, connection)
      ) return;
      const peer = this.#admit(downstream, source);
      if (peer === undefined) return;
      const proxied = connection.proxied;
      // `--send-proxy`: every upstream connection of this client starts with its header.
      const target = this.#sendProxy === 0
        ? this.#target
        : new SendProxyTarget(this.#target, sendProxyHeader(this.#sendProxy, downstream));
      const acceptedAtMs = this.#accessLog === undefined ? 0 : Date.now();
      const forward = this.#forwardText;
      let reason: CloseReason = "client_closed";
      const controller = connection.controller!;
      if (this.#closeAll.signal.aborted) controller.abort();
      try {
        if (this.#handshakes !== undefined && isTls(downstream)) {
          const cut = await this.#handshake(downstream, peer, controller.signal);
          if (cut !== undefined) {
            reason = cut;
            return;
          }
        }
        // Dialing lives in its own function so that what only the dial needs (the first-bytes
        // reader, its abort plumbing, the retry callback) is not kept alive by this frame while
        // the connection is bridged.
        const dialed = await this.#dial(downstream, connection, peer, target);
        if (typeof dialed === "string") {
          reason = closeReason(proxied, dialed);
          this.#logRefused(peer, reason);
          return;
        }
        this.#logger.debug("Bridging {downstream} -> {upstream}", {
          downstream: peer,
          upstream: forward,
        });
        reason = await bridge(downstream, dialed.upstream, {
          stats: this.stats,
          config: this.#engine,
          target,
          logger: this.#logger,
          signal: controller.signal,
          label: `${peer} -> ${dialed.name}`,
          held: dialed.held,
          state: connection.state,
          lease: dialed.lease,
          rate: connection.source !== undefined && connection.source.rate > 0
            ? connection.source
            : undefined,
          onEnd: this.#accessLog === undefined
            ? undefined
            : this.#recordEnd(acceptedAtMs, peer, proxied),
        });
        this.#logger.debug("Closed {downstream} -> {upstream}: {reason}", {
          downstream: peer,
          upstream: forward,
          reason,
        });
      } finally {
        this.#release(closeReason(proxied, reason));
      }
    } catch (error) {
      this.#logger.error("Unexpected error in a connection: {error}", { error: String(error) });
    } finally {
      this.#releaseSource(connection);
      this.#connections.delete(connection);
    }
  }

  /**
   * Step 2 of the accept pipeline (docs/edge.md): `--allow`/`--deny` on the source address (text
   * or 16 bytes), then `--max-connections-per-source`, before a byte of the client is read.
   * Sets `connection`'s place in the per-source table (unset when no per-source limit is on, or
   * the table had no room) and address. Returns false when it is refused: then it is closed,
   * counted, in the access log, and logged (a line a second per kind at most).
   */
  #checkSource(
    downstream: Deno.Conn,
    address: string | Uint8Array,
    connection: Connection,
  ): boolean {
    const rules = this.#access!;
    const bytes = typeof address === "string" ? parseIp(address) : address;
    let refused: "denied" | "source_limit" | undefined;
    let why = bytes === undefined
      ? rules.allow === undefined ? undefined : "not an IP address (--allow)"
      : refusal(rules, bytes);
    if (why !== undefined) {
      refused = "denied";
    } else if (bytes !== undefined && (rules.maxPerSource > 0 || rules.rate > 0)) {
      const table = this.#sourceTable ??= new SourceTable(
        createSourceTableBuffer(this.#options.maxConnections ?? PROXY_DEFAULTS.maxConnections),
      );
      // A second's worth: a client may send a pipelined batch at once, and over any T seconds
      // no more than rate × (T + 1) REQs go through.
      const burst = Math.max(1, rules.rate);
      const slot = table.open(bytes, rules.maxPerSource, burst, sourceClock());
      if (slot === SOURCE_LIMITED) {
        refused = "source_limit";
        why = `${rules.maxPerSource} connections open (--max-connections-per-source)`;
      } else if (slot === TABLE_FULL) {
        // Fail open: every live entry holds a connection, so --max-connections still bounds
        // the process; refusing would shut newcomers out for others' sake.
        this.stats.sourceTableFull++;
        const held = this.#refusalLog.take("table_full", Date.now());
        if (held !== undefined) {
          this.#logger.warning(
            "The per-source table has no room for {downstream}: served without per-source limits{held}",
            {
              downstream: formatAddress(downstream.remoteAddr as Deno.NetAddr),
              held: heldText(held),
            },
          );
        }
      } else {
        connection.source = new SourceRate(table, slot, rules.rate, burst);
      }
    }
    if (refused === undefined) {
      if (rules.allow !== undefined || rules.deny !== undefined) connection.address = bytes;
      return true;
    }
    this.#refuseSource(downstream, refused, why!);
    return false;
  }

  /**
   * `--allow`/`--deny` alone, for a WebSocket client before its upgrade request is read: true
   * when its address is let in (the rest of step 2 runs once it is upgraded), else it is closed
   * and counted like any refused client.
   */
  #allowedSource(downstream: Deno.Conn): boolean {
    const rules = this.#access;
    if (rules === undefined || (rules.allow === undefined && rules.deny === undefined)) {
      return true;
    }
    const bytes = parseIp((downstream.remoteAddr as Deno.NetAddr).hostname);
    const why = bytes === undefined ? "not an IP address (--allow)" : refusal(rules, bytes);
    if (why === undefined) return true;
    this.#refuseSource(downstream, "denied", why);
    return false;
  }

  /** Closes a client step 2 refused: counted, in the access log, logged (a line a second). */
  #refuseSource(downstream: Deno.Conn, refused: "denied" | "source_limit", why: string): void {
    const stats = this.stats;
    stats.connectionsTotal++;
    stats.recordClose(refused);
    const peer = formatAddress(downstream.remoteAddr as Deno.NetAddr);
    this.#logRefused(peer, refused);
    const held = this.#refusalLog.take(refused, Date.now());
    if (held !== undefined) {
      this.#logger.warning("Refused {downstream}: {why}{held}", {
        downstream: peer,
        why,
        held: heldText(held),
      });
    }
    downstream.close();
  }

  /** Counts a connection out of its source's entry (once). */
  #releaseSource(connection: Connection): void {
    const source = connection.source;
    if (source === undefined) return;
    connection.source = undefined;
    source.table.close(source.slot);
  }

  // Dials the upstream while reading the client's first bytes, so they are neither lost nor left
  // unread through the retries; a client that fails, or leaves without sending, ends the dial.
  // Resolves with the upstream and the held bytes, or with why the connection ended (the
  // downstream is closed then).
  async #dial(
    downstream: Deno.Conn,
    connection: Connection,
    peer: string,
    target: UpstreamTarget,
  ): Promise<Dialed | CloseReason> {
    const stats = this.stats;
    const closing = connection.controller!.signal;
    // One controller ends the dial, aborted by the client going away or by the connection
    // closing (cheaper than AbortSignal.any, which leaves weak references on `closing`).
    const stop = new AbortController();
    let goneWhy: "eof" | "error" | undefined;
    const onClosing = () => stop.abort();
    closing.addEventListener("abort", onClosing, { once: true });
    if (closing.aborted) stop.abort();
    const first = new FirstBytesReader(downstream, {
      limit: this.#options.maxHeldBytes,
      initialSize: this.#engine.initialBufferSize,
      onEnd: (end, held) => {
        if (end === "eof" && held > 0) return; // half-closed after speaking: still owed replies
        goneWhy = end;
        stop.abort();
      },
    });
    connection.dialing = true;
    try {
      const dialed = await target.dial({
        retries: this.#options.connectRetries ?? PROXY_DEFAULTS.connectRetries,
        backoffMs: this.#options.connectBackoffMs,
        signal: stop.signal,
        onRetry: (retry, delayMs, error) => {
          stats.upstreamConnectRetries++;
          this.#logger.info("{message}; retry {retry} in {delayMs} ms for {downstream}", {
            message: error.message,
            retry,
            delayMs: Math.round(delayMs),
            downstream: peer,
            upstream: this.#forwardText,
          });
        },
      });
      return { upstream: dialed.conn, name: dialed.upstream, lease: dialed, held: first.release() };
    } catch (error) {
      const reason: CloseReason = closing.aborted
        ? closing.reason === "denied" ? "denied" : "shutdown"
        : goneWhy === "error"
        ? "downstream_error"
        : goneWhy === "eof"
        ? "client_closed"
        : "upstream_unreachable";
      if (reason === "upstream_unreachable") {
        stats.upstreamErrors++;
        this.#logger.warning("{message}; closing downstream {downstream}", {
          message: error instanceof UpstreamError ? error.message : String(error),
          downstream: peer,
          upstream: this.#forwardText,
        });
      }
      downstream.close();
      await first.done;
      return reason;
    } finally {
      connection.dialing = false;
      closing.removeEventListener("abort", onClosing);
    }
  }
}

const DONE: Promise<unknown> = Promise.resolve();

/** The 16 bytes of `downstream`'s client address; `undefined` when unknown. */
function addressOf(downstream: Deno.Conn | undefined): Uint8Array | undefined {
  const hostname = (downstream?.remoteAddr as Deno.NetAddr | undefined)?.hostname;
  return hostname === undefined ? undefined : parseIp(hostname);
}

/** Why `rules` refuse the source `address` (16 bytes), or `undefined` when they let it in. */
function refusal(rules: AccessRules, address: Uint8Array): string | undefined {
  if (rules.deny?.has(address)) return "--deny";
  if (rules.allow !== undefined && !rules.allow.has(address)) return "not in --allow";
  return undefined;
}

/** Whether `conn` came from a TLS listener (a WebSocket client served beside it did not). */
function isTls(conn: Deno.Conn): boolean {
  return typeof (conn as Partial<Deno.TlsConn>).handshake === "function";
}

/** The counter of each way a connection is closed at the PROXY header step. */
const PROXY_HEADER_COUNTERS = {
  missing: "proxyHeaderMissing",
  malformed: "proxyHeaderMalformed",
  oversized: "proxyHeaderOversized",
  untrusted: "proxyHeaderUntrusted",
  timeout: "proxyHeaderTimeout",
  truncated: "proxyHeaderTruncated",
} as const satisfies Record<ProxyHeaderFailure, keyof Stats>;

/** The reason a connection ended: `proxy_header` when it was closed for a header it may not send. */
function closeReason(proxied: ProxiedConn | undefined, reason: CloseReason): CloseReason {
  return proxied?.refused ? "proxy_header" : reason;
}

/** Ends a connection (reason `shutdown`, or `denied` when a reload denied its source). */
function stop(connection: Connection, reason: "shutdown" | "denied" = "shutdown"): void {
  if (connection.client !== undefined) connection.client.stop(reason);
  else connection.controller?.abort(reason);
}
