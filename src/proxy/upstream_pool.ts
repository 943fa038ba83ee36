/**
 * Several upstreams behind one listener: the {@linkcode UpstreamTarget} the engine dials through.
 *
 * - **Balancing**: `leastconn` (default: Foo connections are long-lived and pipelined, so counting
 *   connections spreads load where round robin would skew it toward whoever got the long-lived
 *   ones), `roundrobin` (smooth weighted), `first` (the first upstream that is up, in the order
 *   given: primary and backups; weights do not matter to it).
 * - **Active health checks** ({@linkcode checkUpstream}): every `intervalMs` per upstream;
 *   `rise` good checks in a row bring it up, `fall` bad ones take it down (HAProxy's 2 and 3).
 *   The first checks are spread evenly over the interval and every wait is jittered (±10 %), so
 *   a large set is never checked in phase; with more than {@linkcode MAX_CHECKS_PER_SECOND}
 *   upstreams per second of interval, the interval stretches. An upstream a reload adds (or
 *   moves to another address) takes no client until its first check passes.
 * - **Local errors** (EMFILE, ENFILE, ENOBUFS, ENOMEM) are the proxy's trouble: counted
 *   apart, never against an upstream, never an ejection. EADDRNOTAVAIL is not: it concerns one
 *   destination (an address this host cannot reach, or no port left towards it).
 * - **Passive outlier ejection**: `ejectAfter` connect failures or mid-stream errors in a row eject
 *   an upstream for `ejectMs` × 2^(ejections so far) (capped at 5 min, as Envoy grows it); it
 *   returns through the next good active check after that.
 * - **Failover**: a refused or timed-out connect is tried on another upstream (the retries count
 *   across the set); with every upstream down the down ones are still tried, as a last resort,
 *   so one upstream behaves exactly as before.
 * - **Draining**: a drained upstream gets no new connection; its open ones finish. With every
 *   upstream draining, a dial fails at once with {@linkcode NoUpstreamError}.
 * - **Names are unique at every moment**: a reload that changes an upstream's address keeps it
 *   (its counters, its connections to the old address); one removed while it has connections is
 *   listed as `draining` until they end, and re-adding it takes it back.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { formatAddress } from "../net/address.ts";
import type { UpstreamSpec } from "./upstream_spec.ts";
import type { UpstreamStats } from "../stats/stats.ts";
import { backoffDelay } from "./dial_with_retry.ts";
import { systemTimers, type Timers } from "../async/timers.ts";
import { type CheckResult, checkUpstream, type HealthMode } from "./health_check.ts";
import { checkPreamble } from "./proxy_header_step.ts";
import { dialUpstream, isLocalError, UpstreamError } from "./upstream.ts";
import {
  idleConnectionsFor,
  type IdlePoolOptions,
  type TargetConnection,
  type TargetDialOptions,
  type UpstreamTarget,
} from "./upstream_target.ts";
import type { IdleConnections } from "./idle_connections.ts";
import { waitOrAbort } from "../async/wait_or_abort.ts";

/** How new connections are spread. */
export type BalancePolicy = "leastconn" | "roundrobin" | "first";

/** An upstream's state, as `/stats` shows it. */
export type UpstreamState = "up" | "down" | "ejected" | "draining";

/**
 * The defaults of {@linkcode UpstreamPoolOptions}, written once: the pool applies them, and the
 * CLI's settings table shows them as the flags' defaults.
 */
export const POOL_DEFAULTS = Object.freeze({
  policy: "leastconn" as BalancePolicy,
  intervalMs: 2000,
  checkTimeoutMs: 1000,
  mode: "foo" as HealthMode,
  rise: 2,
  fall: 3,
  ejectAfter: 5,
  ejectMs: 30_000,
  connectTimeoutMs: 5000,
});

/**
 * Options for {@linkcode UpstreamPool}. With `idleMax` (`--pool`) each upstream keeps up to that
 * many idle connections of clients that ended cleanly, for the next client it is picked for.
 */
