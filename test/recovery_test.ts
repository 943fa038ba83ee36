import assert from "node:assert/strict";
import fc from "fast-check";
import type { Logger } from "@logtape/logtape";
import { join } from "node:path";
import {
  checkRecoveryPath,
  loadRecoveryFile,
  RecoveryPathError,
  RecoveryPersister,
  removeStaleTempFiles,
  writeRecoveryFile,
} from "../src/proxy/recovery_file.ts";
import { MSG_ACK, MSG_REQ } from "../src/protocol/analyzer.ts";
import { LatencyStats, LatencyTracker } from "../src/stats/latency.ts";
import {
  captureRecoveryState,
  parseRecoveryState,
  RecoveryFormatError,
  type RecoveryState,
  restoreRecoveryState,
  serializeRecoveryState,
} from "../src/stats/recovery.ts";
import { Stats } from "../src/stats/stats.ts";
import { renderMetrics } from "../src/http/metrics.ts";
import { withTimeout } from "./_util.ts";

const T0 = 1_700_000_000_000;

/** Stats with traffic spread over the 3 s before `T0`, on a settable clock. */
function busyStats(): { stats: Stats; latency: LatencyStats; clock: { now: number } } {
  const clock = { now: T0 - 3000 };
  const stats = new Stats({ clock: () => clock.now });
  const latency = new LatencyStats();
  const tracker = new LatencyTracker(latency);
  for (let i = 0; i < 30; i++) {
    clock.now = T0 - 3000 + i * 100;
    stats.counts.msg_req += 10;
    stats.recordRequests(10);
    stats.counts.msg_ack += 9;
    stats.counts.msg_nak += 1;
    stats.recordResponses(10);
    tracker.setTime(clock.now);
    tracker.onMessage(MSG_REQ, i + 1);
    tracker.setTime(clock.now + 2);
    tracker.onMessage(MSG_ACK, i + 1);
  }
  clock.now = T0;
  stats.counts.invalid_seq = 4;
  stats.counts.invalid_truncated = 1;
  stats.connectionsTotal = 12;
  stats.connectionsRejected = 2;
  stats.upstreamErrors = 1;
  stats.bytesDownstream = 123_456;
  stats.bytesUpstream = 98_765;
  stats.upstreamConnectRetries = 5;
  stats.inflightLimitPauses = 6;
  stats.failovers = 7;
  stats.replays = 8;
  stats.resumeFailures = 9;
  stats.recordClose("client_closed");
  stats.recordClose("upstream_unreachable");
  latency.unmatchedReplies = 3;
  return { stats, latency, clock };
}

const COUNTERS = [
  "msg_total",
  "msg_req",
  "msg_ack",
  "msg_nak",
  "msg_invalid",
  "connections_total",
  "connections_rejected",
  "upstream_errors",
  "bytes_downstream",
  "bytes_upstream",
  "msg_invalid_by_kind",
  "connections_closed",
  "upstream_connect_retries",
  "inflight_limit_pauses",
  "failovers",
  "replays",
  "resume_failures",
] as const;

function restoredAt(text: string, now: number) {
  const stats = new Stats({ clock: () => now });
  const latency = new LatencyStats();
  const result = restoreRecoveryState(stats, parseRecoveryState(text), { latency });
  return { stats, latency, result };
}

Deno.test("recovery state round-trips the totals through text", () => {
  const { stats, latency } = busyStats();
  const text = serializeRecoveryState(captureRecoveryState(stats, { latency }));
  assert.ok(text.endsWith("\n") && !text.slice(0, -1).includes("\n"));
  const restored = restoredAt(text, T0 + 1000);
  const before = stats.snapshot();
  const after = restored.stats.snapshot();
  for (const key of COUNTERS) assert.deepEqual(after[key], before[key], key);
  assert.equal(after.msg_total, 600);
  assert.equal(restored.latency.histogram.count, 30);
  assert.equal(restored.latency.unmatchedReplies, 3);
  assert.equal(restored.result.latencyRestored, true);
  // Gauges are not restored.
  assert.equal(after.connections_active, 0);
});

