/**
 * TLS termination on the Foo listener (`--tls-cert`, `--tls-key`): reading and checking a key
 * pair, opening a TLS listener with it, and the handshake every TLS client goes through before
 * the engine sees its connection: explicit, under a deadline, counted by how it failed.
 *
 * Deno's TLS listener keeps the key pair it was opened with, so a new pair needs a new listener
 * on the same port (`SO_REUSEPORT`, always set on it) opened before the old one is closed: see
 * `Proxy.setTls`.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { systemTimers, type Timers } from "../async/timers.ts";
import type { Address } from "../net/address.ts";
import type { CloseReason, Stats } from "../stats/stats.ts";
import { TLS_FAILURE_FIELDS, type TlsHandshakeFailure } from "../stats/counter_schema.ts";
import { readSmallFile } from "./read_small_file.ts";

/** A certificate chain and its private key, PEM text. */
export interface TlsKeyPair {
  cert: string;
  key: string;
}

/** The handshake deadline unless `--tls-handshake-timeout` says otherwise, in ms. */
export const TLS_HANDSHAKE_TIMEOUT_MS = 5000;

/**
 * The kind of a handshake error as Deno 2.9 words them (measured): a client that closes or
 * resets mid-handshake (`UnexpectedEof`, `ConnectionReset`) is `eof`; bytes that are not a TLS
 * record (`received corrupt message of type InvalidContentType`: plain text, HTTP, a Foo line)
 * are `not_tls`; a client that refuses our certificate (`received fatal alert: UnknownCA`,
 * `BadCertificate`) is `alert`; one with no protocol version, cipher or group in common
 * (`peer is incompatible: …`, an old TLS 1.0 client) is `incompatible`.
 */
export function classifyHandshakeError(error: unknown): Exclude<TlsHandshakeFailure, "timeout"> {
  if (
    error instanceof Deno.errors.UnexpectedEof || error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted || error instanceof Deno.errors.BrokenPipe
  ) return "eof";
  const message = error instanceof Error ? error.message : String(error);
  if (message.includes("received corrupt message")) return "not_tls";
  if (message.includes("received fatal alert")) return "alert";
  if (message.includes("peer is incompatible")) return "incompatible";
  return "other";
}

/** A key pair that cannot serve: unreadable, not PEM, or a key that is not the certificate's. */
export class TlsKeyPairError extends Error {
  /** Creates the error; `message` names the files and says why. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TlsKeyPairError";
  }
}

/** Where a key pair was read from, for messages. */
export interface TlsKeyPairPaths {
  cert: string;
  key: string;
}

/**
 * Throws when `pair` cannot serve: it is given to a TLS listener on `127.0.0.1:0`, which Deno
 * refuses at once for a certificate or key that is not PEM and for a key that does not match the
 * certificate (`KeyMismatch`), and closed again. Without the permission to listen there, nothing
 * is checked (the listener serving it refuses a bad pair just the same).
 *
 * @throws {TlsKeyPairError} saying what is wrong with which file.
 */
export function checkKeyPair(pair: TlsKeyPair, paths: TlsKeyPairPaths): void {
  let listener: Deno.TlsListener;
  try {
    listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert: pair.cert, key: pair.key });
  } catch (error) {
    // Without a grant for 127.0.0.1:0 (a narrow --allow-net) the pair is checked where it is
    // used instead: by the listener, which refuses it the same way.
    if (error instanceof Deno.errors.NotCapable) return;
    const message = error instanceof Error ? error.message : String(error);
    const why = message.includes("KeyMismatch")
      ? `the key "${paths.key}" (--tls-key) is not the certificate's`
      : message.includes("No certificates found")
      ? `no PEM certificate in "${paths.cert}" (--tls-cert)`
      : message.includes("No keys found")
      ? `no PEM private key in "${paths.key}" (--tls-key)`
      : `${message} (--tls-cert "${paths.cert}", --tls-key "${paths.key}")`;
    throw new TlsKeyPairError(`Cannot use the TLS key pair: ${why}`, { cause: error });
  }
  listener.close();
}

/** Options for {@linkcode readKeyPair}. */
export interface ReadKeyPairOptions {
  /** Timers for the reads' deadlines. @default {systemTimers} */
  timers?: Timers;
}

/**
 * Reads the certificate and key files (asynchronously, bounded: see `read_small_file.ts`) and
 * checks that they make a usable pair ({@linkcode checkKeyPair}).
 *
 * @throws {TlsKeyPairError} naming the file and the reason.
 */
export async function readKeyPair(
  paths: TlsKeyPairPaths,
  options: ReadKeyPairOptions = {},
): Promise<TlsKeyPair> {
  let pair: TlsKeyPair;
  try {
    const [cert, key] = await Promise.all([
      readSmallFile(paths.cert, { what: "TLS certificate (--tls-cert)", timers: options.timers }),
      readSmallFile(paths.key, { what: "TLS key (--tls-key)", timers: options.timers }),
    ]);
    pair = { cert, key };
  } catch (error) {
    throw new TlsKeyPairError(error instanceof Error ? error.message : String(error), {
      cause: error,
    });
  }
  checkKeyPair(pair, paths);
  return pair;
}

/**
 * Whether a listener can set `SO_REUSEPORT` (`--unstable-net`: `Deno.listenDatagram` exists
 * exactly then; asking for `reusePort` without it ends the process).
 */
export function canReusePort(): boolean {
  return typeof (Deno as unknown as Record<string, unknown>).listenDatagram === "function";
}

/**
 * A TLS listener on `address` serving `pair`, with `SO_REUSEPORT` whenever it can be set: a new
 * key pair is served by a second listener on the same port, opened before this one closes.
 */
