/**
 * Builds foo-proxy binaries with `deno compile`: `compile` makes `dist/foo-proxy` for this
 * machine, `release` makes `dist/foo-proxy-<target>[.exe]` for every supported target and
 * `dist/SHA256SUMS`. Each binary bakes in exactly the permission flags and `--v8-flags` of
 * `deno task start` (see `scripts/permissions.ts`) and the version of deno.json (`src/version.ts`
 * imports it).
 *
 * `deno compile` downloads its runtime (denort) for each target; offline, supply it with
 * `DENORT_BIN=/path/to/denort` (one target) or put `denort-<target>.zip` into Deno's download
 * cache (`$DENO_DIR/dl/release/v<deno version>/`).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { VERSION } from "../src/version.ts";
import {
  narrowNetFlags,
  PermissionPolicyError,
  recoveryPermissionFlags,
  shellQuote,
  startPermissionFlags,
  startUnstableFlags,
  startV8Flags,
} from "./permissions.ts";

/** Every target `deno task release` builds, in release order. */
export const RELEASE_TARGETS: readonly string[] = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
];

/** The module every binary starts at (relative to the repository root). */
export const ENTRY = "src/main.ts";

/** The data-plane Worker module: not reached by a static import, so embedded by `--include`. */
export const WORKER_MODULE = "src/cmd/plane_worker.ts";

/** Usage text of this script. */
export const RELEASE_USAGE =
  `Usage: deno task compile [flags]   (one binary for this machine: dist/foo-proxy)
       deno task release [flags]   (every target + dist/SHA256SUMS)

Flags:
  --dry-run             print the deno compile commands, one a line, and run nothing
  --target TRIPLE       build only this target (repeatable); one of:
                        ${RELEASE_TARGETS.join(", ")}
  --out-dir DIR         where binaries go                        (default dist)
  --allow-net=HOSTS     bake in net access to HOSTS only (host:port,…) instead of any address
  --recovery-dir DIR    bake in read/write of DIR, for --recovery-path DIR/<file>
  --allow-read=PATHS    bake in read of PATHS only (absolute files or directories, comma-separated):
                        the TLS files (--tls-cert, --tls-key, --upstream-ca, --upstream-cert,
                        --upstream-key), a --config file, the tools' --ca
  -h, --help            print this help

Offline: set DENORT_BIN=/path/to/denort (Deno ${Deno.version.deno}'s runtime for the one target you
build), or put denort-<target>.zip into $DENO_DIR/dl/release/v${Deno.version.deno}/.`;

/** One `deno compile` run. */
export interface CompileStep {
  /** The target triple, or undefined for this machine's own. */
  target: string | undefined;
  /** Output path, relative to the repository root unless absolute. */
  output: string;
  /** The whole command line, the deno executable first. */
  argv: string[];
}

/** Options for {@linkcode planCompile}. */
export interface PlanOptions {
  /** Targets to build; unset or empty: this machine's (`compile`) or all (`release`). */
  targets?: readonly string[];
  /** Output directory. @default {"dist"} */
  outDir?: string;
  /** Narrow the baked-in `--allow-net` to these hosts; unset or empty: any address. */
  netHosts?: readonly string[];
  /** Bake in read/write of this directory; unset: no file access at all. */
  recoveryDir?: string;
  /**
   * Bake in read (only) of these absolute paths, files or directories: TLS files, a config file.
   * Unset or empty: none.
   */
  readPaths?: readonly string[];
  /** Permission flags to start from; unset: those of `deno task start`. */
  permissionFlags?: readonly string[];
  /** The deno executable; unset: the one running this script. */
  deno?: string;
  /** `--v8-flags=…` to bake in; unset: those of `deno task start`. */
  v8Flags?: readonly string[];
}

/**
 * The `deno compile` commands for `mode` (`compile` or `release`).
 *
 * @throws {RangeError} for an unknown target, or a read path that is not absolute.
 * @throws {PermissionPolicyError} when the permission flags break the policy.
 */
export function planCompile(mode: "compile" | "release", options: PlanOptions = {}): CompileStep[] {
  const outDir = (options.outDir ?? "dist").replace(/\/+$/, "");
  let flags = [...(options.permissionFlags ?? startPermissionFlags())];
  if (options.netHosts?.length) flags = narrowNetFlags(flags, options.netHosts);
  if (options.recoveryDir) flags.push(...recoveryPermissionFlags(options.recoveryDir));
  if (options.readPaths?.length) flags = withReadPaths(flags, options.readPaths);
  const deno = options.deno ?? Deno.execPath();
  const v8Flags = options.v8Flags ?? startV8Flags();
  const targets: (string | undefined)[] = options.targets?.length
    ? [...options.targets]
    : mode === "release"
    ? [...RELEASE_TARGETS]
    : [undefined];
  return targets.map((target) => {
    if (target !== undefined && !RELEASE_TARGETS.includes(target)) {
      throw new RangeError(
        `Unknown target "${target}": expected one of ${RELEASE_TARGETS.join(", ")}`,
      );
    }
    const windows = (target ?? Deno.build.target).includes("windows");
    const output = `${outDir}/foo-proxy${target ? `-${target}` : ""}${windows ? ".exe" : ""}`;
    const targetFlags = target ? ["--target", target] : [];
    return {
      target,
      output,
      argv: [
        deno,
        "compile",
        ...flags,
        ...startUnstableFlags(),
        ...v8Flags,
        "--include",
        WORKER_MODULE,
        ...targetFlags,
        "--output",
        output,
        ENTRY,
      ],
    };
  });
}

