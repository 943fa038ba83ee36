/**
 * `foo-proxy proxy`: flags, logging, signals and the exit code around {@linkcode Proxy}.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { type Address, formatAddress } from "../cli/address.ts";
import { parseAddressFlag } from "../cli/address_flag.ts";
import { parseDuration } from "../cli/duration.ts";
import {
  assertPermissions,
  MissingPermissionError,
  missingPermissionsMessage,
} from "../cli/permissions.ts";
import { formatFlagHelp, formatSynopsis } from "../cli/flag_help.ts";
import { DURATION_HELP } from "../cli/duration.ts";
import { parseHealthInterval, parseUpstreams, type UpstreamSpec } from "../cli/upstreams.ts";
import { ConfigFileError, parseConfigFile } from "../cli/config_file.ts";
import type { HealthMode } from "../proxy/health_check.ts";
import { type BalancePolicy, UpstreamPool } from "../proxy/upstream_pool.ts";
import {
  denoEnvReader,
  type FlagSpec,
  parseChoiceFlag,
  parseFlags,
  parseIntegerFlag,
  UsageError,
} from "../cli/flags.ts";
import type { ResumeMode } from "../proxy/engine_config.ts";
import { Proxy } from "../proxy/proxy.ts";
import { describeError } from "../proxy/upstream.ts";
import { RecoveryPathError, type RecoveryPersister } from "../proxy/recovery_file.ts";
import { readSmallFile, SmallFileError } from "../proxy/read_small_file.ts";
import { systemClock } from "../stats/clock.ts";
import { Stats } from "../stats/stats.ts";
import { startCommand } from "./command_start.ts";
import { installLastResort } from "./last_resort.ts";
import { installSignals } from "./signals.ts";
import { setupLogging } from "./logging.ts";
import { fdsNeeded, maxConnectionsFor, readFdLimit } from "./fd_limit.ts";
import { LineWriter } from "./line_writer.ts";
import { type AccessLogFormat, type AccessRecord, formatAccessLine } from "../proxy/access_log.ts";
import { PidFile, PidFileError } from "./pid_file.ts";
import { openOwnFile, OwnFileError } from "./open_own_file.ts";
import { HttpBindError, type Observability, startObservability } from "./observability.ts";
import { setupRecovery } from "./recovery_setup.ts";
import { type CommandContext, writeStderrLine, writeStdoutLine } from "./output.ts";

/** Flags of `foo-proxy proxy`: the one definition the parser, `--help` and the README use. */
export const PROXY_FLAGS: Record<string, FlagSpec> = {
  listen: {
    type: "string",
    default: ":8002",
    value: "ADDR",
    help: "where clients connect (:PORT binds every interface)",
  },
  forward: {
    type: "string",
    default: "localhost:8001",
    value: "ADDR[,ADDR…]",
    multiple: true,
    help:
      "the upstream Foo server(s), at most 1000: a list and/or repeated flags, each [NAME=]HOST:PORT[*WEIGHT]",
  },
  balance: {
    type: "string",
    default: "leastconn",
    value: "POLICY",
    help:
      "leastconn (fewest connections per weight: Foo connections are long-lived and pipelined), roundrobin (weighted), or first (the first upstream that is up: primary and backups)",
  },
  "health-interval": {
    type: "string",
    default: "2s",
    value: "DUR",
    help: "time between two health checks of one upstream: at least 100ms, or 0 = none",
  },
  "health-timeout": {
    type: "string",
    default: "1s",
    value: "DUR",
    help: "deadline of one health check",
  },
  "health-mode": {
    type: "string",
    default: "foo",
    value: "MODE",
    help:
      "foo: send REQ 1 and expect ACK/NAK 1; tcp: connect only (servers that must not see probes)",
  },
  "health-rise": {
    type: "string",
    default: "2",
    value: "N",
    help: "good checks in a row that bring an upstream up",
  },
  "health-fall": {
    type: "string",
    default: "3",
    value: "N",
    help: "failed checks in a row that take it down",
  },
  "eject-after": {
    type: "string",
    default: "5",
    value: "N",
    help: "connect failures or mid-stream errors in a row that eject an upstream (0 = never)",
  },
  "eject-time": {
    type: "string",
    default: "30s",
    value: "DUR",
    help: "first ejection's length; it doubles with each further one, up to 5 min",
  },
  // No defaults here for http/health: parseProxyConfig applies them, so it knows what was given.
  http: {
    type: "string",
    value: "ADDR|off",
    defaultText: "127.0.0.1:8088",
    help: "serve /stats, /metrics, /version there",
  },
  health: {
    type: "string",
    value: "ADDR|off",
    defaultText: "127.0.0.1:8081",
    help: "serve /health, /livez, /readyz there",
  },
  "recovery-path": {
    type: "string",
    value: "FILE",
    defaultText: "off",
    help: "persist the statistics there and restore them on start",
  },
  config: {
    type: "string",
    value: "FILE",
    defaultText: "none",
    help:
      "read the flags from a JSON-with-comments file (keys are the flag names; flags and FOO_PROXY_* win); SIGHUP and POST /reload read it again",
  },
  "admin-token": {
    type: "string",
    value: "TOKEN",
    defaultText: "none",
    help:
      "bearer token for the admin write endpoints (POST /upstreams/NAME/drain|enable); without it they answer only when --http is on loopback",
  },
  "admin-hosts": {
    type: "string",
    value: "NAMES",
    defaultText: "none",
    help:
      "comma-separated host names the admin ports also answer to in Host (their own address and localhost always; * = any); others get 421",
  },
  "access-log": {
    type: "string",
    default: "off",
    value: "FORMAT",
    help:
      "one line per finished connection: off, text (like HAProxy's tcplog) or json; on stderr or --access-log-file",
  },
  "access-log-file": {
    type: "string",
    value: "FILE",
    defaultText: "stderr",
    help: "append the access log there (reopened on SIGHUP, for logrotate)",
  },
  "pid-file": {
    type: "string",
    value: "FILE",
    defaultText: "off",
    help:
      "write the process id there once serving, listener and admin ports bound (removed on exit; refused while another live proxy holds it)",
  },
  "connect-timeout": {
    type: "string",
    default: "5s",
    value: "DUR",
    help: "per upstream connect attempt (0 = none)",
  },
  "connect-retries": {
    type: "string",
    default: "3",
    value: "N",
    help: "upstream connect retries with backoff, holding the client's first bytes",
  },
  "max-connections": {
    type: "string",
    default: "auto",
    value: "N|auto",
    help:
      "clients served at once, more are closed and counted; auto = (fd limit - 128) / 2, at most 10000",
  },
  "fd-limit": {
    type: "string",
    default: "auto",
    value: "N|auto",
    help:
      "the process's file-descriptor limit, e.g. FOO_PROXY_FD_LIMIT=$(ulimit -n); auto reads it where Deno allows (only with --allow-all), else assumes 10000 clients",
  },
  "max-inflight": {
    type: "string",
    default: "10000",
    value: "N",
    help: "unanswered REQs per client before its reads pause (0 = no limit)",
  },
  "idle-timeout": {
    type: "string",
    default: "off",
    value: "DUR",
    help: "close a client with no traffic and nothing in flight for this long",
  },
  "half-close-timeout": {
    type: "string",
    default: "30s",
    value: "DUR",
    help: "after a client's FIN with replies owed, close once none came for this long (0 = wait)",
  },
  "drain-delay": {
    type: "string",
    default: "0s",
    value: "DUR",
    help: "on SIGTERM/SIGINT keep accepting this long (readiness already fails)",
  },
  "drain-timeout": {
    type: "string",
    default: "30s",
    value: "DUR",
    help: "on SIGTERM/SIGINT wait this long for clients to finish",
  },
  // A string flag: `--resume` alone is rewritten to `--resume=verbatim` before parsing.
  resume: {
    type: "string",
    default: "off",
    value: "MODE",
    optionalValue: true,
    help:
      "when an upstream connection dies, replay its unanswered REQs on a new one: verbatim (as sent; what --resume alone means) or renumber (Seqs from 1: a server that answers from the Seq then answers other requests)",
  },
  "resume-retries": {
    type: "string",
    default: "6",
    value: "N",
    help: "reconnect attempts per failover (backoff 100 ms doubling to 2 s)",
  },
  "resume-max-failovers": {
    type: "string",
    default: "4",
    value: "N",
    help: "failovers in a row that die without a reply before the client is closed",
  },
  "resume-retain": {
    type: "string",
    default: "1048576",
    value: "BYTES",
    help: "unanswered REQ bytes kept per client for replay",
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
    help: "text or json (one object a line), on stderr",
  },
  help: { type: "boolean", short: "h", env: false, help: "print this help" },
  version: { type: "boolean", short: "V", env: false, help: "print the version" },
};

