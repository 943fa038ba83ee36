/**
 * A periodic connect probe of the upstream (TCP, or TCP and a TLS handshake with
 * `--upstream-tls`), for the `/readyz` upstream check.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { type Address, formatAddress } from "../net/address.ts";
import { type Clock, systemClock } from "../stats/clock.ts";
import { dialUpstream, UpstreamError, type UpstreamTls } from "./upstream.ts";
import { waitOrAbort } from "../async/wait_or_abort.ts";

/** Options for {@linkcode UpstreamProbe}. */
export interface UpstreamProbeOptions {
  /** Time between the end of one probe and the start of the next, in ms. @default {2000} */
  intervalMs?: number;
  /** Give up on one connect after this many ms; 0 means no timeout. @default {1000} */
  timeoutMs?: number;
  /**
   * How long a successful connect keeps the upstream "reachable", in ms, so one failed probe
   * does not flap readiness. @default {2 × intervalMs + timeoutMs}
   */
  freshMs?: number;
  /** Time source for `lastOk`; unset: the system clock. */
  clock?: Clock;
  /** Logs reachability changes (warning when lost, info when back); unset: silent. */
  logger?: Logger;
  /** Called after each probe with its result (and after {@linkcode UpstreamProbe.reportSuccess}
   * with `true`); unset: nothing is called. */
  onProbe?: (ok: boolean) => void;
  /** Aborting stops the probe like {@linkcode UpstreamProbe.close}. Unset: only close() does. */
  signal?: AbortSignal;
  /** Probe with a TLS handshake, as the proxy dials (a refused certificate fails it). */
  tls?: UpstreamTls;
}

/**
 * Connects to the upstream every `intervalMs` and closes at once, remembering when it last
 * succeeded. `await using probe = new UpstreamProbe(addr); await probe.start();`
 */
export class UpstreamProbe implements AsyncDisposable {
  /** The upstream probed. */
  readonly address: Address;
  #intervalMs: number;
  #timeoutMs: number;
  #freshMs: number;
  #clock: Clock;
  #logger: Logger | undefined;
  #onProbe: ((ok: boolean) => void) | undefined;
  #tls: UpstreamTls | undefined;
  #stop = new AbortController();
  #loop: Promise<void> | undefined;
  #lastOk: number | undefined;
  #lastError: string | undefined;
  #probes = 0;
  #wasReachable: boolean | undefined;
  #finished = Promise.withResolvers<void>();
  #firstResult = Promise.withResolvers<boolean>();

  /**
   * Creates a probe of `address`; nothing is dialed until {@linkcode UpstreamProbe.start}.
   *
   * @throws {RangeError} for a non-positive interval or a negative timeout.
   */
  constructor(address: Address, options: UpstreamProbeOptions = {}) {
    this.address = address;
    this.#intervalMs = options.intervalMs ?? 2000;
    this.#timeoutMs = options.timeoutMs ?? 1000;
    if (!(this.#intervalMs > 0)) {
      throw new RangeError(`Invalid probe interval ${this.#intervalMs} ms: expected > 0`);
    }
    if (!(this.#timeoutMs >= 0)) {
      throw new RangeError(`Invalid probe timeout ${this.#timeoutMs} ms: expected >= 0`);
    }
    this.#freshMs = options.freshMs ?? 2 * this.#intervalMs + this.#timeoutMs;
    this.#clock = options.clock ?? systemClock;
    this.#logger = options.logger;
    this.#onProbe = options.onProbe;
    this.#tls = options.tls;
    if (options.signal?.aborted) this.#stop.abort();
    else options.signal?.addEventListener("abort", () => void this.close(), { once: true });
  }

  /** Time (clock ms) of the last successful connect, or `undefined` if none yet. */
  get lastOk(): number | undefined {
    return this.#lastOk;
  }

  /** Why the last probe failed, or `undefined` when it succeeded (or none ran yet). */
  get lastError(): string | undefined {
    return this.#lastError;
  }

  /** Probes completed so far. */
  get probes(): number {
    return this.#probes;
  }

  /** Whether a connect succeeded within the last `freshMs`. */
  get reachable(): boolean {
    return this.#lastOk !== undefined && this.#clock() - this.#lastOk <= this.#freshMs;
  }

  /** One line on the last probe, for `/readyz`. */
  get detail(): string {
    const target = formatAddress(this.address);
    const ago = this.#lastOk === undefined
      ? "never"
      : `${((this.#clock() - this.#lastOk) / 1000).toFixed(1)} s ago`;
    if (this.#probes === 0) return `upstream ${target} not probed yet`;
    if (this.#lastError === undefined) return `upstream ${target} accepted a connection ${ago}`;
    return `${this.#lastError} (last success: ${ago})`;
  }

  /** Resolves once the probe has stopped. */
  get finished(): Promise<void> {
    return this.#finished.promise;
  }

  /**
   * Starts probing (the first probe at once) and resolves with the first probe's result.
   *
   * @throws {Error} when already started.
   */
  start(): Promise<boolean> {
    if (this.#loop) throw new Error("UpstreamProbe already started");
    this.#loop = this.#run().finally(() => this.#finished.resolve());
    return this.#firstResult.promise;
  }

  /**
   * Records a successful connect made elsewhere (the proxy dialing the upstream for a client),
   * which is as good as a probe.
   */
  reportSuccess(): void {
    this.#succeeded();
  }

  /** Probes once now and resolves with whether the upstream accepted the connection. */
  async probeOnce(): Promise<boolean> {
    let conn: Deno.Conn;
    try {
      conn = await dialUpstream(this.address, {
        timeoutMs: this.#timeoutMs,
        signal: this.#stop.signal,
        tls: this.#tls,
      });
    } catch (error) {
      if (this.#stop.signal.aborted) return false;
      this.#probes++;
      this.#failed(error instanceof UpstreamError ? error.message : String(error));
      return false;
    }
    conn.close();
    this.#probes++;
    this.#succeeded();
    return true;
  }

  /** Stops probing (aborting a connect in progress) and resolves when stopped. Idempotent. */
  async close(): Promise<void> {
    this.#stop.abort();
    this.#firstResult.resolve(false);
    if (this.#loop) await this.#loop;
    else this.#finished.resolve();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      const ok = await this.probeOnce();
      this.#firstResult.resolve(ok);
      await waitOrAbort(this.#intervalMs, signal);
    }
  }

  #succeeded(): void {
    this.#lastOk = this.#clock();
    this.#lastError = undefined;
    if (this.#wasReachable === false) {
      this.#logger?.info("Upstream {upstream} is reachable again", {
        upstream: formatAddress(this.address),
      });
    }
    this.#wasReachable = true;
    this.#onProbe?.(true);
  }

  #failed(message: string): void {
    this.#lastError = message;
    if (this.#wasReachable !== false) {
      this.#logger?.warning("Upstream probe failed: {message}", { message });
    }
    this.#wasReachable = false;
    this.#onProbe?.(false);
  }
}
