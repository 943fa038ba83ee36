/**
 * The access log (issue 13): one line per finished connection with what it did and how it
 * ended, in text or JSON, on stderr or a file reopened on SIGHUP.
 */
import assert from "node:assert/strict";
import { type AccessRecord, formatAccessLine, isoTime } from "../src/proxy/access_log.ts";
import { connectTo, LineReader, startProxy, startUpstream, waitUntil, writeAll } from "./_util.ts";
import { type MainProcess, spawnMain } from "./_util.ts";
import { tempDir } from "./_files.ts";

/** What an --access-log-file in `dir` needs: write, and read (its path is checked with lstat). */
function accessPermissions(dir: string): string[] {
  return ["--allow-net", "--allow-env=FOO_PROXY_*", `--allow-read=${dir}`, `--allow-write=${dir}`];
}

/** The proxy with a text access log at `path` (in `dir`), forwarding to `port` (unset: 1). */
function spawnAccessLogged(dir: string, path: string, port = 1): MainProcess {
  return spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${port}`,
    "--http=off",
    "--health=off",
    "--access-log=text",
    `--access-log-file=${path}`,
  ], { permissions: accessPermissions(dir) });
}

Deno.test("an access record per connection: bytes, REQ/ACK/NAK, invalid lines, latency, reason", async () => {
  await using upstream = await startUpstream({ nakEvery: 2 });
  const records: AccessRecord[] = [];
  await using proxy = await startProxy(upstream.addr, { accessLog: (r) => records.push(r) });
  {
    using conn = await connectTo(proxy.addr);
    await writeAll(conn, "REQ 1 a\nREQ 2 b\nHELLO\nREQ 3\n");
    await conn.closeWrite();
    assert.equal(await new LineReader(conn).readText(), "ACK 1\nNAK 2\nACK 3\n");
  }
  await waitUntil(() => records.length === 1, "the record");
  const r = records[0];
  assert.equal(r.reqs, 3);
  assert.equal(r.acks, 2);
  assert.equal(r.naks, 1);
  assert.equal(r.invalid, 1);
  assert.equal(r.bytesFromClient, "REQ 1 a\nREQ 2 b\nHELLO\nREQ 3\n".length);
  assert.equal(r.bytesFromUpstream, "ACK 1\nNAK 2\nACK 3\n".length);
  assert.equal(r.reason, "completed");
  assert.ok(r.latencyMaxMs >= r.latencyP50Ms && r.latencyP50Ms >= 0, JSON.stringify(r));
  assert.match(r.client, /^127\.0\.0\.1:\d+$/);
  // The shared counters still see every message.
  const snap = proxy.stats.snapshot();
  assert.deepEqual([snap.msg_req, snap.msg_ack, snap.msg_nak, snap.msg_invalid], [3, 2, 1, 1]);
});

Deno.test("formatAccessLine: text like tcplog, and JSON with one field each", () => {
  const record: AccessRecord = {
    startedAtMs: Date.UTC(2026, 0, 2, 3, 4, 5, 6),
    client: "127.0.0.1:5555",
    upstream: "a",
    durationMs: 12.4,
    bytesFromClient: 30,
    bytesFromUpstream: 18,
    reqs: 3,
    acks: 2,
    naks: 1,
    invalid: 0,
    latencyP50Ms: 0.25,
    latencyMaxMs: 1.5,
    failovers: 0,
    reason: "completed",
  };
  assert.equal(
    formatAccessLine("text", record),
    "2026-01-02T03:04:05.006Z 127.0.0.1:5555 -> a 12ms in=30 out=18 req=3 ack=2 nak=1 inv=0 " +
      "p50=0.25ms max=1.5ms failovers=0 completed\n",
  );
  const json = JSON.parse(formatAccessLine("json", { ...record, latencyP50Ms: NaN }));
  assert.equal(json.latency_p50_ms, null);
  assert.equal(json.reason, "completed");
  assert.equal(json.start, "2026-01-02T03:04:05.006Z");
});

Deno.test("isoTime: what toISOString says, across seconds, for 1- to 3-digit ms and odd years", () => {
  const base = Date.UTC(2026, 11, 31, 23, 59, 59, 0);
  const times = [
    base,
    base + 7,
    base + 42,
    base + 999,
    base + 1000, // a new second (and year) after one was cached
    base + 1000.9, // fractions are dropped toward zero, as Date does
    -0.5,
    -1.5,
    -1000.5,
    base + 5, // back to an earlier second
    0,
    -1, // before 1970
    Date.UTC(10000, 0, 1), // a six-digit year, which is not cached
    Date.UTC(10000, 0, 1) + 1,
  ];
  for (const t of times) assert.equal(isoTime(t), new Date(t).toISOString(), `at ${t}`);
});

Deno.test("--access-log json --access-log-file: appended, reopened on SIGHUP after a rotation", async () => {
  await using upstream = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-access-" });
  const path = `${dir}/access.log`;
  try {
    await using child = spawnMain([
      "proxy",
      "--listen=127.0.0.1:0",
      `--forward=127.0.0.1:${upstream.addr.port}`,
      "--http=off",
      "--health=off",
      "--access-log=json",
      `--access-log-file=${path}`,
    ], { permissions: accessPermissions(dir) });
    const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
    const oneClient = async (seq: number) => {
      using conn = await connectTo(port);
      await writeAll(conn, `REQ ${seq}\n`);
      await conn.closeWrite();
      assert.equal(await new LineReader(conn).readText(), `ACK ${seq}\n`);
    };
    await oneClient(1);
    const lines = async (file: string) =>
      (await Deno.readTextFile(file).catch(() => "")).split("\n").filter((l) => l !== "");
    await waitUntil(async () => (await lines(path)).length === 1, "the first line");
    await Deno.rename(path, `${path}.1`); // what logrotate does
    child.kill("SIGHUP");
    await waitUntil(async () => (await Deno.stat(path).catch(() => null)) !== null, "the reopen");
    await oneClient(2);
    await waitUntil(async () => (await lines(path)).length === 1, "a line in the new file");
    const [first] = await lines(`${path}.1`);
    const [second] = await lines(path);
    assert.equal(JSON.parse(first).reqs, 1);
    assert.equal(JSON.parse(second).acks, 1);
    assert.equal(JSON.parse(second).reason, "completed");
    // A reopen that fails (the path is now a directory) is warned about, not taken for a bug,
    // and the log goes on in the file already open.
    await Deno.rename(path, `${path}.2`);
    await Deno.mkdir(path);
    child.kill("SIGHUP");
    await child.stderr.waitFor(/Access log: cannot reopen .*; still writing the old file/, 10_000);
    await oneClient(3);
    await waitUntil(async () => (await lines(`${path}.2`)).length === 2, "a line in the old file");
    assert.doesNotMatch(child.stderr.text, /Internal error/);
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an --access-log-file that cannot be opened stops the start with one line, exit 2", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-access-" });
  try {
    await using child = spawnMain([
      "proxy",
      "--listen=127.0.0.1:0",
      "--http=off",
      "--health=off",
      "--access-log=text",
      `--access-log-file=${dir}`, // a directory
    ], { permissions: accessPermissions(dir) });
    assert.equal((await child.status()).code, 2);
    assert.match(child.stderr.text, /Cannot open access log ".*" \(--access-log-file\): /);
    assert.doesNotMatch(child.stderr.text, /Listening on| {4}at /, "nothing opened, no stack");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an --access-log-file that is a FIFO nobody reads ends the start after 5 s, instead of waiting for ever", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-access-" });
  const fifo = `${dir}/fifo`;
  try {
    const made = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(made.success, "mkfifo");
    await using child = spawnMain([
      "proxy",
      "--listen=127.0.0.1:0",
      "--http=off",
      "--health=off",
      "--access-log=text",
      `--access-log-file=${fifo}`,
    ], { permissions: accessPermissions(dir) });
    assert.equal((await child.status()).code, 2);
    assert.match(
      child.stderr.text,
      /Cannot open access log .*took over 5 s \(a FIFO that nobody reads\?\)/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an --access-log-file that is a symlink planted at its path is refused, never appended through", async () => {
  await using dir = await tempDir("foo-proxy-access-");
  const victim = `${dir.path}/victim`;
  await Deno.writeTextFile(victim, "precious\n");
  const path = `${dir.path}/access.log`;
  await Deno.symlink(victim, path);
  await using child = spawnAccessLogged(dir.path, path);
  assert.equal((await child.status()).code, 2, child.stderr.text);
  assert.deepEqual(child.stderr.lines.filter((line) => line.startsWith("foo-proxy: ")), [
    `foo-proxy: Cannot open access log "${path}" (--access-log-file): it is a symbolic link, which is never followed (give the file's real path)`,
  ]);
  assert.doesNotMatch(child.stderr.text, /Listening on/);
  assert.equal(await Deno.readTextFile(victim), "precious\n");
});

Deno.test("a symlink swapped in at --access-log-file before a SIGHUP reopen is refused; the old file goes on", async () => {
  await using upstream = await startUpstream();
  await using dir = await tempDir("foo-proxy-access-");
  const path = `${dir.path}/access.log`;
  const victim = `${dir.path}/victim`;
  await Deno.writeTextFile(victim, "precious\n");
  await using child = spawnAccessLogged(dir.path, path, upstream.addr.port);
  const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
  await Deno.rename(path, `${path}.1`);
  await Deno.symlink(victim, path);
  child.kill("SIGHUP");
  await child.stderr.waitFor(
    /Access log: cannot reopen .* \(it is a symbolic link, which is never followed .*\); still writing the old file/,
  );
  {
    using conn = await connectTo(port);
    await writeAll(conn, "REQ 1\n");
    await conn.closeWrite();
    assert.equal(await new LineReader(conn).readText(), "ACK 1\n");
  }
  await waitUntil(
    async () => (await Deno.readTextFile(`${path}.1`)).includes(" completed"),
    "the line in the old file",
  );
  assert.equal(await Deno.readTextFile(victim), "precious\n");
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
});
