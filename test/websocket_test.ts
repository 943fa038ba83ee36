/**
 * The WebSocket ingress (`--ws-listen`): clients of the WebSocket API and raw ones written by
 * hand, against a proxy with our Foo server behind it. The same engine as TCP clients (stats,
 * access log, --max-connections, every connection mode), lines split across messages, the
 * origin allow-list, the handshake's limits, protocol errors, a flood that never reads, wss.
 */
import assert from "node:assert/strict";
import type { Logger } from "@logtape/logtape";
import type { AccessRecord } from "../src/proxy/access_log.ts";
import { WebSocketConn } from "../src/net/websocket_conn.ts";
import { parseProxyConfig } from "../src/cmd/proxy_config.ts";
import { Proxy, type ProxyOptions } from "../src/proxy/proxy.ts";
import { makeCertificates } from "./_tls.ts";
import {
  ApiClient,
  closeCode,
  frame,
  FrameReader,
  rawRequest,
  upgradeHead,
  writeAllBytes,
} from "./_websocket.ts";
import {
  acks,
  connectTo,
  readLines,
  requests,
  spawnProxy,
  startUpstream,
  waitUntil,
  withTimeout,
  writeAll,
} from "./_util.ts";

const LOCAL = { hostname: "127.0.0.1", port: 0 };

async function startWsProxy(
  forward: Deno.NetAddr,
  options: Partial<ProxyOptions> = {},
  webSocket: Partial<NonNullable<ProxyOptions["webSocket"]>> = {},
): Promise<Proxy & { wsUrl: string }> {
  const proxy = new Proxy({
    listen: LOCAL,
    forward,
    ...options,
    webSocket: { listen: LOCAL, ...webSocket },
  });
  await proxy.start();
  const scheme = webSocket.tls ? "wss" : "ws";
  return Object.assign(proxy, { wsUrl: `${scheme}://127.0.0.1:${proxy.webSocketAddr!.port}/` });
}

/** A raw client upgraded on the proxy's WebSocket port, and a reader of its frames. */
async function openRaw(port: number): Promise<{ conn: Deno.TcpConn; frames: FrameReader }> {
  const conn = await connectTo(port);
  const r = await rawRequest(conn, upgradeHead(`127.0.0.1:${port}`));
  assert.equal(r.status, 101);
  return { conn, frames: new FrameReader(conn, r.rest) };
}

for (
  const mode of [
    { name: "1:1", options: {} },
    { name: "--pool", options: { pool: 2 } },
    { name: "--mux", options: { mux: 2 } },
  ]
) {
  Deno.test(`WebSocket (${mode.name}): a line in three messages and many lines in one get exactly their replies, in order, counted and logged like TCP`, async () => {
    await using upstream = await startUpstream();
    const records: AccessRecord[] = [];
    await using proxy = await startWsProxy(upstream.addr, {
      ...mode.options,
      accessLog: (r) => records.push(r),
    });
    {
      await using client = await ApiClient.open(proxy.wsUrl);
      client.socket.send("RE");
      client.socket.send("Q 1 he");
      client.socket.send("llo\n");
      client.socket.send(requests(2, 40, "x"));
      client.socket.send("REQ 41");
      client.socket.send("\nREQ 42\n");
      const lines = await client.lines(42);
      assert.deepEqual(lines, acks(1, 42));
      // Text in, text out: a page gets strings.
      assert.ok(client.messages.every((m) => typeof m === "string"));
    }
    await waitUntil(() => records.length === 1, "the access-log line");
    const s = proxy.stats;
    assert.equal(s.counts.msg_req, 42);
    assert.equal(s.counts.msg_ack, 42);
    assert.equal(s.wsConnections, 1);
    assert.equal(s.wsMessagesIn, 6);
    assert.ok(s.wsMessagesOut >= 1);
    assert.equal(s.connectionsTotal, 1);
    assert.equal(records[0].reqs, 42);
    assert.equal(records[0].acks, 42);
    assert.match(records[0].client, /^127\.0\.0\.1:\d+$/);
    assert.equal(records[0].reason, "client_closed");
  });
}

