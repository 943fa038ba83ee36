/**
 * {@linkcode dialTcpOrTls}: one TCP connect, and when asked the TLS handshake on it, used by the
 * proxy's upstream dial (so by every mode, the health checks and the readiness probe) and by the
 * bundled client and load generator. The peer's certificate is always verified: no option turns
 * that off.
 *
 * What Deno 2.9 allows: `Deno.startTls` takes a connected socket and any name to send as SNI and
 * verify, but cannot present a client certificate; `Deno.connectTls` can, but sends the host it
 * dials as SNI (and takes no abort signal). So a client certificate comes with SNI = the host.
 *
 * @module
 */
import type { Address } from "./address.ts";
import { parseIp } from "./cidr.ts";

/** TLS on a client connection. The certificate is verified against the roots plus `caCerts`. */
export interface TlsClientOptions {
  /** PEM certificates added to the trust roots. Unset: the default roots only. */
  caCerts?: string[];
  /**
   * The name sent as SNI and verified in the certificate. Unset: the host dialed. Cannot be
   * another name than the host with `cert` (see there).
   */
  serverName?: string;
  /**
   * A client certificate chain (PEM), presented when the server asks; needs `key`. Deno sends
   * one only from `Deno.connectTls`, which sends the host it dials as SNI (`Deno.startTls`,
   * which takes another name, has no certificate option). Unset: none.
   */
  cert?: string;
  /** The client certificate's private key (PEM). Unset: none. */
  key?: string;
}

/**
 * How a TLS handshake failed: `verify`, the peer's certificate was refused (unknown issuer,
 * wrong name, expired…); `handshake`, anything else after the TCP connect (an alert, a peer that
 * is not TLS, a reset, a deadline).
 */
export type TlsFailureKind = "verify" | "handshake";

/** The TCP connect succeeded and the TLS handshake failed; `cause` is Deno's error. */
export class TlsHandshakeError extends Error {
  /** How it failed. */
  readonly kind: TlsFailureKind;
  /** Creates the error from Deno's; the message is `TLS: <Deno's reason>`. */
  constructor(cause: unknown, kind?: TlsFailureKind) {
    const why = cause instanceof Error ? cause.message : String(cause);
    super(`TLS: ${why.replace(/\s*\(os error \d+\)$/, "")}`, { cause });
    this.name = "TlsHandshakeError";
    this.kind = kind ?? (/invalid peer certificate/i.test(why) ? "verify" : "handshake");
  }
}

const DNS_NAME = /^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$/;

/**
 * `text` as a name `Deno.startTls` takes to send as SNI and verify: a host name, or an IP address
 * (brackets dropped); `undefined` when it is neither (Deno would refuse it at every dial).
 */
export function serverNameOf(text: string): string | undefined {
  const name = text.trim();
  const bare = name.startsWith("[") && name.endsWith("]") ? name.slice(1, -1) : name;
  if (parseIp(bare) !== undefined && !bare.includes("%")) return bare;
  return name.length <= 253 && DNS_NAME.test(name) ? name : undefined;
}

/**
 * Why Deno would refuse these certificates or this key at every handshake (a CA that does not
 * parse, a key that is not the certificate's), found at once and without a connection:
 * `Deno.createHttpClient` parses them the way a TLS dial does. `undefined`: usable.
 */
