/**
 * The bridge engine's contract in every mode: exact in-flight limits (held bytes too), no
 * rejection from one connection reaching the process, exchanges that end once complete even
 * against servers that never close, and the last-resort handler.
 */
import assert from "node:assert/strict";
import { getLogger } from "@logtape/logtape";
import { installLastResort } from "../src/cmd/last_resort.ts";
import { Stats } from "../src/stats/stats.ts";
import { systemClock } from "../src/stats/clock.ts";
import { FooServer } from "../src/tools/server.ts";
import {
  acks,
  connectTo,
  ENGINE_MODES,
  readLines,
  readText,
  requests,
  spawnProxy,
  startProxy,
  startUpstream,
  waitUntil,
  writeAll,
} from "./_util.ts";

const LOCAL = "127.0.0.1";

/** A port nothing listens on (connects are refused) until someone binds it. */
function freePort(): number {
  using probe = Deno.listen({ hostname: LOCAL, port: 0 });
  return probe.addr.port;
}

/** Open file descriptors of process `pid` (Linux), read through `ls`. */
async function fdCount(pid: number): Promise<number> {
  const out = await new Deno.Command("ls", { args: [`/proc/${pid}/fd`] }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l !== "").length;
}

for (const mode of ENGINE_MODES) {
  Deno.test(`--max-inflight 5: the upstream never holds more than 5 unanswered REQs [${mode.name}]`, async () => {
    await using upstream = await startUpstream({ delayMs: 5 });
    await using proxy = await startProxy(upstream.addr, { ...mode.options, maxInflight: 5 });
    using client = await connectTo(proxy.addr);
    await writeAll(client, requests(1, 100, "burst"));
    assert.deepEqual(await readLines(client, 100), acks(1, 100));
    assert.equal(upstream.received, 100);
    assert.equal(upstream.maxUnanswered, 5, "the limit is reached and never passed");
  });

  Deno.test(`--max-inflight 5 holds for bytes held while the upstream was down [${mode.name}]`, async () => {
    const port = freePort();
    await using proxy = await startProxy({ hostname: LOCAL, port } as Deno.NetAddr, {
      ...mode.options,
      maxInflight: 5,
      connectRetries: 100,
      connectBackoffMs: 10,
    });
    using client = await connectTo(proxy.addr);
    await writeAll(client, requests(1, 100, "held"));
    await waitUntil(() => proxy.stats.upstreamConnectRetries > 0, "a refused dial");
    await using upstream = new FooServer({ listen: { hostname: LOCAL, port }, delayMs: 5 });
    await upstream.start();
    assert.deepEqual(await readLines(client, 100, 15_000), acks(1, 100));
    assert.equal(upstream.maxUnanswered, 5);
  });

  Deno.test(`a held burst, then an upstream that accepts and closes, ends that client only [${mode.name}]`, async () => {
    // The crash of issue 9: the pending read handed over with the held bytes rejected with
    // nobody waiting (the pump sat at the in-flight gate) and took the process down. An
    // unhandled rejection fails this test.
    const port = freePort();
    await using proxy = await startProxy({ hostname: LOCAL, port } as Deno.NetAddr, {
      ...mode.options,
      maxInflight: 5,
      connectRetries: 100,
      connectBackoffMs: 10,
      reconnectBackoffMs: 1,
      maxFailovers: 2,
    });
    using client = await connectTo(proxy.addr);
    await writeAll(client, requests(1, 100, "burst"));
    await waitUntil(() => proxy.stats.upstreamConnectRetries > 0, "a refused dial");
    const broken = new FooServer({ listen: { hostname: LOCAL, port }, closeOnAccept: true });
    await broken.start();
    assert.equal(await readText(client, 15_000), "", "closed cleanly, nothing half-relayed");
    await proxy.drained();
    await broken.close();
    const closed = proxy.stats.snapshot().connections_closed;
    assert.equal((closed.upstream_closed ?? 0) + (closed.upstream_error ?? 0), 1);
    // The proxy serves the next client.
    await using good = new FooServer({ listen: { hostname: LOCAL, port } });
    await good.start();
    using next = await connectTo(proxy.addr);
    await writeAll(next, "REQ 1\n");
    assert.deepEqual(await readLines(next, 1), ["ACK 1"]);
    assert.equal(proxy.stats.internalErrors, 0);
  });

  Deno.test(`half-close against a server that never closes: 100 clients end, fds back to baseline [${mode.name}]`, async () => {
    await using upstream = await startUpstream({ closeAfterFin: false });
    const { child, port } = await spawnProxy(upstream.addr, mode.flags);
    await using _child = child;
    const baseline = await fdCount(child.pid);
    for (let round = 0; round < 10; round++) {
      await Promise.all(Array.from({ length: 10 }, async (_, k) => {
        using conn = await connectTo(port);
        const from = 100 * round + 10 * k + 1;
        await writeAll(conn, requests(from, from + 2));
        await conn.closeWrite();
        // Every reply, then EOF from the proxy although the server never sends its FIN.
        assert.equal(await readText(conn, 5000), acks(from, from + 2).join("\n") + "\n");
      }));
    }
    await waitUntil(async () => await fdCount(child.pid) <= baseline, "the proxy's fds to settle");
    child.kill("SIGTERM");
    const snap = JSON.parse((await child.readLine()) ?? "null");
    assert.equal(snap.connections_active, 0);
    assert.equal(snap.connections_closed.completed, 100, JSON.stringify(snap.connections_closed));
    assert.equal((await child.status()).code, 0);
  });

  Deno.test(`half-close with replies never coming: closed after --half-close-timeout [${mode.name}]`, async () => {
    await using upstream = await startUpstream({ silent: true });
    await using proxy = await startProxy(upstream.addr, {
      ...mode.options,
      halfCloseTimeoutMs: 200,
    });
    using client = await connectTo(proxy.addr);
    await writeAll(client, requests(1, 3));
    await client.closeWrite();
    assert.equal(await readText(client, 5000), "");
    await proxy.drained();
    assert.deepEqual(proxy.stats.snapshot().connections_closed, { half_close_timeout: 1 });
    assert.equal(upstream.received, 3, "the REQs did reach the server");
  });

  Deno.test(`a FIN with nothing owed ends the connection at once, without the server's FIN [${mode.name}]`, async () => {
    await using upstream = await startUpstream({ closeAfterFin: false });
    await using proxy = await startProxy(upstream.addr, mode.options);
    using client = await connectTo(proxy.addr);
    await writeAll(client, "REQ 1\n");
    assert.deepEqual(await readLines(client, 1), ["ACK 1"]);
    await client.closeWrite();
    assert.equal(await readText(client, 5000), "");
    await proxy.drained();
    assert.deepEqual(proxy.stats.snapshot().connections_closed, { client_closed: 1 });
  });
}

Deno.test("the last-resort handler counts an unhandled rejection and keeps the process alive", async () => {
  const stats = new Stats({ clock: systemClock });
  const lastResort = installLastResort(stats, getLogger(["foo-proxy", "test"]));
  try {
    // A rejection nobody handles, as a bug would leave: without the handler it ends the test.
    void Promise.reject(new Error("provoked"));
    await waitUntil(() => stats.internalErrors === 1, "the rejection to be counted");
    assert.equal(stats.snapshot().internal_errors, 1);
  } finally {
    lastResort.remove();
  }
});
