/**
 * `--takeover`: a new proxy started with a running one's `--pid-file` binds beside it, makes it
 * stop accepting and drain, and carries its statistics over, exactly. Real processes, real
 * sockets, the project's own Foo server.
 */
import assert from "node:assert/strict";
import {
  connectTo,
  freePort,
  lineReader,
  type MainProcess,
  REPO_ROOT,
  requests,
  spawnMain,
  startUpstream,
  waitUntil,
  withTimeout,
  writeAll,
} from "./_util.ts";
import {
  carriedUpstreams,
  STEP_TIMEOUT_MS,
  TakeoverListener,
  UPSTREAM_TOTALS,
  type UpstreamTotals,
} from "../src/cmd/takeover.ts";
import type { FooServer } from "../src/tools/server.ts";
import { captureRecoveryState, serializeRecoveryState } from "../src/stats/recovery.ts";
import { Stats } from "../src/stats/stats.ts";
import { systemClock } from "../src/stats/clock.ts";

/** What `net.ipv4.tcp_migrate_req` is here: with 1, a closing listener's backlog moves over. */
async function migrateReq(): Promise<boolean> {
  const text = await Deno.readTextFile("/proc/sys/net/ipv4/tcp_migrate_req").catch(() => "0");
  return text.trim() === "1";
}

interface Setup {
  dir: string;
  pidFile: string;
  recovery: string;
  port: number;
  http: number;
  args: string[];
  permissions: string[];
}

async function setup(upstreamPort: number, extra: string[] = []): Promise<Setup> {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-takeover-" });
  const pidFile = `${dir}/foo-proxy.pid`;
  const recovery = `${dir}/stats.json`;
  const port = freePort();
  const http = freePort();
  return {
    dir,
    pidFile,
    recovery,
    port,
    http,
    args: [
      "proxy",
      `--listen=127.0.0.1:${port}`,
      `--forward=127.0.0.1:${upstreamPort}`,
      `--http=127.0.0.1:${http}`,
      "--health=off",
      `--pid-file=${pidFile}`,
      `--recovery-path=${recovery}`,
      ...extra,
    ],
    permissions: [
      "--allow-net",
      "--allow-env=FOO_PROXY_*",
      `--allow-read=${REPO_ROOT}/src,${dir}`,
      `--allow-write=${dir}`,
      "--unstable-net",
    ],
  };
}

async function stats(port: number): Promise<Record<string, number>> {
  const response = await fetch(`http://127.0.0.1:${port}/stats`);
  assert.equal(response.status, 200);
  return await response.json();
}

async function pidIn(path: string): Promise<string> {
  return (await Deno.readTextFile(path).catch(() => "")).trim();
}

/** Sent and answered, by a set of clients. */
interface Tally {
  connects: number;
  reqs: number;
  replies: number;
  errors: string[];
}

/** Short clients: connect, pipeline `n` REQs, read every reply, close; again until `stop`. */
async function shortClient(port: number, n: number, tally: Tally, stop: () => boolean) {
  while (!stop()) {
    try {
      using conn = await connectTo(port);
      tally.connects++;
      const reader = lineReader(conn);
      await writeAll(conn, requests(1, n));
      for (let i = 1; i <= n; i++) {
        const line = await reader.readLine(5000);
        if (line === null) throw new Error(`closed after ${i - 1} of ${n} replies`);
        if (!/^(ACK|NAK) \d+/.test(line)) throw new Error(`not a reply: ${line}`);
        // Counted once it got in: one reset in a closing listener's backlog (written into, never
        // read by a proxy) is allowed below, its REQs never counted by either.
        if (i === 1) tally.reqs += n;
        tally.replies++;
      }
    } catch (error) {
      tally.errors.push(error instanceof Error ? `${error.name}: ${error.message}` : String(error));
    }
  }
}

/** A long client: one connection, one REQ at a time (each answered) until `stop`. */
async function longClient(port: number, tally: Tally, stop: () => boolean) {
  try {
    using conn = await connectTo(port);
    tally.connects++;
    const reader = lineReader(conn);
    for (let seq = 1; !stop(); seq++) {
      await writeAll(conn, requests(seq, seq));
      tally.reqs++;
      const line = await reader.readLine(5000);
      if (line === null) throw new Error(`closed before the reply to ${seq}`);
      tally.replies++;
      await new Promise((resolve) => setTimeout(resolve, 2)); // a paced client, not a sync
    }
  } catch (error) {
    tally.errors.push(error instanceof Error ? `${error.name}: ${error.message}` : String(error));
  }
}

