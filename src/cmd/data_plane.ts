/**
 * One data plane of `foo-proxy proxy`: a listener, the bridge engine and its upstream
 * connections, run in a Worker (or, when workers cannot be started, on the main thread) and
 * driven by the supervisor over messages. Its statistics are plain fields on the hot path,
 * copied into its row of shared memory a few times a second and whenever the supervisor asks;
 * its logs and access-log lines go to the supervisor, which owns stdout, stderr and every file.
 * It decides nothing about upstream health: it reports failures and follows the states the
 * supervisor sends.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { Address } from "../net/address.ts";
import { type AccessRecord, formatAccessLine } from "../proxy/access_log.ts";
import type { EngineOptions } from "../proxy/engine_config.ts";
import { Proxy, type SourceAccess } from "../proxy/proxy.ts";
import { SourceTable } from "../proxy/source_table.ts";
import type { UpstreamSpec } from "../proxy/upstream_spec.ts";
import type { UpstreamTls } from "../proxy/upstream.ts";
import type { TlsKeyPair } from "../proxy/tls_termination.ts";
import {
  type BalancePolicy,
  type MemberState,
  type PassiveEvent,
  UpstreamPool,
  type UpstreamSnapshot,
} from "../proxy/upstream_pool.ts";
import { systemClock } from "../stats/clock.ts";
import { Stats } from "../stats/stats.ts";
import { StatsRow } from "../stats/stats_row.ts";
import { describeError } from "../net/describe_error.ts";
import { installLastResort } from "./last_resort.ts";
import { setupLogging } from "./logging.ts";
import type { ProxyConfig } from "./proxy_config.ts";
import { poolOptionsOf, proxyOptionsOf } from "./proxy_settings.ts";

/** What a data plane is started with. */
export interface PlaneInit {
  /** Its number (0 first), in logs and the per-worker stats. */
  index: number;
  config: ProxyConfig;
  /** Where to listen: `config.listen` with the port the first plane bound. */
  listen: Address;
  /** Where WebSocket clients connect (`--ws-listen`, with the port the first plane bound); null: none. */
  wsListen: Address | null;
  /** Bind with `SO_REUSEPORT` (more than one plane). */
  reusePort: boolean;
  /** The key pair to terminate TLS with (`--tls-cert`, read by the supervisor); unset: plain TCP. */
  tls?: TlsKeyPair;
  /** Its stats row (see `stats_row.ts`). */
  row: SharedArrayBuffer;
  /** The process's connection gate (see `ProxyOptions.connectionGate`). */
  gate: SharedArrayBuffer;
  /** The process's per-source table (see `source_table.ts`). */
  sources: SharedArrayBuffer;
  /** Every plane's connections per upstream (see `SharedConnections`): leastconn's counts. */
  shared: {
    buffer: SharedArrayBuffer;
    capacity: number;
    planes: number;
    slots: Record<string, number>;
  };
  /** The upstream states the supervisor decided. */
  states: Record<string, MemberState>;
  /** Whether it runs in a Worker of its own (it sets up its logging and last resort then). */
  thread: boolean;
  /** Time between two copies of its stats into its row, in ms. */
  flushMs: number;
  /**
   * `FOO_PROXY_TEST_HOOKS`: what the `crash` message does (tests of worker replacement and of
   * a frozen worker): throw an uncaught error, or spin for ever; unset: nothing.
   */
  testHooks?: "crash" | "freeze";
  /**
   * `--upstream-tls`: the PEM texts the supervisor read from its files (a Worker is handed text,
   * never a path to read). Unset: plain TCP.
   */
  upstreamTls?: UpstreamTls;
}

