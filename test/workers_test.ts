/**
 * Every core (issue 18): `foo-proxy proxy --workers N` runs N data-plane workers behind one
 * supervisor, and nothing a user sees changes but the speed: exact totals, the connection limit
 * of the whole process, reload and drain of every worker, one health checker, recovery, and a
 * worker that dies replaced with its totals kept. Real subprocesses, real sockets.
 */
import assert from "node:assert/strict";
import {
  connectTo,
  DEFAULT_CHILD_FLAGS,
  freePort,
  LineReader,
  type MainProcess,
  REPO_ROOT,
  requests,
  spawnMain,
  startUpstream,
  waitUntil,
  writeAll,
} from "./_util.ts";

const LOCAL = "127.0.0.1";

interface WorkerRow {
  worker: number;
  connections_active: number;
  replies_per_second: number;
  restarts: number;
}

interface Snapshot {
  msg_req: number;
  msg_ack: number;
  msg_nak: number;
  connections_total: number;
  connections_active: number;
  connections_rejected: number;
  connections_closed: Record<string, number>;
  worker_restarts: number;
  workers: WorkerRow[];
  latency_samples?: number;
  upstreams: { name: string; state: string; connections_total: number; requests: number }[];
}

/** Starts `foo-proxy proxy` with `flags`; resolves with it, its port and its stats port. */
async function spawnWorkers(
  forward: number,
  flags: string[],
  options: { env?: Record<string, string>; permissions?: readonly string[] } = {},
): Promise<{ child: MainProcess; port: number; http: number }> {
  const http = freePort();
  const child = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=${LOCAL}:${forward}`,
    `--http=${LOCAL}:${http}`,
    "--health=off",
    ...flags,
  ], options);
  const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
  return { child, port, http };
}

async function stats(http: number): Promise<Snapshot> {
  const response = await fetch(`http://${LOCAL}:${http}/stats`);
  assert.equal(response.status, 200);
  return await response.json();
}

/** One client: sends REQ 1..count at once, reads every ACK in order, closes. */
async function pipelined(port: number, count: number): Promise<void> {
  using conn = await connectTo(port);
  const reader = new LineReader(conn);
  await writeAll(conn, requests(1, count));
  const lines = await reader.readLines(count, 20_000);
  for (let i = 0; i < count; i++) assert.equal(lines[i], `ACK ${i + 1}`);
}

/** An open client that can do round trips: `REQ seq` → `ACK seq`. */
class Client implements Disposable {
  seq = 0;
  constructor(readonly conn: Deno.TcpConn, readonly reader: LineReader) {}

  static async open(port: number): Promise<Client> {
    const conn = await connectTo(port);
    return new Client(conn, new LineReader(conn));
  }

  /** One round trip; false when the connection is gone (closed or reset). */
  async roundTrip(): Promise<boolean> {
    this.seq++;
    try {
      await writeAll(this.conn, `REQ ${this.seq}\n`);
      const [line] = await this.reader.readLines(1, 10_000);
      assert.equal(line, `ACK ${this.seq}`);
      return true;
    } catch (error) {
      if (error instanceof assert.AssertionError) throw error;
      return false;
    }
  }

  [Symbol.dispose](): void {
    try {
      this.conn.close();
    } catch {
      // Closed already.
    }
  }
}

/** Opens `count` clients at once (the kernel spreads them over the workers). */
function openClients(port: number, count: number): Promise<Client[]> {
  return Promise.all(Array.from({ length: count }, () => Client.open(port)));
}

/** `rounds` round trips on every client, each answered. */
async function roundTrips(clients: Client[], rounds: number): Promise<void> {
  for (let round = 0; round < rounds; round++) {
    for (const client of clients) assert.ok(await client.roundTrip());
  }
}

/** The test hook: crashes (or, with FOO_PROXY_TEST_HOOKS=freeze, freezes) worker `index`. */
async function crashWorker(http: number, index: number): Promise<void> {
  const response = await fetch(`http://${LOCAL}:${http}/debug/crash-worker/${index}`, {
    method: "POST",
  });
  assert.equal(response.status, 200, await response.text());
}

