/**
 * `foo-proxy bench`: a load generator for any Foo endpoint (a proxy or a server). It prints a
 * progress line on stderr every second and, at the end, a human summary or (`--json`) one JSON
 * object on stdout.
 *
 * @module
 */
import { type Address, formatAddress } from "../net/address.ts";
import { parseAddressFlag } from "../cli/address_flag.ts";
import { DURATION_HELP, parseDuration } from "../cli/duration.ts";
import { formatFlagHelp, formatSynopsis } from "../cli/flag_help.ts";
import {
  denoEnvReader,
  type FlagSpec,
  parseChoiceFlag,
  parseFlags,
  parseIntegerFlag,
  UsageError,
} from "../cli/flags.ts";
import { VERSION } from "../version.ts";
import {
  LOAD_ERROR_KINDS,
  type LoadOptions,
  type LoadProgress,
  type LoadReport,
  runLoad,
} from "../tools/load.ts";
import {
  parseTlsClientFlags,
  TLS_CLIENT_FLAGS,
  type TlsClientConfig,
  tlsClientOptions,
} from "./tls_client_flags.ts";
import { SmallFileError } from "../proxy/read_small_file.ts";
import {
  type CommandContext,
  reportUsageError,
  writeStderrLine,
  writeStdoutLine,
} from "./output.ts";

/** Flags of `foo-proxy bench`: the one definition the parser, `--help` and the README use. */
export const BENCH_FLAGS: Record<string, FlagSpec> = {
  connect: {
    type: "string",
    default: "localhost:8002",
    value: "ADDR",
    help: "the endpoint, a proxy or a server (a bare PORT means localhost, as for the client)",
  },
  connections: { type: "string", default: "16", value: "N", help: "connections open at once" },
  pipeline: { type: "string", default: "1", value: "N", help: "REQs in flight per connection" },
  payload: {
    type: "string",
    default: "32",
    value: "BYTES",
    help: "data bytes after each Seq (0 = none)",
  },
  duration: {
    type: "string",
    default: "10s",
    value: "DUR",
    help: "measured time (0 = until SIGINT)",
  },
  warmup: { type: "string", default: "0", value: "DUR", help: "unmeasured time before it" },
  rate: {
    type: "string",
    default: "0",
    value: "R",
    help:
      "total REQs/s, open loop: latency counts from each REQ's scheduled send time (0 = as fast as possible)",
  },
  "requests-per-connection": {
    type: "string",
    default: "0",
    value: "K",
    help: "reconnect after K replies (0 = never)",
  },
  replies: {
    type: "string",
    default: "seq",
    value: "MODE",
    help:
      'seq: check type and Seq; hash: also check each reply is what "foo-proxy server --reply hash" answers (counts wrong_reply)',
  },
  ...TLS_CLIENT_FLAGS,
  json: { type: "boolean", env: false, help: "one JSON object on stdout (latencies in ms)" },
  quiet: { type: "boolean", short: "q", help: "no progress line" },
  help: { type: "boolean", short: "h", env: false, help: "print this help" },
  version: { type: "boolean", short: "V", env: false, help: "print the version" },
};

/** One-line synopsis of `foo-proxy bench`. */
export const BENCH_SYNOPSIS = `foo-proxy bench ${formatSynopsis(BENCH_FLAGS)}`;

/** Usage text of `foo-proxy bench`. */
export const BENCH_USAGE = `Usage: foo-proxy bench [flags]

Sends REQs to a Foo endpoint (a proxy or a server) over many connections, verifies every reply
(ACK/NAK, its Seq, its order; with --replies hash also its type and data) and reports replies/s,
connections/s, latency and errors. A progress line goes to stderr every second. Exits 0 when
there was no error, 1 otherwise.

Flags (each also from FOO_PROXY_<NAME>, e.g. FOO_PROXY_CONNECTIONS; flags win):
${formatFlagHelp(BENCH_FLAGS)}

ADDR is :PORT, PORT, HOST:PORT or [IPv6]:PORT. ${DURATION_HELP}`;