/** Until `pid` is in the pid file at `path` (or `gaveUp()`: then it throws). */
async function waitPid(path: string, pid: number, gaveUp = () => false) {
  await waitUntil(
    async () => {
      if (gaveUp()) throw new Error(`no longer waiting for pid ${pid} in ${path}`);
      return await pidIn(path) === String(pid);
    },
    `pid ${pid} in ${path}`,
    30_000,
  );
}

/**
 * A takeover test: our Foo server, a temporary directory (removed after) and the proxy flags of
 * {@linkcode setup} (`extra` added).
 */
function takeoverTest(
  name: string,
  fn: (s: Setup, upstream: FooServer) => Promise<void>,
  extra: string[] = [],
): void {
  Deno.test(name, async () => {
    await using upstream = await startUpstream();
    const s = await setup(upstream.addr.port, extra);
    try {
      await fn(s, upstream);
    } finally {
      await Deno.remove(s.dir, { recursive: true });
    }
  });
}

/**
 * The running proxy, with the setup's flags (or `args`), once its pid is in the pid file. A child
 * that exits first fails at once, quoting its stderr. The setup's ports were free a moment ago
 * ({@linkcode freePort}); when another socket took one meanwhile (the child exits "in use"), new
 * ones are picked, in `s` and `args` alike, and it starts again (three tries).
 */
async function startOld(s: Setup, args = s.args): Promise<MainProcess> {
  for (let attempt = 1;; attempt++) {
    const old = spawnMain(args, { permissions: s.permissions });
    let exited = false;
    try {
      const started = waitPid(s.pidFile, old.pid, () => exited);
      const code = await Promise.race([
        started.then(() => null),
        old.process.status.then((status) => status.code),
      ]);
      if (code === null) return old;
      exited = true; // the poll above gives up
      await started.catch(() => {});
      await old.status();
      if (attempt < 3 && /in use/i.test(old.stderr.text)) {
        args = repick(s, args);
        continue;
      }
      throw new Error(`the running proxy exited ${code} before writing its pid`);
    } catch (error) {
      await old[Symbol.asyncDispose]();
      if (error instanceof Error) error.message += `; stderr: ${JSON.stringify(old.stderr.text)}`;
      throw error;
    }
  }
}

/** New free ports for `s` (its `args` too); returns `args` with the same change. */
function repick(s: Setup, args: string[]): string[] {
  const [port, http] = [freePort(), freePort()];
  const change = (list: string[]) =>
    list.map((arg) =>
      arg.replace(`--listen=127.0.0.1:${s.port}`, `--listen=127.0.0.1:${port}`)
        .replace(`--http=127.0.0.1:${s.http}`, `--http=127.0.0.1:${http}`)
    );
  const changed = change(args);
  s.args = change(s.args);
  [s.port, s.http] = [port, http];
  return changed;
}

takeoverTest(
  "--takeover under load: no refused connection, no lost reply, the counters carry over exactly and never go back",
  async (s) => {
    await using old = await startOld(s);
    const short: Tally = { connects: 0, reqs: 0, replies: 0, errors: [] };
    const long: Tally = { connects: 0, reqs: 0, replies: 0, errors: [] };
    let stopShort = false;
    let stopLong = false;
    const loads = [
      ...Array.from({ length: 4 }, () => shortClient(s.port, 3, short, () => stopShort)),
      ...Array.from({ length: 4 }, () => longClient(s.port, long, () => stopLong)),
    ];
    // Counters read all along, from whichever proxy answers the admin port.
    const seen: number[] = [];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        try {
          seen.push((await stats(s.http)).msg_total);
        } catch {
          // The port between two servers: counted below, not a failure of the counters.
        }
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    })();
    await waitUntil(() => short.replies > 200 && long.replies > 200, "load through the old proxy");

    await using next = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await next.stderr.waitFor(/Serving: the running proxy stops accepting and drains/, 30_000);
    await old.stderr.waitFor(/Taken over by pid \d+: stopped accepting/);
    // The new one serves: more short clients through it, while the long ones hold the old one.
    const before = short.replies;
    await waitUntil(() => short.replies > before + 200, "load through the new proxy", 10_000);
    stopLong = true; // the old one's last clients leave: its drain ends
    assert.equal((await old.status(30_000)).code, 0, old.stderr.text);
    await waitPid(s.pidFile, next.pid);
    await next.stderr.waitFor(/Took over: this proxy/);
    stopShort = true;
    await Promise.all(loads);
    polling = false;
    await poller;

    const migrate = await migrateReq();
    if (migrate) {
      assert.deepEqual(short.errors, [], "no short client failed (tcp_migrate_req=1)");
    } else {
      // Without net.ipv4.tcp_migrate_req the kernel resets what waits in the closing listener's
      // backlog (docs/deploy.md): such a client never got in, so no reply of it is lost.
      for (const error of short.errors) assert.match(error, /reset|refused/i);
      assert.ok(short.errors.length <= 4, `${short.errors.length} resets`);
    }
    assert.deepEqual(long.errors, [], "no long client lost a reply");
    assert.ok(short.connects > 0 && long.connects === 4);

    for (let i = 1; i < seen.length; i++) {
      assert.ok(seen[i] >= seen[i - 1], `msg_total went back: ${seen[i - 1]} then ${seen[i]}`);
    }
    const total = await stats(s.http);
    const reqs = short.reqs + long.reqs;
    const replies = short.replies + long.replies;
    assert.equal(total.msg_req, reqs, "every REQ counted once");
    assert.equal(total.msg_ack + total.msg_nak, replies, "every reply counted once");
    assert.equal(total.takeover_failures, 0);
    assert.ok(!old.stderr.text.includes("ERROR"), old.stderr.text);

    const saved = await savedOnStop(s, next);
    assert.equal(saved, reqs, "the recovery file holds both proxies' totals");
    const last = JSON.parse((await next.readLine()) ?? "null");
    assert.equal(last.msg_req, reqs);
    await assert.rejects(Deno.lstat(`${s.pidFile}.sock`), Deno.errors.NotFound);
  },
);