export interface UpstreamPoolOptions extends IdlePoolOptions {
  /** @default {"leastconn"} */
  policy?: BalancePolicy;
  /** Connect timeout per attempt in ms; 0: none. @default {5000} */
  connectTimeoutMs?: number;
  /** Time between two checks of one upstream, in ms; 0: no active checks. @default {2000} */
  intervalMs?: number;
  /** Deadline of one check, in ms. @default {1000} */
  checkTimeoutMs?: number;
  /** @default {"foo"} */
  mode?: HealthMode;
  /**
   * `--send-proxy`: `foo` checks start with a PROXY header that names no client (v1 `UNKNOWN`,
   * v2 `LOCAL`), as the upstream expects one on every connection. @default {"off"}
   */
  sendProxy?: "off" | "v1" | "v2";
  /** Good checks in a row that bring a down upstream up. @default {2} */
  rise?: number;
  /** Bad checks in a row that take an up upstream down. @default {3} */
  fall?: number;
  /** Failures in a row (connects, mid-stream errors) that eject an upstream; 0: never. @default {5} */
  ejectAfter?: number;
  /** First ejection's length in ms; it doubles with each further one. @default {30000} */
  ejectMs?: number;
  /** Milliseconds now. @default {performance.now} */
  now?: () => number;
  /** Random numbers in [0, 1) for backoff and check jitter. @default {Math.random} */
  random?: () => number;
  /** Timers of the check schedule (tests move them by hand). @default {the global timers} */
  timers?: Timers;
  /** State changes are logged here. */
  logger?: Logger;
  /**
   * The process-wide counters this pool adds each failure to (`Stats` fits), so the
   * totals are the sums of the rows, plus those of upstreams removed since. Unset: rows only.
   */
  counters?: UpstreamCounters;
  /**
   * A data-plane worker's pool: failures are reported here (the supervisor counts them in a row
   * and decides ejection), a good connect after failures as `recovered`; the pool never ejects,
   * expires an ejection or checks on its own, and takes its states from
   * {@linkcode UpstreamPool.applyStates}. Unset: the pool decides alone.
   */
  onPassive?: (name: string, kind: PassiveEvent) => void;
  /** Called after any upstream's state may have changed (a check, an ejection, a drain). */
  onStateChange?: () => void;
  /**
   * Connections per upstream shared by every data-plane worker, so `leastconn` counts the
   * whole process's; unset: this pool's own.
   */
  shared?: SharedConnections;
}

/**
 * Every worker's open connections per upstream, in shared memory: worker `plane` alone writes
 * `counts[plane * capacity + slot]` (Atomics), every worker reads all rows. `slots` names each
 * upstream's slot (given by the supervisor, never reused for another name); an upstream without
 * one is counted by its own pool only.
 */
export interface SharedConnections {
  counts: Int32Array;
  plane: number;
  planes: number;
  capacity: number;
  slots: Readonly<Record<string, number>>;
}

/** What a data-plane worker reports of one upstream. */
export type PassiveEvent = "connect_failure" | "stream_error" | "recovered";

/** An upstream's state as the supervisor decides it and the workers follow it. */
export interface MemberState {
  healthy: boolean;
  ejected: boolean;
  /** Milliseconds the ejection has left (clocks differ between threads). */
  ejectedForMs: number;
  awaitingFirstCheck: boolean;
  draining: boolean;
}

/** Process-wide upstream counters a pool adds to. */
export interface UpstreamCounters {
  /** Failed connects (every attempt). */
  upstreamConnectFailures: number;
  /** Upstream connections that failed mid-stream. */
  upstreamStreamErrors: number;
  /** Connects and checks that failed for want of a local resource (never an upstream's fault). */
  upstreamLocalErrors: number;
}

/** Options for {@linkcode UpstreamPool.start}. */
export interface PoolStartOptions {
  /**
   * Whether a set of one upstream is checked too. One upstream is dialed whatever its checks say
   * (as a last resort), so its checks serve only `/readyz`; a reload that adds upstreams starts
   * the checks of every one. @default {true}
   */
  checkLone?: boolean;
}

