/**
 * The pieces of the worker split that need no process: a stats row carries every counter,
 * window and histogram of the counter schema (and a read never sees half a write); a merged view
 * sums rows, restored and retired totals and the supervisor's own counters as the schema says;
 * the plane layout follows what the runtime allows; a worker's upstream pool reports failures
 * and follows the supervisor's states instead of deciding.
 */
import assert from "node:assert/strict";
import { planeLayout, type PlaneRuntime } from "../src/cmd/plane_layout.ts";
import { UpstreamPool } from "../src/proxy/upstream_pool.ts";
import {
  CLOSE_REASONS,
  readCounter,
  STORED_COUNTERS,
  type StoredSpec,
  writeCounter,
} from "../src/stats/counter_schema.ts";
import { DEFAULT_LATENCY_BUCKETS } from "../src/stats/histogram.ts";
import { MergedStats } from "../src/stats/merged_stats.ts";
import { Stats } from "../src/stats/stats.ts";
import { StatsRow } from "../src/stats/stats_row.ts";
import { startUpstream, waitUntil } from "./_util.ts";
import { PostedLines } from "../src/cmd/data_plane.ts";

const NOW = 1_700_000_000_000;
const BUCKETS = DEFAULT_LATENCY_BUCKETS.length;

/** Stats whose stored counters hold `base + 7 × slot`, with close reasons, rates and latencies. */
function filled(base: number): Stats {
  const stats = new Stats({ clock: () => NOW });
  STORED_COUNTERS.forEach((spec, i) => writeCounter(spec, stats, stats.latency, base + 7 * i));
  CLOSE_REASONS.forEach((reason, i) => (stats.closed[reason] = base + i));
  stats.recordRequests(30, NOW - 500);
  stats.recordRequests(40, NOW - 5_000);
  stats.recordResponses(25, NOW - 20);
  for (const seconds of [0.0002, 0.003, 0.003, 0.2, 4]) stats.latency.histogram.record(seconds);
  return stats;
}

function value(spec: StoredSpec, stats: Stats): number {
  return readCounter(spec, stats, stats.latency);
}

Deno.test("a stats row carries every stored counter, close reason, window and the histogram", () => {
  const worker = filled(100);
  const row = new StatsRow(BUCKETS);
  row.write(worker, NOW);
  const target = new Stats({ clock: () => NOW });
  row.addTo(row.read(), target, { now: NOW });
  for (const spec of STORED_COUNTERS) {
    const expected = spec.summed ? value(spec, worker) : 0;
    assert.equal(value(spec, target), expected, spec.name);
  }
  assert.deepEqual({ ...target.closed }, { ...worker.closed });
  for (const key of ["request1s", "request10s", "response1s", "response10s"] as const) {
    assert.equal(target.windows[key].sum(NOW), worker.windows[key].sum(NOW), key);
  }
  assert.deepEqual(target.latency.histogram.toData(), worker.latency.histogram.toData());
});

Deno.test("a row retired without gauges keeps the counters, not the connections it served", () => {
  const worker = filled(10);
  const row = new StatsRow(BUCKETS);
  row.write(worker, NOW);
  const retired = new Stats({ clock: () => NOW });
  row.addTo(row.read(), retired, { now: NOW, gauges: false, windows: false });
  assert.equal(retired.connectionsActive, 0);
  assert.equal(retired.latency.inFlight, 0);
  assert.equal(retired.counts.msg_req, worker.counts.msg_req);
  assert.equal(retired.windows.request10s.sum(NOW), 0);
});

Deno.test("a row read while another thread writes it is never half of one write and half of another", async () => {
  const row = new StatsRow(BUCKETS);
  const stop = new SharedArrayBuffer(4);
  const writer = new Worker(new URL("./_row_writer_worker.ts", import.meta.url), {
    type: "module",
  });
  const wrote = new Promise<number>((resolve) => writer.onmessage = (e) => resolve(e.data));
  writer.postMessage({ buffer: row.buffer, stop });
  try {
    let reads = 0;
    let first = 0;
    let seen = 0;
    // Reads (busy, for at most 10 s) until the writer has written 20 000 times while we read.
    const deadline = performance.now() + 10_000;
    while (performance.now() < deadline && (first === 0 || seen - first < 20_000)) {
      const copy = row.read();
      reads++;
      const k = copy[0];
      if (k === 0) continue; // the worker has not started yet
      if (first === 0) first = k;
      seen = k;
      for (let i = 1; i < STORED_COUNTERS.length; i++) {
        if (copy[i] !== k + 7 * i) {
          assert.fail(`read ${reads}: slot ${i} holds ${copy[i]}, slot 0 ${k}: a torn read`);
        }
      }
    }
    assert.ok(seen - first >= 20_000, `the writer wrote ${seen - first} times while we read`);
  } finally {
    Atomics.store(new Int32Array(stop), 0, 1);
    await wrote;
    writer.terminate();
  }
});

