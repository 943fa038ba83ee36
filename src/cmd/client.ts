/**
 * `foo-proxy client`: flags, progress dots and the exit code around {@linkcode runClient}.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { Address } from "../net/address.ts";
import { parseAddressFlag } from "../cli/address_flag.ts";
import { parseDuration } from "../cli/duration.ts";
import { DURATION_HELP } from "../cli/duration.ts";
import { formatFlagHelp, formatSynopsis } from "../cli/flag_help.ts";
import {
  denoEnvReader,
  type FlagSpec,
  parseFlags,
  parseIntegerFlag,
  UsageError,
} from "../cli/flags.ts";
import { ClientError, runClient } from "../tools/client.ts";
import { startCommand } from "./command_start.ts";
import { type CommandContext, writeStderrLine, writeStdoutLine } from "./output.ts";

/** Flags of `foo-proxy client`: the one definition the parser, `--help` and the README use. */
export const CLIENT_FLAGS: Record<string, FlagSpec> = {
  connect: {
    type: "string",
    default: "localhost:8002",
    value: "ADDR",
    help: "the proxy or server to drive (a bare PORT means localhost)",
  },
  ws: {
    type: "string",
    value: "URL",
    defaultText: "off",
    help:
      "connect over WebSocket instead (ws://HOST:PORT/ or wss://…, e.g. a proxy's --ws-listen): REQs go as text messages",
  },
  requests: { type: "string", default: "10", value: "N", help: "REQs per connection" },
  pipeline: { type: "string", default: "1", value: "N", help: "REQs in flight per connection" },
  connections: { type: "string", default: "1", value: "N", help: "connections at once" },
  payload: { type: "string", default: "0", value: "BYTES", help: "data bytes after each Seq" },
  timeout: {
    type: "string",
    default: "10s",
    value: "DUR",
    help: "longest wait to connect or for a reply (0 = none)",
  },
  "log-level": {
    type: "string",
    default: "warning",
    value: "LEVEL",
    help: "debug, info, warning or error",
  },
  "log-format": {
    type: "string",
    default: "text",
    value: "FORMAT",
    help: "text or json, on stderr",
  },
  help: { type: "boolean", short: "h", env: false, help: "print this help" },
  version: { type: "boolean", short: "V", env: false, help: "print the version" },
};

/** One-line synopsis of `foo-proxy client`. */
export const CLIENT_SYNOPSIS = `foo-proxy client ${formatSynopsis(CLIENT_FLAGS)}`;

/** Usage text of `foo-proxy client`. */
export const CLIENT_USAGE = `Usage: foo-proxy client [flags]

A Foo test driver: sends REQ 1..N on each connection and verifies every reply (the right Seq,
in order, ACK or NAK, nothing extra). Prints progress dots then "OK!" and exits 0; otherwise
exits 1 with one line on stderr saying what was wrong.

Flags (each also from FOO_PROXY_<NAME>, e.g. FOO_PROXY_CONNECT; flags win):
${formatFlagHelp(CLIENT_FLAGS)}

ADDR is :PORT, PORT, HOST:PORT or [IPv6]:PORT. ${DURATION_HELP}`;

/** Parsed configuration of `foo-proxy client`. */
export interface ClientConfig {
  connect: Address;
  /** `--ws`: a WebSocket URL to drive instead of `connect`; undefined: TCP. */
  ws: string | undefined;
  requests: number;
  pipeline: number;
  connections: number;
  payload: number;
  timeoutMs: number;
  logLevel: string;
  logFormat: string;
  help: boolean;
  version: boolean;
}

/**
 * Parses the client's flags (and `FOO_PROXY_*` through `getEnv`).
 *
 * @throws {UsageError} naming the bad flag or value.
 */
export function parseClientConfig(
  args: readonly string[],
  getEnv?: (name: string) => string | undefined,
): ClientConfig {
  const v = parseFlags(args, CLIENT_FLAGS, { getEnv });
  const connect = parseAddressFlag("connect", String(v.connect), { defaultHost: "localhost" });
  if (connect.port === 0) throw new UsageError(`--connect: port 0 cannot be connected to`);
  return {
    connect,
    ws: parseWebSocketUrl(v.ws),
    requests: parseIntegerFlag("requests", v.requests),
    pipeline: parseIntegerFlag("pipeline", v.pipeline, { min: 1, max: 1_000_000 }),
    connections: parseIntegerFlag("connections", v.connections, { min: 1, max: 100_000 }),
    payload: parseIntegerFlag("payload", v.payload, { max: 1 << 24 }),
    timeoutMs: parseDuration("timeout", v.timeout),
    logLevel: String(v["log-level"]),
    logFormat: String(v["log-format"]),
    help: v.help === true,
    version: v.version === true,
  };
}

/** `--ws`: a `ws://` or `wss://` URL, or undefined when not given. */
function parseWebSocketUrl(raw: unknown): string | undefined {
  if (raw === undefined || raw === "") return undefined;
  let url: URL;
  try {
    url = new URL(String(raw));
  } catch {
    throw new UsageError(`Invalid value "${raw}" for --ws: expected ws://HOST:PORT/ or wss://…`);
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new UsageError(`Invalid value "${raw}" for --ws: expected a ws:// or wss:// URL`);
  }
  return url.href;
}

const DOTS = 10;

/**
 * Runs the driver; resolves with 0 when every reply was right, 1 when not (after one stderr line
 * saying why), 2 for a usage error.
 */
export async function runClientCommand(
  args: string[],
  context: CommandContext = {},
): Promise<number> {
  const stdout = context.stdout ?? writeStdoutLine;
  const started = startCommand(() => parseClientConfig(args, denoEnvReader()), {
    usage: CLIENT_USAGE,
    command: "foo-proxy client",
    stdout,
  });
  if (typeof started === "number") return started;
  const { config } = started;
  using _logging = started.logging;
  const logger = getLogger(["foo-proxy", "client"]);

  // Dots go straight to the terminal as replies are verified; a captured stdout (tests) gets
  // them with the final line instead.
  let dots = 0;
  const live = context.stdout === undefined;
  const onProgress = (verified: number, total: number) => {
    const due = Math.floor((verified * DOTS) / total);
    if (due <= dots) return;
    if (live) writeRaw(".".repeat(due - dots));
    dots = due;
  };
  try {
    const result = await runClient({
      connect: config.connect,
      webSocket: config.ws,
      requests: config.requests,
      pipeline: config.pipeline,
      connections: config.connections,
      payload: config.payload,
      timeoutMs: config.timeoutMs,
      signal: context.signal,
      logger,
      onProgress,
    });
    stdout(`${live ? "" : ".".repeat(dots)}OK!`);
    logger.info(
      "{requests} requests on {connections} connection(s): {acks} ACK, {naks} NAK in {ms} ms",
      { ...result, ms: Math.round(result.durationMs) },
    );
    return 0;
  } catch (error) {
    if (!(error instanceof ClientError) && !(error instanceof RangeError)) throw error;
    if (live && dots > 0) writeRaw("\n");
    writeStderrLine(`foo-proxy client: ${error.message}`);
    return 1;
  }
}

const encoder = new TextEncoder();

function writeRaw(text: string): void {
  let bytes = encoder.encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(Deno.stdout.writeSync(bytes));
}
