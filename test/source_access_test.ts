/**
 * Source access: `--allow`/`--deny` checked at accept before a byte is read, the per-source
 * connection limit and REQ rate (process-wide across workers), and their reload. Clients bind
 * their source address with Python (Deno.connect cannot bind a local address).
 */
import * as assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import type { Logger } from "@logtape/logtape";
import { Proxy } from "../src/proxy/proxy.ts";
import { parseIp } from "../src/net/cidr.ts";
import { SourceTable } from "../src/proxy/source_table.ts";
import {
  acks,
  connectTo,
  DEFAULT_CHILD_FLAGS,
  freePort,
  type MainProcess,
  readLines,
  requests,
  spawnMain,
  spawnProxy,
  startProxy,
  startUpstream,
  waitUntil,
  withTimeout,
  writeAll,
} from "./_util.ts";

const CLIENT = fileURLToPath(new URL("./_bound_client.py", import.meta.url));

/** Whether this machine has IPv6 loopback (some containers do not): the IPv6 tests need it. */
const IPV6 = (() => {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
})();

/** What `_bound_client.py` saw. */
interface Seen {
  right: number;
  wrong: number;
  ends: string[];
  seconds: number;
}

/** Runs `_bound_client.py` from `source` against `port` (see its docs). */
async function boundClient(
  source: string,
  port: number,
  count: number,
  connections = 1,
  host = "127.0.0.1",
): Promise<Seen> {
  const out = await new Deno.Command("python3", {
    args: [CLIENT, source, host, String(port), String(count), String(connections)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.ok(out.success, `python client: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(text);
}

/** The stats line a SIGUSR2 prints. */
async function usr2Stats(child: MainProcess) {
  child.kill("SIGUSR2");
  return JSON.parse((await child.stdout.waitFor(/^\{.*\}$/))[0]);
}

/** Whether every connection was closed by the proxy without a reply. */
function refused(seen: Seen): boolean {
  return seen.right === 0 && seen.wrong === 0 &&
    seen.ends.every((e) => e === "eof" || e === "reset");
}

/** Whether every reply came, right. */
function served(seen: Seen, count: number): boolean {
  return seen.right === count * seen.ends.length && seen.wrong === 0 &&
    seen.ends.every((e) => e === "ok");
}

Deno.test("--allow lets in only its sources: 127.0.0.2 is closed at accept, 127.0.0.1 served", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr, { allow: "127.0.0.1" });
  const port = proxy.addr.port;
  assert.ok(refused(await boundClient("127.0.0.2", port, 3)));
  assert.ok(served(await boundClient("127.0.0.1", port, 3), 3));
  // Refused before the dial: the upstream saw the one served client only.
  assert.equal(upstream.accepted, 1);
  assert.equal(proxy.stats.closed.denied, 1);
  assert.equal(proxy.stats.connectionsTotal, 2);
});

Deno.test("--deny wins over --allow, and an empty --allow lets every other source in", async () => {
  await using upstream = await startUpstream();
  {
    await using proxy = await startProxy(upstream.addr, {
      allow: "127.0.0.0/8",
      deny: "127.0.0.2",
    });
    assert.ok(refused(await boundClient("127.0.0.2", proxy.addr.port, 1)));
    assert.ok(served(await boundClient("127.0.0.3", proxy.addr.port, 1), 1));
  }
  {
    await using proxy = await startProxy(upstream.addr, { deny: "127.0.0.2/32", allow: "" });
    assert.ok(refused(await boundClient("127.0.0.2", proxy.addr.port, 1)));
    assert.ok(served(await boundClient("127.0.0.1", proxy.addr.port, 1), 1));
    assert.equal(proxy.stats.closed.denied, 1);
  }
});

Deno.test({
  name: "IPv6 and IPv4 on a dual-stack listener: --allow ::1 serves ::1 and refuses 127.0.0.1",
  ignore: !IPV6,
}, async () => {
  await using upstream = await startUpstream();
  const proxy = new Proxy({
    listen: { hostname: "::", port: 0 },
    forward: upstream.addr,
    allow: "::1",
  });
  await using _ = proxy;
  await proxy.start();
  const port = proxy.addr.port;
  assert.ok(served(await boundClient("::1", port, 2, 1, "::1"), 2));
  // IPv4 reaches a `::` listener as ::ffff:127.0.0.1 (or 127.0.0.1): either way not ::1.
  assert.ok(refused(await boundClient("127.0.0.1", port, 2)));
  // And an IPv4 range matches the mapped form.
  proxy.setAccess({ allow: "127.0.0.0/8" });
  assert.ok(served(await boundClient("127.0.0.1", port, 2), 2));
  assert.ok(refused(await boundClient("::1", port, 2, 1, "::1")));
});

Deno.test("a flood of denied connects is counted in full and logged a line a second", async () => {
  await using upstream = await startUpstream();
  const { child, port } = await spawnProxy(upstream.addr, [
    "--deny=127.0.0.0/8",
    "--access-log=text",
  ]);
  await using _ = child;
  const seen = await boundClient("127.0.0.N+", port, 1, 300);
  assert.ok(refused(seen), JSON.stringify(seen.ends));
  const stats = await usr2Stats(child);
  assert.equal(stats.connections_closed.denied, 300);
  // Every refused connection has its access-log line; the warnings are bounded.
  await child.stderr.waitFor(/127\.0\.1\.50:\d+ .*denied/);
  child.kill("SIGTERM");
  await child.status();
  const lines = child.stderr.text.split("\n");
  const accessLines = lines.filter((l) => / denied/.test(l) && !/Refused/.test(l)).length;
  const warnings = lines.filter((l) => /Refused 127\./.test(l)).length;
  assert.equal(accessLines, 300);
  assert.ok(warnings >= 1 && warnings <= 10, `${warnings} warnings for 300 refusals`);
  assert.equal(upstream.accepted, 0);
});

Deno.test("a flood of connects at --max-connections is counted in full and logged a line a second", async () => {
  await using upstream = await startUpstream();
  const warnings: string[] = [];
  const logger = {
    debug: () => {},
    info: () => {},
    warning: (message: string) => warnings.push(message),
    error: (message: string) => warnings.push(message),
  } as unknown as Logger;
  await using proxy = await startProxy(upstream.addr, { maxConnections: 1, logger });
  using holder = await connectTo(proxy.addr.port);
  await writeAll(holder, requests(1, 1));
  assert.deepEqual(await readLines(holder, 1), acks(1, 1));
  const started = performance.now();
  for (let i = 0; i < 30; i++) {
    using conn = await connectTo(proxy.addr.port);
    const end = conn.read(new Uint8Array(16)).catch(() => null);
    assert.equal(await withTimeout(end, 5000, "a client over the limit to be closed"), null);
  }
  await waitUntil(() => proxy.stats.connectionsRejected === 30, "every refusal to be counted");
  const rejected = warnings.filter((line) => line.startsWith("Rejected"));
  const most = 1 + Math.ceil((performance.now() - started) / 1000);
  assert.ok(rejected.length >= 1 && rejected.length <= most, `${rejected.length} warnings`);
});

Deno.test("--max-connections-per-source holds per source and frees a place when one closes", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr, { maxConnectionsPerSource: 2 });
  const port = proxy.addr.port;
  const open = [await connectTo(port), await connectTo(port)];
  for (const [i, conn] of open.entries()) {
    await writeAll(conn, requests(1, 1));
    assert.deepEqual(await readLines(conn, 1), acks(1, 1), `client ${i}`);
  }
  assert.ok(refused(await boundClient("127.0.0.1", port, 1)), "a third from 127.0.0.1");
  assert.ok(served(await boundClient("127.0.0.2", port, 1), 1), "another source");
  assert.equal(proxy.stats.closed.source_limit, 1);
  open.pop()!.close();
  await waitUntil(() => proxy.activeConnections === 1, "the closed client to be counted out");
  assert.ok(served(await boundClient("127.0.0.1", port, 1), 1), "room again");
  open[0].close();
});

Deno.test("--max-connections-per-source is a process-wide limit across --workers 2", async () => {
  await using upstream = await startUpstream();
  const { child, port } = await spawnProxy(upstream.addr, [
    "--workers=2",
    "--max-connections-per-source=3",
  ]);
  await using _ = child;
  // 10 connections at once (the kernel spreads them over both workers): 3 served, 7 refused.
  const seen = await boundClient("127.0.0.1", port, 1, 10);
  assert.equal(seen.right, 3, JSON.stringify(seen));
  assert.equal(seen.ends.filter((e) => e === "ok").length, 3);
  assert.equal(seen.ends.filter((e) => e === "eof" || e === "reset").length, 7);
  // All closed now: the source has its 3 places back, in whichever worker.
  const again = await boundClient("127.0.0.1", port, 1, 3);
  assert.ok(served(again, 1), JSON.stringify(again));
  const stats = await usr2Stats(child);
  assert.equal(stats.connections_closed.source_limit, 7);
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
});

Deno.test("--rate-limit-per-source 200: two pipelining clients of one source share ~200 REQ/s, no REQ lost, another source not slowed", async () => {
  await using upstream = await startUpstream();
  const { child, port } = await spawnProxy(upstream.addr, [
    "--workers=2",
    "--rate-limit-per-source=200",
  ]);
  await using _ = child;
  // 2 × 300 REQs at once from 127.0.0.1: the burst (200) at once, the other 400 at 200/s.
  const limited = boundClient("127.0.0.1", port, 300, 2);
  // Once 127.0.0.1 waits for tokens, another source pipelines 190 REQs (within its own burst):
  // a bucket shared by every source would hold them 0.95 s at least.
  await waitUntil(async () => {
    return (await usr2Stats(child)).rate_limit_pauses > 0;
  }, "127.0.0.1 to run out of tokens");
  const other = await boundClient("127.0.0.2", port, 190, 1);
  const seen = await limited;
  assert.ok(served(seen, 300), JSON.stringify(seen));
  // (600 - 200) / 200 = 2 s at the least; a shared machine may add some.
  assert.ok(seen.seconds >= 1.8 && seen.seconds <= 6, `${seen.seconds} s for 600 REQs`);
  const rate = 400 / seen.seconds;
  assert.ok(rate <= 220, `${rate} REQ/s past the burst`);
  assert.ok(served(other, 190), JSON.stringify(other));
  // Under 0.9 s, not 0.5: a loaded machine alone can take half a second for 190 round trips.
  assert.ok(other.seconds < 0.9, `another source took ${other.seconds} s`);
  const stats = await usr2Stats(child);
  assert.ok(stats.rate_limit_pauses > 0);
  assert.equal(stats.msg_req, 790);
  assert.equal(stats.msg_ack, 790);
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
});

Deno.test("--rate-limit-per-source holds with --mux too: REQs wait for tokens, every reply right", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr, { rateLimitPerSource: 100, mux: 1 });
  const seen = await boundClient("127.0.0.1", proxy.addr.port, 250, 1);
  assert.ok(served(seen, 250), JSON.stringify(seen));
  // (250 - 100) / 100 = 1.5 s at the least.
  assert.ok(seen.seconds >= 1.3 && seen.seconds <= 3.5, `${seen.seconds} s`);
  assert.ok(proxy.stats.rateLimitPauses > 0);
});

for (const mode of [{ name: "1:1", mux: 0 }, { name: "--mux", mux: 1 }]) {
  Deno.test(`--rate-limit-per-source (${mode.name}): a client whose REQs wait for tokens is not idle, whatever --idle-timeout says`, async () => {
    await using upstream = await startUpstream();
    await using proxy = await startProxy(upstream.addr, {
      mux: mode.mux,
      rateLimitPerSource: 2,
      idleTimeoutMs: 200,
    });
    using conn = await connectTo(proxy.addr.port);
    // The burst (2) at once, then a REQ each 0.5 s: the last waits 1 s with nothing in flight.
    await writeAll(conn, requests(1, 4));
    // Old: the idle timer closed it while REQ 3 or 4 waited (read, not yet forwarded).
    assert.deepEqual(await readLines(conn, 4, 10_000), acks(1, 4));
    assert.ok(proxy.stats.rateLimitPauses > 0);
  });
}

Deno.test("a flood of distinct sources leaves the per-source table's entries bounded", async () => {
  await using upstream = await startUpstream();
  const table = new SourceTable(
    (await import("../src/proxy/source_table.ts")).createSourceTableBuffer(8),
  );
  await using proxy = await startProxy(upstream.addr, {
    maxConnectionsPerSource: 1,
    sourceTable: table,
  });
  // 400 sources, one after another, each served and gone: 16 slots hold them.
  const seen = await boundClient("127.0.0.N+", proxy.addr.port, 1, 400);
  assert.ok(served(seen, 1), JSON.stringify(seen.ends.filter((e) => e !== "ok")));
  await waitUntil(() => proxy.activeConnections === 0, "every client to be counted out");
  assert.deepEqual(table.usage(), { entries: 16, connections: 0 });
  assert.equal(table.connections(parseIp("127.0.1.1")!), 0);
  assert.equal(proxy.stats.sourceTableFull, 0);
});

Deno.test({
  name:
    "a reload (SIGHUP) swaps --allow/--deny: new connections see them, open ones from sources now refused are closed",
  ignore: !IPV6,
}, async () => {
  await using upstream = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-access-" });
  try {
    const path = `${dir}/foo-proxy.jsonc`;
    await Deno.writeTextFile(path, JSON.stringify({ deny: "127.0.0.2" }));
    // On `::`, so that Deno's own clients can come from two sources: ::1 and 127.0.0.1.
    await using child = spawnMain([
      "proxy",
      `--config=${path}`,
      "--listen=[::]:0",
      `--forward=127.0.0.1:${upstream.addr.port}`,
      "--http=off",
      "--health=off",
      "--access-log=text",
    ], {
      permissions: [
        ...DEFAULT_CHILD_FLAGS,
        `--allow-read=${dir},${fileURLToPath(new URL("../src", import.meta.url))}`,
      ],
    });
    const port = Number((await child.stderr.waitFor(/Listening on \[::\]:(\d+)/))[1]);
    assert.ok(refused(await boundClient("127.0.0.2", port, 1)));
    const fromV4 = await Deno.connect({ hostname: "127.0.0.1", port });
    const fromV6 = await Deno.connect({ hostname: "::1", port });
    for (const conn of [fromV4, fromV6]) {
      await writeAll(conn, requests(1, 1));
      assert.deepEqual(await readLines(conn, 1), acks(1, 1));
    }
    await Deno.writeTextFile(
      path,
      JSON.stringify({ allow: "127.0.0.2,::1", "rate-limit-per-source": 5 }),
    );
    child.kill("SIGHUP");
    await child.stderr.waitFor(/Reloaded .*source access \(for new connections\)/);
    await child.stderr.waitFor(/Closing 1 open connection\(s\) from sources the reloaded/);
    // 127.0.0.1's open connection is closed; ::1's carries on, unlimited (it began before).
    const end = fromV4.read(new Uint8Array(16));
    assert.equal(await withTimeout(end, 5000, "127.0.0.1's connection to be closed"), null);
    await writeAll(fromV6, requests(2, 21));
    assert.deepEqual(await readLines(fromV6, 20), acks(2, 21));
    assert.ok(refused(await boundClient("127.0.0.1", port, 1)), "127.0.0.1 is no longer allowed");
    assert.ok(served(await boundClient("127.0.0.2", port, 3), 3));
    // A list that does not parse changes nothing.
    await Deno.writeTextFile(path, JSON.stringify({ allow: "127.0.0.300" }));
    child.kill("SIGHUP");
    await child.stderr.waitFor(
      /Reload \(SIGHUP\) of .* failed; the running config is kept: --allow: Invalid address range "127\.0\.0\.300"/,
    );
    assert.ok(served(await boundClient("127.0.0.2", port, 1), 1));
    const stats = await usr2Stats(child);
    assert.equal(stats.connections_closed.denied, 3);
    fromV4.close();
    fromV6.close();
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0);
    // The closed one's access-log line says why.
    assert.match(
      child.stderr.text,
      /127\.0\.0\.1\]:\d+ -> 127\.0\.0\.1:\d+ .* req=1 ack=1 .* denied/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a worker that crashes gives its connections' per-source places back", async () => {
  await using upstream = await startUpstream();
  const http = freePort();
  await using child = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${upstream.addr.port}`,
    `--http=127.0.0.1:${http}`,
    "--health=off",
    "--workers=1",
    "--max-connections-per-source=2",
  ], { env: { FOO_PROXY_TEST_HOOKS: "1" } });
  const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/))[1]);
  const open = [await connectTo(port), await connectTo(port)];
  for (const conn of open) {
    await writeAll(conn, requests(1, 1));
    assert.deepEqual(await readLines(conn, 1), acks(1, 1));
  }
  const crash = await fetch(`http://127.0.0.1:${http}/debug/crash-worker/0`, { method: "POST" });
  assert.equal(crash.status, 200, await crash.text());
  await child.stderr.waitFor(/Data-plane worker 0 replaced/);
  for (const conn of open) conn.close();
  // Its two connections died with it: 127.0.0.1 has both places again.
  assert.ok(served(await boundClient("127.0.0.1", port, 1, 2), 1));
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
});