for (const workers of [2, 3]) {
  Deno.test(`--workers ${workers}: totals are exact under pipelined load, and every worker carries connections`, async () => {
    await using upstream = await startUpstream();
    const { child, port, http } = await spawnWorkers(upstream.addr.port, [
      `--workers=${workers}`,
    ]);
    await using _child = child;
    // 40 clients held open: the kernel spreads them over the workers' listeners.
    const held = await Promise.all(Array.from({ length: 40 }, () => Client.open(port)));
    try {
      for (const client of held) assert.ok(await client.roundTrip());
      const during = await stats(http);
      assert.equal(during.workers.length, workers);
      assert.equal(during.connections_active, 40);
      assert.equal(during.workers.reduce((n, w) => n + w.connections_active, 0), 40);
      for (const w of during.workers) {
        assert.ok(w.connections_active > 0, `worker ${w.worker} carries no connection`);
      }
    } finally {
      for (const client of held) client[Symbol.dispose]();
    }
    // 24 more clients pipelining 500 REQs each, all at once.
    await Promise.all(Array.from({ length: 24 }, () => pipelined(port, 500)));
    const sent = 40 + 24 * 500;
    await waitUntil(async () => (await stats(http)).connections_active === 0, "clients to end");
    const after = await stats(http);
    assert.equal(after.msg_req, sent);
    assert.equal(after.msg_ack, sent);
    assert.equal(after.latency_samples, sent);
    assert.equal(after.connections_total, 64);
    assert.deepEqual(after.connections_closed, { client_closed: 64 });
    assert.equal(after.upstreams[0].requests, sent);
    assert.equal(after.upstreams[0].connections_total, 64);
    // The SIGUSR2 line says the same.
    child.kill("SIGUSR2");
    const line: Snapshot = JSON.parse((await child.readLine()) ?? "null");
    assert.equal(line.msg_req, sent);
    assert.equal(line.msg_ack, sent);
    assert.equal(upstream.requests, sent);
    child.kill("SIGTERM");
    const final: Snapshot = JSON.parse((await child.readLine()) ?? "null");
    assert.equal((await child.status()).code, 0, child.stderr.text);
    assert.equal(final.msg_ack, sent);
  });
}

Deno.test("--max-connections is a total for the whole process, whatever worker a client lands on", async () => {
  await using upstream = await startUpstream();
  const { child, port, http } = await spawnWorkers(upstream.addr.port, [
    "--workers=2",
    "--max-connections=6",
  ]);
  await using _child = child;
  const clients = await Promise.all(Array.from({ length: 12 }, () => Client.open(port)));
  try {
    const served = await Promise.all(clients.map((c) => c.roundTrip()));
    assert.equal(served.filter(Boolean).length, 6);
    const snap = await stats(http);
    assert.equal(snap.connections_active, 6);
    assert.equal(snap.connections_rejected, 6);
    assert.equal(snap.connections_closed.max_connections, 6);
  } finally {
    for (const client of clients) client[Symbol.dispose]();
  }
});

Deno.test("SIGTERM under load with 2 workers: every REQ is answered, one final line with the totals", async () => {
  await using upstream = await startUpstream({ delayMs: 1 });
  const { child, port } = await spawnWorkers(upstream.addr.port, ["--workers=2"]);
  await using _child = child;
  const clients = await Promise.all(Array.from({ length: 16 }, () => Client.open(port)));
  try {
    // Every client has a first reply (so each is bridged), then pipelines 300 more while the
    // drain starts: a drain waits for connections to finish on their own.
    for (const client of clients) assert.ok(await client.roundTrip());
    const writes = clients.map((c) => writeAll(c.conn, requests(2, 301)));
    child.kill("SIGTERM");
    await Promise.all(writes);
    await Promise.all(clients.map(async (c) => {
      const lines = await c.reader.readLines(300, 20_000);
      lines.forEach((line, i) => assert.equal(line, `ACK ${i + 2}`));
    }));
  } finally {
    for (const client of clients) client[Symbol.dispose]();
  }
  const final: Snapshot = JSON.parse((await child.readLine(20_000)) ?? "null");
  assert.equal((await child.status()).code, 0, child.stderr.text);
  assert.equal(final.msg_req, 16 * 301);
  assert.equal(final.msg_ack, 16 * 301);
  assert.equal(await child.readLine(), null, "one final line");
  assert.equal(child.stderr.lines.filter((l) => /Stopped accepting/.test(l)).length <= 1, true);
});

