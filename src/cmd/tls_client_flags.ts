/**
 * `--tls`, `--ca FILE` and `--sni NAME` of the bundled client and load generator: written once
 * for both, so that they can talk to a TLS listener (`foo-proxy server --tls-cert`, a proxy
 * terminating TLS). The server's certificate is always verified.
 *
 * @module
 */
import { type FlagSpec, type FlagValues, UsageError } from "../cli/flags.ts";
import { serverNameOf, type TlsClientOptions, tlsOptionsProblem } from "../net/tls_dial.ts";
import { readSmallFile, SmallFileError } from "../proxy/read_small_file.ts";

/** The flags, spread into a command's flag table. */
export const TLS_CLIENT_FLAGS: Record<string, FlagSpec> = {
  tls: {
    type: "boolean",
    default: false,
    help: "speak TLS, verifying the server's certificate",
  },
  ca: {
    type: "string",
    value: "FILE",
    defaultText: "default roots",
    help: "PEM CA certificate(s) trusted besides the default roots",
  },
  sni: {
    type: "string",
    value: "NAME",
    defaultText: "the host",
    help: "name sent as SNI and verified (needs --tls)",
  },
};

/** What the flags asked for; `null`: plain TCP. */
export interface TlsClientConfig {
  /** `--ca`; `null`: the default roots only. */
  caFile: string | null;
  /** `--sni`; `null`: the host connected to. */
  serverName: string | null;
}

/**
 * Reads the flags from parsed values.
 *
 * @throws {UsageError} for `--ca` or `--sni` without `--tls`.
 */
export function parseTlsClientFlags(v: FlagValues): TlsClientConfig | null {
  const caFile = typeof v.ca === "string" && v.ca !== "" ? v.ca : null;
  let serverName: string | null = null;
  if (typeof v.sni === "string" && v.sni !== "") {
    serverName = serverNameOf(v.sni) ?? null;
    if (serverName === null) {
      throw new UsageError(
        `Invalid value "${v.sni}" for --sni: expected a host name or an IP address`,
      );
    }
  }
  if (v.tls !== true) {
    if (caFile !== null || serverName !== null) throw new UsageError("--ca and --sni need --tls");
    return null;
  }
  return { caFile, serverName };
}

/**
 * The dial options of `config` (the CA file read, asynchronously and bounded); `undefined` for
 * plain TCP.
 *
 * @throws {SmallFileError} when the CA file cannot be read or holds no usable certificate.
 */
export async function tlsClientOptions(
  config: TlsClientConfig | null,
): Promise<TlsClientOptions | undefined> {
  if (config === null) return undefined;
  const tls: TlsClientOptions = {};
  if (config.caFile !== null) {
    tls.caCerts = [await readSmallFile(config.caFile, { what: "--ca file" })];
    const problem = tlsOptionsProblem(tls);
    if (problem !== undefined) {
      throw new SmallFileError(
        `--ca "${config.caFile}" holds no usable certificate: ${problem}`,
        config.caFile,
        "unreadable",
      );
    }
  }
  if (config.serverName !== null) tls.serverName = config.serverName;
  return tls;
}
