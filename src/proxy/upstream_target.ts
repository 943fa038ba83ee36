/**
 * The routing seam between the proxy and the bridge engine: where a connection's upstream
 * connection comes from, for its first dial and for every failover. One upstream today
 * ({@linkcode SingleUpstream}); a set of upstreams with balancing and health is another
 * {@linkcode UpstreamTarget}, and the engine does not change.
 *
 * @module
 */
import { type Address, formatAddress } from "../net/address.ts";
import { dialWithRetry } from "./dial_with_retry.ts";
import type { UpstreamError } from "./upstream.ts";

/** Options for one {@linkcode UpstreamTarget.dial}. */
export interface TargetDialOptions {
  /** Aborting ends the attempts at once. */
  signal?: AbortSignal;
  /** Attempts after a refused or timed-out one. @default {0} */
  retries?: number;
  /** Backoff before the first retry in ms, doubling after each (jittered). @default {100} */
  backoffMs?: number;
  /** Cap on one backoff wait in ms. @default {5000} */
  maxBackoffMs?: number;
  /** Called before each backoff wait. */
  onRetry?: (retry: number, delayMs: number, error: UpstreamError) => void;
  /** An upstream to pass over when another can take the connection (the one that just died). */
  avoid?: string;
}

/** A dialed upstream connection and the name of the upstream it goes to. */
export interface TargetConnection {
  conn: Deno.TcpConn;
  /** The upstream's name for logs and labels (its address). */
  upstream: string;
  /** Per-upstream counters the engine adds the REQs and replies of this connection to. */
  counters?: { requests: number; replies: number };
  /**
   * Called once when this upstream connection ends; `failed`: it failed mid-stream (counts
   * toward ejecting the upstream). Unset: nothing to report.
   */
  release?: (failed: boolean) => void;
  /**
   * Whether the upstream still takes new work (not draining, ejected, down or removed): a shared
   * connection (`--mux`) stops taking clients when it turns false. Unset: always.
   */
  usable?: () => boolean;
}

/** Where upstream connections come from. */
export interface UpstreamTarget {
  /** The upstream(s), for log lines. */
  readonly label: string;
  /** How many upstreams there are (`--mux` opens N connections per upstream). Unset: 1. */
  readonly upstreamCount?: number;
  /**
   * Opens an upstream connection (with `setNoDelay(true)`).
   *
   * @throws {UpstreamError} when every attempt failed or the dial was aborted.
   */
  dial(options?: TargetDialOptions): Promise<TargetConnection>;
}

/** Options for {@linkcode SingleUpstream}. */
export interface SingleUpstreamOptions {
  /** Connect timeout per attempt in ms; 0: none. @default {5000} */
  connectTimeoutMs?: number;
  /** Random numbers in [0, 1) for backoff jitter. @default {Math.random} */
  random?: () => number;
}

/** One upstream address. */
export class SingleUpstream implements UpstreamTarget {
  /** The upstream's address text. */
  readonly label: string;
  /** One. */
  readonly upstreamCount = 1;
  #address: Address;
  #options: SingleUpstreamOptions;

  /** A target dialing `address`. */
  constructor(address: Address, options: SingleUpstreamOptions = {}) {
    this.#address = address;
    this.#options = options;
    this.label = formatAddress(address);
  }

  /** Dials the address, retrying as `options` say. */
  async dial(options: TargetDialOptions = {}): Promise<TargetConnection> {
    const conn = await dialWithRetry(this.#address, {
      timeoutMs: this.#options.connectTimeoutMs,
      random: this.#options.random,
      retries: options.retries ?? 0,
      backoffMs: options.backoffMs,
      maxBackoffMs: options.maxBackoffMs,
      signal: options.signal,
      onRetry: options.onRetry,
    });
    return { conn, upstream: this.label };
  }
}
