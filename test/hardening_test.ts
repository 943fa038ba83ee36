/**
 * Issue 10, as an attacker on the same host would try it with nothing but connections, signals
 * and pipes: each case asserts the proxy is alive and serving afterwards.
 */
import assert from "node:assert/strict";
import { LineWriter } from "../src/cmd/line_writer.ts";
import { connectTo, LineReader, MAIN_PATH, startUpstream, waitUntil, writeAll } from "./_util.ts";

/** A port nothing listens on yet. */
function freePort(): number {
  using probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  return probe.addr.port;
}

async function accepting(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    return true;
  } catch {
    return false;
  }
}

/**
 * `foo-proxy proxy` on `port` in a child whose stdout and/or stderr are pipes that nobody reads
 * (until the test says so): the reader of a log or a stats line has stalled.
 */
function spawnStalled(port: number, forward: Deno.NetAddr, flags: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env=FOO_PROXY_*",
      MAIN_PATH,
      "proxy",
      `--listen=127.0.0.1:${port}`,
      `--forward=127.0.0.1:${forward.port}`,
      "--http=off",
      "--health=off",
      ...flags,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function readAllText(stream: ReadableStream<Uint8Array>): Promise<string> {
  return await new Response(stream).text();
}

Deno.test("stdout that nobody reads: hundreds of SIGUSR2 never stall traffic, SIGTERM still stops it", async () => {
  await using upstream = await startUpstream();
  const port = freePort();
  const child = spawnStalled(port, upstream.addr, []);
  try {
    await waitUntil(() => accepting(port), "the proxy to listen", 20_000);
    {
      using client = await connectTo(port);
      const reader = new LineReader(client);
      // Each stats line is ~1 KiB: the 64 KiB pipe is full after a few dozen of them.
      for (let i = 1; i <= 400; i++) {
        child.kill("SIGUSR2");
        await writeAll(client, `REQ ${i}\n`);
        assert.deepEqual(await reader.readLines(1, 5000), [`ACK ${i}`], `round trip ${i}`);
      }
    }
    child.kill("SIGTERM");
    const status = await Promise.race([
      child.status,
      new Promise<null>((resolve) => setTimeout(() => resolve(null), 15_000)),
    ]);
    assert.ok(status !== null, "SIGTERM did not stop the proxy");
    assert.equal(status.code, 0);
    // What did reach stdout is whole JSON lines, never a torn one.
    const lines = (await readAllText(child.stdout)).split("\n").filter((l) => l !== "");
    assert.ok(lines.length > 0);
    for (const line of lines) JSON.parse(line);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // Exited already.
    }
    await child.stdout.cancel().catch(() => {});
    await child.stderr.cancel().catch(() => {});
    await child.status;
  }
});

Deno.test("stderr that nobody reads: a flood of log lines never stalls traffic; drops are counted", async () => {
  await using upstream = await startUpstream();
  const port = freePort();
  // Debug logs two lines per connection: 1 500 connections write ~280 KiB, past the 64 KiB pipe
  // and the writer's 64 KiB queue.
  const child = spawnStalled(port, upstream.addr, ["--log-level=debug"]);
  try {
    await waitUntil(() => accepting(port), "the proxy to listen", 20_000);
    for (let k = 0; k < 30; k++) {
      await Promise.all(Array.from({ length: 50 }, async (_, j) => {
        using conn = await connectTo(port);
        const seq = 50 * k + j + 1;
        await writeAll(conn, `REQ ${seq}\n`);
        assert.deepEqual(await new LineReader(conn).readLines(1, 5000), [`ACK ${seq}`]);
      }));
    }
    child.kill("SIGTERM");
    const stdout = readAllText(child.stdout);
    const status = await Promise.race([
      child.status,
      new Promise<null>((resolve) => setTimeout(() => resolve(null), 15_000)),
    ]);
    assert.ok(status !== null, "SIGTERM did not stop the proxy");
    assert.equal(status.code, 0);
    const final = JSON.parse((await stdout).trim().split("\n").at(-1) ?? "null");
    assert.equal(final.msg_ack, 1500);
    assert.ok(final.log_lines_dropped > 0, "log lines were dropped, and counted");
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // Exited already.
    }
    await child.stdout.cancel().catch(() => {});
    await child.stderr.cancel().catch(() => {});
    await child.status;
  }
});

Deno.test("LineWriter drops past its bound, never blocks, and says how many once the reader is back", async () => {
  const written: string[] = [];
  let release: (() => void) | undefined;
  let stalled = true;
  const decoder = new TextDecoder();
  const writer = new LineWriter(async (bytes) => {
    if (stalled) await new Promise<void>((resolve) => release = resolve);
    written.push(decoder.decode(bytes));
    return bytes.length;
  }, { maxQueuedBytes: 10 });
  let drops = 0;
  writer.onDrop = () => drops++;
  assert.equal(writer.writeLine("1234"), true); // 5 bytes, being written (stalled)
  assert.equal(writer.writeLine("5678"), true); // 10 bytes queued in all
  assert.equal(writer.writeLine("9"), false, "over the bound: dropped at once");
  assert.equal(drops, 1);
  assert.equal(await writer.flush(10), false, "a stalled reader does not hold up the caller");
  stalled = false;
  release!();
  assert.equal(await writer.flush(1000), true);
  assert.deepEqual(written, [
    "1234\n",
    "5678\n",
    "foo-proxy: 1 output line(s) dropped while the reader was stalled\n",
  ]);
});
