import assert from "node:assert/strict";
import { parseAddress } from "../src/net/address.ts";
import { UsageError } from "../src/cli/flags.ts";
import { oneLine } from "../src/cmd/logging.ts";
import { parseProxyConfig } from "../src/cmd/proxy.ts";
import { connectTo, readLines, spawnMain, startUpstream, waitUntil, writeAll } from "./_util.ts";

Deno.test("parseAddress accepts :port, port, host:port and [v6]:port", () => {
  assert.deepEqual(parseAddress(":8002"), { hostname: "0.0.0.0", port: 8002 });
  assert.deepEqual(parseAddress("8002", { defaultHost: "localhost" }), {
    hostname: "localhost",
    port: 8002,
  });
  assert.deepEqual(parseAddress("example.com:1"), { hostname: "example.com", port: 1 });
  assert.deepEqual(parseAddress("10.1.2.3:65535"), { hostname: "10.1.2.3", port: 65535 });
  assert.deepEqual(parseAddress("[::1]:8002"), { hostname: "::1", port: 8002 });
  for (const bad of ["", ":", "host:", "host:x", ":65536", "::1:80", "[::1]80", "[::1", "a b:1"]) {
    assert.throws(() => parseAddress(bad), RangeError, bad);
  }
});

Deno.test("parseProxyConfig takes Go-style flags, env fallbacks, and flags win over env", () => {
  const env = { FOO_PROXY_FORWARD: "upstream:9000", FOO_PROXY_LISTEN: ":7000" };
  const getEnv = (name: string) => env[name as keyof typeof env];
  const go = parseProxyConfig(["-listen=:8002", "-forward", "localhost:8001"], getEnv);
  assert.deepEqual(go.listen, { hostname: "0.0.0.0", port: 8002 });
  assert.deepEqual(go.forward, { hostname: "localhost", port: 8001 });
  const fromEnv = parseProxyConfig([], getEnv);
  assert.deepEqual(fromEnv.listen, { hostname: "0.0.0.0", port: 7000 });
  assert.deepEqual(fromEnv.forward, { hostname: "upstream", port: 9000 });
  const defaults = parseProxyConfig([]);
  assert.deepEqual(defaults.listen, { hostname: "0.0.0.0", port: 8002 });
  assert.deepEqual(defaults.forward, { hostname: "localhost", port: 8001 });
  assert.equal(defaults.connectTimeoutMs, 5000);
  assert.equal(defaults.pool, 0, "--pool is off unless asked for");
  assert.equal(defaults.poolIdleTimeoutMs, 30_000);
  const pooled = parseProxyConfig(["--pool", "8", "--pool-idle-timeout", "2s"]);
  assert.equal(pooled.pool, 8);
  assert.equal(pooled.poolIdleTimeoutMs, 2000);
  assert.throws(() => parseProxyConfig(["--nope"]), UsageError);
  assert.throws(() => parseProxyConfig(["--listen"]), UsageError);
  assert.throws(() => parseProxyConfig(["--forward", "nowhere"]), /--forward: Invalid address/);
  assert.throws(() => parseProxyConfig(["stray"]), UsageError);
  assert.throws(() => parseProxyConfig(["--max-connections", "-5"]), UsageError);
});

for (
  const [args, pattern] of [
    [["--bogus"], /Unknown option '--bogus'/],
    [["--listen", "127.0.0.1:70000"], /--listen: Invalid address "127\.0\.0\.1:70000"/],
    [["-forward=[::1"], /--forward: Invalid address "\[::1"/],
    [["--log-level", "loud"], /Invalid value "loud" for --log-level/],
    [["frobnicate"], /unknown subcommand "frobnicate"/],
    [
      ["--max-connections", "-1"],
      /"-1" for --max-connections: it cannot be negative; expected an integer/,
    ],
    [["--connect-retries", "-1"], /"-1" for --connect-retries: it cannot be negative/],
    [["--pool", "-1"], /"-1" for --pool: it cannot be negative/],
    [["--pool", "many"], /Invalid value "many" for --pool: expected an integer from 0 to 100000/],
    [
      ["--pool-idle-timeout", "soon"],
      /Invalid value "soon" for --pool-idle-timeout: expected a duration/,
    ],
    [["--mux", "-1"], /"-1" for --mux: it cannot be negative/],
    [["--mux", "x"], /Invalid value "x" for --mux: expected an integer from 0 to 1024/],
    [["--mux", "2", "--pool", "4"], /--mux and --pool exclude each other/],
    [["--mux", "2", "--resume=renumber"], /--mux cannot be combined with --resume=renumber/],
  ] as const
) {
  Deno.test(`foo-proxy ${args.join(" ")} exits 2 with one line naming the problem and where the usage is`, async () => {
    await using child = spawnMain([...args]);
    const status = await child.status();
    assert.equal(status.code, 2);
    const lines = child.stderr.text.trimEnd().split("\n");
    assert.equal(lines.length, 1, child.stderr.text);
    assert.match(lines[0], pattern);
    assert.match(lines[0], / \(see 'foo-proxy --help'\)$/);
    assert.ok(lines[0].length < 200, "no synopsis appended");
    assert.equal(child.stdout.text, "", "nothing started, nothing on stdout");
  });
}

