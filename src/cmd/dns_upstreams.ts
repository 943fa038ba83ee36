/**
 * {@linkcode DnsUpstreams}: the `--forward dns+HOST:PORT` entries, whose A/AAAA records are the
 * upstreams (a Kubernetes headless Service). The supervisor resolves each name once before the pool
 * starts and again every `--dns-interval`; a changed answer goes through the same pool update as a
 * reload that edited `--forward` (records that appear join once checked, records that vanish
 * drain). A failed resolution (timeout, SERVFAIL, NXDOMAIN, permission) or an answer with no record
 * keeps the last good set: it is counted (`dns_resolve_failures`) and logged at most once a minute
 * per name.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Address } from "../net/address.ts";
import { MAX_DNS_RECORDS } from "../cli/upstreams.ts";
import type { UpstreamSpec } from "../proxy/upstream_spec.ts";

/** Defaults of {@linkcode DnsUpstreams}. */
export const DNS_DEFAULTS = {
  /** `--dns-interval`. */
  intervalMs: 5000,
  /** Deadline of one resolution (both queries). */
  timeoutMs: 5000,
  /** Least time between two warnings about one name. */
  warnEveryMs: 60_000,
} as const;

/** One query, as `Deno.resolveDns` answers it (injectable for unit tests). */
export type ResolveFn = (
  name: string,
  type: "A" | "AAAA",
  options: Deno.ResolveDnsOptions,
) => Promise<string[]>;

/** Options of {@linkcode DnsUpstreams}. */
export interface DnsUpstreamsOptions {
  /** `--dns-interval` in ms. */
  intervalMs: number;
  /** `--dns-server`; `null`: the system resolver (Deno reads `/etc/resolv.conf`). */
  nameServer: Address | null;
  /** Where failures are counted. */
  counters: { dnsResolveFailures: number };
  logger: Logger;
  /** @default {Deno.resolveDns} */
  resolve?: ResolveFn;
}

/** The last good answer of one name. */
interface Answer {
  addresses: string[];
}

/** Resolves the `dns+` names of a `--forward` list and expands them into upstreams. */
export class DnsUpstreams {
  readonly #options: DnsUpstreamsOptions;
  readonly #resolve: ResolveFn;
  /** By host name: the last good answer (sorted, capped). */
  readonly #answers = new Map<string, Answer>();
  /** By host name: when its last warning was logged, and failures since. */
  readonly #warned = new Map<string, { at: number; since: number }>();
  #names: string[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #stopped = false;

  constructor(options: DnsUpstreamsOptions) {
    this.#options = options;
    this.#resolve = options.resolve ??
      ((name, type, opts) => Deno.resolveDns(name, type, opts) as Promise<string[]>);
  }

  /** The `--forward` list of the running config: its `dns+` names are the ones resolved. */
  setSpecs(specs: readonly UpstreamSpec[]): void {
    this.#names = [...new Set(specs.filter((s) => s.dns).map((s) => s.address.hostname))];
    for (const name of [...this.#answers.keys()]) {
      if (!this.#names.includes(name)) this.#answers.delete(name);
    }
  }

  /**
   * `specs` with each `dns+` entry replaced by one upstream per record of its last good answer
   * (`NAME@IP`, its port and weight); an entry with no answer yet stands for itself (dialed by
   * name, as a plain `HOST:PORT`).
   */
  expand(specs: readonly UpstreamSpec[]): UpstreamSpec[] {
    return specs.flatMap((spec) => {
      const answer = spec.dns ? this.#answers.get(spec.address.hostname) : undefined;
      if (!spec.dns || answer === undefined) return [spec];
      return answer.addresses.map((ip) => ({
        name: `${spec.name}@${ip}`,
        address: { hostname: ip, port: spec.address.port },
        weight: spec.weight,
      }));
    });
  }

  /**
   * Resolves the names (`only`: those without an answer yet); resolves with whether an answer
   * changed.
   */
  async refresh(only: "all" | "new" = "all"): Promise<boolean> {
    const names = only === "all" ? this.#names : this.#names.filter((n) => !this.#answers.has(n));
    const changed = await Promise.all(names.map((name) => this.#refreshOne(name)));
    return changed.some(Boolean);
  }

  /** Refreshes every `--dns-interval` (one at a time), calling `onChange` after a changed answer. */
  start(onChange: () => Promise<unknown>): void {
    const tick = async () => {
      try {
        if (await this.refresh() && !this.#stopped) await onChange();
      } catch (error) {
        this.#options.logger.error("Upstreams from DNS could not be applied: {error}", {
          error: error instanceof Error ? error.message : String(error),
        });
      }
      if (!this.#stopped) this.#timer = setTimeout(tick, this.#options.intervalMs);
    };
    this.#timer = setTimeout(tick, this.#options.intervalMs);
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  async #refreshOne(name: string): Promise<boolean> {
    const { nameServer } = this.#options;
    const options: Deno.ResolveDnsOptions = {
      signal: AbortSignal.timeout(DNS_DEFAULTS.timeoutMs),
      ...(nameServer ? { nameServer: { ipAddr: nameServer.hostname, port: nameServer.port } } : {}),
    };
    const results = await Promise.allSettled(
      (["A", "AAAA"] as const).map((type) => this.#resolve(name, type, options)),
    );
    // NotFound is "no record of this type" (NXDOMAIN too); anything else fails the whole answer,
    // so a timed-out AAAA query never drops the IPv6 records of the last good set.
    const failed = results.find((r) =>
      r.status === "rejected" && !(r.reason instanceof Deno.errors.NotFound)
    ) as PromiseRejectedResult | undefined;
    const found = results.flatMap((r) => r.status === "fulfilled" ? r.value : []);
    if (failed !== undefined || found.length === 0) {
      const reason = failed
        ? (failed.reason instanceof Error ? failed.reason.message : String(failed.reason))
        : "no A or AAAA record";
      this.#failure(name, reason);
      return false;
    }
    const all = [...new Set(found)].sort();
    const addresses = all.slice(0, MAX_DNS_RECORDS);
    const before = this.#answers.get(name);
    if (before !== undefined && before.addresses.join() === addresses.join()) return false;
    if (all.length > MAX_DNS_RECORDS) {
      this.#options.logger.warning(
        "dns+{name}: {count} records, only the first {max} (sorted) are taken as upstreams",
        { name, count: all.length, max: MAX_DNS_RECORDS },
      );
    }
    this.#answers.set(name, { addresses });
    this.#warned.delete(name);
    this.#options.logger.info("dns+{name}: {count} record(s): {addresses}", {
      name,
      count: addresses.length,
      addresses: addresses.join(", "),
    });
    return true;
  }

  #failure(name: string, reason: string): void {
    this.#options.counters.dnsResolveFailures++;
    const now = Date.now();
    const warned = this.#warned.get(name);
    if (warned !== undefined && now - warned.at < DNS_DEFAULTS.warnEveryMs) {
      warned.since++;
      return;
    }
    const kept = this.#answers.get(name);
    this.#options.logger.warning(
      "dns+{name} could not be resolved ({reason}){more}: {kept}",
      {
        name,
        reason,
        more: warned && warned.since > 0 ? ` (and ${warned.since} more failures)` : "",
        kept: kept
          ? `the last good set (${kept.addresses.length} records) is kept`
          : "it is dialed by name until it resolves",
      },
    );
    this.#warned.set(name, { at: now, since: 0 });
  }
}
