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
    // What the demo says its parts do: the server's NAK rule and the client's load.
    const [, nakEvery] = await stdout.waitFor(/ src\/main\.ts server .*--nak-every (\d+)/);
    const clientLine = (await stdout.waitFor(/ src\/main\.ts client /)).input;
    const flag = (name: string) => Number(new RegExp(`--${name} (\\d+)`).exec(clientLine)?.[1]);
    const [perConnection, connections, pipeline] = ["requests", "connections", "pipeline"].map(
      flag,
    );
    assert.ok(perConnection > 0 && connections > 0 && pipeline > 0, clientLine);
    const perRun = perConnection * connections;
    const inFlight = connections * pipeline; // the most REQs one client run has unanswered

    const [, statsUrl] = await stdout.waitFor(/stats: +(http:\/\/127\.0\.0\.1:\d+\/stats)$/);
    await stdout.waitFor(/^ +1s +REQ /); // the load is running
    const stats = await (await fetch(statsUrl)).json();
    assert.ok(stats.msg_req > 0, JSON.stringify(stats));
    // Mid-run: only the running client's pipeline can be unanswered.
    const owed = stats.msg_req - stats.msg_ack - stats.msg_nak;
    assert.ok(owed >= 0 && owed <= inFlight, `${owed} REQs unanswered mid-run`);
    assert.equal(stats.msg_invalid, 0);

    const [, runText] = await stdout.waitFor(
      /^done: (\d+) client runs verified every reply \(0 failed\); proxy exit 0, server exit 0$/,
    );
    const runs = Number(runText);
    assert.ok(runs >= 1, stdout.text);
    assert.equal((await child.status).code, 0, stderr.text);
    await stdout.done;

    // The stats lines ("1s", "2s", …, then "end": the proxy's final stats) as numbers.
    const lines = stdout.lines.flatMap((line) => {
      const m =
        /^ *(\d+s|end) +REQ +([\d,]+) .*ACK +([\d,]+) +NAK +([\d,]+) .*invalid (\d+) +connections (\d+) open, (\d+) total$/
          .exec(line);
      if (!m) return [];
      const [req, ack, nak, invalid, open, total] = m.slice(2).map((n) =>
        Number(n.replaceAll(",", ""))
      );
      return [{ tick: m[1], req, ack, nak, invalid, open, total }];
    });
    assert.ok(lines.length >= 2 && lines[0].tick === "1s", stdout.text);
    const end = lines.at(-1)!;
    assert.equal(end.tick, "end", stdout.text);
    for (const [before, after] of lines.slice(0, -1).map((line, i) => [line, lines[i + 1]])) {
      assert.ok(before.req <= after.req && before.total <= after.total, "counts only grow");
    }
    // The proxy saw exactly the verified runs, plus at most one run cut short at the end.
    const what = JSON.stringify({ runs, perRun, end });
    assert.ok(end.req >= runs * perRun && end.req <= (runs + 1) * perRun, what);
    assert.ok(
      end.total >= runs * connections && end.total <= (runs + 1) * connections,
      what,
    );
    assert.equal(end.open, 0, what);
    assert.equal(end.invalid, 0, what);
    // Every REQ answered but the cut-short run's pipeline.
    const replies = end.ack + end.nak;
    assert.ok(replies <= end.req && end.req - replies <= inFlight, what);
    // The server NAKs every Nth REQ of a connection: exactly 1 in N over whole connections, and
    // each of the cut-short run's connections leaves a remainder below N.
    const n = Number(nakEvery);
    assert.ok(replies - n * end.nak >= 0 && replies - n * end.nak <= (n - 1) * connections, what);
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
