import assert from "node:assert/strict";
import { join } from "node:path";
import { parseRecoveryState, type RecoveryState } from "../src/stats/recovery.ts";
import { makeFifo, tempDir } from "./_files.ts";
import {
  connectTo,
  type MainProcess,
  readLines,
  spawnMain,
  startUpstream,
  withTimeout,
  writeAll,
} from "./_util.ts";

function spawnProxy(dir: string, path: string, upstreamPort: number): MainProcess {
  return spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    "--forward",
    `127.0.0.1:${upstreamPort}`,
    "--http",
    "off",
    "--health",
    "off",
    "--recovery-path",
    path,
    "--log-format",
    "json",
  ], {
    permissions: [
      "--allow-net",
      "--allow-env=FOO_PROXY_*",
      `--allow-read=${dir}`,
      `--allow-write=${dir}`,
    ],
  });
}

async function listenPort(child: MainProcess): Promise<number> {
  return Number((await child.stderr.waitFor(/"listen":"127\.0\.0\.1:(\d+)"/))[1]);
}

async function statsLine(child: MainProcess): Promise<Record<string, number>> {
  child.kill("SIGUSR2");
  const line = await child.readLine();
  assert.ok(line !== null, "a stats line");
  return JSON.parse(line);
}

/** Resolves with the recovery file's state once `accept` holds for it (watching, not polling). */
async function waitForState(
  dir: string,
  path: string,
  accept: (state: RecoveryState) => boolean,
): Promise<RecoveryState> {
  using watcher = Deno.watchFs(dir);
  const read = async () => {
    try {
      const state = parseRecoveryState(await Deno.readTextFile(path));
      return accept(state) ? state : undefined;
    } catch {
      return undefined; // not there yet
    }
  };
  const found = await read();
  if (found) return found;
  for await (const _event of watcher) {
    const state = await read();
    if (state) return state;
  }
  throw new Error("the watcher ended");
}

/** Pipelines batches of REQs on one connection until stopped or the proxy dies. */
function startLoad(port: number): { stop: () => void; done: Promise<number> } {
  let stopped = false;
  const done = (async () => {
    let answered = 0;
    try {
      using conn = await connectTo(port);
      for (let seq = 1; !stopped; seq += 100) {
        const batch = Array.from({ length: 100 }, (_, i) => `REQ ${seq + i} load\n`).join("");
        await writeAll(conn, batch);
        answered += (await readLines(conn, 100, 5000)).length;
      }
    } catch {
      // The proxy was killed under us: that is the point.
    }
    return answered;
  })();
  return { stop: () => (stopped = true), done };
}

Deno.test("after kill -9 under load, a restart continues from the last persisted totals", async () => {
  await using dir = await tempDir("foo-proxy-restart-test-");
  const path = join(dir.path, "stats.json");
  await using upstream = await startUpstream({ nakEvery: 3 });

  let persisted: RecoveryState;
  {
    await using first = spawnProxy(dir.path, path, upstream.addr.port);
    const load = startLoad(await listenPort(first));
    await withTimeout(
      waitForState(dir.path, path, (s) => s.totals.msg_req >= 2000),
      20_000,
      "the recovery file to hold 2000 REQs",
    );
    first.kill("SIGKILL"); // mid-load, mid-persist maybe: the file must still be whole
    const status = await first.status();
    assert.equal(status.signal, "SIGKILL");
    load.stop();
    assert.ok((await load.done) > 0);
    persisted = parseRecoveryState(await Deno.readTextFile(path));
    assert.ok(persisted.totals.msg_req >= 2000);
  }
  const leftovers = [];
  for await (const entry of Deno.readDir(dir.path)) leftovers.push(entry.name);
  assert.ok(leftovers.includes("stats.json"));

  await using second = spawnProxy(dir.path, path, upstream.addr.port);
  await second.stderr.waitFor(/Restored statistics/); // logged before the listener binds
  const port = await listenPort(second);
  const t = persisted.totals;
  const restored = await statsLine(second);
  assert.equal(restored.msg_req, t.msg_req);
  assert.equal(restored.msg_ack, t.msg_ack);
  assert.equal(restored.msg_nak, t.msg_nak);
  assert.equal(restored.msg_total, t.msg_req + t.msg_ack + t.msg_nak);
  assert.equal(restored.connections_total, t.connections_total);
  assert.equal(restored.bytes_downstream, t.bytes_downstream);
  assert.equal(restored.bytes_upstream, t.bytes_upstream);
  assert.equal(restored.connections_active, 0);

  {
    using conn = await connectTo(port);
    await writeAll(conn, "REQ 1\nREQ 2\nREQ 3\nREQ 4\nREQ 5\n");
    assert.equal((await readLines(conn, 5)).length, 5);
  }
  const after = await statsLine(second);
  assert.equal(after.msg_req, t.msg_req + 5);
  assert.equal(after.connections_total, t.connections_total + 1);

  second.kill("SIGTERM");
  const final = JSON.parse((await second.readLine()) ?? "null");
  assert.equal(final.msg_req, t.msg_req + 5);
  assert.equal((await second.status()).code, 0);
  const onDisk = parseRecoveryState(await Deno.readTextFile(path));
  assert.equal(onDisk.totals.msg_req, t.msg_req + 5, "the final persist on shutdown");
});

