/**
 * `deno task install`: puts a `foo-proxy` command on the PATH from a clone, with
 * `deno install --global`, granting exactly what `deno task start` and the compiled binaries grant
 * (`scripts/permissions.ts`: net, `FOO_PROXY_*`, `--unstable-net` for `--workers`, the
 * `--v8-flags`) plus read of this clone's `src/` (absolute: the command runs from any directory,
 * and the data-plane Worker modules load from there). The command runs this clone's code: moving
 * or deleting the clone breaks it (`deno task compile` makes a self-contained binary instead).
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { startPermissionFlags, startUnstableFlags, startV8Flags } from "./permissions.ts";
import { ENTRY, formatCommand, planOrReport, readPathList, withReadPaths } from "./release.ts";

/** Usage text of this script. */
export const INSTALL_USAGE = `Usage: deno task install [flags]

Installs the foo-proxy command (deno install --global) with the permissions of the binaries.

Flags:
  --dry-run             print the deno install command and run nothing
  --root DIR            install into DIR/bin (default: $DENO_INSTALL_ROOT, else ~/.deno)
  --recovery-dir DIR    also grant read/write of DIR, for --recovery-path DIR/<file>
  --allow-read=PATHS    also grant read of PATHS (absolute, comma-separated): TLS files, --config
  -h, --help            print this help`;

/** Options for {@linkcode planInstall}. */
export interface InstallOptions {
  /** The repository root (absolute path); unset: this clone's. */
  repo?: string;
  /** `--root` of `deno install`; unset: Deno's default. */
  root?: string;
  /** Grant read/write of this directory as well. */
  recoveryDir?: string;
  /** Grant read of these absolute paths as well. */
  readPaths?: readonly string[];
  /** The deno executable; unset: the one running this script. */
  deno?: string;
}

/**
 * The `deno install --global` command line, the deno executable first.
 *
 * @throws {RangeError} for a read path that is not absolute.
 * @throws {PermissionPolicyError} when the start task's flags break the policy.
 */
export function planInstall(options: InstallOptions = {}): string[] {
  const repo = (options.repo ?? fileURLToPath(new URL("../", import.meta.url))).replace(/\/+$/, "");
  const recovery = options.recoveryDir ? [options.recoveryDir] : [];
  // One --allow-read list (src, the read paths, the recovery directory), whatever Deno does with
  // a repeated flag.
  const flags = [
    ...withReadPaths(startPermissionFlags(), [
      `${repo}/src`,
      ...(options.readPaths ?? []),
      ...recovery,
    ]),
    ...recovery.map((dir) => `--allow-write=${dir}`),
    ...startUnstableFlags(),
    ...startV8Flags(),
  ];
  return [
    options.deno ?? Deno.execPath(),
    "install",
    "--global",
    "--force",
    "--name",
    "foo-proxy",
    ...(options.root ? ["--root", options.root] : []),
    // The import map (npm: dependencies) lives there; deno install ignores it unless named.
    "--config",
    `${repo}/deno.json`,
    ...flags,
    `${repo}/${ENTRY}`,
  ];
}

/** Runs the script with `args`; resolves with the exit code. */
export async function main(args: string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args,
      strict: true,
      options: {
        "dry-run": { type: "boolean" },
        root: { type: "string" },
        "recovery-dir": { type: "string" },
        "allow-read": { type: "string", multiple: true },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (error) {
    writeStderrLine(`install: ${(error as Error).message.split("\n")[0]} (see --help)`);
    return 2;
  }
  if (values.help) {
    writeStdoutLine(INSTALL_USAGE);
    return 0;
  }
  const argv = planOrReport("install", () =>
    planInstall({
      root: values.root,
      recoveryDir: values["recovery-dir"],
      readPaths: readPathList(values["allow-read"]),
    }));
  if (argv === undefined) return 2;
  writeStdoutLine(formatCommand(argv));
  if (values["dry-run"]) return 0;
  const { code } = await new Deno.Command(argv[0], { args: argv.slice(1), stdin: "null" })
    .spawn().status;
  return code;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
