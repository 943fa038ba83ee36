/**
 * `deno task demo`: a newcomer's first look at foo-proxy. Starts our Foo server, the proxy in
 * front of it (with exactly the permissions of `deno task start`) and a client load, all on free
 * ports of 127.0.0.1; prints live stats once a second for a few seconds (or until Ctrl-C) and the
 * `/stats` and `/metrics` URLs; then shuts everything down in order and prints the final stats.
 *
 * Every part is a real `src/main.ts` subcommand in its own process, and the demo prints each
 * command line so it can be run by hand.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { PROXY_FLAGS } from "../src/cmd/proxy.ts";
import { Child } from "./child.ts";
import { shellQuote, startPermissionFlags } from "./permissions.ts";

const LOCAL = "127.0.0.1";

/** Usage text of the demo. */
export const DEMO_USAGE = `Usage: deno task demo [--seconds N]

Starts a Foo server, foo-proxy in front of it and a client load on free ports of 127.0.0.1,
prints the proxy's stats once a second, then stops everything.

  --seconds N   how long to run (default 5; 0 = until Ctrl-C)
  -h, --help    print this help`;

/** A port that was free a moment ago. */
function freePort(): number {
  using listener = Deno.listen({ hostname: LOCAL, port: 0 });
  return listener.addr.port;
}

/** The stats fields the live lines show (a subset of `/stats`). */
interface Snapshot {
  msg_req: number;
  msg_ack: number;
  msg_nak: number;
  msg_invalid: number;
  request_rate_1s: number;
  response_rate_1s: number;
  connections_active: number;
  connections_total: number;
}

function statsLine(elapsed: string, s: Snapshot): string {
  const n = (x: number) => Math.round(x).toLocaleString("en-US");
  return `${elapsed.padStart(4)}  REQ ${n(s.msg_req).padStart(9)} (${
    n(s.request_rate_1s).padStart(6)
  }/s)  ACK ${n(s.msg_ack).padStart(9)}  NAK ${n(s.msg_nak).padStart(7)}  ` +
    `replies ${n(s.response_rate_1s).padStart(6)}/s  invalid ${s.msg_invalid}  ` +
    `connections ${s.connections_active} open, ${s.connections_total} total`;
}

