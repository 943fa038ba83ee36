import assert from "node:assert/strict";
import {
  countersMatch,
  failureLines,
  parseTakeoverArgs,
  reportTable,
  runTakeovers,
} from "../bench/takeover.ts";

Deno.test("bench/takeover.ts flags: defaults, --migrate both, and bad values refused", () => {
  const d = parseTakeoverArgs([]);
  assert.equal(d.takeovers, 10);
  assert.equal(d.migrate, undefined);
  assert.equal(d.write, true);
  assert.deepEqual(parseTakeoverArgs(["--migrate", "both"]).migrate, [0, 1]);
  assert.equal(parseTakeoverArgs(["--long-life", "0.5"]).lifeMs, 500);
  assert.throws(() => parseTakeoverArgs(["--migrate", "2"]), RangeError);
  assert.throws(() => parseTakeoverArgs(["--takeovers", "0"]), RangeError);
});

Deno.test("bench/takeover.ts: one takeover under a small load, every reply counted once by the last proxy", async () => {
  const report = await runTakeovers({
    takeovers: 1,
    clients: 4,
    pipeline: 3,
    long: 2,
    intervalMs: 10,
    lifeMs: 500,
    settleMs: 300,
    migrate: undefined,
  });
  assert.ok(report.attempted > 0 && report.replies > 0, JSON.stringify(report));
  assert.equal(report.toServing.length, 1);
  assert.equal(report.toTookOver.length, 1);
  assert.ok(report.toTookOver[0] >= report.toServing[0]);
  assert.deepEqual(countersMatch(report), { reqs: true, replies: true });
  assert.equal(report.lostReplies, 0);
  assert.equal(report.resetAfter + report.closedAfter + report.timeouts, 0);
  assert.equal(report.takeoverFailures, 0);
  if (report.migrate === "1") assert.deepEqual(report.failures, []);
  const table = reportTable([report]);
  assert.match(table, /^\| {2}\| tcp_migrate_req=/);
  assert.match(table, /\| msg_req check \| = REQs written/);
  assert.match(table, /\| reply check \| = replies received \|/);
  assert.match(failureLines([report]), /^- tcp_migrate_req=/);
});