Deno.test("WebSocket: binary messages get binary replies; a TCP client beside it is served the same", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr);
  await using client = await ApiClient.open(proxy.wsUrl);
  const bytes = new TextEncoder().encode(requests(1, 5));
  for (const cut of [3, 11, bytes.length]) {
    client.socket.send(bytes.subarray(cut === 3 ? 0 : cut === 11 ? 3 : 11, cut));
  }
  assert.deepEqual(await client.lines(5), acks(1, 5));
  assert.ok(client.messages.every((m) => m instanceof Uint8Array));
  using tcp = await connectTo(proxy.addr);
  await writeAll(tcp, requests(1, 3));
  assert.deepEqual(await readLines(tcp, 3), acks(1, 3));
  assert.equal(proxy.stats.counts.msg_req, 8);
});

Deno.test("WebSocket: a page of another origin gets 403 before the upgrade, counted; same host, listed and Origin-less clients get in", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr);
  const port = proxy.webSocketAddr!.port;
  const host = `127.0.0.1:${port}`;
  const ask = async (extra: string[]) => {
    using conn = await connectTo(port);
    return (await rawRequest(conn, upgradeHead(host, extra))).status;
  };
  assert.equal(await ask(["Origin: http://evil.example"]), 403);
  assert.equal(await ask(["Origin: null"]), 403);
  assert.equal(await ask([`Origin: http://127.0.0.1:${port + 1}`]), 403); // another port
  assert.equal(await ask([`Origin: http://${host}`]), 101);
  assert.equal(await ask([]), 101); // not a browser
  assert.equal(proxy.stats.wsRejectedOrigin, 3);

  await using listed = await startWsProxy(upstream.addr, {}, {
    origins: ["https://app.example", "null"],
  });
  const listedPort = listed.webSocketAddr!.port;
  const askListed = async (origin: string) => {
    using conn = await connectTo(listedPort);
    return (await rawRequest(conn, upgradeHead(`127.0.0.1:${listedPort}`, [`Origin: ${origin}`])))
      .status;
  };
  assert.equal(await askListed("https://app.example"), 101);
  assert.equal(await askListed("null"), 101);
  assert.equal(await askListed("http://app.example"), 403);
  assert.equal(await askListed(`http://127.0.0.1:${listedPort}`), 403);
  assert.equal(listed.stats.wsRejectedOrigin, 2);
});

Deno.test("WebSocket: a plain HTTP request gets 426, a bad handshake 400, a huge head 431, a silent client is closed at the deadline; all counted", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr, {}, { handshakeTimeoutMs: 200 });
  const port = proxy.webSocketAddr!.port;
  {
    using conn = await connectTo(port);
    const r = await rawRequest(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert.equal(r.status, 426);
    assert.match(r.head, /upgrade: websocket/i);
  }
  {
    using conn = await connectTo(port);
    const head = upgradeHead("x").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    assert.equal((await rawRequest(conn, head)).status, 400);
  }
  {
    using conn = await connectTo(port);
    const r = await rawRequest(conn, upgradeHead("x", [`X-Big: ${"a".repeat(20_000)}`]));
    assert.equal(r.status, 431);
  }
  {
    using conn = await connectTo(port);
    await writeAll(conn, "GET / HTTP/1.1\r\n"); // and nothing more
    const n = await withTimeout(conn.read(new Uint8Array(16)).catch(() => null), 5000, "close");
    assert.equal(n, null);
  }
  const s = proxy.stats;
  assert.equal(s.wsRejectedNotWebsocket, 1);
  assert.equal(s.wsRejectedBadRequest, 2);
  assert.equal(s.wsRejectedTimeout, 1);
  assert.equal(s.wsConnections, 0);
  assert.equal(s.connectionsTotal, 0);
});