Deno.test("a bad flag of every subcommand is one stderr line naming it and its --help, exit 2", async () => {
  for (
    const [command, flag] of [
      ["server", "--nak-every=often"],
      ["client", "--requests=many"],
      ["bench", "--pipeline=0"],
      ["top", "--interval=10ms"],
    ]
  ) {
    await using child = spawnMain([command, flag]);
    assert.equal((await child.status()).code, 2, command);
    const lines = child.stderr.text.trimEnd().split("\n");
    assert.equal(lines.length, 1, child.stderr.text);
    assert.match(
      lines[0],
      new RegExp(`^foo-proxy: .*${flag.split("=")[0]}.* \\(see 'foo-proxy ${command} --help'\\)$`),
    );
  }
});

Deno.test("every subcommand takes --version and -V", async () => {
  for (const args of [["server", "--version"], ["client", "-V"], ["bench", "-V"], ["-V"]]) {
    await using child = spawnMain(args);
    assert.equal((await child.status()).code, 0, args.join(" "));
    assert.match(child.stdout.text, /^foo-proxy \d+\.\d+\.\d+\n$/, args.join(" "));
  }
});

Deno.test("foo-proxy --help and --version print to stdout and exit 0", async () => {
  await using help = spawnMain(["proxy", "--help"]);
  assert.equal((await help.status()).code, 0);
  assert.match(help.stdout.text, /--listen ADDR[\s\S]*--forward ADDR/);
  await using version = spawnMain(["--version"]);
  assert.equal((await version.status()).code, 0);
  assert.match(version.stdout.text, /^foo-proxy \d+\.\d+\.\d+\n$/);
});

Deno.test("SIGUSR2 prints exactly one JSON stats line on stdout; SIGTERM a final one and exit 0", async () => {
  await using upstream = await startUpstream({ nakEvery: 2 });
  await using child = spawnMain(
    ["-listen=127.0.0.1:0", "-forward", `127.0.0.1:${upstream.addr.port}`, "--log-format", "json"],
  );
  const listening = await child.stderr.waitFor(/"listen":"127\.0\.0\.1:(\d+)"/);
  const port = Number(listening[1]);
  {
    using conn = await connectTo(port);
    await writeAll(conn, "REQ 1\nREQ 2\nREQ 3\nREQ 4\nbad line\n");
    assert.deepEqual(await readLines(conn, 4), ["ACK 1", "NAK 2", "ACK 3", "NAK 4"]);
  }
  child.kill("SIGUSR2");
  const line = await child.readLine();
  assert.ok(line !== null);
  const stats = JSON.parse(line);
  assert.equal(stats.msg_req, 4);
  assert.equal(stats.msg_ack, 2);
  assert.equal(stats.msg_nak, 2);
  assert.equal(stats.msg_total, 8);
  assert.equal(stats.msg_invalid, 1);
  for (
    const key of ["request_rate_1s", "request_rate_10s", "response_rate_1s", "response_rate_10s"]
  ) {
    assert.equal(typeof stats[key], "number", key);
  }
  assert.ok(stats.request_rate_10s > 0);
  child.kill("SIGUSR2");
  assert.equal(JSON.parse((await child.readLine()) ?? "null").msg_req, 4, "a second report");
  child.kill("SIGTERM");
  const final = JSON.parse((await child.readLine()) ?? "null");
  assert.equal(final.msg_total, 8);
  assert.equal((await child.status()).code, 0);
  assert.equal(
    child.stdout.text.trimEnd().split("\n").length,
    3,
    "stdout carries only stats lines",
  );
  assert.ok(!child.stdout.text.includes("Listening"), "logs go to stderr");
});

