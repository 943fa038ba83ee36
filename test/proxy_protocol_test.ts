/**
 * The PROXY protocol at the edge (issue 20): `--accept-proxy` reads a header from listed peers
 * only, and the client it names is the one the access log, the logs and the stats see;
 * `--send-proxy` starts each upstream connection with the client's header. Over real sockets;
 * a client from another source address (127.0.0.2) is a Python socket bound there (Deno cannot
 * bind a client's local address).
 */
import assert from "node:assert/strict";
import type { AccessRecord } from "../src/proxy/access_log.ts";
import type { ProxyOptions } from "../src/proxy/proxy.ts";
import { checkUpstream } from "../src/proxy/health_check.ts";
import { checkPreamble } from "../src/proxy/proxy_header_step.ts";
import {
  encodeProxyHeader,
  PROXY_V2_SIGNATURE,
  type ProxyHeader,
  ProxyHeaderParser,
} from "../src/net/proxy_header.ts";
import {
  connectTo,
  freePort,
  LineReader,
  listenLocal,
  readText,
  recordingLogger,
  spawnMain,
  spawnProxy,
  startProxy,
  startUpstream,
  waitUntil,
  withTimeout,
  writeAll,
} from "./_util.ts";

const enc = new TextEncoder();

const MODES: { name: string; options: Partial<ProxyOptions> }[] = [
  { name: "1:1", options: {} },
  { name: "--pool", options: { pool: 2 } },
  { name: "--mux", options: { mux: 1 } },
];

const V1 = "PROXY TCP4 192.0.2.1 10.0.0.1 54321 8002\r\n";
const V2_TCP6 = encodeProxyHeader(2, {
  source: { hostname: "2001:db8::7", port: 80 },
  destination: { hostname: "2001:db8::1", port: 8002 },
});

/** Sends `chunks` (each its own write) then REQ 1..2, and reads the two replies. */
async function exchange(port: number, chunks: (string | Uint8Array)[]): Promise<string[]> {
  using conn = await connectTo(port);
  for (const chunk of chunks) await writeAll(conn, chunk);
  await writeAll(conn, "REQ 2 b\n");
  const replies = await new LineReader(conn).readLines(2);
  return replies;
}

