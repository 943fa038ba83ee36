/**
 * Logging set-up for the subcommands: LogTape writing synchronously to stderr, in text or JSON
 * Lines, so stdout carries only the stats lines.
 *
 * @module
 */
import {
  configureSync,
  getJsonLinesFormatter,
  getTextFormatter,
  type LogLevel,
  type LogRecord,
  resetSync,
  type Sink,
} from "@logtape/logtape";
import { UsageError } from "../cli/flags.ts";

/** Log levels accepted by `--log-level`. */
export const LOG_LEVELS = ["debug", "info", "warning", "error"] as const;
/** Log formats accepted by `--log-format`. */
export const LOG_FORMATS = ["text", "json"] as const;

/** Options for {@linkcode setupLogging}. */
export interface LoggingOptions {
  /** Lowest level written. @default {"info"} */
  level?: string;
  /** `text` (human) or `json` (one JSON object a line). @default {"text"} */
  format?: string;
  /** Where lines go; unset: stderr, written synchronously. */
  write?: (line: string) => void;
}

/**
 * Configures the `foo-proxy` logger category. Returns a disposer that resets LogTape.
 *
 * @throws {UsageError} for an unknown level or format.
 */
export function setupLogging(options: LoggingOptions = {}): Disposable {
  const level = options.level ?? "info";
  const format = options.format ?? "text";
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new UsageError(
      `Invalid value "${level}" for --log-level: expected ${LOG_LEVELS.join("|")}`,
    );
  }
  if (!(LOG_FORMATS as readonly string[]).includes(format)) {
    throw new UsageError(
      `Invalid value "${format}" for --log-format: expected ${LOG_FORMATS.join("|")}`,
    );
  }
  const formatter = format === "json"
    ? getJsonLinesFormatter({ categorySeparator: ".", properties: "flatten" })
    : getTextFormatter({
      timestamp: "date-time-tz",
      category: ".",
      value: (v) => typeof v === "string" ? v : Deno.inspect(v),
    });
  const write = options.write ?? writeStderr;
  const sink: Sink = (record: LogRecord) => write(formatter(record));
  resetSync();
  configureSync({
    sinks: { stderr: sink },
    loggers: [
      { category: ["foo-proxy"], lowestLevel: level as LogLevel, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
  return { [Symbol.dispose]: () => resetSync() };
}

const encoder = new TextEncoder();

function writeStderr(line: string): void {
  let bytes = encoder.encode(line);
  while (bytes.length > 0) bytes = bytes.subarray(Deno.stderr.writeSync(bytes));
}
