/**
 * Sizing `--max-connections` from the process's file-descriptor limit, so the proxy runs out of
 * client slots (a clean refusal, counted) before it runs out of descriptors (failed accepts, a
 * failed recovery save, no admin port).
 *
 * @module
 */

/** Descriptors kept for the process's own needs, outside client connections. */
export const FD_RESERVE = 128;
/** The default when the limit cannot be read, and the most the limit alone ever picks. */
export const DEFAULT_MAX_CONNECTIONS = 10_000;

/**
 * The soft `RLIMIT_NOFILE` of this process from `/proc/self/limits` (Linux), or `undefined` when
 * it cannot be read. Deno 2.9 lets a program read `/proc/self/*` only with `--allow-all`, which
 * foo-proxy never has, so in a permission-restricted run this is `undefined` and the limit must be
 * handed in (`--fd-limit`, `FOO_PROXY_FD_LIMIT=$(ulimit -n)`); under `-A` it works.
 */
export function readFdLimit(): number | undefined {
  const path = "/proc/self/limits";
  try {
    if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") return undefined;
    const text = Deno.readTextFileSync(path);
    const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(text);
    if (!m) return undefined;
    return m[1] === "unlimited" ? Number.MAX_SAFE_INTEGER : Number(m[1]);
  } catch {
    return undefined;
  }
}

/**
 * Client connections that fit in `limit` descriptors: two per client (downstream and upstream)
 * after {@linkcode FD_RESERVE} for listeners, admin connections (64 per admin server), the
 * recovery file, health probes and the runtime; at most {@linkcode DEFAULT_MAX_CONNECTIONS}, at
 * least 1. `undefined` limit: the default.
 */
export function maxConnectionsFor(limit: number | undefined): number {
  if (limit === undefined) return DEFAULT_MAX_CONNECTIONS;
  return Math.max(1, Math.min(DEFAULT_MAX_CONNECTIONS, Math.floor((limit - FD_RESERVE) / 2)));
}

/** Descriptors `connections` clients need, reserve included. */
export function fdsNeeded(connections: number): number {
  return connections * 2 + FD_RESERVE;
}
