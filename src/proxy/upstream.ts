/**
 * Dialing the upstream Foo server with a connect timeout.
 *
 * @module
 */
import { type Address, formatAddress } from "../cli/address.ts";

/** The upstream could not be reached (refused, unreachable, or the connect timed out). */
export class UpstreamError extends Error {
  /** The upstream address that failed. */
  readonly address: Address;
  /** Creates the error for `address`; `message` follows the Deno style. */
  constructor(message: string, address: Address, options?: ErrorOptions) {
    super(message, options);
    this.name = "UpstreamError";
    this.address = address;
  }
}

/** Options for {@linkcode dialUpstream}. */
export interface DialOptions {
  /** Give up after this many milliseconds; 0 means no timeout. @default {5000} */
  timeoutMs?: number;
  /** Aborts the attempt (for shutdown). Unset: only the timeout ends it. */
  signal?: AbortSignal;
}

/**
 * Connects to the upstream with `setNoDelay(true)` set.
 *
 * @throws {UpstreamError} when the connection is refused, unreachable or times out.
 */
export async function dialUpstream(
  address: Address,
  options: DialOptions = {},
): Promise<Deno.TcpConn> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const signals: AbortSignal[] = [];
  if (timeoutMs > 0) signals.push(AbortSignal.timeout(timeoutMs));
  if (options.signal) signals.push(options.signal);
  const signal = signals.length > 0 ? AbortSignal.any(signals) : undefined;
  try {
    const conn = await Deno.connect({ hostname: address.hostname, port: address.port, signal });
    conn.setNoDelay(true);
    return conn;
  } catch (error) {
    const why = signal?.aborted && signal.reason instanceof DOMException &&
        signal.reason.name === "TimeoutError"
      ? `connect timed out after ${timeoutMs} ms`
      : describeError(error);
    throw new UpstreamError(
      `Cannot dial upstream "${formatAddress(address)}": ${why}`,
      address,
      { cause: error },
    );
  }
}

/** A short lower-case reason for a network error ("connection refused", …). */
export function describeError(error: unknown): string {
  if (error instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (error instanceof Deno.errors.ConnectionReset) return "connection reset";
  if (error instanceof Deno.errors.TimedOut) return "timed out";
  if (error instanceof Deno.errors.NotCapable) return "not permitted (add it to --allow-net)";
  if (error instanceof Error) {
    return error.message.replace(/\s*\(os error \d+\)$/, "").replace(/^./, (c) => c.toLowerCase());
  }
  return String(error);
}
