/**
 * Logging set-up for the subcommands: LogTape writing synchronously to stderr, in text or JSON
 * Lines, so stdout carries only the stats lines.
 *
 * @module
 */
import {
  configureSync,
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
  const text = getTextFormatter({
    timestamp: "date-time-tz",
    category: ".",
    value: (v) => typeof v === "string" ? v : Deno.inspect(v),
  });
  // Every record is one line whatever bytes it quotes (a peer's error text, a file name).
  const formatter = format === "json" ? jsonLine : (record: LogRecord) => oneLine(text(record));
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

/**
 * A text line with every control character but the final newline escaped (`\n` → `\\n`,
 * `\x1b` → `\\x1b`), so no record spans two lines or drives a terminal.
 */
export function oneLine(line: string): string {
  const body = line.endsWith("\n") ? line.slice(0, -1) : line;
  // deno-lint-ignore no-control-regex -- matching control characters is the point
  return body.replace(/[\x00-\x08\x0a-\x1f\x7f]/g, escapeControl) + "\n";
}

function escapeControl(c: string): string {
  if (c === "\n") return "\\n";
  if (c === "\r") return "\\r";
  return `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`;
}

/**
 * One JSON object a line: `@timestamp`, `level`, `message` (values rendered into it as they are,
 * without JSON quoting: `Got SIGTERM: …`), `logger`, then each value in its own field.
 */
export function jsonLine(record: LogRecord): string {
  let message = "";
  for (let i = 0; i < record.message.length; i++) {
    const part = record.message[i];
    message += i % 2 === 0 ? String(part) : renderValue(part);
  }
  return JSON.stringify({
    "@timestamp": new Date(record.timestamp).toISOString(),
    level: JSON_LEVELS[record.level] ?? record.level.toUpperCase(),
    message,
    logger: record.category.join("."),
    ...record.properties,
  }) + "\n";
}

/** The level names of LogTape's JSON Lines formatter, kept so log pipelines need no change. */
const JSON_LEVELS: Record<string, string> = {
  trace: "TRACE",
  debug: "DEBUG",
  info: "INFO",
  warning: "WARN",
  error: "ERROR",
  fatal: "FATAL",
};

function renderValue(value: unknown): string {
  if (typeof value === "string") return value;
  if (
    typeof value === "number" || typeof value === "boolean" || value === null ||
    value === undefined
  ) {
    return String(value);
  }
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

function writeStderr(line: string): void {
  let bytes = encoder.encode(line);
  while (bytes.length > 0) bytes = bytes.subarray(Deno.stderr.writeSync(bytes));
}
