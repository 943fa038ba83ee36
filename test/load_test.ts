import assert from "node:assert/strict";
import { parseBenchConfig, runBench } from "../src/cmd/bench.ts";
import { hashReply } from "../src/protocol/reply_hash.ts";
import {
  type LoadOptions,
  type LoadProgress,
  type LoadReport,
  runLoad,
} from "../src/tools/load.ts";
import { listenLocal, spawnMain, startUpstream, waitUntil } from "./_util.ts";

const target = (addr: Deno.NetAddr) => ({ hostname: addr.hostname, port: addr.port });

/**
 * Runs load on `to` until `until(progress)` holds (checked every 5 ms), however long that takes
 * on a loaded machine, but at most `deadlineMs`: so tests assert on counts, not on what a few
 * hundred milliseconds happened to allow. The report covers the whole run and its drain.
 */
async function loadUntil(
  to: Deno.NetAddr,
  options: LoadOptions,
  until: (progress: LoadProgress) => boolean,
  deadlineMs = 30_000,
): Promise<LoadReport> {
  const stop = new AbortController();
  const deadline = setTimeout(() => stop.abort(), deadlineMs);
  try {
    return await runLoad(target(to), {
      ...options,
      durationMs: 0,
      signal: stop.signal,
      progressIntervalMs: 5,
      onProgress: (progress) => {
        options.onProgress?.(progress);
        if (until(progress)) stop.abort();
      },
    });
  } finally {
    clearTimeout(deadline);
  }
}

/** `loadUntil` for at least `count` replies, or `count` errors (which the test then reports). */
function loadFor(to: Deno.NetAddr, options: LoadOptions, count: number): Promise<LoadReport> {
  return loadUntil(to, options, (p) => p.responses >= count || p.errors >= count);
}

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
        answered += lines.length;
      }
    } catch {
      // The client went away.
    } finally {
      if (conns.delete(conn)) conn.close();
    }
  };
  let answered = 0;
  const tasks: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      tasks.push(serve(conn));
    }
  })().catch(() => {});
  return {
    addr: listener.addr,
    /** Lines read and handed to `answer` so far, over all connections. */
    get answered(): number {
      return answered;
    },
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
    report = await loadFor(server.addr, { connections: 4, pipeline: 8, payloadBytes: 32 }, 500);
  } finally {
    await server.close();
  }
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.ok(report.responses >= 500, `only ${report.responses} replies`);
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
  const report = await loadFor(server.addr, { connections: 1 }, 30);
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.ok(report.responses >= 30, `only ${report.responses} replies`);
  assert.equal(report.naks, Math.floor(report.responses / 3));
  assert.equal(report.acks + report.naks, report.responses);
});

Deno.test("runLoad() reconnects after K replies, starting each connection at Seq 1", async () => {
  const server = await startUpstream();
  let report;
  try {
    report = await loadFor(
      server.addr,
      { connections: 2, pipeline: 2, requestsPerConnection: 5 },
      30,
    );
  } finally {
    await server.close();
  }
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.ok(report.responses >= 30, `only ${report.responses} replies`);
  // No connection carries more than K REQs: 30 replies took at least 6 connections, of which all
  // but the two open at the end completed.
  assert.ok(report.requests <= 5 * report.connectionsOpened);
  assert.ok(report.connectionsOpened >= 6, `${report.connectionsOpened} connections`);
  assert.ok(report.connectionsCompleted >= report.connectionsOpened - 2);
  assert.ok(report.connectionsPerSec > 0);
  assert.equal(server.requests, report.requests);
});

Deno.test("runLoad() in open loop never sends ahead of the rate", async () => {
  await using server = await startUpstream();
  const progress: LoadProgress[] = [];
  const report = await loadFor(server.addr, {
    connections: 2,
    rate: 400,
    onProgress: (p) => progress.push(p),
  }, 40);
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.ok(report.responses >= 40, `only ${report.responses} replies`);
  // The schedule allows rate x elapsed REQs plus one per connection, never more (the elapsed time
  // is this run's own: a slow machine sends less, never more).
  assert.ok(report.requests <= 400 * report.durationSec + 2, `${report.requests} REQs`);
  assert.ok(report.serviceLatencyMs.p50 <= report.latencyMs.p50 + 0.01);
  assert.ok(progress.length >= 1);
});

Deno.test("runLoad() catches a reply with the wrong Seq", async () => {
  await using upstream = rawUpstream((seq) => `ACK ${Number(seq) + 1}\n`);
  const report = await loadFor(upstream.addr, { connections: 1 }, 1);
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
  const report = await loadFor(upstream.addr, { connections: 1, pipeline: 2 }, 1);
  assert.ok(report.errors.wrong_seq >= 1, JSON.stringify(report.errors));
  assert.equal(report.responses, 0);
});