/** Stops `proxy` (SIGTERM, exit 0); the `msg_req` its recovery file holds then. */
async function savedOnStop(s: Setup, proxy: MainProcess): Promise<number> {
  proxy.kill("SIGTERM");
  assert.equal((await proxy.status(20_000)).code, 0, proxy.stderr.text);
  return JSON.parse(await Deno.readTextFile(s.recovery)).totals.msg_req;
}

/** `count` REQs on a new connection, every reply read; resolves when all are answered. */
async function exchange(port: number, count: number): Promise<void> {
  using conn = await connectTo(port);
  const reader = lineReader(conn);
  await writeAll(conn, requests(1, count));
  const replies = await reader.readLines(count, 5000);
  assert.equal(replies.length, count);
}

takeoverTest(
  "--takeover twice in a row: each new proxy takes the pid file and its socket, and the totals of all three add up",
  async (s) => {
    await using a = await startOld(s);
    await exchange(s.port, 10);
    await using b = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await b.stderr.waitFor(/Took over: this proxy/, 30_000);
    assert.equal((await a.status()).code, 0);
    assert.equal(await pidIn(s.pidFile), String(b.pid));
    await exchange(s.port, 20);
    await using c = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await c.stderr.waitFor(/Took over: this proxy/, 30_000);
    assert.equal((await b.status()).code, 0);
    await exchange(s.port, 30);
    const total = await stats(s.http);
    assert.equal(total.msg_req, 60);
    assert.equal(total.msg_ack + total.msg_nak, 60);
    const mode = (await Deno.lstat(`${s.pidFile}.sock`)).mode! & 0o777;
    assert.equal(mode, 0o600, "the takeover socket is this user's only");
  },
);

takeoverTest(
  "--takeover with nobody to take over starts as the only proxy; without --pid-file or --unstable-net it is refused",
  async (s) => {
    await using alone = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await alone.stderr.waitFor(
      /no proxy answers on .*foo-proxy\.pid\.sock: starting as the only one/,
    );
    await waitPid(s.pidFile, alone.pid);
    await exchange(s.port, 5);
    alone.kill("SIGTERM");
    assert.equal((await alone.status()).code, 0);

    const noPidFile = s.args.filter((arg) => !arg.startsWith("--pid-file"));
    await using refused = spawnMain([...noPidFile, "--takeover"], { permissions: s.permissions });
    assert.equal((await refused.status()).code, 2);
    assert.match(refused.stderr.text, /--takeover needs --pid-file/);

    const stable = s.permissions.filter((flag) => flag !== "--unstable-net");
    await using noReuse = spawnMain([...s.args, "--takeover"], { permissions: stable });
    assert.equal((await noReuse.status()).code, 2);
    assert.match(noReuse.stderr.text, /--takeover needs --unstable-net/);
  },
);

