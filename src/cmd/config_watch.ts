/**
 * `--config-watch`: the supervisor follows the `--config` file and reloads when it changes, through
 * the same path as SIGHUP. It watches the directories that hold the file and every link on the
 * way to it (`Deno.watchFs`, not recursive), never the file alone: an editor's write to a
 * temporary file then rename, a delete and re-create, and a Kubernetes ConfigMap update (the
 * kubelet swaps the `..data` symbolic link to a new timestamped directory; `config.json` is a link
 * to `..data/config.json`) all show up as events in a directory, and a watch of the old inode
 * would miss them. Events come in bursts (a truncate then a write; the kubelet's several steps):
 * one reload follows each burst, `debounceMs` after its last event.
 *
 * @module
 */
import { basename, dirname, resolve } from "node:path";

/** How long the file must stay quiet after an event before the reload: one reload per burst. */
export const CONFIG_WATCH_DEBOUNCE_MS = 250;

/** Options for {@linkcode watchConfigFile}. */
export interface ConfigWatchOptions {
  /** The `--config` path, as given. */
  path: string;
  /** Called once per burst of events that touch the file or a link on the way to it. */
  onChange: () => void;
  /** The watch cannot be set up (or broke): called with why; the proxy carries on without it. */
  onError: (message: string) => void;
  /** @default {CONFIG_WATCH_DEBOUNCE_MS} */
  debounceMs?: number;
}

/** A running watch; `close()` stops it (idempotent) and resolves once its loop has ended. */
export interface ConfigWatch {
  /** The directories watched at start. */
  directories: readonly string[];
  close(): Promise<void>;
}

/** The path and every link on the way to the file: `config.json`, `..data/config.json`, the real file. */
async function chainOf(path: string): Promise<string[]> {
  const chain: string[] = [];
  let at = resolve(path);
  for (let hops = 0; hops < 16 && !chain.includes(at); hops++) {
    chain.push(at);
    let info: Deno.FileInfo;
    try {
      info = await Deno.lstat(at);
    } catch {
      break; // missing (deleted, or a dangling link): the directory's events say when it is back
    }
    if (!info.isSymlink) break;
    at = resolve(dirname(at), await Deno.readLink(at));
  }
  try {
    const real = await Deno.realPath(path); // directory links on the way (`..data/`) resolved
    if (!chain.includes(real)) chain.push(real);
  } catch {
    // Missing for now.
  }
  return chain;
}

/**
 * The directories to watch for `chain`, as the chain names them (events then name paths the
 * chain can be compared with), each once; those that do not exist are left out.
 */
async function directoriesOf(chain: readonly string[]): Promise<string[]> {
  const dirs = new Set<string>();
  for (const file of chain) {
    const dir = dirname(file);
    if (dirs.has(dir)) continue;
    if (Deno.permissions.querySync({ name: "read", path: dir }).state !== "granted") {
      dirs.add(dir); // not visible: watching it is refused, with the grant to add
      continue;
    }
    try {
      if ((await Deno.stat(dir)).isDirectory) dirs.add(dir);
    } catch {
      // The directory went (the old timestamped one after a swap): nothing to watch there.
    }
  }
  return [...dirs].sort();
}

/** Whether an event on `path` can change what `chain` leads to. */
function touches(path: string, chain: readonly string[], dirs: readonly string[]): boolean {
  const name = basename(path);
  for (const link of chain) {
    // The file, a link, or a directory on the way (`..data`, swapped by a rename).
    if (link === path || link.startsWith(`${path}/`)) return true;
    if (basename(link) === name && dirs.includes(dirname(path))) return true;
  }
  return false;
}

/**
 * Starts watching the `--config` file at `options.path`; resolves with the running watch, or
 * `undefined` after `onError` when the directory cannot be watched (no read grant on it, the
 * inotify limit): the caller carries on without it (SIGHUP and `POST /reload` still work).
 */
export async function watchConfigFile(
  options: ConfigWatchOptions,
): Promise<ConfigWatch | undefined> {
  const debounceMs = options.debounceMs ?? CONFIG_WATCH_DEBOUNCE_MS;
  let chain = await chainOf(options.path);
  let dirs = await directoriesOf(chain);
  let watcher: Deno.FsWatcher | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;
  let loop: Promise<void> = Promise.resolve();
  let failed = false;
  const fail = (message: string) => {
    if (failed) return; // logged and counted once
    failed = true;
    options.onError(message);
  };

  const open = (): boolean => {
    const missing = dirs.filter((path) =>
      Deno.permissions.querySync({ name: "read", path }).state !== "granted"
    );
    if (missing.length > 0) {
      fail(
        `no read access to ${
          missing.join(", ")
        } (the directory that holds --config): grant it (--allow-read=${
          missing.join(",")
        }) or pass --config-watch off`,
      );
      return false;
    }
    if (dirs.length === 0) {
      fail(`the directory of ${options.path} does not exist`);
      return false;
    }
    try {
      watcher = Deno.watchFs(dirs, { recursive: false });
    } catch (error) {
      fail(error instanceof Error ? error.message : String(error));
      return false;
    }
    const current = watcher;
    loop = (async () => {
      try {
        for await (const event of current) {
          if (event.kind === "access" || event.kind === "other") continue;
          if (event.paths.some((p) => touches(p, chain, dirs))) schedule();
        }
      } catch (error) {
        if (!closed) fail(error instanceof Error ? error.message : String(error));
      }
    })();
    return true;
  };

  const fire = async () => {
    timer = undefined;
    if (closed) return;
    // Links may lead elsewhere now (a new timestamped directory): watch where they lead.
    const nextChain = await chainOf(options.path);
    const nextDirs = await directoriesOf(nextChain);
    if (closed) return;
    chain = nextChain;
    if (nextDirs.length > 0 && nextDirs.join("\n") !== dirs.join("\n")) {
      dirs = nextDirs;
      const old = watcher;
      watcher = undefined;
      try {
        old?.close();
      } catch {
        // Already closed.
      }
      await loop;
      if (!closed) open();
    }
    options.onChange();
  };

  const schedule = () => {
    if (closed) return;
    if (timer !== undefined) clearTimeout(timer);
    timer = setTimeout(() => void fire(), debounceMs);
  };

  if (!open()) return undefined;
  return {
    directories: dirs,
    close: async () => {
      if (closed) return;
      closed = true;
      if (timer !== undefined) clearTimeout(timer);
      try {
        watcher?.close();
      } catch {
        // Already closed.
      }
      await loop;
    },
  };
}
