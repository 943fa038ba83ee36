/**
 * {@linkcode ProxyConfig} and {@linkcode parseProxyConfig}: the proxy's settings parsed from flags,
 * `FOO_PROXY_*` variables and the `--config` file, one {@linkcode PROXY_SETTINGS} row at a time.
 *
 * @module
 */
import type { Address } from "../net/address.ts";
import type { UpstreamSpec } from "../proxy/upstream_spec.ts";
import { ConfigFileError, parseConfigFile } from "../cli/config_file.ts";
import { parseFlags, UsageError } from "../cli/flags.ts";
import type { AccessLogFormat } from "../proxy/access_log.ts";
import type { ResumeMode } from "../proxy/engine_config.ts";
import type { HealthMode } from "../proxy/health_check.ts";
import type { BalancePolicy } from "../proxy/upstream_pool.ts";
import { PROXY_FLAGS, PROXY_SETTINGS } from "./proxy_settings.ts";

/** Parsed configuration of `foo-proxy proxy`. */
export interface ProxyConfig {
  listen: { hostname: string; port: number };
  /** The first upstream (the only one, usually). */
  forward: { hostname: string; port: number };
  /** Every upstream. */
  upstreams: UpstreamSpec[];
  balance: BalancePolicy;
  /** `--dns-interval`: how often `dns+` upstream names are resolved again, in ms. */
  dnsIntervalMs: number;
  /** `--dns-server`: the name server asked; `null`: the system resolver. */
  dnsServer: Address | null;
  healthIntervalMs: number;
  healthTimeoutMs: number;
  healthMode: HealthMode;
  healthRise: number;
  healthFall: number;
  ejectAfter: number;
  ejectMs: number;
  connectTimeoutMs: number;
  /** Data-plane workers; `undefined`: one per CPU ("auto"). */
  workers: number | undefined;
  /** Clients served at once; `undefined`: derived from the fd limit at start ("auto"). */
  maxConnections: number | undefined;
  /** The fd limit handed in; `undefined`: read it at start if possible ("auto"). */
  fdLimit: number | undefined;
  /** `--allow`: source ranges let in, normalised (`10.0.0.0/8,::1/128`); `""`: every source. */
  allow: string;
  /** `--deny`: source ranges closed at accept, normalised; `""`: none. */
  deny: string;
  /** `--max-connections-per-source`; 0: no limit. */
  maxConnectionsPerSource: number;
  /** `--rate-limit-per-source` in REQs a second; 0: no limit. */
  rateLimitPerSource: number;
  maxInflight: number;
  idleTimeoutMs: number;
  connectRetries: number;
  /** `--upstream-tls`: speak TLS to the upstreams, verifying their certificates. */
  upstreamTls: boolean;
  /** `--upstream-ca`: a PEM file of CA certificates added to the roots; `null`: none. */
  upstreamCa: string | null;
  /** `--upstream-sni`: the name sent and verified; `null`: each upstream's host. */
  upstreamSni: string | null;
  /** `--upstream-cert`: a PEM client certificate; `null`: none. */
  upstreamCert: string | null;
  /** `--upstream-key`: the client certificate's PEM key; `null`: none. */
  upstreamKey: string | null;
  /** `--pool`: idle upstream connections kept per upstream per worker; 0: off. */
  pool: number;
  /** `--pool-idle-timeout` in ms; 0: never. */
  poolIdleTimeoutMs: number;
  drainDelayMs: number;
  drainTimeoutMs: number;
  /** Where to serve the stats app; `null`: off. */
  http: Address | null;
  /** Where to serve the health app; `null`: off. */
  health: Address | null;
  /** Whether `--http` / `--health` were given (a bind failure is then fatal, not a warning). */
  httpExplicit: boolean;
  healthExplicit: boolean;
  /** The recovery file; `null`: none. */
  recoveryPath: string | null;
  /** The pid file; `null`: none. */
  pidFile: string | null;
  /** `--check`: validate everything that can be without binding, then exit. */
  check: boolean;
  /** `--takeover`: take over from the proxy holding `pidFile` (see cmd/takeover.ts). */
  takeover: boolean;
  /** `--access-log`. */
  accessLog: AccessLogFormat;
  /** `--access-log-file`; `null`: stderr. */
  accessLogFile: string | null;
  /** `--config`: the file the rest came from in part; `null`: flags and environment only. */
  configPath: string | null;
  /** `--config-watch`: reload when the `--config` file changes. */
  configWatch: boolean;
  /** Bearer token of the admin write endpoints; `undefined`: loopback only. */
  adminToken: string | undefined;
  /** `--admin-hosts`: more names the admin servers answer to (`*`: any). */
  adminHosts: string[];
  /** What to do when an upstream connection dies: off, or replay verbatim / renumbered. */
  resume: ResumeMode;
  /** `--mux`: shared upstream connections per upstream; 0: one per client. */
  mux: number;
  /** `--ws-listen`: where WebSocket clients connect; `null`: no WebSocket listener. */
  wsListen: Address | null;
  /** `--ws-origin`: origins allowed to open a WebSocket (normalized, `null`, `*`); empty: same host. */
  wsOrigins: string[];
  halfCloseTimeoutMs: number;
  /** `--accept-proxy`: the peers trusted to send a PROXY header, normalised; `""`: off. */
  acceptProxy: string;
  /** `--accept-proxy-timeout` in ms; 0: no limit. */
  acceptProxyTimeoutMs: number;
  /** `--send-proxy`: the PROXY header version sent upstream, or off. */
  sendProxy: "off" | "v1" | "v2";
  reconnectRetries: number;
  maxFailovers: number;
  retainLimit: number;
  /** `--tls-cert`: the PEM certificate chain TLS is terminated with; `null`: plain TCP. */
  tlsCert: string | null;
  /** `--tls-key`: its PEM private key; `null`: none. */
  tlsKey: string | null;
  /** `--tls-handshake-timeout` in ms; 0: no deadline. */
  tlsHandshakeTimeoutMs: number;
  logLevel: string;
  logFormat: string;
  help: boolean;
  version: boolean;
}

