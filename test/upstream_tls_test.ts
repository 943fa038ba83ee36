/**
 * `--upstream-tls`: the proxy speaks TLS to its upstreams (our Foo server with a certificate, or
 * a Python `ssl` server that requires a client certificate), always verifying theirs. An upstream
 * whose certificate fails verification is a counted connect failure and the client is closed,
 * never served in plain text; health checks and the readiness probe use the same dial.
 */
import assert from "node:assert/strict";
import { checkUpstreamTls, parseProxyConfig } from "../src/cmd/proxy_config.ts";
import { UsageError } from "../src/cli/flags.ts";
import { parseBenchConfig } from "../src/cmd/bench.ts";
import { parseClientConfig } from "../src/cmd/client.ts";
import { parseServerConfig } from "../src/cmd/server.ts";
import { tlsClientOptions } from "../src/cmd/tls_client_flags.ts";
import { DASHBOARD_HTML } from "../src/http/dashboard.ts";
import { checkUpstream } from "../src/proxy/health_check.ts";
import { checkPreamble } from "../src/proxy/proxy_header_step.ts";
import { dialUpstream, UpstreamError, type UpstreamTls } from "../src/proxy/upstream.ts";
import { UpstreamPool } from "../src/proxy/upstream_pool.ts";
import { UpstreamProbe } from "../src/proxy/upstream_probe.ts";
import { Stats } from "../src/stats/stats.ts";
import { systemClock } from "../src/stats/clock.ts";
import { runClient } from "../src/tools/client.ts";
import { runLoad } from "../src/tools/load.ts";
import { makeCertificates, type TestCertificates } from "./_tls.ts";
import {
  acks,
  connectTo,
  freePort,
  listenLocal,
  type MainProcess,
  readLines,
  readText,
  requests,
  spawnMain,
  type SpawnMainOptions,
  startProxy,
  startUpstream,
  waitUntil,
  withTimeout,
  writeAll,
} from "./_util.ts";

const read = (path: string) => Deno.readTextFile(path);

/** Our Foo server serving TLS with the CA-signed certificate (or the untrusted one). */
async function tlsUpstream(certs: TestCertificates, untrusted = false) {
  return await startUpstream({
    tls: untrusted
      ? { cert: await read(certs.untrustedCert), key: await read(certs.untrustedKey) }
      : { cert: certs.serverCertPem, key: certs.serverKeyPem },
  });
}

/** What a spawned proxy runs with: the test's certificate directory readable, besides `src`. */
function readingCerts(certs: TestCertificates): SpawnMainOptions {
  return {
    permissions: [
      "--allow-net",
      "--allow-env=FOO_PROXY_*",
      `--allow-read=${certs.dir},${new URL("../src", import.meta.url).pathname}`,
      "--unstable-net",
    ],
  };
}