/**
 * `flags` with read access to `paths` added to their one `--allow-read=` list (made if missing):
 * one list, whatever Deno does with a repeated flag.
 *
 * @throws {RangeError} for a relative path (a binary runs from any directory, where it would
 * name another file) or one holding a comma (the list's separator).
 */
export function withReadPaths(flags: readonly string[], paths: readonly string[]): string[] {
  for (const path of paths) {
    if (!path.startsWith("/") && !/^[A-Za-z]:[\\/]/.test(path)) {
      throw new RangeError(
        `--allow-read: "${path}" is not an absolute path (a binary runs from any directory, where a relative path names another file)`,
      );
    }
    if (path.includes(",")) {
      throw new RangeError(`--allow-read: "${path}" holds a comma, which separates the paths`);
    }
  }
  const i = flags.findIndex((f) => f.startsWith("--allow-read="));
  if (i < 0) return [...flags, `--allow-read=${paths.join(",")}`];
  return flags.with(i, `${flags[i]},${paths.join(",")}`);
}

/** The paths of (repeatable) `--allow-read=A,B` values, in order; empty entries dropped. */
export function readPathList(values: readonly string[] | undefined): string[] | undefined {
  return values?.flatMap((list) => list.split(",")).filter((p) => p !== "");
}

/**
 * Runs `plan`; a {@linkcode RangeError} or {@linkcode PermissionPolicyError} (a bad flag) becomes
 * one stderr line `<script>: <message>` and `undefined` (exit 2); other errors propagate.
 */
export function planOrReport<T>(script: string, plan: () => T): T | undefined {
  try {
    return plan();
  } catch (error) {
    if (error instanceof RangeError || error instanceof PermissionPolicyError) {
      writeStderrLine(`${script}: ${error.message}`);
      return undefined;
    }
    throw error;
  }
}

/** `argv` as one line a POSIX shell runs unchanged. */
export function formatCommand(argv: readonly string[]): string {
  return argv.map(shellQuote).join(" ");
}

/** Where Deno caches the runtime of `target` (under `denoDir`), which makes compiling offline. */
export function denortCachePath(denoDir: string, target: string): string {
  return `${denoDir}/dl/release/v${Deno.version.deno}/denort-${target}.zip`;
}

/** Options for {@linkcode explainCompileFailure}. */
export interface ExplainOptions {
  /** The target that failed (this machine's when unset). */
  target?: string;
  /** Deno's cache directory, for the offline hint; unset: `$DENO_DIR`. */
  denoDir?: string;
}

/**
 * One line explaining a `deno compile` failure whose cause is the runtime (denort): it could not
 * be downloaded, or `DENORT_BIN` points nowhere. Undefined for other failures (type errors…),
 * whose own output says more.
 */
export function explainCompileFailure(
  stderr: string,
  options: ExplainOptions = {},
): string | undefined {
  const target = options.target ?? Deno.build.target;
  const missing = /Could not find denort at '([^']*)'/.exec(stderr);
  if (missing) {
    return `deno compile: DENORT_BIN="${missing[1]}" does not exist; point it at the denort ` +
      `binary of Deno ${Deno.version.deno} for ${target}`;
  }
  const zip = /denort-[\w-]+\.zip/.exec(stderr);
  if (zip || /Setting up base binary/.test(stderr)) {
    const cacheDir = denortCachePath(options.denoDir ?? "$DENO_DIR", target).replace(/[^/]*$/, "");
    const name = zip?.[0] ?? `denort-${target}.zip`;
    return `deno compile cannot download its runtime ${name} (offline?); supply it: ` +
      `DENORT_BIN=/path/to/denort deno task compile (the denort of Deno ${Deno.version.deno} ` +
      `for ${target}), or put ${name} in ${cacheDir}`;
  }
  return undefined;
}