/** Parsed configuration of `foo-proxy bench`. */
export interface BenchConfig {
  connect: Address;
  connections: number;
  pipeline: number;
  payloadBytes: number;
  durationMs: number;
  warmupMs: number;
  rate: number;
  requestsPerConnection: number;
  replies: "seq" | "hash";
  /** `--tls`, `--ca`, `--sni`; `null`: plain TCP. */
  tls: TlsClientConfig | null;
  json: boolean;
  quiet: boolean;
  help: boolean;
  version: boolean;
}

/**
 * Parses the bench flags.
 *
 * @throws {UsageError} naming the bad flag or value.
 */
export function parseBenchConfig(
  args: readonly string[],
  getEnv?: (name: string) => string | undefined,
): BenchConfig {
  const v = parseFlags(args, BENCH_FLAGS, { getEnv });
  const connect = parseAddressFlag("connect", String(v.connect), { defaultHost: "localhost" });
  if (connect.port === 0) throw new UsageError(`--connect: the port must not be 0`);
  const rateText = String(v.rate).trim();
  const rate = /^\d+(\.\d+)?$/.test(rateText) ? Number(rateText) : NaN;
  if (!Number.isFinite(rate)) {
    throw new UsageError(`Invalid value "${v.rate}" for --rate: expected a number of REQs/s >= 0`);
  }
  return {
    connect,
    connections: parseIntegerFlag("connections", v.connections, { min: 1, max: 100_000 }),
    pipeline: parseIntegerFlag("pipeline", v.pipeline, { min: 1, max: 100_000 }),
    payloadBytes: parseIntegerFlag("payload", v.payload, { max: 1 << 20 }),
    durationMs: parseDuration("duration", v.duration),
    warmupMs: parseDuration("warmup", v.warmup),
    rate,
    requestsPerConnection: parseIntegerFlag(
      "requests-per-connection",
      v["requests-per-connection"],
    ),
    replies: parseChoiceFlag("replies", v.replies, ["seq", "hash"] as const),
    tls: parseTlsClientFlags(v),
    json: v.json === true,
    quiet: v.quiet === true,
    help: v.help === true,
    version: v.version === true,
  };
}

/** The JSON object `--json` prints: the configuration, then what was measured. */
export function benchJson(config: BenchConfig, report: LoadReport): Record<string, unknown> {
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  const lat = report.latencyMs;
  const svc = report.serviceLatencyMs;
  return {
    target: formatAddress(config.connect),
    connections: config.connections,
    pipeline: config.pipeline,
    payload_bytes: config.payloadBytes,
    rate_target: config.rate,
    requests_per_connection: config.requestsPerConnection,
    replies: config.replies,
    duration_s: r3(report.durationSec),
    requests: report.requests,
    responses: report.responses,
    acks: report.acks,
    naks: report.naks,
    responses_per_sec: Math.round(report.responsesPerSec),
    connections_opened: report.connectionsOpened,
    connections_completed: report.connectionsCompleted,
    connections_per_sec: r3(report.connectionsPerSec),
    latency_count: lat.count,
    latency_mean_ms: r3(lat.mean),
    latency_p50_ms: r3(lat.p50),
    latency_p90_ms: r3(lat.p90),
    latency_p99_ms: r3(lat.p99),
    latency_p999_ms: r3(lat.p999),
    latency_max_ms: r3(lat.max),
    service_latency_p50_ms: r3(svc.p50),
    service_latency_p99_ms: r3(svc.p99),
    errors: report.errors,
    errors_total: report.errorsTotal,
  };
}