/** The port a spawned proxy listens on, from its start-up log line. */
async function listeningPort(proxy: MainProcess): Promise<number> {
  return Number((await proxy.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
}

/** Sends REQ 1..n through `port`, expects their ACKs, half-closes, expects the close. */
async function exchange(port: number, n: number): Promise<void> {
  const conn = await connectTo(port);
  try {
    await writeAll(conn, requests(1, n, "hello"));
    assert.deepEqual(await readLines(conn, n), acks(1, n));
    await conn.closeWrite();
    assert.equal(await readText(conn), "");
  } finally {
    conn.close();
  }
}

/** A client the proxy must close without a reply (its upstream cannot be reached). */
async function refused(port: number): Promise<void> {
  const conn = await connectTo(port);
  try {
    await writeAll(conn, requests(1, 3));
    assert.equal(await readText(conn, 10_000), "", "no reply, and the connection closed");
  } finally {
    conn.close();
  }
}

const MODES = [
  { name: "1:1", options: {} },
  { name: "--pool 2", options: { pool: 2 } },
  { name: "--mux 2", options: { mux: 2 } },
  { name: "--resume", options: { resume: "verbatim" as const } },
];

for (const mode of MODES) {
  Deno.test(`upstreamTls with the CA: correct replies from a TLS upstream (${mode.name})`, async () => {
    await using certs = await makeCertificates();
    await using upstream = await tlsUpstream(certs);
    await using proxy = await startProxy(upstream.addr, {
      ...mode.options,
      upstreamTls: { caCerts: [certs.caPem] },
    });
    for (let i = 0; i < 3; i++) await exchange(proxy.addr.port, 20);
    assert.equal(upstream.requests, 60);
    assert.equal(proxy.stats.counts.msg_ack, 60);
    assert.equal(proxy.stats.upstreamTlsVerifyFailures, 0);
  });
}

Deno.test("upstreamTls through an UpstreamPool (what the CLI runs): replies, and --mux shares TLS connections", async () => {
  await using certs = await makeCertificates();
  await using upstream = await tlsUpstream(certs);
  const stats = new Stats({ clock: systemClock });
  await using pool = new UpstreamPool(
    [{ name: "a", address: { hostname: "127.0.0.1", port: upstream.addr.port }, weight: 1 }],
    { tls: { caCerts: [certs.caPem] }, counters: stats, intervalMs: 0 },
  );
  await using proxy = await startProxy(upstream.addr, { target: pool, stats, mux: 1 });
  await Promise.all([exchange(proxy.addr.port, 10), exchange(proxy.addr.port, 10)]);
  assert.equal(upstream.accepted, 1, "one shared TLS connection");
  assert.equal(stats.upstreamConnectFailures, 0);
});

for (
  const [name, tls, untrusted] of [
    ["an untrusted certificate", (c: TestCertificates) => ({ caCerts: [c.caPem] }), true],
    ["no --upstream-ca (default roots)", () => ({}), false],
    ["a wrong SNI name", (c: TestCertificates) => ({
      caCerts: [c.caPem],
      serverName: "wrong.example",
    }), false],
  ] as const
) {
  Deno.test(`upstreamTls: ${name} is a counted connect failure and the client is closed`, async () => {
    await using certs = await makeCertificates();
    await using upstream = await tlsUpstream(certs, untrusted);
    const stats = new Stats({ clock: systemClock });
    await using pool = new UpstreamPool(
      [{ name: "a", address: { hostname: "127.0.0.1", port: upstream.addr.port }, weight: 1 }],
      { tls: tls(certs), counters: stats, intervalMs: 0 },
    );
    await using proxy = await startProxy(upstream.addr, {
      target: pool,
      stats,
      connectRetries: 1,
      connectBackoffMs: 10,
    });
    await refused(proxy.addr.port);
    assert.equal(stats.upstreamTlsVerifyFailures, 2, "both attempts refused the certificate");
    assert.equal(stats.upstreamTlsHandshakeFailures, 0);
    assert.equal(stats.upstreamConnectFailures, 2, "counted as connect failures");
    assert.equal(upstream.requests, 0, "not one REQ reached the upstream");
    assert.deepEqual(stats.closed, { upstream_unreachable: 1 });
  });
}

Deno.test("dialUpstream: a refused certificate says what failed; the connect timeout covers a stalled handshake", async () => {
  await using certs = await makeCertificates();
  await using upstream = await tlsUpstream(certs, true);
  const address = { hostname: "127.0.0.1", port: upstream.addr.port };
  const error = await dialUpstream(address, { tls: { caCerts: [certs.caPem] } }).then(
    () => undefined,
    (e) => e,
  );
  assert.ok(error instanceof UpstreamError);
  assert.equal(error.tls, "verify");
  assert.match(
    error.message,
    new RegExp(`^Cannot dial upstream "127.0.0.1:${address.port}": TLS: invalid peer certificate`),
  );
  // A server that accepts and never answers the ClientHello.
  using mute = listenLocal();
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of mute) held.push(conn);
  })();
  const started = performance.now();
  const stalled = await dialUpstream(
    { hostname: "127.0.0.1", port: mute.addr.port },
    { timeoutMs: 300, tls: { caCerts: [certs.caPem] } },
  ).then(() => undefined, (e) => e);
  assert.ok(stalled instanceof UpstreamError, String(stalled));
  assert.equal(stalled.tls, "handshake");
  assert.match(stalled.message, /connect timed out after 300 ms \(in the TLS handshake\)/);
  assert.ok(performance.now() - started < 3000);
  for (const conn of held) conn.close();
  mute.close();
  await accepting.catch(() => {});
});