/**
 * The properties of {@linkcode ProxyConfig} that no row of {@linkcode PROXY_SETTINGS} sets: they
 * follow from other rows' values.
 */
export const DERIVED_CONFIG_FIELDS = ["forward", "httpExplicit", "healthExplicit"] as const;

/**
 * Parses the proxy's flags (and `FOO_PROXY_*` through `getEnv`).
 *
 * @throws {UsageError} naming the bad flag or value.
 */
export function parseProxyConfig(
  args: readonly string[],
  getEnv?: (name: string) => string | undefined,
  readConfig?: (path: string) => string,
): ProxyConfig {
  // `--resume` alone means verbatim; `--resume=MODE` names the mode.
  const rewritten = args.map(resumeAlias);
  // The config file, when one is named, fills in what flags and variables leave unset.
  const first = parseFlags(rewritten, PROXY_FLAGS, { getEnv });
  const configPath = typeof first.config === "string" && first.config !== "" ? first.config : null;
  let fileValues: Record<string, string | boolean> | undefined;
  if (configPath !== null) {
    if (!readConfig) throw new UsageError("--config: no way to read the file here");
    try {
      fileValues = parseConfigFile(readConfig(configPath), configPath, PROXY_FLAGS);
    } catch (error) {
      if (error instanceof ConfigFileError) throw new UsageError(error.message, { cause: error });
      throw error;
    }
    if (fileValues.resume === "true") fileValues.resume = "verbatim";
  }
  const v = fileValues ? parseFlags(rewritten, PROXY_FLAGS, { getEnv, fileValues }) : first;
  const config: Record<string, unknown> = {};
  for (const s of PROXY_SETTINGS) config[s.field] = s.parse(v[s.flag], s);
  const parsed = config as unknown as ProxyConfig;
  parsed.forward = parsed.upstreams[0].address;
  if (parsed.mux > 0 && parsed.pool > 0) {
    throw new UsageError(
      "--mux and --pool exclude each other: --mux already shares a few connections among every client",
    );
  }
  if (parsed.mux > 0 && parsed.resume === "renumber") {
    throw new UsageError(
      "--mux cannot be combined with --resume=renumber (shared connections carry the clients' own Seqs); use --resume",
    );
  }
  if (parsed.sendProxy !== "off" && (parsed.mux > 0 || parsed.pool > 0)) {
    throw new UsageError(
      `--send-proxy cannot be combined with --${
        parsed.mux > 0 ? "mux" : "pool"
      }: a PROXY header names one client, and those upstream connections are shared by many (the spec forbids it)`,
    );
  }
  // Given (by flag, variable or file): a bind failure is then fatal, not a warning.
  parsed.httpExplicit = v.http !== undefined;
  parsed.healthExplicit = v.health !== undefined;
  return parsed;
}