Deno.test("WebSocket: an unmasked frame is closed with 1002, invalid UTF-8 in text with 1007; a ping gets its pong", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr);
  const open = () => openRaw(proxy.webSocketAddr!.port);
  {
    const { conn, frames } = await open();
    using _ = conn;
    await writeAllBytes(conn, frame(9, "hi", { mask: [1, 2, 3, 4] }));
    const pong = await frames.next();
    assert.equal(pong?.opcode, 10);
    assert.equal(new TextDecoder().decode(pong!.payload), "hi");
    await writeAllBytes(conn, frame(1, "REQ 7 é\n", { mask: [9, 8, 7, 6] }));
    const reply = await frames.next();
    assert.equal(reply?.opcode, 1);
    assert.equal(new TextDecoder().decode(reply!.payload), "ACK 7\n");
    await writeAllBytes(conn, frame(1, "REQ 8\n", { masked: false }));
    const close = await frames.next();
    assert.equal(close?.opcode, 8);
    assert.equal(closeCode(close!.payload), 1002);
  }
  {
    const { conn, frames } = await open();
    using _ = conn;
    await writeAllBytes(conn, frame(1, new Uint8Array([0x52, 0xff, 0x0a])));
    const close = await frames.next();
    assert.equal(close?.opcode, 8);
    assert.equal(closeCode(close!.payload), 1007);
  }
  await waitUntil(() => proxy.activeConnections === 0, "both closed");
  assert.equal(proxy.stats.wsProtocolErrors, 2);
  assert.equal(proxy.stats.closed.downstream_error, 2);
});

Deno.test("WebSocket: a client that floods REQs and never reads is held back by TCP (nothing queues), while another WebSocket client and a TCP client are served", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr);
  const { conn: attacker } = await openRaw(proxy.webSocketAddr!.port);
  const line = new TextEncoder().encode("REQ 1 xxxxxxxxxxxxxxxxxxxxxxxxx\n"); // 32 bytes
  const payload = new Uint8Array(128 * 1024 * 1024);
  for (let at = 0; at < payload.length; at += line.length) payload.set(line, at);
  const flood = frame(2, payload);
  let floodDone = false;
  const flooding = writeAllBytes(attacker, flood).then(() => floodDone = true, () => {});
  try {
    await waitUntil(() => proxy.stats.bytesDownstream > 1 << 20, "the flood to reach the proxy");
    {
      await using other = await ApiClient.open(proxy.wsUrl);
      other.socket.send(requests(1, 20));
      assert.deepEqual(await other.lines(20), acks(1, 20));
    }
    using tcp = await connectTo(proxy.addr);
    await writeAll(tcp, requests(1, 20));
    assert.deepEqual(await readLines(tcp, 20), acks(1, 20));
    // The proxy stops reading the attacker once its replies back up: what it took is what TCP
    // buffers and --max-inflight let through (a few MB), not its 128 MiB. Stopped means no byte
    // more for 20 checks in a row.
    let last = -1;
    let still = 0;
    await waitUntil(
      async () => {
        await new Promise((resolve) => setTimeout(resolve, 25));
        const now = proxy.stats.bytesDownstream;
        still = now === last ? still + 1 : 0;
        last = now;
        return still >= 20;
      },
      "the proxy to stop reading the attacker",
      20_000,
    );
    assert.equal(floodDone, false);
    assert.ok(
      proxy.stats.bytesDownstream < 32 * 1024 * 1024,
      `read ${proxy.stats.bytesDownstream} bytes of the flood`,
    );
  } finally {
    attacker.close();
    await flooding;
  }
  await waitUntil(() => proxy.activeConnections === 0, "the attacker's connection to end");
});

