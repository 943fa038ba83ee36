/**
 * `--pid-file FILE`: the proxy's process id in a file, for `kill -USR2 $(cat FILE)`. The file is
 * locked (an advisory `flock`) for the life of the process, so a second proxy given the same
 * file is refused while the first runs, and a file left by a crashed proxy (nobody holds its
 * lock) is simply taken over. The same lock guards the recovery file (`FILE.lock`).
 *
 * The path is never followed through a symbolic link (see `open_own_file.ts`): a link planted
 * there is refused instead of having its target overwritten.
 *
 * @module
 */
import { readSmallFile } from "../proxy/read_small_file.ts";
import { openOwnFile, OwnFileError } from "./open_own_file.ts";

/** The pid file cannot be used. */
export class PidFileError extends Error {
  /** Creates the error; `message` names the file and the reason. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PidFileError";
  }
}

/** Options for {@linkcode PidFile.acquire}. */
export interface PidFileOptions {
  /** What the file is, for messages. @default {"pid file"} */
  what?: string;
  /**
   * The refusal when another live process holds the file, given its pid when the file holds
   * one. Unset: the `--pid-file` wording.
   */
  heldMessage?: (pid: string | undefined) => string;
  /** How long to wait for the lock before deciding another live process holds it. @default {200} */
  waitMs?: number;
}

async function samePathAndFile(path: string, file: Deno.FsFile): Promise<boolean> {
  try {
    const [named, held] = await Promise.all([Deno.lstat(path), file.stat()]);
    return named.dev === held.dev && named.ino === held.ino;
  } catch {
    return false; // removed
  }
}

/** How long to wait for the lock before deciding another live process holds it. */
const LOCK_WAIT_MS = 200;

/** A held pid file. */
export class PidFile {
  #path: string;
  #file: Deno.FsFile;
  #written = false;

  private constructor(path: string, file: Deno.FsFile) {
    this.#path = path;
    this.#file = file;
  }

  /**
   * Opens and locks `path` (never through a symbolic link).
   *
   * @throws {PidFileError} when another live process holds it, or it cannot be opened.
   */
  static async acquire(path: string, options: PidFileOptions = {}): Promise<PidFile> {
    const what = options.what ?? "pid file";
    for (let attempt = 0;; attempt++) {
      let file: Deno.FsFile;
      try {
        file = await openOwnFile(path, { what, regularOnly: true });
      } catch (error) {
        if (!(error instanceof OwnFileError)) throw error;
        throw new PidFileError(error.message, { cause: error });
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const locked = await Promise.race([
        file.lock(true).then(() => true),
        new Promise<false>((resolve) =>
          timer = setTimeout(() => resolve(false), options.waitMs ?? LOCK_WAIT_MS)
        ),
      ]);
      clearTimeout(timer);
      if (!locked) {
        // Read through a descriptor of its own: the lock request queued on `file` holds it.
        // Bounded: whatever the holder's file has grown into, a pid is a few digits.
        const holder = (await readSmallFile(path, { maxBytes: 64, timeoutMs: 1000 }).catch(() =>
          ""
        ))
          .trim();
        // The lock request stays queued on this descriptor; the process exits right after.
        const pid = /^\d+$/.test(holder) ? holder : undefined;
        throw new PidFileError(
          options.heldMessage?.(pid) ??
            `Pid file "${path}" is held by another running foo-proxy${
              pid ? ` (pid ${pid})` : ""
            }: stop it first, or give this one another --pid-file`,
        );
      }
      // The holder we waited for may have removed the file as it let go: the lock is then on a
      // file nobody else can find, and the path may already name another one. Lock that instead.
      if (await samePathAndFile(path, file) || attempt >= 3) {
        // A pid left by a proxy that was killed (nobody held its lock) must not pass for ours.
        await file.truncate(0);
        return new PidFile(path, file);
      }
      file.close();
    }
  }

  /** Writes this process's id (call once the listener is bound). */
  async write(pid = Deno.pid): Promise<void> {
    await this.#file.truncate(0);
    await this.#file.seek(0, Deno.SeekMode.Start);
    const bytes = new TextEncoder().encode(`${pid}\n`);
    for (let off = 0; off < bytes.length;) off += await this.#file.write(bytes.subarray(off));
    this.#written = true;
  }

  /**
   * Removes the file and lets go of the lock (on exit). `keep`: leaves the file for the process
   * waiting for the lock (a takeover), which writes its own pid there.
   */
  async release(options: { keep?: boolean } = {}): Promise<void> {
    if (this.#written && options.keep !== true) await Deno.remove(this.#path).catch(() => {});
    try {
      this.#file.close();
    } catch {
      // Closed already.
    }
  }
}
