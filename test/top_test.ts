/**
 * `foo-proxy top`: the pure screen renderer, the --stats parsing, the fetch, the poll loop, and a
 * real pseudo-terminal run in tmux against a real proxy.
 */
import assert from "node:assert/strict";
import { UsageError } from "../src/cli/flags.ts";
import {
  describeFetchError,
  fetchStats,
  frameText,
  parseStatsUrl,
  parseTopConfig,
  runTopLoop,
  StatsFetchError,
  TOP_USAGE,
} from "../src/cmd/top.ts";
import { renderTop, TOP_FOOTER, type TopSnapshot, type TopState } from "../src/tools/top_view.ts";
import {
  connectTo,
  freePort,
  LineReader,
  listenLocal,
  REPO_ROOT,
  spawnMain,
  startUpstream,
  waitUntil,
  writeAll,
} from "./_util.ts";

function upstream(name: string, over: Record<string, unknown> = {}) {
  return {
    name,
    address: name,
    weight: 1,
    state: "up" as const,
    connections_active: 2,
    connections_total: 7,
    requests: 1234,
    replies: 1230,
    connect_failures: 1,
    stream_errors: 2,
    ejections: 0,
    last_check: null,
    ...over,
  };
}

const SNAPSHOT: TopSnapshot = {
  msg_total: 2464,
  msg_req: 1234,
  msg_ack: 1200,
  msg_nak: 30,
  msg_invalid: 9,
  request_rate_1s: 812.5,
  request_rate_10s: 640.25,
  response_rate_1s: 811,
  response_rate_10s: 12345.6,
  connections_active: 5,
  connections_total: 42,
  connections_rejected: 3,
  upstream_errors: 3,
  bytes_downstream: 5 * 1024 * 1024,
  bytes_upstream: 2048,
  uptime_seconds: 3723.4,
  msg_invalid_by_kind: { type: 4, seq: 3, direction: 1, truncated: 1 },
  connections_closed: { client_closed: 30, idle_timeout: 2, max_connections: 3 },
  upstream_connect_retries: 6,
  inflight_limit_pauses: 7,
  failovers: 8,
  replays: 11,
  resume_failures: 1,
  internal_errors: 0,
  replies_dropped: 0,
  upstreams: [upstream("alpha"), upstream("beta", { state: "ejected", requests: 99 })],
  latency_p50_seconds: 0.0012,
  latency_p99_seconds: 0.000731,
  latency_max_seconds: 2.5,
  latency_samples: 1230,
  requests_in_flight: 4,
  unmatched_replies: 0,
  duplicate_seq: 0,
  untracked_requests: 0,
  unanswered_requests: 0,
};

function state(over: Partial<TopState> = {}): TopState {
  return {
    url: "http://127.0.0.1:8088/stats",
    intervalMs: 1000,
    now: 10_000,
    snapshot: SNAPSHOT,
    fetchedAt: 10_000,
    ...over,
  };
}

function assertFits(lines: string[], columns: number, rows: number, what: string): void {
  assert.equal(lines.length, rows, `${what}: exactly ${rows} lines`);
  for (const line of lines) {
    assert.ok(line.length <= columns, `${what}: ${JSON.stringify(line)} is wider than ${columns}`);
    assert.match(line, /^[\x20-\x7e]*$/, `${what}: printable ASCII only`);
  }
}