for (const mode of MODES) {
  Deno.test(`--accept-proxy (${mode.name}): a v1 header and the first REQ in one write; the access log and logs show the header's client`, async () => {
    await using upstream = await startUpstream();
    const records: AccessRecord[] = [];
    const { logger, debug } = recordingLogger();
    await using proxy = await startProxy(upstream.addr, {
      ...mode.options,
      acceptProxy: "127.0.0.1",
      accessLog: (r) => records.push(r),
      logger,
    });
    assert.deepEqual(await exchange(proxy.addr.port, [`${V1}REQ 1 a\n`]), ["ACK 1", "ACK 2"]);
    await waitUntil(() => records.length === 1, "the access record");
    assert.equal(records[0].client, "192.0.2.1:54321");
    assert.equal(records[0].reqs, 2);
    assert.equal(
      records[0].bytesFromClient,
      "REQ 1 a\nREQ 2 b\n".length,
      "the header is not forwarded",
    );
    assert.equal(proxy.stats.proxyHeaders, 1);
    assert.ok(debug.some((line) => line.includes("192.0.2.1:54321")), debug.join("\n"));
  });

  Deno.test(`--accept-proxy (${mode.name}): a v2 TCP6 header split byte by byte`, async () => {
    await using upstream = await startUpstream();
    const records: AccessRecord[] = [];
    await using proxy = await startProxy(upstream.addr, {
      ...mode.options,
      acceptProxy: "127.0.0.0/8",
      accessLog: (r) => records.push(r),
      logger: recordingLogger().logger,
    });
    const bytes = [...V2_TCP6].map((b) => Uint8Array.of(b));
    assert.deepEqual(await exchange(proxy.addr.port, [...bytes, "REQ 1 a\n"]), ["ACK 1", "ACK 2"]);
    await waitUntil(() => records.length === 1, "the access record");
    assert.equal(records[0].client, "[2001:db8::7]:80");
  });

  Deno.test(`--accept-proxy (${mode.name}): a header from a peer not in the list closes it, counted; its plain REQs are served`, async () => {
    await using upstream = await startUpstream();
    const records: AccessRecord[] = [];
    const { logger, warnings } = recordingLogger();
    await using proxy = await startProxy(upstream.addr, {
      ...mode.options,
      acceptProxy: "127.0.0.2",
      accessLog: (r) => records.push(r),
      logger,
    });
    for (const header of [enc.encode(V1), V2_TCP6]) {
      using conn = await connectTo(proxy.addr.port);
      // Split inside the signature: the first bytes alone cannot tell.
      await writeAll(conn, header.subarray(0, 3));
      await writeAll(conn, header.subarray(3));
      await writeAll(conn, "REQ 1 a\n");
      assert.equal(await readText(conn), "", "closed without a reply");
    }
    await waitUntil(() => proxy.stats.proxyHeaderUntrusted === 2, "two untrusted headers");
    await waitUntil(() => records.length === 2, "two access records");
    assert.deepEqual(records.map((r) => r.reason), ["proxy_header", "proxy_header"]);
    assert.match(records[0].client, /^127\.0\.0\.1:\d+$/);
    await waitUntil(() => proxy.activeConnections === 0, "both counted out");
    assert.equal(proxy.stats.snapshot().connections_closed.proxy_header, 2);
    assert.ok(warnings.some((line) => line.includes("not in --accept-proxy")), warnings.join("\n"));
    // A client of its own from the same peer: served, with its own address.
    assert.deepEqual(await exchange(proxy.addr.port, ["REQ 1 a\n"]), ["ACK 1", "ACK 2"]);
    // "PR" then a Foo line: not a header after all, every byte forwarded.
    assert.deepEqual(await exchange(proxy.addr.port, ["PR", "OXZ\nREQ 1 a\n"]), [
      "ACK 1",
      "ACK 2",
    ]);
    assert.equal(proxy.stats.proxyHeaderUntrusted, 2);
  });
}

Deno.test("without --accept-proxy a PROXY line is an invalid Foo line, forwarded as before", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr, { logger: recordingLogger().logger });
  assert.deepEqual(await exchange(proxy.addr.port, [`${V1}REQ 1 a\n`]), ["ACK 1", "ACK 2"]);
  await waitUntil(() => proxy.stats.counts.invalid_type === 1, "the PROXY line counted invalid");
  assert.equal(proxy.stats.proxyHeaderUntrusted, 0);
});

/** Each bad start from a listed peer: closed without a byte forwarded, counted by kind. */
const BAD: { name: string; kind: string; send: (string | Uint8Array)[]; end?: boolean }[] = [
  { name: "missing (a Foo line first)", kind: "missing", send: ["REQ 1 a\n"] },
  {
    name: "malformed (an octet over 255)",
    kind: "malformed",
    send: [
      "PROXY TCP4 192.0.2.300 10.0.0.1 1 2\r\nREQ 1 a\n",
    ],
  },
  {
    name: "garbage after the v2 signature",
    kind: "malformed",
    send: [
      new Uint8Array([...PROXY_V2_SIGNATURE, 0x99, 0x11, 0, 12, ...new Array(12).fill(0)]),
    ],
  },
  {
    name: "oversized v1 (no CRLF in 107 bytes)",
    kind: "oversized",
    send: [
      `PROXY UNKNOWN ${"x".repeat(200)}`,
    ],
  },
  {
    name: "oversized v2 (60000 bytes declared)",
    kind: "oversized",
    send: [
      new Uint8Array([...PROXY_V2_SIGNATURE, 0x21, 0x11, 0xea, 0x60]),
    ],
  },
  { name: "truncated (EOF mid-header)", kind: "truncated", send: ["PROXY TCP4 192.0"], end: true },
];

