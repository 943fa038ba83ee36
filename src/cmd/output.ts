/**
 * Writing whole lines to stdout synchronously, so a line is never interleaved or lost at exit.
 *
 * @module
 */

const encoder = new TextEncoder();

/** Writes `line` and a newline to stdout, retrying partial writes. */
export function writeStdoutLine(line: string): void {
  let bytes = encoder.encode(line + "\n");
  while (bytes.length > 0) bytes = bytes.subarray(Deno.stdout.writeSync(bytes));
}

/** Context every subcommand's `run` receives. */
export interface CommandContext {
  /** Aborting asks the command to stop as on SIGTERM. Unset: only signals stop it. */
  signal?: AbortSignal;
  /** Writes one line of stdout; unset: {@linkcode writeStdoutLine}. */
  stdout?: (line: string) => void;
}

/** Writes `line` and a newline to stderr (for usage errors, before logging is set up). */
export function writeStderrLine(line: string): void {
  let bytes = encoder.encode(line + "\n");
  while (bytes.length > 0) bytes = bytes.subarray(Deno.stderr.writeSync(bytes));
}

/**
 * Reports a usage error, returns exit status 2: one stderr line naming what was wrong and where
 * the usage is (`command` is how the subcommand is run: `foo-proxy server`). One line, as the
 * README promises: a script can show it, grep it or log it whole.
 */
export function reportUsageError(message: string, command = "foo-proxy"): number {
  writeStderrLine(`foo-proxy: ${message} (see '${command} --help')`);
  return 2;
}