Deno.test("runLoad() catches a reply that is not ACK/NAK and a server that hangs up", async () => {
  {
    await using upstream = rawUpstream(() => "HELLO 1\n");
    const report = await loadFor(upstream.addr, { connections: 1 }, 1);
    assert.ok(report.errors.bad_reply >= 1, JSON.stringify(report.errors));
  }
  {
    // Replies that split inside the line are fine; a data part after the Seq is allowed.
    await using upstream = rawUpstream((seq) => `NAK ${seq} busy\r\n`);
    const report = await loadFor(upstream.addr, { connections: 1 }, 20);
    assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
    assert.ok(report.responses >= 20, `only ${report.responses} replies`);
    assert.equal(report.naks, report.responses);
  }
  {
    const listener = listenLocal();
    const closer = (async () => {
      for await (const conn of listener) conn.close();
    })().catch(() => {});
    const report = await loadFor(listener.addr, { connections: 1 }, 1);
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
        report = await loadFor(server.addr, { ...options, replies: "hash" }, 100);
      } finally {
        await server.close();
      }
      const what = JSON.stringify({ ...options, fragment, errors: report.errors });
      assert.equal(report.errorsTotal, 0, what);
      assert.ok(report.responses >= 100, what);
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
    const report = await loadFor(
      upstream.addr,
      { connections: 1, pipeline: 4, replies: "hash" },
      20,
    );
    const what = `${name}: ${JSON.stringify(report.errors)}`;
    assert.ok(report.requests >= 20, what);
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
  const report = await loadFor(upstream.addr, { connections: 1 }, 20);
  assert.equal(report.errorsTotal, 0, JSON.stringify(report.errors));
  assert.equal(report.errors.wrong_reply, 0);
  assert.ok(report.responses >= 20, `only ${report.responses} replies`);
});

Deno.test("runLoad() counts refused connections as connect errors", async () => {
  const listener = listenLocal();
  const port = listener.addr.port;
  listener.close();
  const report = await loadFor({ hostname: "127.0.0.1", port } as Deno.NetAddr, {}, 1);
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

/**
 * Runs `runBench(args)` with `--duration 0` (until stopped) and stops it once `until()` holds,
 * checked every few ms (at most 30 s); its stdout lines go to `out`.
 */
async function benchUntil(args: string[], out: string[], until: () => boolean): Promise<number> {
  const stop = new AbortController();
  const running = runBench([...args, "--duration", "0"], {
    stdout: (line) => out.push(line),
    signal: stop.signal,
  });
  try {
    await waitUntil(until, `${args.join(" ")} to have done enough`, 30_000);
  } finally {
    stop.abort();
  }
  return await running;
}

Deno.test("runBench() prints a summary, and exits 1 when a reply is wrong", async () => {
  {
    await using server = await startUpstream();
    const out: string[] = [];
    const code = await benchUntil(
      ["--connect", `127.0.0.1:${server.addr.port}`, "-q"],
      out,
      () => server.requests >= 100,
    );
    assert.equal(code, 0);
    assert.match(out.join("\n"), /responses\s+[\d,]+ \([\d,]+\/s\)/);
    assert.match(out.join("\n"), /errors\s+none/);
  }
  {
    await using upstream = rawUpstream((seq) => `ACK ${seq}0\n`);
    const out: string[] = [];
    const code = await benchUntil(
      ["--connect", `127.0.0.1:${upstream.addr.port}`, "-q", "--json"],
      out,
      () => upstream.answered >= 1,
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
    const code = await benchUntil(
      ["--connect", `127.0.0.1:${server.addr.port}`, "-q", "--json", "--replies", "hash"],
      out,
      () => server.requests >= 20,
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
      "0",
      "--json",
    ]);
    // Until SIGINT, sent once the server has answered enough: a count, not a time.
    await waitUntil(() => server.requests >= 100, "the bench's load", 30_000);
    child.kill("SIGINT");
    const status = await child.status();
    assert.equal(status.code, 0, child.stderr.text);
    assert.equal(child.stdout.lines.length, 1);
    const json = JSON.parse(child.stdout.lines[0]);
    assert.equal(json.connections, 3);
    assert.equal(json.pipeline, 4);
    assert.ok(json.responses >= 100, `${json.responses} replies`);
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
    assert.equal(child.stderr.lines.length, 1, child.stderr.text);
    assert.match(child.stderr.lines[0], /^foo-proxy: .* \(see 'foo-proxy bench --help'\)$/);
  }
});
