/**
 * `deno task soak`: minutes of mixed load against a `foo-proxy --resume` process, with the
 * upstream Foo server killed (SIGKILL) and restarted on the same port while replies are owed,
 * then a report: replies lost (must be 0 with `--resume`), wrong replies (must be 0 in every
 * mode: a reply whose type or data is not what the server gives that REQ directly, e.g. after a
 * replay that changed a Seq), the proxy's file descriptors (must
 * return to their baseline) and RSS (must stay bounded) at start and end, the message counts on
 * both sides (must agree), and errors by kind.
 *
 * The load, all on 127.0.0.1:
 * - pipelining: long-lived connections with REQs in flight (`foo-proxy bench`'s generator,
 *   which verifies the Seq and order of every reply, and its type and data by hash);
 * - churn: connections that send a few REQs and reconnect (the same generator and checks);
 * - idle connections that speak once every few seconds (each reply checked the same way);
 * - the Foo server runs with `--reply hash`: each reply is computed from the REQ's Seq and data
 *   (see `src/protocol/reply_hash.ts`), so every reply's content can be checked;
 * - it answers after `--delay-ms`, so replies are owed whenever it is killed.
 *
 * Exits 0 when every check passes, 1 otherwise, 2 on bad flags.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { hashReply } from "../src/protocol/reply_hash.ts";
import { waitOrAbort as sleep } from "../src/proxy/wait_or_abort.ts";
import { LOAD_ERROR_KINDS, type LoadReport, runLoad } from "../src/tools/load.ts";
import { Child } from "./child.ts";
import { startPermissionFlags } from "./permissions.ts";

const LOCAL = "127.0.0.1";
/** How long a part may take to start or stop. */
const PATIENCE_MS = 20_000;
const MiB = 1024 * 1024;

/** Usage text of the soak. */
export const SOAK_USAGE =
  `Usage: deno task soak [--seconds N] [--restarts N] [--idle N] [--no-resume]

Runs mixed load (pipelining, churn, idle connections) through foo-proxy --resume for N seconds
while the upstream Foo server (foo-proxy server --reply hash: replies computed from the Seq and
the data) is killed and restarted, then prints a report and exits 0 when no reply was lost or
wrong (every reply's type, Seq and data is checked), descriptors and memory are stable, and the
counts agree. Exits 1 otherwise; a wrong reply fails the soak even with --no-resume.

  --seconds N    how long the load runs                         (default 180)
  --restarts N   upstream kills and restarts, evenly spread     (default 2)
  --idle N       idle connections (one REQ every 3-8 s each)    (default 50)
  --rate N       REQs per second of the pipelining load         (default 2000)
  --no-resume    run the proxy without --resume (replies are then expected to be lost)
  -h, --help     print this help`;

function freePort(): number {
  using listener = Deno.listen({ hostname: LOCAL, port: 0 });
  return listener.addr.port;
}

/** One reading of the proxy process's resources. */
interface Sample {
  /** Seconds since the load started (negative: before it). */
  t: number;
  fds: number;
  rssBytes: number;
}

async function sample(pid: number, t: number): Promise<Sample> {
  // Deno wants --allow-all to read /proc/<pid>/ itself; `ls` and `cat` only need --allow-run.
  const run = async (command: string, path: string) => {
    const out = await new Deno.Command(command, { args: [path] }).output();
    if (!out.success) throw new Error(`${command} ${path} failed`);
    return new TextDecoder().decode(out.stdout);
  };
  const fds = (await run("ls", `/proc/${pid}/fd`)).split("\n").filter((l) => l !== "").length;
  const status = await run("cat", `/proc/${pid}/status`);
  const kb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? NaN);
  return { t: Math.round(t * 10) / 10, fds, rssBytes: kb * 1024 };
}

/**
 * Connections that stay open and send one REQ every few seconds, verifying each reply: its Seq
 * (a wrong one ends the connection) and its content (`hashReply`; a wrong one is counted in
 * `wrong` and the connection goes on).
 */
class IdleClients {
  sent = 0;
  /** Replies that were right. */
  received = 0;
  /** Replies with the right Seq but the wrong type or data. */
  wrong = 0;
  reconnects = 0;
  errors: Record<string, number> = {};

  constructor(readonly port: number, readonly count: number) {}

