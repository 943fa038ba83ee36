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
 * Reports a usage error, returns exit status 2: one stderr line naming what was wrong, then one
 * saying where the usage is (`command` is how the subcommand is run: `foo-proxy server`).
 */
export function reportUsageError(message: string, command = "foo-proxy"): number {
  writeStderrLine(`foo-proxy: ${message}`);
  writeStderrLine(`Run '${command} --help' for usage.`);
  return 2;
}
