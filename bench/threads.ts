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
import { delay, THROUGHPUT_LOAD } from "./_common.ts";

const MAIN = new URL("../src/main.ts", import.meta.url).pathname;
const HOST = "127.0.0.1";

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

function freePort(): number {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
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
  const upstreamPort = freePort();
  const proxyPort = freePort();
  await using server = new Child(
    ["run", "--allow-net", MAIN, "server", "--listen", `${HOST}:${upstreamPort}`],
    { name: "server" },
  );
  await server.stderr.waitFor(/listening/i, "the server to listen");
  await using proxy = new Child([
    "run",
    "--allow-net",
    "--allow-env=FOO_PROXY_*",
    `--allow-read=${new URL("../src", import.meta.url).pathname}`,
    "--unstable-net",
    "--v8-flags=--max-semi-space-size=8",
    MAIN,
    "proxy",
    "--listen",
    `${HOST}:${proxyPort}`,
    "--forward",
    `${HOST}:${upstreamPort}`,
    "--http=off",
    "--health=off",
    `--workers=${values.workers}`,
  ], { name: "proxy" });
  await proxy.stderr.waitFor(/Listening on/, "the proxy to listen");
  await using load = new Child([
    "run",
    "--allow-net",
    MAIN,
    "bench",
    "--connect",
    `${HOST}:${proxyPort}`,
    ...THROUGHPUT_LOAD,
    "--duration",
    `${seconds + 3}s`,
  ], { name: "load" });
  await delay(1500); // past the load's ramp-up
  const before = await threads(proxy.pid);
  const started = performance.now();
  await delay(seconds * 1000);
  const after = await threads(proxy.pid);
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
}

if (import.meta.main) await main();
