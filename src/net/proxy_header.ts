/**
 * The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2): a load balancer
 * puts it in front of a client's bytes to say who the client is. A pure, incremental parser fed
 * chunks of any size ({@linkcode ProxyHeaderParser}), and the encoders of both versions
 * ({@linkcode encodeProxyHeader}) for `--send-proxy`.
 *
 * It lives in `net/`, not `protocol/`, because it reads addresses with `cidr.ts`'s
 * {@linkcode parseIp}, and `protocol/` imports nothing; like `cidr.ts` it touches no `Deno.*`.
 *
 * Bounds: a v1 line is at most {@linkcode PROXY_V1_MAX} bytes with its CRLF (the spec's own
 * limit); a v2 header at most {@linkcode PROXY_V2_MAX} bytes with its TLVs. The header is read
 * before any other limit applies, once per connection, so its size is what a peer that is
 * trusted to send one can make us hold; 4 KiB holds every TLV in use (ALPN, authority up to 255
 * bytes, unique id up to 128, the TLS fields with a certificate's CN, cloud vendors' endpoint
 * ids) many times over. A larger one is refused as `oversized` as soon as its length field is
 * read, before its body is.
 *
 * @module
 */
import { formatIp, parseIp } from "./cidr.ts";

/** The longest v1 line, `\r\n` included (the spec's limit). */
export const PROXY_V1_MAX = 107;
/** The longest v2 header we take, its 16 fixed bytes and TLVs included. */
export const PROXY_V2_MAX = 4096;
/** The 12 bytes a v2 header starts with. */
export const PROXY_V2_SIGNATURE: Uint8Array = Uint8Array.of(
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
);
/** The 6 bytes a v1 header starts with: `PROXY `. */
const V1_PREFIX = Uint8Array.of(0x50, 0x52, 0x4f, 0x58, 0x59, 0x20);
/** The shortest v1 line, `PROXY UNKNOWN\r\n`: more than the 12 bytes read to tell versions. */
const V1_MIN = 15;
const V2_FIXED = 16;

/** One end of the proxied connection, as the header gives it. */
export interface ProxyEndpoint {
  /** The address, normalised (`1.2.3.4`, `2001:db8::1`; an IPv4-mapped IPv6 one as IPv4). */
  hostname: string;
  /** The port, 0–65535. */
  port: number;
}

/** A header read in full. */
export interface ProxyHeader {
  version: 1 | 2;
  /** `local`: a v2 LOCAL (the balancer's own connection, a health check). */
  command: "proxy" | "local";
  /**
   * `tcp4`, `tcp6`; `unknown`: v1 `UNKNOWN`, v2 LOCAL, or a v2 family we do not relay (UNSPEC,
   * UNIX): the connection's own addresses stand.
   */
  family: "tcp4" | "tcp6" | "unknown";
  /** The client; unset when `family` is `unknown`. */
  source?: ProxyEndpoint;
  /** The address the client connected to; unset when `family` is `unknown`. */
  destination?: ProxyEndpoint;
  /** The header's size in bytes: the client's own bytes start there. */
  length: number;
}

/**
 * Why a header was refused: `missing` (the bytes are not a header at all), `malformed` (a
 * header, but broken), `oversized` (longer than the bounds).
 */
export type ProxyHeaderErrorKind = "missing" | "malformed" | "oversized";

/** What {@linkcode ProxyHeaderParser.push} says. */
export type ProxyHeaderResult =
  | { state: "more" }
  | {
    state: "done";
    header: ProxyHeader;
    /** How many bytes of the last chunk belong to the header; the rest are the client's. */
    consumed: number;
  }
  | { state: "invalid"; kind: ProxyHeaderErrorKind; reason: string };

const MORE: ProxyHeaderResult = Object.freeze({ state: "more" });

/**
 * What a connection's first bytes say: `header` (they start with `PROXY ` or the v2 signature),
 * `other` (they cannot be a header), `undecided` (too few bytes to tell; none is undecided).
 */
