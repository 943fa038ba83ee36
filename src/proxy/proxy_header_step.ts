/**
 * `--accept-proxy`: the first step of a downstream connection (see `proxy.ts`). From a peer in
 * the list, {@linkcode readProxyHeader} reads a PROXY header (v1 or v2) before anything else,
 * bounded in size and time; the connection is then served as a {@linkcode ProxiedConn} whose
 * `remoteAddr` is the client the header names and whose first reads return the bytes that came
 * after the header. From any other peer nothing is read here: its connection is wrapped so that
 * its first bytes are looked at as they are read, and a header there closes it (only a trusted
 * peer may say who the client is).
 *
 * @module
 */
import { formatAddress } from "../net/address.ts";
import {
  encodeProxyHeader,
  type ProxyHeader,
  type ProxyHeaderErrorKind,
  ProxyHeaderParser,
  proxyHeaderStart,
} from "../net/proxy_header.ts";
import type { TargetConnection, TargetDialOptions, UpstreamTarget } from "./upstream_target.ts";

/** Why a connection was closed at the PROXY header step: the label of its counter. */
export type ProxyHeaderFailure =
  | ProxyHeaderErrorKind
  | "untrusted"
  | "timeout"
  | "truncated";

/** Options for {@linkcode readProxyHeader}. */
export interface ReadProxyHeaderOptions {
  /** Close the connection when the whole header has not come within this many ms; 0: never. */
  timeoutMs: number;
  /** Aborting closes the connection at once (result `aborted`). */
  signal?: AbortSignal;
}

/** What {@linkcode readProxyHeader} gives. */
export type ReadProxyHeaderResult =
  | {
    ok: true;
    header: ProxyHeader;
    /** The bytes read after the header: the client's first bytes (empty: none yet). */
    held: Uint8Array;
  }
  | {
    ok: false;
    /**
     * Why; `closed`: the peer left (or reset) before sending a byte (a load balancer's TCP
     * check), not an error; `aborted`: the proxy is closing.
     */
    kind: ProxyHeaderFailure | "closed" | "aborted";
    /** What was wrong, for the log line. */
    reason: string;
  };

/** Bytes read at a time while reading a header. */
const READ_SIZE = 1024;

/**
 * Reads a PROXY header from `conn`, and no byte of the client's before it: the bytes that come
 * with its end are handed over as `held`. On failure the connection is closed here.
 */