Deno.test("a file written before the resilience counters existed reads them as zero", () => {
  const { stats } = busyStats();
  const state = captureRecoveryState(stats);
  for (
    const key of [
      "upstream_connect_retries",
      "inflight_limit_pauses",
      "failovers",
      "replays",
      "resume_failures",
    ] as const
  ) delete state.totals[key];
  const restored = restoredAt(serializeRecoveryState(state), T0 + 1000).stats.snapshot();
  assert.equal(restored.msg_req, 300);
  assert.equal(restored.failovers, 0);
  assert.equal(restored.replays, 0);
  assert.equal(restored.upstream_connect_retries, 0);
});

Deno.test("restore after a short downtime keeps the part of the 10 s window still inside it", () => {
  const { stats } = busyStats();
  const text = serializeRecoveryState(captureRecoveryState(stats));
  // Traffic ran from T0-3000 to T0-100. Restarting at T0+8000, the window covers (T0-2000, T0+8000].
  const now = T0 + 8000;
  const { stats: restored, result } = restoredAt(text, now);
  assert.equal(result.windowsRestored, true);
  assert.equal(result.downtimeMs, 8000);
  assert.equal(restored.windows.request10s.sum(now), 10 * 19);
  assert.equal(restored.windows.response10s.sum(now), 10 * 19);
  assert.equal(restored.windows.request1s.sum(now), 0);
  assert.ok(restored.snapshot().request_rate_10s > 0);
  // And it ages out as usual.
  assert.equal(restored.windows.request10s.sum(T0 + 10_000), 0);
});

Deno.test("restore right after the save also seeds the 1 s window", () => {
  const { stats } = busyStats();
  const text = serializeRecoveryState(captureRecoveryState(stats));
  const now = T0 + 200;
  const { stats: restored } = restoredAt(text, now);
  // Buckets starting after now-1000 = T0-800: T0-700 … T0-100, 7 buckets of 10 REQs.
  assert.equal(restored.windows.request1s.sum(now), 70);
  assert.equal(restored.snapshot().request_rate_10s, stats.snapshot().request_rate_10s);
});

Deno.test("restore after 10 s or more of downtime restores totals only", () => {
  const { stats } = busyStats();
  const text = serializeRecoveryState(captureRecoveryState(stats));
  for (const downtime of [10_000, 60_000, -5_000]) {
    const now = T0 + downtime;
    const { stats: restored, result } = restoredAt(text, now);
    assert.equal(result.windowsRestored, false, `downtime ${downtime}`);
    const snap = restored.snapshot();
    assert.equal(snap.msg_total, 600);
    assert.equal(snap.request_rate_10s, 0);
    assert.equal(snap.response_rate_1s, 0);
  }
});

Deno.test("restore adds to what the stats already hold", () => {
  const { stats } = busyStats();
  const state = captureRecoveryState(stats);
  const fresh = new Stats({ clock: () => T0 });
  fresh.counts.msg_req = 1;
  fresh.recordClose("client_closed");
  restoreRecoveryState(fresh, state);
  assert.equal(fresh.counts.msg_req, 301);
  assert.equal(fresh.closed.client_closed, 2);
});

Deno.test("restore skips a histogram with other buckets but keeps the counters", () => {
  const { stats, latency } = busyStats();
  const state = captureRecoveryState(stats, { latency });
  state.latency!.histogram.bounds = state.latency!.histogram.bounds.map((b) => b * 2);
  const { latency: restored, result } = restoredAt(serializeRecoveryState(state), T0);
  assert.equal(result.latencyRestored, false);
  assert.equal(restored.histogram.count, 0);
  assert.equal(restored.unmatchedReplies, 3);
});

Deno.test("parseRecoveryState() rejects every truncation of a valid file", () => {
  const { stats, latency } = busyStats();
  const text = serializeRecoveryState(captureRecoveryState(stats, { latency })).trimEnd();
  for (let n = 0; n < text.length; n++) {
    assert.throws(() => parseRecoveryState(text.slice(0, n)), RecoveryFormatError, `at ${n}`);
  }
  assert.doesNotThrow(() => parseRecoveryState(text));
});