for (const bad of BAD) {
  Deno.test(`--accept-proxy: ${bad.name} closes the connection, counted and logged`, async () => {
    const recorder = await startRecordingUpstream();
    const records: AccessRecord[] = [];
    const { logger, warnings } = recordingLogger();
    await using proxy = await startProxy(recorder.addr, {
      acceptProxy: "127.0.0.1",
      accessLog: (r) => records.push(r),
      logger,
    });
    try {
      using conn = await connectTo(proxy.addr.port);
      for (const chunk of bad.send) await writeAll(conn, chunk);
      if (bad.end) await conn.closeWrite();
      assert.equal(await readText(conn), "", "closed without a reply");
      await waitUntil(() => records.length === 1, "the access record");
      assert.equal(records[0].reason, "proxy_header");
      assert.match(records[0].client, /^127\.0\.0\.1:\d+$/);
      const snapshot = proxy.stats.snapshot() as unknown as Record<string, unknown>;
      assert.equal(snapshot[`proxy_header_${bad.kind}`], 1, JSON.stringify(snapshot));
      assert.equal(proxy.stats.proxyHeaders, 0);
      assert.equal(proxy.stats.connectionsActive, 0);
      assert.ok(
        warnings.some((line) => line.includes(`"kind":"${bad.kind}"`)),
        warnings.join(),
      );
      assert.equal(recorder.connections.length, 0, "the upstream was never dialed");
    } finally {
      await recorder.close();
    }
  });
}

Deno.test("--accept-proxy-timeout: a listed peer that sends nothing, or half a header, is closed when it passes", async () => {
  await using upstream = await startUpstream();
  const records: AccessRecord[] = [];
  await using proxy = await startProxy(upstream.addr, {
    acceptProxy: "127.0.0.1",
    acceptProxyTimeoutMs: 200,
    accessLog: (r) => records.push(r),
    logger: recordingLogger().logger,
  });
  using silent = await connectTo(proxy.addr.port);
  using slow = await connectTo(proxy.addr.port);
  await writeAll(slow, "PROXY TCP4 ");
  // Meanwhile others are served at once.
  assert.deepEqual(await exchange(proxy.addr.port, [`${V1}REQ 1 a\n`]), ["ACK 1", "ACK 2"]);
  const started = performance.now();
  assert.equal(await readText(silent, 3000), "");
  assert.equal(await readText(slow, 3000), "");
  assert.ok(performance.now() - started < 2500);
  await waitUntil(() => proxy.stats.proxyHeaderTimeout === 2, "two timeouts");
  await waitUntil(() => records.length === 3, "three access records");
  assert.equal(records.filter((r) => r.reason === "proxy_header").length, 2);
  assert.equal(records.filter((r) => r.client === "192.0.2.1:54321").length, 1);
});

Deno.test("--accept-proxy: a flood of bad headers is counted in full and logged at most once a second", async () => {
  await using upstream = await startUpstream();
  const { logger, warnings } = recordingLogger();
  await using proxy = await startProxy(upstream.addr, { acceptProxy: "127.0.0.1", logger });
  const started = Date.now();
  for (let i = 0; i < 30; i++) {
    using conn = await connectTo(proxy.addr.port);
    await writeAll(conn, "GET / HTTP/1.1\r\n\r\n");
    assert.equal(await readText(conn), "");
  }
  await waitUntil(() => proxy.stats.proxyHeaderMissing === 30, "30 missing headers");
  const seconds = Math.ceil((Date.now() - started) / 1000);
  const lines = warnings.filter((line) => line.includes(`"kind":"missing"`));
  assert.ok(lines.length >= 1 && lines.length <= seconds + 1, `${lines.length} in ${seconds}s`);
});

Deno.test("--accept-proxy: close() ends a connection waiting for its header at once, and nothing was dialed for it", async () => {
  const recorder = await startRecordingUpstream();
  try {
    const proxy = await startProxy(recorder.addr, {
      acceptProxy: "127.0.0.1",
      acceptProxyTimeoutMs: 60_000,
      logger: recordingLogger().logger,
    });
    using conn = await connectTo(proxy.addr.port);
    await writeAll(conn, "PROXY ");
    await waitUntil(() => proxy.activeConnections === 1, "the header being read");
    await withTimeout(proxy.close(), 2000, "close()");
    assert.equal(await readText(conn), "");
    assert.equal(proxy.stats.snapshot().connections_closed.shutdown, 1);
    assert.equal(recorder.connections.length, 0, "no upstream connection before the header");
  } finally {
    await recorder.close();
  }
});

