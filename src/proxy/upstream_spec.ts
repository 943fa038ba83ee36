/**
 * {@linkcode UpstreamSpec}: one configured upstream, as the pool serves it and `--forward` names it.
 *
 * @module
 */
import type { Address } from "../net/address.ts";

/** One configured upstream. */
export interface UpstreamSpec {
  /** Its name in logs, `/stats` and metric labels: given, or its address. */
  name: string;
  /** Where it listens. */
  address: Address;
  /** Share of new connections relative to the others (leastconn and roundrobin). */
  weight: number;
  /**
   * `dns+HOST:PORT`: `address.hostname` is a DNS name whose A/AAAA records are the upstreams. The
   * supervisor replaces the entry with one upstream per record (`NAME@IP`, same port and weight);
   * until a first answer it stands for itself, dialed by name. Unset: a plain address.
   */
  dns?: true;
}
