/**
 * The start every long-running subcommand shares: parse the flags, answer `--help`, set up
 * logging, and turn a {@linkcode UsageError} into one stderr line and exit status 2.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { UsageError } from "../cli/flags.ts";
import { setupLogging } from "./logging.ts";
import { VERSION } from "../version.ts";
import { reportUsageError, writeStdoutLine } from "./output.ts";

/** The configuration fields {@linkcode startCommand} reads. */
export interface CommonConfig {
  /** `--log-level`. */
  logLevel: string;
  /** `--log-format`. */
  logFormat: string;
  /** `--help`. */
  help: boolean;
  /** `--version`/`-V`: print `foo-proxy VERSION` and exit 0. */
  version?: boolean;
}

/** Options for {@linkcode startCommand}. */
export interface StartCommandOptions<C> {
  /** Printed on `--help`. */
  usage: string;
  /** How the command is run (`foo-proxy server`): usage errors point to its `--help`. */
  command: string;
  /** Writes one line of stdout. @default writeStdoutLine */
  stdout?: (line: string) => void;
  /**
   * Runs after `--help` is answered and before logging is set up; returning a number ends the
   * command with that exit code, a {@linkcode UsageError} it throws is reported. Unset: none.
   */
  check?: (config: C) => number | undefined;
  /** Where log lines go (each carries its newline). Unset: stderr, written synchronously. */
  logWrite?: (line: string) => void;
}

/** What {@linkcode startCommand} hands back when the command should run. */
export interface StartedCommand<C> {
  /** The parsed configuration. */
  config: C;
  /** Resets logging when disposed. */
  logging: Disposable;
}

/**
 * Parses the configuration with `parse`, answers `--help` and sets up logging. Returns the
 * exit code instead when the command is already done (0 after `--help`, 2 after a usage error).
 *
 * @throws anything `parse` or `check` throws other than a {@linkcode UsageError}.
 */
export function startCommand<C extends CommonConfig>(
  parse: () => C,
  options: StartCommandOptions<C>,
): StartedCommand<C> | number {
  try {
    const config = parse();
    if (config.help) {
      (options.stdout ?? writeStdoutLine)(options.usage);
      return 0;
    }
    if (config.version) {
      (options.stdout ?? writeStdoutLine)(`foo-proxy ${VERSION}`);
      return 0;
    }
    const code = options.check?.(config);
    if (code !== undefined) return code;
    const logging = setupLogging({
      level: config.logLevel,
      format: config.logFormat,
      write: options.logWrite,
    });
    warnIfEnvUnreadable();
    return { config, logging };
  } catch (error) {
    if (error instanceof UsageError) return reportUsageError(error.message, options.command);
    throw error;
  }
}

/**
 * Says once when `FOO_PROXY_*` variables cannot be read (no `--allow-env`): they are then
 * ignored, and a user who set one would otherwise never learn why it had no effect. Deno does not
 * tell whether a variable is set without the grant, so this says it whenever the grant is missing.
 */
function warnIfEnvUnreadable(): void {
  let state: Deno.PermissionState;
  try {
    state = Deno.permissions.querySync({ name: "env", variable: "FOO_PROXY_LISTEN" }).state;
  } catch {
    return;
  }
  if (state === "granted") return;
  getLogger(["foo-proxy"]).warning(
    "FOO_PROXY_* environment variables are ignored: this run has no --allow-env=FOO_PROXY_* (flags still work)",
  );
}