Deno.test("health checks and the readiness probe speak TLS: a good certificate passes, a refused one marks the upstream down", async () => {
  await using certs = await makeCertificates();
  await using good = await tlsUpstream(certs);
  await using bad = await tlsUpstream(certs, true);
  const tls: UpstreamTls = { caCerts: [certs.caPem] };
  const at = (port: number) => ({ hostname: "127.0.0.1", port });
  assert.equal((await checkUpstream(at(good.addr.port), { tls })).ok, true);
  const failed = await checkUpstream(at(bad.addr.port), { tls });
  assert.equal(failed.ok, false);
  assert.match(failed.error ?? "", /TLS: invalid peer certificate/);
  await using probe = new UpstreamProbe(at(good.addr.port), { tls, intervalMs: 60_000 });
  assert.equal(await probe.probeOnce(), true);
  await using badProbe = new UpstreamProbe(at(bad.addr.port), { tls, intervalMs: 60_000 });
  assert.equal(await badProbe.probeOnce(), false);

  await using pool = new UpstreamPool([
    { name: "good", address: at(good.addr.port), weight: 1 },
    { name: "bad", address: at(bad.addr.port), weight: 1 },
  ], { tls, intervalMs: 100, checkTimeoutMs: 1000, fall: 1, rise: 1 });
  pool.start();
  const state = (name: string) => pool.snapshot().find((u) => u.name === name)?.state;
  await waitUntil(() => state("bad") === "down", "the bad upstream to be marked down");
  await waitUntil(() => (good.requests > 1), "the good upstream to answer checks");
  assert.equal(state("good"), "up");
});

const MTLS_SERVER = `
ca, cert, key = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.verify_mode = ssl.CERT_REQUIRED
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        subject = dict(x[0] for x in t.getpeercert()["subject"])
        print("client", subject["commonName"], flush=True)
        for line in t.makefile("rb"):
            t.sendall(b"ACK " + line.split()[1] + b" " + subject["commonName"].encode() + b"\\n")
        t.close()
    except Exception as e:
        print("refused", type(e).__name__, flush=True)
`;

/**
 * A Python TLS server on 127.0.0.1: `serve` defines `ctx` and `serve(c)` (one accepted socket, in a
 * thread of its own). It prints its port first, then what `serve` prints, a line per event.
 */
