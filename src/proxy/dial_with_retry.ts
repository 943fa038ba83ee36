/**
 * Dialing the upstream again after a refused or timed-out connect, with exponential backoff and
 * jitter, so a restarting upstream or a full accept queue does not cost clients their connection.
 *
 * @module
 */
import type { Address } from "../net/address.ts";
import { type DialOptions, dialUpstream, UpstreamError } from "./upstream.ts";

/** Options for {@linkcode dialWithRetry}. */
export interface DialWithRetryOptions extends DialOptions {
  /** Attempts after the first one fails; 0: dial once. @default {3} */
  retries?: number;
  /**
   * Backoff before the first retry in ms; it doubles for each further retry, and each wait is
   * drawn from [half, all] of it (jitter, so clients dropped together do not retry together).
   * @default {100}
   */
  backoffMs?: number;
  /** Cap on one backoff wait, in ms. @default {5000} */
  maxBackoffMs?: number;
  /** Random numbers in [0, 1) for the jitter; unset: `Math.random`. */
  random?: () => number;
  /** Called before each backoff wait with the retry number (from 1), the wait and the failure. */
  onRetry?: (retry: number, delayMs: number, error: UpstreamError) => void;
}

/**
 * The wait before retry number `retry` (from 1): `backoffMs · 2^(retry-1)` capped at
 * `maxBackoffMs`, then scaled into [½, 1] of that by `random()`.
 */
export function backoffDelay(
  retry: number,
  options: { backoffMs?: number; maxBackoffMs?: number; random?: () => number } = {},
): number {
  const base = options.backoffMs ?? 100;
  const cap = options.maxBackoffMs ?? 5000;
  const full = Math.min(cap, base * 2 ** Math.max(0, retry - 1));
  const random = options.random ?? Math.random;
  return full / 2 + (full / 2) * random();
}

/**
 * Dials `address` like {@linkcode dialUpstream}, retrying failed attempts. An abort of
 * `options.signal` ends the attempts at once; a failure retrying cannot fix (a missing
 * `--allow-net` permission) is not retried.
 *
 * @throws {UpstreamError} from the last attempt when every attempt failed (or the dial was
 * aborted).
 */
export async function dialWithRetry(
  address: Address,
  options: DialWithRetryOptions = {},
): Promise<Deno.Conn> {
  const retries = options.retries ?? 3;
  for (let retry = 0;; retry++) {
    try {
      return await dialUpstream(address, options);
    } catch (error) {
      if (
        !(error instanceof UpstreamError) || retry >= retries || options.signal?.aborted ||
        error.cause instanceof Deno.errors.NotCapable
      ) {
        throw error;
      }
      const delayMs = backoffDelay(retry + 1, options);
      options.onRetry?.(retry + 1, delayMs, error);
      if (!await wait(delayMs, options.signal)) throw error;
    }
  }
}

/** Waits `ms`; resolves false at once when `signal` aborts first. */
function wait(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
