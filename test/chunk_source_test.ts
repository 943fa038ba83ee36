import assert from "node:assert/strict";
import { BufferPool } from "../src/proxy/buffer_pool.ts";
import { ChunkSource } from "../src/proxy/chunk_source.ts";
import { listenLocal, withTimeout, writeAll } from "./_util.ts";

/** A connected pair on 127.0.0.1: `a` writes, `b` is read through a source. */
async function pair(): Promise<{ a: Deno.TcpConn; b: Deno.TcpConn; close(): void }> {
  using listener = listenLocal();
  const [a, b] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  return {
    a,
    b,
    close() {
      for (const c of [a, b]) {
        try {
          c.close();
        } catch {
          // closed already
        }
      }
    },
  };
}

/** Reads chunks until `total` bytes came; returns them joined and the buffer size of each read. */
async function readAll(
  source: ChunkSource,
  total: number,
): Promise<{ data: Uint8Array; sizes: number[] }> {
  const data = new Uint8Array(total);
  const sizes: number[] = [];
  let got = 0;
  while (got < total) {
    sizes.push(source.bufferSize);
    const chunk = await withTimeout(source.next(), 5000, "a chunk");
    assert.ok(chunk !== null, "stream ended early");
    data.set(chunk, got);
    got += chunk.length;
  }
  return { data, sizes };
}

Deno.test("ChunkSource reads into its small buffer while idle, a pooled large one while data flows, and goes back", async () => {
  const { a, b, close } = await pair();
  try {
    const pool = new BufferPool(4096);
    const source = new ChunkSource(b, { initialSize: 64, pool });
    // Lock-step traffic: one short line at a time stays in the small buffer.
    for (let i = 0; i < 3; i++) {
      await writeAll(a, "REQ 1 hi\n");
      const { sizes } = await readAll(source, 9);
      assert.deepEqual(sizes, [64]);
    }
    assert.equal(pool.lent, 0);
    // A burst fills the small buffer: the following reads borrow a large one.
    const burst = new Uint8Array(200_000).map((_, i) => 65 + (i % 26));
    const writing = writeAll(a, burst);
    const { data, sizes } = await readAll(source, burst.length);
    await writing;
    assert.deepEqual(data, burst);
    assert.equal(sizes[0], 64);
    assert.ok(sizes.includes(4096), `large reads expected: ${sizes.join(",")}`);
    assert.ok(!sizes.some((s) => s !== 64 && s !== 4096), sizes.join(","));
    // The flow stops: a small read gives the large buffer back before the next read waits.
    await writeAll(a, "REQ 2\n");
    await readAll(source, 6);
    await writeAll(a, "REQ 3\n");
    const after = await readAll(source, 6);
    assert.deepEqual(after.sizes, [64]);
    assert.equal(pool.lent, 0, "the large buffer went back to the pool");
    assert.equal(pool.free, 1);
  } finally {
    close();
  }
});

Deno.test("ChunkSource keeps a partial line across buffer changes, whatever the chunking", async () => {
  const { a, b, close } = await pair();
  try {
    const pool = new BufferPool(1024);
    const source = new ChunkSource(b, { initialSize: 16, maxSize: 8192, pool });
    // Lines of growing length (up to 5 KiB: beyond the pool's size), relayed whole lines only.
    const lines: string[] = [];
    for (let i = 1; i <= 40; i++) lines.push(`ACK ${i} ${"x".repeat(i * i * 3)}\n`);
    const text = lines.join("");
    const writing = (async () => {
      const bytes = new TextEncoder().encode(text);
      // Uneven writes, so reads end mid-line in every buffer size.
      for (let off = 0, k = 1; off < bytes.length; k = (k * 7) % 1500 + 1) {
        await writeAll(a, bytes.subarray(off, Math.min(bytes.length, off + k)));
        off += k;
      }
    })();
    const out: string[] = [];
    const decoder = new TextDecoder();
    while (out.length < lines.length) {
      const chunk = await withTimeout(source.next(), 5000, "a chunk");
      assert.ok(chunk !== null);
      const nl = chunk.lastIndexOf(10);
      if (nl < 0) {
        assert.ok(source.keep(chunk, 0), "a line below maxSize is kept");
        continue;
      }
      out.push(...decoder.decode(chunk.subarray(0, nl + 1)).split(/(?<=\n)/));
      assert.ok(source.keep(chunk, nl + 1));
    }
    await writing;
    assert.deepEqual(out, lines);
    source.release();
    assert.equal(pool.lent, 0, "every borrowed buffer went back");
  } finally {
    close();
  }
});

Deno.test("ChunkSource never gives back a buffer a failed read may still hold", async () => {
  const { a, b, close } = await pair();
  const pool = new BufferPool(256);
  const source = new ChunkSource(b, { initialSize: 8, pool });
  await writeAll(a, "REQ 1 a\n");
  await readAll(source, 8);
  // The read filled the small buffer: the next one borrows the large buffer, and fails.
  const pending = source.read();
  assert.equal(source.bufferSize, 256);
  b.close();
  await assert.rejects(pending);
  source.release();
  assert.equal(pool.free, 0, "the buffer the failed read had is not reused");
  assert.equal(pool.lent, 1);
  close();
});

Deno.test("BufferPool keeps at most maxFree buffers and lends only its size", () => {
  const pool = new BufferPool(32, { maxFree: 2 });
  const taken = [pool.take(), pool.take(), pool.take()];
  assert.equal(pool.lent, 3);
  for (const t of taken) pool.give(t);
  assert.equal(pool.free, 2);
  pool.give(new Uint8Array(16)); // not one of ours
  assert.equal(pool.free, 2);
  assert.equal(pool.take(), taken[1]);
  assert.throws(() => new BufferPool(0), RangeError);
});