  async run(stop: AbortSignal): Promise<void> {
    await Promise.all(Array.from({ length: this.count }, () => this.#one(stop)));
  }

  #error(kind: string): void {
    this.errors[kind] = (this.errors[kind] ?? 0) + 1;
  }

  async #one(stop: AbortSignal): Promise<void> {
    let conn: Deno.TcpConn | undefined;
    let seq = 0;
    const buf = new Uint8Array(256);
    const encoder = new TextEncoder();
    const decoder = new TextDecoder();
    let pending = "";
    try {
      while (!stop.aborted) {
        if (conn === undefined) {
          try {
            conn = await Deno.connect({ hostname: LOCAL, port: this.port });
          } catch {
            this.#error("connect");
            await sleep(500, stop);
            continue;
          }
          seq = 0;
          pending = "";
        }
        await sleep(3000 + Math.random() * 5000, stop);
        if (stop.aborted) break;
        seq++;
        this.sent++;
        const c = conn;
        const timer = setTimeout(() => c.close(), 15_000);
        try {
          await c.write(encoder.encode(`REQ ${seq} idle\n`));
          while (!pending.includes("\n")) {
            const n = await c.read(buf);
            if (n === null) throw new Error("closed");
            pending += decoder.decode(buf.subarray(0, n));
          }
          const line = pending.slice(0, pending.indexOf("\n"));
          pending = pending.slice(line.length + 1);
          if (!new RegExp(`^(ACK|NAK)[ \t]+${seq}([ \t\r]|$)`).test(line)) {
            throw new Error("wrong_seq");
          }
          if (line.replace(/\r$/, "") === hashReply(`REQ ${seq} idle`)) {
            this.received++;
          } else {
            this.wrong++;
            this.#error("wrong_reply");
          }
        } catch (error) {
          const kind =
            error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted
              ? "timeout"
              : error instanceof Error && /^(closed|wrong_seq)$/.test(error.message)
              ? error.message
              : "read";
          this.#error(kind);
          try {
            c.close();
          } catch {
            // Closed by the timer already.
          }
          conn = undefined;
          this.reconnects++;
        } finally {
          clearTimeout(timer);
        }
      }
    } finally {
      try {
        conn?.close();
      } catch {
        // Already closed.
      }
    }
  }
}

/** What the proxy's SIGUSR2 line says (the fields the report uses). */
interface ProxySnapshot {
  msg_req: number;
  msg_ack: number;
  msg_nak: number;
  msg_invalid: number;
  connections_active: number;
  connections_total: number;
  upstream_errors: number;
  upstream_connect_retries?: number;
  failovers?: number;
  replays?: number;
  resume_failures?: number;
  connections_closed: Record<string, number>;
}

async function proxyStats(proxy: Child): Promise<ProxySnapshot> {
  const from = proxy.stdout.lines.length;
  proxy.kill("SIGUSR2");
  const match = await proxy.stdout.waitFor(/^\{.*\}$/, "the proxy's stats line", from);
  return JSON.parse(match[0]);
}

