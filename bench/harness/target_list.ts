/**
 * The command-line lists that name foo-proxy targets: `--workers 1,2,auto`, `--modes
 * 1:1,pool=64,mux=2` and `--target 'mux2=--mux 2'`. Each entry becomes one foo-proxy column: a
 * key (its short name in ratio headings) and the extra proxy flags it runs with.
 *
 * @module
 */
import type { WorkerCount } from "./pinning.ts";

/** One foo-proxy column named on the command line. */
export interface FooVariant {
  /** Its short name, unique in the run: `w2`, `pool=64`, `mux2`. */
  key: string;
  /** Extra `foo-proxy proxy` flags, after the harness's own. */
  flags: string[];
  /** `--workers` when the entry came from `--workers` (pinning uses it); unset otherwise. */
  workers?: WorkerCount;
}

/**
 * Parses `--workers 1,2,auto`: whole numbers from 1, or `auto`, each at most once.
 *
 * @throws {RangeError} for anything else.
 */
export function parseWorkersList(text: string): WorkerCount[] {
  const list = text.split(",").map((word): WorkerCount => {
    const w = word.trim();
    if (w === "auto") return w;
    if (!/^[1-9]\d*$/.test(w)) {
      throw new RangeError(`Invalid --workers "${text}": expected counts from 1 or auto, e.g. 1,2`);
    }
    return Number(w);
  });
  if (new Set(list).size !== list.length) {
    throw new RangeError(`Invalid --workers "${text}": a value is repeated`);
  }
  return list;
}

/** The variants of `--workers LIST`: key `w1`, `w2`, `auto`, each with its `--workers N`. */
export function workersVariants(list: readonly WorkerCount[]): FooVariant[] {
  return list.map((w) => ({
    key: w === "auto" ? "auto" : `w${w}`,
    flags: ["--workers", String(w)],
    workers: w,
  }));
}

/**
 * Parses `--modes 1:1,pool=64,mux=2`: `1:1` is foo-proxy without extra flags, `NAME=VALUE` adds
 * `--NAME VALUE`, a bare `NAME` adds `--NAME`. The key is the entry as written.
 *
 * @throws {RangeError} on an empty entry, a malformed name or a repeated entry.
 */
export function parseModes(text: string): FooVariant[] {
  const variants = text.split(",").map((word): FooVariant => {
    const w = word.trim();
    if (w === "1:1") return { key: w, flags: [] };
    const m = /^([a-z][a-z0-9-]*)(?:=(\S+))?$/.exec(w);
    if (!m) {
      throw new RangeError(
        `Invalid --modes entry "${w}" in "${text}": expected 1:1, NAME or NAME=VALUE, e.g. pool=64`,
      );
    }
    return withWorkers({
      key: w,
      flags: m[2] === undefined ? [`--${m[1]}`] : [`--${m[1]}`, m[2]],
    });
  });
  return unique(variants, "--modes");
}

/**
 * Parses one `--target KEY=FLAGS` (e.g. `mux2=--mux 2`): KEY names the column, FLAGS are split on
 * whitespace and passed to `foo-proxy proxy` as they are (none: plain foo-proxy).
 *
 * @throws {RangeError} on a missing or malformed key, or a flag word that is not a flag or value.
 */
export function parseTarget(text: string): FooVariant {
  const eq = text.indexOf("=");
  const key = eq < 0 ? "" : text.slice(0, eq).trim();
  if (!/^[A-Za-z0-9][\w:.+-]*$/.test(key)) {
    throw new RangeError(
      `Invalid --target "${text}": expected KEY=FLAGS, e.g. 'mux2=--mux 2' (KEY: letters, digits, ._:+-)`,
    );
  }
  const flags = text.slice(eq + 1).split(/\s+/).filter((f) => f !== "");
  if (flags.length > 0 && !flags[0].startsWith("-")) {
    throw new RangeError(`Invalid --target "${text}": the flags must start with a flag`);
  }
  return withWorkers({ key, flags });
}

/** Takes `--workers N` (or `--workers=N`) among a variant's flags as its worker count (pinning). */
function withWorkers(variant: FooVariant): FooVariant {
  const flags = variant.flags;
  for (let i = 0; i < flags.length; i++) {
    const value = flags[i] === "--workers"
      ? flags[i + 1]
      : flags[i].startsWith("--workers=")
      ? flags[i].slice("--workers=".length)
      : undefined;
    if (value === undefined) continue;
    const [workers] = parseWorkersList(value);
    return { ...variant, workers };
  }
  return variant;
}

/**
 * Every foo-proxy variant named by `--workers`, `--modes` and `--target`, in that order; one plain
 * `foo-proxy` when none is named.
 *
 * @throws {RangeError} when two entries share a key, or a key is one the harness uses itself.
 */
export function fooVariants(
  options: { workers?: string; modes?: string; targets?: readonly string[] },
): FooVariant[] {
  const all = [
    ...(options.workers === undefined ? [] : workersVariants(parseWorkersList(options.workers))),
    ...(options.modes === undefined ? [] : parseModes(options.modes)),
    ...(options.targets ?? []).map(parseTarget),
  ];
  if (all.length === 0) return [{ key: "foo-proxy", flags: [] }];
  for (const v of all) {
    if (RESERVED_KEYS.has(v.key)) {
      throw new RangeError(
        `Invalid target name "${v.key}": the harness uses it for its own column`,
      );
    }
  }
  return unique(all, "targets");
}

/** Column keys of targets the harness adds itself. */
const RESERVED_KEYS = new Set(["direct", "haproxy", "watched"]);

function unique(variants: FooVariant[], what: string): FooVariant[] {
  const seen = new Set<string>();
  for (const v of variants) {
    if (seen.has(v.key)) throw new RangeError(`Invalid ${what}: "${v.key}" is named twice`);
    seen.add(v.key);
  }
  return variants;
}