Deno.test("a corrupt recovery file is moved aside with a warning and the proxy starts from zero", async () => {
  await using dir = await tempDir("foo-proxy-restart-test-");
  const path = join(dir.path, "stats.json");
  await Deno.writeTextFile(path, '{"format":"foo-proxy-recovery","version":1,"tot');
  await using upstream = await startUpstream();
  await using child = spawnProxy(dir.path, path, upstream.addr.port);
  const warning = await child.stderr.waitFor(/"level":"WARN".*Recovery file/);
  await listenPort(child);
  assert.ok(warning.input.includes(path), warning.input);
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir.path)) names.push(entry.name);
  const aside = names.find((n) => /^stats\.json\.corrupt-\d{8}T\d{6}Z$/.test(n));
  assert.ok(aside, names.join(", "));
  assert.equal(
    await Deno.readTextFile(join(dir.path, aside)),
    '{"format":"foo-proxy-recovery","version":1,"tot',
  );
  assert.equal((await statsLine(child)).msg_total, 0);
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
});

Deno.test("an unwritable recovery path exits 2 with one line naming it", async () => {
  await using dir = await tempDir("foo-proxy-restart-test-");
  const path = join(dir.path, "no-such-dir", "stats.json");
  await using child = spawnProxy(dir.path, path, 1);
  const status = await child.status();
  assert.equal(status.code, 2, child.stderr.text);
  const lines = child.stderr.text.trimEnd().split("\n");
  assert.equal(lines.length, 1, child.stderr.text);
  assert.match(
    lines[0],
    /Cannot use recovery file ".*no-such-dir\/stats\.json": directory .* does not exist/,
  );
  assert.equal(child.stdout.text, "");
});

Deno.test("a recovery file that is a FIFO, or a symlink to /dev/zero, ends the start with exit 2 and one line", async () => {
  await using dir = await tempDir("foo-proxy-restart-test-");
  const fifo = join(dir.path, "fifo.json");
  await makeFifo(fifo);
  const zero = join(dir.path, "zero.json");
  await Deno.symlink("/dev/zero", zero);
  for (
    const [path, kind] of [[fifo, "a FIFO"], [zero, "a character device"]]
  ) {
    await using child = spawnProxy(dir.path, path, 1);
    const status = await child.status();
    assert.equal(status.code, 2, child.stderr.text);
    assert.deepEqual(child.stderr.lines, [
      `foo-proxy: Cannot use recovery file "${path}": it is ${kind}, not a regular file`,
    ]);
  }
});

Deno.test("a recovery file over 1 MiB is moved aside as corrupt with a warning, never read whole", async () => {
  await using dir = await tempDir("foo-proxy-restart-test-");
  const path = join(dir.path, "stats.json");
  await Deno.writeFile(path, new Uint8Array(2 * 1024 * 1024).fill(0x20));
  await using upstream = await startUpstream();
  await using child = spawnProxy(dir.path, path, upstream.addr.port);
  const warning = await child.stderr.waitFor(/"level":"WARN".*Recovery file/);
  assert.match(warning.input, /corrupt: it is 2 MiB, over the 1 MiB limit/);
  await listenPort(child);
  assert.equal((await statsLine(child)).msg_total, 0);
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
});

Deno.test("a second proxy on the same recovery file is refused (exit 2, naming the first's pid); the lock goes with the first", async () => {
  await using dir = await tempDir("foo-proxy-restart-test-");
  const path = join(dir.path, "stats.json");
  await using upstream = await startUpstream();
  await using first = spawnProxy(dir.path, path, upstream.addr.port);
  await listenPort(first);
  assert.equal((await Deno.readTextFile(`${path}.lock`)).trim(), String(first.pid));
  {
    await using second = spawnProxy(dir.path, path, upstream.addr.port);
    const status = await second.status();
    assert.equal(status.code, 2, second.stderr.text);
    assert.deepEqual(second.stderr.lines, [
      `foo-proxy: Recovery file "${path}" is in use by another running foo-proxy (pid ${first.pid}) (it holds "${path}.lock"): give each proxy its own --recovery-path`,
    ]);
  }
  first.kill("SIGTERM");
  assert.equal((await first.status()).code, 0);
  assert.deepEqual(
    [...Deno.readDirSync(dir.path)].map((e) => e.name),
    ["stats.json"],
    "the lock file is removed on exit",
  );
  // A lock left by a kill -9 (nobody holds it) is taken over.
  await using third = spawnProxy(dir.path, path, upstream.addr.port);
  await listenPort(third);
  third.kill("SIGKILL");
  await third.status();
  await using fourth = spawnProxy(dir.path, path, upstream.addr.port);
  await listenPort(fourth);
  assert.equal((await Deno.readTextFile(`${path}.lock`)).trim(), String(fourth.pid));
  fourth.kill("SIGTERM");
  assert.equal((await fourth.status()).code, 0);
});