/** Runs the soak; resolves with the exit code. */
export async function main(args: string[]): Promise<number> {
  let seconds: number;
  let restarts: number;
  let idle: number;
  let rate: number;
  let resume: boolean;
  try {
    const { values } = parseArgs({
      args,
      strict: true,
      options: {
        seconds: { type: "string", default: "180" },
        restarts: { type: "string", default: "2" },
        idle: { type: "string", default: "50" },
        rate: { type: "string", default: "2000" },
        "no-resume": { type: "boolean", default: false },
        help: { type: "boolean", short: "h" },
      },
    });
    if (values.help) {
      writeStdoutLine(SOAK_USAGE);
      return 0;
    }
    const whole = (flag: string, text: string, min: number) => {
      if (!/^\d+$/.test(text) || Number(text) < min) {
        throw new Error(`--${flag}: expected a whole number >= ${min}, got "${text}"`);
      }
      return Number(text);
    };
    seconds = whole("seconds", values.seconds, 10);
    restarts = whole("restarts", values.restarts, 0);
    idle = whole("idle", values.idle, 0);
    rate = whole("rate", values.rate, 1);
    resume = !values["no-resume"];
  } catch (error) {
    writeStderrLine(`soak: ${(error as Error).message.split("\n")[0]} (see --help)`);
    return 2;
  }

  const permissions = startPermissionFlags();
  const upstreamPort = freePort();
  const proxyPort = freePort();
  const serverArgs = [
    "run",
    ...permissions,
    "src/main.ts",
    "server",
    "--listen",
    `${LOCAL}:${upstreamPort}`,
    "--delay-ms",
    "20",
    "--reply",
    "hash",
    "--log-level",
    "warning",
  ];
  const startServer = async () => {
    const server = new Child(serverArgs, { detached: true });
    await server.stdout.waitFor(/listening on/, "the Foo server to listen");
    return server;
  };
  const say = (line: string) => writeStdoutLine(line);
  say(
    `soak: ${seconds} s, ${restarts} upstream restart(s), ${idle} idle connections, ` +
      `pipelining at ${rate} REQ/s, churn, proxy ${resume ? "with" : "WITHOUT"} --resume`,
  );

  let server = await startServer();
  await using proxy = new Child([
    "run",
    ...permissions,
    "src/main.ts",
    "proxy",
    "--listen",
    `${LOCAL}:${proxyPort}`,
    "--forward",
    `${LOCAL}:${upstreamPort}`,
    ...(resume ? ["--resume"] : []),
    // New connections made while the upstream is down wait for it too (about 6 s of backoff).
    "--connect-retries",
    "6",
    "--http",
    "off",
    "--health",
    "off",
    "--log-format",
    "json",
  ], { detached: true });
  try {
    await proxy.stderr.waitFor(/Listening on/, "the proxy to listen");
    const baseline = await sample(proxy.pid, -1);
    const samples: Sample[] = [];
    const t0 = performance.now();
    const elapsed = () => (performance.now() - t0) / 1000;

    // The load.
    const target = { hostname: LOCAL, port: proxyPort };
    const durationMs = seconds * 1000;
    const pipelining = runLoad(target, {
      connections: 8,
      pipeline: 16,
      rate,
      payloadBytes: 32,
      replies: "hash",
      durationMs,
      drainTimeoutMs: 20_000,
    });
    const churn = runLoad(target, {
      connections: 4,
      pipeline: 4,
      rate: Math.max(1, Math.round(rate / 5)),
      requestsPerConnection: 20,
      payloadBytes: 8,
      replies: "hash",
      durationMs,
      drainTimeoutMs: 20_000,
    });
    const stopIdle = new AbortController();
    const idleClients = new IdleClients(proxyPort, idle);
    const idleRun = idleClients.run(stopIdle.signal);

    // Samples every 5 s while the load runs; the upstream restarts at even intervals.
    const stopSampling = new AbortController();
    const sampling = (async () => {
      while (!stopSampling.signal.aborted) {
        await sleep(5000, stopSampling.signal);
        if (!stopSampling.signal.aborted) samples.push(await sample(proxy.pid, elapsed()));
      }
    })();
    const downtimes: number[] = [];
    for (let k = 1; k <= restarts; k++) {
      await sleep(t0 + (durationMs * k) / (restarts + 1) - performance.now());
      const killedAt = performance.now();
      await server.stop("SIGKILL");
      server = await startServer();
      const down = (performance.now() - killedAt) / 1000;
      downtimes.push(down);
      say(
        `  t=${elapsed().toFixed(1)} s: upstream killed and restarted (down ${down.toFixed(2)} s)`,
      );
    }
    await sleep(t0 + durationMs - performance.now());
    const end = await sample(proxy.pid, elapsed());
    stopIdle.abort();
    const [pipeReport, churnReport] = await Promise.all([pipelining, churn]);
    await idleRun;
    stopSampling.abort();
    await sampling;

    // Every client is gone: the proxy should be back to where it started.
    let stats = await proxyStats(proxy);
    for (let waited = 0; stats.connections_active > 0 && waited < PATIENCE_MS; waited += 100) {
      await sleep(100);
      stats = await proxyStats(proxy);
    }
    const after = await sample(proxy.pid, elapsed());
    const start = samples[0] ?? end;
    const peak = Math.max(end.rssBytes, ...samples.map((x) => x.rssBytes));

    const reports: [string, LoadReport][] = [["pipelining", pipeReport], ["churn", churnReport]];
    const requests = pipeReport.requests + churnReport.requests + idleClients.sent;
    const wrong = pipeReport.errors.wrong_reply + churnReport.errors.wrong_reply +
      idleClients.wrong;
    // Right replies, then every reply that arrived (a wrong reply is not lost, it is worse).
    const responses = pipeReport.responses + churnReport.responses + idleClients.received;
    const received = responses + wrong;
    const lost = requests - received;
    const errors: Record<string, number> = {};
    for (const [, report] of reports) {
      for (const kind of LOAD_ERROR_KINDS) {
        if (report.errors[kind] > 0) errors[kind] = (errors[kind] ?? 0) + report.errors[kind];
      }
    }
    for (const [kind, n] of Object.entries(idleClients.errors)) {
      errors[`idle_${kind}`] = (errors[`idle_${kind}`] ?? 0) + n;
    }
    const logLevels: Record<string, number> = {};
    const warnings = new Map<string, number>();
    for (const line of proxy.stderr.lines) {
      try {
        const record = JSON.parse(line);
        const level = String(record.level ?? "?");
        logLevels[level] = (logLevels[level] ?? 0) + 1;
        if (/^(WARN|WARNING|ERROR|FATAL)$/i.test(level)) {
          const kind = String(record.message ?? "").replace(/\d+(\.\d+)*(:\d+)?/g, "#");
          warnings.set(kind, (warnings.get(kind) ?? 0) + 1);
        }
      } catch {
        logLevels.unparsed = (logLevels.unparsed ?? 0) + 1;
      }
    }

    const mb = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
    // V8 grows its heap lazily (RSS climbs for minutes and jumps when the process is starved of
    // CPU, then plateaus) even though the live heap stays flat, so RSS cannot be expected to be
    // flat: a leak shows as unbounded growth. The bound: neither double nor grow by 64 MiB.
    const rssGrowth = end.rssBytes - start.rssBytes;
    const rssLimit = Math.min(64 * MiB, start.rssBytes);
    // Without --resume, clients of a dead upstream lose replies (and REQs the proxy never read):
    // those checks are then only reported.
    const checks: [string, boolean | "info"][] = [
      [`replies lost: ${lost}`, resume ? lost === 0 : "info"],
      [`wrong replies (type or data not what the server gives that REQ): ${wrong}`, wrong === 0],
      [
        `client errors: ${Object.values(errors).reduce((a, b) => a + b, 0)}`,
        resume ? Object.keys(errors).length === 0 : "info",
      ],
      [
        `descriptors back to baseline after the clients left: ${baseline.fds} -> ${after.fds}`,
        after.fds <= baseline.fds + 2,
      ],
      [
        `RSS bounded under load: ${mb(start.rssBytes)} at t=${start.t} s -> ${
          mb(end.rssBytes)
        } at the end (limit +${mb(rssLimit)}), peak ${mb(peak)}`,
        rssGrowth <= rssLimit,
      ],
      [
        `proxy msg_req ${stats.msg_req} = REQs the clients sent ${requests}`,
        resume ? stats.msg_req === requests : "info",
      ],
      [
        `proxy ACK+NAK ${stats.msg_ack + stats.msg_nak} = replies the clients got ${received}`,
        stats.msg_ack + stats.msg_nak === received,
      ],
      [`invalid lines: ${stats.msg_invalid}`, stats.msg_invalid === 0],
    ];
    if (resume) {
      checks.push([
        `connections the proxy could not resume: ${stats.resume_failures ?? "?"}`,
        stats.resume_failures === 0,
      ]);
    }

    say("");
    say("== soak report ==");
    say(
      `load ran ${seconds} s; upstream killed ${restarts} time(s), down ${
        downtimes.map((d) => d.toFixed(2) + " s").join(", ") || "never"
      }`,
    );
    for (const [name, r] of reports) {
      say(
        `  ${
          name.padEnd(10)
        } ${r.requests} REQs, ${r.responses} replies, ${r.connectionsOpened} connections, p99 ${
          r.latencyMs.p99.toFixed(1)
        } ms, max ${r.latencyMs.max.toFixed(1)} ms`,
      );
    }
    say(
      `  ${
        "idle".padEnd(10)
      } ${idleClients.sent} REQs, ${idleClients.received} replies, ${idle} connections, ${idleClients.reconnects} reconnects`,
    );
    say(`client side: ${requests} REQs sent, ${received} replies received, ${lost} lost`);
    say(
      `wrong replies: ${wrong} (pipelining ${pipeReport.errors.wrong_reply}, churn ${churnReport.errors.wrong_reply}, idle ${idleClients.wrong})`,
    );
    say(`client errors by kind: ${JSON.stringify(errors)}`);
    say(
      `proxy: failovers ${stats.failovers ?? "-"}, replays ${
        stats.replays ?? "-"
      }, resume_failures ${
        stats.resume_failures ?? "-"
      }, upstream_errors ${stats.upstream_errors}, connect retries ${
        stats.upstream_connect_retries ?? "-"
      }, connections ${stats.connections_total}`,
    );
    say(`proxy connections closed by reason: ${JSON.stringify(stats.connections_closed)}`);
    say(`proxy log lines by level: ${JSON.stringify(logLevels)}`);
    for (const [kind, n] of warnings) say(`  ${n} x ${kind}`);
    say(`proxy process (pid ${proxy.pid}): descriptors / RSS`);
    say(`  before load      ${String(baseline.fds).padStart(5)}  ${mb(baseline.rssBytes)}`);
    for (const s of samples) {
      say(`  t=${String(s.t).padEnd(6)} s     ${String(s.fds).padStart(5)}  ${mb(s.rssBytes)}`);
    }
    say(`  end of load     ${String(end.fds).padStart(5)}  ${mb(end.rssBytes)}`);
    say(`  clients gone    ${String(after.fds).padStart(5)}  ${mb(after.rssBytes)}`);
    say("checks:");
    for (const [text, ok] of checks) {
      say(`  ${ok === "info" ? "INFO" : ok ? "PASS" : "FAIL"}  ${text}`);
    }

    const stopped = await proxy.stop("SIGTERM");
    await server.stop("SIGTERM");
    const passed = checks.every(([, ok]) => ok !== false) && stopped.code === 0;
    say(`proxy exited with ${stopped.code}; soak ${passed ? "PASSED" : "FAILED"}`);
    return passed ? 0 : 1;
  } finally {
    await server[Symbol.asyncDispose]();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