Deno.test("a merged read sums restored totals, the supervisor's counters and every row", () => {
  const own = new Stats({ clock: () => NOW });
  own.usr1Ignored = 3;
  own.adminBadRequests = 2;
  own.configGeneration = 4; // not summed: the supervisor's alone
  const base = filled(1000); // what a recovery file restored
  const rows = [filled(1), filled(2), filled(3)].map((stats) => {
    const row = new StatsRow(BUCKETS);
    row.write(stats, NOW);
    return { row, stats };
  });
  const merged = new MergedStats({
    clock: () => NOW,
    own,
    base,
    addRows: (target, now) => {
      for (const { row } of rows) row.addTo(row.read(), target, { now });
    },
  });
  const snapshot = merged.snapshot();
  const parts = [base, ...rows.map((r) => r.stats)];
  for (const spec of STORED_COUNTERS) {
    const expected = spec.summed
      ? parts.reduce((n, s) => n + value(spec, s), value(spec, own))
      : value(spec, own);
    assert.equal(value(spec, merged), expected, spec.name);
  }
  assert.equal(snapshot.config_generation, 4);
  assert.equal(
    snapshot.msg_req,
    parts.reduce((n, s) => n + s.counts.msg_req, 0),
  );
  assert.equal(
    merged.latency.histogram.count,
    parts.reduce((n, s) => n + s.latency.histogram.count, 0),
  );
  assert.equal(
    merged.windows.request1s.sum(NOW),
    parts.reduce((n, s) => n + s.windows.request1s.sum(NOW), 0),
  );
  // A second read sums again from the parts: nothing is counted twice.
  const again = merged.snapshot();
  assert.deepEqual(again, snapshot);
  rows[0].stats.counts.msg_req += 5;
  rows[0].row.write(rows[0].stats, NOW);
  assert.equal(merged.snapshot().msg_req, snapshot.msg_req + 5);
});

const RUNTIME: PlaneRuntime = {
  cpus: 4,
  workerModules: true,
  moduleDir: "/x/src",
  reusePort: true,
};

Deno.test("--workers: auto is one per CPU; what the runtime lacks is said, or refused when asked for", () => {
  assert.deepEqual(planeLayout({ workers: undefined }, RUNTIME), { count: 4, thread: true });
  assert.deepEqual(planeLayout({ workers: 3 }, RUNTIME), { count: 3, thread: true });
  assert.deepEqual(planeLayout({ workers: 1 }, { ...RUNTIME, reusePort: false }), {
    count: 1,
    thread: true,
  });
  const noReuse = planeLayout({ workers: undefined }, { ...RUNTIME, reusePort: false });
  assert.ok(typeof noReuse === "object" && noReuse.count === 1 && noReuse.thread);
  assert.match(String(typeof noReuse === "object" && noReuse.note), /--unstable-net/);
  assert.match(
    String(planeLayout({ workers: 2 }, { ...RUNTIME, reusePort: false })),
    /^--workers 2 needs --unstable-net/,
  );
  const noModules = planeLayout({ workers: undefined }, { ...RUNTIME, workerModules: false });
  assert.ok(typeof noModules === "object" && noModules.count === 1 && !noModules.thread);
  assert.match(String(typeof noModules === "object" && noModules.note), /--allow-read=\/x\/src/);
  assert.match(
    String(planeLayout({ workers: 2 }, { ...RUNTIME, workerModules: false })),
    /--allow-read=\/x\/src/,
  );
  assert.deepEqual(planeLayout({ workers: 1 }, { ...RUNTIME, workerModules: false }), {
    count: 1,
    thread: false,
    note: undefined,
  });
});

