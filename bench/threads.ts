/**
 * Per-thread CPU of a foo-proxy under load (`deno run -A bench/threads.ts [--workers N]
 * [--seconds S]`): starts our Foo server, `foo-proxy proxy --workers N` (as `deno task start`
 * runs it) and `foo-proxy bench` (64 connections x 16 pipelined), then reads each thread's CPU
 * from `/proc/PID/task/TID/stat` at the start and the end of the measured seconds, and prints one
 * line per thread that used at least 1 % of a core: whether each data-plane worker carries a real
 * share of the work. Linux only.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Child } from "../scripts/child.ts";
import { writeStdoutLine } from "../src/cmd/output.ts";
import { THROUGHPUT_LOAD } from "./harness/load.ts";
import { HOST } from "./harness/spawn.ts";
import { startServer } from "./harness/foo_server.ts";
import { startTarget } from "./harness/target.ts";

const MAIN = new URL("../src/main.ts", import.meta.url).pathname;

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** CPU seconds and name of every thread of `pid`. */
async function threads(pid: number): Promise<Map<number, { name: string; cpu: number }>> {
  const out = new Map<number, { name: string; cpu: number }>();
  for await (const entry of Deno.readDir(`/proc/${pid}/task`)) {
    const tid = Number(entry.name);
    try {
      const stat = await Deno.readTextFile(`/proc/${pid}/task/${tid}/stat`);
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out.set(tid, { name, cpu: (Number(fields[11]) + Number(fields[12])) / 100 });
    } catch {
      // The thread ended meanwhile.
    }
  }
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      workers: { type: "string", default: "2" },
      seconds: { type: "string", default: "5" },
    },
  });
  const seconds = Number(values.seconds);
  const server = await startServer();
  await using _server = server.child;
  const tmpDir = await Deno.makeTempDir({ prefix: "foo_threads_" });
  await using proxy = await startTarget({
    key: `w${values.workers}`,
    kind: "foo",
    admin: false,
    flags: [`--workers=${values.workers}`],
  }, { upstreams: [server], tmpDir });
  await using load = new Child([
    "run",
    "--allow-net",
    MAIN,
    "bench",
    "--connect",
    `${HOST}:${proxy.port}`,
    ...THROUGHPUT_LOAD,
    "--duration",
    `${seconds + 3}s`,
  ], { name: "load" });
  await delay(1500); // past the load's ramp-up
  const before = await threads(proxy.child!.pid);
  const started = performance.now();
  await delay(seconds * 1000);
  const after = await threads(proxy.child!.pid);
  const wall = (performance.now() - started) / 1000;
  let total = 0;
  const rows: { tid: number; name: string; share: number }[] = [];
  for (const [tid, end] of after) {
    const share = (end.cpu - (before.get(tid)?.cpu ?? 0)) / wall;
    total += share;
    if (share >= 0.01) rows.push({ tid, name: end.name, share });
  }
  rows.sort((a, b) => b.share - a.share);
  writeStdoutLine(`foo-proxy --workers ${values.workers}, ${wall.toFixed(1)} s under 64x16 load:`);
  for (const row of rows) {
    writeStdoutLine(
      `  thread ${row.tid} ${row.name.padEnd(16)} ${
        (row.share * 100).toFixed(0).padStart(4)
      } % of a core`,
    );
  }
  writeStdoutLine(`  all threads              ${(total * 100).toFixed(0).padStart(4)} % of a core`);
  await load.status;
  await Deno.remove(tmpDir, { recursive: true });
}

if (import.meta.main) await main();
