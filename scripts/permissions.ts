/**
 * The ONE list of permissions foo-proxy runs with, shared by `deno task start` and every
 * `deno compile` command of `scripts/release.ts`.
 *
 * The list lives in exactly one place: the `start` task of `deno.json`
 * (`deno run --allow-net --allow-env=FOO_PROXY_* … src/main.ts proxy`). A task string cannot import
 * TypeScript, so this module reads that task and hands its permission flags to the release
 * script: the compiled binaries bake in exactly what `deno task start` grants, by construction.
 *
 * Why these flags: listen, forward, HTTP and health addresses are only known at run time, so
 * `--allow-net` is unrestricted and the proxy's start-up preflight (`src/cli/permissions.ts`)
 * names any address a narrower grant leaves out. `FOO_PROXY_*` are the only variables read.
 * Read/write are granted only for a recovery directory, when one is asked for
 * ({@linkcode recoveryPermissionFlags}). Never `-A`, `--allow-run`, `--allow-ffi`, `--allow-sys`.
 *
 * @module
 */
import denoConfig from "../deno.json" with { type: "json" };

/** Permission flags foo-proxy must never be given, in any spelling Deno accepts. */
export const FORBIDDEN_PERMISSION_FLAGS: readonly string[] = [
  "-A",
  "--allow-all",
  "--allow-run",
  "--allow-ffi",
  "--allow-sys",
  "-S",
];

/** A permission set that breaks the rules above (or a start task that cannot be read). */
export class PermissionPolicyError extends Error {
  /** Creates the error; `message` names the offending flag. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PermissionPolicyError";
  }
}

/**
 * Splits a command line into words like a POSIX shell (and `deno task`) would: whitespace
 * separates words; single quotes keep everything literal; double quotes keep spaces; a backslash
 * escapes the next character outside single quotes.
 *
 * @throws {SyntaxError} for an unterminated quote.
 */
export function splitCommandLine(text: string): string[] {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  let quote: "'" | '"' | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote === "'") {
      if (c === "'") quote = undefined;
      else word += c;
    } else if (quote === '"') {
      if (c === '"') quote = undefined;
      else if (c === "\\" && i + 1 < text.length) word += text[++i];
      else word += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      inWord = true;
    } else if (c === "\\" && i + 1 < text.length) {
      word += text[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(word);
      word = "";
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (quote) throw new SyntaxError(`Unterminated ${quote} quote in: ${text}`);
  if (inWord) words.push(word);
  return words;
}

/** Quotes `word` for a POSIX shell only when it needs it, so printed commands can be pasted. */
export function shellQuote(word: string): string {
  if (word !== "" && /^[\w@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Whether `arg` is a Deno permission flag (`--allow-*`, `--deny-*`, `--ignore-*`, `-A`, `-N`…). */
export function isPermissionFlag(arg: string): boolean {
  return /^--(allow|deny|ignore)-[a-z]+(=|$)/.test(arg) || /^-[ARWNESIP](=|$)/.test(arg) ||
    /^--permission-set(=|$)/.test(arg) || arg === "--no-prompt";
}

/**
 * The permission flags in `words` (a `deno run …` command split into words), in order, stopping
 * at the script: flags after it belong to the program.
 */
export function permissionFlagsOf(words: readonly string[]): string[] {
  const flags: string[] = [];
  for (const word of words.slice(2)) {
    if (!word.startsWith("-")) break;
    if (isPermissionFlag(word)) flags.push(word);
  }
  return flags;
}

/**
 * Throws when `flags` grant something foo-proxy must never have.
 *
 * @throws {PermissionPolicyError} naming the forbidden flag.
 */
export function assertPermissionPolicy(flags: readonly string[]): void {
  for (const flag of flags) {
    const name = flag.split("=")[0];
    if (FORBIDDEN_PERMISSION_FLAGS.includes(name)) {
      throw new PermissionPolicyError(
        `Forbidden permission flag "${flag}": foo-proxy needs only net, env FOO_PROXY_* and ` +
          `read/write of its recovery directory`,
      );
    }
  }
}

/** The parts of `deno.json` this module reads. */
export interface TaskConfig {
  /** `deno.json` tasks, by name. */
  tasks: Record<string, string>;
}

/**
 * The permission flags of the `start` task of `config` (default: this repository's deno.json):
 * the flags every compiled binary bakes in.
 *
 * @throws {PermissionPolicyError} when the task is missing, is not `deno run …`, or grants a
 * forbidden permission.
 */
export function startPermissionFlags(config: TaskConfig = denoConfig): string[] {
  const task = config.tasks.start;
  const words = task === undefined ? [] : splitCommandLine(task);
  if (words[0] !== "deno" || words[1] !== "run") {
    throw new PermissionPolicyError(
      `The "start" task of deno.json must be "deno run <permission flags> src/main.ts proxy", ` +
        `got: ${task}`,
    );
  }
  // `deno task start` may read ./examples (to try examples/foo-proxy.jsonc from a clone) and
  // ./src (the data-plane workers are loaded from it); a binary runs anywhere, where those
  // relative grants mean nothing, and embeds its modules: they are not baked in.
  const flags = permissionFlagsOf(words).filter((f) => f !== START_READ);
  assertPermissionPolicy(flags);
  return flags;
}

/**
 * The start task's read grant: the examples directory and the source tree the data-plane Worker
 * modules load from (neither baked into binaries).
 */
export const START_READ = "--allow-read=examples,src";

/**
 * The `--unstable-*` flags of the `start` task of `config` (default: this repository's
 * deno.json): `--unstable-net`, which the data-plane workers need to share the port
 * (`SO_REUSEPORT`); every compiled binary bakes them in as well.
 */
export function startUnstableFlags(config: TaskConfig = denoConfig): string[] {
  const words = config.tasks.start === undefined ? [] : splitCommandLine(config.tasks.start);
  const flags: string[] = [];
  for (const word of words.slice(2)) {
    if (!word.startsWith("-")) break;
    if (word.startsWith("--unstable-")) flags.push(word);
  }
  return flags;
}

/**
 * The `--v8-flags=…` words of the `start` task of `config` (default: this repository's deno.json),
 * in order: runtime tuning (e.g. the young-generation cap that keeps idle connections small, see
 * README "Benchmarks") that every compiled binary bakes in as well.
 */
export function startV8Flags(config: TaskConfig = denoConfig): string[] {
  const words = config.tasks.start === undefined ? [] : splitCommandLine(config.tasks.start);
  const flags: string[] = [];
  for (const word of words.slice(2)) {
    if (!word.startsWith("-")) break;
    if (word.startsWith("--v8-flags=")) flags.push(word);
  }
  return flags;
}

/**
 * The flags that let the proxy keep its recovery file in `directory`: read and write of that
 * directory only (the file is replaced through a temporary file beside it).
 */
export function recoveryPermissionFlags(directory: string): string[] {
  return [`--allow-read=${directory}`, `--allow-write=${directory}`];
}

/**
 * `flags` with an unrestricted `--allow-net` narrowed to `hosts` (`host:port` or `host`), for a
 * binary that may reach only known addresses.
 *
 * @throws {PermissionPolicyError} when `flags` carry no `--allow-net` to narrow.
 */
export function narrowNetFlags(flags: readonly string[], hosts: readonly string[]): string[] {
  const i = flags.findIndex((f) => f === "--allow-net" || f.startsWith("--allow-net="));
  if (i < 0) throw new PermissionPolicyError("No --allow-net flag to narrow");
  return flags.with(i, `--allow-net=${hosts.join(",")}`);
}