/** One-line synopsis of `foo-proxy proxy`. */
export const PROXY_SYNOPSIS = `foo-proxy [proxy] ${formatSynopsis(PROXY_FLAGS)}`;

/** Usage text of `foo-proxy proxy`. */
export const PROXY_USAGE = `Usage: foo-proxy [proxy] [flags]

Proxies Foo traffic from --listen to --forward and counts every message.
Send SIGUSR2 for one JSON stats line on stdout (signals sent at once may coalesce into one
line). SIGINT/SIGTERM/SIGQUIT drain (readiness fails at once, new clients are refused after
--drain-delay, open ones get --drain-timeout to finish), print a final line and exit 0; the same
signal again a second or more later closes every connection at once and exits 1 (a repeat within
a second, as a terminal's Ctrl-C under deno task delivers, is ignored). SIGHUP never stops it.
SIGUSR1 is ignored (stats are on SIGUSR2; the debugger Deno would open on it is closed).

Flags (each also from FOO_PROXY_<NAME>, e.g. FOO_PROXY_LISTEN; flags win):
${formatFlagHelp(PROXY_FLAGS)}

ADDR is :PORT, PORT, HOST:PORT or [IPv6]:PORT. ${DURATION_HELP}
Go-style -listen=:8002 also works.`;

/** Parsed configuration of `foo-proxy proxy`. */
export interface ProxyConfig {
  listen: { hostname: string; port: number };
  /** The first upstream (the only one, usually). */
  forward: { hostname: string; port: number };
  /** Every upstream. */
  upstreams: UpstreamSpec[];
  balance: BalancePolicy;
  healthIntervalMs: number;
  healthTimeoutMs: number;
  healthMode: HealthMode;
  healthRise: number;
  healthFall: number;
  ejectAfter: number;
  ejectMs: number;
  connectTimeoutMs: number;
  /** Clients served at once; `undefined`: derived from the fd limit at start ("auto"). */
  maxConnections: number | undefined;
  /** The fd limit handed in; `undefined`: read it at start if possible ("auto"). */
  fdLimit: number | undefined;
  maxInflight: number;
  idleTimeoutMs: number;
  connectRetries: number;
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
  /** `--access-log`. */
  accessLog: AccessLogFormat;
  /** `--access-log-file`; `null`: stderr. */
  accessLogFile: string | null;
  /** `--config`: the file the rest came from in part; `null`: flags and environment only. */
  configPath: string | null;
  /** Bearer token of the admin write endpoints; `undefined`: loopback only. */
  adminToken: string | undefined;
  /** `--admin-hosts`: more names the admin servers answer to (`*`: any). */
  adminHosts: string[];
  /** What to do when an upstream connection dies: off, or replay verbatim / renumbered. */
  resume: ResumeMode;
  halfCloseTimeoutMs: number;
  reconnectRetries: number;
  maxFailovers: number;
  retainLimit: number;
  logLevel: string;
  logFormat: string;
  help: boolean;
  version: boolean;
}

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
  const address = (flag: string, defaultHost: string) =>
    parseAddressFlag(flag, String(v[flag]), { defaultHost });
  // The apps bind to localhost unless a host is given; "off" disables one.
  const httpAddress = (flag: "http" | "health", fallback: string) => {
    const text = v[flag] === undefined ? fallback : String(v[flag]).trim();
    if (text.toLowerCase() === "off") return null;
    return parseAddressFlag(flag, text, { defaultHost: "127.0.0.1" });
  };
  const upstreams = parseUpstreams([String(v.forward)]);
  const recoveryPath = v["recovery-path"];
  if (recoveryPath === "") throw new UsageError("--recovery-path: the path is empty");
  return {
    listen: address("listen", "0.0.0.0"),
    forward: upstreams[0].address,
    upstreams,
    balance: parseChoiceFlag("balance", v.balance, ["leastconn", "roundrobin", "first"] as const),
    healthIntervalMs: parseHealthInterval(v["health-interval"]),
    healthTimeoutMs: parseDuration("health-timeout", v["health-timeout"]),
    healthMode: parseChoiceFlag("health-mode", v["health-mode"], ["foo", "tcp"] as const),
    healthRise: parseIntegerFlag("health-rise", v["health-rise"], { min: 1, max: 100 }),
    healthFall: parseIntegerFlag("health-fall", v["health-fall"], { min: 1, max: 100 }),
    ejectAfter: parseIntegerFlag("eject-after", v["eject-after"], { max: 1000 }),
    ejectMs: parseDuration("eject-time", v["eject-time"]),
    connectTimeoutMs: parseDuration("connect-timeout", v["connect-timeout"]),
    fdLimit: String(v["fd-limit"]).trim().toLowerCase() === "auto"
      ? undefined
      : parseIntegerFlag("fd-limit", v["fd-limit"], { min: 1 }),
    maxConnections: String(v["max-connections"]).trim().toLowerCase() === "auto"
      ? undefined
      : parseIntegerFlag("max-connections", v["max-connections"], { min: 1 }),
    maxInflight: parseIntegerFlag("max-inflight", v["max-inflight"]),
    idleTimeoutMs: parseDuration("idle-timeout", v["idle-timeout"]),
    connectRetries: parseIntegerFlag("connect-retries", v["connect-retries"], { max: 100 }),
    drainDelayMs: parseDuration("drain-delay", v["drain-delay"]),
    drainTimeoutMs: parseDuration("drain-timeout", v["drain-timeout"]),
    http: httpAddress("http", "127.0.0.1:8088"),
    health: httpAddress("health", "127.0.0.1:8081"),
    httpExplicit: v.http !== undefined,
    healthExplicit: v.health !== undefined,
    recoveryPath: typeof recoveryPath === "string" ? recoveryPath : null,
    pidFile: typeof v["pid-file"] === "string" && v["pid-file"] !== "" ? v["pid-file"] : null,
    configPath,
    accessLog: parseChoiceFlag("access-log", v["access-log"], ["off", "text", "json"] as const),
    accessLogFile: typeof v["access-log-file"] === "string" && v["access-log-file"] !== ""
      ? v["access-log-file"]
      : null,
    adminToken: typeof v["admin-token"] === "string" && v["admin-token"] !== ""
      ? v["admin-token"]
      : undefined,
    adminHosts: String(v["admin-hosts"] ?? "").split(",").map((h) => h.trim()).filter(Boolean),
    resume: parseResumeMode(String(v.resume)),
    halfCloseTimeoutMs: parseDuration("half-close-timeout", v["half-close-timeout"]),
    reconnectRetries: parseIntegerFlag("resume-retries", v["resume-retries"], { max: 100 }),
    maxFailovers: parseIntegerFlag("resume-max-failovers", v["resume-max-failovers"], {
      max: 1000,
    }),
    retainLimit: parseIntegerFlag("resume-retain", v["resume-retain"], { max: 2 ** 30 }),
    logLevel: String(v["log-level"]),
    logFormat: String(v["log-format"]),
    help: v.help === true,
    version: v.version === true,
  };
}

