import assert from "node:assert/strict";
import {
  assertPermissions,
  MissingPermissionError,
  type PermissionNeed,
  permissionNeeds,
  type PermissionTargets,
} from "../src/cli/permissions.ts";
import {
  connectTo,
  freePort,
  lineReader,
  REPO_ROOT,
  spawnMain,
  startUpstream,
  writeAll,
} from "./_util.ts";

const LOCAL = "127.0.0.1";
const targets: PermissionTargets = {
  listen: { hostname: "0.0.0.0", port: 8002 },
  forward: { hostname: "localhost", port: 8001 },
  http: { hostname: LOCAL, port: 8080 },
  health: { hostname: LOCAL, port: 8081 },
  recoveryPath: "/var/lib/foo-proxy/stats.json",
};

/** A query that grants everything except the descriptors `deny` matches. */
function grantAllBut(
  deny: (d: PermissionNeed["descriptor"]) => boolean,
  denied: Deno.PermissionState = "denied",
) {
  return (d: PermissionNeed["descriptor"]) => deny(d) ? denied : "granted";
}

Deno.test("permissionNeeds() lists listen, forward, http, health and the recovery directory", () => {
  const needs = permissionNeeds(targets).map((n) => [n.descriptor, n.purpose]);
  assert.deepEqual(needs, [
    [{ name: "net", host: "0.0.0.0:8002" }, "listen --listen"],
    [{ name: "net", host: "localhost:8001" }, "upstream --forward"],
    [{ name: "net", host: "127.0.0.1:8080" }, "stats HTTP --http"],
    [{ name: "net", host: "127.0.0.1:8081" }, "health HTTP --health"],
    [{ name: "read", path: "/var/lib/foo-proxy" }, "recovery file --recovery-path"],
    [{ name: "write", path: "/var/lib/foo-proxy" }, "recovery file --recovery-path"],
  ]);
  const minimal = permissionNeeds({
    listen: { hostname: "::1", port: 1 },
    forward: targets.forward,
    http: null,
    health: false,
    recoveryPath: "",
  });
  assert.deepEqual(minimal.map((n) => n.target), ["[::1]:1", "localhost:8001"]);
  // Default (not asked-for) HTTP addresses are served only if granted: not needs.
  const defaults = permissionNeeds({ ...targets, httpExplicit: false, healthExplicit: false });
  assert.deepEqual(defaults.map((n) => n.purpose).filter((p) => p.includes("HTTP")), []);
  const explicit = permissionNeeds({ ...targets, httpExplicit: true, healthExplicit: true });
  assert.equal(explicit.filter((n) => n.purpose.includes("HTTP")).length, 2);
});

Deno.test("assertPermissions() passes when everything is granted and names every missing one at once", () => {
  assertPermissions(targets, { query: () => "granted", standalone: false });
  const RUN = "run: deno run --allow-net '--allow-env=FOO_PROXY_*' --allow-read=src --unstable-net";
  const TAIL = "src/main.ts proxy --recovery-path /var/lib/foo-proxy/stats.json " +
    "(deno task start cannot take more permission flags)";
  const cases: [(d: PermissionNeed["descriptor"]) => boolean, string][] = [
    [
      (d) => d.name === "net" && d.host === "localhost:8001",
      `Missing permission: net access to localhost:8001 (upstream --forward); ${RUN} ${TAIL}`,
    ],
    [
      (d) => d.name === "net" && d.host === "127.0.0.1:8081",
      `Missing permission: net access to 127.0.0.1:8081 (health HTTP --health); ${RUN} ${TAIL}`,
    ],
    [
      (d) => d.name === "write",
      "Missing permission: write access to /var/lib/foo-proxy (recovery file --recovery-path); " +
      `${RUN} --allow-write=/var/lib/foo-proxy ${TAIL}`,
    ],
    [
      (d) => d.name !== "net",
      "Missing permissions: read access to /var/lib/foo-proxy (recovery file --recovery-path), " +
      "write access to /var/lib/foo-proxy (recovery file --recovery-path); " +
      `${RUN} --allow-read=/var/lib/foo-proxy --allow-write=/var/lib/foo-proxy ${TAIL}`,
    ],
  ];
  for (const [deny, message] of cases) {
    assert.throws(
      () =>
        assertPermissions(targets, {
          query: grantAllBut(deny),
          standalone: false,
          args: ["--recovery-path", "/var/lib/foo-proxy/stats.json"],
        }),
      (error: unknown) => {
        assert.ok(error instanceof MissingPermissionError);
        assert.equal(error.name, "MissingPermissionError");
        assert.equal(error.message, message);
        assert.ok(!error.message.includes("\n"));
        return true;
      },
    );
  }
});