Deno.test("WebSocket: --max-connections counts WebSocket clients with TCP ones", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr, { maxConnections: 1 });
  using tcp = await connectTo(proxy.addr);
  await writeAll(tcp, requests(1, 1));
  assert.deepEqual(await readLines(tcp, 1), acks(1, 1));
  const refused = new WebSocket(proxy.wsUrl);
  const closed = await withTimeout(
    new Promise<CloseEvent>((resolve) => refused.onclose = resolve),
    5000,
    "the refused WebSocket to close",
  );
  assert.notEqual(closed.code, 0);
  assert.equal(proxy.stats.connectionsRejected, 1);
  assert.equal(proxy.stats.closed.max_connections, 1);
});

Deno.test("WebSocket over TLS (wss) with the test CA", async () => {
  await using certs = await makeCertificates();
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr, {}, {
    tls: { cert: certs.serverCertPem, key: certs.serverKeyPem },
  });
  const port = proxy.webSocketAddr!.port;
  using conn = await Deno.connectTls({
    hostname: "localhost",
    port,
    caCerts: [certs.caPem],
  });
  const r = await rawRequest(conn, upgradeHead(`localhost:${port}`));
  assert.equal(r.status, 101);
  const frames = new FrameReader(conn, r.rest);
  await writeAllBytes(conn, frame(1, "REQ 1 tls\nREQ 2\n", { mask: [5, 6, 7, 8] }));
  let text = "";
  while (text.split("\n").length < 3) {
    text += new TextDecoder().decode((await frames.next())!.payload);
  }
  assert.equal(text, "ACK 1\nACK 2\n");
  // A plain-text client on the wss port is a counted TLS failure.
  {
    using plain = await connectTo(port);
    await writeAll(plain, upgradeHead("x"));
    await withTimeout(plain.read(new Uint8Array(64)).catch(() => null), 5000, "close");
  }
  await waitUntil(() => proxy.stats.wsRejectedTls === 1, "the TLS failure to be counted");
});

Deno.test("wss: a client that stalls its TLS handshake is closed at the deadline and counted as a timeout", async () => {
  await using certs = await makeCertificates();
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr, {}, {
    tls: { cert: certs.serverCertPem, key: certs.serverKeyPem },
    handshakeTimeoutMs: 200,
  });
  // No ClientHello. (Its socket is not seen to close: Deno holds a TLS connection closed before
  // its handshake until the client sends or leaves; see docs/edge.md.)
  using _staller = await connectTo(proxy.webSocketAddr!.port);
  await waitUntil(() => proxy.stats.wsRejectedTimeout === 1, "the stalled handshake to be counted");
  assert.equal(proxy.stats.wsRejectedTls, 0);
  assert.equal(proxy.stats.wsRejectedBusy, 0);
});

Deno.test("WebSocket: a handshake closed by the proxy's shutdown is not counted as evicted by the handshake cap", async () => {
  await using upstream = await startUpstream();
  const proxy = await startWsProxy(upstream.addr);
  const port = proxy.webSocketAddr!.port;
  using staller = await connectTo(port);
  await writeAll(staller, "GET / HTTP/1.1\r\n"); // and nothing more
  {
    // Accepted after the staller: once it is upgraded, the staller is in its handshake.
    const { conn } = await openRaw(port);
    conn.close();
  }
  await proxy.close();
  const n = await withTimeout(staller.read(new Uint8Array(16)).catch(() => null), 5000, "close");
  assert.equal(n, null);
  assert.equal(proxy.stats.wsRejectedBusy, 0, "a shutdown is no handshake-cap eviction");
});

