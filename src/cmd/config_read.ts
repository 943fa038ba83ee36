/**
 * Reading the proxy's `--config` file: before the flags are parsed (at start) and again on each
 * reload, always bounded (size, time, file type) and with the grant it needs named.
 *
 * @module
 */
import { missingPermissionsMessage } from "../cli/permissions.ts";
import { ConfigFileError } from "../cli/config_file.ts";
import { denoEnvReader, parseFlags, UsageError } from "../cli/flags.ts";
import { readSmallFile, SmallFileError } from "../proxy/read_small_file.ts";
import { writeStderrLine } from "./output.ts";
import { resumeAlias } from "./proxy_config.ts";
import { PROXY_FLAGS } from "./proxy_settings.ts";

/**
 * Reads the `--config` file, or says which grant is missing (and the command that has it): a
 * regular file of at most 1 MiB, read asynchronously within 5 s, so a FIFO, a device or a huge
 * file is one clear error, never a frozen or flooded process.
 */
export async function readConfigFile(path: string): Promise<string> {
  if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") {
    throw new ConfigFileError(
      missingPermissionsMessage([{
        descriptor: { name: "read", path },
        target: path,
        purpose: "config file --config",
        readOnly: true,
      }], { standalone: Deno.build.standalone, args: Deno.args }),
    );
  }
  try {
    return await readSmallFile(path, { what: "config file" });
  } catch (error) {
    if (!(error instanceof SmallFileError)) throw error;
    throw new ConfigFileError(error.message, { cause: error });
  }
}

/**
 * Reads the `--config` file `args` (or the environment) name before the flags are parsed, which is
 * synchronous; resolves with the reader the parse uses, or with exit code 2 after one line saying
 * why the file cannot be read. Flags that do not parse, `--help` and `--version` read nothing
 * (the parse then speaks).
 */
export async function readConfigBeforeParse(
  args: readonly string[],
): Promise<((path: string) => string) | number> {
  let path: string | undefined;
  try {
    const first = parseFlags(args.map(resumeAlias), PROXY_FLAGS, { getEnv: denoEnvReader() });
    if (first.help !== true && first.version !== true && typeof first.config === "string") {
      path = first.config;
    }
  } catch {
    // The parse reports the bad flag.
  }
  if (path === undefined || path === "") {
    return () => {
      throw new UsageError("--config: no way to read the file here");
    };
  }
  let text: string;
  try {
    text = await readConfigFile(path);
  } catch (error) {
    if (!(error instanceof ConfigFileError)) throw error;
    writeStderrLine(`foo-proxy: ${error.message}`);
    return 2;
  }
  return () => text;
}
