/**
 * `foo-proxy server`: flags, logging, signals and the exit code around {@linkcode FooServer}.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { type Address, formatAddress } from "../net/address.ts";
import { parseAddressFlag } from "../cli/address_flag.ts";
import { formatFlagHelp, formatSynopsis } from "../cli/flag_help.ts";
import {
  denoEnvReader,
  type FlagSpec,
  parseChoiceFlag,
  parseFlags,
  parseIntegerFlag,
  UsageError,
} from "../cli/flags.ts";
import { readSmallFile } from "../proxy/read_small_file.ts";
import { checkKeyPair } from "../proxy/tls_termination.ts";
import { FooServer } from "../tools/server.ts";
import { startCommand } from "./command_start.ts";
import { type CommandContext, writeStdoutLine } from "./output.ts";

/** Flags of `foo-proxy server`: the one definition the parser, `--help` and the README use. */
export const SERVER_FLAGS: Record<string, FlagSpec> = {
  listen: {
    type: "string",
    default: ":8001",
    value: "ADDR",
    help: "where to listen (:PORT binds every interface; port 0 picks a free one)",
  },
  "tls-cert": {
    type: "string",
    value: "FILE",
    defaultText: "none",
    help: "serve TLS with this PEM certificate chain (with --tls-key): a TLS upstream",
  },
  "tls-key": {
    type: "string",
    value: "FILE",
    defaultText: "none",
    help: "the PEM private key of --tls-cert",
  },
  "nak-every": {
    type: "string",
    default: "0",
    value: "N",
    help: "NAK every Nth REQ of each connection (0 = never)",
  },
  fragment: { type: "boolean", default: false, help: "write each reply in several small writes" },
  "delay-ms": {
    type: "string",
    default: "0",
    value: "N",
    help: "send each reply N ms after its REQ",
  },
  reply: {
    type: "string",
    default: "seq",
    value: "MODE",
    help:
      'seq: "ACK <seq>"; hash: "ACK|NAK <seq> <hash of the Seq and data>", like real servers (ignores --nak-every)',
  },
  "keep-open": {
    type: "boolean",
    default: false,
    help:
      "never close after a client's FIN (the peer must end the exchange), like some real Foo servers",
  },
  silent: { type: "boolean", default: false, help: "never answer, only read: a hung upstream" },
  "answer-invalid": {
    type: "boolean",
    default: false,
    help:
      'answer every line like real Foo servers: "NAK 0 ERRDECODE" to a line that is not a valid REQ (or whose Seq has over 18 digits)',
  },
  "duplicate-replies": {
    type: "boolean",
    default: false,
    help: "send every reply twice: a broken server whose extra replies answer nothing",
  },
  "log-level": {
    type: "string",
    default: "info",
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

/** One-line synopsis of `foo-proxy server`. */
export const SERVER_SYNOPSIS = `foo-proxy server ${formatSynopsis(SERVER_FLAGS)}`;

/** Usage text of `foo-proxy server`. */
export const SERVER_USAGE = `Usage: foo-proxy server [flags]

A Foo server for demos and tests: answers every REQ with ACK (or NAK) and the same Seq, in
order, for any number of pipelining connections. With --reply hash it computes each reply from
the Seq and the data like real Foo servers ("ACK|NAK <seq> <8 hex digits>", see reply_hash.ts),
so a REQ sent with another Seq gets another answer. With --tls-cert and --tls-key it serves TLS.
Prints "listening on HOST:PORT" on stdout once bound; SIGINT/SIGTERM close it and exit 0.

Flags (each also from FOO_PROXY_<NAME>, e.g. FOO_PROXY_NAK_EVERY; flags win):
${formatFlagHelp(SERVER_FLAGS)}

ADDR is :PORT, PORT, HOST:PORT or [IPv6]:PORT.`;

/** Parsed configuration of `foo-proxy server`. */
export interface ServerConfig {
  listen: Address;
  /** `--tls-cert` and `--tls-key`: serve TLS; `null`: plain TCP. */
  tls: { certFile: string; keyFile: string } | null;
  nakEvery: number;
  fragment: boolean;
  delayMs: number;
  /** `--reply`: how replies are made. */
  reply: "seq" | "hash";
  /** `--keep-open`: never close after a client's FIN. */
  keepOpen: boolean;
  /** `--silent`: never answer. */
  silent: boolean;
  /** `--answer-invalid`: NAK 0 ERRDECODE to every invalid line. */
  answerInvalid: boolean;
  /** `--duplicate-replies`: every reply twice. */
  duplicateReplies: boolean;
  logLevel: string;
  logFormat: string;
  help: boolean;
  version: boolean;
}

/**
 * Parses the server's flags (and `FOO_PROXY_*` through `getEnv`).
 *
 * @throws {UsageError} naming the bad flag or value.
 */
export function parseServerConfig(
  args: readonly string[],
  getEnv?: (name: string) => string | undefined,
): ServerConfig {
  const v = parseFlags(args, SERVER_FLAGS, { getEnv });
  const certFile = v["tls-cert"];
  const keyFile = v["tls-key"];
  if ((typeof certFile === "string") !== (typeof keyFile === "string")) {
    throw new UsageError("--tls-cert and --tls-key go together: give both or neither");
  }
  return {
    listen: parseAddressFlag("listen", String(v.listen), { defaultHost: "0.0.0.0" }),
    tls: typeof certFile === "string" && typeof keyFile === "string" ? { certFile, keyFile } : null,
    nakEvery: parseIntegerFlag("nak-every", v["nak-every"]),
    fragment: v.fragment === true,
    delayMs: parseIntegerFlag("delay-ms", v["delay-ms"], { max: 3_600_000 }),
    reply: parseChoiceFlag("reply", v.reply, ["seq", "hash"] as const),
    keepOpen: v["keep-open"] === true,
    silent: v.silent === true,
    answerInvalid: v["answer-invalid"] === true,
    duplicateReplies: v["duplicate-replies"] === true,
    logLevel: String(v["log-level"]),
    logFormat: String(v["log-format"]),
    help: v.help === true,
    version: v.version === true,
  };
}

/** Runs the Foo server until SIGINT/SIGTERM (or `context.signal`); resolves with the exit code. */
export async function runServer(args: string[], context: CommandContext = {}): Promise<number> {
  const stdout = context.stdout ?? writeStdoutLine;
  const started = startCommand(() => parseServerConfig(args, denoEnvReader()), {
    usage: SERVER_USAGE,
    command: "foo-proxy server",
    stdout,
  });
  if (typeof started === "number") return started;
  const { config } = started;
  using _logging = started.logging;
  const logger = getLogger(["foo-proxy", "server"]);
  let tls: { cert: string; key: string } | undefined;
  if (config.tls) {
    try {
      const [cert, key] = await Promise.all([
        readSmallFile(config.tls.certFile, { what: "--tls-cert file" }),
        readSmallFile(config.tls.keyFile, { what: "--tls-key file" }),
      ]);
      tls = { cert, key };
      // A pair that cannot serve is a bad flag (exit 2, saying which file), not a listen failure.
      checkKeyPair(tls, { cert: config.tls.certFile, key: config.tls.keyFile });
    } catch (error) {
      logger.error("{error}", { error: error instanceof Error ? error.message : String(error) });
      return 2;
    }
  }

  const stop = Promise.withResolvers<string>();
  const signals: [Deno.Signal, () => void][] = Deno.build.os === "windows"
    ? [["SIGINT", () => stop.resolve("SIGINT")], ["SIGBREAK", () => stop.resolve("SIGBREAK")]]
    : [["SIGINT", () => stop.resolve("SIGINT")], ["SIGTERM", () => stop.resolve("SIGTERM")]];
  for (const [signal, handler] of signals) Deno.addSignalListener(signal, handler);
  const onAbort = () => stop.resolve("abort");
  context.signal?.addEventListener("abort", onAbort, { once: true });
  if (context.signal?.aborted) onAbort();
  try {
    await using server = new FooServer({
      listen: config.listen,
      tls,
      nakEvery: config.nakEvery,
      fragment: config.fragment,
      delayMs: config.delayMs,
      reply: config.reply,
      closeAfterFin: !config.keepOpen,
      silent: config.silent,
      answerInvalid: config.answerInvalid,
      duplicateReplies: config.duplicateReplies,
      logger,
    });
    let addr: Deno.NetAddr;
    try {
      addr = await server.start();
    } catch (error) {
      logger.error("Cannot listen on {listen}: {error}", {
        listen: formatAddress(config.listen),
        error: String(error),
      });
      return 1;
    }
    stdout(`listening on ${formatAddress(addr)}`);
    const why = await stop.promise;
    logger.info("Got {signal}: closing after {requests} requests", {
      signal: why,
      requests: server.requests,
    });
    return 0;
  } finally {
    context.signal?.removeEventListener("abort", onAbort);
    for (const [signal, handler] of signals) Deno.removeSignalListener(signal, handler);
  }
}
