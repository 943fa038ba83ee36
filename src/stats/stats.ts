/**
 * The proxy's statistics: message counters, moving-window rates, connection and byte counters,
 * and the snapshot printed on SIGUSR2 and served at `/stats`. Which figures there are, and how
 * each is named, reported and persisted, is declared once in `counter_schema.ts`.
 *
 * @module
 */
import { createMessageCounts, type MessageCounts } from "../protocol/analyzer.ts";
import type { Clock } from "./clock.ts";
import { buildSnapshot, type CloseReason, type TlsHandshakeFailure } from "./counter_schema.ts";
import { LatencyStats } from "./latency.ts";
import { MovingWindow } from "./window.ts";

export { CLOSE_REASONS, type CloseReason } from "./counter_schema.ts";

/** The JSON object of one stats report. Field names are part of the interface: never rename. */
export interface StatsSnapshot {
  /** `msg_req + msg_ack + msg_nak`: valid messages only. */
  msg_total: number;
  msg_req: number;
  msg_ack: number;
  msg_nak: number;
  /** Invalid lines, all kinds (forwarded unchanged, never in `msg_total`). */
  msg_invalid: number;
  /** REQs per second over the last second. */
  request_rate_1s: number;
  /** REQs per second over the last 10 seconds. */
  request_rate_10s: number;
  /** ACK+NAK per second over the last second. */
  response_rate_1s: number;
  /** ACK+NAK per second over the last 10 seconds. */
  response_rate_10s: number;
  connections_active: number;
  /** Downstream connections accepted (including rejected ones). */
  connections_total: number;
  /** Downstream connections closed at once because a limit was reached. */
  connections_rejected: number;
  /**
   * Upstream connect failures plus upstream connections that failed mid-stream: with per-upstream
   * rows, `upstream_connect_failures + upstream_stream_errors` (the sums of the rows, plus those of
   * upstreams removed since).
   */
  upstream_errors: number;
  /** Connects to an upstream that failed (every attempt, failovers included). */
  upstream_connect_failures: number;
  /** Upstream connections that failed mid-stream (reset, or closed with replies owed). */
  upstream_stream_errors: number;
  /**
   * Upstream connects that failed for want of a local resource (EMFILE, ENFILE, ENOBUFS, ENOMEM):
   * the proxy's own trouble, never counted against an upstream.
   */
  upstream_local_errors: number;
  /** `--upstream-tls`: connects whose TLS handshake refused the upstream's certificate. */
  upstream_tls_verify_failures: number;
  /** `--upstream-tls`: connects whose TLS handshake failed otherwise. */
  upstream_tls_handshake_failures: number;
  /** `--pool`: upstream connections handed to a client from an idle pool instead of dialed. */
  upstream_pool_reused: number;
  /** `--pool`: upstream connections idle in a pool now. */
  upstream_pool_idle: number;
  /** `--pool`: idle pooled connections the server closed, reset or sent unsolicited bytes on. */
  upstream_pool_discarded: number;
  /** `--pool`: idle pooled connections closed after `--pool-idle-timeout`. */
  upstream_pool_expired: number;
  /** Bytes received from downstream clients (and forwarded upstream). */
  bytes_downstream: number;
  /** Bytes received from the upstream (and forwarded to clients). */
  bytes_upstream: number;
  uptime_seconds: number;
  /** Invalid lines by kind. */
  msg_invalid_by_kind: { type: number; seq: number; direction: number; truncated: number };
  /** Closed connections by reason. */
  connections_closed: Partial<Record<CloseReason, number>>;
  /** `--accept-proxy`: PROXY headers read from listed peers. */
  proxy_headers: number;
  /** `--accept-proxy`: connections from a listed peer that did not start with a header. */
  proxy_header_missing: number;
  /** `--accept-proxy`: headers that broke the spec. */
  proxy_header_malformed: number;
  /** `--accept-proxy`: headers over the bounds (v1 107 bytes, v2 4 KiB). */
  proxy_header_oversized: number;
  /** `--accept-proxy`: headers from peers not in the list. */
  proxy_header_untrusted: number;
  /** `--accept-proxy`: listed peers whose header did not come within the timeout. */
  proxy_header_timeout: number;
  /** `--accept-proxy`: connections that ended mid-header. */
  proxy_header_truncated: number;
  /** Upstream connect attempts that failed and were retried (`--connect-retries`). */
  upstream_connect_retries: number;
  /** Times a downstream was not read because it had `--max-inflight` REQs unanswered. */
  inflight_limit_pauses: number;
  /** Times a downstream's reading paused at its source's `--rate-limit-per-source`. */
  rate_limit_pauses: number;
  /** Connections served without per-source limits: the per-source table had no room. */
  source_table_full: number;
  /** `--resume`: dead upstream connections replaced by a new one (REQs replayed on it). */
  failovers: number;
  /** `--resume`: REQs sent again on a new upstream connection (counted here, not in `msg_req`). */
  replays: number;
  /** `--resume`: connections closed because their upstream died and they could not be resumed. */
  resume_failures: number;
  /** Bugs caught before they could end the process (one connection closed, logged). */
  internal_errors: number;
  /**
   * `--resume=renumber`: valid replies dropped because their Seq matches no REQ sent on the new
   * upstream connection (relayed, they would answer a request the client did not make).
   */
  replies_dropped: number;
  /** `--mux`: client lines not forwarded (invalid, cut by the end of stream, too long). */
  mux_refused_lines: number;
  /** `--mux`: shared upstream connections closed for a reply that answered nothing in line. */
  mux_desyncs: number;
  /** `--mux`: clients closed for leaving over 4 MiB of replies unread. */
  mux_slow_clients: number;
  /** `--mux`: shared upstream connections open now. */
  mux_upstream_connections: number;
  /** `--mux`: writes to shared upstream connections (REQs per write: the coalescing). */
  mux_upstream_writes: number;
  /** `--tls-cert`: TLS handshakes with clients that succeeded. */
  tls_handshakes: number;
  /** `--tls-cert`: TLS handshakes with clients that failed (the client closed), by kind. */
  tls_handshake_failures: Record<TlsHandshakeFailure, number>;
  /** `--tls-cert`: reloads that put a new key pair in service. */
  tls_reloads: number;
  /** `--tls-cert`: reloads whose key pair could not be used (the running one kept serving). */
  tls_reload_failures: number;
  /** SIGUSR1 signals neutralised (Deno's debugger closed again); stats are on SIGUSR2. */
  usr1_ignored: number;
  /** Log lines dropped because stderr was not being read (output never blocks traffic). */
  log_lines_dropped: number;
  /** Access-log lines dropped because their reader (stderr or the file) stalled. */
  access_log_lines_dropped: number;
  /** Stats lines (SIGUSR2) dropped because stdout was not being read. */
  stats_lines_dropped: number;
  /** Accept errors that concerned one connection (reset before it was taken); never pause accepting. */
  accept_errors: number;
  /** Accept errors from resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM): accepting paused briefly. */
  accept_resource_errors: number;
  /** Admin HTTP connections closed at once because the admin cap was reached. */
  admin_connections_rejected: number;
  /** Admin HTTP requests whose headers or body came too slowly (or whose reader stalled). */
  admin_request_timeouts: number;
  /** Admin HTTP requests refused before the app: malformed or too large. */
  admin_bad_requests: number;
  /** Admin HTTP connections closed at the headers deadline without a byte sent (browser pre-connects); not errors. */
  admin_idle_closed: number;
  /** Admin HTTP requests whose `Host` named no address of the admin server (421: DNS rebinding, or a name to allow). */
  admin_misdirected_requests: number;
  /** `GET /events` (dashboard) clients refused because the cap on event streams was reached. */
  sse_clients_refused: number;
  /** WebSocket clients upgraded (`--ws-listen`) and served like TCP clients. */
  ws_connections: number;
  /** WebSocket connections refused for their `Origin` (403, `--ws-origin`). */
  ws_rejected_origin: number;
  /** Requests to the WebSocket port that were no upgrade (426). */
  ws_rejected_not_websocket: number;
  /** Upgrade requests refused as malformed or too large, or with a bad key or version. */
  ws_rejected_bad_request: number;
  /** WebSocket connections whose handshake did not complete in time. */
  ws_rejected_timeout: number;
  /** WebSocket connections closed in their handshake to make room (handshake cap). */
  ws_rejected_busy: number;
  /** wss connections whose TLS handshake failed. */
  ws_rejected_tls: number;
  /** WebSocket data messages received. */
  ws_messages_in: number;
  /** WebSocket data messages sent. */
  ws_messages_out: number;
  /** WebSocket clients closed for breaking the protocol (1002, 1007). */
  ws_protocol_errors: number;
  /** Data-plane workers that died and were replaced. */
  worker_restarts: number;
  /** Per data-plane worker: its connections and replies per second (the balance across cores). */
  workers: WorkerStats[];
  /** Per upstream: state, connections, requests, replies, errors, last check. */
  upstreams: UpstreamStats[];
  /** `--config`: how many times the file was loaded (0: no file). */
  config_generation: number;
  /** When the file was last loaded (ISO 8601); `null`: no file. */
  config_loaded_at: string | null;
  /** Reloads that changed nothing because the file did not parse or validate. */
  config_reload_failures: number;
  /** `--config-watch`: times the file's directory could not be watched. */
  config_watch_failures: number;
  /** Resolutions of a `--forward dns+NAME:PORT` name that failed or found no record: the last good set is kept. */
  dns_resolve_failures: number;
  /** `--takeover` steps that failed (a bad or abandoned request, no socket, no final statistics). */
  takeover_failures: number;
}

