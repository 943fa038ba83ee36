/**
 * IP address ranges (`10.0.0.0/8`, `2001:db8::/32`, a bare address) and lists of them, for the
 * edge's source checks (`--allow`, `--deny`, `--accept-proxy`). Addresses are compared as 16
 * bytes: an IPv4 address is its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`), so `10.0.0.0/8` also
 * matches a dual-stack listener's `::ffff:10.1.2.3`.
 *
 * @module
 */

/** One range: the first address (as 16 bytes, host bits zero) and the prefix length (0–128). */
export interface Cidr {
  /** The network address, IPv4 mapped into IPv6. */
  readonly bytes: Uint8Array;
  /** Leading bits that must match, counted on the 16-byte form. */
  readonly bits: number;
  /** How it was written, normalised (`10.0.0.0/8`). */
  readonly text: string;
}

/**
 * Parses an IPv4 or IPv6 address (brackets and a zone `%eth0` allowed) into 16 bytes, an IPv4
 * address mapped (`::ffff:a.b.c.d`). Returns `undefined` for anything else.
 */
export function parseIp(text: string): Uint8Array | undefined {
  let s = text.trim();
  if (s.startsWith("[") && s.endsWith("]")) s = s.slice(1, -1);
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  if (s.includes(":")) return parseIpv6(s);
  const v4 = parseIpv4(s);
  if (v4 === undefined) return undefined;
  const bytes = new Uint8Array(16);
  bytes[10] = 0xff;
  bytes[11] = 0xff;
  bytes.set(v4, 12);
  return bytes;
}

function parseIpv4(s: string): Uint8Array | undefined {
  const parts = s.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    // Decimal only, no leading zeros: `010` is octal to some parsers, so it is refused.
    if (!/^(0|[1-9][0-9]{0,2})$/.test(parts[i])) return undefined;
    const n = Number(parts[i]);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

function parseIpv6(s: string): Uint8Array | undefined {
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const groups = (part: string): number[] | undefined => {
    if (part === "") return [];
    const out: number[] = [];
    const fields = part.split(":");
    for (let i = 0; i < fields.length; i++) {
      const field = fields[i];
      if (i === fields.length - 1 && field.includes(".")) {
        const v4 = parseIpv4(field);
        if (v4 === undefined) return undefined;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(field)) {
        out.push(parseInt(field, 16));
      } else {
        return undefined;
      }
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (head === undefined || tail === undefined) return undefined;
  const given = head.length + tail.length;
  if (halves.length === 1 ? given !== 8 : given > 7) return undefined;
  const all = [...head, ...new Array(8 - given).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    bytes[2 * i] = all[i] >> 8;
    bytes[2 * i + 1] = all[i] & 0xff;
  }
  return bytes;
}

/** Whether 16 bytes are an IPv4-mapped address. */
function isMapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** Formats 16 bytes as an address: dotted IPv4 when mapped, else compressed IPv6. */
export function formatIp(bytes: Uint8Array): string {
  if (isMapped(bytes)) return `${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push((bytes[2 * i] << 8) | bytes[2 * i + 1]);
  // The longest run of two or more zero groups becomes `::`.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(":");
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLen).join(":")}`;
}

/**
 * Parses one range: `a.b.c.d/n` (n 0–32), `x::y/n` (n 0–128) or a bare address (every bit).
 *
 * @throws {RangeError} naming the text, for anything else or host bits set beyond the prefix
 * (`10.0.0.1/8` is refused rather than silently widened).
 */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf("/");
  const addressText = slash < 0 ? text : text.slice(0, slash);
  const bytes = parseIp(addressText);
  if (bytes === undefined) {
    throw new RangeError(`Invalid address range "${text}": expected an IPv4 or IPv6 address`);
  }
  const v4 = !addressText.includes(":");
  const max = v4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const bitsText = text.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(bitsText) || Number(bitsText) > max) {
      throw new RangeError(`Invalid address range "${text}": the prefix must be 0 to ${max}`);
    }
    prefix = Number(bitsText);
  }
  const bits = v4 ? prefix + 96 : prefix;
  for (let bit = bits; bit < 128; bit++) {
    if (bytes[bit >> 3] & (0x80 >> (bit & 7))) {
      throw new RangeError(
        `Invalid address range "${text}": bits are set past the /${prefix} prefix`,
      );
    }
  }
  return { bytes, bits, text: `${formatIp(bytes)}/${prefix}` };
}

/** Whether `address` (16 bytes) lies in `range`. */
export function cidrContains(range: Cidr, address: Uint8Array): boolean {
  const full = range.bits >> 3;
  for (let i = 0; i < full; i++) if (address[i] !== range.bytes[i]) return false;
  const rest = range.bits & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (address[full] & mask) === range.bytes[full];
}

/** A list of ranges, matched in any order (`--allow 10.0.0.0/8,::1`). */
export class CidrList {
  /** The ranges, normalised. */
  readonly ranges: readonly Cidr[];

  /** Creates a list from ranges. */
  constructor(ranges: readonly Cidr[]) {
    this.ranges = ranges;
  }

  /**
   * Parses a comma-separated list (spaces around items allowed; empty items ignored).
   *
   * @throws {RangeError} for an invalid item (see {@linkcode parseCidr}).
   */
  static parse(text: string): CidrList {
    const items = text.split(",").map((item) => item.trim()).filter((item) => item !== "");
    return new CidrList(items.map(parseCidr));
  }

  /** Whether the list holds no range. */
  get empty(): boolean {
    return this.ranges.length === 0;
  }

  /** Whether `address` (text, or 16 bytes from {@linkcode parseIp}) is in a range; bad text is not. */
  has(address: string | Uint8Array): boolean {
    const bytes = typeof address === "string" ? parseIp(address) : address;
    if (bytes === undefined) return false;
    for (const range of this.ranges) if (cidrContains(range, bytes)) return true;
    return false;
  }

  /** The ranges as they would be written back (`10.0.0.0/8,::1/128`). */
  toString(): string {
    return this.ranges.map((range) => range.text).join(",");
  }
}
