/**
 * The settings of `foo-proxy proxy`, one row each: the flag, its help and default (written once,
 * as the flag text), its parser, whether and how a reload applies it, and the {@linkcode Proxy}
 * or {@linkcode UpstreamPool} option it feeds. The flag spec (so the parser, `FOO_PROXY_*`,
 * config-file keys, `--help` and the README table), {@linkcode ProxyConfig}, the engine and pool
 * options and the reload diff are all derived from {@linkcode PROXY_SETTINGS}: adding a setting
 * is adding a row (and its `ProxyConfig` property, with its doc).
 *
 * A default the engine, the proxy or the pool applies too (a `Proxy` or pool built without the
 * CLI) is written once, in their `ENGINE_DEFAULTS`, `PROXY_DEFAULTS` and `POOL_DEFAULTS`, and
 * shown here as flag text (`durationText`).
 *
 * @module
 */
import type { Address } from "../net/address.ts";
import { parseAddressFlag } from "../cli/address_flag.ts";
import { serverNameOf } from "../net/tls_dial.ts";
import { parseDuration } from "../cli/duration.ts";
import { type FlagSpec, parseChoiceFlag, parseIntegerFlag, UsageError } from "../cli/flags.ts";
import { parseHealthInterval, parseUpstreams } from "../cli/upstreams.ts";
import { ENGINE_DEFAULTS, type ResumeMode } from "../proxy/engine_config.ts";
import { PROXY_DEFAULTS, type ProxyOptions, type SourceAccess } from "../proxy/proxy.ts";
import { POOL_DEFAULTS, type UpstreamPoolOptions } from "../proxy/upstream_pool.ts";
import { POOL_IDLE_TIMEOUT_MS } from "../proxy/upstream_target.ts";
import { DNS_DEFAULTS } from "./dns_upstreams.ts";
import { CidrList } from "../net/cidr.ts";
import { normalizeOrigin } from "../net/websocket_upgrade.ts";
import { TLS_HANDSHAKE_TIMEOUT_MS } from "../proxy/tls_termination.ts";
import type { ProxyConfig } from "./proxy_config.ts";

/**
 * What a reload does when a setting's value in the config file changed, in the order
 * {@linkcode applyReload} applies them (which is the order of its `changed` list):
 * - `upstreams`: the pool adds, removes and reweighs upstreams;
 * - `balance`: the pool switches policy;
 * - `engine`: new connections get it ({@linkcode Proxy.updateEngine}; needs `option`);
 * - `max-connections`: the accept limit changes (a change to `auto` keeps the running one);
 * - `access`: new connections see the new source lists and per-source limits
 *   ({@linkcode Proxy.setAccess}; needs `option`);
 * - `log`: logging is set up again;
 * - `live`: read at each use (the admin token and hosts), so the new value holds at once;
 * - `tls`: the key pair files are read again on every reload, changed or not (the supervisor's
 *   `#reloadTls`), and the handshake deadline goes with them;
 * - `restart`: a warning that it takes effect on restart;
 * - `none`: not a setting a file can hold (`--config`, `--help`, `--version`).
 */
export type ReloadEffect =
  | "upstreams"
  | "balance"
  | "engine"
  | "max-connections"
  | "access"
  | "log"
  | "live"
  | "tls"
  | "restart"
  | "none";

/** The order {@linkcode applyReload} applies and reports the effects in. */
export const RELOAD_ORDER: readonly ReloadEffect[] = [
  "upstreams",
  "balance",
  "engine",
  "max-connections",
  "access",
  "log",
  "live",
  "tls",
  "restart",
];

/** A flag's value as the parser hands it over: `undefined` when given nowhere and no default. */
export type RawValue = string | boolean | undefined;

/** What a parser may know of its row: the flag it names in errors, and the default help shows. */
export interface SettingName {
  /** The flag's name, without dashes. */
  flag: string;
  /** The default as help shows it. Unset: none. */
  defaultText?: string;
}

