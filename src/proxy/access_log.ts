/**
 * The access log: one line per finished connection (`--access-log text|json`), like HAProxy's
 * `tcplog`. Fields, in the text form's order:
 *
 * | field | text | json | meaning |
 * | --- | --- | --- | --- |
 * | start | 1st | `start` | when the connection was bridged (ISO 8601, UTC) |
 * | client | 2nd | `client` | the client's address |
 * | upstream | after `->` | `upstream` | the upstream it ended on (its name) |
 * | duration | `NNNms` | `duration_ms` | from bridged to closed |
 * | bytes | `in=` `out=` | `bytes_from_client`, `bytes_from_upstream` | bytes each way |
 * | messages | `req=` `ack=` `nak=` `inv=` | `reqs`, `acks`, `naks`, `invalid` | valid REQs, ACKs, NAKs; invalid lines both ways |
 * | latency | `p50=` `max=` | `latency_p50_ms`, `latency_max_ms` | REQ→reply on this connection (`-` / null without replies) |
 * | failovers | `failovers=` | `failovers` | upstream connections replaced (--resume) |
 * | reason | last | `reason` | how it ended: `client_closed`, `completed`, `upstream_error`, … |
 *
 * Connections refused before bridging (over `--max-connections`, upstream unreachable) are logged
 * too, with zero counts and their reason.
 *
 * @module
 */
import type { ConnectionSummary } from "./bridge.ts";

/** `--access-log`. */
export type AccessLogFormat = "off" | "text" | "json";

/** One finished connection. */
export interface AccessRecord extends Omit<ConnectionSummary, "startedAt"> {
  /** Wall-clock start, ms since the epoch. */
  startedAtMs: number;
  client: string;
}

let cachedSecond = NaN;
let cachedPrefix = "";

/**
 * `new Date(ms).toISOString()`, with the part up to the second kept from the last call: lines
 * logged within one second share it, and `toISOString` was nine tenths of a line's formatting.
 */
export function isoTime(ms: number): string {
  const whole = Math.trunc(ms); // as Date drops a fraction: toward zero
  const second = Math.floor(whole / 1000);
  if (second !== cachedSecond) {
    const iso = new Date(second * 1000).toISOString();
    // Years past 9999 (or before 0) have another shape: no caching for those.
    if (iso.length !== 24) return new Date(ms).toISOString();
    cachedSecond = second;
    cachedPrefix = iso.slice(0, 20); // "2026-12-01T14:09:43."
  }
  const milli = whole - second * 1000;
  return `${cachedPrefix}${milli < 10 ? "00" : milli < 100 ? "0" : ""}${milli}Z`;
}

/** The access-log line of `record` (with its newline). */
export function formatAccessLine(format: "text" | "json", record: AccessRecord): string {
  const start = isoTime(record.startedAtMs);
  const ms = (v: number) => Number.isFinite(v) ? Math.round(v * 1000) / 1000 : null;
  if (format === "json") {
    return JSON.stringify({
      start,
      client: record.client,
      upstream: record.upstream,
      duration_ms: ms(record.durationMs),
      bytes_from_client: record.bytesFromClient,
      bytes_from_upstream: record.bytesFromUpstream,
      reqs: record.reqs,
      acks: record.acks,
      naks: record.naks,
      invalid: record.invalid,
      latency_p50_ms: ms(record.latencyP50Ms),
      latency_max_ms: ms(record.latencyMaxMs),
      failovers: record.failovers,
      reason: record.reason,
    }) + "\n";
  }
  const lat = (v: number) => Number.isFinite(v) ? `${ms(v)}ms` : "-";
  return `${start} ${record.client} -> ${record.upstream || "-"} ${
    Math.round(record.durationMs)
  }ms in=${record.bytesFromClient} out=${record.bytesFromUpstream} req=${record.reqs} ack=${record.acks} nak=${record.naks} inv=${record.invalid} p50=${
    lat(record.latencyP50Ms)
  } max=${lat(record.latencyMaxMs)} failovers=${record.failovers} ${record.reason}\n`;
}
