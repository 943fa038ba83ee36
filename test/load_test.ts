import assert from "node:assert/strict";
import { parseBenchConfig, runBench } from "../src/cmd/bench.ts";
import { hashReply } from "../src/protocol/reply_hash.ts";
import { type LoadProgress, runLoad } from "../src/tools/load.ts";
import { listenLocal, spawnMain, startUpstream } from "./_util.ts";

const target = (addr: Deno.NetAddr) => ({ hostname: addr.hostname, port: addr.port });

/**
 * A hand-written upstream: for every REQ line it receives it calls `answer(seq, index)` (index
 * counts REQs on the connection from 0) and writes what that returns. Serves every connection
 * until closed.
 */
function rawUpstream(answer: (seq: string, index: number) => string) {
  const listener = listenLocal();
  const conns = new Set<Deno.Conn>();
  const serve = async (conn: Deno.Conn) => {
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    const buf = new Uint8Array(4096);
    let pending = "";
    let index = 0;
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        pending += decoder.decode(buf.subarray(0, n), { stream: true });
        const lines = pending.split("\n");
        pending = lines.pop()!;
        let out = "";
        for (const line of lines) out += answer(line.split(" ")[1], index++);
        if (out !== "") await conn.write(encoder.encode(out));
      }
    } catch {
      // The client went away.
    } finally {
      if (conns.delete(conn)) conn.close();
    }
  };
  const tasks: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      tasks.push(serve(conn));
    }
  })().catch(() => {});
  return {
    addr: listener.addr,
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting;
      for (const conn of conns) conn.close();
      conns.clear();
      await Promise.all(tasks);
    },
  };
}

Deno.test("runLoad() gets a verified reply for every REQ it sends to our server", async () => {
  const server = await startUpstream();
  let report;
  try {
    report = await runLoad(target(server.addr), {
      connections: 4,
      pipeline: 8,
      payloadBytes: 32,
      durationMs: 300,
    });
  } finally {
    await server.close();
  }
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.ok(report.responses > 100, `only ${report.responses} replies`);
  assert.equal(report.requests, report.responses);
  assert.equal(report.acks, report.responses);
  assert.equal(report.naks, 0);
  // Everything the generator counted, the server answered (its count is final once closed).
  assert.equal(server.requests, report.requests);
  assert.equal(server.invalid, 0);
  assert.equal(report.connectionsOpened, 4);
  assert.ok(report.latencyMs.count === report.responses);
  assert.ok(report.latencyMs.p50 > 0 && report.latencyMs.p50 <= report.latencyMs.p99);
  assert.ok(report.latencyMs.p99 <= report.latencyMs.p999);
  assert.ok(report.latencyMs.p999 <= report.latencyMs.max);
});

Deno.test("runLoad() counts NAKs apart from ACKs", async () => {
  await using server = await startUpstream({ nakEvery: 3 });
  const report = await runLoad(target(server.addr), { connections: 1, durationMs: 200 });
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.equal(report.naks, Math.floor(report.responses / 3));
  assert.equal(report.acks + report.naks, report.responses);
});

Deno.test("runLoad() reconnects after K replies, starting each connection at Seq 1", async () => {
  const server = await startUpstream();
  let report;
  try {
    report = await runLoad(target(server.addr), {
      connections: 2,
      pipeline: 2,
      requestsPerConnection: 5,
      durationMs: 300,
    });
  } finally {
    await server.close();
  }
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.ok(report.connectionsOpened >= 4, `${report.connectionsOpened} connections`);
  assert.ok(report.connectionsPerSec > 0);
  // No connection carries more than K REQs.
  assert.ok(report.requests <= 5 * report.connectionsOpened);
  assert.equal(server.requests, report.requests);
});

Deno.test("runLoad() in open loop never sends ahead of the rate", async () => {
  await using server = await startUpstream();
  const progress: LoadProgress[] = [];
  const report = await runLoad(target(server.addr), {
    connections: 2,
    rate: 400,
    durationMs: 250,
    onProgress: (p) => progress.push(p),
    progressIntervalMs: 50,
  });
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.ok(report.responses > 0);
  // The schedule allows rate x elapsed REQs plus one per connection, never more.
  assert.ok(report.requests <= 400 * report.durationSec + 2, `${report.requests} REQs`);
  assert.ok(report.serviceLatencyMs.p50 <= report.latencyMs.p50 + 0.01);
  assert.ok(progress.length >= 1);
});

Deno.test("runLoad() catches a reply with the wrong Seq", async () => {
  await using upstream = rawUpstream((seq) => `ACK ${Number(seq) + 1}\n`);
  const report = await runLoad(target(upstream.addr), { connections: 1, durationMs: 100 });
  assert.ok(report.errors.wrong_seq >= 1, JSON.stringify(report.errors));
  assert.equal(report.responses, 0);
});