export function proxyHeaderStart(bytes: Uint8Array): "header" | "other" | "undecided" {
  for (const signature of [V1_PREFIX, PROXY_V2_SIGNATURE]) {
    const n = Math.min(bytes.length, signature.length);
    let i = 0;
    while (i < n && bytes[i] === signature[i]) i++;
    if (i === n) return n === signature.length ? "header" : "undecided";
  }
  return "other";
}

/**
 * Reads one PROXY header from chunks of any size. Holds at most the header's own bytes (never
 * more than {@linkcode PROXY_V2_MAX}), never those after it; once it has said `done` or
 * `invalid` it says the same again.
 */
export class ProxyHeaderParser {
  #buf = new Uint8Array(V2_FIXED);
  #length = 0;
  #final: ProxyHeaderResult | undefined;

  /** Feeds the next bytes. */
  push(chunk: Uint8Array): ProxyHeaderResult {
    if (this.#final !== undefined) return this.#final;
    const before = this.#length;
    let taken = 0;
    /** Buffers bytes of `chunk` until `total` are held (or the chunk ends). */
    const take = (total: number) => {
      const n = Math.min(total - this.#length, chunk.length - taken);
      if (n <= 0) return;
      if (this.#length + n > this.#buf.length) {
        const bigger = new Uint8Array(Math.max(total, this.#buf.length * 2));
        bigger.set(this.#buf.subarray(0, this.#length));
        this.#buf = bigger;
      }
      this.#buf.set(chunk.subarray(taken, taken + n), this.#length);
      this.#length += n;
      taken += n;
    };
    take(PROXY_V2_SIGNATURE.length);
    const start = proxyHeaderStart(this.#buf.subarray(0, this.#length));
    if (start === "other") {
      return this.#end({
        state: "invalid",
        kind: "missing",
        reason: "the connection does not start with a PROXY header",
      });
    }
    if (start === "undecided") return MORE;
    const result = this.#buf[0] === V1_PREFIX[0]
      ? this.#pushV1(chunk, taken, take)
      : this.#pushV2(take);
    if (result.state === "done") {
      return this.#end({ ...result, consumed: result.header.length - before });
    }
    return result.state === "invalid" ? this.#end(result) : result;
  }

  #end(result: ProxyHeaderResult): ProxyHeaderResult {
    this.#final = result;
    this.#buf = new Uint8Array(0);
    return result;
  }

  #pushV1(chunk: Uint8Array, taken: number, take: (total: number) => void): ProxyHeaderResult {
    let lf = this.#buf.subarray(0, this.#length).indexOf(10);
    if (lf < 0) {
      const at = chunk.subarray(taken).indexOf(10);
      take(Math.min(PROXY_V1_MAX, this.#length + (at < 0 ? chunk.length - taken : at + 1)));
      lf = this.#buf.subarray(0, this.#length).indexOf(10);
    }
    if (lf < 0) {
      if (this.#length < PROXY_V1_MAX) return MORE;
      return {
        state: "invalid",
        kind: "oversized",
        reason: `a v1 header without CRLF in its first ${PROXY_V1_MAX} bytes`,
      };
    }
    return parseV1Line(this.#buf.subarray(0, lf + 1));
  }

  #pushV2(take: (total: number) => void): ProxyHeaderResult {
    take(V2_FIXED);
    if (this.#length < V2_FIXED) return MORE;
    const b = this.#buf;
    const version = b[12] >> 4;
    const command = b[12] & 0x0f;
    if (version !== 2) {
      return malformed(`v2 signature with version ${version} (expected 2)`);
    }
    if (command > 1) return malformed(`v2 command ${command} (expected LOCAL 0 or PROXY 1)`);
    const total = V2_FIXED + ((b[14] << 8) | b[15]);
    if (total > PROXY_V2_MAX) {
      return {
        state: "invalid",
        kind: "oversized",
        reason: `a v2 header of ${total} bytes (at most ${PROXY_V2_MAX} are taken)`,
      };
    }
    take(total);
    if (this.#length < total) return MORE;
    return parseV2(this.#buf.subarray(0, total));
  }
}

function malformed(reason: string): ProxyHeaderResult {
  return { state: "invalid", kind: "malformed", reason };
}

const PORT = /^(0|[1-9][0-9]{0,4})$/;

function parsePort(text: string): number | undefined {
  if (!PORT.test(text)) return undefined;
  const port = Number(text);
  return port <= 65535 ? port : undefined;
}

/** One v1 line, `\n` included. */
function parseV1Line(line: Uint8Array): ProxyHeaderResult {
  if (line.length < V1_MIN || line[line.length - 2] !== 13) {
    return malformed("a v1 header must be a line ending in CRLF");
  }
  let text = "";
  for (let i = 0; i < line.length - 2; i++) {
    const c = line[i];
    if (c < 0x20 || c > 0x7e) return malformed("a v1 header with a byte that is not printable");
    text += String.fromCharCode(c);
  }
  const fields = text.split(" ");
  const family = fields[1];
  const length = line.length;
  // The spec: the receiver must ignore anything after UNKNOWN and use the connection's addresses.
  if (family === "UNKNOWN") {
    return {
      state: "done",
      header: { version: 1, command: "proxy", family: "unknown", length },
      consumed: 0,
    };
  }
  if (family !== "TCP4" && family !== "TCP6") {
    return malformed(`v1 protocol "${family.slice(0, 16)}" (expected TCP4, TCP6 or UNKNOWN)`);
  }
  if (fields.length !== 6) {
    return malformed(`a v1 ${family} header needs 4 fields separated by single spaces`);
  }
  const v6 = family === "TCP6";
  const address = (s: string): string | undefined => {
    // The plain written form only: no brackets or zone, and the family's own notation.
    if (/[[\]%]/.test(s) || s.includes(":") !== v6) return undefined;
    const bytes = parseIp(s);
    return bytes === undefined ? undefined : formatIp(bytes);
  };
  const source = address(fields[2]);
  const destination = address(fields[3]);
  if (source === undefined || destination === undefined) {
    return malformed(`a v1 ${family} header with an address that is not ${v6 ? "IPv6" : "IPv4"}`);
  }
  const sourcePort = parsePort(fields[4]);
  const destinationPort = parsePort(fields[5]);
  if (sourcePort === undefined || destinationPort === undefined) {
    return malformed("a v1 header with a port that is not 0-65535 in decimal");
  }
  return {
    state: "done",
    header: {
      version: 1,
      command: "proxy",
      family: v6 ? "tcp6" : "tcp4",
      source: { hostname: source, port: sourcePort },
      destination: { hostname: destination, port: destinationPort },
      length,
    },
    consumed: 0,
  };
}

/** Address bytes after the 16 fixed ones, by address family (INET, INET6, UNIX). */
const V2_ADDRESS_BYTES = [0, 12, 36, 216];

/** A whole v2 header. */
function parseV2(h: Uint8Array): ProxyHeaderResult {
  const length = h.length;
  if ((h[12] & 0x0f) === 0) {
    // LOCAL: the balancer's own connection; the spec says to ignore the address block.
    return {
      state: "done",
      header: { version: 2, command: "local", family: "unknown", length },
      consumed: 0,
    };
  }
  const family = h[13] >> 4;
  const transport = h[13] & 0x0f;
  if (family > 3 || transport > 2) {
    return malformed(`v2 address family byte 0x${h[13].toString(16).padStart(2, "0")}`);
  }
  if ((family === 1 || family === 2) && transport !== 1) {
    return malformed("a v2 header for a datagram or unspecified transport on a TCP listener");
  }
  const tlvs = V2_FIXED + V2_ADDRESS_BYTES[family];
  if (length < tlvs) return malformed("a v2 header shorter than its address block");
  for (let at = tlvs; at < length;) {
    if (at + 3 > length) return malformed("a v2 TLV cut short");
    at += 3 + ((h[at + 1] << 8) | h[at + 2]);
    if (at > length) return malformed("a v2 TLV longer than the header");
  }
  if (family !== 1 && family !== 2) {
    return {
      state: "done",
      header: { version: 2, command: "proxy", family: "unknown", length },
      consumed: 0,
    };
  }
  const size = family === 1 ? 4 : 16;
  const ip = (at: number) => {
    if (size === 16) return formatIp(h.subarray(at, at + 16));
    return `${h[at]}.${h[at + 1]}.${h[at + 2]}.${h[at + 3]}`;
  };
  const ports = V2_FIXED + 2 * size;
  return {
    state: "done",
    header: {
      version: 2,
      command: "proxy",
      family: family === 1 ? "tcp4" : "tcp6",
      source: { hostname: ip(V2_FIXED), port: (h[ports] << 8) | h[ports + 1] },
      destination: { hostname: ip(V2_FIXED + size), port: (h[ports + 2] << 8) | h[ports + 3] },
      length,
    },
    consumed: 0,
  };
}

/** Options for {@linkcode encodeProxyHeader}. */
export interface EncodeProxyHeaderOptions {
  /** The client. Unset (or either not an IP literal): a v1 `UNKNOWN` / v2 UNSPEC header. */
  source?: ProxyEndpoint;
  /** The address the client connected to. */
  destination?: ProxyEndpoint;
  /** v2: a LOCAL header (the sender's own connection, a health check); the addresses are ignored. */
  local?: boolean;
}

/**
 * Encodes a header (`--send-proxy`). When the two addresses are not of one family (an IPv4
 * client on an IPv6 listener), IPv4 ones are written IPv4-mapped in a TCP6 header; an address
 * that is not an IP literal gives v1 `UNKNOWN` / v2 `UNSPEC`.
 */
export function encodeProxyHeader(
  version: 1 | 2,
  options: EncodeProxyHeaderOptions = {},
): Uint8Array {
  const { source, destination } = options;
  const src = source && parseIp(source.hostname);
  const dst = destination && parseIp(destination.hostname);
  const known = src !== undefined && dst !== undefined && !(version === 2 && options.local);
  const mapped = (b: Uint8Array) =>
    b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
  const v4 = known && mapped(src) && mapped(dst);
  if (version === 1) {
    if (!known) return new TextEncoder().encode("PROXY UNKNOWN\r\n");
    const text = (b: Uint8Array) => v4 ? formatIp(b) : formatV6(b);
    return new TextEncoder().encode(
      `PROXY ${v4 ? "TCP4" : "TCP6"} ${text(src)} ${text(dst)} ${source!.port} ${
        destination!.port
      }\r\n`,
    );
  }
  const body = !known ? 0 : v4 ? 12 : 36;
  const out = new Uint8Array(V2_FIXED + body);
  out.set(PROXY_V2_SIGNATURE);
  // An unknown client is PROXY with family UNSPEC ("use the connection's addresses"); LOCAL says
  // the connection is the sender's own.
  out[12] = options.local ? 0x20 : 0x21;
  out[13] = !known ? 0x00 : v4 ? 0x11 : 0x21;
  out[14] = body >> 8;
  out[15] = body & 0xff;
  if (known) {
    const size = v4 ? 4 : 16;
    out.set(v4 ? src.subarray(12) : src, V2_FIXED);
    out.set(v4 ? dst.subarray(12) : dst, V2_FIXED + size);
    const ports = V2_FIXED + 2 * size;
    out[ports] = source!.port >> 8;
    out[ports + 1] = source!.port & 0xff;
    out[ports + 2] = destination!.port >> 8;
    out[ports + 3] = destination!.port & 0xff;
  }
  return out;
}

/** 16 bytes as IPv6 text, an IPv4-mapped address too (`::ffff:1.2.3.4`: TCP6 needs a colon). */
function formatV6(bytes: Uint8Array): string {
  const text = formatIp(bytes);
  return text.includes(":") ? text : `::ffff:${text}`;
}
