/**
 * The supervisor's side of the data planes (`data_plane.ts`): starts N of them (Workers, each
 * with its own `SO_REUSEPORT` listener on one port; or one on the main thread when workers
 * cannot be started), sums their stats rows, relays their logs, takes their failure reports,
 * sends them the upstream states and reloads, replaces one that dies, and drains them all.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Address } from "../net/address.ts";
import type { ShutdownReport } from "../proxy/proxy.ts";
import type { MemberState, PassiveEvent, UpstreamSnapshot } from "../proxy/upstream_pool.ts";
import type { Stats, WorkerStats } from "../stats/stats.ts";
import { StatsRow } from "../stats/stats_row.ts";
import { createSourceTableBuffer } from "../proxy/source_table.ts";
import { DEFAULT_LATENCY_BUCKETS } from "../stats/histogram.ts";
import { waitOrAbort } from "../async/wait_or_abort.ts";
import { describeError } from "../net/describe_error.ts";
import { type FromPlane, type PlaneInit, serveDataPlane, type ToPlane } from "./data_plane.ts";
import type { ProxyConfig } from "./proxy_config.ts";
import type { UpstreamTls } from "../proxy/upstream.ts";
import { canReusePort, type TlsKeyPair } from "../proxy/tls_termination.ts";

/** Options for {@linkcode DataPlanes}. */
export interface DataPlanesOptions {
  config: ProxyConfig;
  /** How many planes. */
  count: number;
  /** Workers (true) or one plane on the main thread (false: `count` must be 1). */
  thread: boolean;
  /** The process-wide `--max-connections`. */
  maxConnections: number;
  /** The upstream states the supervisor's pool decided (sent to each plane as it starts). */
  states: () => Record<string, MemberState>;
  logger: Logger;
  /** Where the supervisor counts `worker_restarts`. */
  own: Stats;
  /** Where the counters of a plane that died are kept (with the recovered totals). */
  base: Stats;
  /** A plane's log lines (each with its newline). */
  onLog: (lines: string[]) => void;
  /** A plane's access-log lines. */
  onAccess: (lines: string[]) => void;
  /** A plane's report of an upstream failure or recovery. */
  onPassive: (name: string, kind: PassiveEvent) => void;
  /** `FOO_PROXY_TEST_HOOKS`: what planes do on `crash` (see `PlaneInit.testHooks`). */
  testHooks?: "crash" | "freeze";
  /** Time between two copies of a plane's stats into its row, in ms. @default {100} */
  flushMs?: number;
  /**
   * A plane that dies within this long of its start died young: it is replaced after a growing
   * backoff (a crash loop), not at once. In ms. @default {1000}
   */
  youngMs?: number;
  /** `--upstream-tls`, its files read (see `PlaneInit.upstreamTls`). Unset: plain TCP. */
  upstreamTls?: UpstreamTls;
  /** The key pair to terminate TLS with (`--tls-cert`); unset: plain TCP. */
  tls?: TlsKeyPair;
  /**
   * Join ports another proxy holds (`--takeover`): no look for a free port first. Every listener
   * sets `SO_REUSEPORT` whenever it can (`--unstable-net`), so that a later takeover can join it.
   */
  share?: boolean;
}

/** The per-upstream figures the planes count (the supervisor's pool has the states). */
export type UpstreamCounts = Pick<
  UpstreamSnapshot,
  "connections_active" | typeof COUNT_FIELDS[number]
>;

/** A plane could not start (the listener could not be bound). */
export class PlaneStartError extends Error {
  /** Whether the address was in use. */
  readonly addrInUse: boolean;
  /** Whether the Worker died before it could say anything (its module did not load). */
  readonly notLoaded: boolean;
  /** Creates the error. */
  constructor(message: string, addrInUse: boolean, notLoaded = false) {
    super(message);
    this.name = "PlaneStartError";
    this.addrInUse = addrInUse;
    this.notLoaded = notLoaded;
  }
}

type Endpoint = Worker | MessagePort;