export async function readProxyHeader(
  conn: Deno.Conn,
  options: ReadProxyHeaderOptions,
): Promise<ReadProxyHeaderResult> {
  const parser = new ProxyHeaderParser();
  const buf = new Uint8Array(READ_SIZE);
  let ended: "timeout" | "aborted" | undefined;
  const end = (why: "timeout" | "aborted") => {
    ended ??= why;
    try {
      conn.close(); // ends the pending read
    } catch {
      // Already closed.
    }
  };
  const timer = options.timeoutMs > 0
    ? setTimeout(() => end("timeout"), options.timeoutMs)
    : undefined;
  const onAbort = () => end("aborted");
  options.signal?.addEventListener("abort", onAbort, { once: true });
  if (options.signal?.aborted) onAbort();
  let total = 0;
  try {
    while (ended === undefined) {
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch {
        n = null; // reset, or closed by the timer or the signal
      }
      if (ended !== undefined) break;
      if (n === null) {
        closeQuietly(conn);
        return total === 0
          ? { ok: false, kind: "closed", reason: "closed before sending a byte" }
          : {
            ok: false,
            kind: "truncated",
            reason: `the connection ended after ${total} byte(s) of the header`,
          };
      }
      total += n;
      const result = parser.push(buf.subarray(0, n));
      if (result.state === "more") continue;
      if (result.state === "invalid") {
        closeQuietly(conn);
        return { ok: false, kind: result.kind, reason: result.reason };
      }
      return { ok: true, header: result.header, held: buf.slice(result.consumed, n) };
    }
    return ended === "timeout"
      ? {
        ok: false,
        kind: "timeout",
        reason: `no complete header within ${options.timeoutMs} ms (${total} byte(s) came)`,
      }
      : { ok: false, kind: "aborted", reason: "the proxy is closing" };
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

/** A connection from a peer not trusted to send a PROXY header sent one; the read fails with it. */
export class ProxyHeaderRefused extends Error {
  /** Creates the error; `peer` is the transport address text. */
  constructor(peer: string) {
    super(`A PROXY header from ${peer}, which is not in --accept-proxy`);
    this.name = "ProxyHeaderRefused";
  }
}

/** Options for {@linkcode ProxiedConn}. */
export interface ProxiedConnOptions {
  /** The client's address (from the header). Unset: the connection's own. */
  remoteAddr?: Deno.NetAddr;
  /** The address the client connected to (from the header). Unset: the connection's own. */
  localAddr?: Deno.NetAddr;
  /** Bytes to return before reading the connection (those read with the header). */
  held?: Uint8Array;
  /**
   * Watch the first bytes read: when they start with `PROXY ` or the v2 signature the connection
   * is closed and the read fails with {@linkcode ProxyHeaderRefused}, after this is called.
   * Unset: not watched.
   */
  onHeader?: () => void;
}

/**
 * A downstream connection after the PROXY header step: its `remoteAddr` is the real client's, its
 * first reads return `held`, and (for a peer not trusted to send a header) its first bytes are
 * watched for one. Only what the engine uses is forwarded with care (`read`, `write`, `close`,
 * `closeWrite`); `readable` and `writable` are the connection's own and skip `held`.
 */
export class ProxiedConn implements Deno.Conn {
  /** The client's address: the header's, or the connection's own. */
  readonly remoteAddr: Deno.NetAddr;
  /** The address the client connected to: the header's, or the connection's own. */
  readonly localAddr: Deno.NetAddr;
  /** Whether the watched first bytes were a PROXY header (the connection was closed for it). */
  refused = false;
  readonly #conn: Deno.Conn;
  #held: Uint8Array | undefined;
  #onHeader: (() => void) | undefined;
  /** Bytes read while the first bytes are still undecided (fewer than a signature). */
  #seen: Uint8Array | undefined;
  #closed = false;

  /** Wraps `conn`. */
  constructor(conn: Deno.Conn, options: ProxiedConnOptions = {}) {
    this.#conn = conn;
    this.remoteAddr = options.remoteAddr ?? (conn.remoteAddr as Deno.NetAddr);
    this.localAddr = options.localAddr ?? (conn.localAddr as Deno.NetAddr);
    this.#held = options.held !== undefined && options.held.length > 0 ? options.held : undefined;
    this.#onHeader = options.onHeader;
  }

  /** The connection's own stream (does not return `held`). */
  get readable(): ReadableStream<Uint8Array<ArrayBuffer>> {
    return this.#conn.readable;
  }

  /** The connection's own stream. */
  get writable(): WritableStream<Uint8Array<ArrayBufferLike>> {
    return this.#conn.writable;
  }

  /** Returns held bytes first, then reads the connection (watching its first bytes if asked). */
  read(p: Uint8Array): Promise<number | null> {
    if (this.#held !== undefined) return Promise.resolve(this.#giveHeld(p));
    if (this.#onHeader !== undefined) return this.#readWatched(p);
    return this.#conn.read(p);
  }

  #giveHeld(p: Uint8Array): number {
    const held = this.#held!;
    const n = Math.min(p.length, held.length);
    p.set(held.subarray(0, n));
    this.#held = n < held.length ? held.subarray(n) : undefined;
    return n;
  }

  async #readWatched(p: Uint8Array): Promise<number | null> {
    for (;;) {
      const n = await this.#conn.read(p);
      const seen = this.#seen;
      if (n === null) {
        this.#onHeader = undefined;
        if (seen === undefined) return null;
        this.#held = seen;
        return this.#giveHeld(p);
      }
      const bytes = seen === undefined ? p.subarray(0, n) : concat(seen, p.subarray(0, n));
      const start = proxyHeaderStart(bytes);
      if (start === "undecided") {
        this.#seen = bytes.slice();
        continue;
      }
      const onHeader = this.#onHeader!;
      this.#onHeader = undefined;
      this.#seen = undefined;
      if (start === "header") {
        this.refused = true;
        onHeader();
        this.close();
        throw new ProxyHeaderRefused(formatAddress(this.remoteAddr));
      }
      if (seen === undefined) return n;
      this.#held = bytes;
      return this.#giveHeld(p);
    }
  }

  /** Writes to the connection. */
  write(p: Uint8Array): Promise<number> {
    return this.#conn.write(p);
  }

  /** Closes the connection (once: later calls do nothing). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#conn.close();
  }

  /** Half-closes the connection. */
  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }

  /** See `Deno.Conn.ref`. */
  ref(): void {
    this.#conn.ref();
  }

  /** See `Deno.Conn.unref`. */
  unref(): void {
    this.#conn.unref();
  }

  /** Sets no-delay on a TCP connection (a no-op on others). */
  setNoDelay(noDelay?: boolean): void {
    (this.#conn as Partial<Deno.TcpConn>).setNoDelay?.(noDelay);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Log lines of one kind at most once per `everyMs`, saying how many were left out since: a flood
 * of bad headers costs a line a second, not a line each.
 */
export class LogLimiter {
  #everyMs: number;
  #last = new Map<string, number>();
  #skipped = new Map<string, number>();

  /** At most one line per kind per `everyMs`. */
  constructor(everyMs = 1000) {
    this.#everyMs = everyMs;
  }

  /**
   * Whether a line of `kind` may be logged at `now` (ms): then the number left out since the
   * last one (0 or more); otherwise `undefined` (and it is counted as left out).
   */
  take(kind: string, now: number): number | undefined {
    const last = this.#last.get(kind);
    if (last !== undefined && now - last < this.#everyMs) {
      this.#skipped.set(kind, (this.#skipped.get(kind) ?? 0) + 1);
      return undefined;
    }
    this.#last.set(kind, now);
    const skipped = this.#skipped.get(kind) ?? 0;
    this.#skipped.set(kind, 0);
    return skipped;
  }
}

/** What a line {@linkcode LogLimiter} let through adds about the `held` lines left out before it. */
export function heldText(held: number): string {
  return held === 0 ? "" : `; ${held} more like it in the last second not logged`;
}

/**
 * `--send-proxy`: a target whose every connection starts with `header` (the first dial and each
 * `--resume` redial alike: the upstream must see the same client on the new connection). Its
 * connections are never pooled: they carry one client's address.
 */
export class SendProxyTarget implements UpstreamTarget {
  /** The wrapped target's label. */
  readonly label: string;
  readonly upstreamCount: number | undefined;
  #target: UpstreamTarget;
  #header: Uint8Array;

  /** Wraps `target`, writing `header` first on each connection it dials. */
  constructor(target: UpstreamTarget, header: Uint8Array) {
    this.#target = target;
    this.#header = header;
    this.label = target.label;
    this.upstreamCount = target.upstreamCount;
  }

  /**
   * Dials through the wrapped target with the header as the first bytes: written by the dial
   * itself, before a TLS handshake (`--upstream-tls`), as the PROXY protocol puts it in front of
   * everything; a failure to write it is a failed connect (retried, counted against the upstream).
   */
  async dial(options?: TargetDialOptions): Promise<TargetConnection> {
    const lease = await this.#target.dial({ ...options, preamble: this.#header });
    return { ...lease, recycle: undefined };
  }
}

/** The `--send-proxy` header for `downstream` (its client and the address it connected to). */
export function sendProxyHeader(version: 1 | 2, downstream: Deno.Conn): Uint8Array {
  const remote = downstream.remoteAddr as Deno.NetAddr;
  const local = downstream.localAddr as Deno.NetAddr;
  return encodeProxyHeader(version, {
    source: { hostname: remote.hostname, port: remote.port },
    destination: { hostname: local.hostname, port: local.port },
  });
}

/**
 * What a health check sends first with `--send-proxy`: the header a receiver must accept for a
 * connection that carries no client (v1 `UNKNOWN`; v2 `LOCAL`, the command the spec made for
 * health checks), so an upstream that demands a header on every connection answers the probe.
 * Unset or off: nothing.
 */
export function checkPreamble(sendProxy: "off" | "v1" | "v2" | undefined): Uint8Array | undefined {
  if (sendProxy === "v1") return encodeProxyHeader(1);
  if (sendProxy === "v2") return encodeProxyHeader(2, { local: true });
  return undefined;
}
