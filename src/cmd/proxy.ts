/**
 * `foo-proxy proxy`: flags, logging, signals and the exit code around {@linkcode Proxy}.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { formatAddress } from "../net/address.ts";
import {
  assertPermissions,
  MissingPermissionError,
  missingPermissionsMessage,
} from "../cli/permissions.ts";
import { formatFlagHelp, formatSynopsis } from "../cli/flag_help.ts";
import { DURATION_HELP } from "../cli/duration.ts";
import { ConfigFileError } from "../cli/config_file.ts";
import { UpstreamPool } from "../proxy/upstream_pool.ts";
import { denoEnvReader, parseFlags, UsageError } from "../cli/flags.ts";
import { describeError } from "../net/describe_error.ts";
import { RecoveryPathError, type RecoveryPersister } from "../proxy/recovery_file.ts";
import { readSmallFile, SmallFileError } from "../proxy/read_small_file.ts";
import { systemClock } from "../stats/clock.ts";
import { Stats } from "../stats/stats.ts";
import { MergedStats } from "../stats/merged_stats.ts";
import { DataPlanes } from "./data_planes.ts";
import { mergeUpstreams, planeLayout } from "./plane_layout.ts";
import { startCommand } from "./command_start.ts";
import { installLastResort } from "./last_resort.ts";
import { installSignals } from "./signals.ts";
import { setupLogging } from "./logging.ts";
import { fdsNeeded, maxConnectionsFor, readFdLimit } from "./fd_limit.ts";
import { LineWriter } from "./line_writer.ts";
import { PidFile, PidFileError } from "./pid_file.ts";
import { openOwnFile, OwnFileError } from "./open_own_file.ts";
import { HttpBindError, type Observability, startObservability } from "./observability.ts";
import { setupRecovery } from "./recovery_setup.ts";
import { type CommandContext, writeStderrLine, writeStdoutLine } from "./output.ts";
import { applyReload } from "./apply_reload.ts";
import { parseProxyConfig, type ProxyConfig, resumeAlias } from "./proxy_config.ts";
import { poolOptionsOf, PROXY_FLAGS } from "./proxy_settings.ts";

export { parseProxyConfig, type ProxyConfig } from "./proxy_config.ts";
export { PROXY_FLAGS } from "./proxy_settings.ts";

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
  const layout = planeLayout(config);
  if (typeof layout === "string") {
    writeStderrLine(`foo-proxy: ${layout}`);
    return 2;
  }
  // The supervisor counts what it does itself in `own`; the data planes count in their rows;
  // restored totals and those of planes that died are in `base`. `stats` sums them on each read.
  const own = new Stats({ clock: systemClock });
  const base = new Stats({ clock: systemClock });
  // deno-lint-ignore prefer-const
  let planes: DataPlanes;
  const stats = new MergedStats({
    clock: systemClock,
    own,
    base,
    addRows: (target, now) => planes?.addRows(target, now),
  });
  own.logLinesDropped = output.stderr.dropped;
  output.stderr.onDrop = () => own.logLinesDropped++;
  own.statsLinesDropped = output.stdout.dropped;
  output.stdout.onDrop = () => own.statsLinesDropped++;
  const printStats = () => stdout(JSON.stringify(stats.snapshot()));
  let persister: RecoveryPersister | undefined;
  if (config.recoveryPath !== null) {
    try {
      persister = await setupRecovery(config.recoveryPath, {
        stats: base,
        logger,
        persisted: () => {
          stats.refresh();
          return stats;
        },
      });
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
  const lastResort = installLastResort(own, logger);
  const signals = installSignals({
    // The planes copy their counters out first: the line counts every message relayed so far.
    onStats: () => void (planes ? planes.flushAll() : Promise.resolve()).then(printStats),
    onStop: (name) => stop.resolve(name),
    onForce: (name) => force.abort(name),
    onReload: () => {
      void reload("SIGHUP");
      void accessLogReopen?.();
    },
    onUsr1: (warn) => {
      own.usr1Ignored++;
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
  // The supervisor's pool runs the health checks and decides ejections from the planes'
  // reports; the planes follow the states it sends (at once after any change).
  let statesQueued = false;
  const sendStates = () => {
    if (statesQueued) return;
    statesQueued = true;
    queueMicrotask(() => {
      statesQueued = false;
      planes?.broadcast({ t: "states", states: pool.states() });
    });
  };
  const pool = new UpstreamPool(config.upstreams, {
    ...poolOptionsOf(config),
    logger,
    counters: own,
    onStateChange: sendStates,
  });
  // An ejection without active checks ends when its time is up: looked at once a second.
  const expiry = setInterval(() => pool.states(), 1000);
  stats.upstreams = () => mergeUpstreams(pool.snapshot(), planes);
  stats.workers = () => planes?.breakdown(systemClock()) ?? [];
  if (config.configPath !== null) {
    own.configGeneration = 1;
    own.configLoadedAt = Date.now();
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
          return { ok: true, generation: own.configGeneration, changed: [] };
        }
        let next: ProxyConfig;
        try {
          const text = await readConfigFile(running.configPath);
          next = parseProxyConfig(args, denoEnvReader(), () => text);
        } catch (error) {
          own.configReloadFailures++;
          const message = error instanceof Error ? error.message : String(error);
          logger.error("Reload ({why}) of {path} failed; the running config is kept: {error}", {
            why,
            path: running.configPath,
            error: message,
          });
          return { ok: false, generation: own.configGeneration, changed: [], error: message };
        }
        const changed = applyReload(running, next, {
          pool: {
            update: (specs) => {
              const changes = pool.update(specs);
              planes?.broadcast({ t: "upstreams", specs: [...specs], states: pool.states() });
              return changes;
            },
            setPolicy: (policy) => {
              pool.setPolicy(policy);
              planes?.broadcast({ t: "policy", policy });
            },
          },
          proxy: {
            updateEngine: (changes) => planes?.broadcast({ t: "engine", changes }),
            setMaxConnections: (max) => planes?.setMaxConnections(max),
          },
          relog: () => {
            logging[Symbol.dispose]();
            logging = setupLogging({
              level: next.logLevel,
              format: next.logFormat,
              write: (line) => void output.stderr.write(line),
            });
            planes?.broadcast({ t: "log", level: next.logLevel, format: next.logFormat });
          },
          warn: (message) => logger.warning("{message}", { message }),
        });
        running = next;
        planes?.setConfig(next);
        own.configGeneration++;
        own.configLoadedAt = Date.now();
        logger.info("Reloaded {path} ({why}, generation {generation}): {changed}", {
          path: next.configPath,
          why,
          generation: own.configGeneration,
          changed: changed.length === 0 ? "nothing changed" : changed.join("; "),
        });
        return { ok: true, generation: own.configGeneration, changed };
      }
    })();
  };
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
    const countDrop = () => own.accessLogLinesDropped++;
    if (accessLog.writer !== output.stderr) accessLog.writer.onDrop = countDrop;
    accessDrop = countDrop;
    accessLogReopen = accessLog.reopen;
  }
  // 1: the crash hook crashes a worker; freeze: it makes one spin for ever.
  const hooks = denoEnvReader()("FOO_PROXY_TEST_HOOKS");
  const testHooks = hooks === "1" ? "crash" : hooks === "freeze" ? "freeze" : undefined;
  planes = new DataPlanes({
    config,
    count: layout.count,
    thread: layout.thread,
    maxConnections,
    states: () => pool.states(),
    logger,
    own,
    base,
    onLog: (lines) => {
      for (const line of lines) output.stderr.write(line);
    },
    onAccess: (lines) => {
      if (!accessLog) return;
      for (const line of lines) accessLog.writer.write(line, accessDrop);
    },
    onPassive: (name, kind) => pool.passive(name, kind),
    testHooks,
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
  if (layout.note !== undefined) logger.warning("{message}", { message: layout.note });
  try {
    const port = await planes.start();
    const everywhere = config.listen.hostname === "0.0.0.0" || config.listen.hostname === "::";
    logger.info("Listening on {listen}{scope}, forwarding to {forward} ({workers})", {
      listen: formatAddress({ hostname: config.listen.hostname, port }),
      // Binding every interface is what `:8002` meant in the original tool; say so plainly.
      scope: everywhere ? " (all interfaces: --listen 127.0.0.1:PORT for this host only)" : "",
      forward: pool.label,
      workers: layout.thread
        ? `${layout.count} data-plane worker${layout.count === 1 ? "" : "s"}`
        : "data plane on the main thread",
    });
  } catch (error) {
    clearInterval(expiry);
    await pidFile?.release();
    signals.remove();
    lastResort.remove();
    logger.error("Cannot listen on {listen}: {error}", {
      listen: formatAddress(config.listen),
      error: error instanceof Error ? error.message : String(error),
    });
    return 1;
  }
  let observability: Observability;
  try {
    observability = await startObservability({
      stats,
      counters: own,
      activeConnections: () => planes.activeConnections,
      beforeRead: () => planes.flushAll(),
      crashWorker: testHooks ? (index) => planes.crash(index) : undefined,
      listening: () => planes.listening,
      shuttingDown: () => planes.stopping,
      forward: config.forward,
      // States and checks from the supervisor's pool, counts from the planes.
      upstreams: {
        get reachable() {
          return pool.reachable;
        },
        get detail() {
          return pool.detail;
        },
        snapshot: () => mergeUpstreams(pool.snapshot(), planes),
        drain: (name: string) => pool.drain(name),
        enable: (name: string) => pool.enable(name),
      },
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
    clearInterval(expiry);
    await planes.shutdown(AbortSignal.abort(), { delayMs: 0, timeoutMs: 0 });
    planes.terminate();
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
  const report = await planes.shutdown(force.signal, {
    delayMs: config.drainDelayMs,
    timeoutMs: config.drainTimeoutMs,
  });
  clearInterval(expiry);
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
  planes.terminate();
  await pidFile?.release();
  signals.remove();
  lastResort.remove();
  return report.aborted ? 1 : 0;
}