export function listenTls(address: Address, pair: TlsKeyPair): Deno.TlsListener {
  const options = {
    hostname: address.hostname,
    port: address.port,
    cert: pair.cert,
    key: pair.key,
  };
  return canReusePort() ? Deno.listenTls({ ...options, reusePort: true }) : Deno.listenTls(options);
}

/** `listen()`, tried again for a few ms while the port is still held by a listener just closed. */
async function listenWhenFree<L>(listen: () => L): Promise<L> {
  for (let attempt = 0;; attempt++) {
    try {
      return listen();
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse) || attempt >= 100) throw error;
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }
}

/**
 * Puts `pair` in service on the port of `old`, a TLS listener serving `current`, handing each
 * new listener to `use`: with `SO_REUSEPORT` a second listener opens and accepts before `old`
 * closes (Linux resets connections still in the old one's accept queue when it closes; the
 * accept loop keeps it empty, and `net.ipv4.tcp_migrate_req=1` moves them to the new one).
 * Without it (no `--unstable-net`) no second listener can share the port: `old` closes first
 * and a client connecting in that instant is refused.
 *
 * @throws the listen error of a pair that cannot be served (`current` serves again then).
 */
export async function replaceTlsListener(
  old: Deno.Listener,
  address: Address,
  pair: TlsKeyPair,
  current: TlsKeyPair,
  use: (listener: Deno.TlsListener) => void,
): Promise<void> {
  if (canReusePort()) {
    use(listenTls(address, pair));
    old.close();
    return;
  }
  old.close();
  try {
    use(await listenWhenFree(() => listenTls(address, pair)));
  } catch (error) {
    use(await listenWhenFree(() => listenTls(address, current)));
    throw error;
  }
}

/** Options for {@linkcode TlsHandshakes}. */
export interface TlsHandshakesOptions {
  /** Where `tls_handshakes` and `tls_handshake_failures` are counted. */
  stats: Stats;
  logger: Logger;
  /** The deadline of one handshake in ms; 0: none. @default {TLS_HANDSHAKE_TIMEOUT_MS} */
  timeoutMs?: number;
  /** @default {systemTimers} */
  timers?: Timers;
}

/** A failure log line at most this often (a flood of bad handshakes writes one line a second). */
const LOG_EVERY_MS = 1000;

/**
 * The handshake step of a TLS client: {@linkcode TlsHandshakes.run} completes the handshake
 * before anything reads the connection, or closes it at the deadline.
 */
export class TlsHandshakes {
  /** The deadline of one handshake in ms (0: none); a reload may change it. */
  timeoutMs: number;
  #stats: Stats;
  #logger: Logger;
  #timers: Timers;
  #lastLog = -Infinity;
  #unlogged = 0;

  /** Counts into `options.stats`. */
  constructor(options: TlsHandshakesOptions) {
    this.#stats = options.stats;
    this.#logger = options.logger;
    this.timeoutMs = options.timeoutMs ?? TLS_HANDSHAKE_TIMEOUT_MS;
    this.#timers = options.timers ?? systemTimers;
  }

  /**
   * Runs the handshake of `conn` (a `Deno.TlsConn`) within the deadline. Resolves with
   * `undefined` once it is done, or with why the connection ended (it is closed then):
   * `tls_handshake` (failed or too slow: counted by kind, logged at most once a second),
   * `shutdown` (`signal` aborted first), or `denied` (`signal` aborted with that reason: a reload
   * denied the client's source). Never rejects.
   */
  async run(conn: Deno.Conn, peer: string, signal: AbortSignal): Promise<CloseReason | undefined> {
    let cut: "timeout" | "shutdown" | "denied" | undefined;
    const close = (why: "timeout" | "shutdown" | "denied") => {
      if (cut !== undefined) return;
      cut = why;
      closeQuietly(conn);
    };
    const timer = this.timeoutMs > 0
      ? this.#timers.setTimeout(() => close("timeout"), this.timeoutMs)
      : undefined;
    const onAbort = () => close(signal.reason === "denied" ? "denied" : "shutdown");
    signal.addEventListener("abort", onAbort, { once: true });
    if (signal.aborted) onAbort();
    let failure: TlsHandshakeFailure | undefined;
    let error: unknown;
    try {
      await (conn as Deno.TlsConn).handshake();
      if (cut === undefined) {
        this.#stats.tlsHandshakes++;
        return undefined;
      }
    } catch (caught) {
      error = caught;
      if (cut === undefined) {
        failure = classifyHandshakeError(caught);
        closeQuietly(conn);
      }
    } finally {
      this.#timers.clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
    }
    if (cut === "shutdown" || cut === "denied") return cut;
    failure ??= "timeout";
    this.#stats[TLS_FAILURE_FIELDS[failure]]++;
    this.#log(peer, failure, error);
    return "tls_handshake";
  }

  #log(peer: string, failure: TlsHandshakeFailure, error: unknown): void {
    const now = performance.now();
    if (now - this.#lastLog < LOG_EVERY_MS) {
      this.#unlogged++;
      return;
    }
    this.#lastLog = now;
    const more = this.#unlogged;
    this.#unlogged = 0;
    this.#logger.info(
      "TLS handshake with {downstream} failed ({kind}): {error}; closed{more}",
      {
        downstream: peer,
        kind: failure,
        error: failure === "timeout"
          ? `no handshake within ${this.timeoutMs} ms (--tls-handshake-timeout)`
          : error instanceof Error
          ? error.message
          : String(error),
        more: more === 0 ? "" : ` (and ${more} more failed handshakes since the last such line)`,
      },
    );
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}
