/**
 * `foo-proxy wait`: it returns once an address accepts connections or a running proxy has
 * written its pid file (which the proxy does once it serves), and not before; a pid file left by
 * a killed proxy does not fool it.
 */
import assert from "node:assert/strict";
import { PidFile } from "../src/cmd/pid_file.ts";
import { parseWaitConfig } from "../src/cmd/wait.ts";
import { UsageError } from "../src/cli/flags.ts";
import { NotReadyError, waitReady } from "../src/tools/wait_ready.ts";
import { freePort, spawnMain, startUpstream } from "./_util.ts";

Deno.test("waitReady() returns once the address accepts, checking again after each interval", async () => {
  const port = freePort();
  let listener: Deno.TcpListener | undefined;
  let waits = 0;
  try {
    await waitReady([{ address: { hostname: "127.0.0.1", port } }], {
      // The listener appears during the second wait: the first checks were refused.
      delay: () => {
        if (++waits === 2) listener = Deno.listen({ hostname: "127.0.0.1", port });
        return Promise.resolve();
      },
    });
    assert.equal(waits, 2);
  } finally {
    listener?.close();
  }
});

Deno.test("waitReady() gives up at its timeout naming the address and why", async () => {
  let now = 0;
  const port = freePort();
  await assert.rejects(
    waitReady([{ address: { hostname: "127.0.0.1", port } }], {
      timeoutMs: 1000,
      now: () => now,
      delay: (ms) => {
        now += ms;
        return Promise.resolve();
      },
    }),
    (error: unknown) => {
      assert.ok(error instanceof NotReadyError);
      assert.equal(error.message, `127.0.0.1:${port} not ready after 1 s: connection refused`);
      return true;
    },
  );
});