Deno.test("a worker's pool reports failures and follows the supervisor's states; the supervisor's ejects", async () => {
  const gone = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const address = { hostname: "127.0.0.1", port: (gone.addr as Deno.NetAddr).port };
  gone.close();
  const specs = [{ name: "dead", address, weight: 1 }];
  const reports: string[] = [];
  const worker = new UpstreamPool(specs, {
    ejectAfter: 2,
    onPassive: (name, kind) => reports.push(`${name} ${kind}`),
  });
  let changes = 0;
  const supervisor = new UpstreamPool(specs, { ejectAfter: 2, onStateChange: () => changes++ });
  for (let i = 0; i < 3; i++) {
    await assert.rejects(worker.dial({ retries: 0 }));
  }
  assert.deepEqual(reports, [
    "dead connect_failure",
    "dead connect_failure",
    "dead connect_failure",
  ]);
  // The worker never ejects on its own: the supervisor decides.
  assert.equal(worker.snapshot()[0].state, "up");
  assert.equal(worker.snapshot()[0].ejections, 0);
  supervisor.passive("dead", "connect_failure");
  assert.equal(supervisor.states().dead.ejected, false);
  supervisor.passive("dead", "connect_failure");
  const states = supervisor.states();
  assert.equal(states.dead.ejected, true);
  assert.ok(states.dead.ejectedForMs > 0);
  assert.ok(changes >= 1);
  worker.applyStates(states);
  assert.equal(worker.snapshot()[0].state, "ejected");
  // A recovery in a worker ends the run of failures in the supervisor.
  supervisor.passive("dead", "recovered");
  supervisor.passive("dead", "connect_failure");
  assert.equal(supervisor.snapshot()[0].ejections, 1);
  await worker.close();
  await supervisor.close();
});

Deno.test("leastconn counts every worker's connections: a worker sends new clients where the others have fewest", async () => {
  const servers = [await startUpstream(), await startUpstream()];
  const spec = (i: number) => ({
    name: `u${i}`,
    address: { hostname: "127.0.0.1", port: servers[i].addr.port },
    weight: 1,
  });
  const counts = new Int32Array(new SharedArrayBuffer(4 * 2 * 8));
  const shared = (plane: number) => ({
    counts,
    plane,
    planes: 2,
    capacity: 8,
    slots: { u0: 0, u1: 1 },
  });
  // Worker 0 knows only u0 and holds two connections to it.
  const zero = new UpstreamPool([spec(0)], { shared: shared(0) });
  const one = new UpstreamPool([spec(0), spec(1)], { shared: shared(1) });
  const held = [await zero.dial(), await zero.dial()];
  const picked = [await one.dial(), await one.dial(), await one.dial(), await one.dial()];
  try {
    // Without the shared counts worker 1 would start on u0 (a tie, the first given).
    assert.deepEqual(picked.map((c) => c.upstream), ["u1", "u1", "u0", "u1"]);
    assert.deepEqual([...counts.slice(0, 2)], [2, 0]);
    assert.deepEqual([...counts.slice(8, 10)], [1, 3]);
  } finally {
    for (const lease of [...held, ...picked]) {
      lease.conn.close();
      lease.release?.(false);
    }
    await zero.close();
    await one.close();
    for (const server of servers) await server.close();
  }
  assert.deepEqual([...counts], new Array(16).fill(0));
});

Deno.test("a plane's log lines on their way to the supervisor are bounded per batch: past it, dropped and counted", async () => {
  const sent: string[][] = [];
  const lines = new PostedLines((batch) => sent.push(batch), 100);
  let dropped = 0;
  lines.onDrop = () => dropped++;
  for (let i = 0; i < 50; i++) lines.push(`line ${String(i).padStart(3, "0")}\n`); // 9 each
  assert.equal(sent.length, 0, "batched, not sent at once");
  lines.flush();
  assert.equal(sent.length, 1);
  assert.equal(sent[0].length, 11); // 11 × 9 = 99 ≤ 100
  assert.equal(dropped, 39);
  // A line bigger than the bound alone is still sent: the bound is for floods, not sizes.
  lines.push("x".repeat(500) + "\n");
  lines.flush();
  assert.equal(sent[1].length, 1);
  // Unflushed lines go out on their own within 10 ms.
  lines.push("late\n");
  await waitUntil(() => sent.length === 3, "the batch timer");
  assert.deepEqual(sent[2], ["late\n"]);
});