function startPython(serve: string, args: string[]) {
  const script = `import socket, ssl, sys, threading
${serve}
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
`;
  const child = new Deno.Command("python3", {
    args: ["-c", script, ...args],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  const nextLine = async () => {
    while (!out.includes("\n")) {
      const { value, done } = await withTimeout(lines.read(), 10_000, "python's output");
      if (done) throw new Error("python exited");
      out += value;
    }
    const line = out.slice(0, out.indexOf("\n"));
    out = out.slice(out.indexOf("\n") + 1);
    return line;
  };
  return {
    nextLine,
    async [Symbol.asyncDispose]() {
      child.kill();
      await child.status;
      await lines.cancel().catch(() => {});
    },
  };
}

async function hasPython(): Promise<boolean> {
  try {
    return (await new Deno.Command("python3", { args: ["-c", "import ssl"] }).output()).success;
  } catch {
    return false;
  }
}

Deno.test({
  name:
    "upstreamTls with a client certificate: presented to a server that requires one (Python ssl, CERT_REQUIRED)",
  ignore: !(await hasPython()),
  fn: async () => {
    await using certs = await makeCertificates();
    await using python = startPython(MTLS_SERVER, [
      certs.caCert,
      certs.serverCert,
      certs.serverKey,
    ]);
    const nextLine = python.nextLine;
    {
      const port = Number(await nextLine());
      const forward = { hostname: "127.0.0.1", port, transport: "tcp" as const };
      const withCert: UpstreamTls = {
        caCerts: [certs.caPem],
        cert: await read(certs.clientCert),
        key: await read(certs.clientKey),
      };
      {
        await using proxy = await startProxy(forward, { upstreamTls: withCert });
        const conn = await connectTo(proxy.addr.port);
        await writeAll(conn, "REQ 1 hi\nREQ 2 hi\n");
        assert.deepEqual(await readLines(conn, 2), ["ACK 1 foo-client", "ACK 2 foo-client"]);
        conn.close();
        assert.equal(await nextLine(), "client foo-client");
      }
      {
        // Without it the server refuses the handshake. Under TLS 1.3 the client's side of the
        // handshake is over before the server checks its certificate: the refusal arrives at
        // the first read, an upstream error (never a reply, never plain text).
        await using proxy = await startProxy(forward, {
          upstreamTls: { caCerts: [certs.caPem] },
          connectRetries: 0,
        });
        await refused(proxy.addr.port);
        assert.match(await nextLine(), /^refused /);
        await waitUntil(() => proxy.stats.connectionsActive === 0, "the client to be closed");
        assert.equal(proxy.stats.counts.msg_ack, 0);
      }
    }
  },
});

// Reads a PROXY v1 header in the clear, then shakes hands (HAProxy's `accept-proxy ssl`).
const PROXY_THEN_TLS_SERVER = `
cert, key = sys.argv[1:3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
def serve(c):
    try:
        header = b""
        while not header.endswith(b"\\r\\n") and len(header) < 108:
            b = c.recv(1)
            if not b:
                break
            header += b
            if len(header) == 6 and header != b"PROXY ":
                break
        if not header.startswith(b"PROXY ") or not header.endswith(b"\\r\\n"):
            print("no header first", flush=True)
            c.close()
            return
        print("header " + header.decode().strip(), flush=True)
        t = ctx.wrap_socket(c, server_side=True)
        parts = header.split()
        source = parts[2].decode() if len(parts) > 2 else "unknown"
        for line in t.makefile("rb"):
            t.sendall(b"ACK " + line.split()[1] + b" " + source.encode() + b"\\n")
        t.close()
    except Exception as e:
        print("error " + type(e).__name__ + " " + str(e), flush=True)
`;

Deno.test({
  name:
    "--send-proxy with --upstream-tls: the PROXY header goes first, in the clear, then the TLS handshake (HAProxy's accept-proxy ssl); health checks too",
  ignore: !(await hasPython()),
  fn: async () => {
    await using certs = await makeCertificates();
    await using python = startPython(PROXY_THEN_TLS_SERVER, [certs.serverCert, certs.serverKey]);
    const port = Number(await python.nextLine());
    const forward = { hostname: "127.0.0.1", port, transport: "tcp" as const };
    const tls: UpstreamTls = { caCerts: [certs.caPem] };
    await using proxy = await startProxy(forward, { sendProxy: "v1", upstreamTls: tls });
    const conn = await connectTo(proxy.addr.port);
    await writeAll(conn, "REQ 1 hi\nREQ 2 hi\n");
    assert.deepEqual(await readLines(conn, 2), ["ACK 1 127.0.0.1", "ACK 2 127.0.0.1"]);
    conn.close();
    assert.match(await python.nextLine(), /^header PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+$/);
    const checked = await checkUpstream(forward, {
      tls,
      preamble: checkPreamble("v1"),
      timeoutMs: 5000,
    });
    assert.equal(checked.ok, true, checked.error);
    assert.equal(await python.nextLine(), "header PROXY UNKNOWN");
  },
});

Deno.test("the bundled client and load generator talk TLS, verifying the server's certificate", async () => {
  await using certs = await makeCertificates();
  await using upstream = await tlsUpstream(certs);
  const connect = { hostname: "127.0.0.1", port: upstream.addr.port };
  const result = await runClient({
    connect,
    requests: 20,
    pipeline: 5,
    connections: 2,
    tls: { caCerts: [certs.caPem] },
  });
  assert.equal(result.requests, 40);
  await assert.rejects(
    runClient({
      connect,
      requests: 1,
      tls: { caCerts: [certs.caPem], serverName: "other.example" },
    }),
    /TLS: invalid peer certificate/,
  );
  const report = await runLoad(connect, {
    connections: 2,
    durationMs: 300,
    tls: { caCerts: [certs.caPem] },
  });
  assert.ok(report.responses > 0, "replies over TLS");
  assert.equal(report.errorsTotal, 0);
});

Deno.test("parseProxyConfig: the --upstream-* flags need --upstream-tls; a certificate needs its key; Deno cannot send a client certificate with another SNI name", () => {
  const parse = (...args: string[]) =>
    checkUpstreamTls(parseProxyConfig(["--forward=127.0.0.1:9000", ...args]));
  for (const flag of ["--upstream-ca=ca.pem", "--upstream-sni=x", "--upstream-cert=c.pem"]) {
    assert.throws(
      () => parse(flag),
      (e) => e instanceof UsageError && /--upstream-tls/.test(e.message),
    );
  }
  assert.throws(
    () => parse("--upstream-tls", "--upstream-cert=c.pem"),
    /--upstream-cert and --upstream-key go together/,
  );
  assert.throws(
    () =>
      parse(
        "--upstream-tls",
        "--upstream-cert=c.pem",
        "--upstream-key=k.pem",
        "--upstream-sni=db.example",
      ),
    /--upstream-sni "db.example" cannot be combined with --upstream-cert/,
  );
  for (const bad of ["a b", "-x", "a..b", "[::1"]) {
    assert.throws(
      () => parse("--upstream-tls", `--upstream-sni=${bad}`),
      /for --upstream-sni: expected a host name or an IP address/,
    );
  }
  assert.equal(parse("--upstream-tls", "--upstream-sni=[::1]").upstreamSni, "::1");
  assert.throws(
    () =>
      parse("--upstream-tls", "--upstream-cert=c.pem", "--upstream-key=k.pem", "--send-proxy=v1"),
    /--send-proxy cannot be combined with --upstream-cert/,
  );
  assert.throws(() => parseClientConfig(["--tls", "--sni=a b"]), /for --sni: expected a host/);
  const config = parse("--upstream-tls", "--upstream-ca=ca.pem", "--upstream-sni=localhost");
  assert.equal(config.upstreamTls, true);
  assert.equal(config.upstreamCa, "ca.pem");
  assert.equal(config.upstreamSni, "localhost");
  assert.equal(parse().upstreamTls, false);
});

Deno.test("foo-proxy proxy --upstream-tls --upstream-ca in front of foo-proxy server --tls-cert: replies; an untrusted upstream is counted in the stats line", async () => {
  await using certs = await makeCertificates();
  const permissions = [
    "--allow-net",
    "--allow-env=FOO_PROXY_*",
    `--allow-read=${certs.dir},${new URL("../src", import.meta.url).pathname}`,
    "--unstable-net",
  ];
  await using server = spawnMain([
    "server",
    "--listen=127.0.0.1:0",
    `--tls-cert=${certs.serverCert}`,
    `--tls-key=${certs.serverKey}`,
  ], { permissions });
  const serverPort = Number((await server.waitForLine(/listening on 127\.0\.0\.1:(\d+)/))[1]);
  await using bad = await tlsUpstream(certs, true);
  await using proxy = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=good=127.0.0.1:${serverPort},bad=127.0.0.1:${bad.addr.port}`,
    "--balance=roundrobin",
    "--health-interval=0",
    "--connect-retries=0",
    "--http=off",
    "--health=off",
    "--workers=1",
    "--upstream-tls",
    `--upstream-ca=${certs.caCert}`,
  ], { permissions });
  const port = Number((await proxy.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
  // Round robin: one of two clients meets the untrusted upstream and is closed.
  let served = 0;
  for (let i = 0; i < 4; i++) {
    const conn = await connectTo(port);
    await writeAll(conn, requests(1, 2));
    await conn.closeWrite().catch(() => {}); // refused: the proxy may have closed already
    const text = await readText(conn, 10_000);
    conn.close();
    if (text === "ACK 1\nACK 2\n") served++;
    else assert.equal(text, "", "a refused upstream gives no bytes at all");
  }
  assert.equal(served, 2);
  await proxy.stderr.waitFor(
    /Cannot dial upstream "127\.0\.0\.1:\d+": TLS: invalid peer certificate/,
  );
  proxy.kill("SIGUSR2");
  const line = JSON.parse((await proxy.readLine()) ?? "null");
  assert.equal(line.upstream_tls_verify_failures, 2);
  assert.equal(line.upstream_tls_handshake_failures, 0);
  assert.equal(line.upstream_connect_failures, 2);
  proxy.kill("SIGTERM");
  assert.equal((await proxy.status()).code, 0);

  // The bundled client over TLS to the same server: verified with --ca, refused without.
  await using client = spawnMain([
    "client",
    `--connect=127.0.0.1:${serverPort}`,
    "--tls",
    `--ca=${certs.caCert}`,
  ], { permissions });
  assert.equal((await client.status()).code, 0);
  await using unverified = spawnMain(["client", `--connect=127.0.0.1:${serverPort}`, "--tls"], {
    permissions,
  });
  assert.equal((await unverified.status()).code, 1);
  assert.match(unverified.stderr.text, /TLS: invalid peer certificate/);
});

Deno.test("foo-proxy proxy: an --upstream-* flag without --upstream-tls, or an --upstream-ca that holds no certificate, exits 2", async () => {
  await using certs = await makeCertificates();
  const permissions = ["--allow-net", "--allow-env=FOO_PROXY_*", `--allow-read=${certs.dir}`];
  const base = ["proxy", "--listen=127.0.0.1:0", "--http=off", "--health=off", "--workers=1"];
  await using without = spawnMain([...base, `--upstream-ca=${certs.caCert}`], { permissions });
  assert.equal((await without.status()).code, 2);
  assert.match(without.stderr.text, /--upstream-ca need\(s\) --upstream-tls/);
  await using notPem = spawnMain([
    ...base,
    "--upstream-tls",
    `--upstream-ca=${certs.serverKey}`,
  ], { permissions });
  assert.equal((await notPem.status()).code, 2);
  assert.match(notPem.stderr.text, /--upstream-ca ".*server\.key" holds no PEM certificate/);
  // A client certificate with another certificate's key.
  await using mismatched = spawnMain([
    ...base,
    "--upstream-tls",
    `--upstream-cert=${certs.clientCert}`,
    `--upstream-key=${certs.serverKey}`,
  ], { permissions });
  assert.equal((await mismatched.status()).code, 2);
  assert.match(mismatched.stderr.text, /--upstream-cert ".*" cannot be used: .*KeyMismatch/);
  // Without a read grant for it: the preflight names the file and the flag.
  await using ungranted = spawnMain([...base, "--upstream-tls", `--upstream-ca=${certs.caCert}`], {
    permissions: ["--allow-net", "--allow-env=FOO_PROXY_*"],
  });
  assert.equal((await ungranted.status()).code, 2);
  assert.match(
    ungranted.stderr.text,
    /Missing permission: read access to \S+ca\.pem \(TLS file --upstream-ca\)/,
  );
});

Deno.test("the tools' --ca: a file with no usable certificate is refused before any connection", async () => {
  await using certs = await makeCertificates();
  await Deno.writeTextFile(`${certs.dir}/serial.txt`, "5F3A9C0D21E4B7A8\n"); // text, not PEM
  for (const path of [certs.clientKey, `${certs.dir}/serial.txt`]) {
    await assert.rejects(
      tlsClientOptions({ caFile: path, serverName: null }),
      /holds no usable certificate: no PEM certificate in it/,
    );
  }
  await Deno.writeTextFile(
    `${certs.dir}/bad.pem`,
    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
  );
  await assert.rejects(
    tlsClientOptions({ caFile: `${certs.dir}/bad.pem`, serverName: null }),
    /holds no usable certificate: .*BadEncoding/,
  );
  assert.deepEqual(await tlsClientOptions({ caFile: certs.caCert, serverName: "x" }), {
    caCerts: [certs.caPem],
    serverName: "x",
  });
});

Deno.test("the tools' TLS flags: --ca and --sni need --tls; --tls-cert and --tls-key go together", () => {
  const client = parseClientConfig(["--tls", "--ca=ca.pem", "--sni=localhost"]);
  assert.deepEqual(client.tls, { caFile: "ca.pem", serverName: "localhost" });
  assert.equal(parseClientConfig([]).tls, null);
  assert.throws(() => parseClientConfig(["--ca=ca.pem"]), /--ca and --sni need --tls/);
  assert.throws(
    () => parseClientConfig(["--tls", "--ws=wss://localhost:9/"]),
    /--tls, --ca and --sni are for --connect/,
  );
  const bench = parseBenchConfig(["--tls", "--ca=ca.pem"]);
  assert.deepEqual(bench.tls, { caFile: "ca.pem", serverName: null });
  assert.throws(() => parseBenchConfig(["--sni=x"]), /--ca and --sni need --tls/);
  const server = parseServerConfig(["--tls-cert=c.pem", "--tls-key=k.pem"]);
  assert.deepEqual(server.tls, { certFile: "c.pem", keyFile: "k.pem" });
  assert.equal(parseServerConfig([]).tls, null);
  assert.throws(() => parseServerConfig(["--tls-cert=c.pem"]), /go together/);
});

Deno.test("SIGHUP reads the --upstream-ca file again (no --config needed): a CA put in place then makes the upstream trusted, for new connections", async () => {
  await using certs = await makeCertificates();
  await using upstream = await tlsUpstream(certs);
  const caFile = `${certs.dir}/upstream-ca.pem`;
  // At first the file holds another certificate: the upstream's is refused.
  await Deno.copyFile(certs.untrustedCert, caFile);
  await using proxy = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${upstream.addr.port}`,
    "--connect-retries=0",
    "--http=off",
    "--health=off",
    "--workers=2",
    "--upstream-tls",
    `--upstream-ca=${caFile}`,
  ], readingCerts(certs));
  const port = await listeningPort(proxy);
  await refused(port);
  await Deno.copyFile(certs.caCert, caFile);
  proxy.kill("SIGHUP");
  await proxy.stderr.waitFor(
    /Reload \(SIGHUP\): upstream TLS: the CA or client certificate files changed/,
  );
  // Both workers got it (several clients land on both).
  for (let i = 0; i < 4; i++) await exchange(port, 3);
  // A file that is no longer a certificate keeps the running one.
  await Deno.writeTextFile(caFile, "not a certificate\n");
  proxy.kill("SIGHUP");
  await proxy.stderr.waitFor(
    /the --upstream-tls files are kept as they were: .*holds no PEM certificate/,
  );
  await exchange(port, 3);
  proxy.kill("SIGTERM");
  assert.equal((await proxy.status()).code, 0);
});