/** One upstream's figures in `/stats` and the SIGUSR2 line (see `upstream_pool.ts`). */
export interface UpstreamStats {
  name: string;
  address: string;
  weight: number;
  /** `up`, `down` (failed its health checks), `ejected` (too many failures), `draining`. */
  state: "up" | "down" | "ejected" | "draining";
  connections_active: number;
  connections_total: number;
  requests: number;
  replies: number;
  connect_failures: number;
  stream_errors: number;
  ejections: number;
  /** The last active health check; `null` before the first. */
  last_check: { ok: boolean; latency_ms: number; error?: string; age_s: number } | null;
}

/** One data-plane worker's figures in `/stats` and the SIGUSR2 line. */
export interface WorkerStats {
  /** Its number, 0 first (a replacement keeps the number of the worker it replaces). */
  worker: number;
  /** Downstream connections it serves. */
  connections_active: number;
  /** ACK+NAK it relayed per second over the last second. */
  replies_per_second: number;
  /** Times this worker was replaced after dying. */
  restarts: number;
}

/** Options for {@linkcode Stats}. */
export interface StatsOptions {
  /** Time source for the windows and uptime (ms). Required: stats never read a clock themselves. */
  clock: Clock;
}

/** Counters and windows shared by every connection of one proxy. */
export class Stats {
  /** Message counters, added to directly by the analyzers. */
  readonly counts: MessageCounts = createMessageCounts();
  readonly clock: Clock;
  /** The 1 s (10 ms buckets) and 10 s (100 ms buckets) windows of requests and responses. */
  readonly windows: {
    request1s: MovingWindow;
    request10s: MovingWindow;
    response1s: MovingWindow;
    response10s: MovingWindow;
  };
  connectionsActive = 0;
  connectionsTotal = 0;
  connectionsRejected = 0;
  /**
   * Upstream failures counted by the engine (per client given up on, or failed mid-stream); the
   * snapshot's `upstream_errors` when no per-upstream rows are reported. With rows (a pool),
   * the pool counts each failure itself in the two counters below.
   */
  upstreamErrors = 0;
  /** Failed connects to an upstream, counted by the pool (each attempt). */
  upstreamConnectFailures = 0;
  /** Upstream connections that failed mid-stream, counted by the pool. */
  upstreamStreamErrors = 0;
  /** Upstream connects that failed for want of a local resource (never an upstream's fault). */
  upstreamLocalErrors = 0;
  /** `--upstream-tls`: connects whose handshake refused the upstream's certificate. */
  upstreamTlsVerifyFailures = 0;
  /** `--upstream-tls`: connects whose handshake failed otherwise (alert, not TLS, timeout). */
  upstreamTlsHandshakeFailures = 0;
  /** `--pool`: upstream connections handed to a client from an idle pool instead of dialed. */
  upstreamPoolReused = 0;
  /** `--pool`: upstream connections idle in a pool now (a gauge). */
  upstreamPoolIdle = 0;
  /** `--pool`: idle pooled connections the server closed, reset or sent unsolicited bytes on. */
  upstreamPoolDiscarded = 0;
  /** `--pool`: idle pooled connections closed after `--pool-idle-timeout`. */
  upstreamPoolExpired = 0;
  bytesDownstream = 0;
  bytesUpstream = 0;
  /** `--accept-proxy`: PROXY headers read. */
  proxyHeaders = 0;
  /** `--accept-proxy`: connections from a listed peer without a header. */
  proxyHeaderMissing = 0;
  /** `--accept-proxy`: headers that broke the spec. */
  proxyHeaderMalformed = 0;
  /** `--accept-proxy`: headers over the bounds. */
  proxyHeaderOversized = 0;
  /** `--accept-proxy`: headers from peers not in the list. */
  proxyHeaderUntrusted = 0;
  /** `--accept-proxy`: listed peers too slow to send their header. */
  proxyHeaderTimeout = 0;
  /** `--accept-proxy`: connections that ended mid-header. */
  proxyHeaderTruncated = 0;
  /** Upstream connect attempts that failed and were retried. */
  upstreamConnectRetries = 0;
  /** Times a downstream's reading paused at the in-flight REQ limit. */
  inflightLimitPauses = 0;
  /** Times a downstream's reading paused at its source's `--rate-limit-per-source`. */
  rateLimitPauses = 0;
  /** Connections served without per-source limits (the per-source table was full). */
  sourceTableFull = 0;
  /** Upstream connections replaced after they died (`--resume`). */
  failovers = 0;
  /** REQs replayed on a new upstream connection (`--resume`). */
  replays = 0;
  /** Connections closed because they could not be resumed (`--resume`). */
  resumeFailures = 0;
  /** Errors no code path expected, caught by the engine or the last-resort handler. */
  internalErrors = 0;
  /** Replies dropped by renumbering (Seq of no REQ of ours). */
  repliesDropped = 0;
  /** `--mux`: client lines not forwarded (invalid, cut by the end of stream, too long). */
  muxRefusedLines = 0;
  /** `--mux`: shared upstream connections closed for a reply that answered nothing in line. */
  muxDesyncs = 0;
  /** `--mux`: clients closed for leaving too many replies unread. */
  muxSlowClients = 0;
  /** `--mux`: shared upstream connections open (a gauge). */
  muxUpstreamConnections = 0;
  /** `--mux`: writes to shared upstream connections (REQs forwarded ÷ this: the coalescing). */
  muxUpstreamWrites = 0;
  /** `--tls-cert`: TLS handshakes with clients that succeeded. */
  tlsHandshakes = 0;
  /** `--tls-cert`: handshakes closed at `--tls-handshake-timeout`. */
  tlsHandshakeTimeout = 0;
  /** `--tls-cert`: handshakes the client ended (EOF or reset). */
  tlsHandshakeEof = 0;
  /** `--tls-cert`: clients that sent something other than TLS. */
  tlsHandshakeNotTls = 0;
  /** `--tls-cert`: clients that refused our certificate (a fatal alert). */
  tlsHandshakeAlert = 0;
  /** `--tls-cert`: clients with no TLS version, cipher or group in common. */
  tlsHandshakeIncompatible = 0;
  /** `--tls-cert`: other handshake failures. */
  tlsHandshakeOther = 0;
  /** `--tls-cert`: reloads that put a new key pair in service (the supervisor's). */
  tlsReloads = 0;
  /** `--tls-cert`: reloads whose key pair could not be used (the supervisor's). */
  tlsReloadFailures = 0;
  /** SIGUSR1 signals received and neutralised. */
  usr1Ignored = 0;
  /** Log lines dropped at a stalled stderr. */
  logLinesDropped = 0;
  /** Access-log lines dropped at a stalled reader. */
  accessLogLinesDropped = 0;
  /** Stats lines dropped at a stalled stdout. */
  statsLinesDropped = 0;
  /** Accept errors of one connection. */
  acceptErrors = 0;
  /** Accept errors from resource exhaustion. */
  acceptResourceErrors = 0;
  /** Admin HTTP connections refused at the cap. */
  adminConnectionsRejected = 0;
  /** Admin HTTP requests cut by a deadline. */
  adminRequestTimeouts = 0;
  /** Admin HTTP requests refused as malformed or too large. */
  adminBadRequests = 0;
  /** Admin HTTP connections that sent nothing before the headers deadline. */
  adminIdleClosed = 0;
  /** Admin HTTP requests refused for a `Host` that is not the server's (421). */
  adminMisdirectedRequests = 0;
  /** `GET /events` clients refused at the event-stream cap. */
  sseClientsRefused = 0;
  /** WebSocket clients upgraded. */
  wsConnections = 0;
  /** WebSocket upgrades refused for their `Origin`. */
  wsRejectedOrigin = 0;
  /** Requests to the WebSocket port that were no upgrade. */
  wsRejectedNotWebsocket = 0;
  /** Upgrade requests refused as malformed. */
  wsRejectedBadRequest = 0;
  /** WebSocket handshakes past their deadline. */
  wsRejectedTimeout = 0;
  /** WebSocket handshakes closed to make room. */
  wsRejectedBusy = 0;
  /** wss TLS handshakes that failed. */
  wsRejectedTls = 0;
  /** WebSocket data messages received. */
  wsMessagesIn = 0;
  /** WebSocket data messages sent. */
  wsMessagesOut = 0;
  /** WebSocket clients closed for breaking the protocol. */
  wsProtocolErrors = 0;
  /** Times the config file was loaded (0: none). */
  configGeneration = 0;
  /** When it was last loaded (ms since the epoch); 0: never. */
  configLoadedAt = 0;
  /** Reloads refused for a bad file. */
  configReloadFailures = 0;
  /** `--config-watch`: times the file could not be watched (the proxy went on without it). */
  configWatchFailures = 0;
  /** Failed (or empty) resolutions of a `dns+` upstream name. */
  dnsResolveFailures = 0;
  /** `--takeover` steps that failed (see `cmd/takeover.ts`). */
  takeoverFailures = 0;
  /** Data-plane workers replaced after dying. */
  workerRestarts = 0;
  /** Where the per-worker figures come from; unset: none are reported. */
  workers: (() => WorkerStats[]) | undefined = undefined;
  /** Where the per-upstream figures come from; unset: none are reported. */
  upstreams: (() => UpstreamStats[]) | undefined = undefined;
  /** Closed connections by reason. */
  readonly closed: Partial<Record<CloseReason, number>> = {};
  /** REQ→reply latency histogram, anomaly counters and requests in flight (`/stats`, `/metrics`). */
  readonly latency: LatencyStats = new LatencyStats();
  readonly startedAt: number;

  /** Creates zeroed stats reading time from `options.clock`. */
  constructor(options: StatsOptions) {
    this.clock = options.clock;
    this.startedAt = options.clock();
    this.windows = {
      request1s: new MovingWindow(1_000, 10),
      request10s: new MovingWindow(10_000, 100),
      response1s: new MovingWindow(1_000, 10),
      response10s: new MovingWindow(10_000, 100),
    };
  }

  /** Records `count` REQs just seen at `now` (a clock reading the caller already has). */
  recordRequests(count: number, now: number = this.clock()): void {
    this.windows.request1s.add(now, count);
    this.windows.request10s.add(now, count);
  }

  /** Records `count` ACK/NAKs just seen at `now` (a clock reading the caller already has). */
  recordResponses(count: number, now: number = this.clock()): void {
    this.windows.response1s.add(now, count);
    this.windows.response10s.add(now, count);
  }

  /** Counts a closed connection. */
  recordClose(reason: CloseReason): void {
    this.closed[reason] = (this.closed[reason] ?? 0) + 1;
  }

  /** The current values as one JSON-ready object, built from the counter schema. */
  snapshot(): StatsSnapshot {
    return buildSnapshot(this, this.clock()) as unknown as StatsSnapshot;
  }
}
