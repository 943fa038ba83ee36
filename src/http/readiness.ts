/**
 * Readiness checks for `/readyz`: small named pass/fail results the proxy command supplies.
 *
 * @module
 */

/** One readiness check's result. */
export interface ReadinessCheck {
  /** Short stable name, e.g. `listener` or `upstream`. */
  name: string;
  /** Whether the check passes. */
  ok: boolean;
  /** Why it fails (or a note on why it passes); unset: nothing to add. */
  detail?: string;
}

/** What the upstream check reads (an `UpstreamProbe` fits). */
export interface UpstreamReachability {
  /** Whether the upstream accepted a connection recently. */
  readonly reachable: boolean;
  /** A human-readable account of the last probe. */
  readonly detail: string;
}

/** Inputs of {@linkcode proxyReadinessChecks}: the live state of one proxy. */
export interface ProxyReadinessInputs {
  /** Whether the downstream listener is bound (a `Proxy`'s `listening`). */
  listening: () => boolean;
  /** Whether the process is shutting down; unset: never. */
  shuttingDown?: () => boolean;
  /** Upstream reachability from a periodic probe; unset: the check is left out. */
  upstream?: UpstreamReachability;
  /** Connections served now. */
  activeConnections: () => number;
  /** The connection limit (`--max-connections`); unset or 0: no `connections` check. */
  maxConnections?: number;
}

/**
 * Returns the proxy's readiness checks, read afresh on every call: `listener`, `shutdown`,
 * `upstream` and `connections` (active below the limit).
 */
export function proxyReadinessChecks(inputs: ProxyReadinessInputs): () => ReadinessCheck[] {
  return () => {
    const checks: ReadinessCheck[] = [];
    const listening = inputs.listening();
    checks.push({
      name: "listener",
      ok: listening,
      detail: listening ? undefined : "the proxy listener is not bound",
    });
    const stopping = inputs.shuttingDown?.() ?? false;
    checks.push({
      name: "shutdown",
      ok: !stopping,
      detail: stopping ? "the proxy is shutting down" : undefined,
    });
    if (inputs.upstream) {
      checks.push({
        name: "upstream",
        ok: inputs.upstream.reachable,
        detail: inputs.upstream.detail,
      });
    }
    const max = inputs.maxConnections ?? 0;
    if (max > 0) {
      const active = inputs.activeConnections();
      checks.push({
        name: "connections",
        ok: active < max,
        detail: `${active} of ${max} connections in use`,
      });
    }
    return checks;
  };
}