Deno.test("runLoad() catches replies out of order", async () => {
  // Pairs of REQs are answered swapped: "ACK 2", "ACK 1".
  let held = "";
  await using upstream = rawUpstream((seq, index) => {
    if (index % 2 === 0) {
      held = seq;
      return "";
    }
    return `ACK ${seq}\nACK ${held}\n`;
  });
  const report = await runLoad(target(upstream.addr), {
    connections: 1,
    pipeline: 2,
    durationMs: 100,
  });
  assert.ok(report.errors.wrong_seq >= 1, JSON.stringify(report.errors));
  assert.equal(report.responses, 0);
});

Deno.test("runLoad() catches a reply that is not ACK/NAK and a server that hangs up", async () => {
  {
    await using upstream = rawUpstream(() => "HELLO 1\n");
    const report = await runLoad(target(upstream.addr), { connections: 1, durationMs: 100 });
    assert.ok(report.errors.bad_reply >= 1, JSON.stringify(report.errors));
  }
  {
    // Replies that split inside the line are fine; a data part after the Seq is allowed.
    await using upstream = rawUpstream((seq) => `NAK ${seq} busy\r\n`);
    const report = await runLoad(target(upstream.addr), { connections: 1, durationMs: 100 });
    assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
    assert.equal(report.naks, report.responses);
  }
  {
    const listener = listenLocal();
    const closer = (async () => {
      for await (const conn of listener) conn.close();
    })().catch(() => {});
    const report = await runLoad(target(listener.addr), { connections: 1, durationMs: 100 });
    listener.close();
    await closer;
    assert.ok(report.errors.closed + report.errors.read >= 1, JSON.stringify(report.errors));
  }
});

Deno.test("runLoad() with replies hash checks every reply against a hash-mode server", async () => {
  for (
    const options of [
      { connections: 3, pipeline: 8, payloadBytes: 32 },
      { connections: 2, pipeline: 4, payloadBytes: 0 },
      { connections: 2, pipeline: 3, payloadBytes: 5, requestsPerConnection: 7 },
    ]
  ) {
    for (const fragment of [false, true]) {
      const server = await startUpstream({ reply: "hash", fragment });
      let report;
      try {
        report = await runLoad(target(server.addr), {
          ...options,
          durationMs: 200,
          replies: "hash",
        });
      } finally {
        await server.close();
      }
      const what = JSON.stringify({ ...options, fragment, errors: report.errors });
      assert.equal(report.errorsTotal, 0, what);
      assert.ok(report.responses > 50, what);
      assert.equal(report.requests, report.responses, what);
      assert.equal(server.requests, report.requests, what);
      // About one hash in eight is a NAK.
      assert.ok(report.naks > 0 && report.acks > report.naks, what);
    }
  }
});

Deno.test("runLoad() with replies hash counts each reply whose type or data is wrong", async () => {
  const payload = "x".repeat(32);
  const right = (seq: string) => hashReply(`REQ ${seq} ${payload}`)!;
  const flip = (reply: string) => (reply.startsWith("ACK") ? "NAK" : "ACK") + reply.slice(3);
  const cases: [string, (seq: string) => string, boolean][] = [
    ["right", (seq) => right(seq), true],
    ["right, CRLF", (seq) => right(seq) + "\r", true],
    ["right, two spaces", (seq) => right(seq).replace(/ (?=\S+$)/, "  "), true],
    ["type flipped", (seq) => flip(right(seq)), false],
    ["hash of another payload", (seq) => hashReply(`REQ ${seq} y`)!, false],
    [
      "hash of another Seq",
      (seq) => right(seq).slice(0, -8) + right(String(Number(seq) + 1)).slice(-8),
      false,
    ],
    [
      "last hex digit changed",
      (seq) => right(seq).replace(/.$/, (d) => d === "0" ? "1" : "0"),
      false,
    ],
    ["hash in upper case", (seq) => right(seq).replace(/\S+$/, "ABCDEF12"), false],
    ["9 hex digits", (seq) => right(seq) + "0", false],
    ["7 hex digits", (seq) => right(seq).slice(0, -1), false],
    ["no data (a seq-mode server)", (seq) => `ACK ${seq}`, false],
    ["trailing word", (seq) => right(seq) + " ok", false],
    ["junk after CR", (seq) => right(seq) + "\rx", false],
    ["Seq with a leading zero", (seq) => right(seq).replace(/ (\d+) /, " 0$1 "), false],
  ];
  for (const [name, answer, ok] of cases) {
    await using upstream = rawUpstream((seq) => answer(seq) + "\n");
    const report = await runLoad(target(upstream.addr), {
      connections: 1,
      pipeline: 4,
      durationMs: 100,
      replies: "hash",
    });
    const what = `${name}: ${JSON.stringify(report.errors)}`;
    assert.ok(report.requests > 0, what);
    if (ok) {
      assert.equal(report.errorsTotal, 0, what);
      assert.equal(report.responses, report.requests, what);
    } else {
      // The Seq and the framing are right, so the connection goes on and every reply counts.
      assert.equal(report.errors.wrong_reply, report.requests, what);
      assert.equal(report.errorsTotal, report.errors.wrong_reply, what);
      assert.equal(report.responses, 0, what);
    }
  }
});

