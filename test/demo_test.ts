import assert from "node:assert/strict";
import { OutputLines, REPO_ROOT, withTimeout } from "./_util.ts";

Deno.test("deno task demo runs server, proxy and load, serves /stats while it runs, and stops cleanly", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "demo", "--seconds", "2"],
    cwd: REPO_ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = new OutputLines(child.stdout);
  const stderr = new OutputLines(child.stderr);
  try {
    const [, statsUrl] = await stdout.waitFor(/stats: +(http:\/\/127\.0\.0\.1:\d+\/stats)$/);
    const stats = await (await fetch(statsUrl)).json();
    assert.equal(typeof stats.msg_total, "number");
    assert.equal(stats.msg_total, stats.msg_req + stats.msg_ack + stats.msg_nak);
    const [, runs] = await stdout.waitFor(
      /^done: (\d+) client runs verified every reply \(0 failed\); proxy exit 0, server exit 0$/,
    );
    assert.ok(Number(runs) >= 1, stdout.text);
    assert.match(stdout.text, /^ +1s +REQ /m); // the live lines
    assert.match(stdout.text, /^ end +REQ +[1-9]/m); // the proxy's final stats saw the load
    assert.equal((await child.status).code, 0, stderr.text);
  } finally {
    // On failure, SIGINT first: the demo then stops its parts (their own process groups).
    const kill = (signal: Deno.Signal) => {
      try {
        child.kill(signal);
      } catch {
        // Already exited.
      }
    };
    kill("SIGINT");
    await withTimeout(child.status, 20_000, "the demo to stop").catch(() => kill("SIGKILL"));
    await child.status;
    await Promise.all([stdout.done, stderr.done]);
  }
});