Deno.test("renderTop() shows every figure of /stats on a 120x40 screen", () => {
  const lines = renderTop(state(), { columns: 120, rows: 40 });
  assertFits(lines, 120, 40, "120x40");
  const text = lines.join("\n");
  assert.match(
    lines[0],
    /^foo-proxy top {2}http:\/\/127\.0\.0\.1:8088\/stats {2}every 1s +proxy up 1:02:03$/,
  );
  assert.equal(lines[0].length, 120, "the uptime is right-aligned");
  assert.equal(lines[1], "OK");
  assert.match(text, /^Requests\/s +1s 812\.5 {3}10s 640\.3$/m);
  assert.match(text, /^Responses\/s +1s 811\.0 {3}10s 12,346$/m);
  assert.match(
    text,
    /^Latency +p50 1\.20 ms {3}p99 731 us {3}max 2\.50 s {3}samples 1,230 {3}in flight 4$/m,
  );
  assert.match(text, /^Messages +REQ 1,234 {3}ACK 1,200 {3}NAK 30 {3}total 2,464$/m);
  assert.match(text, /^Connections +active 5 {3}total 42 {3}rejected 3$/m);
  assert.match(text, /^Invalid lines +total 9 {3}type 4 {3}seq 3 {3}direction 1 {3}truncated 1$/m);
  assert.match(text, /^Closed +client_closed 30 {3}max_connections 3 {3}idle_timeout 2$/m);
  assert.match(text, /^Bytes +from clients 5\.0 MiB {3}from upstream 2\.0 KiB$/m);
  assert.match(
    text,
    /^Resilience +upstream errors 3 {3}connect retries 6 {3}failovers 8 {3}replays 11/m,
  );
  assert.match(text, /resume failures 1 {3}in-flight pauses 7/);
  assert.match(text, /^Upstreams \(2\)$/m);
  assert.match(text, /^ {2}NAME +STATE +ACTIVE +REQ\/S +REPLY\/S +REQUESTS +REPLIES +ERRORS$/m);
  // No earlier snapshot: no rates yet.
  assert.match(text, /^ {2}alpha +up +2 +- +- +1,234 +1,230 +3$/m);
  assert.match(text, /^ {2}beta +ejected +2 +- +- +99 +1,230 +3$/m);
  assert.equal(lines.at(-1), TOP_FOOTER);
});

Deno.test("renderTop() shows each data-plane worker's connections and replies/s, and restarts when any", () => {
  const workers = [
    { worker: 0, connections_active: 1013, replies_per_second: 1087.5, restarts: 0 },
    { worker: 1, connections_active: 3, replies_per_second: 357, restarts: 2 },
  ];
  const text = renderTop(state({ snapshot: { ...SNAPSHOT, workers } }), { columns: 120, rows: 40 })
    .join("\n");
  assert.match(
    text,
    /^Workers +0: 1,013 conns, 1,088 replies\/s {3}1: 3 conns, 357\.0 replies\/s, 2 restarts$/m,
  );
  // Without workers (the data plane on the main thread), or an answer that holds no rows: no line.
  for (const odd of [[], null, 7, "x", [null, 3, []]]) {
    const lines = renderTop(
      state({ snapshot: { ...SNAPSHOT, workers: odd as unknown as typeof workers } }),
      { columns: 120, rows: 40 },
    );
    assertFits(lines, 120, 40, JSON.stringify(odd));
    assert.doesNotMatch(lines.join("\n"), /^Workers/m);
  }
});

Deno.test("renderTop() fits any terminal size, wrapping sections and eliding upstream rows", () => {
  const many = {
    ...SNAPSHOT,
    upstreams: Array.from(
      { length: 60 },
      (_, i) => upstream(`upstream-with-a-rather-long-name-${i}`),
    ),
  };
  for (const columns of [1, 10, 20, 33, 40, 60, 80, 100, 200]) {
    for (const rows of [1, 2, 5, 10, 24, 40, 100]) {
      for (const s of [state(), state({ snapshot: many }), state({ error: "x".repeat(300) })]) {
        const lines = renderTop(s, { columns, rows });
        assertFits(lines, columns, rows, `${columns}x${rows}`);
        assert.equal(lines.at(-1), TOP_FOOTER.slice(0, columns), "the footer stays");
      }
    }
  }
  // 80 columns: the resilience counters wrap under their label instead of being cut.
  const narrow = renderTop(state(), { columns: 80, rows: 40 }).join("\n");
  assert.match(narrow, /^Resilience +upstream errors 3.*\n {15}\S/m);
  assert.match(narrow, /internal errors 0/);
  // 24 rows and 60 upstreams: as many rows as fit, then how many more.
  const short = renderTop(state({ snapshot: many }), { columns: 120, rows: 24 });
  assert.match(short.join("\n"), /upstream-with-a-rather-long-name-0 +up/);
  assert.match(short.at(-2)!, /^ {2}\.\.\. and \d+ more \(enlarge the terminal\)$/);
  const shown = short.filter((line) => /^ {2}upstream-with/.test(line)).length;
  assert.equal(Number(/and (\d+) more/.exec(short.at(-2)!)![1]), 60 - shown);
});

