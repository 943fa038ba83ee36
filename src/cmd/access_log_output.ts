/**
 * The access log of `foo-proxy proxy` (`--access-log`, `--access-log-file`): stderr's writer, or
 * a file appended to through a bounded writer, reopened on SIGHUP (logrotate).
 *
 * @module
 */
import { describeError } from "../net/describe_error.ts";
import { LineWriter } from "./line_writer.ts";
import { openOwnFile, OwnFileError } from "./open_own_file.ts";
import type { ProxyConfig } from "./proxy_config.ts";

/** An open access log: its writer, and how to reopen or close its file. */
export interface AccessLogOutput {
  writer: LineWriter;
  reopen: () => Promise<void>;
  close: () => Promise<void>;
}

/**
 * Opens `path` to append to, never through a symbolic link (one planted there would have its
 * target appended to), giving up after `ms`: opening a FIFO nobody reads waits for a reader for
 * ever (and a start that waits can be stopped by no signal). An open that completes after that
 * is closed.
 */
async function openLogFile(path: string, ms = 5000): Promise<Deno.FsFile> {
  const opening = openOwnFile(path, { what: "access log", append: true }).catch((error) => {
    throw error instanceof OwnFileError ? new Error(error.reason, { cause: error }) : error;
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`opening it took over ${ms / 1000} s (a FIFO that nobody reads?)`)),
      ms,
    );
  });
  try {
    return await Promise.race([opening, late]);
  } catch (error) {
    opening.then((f) => f.close(), () => {});
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** Opens the access log: stderr's writer, or `--access-log-file` appended to. */
export async function openAccessLog(
  config: ProxyConfig,
  output: { stderr: LineWriter },
  warn: (message: string) => void,
): Promise<AccessLogOutput> {
  const path = config.accessLogFile;
  if (path === null) {
    return {
      writer: output.stderr,
      reopen: () => Promise.resolve(),
      close: () => Promise.resolve(),
    };
  }
  let file = await openLogFile(path);
  const writer = new LineWriter((bytes) => file.write(bytes), {
    coalesceMs: 10,
    onError: (error) =>
      warn(
        `Access log: writing to ${path} failed (${describeError(error)}); ` +
          "lines are dropped (access_log_lines_dropped) until SIGHUP reopens it",
      ),
  });
  return {
    writer,
    reopen: async () => {
      let next: Deno.FsFile;
      try {
        next = await openLogFile(path);
      } catch (error) {
        warn(
          `Access log: cannot reopen ${path} (${describeError(error)}); still writing the old file`,
        );
        return;
      }
      await writer.flush(1000);
      const old = file;
      file = next;
      writer.resume(); // a failed write (full disk) is retried on the new file
      try {
        old.close();
      } catch {
        // Closed already.
      }
    },
    close: async () => {
      await writer.flush(1000);
      try {
        file.close();
      } catch {
        // Closed already.
      }
    },
  };
}
