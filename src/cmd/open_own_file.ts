/**
 * Opening a file the proxy writes at a path a user names (`--pid-file`, `--access-log-file`, the
 * recovery lock) without following a symbolic link planted there: whoever can write the directory
 * (`/tmp`) could otherwise point the path at any file the proxy may write, and have it overwritten
 * or appended to. Deno has no `O_NOFOLLOW`, so:
 *
 * - a new file is created with `createNew` (`O_CREAT|O_EXCL`, which never follows a link: a link
 *   already there makes it fail);
 * - an existing path is `lstat`ed first and refused when it is a symbolic link; then it is opened
 *   without `create` or `truncate` (so opening harms nothing), and the opened file's device and
 *   inode must be the ones `lstat` saw: a link swapped in between the two is refused, before a
 *   byte is written; so is a file with more than one hard link (another file's name too).
 *
 * @module
 */
import { describeFsError, kindOf } from "../proxy/read_small_file.ts";

/** The path cannot be opened as the proxy's own file; `message` names it and says why. */
export class OwnFileError extends Error {
  /** The path. */
  readonly path: string;
  /** Why, without the path (`it is a symbolic link, …`). */
  readonly reason: string;
  /** Creates the error. */
  constructor(message: string, path: string, reason: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "OwnFileError";
    this.path = path;
    this.reason = reason;
  }
}

/** Options for {@linkcode openOwnFile}. */
export interface OpenOwnFileOptions {
  /** What the file is, for messages (`pid file`). @default {"file"} */
  what?: string;
  /** Open to append (a log) instead of to read and write. @default {false} */
  append?: boolean;
  /** Refuse anything but a regular file (a FIFO, a device). @default {false} */
  regularOnly?: boolean;
  /** Permission bits of a new file. @default {0o644} */
  mode?: number;
}

/**
 * Opens `path` for writing (appending, or reading and writing), creating it when missing, never
 * through a symbolic link.
 *
 * @throws {OwnFileError} when `path` is a symbolic link, not a regular file (with
 * `regularOnly`), was replaced while opened, has another hard link, or cannot be opened (the reason
 * in the message).
 */
export async function openOwnFile(
  path: string,
  options: OpenOwnFileOptions = {},
): Promise<Deno.FsFile> {
  const what = options.what ?? "file";
  const fail = (why: string, cause?: unknown) =>
    new OwnFileError(`Cannot open ${what} "${path}": ${why}`, path, why, { cause });
  const access: Deno.OpenOptions = options.append
    ? { write: true, append: true }
    : { read: true, write: true };
  try {
    return await Deno.open(path, { ...access, createNew: true, mode: options.mode ?? 0o644 });
  } catch (error) {
    if (!(error instanceof Deno.errors.AlreadyExists)) throw fail(describeFsError(error), error);
  }
  let seen: Deno.FileInfo;
  let file: Deno.FsFile;
  try {
    seen = await Deno.lstat(path);
    if (seen.isSymlink) {
      throw fail("it is a symbolic link, which is never followed (give the file's real path)");
    }
    if (options.regularOnly && !seen.isFile) {
      throw fail(`it is ${kindOf(seen)}, not a regular file`);
    }
    file = await Deno.open(path, access);
  } catch (error) {
    if (error instanceof OwnFileError) throw error;
    throw fail(describeFsError(error), error);
  }
  try {
    const opened = await file.stat();
    if (opened.dev !== seen.dev || opened.ino !== seen.ino) {
      throw fail("it was replaced while being opened (a symbolic link swapped in?)");
    }
    // A hard link planted there (where fs.protected_hardlinks is 0) names some other file,
    // which would be truncated or appended to: checked on what was opened, before any write.
    if ((opened.nlink ?? 1) > 1) {
      throw fail(
        `it has ${opened.nlink} hard links, so it is also another file's name (remove it, or give another path)`,
      );
    }
    return file;
  } catch (error) {
    file.close();
    if (error instanceof OwnFileError) throw error;
    throw fail(describeFsError(error), error);
  }
}
