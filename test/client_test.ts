import assert from "node:assert/strict";
import type { Address } from "../src/net/address.ts";
import { parseClientConfig, runClientCommand } from "../src/cmd/client.ts";
import { formatMessage, parseMessage } from "../src/protocol/message.ts";
import { ClientError, type ClientOptions, runClient } from "../src/tools/client.ts";
import {
  lineReader,
  listenLocal,
  readText,
  spawnMain,
  startUpstream,
  withTimeout,
  writeAll,
} from "./_util.ts";

const local = (port: number): Address => ({ hostname: "127.0.0.1", port });

/**
 * A hand-written server for one connection: `handler` gets the accepted socket (closed after it
 * returns). Dispose it to close the listener and wait for the handler.
 */
function rawServer(
  handler: (conn: Deno.TcpConn) => Promise<void>,
): { address: Address } & AsyncDisposable {
  const listener = listenLocal();
  const task = (async () => {
    const conn = await listener.accept();
    try {
      await handler(conn);
    } finally {
      conn.close();
    }
  })().catch(() => {}); // a client that went away early is what several tests provoke
  return {
    address: local(listener.addr.port),
    async [Symbol.asyncDispose]() {
      listener.close();
      await task;
    },
  };
}

/** Answers each REQ line with `reply(seq)` (lines joined as given) until the client closes. */
function answering(reply: (seq: number) => string): (conn: Deno.TcpConn) => Promise<void> {
  return async (conn) => {
    const lines = lineReader(conn);
    for (;;) {
      const line = await lines.readLine();
      if (line === null) return;
      const message = parseMessage(line);
      if (message) await writeAll(conn, reply(message.seq));
    }
  };
}

async function clientFailure(options: ClientOptions): Promise<ClientError> {
  const error = await withTimeout(runClient(options), 10_000, "the client").then(
    () => assert.fail("the client should have failed"),
    (error) => error,
  );
  assert.ok(error instanceof ClientError, String(error));
  assert.equal(error.name, "ClientError");
  return error;
}

Deno.test("parseMessage and formatMessage follow the grammar", () => {
  assert.equal(formatMessage("REQ", 7), "REQ 7\n");
  assert.equal(formatMessage("REQ", 7, "some data"), "REQ 7 some data\n");
  assert.deepEqual(parseMessage("ACK 7"), { type: "ACK", seq: 7, seqText: "7" });
  assert.deepEqual(parseMessage("NAK\t007 why not\r"), {
    type: "NAK",
    seq: 7,
    seqText: "007",
    data: "why not",
  });
  for (const bad of ["", "ACK", "ACK ", "ACK x", "ACK 7x", "ACK 7\rx", "ack 7", "ACK7", "FOO 1"]) {
    assert.equal(parseMessage(bad), null, JSON.stringify(bad));
  }
});

Deno.test("runClient drives several pipelining connections and counts every reply", async () => {
  await using server = await startUpstream();
  const progress: number[] = [];
  const result = await runClient({
    connect: local(server.addr.port),
    requests: 50,
    pipeline: 8,
    connections: 4,
    payload: 16,
    onProgress: (verified, total) => {
      assert.equal(total, 200);
      progress.push(verified);
    },
  });
  assert.deepEqual(
    [result.connections, result.requests, result.acks, result.naks],
    [4, 200, 200, 0],
  );
  assert.equal(server.requests, 200);
  assert.equal(progress.at(-1), 200);
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b));
});

Deno.test("runClient counts NAKs and copes with a fragmenting, delaying server", async () => {
  await using server = await startUpstream({ nakEvery: 3, fragment: true, delayMs: 2 });
  const result = await runClient({
    connect: local(server.addr.port),
    requests: 9,
    pipeline: 4,
    connections: 2,
  });
  assert.deepEqual([result.requests, result.acks, result.naks], [18, 12, 6]);
});