Deno.test("runLoad() with replies seq ignores the data, so it cannot see a wrong hash", async () => {
  await using upstream = rawUpstream((seq) => `ACK ${seq} 00000000\n`);
  const report = await runLoad(target(upstream.addr), { connections: 1, durationMs: 100 });
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.equal(report.errors.wrong_reply, 0);
  assert.ok(report.responses > 0);
});

Deno.test("runLoad() counts refused connections as connect errors", async () => {
  const listener = listenLocal();
  const port = listener.addr.port;
  listener.close();
  const report = await runLoad({ hostname: "127.0.0.1", port }, { durationMs: 100 });
  assert.ok(report.errors.connect >= 1);
  assert.equal(report.responses, 0);
});

Deno.test("runLoad() rejects bad options", async () => {
  const to = { hostname: "127.0.0.1", port: 1 };
  await assert.rejects(runLoad(to, { connections: 0 }), RangeError);
  await assert.rejects(runLoad(to, { pipeline: 1.5 }), RangeError);
  await assert.rejects(runLoad(to, { rate: -1 }), RangeError);
  await assert.rejects(
    runLoad(to, { replies: "md5" as "hash" }),
    { name: "RangeError", message: /Invalid replies "md5"/ },
  );
});

Deno.test("runBench() prints a summary, and exits 1 when a reply is wrong", async () => {
  {
    await using server = await startUpstream();
    const out: string[] = [];
    const code = await runBench(
      ["--connect", `127.0.0.1:${server.addr.port}`, "--duration", "200ms", "-q"],
      { stdout: (line) => out.push(line) },
    );
    assert.equal(code, 0);
    assert.match(out.join("\n"), /responses\s+[\d,]+ \([\d,]+\/s\)/);
    assert.match(out.join("\n"), /errors\s+none/);
  }
  {
    await using upstream = rawUpstream((seq) => `ACK ${seq}0\n`);
    const out: string[] = [];
    const code = await runBench(
      ["--connect", `127.0.0.1:${upstream.addr.port}`, "--duration", "100ms", "-q", "--json"],
      { stdout: (line) => out.push(line) },
    );
    assert.equal(code, 1);
    const json = JSON.parse(out[0]);
    assert.ok(json.errors.wrong_seq >= 1);
    assert.ok(json.errors_total >= 1);
  }
});

Deno.test("runBench() --replies hash passes against a hash server and fails on a seq one", async () => {
  assert.equal(parseBenchConfig([]).replies, "seq");
  assert.equal(parseBenchConfig(["--replies", "hash"]).replies, "hash");
  assert.throws(() => parseBenchConfig(["--replies", "crc"]), {
    name: "UsageError",
    message: /"crc" for --replies: expected seq\|hash/,
  });
  for (const reply of ["hash", "seq"] as const) {
    await using server = await startUpstream({ reply });
    const out: string[] = [];
    const code = await runBench(
      ["--connect", `127.0.0.1:${server.addr.port}`, "--duration", "150ms", "-q", "--json"]
        .concat(["--replies", "hash"]),
      { stdout: (line) => out.push(line) },
    );
    const json = JSON.parse(out[0]);
    assert.equal(json.replies, "hash");
    if (reply === "hash") {
      assert.equal(code, 0, out[0]);
      assert.equal(json.errors_total, 0);
    } else {
      assert.equal(code, 1, out[0]);
      assert.ok(json.errors.wrong_reply >= 1);
      assert.equal(json.errors_total, json.errors.wrong_reply);
    }
  }
});

Deno.test("foo-proxy bench --json prints one JSON object; a bad flag exits 2", async () => {
  await using server = await startUpstream();
  {
    await using child = spawnMain([
      "bench",
      "--connect",
      `127.0.0.1:${server.addr.port}`,
      "--connections",
      "3",
      "--pipeline",
      "4",
      "--duration",
      "300ms",
      "--json",
    ]);
    const status = await child.status();
    assert.equal(status.code, 0, child.stderr.text);
    assert.equal(child.stdout.lines.length, 1);
    const json = JSON.parse(child.stdout.lines[0]);
    assert.equal(json.connections, 3);
    assert.equal(json.pipeline, 4);
    assert.ok(json.responses_per_sec > 0);
    assert.equal(json.errors_total, 0);
    assert.equal(json.responses, json.requests);
    for (const key of ["latency_p50_ms", "latency_p99_ms", "latency_p999_ms"]) {
      assert.equal(typeof json[key], "number", key);
    }
  }
  for (const args of [["--pipeline", "0"], ["--bogus"], ["--rate", "fast"]]) {
    await using child = spawnMain(["bench", ...args]);
    const status = await child.status();
    assert.equal(status.code, 2, args.join(" "));
    assert.equal(child.stderr.lines.length, 2, child.stderr.text);
    assert.match(child.stderr.lines[0], /^foo-proxy: /);
    assert.equal(child.stderr.lines[1], "Run 'foo-proxy bench --help' for usage.");
  }
});