Deno.test("a worker that crashes mid-load is replaced: its clients are closed, the others carry on, totals never go back", async () => {
  await using upstream = await startUpstream();
  const { child, port, http } = await spawnWorkers(upstream.addr.port, ["--workers=2"], {
    env: { FOO_PROXY_TEST_HOOKS: "1" },
  });
  await using _child = child;
  const clients = await openClients(port, 30);
  try {
    await roundTrips(clients, 5);
    const before = await stats(http);
    assert.equal(before.msg_req, 150);
    const onZero = before.workers[0].connections_active;
    const onOne = before.workers[1].connections_active;
    assert.equal(onZero + onOne, 30);
    await crashWorker(http, 0);
    await child.stderr.waitFor(/Data-plane worker 0 died .*test hook/);
    await child.stderr.waitFor(/Data-plane worker 0 replaced/);
    const alive = await Promise.all(clients.map((c) => c.roundTrip()));
    // Exactly the clients of worker 1 are still served; those of worker 0 were closed with it.
    assert.equal(alive.filter(Boolean).length, onOne);
    const after = await stats(http);
    assert.equal(after.worker_restarts, 1);
    assert.equal(after.workers[0].restarts, 1);
    assert.ok(after.msg_req >= before.msg_req + onOne, `${after.msg_req} went back`);
    assert.ok(after.msg_ack >= before.msg_ack + onOne);
    assert.ok(after.connections_total >= before.connections_total);
    // New clients are served by both workers again.
    const fresh = await Promise.all(Array.from({ length: 24 }, () => Client.open(port)));
    try {
      for (const client of fresh) assert.ok(await client.roundTrip());
      const now = await stats(http);
      assert.ok(now.workers[0].connections_active > 0, "the new worker 0 takes clients");
    } finally {
      for (const client of fresh) client[Symbol.dispose]();
    }
  } finally {
    for (const client of clients) client[Symbol.dispose]();
  }
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0, child.stderr.text);
});

Deno.test("health checks run once for the process: 3 workers probe an upstream no faster than 1", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  const interval = 150;
  // Checks run with more than one upstream; a probe is a connection the upstream counts.
  const elapsed = async (workers: number) => {
    const { child } = await spawnWorkers(a.addr.port, [
      `--workers=${workers}`,
      `--forward=${LOCAL}:${b.addr.port}`, // with spawnWorkers' own: a and b
      `--health-interval=${interval}ms`,
    ]);
    await using _child = child;
    // Counted from here, not from the spawn: probes made before this test saw the proxy listen
    // (a loaded machine reads its log late) would shorten the time measured.
    const startConnections = a.accepted;
    const started = performance.now();
    await waitUntil(() => a.accepted - startConnections >= 8, "8 probes", 20_000);
    const ms = performance.now() - started;
    child.kill("SIGTERM");
    await child.status();
    return ms;
  };
  // 8 probes at one per interval (jittered ±10 %) take at least 7 × 0.9 intervals after the
  // first; a worker each probing would take a third of that with 3 workers.
  for (const workers of [1, 3]) {
    const ms = await elapsed(workers);
    assert.ok(ms >= 6 * interval * 0.9, `--workers ${workers}: 8 probes in ${ms.toFixed(0)} ms`);
  }
});