/** No upstream can take a connection: every one is draining. */
export class NoUpstreamError extends Error {
  /** Creates the error; `message` says why. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NoUpstreamError";
  }
}

/**
 * Most checks started per second across the set: past it each upstream's interval stretches
 * (1000 upstreams at a 100 ms interval are checked once a second each, not 10 000 times).
 */
export const MAX_CHECKS_PER_SECOND = 1000;

/** A local error is logged at most this often (a flood of them is one line a second). */
const LOCAL_ERROR_LOG_MS = 1000;

/** One upstream's figures, for `/stats`, `/metrics` and the SIGUSR2 line. */
export type UpstreamSnapshot = UpstreamStats;

const MAX_EJECT_MS = 5 * 60_000;

/** Per-connection counters the engine adds to. */
interface LeaseCounters {
  requests: number;
  replies: number;
}

class Member {
  spec: UpstreamSpec;
  label: string;
  healthy = true; // by the active checks (starts up: traffic flows before the first check)
  /** Added by a reload (or moved) while checks run: down until its first check passes. */
  awaitingFirstCheck = false;
  draining = false;
  ejectedUntil = 0;
  ejected = false;
  ejections = 0;
  goodInARow = 0;
  badInARow = 0;
  failuresInARow = 0;
  active = 0;
  /** Connects under way: counted by leastconn, or clients arriving together all pick one. */
  pending = 0;
  /** Its slot in the shared connection counts (see {@linkcode SharedConnections}). */
  slot: number | undefined;
  total = 0;
  counters: LeaseCounters = { requests: 0, replies: 0 };
  connectFailures = 0;
  streamErrors = 0;
  current = 0; // smooth weighted round robin
  removed = false; // no longer configured: its check loop ends
  lastCheck: (CheckResult & { at: number }) | undefined;
  /** Its idle connections (`--pool`); undefined when pooling is off. */
  idle: IdleConnections | undefined = undefined;
  /** Bumped to end its check loop (removed, moved): a loop runs while its generation is current. */
  generation = 0;
  /** Whether a check loop of the current generation runs. */
  checking = false;
  /**
   * Ends that loop's wait or check at once (moved, removed, pool closed): one signal per loop, as
   * a listener on a signal shared by all costs a scan of all (moves of 1000 upstreams froze).
   */
  checkStop: AbortController | undefined;

  constructor(spec: UpstreamSpec) {
    this.spec = spec;
    this.label = formatAddress(spec.address);
  }

  /** Whether it may take a new connection by its own state (up, not draining or removed). */
  usable(): boolean {
    return !this.draining && !this.removed && this.healthy && !this.ejected &&
      !this.awaitingFirstCheck;
  }

  state(): UpstreamState {
    if (this.draining || this.removed) return "draining";
    if (this.ejected) return "ejected";
    return this.healthy ? "up" : "down";
  }
}

/** The upstream set; see the module docs. */
export class UpstreamPool implements UpstreamTarget, AsyncDisposable {
  /** Names and addresses, for log lines. */
  readonly label: string;
  #members: Member[];
  /** Every upstream listed, configured or leaving, by name: names are unique at every moment. */
  #byName = new Map<string, Member>();
  #options: UpstreamPoolOptions;
  #now: () => number;
  #random: () => number;
  #timers: Timers;
  #logger: Logger | undefined;
  #stop = new AbortController();
  #loops = new Set<Promise<void>>();
  #started = false;
  #checkLone = true;
  /** Removed upstreams whose last connections have not ended yet. */
  #leaving = new Map<string, Member>();
  #lastLocalLog = -Infinity;
  #localSinceLog = 0;
  /** The proxy stopped or closed: no connection is pooled any more. */
  #idleClosed = false;
  /** Idle lists of removed upstreams whose closed connections' reads have not ended yet. */
  #retired = new Set<IdleConnections>();