Deno.test("--accept-proxy reload: new connections use the new list", async () => {
  await using upstream = await startUpstream();
  await using proxy = await startProxy(upstream.addr, {
    acceptProxy: "127.0.0.1",
    logger: recordingLogger().logger,
  });
  assert.deepEqual(await exchange(proxy.addr.port, [`${V1}REQ 1 a\n`]), ["ACK 1", "ACK 2"]);
  proxy.updateEngine({ acceptProxy: "127.0.0.2" });
  using conn = await connectTo(proxy.addr.port);
  await writeAll(conn, `${V1}REQ 1 a\n`);
  assert.equal(await readText(conn), "");
  await waitUntil(() => proxy.stats.proxyHeaderUntrusted === 1, "now untrusted");
  proxy.updateEngine({ acceptProxy: "" });
  // Off: a PROXY line is a Foo line again.
  assert.deepEqual(await exchange(proxy.addr.port, [`${V1}REQ 1 a\n`]), ["ACK 1", "ACK 2"]);
});

/** Sends `payload` from a socket bound to `source` (Python: Deno cannot bind a client's address), half-closes, returns all it got. */
async function sendFrom(source: string, port: number, payload: Uint8Array): Promise<string> {
  const script = `
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.connect(("127.0.0.1", int(sys.argv[2])))
s.sendall(bytes.fromhex(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
s.settimeout(5)
data = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    data += d
sys.stdout.write(data.decode("latin1"))
`;
  const hex = [...payload].map((b) => b.toString(16).padStart(2, "0")).join("");
  const out = await new Deno.Command("python3", {
    args: ["-c", script, source, String(port), hex],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
}

Deno.test("--accept-proxy 127.0.0.2: a header from 127.0.0.2 is taken, the same from 127.0.0.1 refused", async () => {
  await using upstream = await startUpstream();
  const records: AccessRecord[] = [];
  await using proxy = await startProxy(upstream.addr, {
    acceptProxy: "127.0.0.2",
    accessLog: (r) => records.push(r),
    logger: recordingLogger().logger,
  });
  const payload = enc.encode(`${V1}REQ 1 a\nREQ 2 b\n`);
  assert.equal(await sendFrom("127.0.0.2", proxy.addr.port, payload), "ACK 1\nACK 2\n");
  assert.equal(await sendFrom("127.0.0.1", proxy.addr.port, payload), "");
  await waitUntil(() => records.length === 2, "two access records");
  const byReason = Object.fromEntries(records.map((r) => [r.reason, r.client]));
  assert.equal(byReason.completed ?? byReason.client_closed, "192.0.2.1:54321");
  assert.match(byReason.proxy_header, /^127\.0\.0\.1:\d+$/);
  assert.equal(proxy.stats.proxyHeaders, 1);
  assert.equal(proxy.stats.proxyHeaderUntrusted, 1);
});

/** An upstream that reads a PROXY header on each connection, records it, then ACKs each REQ. */
function startRecordingUpstream(options: { dropFirst?: boolean } = {}) {
  const listener = listenLocal();
  const headers: ProxyHeader[] = [];
  const connections: Deno.Conn[] = [];
  const tasks: Promise<void>[] = [];
  const serve = async (conn: Deno.Conn, index: number) => {
    const parser = new ProxyHeaderParser();
    const buf = new Uint8Array(4096);
    let rest = "";
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) return;
        let chunk = buf.subarray(0, n);
        if (headers.length <= index) {
          const result = parser.push(chunk);
          if (result.state === "more") continue;
          if (result.state === "invalid") throw new Error(result.reason);
          headers.push(result.header);
          chunk = chunk.subarray(result.consumed);
        }
        if (options.dropFirst && index === 0 && chunk.length > 0) return; // dies with a REQ owed
        rest += new TextDecoder().decode(chunk);
        const lines = rest.split("\n");
        rest = lines.pop()!;
        for (const line of lines) {
          const seq = /^REQ (\d+)/.exec(line)?.[1];
          if (seq) await writeAll(conn, `ACK ${seq}\n`);
        }
      }
    } catch {
      // The test ends it.
    } finally {
      try {
        conn.close();
      } catch {
        // Closed by close().
      }
    }
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      connections.push(conn);
      tasks.push(serve(conn, connections.length - 1));
    }
  })().catch(() => {});
  return {
    addr: listener.addr,
    headers,
    connections,
    async close() {
      listener.close();
      for (const conn of connections) {
        try {
          conn.close();
        } catch {
          // Already closed.
        }
      }
      await accepting;
      await Promise.all(tasks);
    },
  };
}

