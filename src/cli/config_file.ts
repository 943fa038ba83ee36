/**
 * `--config FILE`: the proxy's flags as a JSON-with-comments object, one key per flag
 * (`"max-inflight": 500`, `"forward": ["a=10.0.0.1:8001", "b=10.0.0.2:8001*3"]`). Flags and
 * `FOO_PROXY_*` variables override the file. An unknown key, or a value of the wrong kind, is an
 * error naming the key and its line.
 *
 * @module
 */
import type { FlagSpec } from "./flags.ts";

/** A config file that cannot be used: the message names the file, the key and the line. */
export class ConfigFileError extends Error {
  /** Creates the error; `message` says what is wrong and where. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConfigFileError";
  }
}

/**
 * The flag values `text` (the file at `path`) sets, as {@linkcode parseFlags} takes them.
 *
 * @throws {ConfigFileError} for bad JSON, an unknown key or a value of the wrong kind.
 */
export function parseConfigFile(
  text: string,
  path: string,
  specs: Record<string, FlagSpec>,
): Record<string, string | boolean> {
  let value: unknown;
  try {
    value = JSON.parse(stripJsonComments(text));
  } catch (error) {
    const at = /at position (\d+)/.exec((error as Error).message)?.[1];
    const where = at === undefined ? "" : ` (line ${lineOf(text, Number(at))})`;
    throw new ConfigFileError(`Config file "${path}" is not valid JSON${where}`, { cause: error });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ConfigFileError(`Config file "${path}" must hold one JSON object`);
  }
  const out: Record<string, string | boolean> = {};
  for (const [key, v] of Object.entries(value)) {
    const where = `"${key}" (line ${lineOfKey(text, key)}) in config file "${path}"`;
    // Own keys only: "toString", "constructor" or "__proto__" are not flags, whatever
    // Object.prototype holds.
    const spec = Object.hasOwn(specs, key) ? specs[key] : undefined;
    if (spec === undefined || spec.file === false) {
      throw new ConfigFileError(`Unknown key ${where}: keys are the flags' names, e.g. "listen"`);
    }
    if (spec.type === "boolean") {
      if (typeof v !== "boolean") throw new ConfigFileError(`${where}: expected true or false`);
      out[key] = v;
    } else if (typeof v === "string" || typeof v === "number") {
      out[key] = String(v);
    } else if (spec.multiple && Array.isArray(v) && v.every((x) => typeof x === "string")) {
      out[key] = v.join(",");
    } else if (typeof v === "boolean" && spec.optionalValue) {
      out[key] = v ? "true" : "off";
    } else {
      throw new ConfigFileError(
        `${where}: expected ${
          spec.multiple ? "a string or a list of strings" : "a string or a number"
        }`,
      );
    }
  }
  return out;
}

/**
 * What {@linkcode stripJsonComments} looks for, in one linear pass of the regexp engine: a string
 * (kept as it is, so nothing inside one is touched), a line comment, a block comment (an unclosed
 * one runs to the end), or a comma with only white space before the `}` or `]` that follows it.
 */
const JSONC_TOKEN =
  /"[^"\\]*(?:\\[\s\S][^"\\]*)*"?|\/\/[^\n]*|\/\*[\s\S]*?(?:\*\/|$)|,(?=\s*[}\]])/g;

/** `text` with `//` and `/* … *\/` comments and trailing commas replaced by spaces (positions kept). */
export function stripJsonComments(text: string): string {
  return text.replace(JSONC_TOKEN, (token) => {
    const c = token.charCodeAt(0);
    if (c === 0x22) return token; // a string
    if (c === 0x2c) return " "; // a trailing comma
    // A comment: its newlines stay, so JSON.parse's positions still give the right line.
    return token.includes("\n") ? token.replace(/[^\n]/g, " ") : " ".repeat(token.length);
  });
}

function lineOf(text: string, position: number): number {
  return text.slice(0, position).split("\n").length;
}

function lineOfKey(text: string, key: string): number {
  const at = text.indexOf(JSON.stringify(key));
  return at < 0 ? 1 : lineOf(text, at);
}