Deno.test("recovery across a restart with workers: the totals of 2 workers carry over to 3", async () => {
  await using upstream = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-workers-" });
  const path = `${dir}/stats.json`;
  const permissions = [
    "--allow-net",
    "--allow-env=FOO_PROXY_*",
    `--allow-read=${dir},${REPO_ROOT}/src`,
    `--allow-write=${dir}`,
    "--unstable-net",
  ];
  try {
    {
      const { child, port } = await spawnWorkers(upstream.addr.port, [
        "--workers=2",
        `--recovery-path=${path}`,
      ], { permissions });
      await using _child = child;
      await Promise.all(Array.from({ length: 8 }, () => pipelined(port, 100)));
      child.kill("SIGTERM");
      const final: Snapshot = JSON.parse((await child.readLine()) ?? "null");
      assert.equal((await child.status()).code, 0, child.stderr.text);
      assert.equal(final.msg_req, 800);
    }
    const { child, port, http } = await spawnWorkers(upstream.addr.port, [
      "--workers=3",
      `--recovery-path=${path}`,
    ], { permissions });
    await using _child = child;
    assert.equal((await stats(http)).msg_req, 800);
    await Promise.all(Array.from({ length: 6 }, () => pipelined(port, 50)));
    const snap = await stats(http);
    assert.equal(snap.msg_req, 1100);
    assert.equal(snap.msg_ack, 1100);
    assert.equal(snap.connections_total, 14);
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0, child.stderr.text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--workers 2 without --unstable-net, or without read access to src/, exits 2 with one line; auto falls back and says why", async () => {
  await using upstream = await startUpstream();
  const noUnstable = DEFAULT_CHILD_FLAGS.filter((f) => f !== "--unstable-net");
  const noRead = DEFAULT_CHILD_FLAGS.filter((f) => !f.startsWith("--allow-read"));
  for (
    const [permissions, pattern] of [
      [noUnstable, /^foo-proxy: --workers 2 needs --unstable-net/],
      [noRead, /^foo-proxy: --workers 2: the data-plane workers are loaded from .*--allow-read=/],
    ] as const
  ) {
    await using child = spawnMain([
      "proxy",
      "--listen=127.0.0.1:0",
      `--forward=${LOCAL}:${upstream.addr.port}`,
      "--http=off",
      "--health=off",
      "--workers=2",
    ], { permissions });
    assert.equal((await child.status()).code, 2);
    assert.equal(child.stderr.lines.length, 1, child.stderr.text);
    assert.match(child.stderr.lines[0], pattern);
  }
  if (navigator.hardwareConcurrency > 1) {
    const { child, port } = await spawnWorkers(upstream.addr.port, [], {
      permissions: noUnstable,
      env: { FOO_PROXY_WORKERS: "auto" },
    });
    await using _child = child;
    assert.match(child.stderr.text, /Using 1 core of \d+: .*--unstable-net/);
    assert.match(child.stderr.text, /\(1 data-plane worker\)/);
    await pipelined(port, 10);
  }
});

Deno.test("a reload adds and removes an upstream under load with 2 workers: no connection dropped", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-workers-" });
  const path = `${dir}/foo-proxy.jsonc`;
  const write = (forward: string[]) =>
    Deno.writeTextFile(path, JSON.stringify({ forward, "health-interval": "100ms" }));
  await write([`a=${LOCAL}:${a.addr.port}`]);
  try {
    const http = freePort();
    await using child = spawnMain([
      "proxy",
      `--config=${path}`,
      "--listen=127.0.0.1:0",
      `--http=${LOCAL}:${http}`,
      "--health=off",
      "--workers=2",
    ], {
      permissions: [
        "--allow-net",
        "--allow-env=FOO_PROXY_*",
        `--allow-read=${dir},${REPO_ROOT}/src`,
        "--unstable-net",
      ],
    });
    const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/))[1]);
    const clients = await Promise.all(Array.from({ length: 16 }, () => Client.open(port)));
    try {
      // Load on every client through the reload: round trips never stop.
      let reloading = true;
      const load = Promise.all(clients.map(async (c) => {
        let trips = 0;
        while (reloading || trips < 3) {
          assert.ok(await c.roundTrip(), "a connection was dropped");
          trips++;
        }
        return trips;
      }));
      await write([`b=${LOCAL}:${b.addr.port}`]);
      child.kill("SIGHUP");
      await child.stderr.waitFor(/Reloaded .*: b added; a removed/);
      // Both workers took the new set: new clients (spread over both) all reach b.
      await waitUntil(async () => {
        const rows = (await stats(http)).upstreams;
        return rows.some((u) => u.name === "b" && u.state === "up");
      }, "b to be up");
      const fresh = await Promise.all(Array.from({ length: 16 }, () => Client.open(port)));
      try {
        for (const client of fresh) assert.ok(await client.roundTrip());
      } finally {
        for (const client of fresh) client[Symbol.dispose]();
      }
      reloading = false;
      const trips = await load;
      assert.ok(trips.every((n) => n >= 3));
      const snap = await stats(http);
      const byName = Object.fromEntries(snap.upstreams.map((u) => [u.name, u]));
      assert.equal(byName.b.connections_total, 16);
      assert.equal(byName.a.state, "draining");
      assert.equal(byName.a.connections_total, 16);
      assert.equal(snap.msg_req, snap.msg_ack);
    } finally {
      for (const client of clients) client[Symbol.dispose]();
    }
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0, child.stderr.text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--workers 2 on a port another --workers 2 proxy holds exits 1 with one line, instead of sharing the port", async () => {
  await using upstream = await startUpstream();
  const first = await spawnWorkers(upstream.addr.port, ["--workers=2"]);
  await using _first = first.child;
  // SO_REUSEPORT lets any socket of the same user that sets it join the port: a second proxy
  // started by mistake would silently take half of the first one's clients.
  const second = spawnMain([
    "proxy",
    `--listen=${LOCAL}:${first.port}`,
    `--forward=${LOCAL}:${upstream.addr.port}`,
    "--http=off",
    "--health=off",
    "--workers=2",
  ]);
  await using _second = second;
  const [said] = await second.stderr.waitFor(/Listening on|Cannot listen/, 20_000);
  assert.match(said, /Cannot listen/, second.stderr.text);
  const status = await second.status();
  assert.equal(status.code, 1, second.stderr.text);
  const errors = second.stderr.lines.filter((l) => /\[ERR\]/.test(l));
  assert.equal(errors.length, 1, second.stderr.text);
  assert.match(
    errors[0],
    new RegExp(`Cannot listen on 127\\.0\\.0\\.1:${first.port}: address already in use`),
  );
  // The first proxy still serves.
  using client = await Client.open(first.port);
  assert.ok(await client.roundTrip());
});

