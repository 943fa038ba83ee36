/**
 * `--resume`'s upstream strategy: when a connection's upstream connection dies with REQs
 * unanswered, {@linkcode Failover} gets a new one from the {@linkcode UpstreamTarget} (with
 * backoff, and a limit on failovers in a row that die before answering), and the bridge engine
 * (`bridge.ts`) replays the unanswered REQs on it. Replayed REQs may be processed twice by the
 * upstream (at-least-once).
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { CloseReason, Stats } from "../stats/stats.ts";
import { backoffDelay } from "./dial_with_retry.ts";
import type { EngineConfig } from "./engine_config.ts";
import type { TargetConnection, UpstreamTarget } from "./upstream_target.ts";
import { waitOrAbort } from "../async/wait_or_abort.ts";

/** Replaces one connection's dead upstream connections; one per resumable connection. */
export class Failover {
  #config: EngineConfig;
  #target: UpstreamTarget;
  #stats: Stats;
  #logger: Logger | undefined;
  #label: string;
  #strikes = 0;
  #abort: AbortController | undefined;

  /** A failover strategy for the connection named `label`. */
  constructor(
    config: EngineConfig,
    target: UpstreamTarget,
    stats: Stats,
    logger: Logger | undefined,
    label: string,
  ) {
    this.#config = config;
    this.#target = target;
    this.#stats = stats;
    this.#logger = logger;
    this.#label = label;
  }

  /** Ends a dial or backoff wait under way (the connection is closing). */
  abort(): void {
    this.#abort?.abort();
  }

  /**
   * A new upstream connection for the one that ended (`why`, described by `what`), or the reason
   * to close the client with when there is none (logged and counted here). `healthy`: the dead
   * connection had relayed a reply or lived a while, so the failovers in a row start over.
   * `avoid`: the upstream that died, passed over when another can take the connection.
   */
  async replace(
    why: CloseReason,
    what: string,
    healthy: boolean,
    avoid?: string,
  ): Promise<TargetConnection | CloseReason> {
    const config = this.#config;
    const stats = this.#stats;
    if (healthy) this.#strikes = 0;
    this.#strikes++;
    if (this.#strikes > config.maxFailovers) {
      stats.resumeFailures++;
      this.#logger?.warning(
        "Upstream {what} on {connection}; giving up after {count} failovers in a row without a reply",
        { what, connection: this.#label, count: config.maxFailovers },
      );
      return why;
    }
    this.#abort = new AbortController();
    const signal = this.#abort.signal;
    const backoff = {
      backoffMs: config.reconnectBackoffMs,
      maxBackoffMs: config.maxReconnectBackoffMs,
      random: config.random,
    };
    if (this.#strikes > 1) {
      await waitOrAbort(backoffDelay(this.#strikes - 1, backoff), signal);
      if (signal.aborted) return "shutdown";
    }
    try {
      return await this.#target.dial({
        ...backoff,
        retries: config.reconnectRetries,
        signal,
        avoid,
        onRetry: () => stats.upstreamConnectRetries++,
      });
    } catch (error) {
      if (signal.aborted) return "shutdown";
      stats.upstreamErrors++;
      stats.resumeFailures++;
      this.#logger?.warning("Cannot resume {connection}: {error}", {
        connection: this.#label,
        error: error instanceof Error ? error.message : String(error),
      });
      return "upstream_unreachable";
    } finally {
      this.#abort = undefined;
    }
  }
}