Deno.test("FOO_PROXY_* environment variables configure the proxy when flags are absent", async () => {
  await using upstream = await startUpstream();
  await using child = spawnMain([], {
    env: {
      FOO_PROXY_LISTEN: "127.0.0.1:0",
      FOO_PROXY_FORWARD: `127.0.0.1:${upstream.addr.port}`,
      FOO_PROXY_LOG_LEVEL: "debug",
    },
  });
  const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/))[1]);
  using conn = await connectTo(port);
  await writeAll(conn, "REQ 7 hi\n");
  assert.deepEqual(await readLines(conn, 1), ["ACK 7"]);
  await child.stderr.waitFor(/\[DBG\] foo-proxy\.proxy: Bridging/);
  conn.close(); // the client is done, so SIGINT's drain ends at once
  child.kill("SIGINT");
  assert.equal(JSON.parse((await child.readLine()) ?? "null").msg_ack, 1);
  assert.equal((await child.status()).code, 0);
});

Deno.test("--pid-file: written once listening, refused to a second proxy while the first runs, removed on exit", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-pid-" });
  const path = `${dir}/foo-proxy.pid`;
  const permissions = [
    "--allow-net",
    "--allow-env=FOO_PROXY_*",
    `--allow-read=${dir}`,
    `--allow-write=${dir}`,
  ];
  try {
    await using upstream = await startUpstream();
    const args = [
      "proxy",
      "--listen=127.0.0.1:0",
      `--forward=127.0.0.1:${upstream.addr.port}`,
      "--http=off",
      "--health=off",
      `--pid-file=${path}`,
    ];
    await using first = spawnMain(args, { permissions });
    await first.stderr.waitFor(/Listening on/);
    await waitUntil(async () => (await Deno.readTextFile(path).catch(() => "")) !== "", "the pid");
    assert.equal(await Deno.readTextFile(path), `${first.pid}\n`);
    // The way to signal it now: kill -USR2 $(cat FILE).
    first.kill("SIGUSR2");
    assert.equal(JSON.parse((await first.readLine()) ?? "null").msg_total, 0);
    {
      await using second = spawnMain(args, { permissions });
      assert.equal((await second.status()).code, 2);
      assert.match(
        second.stderr.text,
        new RegExp(
          `Pid file ".*foo-proxy\\.pid" is held by another running foo-proxy \\(pid ${first.pid}\\)`,
        ),
      );
    }
    assert.equal(await Deno.readTextFile(path), `${first.pid}\n`, "the refused one left it alone");
    first.kill("SIGTERM");
    assert.equal((await first.status()).code, 0);
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
    // A file left behind by a crash (nobody holds its lock) is simply taken over.
    await Deno.writeTextFile(path, "999999\n");
    await using third = spawnMain(args, { permissions });
    await third.stderr.waitFor(/Listening on/);
    await waitUntil(async () => (await Deno.readTextFile(path)) === `${third.pid}\n`, "its pid");
    third.kill("SIGTERM");
    assert.equal((await third.status()).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("JSON logs render values into the message unquoted, keep them as fields, and every record is one line", async () => {
  await using upstream = await startUpstream();
  await using child = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${upstream.addr.port}`,
    "--http=off",
    "--health=off",
    "--log-format=json",
  ]);
  await child.stderr.waitFor(/Listening on/);
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
  const records = child.stderr.lines.map((line) => JSON.parse(line));
  const got = records.find((r) => r.signal === "SIGTERM");
  assert.ok(got, child.stderr.text);
  assert.match(got.message, /^Got SIGTERM: shutting down gracefully/);
  assert.ok(!child.stderr.text.includes('\\"'), "no escaped quotes inside messages");
});

Deno.test("text log records never span two lines, whatever the values hold", () => {
  assert.equal(oneLine("a\nb\r\x1b[31mc\n"), "a\\nb\\r\\x1b[31mc\n");
  assert.equal(oneLine("plain\ttab\n"), "plain\ttab\n");
});

Deno.test("without --allow-env the proxy says once that FOO_PROXY_* variables are ignored", async () => {
  await using upstream = await startUpstream();
  await using child = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${upstream.addr.port}`,
    "--http=off",
    "--health=off",
  ], { permissions: ["--allow-net"], env: { FOO_PROXY_LOG_LEVEL: "debug" } });
  await child.stderr.waitFor(/Listening on/);
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0);
  const warnings = child.stderr.lines.filter((l) =>
    l.includes("environment variables are ignored")
  );
  assert.equal(warnings.length, 1, child.stderr.text);
  assert.ok(!child.stderr.text.includes("[DBG]"), "the variable was indeed not read");
});