  /**
   * A pool of `specs` (at least one, names unique); checks start with {@linkcode start}.
   *
   * @throws {RangeError} for an empty set or a name given twice.
   */
  constructor(specs: readonly UpstreamSpec[], options: UpstreamPoolOptions = {}) {
    if (specs.length === 0) throw new RangeError("UpstreamPool needs at least one upstream");
    assertUniqueNames(specs);
    this.#options = options;
    this.#members = specs.map((spec) => this.#newMember(spec));
    for (const member of this.#members) this.#byName.set(member.spec.name, member);
    this.#assignSlots();
    this.#now = options.now ?? (() => performance.now());
    this.#random = options.random ?? Math.random;
    this.#timers = options.timers ?? systemTimers;
    this.#logger = options.logger;
    this.label = specs.length === 1
      ? formatAddress(specs[0].address)
      : specs.map((s) => s.name).join(",");
  }

  /**
   * Starts the active health checks (when `intervalMs` > 0), the first ones spread evenly over
   * the interval.
   */
  start(options: PoolStartOptions = {}): void {
    if (this.#started) return;
    this.#started = true;
    this.#checkLone = options.checkLone ?? true;
    this.#startChecks();
  }

  /** Stops the checks and closes the idle connections; resolves when they have. */
  async close(): Promise<void> {
    this.#stop.abort();
    for (const m of [...this.#members, ...this.#leaving.values()]) m.checkStop?.abort();
    await Promise.all([this.closeIdle(), ...this.#loops]);
  }

  /** Closes every idle pooled connection and pools none from now on (the proxy stops). */
  async closeIdle(): Promise<void> {
    this.#idleClosed = true;
    const members = [...this.#members, ...this.#leaving.values()];
    for (const m of members) m.idle?.clear("the proxy stops");
    const lists = [...members.map((m) => m.idle), ...this.#retired];
    await Promise.all(lists.map((idle) => idle?.closed()));
  }

  /** Closes a removed upstream's idle connections; {@linkcode closeIdle} still waits for them. */
  #retire(member: Member): void {
    const idle = member.idle;
    if (idle === undefined || idle.size === 0) return;
    idle.clear("removed");
    this.#retired.add(idle);
    void idle.closed().then(() => this.#retired.delete(idle));
  }

  #newMember(spec: UpstreamSpec): Member {
    const member = new Member(spec);
    member.idle = idleConnectionsFor(spec.name, this.#options);
    return member;
  }

  /** Closes the idle connections of every upstream that may not take new ones now. */
  #sweepIdle(): void {
    for (const m of this.#members) if (!m.usable()) m.idle?.clear(m.state());
    for (const m of this.#leaving.values()) m.idle?.clear("removed");
  }

  /** Whether checks run for this set now (started, an interval, more than one or `checkLone`). */
  #checksWanted(): boolean {
    return this.#started && (this.#options.intervalMs ?? POOL_DEFAULTS.intervalMs) > 0 &&
      (this.#checkLone || this.#members.length > 1);
  }

  /**
   * Starts a check loop for each upstream that has none (all at start; those a reload added or
   * moved, and a lone one once the set grows), their first checks spread over the interval.
   */
  #startChecks(): void {
    if (!this.#checksWanted()) return;
    const waiting = this.#members.filter((m) => !m.checking);
    const period = this.#period();
    waiting.forEach((member, i) => {
      member.checking = true;
      const stop = new AbortController();
      member.checkStop = stop;
      const loop = this.#checkLoop(
        member,
        member.generation,
        (i * period) / waiting.length,
        stop.signal,
      );
      this.#loops.add(loop);
      void loop.finally(() => this.#loops.delete(loop));
    });
  }

  /** Time between two checks of one upstream: the interval, stretched for a large set. */
  #period(): number {
    const interval = this.#options.intervalMs ?? POOL_DEFAULTS.intervalMs;
    return Math.max(interval, (this.#members.length * 1000) / MAX_CHECKS_PER_SECOND);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Whether some upstream is up (for `/readyz`). */
  get reachable(): boolean {
    return this.#members.some((m) => m.state() === "up");
  }

  /** Which upstreams are not up, for `/readyz`. */
  get detail(): string {
    const down = this.#members.filter((m) => m.state() !== "up");
    if (down.length === 0) return `all ${this.#members.length} upstream(s) up`;
    return `not up: ${
      down.map((m) =>
        `${m.spec.name} (${m.state()}${
          m.lastCheck?.error
            ? `: ${m.lastCheck.error}`
            : m.awaitingFirstCheck
            ? ": not checked yet"
            : ""
        })`
      ).join(", ")
    }`;
  }

  /**
   * Takes the supervisor's slots of the shared connection counts (after a reload named new
   * upstreams); a member keeps the slot it has (its open connections count there).
   */
  setSlots(slots: Readonly<Record<string, number>>): void {
    const shared = this.#options.shared;
    if (!shared) return;
    this.#options = { ...this.#options, shared: { ...shared, slots } };
    this.#assignSlots();
  }

  #assignSlots(): void {
    const shared = this.#options.shared;
    if (!shared) return;
    for (const member of this.#byName.values()) {
      const slot = shared.slots[member.spec.name];
      if (member.slot === undefined && slot !== undefined && slot < shared.capacity) {
        member.slot = slot;
      }
    }
  }

  /** Connections open to `member` in the whole process (its own pool's without shared counts). */
  #open(member: Member): number {
    const shared = this.#options.shared;
    if (!shared || member.slot === undefined) return member.active;
    let open = 0;
    for (let p = 0; p < shared.planes; p++) {
      open += Atomics.load(shared.counts, p * shared.capacity + member.slot);
    }
    return open;
  }

  /** Changes the balancing policy (a reload); new connections follow it. */
  setPolicy(policy: BalancePolicy): void {
    this.#options = { ...this.#options, policy };
  }

  /**
   * Replaces the upstream set (a reload) without dropping a connection, in time linear in the
   * set: an upstream still named keeps its state and counters (and takes the new weight); one
   * whose address changed keeps its name, counters and open connections (to the old address) but
   * is checked afresh; a new one joins and is checked; one no longer named drains (no new
   * connections) and leaves once its last connection ends, unless a later reload names it again.
   * Returns what changed, for the log.
   *
   * @throws {RangeError} for an empty set or a name given twice (nothing changes then).
   */
  update(specs: readonly UpstreamSpec[]): string[] {
    if (specs.length === 0) throw new RangeError("UpstreamPool needs at least one upstream");
    assertUniqueNames(specs);
    // Whether the new set is checked (a lone upstream is not, without checkLone).
    const checks = this.#started && (this.#options.intervalMs ?? POOL_DEFAULTS.intervalMs) > 0 &&
      (this.#checkLone || specs.length > 1);
    const changes: string[] = [];
    const next: Member[] = [];
    const named = new Set<string>();
    for (const spec of specs) {
      named.add(spec.name);
      const old = this.#byName.get(spec.name);
      if (old === undefined) {
        const member = this.#newMember(spec);
        member.awaitingFirstCheck = checks;
        member.healthy = !checks;
        this.#byName.set(spec.name, member);
        next.push(member);
        changes.push(`${spec.name} added`);
        continue;
      }
      if (old.removed) {
        old.removed = false;
        old.draining = false;
        this.#leaving.delete(spec.name);
        changes.push(`${spec.name} added back (${old.active} connection(s) open)`);
      }
      const address = formatAddress(spec.address);
      if (address !== old.label) {
        changes.push(`${spec.name} moved to ${address}`);
        old.label = address;
        old.idle?.clear("moved"); // connections to the old address serve nobody new
        old.generation++; // the old address's checks end; the new one is checked afresh
        old.checking = false;
        old.checkStop?.abort();
        old.lastCheck = undefined;
        old.goodInARow = old.badInARow = old.failuresInARow = 0;
        old.ejected = false;
        old.awaitingFirstCheck = checks;
        old.healthy = !checks;
      } else if (old.spec.weight !== spec.weight) {
        changes.push(`${spec.name} weight ${spec.weight}`);
      }
      old.spec = spec;
      next.push(old);
    }
    for (const old of this.#members) {
      if (named.has(old.spec.name)) continue;
      old.removed = true;
      this.#retire(old); // idle connections are not open ones: it leaves without them
      old.generation++;
      old.checking = false;
      old.checkStop?.abort();
      // Connects under way count: they become connections to it, which it must still list.
      const open = old.active + old.pending;
      changes.push(`${old.spec.name} removed (draining ${open} connection(s))`);
      if (open > 0) this.#leaving.set(old.spec.name, old);
      else this.#byName.delete(old.spec.name);
    }
    this.#members = next;
    this.#assignSlots();
    this.#startChecks();
    this.#sweepIdle();
    return changes;
  }

  /** Stops new connections to `name` (open ones finish); false when there is no such upstream. */
  drain(name: string): boolean {
    const member = this.#find(name);
    if (!member) return false;
    if (!member.draining) {
      this.#logger?.info("Upstream {name} draining: no new connections", { name });
    }
    member.draining = true;
    member.idle?.clear("draining");
    this.#options.onStateChange?.();
    return true;
  }

  /** Undoes {@linkcode drain}; false when there is no such upstream (or it was removed). */
  enable(name: string): boolean {
    const member = this.#find(name);
    if (!member || member.removed) return false;
    if (member.draining) this.#logger?.info("Upstream {name} enabled again", { name });
    member.draining = false;
    this.#options.onStateChange?.();
    return true;
  }

  /** Every upstream's figures. */
  snapshot(): UpstreamSnapshot[] {
    const now = this.#now();
    this.#expire(now);
    return [...this.#members, ...this.#leaving.values()].map((m) => ({
      name: m.spec.name,
      address: m.label,
      weight: m.spec.weight,
      state: m.state(),
      connections_active: m.active,
      connections_total: m.total,
      requests: m.counters.requests,
      replies: m.counters.replies,
      connect_failures: m.connectFailures,
      stream_errors: m.streamErrors,
      ejections: m.ejections,
      last_check: m.lastCheck
        ? {
          ok: m.lastCheck.ok,
          latency_ms: m.lastCheck.latencyMs,
          ...(m.lastCheck.error ? { error: m.lastCheck.error } : {}),
          age_s: Math.round((now - m.lastCheck.at) / 100) / 10,
        }
        : null,
    }));
  }

  /**
   * Opens a connection to an upstream the policy picks; a failed connect is tried on another
   * (`retries` more attempts across the set, with backoff once every candidate failed).
   */
  /** How many upstreams are configured. */
  get upstreamCount(): number {
    return this.#members.length;
  }

  async dial(options: TargetDialOptions = {}): Promise<TargetConnection> {
    const retries = options.retries ?? 0;
    const failed = new Set<Member>();
    let lastError: unknown;
    for (let attempt = 0, round = 0; attempt <= retries; attempt++) {
      if (options.signal?.aborted) break;
      let member = this.#pick(failed, options.avoid);
      if (member === undefined && failed.size > 0) {
        // Every candidate failed this round: back off, then try them all again.
        round++;
        const delayMs = backoffDelay(round, {
          backoffMs: options.backoffMs,
          maxBackoffMs: options.maxBackoffMs,
          random: this.#options.random,
        });
        if (lastError instanceof UpstreamError) options.onRetry?.(attempt, delayMs, lastError);
        await waitOrAbort(delayMs, options.signal);
        if (options.signal?.aborted) break;
        failed.clear();
        member = this.#pick(failed, undefined);
      } else if (attempt > 0 && lastError instanceof UpstreamError) {
        options.onRetry?.(attempt, 0, lastError);
      }
      if (member === undefined) throw this.#noUpstream();
      if (member.idle !== undefined && member.usable()) {
        const pooled = member.idle.take();
        if (pooled !== undefined) return this.#lease(member, pooled.conn, pooled.rest);
      }
      member.pending++;
      try {
        const conn = await dialUpstream(member.spec.address, {
          timeoutMs: this.#options.connectTimeoutMs ?? POOL_DEFAULTS.connectTimeoutMs,
          signal: options.signal,
        });
        member.pending--;
        if (member.failuresInARow > 0) this.#options.onPassive?.(member.spec.name, "recovered");
        member.failuresInARow = 0;
        return this.#lease(member, conn);
      } catch (error) {
        member.pending--;
        this.#forgetIfGone(member);
        lastError = error;
        if (options.signal?.aborted) break;
        if (error instanceof UpstreamError && error.cause instanceof Deno.errors.NotCapable) {
          throw error; // a missing --allow-net grant: no other attempt can fix it
        }
        if (isLocalError(error)) {
          // The proxy is out of something: no upstream is to blame, and none would do better
          // now, so the round ends here and the backoff gives the resource time to come back.
          this.#localError(member, error);
          for (const m of this.#members) failed.add(m);
          continue;
        }
        member.connectFailures++;
        if (this.#options.counters) this.#options.counters.upstreamConnectFailures++;
        this.#failure(member, "connect failures", "connect_failure");
        failed.add(member);
      }
    }
    if (lastError instanceof UpstreamError) throw lastError;
    throw new UpstreamError(
      `Cannot dial any upstream of ${this.label}: ${String(lastError ?? "aborted")}`,
      this.#members[0].spec.address,
      { cause: lastError },
    );
  }

  #noUpstream(): NoUpstreamError {
    const names = this.#members.slice(0, 10).map((m) => m.spec.name).join(", ");
    const more = this.#members.length > 10 ? ` and ${this.#members.length - 10} more` : "";
    return new NoUpstreamError(
      `No upstream can take a connection: every upstream is draining (${names}${more})`,
    );
  }

  /** Counts a connect or check that failed for want of a local resource; logs once a second. */
  #localError(member: Member, error: unknown): void {
    if (this.#options.counters) this.#options.counters.upstreamLocalErrors++;
    this.#localSinceLog++;
    const now = this.#now();
    if (now - this.#lastLocalLog < LOCAL_ERROR_LOG_MS) return;
    this.#lastLocalLog = now;
    this.#logger?.error(
      "Cannot connect to upstream {name}: {error}; a local resource error ({count} since the last such line), not counted against the upstream",
      {
        name: member.spec.name,
        error: error instanceof Error ? error.message : String(error),
        count: this.#localSinceLog,
      },
    );
    this.#localSinceLog = 0;
  }

  #lease(
    member: Member,
    conn: Deno.Conn,
    rest?: Promise<Uint8Array | null>,
  ): TargetConnection {
    member.active++;
    member.total++;
    const shared = this.#options.shared;
    const cell = shared && member.slot !== undefined
      ? shared.plane * shared.capacity + member.slot
      : -1;
    if (cell >= 0) Atomics.add(shared!.counts, cell, 1);
    let released = false;
    const release = (failed: boolean) => {
      if (released) return;
      released = true;
      member.active--;
      if (cell >= 0) Atomics.sub(shared!.counts, cell, 1);
      this.#forgetIfGone(member);
      if (failed) {
        member.streamErrors++;
        if (this.#options.counters) this.#options.counters.upstreamStreamErrors++;
        this.#failure(member, "mid-stream errors", "stream_error");
      }
    };
    const idle = member.idle;
    return {
      conn,
      upstream: member.spec.name,
      counters: member.counters,
      usable: () => member.usable(),
      accepting: () => !member.draining && !member.removed,
      release,
      rest,
      // Pooled only while the upstream may take new connections: an idle connection does not
      // count as active (leastconn), and one of an upstream going away would serve nobody.
      recycle: idle === undefined ? undefined : (c, r) => {
        if (released || this.#idleClosed || !member.usable() || !idle.put(c, r)) return false;
        release(false);
        return true;
      },
    };
  }

  /** Drops a removed upstream once its last connection (or connect under way) has ended. */
  #forgetIfGone(member: Member): void {
    if (
      member.removed && member.active === 0 && member.pending === 0 &&
      this.#leaving.get(member.spec.name) === member
    ) {
      this.#leaving.delete(member.spec.name);
      this.#byName.delete(member.spec.name);
    }
  }

  #find(name: string): Member | undefined {
    return this.#byName.get(name);
  }

  #failure(member: Member, what: string, kind: PassiveEvent): void {
    member.failuresInARow++;
    if (this.#options.onPassive) {
      this.#options.onPassive(member.spec.name, kind);
      return;
    }
    const after = this.#options.ejectAfter ?? POOL_DEFAULTS.ejectAfter;
    if (after <= 0 || member.failuresInARow < after || member.ejected) return;
    const ms = Math.min(
      MAX_EJECT_MS,
      (this.#options.ejectMs ?? POOL_DEFAULTS.ejectMs) * 2 ** member.ejections,
    );
    member.ejections++;
    member.ejected = true;
    member.ejectedUntil = this.#now() + ms;
    member.failuresInARow = 0;
    member.idle?.clear("ejected");
    this.#logger?.warning(
      "Upstream {name} ejected for {seconds} s after {count} {what} in a row (ejection {n})",
      { name: member.spec.name, seconds: ms / 1000, count: after, what, n: member.ejections },
    );
    this.#options.onStateChange?.();
  }

  /**
   * A worker's report of `name` (the supervisor's pool): a failure counts toward ejection, a
   * recovery ends the run of failures. False when there is no such upstream.
   */
  passive(name: string, kind: PassiveEvent): boolean {
    const member = this.#find(name);
    if (!member) return false;
    if (kind === "recovered") {
      member.failuresInARow = 0;
      return true;
    }
    if (kind === "connect_failure") member.connectFailures++;
    else member.streamErrors++;
    this.#failure(
      member,
      kind === "connect_failure" ? "connect failures" : "mid-stream errors",
      kind,
    );
    return true;
  }

  /** Every upstream's state by name, for the workers (after ending ejections whose time is up). */
  states(): Record<string, MemberState> {
    const now = this.#now();
    this.#expire(now);
    const out: Record<string, MemberState> = {};
    for (const m of [...this.#members, ...this.#leaving.values()]) {
      out[m.spec.name] = {
        healthy: m.healthy,
        ejected: m.ejected,
        ejectedForMs: m.ejected ? Math.max(0, m.ejectedUntil - now) : 0,
        awaitingFirstCheck: m.awaitingFirstCheck,
        draining: m.draining,
      };
    }
    return out;
  }

  /** Takes the supervisor's decisions (a worker's pool); names it does not know are skipped. */
  applyStates(states: Readonly<Record<string, MemberState>>): void {
    const now = this.#now();
    for (const [name, state] of Object.entries(states)) {
      const member = this.#byName.get(name);
      if (!member) continue;
      member.healthy = state.healthy;
      member.ejected = state.ejected;
      member.ejectedUntil = now + state.ejectedForMs;
      member.awaitingFirstCheck = state.awaitingFirstCheck;
      if (!member.removed) member.draining = state.draining;
    }
    this.#sweepIdle();
  }

  /** The member the policy picks among those that may take a connection, not in `skip`. */
  #pick(skip: Set<Member>, avoid: string | undefined): Member | undefined {
    const now = this.#now();
    this.#expire(now);
    let candidates = this.#members.filter((m) =>
      !skip.has(m) && !m.draining && m.healthy && !(m.ejected) && m.spec.name !== avoid
    );
    if (candidates.length === 0 && avoid !== undefined) {
      candidates = this.#members.filter((m) =>
        !skip.has(m) && !m.draining && m.healthy && !m.ejected
      );
    }
    if (candidates.length === 0) {
      // Nothing is up: try what is not drained anyway (the clean failure of one upstream), an
      // ejected one whose time is up first.
      candidates = this.#members.filter((m) => !skip.has(m) && !m.draining)
        .sort((a, b) =>
          Number(a.ejected && a.ejectedUntil > now) - Number(b.ejected && b.ejectedUntil > now)
        );
    }
    if (candidates.length === 0) return undefined;
    switch (this.#options.policy ?? POOL_DEFAULTS.policy) {
      case "first":
        return candidates[0];
      case "roundrobin": {
        let total = 0;
        let best: Member | undefined;
        for (const m of candidates) {
          m.current += m.spec.weight;
          total += m.spec.weight;
          if (best === undefined || m.current > best.current) best = m;
        }
        best!.current -= total;
        return best;
      }
      default: {
        let best = candidates[0];
        for (const m of candidates) {
          // Fewest connections per unit of weight; ties go to the one given first.
          if (
            (this.#open(m) + m.pending) * best.spec.weight <
              (this.#open(best) + best.pending) * m.spec.weight
          ) {
            best = m;
          }
        }
        return best;
      }
    }
  }

  // Without active checks an ejection ends when its time is up (nothing else could end it).
  #expire(now: number): void {
    if (this.#options.onPassive) return; // a worker's pool: the supervisor decides
    for (const m of this.#members) {
      if (m.ejected && !m.checking && now >= m.ejectedUntil) {
        m.ejected = false;
        this.#logger?.info("Upstream {name} back from ejection (its time is up)", {
          name: m.spec.name,
        });
        this.#options.onStateChange?.();
      }
    }
  }

  async #checkLoop(
    member: Member,
    generation: number,
    offsetMs: number,
    signal: AbortSignal,
  ): Promise<void> {
    const current = () =>
      !signal.aborted && !this.#stop.signal.aborted && member.generation === generation;
    await waitOrAbort(offsetMs, signal, this.#timers);
    while (current()) {
      const result = await checkUpstream(member.spec.address, {
        mode: this.#options.mode ?? POOL_DEFAULTS.mode,
        preamble: checkPreamble(this.#options.sendProxy),
        timeoutMs: this.#options.checkTimeoutMs ?? POOL_DEFAULTS.checkTimeoutMs,
        now: this.#now,
        signal,
      });
      if (!current()) return; // stopped, removed or moved meanwhile: the result is stale
      this.#record(member, result);
      // Jittered by ±10 %: upstreams checked together once drift apart, never into phase.
      await waitOrAbort(this.#period() * (0.9 + 0.2 * this.#random()), signal, this.#timers);
    }
  }

  #record(member: Member, result: CheckResult): void {
    if (result.local) {
      // The proxy could not even try (EMFILE…): says nothing about the upstream.
      this.#localError(member, result.error);
      return;
    }
    member.lastCheck = { ...result, at: this.#now() };
    this.#recordCheck(member, result);
    if (!member.usable()) member.idle?.clear(member.state());
    this.#options.onStateChange?.();
  }

  #recordCheck(member: Member, result: CheckResult): void {
    const name = member.spec.name;
    if (member.awaitingFirstCheck) {
      member.awaitingFirstCheck = false;
      if (result.ok) {
        member.goodInARow = 1;
        member.healthy = true;
        this.#logger?.info("Upstream {name} is up (its first check passed)", { name });
      } else {
        member.badInARow = 1;
        this.#logger?.warning("Upstream {name} is down (its first check failed: {error})", {
          name,
          error: result.error ?? "failed",
        });
      }
      return;
    }
    if (result.ok) {
      member.goodInARow++;
      member.badInARow = 0;
      if (member.ejected && this.#now() >= member.ejectedUntil) {
        member.ejected = false;
        this.#logger?.info("Upstream {name} back from ejection (health check passed)", { name });
      }
      if (!member.healthy && member.goodInARow >= (this.#options.rise ?? POOL_DEFAULTS.rise)) {
        member.healthy = true;
        this.#logger?.info("Upstream {name} is up ({count} good checks in a row)", {
          name,
          count: member.goodInARow,
        });
      }
    } else {
      member.badInARow++;
      member.goodInARow = 0;
      if (member.healthy && member.badInARow >= (this.#options.fall ?? POOL_DEFAULTS.fall)) {
        member.healthy = false;
        this.#logger?.warning("Upstream {name} is down ({count} failed checks: {error})", {
          name,
          count: member.badInARow,
          error: result.error ?? "failed",
        });
      }
    }
  }
}

function assertUniqueNames(specs: readonly UpstreamSpec[]): void {
  const names = new Set<string>();
  for (const spec of specs) {
    if (names.has(spec.name)) throw new RangeError(`Upstream "${spec.name}" is given twice`);
    names.add(spec.name);
  }
}
