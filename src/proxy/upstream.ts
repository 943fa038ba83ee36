/**
 * Dialing the upstream Foo server with a connect timeout, in plain TCP or TLS (`--upstream-tls`):
 * the one dial every mode, the health checks and the readiness probe use.
 *
 * @module
 */
import { type Address, formatAddress } from "../net/address.ts";
import { RESOURCE_ERROR_CODES } from "../net/accept_loop.ts";
import { describeError } from "../net/describe_error.ts";
import {
  dialTcpOrTls,
  type TlsClientOptions,
  type TlsFailureKind,
  TlsHandshakeError,
} from "../net/tls_dial.ts";

/** The upstream could not be reached (refused, unreachable, or the connect timed out). */
export class UpstreamError extends Error {
  /** The upstream address that failed. */
  readonly address: Address;
  /** Set when the TCP connect succeeded and the TLS handshake failed. Unset: not TLS's fault. */
  readonly tls: TlsFailureKind | undefined;
  /** Creates the error for `address`; `message` follows the Deno style. */
  constructor(
    message: string,
    address: Address,
    options?: ErrorOptions & { tls?: TlsFailureKind },
  ) {
    super(message, options);
    this.name = "UpstreamError";
    this.address = address;
    this.tls = options?.tls;
  }
}

/**
 * TLS to the upstreams (`--upstream-tls`): the certificate is always verified, against the
 * default roots plus `caCerts`, for `serverName` (unset: the upstream's host).
 */
export type UpstreamTls = TlsClientOptions;

/** Options for {@linkcode dialUpstream}. */
export interface DialOptions {
  /** Give up after this many milliseconds; 0 means no timeout. @default {5000} */
  timeoutMs?: number;
  /** Aborts the attempt (for shutdown). Unset: only the timeout ends it. */
  signal?: AbortSignal;
  /**
   * Speak TLS: the handshake is part of the dial (the timeout covers it), and a certificate
   * that fails verification fails the dial. Unset: plain TCP.
   */
  tls?: UpstreamTls;
  /**
   * Bytes written first, in the clear, before the TLS handshake if any (`--send-proxy`'s PROXY
   * header): a failure to write them is a failed connect. Unset: none.
   */
  preamble?: Uint8Array;
}

/**
 * Connects to the upstream with `setNoDelay(true)` set (on the TCP socket under TLS too, except
 * with a client certificate: `Deno.connectTls` gives no access to it), and with `options.tls`
 * completes the TLS handshake before resolving.
 *
 * @throws {UpstreamError} when the connection is refused, unreachable or times out, or the TLS
 * handshake fails (`error.tls` says how).
 */
export async function dialUpstream(
  address: Address,
  options: DialOptions = {},
): Promise<Deno.Conn> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const outer = options.signal;
  // A timer cleared once connected, and one listener removed then, rather than
  // AbortSignal.timeout() + AbortSignal.any(): those keep a timer, signals and weak references
  // alive for the whole timeout after every successful dial (measured: ~1 KiB of heap per
  // connection opened in the last 5 s).
  const controller = new AbortController();
  let timedOut = false;
  const timer = timeoutMs > 0
    ? setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs)
    : undefined;
  const onAbort = () => controller.abort(outer?.reason);
  outer?.addEventListener("abort", onAbort, { once: true });
  if (outer?.aborted) onAbort();
  try {
    return await dialTcpOrTls(address, {
      signal: controller.signal,
      tls: options.tls,
      preamble: options.preamble,
    });
  } catch (error) {
    const tls = error instanceof TlsHandshakeError ? error : undefined;
    const why = timedOut
      ? `connect timed out after ${timeoutMs} ms${tls ? " (in the TLS handshake)" : ""}`
      : isLocalError(error)
      ? `${describeError(error)} (a local resource error of the proxy, not the upstream's)`
      : tls
      ? tls.message
      : describeError(error);
    throw new UpstreamError(
      `Cannot dial upstream "${formatAddress(address)}": ${why}`,
      address,
      { cause: error, tls: outer?.aborted ? undefined : tls?.kind },
    );
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener("abort", onAbort);
  }
}

/**
 * Whether a connect failed for want of a local resource (EMFILE, ENFILE, ENOBUFS, ENOMEM):
 * never the upstream's fault, and no other upstream would do better. Looks through an
 * {@linkcode UpstreamError}'s cause.
 *
 * EADDRNOTAVAIL is not one: it concerns one destination (an address this host cannot reach, such
 * as `[::1]` with IPv6 off; or no local port left towards that address and port, since a port is
 * reused towards other destinations), so it is that upstream's failure, and others are tried.
 */
export function isLocalError(error: unknown): boolean {
  const cause = error instanceof UpstreamError ? error.cause : error;
  const code = (cause as { code?: unknown } | null)?.code;
  return typeof code === "string" && RESOURCE_ERROR_CODES.has(code);
}