/** `sha256sum`-compatible lines (`<hex>  <name>`) for `files` (name → bytes), sorted by name. */
export async function sha256Sums(
  files: ReadonlyMap<string, Uint8Array<ArrayBuffer>>,
): Promise<string> {
  const lines: string[] = [];
  for (const name of [...files.keys()].sort()) {
    const digest = await crypto.subtle.digest("SHA-256", files.get(name)!);
    const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
    lines.push(`${hex}  ${name}`);
  }
  return lines.map((line) => line + "\n").join("");
}

async function denoDirectory(deno: string): Promise<string | undefined> {
  try {
    const { stdout } = await new Deno.Command(deno, { args: ["info", "--json"], stderr: "null" })
      .output();
    return JSON.parse(new TextDecoder().decode(stdout)).denoDir;
  } catch {
    return undefined;
  }
}

/** Runs a binary built for this machine with `--version`; returns what is wrong, if anything. */
async function checkVersion(binary: URL): Promise<string | undefined> {
  const expected = `foo-proxy ${VERSION}`;
  try {
    const { stdout } = await new Deno.Command(binary, {
      args: ["--version"],
      stdin: "null",
      stderr: "null",
    }).output();
    const got = new TextDecoder().decode(stdout).trim().split("\n")[0];
    if (got === expected) return undefined;
    return `--version printed "${got}", not "${expected}": DENORT_BIN is not a denort runtime?`;
  } catch (error) {
    return `cannot be run: ${(error as Error).message}`;
  }
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** Runs the script with `args`; resolves with the exit code. */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        "dry-run": { type: "boolean" },
        target: { type: "string", multiple: true },
        "out-dir": { type: "string" },
        "allow-net": { type: "string" },
        "recovery-dir": { type: "string" },
        "allow-read": { type: "string", multiple: true },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    writeStderrLine(`release: ${(error as Error).message.split("\n")[0]} (see --help)`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    writeStdoutLine(RELEASE_USAGE);
    return 0;
  }
  const mode = positionals[0];
  if ((mode !== "compile" && mode !== "release") || positionals.length > 1) {
    writeStderrLine(
      `release: expected "compile" or "release", got "${positionals.join(" ")}" (see --help)`,
    );
    return 2;
  }
  const root = new URL("../", import.meta.url);
  const steps = planOrReport("release", () =>
    planCompile(mode, {
      targets: values.target,
      outDir: values["out-dir"],
      netHosts: values["allow-net"]?.split(",").filter((h) => h !== ""),
      recoveryDir: values["recovery-dir"],
      readPaths: readPathList(values["allow-read"]),
    }));
  if (steps === undefined) return 2;
  if (values["dry-run"]) {
    for (const step of steps) writeStdoutLine(formatCommand(step.argv));
    return 0;
  }
  const deno = steps[0].argv[0];
  if (Deno.env.get("DENORT_BIN") && steps.length > 1) {
    const cache = denortCachePath((await denoDirectory(deno)) ?? "$DENO_DIR", "<target>");
    writeStderrLine(
      `release: DENORT_BIN is one runtime for one target; build one at a time with --target, ` +
        `or unset it and put each denort-<target>.zip at ${cache}`,
    );
    return 2;
  }

  const built = new Map<string, Uint8Array<ArrayBuffer>>();
  for (const step of steps) {
    const label = step.target ?? `${Deno.build.target}, this machine`;
    writeStderrLine(`release: building ${step.output} (${label}), foo-proxy ${VERSION}`);
    const { code, stderr } = await new Deno.Command(deno, {
      args: step.argv.slice(1),
      cwd: root,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" }, // plain text to classify and to pass on
    }).output();
    if (code !== 0) {
      const text = new TextDecoder().decode(stderr);
      const line = explainCompileFailure(text, {
        target: step.target,
        denoDir: await denoDirectory(deno),
      });
      if (line) {
        writeStderrLine(`release: ${line}`);
      } else {
        writeStderrLine(text.trimEnd());
        writeStderrLine(`release: deno compile failed for ${label} (exit ${code})`);
      }
      return 1;
    }
    const bytes = await Deno.readFile(new URL(step.output, root));
    built.set(baseName(step.output), bytes);
    writeStderrLine(`release: wrote ${step.output} (${(bytes.length / 1e6).toFixed(1)} MB)`);
    if (step.target === undefined || step.target === Deno.build.target) {
      const problem = await checkVersion(new URL(step.output, root));
      if (problem) {
        await Deno.remove(new URL(step.output, root)); // never leave a broken binary behind
        writeStderrLine(`release: ${step.output} ${problem}; removed it`);
        return 1;
      }
    }
  }
  if (mode === "release") {
    const outDir = steps[0].output.slice(0, steps[0].output.lastIndexOf("/"));
    await Deno.writeTextFile(new URL(`${outDir}/SHA256SUMS`, root), await sha256Sums(built));
    writeStderrLine(`release: wrote ${outDir}/SHA256SUMS`);
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
