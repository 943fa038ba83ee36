/**
 * Parsing and printing of `host:port` addresses as the CLI accepts them.
 *
 * @module
 */

/** A TCP address: a hostname (or IP literal, without brackets) and a port. */
export interface Address {
  /** Hostname or IP literal; IPv6 literals are stored without brackets. */
  hostname: string;
  /** TCP port, 0–65535 (0 asks the OS for a free port when listening). */
  port: number;
}

/** Options for {@linkcode parseAddress}. */
export interface ParseAddressOptions {
  /**
   * Hostname used when the text gives only a port (`8002` or `:8002`).
   * @default {"0.0.0.0"}
   */
  defaultHost?: string;
}

/**
 * Parses `:8002`, `8002`, `host:8002`, `1.2.3.4:8002` or `[::1]:8002`.
 *
 * @throws {RangeError} when the text is not one of those forms or the port is out of range.
 */
export function parseAddress(text: string, options: ParseAddressOptions = {}): Address {
  const defaultHost = options.defaultHost ?? "0.0.0.0";
  const bad = (why: string) => new RangeError(`Invalid address "${text}": ${why}`);
  const trimmed = text.trim();
  if (trimmed === "") throw bad("it is empty");
  let host: string;
  let portText: string;
  if (trimmed.startsWith("[")) {
    const close = trimmed.indexOf("]");
    if (close < 0) throw bad("missing ']' after the IPv6 literal");
    host = trimmed.slice(1, close);
    if (trimmed[close + 1] !== ":") throw bad("expected ':<port>' after ']'");
    portText = trimmed.slice(close + 2);
    if (host === "" || !/^[0-9a-fA-F:.]+(%[\w.-]+)?$/.test(host)) {
      throw bad("not an IPv6 literal inside brackets");
    }
  } else {
    const colon = trimmed.lastIndexOf(":");
    if (colon < 0) {
      host = "";
      portText = trimmed;
    } else {
      host = trimmed.slice(0, colon);
      portText = trimmed.slice(colon + 1);
      if (host.includes(":")) {
        throw bad("IPv6 literals must be written in brackets, like [::1]:8002");
      }
    }
    if (host !== "" && !/^[A-Za-z0-9.-]+$/.test(host)) throw bad(`bad host name "${host}"`);
  }
  if (!/^\d{1,5}$/.test(portText)) throw bad("the port must be a number from 0 to 65535");
  const port = Number(portText);
  if (port > 65535) throw bad("the port must be a number from 0 to 65535");
  return { hostname: host === "" ? defaultHost : host, port };
}

/** Formats an address back to `host:port`, bracketing IPv6 literals. */
export function formatAddress(address: Address): string {
  const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname;
  return `${host}:${address.port}`;
}