takeoverTest(
  "a proxy whose socket path is not granted serves on, and a --takeover of it is refused with the reason",
  async (s) => {
    // Read and write of the pid file alone, as granted before --takeover existed.
    const narrow = [
      "--allow-net",
      "--allow-env=FOO_PROXY_*",
      `--allow-read=${REPO_ROOT}/src,${s.pidFile}`,
      `--allow-write=${s.pidFile}`,
      "--unstable-net",
    ];
    const args = s.args.filter((arg) => !arg.startsWith("--recovery-path"));
    await using old = spawnMain(args, { permissions: narrow });
    await old.stderr.waitFor(
      /Not listening for a takeover \(--takeover\): read and write of .*\.sock are not granted/,
    );
    await waitPid(s.pidFile, old.pid);
    await using next = spawnMain([...args, "--takeover"], { permissions: s.permissions });
    assert.equal((await next.status()).code, 2);
    assert.match(
      next.stderr.text,
      new RegExp(`held by a running foo-proxy \\(pid ${old.pid}\\) that has no takeover socket`),
    );
    await exchange(s.port, 5); // the old one never noticed
    assert.equal((await stats(s.http)).msg_req, 5);
  },
);

/** Sends `text` on a new connection to the takeover socket; resolves with what comes back. */
async function askSocket(path: string, text: string, options: { keep?: boolean } = {}) {
  const conn = await Deno.connect({ transport: "unix", path });
  await writeAll(conn, text);
  const reader = lineReader(conn);
  const line = await reader.readLine(10_000);
  if (!options.keep) conn.close();
  return { line, conn };
}