/** Runs the demo; resolves with the exit code. */
export async function main(args: string[]): Promise<number> {
  let seconds: number;
  try {
    const { values } = parseArgs({
      args,
      strict: true,
      options: { seconds: { type: "string", default: "5" }, help: { type: "boolean", short: "h" } },
    });
    if (values.help) {
      writeStdoutLine(DEMO_USAGE);
      return 0;
    }
    seconds = Number(values.seconds);
    if (!/^\d+$/.test(values.seconds)) throw new Error(`--seconds: expected a whole number`);
  } catch (error) {
    writeStderrLine(`demo: ${(error as Error).message.split("\n")[0]} (see --help)`);
    return 2;
  }

  const permissions = startPermissionFlags();
  const command = (sub: string[]) => ["run", ...permissions, "src/main.ts", ...sub];
  // Its own process group: Ctrl-C reaches only the demo, which then stops the parts in order.
  const part = (name: string, sub: string[]) => new Child(command(sub), { name, detached: true });
  const show = (sub: string[]) =>
    writeStdoutLine(`  $ ${["deno", ...command(sub)].map(shellQuote).join(" ")}`);
  const hasHttp = "http" in PROXY_FLAGS;
  const upstreamPort = freePort();
  const proxyPort = freePort();
  const httpPort = hasHttp ? freePort() : 0;
  const hasHealth = "health" in PROXY_FLAGS;
  const healthPort = hasHealth ? freePort() : 0;

  const stop = new AbortController();
  const onSigint = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSigint);
  try {
    writeStdoutLine(
      `foo-proxy demo: a Foo server, the proxy in front of it and a client load on ${LOCAL}` +
        (seconds > 0 ? ` for ${seconds} s` : "") + " (Ctrl-C stops it)",
    );
    const serverArgs = ["server", "--listen", `${LOCAL}:${upstreamPort}`, "--nak-every", "10"];
    show(serverArgs);
    await using server = part("server", serverArgs);
    await server.stdout.waitFor(/^listening on /, "the server's 'listening on' line");

    const proxyArgs = [
      "proxy",
      "--listen",
      `${LOCAL}:${proxyPort}`,
      "--forward",
      `${LOCAL}:${upstreamPort}`,
      ...(hasHttp ? ["--http", `${LOCAL}:${httpPort}`] : []),
      ...(hasHealth ? ["--health", `${LOCAL}:${healthPort}`] : []),
    ];
    show(proxyArgs);
    await using proxy = part("proxy", proxyArgs);
    await proxy.stderr.waitFor(/Listening on/, "the proxy's 'Listening on' log line");
    for (const port of [httpPort, healthPort].filter((p) => p !== 0)) {
      await proxy.stderr.waitFor(
        new RegExp(`Serving .* on http://${LOCAL.replaceAll(".", "\\.")}:${port}\\b`),
        `the proxy's 'Serving … on http://${LOCAL}:${port}' log line`,
      );
    }

    const clientArgs = [
      "client",
      "--connect",
      `${LOCAL}:${proxyPort}`,
      "--requests",
      "2000",
      "--connections",
      "4",
      "--pipeline",
      "8",
      "--payload",
      "16",
    ];
    writeStdoutLine("  load: this client again and again until the end:");
    show(clientArgs);
    let clientRuns = 0;
    let clientFailures = 0;
    let client: Child | undefined;
    const load = (async () => {
      while (!stop.signal.aborted) {
        client = part("client", clientArgs);
        const status = await client.status;
        await Promise.all([client.stdout.done, client.stderr.done]);
        if (stop.signal.aborted) break; // interrupted on purpose
        if (status.success) clientRuns++;
        else {
          clientFailures++;
          writeStderrLine(`demo: client failed: ${client.stderr.lines.join(" ").trim()}`);
        }
      }
    })();

    if (hasHttp) {
      const until = seconds > 0
        ? "while the demo runs (--seconds 0: until Ctrl-C)"
        : "until Ctrl-C";
      writeStdoutLine(`  open ${until}:`);
      writeStdoutLine(`    stats:   http://${LOCAL}:${httpPort}/stats`);
      writeStdoutLine(`    metrics: http://${LOCAL}:${httpPort}/metrics`);
      if (hasHealth) writeStdoutLine(`    health:  http://${LOCAL}:${healthPort}/readyz`);
    } else {
      writeStdoutLine(
        `  stats: kill -USR2 ${proxy.process.pid} (one JSON line on the proxy's stdout)`,
      );
    }

    const started = Date.now();
    let tick = 0;
    while (!stop.signal.aborted && !proxy.exited) {
      tick++;
      const due = started + tick * 1000;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, due - Date.now()));
        stop.signal.addEventListener("abort", () => {
          clearTimeout(timer);
          resolve();
        }, { once: true });
      });
      if (stop.signal.aborted) break;
      const snapshot = await readStats(proxy, hasHttp ? `http://${LOCAL}:${httpPort}/stats` : "");
      writeStdoutLine(statsLine(`${tick}s`, snapshot));
      if (seconds > 0 && tick >= seconds) stop.abort();
    }

    writeStdoutLine("stopping: client, then proxy (SIGTERM prints its final stats), then server");
    stop.abort();
    client?.kill("SIGINT");
    await load;
    const before = proxy.stdout.lines.length;
    const proxyStatus = await proxy.stop("SIGTERM");
    const final = proxy.stdout.lines.slice(before).findLast((line) => line.startsWith("{"));
    const serverStatus = await server.stop("SIGTERM");
    if (final) writeStdoutLine(statsLine("end", JSON.parse(final)));
    writeStdoutLine(
      `done: ${clientRuns} client runs verified every reply (${clientFailures} failed); ` +
        `proxy exit ${proxyStatus.code}, server exit ${serverStatus.code}`,
    );
    return clientFailures === 0 && proxyStatus.success && serverStatus.success ? 0 : 1;
  } catch (error) {
    writeStderrLine(`demo: ${(error as Error).message}`);
    return 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
}

/** One stats snapshot: from `/stats` when the proxy serves HTTP, else through SIGUSR2. */
async function readStats(proxy: Child, url: string): Promise<Snapshot> {
  if (url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
    return await response.json();
  }
  const from = proxy.stdout.lines.length;
  proxy.kill("SIGUSR2");
  const [line] = await proxy.stdout.waitFor(/^\{.*/, "the proxy's SIGUSR2 stats line", from);
  return JSON.parse(line);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