Deno.test("parseRecoveryState() names what is wrong", () => {
  const { stats, latency } = busyStats();
  const good = captureRecoveryState(stats, { latency });
  // deno-lint-ignore no-explicit-any
  type Loose = Record<string, any>;
  const bad = (edit: (s: Loose) => void, pattern: RegExp) => {
    const copy: Loose = structuredClone(good);
    edit(copy);
    assert.throws(() => parseRecoveryState(JSON.stringify(copy)), (error: unknown) => {
      assert.ok(error instanceof RecoveryFormatError);
      assert.match(error.message, pattern);
      return true;
    });
  };
  assert.throws(() => parseRecoveryState(""), /not valid JSON/);
  assert.throws(() => parseRecoveryState("[]"), /not a JSON object/);
  assert.throws(() => parseRecoveryState("\u0000\u0001garbage"), RecoveryFormatError);
  bad((s) => (s.format = "other"), /"format"/);
  bad((s) => (s.version = 2), /unsupported version 2/);
  bad((s) => delete s.saved_at, /"saved_at"/);
  bad((s) => delete s.totals.msg_req, /"totals\.msg_req"/);
  bad((s) => (s.totals.bytes_upstream = -1), /"totals\.bytes_upstream"/);
  bad((s) => (s.totals.msg_ack = 1.5), /"totals\.msg_ack"/);
  bad((s) => (s.totals.msg_nak = "3"), /"totals\.msg_nak"/);
  bad((s) => (s.connections_closed["Bad Reason"] = 1), /bad close reason/);
  bad((s) => (s.windows.requests = {}), /"windows\.requests" is not an array/);
  bad((s) => (s.windows.responses = [{ start: "x", count: 1 }]), /start/);
  bad(
    (s) => (s.windows.requests = Array.from({ length: 5000 }, () => ({ start: 0, count: 1 }))),
    /at most/,
  );
  bad((s) => s.latency.histogram.counts.pop(), /does not match/);
  bad((s) => (s.latency.unmatched_replies = null), /"latency\.unmatched_replies"/);
});

Deno.test("parseRecoveryState() accepts what captureRecoveryState() writes, for any stats", () => {
  const n = fc.nat({ max: 2 ** 40 });
  fc.assert(
    fc.property(
      fc.record({ req: n, ack: n, bytes: n, conns: n }),
      fc.array(fc.tuple(fc.integer({ min: 0, max: 9999 }), fc.integer({ min: 1, max: 1000 }))),
      (c, events) => {
        let now = T0 - 10_000;
        const stats = new Stats({ clock: () => now });
        stats.counts.msg_req = c.req;
        stats.counts.msg_ack = c.ack;
        stats.bytesDownstream = c.bytes;
        stats.connectionsTotal = c.conns;
        for (const [at, count] of events.sort((a, b) => a[0] - b[0])) {
          now = T0 - 10_000 + at;
          stats.recordRequests(count);
        }
        now = T0;
        const state = captureRecoveryState(stats);
        const parsed: RecoveryState = parseRecoveryState(serializeRecoveryState(state));
        assert.deepEqual(parsed, state);
      },
    ),
    { numRuns: 100 },
  );
});

// ---- the file ----

function captureLogger(): { logger: Logger; warnings: string[] } {
  const warnings: string[] = [];
  const logger = {
    warning: (message: string, props: Record<string, unknown> = {}) =>
      warnings.push(message.replace(/\{(\w+)\}/g, (_, k) => String(props[k]))),
    info: () => {},
  } as unknown as Logger;
  return { logger, warnings };
}

async function tempDir(): Promise<AsyncDisposable & { path: string }> {
  const path = await Deno.makeTempDir({ prefix: "foo-proxy-recovery-test-" });
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }),
  };
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) names.push(entry.name);
  return names.sort();
}

Deno.test("writeRecoveryFile() replaces the file and leaves no temp file", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "stats.json");
  await writeRecoveryFile(path, "first\n");
  await writeRecoveryFile(path, "second\n");
  assert.equal(await Deno.readTextFile(path), "second\n");
  assert.deepEqual(await listDir(dir.path), ["stats.json"]);
});

Deno.test("writeRecoveryFile() fails cleanly when the directory is gone", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "missing", "stats.json");
  await assert.rejects(() => writeRecoveryFile(path, "x"), Deno.errors.NotFound);
  assert.deepEqual(await listDir(dir.path), []);
});

Deno.test("loadRecoveryFile() of a missing file starts from zero without a warning", async () => {
  await using dir = await tempDir();
  const { logger, warnings } = captureLogger();
  const loaded = await loadRecoveryFile(join(dir.path, "stats.json"), { logger });
  assert.equal(loaded.state, undefined);
  assert.equal(loaded.movedTo, undefined);
  assert.deepEqual(warnings, []);
});

