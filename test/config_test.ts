/**
 * `--config FILE` and reload (issue 12): keys are the flags, flags win, unknown keys name their
 * line; SIGHUP and POST /reload apply a new upstream set without dropping a connection, and a bad
 * file changes nothing.
 */
import assert from "node:assert/strict";
import { parseConfigFile, stripJsonComments } from "../src/cli/config_file.ts";
import { parseProxyConfig, PROXY_FLAGS } from "../src/cmd/proxy.ts";
import { makeFifo } from "./_files.ts";
import {
  connectTo,
  freePort,
  LineReader,
  spawnWithConfig,
  startUpstream,
  waitUntil,
  writeAll,
} from "./_util.ts";

Deno.test("parseConfigFile: comments and trailing commas, lists, and errors that name the key and its line", () => {
  const text = `{
  // a comment, and "a string // that is not one"
  "listen": "127.0.0.1:9", /* block */
  "forward": ["a=127.0.0.1:1", "b=127.0.0.1:2*3"],
  "max-inflight": 5,
  "resume": true,
}`;
  assert.deepEqual(parseConfigFile(text, "f.jsonc", PROXY_FLAGS), {
    listen: "127.0.0.1:9",
    forward: "a=127.0.0.1:1,b=127.0.0.1:2*3",
    "max-inflight": "5",
    resume: "true",
  });
  assert.match(stripJsonComments('{"a": "x // y"}'), /x \/\/ y/);
  assert.throws(
    () => parseConfigFile('{\n  "listen": ":1",\n  "lisen": ":2"\n}', "f.jsonc", PROXY_FLAGS),
    /Unknown key "lisen" \(line 3\) in config file "f\.jsonc"/,
  );
  assert.throws(
    () => parseConfigFile('{"max-inflight": [1]}', "f.jsonc", PROXY_FLAGS),
    /"max-inflight" \(line 1\).*expected a string or a number/,
  );
  assert.throws(() => parseConfigFile("{ nope", "f.jsonc", PROXY_FLAGS), /not valid JSON/);
});

Deno.test("flags and FOO_PROXY_* win over the file", () => {
  const file = '{"listen": "127.0.0.1:1", "max-inflight": 7, "balance": "first"}';
  const config = parseProxyConfig(
    ["--config=x.jsonc", "--listen=127.0.0.1:2"],
    (name) => name === "FOO_PROXY_MAX_INFLIGHT" ? "9" : undefined,
    () => file,
  );
  assert.equal(config.listen.port, 2);
  assert.equal(config.maxInflight, 9);
  assert.equal(config.balance, "first");
});

async function getJson(port: number, path: string, init?: RequestInit) {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, init);
  return { status: response.status, body: await response.json() };
}

Deno.test("reload adds and removes an upstream under load without dropping a connection; a bad file changes nothing", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-config-" });
  const path = `${dir}/foo-proxy.jsonc`;
  const http = freePort();
  const write = (forward: string[]) =>
    Deno.writeTextFile(
      path,
      JSON.stringify({ forward, "health-interval": "100ms", "health-rise": 1 }, null, 2),
    );
  await write([`a=127.0.0.1:${a.addr.port}`]);
  try {
    await using child = spawnWithConfig(dir, path, http);
    const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
    // A client that keeps pipelining through the reload, on upstream a.
    using busy = await connectTo(port);
    const reader = new LineReader(busy);
    let seq = 0;
    const roundTrip = async () => {
      seq++;
      await writeAll(busy, `REQ ${seq}\n`);
      assert.deepEqual(await reader.readLines(1), [`ACK ${seq}`]);
    };
    await roundTrip();
    await write([`b=127.0.0.1:${b.addr.port}`]); // a removed, b added
    child.kill("SIGHUP");
    await child.stderr.waitFor(/Reloaded .* \(SIGHUP, generation 2\): b added; a removed/);
    for (let k = 0; k < 20; k++) await roundTrip(); // the open connection on a carries on
    const during = await getJson(http, "/upstreams");
    assert.deepEqual(
      during.body.map((u: { name: string; state: string }) => [u.name, u.state]),
      [["b", "up"], ["a", "draining"]],
    );
    {
      using fresh = await connectTo(port);
      await writeAll(fresh, "REQ 1\n");
      assert.deepEqual(await new LineReader(fresh).readLines(1), ["ACK 1"]);
    }
    await waitUntil(() => b.connections + b.requests > 0, "the new client to reach b");
    // A file that does not parse: logged, counted, nothing changes.
    await Deno.writeTextFile(path, '{ "forward": [ "c=127.0.0.1:1" ], oops }');
    child.kill("SIGHUP");
    await child.stderr.waitFor(/Reload \(SIGHUP\) of .* failed; the running config is kept/);
    const stats = await getJson(http, "/stats");
    assert.equal(stats.body.config_reload_failures, 1);
    assert.equal(stats.body.config_generation, 2);
    assert.deepEqual(stats.body.upstreams.map((u: { name: string }) => u.name), ["b", "a"]);
    // POST /reload (the admin app is on loopback) with a good file again.
    await write([`b=127.0.0.1:${b.addr.port}*2`]);
    const reloaded = await getJson(http, "/reload", { method: "POST" });
    assert.equal(reloaded.status, 200);
    assert.deepEqual(reloaded.body.changed, ["b weight 2"]);
    assert.equal(reloaded.body.generation, 3);
    await roundTrip();
    busy.close();
    child.kill("SIGTERM");
    const final = JSON.parse(child.stdout.lines.at(-1) ?? (await child.readLine()) ?? "null");
    assert.equal((await child.status()).code, 0);
    assert.equal(final.connections_closed.upstream_closed ?? 0, 0, "no connection was dropped");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a reload changes the admin token (a leaked one is revoked) and says the access log waits for a restart", async () => {
  await using a = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-config-" });
  const path = `${dir}/foo-proxy.jsonc`;
  const http = freePort();
  const write = (token: string, accessLog: string) =>
    Deno.writeTextFile(
      path,
      JSON.stringify({
        forward: [`a=127.0.0.1:${a.addr.port}`],
        "admin-token": token,
        "access-log": accessLog,
      }),
    );
  await write("one", "off");
  try {
    await using child = spawnWithConfig(dir, path, http);
    await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000);
    await child.stderr.waitFor(/Serving stats on/, 20_000);
    const drain = (token: string) =>
      getJson(http, "/upstreams/a/drain", {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
      });
    assert.equal((await drain("one")).status, 200);
    await write("two", "text");
    child.kill("SIGHUP");
    await child.stderr.waitFor(/Reloaded .* \(SIGHUP, generation 2\): admin-token/);
    assert.match(
      child.stderr.text,
      /access-log changed in the config file: it takes effect on restart/,
    );
    assert.doesNotMatch(child.stderr.text, /two/, "the token itself is never logged");
    assert.equal((await drain("one")).status, 401, "the old token no longer works");
    assert.equal((await drain("two")).status, 200);
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stripJsonComments() blanks a trailing comma outside strings only, and keeps every position", () => {
  const text = '{\n  "a": "x, }", // c, }\n  "b": [1, 2,],\n  /* d,\n ] */ "c": "\\", ]",\n}';
  const out = stripJsonComments(text);
  assert.equal(out.length, text.length);
  assert.equal(out.split("\n").length, text.split("\n").length);
  assert.deepEqual(JSON.parse(out), { a: "x, }", b: [1, 2], c: '", ]' });
});

