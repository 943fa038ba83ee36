/**
 * The supervisor of `foo-proxy proxy`, on the main thread: the control plane. It parses the
 * flags and the config file, owns the signals, stdout, stderr, the access log, the pid and
 * recovery files and the admin HTTP servers, runs the health checks and decides ejections (the
 * upstream pool), reloads, and starts, flushes, reloads, drains and replaces the data planes
 * (`data_planes.ts`) that carry the traffic. See docs/architecture.md.
 *
 * @module
 */
import { getLogger, type Logger } from "@logtape/logtape";
import { waitOrAbort } from "../async/wait_or_abort.ts";
import { formatAddress } from "../net/address.ts";
import { assertPermissions, MissingPermissionError } from "../cli/permissions.ts";
import { denoEnvReader } from "../cli/flags.ts";
import { describeError } from "../net/describe_error.ts";
import { RecoveryPathError, type RecoveryPersister } from "../proxy/recovery_file.ts";
import { type MemberState, UpstreamPool } from "../proxy/upstream_pool.ts";
import type { UpstreamSpec } from "../proxy/upstream_spec.ts";
import { systemClock } from "../stats/clock.ts";
import { MergedStats } from "../stats/merged_stats.ts";
import { Stats } from "../stats/stats.ts";
import { type AccessLogOutput, openAccessLog } from "./access_log_output.ts";
import { applyReload } from "./apply_reload.ts";
import { DnsUpstreams } from "./dns_upstreams.ts";
import { startCommand } from "./command_start.ts";
import { readConfigBeforeParse, readConfigFile } from "./config_read.ts";
import { watchConfigFile } from "./config_watch.ts";
import { DataPlanes, PlaneStartError } from "./data_planes.ts";
import { fdsNeeded, maxConnectionsFor, readFdLimit } from "./fd_limit.ts";
import { installLastResort } from "./last_resort.ts";
import type { LineWriter } from "./line_writer.ts";
import { setupLogging } from "./logging.ts";
import { HttpBindError, type Observability, startObservability } from "./observability.ts";
import { type CommandContext, writeStderrLine, writeStdoutLine } from "./output.ts";
import { PidFile, PidFileError } from "./pid_file.ts";
import { mergeUpstreams, type PlaneLayout, planeLayout } from "./plane_layout.ts";
import type { UpstreamSnapshot } from "../proxy/upstream_pool.ts";
import { dirname, resolve } from "node:path";
import {
  checkUpstreamTls,
  parseProxyConfig,
  type ProxyConfig,
  tlsFlagsProblem,
} from "./proxy_config.ts";
import {
  canReusePort,
  readKeyPair,
  type TlsKeyPair,
  TlsKeyPairError,
} from "../proxy/tls_termination.ts";
import { checkRecoveryPath } from "../proxy/recovery_file.ts";
import {
  captureRecoveryState,
  type RecoveryState,
  restoreRecoveryState,
  serializeRecoveryState,
} from "../stats/recovery.ts";
import {
  type CarriedUpstreams,
  carriedUpstreams,
  requestTakeover,
  type Takeover,
  TakeoverError,
  TakeoverListener,
  takeoverSocketPath,
  UPDATE_MS,
  UPSTREAM_TOTALS,
  type UpstreamTotals,
} from "./takeover.ts";
import { poolOptionsOf } from "./proxy_settings.ts";
import { setupRecovery } from "./recovery_setup.ts";
import { type InstalledSignals, installSignals } from "./signals.ts";
import { readUpstreamTls, UpstreamTlsFileError } from "./upstream_tls_files.ts";
import type { UpstreamTls } from "../proxy/upstream.ts";

/** Where the proxy writes: bounded, non-blocking writers of stdout and stderr. */
export interface ProxyOutput {
  stdout: LineWriter;
  stderr: LineWriter;
}

/** What a reload did (`POST /reload` answers it). */
interface ReloadResult {
  ok: boolean;
  generation: number;
  changed: string[];
  error?: string;
}

/** A start step failed: the exit code, after its one line (or log record) was written. */
class StartFailed extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/** Fails the start with one line on stderr and exit `code`. */
function refuse(message: string, code = 2): never {
  writeStderrLine(`foo-proxy: ${message}`);
  throw new StartFailed(code);
}

/**
 * Runs the proxy until SIGINT/SIGTERM (or `context.signal`); resolves with the exit code: 0
 * after a drain, 1 when a second signal cut it short or the listener or an admin port could not
 * be bound, 2 for a bad flag, a missing permission or an unusable file.
 */
export async function superviseProxy(
  args: string[],
  context: CommandContext,
  output: ProxyOutput,
  usage: string,
): Promise<number> {
  const readConfig = await readConfigBeforeParse(args);
  if (typeof readConfig === "number") return readConfig;
  const supervisor = new Supervisor(args, context, output, usage);
  try {
    return await supervisor.run(readConfig);
  } catch (error) {
    if (error instanceof StartFailed) return error.code;
    throw error;
  } finally {
    await supervisor.release();
  }
}