Deno.test("renderTop() accounts for every upstream on any screen of 4 rows or more: shown, or counted in '... and N more'", () => {
  const names = ["alpha", "beta", "gamma"];
  const three = { ...SNAPSHOT, upstreams: names.map((name) => upstream(name)) };
  // 70x20 is what a new user saw: the counters filled the screen and the upstreams vanished.
  const small = renderTop(state({ snapshot: three }), { columns: 70, rows: 20 });
  assertFits(small, 70, 20, "70x20");
  assert.match(small.join("\n"), /^Upstreams \(3\)/m);
  const more = /\.\.\. and (\d+) more \(enlarge the terminal\)$/m.exec(small.join("\n"));
  const listed = small.filter((line) => /^ {2}(alpha|beta|gamma) /.test(line)).length;
  assert.equal(listed + Number(more?.[1] ?? 0), 3, small.join("\n"));
  // 70x24 has room for every row, names whole (the numeric columns narrow to fit).
  const roomy = renderTop(state({ snapshot: three }), { columns: 70, rows: 24 });
  assertFits(roomy, 70, 24, "70x24");
  for (const name of names) assert.match(roomy.join("\n"), new RegExp(`^ {2}${name} +up +2 `, "m"));
  assert.doesNotMatch(roomy.join("\n"), /~/, "no column is cut");
  const many = { ...SNAPSHOT, upstreams: Array.from({ length: 60 }, (_, i) => upstream(`u${i}`)) };
  for (const columns of [40, 60, 70, 80, 120]) {
    for (let rows = 4; rows <= 80; rows++) {
      for (const snapshot of [three, many]) {
        const lines = renderTop(state({ snapshot }), { columns, rows });
        const text = lines.join("\n");
        const total = snapshot.upstreams!.length;
        // Names may be cut at 40 columns: a row is a line that starts like one.
        const shown = lines.filter((line) => /^ {2}(alph|beta|gamm|u\d)/.test(line)).length;
        const hidden = Number(/and (\d+) more/.exec(text)?.[1] ?? 0);
        assert.equal(shown + hidden, total, `${columns}x${rows}, ${total} upstreams:\n${text}`);
      }
    }
  }
});

Deno.test("renderTop() says the proxy is unreachable, with and without numbers from before", () => {
  const never = renderTop(
    state({ snapshot: undefined, fetchedAt: undefined, error: "connection refused", failures: 3 }),
    { columns: 120, rows: 30 },
  );
  assertFits(never, 120, 30, "unreachable");
  assert.equal(
    never[1],
    "UNREACHABLE: connection refused; retrying every 1s (3 failed in a row, no data yet)",
  );
  assert.ok(!never.join("\n").includes("Requests/s"), "no numbers to show");
  const stale = renderTop(
    state({ now: 25_000, error: "no answer within 1000 ms", failures: 15 }),
    { columns: 120, rows: 30 },
  );
  assert.match(stale[1], /^UNREACHABLE: no answer within 1000 ms; .*numbers below are 15s old\)$/);
  assert.match(stale.join("\n"), /^Requests\/s +1s 812\.5/m, "the last numbers stay on screen");
  const first = renderTop(state({ snapshot: undefined, fetchedAt: undefined }), {
    columns: 80,
    rows: 10,
  });
  assert.equal(first[1], "Connecting...");
});

Deno.test("renderTop() gives each upstream's requests/s and replies/s between two snapshots", () => {
  const before = {
    ...SNAPSHOT,
    uptime_seconds: 100,
    upstreams: [
      upstream("alpha", { requests: 1000, replies: 990 }),
      upstream("beta", { requests: 500, replies: 500 }),
      upstream("gamma", { address: "elsewhere" }),
      upstream("delta", { requests: 5000 }),
    ],
  };
  const now = {
    ...SNAPSHOT,
    uptime_seconds: 102,
    upstreams: [
      upstream("alpha", { requests: 1400, replies: 1390 }), // 200/s each way
      upstream("beta", { requests: 500, replies: 500 }), // idle
      upstream("gamma"), // the same name at another address: another upstream
      upstream("delta", { requests: 10 }), // counters went back: removed and added again
      upstream("epsilon"), // new
    ],
  };
  const text = renderTop(state({ snapshot: now, previous: before }), { columns: 120, rows: 40 })
    .join("\n");
  assert.match(text, /^ {2}alpha +up +2 +200\.0 +200\.0 +1,400 +1,390 +3$/m);
  assert.match(text, /^ {2}beta +up +2 +0\.0 +0\.0 +500 +500 +3$/m);
  assert.match(text, /^ {2}gamma +up +2 +- +- /m);
  assert.match(text, /^ {2}delta +up +2 +- +0\.0 +10 /m, "requests went back; replies did not");
  assert.match(text, /^ {2}epsilon +up +2 +- +- /m);
  // No time between the two (the same snapshot twice): no rates.
  const same = renderTop(state({ snapshot: now, previous: now }), { columns: 120, rows: 40 });
  assert.match(same.join("\n"), /^ {2}alpha +up +2 +- +- +1,400 /m);
});

