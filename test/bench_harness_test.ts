import assert from "node:assert/strict";
import { e2eRatios, e2eTargets, parseE2eConfig } from "../bench/e2e.ts";
import { fmt, median, pairedRatio, ratio, rotate } from "../bench/harness/numbers.ts";
import { comparisonTable, ratiosTo, summaryTable } from "../bench/harness/report.ts";
import { fooVariants, parseModes, parseTarget } from "../bench/harness/target_list.ts";
import { startServer } from "../bench/harness/foo_server.ts";
import { haproxyConfig } from "../bench/harness/haproxy_config.ts";
import { forwardFlag, grantFile, startTarget } from "../bench/harness/target.ts";

Deno.test("harness median() takes the middle of the finite values", () => {
  const cases: [number[], number][] = [
    [[3, 1, 2], 2],
    [[4, 1, 3, 2], 2.5],
    [[5], 5],
    [[1, NaN, 3], 2],
    [[], NaN],
    [[NaN], NaN],
  ];
  for (const [xs, want] of cases) assert.deepEqual(median(xs), want, `median(${xs})`);
});

Deno.test("harness pairedRatio() is the median of per-round ratios, rounds paired by index", () => {
  assert.equal(pairedRatio([2, 4, 9], [1, 2, 3]), 2);
  assert.equal(pairedRatio([2, 4, 9, 100], [1, 2, 3]), 2); // an unpaired round is left out
  assert.deepEqual(pairedRatio([], [1]), NaN);
});

Deno.test("harness ratio() and fmt() print — for what cannot be computed", () => {
  const ratios: [number, number, string][] = [
    [1, 2, "0.50×"],
    [3, 1, "3.00×"],
    [1, 0, "—"],
    [NaN, 1, "—"],
    [1, Infinity, "—"],
  ];
  for (const [a, b, want] of ratios) assert.equal(ratio(a, b), want, `${a} ÷ ${b}`);
  assert.equal(fmt(1234567), "1,234,567");
  assert.equal(fmt(1.5, 2), "1.50");
  assert.equal(fmt(NaN), "—");
});

Deno.test("harness rotate() starts each round with the next target", () => {
  assert.deepEqual(rotate(["a", "b", "c"], 0), ["a", "b", "c"]);
  assert.deepEqual(rotate(["a", "b", "c"], 1), ["b", "c", "a"]);
  assert.deepEqual(rotate(["a", "b", "c"], 4), ["b", "c", "a"]);
  assert.deepEqual(rotate([], 3), []);
});

Deno.test("--modes turns each entry into a foo-proxy column with its flags", () => {
  assert.deepEqual(parseModes("1:1,pool=64,mux=2"), [
    { key: "1:1", flags: [] },
    { key: "pool=64", flags: ["--pool", "64"] },
    { key: "mux=2", flags: ["--mux", "2"] },
  ]);
  assert.deepEqual(parseModes("resume"), [{ key: "resume", flags: ["--resume"] }]);
  assert.deepEqual(parseModes("max-inflight=500"), [
    { key: "max-inflight=500", flags: ["--max-inflight", "500"] },
  ]);
});

Deno.test("--modes rejects empty, malformed and repeated entries", () => {
  for (const bad of ["", "1:1,", "=2", "Pool=1", "--pool=2", "pool=", "mux=2,mux=2", "a b"]) {
    assert.throws(() => parseModes(bad), RangeError, bad);
  }
});

Deno.test("--target KEY=FLAGS names a column and passes the flags as words", () => {
  const cases: [string, { key: string; flags: string[]; workers?: number }][] = [
    ["mux2=--mux 2", { key: "mux2", flags: ["--mux", "2"] }],
    // --workers among the flags is the target's worker count (what --taskset pins it to).
    ["w1=--workers 1 --max-inflight 500", {
      key: "w1",
      flags: ["--workers", "1", "--max-inflight", "500"],
      workers: 1,
    }],
    ["m=--mux 2 --workers=2", { key: "m", flags: ["--mux", "2", "--workers=2"], workers: 2 }],
    ["plain=", { key: "plain", flags: [] }],
    ["a=--x=1", { key: "a", flags: ["--x=1"] }],
  ];
  for (const [text, want] of cases) assert.deepEqual(parseTarget(text), want, text);
  for (const bad of ["--mux 2", "=--mux 2", "mux 2=--mux 2", "m=2 --mux", "w=--workers 0"]) {
    assert.throws(() => parseTarget(bad), RangeError, bad);
  }
});