Deno.test("WebSocket: a flood of refused upgrades and protocol errors writes a log line a second per kind, not one per client", async () => {
  await using upstream = await startUpstream();
  const lines: string[] = [];
  const keep = (message: string) => lines.push(message);
  const logger = { debug: () => {}, info: keep, warning: keep, error: keep } as unknown as Logger;
  await using proxy = await startWsProxy(upstream.addr, { logger });
  const port = proxy.webSocketAddr!.port;
  const started = performance.now();
  for (let i = 0; i < 20; i++) {
    using conn = await connectTo(port);
    const r = await rawRequest(
      conn,
      upgradeHead(`127.0.0.1:${port}`, ["Origin: http://evil.example"]),
    );
    assert.equal(r.status, 403);
  }
  for (let i = 0; i < 20; i++) {
    const { conn, frames } = await openRaw(port);
    using _ = conn;
    await writeAllBytes(conn, frame(1, "REQ 1\n", { masked: false }));
    assert.equal((await frames.next())?.opcode, 8);
  }
  await waitUntil(() => proxy.stats.wsProtocolErrors === 20, "every protocol error to be counted");
  assert.equal(proxy.stats.wsRejectedOrigin, 20);
  const refusals = lines.filter((line) => line.startsWith("WebSocket upgrade"));
  const errors = lines.filter((line) => line.startsWith("WebSocket client"));
  // A line a second per kind at most (the first at once, the next a second later, …).
  const most = 1 + Math.ceil((performance.now() - started) / 1000);
  assert.ok(refusals.length >= 1 && refusals.length <= most, `${refusals.length} refusal lines`);
  assert.ok(errors.length >= 1 && errors.length <= most, `${errors.length} protocol error lines`);
});

Deno.test("--accept-proxy with --ws-listen: a listed balancer's PROXY header before the upgrade names the client, for the access log and the per-source limits", async () => {
  await using upstream = await startUpstream();
  const records: AccessRecord[] = [];
  await using proxy = await startWsProxy(upstream.addr, {
    acceptProxy: "127.0.0.1",
    maxConnectionsPerSource: 1,
    accessLog: (record) => records.push(record),
  });
  const port = proxy.webSocketAddr!.port;
  // Two clients behind one balancer: two sources, one connection each.
  const clients = [];
  for (const [i, client] of ["192.0.2.1", "192.0.2.2"].entries()) {
    const conn = await connectTo(port);
    const header = `PROXY TCP4 ${client} 10.0.0.1 ${40000 + i} 8080\r\n`;
    const r = await rawRequest(conn, header + upgradeHead(`127.0.0.1:${port}`));
    assert.equal(r.status, 101, `client ${client}`);
    clients.push({ conn, frames: new FrameReader(conn, r.rest) });
  }
  for (const [i, { conn, frames }] of clients.entries()) {
    await writeAllBytes(conn, frame(1, `REQ ${i + 1}\n`, { mask: [1, 2, 3, 4] }));
    assert.equal(new TextDecoder().decode((await frames.next())!.payload), `ACK ${i + 1}\n`);
  }
  for (const { conn } of clients) conn.close();
  await waitUntil(() => records.length === 2, "both access-log lines");
  assert.deepEqual(records.map((r) => r.client).sort(), ["192.0.2.1:40000", "192.0.2.2:40001"]);
  assert.equal(proxy.stats.proxyHeaders, 2);
  // A listed peer without a header is closed before its request is answered, counted.
  {
    using conn = await connectTo(port);
    await writeAll(conn, upgradeHead(`127.0.0.1:${port}`));
    const n = await withTimeout(conn.read(new Uint8Array(64)).catch(() => null), 5000, "close");
    assert.equal(n, null);
  }
  await waitUntil(() => proxy.stats.proxyHeaderMissing === 1, "the missing header to be counted");
  assert.equal(proxy.stats.wsConnections, 2);
});

Deno.test("foo-proxy proxy --ws-listen serves WebSocket clients in every worker; foo-proxy client --ws drives it", async () => {
  await using upstream = await startUpstream();
  const { child } = await spawnProxy(upstream.addr, ["--ws-listen=127.0.0.1:0", "--workers=2"]);
  await using _child = child;
  const port = Number(
    (await child.stderr.waitFor(/WebSocket clients on ws:\/\/127\.0\.0\.1:(\d+)\//, 20_000))[1],
  );
  const client = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "src/main.ts",
      "client",
      `--ws=ws://127.0.0.1:${port}/`,
      "--requests=50",
      "--pipeline=10",
      "--connections=8",
    ],
    stdout: "piped",
    stderr: "piped",
  });
  const out = await client.output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, stderr);
  assert.match(new TextDecoder().decode(out.stdout), /OK!/);
});