takeoverTest(
  "the takeover socket: garbage, a request abandoned before go and a second request while one is open change nothing but a counter and a log line",
  async (s, upstream) => {
    await using old = await startOld(s);
    await exchange(s.port, 7);
    const socket = `${s.pidFile}.sock`;

    assert.equal((await askSocket(socket, "GET / HTTP/1.1\r\n\r\n")).line, null, "closed at once");
    await old.stderr.waitFor(/Takeover request refused \(the peer sent a line that is not JSON\)/);

    // Asked, answered with the totals, then gone before go: the old proxy serves on.
    const first = await askSocket(socket, `{"t":"takeover","pid":4242}\n`, { keep: true });
    const answer = JSON.parse(first.line ?? "null");
    assert.equal(answer.t, "stats");
    assert.equal(answer.final, false);
    assert.equal(JSON.parse(answer.state).totals.msg_req, 7, "its totals, as the recovery file");
    assert.deepEqual(answer.upstreams, {
      [`127.0.0.1:${upstream.addr.port}`]: {
        connections_total: 1,
        requests: 7,
        replies: 7,
        connect_failures: 0,
        stream_errors: 0,
        ejections: 0,
      },
    }, "its per-upstream totals, which the recovery file does not keep");
    assert.equal(answer.recovery, s.recovery, "its recovery path");
    // A second request while that one waits for its go: refused as busy.
    assert.deepEqual(
      JSON.parse((await askSocket(socket, `{"t":"takeover","pid":4343}\n`)).line ?? "null"),
      { t: "busy" },
    );
    await old.stderr.waitFor(/Takeover request refused \(pid 4343 asked while another/);
    first.conn.close();
    await old.stderr.waitFor(/pid 4242: the new proxy went away before it took over; serving on/);

    await exchange(s.port, 3);
    const now = await stats(s.http);
    assert.equal(now.msg_req, 10);
    assert.equal(now.takeover_failures, 3);
    const metrics = await (await fetch(`http://127.0.0.1:${s.http}/metrics`)).text();
    assert.match(metrics, /^foo_proxy_takeover_failures_total 3$/m);
    // And a real takeover still works after all that.
    await using next = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await next.stderr.waitFor(/Took over: this proxy/, 30_000);
    assert.equal((await old.status()).code, 0);
    assert.equal((await stats(s.http)).msg_req, 10);
  },
);

/** A client that stays (4 REQs answered, then open): a proxy's drain waits for it. */
async function stayingClient(port: number): Promise<Deno.TcpConn> {
  const conn = await connectTo(port);
  await writeAll(conn, requests(1, 4));
  assert.equal((await lineReader(conn).readLines(4, 5000)).length, 4);
  return conn;
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}

/** A proxy with a client that stays, and a new one that took it over: the old one drains. */
async function midTakeover(s: Setup) {
  const old = await startOld(s);
  try {
    const stays = await stayingClient(s.port);
    const next = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await old.stderr.waitFor(/Taken over by pid \d+: stopped accepting/, 30_000);
    return {
      old,
      next,
      stays,
      async [Symbol.asyncDispose]() {
        closeQuietly(stays);
        await next[Symbol.asyncDispose]();
        await old[Symbol.asyncDispose]();
      },
    };
  } catch (error) {
    await old[Symbol.asyncDispose]();
    throw error;
  }
}

takeoverTest(
  "the proxy taken over dies while it drains: the new one keeps its last totals, counts the failure and takes the pid file",
  async (s) => {
    await using mid = await midTakeover(s);
    const { old, next } = mid;
    await waitUntil(async () => (await stats(s.http)).msg_req === 4, "the carried totals");
    old.kill("SIGKILL");
    await next.stderr.waitFor(/went away before its final totals/);
    await next.stderr.waitFor(/Took over: this proxy/);
    assert.equal(await pidIn(s.pidFile), String(next.pid));
    const now = await stats(s.http);
    assert.equal(now.msg_req, 4, "the last totals it heard stand");
    assert.equal(now.takeover_failures, 1);
  },
);

/**
 * The running proxy, played here: it holds the pid file (serving on) and listens on its socket.
 * `answer` takes one request, answers it with empty totals and `extra` fields, then hands the
 * rest of the connection to `then`.
 */
async function playedOld(s: Setup) {
  await Deno.writeTextFile(s.pidFile, `${Deno.pid}\n`);
  const held = await Deno.open(s.pidFile, { write: true });
  await held.lock(true);
  const socket = Deno.listen({ transport: "unix", path: `${s.pidFile}.sock` });
  const state = serializeRecoveryState(
    captureRecoveryState(new Stats({ clock: systemClock }), {}),
  );
  return {
    async answer(extra: object, then: (reader: ReturnType<typeof lineReader>) => Promise<void>) {
      using conn = await socket.accept();
      const reader = lineReader(conn);
      assert.equal(JSON.parse((await reader.readLine(30_000)) ?? "null").t, "takeover");
      await writeAll(conn, JSON.stringify({ t: "stats", final: false, state, ...extra }) + "\n");
      await then(reader);
    },
    [Symbol.dispose]() {
      socket.close();
      held.close();
    },
  };
}

takeoverTest(
  "a --takeover whose go the running proxy does not take (it gave up waiting) stops with exit 1 instead of serving beside it",
  async (s) => {
    // It answers on the socket, but closes on go, as it does once its wait for go is over.
    using old = await playedOld(s);
    const played = old.answer({}, async (reader) => {
      assert.deepEqual(JSON.parse((await reader.readLine(30_000)) ?? "null"), { t: "go" });
    });
    await using next = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await played;
    assert.equal((await next.status(20_000)).code, 1, next.stderr.text);
    assert.match(next.stderr.text, /did not take the go/);
    assert.equal(await pidIn(s.pidFile), String(Deno.pid), "the pid file is the running one's");
  },
);

/**
 * A `--takeover` held after its request, before it serves: its access log is a FIFO, opened after
 * the request and its signals, before its planes start. Opening `fifo` to read lets it go on.
 */
async function heldTakeover(s: Setup) {
  const fifo = `${s.dir}/access.fifo`;
  assert.equal((await new Deno.Command("mkfifo", { args: [fifo] }).output()).code, 0);
  const next = spawnMain([
    ...s.args,
    "--takeover",
    "--access-log=text",
    `--access-log-file=${fifo}`,
  ], { permissions: s.permissions });
  return { next, fifo };
}

takeoverTest(
  "a --takeover stopped (SIGTERM) before it serves abandons the takeover: the running proxy serves on",
  async (s) => {
    await using old = await startOld(s);
    await exchange(s.port, 3);
    const { next, fifo } = await heldTakeover(s);
    await using _next = next;
    using _log = await Deno.open(fifo, { read: true });
    next.kill("SIGTERM");
    assert.equal((await next.status(30_000)).code, 0, next.stderr.text);
    assert.doesNotMatch(next.stderr.text, /Serving: the running proxy stops accepting/);
    assert.doesNotMatch(old.stderr.text, /Taken over/);
    await exchange(s.port, 4); // the old one serves on, its pid file kept
    assert.equal((await stats(s.http)).msg_req, 7);
    assert.equal(await pidIn(s.pidFile), String(old.pid));
  },
);

takeoverTest(
  "the takeover socket survives the process running out of file descriptors: a takeover works once they come back",
  async (s) => {
    await using old = spawnMain(s.args, {
      permissions: s.permissions,
      shellPrefix: "ulimit -n 256",
    });
    await waitPid(s.pidFile, old.pid);
    const clients: Deno.Conn[] = [];
    try {
      // More clients than the process has descriptors for: accepts fail (EMFILE) until they go.
      for (let k = 0; k < 300; k++) clients.push(await connectTo(s.port));
      await old.stderr.waitFor(/Too many open files/, 20_000);
      // A peer at the takeover socket now: its accept fails too.
      const early = await Deno.connect({ transport: "unix", path: `${s.pidFile}.sock` });
      await old.stderr.waitFor(/Accept on .*\.sock failed: .*Too many open files/, 20_000);
      early.close();
    } finally {
      for (const conn of clients) conn.close();
    }
    await waitUntil(async () => {
      try {
        await exchange(s.port, 1);
        return true;
      } catch {
        return false;
      }
    }, "a client served again");
    await using next = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await next.stderr.waitFor(/Took over: this proxy/, 30_000);
    assert.equal((await old.status()).code, 0, old.stderr.text);
  },
  ["--max-connections=10000"],
);

takeoverTest(
  "a proxy draining for a SIGTERM refuses a takeover request, and a go asked for before it, with stopping: it drains on and exits",
  async (s) => {
    await using old = await startOld(s);
    const stays = await stayingClient(s.port);
    // Asked before the SIGTERM, go after it.
    const asked = await askSocket(`${s.pidFile}.sock`, `{"t":"takeover","pid":4242}\n`, {
      keep: true,
    });
    assert.equal(JSON.parse(asked.line ?? "null").t, "stats");
    old.kill("SIGTERM");
    await old.stderr.waitFor(/Got SIGTERM: shutting down gracefully/);
    await using next = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    assert.equal((await next.status(30_000)).code, 1, next.stderr.text);
    assert.match(next.stderr.text, /the running proxy is shutting down/);
    await old.stderr.waitFor(
      /Takeover request refused \(pid \d+ asked while this proxy shuts down\): draining on/,
    );
    await writeAll(asked.conn, `{"t":"go"}\n`);
    const reader = lineReader(asked.conn);
    assert.deepEqual(JSON.parse((await reader.readLine(10_000)) ?? "null"), { t: "stopping" });
    assert.equal(await reader.readLine(10_000), null);
    asked.conn.close();
    await old.stderr.waitFor(
      /Takeover request refused \(pid 4242: go came after this proxy began to shut down\): draining on/,
    );
    // Its client still served, then gone: the drain ends and the old proxy exits.
    await writeAll(stays, requests(5, 5));
    assert.equal((await lineReader(stays).readLines(1, 5000)).length, 1);
    stays.close();
    assert.equal((await old.status(15_000)).code, 0, old.stderr.text);
    await assert.rejects(Deno.lstat(s.pidFile), Deno.errors.NotFound);
    await assert.rejects(Deno.lstat(`${s.pidFile}.sock`), Deno.errors.NotFound);
  },
);

takeoverTest(
  "the new proxy stopped while the old one drains: the old one, finishing, removes the pid file it kept for it",
  async (s) => {
    await using mid = await midTakeover(s);
    // One SIGTERM to the old one changes nothing: it drains on, its client served.
    mid.old.kill("SIGTERM");
    await mid.old.stderr.waitFor(/Got SIGTERM: draining already/);
    await writeAll(mid.stays, requests(5, 5));
    assert.equal((await lineReader(mid.stays).readLines(1, 5000)).length, 1);
    mid.next.kill("SIGTERM");
    assert.equal((await mid.next.status()).code, 0, mid.next.stderr.text);
    mid.stays.close();
    assert.equal((await mid.old.status()).code, 0, mid.old.stderr.text);
    // Nobody holds it: a pid left there would name a process that is gone.
    await assert.rejects(Deno.lstat(s.pidFile), Deno.errors.NotFound);
    await assert.rejects(Deno.lstat(`${s.pidFile}.sock`), Deno.errors.NotFound);
  },
);

takeoverTest(
  "the takeover socket closes a ninth silent connection at once; a takeover to another port warns that the old one stops accepting",
  async (s) => {
    await using old = await startOld(s);
    const socket = `${s.pidFile}.sock`;
    const silent = await Promise.all(
      Array.from({ length: 8 }, () => Deno.connect({ transport: "unix", path: socket })),
    );
    // The ninth is closed at once, not after the 10 s a silent peer may wait.
    const ninth = await Deno.connect({ transport: "unix", path: socket });
    assert.equal(await lineReader(ninth).readLine(5000), null);
    ninth.close();
    await old.stderr.waitFor(/more than 8 connections waiting: one closed/);
    assert.equal((await stats(s.http)).takeover_failures, 1);
    for (const conn of silent) conn.close();

    const elsewhere = freePort();
    const moved = s.args.map((arg) =>
      arg.startsWith("--listen=") ? `--listen=127.0.0.1:${elsewhere}` : arg
    );
    await using next = spawnMain([...moved, "--takeover"], { permissions: s.permissions });
    await next.stderr.waitFor(
      new RegExp(
        `The proxy taken over listens on 127\\.0\\.0\\.1:${s.port}, this one on port ${elsewhere}: from now on nothing accepts clients on`,
      ),
      30_000,
    );
    await next.stderr.waitFor(/Took over: this proxy/, 30_000);
    await exchange(elsewhere, 2);
  },
);

/** Every counter sample of a `/metrics` scrape (`_total`, histogram buckets and counts), by series. */
async function counterSeries(port: number): Promise<Map<string, number>> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(response.status, 200);
  const series = new Map<string, number>();
  for (const line of (await response.text()).split("\n")) {
    const match = line.match(/^(\S+(?:_total|_bucket|_count|_sum)(?:\{[^}]*\})?) (\S+)$/);
    if (match) series.set(match[1], Number(match[2]));
  }
  return series;
}

