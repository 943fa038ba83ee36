/**
 * The floor for the bridge engine's cost: a bare Deno TCP forwarder with no protocol analysis,
 * no counters, no timers and no limits. Each accepted connection gets one upstream connection
 * (`setNoDelay(true)` on both) and one read/write loop per direction over its own 16 KiB buffer;
 * a half-close (EOF) read on one side is passed on as `closeWrite()` to the other, and both
 * sockets are closed once both directions have ended (or at the first error either way).
 *
 * It waits for the upstream's FIN after the client's, as any byte-blind forwarder must: it cannot
 * know when the exchange is complete. That is fine for a benchmark upstream that closes, and is
 * the reason foo-proxy counts instead.
 *
 * ```sh
 * deno run --allow-net bench/bare_forwarder.ts --listen 127.0.0.1:8002 --forward 127.0.0.1:8001
 * ```
 *
 * It prints `Listening on HOST:PORT, forwarding to HOST:PORT` on stderr once it accepts (port 0
 * picks a free port), and exits on SIGINT/SIGTERM. `bench/engine_cost.ts` runs it side by side
 * with foo-proxy.
 *
 * @module
 */
import { parseArgs } from "node:util";

/** Read buffer per direction, as in HAProxy's default `tune.bufsize`. */
export const BUFFER_SIZE = 16 * 1024;

/** A `host:port` pair. */
export interface HostPort {
  /** Host name or IP address. */
  hostname: string;
  /** TCP port; 0 lets the system pick one (for listening). */
  port: number;
}

/** Parses `HOST:PORT` or `[IPv6]:PORT`. @throws {TypeError} on anything else. */
export function parseHostPort(text: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new TypeError(`Invalid address "${text}": expected HOST:PORT`);
  }
  return { hostname: m[1] ?? m[2], port };
}

/** Copies `from` to `to` until EOF, then half-closes `to`. Rejects on a read or write error. */
async function pump(from: Deno.TcpConn, to: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(BUFFER_SIZE);
  for (;;) {
    const n = await from.read(buf);
    if (n === null) break;
    let off = 0;
    while (off < n) off += await to.write(buf.subarray(off, n));
  }
  await to.closeWrite();
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}

/** Forwards one accepted connection to a new connection to `upstream` until both sides end. */
async function forward(downstream: Deno.TcpConn, upstream: HostPort): Promise<void> {
  let up: Deno.TcpConn;
  try {
    up = await Deno.connect(upstream);
  } catch {
    closeQuietly(downstream);
    return;
  }
  downstream.setNoDelay(true);
  up.setNoDelay(true);
  const fail = () => {
    closeQuietly(downstream);
    closeQuietly(up);
  };
  // An error either way ends both: closing the sockets makes the other loop's read fail.
  await Promise.all([pump(downstream, up).catch(fail), pump(up, downstream).catch(fail)]);
  fail();
}

/** Accepts on `listener` and forwards every connection to `upstream` until the listener closes. */
export async function serveBareForwarder(
  listener: Deno.TcpListener,
  upstream: HostPort,
): Promise<void> {
  for (;;) {
    let conn: Deno.TcpConn;
    try {
      conn = await listener.accept();
    } catch (error) {
      if (error instanceof Deno.errors.BadResource) return; // the listener was closed
      // One connection's accept error must not end the loop; out of fds, back off briefly.
      await new Promise((resolve) => setTimeout(resolve, 10));
      continue;
    }
    void forward(conn, upstream);
  }
}

function writeStderrLine(text: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(`${text}\n`));
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      listen: { type: "string", default: "127.0.0.1:0" },
      forward: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || values.forward === undefined) {
    writeStderrLine(
      "Usage: deno run --allow-net bench/bare_forwarder.ts --listen HOST:PORT --forward HOST:PORT",
    );
    return values.help ? 0 : 2;
  }
  const upstream = parseHostPort(values.forward);
  const listener = Deno.listen(parseHostPort(values.listen));
  const { hostname, port } = listener.addr;
  writeStderrLine(
    `Listening on ${hostname}:${port}, forwarding to ${upstream.hostname}:${upstream.port}`,
  );
  const stop = () => listener.close();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  await serveBareForwarder(listener, upstream);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
