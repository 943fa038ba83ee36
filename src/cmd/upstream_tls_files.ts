/**
 * {@linkcode readUpstreamTls}: the `--upstream-tls` files read once, at start (asynchronously,
 * bounded, like every file a user names), into the PEM texts the dial takes. The data-plane
 * Workers get the texts, never the paths.
 *
 * @module
 */
import { readSmallFile } from "../proxy/read_small_file.ts";
import type { UpstreamTls } from "../proxy/upstream.ts";
import { tlsOptionsProblem } from "../net/tls_dial.ts";
import type { ProxyConfig } from "./proxy_config.ts";

/** An `--upstream-*` file could not be read or holds no PEM of the kind it should. */
export class UpstreamTlsFileError extends Error {
  /** Creates the error; `message` names the flag, the file and what is wrong. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UpstreamTlsFileError";
  }
}

const CERTIFICATE = /-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----/;
const PRIVATE_KEY = /-----BEGIN ((?:RSA |EC )?PRIVATE KEY)-----[A-Za-z0-9+/=\s]+-----END \1-----/;

/**
 * Reads the files `config` names for `--upstream-tls`; `undefined` when it is off.
 *
 * @throws {UpstreamTlsFileError} when a file cannot be read or holds no PEM certificate (or key).
 */
export async function readUpstreamTls(config: ProxyConfig): Promise<UpstreamTls | undefined> {
  if (!config.upstreamTls) return undefined;
  const read = async (path: string | null, flag: string, pattern: RegExp, what: string) => {
    if (path === null) return undefined;
    let text: string;
    try {
      text = await readSmallFile(path, { what: `${flag} file` });
    } catch (error) {
      throw new UpstreamTlsFileError(error instanceof Error ? error.message : String(error), {
        cause: error,
      });
    }
    if (!pattern.test(text)) {
      throw new UpstreamTlsFileError(`${flag} "${path}" holds no PEM ${what}`);
    }
    return text;
  };
  const [ca, cert, key] = await Promise.all([
    read(config.upstreamCa, "--upstream-ca", CERTIFICATE, "certificate"),
    read(config.upstreamCert, "--upstream-cert", CERTIFICATE, "certificate"),
    read(config.upstreamKey, "--upstream-key", PRIVATE_KEY, "private key"),
  ]);
  const tls: UpstreamTls = {};
  if (ca !== undefined) {
    tls.caCerts = [ca];
    const problem = tlsOptionsProblem(tls);
    if (problem !== undefined) {
      throw new UpstreamTlsFileError(
        `--upstream-ca "${config.upstreamCa}" cannot be used: ${problem}`,
      );
    }
  }
  if (config.upstreamSni !== null) tls.serverName = config.upstreamSni;
  if (cert !== undefined && key !== undefined) {
    const problem = tlsOptionsProblem({ cert, key });
    if (problem !== undefined) {
      throw new UpstreamTlsFileError(
        `--upstream-cert "${config.upstreamCert}" with --upstream-key "${config.upstreamKey}" cannot be used: ${problem}`,
      );
    }
    tls.cert = cert;
    tls.key = key;
  }
  return tls;
}
