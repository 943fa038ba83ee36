import assert from "node:assert/strict";
import { Proxy } from "../src/proxy/proxy.ts";
import { FooServer } from "../src/tools/server.ts";
import { listenLocal } from "./_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const LOCAL = { hostname: "127.0.0.1", port: 0 };

/** Reads from `conn` until `done(text)` holds or EOF; bounded by `timeoutMs`. */
async function readUntil(
  conn: Deno.Conn,
  done: (text: string, bytes: Uint8Array) => boolean,
  timeoutMs = 5000,
): Promise<{ text: string; bytes: Uint8Array; eof: boolean }> {
  const buf = new Uint8Array(65536);
  let bytes = new Uint8Array(0);
  let text = "";
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    while (!done(text, bytes)) {
      const n = await conn.read(buf);
      if (n === null) return { text, bytes, eof: true };
      const joined = new Uint8Array(bytes.length + n);
      joined.set(bytes);
      joined.set(buf.subarray(0, n), bytes.length);
      bytes = joined;
      text = decoder.decode(bytes);
    }
    return { text, bytes, eof: false };
  } catch (error) {
    const tail = JSON.stringify(text.slice(-200));
    throw new Error(`read timed out after ${timeoutMs} ms with ${tail}`, { cause: error });
  } finally {
    clearTimeout(timer);
  }
}

const lines = (n: number) => (text: string) => text.split("\n").length > n;

async function startPair(server: Partial<ConstructorParameters<typeof FooServer>[0]> = {}) {
  const upstream = new FooServer({ listen: LOCAL, ...server });
  const addr = await upstream.start();
  const proxy = new Proxy({ listen: LOCAL, forward: { hostname: addr.hostname, port: addr.port } });
  await proxy.start();
  return {
    upstream,
    proxy,
    connect: () => Deno.connect({ hostname: "127.0.0.1", port: proxy.addr.port }),
    async [Symbol.asyncDispose]() {
      await proxy.close();
      await upstream.close();
    },
  };
}

function requests(from: number, to: number, data = ""): string {
  let out = "";
  for (let seq = from; seq <= to; seq++) out += `REQ ${seq}${data}\n`;
  return out;
}

Deno.test("proxy relays 500 pipelined REQs in one write and counts each message exactly", async () => {
  await using pair = await startPair({ nakEvery: 5 });
  using conn = await pair.connect();
  await conn.write(encoder.encode(requests(1, 500, " payload")));
  const { text } = await readUntil(conn, lines(500));
  const replies = text.trimEnd().split("\n");
  assert.equal(replies.length, 500);
  replies.forEach((line, i) => assert.match(line, new RegExp(`^(ACK|NAK) ${i + 1}$`)));
  const snap = pair.proxy.stats.snapshot();
  assert.equal(snap.msg_req, 500);
  assert.equal(snap.msg_ack, 400);
  assert.equal(snap.msg_nak, 100);
  assert.equal(snap.msg_total, 1000);
  assert.equal(snap.msg_invalid, 0);
  assert.equal(snap.bytes_downstream, encoder.encode(requests(1, 500, " payload")).length);
  assert.ok(snap.request_rate_1s > 0 && snap.response_rate_10s > 0);
});

Deno.test("proxy forwards each fragment as it arrives, without waiting for the newline", async () => {
  using raw = listenLocal();
  await using proxy = new Proxy({ listen: LOCAL, forward: raw.addr as Deno.NetAddr });
  await proxy.start();
  using client = await Deno.connect({ hostname: "127.0.0.1", port: proxy.addr.port });
  using server = await raw.accept();
  for (const piece of ["REQ 5", " da", "ta\nREQ 6\nRE"]) {
    await client.write(encoder.encode(piece));
    const { text } = await readUntil(server, (t) => t === piece);
    assert.equal(text, piece, "the fragment arrives unchanged before the rest is sent");
  }
  await server.write(encoder.encode("AC"));
  assert.equal((await readUntil(client, (t) => t === "AC")).text, "AC");
  await server.write(encoder.encode("K 5\nACK 6\n"));
  assert.equal((await readUntil(client, lines(2))).text, "K 5\nACK 6\n");
  assert.equal(proxy.stats.counts.msg_req, 2);
  assert.equal(proxy.stats.counts.msg_ack, 2);
});

Deno.test("proxy forwards invalid lines unchanged and counts them apart from msg_total", async () => {
  using raw = listenLocal();
  await using proxy = new Proxy({ listen: LOCAL, forward: raw.addr as Deno.NetAddr });
  await proxy.start();
  using client = await Deno.connect({ hostname: "127.0.0.1", port: proxy.addr.port });
  using server = await raw.accept();
  // Invalid UTF-8 and NUL bytes too: the bytes must arrive exactly as sent.
  const up = Uint8Array.from([
    ...encoder.encode("HELLO\nREQ x\nACK 1\nREQ 1\r\n"),
    ...[0, 0xff, 0xfe, 10],
  ]);
  await client.write(up);
  const got = await readUntil(server, (_t, bytes) => bytes.length >= up.length);
  assert.deepEqual(got.bytes, up);
  const down = "REQ 1\nACK 1\nNAK\nwhat\n";
  await server.write(encoder.encode(down));
  assert.equal((await readUntil(client, lines(4))).text, down);
  const snap = proxy.stats.snapshot();
  assert.equal(snap.msg_req, 1);
  assert.equal(snap.msg_ack, 1);
  assert.equal(snap.msg_total, 2);
  assert.deepEqual(snap.msg_invalid_by_kind, { type: 3, seq: 2, direction: 2, truncated: 0 });
  assert.equal(snap.msg_invalid, 7);
});