Deno.test("--recovery-path naming a directory says so before asking for any grant", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-dir-" });
  try {
    await using child = spawnMain(["proxy", `--recovery-path=${dir}`], {
      permissions: ["--allow-net", `--allow-read=${dir}`],
    });
    assert.equal((await child.status()).code, 2);
    assert.equal(
      child.stderr.text,
      `foo-proxy: --recovery-path "${dir}" is a directory: give a file in it, e.g. ${dir}/stats.json\n`,
    );
  } finally {
    await Deno.remove(dir);
  }
});

Deno.test("proxy --check: a valid configuration is one line and exit 0 without binding; a bad one exits 2 naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-check-" });
  try {
    // The port is taken: a check binds nothing, so it does not notice.
    using held = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const config = `${dir}/foo-proxy.jsonc`;
    await Deno.writeTextFile(config, `{ "forward": ["a=127.0.0.1:7001", "b=127.0.0.1:7002"] }`);
    const permissions = ["--allow-net", "--allow-env=FOO_PROXY_*", `--allow-read=${dir}`];
    const args = ["proxy", "--check", `--listen=127.0.0.1:${held.addr.port}`, `--config=${config}`];
    {
      await using child = spawnMain(args, { permissions });
      assert.equal((await child.status()).code, 0, child.stderr.text);
      assert.equal(
        child.stdout.text,
        `foo-proxy: the configuration is valid: listen 127.0.0.1:${held.addr.port}, forward to 2 upstreams (${config})\n`,
      );
    }
    await Deno.writeTextFile(config, `{ "forward": ["a=127.0.0.1:7001"], "max-connections": -3 }`);
    {
      await using child = spawnMain(args, { permissions });
      assert.equal((await child.status()).code, 2);
      assert.match(child.stderr.text, /--max-connections/);
      assert.equal(child.stdout.text, "");
    }
    await Deno.writeTextFile(config, `{ "forward": ["a=127.0.0.1:7001"] }`);
    {
      await using child = spawnMain([
        ...args,
        `--tls-cert=${dir}/none.pem`,
        `--tls-key=${dir}/none.key`,
      ], {
        permissions,
      });
      assert.equal((await child.status()).code, 2);
      assert.match(child.stderr.text, /Cannot read TLS certificate \(--tls-cert\)/);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("proxy --check looks at the pid file's and the access log's places without opening them: a missing directory exits 2 as a start would, and a valid check leaves nothing behind", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-check-" });
  try {
    const permissions = [
      "--allow-net",
      "--allow-env=FOO_PROXY_*",
      `--allow-read=${dir}`,
      `--allow-write=${dir}`,
    ];
    const base = ["proxy", "--check", "--listen=127.0.0.1:0", "--forward=127.0.0.1:9"];
    const refused: [string[], RegExp][] = [
      [
        [`--pid-file=${dir}/none/foo-proxy.pid`],
        /pid file .* \(--pid-file\): directory ".*\/none" does not exist/,
      ],
      [
        ["--access-log=text", `--access-log-file=${dir}/none/access.log`],
        /access log .* \(--access-log-file\): directory ".*\/none" does not exist/,
      ],
      [
        ["--access-log=text", `--access-log-file=${dir}/logs`],
        /access log .* \(--access-log-file\): it is a directory/,
      ],
      [[`--recovery-path=${dir}/none/stats.json`], /directory ".*\/none" does not exist/],
    ];
    await Deno.mkdir(`${dir}/logs`);
    for (const [flags, reason] of refused) {
      await using child = spawnMain([...base, ...flags], { permissions });
      assert.equal((await child.status()).code, 2, flags.join(" "));
      assert.match(child.stderr.text, reason);
      assert.equal(child.stdout.text, "");
    }
    await Deno.remove(`${dir}/logs`);
    await using ok = spawnMain([
      ...base,
      `--pid-file=${dir}/foo-proxy.pid`,
      "--access-log=text",
      `--access-log-file=${dir}/access.log`,
      `--recovery-path=${dir}/stats.json`,
    ], { permissions });
    assert.equal((await ok.status()).code, 0, ok.stderr.text);
    // No pid file, lock, socket, log or recovery file (its probe is removed at once).
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