interface Slot {
  index: number;
  endpoint: Endpoint;
  row: StatsRow;
  /** Its last per-upstream figures. */
  upstreams: UpstreamSnapshot[];
  restarts: number;
  startedAt: number;
  /** Whether it has sent anything (its module loaded and ran). */
  heard: boolean;
  state: "starting" | "running" | "stopping" | "stopped" | "dead";
  ready: PromiseWithResolvers<number>;
  /** Its WebSocket listener's port (once ready); 0: none. */
  wsPort: number;
  flushes: Map<number, () => void>;
  /** Replies awaited, by type: resolved with the reply, or `undefined` if the plane dies. */
  waiting: Map<FromPlane["t"], (message: FromPlane | undefined) => void>;
  /** Its row's write count when the watchdog last saw it move, and when. */
  pulse: { writes: number; at: number };
  /** Whether its row has not moved for `FROZEN_MS` (its event loop does not run). */
  frozen: boolean;
}

const BUCKETS = DEFAULT_LATENCY_BUCKETS.length;

/** Upstream names the shared connection counts have room for, over the process's life. */
export const UPSTREAM_SLOTS = 4096;
/**
 * How long a drain step waits for a plane's answer before ending it: a plane answers each at
 * once, or once the connections it closes have ended (microseconds to milliseconds).
 */
const ANSWER_MS = 5000;
/**
 * A plane whose row has not been written for this long is not running (it writes it every
 * `flushMs`): a busy loop, or a synchronous call that does not return.
 */
const FROZEN_MS = 3000;
/**
 * A plane frozen this long makes `/livez` fail, so an orchestrator restarts the process (the only
 * remedy); long enough that no GC pause or slow synchronous call trips it.
 */
const STUCK_MS = 30_000;
const COUNT_FIELDS = [
  "connections_total",
  "requests",
  "replies",
  "connect_failures",
  "stream_errors",
] as const;

/** See the module docs. */
export class DataPlanes {
  #options: DataPlanesOptions;
  /** The running config (a reload replaces it): what a replacement plane starts with. */
  #config: ProxyConfig;
  /** Where every plane listens (a restart setting: a reload never moves it). */
  #listen: Address;
  #slots: Slot[] = [];
  #gate: SharedArrayBuffer;
  /** The per-source table every plane counts in (`--max-connections-per-source`, rates). */
  #sources: SharedArrayBuffer;
  #gateView: Int32Array;
  /** Each plane's open connections per upstream slot (leastconn over the process). */
  #shared: SharedArrayBuffer;
  #sharedView: Int32Array;
  /** The slot of each upstream name ever configured (never reused for another name). */
  #upstreamSlots: Record<string, number> = {};
  #nextSlot = 0;
  #port = 0;
  /** The port every plane's WebSocket listener is on (`--ws-listen`); 0: none yet. */
  #wsPort = 0;
  #stopping = false;
  /** Whether {@linkcode start} has succeeded: a plane that dies before is no restart. */
  #started = false;
  #nextFlush = 1;
  /** Per-upstream figures of planes that died. */
  #retired = new Map<string, UpstreamCounts>();
  #respawnTimers = new Set<ReturnType<typeof setTimeout>>();
  /** The key pair serving now (a reload replaces it): what a replacement plane starts with. */
  #tls: TlsKeyPair | undefined;
  #watchdog: ReturnType<typeof setInterval> | undefined;

