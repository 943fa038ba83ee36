/**
 * The recovery file's I/O: checking the path at start-up, loading (moving a corrupt file aside),
 * atomic writes (temp file in the same directory, fsync, rename) and the periodic persister.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { basename, dirname, join } from "node:path";
import { parseRecoveryState, type RecoveryState } from "../stats/recovery.ts";
import { kindOf, readSmallFile, SmallFileError } from "./read_small_file.ts";

/** The recovery path cannot be used (missing directory, not writable, a directory, …). */
export class RecoveryPathError extends Error {
  /** The recovery path. */
  readonly path: string;
  /** Creates the error; `message` says what is wrong, in the Deno style. */
  constructor(message: string, path: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "RecoveryPathError";
    this.path = path;
  }
}

/**
 * Checks at start-up that `path` can be written atomically: its directory exists and accepts a
 * new file, and `path` itself is not a directory. Nothing is left behind.
 *
 * @throws {RecoveryPathError} naming the path and why.
 */
export async function checkRecoveryPath(path: string): Promise<void> {
  const fail = (why: string, cause?: unknown) =>
    new RecoveryPathError(`Cannot use recovery file "${path}": ${why}`, path, { cause });
  try {
    const info = await Deno.stat(path);
    // A FIFO would block the read at start for ever; a device is nobody's statistics.
    if (!info.isFile) throw fail(`it is ${kindOf(info)}, not a regular file`);
  } catch (error) {
    if (error instanceof RecoveryPathError) throw error;
    if (!(error instanceof Deno.errors.NotFound)) throw fail(describe(error), error);
  }
  const dir = dirname(path);
  let probe: string;
  try {
    probe = await Deno.makeTempFile({ dir, prefix: `.${basename(path)}.check-` });
  } catch (error) {
    throw fail(
      error instanceof Deno.errors.NotFound
        ? `directory "${dir}" does not exist`
        : `cannot create files in "${dir}": ${describe(error)}`,
      error,
    );
  }
  await Deno.remove(probe).catch(() => {});
}

/** Options for {@linkcode loadRecoveryFile}. */
export interface LoadRecoveryOptions {
  /** Where the warning about a corrupt file goes; unset: nowhere. */
  logger?: Logger;
  /** The time used in the name of a moved-aside file; unset: now. */
  now?: () => Date;
  /** Longest time to read the file, in ms. @default {5000} */
  timeoutMs?: number;
  /** What the proxy goes on with when the file is bad, for the warning. @default {"starting from zero"} */
  instead?: string;
}

/**
 * The largest recovery file read: ours are a few KiB (at most 1000 buckets per window and 1000
 * histogram buckets), so anything near this is not ours.
 */
export const RECOVERY_MAX_BYTES = 1024 * 1024;

/** What {@linkcode loadRecoveryFile} found. */
export interface LoadedRecovery {
  /** The state, or `undefined` to start from zero. */
  state: RecoveryState | undefined;
  /** Where a corrupt or unreadable file was moved, if one was. */
  movedTo?: string;
}

/**
 * Reads the state at `path` (a regular file of at most {@linkcode RECOVERY_MAX_BYTES}, read within
 * `timeoutMs`). A missing file means a first start. A corrupt, oversized or unreadable file is
 * logged (a warning naming it), moved aside to `PATH.corrupt-<timestamp>` so it is never silently
 * overwritten, and the proxy starts from zero.
 *
 * @throws {RecoveryPathError} when a bad file cannot be moved aside (the persister would
 * otherwise overwrite it), when `path` is not a regular file (a FIFO, a device), or when it is
 * not read within the deadline.
 */
