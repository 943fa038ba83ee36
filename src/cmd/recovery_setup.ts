/**
 * `--recovery-path` for `foo-proxy proxy`: check the path, restore the saved statistics, and
 * build the persister that keeps the file current.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import {
  checkRecoveryPath,
  loadRecoveryFile,
  RecoveryPathError,
  RecoveryPersister,
  removeStaleTempFiles,
} from "../proxy/recovery_file.ts";
import {
  captureRecoveryState,
  type RecoveryState,
  restoreRecoveryState,
  serializeRecoveryState,
} from "../stats/recovery.ts";
import type { Stats } from "../stats/stats.ts";
import { PidFile, PidFileError } from "./pid_file.ts";

/** Options for {@linkcode setupRecovery}. */
export interface RecoverySetupOptions {
  /** The statistics to restore into and persist. */
  stats: Stats;
  /** Logs the restore and any problem with the file. */
  logger: Logger;
  /** Time between writes in ms. @default {500} */
  intervalMs?: number;
  /**
   * The statistics to persist, asked for at each write (a merged view summed then); unset:
   * `stats`, the ones restored into.
   */
  persisted?: () => Stats;
  /**
   * Restore what the file holds. `false` after a takeover: the proxy taken over wrote it, and
   * its totals came over its takeover socket already. @default {true}
   */
  restore?: boolean;
  /** Not restoring: hears the state the file holds (`undefined`: none, or a bad file). */
  found?: (state: RecoveryState | undefined) => void;
}

/**
 * Checks that `path` is usable, restores the statistics saved there (a corrupt or unreadable
 * file is moved aside with a warning), and returns the persister, not yet started.
 *
 * @throws {RecoveryPathError} when the path cannot be written (the command exits 2).
 */
export async function setupRecovery(
  path: string,
  options: RecoverySetupOptions,
): Promise<RecoveryPersister> {
  const { stats, logger } = options;
  await checkRecoveryPath(path);
  // Two proxies on one file would overwrite each other's totals every half second, silently.
  const lock = await lockRecoveryFile(path);
  const stale = await removeStaleTempFiles(path);
  if (stale > 0) {
    logger.info("Removed {count} temporary file(s) beside {path} left by an interrupted save", {
      count: stale,
      path,
    });
  }
  // Read even when not restored (a takeover): a bad file is moved aside, never overwritten.
  const restore = options.restore !== false;
  const loaded = await loadRecoveryFile(path, {
    logger,
    instead: restore ? undefined : "keeping the totals taken over",
  });
  // Not restored: the totals came from the proxy taken over (what it saved here is in them).
  if (!restore) options.found?.(loaded.state);
  if (restore && loaded.state) {
    const result = restoreRecoveryState(stats, loaded.state, { latency: stats.latency });
    logger.info(
      "Restored statistics from {path}: {messages} messages, saved {downtime} s ago ({windows})",
      {
        path,
        messages: stats.counts.msg_req + stats.counts.msg_ack + stats.counts.msg_nak,
        downtime: (result.downtimeMs / 1000).toFixed(1),
        windows: result.windowsRestored
          ? "rates continue from the 10 s window"
          : "rates start from zero",
      },
    );
    if (result.ignoredReasons.length > 0) {
      logger.warning(
        "Recovery file {path}: left out close reasons this build does not have: {reasons}",
        { path, reasons: result.ignoredReasons.map((r) => JSON.stringify(r)).join(", ") },
      );
    }
  } else if (restore && !loaded.movedTo) {
    logger.info("No recovery file at {path} yet: starting from zero", { path });
  }
  return new RecoveryPersister(path, {
    intervalMs: options.intervalMs,
    logger,
    serialize: () => {
      const from = options.persisted?.() ?? stats;
      return serializeRecoveryState(captureRecoveryState(from, { latency: from.latency }));
    },
    release: () => lock.release(),
  });
}

/**
 * Locks `PATH.lock` (an advisory `flock`, holding this process's id) for the life of the process:
 * refused while another live foo-proxy holds it; one left by a crash (nobody holds its lock) is
 * taken over.
 *
 * @throws {RecoveryPathError} naming the holder's pid when another process holds it.
 */
async function lockRecoveryFile(path: string): Promise<PidFile> {
  const lockPath = `${path}.lock`;
  let lock: PidFile;
  try {
    lock = await PidFile.acquire(lockPath, {
      what: "recovery lock file",
      heldMessage: (pid) =>
        `Recovery file "${path}" is in use by another running foo-proxy${
          pid ? ` (pid ${pid})` : ""
        } (it holds "${lockPath}"): give each proxy its own --recovery-path`,
    });
  } catch (error) {
    if (!(error instanceof PidFileError)) throw error;
    throw new RecoveryPathError(error.message, path, { cause: error });
  }
  await lock.write();
  return lock;
}