Deno.test("loadRecoveryFile() reads back what the persister wrote", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "stats.json");
  const { stats, latency } = busyStats();
  await writeRecoveryFile(path, serializeRecoveryState(captureRecoveryState(stats, { latency })));
  const loaded = await loadRecoveryFile(path);
  assert.equal(loaded.state?.totals.msg_req, 300);
  assert.equal(loaded.state?.latency?.histogram.count, 30);
});

Deno.test("loadRecoveryFile() moves a corrupt file aside, warns naming it, and never overwrites", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "stats.json");
  const { logger, warnings } = captureLogger();
  const now = () => new Date("2026-01-02T03:04:05.678Z");
  await Deno.writeTextFile(path, '{"format":"foo-proxy-recovery","vers');
  const first = await loadRecoveryFile(path, { logger, now });
  assert.equal(first.state, undefined);
  assert.equal(first.movedTo, `${path}.corrupt-20260102T030405Z`);
  assert.equal(warnings.length, 1);
  assert.ok(warnings[0].includes(path), warnings[0]);
  assert.match(warnings[0], /corrupt: not valid JSON/);
  assert.ok(warnings[0].includes(first.movedTo!), warnings[0]);
  // A second bad file in the same second gets its own name; the first copy is kept.
  await Deno.writeTextFile(path, "garbage 2");
  const second = await loadRecoveryFile(path, { logger, now });
  assert.equal(second.movedTo, `${path}.corrupt-20260102T030405Z-1`);
  assert.equal(await Deno.readTextFile(first.movedTo!), '{"format":"foo-proxy-recovery","vers');
  assert.equal(await Deno.readTextFile(second.movedTo!), "garbage 2");
  assert.deepEqual(await listDir(dir.path), [
    "stats.json.corrupt-20260102T030405Z",
    "stats.json.corrupt-20260102T030405Z-1",
  ]);
});

Deno.test("the corrupt-file warning names the file and the error, never the file's bytes", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "stats.json");
  const { logger, warnings } = captureLogger();
  // Attacker-chosen bytes: a fake log line after a newline, and more junk.
  await Deno.writeTextFile(path, "oops\n2026-01-01 [ERR] forged line\n{{{");
  await loadRecoveryFile(path, { logger });
  assert.equal(warnings.length, 1);
  assert.doesNotMatch(warnings[0], /oops|forged|\n/);
  assert.match(warnings[0], /corrupt: not valid JSON/);
});

Deno.test("removeStaleTempFiles() removes what an interrupted save left, and only that", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "stats.json");
  await Deno.writeTextFile(path, "{}");
  await Deno.writeTextFile(join(dir.path, ".stats.json.tmp-1a2b3c4d"), "half a save");
  await Deno.writeTextFile(join(dir.path, ".stats.json.check-xyz"), "");
  await Deno.writeTextFile(join(dir.path, ".other.json.tmp-1a2b3c4d"), "not ours");
  assert.equal(await removeStaleTempFiles(path), 2);
  assert.deepEqual(await listDir(dir.path), [".other.json.tmp-1a2b3c4d", "stats.json"]);
});

// As root a 0o000 mode does not stop reads, so the unreadable case cannot be provoked: the test
// is then reported as ignored rather than passing without checking anything.
const MODE_BLOCKS_READS = Deno.build.os !== "windows" && (() => {
  const probe = Deno.makeTempFileSync();
  try {
    Deno.chmodSync(probe, 0o000);
    Deno.readFileSync(probe);
    return false;
  } catch {
    return true;
  } finally {
    Deno.removeSync(probe);
  }
})();

Deno.test({
  name: "loadRecoveryFile() moves an unreadable file aside",
  ignore: !MODE_BLOCKS_READS,
  async fn() {
    await using dir = await tempDir();
    const path = join(dir.path, "stats.json");
    const { logger, warnings } = captureLogger();
    await Deno.writeTextFile(path, "{}");
    await Deno.chmod(path, 0o000);
    const loaded = await loadRecoveryFile(path, { logger });
    assert.equal(loaded.state, undefined);
    assert.match(warnings[0], /unreadable: permission denied/);
    assert.ok(loaded.movedTo);
  },
});