Deno.test("the request and response rates keep what a worker saw after it dies (they fall by age, not by a crash)", async () => {
  await using upstream = await startUpstream();
  const { child, port, http } = await spawnWorkers(upstream.addr.port, ["--workers=2"], {
    env: { FOO_PROXY_TEST_HOOKS: "1" },
  });
  await using _child = child;
  const clients = await openClients(port, 20);
  try {
    await roundTrips(clients, 5);
    const before = await stats(http) as Snapshot & Record<string, number>;
    assert.ok(before.workers[0].connections_active > 0, "worker 0 carries clients");
    // Well inside the 10 s window: every REQ so far is in it (over 9.9 to 10 s of it).
    const inWindow = (rate: number) => rate * 10 >= 100 && rate * 10 <= 101.1;
    assert.ok(inWindow(before.request_rate_10s), `${before.request_rate_10s}`);
    assert.ok(inWindow(before.response_rate_10s), `${before.response_rate_10s}`);
    await crashWorker(http, 0);
    await child.stderr.waitFor(/Data-plane worker 0 died .*test hook/);
    const after = await stats(http) as Snapshot & Record<string, number>;
    assert.equal(after.msg_req, 100);
    assert.ok(
      inWindow(after.request_rate_10s),
      `the dead worker's REQs left: ${after.request_rate_10s}`,
    );
    assert.ok(inWindow(after.response_rate_10s), `${after.response_rate_10s}`);
  } finally {
    for (const client of clients) client[Symbol.dispose]();
  }
});

Deno.test("a frozen worker does not hang the drain: SIGTERM ends it after a bounded wait and exits with its last flushed totals", async () => {
  await using upstream = await startUpstream();
  // FOO_PROXY_TEST_HOOKS=freeze: the crash hook makes the worker spin for ever instead.
  const { child, port, http } = await spawnWorkers(upstream.addr.port, [
    "--workers=2",
    "--drain-timeout=10m",
  ], { env: { FOO_PROXY_TEST_HOOKS: "freeze" } });
  await using _child = child;
  const clients = await openClients(port, 20);
  try {
    for (const client of clients) assert.ok(await client.roundTrip());
    const before = await stats(http);
    assert.ok(before.workers.every((w) => w.connections_active > 0));
    await crashWorker(http, 0);
    // /stats still answers (a frozen worker is read as it last flushed).
    assert.equal((await stats(http)).msg_req, 20);
    child.kill("SIGTERM");
    await child.stderr.waitFor(/Data-plane worker 0 does not answer/, 15_000);
    // The drain goes on with worker 1's clients (a spinning worker cannot be torn down: its
    // sockets close when the process exits).
    await child.stderr.waitFor(/waiting up to 600000 ms for \d+ connection/);
  } finally {
    for (const client of clients) client[Symbol.dispose]();
  }
  const final: Snapshot = JSON.parse((await child.readLine(15_000)) ?? "null");
  assert.equal((await child.status(15_000)).code, 0, child.stderr.text);
  assert.equal(final.msg_req, 20, child.stderr.text);
});

