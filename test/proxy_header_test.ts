import assert from "node:assert/strict";
import fc from "fast-check";
import {
  encodeProxyHeader,
  PROXY_V1_MAX,
  PROXY_V2_MAX,
  PROXY_V2_SIGNATURE,
  type ProxyHeader,
  ProxyHeaderParser,
  type ProxyHeaderResult,
  proxyHeaderStart,
} from "../src/net/proxy_header.ts";
import { chunked, latin1 } from "./_util.ts";

const enc = new TextEncoder();

/** A v2 header: command byte, family byte, then the body (addresses and TLVs). */
function v2(command: number, family: number, body: number[], declared = body.length): Uint8Array {
  return Uint8Array.from([
    ...PROXY_V2_SIGNATURE,
    command,
    family,
    declared >> 8,
    declared & 0xff,
    ...body,
  ]);
}

const V4_BODY = [192, 0, 2, 1, 10, 0, 0, 1, 0xd4, 0x31, 0x1f, 0x42]; // 192.0.2.1:54321 -> 10.0.0.1:8002
const V6_BODY = [
  ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
  ...[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
  0,
  80,
  0xff,
  0xff,
];

/** What a complete parse gives, made comparable: the header, or the error kind. */
type Outcome = ProxyHeader | { invalid: string } | "more";

function outcome(result: ProxyHeaderResult): Outcome {
  if (result.state === "done") return result.header;
  if (result.state === "invalid") return { invalid: result.kind };
  return "more";
}

/** Feeds `chunks`; returns the outcome and the bytes after the header (the client's own). */
function feed(chunks: Uint8Array[]): { outcome: Outcome; rest: number[] } {
  const parser = new ProxyHeaderParser();
  for (let i = 0; i < chunks.length; i++) {
    const result = parser.push(chunks[i]);
    if (result.state === "more") continue;
    if (result.state === "invalid") return { outcome: outcome(result), rest: [] };
    assert.ok(result.consumed >= 0 && result.consumed <= chunks[i].length);
    const rest = [
      ...chunks[i].subarray(result.consumed),
      ...chunks.slice(i + 1).flatMap((c) => [...c]),
    ];
    return { outcome: outcome(result), rest };
  }
  return { outcome: "more", rest: [] };
}

/** Every split into one, two and three chunks, and byte by byte. */
function* chunkings(bytes: Uint8Array): Generator<Uint8Array[]> {
  yield [bytes];
  yield [...bytes].map((b) => Uint8Array.of(b));
  // Three chunks at every pair of cuts (a stride through the 4 KiB header: millions otherwise).
  const step = bytes.length > 200 ? 61 : 1;
  for (let i = 0; i <= bytes.length; i++) {
    yield [bytes.subarray(0, i), bytes.subarray(i)];
    for (let j = i; j <= bytes.length; j += step) {
      yield [bytes.subarray(0, i), bytes.subarray(i, j), bytes.subarray(j)];
    }
  }
}

const tcp4 = (
  src: string,
  sport: number,
  dst: string,
  dport: number,
  version: 1 | 2,
  length: number,
) => ({
  version,
  command: "proxy" as const,
  family: "tcp4" as const,
  source: { hostname: src, port: sport },
  destination: { hostname: dst, port: dport },
  length,
});

const v1Tcp4 = "PROXY TCP4 192.0.2.1 10.0.0.1 54321 8002\r\n";
const v1Tcp6 = "PROXY TCP6 2001:db8::7 ::1 80 65535\r\n";
const ffff = `${"ffff:".repeat(7)}ffff`;
const longestTcp6 = `PROXY TCP6 ${ffff} ${ffff} 65535 65535\r\n`;
// The spec's worst case, 107 bytes.
const longest = `PROXY UNKNOWN ${ffff} ${ffff} 65535 65535\r\n`;

const TABLE: [string, Uint8Array, Outcome][] = [
  ["v1 TCP4", enc.encode(v1Tcp4), tcp4("192.0.2.1", 54321, "10.0.0.1", 8002, 1, v1Tcp4.length)],
  ["v1 TCP6", enc.encode(v1Tcp6), {
    version: 1,
    command: "proxy",
    family: "tcp6",
    source: { hostname: "2001:db8::7", port: 80 },
    destination: { hostname: "::1", port: 65535 },
    length: v1Tcp6.length,
  }],
  ["v1 TCP6 IPv4-mapped", enc.encode("PROXY TCP6 ::ffff:192.0.2.9 ::1 1 2\r\n"), {
    version: 1,
    command: "proxy",
    family: "tcp6",
    source: { hostname: "192.0.2.9", port: 1 },
    destination: { hostname: "::1", port: 2 },
    length: 37,
  }],
  ["v1 longest TCP6", enc.encode(longestTcp6), {
    version: 1,
    command: "proxy",
    family: "tcp6",
    source: { hostname: ffff, port: 65535 },
    destination: { hostname: ffff, port: 65535 },
    length: longestTcp6.length,
  }],
  ["v1 longest (107 bytes)", enc.encode(longest), {
    version: 1,
    command: "proxy",
    family: "unknown",
    length: PROXY_V1_MAX,
  }],
  ["v1 UNKNOWN", enc.encode("PROXY UNKNOWN\r\n"), {
    version: 1,
    command: "proxy",
    family: "unknown",
    length: 15,
  }],
  ["v1 UNKNOWN with addresses", enc.encode("PROXY UNKNOWN ff::1 ::1 1 2\r\n"), {
    version: 1,
    command: "proxy",
    family: "unknown",
    length: 29,
  }],
  ["v1 without CR", enc.encode("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n"), { invalid: "malformed" }],
  ["v1 UDP4", enc.encode("PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n"), { invalid: "malformed" }],
  ["v1 TCP4 with IPv6", enc.encode("PROXY TCP4 ::1 ::1 1 2\r\n"), { invalid: "malformed" }],
  ["v1 TCP6 with IPv4", enc.encode("PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n"), {
    invalid: "malformed",
  }],
  ["v1 octet 256", enc.encode("PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n"), { invalid: "malformed" }],
  ["v1 port 65536", enc.encode("PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n"), { invalid: "malformed" }],
  ["v1 port 01", enc.encode("PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n"), { invalid: "malformed" }],
  ["v1 negative port", enc.encode("PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n"), { invalid: "malformed" }],
  ["v1 missing port", enc.encode("PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n"), { invalid: "malformed" }],
  ["v1 extra field", enc.encode("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n"), { invalid: "malformed" }],
  ["v1 double space", enc.encode("PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n"), { invalid: "malformed" }],
  ["v1 bracketed", enc.encode("PROXY TCP6 [::1] ::1 1 2\r\n"), { invalid: "malformed" }],
  ["v1 zone", enc.encode("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), { invalid: "malformed" }],
  ["v1 host name", enc.encode("PROXY TCP4 localhost 1.2.3.4 1 2\r\n"), { invalid: "malformed" }],
  ["v1 control byte", enc.encode("PROXY TCP4 1.2.3.4\t1.2.3.4 1 2\r\n"), { invalid: "malformed" }],
  ["v1 too short", enc.encode("PROXY TCP4\r\n"), { invalid: "malformed" }],
  ["v1 108 bytes without LF", enc.encode("PROXY UNKNOWN " + "x".repeat(94)), {
    invalid: "oversized",
  }],
  ["v1 LF at byte 108", enc.encode("PROXY UNKNOWN " + "x".repeat(92) + "\r\n"), {
    invalid: "oversized",
  }],
  ["v1 cut short", enc.encode("PROXY TCP4 1.2.3.4 "), "more"],
  ["a Foo line", enc.encode("REQ 1 hello\n"), { invalid: "missing" }],
  ["lower-case proxy", enc.encode("proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n"), { invalid: "missing" }],
  ["PROXY without space", enc.encode("PROXYTCP4\r\n"), { invalid: "missing" }],
  ["v2 TCP4", v2(0x21, 0x11, V4_BODY), tcp4("192.0.2.1", 54321, "10.0.0.1", 8002, 2, 28)],
  ["v2 TCP6", v2(0x21, 0x21, V6_BODY), {
    version: 2,
    command: "proxy",
    family: "tcp6",
    source: { hostname: "2001:db8::7", port: 80 },
    destination: { hostname: "::1", port: 65535 },
    length: 52,
  }],
  [
    "v2 TCP4 with TLVs",
    v2(0x21, 0x11, [...V4_BODY, 0x04, 0, 2, 0, 0, 0x02, 0, 1, 0x41]),
    tcp4(
      "192.0.2.1",
      54321,
      "10.0.0.1",
      8002,
      2,
      37,
    ),
  ],
  ["v2 LOCAL", v2(0x20, 0x00, []), { version: 2, command: "local", family: "unknown", length: 16 }],
  ["v2 LOCAL with an address block", v2(0x20, 0x11, V4_BODY), {
    version: 2,
    command: "local",
    family: "unknown",
    length: 28,
  }],
  ["v2 PROXY UNSPEC", v2(0x21, 0x00, []), {
    version: 2,
    command: "proxy",
    family: "unknown",
    length: 16,
  }],
  ["v2 UNIX", v2(0x21, 0x31, new Array(216).fill(0x61)), {
    version: 2,
    command: "proxy",
    family: "unknown",
    length: 232,
  }],
  [
    "v2 largest",
    v2(0x21, 0x11, [...V4_BODY, 0xee, 0x0f, 0xe1, ...new Array(4065).fill(0)]),
    tcp4(
      "192.0.2.1",
      54321,
      "10.0.0.1",
      8002,
      2,
      PROXY_V2_MAX,
    ),
  ],
  ["v2 one byte too large", v2(0x21, 0x11, [], 4081), { invalid: "oversized" }],
  ["v2 65535 declared", v2(0x21, 0x11, [], 65535), { invalid: "oversized" }],
  ["v2 version 1", v2(0x11, 0x11, V4_BODY), { invalid: "malformed" }],
  ["v2 command 2", v2(0x22, 0x11, V4_BODY), { invalid: "malformed" }],
  ["v2 UDP4", v2(0x21, 0x12, V4_BODY), { invalid: "malformed" }],
  ["v2 family 4", v2(0x21, 0x41, V4_BODY), { invalid: "malformed" }],
  ["v2 short address block", v2(0x21, 0x21, V4_BODY), { invalid: "malformed" }],
  ["v2 TLV past the end", v2(0x21, 0x11, [...V4_BODY, 0x04, 0, 9, 0]), { invalid: "malformed" }],
  ["v2 TLV cut", v2(0x21, 0x11, [...V4_BODY, 0x04, 0]), { invalid: "malformed" }],
  ["v2 cut short", v2(0x21, 0x11, V4_BODY).subarray(0, 20), "more"],
  ["v2 signature cut", PROXY_V2_SIGNATURE.subarray(0, 7), "more"],
  [
    "a signature gone wrong",
    Uint8Array.of(0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0d),
    {
      invalid: "missing",
    },
  ],
  ["TLS ClientHello", Uint8Array.of(0x16, 0x03, 0x01, 0x02, 0x00), { invalid: "missing" }],
  ["nothing", new Uint8Array(0), "more"],
];

Deno.test("ProxyHeaderParser reads v1 and v2 headers the same in every chunking, keeping the client's bytes after them", () => {
  const client = enc.encode("REQ 1 hello\nREQ 2");
  for (const [name, bytes, expected] of TABLE) {
    if (expected === "more") {
      // Cut short: in every chunking the parser waits for more.
      for (const chunks of chunkings(bytes)) assert.equal(feed(chunks).outcome, "more", name);
      continue;
    }
    const withClient = new Uint8Array([...bytes, ...client]);
    for (const chunks of chunkings(withClient)) {
      const got = feed(chunks);
      assert.deepEqual(got.outcome, expected, `${name}: ${chunks.map((c) => c.length)}`);
      if (typeof expected === "object" && "version" in expected) {
        assert.deepEqual(got.rest, [...client], `${name}: the bytes after the header`);
      }
    }
  }
});

Deno.test("ProxyHeaderParser says the same again after done or invalid", () => {
  const parser = new ProxyHeaderParser();
  const done = parser.push(enc.encode(v1Tcp4));
  assert.equal(done.state, "done");
  assert.equal(parser.push(enc.encode("more")), done);
  const bad = new ProxyHeaderParser();
  const invalid = bad.push(enc.encode("GET / HTTP/1.1\r\n"));
  assert.deepEqual(outcome(invalid), { invalid: "missing" });
  assert.equal(bad.push(enc.encode(v1Tcp4)), invalid);
});

Deno.test("an oversized v2 header is refused from its length field, before its body", () => {
  const parser = new ProxyHeaderParser();
  const result = parser.push(v2(0x21, 0x11, [], 60_000));
  assert.equal(result.state, "invalid");
  assert.match((result as { reason: string }).reason, /60016 bytes/);
});

Deno.test("proxyHeaderStart() tells a header, a Foo line and too few bytes apart", () => {
  assert.equal(proxyHeaderStart(enc.encode("PROXY ")), "header");
  assert.equal(proxyHeaderStart(enc.encode("PROXY TCP4")), "header");
  assert.equal(proxyHeaderStart(PROXY_V2_SIGNATURE), "header");
  assert.equal(proxyHeaderStart(new Uint8Array(0)), "undecided");
  assert.equal(proxyHeaderStart(enc.encode("PROX")), "undecided");
  assert.equal(proxyHeaderStart(PROXY_V2_SIGNATURE.subarray(0, 11)), "undecided");
  assert.equal(proxyHeaderStart(enc.encode("PROXYX")), "other");
  assert.equal(proxyHeaderStart(enc.encode("REQ 1 x\n")), "other");
  assert.equal(proxyHeaderStart(enc.encode("\r\n")), "undecided");
  assert.equal(proxyHeaderStart(enc.encode("\r\nREQ")), "other");
});

Deno.test("encodeProxyHeader() writes what the parser reads back, for both versions", () => {
  const cases = [
    {
      source: { hostname: "192.0.2.1", port: 54321 },
      destination: { hostname: "10.0.0.1", port: 8002 },
    },
    { source: { hostname: "2001:db8::7", port: 80 }, destination: { hostname: "::1", port: 1 } },
    // An IPv4 client on an IPv6 listener: both written as IPv6.
    { source: { hostname: "192.0.2.1", port: 1 }, destination: { hostname: "::", port: 2 } },
    {},
  ];
  for (const version of [1, 2] as const) {
    for (const c of cases) {
      const bytes = encodeProxyHeader(version, c);
      const result = new ProxyHeaderParser().push(bytes);
      assert.equal(result.state, "done", `v${version} ${JSON.stringify(c)}`);
      const header = (result as { header: ProxyHeader }).header;
      assert.equal(header.length, bytes.length);
      assert.equal(header.version, version);
      assert.deepEqual(header.source, "source" in c ? c.source : undefined);
      assert.deepEqual(header.destination, "destination" in c ? c.destination : undefined);
    }
  }
  assert.equal(new TextDecoder().decode(encodeProxyHeader(1, cases[0])), v1Tcp4);
  assert.deepEqual(encodeProxyHeader(2, cases[0]), v2(0x21, 0x11, V4_BODY));
  assert.deepEqual(encodeProxyHeader(2, {}), v2(0x21, 0x00, []));
});

Deno.test("ProxyHeaderParser property: random bytes never throw, never read past the header, and any chunking agrees", () => {
  // Random bytes, and random bytes behind each signature (so the header paths are exercised).
  const bytesArb = fc.oneof(
    fc.uint8Array({ maxLength: 300 }),
    fc.uint8Array({ maxLength: 300 }).map((b) => new Uint8Array([...enc.encode("PROXY "), ...b])),
    fc.uint8Array({ maxLength: 300 }).map((b) => new Uint8Array([...PROXY_V2_SIGNATURE, ...b])),
    fc.tuple(
      fc.constantFrom(0x20, 0x21),
      fc.constantFrom(0x00, 0x11, 0x21, 0x31),
      fc.uint8Array({
        maxLength: 120,
      }),
    ).map(([c, f, b]) => v2(c, f, [...b], Math.min(b.length, 60))),
  );
  fc.assert(
    fc.property(bytesArb, fc.array(fc.nat(), { maxLength: 12 }), (bytes, cuts) => {
      const whole = feed([bytes]);
      const split = feed(chunked(latin1(bytes), cuts));
      assert.deepEqual(split, whole);
      if (typeof whole.outcome === "object" && "version" in whole.outcome) {
        assert.ok(whole.outcome.length <= bytes.length);
        assert.deepEqual(whole.rest, [...bytes.subarray(whole.outcome.length)]);
        // The header alone gives the same header: nothing after it was needed.
        assert.deepEqual(feed([bytes.subarray(0, whole.outcome.length)]).outcome, whole.outcome);
      }
    }),
    { numRuns: 2000 },
  );
});
