import { deepEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { CidrList, formatIp, parseCidr, parseIp } from "../src/net/cidr.ts";

Deno.test("parseIp() reads IPv4 as mapped IPv6 and IPv6 in every written form", () => {
  const table: [string, string | undefined][] = [
    ["127.0.0.1", "127.0.0.1"],
    ["::ffff:10.1.2.3", "10.1.2.3"],
    ["::1", "::1"],
    ["[::1]", "::1"],
    ["fe80::1%eth0", "fe80::1"],
    ["2001:db8:0:0:0:0:0:1", "2001:db8::1"],
    ["2001:db8::", "2001:db8::"],
    ["::", "::"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
    ["1:0:0:2:0:0:0:3", "1:0:0:2::3"],
    ["256.0.0.1", undefined],
    ["010.0.0.1", undefined],
    ["1.2.3", undefined],
    ["1::2::3", undefined],
    ["1:2:3:4:5:6:7:8:9", undefined],
    ["1:2:3:4:5:6:7::8", undefined],
    ["12345::", undefined],
    ["g::1", undefined],
    ["", undefined],
    ["localhost", undefined],
  ];
  for (const [text, expected] of table) {
    const bytes = parseIp(text);
    assertEquals(bytes === undefined ? undefined : formatIp(bytes), expected, text);
  }
});

Deno.test("parseCidr() normalises ranges and refuses bad prefixes and host bits", () => {
  assertEquals(parseCidr("10.0.0.0/8").text, "10.0.0.0/8");
  assertEquals(parseCidr("127.0.0.1").text, "127.0.0.1/32");
  assertEquals(parseCidr("2001:DB8::/32").text, "2001:db8::/32");
  assertEquals(parseCidr("::/0").text, "::/0");
  for (const bad of ["10.0.0.1/8", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/08", "x/8"]) {
    throws(() => parseCidr(bad), RangeError, bad);
  }
});

Deno.test("CidrList.has() matches IPv4, IPv6 and mapped addresses by prefix", () => {
  const list = CidrList.parse(" 10.0.0.0/8, 192.168.1.128/25 ,2001:db8::/32,::1");
  assert(list.has("10.255.0.1"));
  assert(list.has("::ffff:10.0.0.9"));
  assert(!list.has("11.0.0.1"));
  assert(list.has("192.168.1.200"));
  assert(!list.has("192.168.1.127"));
  assert(list.has("2001:db8:ffff::1"));
  assert(!list.has("2001:db9::1"));
  assert(list.has("::1"));
  assert(!list.has("::2"));
  assert(!list.has("not an address"));
  assertEquals(list.toString(), "10.0.0.0/8,192.168.1.128/25,2001:db8::/32,::1/128");
  assert(CidrList.parse("").empty);
  // 0.0.0.0/0 is every IPv4 address, not every address.
  const v4 = CidrList.parse("0.0.0.0/0");
  assert(v4.has("1.2.3.4") && !v4.has("2001:db8::1"));
  assert(CidrList.parse("::/0").has("1.2.3.4"));
});