Deno.test("renderTop() survives an answer whose upstreams are not rows: null, numbers, hostile names, a million of them", () => {
  const hostile = JSON.parse(
    '{"msg_total":1,"uptime_seconds":5,"upstreams":[null,5,"x",[],{"name":{"toString":1},"state":{"valueOf":2}},{"name":"ok","address":"a","requests":3}]}',
  ) as TopSnapshot;
  const previous = { ...hostile, uptime_seconds: 4 };
  const lines = renderTop(state({ snapshot: hostile, previous }), { columns: 100, rows: 30 });
  const text = lines.join("\n");
  assert.match(text, /^Upstreams \(2\)$/m, "only the object rows count");
  assert.match(text, /^ {2}- +- +- /m, "a name and a state that are objects show as -");
  assert.match(text, /^ {2}ok +- +- +0\.0 /m);
  const many = {
    msg_total: 1,
    upstreams: Array.from({ length: 1_000_000 }, (_, i) => ({ name: `u${i}` })),
  } as unknown as TopSnapshot;
  assertFits(renderTop(state({ snapshot: many }), { columns: 80, rows: 24 }), 80, 24, "1M rows");
});

Deno.test("renderTop() shows missing fields as - and neutralises control characters from the network", () => {
  const hostile = {
    msg_total: 1,
    upstreams: [upstream("evil\x1b[2J\x1b]0;pwned\x07", { state: "up\r\n", requests: "many" })],
    connections_closed: { "bad\x1breason": 1 },
  } as unknown as TopSnapshot;
  const lines = renderTop(state({ snapshot: hostile, error: "boom\x1b[H" }), {
    columns: 100,
    rows: 30,
  });
  assertFits(lines, 100, 30, "hostile");
  const text = lines.join("\n");
  assert.match(text, /^Requests\/s +1s - {3}10s -$/m);
  assert.match(text, /^Latency +p50 - /m);
  assert.match(text, /evil\?\[2J\?\]0;pwned\? +up\?\? +2 +- +- +- +1,230 +3/);
  assert.match(text, /bad\?reason 1/);
  assert.match(lines[1], /^UNREACHABLE: boom\?\[H;/);
});

Deno.test("frameText() homes the cursor, clears each line and never ends on a newline", () => {
  const frame = frameText(["title", "UNREACHABLE: x", "body"]);
  assert.equal(
    frame,
    "\x1b[H\x1b[2K\x1b[7mtitle\x1b[0m\r\n\x1b[2K\x1b[1mUNREACHABLE: x\x1b[0m\r\n\x1b[2Kbody",
  );
});

Deno.test("--stats takes a URL, PORT or HOST:PORT", () => {
  for (
    const [text, url] of [
      ["8088", "http://127.0.0.1:8088/stats"],
      [":9", "http://127.0.0.1:9/stats"],
      ["proxy.example:8088", "http://proxy.example:8088/stats"],
      ["[::1]:8088", "http://[::1]:8088/stats"],
      ["http://10.0.0.1:8088", "http://10.0.0.1:8088/stats"],
      ["http://10.0.0.1:8088/", "http://10.0.0.1:8088/stats"],
      ["https://ops.example/foo/stats?x=1", "https://ops.example/foo/stats?x=1"],
    ]
  ) {
    assert.equal(parseStatsUrl(text), url, text);
  }
  for (const bad of ["", "0", "nope", "host:", "ftp://x/stats", "http://", "::1:8088"]) {
    assert.throws(() => parseStatsUrl(bad), UsageError, bad);
  }
});

Deno.test("parseTopConfig() defaults, Go-style flags, environment, and --interval bounds", () => {
  const defaults = parseTopConfig([]);
  assert.equal(defaults.statsUrl, "http://127.0.0.1:8088/stats");
  assert.equal(defaults.intervalMs, 1000);
  assert.equal(parseTopConfig(["-stats=9000", "-interval", "250ms"]).intervalMs, 250);
  const env = (name: string) => name === "FOO_PROXY_STATS" ? "h:1" : undefined;
  assert.equal(parseTopConfig([], env).statsUrl, "http://h:1/stats");
  assert.throws(() => parseTopConfig(["--interval", "50ms"]), /at least 100ms/);
  assert.throws(() => parseTopConfig(["--interval", "-1s"]), UsageError);
  assert.throws(() => parseTopConfig(["stray"]), UsageError);
  assert.match(TOP_USAGE, /--stats URL[\s\S]*--interval DUR/);
});

Deno.test("fetchStats() returns the snapshot, and says briefly why when it cannot", async () => {
  let mode = "ok";
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    if (mode === "404") return new Response("no", { status: 404, statusText: "Not Found" });
    if (mode === "html") return new Response("<html>");
    if (mode === "array") return Response.json([1]);
    return Response.json(SNAPSHOT);
  });
  const url = `http://127.0.0.1:${server.addr.port}/stats`;
  assert.deepEqual(await fetchStats(url), SNAPSHOT);
  for (
    const [m, pattern] of [
      ["404", /^HTTP 404 Not Found$/],
      ["html", /not JSON/],
      ["array", /not foo-proxy stats/],
    ] as const
  ) {
    mode = m;
    await assert.rejects(
      fetchStats(url),
      (e: Error) => e instanceof StatsFetchError && pattern.test(e.message),
    );
  }
  const closed = listenLocal();
  const port = (closed.addr as Deno.NetAddr).port;
  closed.close();
  await assert.rejects(
    fetchStats(`http://127.0.0.1:${port}/stats`),
    (e: Error) => e instanceof StatsFetchError && e.message === "connection refused",
  );
  // A peer that accepts and never answers: the fetch gives up after its timeout.
  using silent = listenLocal();
  const accepted = silent.accept();
  await assert.rejects(
    fetchStats(`http://127.0.0.1:${(silent.addr as Deno.NetAddr).port}/stats`, { timeoutMs: 100 }),
    (e: Error) => e instanceof StatsFetchError && e.message === "no answer within 100 ms",
  );
  (await accepted).close();
});

