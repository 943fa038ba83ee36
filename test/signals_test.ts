/**
 * Signals a spawned `foo-proxy proxy` must survive or handle without losing a reply: Ctrl-C
 * delivered twice, SIGHUP, SIGQUIT and SIGUSR1 (Deno's debugger), each mid-pipeline.
 */
import assert from "node:assert/strict";
import {
  acks,
  connectTo,
  LineReader,
  OutputLines,
  REPO_ROOT,
  requests,
  spawnProxy,
  startUpstream,
  waitUntil,
  withTimeout,
  writeAll,
} from "./_util.ts";

/** Whether something accepts TCP connections on 127.0.0.1:`port` now. */
async function accepting(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/**
 * A client with `count` REQs sent whose replies are owed for a while (the upstream answers
 * after `delayMs`): asserts that they were still owed when `act` ran, then that all arrive.
 */
async function midPipeline(
  port: number,
  upstream: { received: number; requests: number },
  act: () => void | Promise<void>,
  count = 200,
): Promise<void> {
  using client = await connectTo(port);
  const reader = new LineReader(client);
  await writeAll(client, requests(1, count));
  await waitUntil(() => upstream.received === count, "every REQ to reach the upstream");
  assert.ok(upstream.requests < count, "replies were still owed when the signal was sent");
  await act();
  assert.deepEqual(await reader.readLines(count, 10_000), acks(1, count));
}

Deno.test("Ctrl-C delivered twice at once (terminal + deno task) drains: every reply, exit 0", async () => {
  await using upstream = await startUpstream({ delayMs: 300 });
  const { child, port } = await spawnProxy(upstream.addr);
  await using _child = child;
  await midPipeline(port, upstream, async () => {
    child.kill("SIGINT");
    // The second copy of the same Ctrl-C (forwarded by deno task) lands milliseconds later: after
    // the first was taken (two sent at once may coalesce into one), well within a second.
    await child.stderr.waitFor(/shutting down gracefully/);
    child.kill("SIGINT");
  });
  assert.equal((await child.status()).code, 0);
  const final = JSON.parse((await child.readLine()) ?? "null");
  assert.equal(final.msg_ack, 200);
  assert.match(child.stderr.text, /shutting down gracefully/);
  assert.doesNotMatch(child.stderr.text, /without draining/);
});

Deno.test("SIGHUP mid-pipeline is logged and changes nothing; the proxy keeps serving", async () => {
  await using upstream = await startUpstream({ delayMs: 200 });
  const { child, port } = await spawnProxy(upstream.addr);
  await using _child = child;
  await midPipeline(port, upstream, () => child.kill("SIGHUP"));
  await child.stderr.waitFor(/Got SIGHUP: nothing to reload/);
  {
    using later = await connectTo(port);
    await writeAll(later, "REQ 9\n");
    assert.deepEqual(await new LineReader(later).readLines(1), ["ACK 9"]);
  }
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
});

Deno.test("SIGQUIT mid-pipeline drains like SIGTERM: every reply, final line, exit 0", async () => {
  await using upstream = await startUpstream({ delayMs: 300 });
  const { child, port } = await spawnProxy(upstream.addr);
  await using _child = child;
  await midPipeline(port, upstream, () => child.kill("SIGQUIT"));
  assert.equal((await child.status()).code, 0);
  const final = JSON.parse((await child.readLine()) ?? "null");
  assert.equal(final.msg_ack, 200);
});

Deno.test("SIGUSR1 never opens the debugger port, is counted, and the proxy keeps serving", async () => {
  const INSPECTOR = 9229;
  if (await accepting(INSPECTOR)) {
    // Something else holds the port: the check below would prove nothing.
    throw new Error(`127.0.0.1:${INSPECTOR} is in use before the test; free it to run this test`);
  }
  await using upstream = await startUpstream({ delayMs: 100 });
  const { child, port } = await spawnProxy(upstream.addr);
  await using _child = child;
  let opened = 0;
  await midPipeline(port, upstream, async () => {
    child.kill("SIGUSR1");
    await child.stderr.waitFor(/Got SIGUSR1: ignored/);
    // Poll the inspector port for 2 s (bounded): it must never accept.
    const until = Date.now() + 2000;
    while (Date.now() < until) {
      if (await accepting(INSPECTOR)) opened++;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  });
  assert.equal(opened, 0, "127.0.0.1:9229 accepted a connection");
  child.kill("SIGUSR2");
  const line = JSON.parse((await child.readLine()) ?? "null");
  assert.equal(line.usr1_ignored, 1);
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
});

Deno.test("Ctrl-C at a terminal: SIGINT to the process group of deno task start drains, every reply, exit 0", async () => {
  await using upstream = await startUpstream({ delayMs: 300 });
  // setsid: the task runs in a process group of its own, as a terminal's foreground job does.
  const task = new Deno.Command("setsid", {
    args: [
      Deno.execPath(),
      "task",
      "--quiet",
      "start",
      "--listen=127.0.0.1:0",
      `--forward=127.0.0.1:${upstream.addr.port}`,
      "--http=off",
      "--health=off",
    ],
    cwd: REPO_ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new OutputLines(task.stderr);
  const stdout = new OutputLines(task.stdout);
  try {
    const port = Number((await stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
    await midPipeline(port, upstream, async () => {
      // What the terminal does on Ctrl-C: SIGINT to every process of the foreground group (deno
      // task and the proxy); the copy deno task forwards lands milliseconds later (sent here once
      // the first was taken, so that the two cannot coalesce into one).
      Deno.kill(-task.pid, "SIGINT");
      await stderr.waitFor(/shutting down gracefully/);
      Deno.kill(-task.pid, "SIGINT");
    });
    const status = await withTimeout(task.status, 20_000, "deno task start to exit");
    assert.equal(status.code, 0, stderr.text);
    const final = JSON.parse((await stdout.next(5000)) ?? "null");
    assert.equal(final.msg_ack, 200);
    assert.doesNotMatch(stderr.text, /without draining/);
  } finally {
    try {
      Deno.kill(-task.pid, "SIGKILL");
    } catch {
      // Exited already.
    }
    await task.status;
    await Promise.all([stdout.done, stderr.done]);
  }
});

Deno.test("with 400 upstreams the stats line (over 64 KiB) is printed whole on SIGUSR2 and at exit", async () => {
  await using upstream = await startUpstream();
  const many = Array.from(
    { length: 400 },
    (_, k) => `upstream-${k}=127.0.0.1:${upstream.addr.port}`,
  );
  const { child, port } = await spawnProxy(upstream.addr, [
    `--forward=${many.join(",")}`,
    "--health-interval=0", // no probe traffic: the line's size is the point
  ]);
  await using _child = child;
  {
    using client = await connectTo(port);
    await writeAll(client, "REQ 1\n");
    assert.deepEqual(await new LineReader(client).readLines(1), ["ACK 1"]);
  }
  child.kill("SIGUSR2");
  const line = (await child.readLine()) ?? "";
  assert.ok(line.length > 64 * 1024, `a line of ${line.length} bytes`);
  const stats = JSON.parse(line);
  assert.equal(stats.upstreams.length, 401);
  assert.equal(stats.stats_lines_dropped, 0);
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
  const final = JSON.parse((await child.readLine()) ?? "null");
  assert.equal(final.upstreams.length, 401);
  assert.equal(final.msg_ack, 1);
});