/** What the supervisor tells a plane. */
export type ToPlane =
  | { t: "init"; init: PlaneInit }
  | { t: "flush"; id: number }
  | { t: "engine"; changes: Omit<EngineOptions, "resume" | "timers" | "random"> }
  | { t: "access"; access: SourceAccess }
  | {
    t: "upstreams";
    specs: UpstreamSpec[];
    states: Record<string, MemberState>;
    slots: Record<string, number>;
  }
  | { t: "policy"; policy: BalancePolicy }
  | { t: "upstream-tls"; tls: UpstreamTls | undefined }
  | { t: "states"; states: Record<string, MemberState> }
  | { t: "log"; level: string; format: string }
  /** A reload's key pair (and handshake deadline): answered with `tls-set`. */
  | { t: "tls"; pair: TlsKeyPair; handshakeTimeoutMs: number }
  | { t: "stop-accepting" }
  | { t: "close-idle" }
  | { t: "close" }
  | { t: "crash" };

/** What a plane tells the supervisor. */
export type FromPlane =
  | { t: "ready"; port: number; wsPort?: number }
  | { t: "failed"; error: string; addrInUse: boolean }
  | { t: "log"; lines: string[] }
  | { t: "access"; lines: string[] }
  | { t: "passive"; name: string; kind: PassiveEvent }
  | { t: "flushed"; id: number; upstreams: UpstreamSnapshot[] }
  | { t: "upstreams"; upstreams: UpstreamSnapshot[] }
  | { t: "accepting-stopped"; active: number }
  /** The reload's key pair serves new clients; `error`: it could not, the old one still does. */
  | { t: "tls-set"; error?: string }
  | { t: "drained" }
  | { t: "idle-closed"; idle: number; busy: number }
  | { t: "stopped"; upstreams: UpstreamSnapshot[] }
  /** An uncaught error: its last counts and lines are out; the supervisor ends and replaces it. */
  | { t: "fatal"; error: string };

/** Either end of a Worker, or a `MessagePort` of an in-process channel. */
export interface PlaneEndpoint {
  postMessage(message: unknown): void;
  onmessage: ((event: MessageEvent) => void) | null;
}

/**
 * Lines batched for 10 ms and sent in one message, at most {@linkcode POSTED_MAX_BYTES} of them
 * per batch: past it a line is dropped and counted (`onDrop`), so a flood of log lines cannot
 * queue without bound on its way to the supervisor (whose own writers drop and count the same way
 * when stderr or the file stalls).
 */
export class PostedLines {
  /** Counts a dropped line; unset: dropped uncounted. */
  onDrop: (() => void) | undefined;
  #lines: string[] = [];
  #bytes = 0;
  #max: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #send: (lines: string[]) => void;

  /** Batches lines for `send`; `maxBytes` (UTF-16 units) per batch. */
  constructor(send: (lines: string[]) => void, maxBytes = POSTED_MAX_BYTES) {
    this.#send = send;
    this.#max = maxBytes;
  }

  /** Queues `line` (with its newline) for the next batch, or drops and counts it. */
  push(line: string): void {
    if (this.#bytes + line.length > this.#max && this.#lines.length > 0) {
      this.onDrop?.();
      return;
    }
    this.#lines.push(line);
    this.#bytes += line.length;
    this.#timer ??= setTimeout(() => this.flush(), 10);
  }