Deno.test("parseConfigFile: keys Object.prototype holds (toString, constructor, __proto__) are unknown keys", () => {
  for (const key of ["toString", "constructor", "__proto__", "hasOwnProperty"]) {
    assert.throws(
      () => parseConfigFile(`{\n  "${key}": "x"\n}`, "f.jsonc", PROXY_FLAGS),
      new RegExp(`^ConfigFileError: Unknown key "${key}" \\(line 2\\)`),
      key,
    );
  }
});

Deno.test("a reload of a --config that became a FIFO fails in one line; traffic, /reload and SIGTERM carry on", async () => {
  await using a = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-config-" });
  const path = `${dir}/foo-proxy.jsonc`;
  const http = freePort();
  // Not followed (--config-watch off): the FIFO is read on SIGHUP and POST /reload alone.
  await Deno.writeTextFile(
    path,
    JSON.stringify({ forward: [`127.0.0.1:${a.addr.port}`], "config-watch": "off" }),
  );
  try {
    await using child = spawnWithConfig(dir, path, http);
    const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
    await child.stderr.waitFor(/Serving stats on/);
    await Deno.remove(path);
    await makeFifo(path); // nobody ever writes to it
    child.kill("SIGHUP");
    await child.stderr.waitFor(
      /Reload \(SIGHUP\) of .* failed; the running config is kept: Cannot read config file ".*": it is a FIFO, not a regular file/,
    );
    using conn = await connectTo(port);
    await writeAll(conn, "REQ 1\n");
    assert.deepEqual(await new LineReader(conn).readLines(1), ["ACK 1"]);
    const reloaded = await getJson(http, "/reload", { method: "POST" });
    assert.equal(reloaded.status, 422);
    assert.match(reloaded.body.error, /it is a FIFO, not a regular file/);
    assert.equal((await getJson(http, "/stats")).body.config_reload_failures, 2);
    conn.close();
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a --config that is a FIFO, or over 1 MiB, ends the start with exit 2 and one line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-config-" });
  try {
    const fifo = `${dir}/fifo.jsonc`;
    await makeFifo(fifo);
    const big = `${dir}/big.jsonc`;
    // Valid JSON, so only its size is wrong: 2 MiB of spaces around an empty object.
    await Deno.writeTextFile(big, "{" + " ".repeat(2 * 1024 * 1024) + "}");
    for (
      const [path, why] of [
        [fifo, "it is a FIFO, not a regular file"],
        [big, "it is 2 MiB, over the 1 MiB limit"],
      ]
    ) {
      await using child = spawnWithConfig(dir, path, "off");
      const status = await child.status();
      assert.equal(status.code, 2, child.stderr.text);
      assert.deepEqual(child.stderr.lines, [
        `foo-proxy: Cannot read config file "${path}": ${why}`,
      ]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
