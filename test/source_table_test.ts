import { deepEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parseIp } from "../src/net/cidr.ts";
import {
  createSourceTableBuffer,
  keyedHash,
  SOURCE_LIMITED,
  SourceRate,
  SourceTable,
  sourceTableSlots,
  TABLE_FULL,
} from "../src/proxy/source_table.ts";

const ip = (text: string) => parseIp(text)!;

/** A random IPv6 address (16 bytes). */
function randomAddress(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(16));
}

Deno.test("SourceTable counts each source's connections and refuses past the limit", () => {
  const table = new SourceTable(createSourceTableBuffer(100));
  const a = ip("127.0.0.1");
  const b = ip("::1");
  const s1 = table.open(a, 2, 10, 0);
  const s2 = table.open(a, 2, 10, 0);
  assert(s1 >= 0 && s1 === s2);
  assertEquals(table.open(a, 2, 10, 0), SOURCE_LIMITED);
  assert(table.open(b, 2, 10, 0) >= 0, "another source has its own count");
  assertEquals(table.connections(a), 2);
  table.close(s1);
  assertEquals(table.connections(a), 1);
  assert(table.open(a, 2, 10, 0) >= 0, "room again once one closed");
  assertEquals(table.usage(), { entries: 2, connections: 3 });
});

Deno.test("SourceTable's token bucket refills at the rate, up to the burst, and takes whole tokens", () => {
  const table = new SourceTable(createSourceTableBuffer(10));
  const slot = table.open(ip("10.0.0.1"), 0, 5, 1000);
  assertEquals(table.take(slot, 100, 10, 5, 1000), 5, "the burst at once");
  assertEquals(table.take(slot, 100, 10, 5, 1000), 0);
  assertEquals(table.waitMs(slot, 10), 100, "a token every 100 ms at 10/s");
  // Two connections of the source waiting: each waits for its share (the pair wakes 10 times a
  // second, not 20), never more than a second.
  const second = table.open(ip("10.0.0.1"), 0, 5, 1000);
  assertEquals(second, slot);
  assertEquals(table.waitMs(slot, 10), 200);
  assertEquals(table.waitMs(slot, 1), 1000);
  table.close(second);
  assertEquals(table.take(slot, 100, 10, 5, 1250), 2, "2.5 tokens in 250 ms: two whole ones");
  table.giveBack(slot, 1, 5);
  assertEquals(table.take(slot, 100, 10, 5, 1250), 1);
  assertEquals(table.take(slot, 100, 10, 5, 60_000), 5, "never more than the burst");
  // A clock that goes back refills nothing and takes nothing away.
  assertEquals(table.take(slot, 100, 10, 5, 0), 0);
  const rate = new SourceRate(table, slot, 10, 5, () => 61_000);
  assertEquals(rate.take(3), 3);
  rate.giveBack(3);
  assertEquals(rate.take(100), 5);
});

Deno.test("SourceTable keeps live sources through a flood of random ones, in the same memory", () => {
  const buffer = createSourceTableBuffer(1000);
  const table = new SourceTable(buffer);
  const bytes = buffer.byteLength;
  // 1000 live sources (the connection limit's worth), each with a connection open.
  const live = Array.from({ length: 1000 }, randomAddress);
  const slots = live.map((a) => table.open(a, 0, 1, 0));
  assert(slots.every((s) => s >= 0), "every live source fits");
  // 200 000 one-shot sources come and go (a scan, a spoofed flood behind a PROXY peer).
  let full = 0;
  for (let i = 0; i < 200_000; i++) {
    const slot = table.open(randomAddress(), 0, 1, i);
    if (slot === TABLE_FULL) full++;
    else table.close(slot);
  }
  assertEquals(full, 0, "idle entries are reused: the flood never finds the table full");
  assertEquals(buffer.byteLength, bytes);
  const usage = table.usage();
  assert(usage.entries <= sourceTableSlots(1000), `${usage.entries} entries`);
  assertEquals(usage.connections, 1000);
  for (const a of live) assertEquals(table.connections(a), 1, "no live source was evicted");
});

Deno.test("SourceTable says when both buckets of a source are full of live sources", () => {
  // The smallest table: 2 buckets of 8; 16 live sources fill it.
  const table = new SourceTable(createSourceTableBuffer(1));
  assertEquals(table.slots, 16);
  let opened = 0;
  let full = 0;
  for (let i = 0; i < 40; i++) {
    const slot = table.open(randomAddress(), 0, 1, 0);
    if (slot >= 0) opened++;
    else if (slot === TABLE_FULL) full++;
  }
  assertEquals(opened, 16);
  assertEquals(full, 24);
});

Deno.test("keyedHash() depends on the key: another process puts the same address elsewhere", () => {
  const a = ip("192.0.2.1");
  const one = new Int32Array(2);
  const two = new Int32Array(2);
  keyedHash(a, 1, 2, one);
  keyedHash(a, 1, 3, two);
  assert(one[0] !== two[0] || one[1] !== two[1]);
  keyedHash(a, 1, 2, two);
  assertEquals([...one], [...two]);
});

Deno.test("SourceTable used by two Workers at once loses no count and hands out no extra token", async () => {
  const buffer = createSourceTableBuffer(64);
  const start = new SharedArrayBuffer(4);
  const addresses = [ip("127.0.0.1"), ip("127.0.0.2"), ip("::1")];
  const rounds = 1_000_000;
  // A token every 10 rounds per address: scarce, so two workers race for each one.
  const rate = 100;
  const burst = 50;
  const workers = [0, 1].map(() =>
    new Worker(new URL("./_source_table_worker.ts", import.meta.url), { type: "module" })
  );
  try {
    const results = workers.map((w) =>
      new Promise<{ tokens: number; refused: number }>((resolve) =>
        w.onmessage = (e) => resolve(e.data)
      )
    );
    // They meet at a barrier in `start`, then run at once.
    for (const w of workers) w.postMessage({ buffer, addresses, rounds, rate, burst, start });
    const done = await Promise.all(results);
    const table = new SourceTable(buffer);
    for (const a of addresses) assertEquals(table.connections(a), 0, "every open was closed");
    assertEquals(done.map((d) => d.refused), [0, 0]);
    // The clocks ran to `rounds` ms: each address refilled rate × time at most, after its burst.
    const tokens = done.reduce((sum, d) => sum + d.tokens, 0);
    const max = addresses.length * (burst + rate * rounds / 1000);
    assert(tokens <= max, `${tokens} tokens handed out, at most ${max} refilled`);
  } finally {
    for (const w of workers) w.terminate();
  }
});

Deno.test("a bucket lock whose holder was ended mid-update is taken over after a second", () => {
  const buffer = createSourceTableBuffer(1);
  const table = new SourceTable(buffer);
  // Every lock word held, as by a Worker terminated inside an update (header: 8 words, then 8
  // words a slot, the lock first).
  const words = new Int32Array(buffer);
  for (let slot = 0; slot < table.slots; slot++) words[8 + slot * 8] = 1;
  const started = performance.now();
  const slot = table.open(ip("127.0.0.1"), 0, 1, 0);
  const waited = performance.now() - started;
  assert(slot >= 0);
  assert(waited >= 900 && waited < 5000, `waited ${waited} ms`);
  assertEquals(table.connections(ip("127.0.0.1")), 1);
});