/** One setting of the proxy: everything about it, in one place. */
export interface Setting<K extends keyof ProxyConfig = keyof ProxyConfig> {
  /** The flag's name (`half-close-timeout`): also the config-file key and, as `FOO_PROXY_…`, the variable. */
  flag: string;
  /** The {@linkcode ProxyConfig} property the parsed value goes to. */
  field: K;
  /** `boolean` for flags that take no value. @default {"string"} */
  type?: "string" | "boolean";
  /** One-letter alias. Unset: none. */
  short?: string;
  /** The value's placeholder in help (`DUR`). Unset: the flag takes no value. */
  value?: string;
  /** Whether the flag may be repeated (values joined with commas). @default {false} */
  multiple?: boolean;
  /** Whether the value is optional (`--resume[=MODE]`). @default {false} */
  optionalValue?: boolean;
  /**
   * The default, as a user would write it (`"30s"`); the parser turns it into the value. Unset:
   * the parser sees `undefined` and decides (so it can tell "not given" apart).
   */
  default?: string | boolean;
  /** What help shows as the default when there is no `default` (`off`, `none`). */
  defaultText?: string;
  /** Whether `FOO_PROXY_<NAME>` may supply it. @default {true} */
  env?: boolean;
  /** One sentence for `--help` and the README table. */
  help: string;
  /** Parses the raw value (flag, variable, file or default). @throws {UsageError} */
  parse: (raw: RawValue, setting: SettingName) => ProxyConfig[K];
  /** What a reload does when it changed. */
  reload: ReloadEffect;
  /**
   * The name a `restart` warning uses; rows sharing one are warned about once.
   * @default {the flag}
   */
  reloadName?: string;
  /** The {@linkcode ProxyOptions} key the value is handed to. Unset: none. */
  option?: keyof ProxyOptions;
  /** The {@linkcode UpstreamPoolOptions} key the value is handed to. Unset: none. */
  poolOption?: keyof UpstreamPoolOptions;
}

/** Types one row against {@linkcode ProxyConfig}. */
function setting<K extends keyof ProxyConfig>(row: Setting<K>): Setting {
  return row as unknown as Setting;
}