Deno.test("assertPermissions() treats 'prompt' as missing and words the fix for a compiled binary", () => {
  const standalone = (deny: (d: PermissionNeed["descriptor"]) => boolean) => () =>
    assertPermissions(targets, { query: grantAllBut(deny, "prompt"), standalone: true });
  assert.throws(standalone((d) => d.name === "read"), {
    name: "MissingPermissionError",
    message: "Missing permission: read access to /var/lib/foo-proxy " +
      "(recovery file --recovery-path); " +
      'rebuild the binary with "deno task compile --recovery-dir /var/lib/foo-proxy"',
  });
  // A TLS file is only read: the fix is a read grant, not --recovery-dir's read and write.
  const tlsTargets = {
    ...targets,
    recoveryPath: null,
    tlsCert: "/etc/tls/c.pem",
    tlsKey: "/k.pem",
  };
  assert.throws(
    () =>
      assertPermissions(tlsTargets, {
        query: grantAllBut((d) => d.name === "read"),
        standalone: true,
      }),
    {
      name: "MissingPermissionError",
      message: "Missing permissions: read access to /etc/tls/c.pem (TLS file --tls-cert), " +
        "read access to /k.pem (TLS file --tls-key); " +
        'rebuild the binary with "deno task compile --allow-read=/etc/tls/c.pem,/k.pem"',
    },
  );
  assert.throws(standalone((d) => d.name === "net" && d.host === "localhost:8001"), {
    name: "MissingPermissionError",
    message: "Missing permission: net access to localhost:8001 (upstream --forward); " +
      'this binary was built with a narrower --allow-net: rebuild it with "deno task compile" ' +
      "(any address) or add localhost:8001 to its --allow-net list",
  });
});

Deno.test("the proxy serves real traffic with only --allow-net=<listen>,<upstream> (no env, read or write)", async () => {
  await using upstream = await startUpstream();
  const listen = freePort();
  const up = upstream.addr.port;
  // No --http/--health flags: their default addresses are not granted, so the proxy runs
  // without them (a warning each) and serves traffic.
  await using child = spawnMain(
    ["proxy", "--listen", `${LOCAL}:${listen}`, "--forward", `${LOCAL}:${up}`],
    { permissions: [`--allow-net=${LOCAL}:${listen},${LOCAL}:${up}`] },
  );
  await child.stderr.waitFor(/Listening on/);
  {
    using conn = await connectTo(listen);
    await writeAll(conn, "REQ 1 hello\nREQ 2 world\n");
    assert.deepEqual(await lineReader(conn).readLines(2), ["ACK 1", "ACK 2"]);
  }
  child.kill("SIGTERM");
  assert.equal((await child.status()).code, 0, child.stderr.text);
  const final = JSON.parse(child.stdout.lines.at(-1)!);
  assert.equal(final.msg_req, 2);
  assert.equal(final.msg_ack, 2);
  assert.equal(upstream.requests, 2);
});

Deno.test("a missing net grant for --listen, --forward, an explicit --http or --ws-listen exits 2 with one line, opening nothing", async () => {
  await using upstream = await startUpstream();
  const listen = freePort();
  const http = freePort();
  const ws = freePort();
  const up = upstream.addr.port;
  const args = ["proxy", "--listen", `${LOCAL}:${listen}`, "--forward", `${LOCAL}:${up}`];
  const cases: [string[], string[], string[]][] = [
    // Nothing granted: every missing grant in one message, not one per run.
    [[], [], [`${LOCAL}:${listen} (listen --listen)`, `${LOCAL}:${up} (upstream --forward)`]],
    [[`--allow-net=${LOCAL}:${listen}`], [], [`${LOCAL}:${up} (upstream --forward)`]],
    [
      [`--allow-net=${LOCAL}:${listen},${LOCAL}:${up}`],
      ["--http", `${LOCAL}:${http}`, "--health", "off"],
      [`${LOCAL}:${http} (stats HTTP --http)`],
    ],
    // The edge's second listener is named too (not found only when a worker fails to bind it).
    [
      [`--allow-net=${LOCAL}:${listen},${LOCAL}:${up}`],
      ["--ws-listen", `${LOCAL}:${ws}`, "--http", "off", "--health", "off"],
      [`${LOCAL}:${ws} (WebSocket listen --ws-listen)`],
    ],
  ];
  for (const [permissions, extra, missing] of cases) {
    await using child = spawnMain([...args, ...extra], { permissions });
    assert.equal((await child.status()).code, 2, child.stderr.text);
    const text = child.stderr.text;
    assert.equal(text.split("\n").length, 2, "one line");
    assert.ok(
      text.startsWith(
        `foo-proxy: Missing permission${missing.length > 1 ? "s" : ""}: ` +
          missing.map((m) => `net access to ${m}`).join(", ") + "; ",
      ),
      text,
    );
    // The exact command that works, with the same arguments (a task cannot take more flags).
    assert.ok(
      text.includes(
        `run: deno run --allow-net '--allow-env=FOO_PROXY_*' --allow-read=src --unstable-net src/main.ts proxy ${
          [...args.slice(1), ...extra].join(" ")
        } (deno task start cannot take more permission flags)`,
      ),
      text,
    );
    assert.equal(child.stdout.text, "");
  }
  // Nothing was opened: no "Listening on" log line above, and the upstream answered nothing.
  assert.equal(upstream.requests, 0);
});