Deno.test("proxy keeps relaying replies after the client half-closes", async () => {
  await using pair = await startPair({ delayMs: 20 });
  using conn = await pair.connect();
  await conn.write(encoder.encode(requests(1, 50)));
  await conn.closeWrite();
  const { text, eof } = await readUntil(conn, () => false);
  assert.equal(eof, true);
  assert.equal(text.trimEnd().split("\n").length, 50, "every owed reply arrives after the FIN");
  await pair.proxy.drained();
  const snap = pair.proxy.stats.snapshot();
  assert.equal(snap.msg_ack, 50);
  assert.equal(snap.connections_closed.completed, 1, "ended once every owed reply was relayed");
  assert.equal(snap.connections_active, 0);
});

Deno.test("proxy closes the client after relaying what an upstream sent before closing first", async () => {
  using raw = listenLocal();
  await using proxy = new Proxy({ listen: LOCAL, forward: raw.addr as Deno.NetAddr });
  await proxy.start();
  using client = await Deno.connect({ hostname: "127.0.0.1", port: proxy.addr.port });
  const server = await raw.accept();
  await client.write(encoder.encode("REQ 1\nREQ 2\n"));
  await readUntil(server, lines(2));
  await server.write(encoder.encode("ACK 1\n"));
  server.close();
  const { text, eof } = await readUntil(client, () => false);
  assert.equal(text, "ACK 1\n");
  assert.equal(eof, true);
  await proxy.drained();
  assert.deepEqual(proxy.stats.snapshot().connections_closed, { upstream_closed: 1 });
});

Deno.test("proxy closes the client cleanly when the upstream refuses, and keeps serving", async () => {
  const probe = Deno.listen(LOCAL);
  const port = probe.addr.port;
  probe.close(); // nothing listens there now: connects are refused
  await using proxy = new Proxy({ listen: LOCAL, forward: { hostname: "127.0.0.1", port } });
  await proxy.start();
  for (let i = 0; i < 3; i++) {
    using conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.addr.port });
    await conn.write(encoder.encode("REQ 1\n")).catch(() => 0);
    assert.equal((await readUntil(conn, () => false).catch(() => ({ eof: true }))).eof, true);
  }
  await proxy.drained();
  let snap = proxy.stats.snapshot();
  assert.equal(snap.upstream_errors, 3);
  assert.equal(snap.connections_closed.upstream_unreachable, 3);
  // The upstream comes back on the same port: the same proxy serves it.
  await using upstream = new FooServer({ listen: { hostname: "127.0.0.1", port } });
  await upstream.start();
  using conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.addr.port });
  await conn.write(encoder.encode("REQ 1\n"));
  assert.equal((await readUntil(conn, lines(1))).text, "ACK 1\n");
  snap = proxy.stats.snapshot();
  assert.equal(snap.msg_ack, 1);
});

Deno.test("proxy serves 40 concurrent pipelining connections with exact totals", async () => {
  await using pair = await startPair({ fragment: true });
  const perConnection = 100;
  await Promise.all(Array.from({ length: 40 }, async (_, c) => {
    using conn = await pair.connect();
    // Coalesced and split writes: half in one write, half in 7-byte pieces.
    const half = encoder.encode(requests(1, perConnection / 2, ` c${c}`));
    await conn.write(half);
    const rest = encoder.encode(requests(perConnection / 2 + 1, perConnection));
    for (let i = 0; i < rest.length; i += 7) await conn.write(rest.subarray(i, i + 7));
    const { text } = await readUntil(conn, lines(perConnection), 15_000);
    const got = text.trimEnd().split("\n");
    assert.equal(got.length, perConnection);
    got.forEach((line, i) => assert.equal(line, `ACK ${i + 1}`));
  }));
  await pair.proxy.drained();
  const snap = pair.proxy.stats.snapshot();
  assert.equal(snap.msg_req, 40 * perConnection);
  assert.equal(snap.msg_ack, 40 * perConnection);
  assert.equal(snap.connections_total, 40);
  assert.equal(snap.connections_closed.client_closed, 40);
});

Deno.test("proxy rejects connections past --max-connections and keeps the others", async () => {
  await using upstream = new FooServer({ listen: LOCAL });
  const addr = await upstream.start();
  await using proxy = new Proxy({ listen: LOCAL, forward: addr, maxConnections: 2 });
  await proxy.start();
  const connect = () => Deno.connect({ hostname: "127.0.0.1", port: proxy.addr.port });
  using a = await connect();
  using b = await connect();
  for (const conn of [a, b]) {
    await conn.write(encoder.encode("REQ 1\n"));
    await readUntil(conn, lines(1));
  }
  using c = await connect();
  assert.equal((await readUntil(c, () => false)).eof, true);
  await a.write(encoder.encode("REQ 2\n"));
  assert.equal((await readUntil(a, lines(1))).text, "ACK 2\n");
  assert.equal(proxy.stats.snapshot().connections_rejected, 1);
});