  /** Sends what is queued now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#lines.length === 0) return;
    const lines = this.#lines;
    this.#lines = [];
    this.#bytes = 0;
    this.#send(lines);
  }
}

/** Text a plane sends the supervisor per 10 ms batch of log (or access-log) lines, at most. */
export const POSTED_MAX_BYTES = 256 * 1024;

/**
 * Serves a data plane on `endpoint`: waits for `init`, starts, and follows the supervisor's
 * messages until `close` (then it reports `stopped` and the supervisor ends it). The drain is
 * the supervisor's, step by step for every plane at once: `stop-accepting`, then (at the drain
 * timeout) `close-idle`, then `close`.
 */
export function serveDataPlane(endpoint: PlaneEndpoint): void {
  const post = (message: FromPlane) => endpoint.postMessage(message);
  let plane: Promise<DataPlane | undefined> | undefined;
  endpoint.onmessage = (event: MessageEvent) => {
    const message = event.data as ToPlane;
    if (message.t === "init") {
      plane = startPlane(message.init, post);
      return;
    }
    void plane?.then((p) => p?.handle(message));
  };
}

async function startPlane(
  init: PlaneInit,
  post: (message: FromPlane) => void,
): Promise<DataPlane | undefined> {
  const logs = new PostedLines((lines) => post({ t: "log", lines }));
  let logging: Disposable | undefined;
  if (init.thread) {
    logging = setupLogging({
      level: init.config.logLevel,
      format: init.config.logFormat,
      write: (line) => logs.push(line),
    });
  }
  // Set once built: the error handler, installed first, hands over what it has counted.
  const built: { plane?: DataPlane } = {};
  if (init.thread) {
    // An uncaught error ends the plane, but through the supervisor: Deno would print its own
    // multi-line report on stderr (not in --log-format, past the bounded writer), and what the
    // plane counted and logged since its last flush would be lost with it.
    let fatal = false;
    globalThis.addEventListener("error", (event: ErrorEvent) => {
      event.preventDefault();
      if (fatal) return;
      fatal = true;
      try {
        built.plane?.lastWords();
      } finally {
        logs.flush();
        post({ t: "fatal", error: event.message });
        // Nothing more runs here: a connection ending now would give its place in the
        // process's connection gate back a second time, after the supervisor took this plane's
        // count out of it on "fatal".
        (globalThis as unknown as { close(): void }).close();
      }
    });
  }
  const plane = new DataPlane(init, post, logs, logging);
  built.plane = plane;
  try {
    const addr = await plane.proxy.start();
    post({ t: "ready", port: addr.port, wsPort: plane.proxy.webSocketAddr?.port });
    return plane;
  } catch (error) {
    // Nothing of it runs on: its flush timer would keep an in-process plane's thread alive.
    plane.lastWords();
    logs.flush();
    post({
      t: "failed",
      error: describeError(error),
      addrInUse: error instanceof Deno.errors.AddrInUse,
    });
    return undefined;
  }
}

class DataPlane {
  readonly proxy: Proxy;
  #init: PlaneInit;
  #post: (message: FromPlane) => void;
  #logs: PostedLines;
  #access: PostedLines;
  #logging: Disposable | undefined;
  #stats = new Stats({ clock: systemClock });
  #row: StatsRow;
  #pool: UpstreamPool;
  #flushTimer: ReturnType<typeof setInterval>;
  #ticks = 0;

