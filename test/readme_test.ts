/**
 * The README's shell blocks run when pasted whole. Each block meant to be pasted is marked with
 * `<!-- paste-test: NAME -->` on a line of its own before it; this test runs each marked block in
 * `bash -e` (every command must succeed), in a session of its own, from the repository root, with
 * the well-known ports (8001, 8002, 8088, 8081) and paths (`/tmp/foo-proxy.pid`, `stats.jsonl`)
 * rewritten to free ones, and checks what the block promises. The block must leave nothing
 * running: its session is checked, then killed whatever happened.
 */
import assert from "node:assert/strict";
import { dirname } from "node:path";
import {
  freePort,
  OutputLines,
  REPO_ROOT,
  startUpstream,
  waitUntil,
  withTimeout,
} from "./_util.ts";

/** One marked block: its name and its text. */
interface PasteBlock {
  name: string;
  text: string;
}

/** The blocks of `markdown` marked `<!-- paste-test: NAME -->`. */
function pasteBlocks(markdown: string): PasteBlock[] {
  const marked = /^<!-- paste-test: ([\w-]+) -->\n\n```sh\n([\s\S]*?)^```$/gm;
  return [...markdown.matchAll(marked)].map((m) => ({ name: m[1], text: m[2] }));
}

/** What a block printed and left behind. */
interface BlockRun {
  code: number;
  stdout: string;
  stderr: string;
  /** The directory standing for /tmp and the working files. */
  dir: string;
}

/** Free ports for the README's well-known ones; 8001 may be an upstream the test runs. */
interface PortMap {
  [readmePort: string]: number;
}

const BLOCK_TIMEOUT_MS = 60_000;

/**
 * Runs `text` in `bash -e` in a new session from the repository root, with `ports` and the
 * README's paths rewritten, and waits until it and everything it started have closed its output.
 * Kills the whole session afterwards, whatever happened, so nothing lingers.
 */
