/**
 * `--pool N`: one upstream's idle connections, kept for the next client instead of a new connect.
 *
 * A connection comes here only when its client ended cleanly (see the bridge): every REQ answered,
 * no partial line either way, its FIN not passed upstream. It comes with the read that was pending
 * on it (`rest`): while the connection is idle here, that read settling means the server closed
 * it, reset it, or sent bytes nobody asked for, and the connection is closed and counted, never
 * handed out. One handed out takes `rest` along, and its new bridge serves it first (and dials
 * afresh when it ends before the client sent a byte on it).
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { systemTimers, type Timers } from "../async/timers.ts";

/** Process-wide idle-pool counters (`Stats` fits). */
export interface IdlePoolCounters {
  /** Connections handed out from a pool instead of dialed. */
  upstreamPoolReused: number;
  /** Connections idle in a pool now (a gauge). */
  upstreamPoolIdle: number;
  /** Idle connections the server closed, reset or sent unsolicited bytes on. */
  upstreamPoolDiscarded: number;
  /** Idle connections closed after the idle timeout. */
  upstreamPoolExpired: number;
}

/** Options for {@linkcode IdleConnections}. */
export interface IdleConnectionsOptions {
  /** Most connections kept; 0: none (every {@linkcode IdleConnections.put} refuses). */
  max: number;
  /** A connection unused this long (ms) is closed; 0: kept until the server closes it. */
  idleTimeoutMs: number;
  /** The upstream's name, for log lines. */
  name: string;
  /** Where the counts go. Unset: not counted. */
  counters?: IdlePoolCounters;
  /** Log sink. Unset: nothing logged. */
  logger?: Logger;
  /** @default {systemTimers} */
  timers?: Timers;
}

/** One pooled connection and the read pending on it. */
export interface IdleConnection {
  conn: Deno.Conn;
  /** The read pending when it was pooled: bytes, `null` (end of stream), or its error. */
  rest: Promise<Uint8Array | null>;
}

class Entry implements IdleConnection {
  conn: Deno.Conn;
  rest: Promise<Uint8Array | null>;
  timer: unknown = undefined;
  /** Settles once `rest` has (so a close can wait for the read to end). */
  settled: Promise<void>;

  constructor(conn: Deno.Conn, rest: Promise<Uint8Array | null>) {
    this.conn = conn;
    this.rest = rest;
    this.settled = rest.then(() => {}, () => {});
  }
}

/** One upstream's idle connections, most recently used first out. */
export class IdleConnections {
  #options: IdleConnectionsOptions;
  #timers: Timers;
  #idle: Entry[] = [];
  /** Closed entries whose read has not ended yet ({@linkcode closed} waits for them). */
  #closing = new Set<Promise<void>>();

  /** An empty pool. */
  constructor(options: IdleConnectionsOptions) {
    this.#options = options;
    this.#timers = options.timers ?? systemTimers;
  }

  /** Connections idle now. */
  get size(): number {
    return this.#idle.length;
  }

  /**
   * Keeps `conn` (with the read pending on it) for the next client; false when full or off (the
   * caller closes it then).
   */
  put(conn: Deno.Conn, rest: Promise<Uint8Array | null>): boolean {
    if (this.#idle.length >= this.#options.max) return false;
    const entry = new Entry(conn, rest);
    this.#idle.push(entry);
    this.#count("upstreamPoolIdle", 1);
    rest.then(
      (got) => this.#settled(entry, got === null ? "closed by the server" : "unsolicited bytes"),
      (error) => this.#settled(entry, `failed: ${String(error)}`),
    );
    const ms = this.#options.idleTimeoutMs;
    if (ms > 0) this.#arm(entry, ms);
    return true;
  }

  /** The most recently pooled connection, taken out; undefined when none is idle. */
  take(): IdleConnection | undefined {
    const entry = this.#idle.pop();
    if (entry === undefined) return undefined;
    this.#timers.clearTimeout(entry.timer);
    this.#count("upstreamPoolIdle", -1);
    this.#count("upstreamPoolReused", 1);
    return entry;
  }

  /** Closes every idle connection (`why` for the debug line); they are not counted as discarded. */
  clear(why: string): void {
    if (this.#idle.length === 0) return;
    this.#options.logger?.debug("Closing {count} idle connection(s) to {name}: {why}", {
      count: this.#idle.length,
      name: this.#options.name,
      why,
    });
    this.#count("upstreamPoolIdle", -this.#idle.length);
    for (const entry of this.#idle.splice(0)) this.#close(entry);
  }

  /** Resolves once the reads of every connection closed so far have ended (no op left behind). */
  async closed(): Promise<void> {
    while (this.#closing.size > 0) await Promise.all(this.#closing);
  }

  #arm(entry: Entry, ms: number): void {
    entry.timer = this.#timers.setTimeout(() => {
      entry.timer = undefined;
      if (!this.#remove(entry)) return;
      this.#count("upstreamPoolExpired", 1);
      this.#options.logger?.debug("Idle connection to {name} closed: unused for {ms} ms", {
        name: this.#options.name,
        ms,
      });
      this.#close(entry);
    }, ms);
  }

  #settled(entry: Entry, what: string): void {
    if (!this.#remove(entry)) return; // handed out (its new bridge owns the read) or closed
    this.#count("upstreamPoolDiscarded", 1);
    this.#options.logger?.info("Idle pooled connection to {name} discarded: {what}", {
      name: this.#options.name,
      what,
    });
    this.#close(entry);
  }

  /** Takes `entry` out of the idle list; false when it was not there. */
  #remove(entry: Entry): boolean {
    const i = this.#idle.indexOf(entry);
    if (i < 0) return false;
    this.#idle.splice(i, 1);
    this.#timers.clearTimeout(entry.timer);
    this.#count("upstreamPoolIdle", -1);
    return true;
  }

  #close(entry: Entry): void {
    this.#timers.clearTimeout(entry.timer);
    try {
      entry.conn.close();
    } catch {
      // Already closed.
    }
    const settled = entry.settled;
    this.#closing.add(settled);
    void settled.then(() => this.#closing.delete(settled));
  }

  #count(key: keyof IdlePoolCounters, n: number): void {
    const counters = this.#options.counters;
    if (counters !== undefined) counters[key] += n;
  }
}