Deno.test("WebSocketConn: a text reply never splits a UTF-8 character between messages, and bytes that are not UTF-8 go as binary", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using client = await connectTo(listener.addr);
  const inner = await listener.accept();
  const ws = new WebSocketConn(inner);
  try {
    await writeAllBytes(client, frame(1, "REQ 1\n", { mask: [1, 1, 1, 1] }));
    const got = new Uint8Array(64);
    const n = await ws.read(got);
    assert.equal(new TextDecoder().decode(got.subarray(0, n!)), "REQ 1\n");
    const frames = new FrameReader(client);
    await ws.write(new Uint8Array([0x41, 0xc3])); // "A" and the first byte of "é"
    await ws.write(new Uint8Array([0xa9, 0x0a]));
    await ws.write(new Uint8Array([0xff, 0x0a]));
    const first = (await frames.next())!;
    const second = (await frames.next())!;
    const third = (await frames.next())!;
    assert.deepEqual([first.opcode, [...first.payload]], [1, [0x41]]);
    assert.deepEqual([second.opcode, new TextDecoder().decode(second.payload)], [1, "é\n"]);
    assert.deepEqual([third.opcode, [...third.payload]], [2, [0xff, 0x0a]]);
  } finally {
    ws.close();
  }
  const close = await new FrameReader(client).next();
  assert.equal(close?.opcode, 8);
  assert.equal(closeCode(close!.payload), 1000);
});

Deno.test("WebSocket: a line spans fragments of one message around a ping; the client's close frame is its FIN: replies owed still come, then our close", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr);
  const { conn, frames } = await openRaw(proxy.webSocketAddr!.port);
  using _conn = conn;
  const mask = [3, 1, 4, 1];
  await writeAllBytes(conn, frame(2, "REQ 1\nRE", { fin: false, mask }));
  await writeAllBytes(conn, frame(9, "p", { mask }));
  await writeAllBytes(conn, frame(0, "Q 2", { fin: false, mask }));
  await writeAllBytes(conn, frame(0, "\n", { mask }));
  await writeAllBytes(conn, frame(8, new Uint8Array([0x03, 0xe8]), { mask }));
  let text = "";
  const opcodes: number[] = [];
  for (;;) {
    const f = await frames.next();
    if (f === null) break;
    opcodes.push(f.opcode);
    if (f.opcode === 2) text += new TextDecoder().decode(f.payload);
    if (f.opcode === 8) {
      assert.equal(closeCode(f.payload), 1000);
      break;
    }
  }
  assert.equal(text, "ACK 1\nACK 2\n");
  assert.ok(opcodes.includes(10), "the ping got its pong");
  assert.equal(opcodes.at(-1), 8);
  await waitUntil(() => proxy.activeConnections === 0, "the connection to end");
  assert.equal(proxy.stats.wsMessagesIn, 1, "one message in three fragments");
  const { completed = 0, client_closed = 0 } = proxy.stats.closed;
  assert.equal(completed + client_closed, 1);
});

Deno.test("WebSocket: stalled handshakes past the cap make room for a real client, counted", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr, {}, { maxHandshakes: 4 });
  const port = proxy.webSocketAddr!.port;
  const stalled: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 8; i++) {
      const conn = await connectTo(port);
      await writeAll(conn, "GET / HTTP/1.1\r\n");
      stalled.push(conn);
    }
    await using client = await ApiClient.open(proxy.wsUrl);
    client.socket.send(requests(1, 3));
    assert.deepEqual(await client.lines(3), acks(1, 3));
    assert.ok(proxy.stats.wsRejectedBusy >= 5, `busy ${proxy.stats.wsRejectedBusy}`);
    // The oldest were closed: at most the cap of them hold a descriptor.
    for (const conn of stalled.slice(0, 4)) {
      // Well before the 5 s handshake deadline.
      const n = await withTimeout(conn.read(new Uint8Array(16)).catch(() => null), 2000, "close");
      assert.equal(n, null);
    }
  } finally {
    for (const conn of stalled) conn.close();
  }
});

