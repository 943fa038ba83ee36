/**
 * {@linkcode applyReload}: what a reload of the `--config` file changes at run time, derived from
 * each setting's `reload` effect in {@linkcode PROXY_SETTINGS}.
 *
 * @module
 */
import type { EngineOptions } from "../proxy/engine_config.ts";
import type { Proxy } from "../proxy/proxy.ts";
import type { UpstreamPool } from "../proxy/upstream_pool.ts";
import type { ProxyConfig } from "./proxy_config.ts";
import {
  accessOf,
  engineUpdateOf,
  PROXY_SETTINGS,
  RELOAD_ORDER,
  type Setting,
} from "./proxy_settings.ts";

/** What {@linkcode applyReload} changes. */
export interface ReloadTargets {
  /** The upstream pool: its upstreams and balance policy. */
  pool: Pick<UpstreamPool, "update" | "setPolicy">;
  /** The proxy: the engine settings of new connections, the accept limit, source access. */
  proxy: Pick<Proxy, "updateEngine" | "setMaxConnections" | "setAccess">;
  /** Sets logging up again from the new config. */
  relog: () => void;
  /** Logs a warning (a setting that changed but takes effect on restart only). */
  warn: (message: string) => void;
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Applies what a reload may change at run time, effect by effect in {@linkcode RELOAD_ORDER};
 * returns what changed, for the log and `POST /reload`. Never logs a value a row keeps secret:
 * `live` settings are named, not shown.
 */
export function applyReload(old: ProxyConfig, next: ProxyConfig, targets: ReloadTargets): string[] {
  const changed: string[] = [];
  for (const effect of RELOAD_ORDER) {
    const rows = PROXY_SETTINGS.filter((s) =>
      s.reload === effect && !same(old[s.field], next[s.field])
    );
    if (rows.length === 0) continue;
    switch (effect) {
      case "upstreams":
        for (const s of rows) {
          changed.push(...targets.pool.update(next[s.field] as ProxyConfig["upstreams"]));
        }
        break;
      case "balance":
        for (const s of rows) {
          const policy = next[s.field] as ProxyConfig["balance"];
          targets.pool.setPolicy(policy);
          changed.push(`${s.flag} ${policy}`);
        }
        break;
      case "engine":
        targets.proxy.updateEngine(
          engineUpdateOf(next) as Omit<EngineOptions, "resume" | "timers" | "random">,
        );
        changed.push("limits (for new connections)");
        break;
      case "max-connections":
        for (const s of rows) {
          const max = next[s.field] as number | undefined;
          // Back to auto keeps the running limit: the fd limit was read at start.
          if (max === undefined) continue;
          targets.proxy.setMaxConnections(max);
          changed.push(`${s.flag} ${max}`);
        }
        break;
      case "access":
        targets.proxy.setAccess(accessOf(next));
        changed.push("source access (for new connections)");
        break;
      case "log":
        targets.relog();
        changed.push(`log ${logRows().map((s) => next[s.field]).join(" ")}`);
        break;
      case "live":
        for (const s of rows) changed.push(s.flag);
        break;
      case "tls":
        break; // the supervisor reads the key pair again on every reload, changed or not
      case "restart": {
        const names = new Set(rows.map((s) => s.reloadName ?? s.flag));
        for (const name of names) {
          targets.warn(`${name} changed in the config file: it takes effect on restart`);
        }
        break;
      }
    }
  }
  return changed;
}

function logRows(): Setting[] {
  return PROXY_SETTINGS.filter((s) => s.reload === "log");
}