Deno.test("fooVariants() joins --workers, --modes and --target, and defaults to one foo-proxy", () => {
  assert.deepEqual(fooVariants({}), [{ key: "foo-proxy", flags: [] }]);
  assert.deepEqual(
    fooVariants({ workers: "1", modes: "pool=64", targets: ["m=--mux 2"] }).map((v) => v.key),
    ["w1", "pool=64", "m"],
  );
  assert.deepEqual(fooVariants({ workers: "2" })[0].flags, ["--workers", "2"]);
  assert.throws(() => fooVariants({ modes: "1:1", targets: ["1:1=--x"] }), RangeError);
  assert.throws(() => fooVariants({ targets: ["haproxy=--x"] }), RangeError);
  assert.throws(() => fooVariants({ targets: ["direct="] }), RangeError);
});

Deno.test("bench:e2e keeps its flags, and --quick and --duration shorten the run", () => {
  const full = parseE2eConfig(["--rounds", "3", "--only", "1,4", "--workers", "1,2", "--taskset"]);
  assert.equal(full.rounds, 3);
  assert.deepEqual([...full.only], [1, 4]);
  assert.deepEqual(full.variants.map((v) => v.key), ["w1", "w2"]);
  assert.equal(full.taskset, true);
  assert.equal(full.seconds, 5);
  const quick = parseE2eConfig(["--quick", "--duration", "3"]);
  assert.deepEqual([quick.rounds, quick.seconds, quick.settle, quick.idle], [1, 3, 2, 500]);
  const watched = parseE2eConfig(["--viewers", "5", "--access-log", "text", "--results", "/tmp/x"]);
  assert.deepEqual([watched.viewers, watched.accessLog, watched.results], [5, "text", "/tmp/x"]);
  for (
    const bad of [
      ["--only", "7"],
      ["--seconds", "1"],
      ["--seconds", "3", "--duration", "3"],
      ["--access-log", "xml"],
      ["--no-write", "--write-results"],
      ["--modes", "mux=2,mux=2"],
    ]
  ) {
    assert.throws(() => parseE2eConfig(bad), RangeError, bad.join(" "));
  }
  assert.throws(() => parseE2eConfig(["--bogus"]), TypeError);
});

Deno.test("bench:e2e gives each mode a foo-proxy column with its flags, beside HAProxy", () => {
  const config = parseE2eConfig(["--modes", "1:1,mux=2", "--viewers", "2"]);
  const targets = e2eTargets(config, { haproxy: true, cpus: 2, watched: true });
  assert.deepEqual(targets.map((t) => [t.key, t.kind]), [
    ["direct", "direct"],
    ["1:1", "foo"],
    ["mux=2", "foo"],
    ["watched", "foo"],
    ["haproxy", "haproxy"],
  ]);
  assert.deepEqual(targets[2].flags, ["--max-connections", "100000", "--mux", "2"]);
  assert.equal(targets[3].viewers, 2);
  assert.deepEqual(e2eRatios(targets), [
    ["1:1", "haproxy"],
    ["mux=2", "haproxy"],
    ["watched", "haproxy"],
    ["watched", "1:1"],
    ["1:1", "direct"],
    ["mux=2", "direct"],
  ]);
  const pinned = e2eTargets(parseE2eConfig(["--workers", "1,2", "--taskset"]), {
    haproxy: true,
    cpus: 2,
    watched: false,
  });
  assert.deepEqual(pinned.map((t) => t.pin?.proxy), [undefined, "0", "0-1", "0-1"]);
  assert.deepEqual(e2eRatios(pinned).filter(([, b]) => b === "w1"), [["w2", "w1"]]);
});