function resumeAlias(arg: string): string {
  return arg === "--resume" || arg === "-resume" ? "--resume=verbatim" : arg;
}

function parseResumeMode(text: string): ResumeMode {
  const t = text.trim().toLowerCase();
  if (t === "off" || t === "false" || t === "0" || t === "no") return "off";
  if (t === "verbatim" || t === "true" || t === "1" || t === "yes" || t === "on") return "verbatim";
  if (t === "renumber") return "renumber";
  throw new UsageError(`Invalid value "${text}" for --resume: expected verbatim, renumber or off`);
}

/** How long the last output may take at exit before a stalled reader is given up on. */
const EXIT_FLUSH_MS = 1000;

/** An open access log: its writer, and how to reopen or close its file. */
interface AccessLogOutput {
  writer: LineWriter;
  reopen: () => Promise<void>;
  close: () => Promise<void>;
}

/**
 * Opens `path` to append to, never through a symbolic link (one planted there would have its
 * target appended to), giving up after `ms`: opening a FIFO nobody reads waits for a reader for
 * ever (and a start that waits can be stopped by no signal). An open that completes after that
 * is closed.
 */
async function openLogFile(path: string, ms = 5000): Promise<Deno.FsFile> {
  const opening = openOwnFile(path, { what: "access log", append: true }).catch((error) => {
    throw error instanceof OwnFileError ? new Error(error.reason, { cause: error }) : error;
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`opening it took over ${ms / 1000} s (a FIFO that nobody reads?)`)),
      ms,
    );
  });
  try {
    return await Promise.race([opening, late]);
  } catch (error) {
    opening.then((f) => f.close(), () => {});
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** Opens the access log: stderr's writer, or `--access-log-file` appended to. */
async function openAccessLog(
  config: ProxyConfig,
  output: { stderr: LineWriter },
  warn: (message: string) => void,
): Promise<AccessLogOutput> {
  const path = config.accessLogFile;
  if (path === null) {
    return {
      writer: output.stderr,
      reopen: () => Promise.resolve(),
      close: () => Promise.resolve(),
    };
  }
  let file = await openLogFile(path);
  const writer = new LineWriter((bytes) => file.write(bytes), {
    coalesceMs: 10,
    onError: (error) =>
      warn(
        `Access log: writing to ${path} failed (${describeError(error)}); ` +
          "lines are dropped (access_log_lines_dropped) until SIGHUP reopens it",
      ),
  });
  return {
    writer,
    reopen: async () => {
      let next: Deno.FsFile;
      try {
        next = await openLogFile(path);
      } catch (error) {
        warn(
          `Access log: cannot reopen ${path} (${describeError(error)}); still writing the old file`,
        );
        return;
      }
      await writer.flush(1000);
      const old = file;
      file = next;
      writer.resume(); // a failed write (full disk) is retried on the new file
      try {
        old.close();
      } catch {
        // Closed already.
      }
    },
    close: async () => {
      await writer.flush(1000);
      try {
        file.close();
      } catch {
        // Closed already.
      }
    },
  };
}

/** What a reload did. */
interface ReloadResult {
  ok: boolean;
  generation: number;
  changed: string[];
  error?: string;
}

/** What {@linkcode applyReload} changes. */
interface ReloadTargets {
  pool: UpstreamPool;
  proxy: Proxy;
  /** Sets logging up again from the new config. */
  relog: () => void;
  warn: (message: string) => void;
}

/** Applies what a reload may change at run time; returns what changed, for the log. */
function applyReload(old: ProxyConfig, next: ProxyConfig, targets: ReloadTargets): string[] {
  const changed: string[] = [];
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  if (!same(old.upstreams, next.upstreams)) changed.push(...targets.pool.update(next.upstreams));
  if (old.balance !== next.balance) {
    targets.pool.setPolicy(next.balance);
    changed.push(`balance ${next.balance}`);
  }
  const engine = {
    maxInflight: next.maxInflight,
    idleTimeoutMs: next.idleTimeoutMs,
    halfCloseTimeoutMs: next.halfCloseTimeoutMs,
    retainLimit: next.retainLimit,
    reconnectRetries: next.reconnectRetries,
    maxFailovers: next.maxFailovers,
  };
  const before = {
    maxInflight: old.maxInflight,
    idleTimeoutMs: old.idleTimeoutMs,
    halfCloseTimeoutMs: old.halfCloseTimeoutMs,
    retainLimit: old.retainLimit,
    reconnectRetries: old.reconnectRetries,
    maxFailovers: old.maxFailovers,
  };
  if (!same(engine, before)) {
    targets.proxy.updateEngine(engine);
    changed.push("limits (for new connections)");
  }
  if (next.maxConnections !== undefined && next.maxConnections !== old.maxConnections) {
    targets.proxy.setMaxConnections(next.maxConnections);
    changed.push(`max-connections ${next.maxConnections}`);
  }
  if (old.logLevel !== next.logLevel || old.logFormat !== next.logFormat) {
    targets.relog();
    changed.push(`log ${next.logLevel} ${next.logFormat}`);
  }
  // Never the token itself in the log.
  if (old.adminToken !== next.adminToken) changed.push("admin-token");
  if (!same(old.adminHosts, next.adminHosts)) changed.push("admin-hosts");
  const restartOnly: [string, unknown, unknown][] = [
    ["access-log", old.accessLog, next.accessLog],
    ["access-log-file", old.accessLogFile, next.accessLogFile],
    ["listen", old.listen, next.listen],
    ["http", old.http, next.http],
    ["health", old.health, next.health],
    ["recovery-path", old.recoveryPath, next.recoveryPath],
    ["pid-file", old.pidFile, next.pidFile],
    ["resume", old.resume, next.resume],
    ["health checks", [
      old.healthIntervalMs,
      old.healthTimeoutMs,
      old.healthMode,
      old.healthRise,
      old.healthFall,
    ], [
      next.healthIntervalMs,
      next.healthTimeoutMs,
      next.healthMode,
      next.healthRise,
      next.healthFall,
    ]],
  ];
  for (const [name, a, b] of restartOnly) {
    if (!same(a, b)) targets.warn(`${name} changed in the config file: it takes effect on restart`);
  }
  return changed;
}

/**
 * Reads the `--config` file, or says which grant is missing (and the command that has it): a
 * regular file of at most 1 MiB, read asynchronously within 5 s, so a FIFO, a device or a huge
 * file is one clear error, never a frozen or flooded process.
 */
async function readConfigFile(path: string): Promise<string> {
  if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") {
    throw new ConfigFileError(
      missingPermissionsMessage([{
        descriptor: { name: "read", path },
        target: path,
        purpose: "config file --config",
      }], { standalone: Deno.build.standalone, args: Deno.args }),
    );
  }
  try {
    return await readSmallFile(path, { what: "config file" });
  } catch (error) {
    if (!(error instanceof SmallFileError)) throw error;
    throw new ConfigFileError(error.message, { cause: error });
  }
}

