/**
 * `foo-proxy wait`: blocks until addresses accept TCP connections and, with a pid file, until a
 * running foo-proxy holds that file and has written its pid there. So a script (or a README block
 * pasted whole) can start a server or a proxy in the background and go on only once it serves,
 * instead of racing it.
 *
 * A pid file counts as ready only while its lock is held (a live foo-proxy holds it for its whole
 * life) and it holds a pid: a file left behind by a proxy that was killed with `kill -9` is not
 * mistaken for the new one's.
 *
 * @module
 */
import { type Address, formatAddress } from "../net/address.ts";
import { describeError } from "../net/describe_error.ts";
import { waitOrAbort } from "../async/wait_or_abort.ts";
import { systemClock } from "../stats/clock.ts";

/** What to wait for: an address that accepts connections, or a foo-proxy's pid file. */
export type ReadyTarget =
  | { address: Address; pidFile?: undefined }
  | { pidFile: string; address?: undefined };

/** A target was not ready in time. The message names it and why it was not. */
export class NotReadyError extends Error {
  /** The target that was not ready. */
  readonly target: ReadyTarget;
  /** Creates the error; `message` names the target, the time waited and the last reason. */
  constructor(target: ReadyTarget, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NotReadyError";
    this.target = target;
  }
}

/** Options for {@linkcode waitReady}. */
export interface WaitReadyOptions {
  /** Longest wait for all targets together, in ms. @default {10000} */
  timeoutMs?: number;
  /** Time between two checks of a target that is not ready, in ms. @default {50} */
  intervalMs?: number;
  /** Aborting stops the wait, which then fails like a timeout. Unset: only the timeout ends it. */
  signal?: AbortSignal;
  /** Milliseconds now. @default {systemClock} */
  now?: () => number;
  /** Waits `ms` (or less when `signal` aborts). @default {waitOrAbort} */
  delay?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Opens a pid file (tests pass one that never answers). @default {Deno.open} */
  open?: (path: string, options: Deno.OpenOptions) => Promise<Deno.FsFile>;
}

/** What one check found: ready, or why not. */
type Check = { ready: true } | { ready: false; why: string };

/**
 * Resolves once every target is ready, checking each in turn until it is.
 *
 * @throws {NotReadyError} naming the first target not ready within `timeoutMs`, and why.
 */
export async function waitReady(
  targets: readonly ReadyTarget[],
  options: WaitReadyOptions = {},
): Promise<void> {
  const now = options.now ?? systemClock;
  const delay = options.delay ?? waitOrAbort;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const intervalMs = options.intervalMs ?? 50;
  const deadline = now() + timeoutMs;
  for (const target of targets) {
    for (;;) {
      const left = deadline - now();
      const check = await checkTarget(target, Math.max(left, 1), options.open ?? Deno.open);
      if (check.ready) break;
      if (left <= 0 || options.signal?.aborted) {
        throw new NotReadyError(
          target,
          `${describeTarget(target)} not ready after ${timeoutMs / 1000} s: ${check.why}`,
        );
      }
      await delay(Math.min(intervalMs, Math.max(left, 0)), options.signal);
    }
  }
}

/** `127.0.0.1:8002`, or `pid file "/tmp/foo-proxy.pid"`. */
export function describeTarget(target: ReadyTarget): string {
  return target.address !== undefined
    ? formatAddress(target.address)
    : `pid file "${target.pidFile}"`;
}

function checkTarget(
  target: ReadyTarget,
  timeoutMs: number,
  open: NonNullable<WaitReadyOptions["open"]>,
): Promise<Check> {
  return target.address !== undefined
    ? checkAddress(target.address, timeoutMs)
    : checkPidFile(target.pidFile, timeoutMs, open);
}

/** Ready when a TCP connection is accepted (closed again at once); a hung connect gives up. */
async function checkAddress(address: Address, timeoutMs: number): Promise<Check> {
  const connecting = Deno.connect({ hostname: address.hostname, port: address.port });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
  });
  try {
    const conn = await Promise.race([connecting, timedOut]);
    if (conn === "timeout") {
      // A connect that completes later is closed then.
      connecting.then((late) => late.close(), () => {});
      return { ready: false, why: "connect timed out" };
    }
    conn.close();
    return { ready: true };
  } catch (error) {
    return { ready: false, why: describeError(error) };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Ready when a live process holds the file's lock and the file holds a pid. Only a regular file is
 * opened (opening a FIFO nobody writes blocks until a writer comes), and the open has the
 * time left: a FIFO swapped in after the look, or a stalled mount, cannot outlast `--timeout`.
 */
async function checkPidFile(
  path: string,
  timeoutMs: number,
  open: NonNullable<WaitReadyOptions["open"]>,
): Promise<Check> {
  try {
    const info = await Deno.stat(path);
    if (!info.isFile) return { ready: false, why: `it is ${kindOf(info)}, not a regular file` };
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { ready: false, why: "no such file yet" };
    return { ready: false, why: describeError(error) };
  }
  let file: Deno.FsFile | "timeout";
  const opening = open(path, { read: true });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    file = await Promise.race([
      opening,
      new Promise<"timeout">((resolve) => timer = setTimeout(() => resolve("timeout"), timeoutMs)),
    ]);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { ready: false, why: "no such file yet" };
    return { ready: false, why: describeError(error) };
  } finally {
    clearTimeout(timer);
  }
  if (file === "timeout") {
    // An open that completes later is closed then.
    opening.then((late) => late.close(), () => {});
    return { ready: false, why: "opening it took too long (a FIFO, or a stalled mount?)" };
  }
  try {
    // A shared lock we can take means nobody holds the proxy's exclusive one: no proxy runs.
    if (await file.tryLock(false)) {
      await file.unlock();
      return { ready: false, why: "no running foo-proxy holds it" };
    }
    const text = new TextDecoder().decode(await readSome(file, 64));
    if (!/^\d+\n$/.test(text)) {
      return { ready: false, why: "the proxy has not written its pid yet" };
    }
    return { ready: true };
  } catch (error) {
    return { ready: false, why: describeError(error) };
  } finally {
    file.close();
  }
}

/** What a file that is not a regular one is, for the reason given. */
function kindOf(info: Deno.FileInfo): string {
  if (info.isDirectory) return "a directory";
  if (info.isFifo) return "a FIFO";
  if (info.isSocket) return "a socket";
  if (info.isCharDevice || info.isBlockDevice) return "a device";
  return "not a regular file";
}

/** At most `max` bytes from the start of `file` (a pid file is a few bytes; never read more). */
async function readSome(file: Deno.FsFile, max: number): Promise<Uint8Array> {
  const buffer = new Uint8Array(max);
  let length = 0;
  while (length < max) {
    const n = await file.read(buffer.subarray(length));
    if (n === null) break;
    length += n;
  }
  return buffer.subarray(0, length);
}
