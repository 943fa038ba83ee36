/**
 * Command-line flag parsing shared by every subcommand: `node:util` `parseArgs` in strict mode,
 * Go-style single-dash long flags (`-listen=:8002`, `-listen :8002`), and `FOO_PROXY_<NAME>`
 * environment variables as fallbacks (flags win).
 *
 * @module
 */
import { parseArgs } from "node:util";

/** A wrong flag, value or argument: the subcommand prints its message and the usage, exits 2. */
export class UsageError extends Error {
  /** Creates a usage error; `message` is one line naming the bad flag or value. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UsageError";
  }
}

/** One flag of a subcommand. */
export interface FlagSpec {
  /** `string` flags take a value; `boolean` flags do not. */
  type: "string" | "boolean";
  /** One-letter alias, e.g. `h` for `--help`. Unset: none. */
  short?: string;
  /**
   * Whether the flag may be repeated (`--forward a --forward b`); the values are joined with
   * commas, as the environment variable gives them. @default {false}
   */
  multiple?: boolean;
  /** Value when neither the flag nor its environment variable is given. Unset: `undefined`. */
  default?: string | boolean;
  /** Whether `FOO_PROXY_<NAME>` may supply the value. @default {true} */
  env?: boolean;
  /** Whether a `--config` file may hold it, as a key named like the flag. @default {true} */
  file?: boolean;
  /** The value's placeholder in help (`ADDR`, `N`, `DUR`). Unset: the flag takes no value. */
  value?: string;
  /** Whether the value is optional (`--resume[=MODE]`). @default {false} */
  optionalValue?: boolean;
  /** One sentence for `--help` and the README table. */
  help?: string;
  /** The default as help shows it, when not the `default` itself (`:8002, all interfaces`). */
  defaultText?: string;
}

/** Parsed flag values, by flag name. */
export type FlagValues = Record<string, string | boolean | undefined>;

/** Options for {@linkcode parseFlags}. */
export interface ParseFlagsOptions {
  /** Looks up an environment variable; unset: no environment fallbacks are used. */
  getEnv?: (name: string) => string | undefined;
  /**
   * Values from a config file, by flag name, used when neither the flag nor its environment
   * variable is given (flags win over the environment, which wins over the file). Unset: none.
   */
  fileValues?: Record<string, string | boolean>;
  /**
   * Collects the arguments that are not flags (`foo-proxy wait ADDR…`), in order. Unset: such an
   * argument is a usage error.
   */
  positionals?: string[];
}

/** The environment variable that backs a flag: `max-connections` → `FOO_PROXY_MAX_CONNECTIONS`. */
export function envName(flag: string): string {
  return `FOO_PROXY_${flag.toUpperCase().replaceAll("-", "_")}`;
}

/**
 * Rewrites Go-style single-dash long flags (`-listen=:8002`, `-listen :8002`) to `--listen…`,
 * leaving one-letter flags (`-h`) and values alone.
 */
export function normalizeGoFlags(
  args: readonly string[],
  spec: Record<string, FlagSpec>,
): string[] {
  return args.map((arg) => {
    const m = /^-([a-z][a-z0-9-]+)(=.*)?$/.exec(arg);
    return m && m[1] in spec ? `-${arg}` : arg;
  });
}

/**
 * Parses `args` against `spec`, applying environment fallbacks and defaults.
 *
 * @throws {UsageError} for an unknown flag, a missing value, a stray argument or a bad boolean.
 */
export function parseFlags(
  args: readonly string[],
  spec: Record<string, FlagSpec>,
  options: ParseFlagsOptions = {},
): FlagValues {
  const parseOptions: Record<
    string,
    { type: "string" | "boolean"; short?: string; multiple?: boolean }
  > = {};
  for (const [name, flag] of Object.entries(spec)) {
    parseOptions[name] = {
      type: flag.type,
      ...(flag.short ? { short: flag.short } : {}),
      ...(flag.multiple ? { multiple: true } : {}),
    };
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: joinDashValues(normalizeGoFlags(args, spec), spec),
      options: parseOptions,
      strict: true,
      allowPositionals: options.positionals !== undefined,
    });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new UsageError(message.split("\n")[0].replace(/\. To specify a positional.*$/, ""), {
      cause: error,
    });
  }
  options.positionals?.push(...parsed.positionals);
  const values: FlagValues = {};
  for (const [name, flag] of Object.entries(spec)) {
    const raw = (parsed.values as Record<string, string | boolean | string[] | undefined>)[name];
    let value = Array.isArray(raw) ? raw.join(",") : raw;
    if (value === undefined && flag.env !== false && options.getEnv) {
      const fromEnv = options.getEnv(envName(name));
      if (fromEnv !== undefined && fromEnv !== "") {
        value = flag.type === "boolean" ? parseBooleanEnv(envName(name), fromEnv) : fromEnv;
      }
    }
    if (value === undefined && options.fileValues && name in options.fileValues) {
      value = options.fileValues[name];
    }
    values[name] = value ?? flag.default;
  }
  return values;
}

/**
 * `--flag -1` as `--flag=-1` for flags that take a value, so a negative (or dash-led) value is
 * judged by the flag's own check ("expected an integer from 0 to …") instead of parseArgs'
 * "argument is ambiguous".
 */
function joinDashValues(args: readonly string[], spec: Record<string, FlagSpec>): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const m = /^--([a-z][a-z0-9-]*)$/.exec(args[i]);
    const next = args[i + 1];
    if (m && spec[m[1]]?.type === "string" && next !== undefined && /^-[\d.]/.test(next)) {
      out.push(`${args[i]}=${next}`);
      i++;
    } else {
      out.push(args[i]);
    }
  }
  return out;
}

function parseBooleanEnv(name: string, text: string): boolean {
  if (/^(1|true|yes|on)$/i.test(text)) return true;
  if (/^(0|false|no|off)$/i.test(text)) return false;
  throw new UsageError(`Invalid value "${text}" for ${name}: expected true or false`);
}

/**
 * Parses a non-negative integer flag value.
 *
 * @throws {UsageError} when the text is not an integer in `[min, max]`.
 */
export function parseIntegerFlag(
  flag: string,
  text: string | boolean | undefined,
  range: { min?: number; max?: number } = {},
): number {
  const min = range.min ?? 0;
  const max = range.max ?? Number.MAX_SAFE_INTEGER;
  const value = typeof text === "string" && /^\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    const negative = typeof text === "string" && /^\s*-\d/.test(text);
    throw new UsageError(
      `Invalid value "${text}" for --${flag}: ${
        negative ? "it cannot be negative; " : ""
      }expected an integer from ${min} to ${max}`,
    );
  }
  return value;
}

/**
 * Parses a flag whose value is one of `choices`.
 *
 * @throws {UsageError} naming the flag and the accepted values otherwise.
 */
export function parseChoiceFlag<T extends string>(
  flag: string,
  text: string | boolean | undefined,
  choices: readonly T[],
): T {
  const value = typeof text === "string" ? text.trim() : "";
  if (!(choices as readonly string[]).includes(value)) {
    throw new UsageError(
      `Invalid value "${text}" for --${flag}: expected ${choices.join("|")}`,
    );
  }
  return value as T;
}

/**
 * Returns a `getEnv` for {@linkcode parseFlags} that reads `FOO_PROXY_*` variables only when the
 * process may, so a run without `--allow-env` still works (it just ignores the environment).
 */
export function denoEnvReader(): (name: string) => string | undefined {
  return (name) => {
    try {
      if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
        return undefined;
      }
      return Deno.env.get(name);
    } catch {
      return undefined;
    }
  };
}