/**
 * Reads the `--config` file `args` (or the environment) name before the flags are parsed, which is
 * synchronous; resolves with the reader the parse uses, or with exit code 2 after one line saying
 * why the file cannot be read. Flags that do not parse, `--help` and `--version` read nothing
 * (the parse then speaks).
 */
async function readConfigBeforeParse(
  args: readonly string[],
): Promise<((path: string) => string) | number> {
  let path: string | undefined;
  try {
    const first = parseFlags(args.map(resumeAlias), PROXY_FLAGS, { getEnv: denoEnvReader() });
    if (first.help !== true && first.version !== true && typeof first.config === "string") {
      path = first.config;
    }
  } catch {
    // The parse reports the bad flag.
  }
  if (path === undefined || path === "") {
    return () => {
      throw new UsageError("--config: no way to read the file here");
    };
  }
  let text: string;
  try {
    text = await readConfigFile(path);
  } catch (error) {
    if (!(error instanceof ConfigFileError)) throw error;
    writeStderrLine(`foo-proxy: ${error.message}`);
    return 2;
  }
  return () => text;
}

/**
 * Why `path` cannot be the recovery file when that can be seen without more grants (it is a
 * directory), or `undefined` (fine, or not visible: the permission check speaks then).
 */
function directoryProblem(path: string): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") return undefined;
    if (Deno.statSync(path).isDirectory) {
      return `--recovery-path "${path}" is a directory: give a file in it, e.g. ${
        path.replace(/\/+$/, "")
      }/stats.json`;
    }
  } catch {
    // Missing (it is created) or not visible: nothing to say yet.
  }
  return undefined;
}