Deno.test("a pid file nobody holds (left by a killed proxy) is not ready, whatever it says", async () => {
  const path = await Deno.makeTempFile({ prefix: "foo-proxy-stale-", suffix: ".pid" });
  try {
    await Deno.writeTextFile(path, `${Deno.pid}\n`);
    await using child = spawnMain(["wait", "--pid-file", path, "--timeout", "300ms"], {
      permissions: [`--allow-read=${path}`],
    });
    assert.equal((await child.status()).code, 1);
    assert.equal(
      child.stderr.text,
      `foo-proxy wait: pid file "${path}" not ready after 0.3 s: no running foo-proxy holds it\n`,
    );
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("PidFile.acquire() empties a pid file left by a killed proxy at once, before its own pid is written", async () => {
  const path = await Deno.makeTempFile({ prefix: "foo-proxy-stale-", suffix: ".pid" });
  try {
    await Deno.writeTextFile(path, "999999\n");
    const pidFile = await PidFile.acquire(path);
    try {
      assert.equal(
        await Deno.readTextFile(path),
        "",
        "the stale pid is gone while the lock is held",
      );
      await waitReady([{ pidFile: path }], { timeoutMs: 0 }).then(
        () => assert.fail("ready without a pid"),
        (error) => assert.match(error.message, /has not written its pid yet/),
      );
      await pidFile.write(4242);
      await waitReady([{ pidFile: path }], { timeoutMs: 0 });
    } finally {
      await pidFile.release();
    }
  } finally {
    await Deno.remove(path).catch(() => {});
  }
});

Deno.test("wait --pid-file returns once the proxy serves: its pid is in the file and its ports answer", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-wait-" });
  const path = `${dir}/foo-proxy.pid`;
  try {
    // A stale pid from a killed proxy is already there.
    await Deno.writeTextFile(path, "999999\n");
    await using upstream = await startUpstream();
    const listen = freePort();
    const http = freePort();
    await using proxy = spawnMain([
      "proxy",
      `--listen=127.0.0.1:${listen}`,
      `--forward=127.0.0.1:${upstream.addr.port}`,
      `--http=127.0.0.1:${http}`,
      "--health=off",
      `--pid-file=${path}`,
    ], {
      permissions: ["--allow-net", `--allow-read=${path}`, `--allow-write=${path}`],
    });
    await using waiter = spawnMain(["wait", "--pid-file", path, `127.0.0.1:${listen}`], {
      permissions: ["--allow-net", `--allow-read=${path}`],
    });
    assert.equal((await waiter.status()).code, 0, waiter.stderr.text);
    assert.equal(waiter.stdout.text, "", "nothing on stdout");
    assert.equal(await Deno.readTextFile(path), `${proxy.pid}\n`);
    const stats = await fetch(`http://127.0.0.1:${http}/stats`);
    assert.equal(stats.status, 200);
    assert.equal(typeof (await stats.json()).msg_total, "number");
    proxy.kill("SIGTERM");
    assert.equal((await proxy.status()).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseWaitConfig() takes addresses and --pid-file, and refuses nothing to wait for", () => {
  const config = parseWaitConfig(["8001", "127.0.0.1:8002", "--pid-file=/tmp/p", "--timeout=2s"]);
  assert.deepEqual(config.targets, [
    { address: { hostname: "localhost", port: 8001 } },
    { address: { hostname: "127.0.0.1", port: 8002 } },
    { pidFile: "/tmp/p" },
  ]);
  assert.equal(config.timeoutMs, 2000);
  assert.throws(() => parseWaitConfig([]), /nothing to wait for/);
  assert.throws(() => parseWaitConfig(["nowhere"]), UsageError);
  assert.throws(() => parseWaitConfig(["127.0.0.1:0"]), /port 0/);
  assert.throws(() => parseWaitConfig(["8001", "--pid-file="]), /--pid-file: the path is empty/);
  assert.equal(parseWaitConfig(["--help"]).help, true);
});

Deno.test("wait without the grant it needs exits 2 at once naming it, instead of waiting for ever", async () => {
  const port = freePort();
  await using child = spawnMain(["wait", `127.0.0.1:${port}`, "--pid-file", "/tmp/x.pid"], {
    permissions: [],
  });
  assert.equal((await child.status()).code, 2);
  assert.equal(
    child.stderr.text,
    `foo-proxy wait: Missing permissions: net access to 127.0.0.1:${port}, read access to /tmp/x.pid; ` +
      `run it with --allow-net=127.0.0.1:${port} --allow-read=/tmp/x.pid\n`,
  );
});

Deno.test("wait --pid-file on a FIFO (or anything but a regular file) gives up at its --timeout instead of hanging", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-wait-" });
  const path = `${dir}/proxy.pid`;
  try {
    const mkfifo = await new Deno.Command("mkfifo", { args: [path] }).output();
    assert.ok(mkfifo.success, "mkfifo");
    await using child = spawnMain(["wait", "--pid-file", path, "--timeout", "300ms"], {
      permissions: [`--allow-read=${path}`],
    });
    // Opening a FIFO nobody writes blocks until a writer comes: the wait hung past its timeout.
    assert.equal((await child.status(10_000)).code, 1);
    assert.equal(
      child.stderr.text,
      `foo-proxy wait: pid file "${path}" not ready after 0.3 s: it is a FIFO, not a regular file\n`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("waitReady() keeps its timeout when opening the pid file hangs (a FIFO swapped in after the look)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-wait-" });
  const path = `${dir}/proxy.pid`;
  try {
    await Deno.writeTextFile(path, "");
    const started = Date.now();
    await assert.rejects(
      waitReady([{ pidFile: path }], {
        timeoutMs: 200,
        open: () => new Promise<Deno.FsFile>(() => {}),
      }),
      (error: unknown) => {
        assert.ok(error instanceof NotReadyError);
        assert.match(error.message, /not ready after 0\.2 s: opening it took too long/);
        return true;
      },
    );
    assert.ok(Date.now() - started < 5000, "bounded by the timeout");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