takeoverTest(
  "/metrics across a --takeover: no counter series goes back, per-upstream ones included; the new proxy's --recovery-path (the old one had none) holding garbage is moved aside, not overwritten",
  async (s, upstream) => {
    const oldArgs = s.args.filter((arg) => !arg.startsWith("--recovery-path="));
    await using old = await startOld(s, oldArgs);
    await exchange(s.port, 25);
    const before = await counterSeries(s.http);
    await Deno.writeTextFile(s.recovery, "not a recovery file, not the old proxy's either");
    assert.equal(
      before.get(`foo_proxy_upstream_requests_total{upstream="127.0.0.1:${upstream.addr.port}"}`),
      25,
    );
    await using next = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await next.stderr.waitFor(/Took over: this proxy/, 30_000);
    assert.equal((await old.status()).code, 0);
    const after = await counterSeries(s.http);
    const back = [...before].filter(([name, n]) => (after.get(name) ?? 0) < n)
      .map(([name, n]) => `${name}: ${n} then ${after.get(name)}`);
    assert.deepEqual(back, [], "counter series that went back");
    assert.match(
      next.stderr.text,
      /moved it to .*stats\.json\.corrupt-\S+ and keeping the totals taken over/,
    );
    const aside = [...Deno.readDirSync(s.dir)].filter((e) =>
      e.name.startsWith("stats.json.corrupt-")
    );
    assert.equal(aside.length, 1);
    assert.equal(
      await Deno.readTextFile(`${s.dir}/${aside[0].name}`),
      "not a recovery file, not the old proxy's either",
    );
    await exchange(s.port, 5);
    const rows =
      (await stats(s.http) as unknown as { upstreams: { requests: number }[] }).upstreams;
    assert.equal(rows[0].requests, 30, "the old proxy's 25 REQs and the new one's 5");
    assert.equal(await savedOnStop(s, next), 30, "the new proxy's recovery file holds both");
  },
);