Deno.test("runClient keeps at most `pipeline` REQs in flight", async () => {
  let overrun = false;
  await using server = rawServer(async (conn) => {
    // Reply only once `pipeline` REQs are outstanding (a client that under-fills the pipeline
    // times out), and look for bytes beyond them (a client that over-fills it).
    const lines = lineReader(conn);
    let next = 1;
    for (;;) {
      const batch = await lines.readLines(3).catch(() => null);
      if (batch === null) return;
      if (lines.buffered.length > 0) overrun = true;
      await writeAll(conn, batch.map(() => `ACK ${next++}\n`).join(""));
    }
  });
  const result = await runClient({
    connect: server.address,
    requests: 12,
    pipeline: 3,
    timeoutMs: 5000,
  });
  assert.equal(result.acks, 12);
  assert.equal(overrun, false);
});

Deno.test("runClient fails on a reply with the wrong Seq", async () => {
  await using server = rawServer(answering((seq) => `ACK ${seq + 8}\n`));
  const error = await clientFailure({ connect: server.address, requests: 5 });
  assert.equal(error.message, 'expected reply to seq 1, got "ACK 9"');
  assert.equal(error.connection, 1);
});

Deno.test("runClient fails on a reply out of order", async () => {
  await using server = rawServer(answering((seq) => seq === 2 ? "" : `ACK ${seq}\n`));
  const error = await clientFailure({ connect: server.address, requests: 5, pipeline: 5 });
  assert.equal(error.message, 'expected reply to seq 2, got "ACK 3"');
});

Deno.test("runClient fails on a reply that is not ACK or NAK", async () => {
  await using server = rawServer(answering((seq) => `REQ ${seq}\n`));
  const error = await clientFailure({ connect: server.address, requests: 5 });
  assert.equal(error.message, 'expected reply to seq 1, got "REQ 1"');
});

Deno.test("runClient fails on an extra reply", async () => {
  await using server = rawServer(answering((seq) => `ACK ${seq}\nACK ${seq}\n`));
  const error = await clientFailure({ connect: server.address, requests: 1 });
  assert.equal(error.message, 'unexpected line after the last reply: "ACK 1"');
});

Deno.test("runClient fails when data follows the last reply before the server closes", async () => {
  await using server = rawServer(async (conn) => {
    await answering((seq) => `ACK ${seq}\n`)(conn); // returns at the client's half-close
    await writeAll(conn, "ACK 3\n");
  });
  const error = await clientFailure({ connect: server.address, requests: 2 });
  assert.equal(error.message, 'unexpected data after the last reply: "ACK 3"');
});

Deno.test("runClient fails when the server closes with replies missing", async () => {
  await using server = rawServer(async (conn) => {
    const lines = lineReader(conn);
    await lines.readLines(2);
    await writeAll(conn, "ACK 1\nACK 2\nAC");
    // FIN, not RST: read what the client still sends until it gives up and closes.
    conn.closeWrite();
    await readText(conn);
  });
  const error = await clientFailure({ connect: server.address, requests: 5, pipeline: 2 });
  assert.equal(error.message, 'connection closed with 3 replies missing (and a partial line "AC")');
});

Deno.test("runClient fails when no reply comes within the timeout", async () => {
  await using server = rawServer(async (conn) => void await readText(conn));
  const error = await clientFailure({ connect: server.address, requests: 1, timeoutMs: 100 });
  assert.equal(error.message, "no reply to seq 1 within 100 ms");
});

Deno.test("runClient names the failing connection and stops the others", async () => {
  let accepted = 0;
  const listener = listenLocal();
  const served = (async () => {
    const conns: Deno.TcpConn[] = [];
    try {
      for (let i = 0; i < 3; i++) conns.push(await listener.accept());
      accepted = conns.length;
      // Answer nobody but the second connection, and that one wrongly.
      const [, second] = conns;
      await lineReader(second).readLine();
      await writeAll(second, "NAK 2\n");
      await Promise.all(conns.map((conn) => readText(conn).catch(() => "")));
    } finally {
      for (const conn of conns) conn.close();
    }
  })();
  try {
    const error = await clientFailure({
      connect: local(listener.addr.port),
      connections: 3,
      requests: 1,
    });
    assert.match(error.message, /^connection \d: expected reply to seq 1, got "NAK 2"$/);
  } finally {
    listener.close();
    await served;
  }
  assert.equal(accepted, 3);
});

Deno.test("runClient fails clearly against a closed port", async () => {
  const listener = listenLocal();
  const port = listener.addr.port;
  listener.close();
  const error = await clientFailure({ connect: local(port) });
  assert.equal(error.message, `Cannot connect to "127.0.0.1:${port}": connection refused`);
  assert.ok(error.cause instanceof Deno.errors.ConnectionRefused);
});