async function runBlock(text: string, ports: PortMap, dir: string): Promise<BlockRun> {
  let script = text
    .replaceAll("/tmp/foo-proxy.pid", `${dir}/foo-proxy.pid`)
    .replaceAll("stats.jsonl", `${dir}/stats.jsonl`);
  for (const [from, to] of Object.entries(ports)) {
    script = script.replace(new RegExp(`\\b${from}\\b`, "g"), String(to));
  }
  const child = new Deno.Command("setsid", {
    args: ["-w", "bash", "-e", "-c", script],
    cwd: REPO_ROOT,
    env: {
      // The deno running this test, and the admin ports the proxy takes by default moved too.
      PATH: `${dirname(Deno.execPath())}:${Deno.env.get("PATH") ?? ""}`,
      NO_COLOR: "1",
      FOO_PROXY_HTTP: `127.0.0.1:${ports["8088"]}`,
      FOO_PROXY_HEALTH: `127.0.0.1:${ports["8081"]}`,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = new OutputLines(child.stdout);
  const stderr = new OutputLines(child.stderr);
  const killSession = () => {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // The session is gone already: the block cleaned up after itself.
    }
  };
  try {
    const status = await withTimeout(child.status, BLOCK_TIMEOUT_MS, "the block to end");
    // A block that failed may have left its background processes: no point waiting for them.
    if (status.code !== 0) killSession();
    // The pipes close once every process the block started has exited (they inherit them).
    await withTimeout(
      Promise.all([stdout.done, stderr.done]),
      BLOCK_TIMEOUT_MS,
      "everything the block started to exit",
    ).catch((error) => {
      throw new Error(`${error.message}; stderr: ${stderr.text}`);
    });
    assert.deepEqual(await sessionProcesses(child.pid), [], "nothing is left running");
    return { code: status.code, stdout: stdout.text, stderr: stderr.text, dir };
  } finally {
    killSession();
    await child.status;
    await Promise.all([stdout.done, stderr.done]);
  }
}

/**
 * Processes (not zombies) still in session `sid`, as `pid (command)`. Read from /proc by bash:
 * Deno lets a test read /proc only with --allow-all, and `ps` is not in every image.
 */
async function sessionProcesses(sid: number): Promise<string[]> {
  // "pid (comm) state ppid pgrp session …"; comm may hold spaces and parentheses.
  const script = `for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    set -- \${line##*) }
    if [ "$4" = "${sid}" ] && [ "$1" != Z ]; then echo "\${line%) *})"; fi
  done`;
  const out = await new Deno.Command("bash", {
    args: ["-c", script],
    stdout: "piped",
    stderr: "null",
  }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((line) => line !== "");
}

/** Whether process `pid` exists and is not a zombie. */
async function processRuns(pid: number): Promise<boolean> {
  const script =
    `read -r line < /proc/${pid}/stat 2>/dev/null && set -- \${line##*) } && [ "$1" != Z ]`;
  return (await new Deno.Command("bash", { args: ["-c", script] }).output()).success;
}

/** Free ports for the README's. */
function freePorts(): PortMap {
  return { "8001": freePort(), "8002": freePort(), "8088": freePort(), "8081": freePort() };
}

/** The JSON objects among `text`'s lines. */
function jsonLines(text: string): Record<string, unknown>[] {
  return text.split("\n").filter((line) => line.startsWith("{")).map((line) => JSON.parse(line));
}

/** What each marked block promises, by name. */
const CHECKS: Record<string, (text: string) => Promise<void>> = {
  // In front of "your Foo server": ours, on the port the README's 8001 becomes.
  "pid-file": async (text) => {
    await using upstream = await startUpstream();
    const dir = await Deno.makeTempDir({ prefix: "foo-proxy-readme-" });
    try {
      const run = await runBlock(text, { ...freePorts(), "8001": upstream.addr.port }, dir);
      assert.equal(run.code, 0, run.stderr);
      // curl: the stats over HTTP, with latency.
      const http = JSON.parse(run.stdout);
      assert.equal(typeof http.msg_total, "number");
      assert.ok("latency_p99_seconds" in http, run.stdout);
      // stats.jsonl: the SIGUSR2 line, then the final one.
      const lines = jsonLines(await Deno.readTextFile(`${dir}/stats.jsonl`));
      assert.equal(lines.length, 2, JSON.stringify(lines));
      for (const line of lines) assert.equal(typeof line.msg_total, "number");
      // The pid file is removed on exit.
      await assert.rejects(Deno.stat(`${dir}/foo-proxy.pid`), Deno.errors.NotFound);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
  "by-hand": async (text) => {
    const dir = await Deno.makeTempDir({ prefix: "foo-proxy-readme-" });
    try {
      const run = await runBlock(text, freePorts(), dir);
      assert.equal(run.code, 0, run.stderr);
      // The client verified every reply; the proxy printed the SIGUSR2 line and its final one.
      assert.match(run.stdout, /OK!/);
      const lines = jsonLines(run.stdout.replace(/^\.*OK!/m, ""));
      assert.equal(lines.length, 2, run.stdout);
      for (const line of lines) assert.equal(line.msg_req, 4000, JSON.stringify(line));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
};

const README = await Deno.readTextFile(`${REPO_ROOT}README.md`);
const BLOCKS = pasteBlocks(README);

Deno.test("every README block marked paste-test has a check here, and every check a block", () => {
  assert.deepEqual(BLOCKS.map((b) => b.name).sort(), Object.keys(CHECKS).sort());
});

Deno.test("a block that leaves a process running fails, and the process is killed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-readme-" });
  const pidFile = `${dir}/left.pid`;
  try {
    await assert.rejects(
      runBlock(`sleep 60 > /dev/null 2>&1 & echo $! > ${pidFile}`, freePorts(), dir),
      /nothing is left running/,
    );
    const pid = Number(await Deno.readTextFile(pidFile));
    // Killed with its session (a zombie at most, if nobody reaps it).
    await waitUntil(async () => !(await processRuns(pid)), `process ${pid} to be killed`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

for (const block of BLOCKS) {
  Deno.test({
    name: `the README's "${block.name}" block runs as pasted and does what it says`,
    ignore: !(block.name in CHECKS),
    fn: () => CHECKS[block.name](block.text),
  });
}