Deno.test("--ws-listen and --ws-origin refuse bad values with a usage error", () => {
  const config = parseProxyConfig([
    "--ws-listen=127.0.0.1:0",
    "--ws-origin=HTTPS://App.Example:443,null",
  ]);
  assert.deepEqual(config.wsListen, { hostname: "127.0.0.1", port: 0 });
  assert.deepEqual(config.wsOrigins, ["https://app.example", "null"]);
  assert.equal(parseProxyConfig([]).wsListen, null);
  for (
    const bad of [
      ["--ws-listen=nope"],
      ["--ws-origin=https://a.example/path"],
      ["--ws-origin=a.example"],
    ]
  ) {
    assert.throws(() => parseProxyConfig(bad), { name: "UsageError" }, bad.join(" "));
  }
});

/** The common name of the certificate a TLS server on `port` presents, verified with `caPath`. */
async function presentedName(port: number, caPath: string): Promise<string> {
  const script = [
    "import socket, ssl, sys",
    "ctx = ssl.create_default_context(cafile=sys.argv[2])",
    "with socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10) as raw:",
    "    with ctx.wrap_socket(raw, server_hostname='localhost') as s:",
    "        print(dict(x[0] for x in s.getpeercert()['subject'])['commonName'])",
  ].join("\n");
  const out = await new Deno.Command("python3", {
    args: ["-c", script, String(port), caPath],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test("wss takes the Foo listener's key pair and follows its rotation; an open wss client keeps going", async () => {
  await using certs = await makeCertificates();
  await using upstream = await startUpstream();
  await using proxy = await startWsProxy(upstream.addr, {
    tls: { cert: certs.serverCertPem, key: certs.serverKeyPem },
  });
  const port = proxy.webSocketAddr!.port;
  assert.equal(await presentedName(port, certs.caCert), "localhost");
  using open = await Deno.connectTls({ hostname: "localhost", port, caCerts: [certs.caPem] });
  const r = await rawRequest(open, upgradeHead(`localhost:${port}`));
  assert.equal(r.status, 101);
  const frames = new FrameReader(open, r.rest);
  await proxy.setTls({
    cert: await Deno.readTextFile(certs.rotatedCert),
    key: await Deno.readTextFile(certs.rotatedKey),
  });
  assert.equal(await presentedName(port, certs.caCert), "rotated");
  await writeAllBytes(open, frame(1, "REQ 7 still\n", { mask: [1, 2, 3, 4] }));
  assert.equal(new TextDecoder().decode((await frames.next())!.payload), "ACK 7\n");
});

Deno.test("a WebSocket client from a denied source is closed before its upgrade request is read", async () => {
  await using upstream = await startUpstream();
  // A handshake deadline far past the test's wait: only the source check can close it in time.
  await using proxy = await startWsProxy(upstream.addr, { deny: "127.0.0.0/8" }, {
    handshakeTimeoutMs: 120_000,
  });
  using conn = await connectTo(proxy.webSocketAddr!.port);
  // Nothing sent: a client the proxy waited on would stay open until the deadline.
  const got = await withTimeout(
    conn.read(new Uint8Array(64)).catch(() => null),
    10_000,
    "the denied client to be closed",
  );
  assert.equal(got, null);
  assert.equal(proxy.stats.closed.denied, 1);
  assert.equal(proxy.stats.wsConnections, 0);
  assert.equal(upstream.accepted, 0);
});