/** See the module docs. One per process. */
class Supervisor {
  #args: string[];
  #usage: string;
  #context: CommandContext;
  #output: ProxyOutput;
  /** What to undo on the way out, newest first (each runs once). */
  #undo: (() => unknown)[] = [];
  #config!: ProxyConfig;
  /** The config as last loaded (a reload replaces it). */
  #running!: ProxyConfig;
  #logging!: Disposable;
  #logger: Logger = getLogger(["foo-proxy", "proxy"]);
  /** What the supervisor counts itself: admin HTTP, signals, reloads, dropped output lines. */
  #own = new Stats({ clock: systemClock });
  /** Restored totals (`--recovery-path`) and those of planes that died. */
  #base = new Stats({ clock: systemClock });
  /** The process's figures: summed from the parts above and the planes' rows on every read. */
  #stats: MergedStats;
  #layout!: PlaneLayout;
  #planes: DataPlanes | undefined;
  #pool!: UpstreamPool;
  /** `--upstream-tls`: the PEM texts of its files, read at start. */
  #upstreamTls: UpstreamTls | undefined;
  #maxConnections = 0;
  #persister: RecoveryPersister | undefined;
  #accessLog: AccessLogOutput | undefined;
  #pidFile: PidFile | undefined;
  #signals!: InstalledSignals;
  #stop = Promise.withResolvers<string>();
  /** Whether {@linkcode #stop} resolved (a signal during the start: no takeover is committed). */
  #stopAsked = false;
  #force = new AbortController();
  #statesQueued = false;
  /** Reloads run one at a time; one more may wait, shared by every request made meanwhile. */
  #reloadChain: Promise<unknown> = Promise.resolve();
  /** The `--forward dns+` names, resolved; set up in {@linkcode run}. */
  #dns!: DnsUpstreams;
  /** The running `--forward` list as written (`dns+` entries not expanded). */
  #forwardSpecs: readonly UpstreamSpec[] = [];
  #reloadWaiting: Promise<ReloadResult> | undefined;
  /** Whether the waiting reload was asked for by SIGHUP or POST /reload too (not only the watch). */
  #reloadAsked = false;
  /** The `--config` text last read (start or reload, good or bad): the watch skips a file unchanged. */
  #configText: string | undefined;
  /** `FOO_PROXY_TEST_HOOKS`: 1, the crash hook crashes a worker; freeze: it makes one spin. */
  #testHooks = testHooksOf(denoEnvReader()("FOO_PROXY_TEST_HOOKS"));
  /**
   * `FOO_PROXY_TEST_YOUNG_MS` (with the test hooks only): how soon a worker's death counts as a
   * crash loop, for a test that must do more than a loaded machine does in the usual second.
   */
  #youngMs = this.#testHooks ? positiveMs(denoEnvReader()("FOO_PROXY_TEST_YOUNG_MS")) : undefined;
  /** `--tls-cert`: the key pair serving now and the handshake deadline it went with. */
  #tls: { pair: TlsKeyPair; handshakeTimeoutMs: number } | undefined;
  /** `--takeover`: the exchange with the running proxy, until this one serves and commits it. */
  #takeover: Takeover | undefined;
  /** `--takeover`: the totals of the proxy taken over, as last heard (they count as ours). */
  #carried: Stats | undefined;
  /** `--takeover`: when the proxy taken over captured {@linkcode #carried} (its clock, ms). */
  #carriedAt = 0;
  /** `--takeover`: its per-upstream totals, as last heard (added to the rows of the same name). */
  #carriedUpstreams: CarriedUpstreams = carriedUpstreams();
  /** `--takeover`: the old proxy's drain, then its pid file, socket and recovery file taken. */
  #takingOver: Promise<void> | undefined;
  /** `--takeover`: stops following the old proxy (this one stops before it has drained). */
  #takeoverCancel: (() => void) | undefined;
  /** The pid of the proxy this one hands over to (it asked on the takeover socket). */
  #handingOverTo: number | undefined;
  /** The proxy this one hands over to went away before the final totals (see #holdPidFile). */
  #successorGone = false;
  /** Resolves when this proxy's drain is over and its final totals are counted. */
  #drainDone = Promise.withResolvers<void>();
  /** Resolves when this proxy's admin ports are closed (it drains: nobody reads its stats). */
  #adminClosed = Promise.withResolvers<void>();
  /**
   * `--takeover`: resolves once the totals carried over are newer than anything the old proxy
   * answered (its first update after it closed its admin ports): `/stats` waits for it, so the
   * counters a scraper sees never go back.
   */
  #carriedFresh = Promise.withResolvers<void>();
  /** `--takeover`: the running proxy did not take the go and serves on; this one exits 1. */
  #notTakenOver = false;
  /** Whether the drain has begun (a takeover still under way takes nothing more). */
  #stopping = false;