/** Runs the proxy until SIGINT/SIGTERM (or `context.signal`); resolves with the exit code. */
export async function runProxy(args: string[], context: CommandContext = {}): Promise<number> {
  // Logs and stats lines go through bounded non-blocking writers: a stdout or stderr that nobody
  // reads must not freeze traffic (a blocking write would stop the whole event loop).
  const output = {
    stdout: new LineWriter((bytes) => Deno.stdout.write(bytes)),
    // Logs (and the access log on stderr) wait 10 ms for company: one write per busy moment.
    stderr: new LineWriter((bytes) => Deno.stderr.write(bytes), { coalesceMs: 10 }),
  };
  try {
    return await serveProxy(args, context, output);
  } finally {
    await Promise.all([output.stdout.flush(EXIT_FLUSH_MS), output.stderr.flush(EXIT_FLUSH_MS)]);
  }
}

async function serveProxy(
  args: string[],
  context: CommandContext,
  output: { stdout: LineWriter; stderr: LineWriter },
): Promise<number> {
  const stdout = context.stdout ?? ((line: string) => void output.stdout.writeLine(line));
  const readConfig = await readConfigBeforeParse(args);
  if (typeof readConfig === "number") return readConfig;
  const started = startCommand(() => parseProxyConfig(args, denoEnvReader(), readConfig), {
    usage: PROXY_USAGE,
    command: "foo-proxy",
    // --help and --version are written at once: the process exits right after.
    stdout: context.stdout ?? writeStdoutLine,
    logWrite: (line) => void output.stderr.write(line),
    check: (config) => {
      // What the recovery path is, before asking for grants: where Deno lets us look already.
      const notAFile = config.recoveryPath === null
        ? undefined
        : directoryProblem(config.recoveryPath);
      if (notAFile !== undefined) {
        writeStderrLine(`foo-proxy: ${notAFile}`);
        return 2;
      }
      try {
        // Before anything opens: every missing permission in one line, and exit 2.
        assertPermissions(config, { args });
      } catch (error) {
        if (!(error instanceof MissingPermissionError)) throw error;
        writeStderrLine(`foo-proxy: ${error.message}`);
        return 2;
      }
      return undefined;
    },
  });
  if (typeof started === "number") return started;
  const { config } = started;
  let logging = started.logging;
  using _logging = { [Symbol.dispose]: () => logging[Symbol.dispose]() };
  const logger = getLogger(["foo-proxy", "proxy"]);
  const stats = new Stats({ clock: systemClock });
  stats.logLinesDropped = output.stderr.dropped;
  output.stderr.onDrop = () => stats.logLinesDropped++;
  stats.statsLinesDropped = output.stdout.dropped;
  output.stdout.onDrop = () => stats.statsLinesDropped++;
  const printStats = () => stdout(JSON.stringify(stats.snapshot()));
  let persister: RecoveryPersister | undefined;
  if (config.recoveryPath !== null) {
    try {
      persister = await setupRecovery(config.recoveryPath, { stats, logger });
    } catch (error) {
      if (!(error instanceof RecoveryPathError)) throw error;
      writeStderrLine(`foo-proxy: ${error.message}`);
      return 2;
    }
  }

  // Signals first: a SIGUSR2 that arrives before its listener would kill the process.
  // The first SIGINT/SIGTERM/SIGQUIT starts the drain; a later one (not the same Ctrl-C
  // delivered twice) cuts it short.
  const stop = Promise.withResolvers<string>();
  const force = new AbortController();
  // SIGHUP reopens --access-log-file (logrotate moved it); set once the log is open.
  let accessLogReopen: (() => Promise<void>) | undefined;
  // Last resort: a promise rejection no code path handled ends one connection at most (the
  // engine handles its own); it must never take every other client down with the process.
  const lastResort = installLastResort(stats, logger);
  const signals = installSignals({
    onStats: printStats,
    onStop: (name) => stop.resolve(name),
    onForce: (name) => force.abort(name),
    onReload: () => {
      void reload("SIGHUP");
      void accessLogReopen?.();
    },
    onUsr1: (warn) => {
      stats.usr1Ignored++;
      if (warn) {
        logger.warning(
          "Got SIGUSR1: ignored, and the debugger Deno opens on it was closed; stats are on SIGUSR2 (kill -USR2)",
        );
      }
    },
    warn: (message) => logger.warning(message),
  });
  context.signal?.addEventListener("abort", () => signals.stop("abort"), { once: true });

  const fdLimit = config.fdLimit ?? readFdLimit();
  const maxConnections = config.maxConnections ?? maxConnectionsFor(fdLimit);
  if (config.maxConnections === undefined) {
    logger.info(
      fdLimit === undefined
        ? "Serving up to {max} clients (--max-connections auto: the fd limit is unknown; set --fd-limit, e.g. FOO_PROXY_FD_LIMIT=$(ulimit -n), to fit it)"
        : "Serving up to {max} clients (--max-connections auto, from the fd limit {limit})",
      { max: maxConnections, limit: fdLimit },
    );
  } else if (fdLimit !== undefined && fdsNeeded(maxConnections) > fdLimit) {
    logger.warning(
      "--max-connections {max} needs about {needed} file descriptors but the limit is {limit}: raise it (ulimit -n) or lower --max-connections; past the limit new clients fail to connect",
      { max: maxConnections, needed: fdsNeeded(maxConnections), limit: fdLimit },
    );
  }
  const pool = new UpstreamPool(config.upstreams, {
    policy: config.balance,
    connectTimeoutMs: config.connectTimeoutMs,
    intervalMs: config.healthIntervalMs,
    checkTimeoutMs: config.healthTimeoutMs,
    mode: config.healthMode,
    rise: config.healthRise,
    fall: config.healthFall,
    ejectAfter: config.ejectAfter,
    ejectMs: config.ejectMs,
    logger,
    counters: stats,
  });
  stats.upstreams = () => pool.snapshot();
  if (config.configPath !== null) {
    stats.configGeneration = 1;
    stats.configLoadedAt = Date.now();
  }
  // SIGHUP and POST /reload: read the file again and apply what changed, without dropping a
  // connection; a file that does not parse or validate changes nothing.
  let running = config;
  // Reloads run one at a time (the file is read asynchronously, with a deadline); one more may
  // wait, and every request made while it waits shares it: a SIGHUP storm queues nothing.
  let reloadChain: Promise<unknown> = Promise.resolve();
  let reloadWaiting: Promise<ReloadResult> | undefined;
  const reload = (why: string): Promise<ReloadResult> => {
    if (reloadWaiting) return reloadWaiting;
    const run = reloadChain.then(() => {
      reloadWaiting = undefined;
      return reloadOnce(why);
    });
    reloadWaiting = run;
    reloadChain = run.catch(() => {});
    return run;
  };
  const reloadOnce = (why: string): Promise<ReloadResult> => {
    return (async () => {
      {
        if (running.configPath === null) {
          logger.info("Got {why}: nothing to reload (no --config file; flags are read at start)", {
            why,
          });
          return { ok: true, generation: stats.configGeneration, changed: [] };
        }
        let next: ProxyConfig;
        try {
          const text = await readConfigFile(running.configPath);
          next = parseProxyConfig(args, denoEnvReader(), () => text);
        } catch (error) {
          stats.configReloadFailures++;
          const message = error instanceof Error ? error.message : String(error);
          logger.error("Reload ({why}) of {path} failed; the running config is kept: {error}", {
            why,
            path: running.configPath,
            error: message,
          });
          return { ok: false, generation: stats.configGeneration, changed: [], error: message };
        }
        const changed = applyReload(running, next, {
          pool,
          proxy,
          relog: () => {
            logging[Symbol.dispose]();
            logging = setupLogging({
              level: next.logLevel,
              format: next.logFormat,
              write: (line) => void output.stderr.write(line),
            });
          },
          warn: (message) => logger.warning("{message}", { message }),
        });
        running = next;
        stats.configGeneration++;
        stats.configLoadedAt = Date.now();
        logger.info("Reloaded {path} ({why}, generation {generation}): {changed}", {
          path: next.configPath,
          why,
          generation: stats.configGeneration,
          changed: changed.length === 0 ? "nothing changed" : changed.join("; "),
        });
        return { ok: true, generation: stats.configGeneration, changed };
      }
    })();
  };
  const accessFormat = config.accessLog === "json" ? "json" : "text";
  let accessLog: AccessLogOutput | undefined;
  let accessDrop: (() => void) | undefined;
  if (config.accessLog !== "off") {
    try {
      accessLog = await openAccessLog(config, output, (message) => logger.warning(message));
    } catch (error) {
      signals.remove();
      lastResort.remove();
      writeStderrLine(
        `foo-proxy: Cannot open access log "${config.accessLogFile}" (--access-log-file): ${
          describeError(error)
        }`,
      );
      return 2;
    }
  }
  if (accessLog) {
    // Per line, not the writer's onDrop: on stderr the writer is the logs' too, and its own
    // onDrop counts log lines.
    const countDrop = () => stats.accessLogLinesDropped++;
    if (accessLog.writer !== output.stderr) accessLog.writer.onDrop = countDrop;
    accessDrop = countDrop;
    accessLogReopen = accessLog.reopen;
  }
  const proxy = new Proxy({
    target: pool,
    accessLog: accessLog === undefined
      ? undefined
      : (record: AccessRecord) =>
        void accessLog.writer.write(formatAccessLine(accessFormat, record), accessDrop),
    listen: config.listen,
    forward: config.forward,
    stats,
    logger,
    connectTimeoutMs: config.connectTimeoutMs,
    maxConnections,
    maxInflight: config.maxInflight,
    idleTimeoutMs: config.idleTimeoutMs,
    connectRetries: config.connectRetries,
    drainDelayMs: config.drainDelayMs,
    drainTimeoutMs: config.drainTimeoutMs,
    resume: config.resume,
    halfCloseTimeoutMs: config.halfCloseTimeoutMs,
    reconnectRetries: config.reconnectRetries,
    maxFailovers: config.maxFailovers,
    retainLimit: config.retainLimit,
  });
  let pidFile: PidFile | undefined;
  if (config.pidFile !== null) {
    try {
      pidFile = await PidFile.acquire(config.pidFile);
    } catch (error) {
      if (!(error instanceof PidFileError)) throw error;
      signals.remove();
      lastResort.remove();
      writeStderrLine(`foo-proxy: ${error.message}`);
      return 2;
    }
  }
  try {
    await proxy.start();
  } catch (error) {
    await pidFile?.release();
    signals.remove();
    lastResort.remove();
    logger.error("Cannot listen on {listen}: {error}", {
      listen: formatAddress(config.listen),
      error: String(error),
    });
    return 1;
  }
  let observability: Observability;
  try {
    observability = await startObservability({
      stats,
      listening: () => proxy.listening,
      shuttingDown: () => proxy.shuttingDown,
      forward: config.forward,
      upstreams: pool,
      reload: () => reload("POST /reload"),
      adminToken: () => running.adminToken, // the reloaded config's: a leaked token can be revoked
      adminHosts: () => running.adminHosts,
      maxConnections,
      http: config.http,
      health: config.health,
      required: { http: config.httpExplicit, health: config.healthExplicit },
      logger,
    });
  } catch (error) {
    if (!(error instanceof HttpBindError)) throw error;
    logger.error("{message}", { message: error.message });
    await proxy.close();
    await pool.close();
    await pidFile?.release();
    signals.remove();
    lastResort.remove();
    return 1;
  }
  // Written last, once the listener and the admin ports are bound: whoever reads it (or runs
  // `foo-proxy wait --pid-file`) can signal a proxy that serves, and query it.
  await pidFile?.write();
  persister?.start();
  // One upstream is dialed whatever its checks say (as a last resort), so they serve only
  // /readyz: without a health app it sees no probe traffic, until a reload adds upstreams.
  pool.start({ checkLone: observability.healthAddr !== undefined });
  const why = await stop.promise;
  observability.markStopping(); // /readyz fails from the first signal on
  logger.info(
    "Got {signal}: shutting down gracefully (send it again, a second later, to close at once)",
    {
      signal: why,
    },
  );
  const report = await proxy.shutdown({ signal: force.signal });
  if (report.aborted) {
    logger.warning("Got {signal} again: closed {count} connection(s) without draining", {
      signal: String(force.signal.reason),
      count: report.closedIdle + report.closedBusy,
    });
  }
  // Every connection has ended: persist the final stats (--recovery-path), then print them.
  await observability.close();
  await persister?.close();
  // Print before removing the listeners: a late signal with no listener would kill the process
  // before the final line is out.
  await pool.close();
  await accessLog?.close();
  printStats();
  await pidFile?.release();
  signals.remove();
  lastResort.remove();
  return report.aborted ? 1 : 0;
}
