/**
 * One active health check of an upstream. Foo-aware by default: a connection that sends
 * `REQ 1 <probe text>` and must get an `ACK` or `NAK` with Seq 1 within the timeout, so a server
 * that accepts connections but never answers is found out (a TCP check would pass it). `tcp`
 * mode only connects, for servers that must not see probe traffic.
 *
 * @module
 */
import type { Address } from "../net/address.ts";
import { dialUpstream, isLocalError } from "./upstream.ts";
import { describeError } from "../net/describe_error.ts";

/** How an upstream is checked. */
export type HealthMode = "foo" | "tcp";

/** What one check found. */
export interface CheckResult {
  ok: boolean;
  /** How long it took, in ms. */
  latencyMs: number;
  /** Why it failed (unset when ok). */
  error?: string;
  /**
   * The check could not be made for want of a local resource (EMFILE…): it says nothing about
   * the upstream. Unset otherwise.
   */
  local?: boolean;
}

/** Options for {@linkcode checkUpstream}. */
export interface CheckOptions {
  /** @default {"foo"} */
  mode?: HealthMode;
  /** Deadline for the whole check, in ms. @default {1000} */
  timeoutMs?: number;
  /** Data of the probe REQ. @default {"foo-proxy-health-check"} */
  probeText?: string;
  /**
   * `foo` mode: bytes sent before the probe REQ (`--send-proxy`: a PROXY header that names no
   * client, which an upstream expecting headers must accept). Unset: none.
   */
  preamble?: Uint8Array;
  /** Milliseconds now. @default {performance.now} */
  now?: () => number;
  /** Aborting ends the check at once (as a failure). */
  signal?: AbortSignal;
}

const REPLY_TO_PROBE = /^(ACK|NAK)[ \t]+0*1([ \t][^\n]*)?\r?$/;

/** Checks `address` once; never throws. */
export async function checkUpstream(
  address: Address,
  options: CheckOptions = {},
): Promise<CheckResult> {
  const now = options.now ?? (() => performance.now());
  const timeoutMs = options.timeoutMs ?? 1000;
  const started = now();
  const result = (ok: boolean, error?: string): CheckResult => ({
    ok,
    latencyMs: Math.round((now() - started) * 1000) / 1000,
    ...(error === undefined ? {} : { error }),
  });
  let conn: Deno.Conn;
  try {
    conn = await dialUpstream(address, { timeoutMs, signal: options.signal });
  } catch (error) {
    const failed = result(false, error instanceof Error ? error.message : String(error));
    return isLocalError(error) ? { ...failed, local: true } : failed;
  }
  if ((options.mode ?? "foo") === "tcp") {
    closeQuietly(conn);
    return result(true);
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timedOut = false;
  const left = Math.max(1, timeoutMs - (now() - started));
  timer = setTimeout(() => {
    timedOut = true;
    closeQuietly(conn);
  }, left);
  const onAbort = () => closeQuietly(conn);
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const req = new TextEncoder().encode(
      `REQ 1 ${options.probeText ?? "foo-proxy-health-check"}\n`,
    );
    const preamble = options.preamble ?? new Uint8Array(0);
    const probe = new Uint8Array(preamble.length + req.length);
    probe.set(preamble);
    probe.set(req, preamble.length);
    for (let off = 0; off < probe.length;) off += await conn.write(probe.subarray(off));
    const buf = new Uint8Array(512);
    let length = 0;
    for (;;) {
      const n = await conn.read(buf.subarray(length));
      if (n === null) return result(false, "closed without answering the probe");
      length += n;
      const nl = buf.subarray(0, length).indexOf(10);
      if (nl >= 0) {
        const line = new TextDecoder().decode(buf.subarray(0, nl));
        return REPLY_TO_PROBE.test(line)
          ? result(true)
          : result(false, `answered the probe wrongly: ${JSON.stringify(line.slice(0, 40))}`);
      }
      if (length === buf.length) return result(false, "answered the probe with a line too long");
    }
  } catch (error) {
    return result(
      false,
      timedOut ? `no answer to the probe within ${timeoutMs} ms` : describeError(error),
    );
  } finally {
    clearTimeout(timer);
    timer = undefined;
    options.signal?.removeEventListener("abort", onAbort);
    closeQuietly(conn);
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