for (const version of ["v1", "v2"] as const) {
  Deno.test(`--send-proxy ${version}: the upstream sees the client's address and the one it connected to`, async () => {
    const recorder = await startRecordingUpstream();
    try {
      await using proxy = await startProxy(recorder.addr, {
        sendProxy: version,
        logger: recordingLogger().logger,
      });
      using conn = await connectTo(proxy.addr.port);
      await writeAll(conn, "REQ 1 a\n");
      assert.deepEqual(await new LineReader(conn).readLines(1), ["ACK 1"]);
      const local = conn.localAddr as Deno.NetAddr;
      assert.deepEqual(recorder.headers, [{
        version: version === "v1" ? 1 : 2,
        command: "proxy",
        family: "tcp4",
        source: { hostname: "127.0.0.1", port: local.port },
        destination: { hostname: "127.0.0.1", port: proxy.addr.port },
        length: recorder.headers[0].length,
      }]);
    } finally {
      await recorder.close();
    }
  });
}

Deno.test("--send-proxy v2 after --accept-proxy: the upstream sees the header's client; a --resume redial sends it again", async () => {
  const recorder = await startRecordingUpstream({ dropFirst: true });
  try {
    await using proxy = await startProxy(recorder.addr, {
      acceptProxy: "127.0.0.1",
      sendProxy: "v2",
      resume: "verbatim",
      logger: recordingLogger().logger,
    });
    using conn = await connectTo(proxy.addr.port);
    await writeAll(conn, `${V1}REQ 1 a\n`);
    assert.deepEqual(await new LineReader(conn).readLines(1), ["ACK 1"]);
    assert.equal(recorder.headers.length, 2, "one header per upstream connection");
    for (const header of recorder.headers) {
      assert.deepEqual(header.source, { hostname: "192.0.2.1", port: 54321 });
      assert.deepEqual(header.destination, { hostname: "10.0.0.1", port: 8002 });
    }
    assert.equal(proxy.stats.failovers, 1);
  } finally {
    await recorder.close();
  }
});

Deno.test("--send-proxy with --mux or --pool is a usage error (exit 2) saying why", async () => {
  for (const shared of ["--mux=2", "--pool=2"]) {
    await using child = spawnMain([
      "proxy",
      "--send-proxy=v1",
      shared,
      "--http=off",
      "--health=off",
    ]);
    const status = await child.status();
    assert.equal(status.code, 2);
    assert.match(child.stderr.text, /--send-proxy cannot be combined with --(mux|pool).*shared/);
  }
  await using bad = spawnMain(["proxy", "--accept-proxy=10.0.0.1/8", "--http=off", "--health=off"]);
  assert.equal((await bad.status()).code, 2);
  assert.match(bad.stderr.text, /--accept-proxy: Invalid address range "10\.0\.0\.1\/8"/);
});

