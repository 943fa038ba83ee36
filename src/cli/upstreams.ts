/**
 * The `--forward` list: one or more upstreams, comma-separated and/or from repeated flags, each
 * `[NAME=]ADDR[*WEIGHT]` (`a:8001,b:8001*3`, `primary=10.0.0.1:8001`), where ADDR may be
 * `dns+HOST:PORT`: every A/AAAA record of HOST is an upstream (a Kubernetes headless Service).
 *
 * @module
 */
import { formatAddress } from "../net/address.ts";
import { parseAddressFlag } from "./address_flag.ts";
import { parseDuration } from "./duration.ts";
import { UsageError } from "./flags.ts";
import type { UpstreamSpec } from "../proxy/upstream_spec.ts";

/** Largest weight accepted. */
export const MAX_WEIGHT = 1000;

/**
 * Most upstreams one proxy takes: each is health-checked and has a row in every stats line and
 * ten `/metrics` series; past this a set is a misconfiguration (or an attack on a config file).
 */
export const MAX_UPSTREAMS = 1000;

/**
 * Most records one `dns+` name yields (the lowest addresses, so the same ones whatever their order
 * in the answer); each such entry counts this much toward {@linkcode MAX_UPSTREAMS}.
 */
export const MAX_DNS_RECORDS = 64;

/** The prefix of a `--forward` entry whose upstreams are a DNS name's records. */
export const DNS_PREFIX = "dns+";

/** Shortest `--health-interval` other than 0 (none): faster checks are probe floods. */
export const MIN_HEALTH_INTERVAL_MS = 100;

/**
 * Parses `--health-interval`: a duration of at least {@linkcode MIN_HEALTH_INTERVAL_MS}, or 0
 * (no active checks).
 *
 * @throws {UsageError} for a bad duration or one below the floor.
 */
export function parseHealthInterval(value: string | boolean | undefined): number {
  const ms = parseDuration("health-interval", value);
  if (ms > 0 && ms < MIN_HEALTH_INTERVAL_MS) {
    throw new UsageError(
      `--health-interval: ${
        String(value).trim()
      } is below the floor of ${MIN_HEALTH_INTERVAL_MS}ms (0 turns the checks off)`,
    );
  }
  return ms;
}

/**
 * Parses `--forward` values (each may hold a comma-separated list).
 *
 * @throws {UsageError} naming the bad entry: empty, bad address, bad weight, duplicate name, an
 * address after `dns+`; or for more than {@linkcode MAX_UPSTREAMS} upstreams (a `dns+` entry
 * counting as {@linkcode MAX_DNS_RECORDS}).
 */
export function parseUpstreams(
  values: readonly string[],
  defaultHost = "localhost",
): UpstreamSpec[] {
  const specs: UpstreamSpec[] = [];
  const names = new Set<string>();
  let count = 0;
  for (const value of values) {
    for (const raw of value.split(",")) {
      const text = raw.trim();
      if (text === "") throw new UsageError(`--forward: an empty entry in "${value}"`);
      const named = /^([A-Za-z][\w.-]{0,62})=(.+)$/.exec(text);
      const rest = named ? named[2] : text;
      const weighted = /^(.*)\*(\d+)$/.exec(rest);
      const dns = (weighted ? weighted[1] : rest).startsWith(DNS_PREFIX);
      const addressText = (weighted ? weighted[1] : rest).slice(dns ? DNS_PREFIX.length : 0);
      const weight = weighted ? Number(weighted[2]) : 1;
      if (!Number.isSafeInteger(weight) || weight < 1 || weight > MAX_WEIGHT) {
        throw new UsageError(
          `--forward: invalid weight in "${text}": expected an integer from 1 to ${MAX_WEIGHT}`,
        );
      }
      const address = parseAddressFlag("forward", addressText, { defaultHost });
      const name = named ? named[1] : formatAddress(address);
      if (names.has(name)) throw new UsageError(`--forward: "${name}" is given twice`);
      names.add(name);
      if (dns) {
        if (/^[\d.]+$|:/.test(address.hostname)) {
          throw new UsageError(
            `--forward: "${text}": ${DNS_PREFIX} needs a DNS name, not an address`,
          );
        }
        specs.push({ name, address, weight, dns: true });
        count += MAX_DNS_RECORDS;
      } else {
        specs.push({ name, address, weight });
        count++;
      }
      if (count > MAX_UPSTREAMS) {
        throw new UsageError(
          `--forward: more than ${MAX_UPSTREAMS} upstreams; a proxy takes at most ${MAX_UPSTREAMS}` +
            ` (a ${DNS_PREFIX} name counts as ${MAX_DNS_RECORDS})`,
        );
      }
    }
  }
  if (specs.length === 0) throw new UsageError("--forward: no upstream given");
  return specs;
}