Deno.test("--recovery-path needs read and write of its directory only: missing, exit 2; granted, it persists", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-recovery-" });
  try {
    await using upstream = await startUpstream();
    const listen = freePort();
    const args = [
      "proxy",
      "--listen",
      `${LOCAL}:${listen}`,
      "--forward",
      `${LOCAL}:${upstream.addr.port}`,
      "--http",
      "off",
      "--health",
      "off",
      "--recovery-path",
      `${dir}/stats.json`,
    ];
    {
      await using denied = spawnMain(args, { permissions: ["--allow-net", `--allow-read=${dir}`] });
      assert.equal((await denied.status()).code, 2, denied.stderr.text);
      assert.ok(
        denied.stderr.text.startsWith(
          `foo-proxy: Missing permission: write access to ${dir} (recovery file --recovery-path); ` +
            `run: deno run --allow-net '--allow-env=FOO_PROXY_*' --allow-read=src --unstable-net --allow-write=${dir} src/main.ts proxy `,
        ),
        denied.stderr.text,
      );
    }
    await using child = spawnMain(args, {
      permissions: ["--allow-net", `--allow-read=${dir}`, `--allow-write=${dir}`],
    });
    await child.stderr.waitFor(/Listening on/);
    {
      using conn = await connectTo(listen);
      await writeAll(conn, "REQ 1\n");
      assert.equal(await lineReader(conn).readLine(), "ACK 1");
    }
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0, child.stderr.text);
    assert.match(await Deno.readTextFile(`${dir}/stats.json`), /"msg_req":\s*1\b/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the --config permission hint is a command that runs: `src/main.ts proxy` once, then the flags", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-config-hint-" });
  try {
    await using upstream = await startUpstream();
    const config = `${dir}/foo-proxy.jsonc`;
    await Deno.writeTextFile(
      config,
      JSON.stringify({ http: "off", health: "off", forward: `${LOCAL}:${upstream.addr.port}` }),
    );
    const listen = freePort();
    // As `deno task start` runs it: the subcommand is named.
    await using denied = spawnMain(["proxy", "--listen", `${LOCAL}:${listen}`, "--config", config]);
    assert.equal((await denied.status()).code, 2, denied.stderr.text);
    const text = denied.stderr.text;
    assert.equal(text.split("\n").length, 2, "one line");
    const hint = /; run: (deno run .*? src\/main\.ts .*?) \(deno task start cannot/.exec(text);
    assert.ok(hint, text);
    assert.match(hint[1], / src\/main\.ts proxy --listen /, "the subcommand once");
    // The hint, pasted into a shell, starts the proxy.
    await using hinted = spawnMain([], {
      shellPrefix: `exec ${hint[1].replace(/^deno /, `'${Deno.execPath()}' `)} #`,
    });
    await hinted.stderr.waitFor(/Listening on/);
    {
      using conn = await connectTo(listen);
      await writeAll(conn, "REQ 1\n");
      assert.equal(await lineReader(conn).readLine(), "ACK 1");
    }
    hinted.kill("SIGTERM");
    assert.equal((await hinted.status()).code, 0, hinted.stderr.text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("docs/permissions.md shows the line the proxy prints for a missing grant", async () => {
  // Nothing is opened before the check, so the documented ports need not be free.
  await using child = spawnMain(
    ["proxy", "--listen", "127.0.0.1:8002", "--forward", "127.0.0.1:8001"],
    { permissions: ["--allow-net=127.0.0.1:8002"] },
  );
  assert.equal((await child.status()).code, 2);
  const doc = await Deno.readTextFile(`${REPO_ROOT}docs/permissions.md`);
  assert.ok(doc.includes(`\n${child.stderr.text}`), child.stderr.text);
});