export async function loadRecoveryFile(
  path: string,
  options: LoadRecoveryOptions = {},
): Promise<LoadedRecovery> {
  let text: string;
  let problem: string;
  let cause: unknown;
  try {
    text = await readSmallFile(path, {
      what: "recovery file",
      maxBytes: RECOVERY_MAX_BYTES,
      timeoutMs: options.timeoutMs,
    });
    try {
      return { state: parseRecoveryState(text) };
    } catch (error) {
      problem = `corrupt: ${(error as Error).message}`;
      cause = error;
    }
  } catch (error) {
    if (!(error instanceof SmallFileError)) throw error;
    if (error.problem === "missing") return { state: undefined };
    if (error.problem === "not_regular" || error.problem === "timeout") {
      // Not a file of ours that went bad: moving it aside would hide the mistake.
      throw new RecoveryPathError(error.message, path, { cause: error });
    }
    problem = error.problem === "too_large" || error.problem === "not_utf8"
      ? `corrupt: ${error.message.replace(/^.*?": /, "")}`
      : `unreadable: ${describe(error.cause)}`;
    cause = error;
  }
  const movedTo = await moveAside(path, options.now?.() ?? new Date(), cause);
  options.logger?.warning(
    "Recovery file {path} is {problem}; moved it to {movedTo} and {instead}",
    { path, problem, movedTo, instead: options.instead ?? "starting from zero" },
  );
  return { state: undefined, movedTo };
}

async function moveAside(path: string, when: Date, cause: unknown): Promise<string> {
  const stamp = when.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  for (let n = 0;; n++) {
    const target = `${path}.corrupt-${stamp}${n === 0 ? "" : `-${n}`}`;
    try {
      await Deno.lstat(target);
      continue; // never replace an earlier corrupt copy
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        throw new RecoveryPathError(
          `Cannot move bad recovery file "${path}" aside: ${describe(error)}`,
          path,
          { cause: error },
        );
      }
    }
    try {
      await Deno.rename(path, target);
      return target;
    } catch (error) {
      throw new RecoveryPathError(
        `Cannot move bad recovery file "${path}" aside to "${target}": ${describe(error)}`,
        path,
        { cause: new AggregateError([cause, error]) },
      );
    }
  }
}

const encoder = new TextEncoder();

/**
 * Removes the temporary files a save interrupted by a crash or `kill -9` left beside `path`
 * (`.NAME.tmp-*`, `.NAME.check-*`); returns how many. Call before the first save of this
 * process (the names are random: none of them can be a save of ours in progress).
 */
export async function removeStaleTempFiles(path: string): Promise<number> {
  const dir = dirname(path);
  const prefixes = [`.${basename(path)}.tmp-`, `.${basename(path)}.check-`];
  let removed = 0;
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (!entry.isFile || !prefixes.some((p) => entry.name.startsWith(p))) continue;
      try {
        await Deno.remove(join(dir, entry.name));
        removed++;
      } catch {
        // Gone already, or not ours to remove: leave it.
      }
    }
  } catch {
    // The directory cannot be listed: checkRecoveryPath has said what matters.
  }
  return removed;
}

/**
 * Replaces `path` with `text` atomically: writes a temp file in the same directory, fsyncs it,
 * renames it over `path`, then fsyncs the directory (best effort). A crash at any instant leaves
 * the old file or the new one, never a torn one.
 */
