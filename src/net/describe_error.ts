/**
 * {@linkcode describeError}: network errors in the words log lines and messages use.
 *
 * @module
 */

import { PreambleError, TlsHandshakeError } from "./tls_dial.ts";

/** A short lower-case reason for a network error ("connection refused", …). */
export function describeError(error: unknown): string {
  if (error instanceof TlsHandshakeError) return error.message; // "TLS: …"
  if (error instanceof PreambleError) return error.message;
  if (error instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (error instanceof Deno.errors.ConnectionReset) return "connection reset";
  if (error instanceof Deno.errors.TimedOut) return "timed out";
  if (error instanceof Deno.errors.NotCapable) return "not permitted (add it to --allow-net)";
  if (error instanceof Error) {
    return error.message.replace(/\s*\(os error \d+\)$/, "").replace(/^./, (c) => c.toLowerCase());
  }
  return String(error);
}