Deno.test("describeFetchError() keeps the innermost cause, without the os error number", () => {
  const inner = new Error(
    "error sending request for url (http://127.0.0.1:1/stats): client error (Connect): tcp connect error: Connection refused (os error 111)",
  );
  assert.equal(
    describeFetchError(new TypeError("fetch failed", { cause: inner })),
    "connection refused",
  );
  assert.equal(describeFetchError("weird"), "weird");
});

Deno.test("runTopLoop() retries while unreachable, draws the numbers once they come, and ends on q", async () => {
  let polls = 0;
  const frames: { lines: string[]; state: TopState }[] = [];
  const written: string[] = [];
  let press: ReadableStreamDefaultController<Uint8Array> | undefined;
  const keys = new ReadableStream<Uint8Array>({
    start(controller) {
      press = controller;
    },
  });
  const redraw = new EventTarget();
  const done = runTopLoop({
    url: "http://test/stats",
    intervalMs: 5,
    size: () => ({ columns: 100, rows: 30 }),
    write: (text) => written.push(text),
    poll: () => {
      polls++;
      if (polls <= 2) return Promise.reject(new StatsFetchError("connection refused"));
      return Promise.resolve(SNAPSHOT);
    },
    keys,
    redraw,
    onFrame: (lines, state) => {
      frames.push({ lines, state });
      if (lines.some((line) => /^Requests\/s +1s 812\.5/.test(line))) {
        press!.enqueue(new Uint8Array([0x20])); // any key: a redraw
        press!.enqueue(new TextEncoder().encode("q"));
      }
    },
  });
  await done;
  assert.equal(frames[0].lines[1], "Connecting...");
  assert.ok(
    frames.some((f) => /^UNREACHABLE: connection refused; .*\(2 failed in a row/.test(f.lines[1])),
    "the second failure is on screen",
  );
  assert.equal(frames.at(-1)!.lines[1], "OK");
  assert.equal(polls, 3, "no poll after q");
  assert.equal(written.length, frames.length);
  const count = frames.length;
  redraw.dispatchEvent(new Event("redraw"));
  assert.equal(frames.length, count, "nothing is drawn once it has ended");
});

Deno.test("runTopLoop() ends on its signal during a poll that hangs", async () => {
  const controller = new AbortController();
  let started = false;
  await runTopLoop({
    url: "http://test/stats",
    intervalMs: 1000,
    size: () => ({ columns: 80, rows: 24 }),
    write: () => {
      if (!started) queueMicrotask(() => controller.abort());
      started = true;
    },
    poll: (signal) =>
      new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason))),
    signal: controller.signal,
  });
});