takeoverTest(
  "--check with --takeover and the running proxy's flags: exit 0, and the running proxy hears nothing (no request on its socket, no file touched)",
  async (s) => {
    await using old = await startOld(s);
    await exchange(s.port, 3);
    const names = async () =>
      (await Array.fromAsync(Deno.readDir(s.dir))).map((e) => e.name).sort();
    const files = await names();
    const pidText = await Deno.readTextFile(s.pidFile);
    await using check = spawnMain([...s.args, "--takeover", "--check"], {
      permissions: s.permissions,
    });
    assert.equal((await check.status()).code, 0, check.stderr.text);
    assert.match(
      check.stdout.text,
      /^foo-proxy: the configuration is valid: listen 127\.0\.0\.1:\d+/,
    );
    assert.deepEqual(await names(), files);
    assert.equal(await Deno.readTextFile(s.pidFile), pidText);
    const now = await stats(s.http);
    assert.equal(now.takeover_failures, 0);
    assert.equal(now.msg_req, 3);
    assert.doesNotMatch(old.stderr.text, /Takeover request|Taken over/);
    await exchange(s.port, 2); // it serves on, alone
    assert.equal((await stats(s.http)).msg_req, 5);
  },
);

takeoverTest(
  "a go answered with stopping (a SIGTERM came after the request): once the old proxy has exited, its final save in the shared --recovery-path makes the totals exact",
  async (s) => {
    await using old = await startOld(s);
    const stays = await stayingClient(s.port); // 4 REQs
    const { next, fifo } = await heldTakeover(s);
    await using _next = next;
    await next.stderr.waitFor(/Taking over from the proxy holding .*: 8 messages so far/, 30_000);
    const reader = lineReader(stays);
    await writeAll(stays, requests(5, 7)); // counted by the old proxy after the request
    assert.equal((await reader.readLines(3, 5000)).length, 3);
    old.kill("SIGTERM");
    await old.stderr.waitFor(/Got SIGTERM: shutting down gracefully/);
    using _log = await Deno.open(fifo, { read: true });
    await next.stderr.waitFor(/began to shut down \(a signal\) before the go/, 30_000);
    await writeAll(stays, requests(8, 9)); // and while it drains on its own
    assert.equal((await reader.readLines(2, 5000)).length, 2);
    stays.close();
    assert.equal((await old.status(30_000)).code, 0, old.stderr.text);
    await next.stderr.waitFor(/Took over: this proxy/, 30_000);
    await exchange(s.port, 1);
    const total = await stats(s.http);
    assert.equal(total.msg_req, 10, "the old proxy's 9 REQs and the new one's 1");
    assert.equal(total.msg_ack + total.msg_nak, 10);
    assert.equal(await savedOnStop(s, next), 10, "the recovery file never goes back");
  },
);