const duration = (raw: RawValue, s: SettingName) => parseDuration(s.flag, raw);
/** Milliseconds as a duration flag takes them (`30s`, `100ms`, `5m`); 0 as `zero`. */
function durationText(ms: number, zero = "0s"): string {
  if (ms === 0) return zero;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
const integer = (range: { min?: number; max?: number } = {}) => (raw: RawValue, s: SettingName) =>
  parseIntegerFlag(s.flag, raw, range);
const choice = <T extends string>(choices: readonly T[]) => (raw: RawValue, s: SettingName) =>
  parseChoiceFlag(s.flag, raw, choices);
/** `auto` (any case) is `undefined`; anything else an integer of at least 1. */
const integerOrAuto = (raw: RawValue, s: SettingName) =>
  String(raw).trim().toLowerCase() === "auto"
    ? undefined
    : parseIntegerFlag(s.flag, raw, { min: 1 });
/** An unset or empty value is `null`. */
const pathOrNull = (raw: RawValue) => typeof raw === "string" && raw !== "" ? raw : null;
/** The apps bind to localhost unless a host is given; "off" disables one. */
const appAddress = (raw: RawValue, s: SettingName): Address | null => {
  const text = raw === undefined ? String(s.defaultText) : String(raw).trim();
  if (text.toLowerCase() === "off") return null;
  return parseAddressFlag(s.flag, text, { defaultHost: "127.0.0.1" });
};
const text = (raw: RawValue) => String(raw);
/** A host name or IP address to send as SNI; unset or empty: `null`. */
const serverNameOrNull = (raw: RawValue, s: SettingName): string | null => {
  if (typeof raw !== "string" || raw === "") return null;
  const name = serverNameOf(raw);
  if (name === undefined) {
    throw new UsageError(
      `Invalid value "${raw}" for --${s.flag}: expected a host name or an IP address`,
    );
  }
  return name;
};
/** A list of address ranges (`10.0.0.0/8,::1`), written back normalised; unset: `""`, none. */
const cidrList = (raw: RawValue, s: SettingName) => {
  try {
    return CidrList.parse(typeof raw === "string" ? raw : "").toString();
  } catch (error) {
    throw new UsageError(`--${s.flag}: ${(error as Error).message}`);
  }
};
const flagGiven = (raw: RawValue) => raw === true;

function parseResumeMode(raw: RawValue): ResumeMode {
  const text = String(raw);
  const t = text.trim().toLowerCase();
  if (t === "off" || t === "false" || t === "0" || t === "no") return "off";
  if (t === "verbatim" || t === "true" || t === "1" || t === "yes" || t === "on") return "verbatim";
  if (t === "renumber") return "renumber";
  throw new UsageError(`Invalid value "${text}" for --resume: expected verbatim, renumber or off`);
}

/** `--ws-origin`: a list of origins as browsers send them (`normalizeOrigin`), `null` or `*`. */
function parseOrigins(raw: RawValue, s: SettingName): string[] {
  const items = String(raw ?? "").split(",").map((o) => o.trim()).filter(Boolean);
  return items.map((item) => {
    const origin = normalizeOrigin(item);
    if (origin === undefined) {
      throw new UsageError(
        `Invalid origin "${item}" for --${s.flag}: expected scheme://host[:port] (no path), null or *`,
      );
    }
    return origin;
  });
}

/** The most data-plane workers `--workers` takes. */
export const MAX_WORKERS = 256;

/** Every setting of `foo-proxy proxy`, in the order of `--help` and the README table. */
export const PROXY_SETTINGS: readonly Setting[] = [
  setting({
    flag: "listen",
    field: "listen",
    default: ":8002",
    value: "ADDR",
    help: "where clients connect (:PORT binds every interface)",
    parse: (raw, s) => parseAddressFlag(s.flag, String(raw), { defaultHost: "0.0.0.0" }),
    reload: "restart",
    option: "listen",
  }),
  setting({
    flag: "forward",
    field: "upstreams",
    default: "localhost:8001",
    value: "ADDR[,ADDR…]",
    multiple: true,
    help:
      "the upstream Foo server(s), at most 1000: a list and/or repeated flags, each [NAME=]HOST:PORT[*WEIGHT]; dns+HOST:PORT takes every A/AAAA record of HOST (up to 64, see --dns-interval)",
    parse: (raw) => parseUpstreams([String(raw)]),
    reload: "upstreams",
  }),
  setting({
    flag: "balance",
    field: "balance",
    default: POOL_DEFAULTS.policy,
    value: "POLICY",
    help:
      "leastconn (fewest connections per weight: Foo connections are long-lived and pipelined), roundrobin (weighted), or first (the first upstream that is up: primary and backups)",
    parse: choice(["leastconn", "roundrobin", "first"] as const),
    reload: "balance",
    poolOption: "policy",
  }),
  setting({
    flag: "dns-interval",
    field: "dnsIntervalMs",
    default: durationText(DNS_DEFAULTS.intervalMs),
    value: "DUR",
    help:
      "how often each --forward dns+NAME:PORT name is resolved again (its A/AAAA records are the upstreams: new ones join once checked, vanished ones drain), at least 1s (restart to change)",
    parse: (raw, s) => {
      const ms = parseDuration(s.flag, raw);
      if (ms < 1000) throw new UsageError(`--${s.flag}: ${String(raw).trim()} is below 1s`);
      return ms;
    },
    reload: "restart",
  }),
  setting({
    flag: "dns-server",
    field: "dnsServer",
    value: "IP:PORT",
    defaultText: "system",
    help:
      "the name server --forward dns+ names are asked (UDP); unset: the system's (/etc/resolv.conf) (restart to change)",
    parse: (raw, s) =>
      raw === undefined || String(raw).trim() === ""
        ? null
        : parseAddressFlag(s.flag, String(raw), { defaultHost: "127.0.0.1" }),
    reload: "restart",
  }),
  setting({
    flag: "health-interval",
    field: "healthIntervalMs",
    default: durationText(POOL_DEFAULTS.intervalMs),
    value: "DUR",
    help: "time between two health checks of one upstream: at least 100ms, or 0 = none",
    parse: (raw) => parseHealthInterval(raw),
    reload: "restart",
    reloadName: "health checks",
    poolOption: "intervalMs",
  }),
  setting({
    flag: "health-timeout",
    field: "healthTimeoutMs",
    default: durationText(POOL_DEFAULTS.checkTimeoutMs),
    value: "DUR",
    help: "deadline of one health check",
    parse: duration,
    reload: "restart",
    reloadName: "health checks",
    poolOption: "checkTimeoutMs",
  }),
  setting({
    flag: "health-mode",
    field: "healthMode",
    default: POOL_DEFAULTS.mode,
    value: "MODE",
    help:
      "foo: send REQ 1 and expect ACK/NAK 1; tcp: connect only (servers that must not see probes)",
    parse: choice(["foo", "tcp"] as const),
    reload: "restart",
    reloadName: "health checks",
    poolOption: "mode",
  }),
  setting({
    flag: "health-rise",
    field: "healthRise",
    default: String(POOL_DEFAULTS.rise),
    value: "N",
    help: "good checks in a row that bring an upstream up",
    parse: integer({ min: 1, max: 100 }),
    reload: "restart",
    reloadName: "health checks",
    poolOption: "rise",
  }),
  setting({
    flag: "health-fall",
    field: "healthFall",
    default: String(POOL_DEFAULTS.fall),
    value: "N",
    help: "failed checks in a row that take it down",
    parse: integer({ min: 1, max: 100 }),
    reload: "restart",
    reloadName: "health checks",
    poolOption: "fall",
  }),
  setting({
    flag: "eject-after",
    field: "ejectAfter",
    default: String(POOL_DEFAULTS.ejectAfter),
    value: "N",
    help: "connect failures or mid-stream errors in a row that eject an upstream (0 = never)",
    parse: integer({ max: 1000 }),
    reload: "restart",
    poolOption: "ejectAfter",
  }),
  setting({
    flag: "eject-time",
    field: "ejectMs",
    default: durationText(POOL_DEFAULTS.ejectMs),
    value: "DUR",
    help: "first ejection's length; it doubles with each further one, up to 5 min",
    parse: duration,
    reload: "restart",
    poolOption: "ejectMs",
  }),
  // No defaults for http/health: the parser applies defaultText, so ProxyConfig knows what was given.
  setting({
    flag: "http",
    field: "http",
    value: "ADDR|off",
    defaultText: "127.0.0.1:8088",
    help: "serve /stats, /metrics, /version there",
    parse: appAddress,
    reload: "restart",
  }),
  setting({
    flag: "health",
    field: "health",
    value: "ADDR|off",
    defaultText: "127.0.0.1:8081",
    help: "serve /health, /livez, /readyz there",
    parse: appAddress,
    reload: "restart",
  }),
  setting({
    flag: "recovery-path",
    field: "recoveryPath",
    value: "FILE",
    defaultText: "off",
    help: "persist the statistics there and restore them on start",
    parse: (raw) => {
      if (raw === "") throw new UsageError("--recovery-path: the path is empty");
      return typeof raw === "string" ? raw : null;
    },
    reload: "restart",
  }),
  setting({
    flag: "config",
    field: "configPath",
    value: "FILE",
    defaultText: "none",
    help:
      "read the flags from a JSON-with-comments file (keys are the flag names; flags and FOO_PROXY_* win); SIGHUP, POST /reload and a change to the file (--config-watch) read it again",
    parse: pathOrNull,
    reload: "none",
  }),
  setting({
    flag: "config-watch",
    field: "configWatch",
    default: "on",
    value: "on|off",
    help:
      "with --config: reload when the file changes (its directory is watched, so a rename over it or a Kubernetes ConfigMap's symlink swap is seen), like SIGHUP, once per burst of writes (250 ms)",
    parse: (raw, s) => parseChoiceFlag(s.flag, raw, ["on", "off"] as const) === "on",
    reload: "restart",
  }),
  setting({
    flag: "admin-token",
    field: "adminToken",
    value: "TOKEN",
    defaultText: "none",
    help:
      "bearer token for the admin write endpoints (POST /upstreams/NAME/drain|enable); without it they answer only when --http is on loopback",
    parse: (raw) => typeof raw === "string" && raw !== "" ? raw : undefined,
    reload: "live",
  }),
  setting({
    flag: "admin-hosts",
    field: "adminHosts",
    value: "NAMES",
    defaultText: "none",
    help:
      "comma-separated host names the admin ports also answer to in Host (their own address and localhost always; * = any); others get 421",
    parse: (raw) => String(raw ?? "").split(",").map((h) => h.trim()).filter(Boolean),
    reload: "live",
  }),
  setting({
    flag: "access-log",
    field: "accessLog",
    default: "off",
    value: "FORMAT",
    help:
      "one line per finished connection: off, text (like HAProxy's tcplog) or json; on stderr or --access-log-file",
    parse: choice(["off", "text", "json"] as const),
    reload: "restart",
  }),
  setting({
    flag: "access-log-file",
    field: "accessLogFile",
    value: "FILE",
    defaultText: "stderr",
    help: "append the access log there (reopened on SIGHUP, for logrotate)",
    parse: pathOrNull,
    reload: "restart",
  }),
  setting({
    flag: "pid-file",
    field: "pidFile",
    value: "FILE",
    defaultText: "off",
    help:
      "write the process id there once serving, listener and admin ports bound (removed on exit; refused while another live proxy holds it); FILE.sock beside it takes a --takeover request when read and write of it are granted",
    parse: pathOrNull,
    reload: "restart",
  }),
  setting({
    flag: "check",
    field: "check",
    type: "boolean",
    default: false,
    env: false,
    help:
      "check the flags, the --config file, the permissions and the files (TLS pairs, the recovery path), print one line and exit 0, or 2 naming what is wrong; binds nothing (like nginx -t), e.g. before a --takeover",
    parse: flagGiven,
    reload: "none",
  }),
  setting({
    flag: "takeover",
    field: "takeover",
    type: "boolean",
    default: false,
    help:
      "zero-downtime upgrade: with the --pid-file of a running proxy, bind beside it (SO_REUSEPORT, --unstable-net), then make it stop accepting and drain; its statistics carry over (no running proxy: a normal start)",
    parse: flagGiven,
    reload: "none",
  }),
  setting({
    flag: "connect-timeout",
    field: "connectTimeoutMs",
    default: durationText(PROXY_DEFAULTS.connectTimeoutMs),
    value: "DUR",
    help: "per upstream connect attempt (0 = none)",
    parse: duration,
    reload: "restart",
    option: "connectTimeoutMs",
    poolOption: "connectTimeoutMs",
  }),
  setting({
    flag: "connect-retries",
    field: "connectRetries",
    default: String(PROXY_DEFAULTS.connectRetries),
    value: "N",
    help: "upstream connect retries with backoff, holding the client's first bytes",
    parse: integer({ max: 100 }),
    reload: "restart",
    option: "connectRetries",
  }),
  // --upstream-tls: the files are read (asynchronously, bounded) by the supervisor at start and
  // at every reload (SIGHUP, POST /reload: a renewed certificate at the same path), and handed to
  // the planes as PEM text; a changed flag takes a restart.
  setting({
    flag: "upstream-tls",
    field: "upstreamTls",
    type: "boolean",
    default: false,
    help:
      "speak TLS to the upstreams (dials, --pool, --mux, --resume and health checks), always verifying their certificate: a refused one is a counted connect failure (restart to change)",
    parse: flagGiven,
    reload: "restart",
    reloadName: "upstream TLS",
  }),
  setting({
    flag: "upstream-ca",
    field: "upstreamCa",
    value: "FILE",
    defaultText: "default roots",
    help:
      "PEM CA certificate(s) trusted for the upstreams' certificates, besides the default roots (needs --upstream-tls; read again on reload, a new path takes a restart)",
    parse: pathOrNull,
    reload: "restart",
    reloadName: "upstream TLS",
  }),
  setting({
    flag: "upstream-sni",
    field: "upstreamSni",
    value: "NAME",
    defaultText: "its host",
    help:
      "name sent as SNI and verified in the upstreams' certificates (needs --upstream-tls; Deno cannot combine it with --upstream-cert; restart to change)",
    parse: serverNameOrNull,
    reload: "restart",
    reloadName: "upstream TLS",
  }),
  setting({
    flag: "upstream-cert",
    field: "upstreamCert",
    value: "FILE",
    defaultText: "none",
    help:
      "PEM client certificate presented to the upstreams, with --upstream-key (needs --upstream-tls; read again on reload, a new path takes a restart)",
    parse: pathOrNull,
    reload: "restart",
    reloadName: "upstream TLS",
  }),
  setting({
    flag: "upstream-key",
    field: "upstreamKey",
    value: "FILE",
    defaultText: "none",
    help: "PEM private key of --upstream-cert (read again on reload, a new path takes a restart)",
    parse: pathOrNull,
    reload: "restart",
    reloadName: "upstream TLS",
  }),
  setting({
    flag: "pool",
    field: "pool",
    default: "0",
    value: "N",
    help:
      "idle upstream connections kept per upstream (per worker) for the next client: a client that ends cleanly leaves its connection there; 0 = off, every client dials (restart to change)",
    parse: integer({ max: 100_000 }),
    reload: "restart",
    option: "pool",
    poolOption: "idleMax",
  }),
  setting({
    flag: "pool-idle-timeout",
    field: "poolIdleTimeoutMs",
    default: durationText(POOL_IDLE_TIMEOUT_MS),
    value: "DUR",
    help: "close a pooled connection unused this long (0 = never; restart to change)",
    parse: duration,
    reload: "restart",
    option: "poolIdleTimeoutMs",
    poolOption: "idleTimeoutMs",
  }),
  setting({
    flag: "workers",
    field: "workers",
    default: "auto",
    value: "N|auto",
    help:
      "data-plane threads, each with its own listener on the port (SO_REUSEPORT); auto = one per CPU",
    parse: (raw, s) =>
      String(raw).trim().toLowerCase() === "auto"
        ? undefined
        : parseIntegerFlag(s.flag, raw, { min: 1, max: MAX_WORKERS }),
    reload: "restart",
  }),
  setting({
    flag: "max-connections",
    field: "maxConnections",
    default: "auto",
    value: "N|auto",
    help:
      "clients served at once, more are closed and counted; auto = (fd limit - 128) / 2, at most 10000",
    parse: integerOrAuto,
    reload: "max-connections",
  }),
  setting({
    flag: "fd-limit",
    field: "fdLimit",
    default: "auto",
    value: "N|auto",
    help:
      "the process's file-descriptor limit, e.g. FOO_PROXY_FD_LIMIT=$(ulimit -n); auto reads it where Deno allows (only with --allow-all), else assumes 10000 clients",
    parse: integerOrAuto,
    reload: "restart",
  }),
  // ---- Source access (docs/edge.md): checked at accept, before a byte is read ----
  setting({
    flag: "allow",
    field: "allow",
    value: "CIDR[,CIDR…]",
    multiple: true,
    defaultText: "any",
    help:
      "let in only clients whose address is in these ranges (IPv4 and IPv6; empty = every source not denied); others are closed at accept (a reload also closes open connections it now refuses)",
    parse: cidrList,
    reload: "access",
    option: "allow",
  }),
  setting({
    flag: "deny",
    field: "deny",
    value: "CIDR[,CIDR…]",
    multiple: true,
    defaultText: "none",
    help:
      "close clients from these ranges at accept, before a byte is read; wins over --allow (a reload also closes open connections it now refuses)",
    parse: cidrList,
    reload: "access",
    option: "deny",
  }),
  setting({
    flag: "max-connections-per-source",
    field: "maxConnectionsPerSource",
    default: "0",
    value: "N",
    help:
      "connections one client address may have open in the whole process, more are closed and counted (0 = no limit; reload: new connections)",
    parse: integer({ max: 1_000_000 }),
    reload: "access",
    option: "maxConnectionsPerSource",
  }),
  setting({
    flag: "rate-limit-per-source",
    field: "rateLimitPerSource",
    default: "0",
    value: "REQ/S",
    help:
      "REQs a second one client address may send over all its connections (burst: a second's worth); past it the proxy stops reading it until tokens refill (0 = no limit; reload: new connections)",
    parse: integer({ max: 100_000_000 }),
    reload: "access",
    option: "rateLimitPerSource",
  }),
  setting({
    flag: "max-inflight",
    field: "maxInflight",
    default: String(ENGINE_DEFAULTS.maxInflight),
    value: "N",
    help: "unanswered REQs per client before its reads pause (0 = no limit)",
    parse: integer(),
    reload: "engine",
    option: "maxInflight",
  }),
  setting({
    flag: "idle-timeout",
    field: "idleTimeoutMs",
    default: durationText(ENGINE_DEFAULTS.idleTimeoutMs, "off"),
    value: "DUR",
    help: "close a client with no traffic and nothing in flight for this long",
    parse: duration,
    reload: "engine",
    option: "idleTimeoutMs",
  }),
  setting({
    flag: "half-close-timeout",
    field: "halfCloseTimeoutMs",
    default: durationText(ENGINE_DEFAULTS.halfCloseTimeoutMs),
    value: "DUR",
    help: "after a client's FIN with replies owed, close once none came for this long (0 = wait)",
    parse: duration,
    reload: "engine",
    option: "halfCloseTimeoutMs",
  }),
  setting({
    flag: "drain-delay",
    field: "drainDelayMs",
    default: durationText(PROXY_DEFAULTS.drainDelayMs),
    value: "DUR",
    help: "on SIGTERM/SIGINT keep accepting this long (readiness already fails)",
    parse: duration,
    reload: "restart",
    option: "drainDelayMs",
  }),
  setting({
    flag: "drain-timeout",
    field: "drainTimeoutMs",
    default: durationText(PROXY_DEFAULTS.drainTimeoutMs),
    value: "DUR",
    help: "on SIGTERM/SIGINT wait this long for clients to finish",
    parse: duration,
    reload: "restart",
    option: "drainTimeoutMs",
  }),
  setting({
    flag: "mux",
    field: "mux",
    default: "0",
    value: "N",
    help:
      "share N upstream connections per upstream (per worker) among all clients: whole REQ lines forwarded verbatim, writes coalesced, replies routed in order; invalid lines are refused (0 = one upstream connection per client)",
    parse: integer({ max: 1024 }),
    reload: "restart",
    option: "mux",
  }),
  // A string flag: `--resume` alone is rewritten to `--resume=verbatim` before parsing.
  setting({
    flag: "resume",
    field: "resume",
    default: ENGINE_DEFAULTS.resume,
    value: "MODE",
    optionalValue: true,
    help:
      "when an upstream connection dies, replay its unanswered REQs on a new one: verbatim (as sent; what --resume alone means) or renumber (Seqs from 1: a server that answers from the Seq then answers other requests)",
    parse: parseResumeMode,
    reload: "restart",
    option: "resume",
  }),
  setting({
    flag: "resume-retries",
    field: "reconnectRetries",
    default: String(ENGINE_DEFAULTS.reconnectRetries),
    value: "N",
    help: "reconnect attempts per failover (backoff 100 ms doubling to 2 s)",
    parse: integer({ max: 100 }),
    reload: "engine",
    option: "reconnectRetries",
  }),
  setting({
    flag: "resume-max-failovers",
    field: "maxFailovers",
    default: String(ENGINE_DEFAULTS.maxFailovers),
    value: "N",
    help: "failovers in a row that die without a reply before the client is closed",
    parse: integer({ max: 1000 }),
    reload: "engine",
    option: "maxFailovers",
  }),
  setting({
    flag: "resume-retain",
    field: "retainLimit",
    default: String(ENGINE_DEFAULTS.retainLimit),
    value: "BYTES",
    help: "unanswered REQ bytes kept per client for replay",
    parse: integer({ max: 2 ** 30 }),
    reload: "engine",
    option: "retainLimit",
  }),
  // The PROXY protocol (--accept-proxy, --send-proxy): one block.
  setting({
    flag: "accept-proxy",
    field: "acceptProxy",
    value: "CIDR[,CIDR…]",
    multiple: true,
    defaultText: "off",
    help:
      "peers (load balancers) whose connections must start with a PROXY header (v1 or v2), whose client is then the one logs and limits see; a header from others closes (reload: new connections)",
    parse: cidrList,
    reload: "engine",
    option: "acceptProxy",
  }),
  setting({
    flag: "accept-proxy-timeout",
    field: "acceptProxyTimeoutMs",
    default: durationText(PROXY_DEFAULTS.acceptProxyTimeoutMs),
    value: "DUR",
    help: "a listed peer that has not sent its whole PROXY header by then is closed (0 = no limit)",
    parse: duration,
    reload: "restart",
    option: "acceptProxyTimeoutMs",
  }),
  setting({
    flag: "send-proxy",
    field: "sendProxy",
    default: "off",
    value: "off|v1|v2",
    help:
      "start each upstream connection with a PROXY header carrying the client's address (1:1 only: not with --mux or --pool, whose connections are shared); health checks send v1 UNKNOWN / v2 LOCAL",
    parse: choice(["off", "v1", "v2"] as const),
    reload: "restart",
    option: "sendProxy",
    poolOption: "sendProxy",
  }),
  // ---- WebSocket ingress ----
  setting({
    flag: "ws-listen",
    field: "wsListen",
    value: "ADDR",
    defaultText: "off",
    help:
      "also accept WebSocket clients there (ws://, or wss:// with --tls-cert; each message carries Foo bytes, replies come back as messages), served by the same engine, limits, stats and access log (restart to change)",
    parse: (raw, s) =>
      raw === undefined || String(raw).trim() === "" || String(raw).trim().toLowerCase() === "off"
        ? null
        : parseAddressFlag(s.flag, String(raw), { defaultHost: "0.0.0.0" }),
    reload: "restart",
  }),
  setting({
    flag: "ws-origin",
    field: "wsOrigins",
    value: "ORIGIN[,…]",
    multiple: true,
    defaultText: "same host",
    help:
      "browser pages (Origin: scheme://host[:port], null, or * for any) allowed to open a WebSocket; others get 403. Unset: only pages of the host and port the client connected to; clients that send no Origin (not a browser) are let in (restart to change)",
    parse: parseOrigins,
    reload: "restart",
  }),
  setting({
    flag: "tls-cert",
    field: "tlsCert",
    value: "FILE",
    defaultText: "off",
    help:
      "terminate TLS on --listen with this PEM certificate chain (with --tls-key): read again on every SIGHUP and POST /reload, and a new pair swapped in without dropping a connection",
    parse: pathOrNull,
    reload: "tls",
  }),
  setting({
    flag: "tls-key",
    field: "tlsKey",
    value: "FILE",
    defaultText: "off",
    help: "the PEM private key of --tls-cert (read again on every reload)",
    parse: pathOrNull,
    reload: "tls",
  }),
  setting({
    flag: "tls-handshake-timeout",
    field: "tlsHandshakeTimeoutMs",
    default: durationText(TLS_HANDSHAKE_TIMEOUT_MS),
    value: "DUR",
    help:
      "close a TLS client whose handshake has not completed in this long (counted); until then it holds a --max-connections slot. A handshake is 1-2 round trips, so 5s lets a slow mobile link through while a staller holds its slot only briefly (0 = no deadline; a reload applies it)",
    parse: duration,
    reload: "tls",
    option: "tlsHandshakeTimeoutMs",
  }),
  setting({
    flag: "log-level",
    field: "logLevel",
    default: "info",
    value: "LEVEL",
    help: "debug, info, warning or error",
    parse: text,
    reload: "log",
  }),
  setting({
    flag: "log-format",
    field: "logFormat",
    default: "text",
    value: "FORMAT",
    help: "text or json (one object a line), on stderr",
    parse: text,
    reload: "log",
  }),
  setting({
    flag: "help",
    field: "help",
    type: "boolean",
    short: "h",
    env: false,
    help: "print this help",
    parse: flagGiven,
    reload: "none",
  }),
  setting({
    flag: "version",
    field: "version",
    type: "boolean",
    short: "V",
    env: false,
    help: "print the version",
    parse: flagGiven,
    reload: "none",
  }),
];

/** The parser's view of one setting. */
export function flagSpecOf(s: Setting): FlagSpec {
  const spec: FlagSpec = { type: s.type ?? "string" };
  if (s.short !== undefined) spec.short = s.short;
  if (s.multiple) spec.multiple = true;
  if (s.default !== undefined) spec.default = s.default;
  if (s.env === false) spec.env = false;
  // --config, --help and --version: a file naming them makes no sense.
  if (s.reload === "none") spec.file = false;
  if (s.value !== undefined) spec.value = s.value;
  if (s.optionalValue) spec.optionalValue = true;
  spec.help = s.help;
  if (s.defaultText !== undefined) spec.defaultText = s.defaultText;
  return spec;
}

/** Flags of `foo-proxy proxy`, derived from {@linkcode PROXY_SETTINGS}: the parser, `--help` and the README use them. */
export const PROXY_FLAGS: Record<string, FlagSpec> = Object.fromEntries(
  PROXY_SETTINGS.map((s) => [s.flag, flagSpecOf(s)]),
);

/** The {@linkcode ProxyOptions} every row with an `option` feeds, taken from `config`. */
export function proxyOptionsOf(config: ProxyConfig): Partial<ProxyOptions> {
  const out: Record<string, unknown> = {};
  for (const s of PROXY_SETTINGS) if (s.option !== undefined) out[s.option] = config[s.field];
  return out as Partial<ProxyOptions>;
}

/** The {@linkcode UpstreamPoolOptions} every row with a `poolOption` feeds, taken from `config`. */
export function poolOptionsOf(config: ProxyConfig): Partial<UpstreamPoolOptions> {
  const out: Record<string, unknown> = {};
  for (const s of PROXY_SETTINGS) {
    if (s.poolOption !== undefined) out[s.poolOption] = config[s.field];
  }
  return out as Partial<UpstreamPoolOptions>;
}

/** What {@linkcode Proxy.updateEngine} takes: the `engine` rows' options, from `config`. */
export function engineUpdateOf(config: ProxyConfig): Record<string, unknown> {
  return reloadOptionsOf(config, "engine");
}

/** What {@linkcode Proxy.setAccess} takes: the `access` rows' options, from `config`. */
export function accessOf(config: ProxyConfig): SourceAccess {
  return reloadOptionsOf(config, "access") as SourceAccess;
}

/** The options of the rows a reload applies as `effect`, from `config`. */
function reloadOptionsOf(config: ProxyConfig, effect: ReloadEffect): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of PROXY_SETTINGS) {
    if (s.reload === effect) out[s.option ?? s.field] = config[s.field];
  }
  return out;
}