Deno.test("foo-proxy top --help, -V and a bad --interval", async () => {
  await using help = spawnMain(["top", "--help"]);
  assert.equal((await help.status()).code, 0);
  assert.match(help.stdout.text, /^Usage: foo-proxy top[\s\S]*--stats URL[\s\S]*--interval DUR/);
  await using version = spawnMain(["top", "-V"]);
  assert.equal((await version.status()).code, 0);
  assert.match(version.stdout.text, /^foo-proxy \d+\.\d+\.\d+\n$/);
  await using bad = spawnMain(["top", "--interval", "10ms"]);
  assert.equal((await bad.status()).code, 2);
  assert.deepEqual(bad.stderr.text.trimEnd().split("\n"), [
    `foo-proxy: Invalid value "10ms" for --interval: expected at least 100ms (see 'foo-proxy top --help')`,
  ]);
  assert.equal(bad.stdout.text, "");
});

// ---------------------------------------------------------------------------------------------
// A real pseudo-terminal: tmux runs `foo-proxy top` against a real proxy and our Foo server.

const TMUX = await (async () => {
  try {
    const { success } = await new Deno.Command("tmux", { args: ["-V"], stdout: "null" }).output();
    return success;
  } catch {
    return false;
  }
})();

const TMUX_TEST =
  "foo-proxy top in a real terminal (tmux) shows live rates, and q quits restoring the terminal";