  constructor(args: string[], context: CommandContext, output: ProxyOutput, usage: string) {
    void this.#stop.promise.then(() => this.#stopAsked = true);
    this.#args = args;
    this.#usage = usage;
    this.#context = context;
    this.#output = output;
    this.#stats = new MergedStats({
      clock: systemClock,
      own: this.#own,
      base: this.#base,
      addRows: (target, now) => this.#planes?.addRows(target, now),
      carried: () => this.#carried,
    });
  }

  /** Starts everything, serves until a stop signal, drains; resolves with the exit code. */
  async run(readConfig: (path: string) => string): Promise<number> {
    const parsed = this.#parse(readConfig);
    if (parsed !== undefined) return parsed;
    await this.#readUpstreamTls();
    if (this.#config.check) return await this.#check();
    // Before the signals: a SIGHUP's reload finds the names resolved.
    await this.#resolveDns();
    // Before the recovery file: after a takeover the totals come from the proxy taken over.
    await this.#askTakeover();
    await this.#openFiles();
    await this.#readTls();
    this.#installSignals();
    this.#sizeConnections();
    this.#makePool();
    // Stopped before the pool closes (undone newest first): no answer lands on a closed pool.
    this.#defer(() => this.#dns.stop());
    await this.#openAccessLog();
    // Taking over, the running proxy holds the pid file until it has drained.
    if (this.#takeover === undefined) await this.#acquirePidFile();
    await this.#startPlanes();
    const observability = await this.#startAdmin();
    if (this.#takeover !== undefined) {
      if (this.#stopAsked) this.#abandonTakeover();
      else this.#commitTakeover();
    } else {
      // Written last, once the listener, the admin ports and the takeover socket are bound:
      // whoever reads it (or runs `foo-proxy wait --pid-file`) can signal a proxy that serves,
      // query it, and take it over.
      await this.#listenTakeover();
      await this.#pidFile?.write();
      this.#persister?.start();
    }
    await this.#watchConfig();
    // One upstream is dialed whatever its checks say (as a last resort), so they serve only
    // /readyz: without a health app it sees no probe traffic, until a reload adds upstreams.
    this.#pool.start({ checkLone: observability.healthAddr !== undefined });
    this.#dns.start(() => this.#serialized(() => this.#applyDns()));
    return await this.#drain(observability, await this.#stop.promise);
  }

  /**
   * `--check`: what a start would refuse, without binding or taking anything: the flags and file
   * (parsed already), the permissions (checked in #parse), the `--upstream-tls` files (read
   * already), the key pair, the recovery path. One line on stdout; exit 0.
   */
  async #check(): Promise<number> {
    await this.#readTls();
    const path = this.#config.recoveryPath;
    if (path !== null) {
      try {
        await checkRecoveryPath(path);
      } catch (error) {
        if (!(error instanceof RecoveryPathError)) throw error;
        refuse(error.message);
      }
    }
    const config = this.#config;
    // Opened by a start, not now: only looked at (a check writes nothing there).
    const files = [
      { path: config.pidFile, what: "pid file", flag: "--pid-file" },
      {
        path: config.accessLog === "off" ? null : config.accessLogFile,
        what: "access log",
        flag: "--access-log-file",
      },
    ];
    for (const { path, what, flag } of files) {
      const problem = path === null ? undefined : await placeProblem(path);
      if (problem !== undefined) refuse(`Cannot open ${what} "${path}" (${flag}): ${problem}`);
    }
    const upstreams = config.upstreams.length;
    const line = `foo-proxy: the configuration is valid: listen ${
      formatAddress(config.listen)
    }, forward to ${upstreams === 1 ? formatAddress(config.forward) : `${upstreams} upstreams`}${
      config.configPath === null ? "" : ` (${config.configPath})`
    }`;
    if (this.#context.stdout) this.#context.stdout(line);
    else writeStdoutLine(line);
    return 0;
  }

  /** Undoes what is still held, newest first. */
  async release(): Promise<void> {
    while (this.#undo.length > 0) await this.#undo.pop()!();
  }

  /** Registers `fn` to run on the way out (once), newest first. */
  #defer(fn: () => unknown): () => Promise<void> {
    let done = false;
    const once = async () => {
      if (done) return;
      done = true;
      await fn();
    };
    this.#undo.push(once);
    return once;
  }

  /** Parses flags and the file; undefined to go on, or the exit code (help, version, bad flag). */
  #parse(readConfig: (path: string) => string): number | undefined {
    const args = this.#args;
    const started = startCommand(
      () => checkUpstreamTls(parseProxyConfig(args, denoEnvReader(), readConfig)),
      {
        usage: this.#usage,
        command: "foo-proxy",
        // --help and --version are written at once: the process exits right after.
        stdout: this.#context.stdout ?? writeStdoutLine,
        logWrite: (line) => void this.#output.stderr.write(line),
        check: (config) => {
          // What the recovery path is, before asking for grants: where Deno lets us look already.
          const notAFile = config.recoveryPath === null
            ? undefined
            : directoryProblem(config.recoveryPath);
          if (notAFile !== undefined) {
            writeStderrLine(`foo-proxy: ${notAFile}`);
            return 2;
          }
          const tlsProblem = tlsFlagsProblem(config);
          if (tlsProblem !== undefined) {
            writeStderrLine(`foo-proxy: ${tlsProblem}`);
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
      },
    );
    if (typeof started === "number") return started;
    this.#config = this.#running = started.config;
    if (started.config.configPath !== null) {
      this.#configText = readConfig(started.config.configPath);
    }
    this.#logging = started.logging;
    this.#defer(() => this.#logging[Symbol.dispose]());
    const layout = planeLayout(this.#config);
    if (typeof layout === "string") refuse(layout);
    this.#layout = layout;
    const { stdout, stderr } = this.#output;
    this.#own.logLinesDropped = stderr.dropped;
    stderr.onDrop = () => this.#own.logLinesDropped++;
    this.#own.statsLinesDropped = stdout.dropped;
    stdout.onDrop = () => this.#own.statsLinesDropped++;
    return undefined;
  }

  /** The `--upstream-tls` files, read once: exit 2 when one cannot be used. */
  async #readUpstreamTls(): Promise<void> {
    try {
      this.#upstreamTls = await readUpstreamTls(this.#config);
    } catch (error) {
      if (!(error instanceof UpstreamTlsFileError)) throw error;
      refuse(error.message);
    }
  }

  /**
   * A reload reads the `--upstream-tls` files the proxy started with again (a renewed CA or
   * client certificate at the same path): new connections and checks use them, open ones keep
   * theirs. Resolves with what changed, `undefined` when nothing did, or the error when a file
   * cannot be used (the running ones are kept; logged and counted as a failed reload).
   */
  async #rereadUpstreamTls(why: string): Promise<string | undefined | Error> {
    // The flags as started: new paths or names wait for the restart a reload warns about.
    const started = this.#config;
    if (!started.upstreamTls) return undefined;
    let tls: UpstreamTls | undefined;
    try {
      tls = await readUpstreamTls(started);
    } catch (error) {
      if (!(error instanceof UpstreamTlsFileError)) throw error;
      this.#own.configReloadFailures++;
      this.#logger.error(
        "Reload ({why}): the --upstream-tls files are kept as they were: {error}",
        { why, error: error.message },
      );
      return error;
    }
    if (JSON.stringify(tls) === JSON.stringify(this.#upstreamTls)) return undefined;
    this.#upstreamTls = tls;
    this.#pool.setTls(tls);
    this.#planes?.setUpstreamTls(tls);
    const change =
      "upstream TLS: the CA or client certificate files changed; new connections use them";
    this.#logger.info("Reload ({why}): {change}", { why, change });
    return change;
  }

  /** The recovery file: restores into `base`; the persister saves the merged totals. */
  async #openFiles(): Promise<void> {
    const path = this.#config.recoveryPath;
    if (path === null) return;
    try {
      // Taking over, the running proxy holds the file until it has drained: only looked at now.
      if (this.#takeover !== undefined) await checkRecoveryPath(path);
      else this.#persister = await this.#setupRecovery(path, true);
    } catch (error) {
      if (!(error instanceof RecoveryPathError)) throw error;
      refuse(error.message);
    }
  }

  #setupRecovery(
    path: string,
    restore: boolean,
    found?: (state: RecoveryState | undefined) => void,
  ): Promise<RecoveryPersister> {
    return setupRecovery(path, {
      stats: this.#base,
      logger: this.#logger,
      restore,
      found,
      persisted: () => {
        this.#stats.refresh();
        return this.#stats;
      },
    });
  }

  /**
   * `--tls-cert`/`--tls-key`: both files read (asynchronously, bounded) and checked as a pair
   * before anything listens; an unusable pair is exit 2.
   */
  async #readTls(): Promise<void> {
    const { tlsCert, tlsKey, tlsHandshakeTimeoutMs } = this.#config;
    if (tlsCert === null || tlsKey === null) return;
    try {
      const pair = await readKeyPair({ cert: tlsCert, key: tlsKey });
      this.#tls = { pair, handshakeTimeoutMs: tlsHandshakeTimeoutMs };
    } catch (error) {
      if (!(error instanceof TlsKeyPairError)) throw error;
      refuse(error.message);
    }
  }

  /**
   * Signals first: a SIGUSR2 that arrives before its listener would kill the process. The first
   * SIGINT/SIGTERM/SIGQUIT starts the drain; a later one (not the same Ctrl-C delivered twice)
   * cuts it short. Last resort: a promise rejection no code path handled ends one connection at
   * most; it must never take every other client down with the process.
   */
  #installSignals(): void {
    const lastResort = installLastResort(this.#own, this.#logger);
    this.#defer(() => lastResort.remove());
    this.#signals = installSignals({
      // The planes copy their counters out first: the line counts every message relayed so far.
      onStats: () => void (this.#planes?.flushAll() ?? Promise.resolve()).then(() => this.#print()),
      onStop: (name) => {
        // The first signal after a takeover began the drain: said, or it would pass unseen.
        if (this.#stopAsked) {
          this.#logger.info(
            "Got {signal}: draining already (send it again, a second later, to close at once)",
            { signal: name },
          );
        }
        this.#stop.resolve(name);
      },
      onForce: (name) => this.#force.abort(name),
      onReload: () => {
        void this.reload("SIGHUP");
        void this.#accessLog?.reopen(); // logrotate moved --access-log-file
      },
      onUsr1: (warn) => {
        this.#own.usr1Ignored++;
        if (warn) {
          this.#logger.warning(
            "Got SIGUSR1: ignored, and the debugger Deno opens on it was closed; stats are on SIGUSR2 (kill -USR2)",
          );
        }
      },
      warn: (message) => this.#logger.warning(message),
    });
    this.#defer(() => this.#signals.remove());
    this.#context.signal?.addEventListener("abort", () => this.#signals.stop("abort"), {
      once: true,
    });
  }

  /** One stats line on stdout (the SIGUSR2 line, and the final one). */
  #print(): void {
    const line = JSON.stringify(this.#stats.snapshot());
    if (this.#context.stdout) this.#context.stdout(line);
    else this.#output.stdout.writeLine(line);
  }

  /** `--max-connections`, auto from the fd limit, and a warning when it cannot fit. */
  #sizeConnections(): void {
    const config = this.#config;
    const fdLimit = config.fdLimit ?? readFdLimit();
    const max = config.maxConnections ?? maxConnectionsFor(fdLimit);
    this.#maxConnections = max;
    if (config.maxConnections === undefined) {
      this.#logger.info(
        fdLimit === undefined
          ? "Serving up to {max} clients (--max-connections auto: the fd limit is unknown; set --fd-limit, e.g. FOO_PROXY_FD_LIMIT=$(ulimit -n), to fit it)"
          : "Serving up to {max} clients (--max-connections auto, from the fd limit {limit})",
        { max, limit: fdLimit },
      );
    } else if (fdLimit !== undefined && fdsNeeded(max) > fdLimit) {
      this.#logger.warning(
        "--max-connections {max} needs about {needed} file descriptors but the limit is {limit}: raise it (ulimit -n) or lower --max-connections; past the limit new clients fail to connect",
        { max, needed: fdsNeeded(max), limit: fdLimit },
      );
    }
  }

  /**
   * The `--forward dns+` names are resolved once before the pool is built (a name without an answer
   * stands for itself, dialed by name), then every `--dns-interval` ({@linkcode #applyDns}).
   */
  async #resolveDns(): Promise<void> {
    const config = this.#config;
    this.#dns = new DnsUpstreams({
      intervalMs: config.dnsIntervalMs,
      nameServer: config.dnsServer,
      counters: this.#own,
      logger: this.#logger,
    });
    this.#forwardSpecs = config.upstreams;
    this.#dns.setSpecs(config.upstreams);
    await this.#dns.refresh();
    this.#config = this.#running = { ...config, upstreams: this.#dns.expand(config.upstreams) };
  }

  /**
   * A changed DNS answer: the running `--forward` list expanded again, through the same pool update
   * as a reload (new records join once checked, vanished ones drain).
   */
  #applyDns(): void {
    const running = this.#running;
    const specs = this.#dns.expand(this.#forwardSpecs);
    if (JSON.stringify(specs) === JSON.stringify(running.upstreams)) return;
    const changes = this.#updateUpstreams(specs);
    this.#running = { ...running, upstreams: specs };
    this.#planes?.setConfig(this.#running);
    this.#logger.info("Upstreams from DNS: {changed}", {
      changed: changes.length === 0 ? "nothing changed" : changes.join("; "),
    });
  }

  /** Runs `fn` after the reloads (and DNS updates) before it, one at a time. */
  #serialized<T>(fn: () => T | Promise<T>): Promise<T> {
    const run = this.#reloadChain.then(fn);
    this.#reloadChain = run.catch(() => {});
    return run;
  }

  /** The pool's new upstream list, sent to the planes too; returns what changed. */
  #updateUpstreams(specs: readonly UpstreamSpec[]): string[] {
    const pool = this.#pool;
    const changes = pool.update(specs);
    const states: Record<string, MemberState> = pool.states();
    const target = this.#planes;
    target?.broadcast({
      t: "upstreams",
      specs: [...specs],
      states,
      slots: target.assignSlots(specs),
    });
    return changes;
  }

  /**
   * The supervisor's pool runs the health checks and decides ejections from the planes' reports;
   * the planes follow the states it sends (at once after any change, coalesced).
   */
  #makePool(): void {
    const config = this.#config;
    this.#pool = new UpstreamPool(config.upstreams, {
      ...poolOptionsOf(config),
      tls: this.#upstreamTls,
      logger: this.#logger,
      counters: this.#own,
      onStateChange: () => this.#sendStates(),
    });
    this.#defer(() => this.#pool.close());
    // An ejection without active checks ends when its time is up: looked at once a second.
    const expiry = setInterval(() => this.#pool.states(), 1000);
    this.#defer(() => clearInterval(expiry));
    this.#stats.upstreams = () => this.#upstreamRows();
    this.#stats.workers = () => this.#planes?.breakdown(systemClock()) ?? [];
    if (config.configPath !== null) {
      this.#own.configGeneration = 1;
      this.#own.configLoadedAt = Date.now();
    }
  }

  #sendStates(): void {
    if (this.#statesQueued) return;
    this.#statesQueued = true;
    queueMicrotask(() => {
      this.#statesQueued = false;
      this.#planes?.broadcast({ t: "states", states: this.#pool.states() });
    });
  }

  async #openAccessLog(): Promise<void> {
    const config = this.#config;
    if (config.accessLog === "off") return;
    try {
      this.#accessLog = await openAccessLog(
        config,
        this.#output,
        (message) => this.#logger.warning(message),
      );
    } catch (error) {
      refuse(
        `Cannot open access log "${config.accessLogFile}" (--access-log-file): ${
          describeError(error)
        }`,
      );
    }
    const accessLog = this.#accessLog!;
    this.#defer(() => accessLog.close());
    // Per line, not the writer's onDrop: on stderr the writer is the logs' too, and its own
    // onDrop counts log lines.
    if (accessLog.writer !== this.#output.stderr) {
      accessLog.writer.onDrop = () => this.#own.accessLogLinesDropped++;
    }
  }

  async #acquirePidFile(): Promise<void> {
    const path = this.#config.pidFile;
    if (path === null) return;
    try {
      this.#pidFile = await PidFile.acquire(path, {
        heldMessage: this.#config.takeover
          ? (pid) =>
            `Pid file "${path}" is held by a running foo-proxy${
              pid ? ` (pid ${pid})` : ""
            } that has no takeover socket (${
              takeoverSocketPath(path)
            }: it was started by an older build or without access to that path): stop it first`
          : undefined,
      });
    } catch (error) {
      if (!(error instanceof PidFileError)) throw error;
      refuse(error.message);
    }
    this.#holdPidFile(this.#pidFile!);
  }

  /** Lets go of `pidFile` on the way out: left in place for a proxy taking over (still there). */
  #holdPidFile(pidFile: PidFile): void {
    this.#defer(() =>
      pidFile.release({ keep: this.#handingOverTo !== undefined && !this.#successorGone })
    );
  }

  /**
   * `--takeover`: asks the proxy holding `--pid-file` (on the socket beside it) for its totals,
   * which count as this one's from now on; nothing changes for it until this one serves and
   * commits ({@linkcode #commitTakeover}). No proxy answering there: a normal start.
   */
  async #askTakeover(): Promise<void> {
    const config = this.#config;
    if (!config.takeover) return;
    const pidFile = config.pidFile;
    if (pidFile === null) {
      refuse(
        "--takeover needs --pid-file: the running proxy's, beside which its takeover socket is",
      );
    }
    if (!canReusePort()) {
      refuse(
        "--takeover needs --unstable-net: the new proxy binds its ports beside the running one's (SO_REUSEPORT), which must have it too",
      );
    }
    const path = takeoverSocketPath(pidFile);
    try {
      this.#takeover = await requestTakeover(path);
    } catch (error) {
      if (!(error instanceof TakeoverError)) throw error;
      const cause = error.cause;
      if (cause instanceof Deno.errors.NotFound || cause instanceof Deno.errors.ConnectionRefused) {
        this.#logger.info("--takeover: no proxy answers on {path}: starting as the only one", {
          path,
        });
        return;
      }
      refuse(`--takeover: ${error.message}; nothing changed for the running proxy`, 1);
    }
    this.#carried = statsOf(this.#takeover.first.state);
    this.#carriedAt = this.#takeover.first.state.saved_at;
    this.#carriedUpstreams = this.#takeover.first.upstreams;
    this.#logger.info(
      "Taking over from the proxy holding {pidFile}: {messages} messages so far carry over",
      {
        pidFile,
        messages: this.#carried.counts.msg_req + this.#carried.counts.msg_ack +
          this.#carried.counts.msg_nak,
      },
    );
  }

  /**
   * `--takeover`, stopped (a signal) before this proxy served: the old one is left serving, and
   * its totals are not this one's.
   */
  #abandonTakeover(): void {
    this.#takeover!.cancel();
    this.#takeover = undefined;
    this.#carried = undefined;
    this.#carriedUpstreams = carriedUpstreams();
    this.#carriedFresh.resolve();
    this.#logger.info("Stopped before serving: no takeover, the running proxy serves on");
  }

  /**
   * `--takeover`, once this proxy serves: the old one stops accepting and drains; its totals are
   * followed until its final ones; then its pid file, takeover socket and recovery file are
   * taken (it lets go of them as it exits).
   */
  #commitTakeover(): void {
    const takeover = this.#takeover!;
    this.#takeover = undefined;
    this.#takeoverCancel = takeover.cancel;
    const logger = this.#logger;
    const config = this.#config;
    logger.info("Serving: the running proxy stops accepting and drains");
    const port = this.#planes!.port;
    const theirs = takeover.listen?.match(/:(\d+)$/)?.[1];
    if (theirs !== undefined && Number(theirs) !== port) {
      logger.warning(
        "The proxy taken over listens on {theirs}, this one on port {port}: from now on nothing accepts clients on {theirs}",
        { theirs: takeover.listen, port },
      );
    }
    this.#takingOver = (async () => {
      const fresh = this.#carriedFresh;
      // Bounded: an old proxy that stops answering must not hold /stats for ever.
      const timer = setTimeout(() => fresh.resolve(), CARRIED_WAIT_MS);
      // Any update after go: it took the go (it sends them once its admin ports are closed).
      let heard = false;
      const ended = await takeover.go((carried) => {
        this.#carried = statsOf(carried.state);
        this.#carriedAt = carried.state.saved_at;
        this.#carriedUpstreams = carried.upstreams;
        heard = true;
        fresh.resolve();
      });
      clearTimeout(timer);
      fresh.resolve();
      const complete = ended === "final";
      if (complete) {
        logger.info("The proxy taken over has drained; its final totals are counted");
      } else {
        this.#own.takeoverFailures++;
      }
      if (ended === "stopping") {
        logger.warning(
          "The running proxy began to shut down (a signal) before the go: it drains on its own, and what it counted since it was asked is not carried over",
        );
      }
      // It drains and exits, letting go of the pid file: it took the go, or stops anyway.
      const drains = complete || heard || ended === "stopping";
      if (this.#stopping || config.pidFile === null) return;
      let pidFile: PidFile;
      try {
        // It exits right after its final totals: the lock is free then. Gone without any, it
        // died (its lock with it), or never took the go (it gave up waiting): it holds it still.
        pidFile = await PidFile.acquire(config.pidFile, {
          waitMs: drains ? 30_000 : GONE_WAIT_MS,
        });
      } catch (error) {
        if (!(error instanceof PidFileError)) throw error;
        if (!drains) {
          // Not beside it for ever, unknown to its pid file and counting its totals as of then.
          logger.error(
            "The running proxy did not take the go (it still holds {pidFile}: it gave up waiting, or was stopping) and serves on: this proxy stops",
            { pidFile: config.pidFile },
          );
          this.#notTakenOver = true;
          this.#stop.resolve("a takeover that did not happen");
          return;
        }
        this.#own.takeoverFailures++;
        logger.error("Cannot take the pid file after the takeover: {error}", {
          error: error.message,
        });
        return;
      }
      if (ended === "gone") {
        logger.warning(
          "The proxy taken over went away before its final totals: what it counted in its last {ms} ms is missing",
          { ms: UPDATE_MS },
        );
      }
      this.#pidFile = pidFile;
      this.#holdPidFile(pidFile);
      if (this.#stopping) return;
      await this.#listenTakeover();
      await pidFile.write();
      if (config.recoveryPath !== null && !this.#stopping) {
        try {
          // Its final totals not heard (it was stopping, or went away), the file it shared with
          // this proxy may hold newer ones: its last save, counted instead of what it sent.
          let saved: RecoveryState | undefined;
          const shared = takeover.recovery !== undefined &&
            takeover.recovery === resolve(config.recoveryPath);
          this.#persister = await this.#setupRecovery(
            config.recoveryPath,
            false,
            (state) => saved = state,
          );
          if (!complete && shared && saved !== undefined && saved.saved_at > this.#carriedAt) {
            const counted = this.#carried?.counts;
            this.#carried = statsOf(saved);
            this.#carriedAt = saved.saved_at;
            const messages = (c: Stats["counts"] | undefined) =>
              c === undefined ? 0 : c.msg_req + c.msg_ack + c.msg_nak;
            logger.info(
              "The proxy taken over saved newer totals in {path} than it sent: {messages} messages counted instead of {sent}",
              {
                path: config.recoveryPath,
                messages: messages(this.#carried.counts),
                sent: messages(counted),
              },
            );
          }
          const persister = this.#persister;
          this.#defer(() => persister.close());
          persister.start();
        } catch (error) {
          if (!(error instanceof RecoveryPathError)) throw error;
          this.#own.takeoverFailures++;
          logger.error("Cannot take the recovery file after the takeover: {error}", {
            error: error.message,
          });
        }
      }
      logger.info("Took over: this proxy (pid {pid}) holds {pidFile}", {
        pid: Deno.pid,
        pidFile: config.pidFile,
      });
    })().catch((error) => {
      this.#own.takeoverFailures++;
      logger.error("The takeover failed after this proxy began serving: {error}", {
        error: error instanceof Error ? error.message : String(error),
      });
    });
  }

  /**
   * Every proxy with `--pid-file` listens for a takeover beside it (`FILE.sock`). A socket that
   * cannot be opened is logged and counted: the proxy serves on, and cannot be taken over.
   */
  async #listenTakeover(): Promise<void> {
    const pidFile = this.#config.pidFile;
    // No Unix sockets (nor SO_REUSEPORT as Linux has it) on Windows: no takeover there.
    if (pidFile === null || Deno.build.os === "windows") return;
    const path = takeoverSocketPath(pidFile);
    if (!await granted(path)) {
      // Not an error: a grant of the pid file alone (as before --takeover existed) still serves.
      this.#logger.info(
        "Not listening for a takeover (--takeover): read and write of {path} are not granted",
        { path },
      );
      return;
    }
    let listener: TakeoverListener;
    try {
      listener = await TakeoverListener.listen(path, {
        listen: () =>
          formatAddress({ hostname: this.#config.listen.hostname, port: this.#planes!.port }),
        recovery: () =>
          this.#config.recoveryPath === null ? undefined : resolve(this.#config.recoveryPath),
        capture: async () => {
          await this.#planes?.flushAll();
          this.#stats.refresh();
          const state = serializeRecoveryState(
            captureRecoveryState(this.#stats, { latency: this.#stats.latency }),
          );
          const upstreams = carriedUpstreams();
          for (const row of this.#upstreamRows()) {
            const totals = {} as UpstreamTotals;
            for (const field of UPSTREAM_TOTALS) totals[field] = row[field];
            upstreams[row.name] = totals;
          }
          return { state, upstreams };
        },
        // A drain begun for a signal decided already not to hand over (#drain): too late.
        stopping: () => this.#stopping && this.#handingOverTo === undefined,
        handOver: (pid) => {
          if (this.#stopping && this.#handingOverTo === undefined) return undefined;
          this.#handingOverTo = pid;
          this.#stop.resolve(`a takeover by pid ${pid}`);
          return { stopped: this.#adminClosed.promise, drained: this.#drainDone.promise };
        },
        logger: this.#logger,
        successorGone: () => {
          this.#successorGone = true;
          this.#logger.warning(
            "The proxy taking over (pid {pid}) went away while this one drained: nobody takes the pid file",
            { pid: this.#handingOverTo },
          );
        },
        failed: (why) => {
          this.#own.takeoverFailures++;
          this.#logger.warning("Takeover request refused ({why}): {then}", {
            why,
            then: this.#stopping ? "draining on" : "serving on",
          });
        },
      });
    } catch (error) {
      if (!(error instanceof TakeoverError)) throw error;
      this.#own.takeoverFailures++;
      this.#logger.warning("This proxy cannot be taken over (--takeover): {error}", {
        error: error.message,
      });
      return;
    }
    this.#defer(() => listener.close());
  }

  /**
   * The per-upstream rows: the pool's states with the planes' counts, plus, after a takeover,
   * the totals the proxy taken over counted for an upstream of the same name (one this proxy does
   * not forward to is not shown, as after a reload that removes it).
   */
  #upstreamRows(): UpstreamSnapshot[] {
    const rows = mergeUpstreams(this.#pool.snapshot(), this.#planes);
    const carried = this.#carriedUpstreams;
    for (const row of rows) {
      const theirs = Object.hasOwn(carried, row.name) ? carried[row.name] : undefined;
      if (theirs === undefined) continue;
      for (const field of UPSTREAM_TOTALS) row[field] += theirs[field];
    }
    return rows;
  }

  #makePlanes(layout: PlaneLayout): DataPlanes {
    const accessDrop = () => this.#own.accessLogLinesDropped++;
    const planes = new DataPlanes({
      config: this.#config,
      count: layout.count,
      thread: layout.thread,
      maxConnections: this.#maxConnections,
      states: () => this.#pool.states(),
      logger: this.#logger,
      own: this.#own,
      base: this.#base,
      onLog: (lines) => {
        for (const line of lines) this.#output.stderr.write(line);
      },
      onAccess: (lines) => {
        const writer = this.#accessLog?.writer;
        if (writer) { for (const line of lines) writer.write(line, accessDrop); }
      },
      onPassive: (name, kind) => this.#pool.passive(name, kind),
      testHooks: this.#testHooks,
      youngMs: this.#youngMs,
      upstreamTls: this.#upstreamTls,
      tls: this.#tls?.pair,
      share: this.#takeover !== undefined,
    });
    this.#defer(() => planes.terminate());
    return planes;
  }

  /**
   * Starts the planes. A Worker whose module cannot be loaded (a binary built without
   * `--include` of it, a read grant that does not cover it): with `--workers auto` one plane on
   * the main thread still serves; an explicit number is not silently less.
   */
  async #startPlanes(): Promise<void> {
    const config = this.#config;
    if (this.#layout.note !== undefined) {
      this.#logger.warning("{message}", { message: this.#layout.note });
    }
    let port: number;
    try {
      try {
        this.#planes = this.#makePlanes(this.#layout);
        port = await this.#planes.start();
      } catch (error) {
        if (
          !(error instanceof PlaneStartError) || !error.notLoaded || !this.#layout.thread ||
          config.workers !== undefined
        ) throw error;
        this.#logger.warning(
          "The data-plane workers cannot start ({error}): serving on 1 core, on the main thread",
          { error: error.message },
        );
        this.#layout = { count: 1, thread: false };
        this.#planes = this.#makePlanes(this.#layout);
        port = await this.#planes.start();
      }
    } catch (error) {
      this.#logger.error(
        error instanceof PlaneStartError && error.notLoaded
          ? "Cannot start the data-plane workers for {listen}: {error}"
          : "Cannot listen on {listen}: {error}",
        {
          listen: formatAddress(config.listen),
          error: error instanceof Error ? error.message : String(error),
        },
      );
      throw new StartFailed(1);
    }
    const everywhere = config.listen.hostname === "0.0.0.0" || config.listen.hostname === "::";
    const { count, thread } = this.#layout;
    this.#logger.info("Listening on {listen}{tls}{scope}, forwarding to {forward} ({workers})", {
      listen: formatAddress({ hostname: config.listen.hostname, port }),
      tls: this.#tls === undefined ? "" : " (TLS)",
      // Binding every interface is what `:8002` meant in the original tool; say so plainly.
      scope: everywhere ? " (all interfaces: --listen 127.0.0.1:PORT for this host only)" : "",
      forward: this.#pool.label,
      workers: thread
        ? `${count} data-plane worker${count === 1 ? "" : "s"}`
        : "data plane on the main thread",
    });
    if (config.wsListen !== null) {
      this.#logger.info("WebSocket clients on {scheme}://{listen}/ (origins: {origins})", {
        scheme: this.#tls === undefined ? "ws" : "wss",
        listen: formatAddress({ hostname: config.wsListen.hostname, port: this.#planes!.wsPort }),
        origins: config.wsOrigins.length > 0
          ? config.wsOrigins.join(", ")
          : "pages of this host and port, and clients that send no Origin",
      });
    }
  }

  /** The admin HTTP servers: stats from the merged view, counts into the supervisor's own. */
  async #startAdmin(): Promise<Observability> {
    const config = this.#config;
    const planes = this.#planes!;
    const pool = this.#pool;
    try {
      const observability = await startObservability({
        stats: this.#stats,
        counters: this.#own,
        activeConnections: () => planes.activeConnections,
        // Taking over: the carried totals first (see #carriedFresh).
        beforeRead: () =>
          this.#carried === undefined
            ? planes.flushAll()
            : Promise.all([planes.flushAll(), this.#carriedFresh.promise]).then(() => {}),
        crashWorker: this.#testHooks ? (index) => planes.crash(index) : undefined,
        stuck: () => planes.stuck(),
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
          snapshot: () => this.#upstreamRows(),
          drain: (name: string) => pool.drain(name),
          enable: (name: string) => pool.enable(name),
        },
        reload: () => this.reload("POST /reload"),
        // The reloaded config's: a leaked token can be revoked.
        adminToken: () => this.#running.adminToken,
        adminHosts: () => this.#running.adminHosts,
        maxConnections: this.#maxConnections,
        http: config.http,
        health: config.health,
        // Bound so that a takeover can bind beside, as it binds beside the running proxy's.
        reusePort: canReusePort(),
        share: this.#takeover !== undefined,
        required: { http: config.httpExplicit, health: config.healthExplicit },
        logger: this.#logger,
      });
      this.#defer(() => observability.close());
      return observability;
    } catch (error) {
      if (!(error instanceof HttpBindError)) throw error;
      this.#logger.error("{message}", { message: error.message });
      await planes.shutdown(AbortSignal.abort(), { delayMs: 0, timeoutMs: 0 });
      throw new StartFailed(1);
    }
  }

  /**
   * SIGHUP and `POST /reload`: reads the file again and applies what changed, without dropping
   * a connection; a file that does not parse or validate changes nothing. One at a time (the file
   * is read asynchronously, with a deadline); one more may wait, and every request made while it
   * waits shares it: a SIGHUP storm queues nothing.
   */
  reload(why: string, options: { ifChanged?: boolean } = {}): Promise<ReloadResult> {
    if (options.ifChanged !== true) this.#reloadAsked = true;
    if (this.#reloadWaiting) return this.#reloadWaiting;
    const run = this.#reloadChain.then(() => {
      this.#reloadWaiting = undefined;
      const asked = this.#reloadAsked;
      this.#reloadAsked = false;
      return this.#reloadOnce(asked ? why : WATCH_WHY, !asked);
    });
    this.#reloadWaiting = run;
    this.#reloadChain = run.catch(() => {});
    return run;
  }

  /** One reload: the config file (if any), then the TLS key pair (re-read every time). */
  async #reloadOnce(why: string, ifChanged = false): Promise<ReloadResult> {
    if (ifChanged && await this.#configUnchanged()) {
      return { ok: true, generation: this.#own.configGeneration, changed: [] };
    }
    const result = await this.#reloadConfig(why);
    if (this.#tls === undefined) {
      if (this.#running.tlsCert !== null) {
        this.#logger.warning(
          "--tls-cert is new in the config file: the listener speaks TLS from the next restart",
        );
      }
      return result;
    }
    const tls = await this.#reloadTls(why);
    const errors = [result.error, tls.error].filter((e) => e !== undefined);
    return {
      ok: result.ok && tls.error === undefined,
      generation: result.generation,
      changed: tls.changed === undefined ? result.changed : [...result.changed, tls.changed],
      ...(errors.length > 0 ? { error: errors.join("; ") } : {}),
    };
  }

  /**
   * Reads the key pair files again (changed or not: a renewal rewrites them in place) and, when
   * the pair or the handshake deadline differs, puts it in service on every plane without
   * dropping a connection. A pair that cannot be read or used changes nothing: the running one
   * keeps serving, the failure is counted and logged, and the reload reports it.
   */
  async #reloadTls(why: string): Promise<{ changed?: string; error?: string }> {
    const running = this.#tls!;
    const config = this.#running;
    const own = this.#own;
    const fail = (message: string) => {
      own.tlsReloadFailures++;
      this.#logger.error(
        "TLS reload ({why}) failed; the running certificate keeps serving: {error}",
        { why, error: message },
      );
      return { error: message };
    };
    const problem = tlsFlagsProblem(config);
    if (problem !== undefined) return fail(problem);
    if (config.tlsCert === null || config.tlsKey === null) {
      this.#logger.warning(
        "--tls-cert and --tls-key are gone from the config file: TLS stays on until a restart",
      );
      return {};
    }
    let pair: TlsKeyPair;
    try {
      pair = await readKeyPair({ cert: config.tlsCert, key: config.tlsKey });
    } catch (error) {
      if (!(error instanceof TlsKeyPairError)) throw error;
      return fail(error.message);
    }
    const handshakeTimeoutMs = config.tlsHandshakeTimeoutMs;
    const pairChanged = pair.cert !== running.pair.cert || pair.key !== running.pair.key;
    if (!pairChanged && handshakeTimeoutMs === running.handshakeTimeoutMs) {
      this.#logger.info("TLS key pair read again ({why}): unchanged", { why });
      return {};
    }
    const errors = await this.#planes?.setTls(pair, handshakeTimeoutMs) ?? [];
    if (errors.length > 0) return fail(errors.join("; "));
    this.#tls = { pair, handshakeTimeoutMs };
    if (!pairChanged) return { changed: `--tls-handshake-timeout ${handshakeTimeoutMs} ms` };
    own.tlsReloads++;
    this.#logger.info(
      "TLS key pair reloaded ({why}) from {cert}: new clients get the new certificate, open connections keep theirs",
      { why, cert: config.tlsCert },
    );
    return { changed: "TLS key pair" };
  }

  /**
   * `--config-watch`: a change to the file (or to a link on the way to it) reloads it, through
   * {@linkcode reload}, once per burst of events; a file whose text did not change is left alone
   * (an editor's save without edits, a ConfigMap update of another key). A directory that
   * cannot be watched is logged once and counted; SIGHUP still works.
   */
  async #watchConfig(): Promise<void> {
    const path = this.#config.configPath;
    if (path === null || !this.#config.configWatch) return;
    const watch = await watchConfigFile({
      path,
      onChange: () => void this.reload(WATCH_WHY, { ifChanged: true }),
      onError: (message) => {
        this.#own.configWatchFailures++;
        this.#logger.warning(
          "Cannot watch {path} for changes ({error}): it is reloaded on SIGHUP and POST /reload only",
          { path, error: message },
        );
      },
    });
    if (watch === undefined) return;
    this.#defer(() => watch.close());
    this.#logger.info("Reloading {path} when it changes (watching {directories})", {
      path,
      directories: watch.directories.join(", "),
    });
  }

  /** Whether the `--config` file holds the text last read (a file that cannot be read: no). */
  async #configUnchanged(): Promise<boolean> {
    const path = this.#running.configPath;
    if (path === null) return true;
    try {
      return await readConfigFile(path) === this.#configText;
    } catch {
      return false; // the reload says why
    }
  }

  /** The config file part of a reload. */
  async #reloadConfig(why: string): Promise<ReloadResult> {
    const own = this.#own;
    const running = this.#running;
    const logger = this.#logger;
    // An --upstream-tls file that cannot be used (a renewal caught half-written) keeps the running
    // ones and fails the reload, but holds back nothing else: the config file (a --deny added in an
    // incident) is still applied, as the listener's key pair is.
    const tlsReread = await this.#rereadUpstreamTls(why);
    const tlsFailed: { ok: boolean; error?: string } = tlsReread instanceof Error
      ? { ok: false, error: tlsReread.message }
      : { ok: true };
    const tlsChanged = typeof tlsReread === "string" ? [tlsReread] : [];
    if (running.configPath === null) {
      if (tlsReread === undefined && this.#tls === undefined) {
        logger.info("Got {why}: nothing to reload (no --config file; flags are read at start)", {
          why,
        });
      }
      return { ...tlsFailed, generation: own.configGeneration, changed: tlsChanged };
    }
    let next: ProxyConfig;
    try {
      const text = await readConfigFile(running.configPath);
      this.#configText = text;
      next = checkUpstreamTls(parseProxyConfig(this.#args, denoEnvReader(), () => text));
    } catch (error) {
      own.configReloadFailures++;
      const message = error instanceof Error ? error.message : String(error);
      logger.error("Reload ({why}) of {path} failed; the running config is kept: {error}", {
        why,
        path: running.configPath,
        error: message,
      });
      const both = tlsFailed.error === undefined ? message : `${tlsFailed.error}; ${message}`;
      return { ok: false, generation: own.configGeneration, changed: tlsChanged, error: both };
    }
    // New dns+ names are resolved before the set is compared; known ones keep their last answer.
    this.#forwardSpecs = next.upstreams;
    this.#dns.setSpecs(next.upstreams);
    await this.#dns.refresh("new");
    next = { ...next, upstreams: this.#dns.expand(next.upstreams) };
    const pool = this.#pool;
    const planes = () => this.#planes;
    const changed = applyReload(running, next, {
      pool: {
        update: (specs: readonly UpstreamSpec[]) => this.#updateUpstreams(specs),
        setPolicy: (policy) => {
          pool.setPolicy(policy);
          planes()?.broadcast({ t: "policy", policy });
        },
      },
      proxy: {
        updateEngine: (changes) => planes()?.broadcast({ t: "engine", changes }),
        setMaxConnections: (max) => planes()?.setMaxConnections(max),
        setAccess: (access) => planes()?.broadcast({ t: "access", access }),
      },
      relog: () => {
        this.#logging[Symbol.dispose]();
        this.#logging = setupLogging({
          level: next.logLevel,
          format: next.logFormat,
          write: (line) => void this.#output.stderr.write(line),
        });
        planes()?.broadcast({ t: "log", level: next.logLevel, format: next.logFormat });
      },
      warn: (message) => logger.warning("{message}", { message }),
    });
    changed.push(...tlsChanged);
    this.#running = next;
    planes()?.setConfig(next);
    own.configGeneration++;
    own.configLoadedAt = Date.now();
    logger.info("Reloaded {path} ({why}, generation {generation}): {changed}", {
      path: next.configPath,
      why,
      generation: own.configGeneration,
      changed: changed.length === 0 ? "nothing changed" : changed.join("; "),
    });
    return { ...tlsFailed, generation: own.configGeneration, changed };
  }

  /**
   * The drain (`why` is the signal): readiness fails at once, the planes drain, then the final
   * stats are persisted and printed. Resolves with the exit code: 1 when a second signal cut the
   * drain short.
   */
  async #drain(observability: Observability, why: string): Promise<number> {
    try {
      return await this.#drainSteps(observability, why);
    } finally {
      // Whatever happened, a successor waiting on this proxy's takeover socket is let go (the
      // socket's close waits for it).
      this.#adminClosed.resolve();
      this.#drainDone.resolve();
    }
  }

  async #drainSteps(observability: Observability, why: string): Promise<number> {
    const logger = this.#logger;
    this.#stopping = true;
    observability.markStopping(); // /readyz fails from the first signal on
    if (this.#takingOver !== undefined) {
      // Stopping before the proxy taken over has drained: its totals as last heard stand. Its
      // pid file may still be held by it (the wait for the lock stops with the process).
      this.#takeoverCancel?.();
      await Promise.race([this.#takingOver, waitOrAbort(TAKEOVER_STOP_WAIT_MS)]);
    }
    const handingOver = this.#handingOverTo !== undefined;
    if (handingOver) {
      // The new proxy serves the admin ports already (beside these): its totals include ours.
      await observability.close();
      this.#adminClosed.resolve();
      logger.info(
        "Taken over by pid {pid}: stopped accepting; draining (SIGTERM twice, a second apart, closes at once)",
        { pid: this.#handingOverTo },
      );
    } else {
      logger.info(
        "Got {signal}: shutting down gracefully (send it again, a second later, to close at once)",
        { signal: why },
      );
    }
    const report = await this.#planes!.shutdown(this.#force.signal, {
      // The new proxy accepts already: no reason to keep accepting here.
      delayMs: handingOver ? 0 : this.#config.drainDelayMs,
      timeoutMs: this.#config.drainTimeoutMs,
    });
    if (report.aborted) {
      logger.warning("Got {signal} again: closed {count} connection(s) without draining", {
        signal: String(this.#force.signal.reason),
        count: report.closedIdle + report.closedBusy,
      });
    }
    // Every connection has ended: persist the final stats (--recovery-path), then print them,
    // before the signal listeners go (a late signal with no listener would kill the process
    // before the final line is out).
    await observability.close();
    await this.#persister?.close();
    await this.#pool.close();
    await this.#accessLog?.close();
    // A proxy taking over hears the final totals now (its takeover socket is closed on the way
    // out, after they are sent).
    this.#drainDone.resolve();
    this.#print();
    return report.aborted || this.#notTakenOver ? 1 : 0;
  }
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

/**
 * Why a file cannot be opened at `path`, as far as a look shows without opening it: its directory
 * missing or not one, or the path a directory; `undefined` when fine or not visible (the
 * permission check speaks then).
 */
async function placeProblem(path: string): Promise<string | undefined> {
  const dir = dirname(path);
  try {
    if (!(await Deno.stat(dir)).isDirectory) return `"${dir}" is not a directory`;
  } catch (error) {
    return error instanceof Deno.errors.NotFound ? `directory "${dir}" does not exist` : undefined;
  }
  try {
    if ((await Deno.stat(path)).isDirectory) return "it is a directory";
  } catch {
    // Missing (created by the start) or not visible.
  }
  return undefined;
}

/** Statistics holding a takeover's `state` (totals, windows, latency), as a restart restores them. */
function statsOf(state: RecoveryState): Stats {
  const stats = new Stats({ clock: systemClock });
  restoreRecoveryState(stats, state, { latency: stats.latency });
  return stats;
}

/** Whether read and write of `path` are granted (a Unix socket's path needs both). */
async function granted(path: string): Promise<boolean> {
  const [read, write] = await Promise.all([
    Deno.permissions.query({ name: "read", path }),
    Deno.permissions.query({ name: "write", path }),
  ]);
  return read.state === "granted" && write.state === "granted";
}

/**
 * `--takeover`: how long the pid file's lock is waited for after the old proxy went away without
 * its final totals (dead, its lock goes with its socket; alive, it never took the go).
 */
const GONE_WAIT_MS = 2000;

/** `--takeover`: how long a stop waits for the takeover's own steps to end. */
const TAKEOVER_STOP_WAIT_MS = 2000;

/** `--takeover`: the longest `/stats` waits for the old proxy's first update after `go`. */
const CARRIED_WAIT_MS = 2000;

/** What a reload the watch asked for says it was for. */
const WATCH_WHY = "the file changed";

function testHooksOf(value: string | undefined): "crash" | "freeze" | undefined {
  return value === "1" ? "crash" : value === "freeze" ? "freeze" : undefined;
}

function positiveMs(value: string | undefined): number | undefined {
  const ms = Number(value);
  return value !== undefined && Number.isSafeInteger(ms) && ms > 0 ? ms : undefined;
}