takeoverTest(
  "a --takeover answered with per-upstream totals that are not counters exits 1 and changes nothing",
  async (s) => {
    using old = await playedOld(s);
    const played = old.answer({ upstreams: { a: { requests: -1 } } }, async (reader) => {
      assert.equal(await reader.readLine(30_000), null, "closed without a go");
    });
    await using next = spawnMain([...s.args, "--takeover"], { permissions: s.permissions });
    await played;
    assert.equal((await next.status(20_000)).code, 1, next.stderr.text);
    assert.match(next.stderr.text, /a bad requests for upstream "a"; nothing changed/);
    assert.equal(await pidIn(s.pidFile), String(Deno.pid), "the pid file is the running one's");
  },
);

/**
 * The old proxy's side alone, at `dir/name`: the first totals are small, every later one is
 * `big` (more than a Unix socket buffers); the drain ends at the `drainAt`-th capture.
 */
async function frozenSuccessor(dir: string, name: string, drainAt: number) {
  const drained = Promise.withResolvers<void>();
  const big = carriedUpstreams();
  const row = Object.fromEntries(UPSTREAM_TOTALS.map((field) => [field, 1])) as UpstreamTotals;
  for (let i = 0; i < 20_000; i++) big[`upstream-${i}-${"x".repeat(60)}`] = row;
  let captures = 0;
  const events: string[] = [];
  const listener = await TakeoverListener.listen(`${dir}/${name}`, {
    capture: () => {
      if (++captures === drainAt) drained.resolve();
      return Promise.resolve({ state: "{}", upstreams: captures === 1 ? carriedUpstreams() : big });
    },
    listen: () => "127.0.0.1:1",
    handOver: () => ({ stopped: Promise.resolve(), drained: drained.promise }),
    stopping: () => false,
    successorGone: () => events.push("gone"),
    failed: (why) => events.push(`failed: ${why}`),
  });
  // The successor: asks, reads the first totals, says go, then never reads again.
  const conn = await Deno.connect({ transport: "unix", path: listener.path });
  await writeAll(conn, JSON.stringify({ t: "takeover", pid: 4242 }) + "\n");
  const answer = await lineReader(conn).readLine(10_000);
  assert.match(answer ?? "", /^\{"t":"stats","final":false/);
  await writeAll(conn, JSON.stringify({ t: "go" }) + "\n");
  return { listener, conn, events };
}

Deno.test(
  "a successor that stops reading after go cannot hold the old proxy's exit: an update or the final totals that cannot be sent give up after the step timeout, counted as the successor gone",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "foo-proxy-takeover-frozen-" });
    try {
      // Blocked in an update while draining (the drain ends meanwhile), and blocked in the final
      // totals (the drain ended before any update): both at once, one step timeout in all.
      const inUpdate = await frozenSuccessor(dir, "update.sock", 2);
      const inFinal = await frozenSuccessor(dir, "final.sock", 1);
      for (const { listener, conn, events } of [inUpdate, inFinal]) {
        await withTimeout(listener.close(), STEP_TIMEOUT_MS + 20_000, "the old proxy's side");
        assert.deepEqual(events, ["gone"]);
        conn.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