Deno.test({
  name: TMUX ? TMUX_TEST : `${TMUX_TEST} (ignored: tmux is not installed; apt-get install tmux)`,
  ignore: !TMUX,
  async fn() {
    const socket = `foo-proxy-top-test-${Deno.pid}`;
    const session = "top";
    const tmux = async (...args: string[]) => {
      const out = await new Deno.Command("tmux", {
        args: ["-L", socket, "-f", "/dev/null", ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { ok: out.success, text: new TextDecoder().decode(out.stdout) };
    };
    const dir = await Deno.makeTempDir({ prefix: "foo-proxy-top-" });
    await using upstream = await startUpstream();
    const http = freePort();
    await using proxy = spawnMain([
      "proxy",
      "--listen=127.0.0.1:0",
      `--forward=127.0.0.1:${upstream.addr.port}`,
      `--http=127.0.0.1:${http}`,
      "--health=off",
    ]);
    const port = Number((await proxy.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/))[1]);
    const quote = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;
    // After top exits, the same pane records its exit code and whether the terminal was restored.
    const script = [
      `${quote(Deno.execPath())} run --allow-net src/main.ts top --stats 127.0.0.1:${http}`,
      `echo $? > ${quote(`${dir}/code`)}`,
      `tmux display -p '#{alternate_on} #{cursor_flag}' > ${quote(`${dir}/terminal`)}`,
    ].join("; ");
    let traffic = true;
    let screen = "";
    try {
      const started = await tmux(
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        "120",
        "-y",
        "40",
        "-c",
        REPO_ROOT,
        `sh -c ${quote(script)}`,
      );
      assert.ok(started.ok, "tmux started");
      // Traffic through the proxy until top shows it: one pipelining client, REQ then ACK.
      const drive = (async () => {
        using conn = await connectTo(port);
        const reader = new LineReader(conn);
        for (let seq = 1; traffic; seq++) {
          await writeAll(conn, `REQ ${seq}\n`);
          assert.equal(await reader.readLine(), `ACK ${seq}`);
        }
      })();
      try {
        // Bounded polling of the screen: no sleep stands in for synchronisation.
        const deadline = Date.now() + 20_000;
        for (;;) {
          screen = (await tmux("capture-pane", "-p", "-t", session)).text;
          const rate = /Requests\/s +1s ([\d,.]+)/.exec(screen)?.[1];
          if (rate !== undefined && Number(rate.replaceAll(",", "")) > 0) break;
          if (Date.now() > deadline) {
            assert.fail(`top showed no request rate above 0 within 20 s; screen:\n${screen}`);
          }
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      } finally {
        traffic = false;
        await drive;
      }
      assert.match(screen, new RegExp(`^foo-proxy top {2}http://127\\.0\\.0\\.1:${http}/stats`));
      assert.match(screen, /^OK$/m);
      assert.match(screen, new RegExp(`^ {2}127\\.0\\.0\\.1:${upstream.addr.port} +up +\\d`, "m"));
      assert.match(screen, /^q: quit$/m);
      const modes = (await tmux("display", "-p", "-t", session, "#{alternate_on} #{cursor_flag}"))
        .text.trim();
      assert.equal(modes, "1 0", "alternate screen on, cursor hidden");
      assert.ok((await tmux("send-keys", "-t", session, "q")).ok);
      await waitUntil(
        async () => !(await tmux("has-session", "-t", session)).ok,
        "the tmux session to end after q",
        10_000,
      );
      assert.equal((await Deno.readTextFile(`${dir}/code`)).trim(), "0", "exit code 0");
      assert.equal(
        (await Deno.readTextFile(`${dir}/terminal`)).trim(),
        "0 1",
        "after exit: main screen back, cursor shown",
      );
    } finally {
      traffic = false;
      await tmux("kill-server");
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/**
 * A raw HTTP server on 127.0.0.1:0 that answers every connection with `head` and then up to
 * `limit` bytes of `{"msg_total": 1, "pad": "xxx…` without ever ending the body; resolves
 * `written` with what it managed to send to each client before the client went away.
 */
function endlessServer(head: string, limit: number) {
  const listener = listenLocal();
  const written: number[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      void (async () => {
        let sent = 0;
        try {
          await conn.read(new Uint8Array(4096)); // the request
          await writeAll(conn, head + '{"msg_total": 1, "pad": "');
          const chunk = new Uint8Array(64 * 1024).fill(0x78);
          while (sent < limit) sent += await conn.write(chunk);
          await conn.read(new Uint8Array(1)); // until the client goes away
        } catch {
          // The client cancelled: that is the point.
        } finally {
          written.push(sent);
          try {
            conn.close();
          } catch {
            // Closed already.
          }
        }
      })();
    }
  })();
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}/stats`,
    written,
    async [Symbol.asyncDispose]() {
      listener.close();
      await serving.catch(() => {});
    },
  };
}

Deno.test("fetchStats() reads at most its cap of an endless answer and says so, instead of buffering gigabytes", async () => {
  const streamed = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
  await using server = endlessServer(streamed, 64 * 1024 * 1024);
  await assert.rejects(
    fetchStats(server.url, { timeoutMs: 5000, maxBytes: 1024 * 1024 }),
    (e: Error) =>
      e instanceof StatsFetchError &&
      e.message === "the answer is over 1 MiB (is this the proxy's /stats?)",
  );
  await waitUntil(() => server.written.length === 1, "the server to see the cancel");
  assert.ok(server.written[0] < 32 * 1024 * 1024, `sent ${server.written[0]} bytes`);
});

Deno.test("fetchStats() refuses a declared length over its cap without reading the body", async () => {
  const declared =
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\n\r\n";
  await using server = endlessServer(declared, 0);
  await assert.rejects(
    fetchStats(server.url, { timeoutMs: 5000 }),
    (e: Error) =>
      e instanceof StatsFetchError &&
      e.message === "the answer is over 4 MiB (is this the proxy's /stats?)",
  );
  await waitUntil(() => server.written.length === 1, "the server to see the close");
});