Deno.test("checkRecoveryPath() accepts a writable path and leaves nothing behind", async () => {
  await using dir = await tempDir();
  await checkRecoveryPath(join(dir.path, "stats.json"));
  await Deno.writeTextFile(join(dir.path, "existing.json"), "{}");
  await checkRecoveryPath(join(dir.path, "existing.json"));
  assert.deepEqual(await listDir(dir.path), ["existing.json"]);
});

Deno.test("checkRecoveryPath() rejects unusable paths with a clear typed error", async () => {
  await using dir = await tempDir();
  const file = join(dir.path, "plain-file");
  await Deno.writeTextFile(file, "");
  const cases: [string, RegExp][] = [
    [join(dir.path, "no-such-dir", "stats.json"), /directory ".*no-such-dir" does not exist/],
    [dir.path, /it is a directory/],
    [join(file, "stats.json"), /Cannot use recovery file/],
  ];
  for (const [path, pattern] of cases) {
    await assert.rejects(() => checkRecoveryPath(path), (error: unknown) => {
      assert.ok(error instanceof RecoveryPathError, String(error));
      assert.equal(error.path, path);
      assert.match(error.message, new RegExp(`^Cannot use recovery file "`));
      assert.match(error.message, pattern);
      return true;
    });
  }
});

Deno.test("RecoveryPersister writes periodically and once more on close", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "stats.json");
  let value = 0;
  const thirdCall = Promise.withResolvers<void>();
  const persister = new RecoveryPersister(path, {
    intervalMs: 5,
    serialize: () => {
      if (++value === 3) thirdCall.resolve();
      return `${value}\n`;
    },
  });
  persister.start();
  await withTimeout(thirdCall.promise, 5000, "three periodic writes");
  await persister.close();
  await withTimeout(persister.finished, 5000, "the persister to finish");
  const written = Number(await Deno.readTextFile(path));
  assert.equal(written, value, "the final write carries the latest state");
  assert.ok(persister.writes >= 3);
  await persister.close(); // idempotent
  assert.equal(Number(await Deno.readTextFile(path)), written);
  assert.deepEqual(await listDir(dir.path), ["stats.json"]);
});

Deno.test("RecoveryPersister survives write failures and warns once", async () => {
  await using dir = await tempDir();
  const sub = join(dir.path, "sub");
  await Deno.mkdir(sub);
  const path = join(sub, "stats.json");
  const { logger, warnings } = captureLogger();
  await using persister = new RecoveryPersister(path, { serialize: () => "x\n", logger });
  await persister.persist();
  assert.equal(persister.writes, 1);
  await Deno.remove(sub, { recursive: true });
  await persister.persist();
  await persister.persist();
  assert.equal(persister.failures, 2);
  assert.equal(warnings.length, 1);
  assert.ok(warnings[0].includes(path), warnings[0]);
  await Deno.mkdir(sub);
  await persister.persist();
  assert.equal(persister.writes, 2);
});

Deno.test("a close reason named after Object.prototype (constructor) is left out, never added to a function", () => {
  const { stats } = busyStats();
  const state = JSON.parse(serializeRecoveryState(captureRecoveryState(stats)));
  state.connections_closed.constructor = 7;
  state.connections_closed.tostring = 1;
  const { stats: restored, result } = restoredAt(JSON.stringify(state), T0);
  assert.deepEqual(result.ignoredReasons, ["constructor", "tostring"]);
  const snapshot = restored.snapshot();
  assert.deepEqual(snapshot.connections_closed, { client_closed: 1, upstream_unreachable: 1 });
  const metrics = renderMetrics(snapshot);
  assert.doesNotMatch(metrics, /native code|constructor/);
  for (const line of metrics.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    assert.match(line, /^[a-z0-9_]+(\{[^}]*\})? [0-9.e+-]+$/, "every sample parses");
  }
  // What is persisted next holds no trace of it either: the next start keeps the whole file.
  const again = parseRecoveryState(serializeRecoveryState(captureRecoveryState(restored)));
  assert.deepEqual(Object.keys(again.connections_closed), [
    "client_closed",
    "upstream_unreachable",
  ]);
  assert.equal(again.totals.msg_req, 300);
});