Deno.test("ChunkSource.detach hands the pending read to a new source; the old reader leaves the bytes alone", async () => {
  const { a, b, close } = await pair();
  try {
    const pool = new BufferPool(4096);
    const old = new ChunkSource(b, { initialSize: 64, pool });
    // A burst moves the old source to a borrowed large buffer, with a read pending on it.
    const burst = new Uint8Array(10_000).fill(65);
    const writing = writeAll(a, burst);
    await readAll(old, burst.length);
    await writing;
    assert.equal(pool.lent, 1);
    const reading = old.next();
    const rest = old.detach();
    assert.ok(rest !== undefined);
    assert.ok(old.detached);
    assert.equal(old.detach(), undefined, "a second detach has nothing to hand over");
    old.release();
    assert.equal(pool.lent, 1, "the buffer the pending read pins is not given back");
    const next = new ChunkSource(b, { initialSize: 64, held: { bytes: new Uint8Array(0), rest } });
    assert.ok(next.holding);
    await writeAll(a, "ACK 1\n");
    assert.equal(new TextDecoder().decode((await next.next())!), "ACK 1\n");
    // The old reader's read completed: it is told it was detached and does not take the chunk.
    assert.equal(await reading, null, "the old reader gets nothing");
    await writeAll(a, "ACK 2\n");
    assert.equal(new TextDecoder().decode((await next.next())!), "ACK 2\n");
    next.release();
  } finally {
    close();
  }
});

Deno.test("ChunkSource gives its borrowed buffer back when the stream ends on it (the pool reuses it)", async () => {
  const { a, b, close } = await pair();
  try {
    const pool = new BufferPool(4096);
    const source = new ChunkSource(b, { initialSize: 64, pool });
    // A burst and then the end: the last reads, the end's included, go into the large buffer.
    await writeAll(a, new Uint8Array(3000).fill(65));
    a.close();
    let got = 0;
    for (;;) {
      const chunk = await withTimeout(source.next(), 5000, "a chunk");
      if (chunk === null) break;
      got += chunk.length;
    }
    assert.equal(got, 3000);
    source.release();
    assert.equal(pool.lent, 0, "given back");
    assert.equal(pool.free, 1, "kept for the next connection");
  } finally {
    close();
  }
});

/**
 * A connection that serves `data` in reads of at most `sizes[i]` bytes each (cycled), writing into
 * the caller's buffer when the read completes (a microtask later), as a socket does.
 */
function scriptedConn(data: Uint8Array, sizes: number[]): Deno.Conn {
  let at = 0;
  let i = 0;
  const conn = {
    read(buf: Uint8Array): Promise<number | null> {
      return Promise.resolve().then(() => {
        if (at >= data.length) return null;
        const n = Math.min(buf.length, sizes[i++ % sizes.length], data.length - at);
        buf.set(data.subarray(at, at + n));
        at += n;
        return n;
      });
    },
    close() {},
  };
  return conn as unknown as Deno.Conn;
}

Deno.test("ChunkSource serves every byte once, in order, whatever the read sizes, kept tails and buffer switches (property)", async () => {
  const fc = (await import("fast-check")).default;
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.record({
          data: fc.uint8Array({ minLength: 0, maxLength: 3000 }),
          sizes: fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 8 }),
          keeps: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), {
            minLength: 1,
            maxLength: 8,
          }),
          held: fc.uint8Array({ minLength: 0, maxLength: 100 }),
          rest: fc.uint8Array({ minLength: 0, maxLength: 100 }),
        }),
        { minLength: 1, maxLength: 3 },
      ),
      fc.constantFrom(1, 7, 64),
      fc.constantFrom(256, 1000, 4096),
      async (streams, initialSize, maxSize) => {
        // Every source borrows from one pool: a buffer given back while in use would show as
        // another stream's bytes in this one.
        const pool = new BufferPool(Math.min(512, maxSize));
        await Promise.all(streams.map(async (s) => {
          const source = new ChunkSource(scriptedConn(s.data, s.sizes), {
            initialSize,
            maxSize,
            pool,
            held: s.held.length + s.rest.length === 0
              ? undefined
              : { bytes: s.held.slice(), rest: Promise.resolve(s.rest.slice()) },
          });
          const expected = new Uint8Array([...s.held, ...s.rest, ...s.data]);
          const served: number[] = [];
          let tail = new Uint8Array(0);
          for (let k = 0;; k++) {
            const chunk = await source.next();
            if (chunk === null) break;
            assert.deepEqual(chunk.subarray(0, tail.length), tail, "the kept tail comes first");
            const cut = Math.floor(s.keeps[k % s.keeps.length] * chunk.length);
            served.push(...chunk.subarray(0, cut));
            // Copied first: keep() moves the tail to the front of the buffer, over the chunk.
            tail = chunk.slice(cut);
            if (!source.keep(chunk, cut)) {
              served.push(...tail);
              tail = new Uint8Array(0);
            }
            // Another source may run (and borrow or give back) before this one reads again.
            await Promise.resolve();
          }
          served.push(...tail);
          assert.deepEqual(new Uint8Array(served), expected);
          source.release();
        }));
        assert.equal(pool.lent, 0, "every borrowed buffer given back");
      },
    ),
    { numRuns: 300 },
  );
});