for (
  const mode of [
    { name: "1:1", mux: 0, deny: "192.0.2.0/24" },
    { name: "--mux", mux: 1, deny: "192.0.2.0/24" },
    // The usual incident: the proxy ran with no list at all until the operator denied a source.
    { name: "1:1, no list before", mux: 0, deny: "" },
    { name: "--mux, no list before", mux: 1, deny: "" },
  ]
) {
  Deno.test(`setAccess() closes the open connections of a source it now denies (${mode.name})`, async () => {
    await using upstream = await startUpstream();
    await using proxy = await startProxy(upstream.addr, { mux: mode.mux, deny: mode.deny });
    const conn = await connectTo(proxy.addr.port);
    await writeAll(conn, requests(1, 2));
    assert.deepEqual(await readLines(conn, 2), acks(1, 2));
    proxy.setAccess({ deny: "192.0.2.0/24,127.0.0.1" });
    const end = conn.read(new Uint8Array(16));
    assert.equal(await withTimeout(end, 5000, "the denied client to be closed"), null);
    conn.close();
    await waitUntil(() => proxy.activeConnections === 0, "the client to be counted out");
    assert.equal(proxy.stats.closed.denied, 1);
  });
}

Deno.test("behind --accept-proxy the lists and limits see the client the PROXY header names", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr, {
    acceptProxy: "127.0.0.1",
    deny: "203.0.113.0/24",
    maxConnectionsPerSource: 1,
  });
  const port = proxy.addr.port;
  const via = async (client: string) => {
    const conn = await connectTo(port);
    await writeAll(conn, `PROXY TCP4 ${client} 127.0.0.1 5555 ${port}\r\nREQ 1\n`);
    return conn;
  };
  const closed = async (conn: Deno.Conn) => {
    const end = conn.read(new Uint8Array(16)).catch(() => null);
    return await withTimeout(end, 5000, "the connection to be closed") === null;
  };
  // A denied client behind the (trusted) load balancer.
  const denied = await via("203.0.113.7");
  assert.ok(await closed(denied));
  denied.close();
  // 198.51.100.1's first connection is served, its second refused; 198.51.100.2 is served: all
  // three come from 127.0.0.1, the limit counts the clients the headers name.
  const first = await via("198.51.100.1");
  assert.deepEqual(await readLines(first, 1), acks(1, 1));
  const second = await via("198.51.100.1");
  assert.ok(await closed(second));
  second.close();
  const other = await via("198.51.100.2");
  assert.deepEqual(await readLines(other, 1), acks(1, 1));
  first.close();
  other.close();
  assert.equal(proxy.stats.closed.denied, 1);
  assert.equal(proxy.stats.closed.source_limit, 1);
});

Deno.test("a WebSocket client from a denied source is closed without a reply", async () => {
  await using upstream = await startUpstream();
  const proxy = new Proxy({
    listen: { hostname: "127.0.0.1", port: 0 },
    forward: upstream.addr,
    deny: "127.0.0.1",
    webSocket: { listen: { hostname: "127.0.0.1", port: 0 } },
  });
  await using _ = proxy;
  await proxy.start();
  const socket = new WebSocket(`ws://127.0.0.1:${proxy.webSocketAddr!.port}/`);
  const messages: unknown[] = [];
  socket.onmessage = (event) => messages.push(event.data);
  socket.onopen = () => socket.send("REQ 1\n");
  const closedEvent = new Promise((resolve) => socket.addEventListener("close", resolve));
  socket.addEventListener("error", () => {});
  await withTimeout(closedEvent, 5000, "the WebSocket to be closed");
  assert.deepEqual(messages, []);
  assert.equal(proxy.stats.closed.denied, 1);
  assert.equal(upstream.accepted, 0);
});