/**
 * Why the TLS flags of `config` cannot be used (`--tls-cert` without `--tls-key`, or the other way
 * round; `--tls-cert` with `--accept-proxy`), or `undefined`. Checked at start and at each reload rather than by
 * {@linkcode parseProxyConfig}, which takes every flag on its own.
 */
export function tlsFlagsProblem(
  config: Pick<ProxyConfig, "tlsCert" | "tlsKey" | "acceptProxy">,
): string | undefined {
  if ((config.tlsCert === null) !== (config.tlsKey === null)) {
    return config.tlsCert === null
      ? "--tls-key needs --tls-cert (the certificate chain it is the key of)"
      : "--tls-cert needs --tls-key (its private key)";
  }
  if (config.tlsCert !== null && config.acceptProxy.trim() !== "") {
    return "--accept-proxy cannot be combined with --tls-cert: Deno has no server-side STARTTLS, so a PROXY header in front of a TLS ClientHello cannot be read (terminate TLS in front, or drop --accept-proxy)";
  }
  return undefined;
}

/** `--resume` alone means `--resume=verbatim` (parseArgs has no optional values). */
export function resumeAlias(arg: string): string {
  return arg === "--resume" || arg === "-resume" ? "--resume=verbatim" : arg;
}

/**
 * The `--upstream-*` TLS flags need `--upstream-tls`, a certificate needs its key, and Deno
 * cannot send a client certificate with an SNI name other than the host it dials. Apart from
 * {@linkcode parseProxyConfig}, which reads each flag on its own: the supervisor checks the
 * whole at start and at each reload.
 *
 * @throws {UsageError} naming the flags.
 */
export function checkUpstreamTls(config: ProxyConfig): ProxyConfig {
  const given = (
    [
      ["--upstream-ca", config.upstreamCa],
      ["--upstream-sni", config.upstreamSni],
      ["--upstream-cert", config.upstreamCert],
      ["--upstream-key", config.upstreamKey],
    ] as const
  ).filter(([, value]) => value !== null).map(([flag]) => flag);
  if (!config.upstreamTls) {
    if (given.length > 0) {
      throw new UsageError(`${given.join(", ")} need(s) --upstream-tls`);
    }
    return config;
  }
  if ((config.upstreamCert === null) !== (config.upstreamKey === null)) {
    throw new UsageError("--upstream-cert and --upstream-key go together: give both or neither");
  }
  if (config.upstreamCert !== null && config.sendProxy !== "off") {
    throw new UsageError(
      "--send-proxy cannot be combined with --upstream-cert: the PROXY header goes in the clear before the TLS handshake, and Deno.connectTls (the only way to present a client certificate) connects and shakes hands in one call",
    );
  }
  const sni = config.upstreamSni;
  if (config.upstreamCert !== null && sni !== null) {
    const other = config.upstreams.find((u) => u.address.hostname !== sni);
    if (other !== undefined) {
      throw new UsageError(
        `--upstream-sni "${sni}" cannot be combined with --upstream-cert for upstream "${other.name}": Deno sends a client certificate only from Deno.connectTls, which sends the host it dials as SNI (Deno.startTls takes another name but no certificate); give the upstream by that name instead`,
      );
    }
  }
  return config;
}
