import assert from "node:assert/strict";
import { UpstreamProbe } from "../src/proxy/upstream_probe.ts";
import { startUpstream, withTimeout } from "./_util.ts";

/** A port on 127.0.0.1 where nothing listens (bound, then released). */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

Deno.test("UpstreamProbe.start() resolves true and marks a listening upstream reachable", async () => {
  await using upstream = await startUpstream();
  await using probe = new UpstreamProbe(upstream.addr, { intervalMs: 60_000 });
  assert.equal(probe.reachable, false);
  assert.match(probe.detail, /not probed yet/);
  assert.equal(await withTimeout(probe.start(), 5000, "the first probe"), true);
  assert.equal(probe.reachable, true);
  assert.equal(probe.lastError, undefined);
  assert.ok(probe.lastOk !== undefined);
  assert.match(probe.detail, /accepted a connection/);
});

Deno.test("UpstreamProbe reports a refused upstream as unreachable with the reason", async () => {
  const port = closedPort();
  await using probe = new UpstreamProbe({ hostname: "127.0.0.1", port }, { intervalMs: 60_000 });
  assert.equal(await withTimeout(probe.start(), 5000, "the first probe"), false);
  assert.equal(probe.reachable, false);
  assert.match(
    probe.lastError ?? "",
    /Cannot dial upstream "127\.0\.0\.1:\d+": connection refused/,
  );
  assert.match(probe.detail, /connection refused \(last success: never\)/);
});

Deno.test("UpstreamProbe keeps probing every interval until closed", async () => {
  await using upstream = await startUpstream();
  const three = Promise.withResolvers<void>();
  let results = 0;
  const probe = new UpstreamProbe(upstream.addr, {
    intervalMs: 5,
    onProbe: () => {
      if (++results === 3) three.resolve();
    },
  });
  await probe.start();
  await withTimeout(three.promise, 5000, "three probes");
  await probe.close();
  await withTimeout(probe.finished, 5000, "the probe to finish");
  const after = probe.probes;
  assert.ok(after >= 3);
  await probe.close(); // idempotent
  assert.equal(probe.probes, after);
});

Deno.test("UpstreamProbe notices an upstream going away and coming back", async () => {
  // Coming back means listening on the same port again, which another process may grab in
  // between; then the whole scenario is rerun on a fresh port. It never passes without running.
  const attempts = 5;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const first = await startUpstream();
    const addr = first.addr;
    let now = 0;
    await using probe = new UpstreamProbe(addr, {
      intervalMs: 60_000,
      freshMs: 1000,
      clock: () => now,
    });
    assert.equal(await probe.probeOnce(), true);
    await first.close();
    now = 500;
    assert.equal(await probe.probeOnce(), false);
    // One failed probe does not flap readiness while the last success is fresh...
    assert.equal(probe.reachable, true);
    assert.match(probe.detail, /connection refused \(last success: 0\.5 s ago\)/);
    // ...but once it is stale the upstream is unreachable.
    now = 1001;
    assert.equal(probe.reachable, false);
    let again;
    try {
      again = await startUpstream({ listen: { hostname: addr.hostname, port: addr.port } });
    } catch (error) {
      if (error instanceof Deno.errors.AddrInUse) continue; // the port was taken meanwhile
      throw error;
    }
    await using _again = again;
    assert.equal(await probe.probeOnce(), true);
    assert.equal(probe.reachable, true);
    assert.equal(probe.lastOk, 1001);
    return;
  }
  assert.fail(`the upstream's port was taken before it could listen again, ${attempts} times`);
});

Deno.test("UpstreamProbe.reportSuccess() counts a real dial as proof of reachability", () => {
  let now = 10;
  const probe = new UpstreamProbe({ hostname: "127.0.0.1", port: 1 }, { clock: () => now });
  probe.reportSuccess();
  assert.equal(probe.lastOk, 10);
  assert.equal(probe.reachable, true);
  now = 1_000_000;
  assert.equal(probe.reachable, false);
});

Deno.test("UpstreamProbe stops when its signal aborts", async () => {
  await using upstream = await startUpstream();
  const controller = new AbortController();
  const probe = new UpstreamProbe(upstream.addr, {
    intervalMs: 60_000,
    signal: controller.signal,
  });
  assert.equal(await probe.start(), true);
  controller.abort();
  await withTimeout(probe.finished, 5000, "the probe to stop");
});

Deno.test("UpstreamProbe rejects a bad interval", () => {
  const addr = { hostname: "127.0.0.1", port: 1 };
  assert.throws(() => new UpstreamProbe(addr, { intervalMs: 0 }), RangeError);
  assert.throws(() => new UpstreamProbe(addr, { timeoutMs: -1 }), RangeError);
});
