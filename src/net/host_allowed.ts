/**
 * Whether a request's `Host` names the admin server it reached: the defence against DNS
 * rebinding, where a page on the attacker's name, rebound to 127.0.0.1, talks to a loopback admin
 * port as a same-origin page (its `Origin`, `Sec-Fetch-Site` and `Host` all agree) — only the name
 * in `Host` gives it away.
 *
 * A rebinding attack always carries a DNS name, so an IP literal cannot be one; the port is not
 * compared (an SSH tunnel or `kubectl port-forward` changes it, and it proves nothing).
 *
 * @module
 */

/** Options for {@linkcode hostAllowed}. */
export interface HostAllowedOptions {
  /** The hostname the server listens on (`0.0.0.0` or `::`: every interface). */
  bound: string;
  /**
   * More names (or addresses) that are this server's, compared without case and port; `"*"`
   * allows any `Host`. @default {[]}
   */
  allowed?: readonly string[];
}

const IPV4 = /^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/**
 * Whether `host` (a `Host` header value, `name[:port]` or `[v6]:port`; empty: none was sent) may
 * be served: a name in `allowed`; `localhost`; the bound address itself; with a loopback bind any
 * loopback literal; with a wildcard bind (its literals cannot be known) any IP literal. An empty
 * `Host` (HTTP/1.0, or a request for no authority) is allowed: no browser sends one.
 */
export function hostAllowed(host: string, options: HostAllowedOptions): boolean {
  if (host === "") return true;
  const name = hostName(host);
  for (const entry of options.allowed ?? []) {
    if (entry === "*" || hostName(entry) === name) return true;
  }
  if (name === "localhost") return true;
  const bound = hostName(options.bound);
  if (bound === "0.0.0.0" || bound === "::" || bound === "") return ipLiteral(name) !== undefined;
  if (bound === "localhost" || isLoopbackLiteral(bound)) return isLoopbackLiteral(name);
  return name === bound || (ipLiteral(name) !== undefined && ipLiteral(name) === ipLiteral(bound));
}

/**
 * `host` without its port and brackets, lower-cased, and without the one trailing dot of a fully
 * qualified name (`localhost.` is `localhost`: what a browser sends for `http://localhost.:8088/`).
 */
function hostName(host: string): string {
  const lower = host.toLowerCase();
  if (lower.startsWith("[")) {
    const end = lower.indexOf("]");
    return end < 0 ? lower : lower.slice(1, end);
  }
  const colon = lower.indexOf(":");
  // More than one colon: a bare IPv6 address (an option's value), not name:port.
  if (colon >= 0 && lower.indexOf(":", colon + 1) >= 0) return lower;
  const name = colon < 0 ? lower : lower.slice(0, colon);
  return name.endsWith(".") ? name.slice(0, -1) : name;
}

/** The canonical text of an IPv4 or IPv6 literal (unbracketed), or undefined for a name. */
function ipLiteral(name: string): string | undefined {
  if (IPV4.test(name)) return name;
  if (!name.includes(":") || !/^[0-9a-f:.]+$/.test(name)) return undefined;
  try {
    return new URL(`http://[${name}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
}

function isLoopbackLiteral(name: string): boolean {
  const ip = ipLiteral(name);
  return ip !== undefined && (ip.startsWith("127.") || ip === "::1");
}