export async function writeRecoveryFile(path: string, text: string): Promise<void> {
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.tmp-${crypto.randomUUID().slice(0, 8)}`);
  const bytes = encoder.encode(text);
  try {
    const file = await Deno.open(temp, { write: true, createNew: true, mode: 0o644 });
    try {
      for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(temp, path);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw error;
  }
  await syncDirectory(dir);
}

async function syncDirectory(dir: string): Promise<void> {
  if (Deno.build.os === "windows") return;
  try {
    const handle = await Deno.open(dir, { read: true });
    try {
      await handle.sync();
    } finally {
      handle.close();
    }
  } catch {
    // Some file systems refuse to fsync a directory; the rename itself is still atomic.
  }
}

/** Options for {@linkcode RecoveryPersister}. */
export interface RecoveryPersisterOptions {
  /** Returns the text to persist (e.g. the serialized stats); called once per write. */
  serialize: () => string;
  /** Time between the end of one write and the start of the next, in ms. @default {500} */
  intervalMs?: number;
  /** Where write failures are logged (once per run of failures); unset: nowhere. */
  logger?: Logger;
  /** Aborting stops the timer like {@linkcode RecoveryPersister.close} (with a final write). */
  signal?: AbortSignal;
  /** Called once after the final write (lets go of the file's lock). Unset: nothing. */
  release?: () => Promise<void>;
}

/**
 * Persists the state every `intervalMs` (writes never overlap) and once more on close.
 * `await using persister = new RecoveryPersister(path, { serialize }); persister.start();`
 */
export class RecoveryPersister implements AsyncDisposable {
  /** The recovery file. */
  readonly path: string;
  #serialize: () => string;
  #intervalMs: number;
  #logger: Logger | undefined;
  #release: (() => Promise<void>) | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #writing: Promise<void> = Promise.resolve();
  #started = false;
  #closing: Promise<void> | undefined;
  #failing = false;
  #writes = 0;
  #failures = 0;
  #finished = Promise.withResolvers<void>();

  /**
   * Creates a persister for `path`; nothing is written until {@linkcode RecoveryPersister.start}.
   *
   * @throws {RangeError} for a non-positive interval.
   */
  constructor(path: string, options: RecoveryPersisterOptions) {
    this.path = path;
    this.#serialize = options.serialize;
    this.#intervalMs = options.intervalMs ?? 500;
    if (!(this.#intervalMs > 0)) {
      throw new RangeError(`Invalid persist interval ${this.#intervalMs} ms: expected > 0`);
    }
    this.#logger = options.logger;
    this.#release = options.release;
    options.signal?.addEventListener("abort", () => void this.close(), { once: true });
  }

  /** Successful writes so far. */
  get writes(): number {
    return this.#writes;
  }

  /** Failed writes so far. */
  get failures(): number {
    return this.#failures;
  }

  /** Resolves once closed and the final write is done. */
  get finished(): Promise<void> {
    return this.#finished.promise;
  }

  /** Starts the periodic writes (the first after one interval). */
  start(): void {
    if (this.#started) throw new Error("RecoveryPersister already started");
    this.#started = true;
    if (this.#closing) return;
    this.#schedule();
  }

  /** Writes now (after any write in progress); resolves when done. Failures are logged. */
  persist(): Promise<void> {
    const next = this.#writing.then(() => this.#writeOnce());
    this.#writing = next;
    return next;
  }

  /** Stops the timer and writes a final time; resolves when written. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      await this.persist();
      await this.#release?.();
      this.#finished.resolve();
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #schedule(): void {
    this.#timer = setTimeout(async () => {
      this.#timer = undefined;
      await this.persist();
      if (!this.#closing) this.#schedule();
    }, this.#intervalMs);
  }

  async #writeOnce(): Promise<void> {
    try {
      await writeRecoveryFile(this.path, this.#serialize());
      this.#writes++;
      if (this.#failing) {
        this.#logger?.info("Writing recovery file {path} works again", { path: this.path });
      }
      this.#failing = false;
    } catch (error) {
      this.#failures++;
      if (!this.#failing) {
        this.#logger?.warning("Cannot write recovery file {path}: {error}", {
          path: this.path,
          error: describe(error),
        });
      }
      this.#failing = true;
    }
  }
}

function describe(error: unknown): string {
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (error instanceof Deno.errors.NotCapable) {
    return "not permitted (run with --allow-read and --allow-write for this path)";
  }
  if (error instanceof Error) {
    // "No such file or directory (os error 2): readfile '/x'" → "no such file or directory"
    return error.message.replace(/\s*\(os error \d+\).*$/, "").replace(
      /^./,
      (c) => c.toLowerCase(),
    );
  }
  return String(error);
}