export function tlsOptionsProblem(tls: TlsClientOptions): string | undefined {
  // Text without a certificate in it parses as no certificate at all, not as an error.
  if (tls.caCerts?.some((pem) => !pem.includes("-----BEGIN CERTIFICATE-----"))) {
    return "no PEM certificate in it";
  }
  try {
    const client = Deno.createHttpClient({
      caCerts: tls.caCerts,
      ...(tls.cert !== undefined ? { cert: tls.cert, key: tls.key ?? "" } : {}),
    });
    client.close();
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/** Options for {@linkcode dialTcpOrTls}. */
export interface DialTcpOrTlsOptions {
  /** Aborting ends the connect or the handshake at once (the caller's deadline). */
  signal?: AbortSignal;
  /** Complete a TLS handshake before resolving. Unset: plain TCP. */
  tls?: TlsClientOptions;
  /**
   * Bytes written first, in the clear, before any TLS handshake: a PROXY protocol header, which
   * precedes TLS as it precedes every other byte (HAProxy's `send-proxy` on an `ssl` server).
   * Not possible with a client certificate (`Deno.connectTls` shakes hands on its own). Unset:
   * none.
   */
  preamble?: Uint8Array;
}

/** The preamble could not be written (the connection broke right after it was made). */
export class PreambleError extends Error {
  /** Creates the error from the write's; the message is `cannot send the PROXY header: …`. */
  constructor(cause: unknown) {
    const why = cause instanceof Error ? cause.message : String(cause);
    super(`cannot send the PROXY header: ${why.replace(/\s*\(os error \d+\)$/, "")}`, { cause });
    this.name = "PreambleError";
  }
}

/**
 * Connects to `address` with `setNoDelay(true)` (on the TCP socket under TLS too, except with a
 * client certificate: `Deno.connectTls` gives no access to it) and with `options.tls` completes
 * the handshake.
 *
 * @throws the connect's error (`Deno.errors.ConnectionRefused`…), the abort reason, or a
 * {@linkcode TlsHandshakeError} when the TCP connect succeeded and the handshake failed (an
 * abort during the handshake throws one too, with kind `handshake`).
 */
export async function dialTcpOrTls(
  address: Address,
  options: DialTcpOrTlsOptions = {},
): Promise<Deno.Conn> {
  const { tls, signal, preamble } = options;
  const { hostname, port } = address;
  if (tls?.cert !== undefined) {
    if (preamble !== undefined && preamble.length > 0) {
      throw new TypeError(
        "A PROXY header cannot precede a TLS handshake that presents a client certificate: Deno.connectTls connects and shakes hands in one call",
      );
    }
    const conn = await abortable(
      Deno.connectTls({ hostname, port, caCerts: tls.caCerts, cert: tls.cert, key: tls.key ?? "" }),
      signal,
    );
    return await handshake(conn, signal);
  }
  const conn = await Deno.connect({ hostname, port, signal });
  conn.setNoDelay(true);
  if (preamble !== undefined && preamble.length > 0) {
    // A fresh socket's buffer takes a header at once; a connection closed under it rejects.
    try {
      for (let at = 0; at < preamble.length;) at += await conn.write(preamble.subarray(at));
    } catch (error) {
      closeQuietly(conn);
      throw new PreambleError(error);
    }
  }
  if (tls === undefined) return conn;
  let tlsConn: Deno.TlsConn;
  try {
    tlsConn = await Deno.startTls(conn, {
      hostname: tls.serverName ?? hostname,
      caCerts: tls.caCerts,
    });
  } catch (error) {
    closeQuietly(conn);
    throw new TlsHandshakeError(error);
  }
  return await handshake(tlsConn, signal);
}

/** Runs the handshake of `conn`; aborting `signal` closes it (which ends the handshake). */
async function handshake(
  conn: Deno.TlsConn,
  signal: AbortSignal | undefined,
): Promise<Deno.TlsConn> {
  const onAbort = () => closeQuietly(conn);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    if (signal?.aborted) throw signal.reason;
    await conn.handshake();
    return conn;
  } catch (error) {
    closeQuietly(conn);
    throw new TlsHandshakeError(error, signal?.aborted ? "handshake" : undefined);
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}

/**
 * `Deno.connectTls` takes no signal: an abort rejects at once, and a connection that arrives
 * after is closed. Its TCP connect then lasts until the system gives up on it.
 */
function abortable(
  pending: Promise<Deno.TlsConn>,
  signal: AbortSignal | undefined,
): Promise<Deno.TlsConn> {
  if (signal === undefined) return pending;
  if (signal.aborted) {
    pending.then(closeQuietly, () => {});
    return Promise.reject(signal.reason);
  }
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      pending.then(closeQuietly, () => {});
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    pending.then(
      (conn) => {
        signal.removeEventListener("abort", onAbort);
        if (signal.aborted) closeQuietly(conn);
        else resolve(conn);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

/** Closes `conn`, ignoring that it may be closed already. */
export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