Deno.test("--resume redials over TLS: the replay goes to a new verified TLS connection", async () => {
  await using certs = await makeCertificates();
  using upstream = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: certs.serverCertPem,
    key: certs.serverKeyPem,
  });
  const accepted = upstream[Symbol.asyncIterator]();
  const accept = async () => (await withTimeout(accepted.next(), 10_000, "a connection")).value;
  await using proxy = await startProxy(upstream.addr, {
    resume: "verbatim",
    upstreamTls: { caCerts: [certs.caPem] },
  });
  using client = await connectTo(proxy.addr);
  await writeAll(client, "REQ 1 a\nREQ 2 b\n");
  const first = await accept();
  assert.deepEqual(await readLines(first, 2), ["REQ 1 a", "REQ 2 b"]);
  await writeAll(first, "ACK 1\n");
  assert.deepEqual(await readLines(client, 1), ["ACK 1"]);
  first.close(); // the upstream dies owing one reply
  const second = await accept();
  assert.deepEqual(await readLines(second, 1), ["REQ 2 b"], "replayed over TLS");
  await writeAll(second, "ACK 2\n");
  assert.deepEqual(await readLines(client, 1), ["ACK 2"]);
  assert.equal(proxy.stats.failovers, 1);
  client.close();
  assert.equal(await readText(second), "");
  second.close();
});

