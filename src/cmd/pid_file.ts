/**
 * `--pid-file FILE`: the proxy's process id in a file, for `kill -USR2 $(cat FILE)`. The file is
 * locked (an advisory `flock`) for the life of the process, so a second proxy given the same
 * file is refused while the first runs, and a file left by a crashed proxy (nobody holds its
 * lock) is simply taken over.
 *
 * @module
 */

/** The pid file cannot be used. */
export class PidFileError extends Error {
  /** Creates the error; `message` names the file and the reason. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PidFileError";
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
   * Opens and locks `path`.
   *
   * @throws {PidFileError} when another live process holds it, or it cannot be opened.
   */
  static async acquire(path: string): Promise<PidFile> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true, write: true, create: true, mode: 0o644 });
    } catch (error) {
      throw new PidFileError(`Cannot open pid file "${path}": ${String(error)}`, { cause: error });
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const locked = await Promise.race([
      file.lock(true).then(() => true),
      new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), LOCK_WAIT_MS)),
    ]);
    clearTimeout(timer);
    if (!locked) {
      // Read through a descriptor of its own: the lock request queued on `file` holds it.
      const holder = (await Deno.readTextFile(path).catch(() => "")).trim();
      // The lock request stays queued on this descriptor; the process exits right after.
      throw new PidFileError(
        `Pid file "${path}" is held by another running foo-proxy${
          /^\d+$/.test(holder) ? ` (pid ${holder})` : ""
        }: stop it first, or give this one another --pid-file`,
      );
    }
    // A pid left by a proxy that was killed (nobody held its lock) must not pass for ours.
    await file.truncate(0);
    return new PidFile(path, file);
  }

  /** Writes this process's id (call once the listener is bound). */
  async write(pid = Deno.pid): Promise<void> {
    await this.#file.truncate(0);
    await this.#file.seek(0, Deno.SeekMode.Start);
    const bytes = new TextEncoder().encode(`${pid}\n`);
    for (let off = 0; off < bytes.length;) off += await this.#file.write(bytes.subarray(off));
    this.#written = true;
  }

  /** Removes the file and lets go of the lock (on exit). */
  async release(): Promise<void> {
    if (this.#written) await Deno.remove(this.#path).catch(() => {});
    try {
      this.#file.close();
    } catch {
      // Closed already.
    }
  }
}