Deno.test("harness tables: a column per target, ratio columns, a summary row per target", () => {
  const targets = [
    { key: "direct", kind: "direct" as const },
    { key: "mux2", kind: "foo" as const },
    { key: "haproxy", kind: "haproxy" as const },
  ];
  const rows = [{
    scenario: "1 throughput",
    metric: "replies/s",
    digits: 0,
    values: { direct: 300, mux2: 100, haproxy: 200 },
  }];
  assert.deepEqual(ratiosTo("haproxy", ["mux2", "haproxy"]), [["mux2", "haproxy"]]);
  const table = comparisonTable(rows, { targets, ratios: [["mux2", "haproxy"]] });
  assert.equal(
    table.split("\n")[0],
    "| scenario | metric | direct | mux2 | haproxy | mux2 ÷ HAProxy |",
  );
  assert.equal(table.split("\n")[2], "| 1 throughput | replies/s | 300 | 100 | 200 | 0.50× |");
  const summary = summaryTable({
    targets: targets.slice(1),
    baseline: "haproxy",
    columns: [{ heading: "replies/s", row: rows[0] }, { heading: "absent", row: undefined }],
  });
  assert.deepEqual(summary.split("\n"), [
    "| target | replies/s | ÷ HAProxy |",
    "| --- | ---: | ---: |",
    "| mux2 | 100 | 0.50× |",
    "| haproxy | 200 | 1.00× |",
  ]);
  assert.equal(summaryTable({ targets, columns: [{ heading: "x", row: undefined }] }), "");
});

Deno.test("harness HAProxy config: TCP mode, every upstream, checks only when asked", () => {
  const plain = haproxyConfig(8002, [{ name: "a", port: 8001 }]);
  assert.match(plain, /^ {4}mode tcp$/m);
  assert.match(plain, /^ {4}bind 127\.0\.0\.1:8002$/m);
  assert.match(plain, /^ {4}server a 127\.0\.0\.1:8001$/m);
  assert.doesNotMatch(plain, /balance|check|redispatch|stats socket/);
  const checked = haproxyConfig(1, [{ name: "a", port: 2 }, { name: "b", port: 3 }], {
    balance: "leastconn",
    checkMs: 500,
    socket: "/tmp/s",
  });
  assert.match(checked, /^ {4}balance leastconn$/m);
  assert.match(checked, /^ {4}server b 127\.0\.0\.1:3 check inter 500ms rise 2 fall 3$/m);
  assert.match(checked, /^ {4}option redispatch$/m);
  assert.match(checked, /stats socket \/tmp\/s mode 600 level admin/);
  assert.equal(forwardFlag([{ name: "a", port: 1 }]), "127.0.0.1:1");
  assert.deepEqual(grantFile(["--allow-net", "--allow-read=src"], "/l"), [
    "--allow-net",
    "--allow-read=src,/l",
    "--allow-write=/l",
  ]);
  assert.deepEqual(grantFile(["--allow-net"], "/l"), [
    "--allow-net",
    "--allow-read=/l",
    "--allow-write=/l",
  ]);
  assert.deepEqual(grantFile(["--allow-read"], "/l"), ["--allow-read", "--allow-write=/l"]);
  assert.deepEqual(grantFile(["--allow-net"], undefined), ["--allow-net"]);
  assert.equal(
    forwardFlag([{ name: "a", port: 1 }, { name: "b", port: 2 }]),
    "a=127.0.0.1:1,b=127.0.0.1:2",
  );
});

Deno.test("harness startTarget() passes a foo-proxy target's extra flags, and names status 2 for an unknown one", async () => {
  const tmpDir = await Deno.makeTempDir({ prefix: "foo_harness_test_" });
  try {
    const server = await startServer();
    await using _server = server.child;
    const ctx = { upstreams: [server], tmpDir };
    {
      await using proxy = await startTarget({
        key: "w1",
        kind: "foo",
        flags: ["--workers", "1", "--max-inflight", "500"],
      }, ctx);
      assert.equal(proxy.workers, 1);
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
      await conn.write(new TextEncoder().encode("REQ 1 hi\n"));
      const buf = new Uint8Array(64);
      const n = await conn.read(buf);
      conn.close();
      assert.match(new TextDecoder().decode(buf.subarray(0, n ?? 0)), /^ACK 1/);
    }
    await assert.rejects(
      () => startTarget({ key: "bogus", kind: "foo", flags: ["--bogus-flag", "3"] }, ctx),
      (error: Error) => {
        assert.match(
          error.message,
          /foo-proxy bogus exited with status 2 \(foo-proxy's status for a usage/,
        );
        assert.match(error.message, /--bogus-flag/);
        return true;
      },
    );
  } finally {
    await Deno.remove(tmpDir, { recursive: true });
  }
});