Deno.test("foo-proxy proxy --accept-proxy (workers): the access log and stats show the header's client; SIGHUP with a new list applies to new connections", async () => {
  await using upstream = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-accept-proxy-" });
  const path = `${dir}/foo-proxy.jsonc`;
  const write = (list: string) =>
    Deno.writeTextFile(path, JSON.stringify({ "accept-proxy": list, "access-log": "text" }));
  await write("127.0.0.1");
  try {
    await using child = spawnMain([
      "proxy",
      `--config=${path}`,
      "--listen=127.0.0.1:0",
      `--forward=127.0.0.1:${upstream.addr.port}`,
      "--http=off",
      "--health=off",
    ], {
      permissions: [
        "--allow-net",
        "--allow-env=FOO_PROXY_*",
        `--allow-read=${dir},src`,
        "--unstable-net",
      ],
      env: { FOO_PROXY_WORKERS: "2" },
    });
    const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
    assert.deepEqual(await exchange(port, [`${V1}REQ 1 a\n`]), ["ACK 1", "ACK 2"]);
    await child.stderr.waitFor(/ 192\.0\.2\.1:54321 -> /);
    child.kill("SIGUSR2");
    const before = JSON.parse((await child.readLine()) ?? "null");
    assert.equal(before.proxy_headers, 1);
    await write("127.0.0.2");
    child.kill("SIGHUP");
    await child.stderr.waitFor(/Reloaded .*\(SIGHUP, generation 2\)/);
    // Each worker hears of the reload on its own: wait until new connections are refused, then
    // every one is.
    const refused = async () => {
      using conn = await connectTo(port);
      await writeAll(conn, `${V1}REQ 1 a\n`);
      return (await readText(conn)) === "";
    };
    await waitUntil(refused, "a header from 127.0.0.1 refused after the reload");
    for (let i = 0; i < 6; i++) assert.ok(await refused(), `connection ${i} after the reload`);
    // A refused connection is counted out just after its client sees the close.
    let after: { proxy_header_untrusted: number; connections_closed: Record<string, number> };
    await waitUntil(async () => {
      child.kill("SIGUSR2");
      after = JSON.parse((await child.readLine()) ?? "null");
      return (after.connections_closed.proxy_header ?? 0) >= 7;
    }, "seven connections closed for their header");
    assert.ok(after!.proxy_header_untrusted >= 7, JSON.stringify(after!));
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--send-proxy: health checks start with v1 UNKNOWN / v2 LOCAL, which an upstream that demands a header answers", async () => {
  const recorder = startRecordingUpstream();
  try {
    // Without a header such an upstream closes the probe: the check would mark it down.
    const bare = await checkUpstream(recorder.addr, { timeoutMs: 2000 });
    assert.equal(bare.ok, false);
    for (const version of ["v1", "v2"] as const) {
      const checked = await checkUpstream(recorder.addr, {
        timeoutMs: 2000,
        preamble: checkPreamble(version),
      });
      assert.equal(checked.ok, true, checked.error);
    }
    assert.deepEqual(recorder.headers.map((h) => [h.version, h.command, h.family]), [
      [1, "proxy", "unknown"],
      [2, "local", "unknown"],
    ]);
  } finally {
    await recorder.close();
  }
});

Deno.test("foo-proxy proxy --send-proxy v2: the health checks' LOCAL headers and a client's header reach the upstream", async () => {
  const recorder = startRecordingUpstream();
  try {
    const { child, port } = await spawnProxy(recorder.addr, [
      "--send-proxy=v2",
      "--health-interval=100ms",
      // A lone upstream is checked when the health app is on (its /readyz reports it); the
      // last --health given wins.
      `--health=127.0.0.1:${freePort()}`,
    ]);
    await using _child = child;
    await waitUntil(
      () => recorder.headers.filter((h) => h.command === "local").length >= 3,
      "three health checks with a LOCAL header",
    );
    using conn = await connectTo(port);
    await writeAll(conn, "REQ 7 a\n");
    assert.deepEqual(await new LineReader(conn).readLines(1), ["ACK 7"]);
    const local = conn.localAddr as Deno.NetAddr;
    assert.ok(
      recorder.headers.some((h) => h.source?.port === local.port && h.destination?.port === port),
      JSON.stringify(recorder.headers),
    );
    assert.doesNotMatch(child.stderr.text, /down|failed/i);
  } finally {
    await recorder.close();
  }
});