/** The human summary, several lines. */
export function benchSummary(config: BenchConfig, report: LoadReport): string {
  const f = (x: number, digits = 0) =>
    x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const ms = (x: number) => `${x.toFixed(3)} ms`;
  const lat = report.latencyMs;
  const mode = config.rate > 0 ? `open loop at ${f(config.rate)} REQ/s` : "closed loop";
  const churn = config.requestsPerConnection > 0
    ? `, reconnecting every ${config.requestsPerConnection} REQs`
    : "";
  const check = config.replies === "hash" ? ", reply content checked (hash)" : "";
  const errors = report.errorsTotal === 0
    ? "none"
    : LOAD_ERROR_KINDS.filter((k) => report.errors[k] > 0).map((k) => `${k} ${report.errors[k]}`)
      .join(", ");
  const lines = [
    `foo-proxy bench: ${
      formatAddress(config.connect)
    }, ${config.connections} connections x ${config.pipeline} in flight, ${config.payloadBytes}-byte payloads, ${mode}${churn}${check}`,
    `  duration     ${report.durationSec.toFixed(2)} s`,
    `  responses    ${f(report.responses)} (${f(report.responsesPerSec)}/s): ACK ${
      f(report.acks)
    }, NAK ${f(report.naks)}; ${f(report.requests)} REQs sent`,
    `  connections  ${f(report.connectionsOpened)} opened, ${
      f(report.connectionsCompleted)
    } completed (${f(report.connectionsPerSec, 1)}/s)`,
    `  latency      p50 ${ms(lat.p50)}  p90 ${ms(lat.p90)}  p99 ${ms(lat.p99)}  p99.9 ${
      ms(lat.p999)
    }  max ${ms(lat.max)}`,
  ];
  if (config.rate > 0) {
    const svc = report.serviceLatencyMs;
    lines.push(`  (from send)  p50 ${ms(svc.p50)}  p99 ${ms(svc.p99)}  p99.9 ${ms(svc.p999)}`);
  }
  lines.push(`  errors       ${errors}`);
  return lines.join("\n");
}

/** Runs `foo-proxy bench`; resolves with the exit code (0 ok, 1 errors seen, 2 usage). */
export async function runBench(args: string[], context: CommandContext = {}): Promise<number> {
  const stdout = context.stdout ?? writeStdoutLine;
  let config: BenchConfig;
  try {
    config = parseBenchConfig(args, denoEnvReader());
  } catch (error) {
    if (error instanceof UsageError) return reportUsageError(error.message, "foo-proxy bench");
    throw error;
  }
  if (config.help) {
    stdout(BENCH_USAGE);
    return 0;
  }
  if (config.version) {
    stdout(`foo-proxy ${VERSION}`);
    return 0;
  }
  let tls: LoadOptions["tls"];
  try {
    tls = await tlsClientOptions(config.tls);
  } catch (error) {
    if (!(error instanceof SmallFileError)) throw error;
    writeStderrLine(`foo-proxy bench: ${error.message}`);
    return 2;
  }
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  const onAbort = () => stop.abort();
  context.signal?.addEventListener("abort", onAbort, { once: true });
  const options: LoadOptions = {
    connections: config.connections,
    pipeline: config.pipeline,
    payloadBytes: config.payloadBytes,
    durationMs: config.durationMs,
    warmupMs: config.warmupMs,
    rate: config.rate,
    requestsPerConnection: config.requestsPerConnection,
    replies: config.replies,
    tls,
    signal: stop.signal,
    onProgress: config.quiet ? undefined : (p) => writeStderrLine(progressLine(p)),
  };
  let report: LoadReport;
  try {
    report = await runLoad(config.connect, options);
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
    context.signal?.removeEventListener("abort", onAbort);
  }
  stdout(config.json ? JSON.stringify(benchJson(config, report)) : benchSummary(config, report));
  return report.errorsTotal === 0 ? 0 : 1;
}

function progressLine(p: LoadProgress): string {
  const t = p.elapsedMs < 0
    ? `warm-up ${(-p.elapsedMs / 1000).toFixed(0)}s left`
    : `${(p.elapsedMs / 1000).toFixed(0)}s`;
  return `bench: ${t}: ${
    Math.round(p.responsesPerSec)
  } replies/s, ${p.responses} total, ${p.openConnections} connections open, ${p.errors} errors`;
}