Deno.test("a worker that stops running (a busy loop) is reported once and fails /readyz: the kernel still hands it new clients", async () => {
  await using upstream = await startUpstream();
  const health = freePort();
  const { child, http } = await spawnWorkers(upstream.addr.port, [
    "--workers=2",
    `--health=${LOCAL}:${health}`,
  ], { env: { FOO_PROXY_TEST_HOOKS: "freeze" } });
  await using _child = child;
  const ready = async () => {
    const response = await fetch(`http://${LOCAL}:${health}/readyz`);
    await response.body?.cancel();
    return response.status;
  };
  assert.equal(await ready(), 200);
  await crashWorker(http, 0);
  await child.stderr.waitFor(/Data-plane worker 0 has not run for \d+ s/, 10_000);
  assert.equal(await ready(), 503);
  // Reads no longer ask it to flush (each ask waited 1 s for it, and queued a message it would
  // never read): 20 reads take well under 20 s.
  const started = performance.now();
  for (let i = 0; i < 20; i++) await stats(http);
  assert.ok(performance.now() - started < 5000, `${performance.now() - started} ms`);
  assert.equal(
    child.stderr.lines.filter((l) => /Data-plane worker 0 has not run/.test(l)).length,
    1,
    child.stderr.text,
  );
});

Deno.test("a worker that crashes leaves its last counts, and stderr stays one JSON log line per line", async () => {
  await using upstream = await startUpstream();
  const { child, port, http } = await spawnWorkers(upstream.addr.port, [
    "--workers=2",
    "--log-format=json",
  ], { env: { FOO_PROXY_TEST_HOOKS: "1" } });
  await using _child = child;
  const clients = await openClients(port, 20);
  let trips = 0;
  try {
    for (let round = 0; round < 3; round++) {
      for (const client of clients) assert.ok(await client.roundTrip());
      trips += clients.length;
    }
    // No read in between: what worker 0 counted since its last periodic flush is at stake.
    await crashWorker(http, 0);
    await child.stderr.waitFor(/Data-plane worker 0 replaced/);
    const after = await stats(http);
    assert.equal(after.msg_req, trips);
    assert.equal(after.msg_ack, trips);
    assert.equal(after.upstreams[0].requests, trips);
  } finally {
    for (const client of clients) client[Symbol.dispose]();
  }
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0, child.stderr.text);
  for (const line of child.stderr.lines) {
    assert.doesNotThrow(() => JSON.parse(line), `not a JSON log line: ${line}`);
  }
});

Deno.test("a worker waiting to be replaced (it died young) shows no connections in the per-worker rows", async () => {
  await using upstream = await startUpstream();
  // A death within a minute of the start is young (not the usual second): on a loaded machine
  // the clients, round trips and /stats below can take longer than a second.
  const { child, port, http } = await spawnWorkers(upstream.addr.port, ["--workers=2"], {
    env: { FOO_PROXY_TEST_HOOKS: "1", FOO_PROXY_TEST_YOUNG_MS: "60000" },
  });
  await using _child = child;
  await crashWorker(http, 0);
  // Young already (within that minute): replaced after the first backoff, a second.
  await child.stderr.waitFor(/Data-plane worker 0 replaced/, 20_000);
  // Young: its next death waits for a backoff before the replacement.
  const clients = await openClients(port, 20);
  try {
    for (const client of clients) assert.ok(await client.roundTrip());
    assert.ok((await stats(http)).workers[0].connections_active > 0);
    await crashWorker(http, 0);
    await child.stderr.waitFor(/Data-plane worker 0 died .*replacing it in \d+ s/);
    const during = await stats(http);
    assert.equal(during.workers[0].connections_active, 0);
    assert.equal(
      during.workers.reduce((n, w) => n + w.connections_active, 0),
      during.connections_active,
    );
  } finally {
    for (const client of clients) client[Symbol.dispose]();
  }
});

Deno.test("workers whose module cannot load: auto serves on the main thread and says so; an explicit --workers 2 exits 1", async () => {
  await using upstream = await startUpstream();
  // Reading src/ is granted, but one module of the worker's is not: the Worker dies loading.
  const permissions = [...DEFAULT_CHILD_FLAGS, `--deny-read=${REPO_ROOT}/src/stats/stats_row.ts`];
  {
    const { child, port } = await spawnWorkers(upstream.addr.port, [], {
      permissions,
      env: { FOO_PROXY_WORKERS: "auto" },
    });
    await using _child = child;
    assert.match(child.stderr.text, /The data-plane workers cannot start \(.*stats_row\.ts/);
    assert.match(child.stderr.text, /\(data plane on the main thread\)/);
    await pipelined(port, 20);
  }
  await using child = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=${LOCAL}:${upstream.addr.port}`,
    "--http=off",
    "--health=off",
    "--workers=2",
  ], { permissions });
  assert.equal((await child.status()).code, 1);
  assert.match(
    child.stderr.text,
    /Cannot start the data-plane workers for 127\.0\.0\.1:0: data-plane worker \d: .*stats_row/,
  );
});