  /** Planes, not started. */
  constructor(options: DataPlanesOptions) {
    if (!options.thread && options.count !== 1) {
      throw new RangeError("Only one data plane runs on the main thread");
    }
    this.#options = options;
    this.#config = options.config;
    this.#listen = options.config.listen;
    this.#tls = options.tls;
    this.#gate = new SharedArrayBuffer(4 * (2 + options.count));
    this.#gateView = new Int32Array(this.#gate);
    Atomics.store(this.#gateView, 1, options.maxConnections);
    // Made whether or not a per-source limit is set, so that a reload can turn one on.
    this.#sources = createSourceTableBuffer(options.maxConnections);
    this.#shared = new SharedArrayBuffer(4 * options.count * UPSTREAM_SLOTS);
    this.#sharedView = new Int32Array(this.#shared);
    this.assignSlots(options.config.upstreams);
  }

  /**
   * Gives each upstream name not seen before a slot of the shared connection counts (past
   * {@linkcode UPSTREAM_SLOTS} names over the process's life, new ones are balanced by each
   * plane's own counts); returns every name's slot, for the planes.
   */
  assignSlots(specs: readonly { name: string }[]): Record<string, number> {
    for (const { name } of specs) {
      if (this.#upstreamSlots[name] === undefined && this.#nextSlot < UPSTREAM_SLOTS) {
        this.#upstreamSlots[name] = this.#nextSlot++;
      }
    }
    return { ...this.#upstreamSlots };
  }

  /** How many planes. */
  get count(): number {
    return this.#options.count;
  }

  /** The port every plane listens on. */
  get port(): number {
    return this.#port;
  }

  /** The port every plane's WebSocket listener is on; 0 without `--ws-listen`. */
  get wsPort(): number {
    return this.#wsPort;
  }

  /** Whether every plane is listening (and the planes are not draining). */
  get listening(): boolean {
    return !this.#stopping && this.#slots.length > 0 &&
      this.#slots.every((s) => s.state === "running" && !s.frozen);
  }

  /**
   * Why the process cannot recover by itself: a worker that has not run for `ms` (a Worker
   * spinning in a loop cannot be ended, and keeps its listener, so the kernel keeps handing it
   * new clients who wait); `undefined` while every worker runs or has only just stalled.
   */
  stuck(ms = STUCK_MS): string | undefined {
    const now = performance.now();
    const stuck = this.#slots.filter((s) => s.frozen && now - s.pulse.at >= ms);
    if (stuck.length === 0) return undefined;
    return `data-plane worker${stuck.length === 1 ? "" : "s"} ${
      stuck.map((s) => s.index).join(", ")
    } not running for ${Math.round((now - stuck[0].pulse.at) / 1000)} s: restart the process`;
  }

  /** Whether the drain has begun. */
  get stopping(): boolean {
    return this.#stopping;
  }

  /** Connections open in the whole process. */
  get activeConnections(): number {
    return Atomics.load(this.#gateView, 0);
  }

  /**
   * Starts the planes: the first binds `config.listen` (port 0: any), the others the port it got.
   * Resolves with that port.
   *
   * @throws {PlaneStartError} when a plane cannot listen (every plane is ended then).
   */
  async start(): Promise<number> {
    const ws = this.#options.config.wsListen;
    // Every listener sets SO_REUSEPORT when it can (workers share the port, a TLS reload opens a
    // second listener, a takeover binds beside): look first that nobody else holds it.
    if (canReusePort() && this.#options.share !== true) {
      assertPortFree(this.#listen);
      if (ws !== null) assertPortFree(ws);
    }
    const first = this.#spawn(0, this.#listen);
    try {
      this.#port = await first.ready.promise;
      this.#wsPort = first.wsPort;
      const rest: Slot[] = [];
      for (let i = 1; i < this.#options.count; i++) {
        rest.push(this.#spawn(i, { ...this.#listen, port: this.#port }));
      }
      await Promise.all(rest.map((s) => s.ready.promise));
    } catch (error) {
      this.terminate();
      throw error;
    }
    this.#started = true;
    this.#watchdog = setInterval(() => this.#watch(), 1000);
    return this.#port;
  }

  /**
   * Says once when a running plane stops running (its row stands still), and fails readiness
   * until it runs again: no message reaches it, so it can be neither asked nor ended (a Worker
   * spinning in a loop keeps its sockets, its listener included, until the process exits), and
   * the kernel keeps handing it its share of new clients, who wait. Only a restart of the
   * process helps; the operator, or the load balancer reading `/readyz`, has to know.
   */
  #watch(): void {
    const now = performance.now();
    for (const slot of this.#slots) {
      if (slot.state !== "running") continue;
      const writes = slot.row.writes;
      if (writes !== slot.pulse.writes) {
        slot.pulse = { writes, at: now };
        if (slot.frozen) {
          slot.frozen = false;
          this.#options.logger.warning("Data-plane worker {worker} runs again", {
            worker: slot.index,
          });
        }
      } else if (!slot.frozen && now - slot.pulse.at >= FROZEN_MS) {
        slot.frozen = true;
        this.#options.logger.error(
          "Data-plane worker {worker} has not run for {seconds} s (a busy loop?): its {open} connection(s) and the new clients the kernel hands it wait; /readyz fails until it runs again (restart the process to end it)",
          {
            worker: slot.index,
            seconds: Math.round((now - slot.pulse.at) / 1000),
            open: Atomics.load(this.#gateView, 2 + slot.index),
          },
        );
      }
    }
  }

  /** The config a plane started from now gets (after a reload). */
  setConfig(config: ProxyConfig): void {
    this.#config = config;
  }

  /** New `--upstream-tls` files (a reload): for every plane running, and those started later. */
  setUpstreamTls(tls: UpstreamTls | undefined): void {
    this.#options = { ...this.#options, upstreamTls: tls };
    this.broadcast({ t: "upstream-tls", tls });
  }

  /** Sets the process-wide connection limit (a reload). */
  setMaxConnections(max: number): void {
    Atomics.store(this.#gateView, 1, max);
  }

  /**
   * Puts `pair` in service on every plane (a reload of `--tls-cert`/`--tls-key`): each opens a
   * listener with it on the port, then closes its old one. Resolves with the planes' errors (each
   * of those keeps its old pair); a plane that does not answer within `ANSWER_MS` is one.
   */
  async setTls(pair: TlsKeyPair, handshakeTimeoutMs: number): Promise<string[]> {
    this.#tls = pair;
    const message: ToPlane = { t: "tls", pair, handshakeTimeoutMs };
    const live = this.#slots.filter((s) => s.state === "running" || s.state === "starting");
    const answers = await Promise.all(live.map(async (slot) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<"late">((resolve) =>
        timer = setTimeout(() => resolve("late"), ANSWER_MS)
      );
      const answer = await Promise.race([this.#ask(slot, message, "tls-set"), late]);
      clearTimeout(timer);
      if (answer === "late") return `data-plane worker ${slot.index} did not answer`;
      if (answer === undefined) return undefined; // it died: its replacement starts with `pair`
      return answer.t === "tls-set" && answer.error !== undefined
        ? `data-plane worker ${slot.index}: ${answer.error}`
        : undefined;
    }));
    return answers.filter((error): error is string => error !== undefined);
  }

  /** Sends `message` to every plane that runs. */
  broadcast(message: ToPlane): void {
    for (const slot of this.#slots) {
      if (slot.state === "running" || slot.state === "starting") slot.endpoint.postMessage(message);
    }
  }

  /** Makes the test hook crash plane `index`; false when there is no such plane running. */
  crash(index: number): boolean {
    const slot = this.#slots[index];
    if (!slot || slot.state !== "running" || !this.#options.testHooks) return false;
    slot.endpoint.postMessage({ t: "crash" } satisfies ToPlane);
    return true;
  }

  /**
   * Asks every running plane to copy its stats into its row now, and waits for them (at most
   * `timeoutMs`: a plane that does not answer, frozen or gone, is read as it last flushed; one
   * known not to run is not asked).
   */
  async flushAll(timeoutMs = 1000): Promise<void> {
    const waits: Promise<void>[] = [];
    const asked: { slot: Slot; id: number }[] = [];
    for (const slot of this.#slots) {
      if (slot.state !== "running" && slot.state !== "stopping") continue;
      // One that does not run would make every read wait the whole timeout, and keep a message
      // for it per read (a SIGUSR2 storm): read it as it last flushed.
      if (slot.frozen) continue;
      const id = this.#nextFlush++;
      const done = Promise.withResolvers<void>();
      slot.flushes.set(id, done.resolve);
      asked.push({ slot, id });
      slot.endpoint.postMessage({ t: "flush", id } satisfies ToPlane);
      waits.push(done.promise);
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<void>((resolve) => timer = setTimeout(resolve, timeoutMs));
    await Promise.race([Promise.all(waits), late]);
    clearTimeout(timer);
    for (const { slot, id } of asked) slot.flushes.delete(id);
  }

  /** Adds every plane's row to `target` (a merged read at `now`). */
  addRows(target: Stats, now: number): void {
    for (const slot of this.#slots) {
      if (slot.state === "dead") continue;
      slot.row.addTo(slot.row.read(), target, { now });
    }
  }

  /** Each plane's connections, replies per second and restarts. */
  breakdown(now: number): WorkerStats[] {
    return this.#slots.map((slot) => {
      // One that died serves nobody (its row is its last flush, kept for the totals only).
      const { connections, repliesPerSecond } = slot.state === "dead"
        ? { connections: 0, repliesPerSecond: 0 }
        : StatsRow.breakdown(slot.row.read(), now);
      return {
        worker: slot.index,
        connections_active: connections,
        replies_per_second: repliesPerSecond,
        restarts: slot.restarts,
      };
    });
  }

  /** The per-upstream figures summed over the planes (and those that died), by name. */
  upstreamCounts(): Map<string, UpstreamCounts> {
    const out = new Map<string, UpstreamCounts>();
    for (const [name, counts] of this.#retired) out.set(name, { ...counts });
    for (const slot of this.#slots) {
      for (const row of slot.upstreams) {
        const sum = out.get(row.name) ?? zeroCounts();
        sum.connections_active += row.connections_active;
        for (const f of COUNT_FIELDS) sum[f] += row[f];
        out.set(row.name, sum);
      }
    }
    return out;
  }

  /** The names planes still have connections to (a removed upstream still draining). */
  upstreamRows(): UpstreamSnapshot[] {
    return this.#slots.flatMap((s) => s.upstreams);
  }

  /**
   * Drains every plane at once, as one proxy did: keep accepting for `delayMs`
   * (`--drain-delay`), stop accepting, give the open connections `timeoutMs` (`--drain-timeout`)
   * to end on their own, then close those with nothing in flight, then the rest. Aborting
   * `force` cuts each wait short. Logs each step once for the whole process.
   */
  async shutdown(
    force: AbortSignal,
    options: { delayMs: number; timeoutMs: number },
  ): Promise<ShutdownReport> {
    this.#stopping = true;
    for (const timer of this.#respawnTimers) clearTimeout(timer);
    const logger = this.#options.logger;
    const live = () => this.#slots.filter((s) => s.state === "running" || s.state === "starting");
    if (options.delayMs > 0 && !force.aborted) {
      logger.info("Shutting down: accepting for {delayMs} ms more (--drain-delay)", {
        delayMs: options.delayMs,
      });
      await waitOrAbort(options.delayMs, force);
    }
    const slots = live();
    for (const slot of slots) slot.state = "stopping";
    const drainedAll = Promise.all(slots.map((s) => this.#expect(s, "drained")));
    const stopped = await Promise.all(
      slots.map((s) => this.#askInTime(s, { t: "stop-accepting" }, "accepting-stopped")),
    );
    const active = stopped.reduce(
      (n, m) => n + (m?.t === "accepting-stopped" ? m.active : 0),
      0,
    );
    let drained = active === 0;
    if (!drained && options.timeoutMs > 0 && !force.aborted) {
      logger.info(
        "Stopped accepting; waiting up to {timeoutMs} ms for {active} connection(s) to finish",
        { timeoutMs: options.timeoutMs, active },
      );
      drained = await Promise.race([
        drainedAll.then(() => true),
        waitOrAbort(options.timeoutMs, force).then(() => false),
      ]);
    }
    let closedIdle = 0;
    let closedBusy = 0;
    if (!drained) {
      // The counts come back once the idle ones are closed; the line is written before the
      // busy ones are, as one proxy wrote it.
      const counts = await Promise.all(
        slots.map((s) => this.#askInTime(s, { t: "close-idle" }, "idle-closed")),
      );
      for (const m of counts) {
        if (m?.t !== "idle-closed") continue;
        closedIdle += m.idle;
        closedBusy += m.busy;
      }
      logger.info(
        "{why}: closing {idle} idle connection(s), then {busy} with requests in flight",
        {
          why: force.aborted ? "Shutdown forced" : "Drain timeout",
          idle: closedIdle,
          busy: closedBusy,
        },
      );
    }
    await Promise.all(slots.map((s) => this.#askInTime(s, { t: "close" }, "stopped")));
    return { drained, closedIdle, closedBusy, aborted: force.aborted };
  }

  /**
   * {@linkcode #ask}, for a drain step: a plane that has not answered within `ANSWER_MS` (it
   * spins, or its event loop is stuck) is ended as if it had died while draining, so that
   * neither the drain nor a second signal waits on it for ever.
   */
  async #askInTime(
    slot: Slot,
    message: ToPlane,
    reply: FromPlane["t"],
  ): Promise<FromPlane | undefined> {
    const answer = this.#ask(slot, message, reply);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((resolve) =>
      timer = setTimeout(() => resolve("late"), ANSWER_MS)
    );
    const first = await Promise.race([answer, late]);
    clearTimeout(timer);
    if (first !== "late") return first;
    this.#died(slot, `it did not answer "${message.t}" within ${ANSWER_MS / 1000} s`, true);
    return undefined;
  }

  /** Sends `message` to `slot` and resolves with its `reply` (`undefined` if it dies first). */
  #ask(slot: Slot, message: ToPlane, reply: FromPlane["t"]): Promise<FromPlane | undefined> {
    const answer = this.#expect(slot, reply);
    if (slot.state !== "dead") slot.endpoint.postMessage(message);
    return answer;
  }

  /** Resolves with the next `reply` of `slot` (`undefined` if it dies first). */
  #expect(slot: Slot, reply: FromPlane["t"]): Promise<FromPlane | undefined> {
    if (slot.state === "dead") return Promise.resolve(undefined);
    const done = Promise.withResolvers<FromPlane | undefined>();
    slot.waiting.set(reply, done.resolve);
    return done.promise;
  }

  /** Ends every plane at once (after {@linkcode shutdown}, or when the start failed). */
  terminate(): void {
    this.#stopping = true;
    clearInterval(this.#watchdog);
    for (const timer of this.#respawnTimers) clearTimeout(timer);
    for (const slot of this.#slots) this.#end(slot);
  }

  #end(slot: Slot): void {
    if (slot.endpoint instanceof Worker) slot.endpoint.terminate();
    else slot.endpoint.close();
  }

  #spawn(index: number, listen: Address): Slot {
    const row = new StatsRow(BUCKETS);
    const endpoint: Endpoint = this.#options.thread
      ? new Worker(new URL("./plane_worker.ts", import.meta.url), {
        type: "module",
        name: `foo-proxy data plane ${index}`,
      })
      : this.#inProcess();
    const previous = this.#slots[index];
    const slot: Slot = {
      index,
      endpoint,
      row,
      upstreams: [],
      restarts: previous?.restarts ?? 0,
      startedAt: performance.now(),
      heard: false,
      state: "starting",
      ready: Promise.withResolvers(),
      wsPort: 0,
      flushes: new Map(),
      waiting: new Map(),
      pulse: { writes: 0, at: performance.now() },
      frozen: false,
    };
    slot.ready.promise.catch(() => {});
    this.#slots[index] = slot;
    endpoint.onmessage = (event: MessageEvent) => this.#onMessage(slot, event.data as FromPlane);
    if (endpoint instanceof Worker) {
      endpoint.onerror = (event: ErrorEvent) => {
        event.preventDefault(); // one plane's death must not take the process with it
        // The first line: Deno's message may carry a coloured stack.
        this.#died(slot, String(event.message).split("\n")[0]);
      };
      endpoint.onmessageerror = () => this.#died(slot, "a message could not be read");
    }
    const config = this.#config;
    // A restart setting: every plane, a replacement too, binds the port the first one got.
    const ws = this.#options.config.wsListen;
    const init: PlaneInit = {
      index,
      config,
      listen,
      wsListen: ws === null ? null : { ...ws, port: this.#wsPort || ws.port },
      reusePort: canReusePort(),
      tls: this.#tls,
      row: row.buffer,
      gate: this.#gate,
      sources: this.#sources,
      shared: {
        buffer: this.#shared,
        capacity: UPSTREAM_SLOTS,
        planes: this.#options.count,
        slots: { ...this.#upstreamSlots },
      },
      states: this.#options.states(),
      thread: this.#options.thread,
      flushMs: this.#options.flushMs ?? 100,
      testHooks: this.#options.testHooks,
      upstreamTls: this.#options.upstreamTls,
    };
    endpoint.postMessage({ t: "init", init } satisfies ToPlane);
    return slot;
  }

  #inProcess(): MessagePort {
    const channel = new MessageChannel();
    serveDataPlane(channel.port2);
    return channel.port1;
  }

  #onMessage(slot: Slot, message: FromPlane): void {
    if (this.#slots[slot.index] !== slot) return; // a plane already replaced
    slot.heard = true;
    const waiter = slot.waiting.get(message.t);
    if (waiter) {
      slot.waiting.delete(message.t);
      waiter(message);
    }
    switch (message.t) {
      case "ready":
        if (slot.state === "starting") slot.state = "running";
        slot.pulse = { writes: slot.row.writes, at: performance.now() }; // a slow start is no stall
        slot.wsPort = message.wsPort ?? 0;
        slot.ready.resolve(message.port);
        break;
      case "failed":
        slot.state = "dead";
        slot.ready.reject(new PlaneStartError(message.error, message.addrInUse));
        this.#end(slot);
        // A drain that began while it started waits on it: it has nothing more to say.
        this.#settle(slot);
        break;
      case "log":
        this.#options.onLog(message.lines);
        break;
      case "access":
        this.#options.onAccess(message.lines);
        break;
      case "passive":
        this.#options.onPassive(message.name, message.kind);
        break;
      case "upstreams":
        slot.upstreams = message.upstreams;
        break;
      case "flushed":
        slot.upstreams = message.upstreams;
        slot.flushes.get(message.id)?.();
        slot.flushes.delete(message.id);
        break;
      case "stopped":
        slot.upstreams = message.upstreams;
        slot.state = "stopped";
        break;
      case "fatal":
        this.#died(slot, message.error);
        break;
    }
  }

  /**
   * A plane died (an uncaught error): its counters join the retired totals (its last flush: stats
   * never go backwards), its connections leave the process count, and a new plane takes its
   * place on the same port — at once, or after a backoff when it died young (a crash loop).
   */
  #died(slot: Slot, error: string, unresponsive = false): void {
    if (this.#slots[slot.index] !== slot || slot.state === "dead") return;
    const was = slot.state;
    slot.state = "dead";
    this.#end(slot);
    if (!this.#started) {
      // Not a restart: the start fails (and says why).
      slot.ready.reject(
        new PlaneStartError(`data-plane worker ${slot.index}: ${error}`, false, !slot.heard),
      );
      this.#settle(slot);
      return;
    }
    const now = this.#options.own.clock();
    // Its window buckets too: the messages it saw were seen, and the rates drop them as they
    // age (a crash is no reason for request_rate_10s to halve at once).
    slot.row.addTo(slot.row.read(), this.#options.base, { now, gauges: false });
    for (const row of slot.upstreams) {
      const sum = this.#retired.get(row.name) ?? zeroCounts();
      for (const f of COUNT_FIELDS) sum[f] += row[f];
      this.#retired.set(row.name, sum);
    }
    slot.upstreams = [];
    const open = Atomics.exchange(this.#gateView, 2 + slot.index, 0);
    Atomics.sub(this.#gateView, 0, open);
    const row = slot.index * UPSTREAM_SLOTS;
    for (let i = 0; i < UPSTREAM_SLOTS; i++) Atomics.store(this.#sharedView, row + i, 0);
    slot.ready.reject(new PlaneStartError(`data-plane worker ${slot.index} died: ${error}`, false));
    this.#settle(slot);
    if (was === "stopping") {
      this.#options.logger.error(
        unresponsive
          ? "Data-plane worker {worker} does not answer while draining ({error}): given up on; its {open} connection(s) close when the process exits"
          : "Data-plane worker {worker} died while draining ({error}); its {open} connection(s) were closed",
        { worker: slot.index, error, open },
      );
      return;
    }
    this.#options.own.workerRestarts++;
    const young = performance.now() - slot.startedAt < (this.#options.youngMs ?? 1000);
    const delayMs = young ? Math.min(30_000, 1000 * 2 ** Math.min(slot.restarts, 5)) : 0;
    this.#options.logger.error(
      "Data-plane worker {worker} died ({error}); its {open} connection(s) were closed; {next}",
      {
        worker: slot.index,
        error,
        open,
        next: delayMs === 0
          ? "replacing it now"
          : `replacing it in ${delayMs / 1000} s (it died within a second of starting)`,
      },
    );
    this.#respawn(slot.index, slot.restarts + 1, delayMs);
  }

  /** Ends every wait on `slot` (it is gone: its flushes are as they are, it answers nothing). */
  #settle(slot: Slot): void {
    for (const resolve of slot.flushes.values()) resolve();
    slot.flushes.clear();
    for (const waiter of slot.waiting.values()) waiter(undefined);
    slot.waiting.clear();
  }

  /** Starts a plane in place of one that died, after `delayMs`; tries again while it fails. */
  #respawn(index: number, restarts: number, delayMs: number): void {
    if (this.#stopping) return;
    const timer = setTimeout(() => {
      this.#respawnTimers.delete(timer);
      if (this.#stopping) return;
      const next = this.#spawn(index, { ...this.#listen, port: this.#port });
      next.restarts = restarts;
      next.ready.promise.then(
        () => this.#options.logger.info("Data-plane worker {worker} replaced", { worker: index }),
        (error) => {
          if (this.#slots[index] !== next || this.#stopping) return;
          const retryMs = Math.min(30_000, Math.max(1000, delayMs * 2));
          this.#options.logger.error(
            "Data-plane worker {worker} could not be replaced ({error}); trying again in {seconds} s",
            {
              worker: index,
              error: error instanceof Error ? error.message : String(error),
              seconds: retryMs / 1000,
            },
          );
          this.#respawn(index, restarts, retryMs);
        },
      );
    }, delayMs);
    this.#respawnTimers.add(timer);
  }
}

/**
 * Throws when `listen` (a fixed port) is taken. `SO_REUSEPORT` lets every socket of the same
 * user that sets it join a port: the planes' binds would succeed next to another proxy still
 * serving there (started twice by mistake), which would then take half of each other's clients.
 * A bind without it fails on any listener there. Port 0 needs no look: the kernel never hands
 * a port that is in use to a socket binding port 0, `SO_REUSEPORT` or not.
 *
 * @throws {PlaneStartError} when the port cannot be bound.
 */
function assertPortFree(listen: Address): void {
  if (listen.port === 0) return;
  try {
    Deno.listen({ hostname: listen.hostname, port: listen.port }).close();
  } catch (error) {
    throw new PlaneStartError(describeError(error), error instanceof Deno.errors.AddrInUse);
  }
}

function zeroCounts(): UpstreamCounts {
  const zero = { connections_active: 0 } as UpstreamCounts;
  for (const f of COUNT_FIELDS) zero[f] = 0;
  return zero;
}