Deno.test("runClient stops with a ClientError when its signal aborts", async () => {
  await using server = rawServer(async (conn) => void await readText(conn));
  const controller = new AbortController();
  const run = runClient({ connect: server.address, signal: controller.signal });
  controller.abort();
  await assert.rejects(run, { name: "ClientError", message: "interrupted" });
});

Deno.test("parseClientConfig reads flags and FOO_PROXY_* variables", () => {
  const config = parseClientConfig(
    ["-connect=127.0.0.1:9", "--requests", "5", "--pipeline=3"],
    (name) => ({ FOO_PROXY_CONNECTIONS: "4", FOO_PROXY_REQUESTS: "99" })[name],
  );
  assert.deepEqual(config, {
    connect: local(9),
    ws: undefined,
    requests: 5,
    pipeline: 3,
    connections: 4,
    payload: 0,
    timeoutMs: 10_000,
    logLevel: "warning",
    logFormat: "text",
    help: false,
    version: false,
  });
  assert.deepEqual(parseClientConfig([]).connect, { hostname: "localhost", port: 8002 });
  for (
    const bad of [["--pipeline", "0"], ["--connections", "x"], ["--connect", ":0"], ["--nope"]]
  ) {
    assert.throws(() => parseClientConfig(bad), { name: "UsageError" }, bad.join(" "));
  }
});

Deno.test("parseClientConfig takes --ws ws:// and wss:// URLs only", () => {
  assert.equal(parseClientConfig(["--ws=ws://127.0.0.1:9"]).ws, "ws://127.0.0.1:9/");
  assert.equal(parseClientConfig(["--ws", "wss://h.example/x"]).ws, "wss://h.example/x");
  for (const bad of ["http://127.0.0.1:9/", "127.0.0.1:9", "ws://"]) {
    assert.throws(() => parseClientConfig([`--ws=${bad}`]), { name: "UsageError" }, bad);
  }
});

Deno.test("runClientCommand prints progress dots then OK!", async () => {
  await using server = await startUpstream();
  const lines: string[] = [];
  const code = await runClientCommand(
    ["--connect", `127.0.0.1:${server.addr.port}`, "--requests", "30", "--log-level", "error"],
    { stdout: (line) => lines.push(line) },
  );
  assert.equal(code, 0);
  assert.deepEqual(lines, ["..........OK!"]);
});

Deno.test("foo-proxy client exits 0 with OK! against the server", async () => {
  await using server = await startUpstream({ nakEvery: 5 });
  await using child = spawnMain([
    "client",
    "--connect",
    `127.0.0.1:${server.addr.port}`,
    "--requests",
    "100",
    "--pipeline",
    "10",
    "--connections",
    "3",
    "--payload",
    "32",
  ]);
  await child.waitForLine(/^\.{10}OK!$/);
  assert.equal((await child.status()).code, 0, child.stderr.text);
  assert.equal(server.requests, 300);
});

Deno.test("foo-proxy client exits 1 saying what was wrong", async () => {
  await using server = rawServer(answering((seq) => `ACK ${seq + 1}\n`));
  await using child = spawnMain(["client", "--connect", `127.0.0.1:${server.address.port}`]);
  assert.equal((await child.status()).code, 1);
  assert.match(child.stderr.text, /^foo-proxy client: expected reply to seq 1, got "ACK 2"$/m);
  assert.doesNotMatch(child.stdout.text, /OK!/);
});

Deno.test("foo-proxy client exits 1 on a refused connection and 2 on a bad flag", async () => {
  const listener = listenLocal();
  const port = listener.addr.port;
  listener.close();
  {
    await using child = spawnMain(["client", "--connect", `127.0.0.1:${port}`]);
    assert.equal((await child.status()).code, 1);
    assert.match(child.stderr.text, /connection refused/);
  }
  {
    await using child = spawnMain(["client", "--requests", "many"]);
    assert.equal((await child.status()).code, 2);
    assert.match(child.stderr.text, /--requests[^\n]* \(see 'foo-proxy client --help'\)\n$/);
  }
});
