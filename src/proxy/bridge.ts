/**
 * Joins one downstream connection to one upstream connection: one pump per direction, each
 * feeding the analyzer every chunk it forwards.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { Analyzer, type AnalyzerOptions } from "../protocol/analyzer.ts";
import type { CloseReason, Stats } from "../stats/stats.ts";

/** Options for {@linkcode bridge}. */
export interface BridgeOptions {
  /** Where counters go. */
  stats: Stats;
  /** Log sink; unset: a silent logger is not assumed, so pass one (component `bridge`). */
  logger?: Logger;
  /**
   * First read-buffer size per direction, in bytes. A pending read pins its buffer, so idle
   * connections cost this much per side. @default {2048}
   */
  initialBufferSize?: number;
  /** Largest read buffer a busy direction grows to (doubling when a read fills it). @default {65536} */
  maxBufferSize?: number;
  /** Analyzer options for the downstream → upstream direction (REQs). Unset: counting only. */
  requestAnalyzer?: AnalyzerOptions;
  /** Analyzer options for the upstream → downstream direction (replies). Unset: counting only. */
  replyAnalyzer?: AnalyzerOptions;
  /** Aborting closes both sockets at once (shutdown). Unset: only the peers end it. */
  signal?: AbortSignal;
  /** Text naming the connection in log lines, e.g. `127.0.0.1:5555 -> 127.0.0.1:8001`. */
  label?: string;
}

type PumpEnd = "eof" | "read_error" | "write_error";

interface PumpResult {
  end: PumpEnd;
  error?: unknown;
}

/**
 * Relays bytes both ways until the connection is over, then closes both sockets and resolves
 * with the reason. Half-close: a downstream FIN half-closes the upstream and replies keep
 * flowing until the upstream closes. An upstream that closes or fails first gets the downstream
 * closed after everything it sent has been relayed.
 */
export async function bridge(
  downstream: Deno.TcpConn,
  upstream: Deno.TcpConn,
  options: BridgeOptions,
): Promise<CloseReason> {
  const { stats, logger, signal } = options;
  const initial = options.initialBufferSize ?? 2048;
  const max = Math.max(initial, options.maxBufferSize ?? 65536);
  const requests = new Analyzer("downstream", stats.counts, options.requestAnalyzer);
  const replies = new Analyzer("upstream", stats.counts, options.replyAnalyzer);

  let closed = false;
  const closeBoth = () => {
    if (closed) return;
    closed = true;
    closeQuietly(downstream);
    closeQuietly(upstream);
  };
  const onAbort = () => {
    if (!reason) reason = "shutdown";
    closeBoth();
  };
  let reason: CloseReason | undefined;
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();

  let clientHalfClosed = false;
  const up = pump(downstream, upstream, requests, initial, max, (n, valid) => {
    stats.bytesDownstream += n;
    if (valid > 0) stats.recordRequests(valid);
  }).then((result) => {
    if (result.end === "eof") {
      clientHalfClosed = true;
      // The client half-closed: pass the FIN on and keep relaying the replies it is owed.
      try {
        upstream.closeWrite();
      } catch {
        // The upstream is already gone; the other pump ends on its own.
      }
    } else {
      reason ??= result.end === "read_error" ? "downstream_error" : "upstream_error";
      closeBoth();
    }
    return result;
  });
  const down = await pump(upstream, downstream, replies, initial, max, (n, valid) => {
    stats.bytesUpstream += n;
    if (valid > 0) stats.recordResponses(valid);
  });
  const upResult = await (async () => {
    if (down.end === "eof") {
      // Upstream finished. If the client had half-closed this is a normal end; otherwise the
      // upstream went away first and the client is closed after getting every relayed byte.
      reason ??= clientHalfClosed ? "client_closed" : "upstream_closed";
      closeBoth();
      return await up;
    }
    reason ??= down.end === "read_error" ? "upstream_error" : "downstream_error";
    closeBoth();
    return await up;
  })();
  signal?.removeEventListener("abort", onAbort);
  requests.end();
  replies.end();
  if (reason === "upstream_error" || reason === "upstream_closed") {
    if (reason === "upstream_error") stats.upstreamErrors++;
    logger?.warning("Upstream {reason} on {connection}: {error}", {
      reason: reason === "upstream_error" ? "failed" : "closed first",
      connection: options.label ?? "",
      error: String(down.error ?? upResult.error ?? "end of stream"),
    });
  } else if (reason === "downstream_error") {
    logger?.info("Downstream failed on {connection}: {error}", {
      connection: options.label ?? "",
      error: String(upResult.error ?? down.error),
    });
  }
  return reason ?? "client_closed";
}

async function pump(
  src: Deno.TcpConn,
  dst: Deno.TcpConn,
  analyzer: Analyzer,
  initial: number,
  max: number,
  onChunk: (bytes: number, valid: number) => void,
): Promise<PumpResult> {
  let buf = new Uint8Array(initial);
  for (;;) {
    let n: number | null;
    try {
      n = await src.read(buf);
    } catch (error) {
      return { end: "read_error", error };
    }
    if (n === null) return { end: "eof" };
    const chunk = buf.subarray(0, n);
    onChunk(n, analyzer.feed(chunk));
    try {
      let off = 0;
      while (off < n) off += await dst.write(off === 0 ? chunk : chunk.subarray(off));
    } catch (error) {
      return { end: "write_error", error };
    }
    // A read that filled the buffer means more is queued: grow, so busy connections move large
    // chunks while idle ones keep pinning only the small initial buffer.
    if (n === buf.length && buf.length < max) buf = new Uint8Array(Math.min(max, buf.length * 2));
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