Deno.test("the dashboard shows the upstream TLS failures, as alerts", () => {
  for (const field of ["upstream_tls_verify_failures", "upstream_tls_handshake_failures"]) {
    assert.match(
      DASHBOARD_HTML,
      new RegExp(`<dd id="${field}" data-field="${field}"[^>]*data-alert`),
    );
  }
});

Deno.test("a reload that names another --upstream-ca file warns and keeps reading the one the proxy started with, reload after reload", async () => {
  await using certs = await makeCertificates();
  await using upstream = await tlsUpstream(certs);
  const config = `${certs.dir}/proxy.jsonc`;
  const write = (ca: string) =>
    Deno.writeTextFile(config, JSON.stringify({ "upstream-tls": true, "upstream-ca": ca }));
  await write(certs.untrustedCert);
  await using proxy = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${upstream.addr.port}`,
    "--connect-retries=0",
    "--http=off",
    "--health=off",
    "--workers=1",
    `--config=${config}`,
  ], readingCerts(certs));
  const port = await listeningPort(proxy);
  await refused(port);
  await write(certs.caCert);
  for (const generation of [2, 3]) {
    proxy.kill("SIGHUP");
    await proxy.stderr.waitFor(new RegExp(`generation ${generation}\\)`));
    await refused(port);
  }
  assert.match(
    proxy.stderr.text,
    /upstream TLS changed in the config file: it takes effect on restart/,
  );
  proxy.kill("SIGTERM");
  assert.equal((await proxy.status()).code, 0);
});

Deno.test("a reload whose --upstream-ca file cannot be used still applies the config file (a --deny added in an incident) and answers 422", async () => {
  await using certs = await makeCertificates();
  await using upstream = await tlsUpstream(certs);
  const caFile = `${certs.dir}/upstream-ca.pem`;
  await Deno.copyFile(certs.caCert, caFile);
  const config = `${certs.dir}/proxy.jsonc`;
  await Deno.writeTextFile(config, JSON.stringify({ deny: "" }));
  const http = freePort();
  await using proxy = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${upstream.addr.port}`,
    "--connect-retries=0",
    `--http=127.0.0.1:${http}`,
    "--health=off",
    "--workers=1",
    "--upstream-tls",
    `--upstream-ca=${caFile}`,
    `--config=${config}`,
  ], readingCerts(certs));
  const port = await listeningPort(proxy);
  using open = await connectTo(port);
  await writeAll(open, requests(1, 1));
  assert.deepEqual(await readLines(open, 1), acks(1, 1));
  // A renewal caught half-written, while the operator denies the attacking network.
  await Deno.writeTextFile(caFile, "not a certificate yet\n");
  await Deno.writeTextFile(config, JSON.stringify({ deny: "127.0.0.1" }));
  const response = await fetch(`http://127.0.0.1:${http}/reload`, { method: "POST" });
  const body = await response.json();
  assert.equal(response.status, 422, JSON.stringify(body));
  assert.equal(body.ok, false);
  assert.match(body.error, /--upstream-ca .* holds no PEM certificate/);
  assert.ok(body.changed.some((c: string) => /source access/.test(c)), JSON.stringify(body));
  // The deny is in force: the open client from 127.0.0.1 is closed, a new one refused.
  assert.equal(await readText(open, 5000), "");
  await refused(port);
  proxy.kill("SIGTERM");
  assert.equal((await proxy.status()).code, 0);
});

Deno.test("foo-proxy server --tls-cert/--tls-key: a key that is not the certificate's, or a file with no certificate, is exit 2 naming the file, before listening", async () => {
  await using certs = await makeCertificates();
  const cases = [
    [
      certs.serverCert,
      certs.clientKey,
      `the key "${certs.clientKey}" \\(--tls-key\\) is not the certificate's`,
    ],
    [
      certs.serverKey,
      certs.serverKey,
      `no PEM certificate in "${certs.serverKey}" \\(--tls-cert\\)`,
    ],
  ] as const;
  for (const [cert, key, why] of cases) {
    await using child = spawnMain([
      "server",
      "--listen=127.0.0.1:0",
      `--tls-cert=${cert}`,
      `--tls-key=${key}`,
    ], { permissions: ["--allow-net", `--allow-read=${certs.dir}`] });
    assert.equal((await child.status()).code, 2, child.stderr.text);
    assert.match(child.stderr.text, new RegExp(`Cannot use the TLS key pair: ${why}`));
    assert.doesNotMatch(child.stderr.text, /Cannot listen/);
    assert.equal(child.stdout.text, "", "never listening");
  }
});