  constructor(
    init: PlaneInit,
    post: (message: FromPlane) => void,
    logs: PostedLines,
    logging: Disposable | undefined,
  ) {
    this.#init = init;
    this.#post = post;
    this.#logs = logs;
    this.#logging = logging;
    const { config } = init;
    const logger = getLogger(["foo-proxy", "proxy"]);
    const stats = this.#stats;
    this.#row = new StatsRow(stats.latency.histogram.bounds.length, init.row);
    if (init.thread) installLastResort(stats, logger);
    this.#pool = new UpstreamPool(config.upstreams, {
      ...poolOptionsOf(config),
      tls: init.upstreamTls,
      logger,
      counters: stats,
      idleCounters: stats,
      onPassive: (name, kind) => post({ t: "passive", name, kind }),
      shared: {
        counts: new Int32Array(init.shared.buffer),
        plane: init.index,
        planes: init.shared.planes,
        capacity: init.shared.capacity,
        slots: init.shared.slots,
      },
    });
    this.#pool.applyStates(init.states);
    stats.upstreams = () => this.#pool.snapshot();
    this.#access = new PostedLines((lines) => post({ t: "access", lines }));
    this.#access.onDrop = () => stats.accessLogLinesDropped++;
    logs.onDrop = () => stats.logLinesDropped++;
    const format = config.accessLog === "json" ? "json" : "text";
    this.proxy = new Proxy({
      target: this.#pool,
      accessLog: config.accessLog === "off"
        ? undefined
        : (record: AccessRecord) => this.#access.push(formatAccessLine(format, record)),
      ...proxyOptionsOf(config),
      listen: init.listen,
      forward: config.forward,
      stats,
      logger,
      reusePort: init.reusePort,
      tls: init.tls,
      connectionGate: new Int32Array(init.gate),
      webSocket: init.wsListen === null ? undefined : {
        listen: init.wsListen,
        origins: config.wsOrigins,
      },
      gateSlot: init.index,
      sourceTable: new SourceTable(init.sources),
      announce: false,
    });
    // Rows a few times a second; the per-upstream figures every fifth time (they are many
    // objects with a large set), and whenever the supervisor asks.
    this.#flushTimer = setInterval(() => {
      this.#row.write(stats, stats.clock());
      if (++this.#ticks % 5 === 0) post({ t: "upstreams", upstreams: this.#pool.snapshot() });
    }, init.flushMs);
  }

  handle(message: ToPlane): void {
    switch (message.t) {
      case "flush":
        this.#row.write(this.#stats, this.#stats.clock());
        this.#post({ t: "flushed", id: message.id, upstreams: this.#pool.snapshot() });
        break;
      case "engine":
        this.proxy.updateEngine(message.changes);
        break;
      case "access":
        this.proxy.setAccess(message.access);
        break;
      case "upstreams":
        this.#pool.setSlots(message.slots);
        this.#pool.update(message.specs);
        this.#pool.applyStates(message.states);
        break;
      case "policy":
        this.#pool.setPolicy(message.policy);
        break;
      case "upstream-tls":
        this.#pool.setTls(message.tls);
        break;
      case "states":
        this.#pool.applyStates(message.states);
        break;
      case "log":
        if (this.#logging) {
          this.#logging[Symbol.dispose]();
          this.#logging = setupLogging({
            level: message.level,
            format: message.format,
            write: (line) => this.#logs.push(line),
          });
        }
        break;
      case "tls":
        this.proxy.setTls(message.pair, message.handshakeTimeoutMs).then(
          () => this.#post({ t: "tls-set" }),
          (error) => this.#post({ t: "tls-set", error: describeError(error) }),
        );
        break;
      case "stop-accepting":
        this.proxy.stopAccepting();
        this.#post({ t: "accepting-stopped", active: this.proxy.activeConnections });
        void this.proxy.drained().then(() => this.#post({ t: "drained" }));
        break;
      case "close-idle":
        void this.proxy.closeIdle().then(({ idle, busy }) =>
          this.#post({ t: "idle-closed", idle, busy })
        );
        break;
      case "close":
        void this.#close();
        break;
      case "crash":
        if (this.#init.testHooks === "crash") {
          setTimeout(() => {
            throw new Error(`test hook: data-plane worker ${this.#init.index} crashes`);
          }, 0);
        } else if (this.#init.testHooks === "freeze") {
          setTimeout(() => {
            for (;;) {
              // A busy loop: the worker answers no message again.
            }
          }, 0);
        }
        break;
      case "init":
        break;
    }
  }

  /** Its counts into its row and its pending lines out, at once (it is about to be ended). */
  lastWords(): void {
    clearInterval(this.#flushTimer);
    // Its connections end with it, uncounted by themselves: their sources get their places back.
    this.proxy.releaseSources();
    this.#row.write(this.#stats, this.#stats.clock());
    this.#access.flush();
    this.#post({ t: "upstreams", upstreams: this.#pool.snapshot() });
  }

  async #close(): Promise<void> {
    await this.proxy.close();
    clearInterval(this.#flushTimer);
    await this.#pool.close();
    this.#row.write(this.#stats, this.#stats.clock());
    this.#access.flush();
    this.#logs.flush();
    this.#post({ t: "stopped", upstreams: this.#pool.snapshot() });
  }
}
