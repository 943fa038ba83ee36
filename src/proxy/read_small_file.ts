/**
 * Reading a small file a user names (`--config`, the recovery file) without letting it freeze or
 * flood the process: only a regular file is opened (a FIFO with no writer would block the read
 * for ever, `/dev/zero` never ends), its size is capped before and while reading, the read is
 * asynchronous and has a deadline, and every failure is one {@linkcode SmallFileError} whose
 * message says what the file is and why it was refused.
 *
 * @module
 */
import { systemTimers, type Timers } from "../async/timers.ts";

/** Why {@linkcode readSmallFile} refused or failed. */
export type SmallFileProblem =
  | "missing"
  | "not_regular"
  | "too_large"
  | "timeout"
  | "not_utf8"
  | "unreadable";

/** A small file could not be read; `message` names the file, what it is used for and why. */
export class SmallFileError extends Error {
  /** The path that was read. */
  readonly path: string;
  /** The kind of failure (a missing file is often not an error for the caller). */
  readonly problem: SmallFileProblem;
  /** Creates the error; `message` says what went wrong, in the Deno style. */
  constructor(message: string, path: string, problem: SmallFileProblem, options?: ErrorOptions) {
    super(message, options);
    this.name = "SmallFileError";
    this.path = path;
    this.problem = problem;
  }
}

/** The default size cap: 1 MiB, far above any config or recovery file this project writes. */
export const SMALL_FILE_MAX_BYTES = 1024 * 1024;

/** Options for {@linkcode readSmallFile}. */
export interface ReadSmallFileOptions {
  /** What the file is, for messages (`config file`). @default {"file"} */
  what?: string;
  /** Largest size accepted, in bytes. @default {SMALL_FILE_MAX_BYTES} */
  maxBytes?: number;
  /** Longest time for the whole read (stat, open, read), in ms. @default {5000} */
  timeoutMs?: number;
  /** Timers for the deadline (tests pass fake ones). @default {systemTimers} */
  timers?: Timers;
  /** How the file is opened (tests pass one that never answers). @default {Deno.open} */
  open?: (path: string, options: Deno.OpenOptions) => Promise<Deno.FsFile>;
}

/**
 * Reads the UTF-8 text of the regular file at `path` (a symlink to one is followed), at most
 * `maxBytes` of it, within `timeoutMs`.
 *
 * @throws {SmallFileError} when the file is missing, not a regular file (FIFO, device, directory,
 * socket), larger than the cap (or grows past it while read), not UTF-8, unreadable, or not read
 * within the deadline. A read that outlives its deadline is left to finish in the background and
 * its file is closed then.
 */
export async function readSmallFile(
  path: string,
  options: ReadSmallFileOptions = {},
): Promise<string> {
  const what = options.what ?? "file";
  const maxBytes = options.maxBytes ?? SMALL_FILE_MAX_BYTES;
  const timeoutMs = options.timeoutMs ?? 5000;
  const timers = options.timers ?? systemTimers;
  const fail = (why: string, problem: SmallFileProblem, cause?: unknown) =>
    new SmallFileError(`Cannot read ${what} "${path}": ${why}`, path, problem, { cause });
  const reading = readCapped(path, maxBytes, options.open ?? Deno.open, fail);
  reading.catch(() => {}); // after the deadline nobody awaits it
  let timer: unknown;
  const late = new Promise<never>((_, reject) => {
    timer = timers.setTimeout(
      () =>
        reject(fail(
          `reading it took over ${formatSeconds(timeoutMs)} (a stalled disk or network mount?)`,
          "timeout",
        )),
      timeoutMs,
    );
  });
  let bytes: Uint8Array;
  try {
    bytes = await Promise.race([reading, late]);
  } finally {
    timers.clearTimeout(timer);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (error) {
    throw fail("it is not UTF-8 text", "not_utf8", error);
  }
}

type Fail = (why: string, problem: SmallFileProblem, cause?: unknown) => SmallFileError;

async function readCapped(
  path: string,
  maxBytes: number,
  open: NonNullable<ReadSmallFileOptions["open"]>,
  fail: Fail,
): Promise<Uint8Array> {
  const checkInfo = (info: Deno.FileInfo) => {
    if (!info.isFile) throw fail(`it is ${kindOf(info)}, not a regular file`, "not_regular");
    if (info.size > maxBytes) {
      throw fail(
        `it is ${formatBytes(info.size)}, over the ${formatBytes(maxBytes)} limit`,
        "too_large",
      );
    }
  };
  let file: Deno.FsFile;
  try {
    // Look before opening: opening a FIFO that has no writer blocks until one comes.
    checkInfo(await Deno.stat(path));
    file = await open(path, { read: true });
  } catch (error) {
    throw asSmallFileError(error, fail);
  }
  try {
    // What was opened may not be what was looked at (replaced in between).
    checkInfo(await file.stat());
    const chunks: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      const buffer = new Uint8Array(Math.min(64 * 1024, maxBytes + 1 - total));
      const n = await file.read(buffer);
      if (n === null) break;
      chunks.push(buffer.subarray(0, n));
      total += n;
      if (total > maxBytes) {
        throw fail(`it grew past the ${formatBytes(maxBytes)} limit while read`, "too_large");
      }
    }
    const out = new Uint8Array(total);
    let offset = 0;
    for (const chunk of chunks) {
      out.set(chunk, offset);
      offset += chunk.length;
    }
    return out;
  } catch (error) {
    throw asSmallFileError(error, fail);
  } finally {
    try {
      file.close();
    } catch {
      // Closed already.
    }
  }
}

function asSmallFileError(error: unknown, fail: Fail): SmallFileError {
  if (error instanceof SmallFileError) return error;
  if (error instanceof Deno.errors.NotFound) return fail("no such file", "missing", error);
  return fail(describeFsError(error), "unreadable", error);
}

/** What a non-regular file is, for a message: `a FIFO`, `a character device`, … */
export function kindOf(info: Deno.FileInfo): string {
  if (info.isDirectory) return "a directory";
  if (info.isFifo) return "a FIFO";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  if (info.isSocket) return "a socket";
  if (info.isSymlink) return "a symbolic link";
  return info.isFile ? "a regular file" : "not a regular file";
}

/**
 * The short form of a file-system error: `No such file or directory (os error 2): readfile '/x'`
 * becomes `no such file or directory`.
 */
export function describeFsError(error: unknown): string {
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (error instanceof Deno.errors.NotCapable) {
    return "not permitted (missing --allow-read or --allow-write)";
  }
  if (error instanceof Error) {
    return error.message.replace(/\s*\(os error \d+\).*$/, "").replace(
      /^./,
      (c) => c.toLowerCase(),
    );
  }
  return String(error);
}

function formatBytes(n: number): string {
  if (n >= 1024 * 1024) return `${+(n / 1024 / 1024).toFixed(1)} MiB`;
  if (n >= 1024) return `${+(n / 1024).toFixed(1)} KiB`;
  return `${n} bytes`;
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}
