/**
 * The bounded stdout/stderr writer (issue 17): its bound is for a reader that stalls, so a line
 * is never dropped only for being bigger than the bound (a stats line with hundreds of
 * upstreams); one that arrives while the reader stalls is still dropped and counted.
 */
import assert from "node:assert/strict";
import { LineWriter } from "../src/cmd/line_writer.ts";

/** An output whose writes wait until `release()`; `written` is what went out. */
function stallableOutput() {
  const written: string[] = [];
  const decoder = new TextDecoder();
  let stalled = false;
  let waiting: (() => void) | undefined;
  return {
    written,
    stall: () => stalled = true,
    release: () => {
      stalled = false;
      waiting?.();
    },
    write: async (bytes: Uint8Array) => {
      if (stalled) await new Promise<void>((resolve) => waiting = resolve);
      written.push(decoder.decode(bytes));
      return bytes.length;
    },
  };
}

Deno.test("LineWriter takes a line bigger than its bound and writes it whole", async () => {
  const out = stallableOutput();
  const writer = new LineWriter(out.write, { maxQueuedBytes: 1024 });
  const big = "x".repeat(100_000);
  assert.equal(writer.writeLine(big), true, "a big line at an idle writer is taken");
  assert.equal(await writer.flush(1000), true);
  assert.equal(out.written.join(""), big + "\n");
  assert.equal(writer.dropped, 0);
});

Deno.test("LineWriter keeps a big line queued behind a stalled write, and drops (and counts) the next", async () => {
  const out = stallableOutput();
  const writer = new LineWriter(out.write, { maxQueuedBytes: 1024 });
  let drops = 0;
  writer.onDrop = () => drops++;
  out.stall();
  const big = (n: number) => `${n}`.repeat(50_000);
  assert.equal(writer.writeLine(big(1)), true, "being written (stalled)");
  assert.equal(
    writer.writeLine(big(2)),
    true,
    "one line may wait whatever its size (the final stats line)",
  );
  assert.equal(writer.writeLine(big(3)), false, "the reader stalls: dropped");
  assert.equal(writer.writeLine("small"), false, "past the bound: dropped");
  assert.equal(drops, 2);
  out.release();
  assert.equal(await writer.flush(1000), true);
  assert.deepEqual(out.written.join("").split("\n"), [
    big(1),
    big(2),
    "foo-proxy: 2 output line(s) dropped while the reader was stalled",
    "",
  ]);
});
