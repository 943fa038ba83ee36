/**
 * The bundled Foo test driver (`foo-proxy client`): sends numbered REQs over one or more
 * connections, keeping up to `pipeline` in flight on each, and verifies every reply: the right
 * Seq, in order, ACK or NAK, and nothing extra. After its last reply each connection half-closes
 * and expects the server to close with nothing more to say.
 *
 * @module
 */
import { getLogger, type Logger } from "@logtape/logtape";
import { type Address, formatAddress } from "../net/address.ts";
import { formatMessage, parseMessage } from "../protocol/message.ts";
import { describeError } from "../net/describe_error.ts";
import { connectWebSocket } from "./websocket_client_conn.ts";

/** Options for {@linkcode runClient}. */
export interface ClientOptions {
  /** The Foo server (or proxy) to connect to. */
  connect: Address;
  /** REQs sent on each connection, Seq 1 to N. @default {10} */
  requests?: number;
  /** REQs in flight per connection (sent but not yet answered). @default {1} */
  pipeline?: number;
  /** Connections driven at once. @default {1} */
  connections?: number;
  /** Bytes of data after each REQ's Seq; 0 sends bare `REQ <seq>`. @default {0} */
  payload?: number;
  /**
   * Longest wait for a connect and for each reply (and for the server to close after the
   * half-close, which then is no error); 0 means no limit. @default {10000}
   */
  timeoutMs?: number;
  /** Called after each batch of verified replies with the totals so far. Unset: not called. */
  onProgress?: (verified: number, total: number) => void;
  /** Aborting stops the run, which then fails with a {@linkcode ClientError}. */
  signal?: AbortSignal;
  /** LogTape logger; unset: the `foo-proxy.client` category. */
  logger?: Logger;
  /**
   * Connect to this WebSocket URL (`ws://` or `wss://`) instead of `connect`: each write is a
   * text message, the replies' messages are read as one stream. Unset: TCP to `connect`.
   */
  webSocket?: string;
}

/** What a successful run did. */
export interface ClientResult {
  /** Connections driven. */
  connections: number;
  /** REQs sent and answered, over all connections. */
  requests: number;
  /** Replies that were ACK. */
  acks: number;
  /** Replies that were NAK. */
  naks: number;
  /** Wall time of the run, in ms. */
  durationMs: number;
}

/** The run failed: a wrong, missing or extra reply, or a connection that could not be made. */
export class ClientError extends Error {
  /** The 1-based connection that failed; unset when the failure was not one connection's. */
  readonly connection?: number;
  /** Creates the error; `message` says what was wrong, like `expected reply to seq 7, got "ACK 9"`. */
  constructor(message: string, options?: ErrorOptions & { connection?: number }) {
    super(message, options);
    this.name = "ClientError";
    this.connection = options?.connection;
  }
}

/**
 * Runs the driver; resolves with the counts when every reply was right.
 *
 * @throws {ClientError} saying what was wrong (the first failure; the other connections stop).
 * @throws {RangeError} for a bad option.
 */
export async function runClient(options: ClientOptions): Promise<ClientResult> {
  const requests = options.requests ?? 10;
  const pipeline = options.pipeline ?? 1;
  const connections = options.connections ?? 1;
  const payload = options.payload ?? 0;
  checkCount("requests", requests, 0);
  checkCount("pipeline", pipeline, 1);
  checkCount("connections", connections, 1);
  checkCount("payload", payload, 0);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const logger = options.logger ?? getLogger(["foo-proxy", "client"]);
  const stop = new AbortController();
  const onAbort = () =>
    stop.abort(new ClientError("interrupted", { cause: options.signal?.reason }));
  options.signal?.addEventListener("abort", onAbort, { once: true });
  if (options.signal?.aborted) onAbort();

  const started = performance.now();
  const total = requests * connections;
  const counts = { verified: 0, acks: 0, naks: 0 };
  const driver: Driver = {
    address: options.connect,
    requests,
    pipeline,
    data: "x".repeat(payload),
    timeoutMs,
    counts,
    logger,
    stop: stop.signal,
    numbered: connections > 1,
    progress: () => options.onProgress?.(counts.verified, total),
    webSocket: options.webSocket,
  };
  let failure: unknown;
  const tasks = Array.from(
    { length: connections },
    (_, i) =>
      drive(driver, i + 1).catch((error) => {
        // The first failure is the story; the others are mostly its echo as we stop them.
        if (failure === undefined) {
          failure = error;
          stop.abort(error);
        }
      }),
  );
  await Promise.all(tasks);
  options.signal?.removeEventListener("abort", onAbort);
  if (failure !== undefined) throw failure;
  return {
    connections,
    requests: total,
    acks: counts.acks,
    naks: counts.naks,
    durationMs: performance.now() - started,
  };
}

interface Driver {
  address: Address;
  requests: number;
  pipeline: number;
  data: string;
  timeoutMs: number;
  counts: { verified: number; acks: number; naks: number };
  logger: Logger;
  stop: AbortSignal;
  numbered: boolean;
  progress: () => void;
  webSocket: string | undefined;
}

/** What the driver uses of a connection: a TCP one, or a WebSocket's. */
type ClientConn = Pick<Deno.Conn, "read" | "write" | "closeWrite" | "close">;

/** Longest reply line accepted before the driver gives up on finding its end. */
const MAX_LINE = 1 << 16;

async function drive(driver: Driver, index: number): Promise<void> {
  const fail = (message: string, cause?: unknown) =>
    new ClientError(driver.numbered ? `connection ${index}: ${message}` : message, {
      cause,
      connection: index,
    });
  const target = driver.webSocket ?? formatAddress(driver.address);
  const conn = await dial(driver, target, fail);
  const { requests, pipeline, counts } = driver;
  let sent = 0;
  let received = 0;
  let room: PromiseWithResolvers<void> | undefined;
  let sendError: unknown;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch {
      // Already closed.
    }
    room?.resolve();
  };
  const onStop = () => close();
  driver.stop.addEventListener("abort", onStop, { once: true });
  if (driver.stop.aborted) close();

  const encoder = new TextEncoder();
  const sender = (async () => {
    try {
      while (sent < requests && !closed) {
        if (sent - received >= pipeline) {
          room = Promise.withResolvers();
          await room.promise;
          continue;
        }
        const count = Math.min(pipeline - (sent - received), requests - sent);
        let text = "";
        for (let seq = sent + 1; seq <= sent + count; seq++) {
          text += formatMessage("REQ", seq, driver.data);
        }
        sent += count;
        const bytes = encoder.encode(text);
        for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
      }
    } catch (error) {
      // A write fails when the server went away; the reader says what that cost (missing replies).
      if (!closed) sendError = error;
    }
  })();

  const buf = new Uint8Array(65536);
  const decoder = new TextDecoder();
  let partial = "";
  // Reads once; null at EOF, "timeout" when nothing came within the timeout.
  const read = async (): Promise<number | null | "timeout"> => {
    let timedOut = false;
    const timer = driver.timeoutMs > 0
      ? setTimeout(() => {
        timedOut = true;
        close();
      }, driver.timeoutMs)
      : undefined;
    try {
      return await conn.read(buf);
    } catch (error) {
      if (timedOut) return "timeout";
      if (driver.stop.aborted) throw driver.stop.reason;
      throw fail(
        `read failed: ${describeError(error)} with ${sent - received} replies missing`,
        error,
      );
    } finally {
      clearTimeout(timer);
    }
  };
  try {
    while (received < requests) {
      const n = await read();
      if (n === "timeout") {
        throw fail(
          received < sent
            ? `no reply to seq ${received + 1} within ${driver.timeoutMs} ms`
            : `could not send seq ${sent + 1} within ${driver.timeoutMs} ms`,
        );
      }
      if (n === null) {
        const missing = requests - received;
        const tail = partial === "" ? "" : ` (and a partial line ${quote(partial)})`;
        const why = sendError === undefined ? "" : ` (sending failed: ${describeError(sendError)})`;
        throw fail(`connection closed with ${missing} replies missing${tail}${why}`);
      }
      const lines = (partial + decoder.decode(buf.subarray(0, n), { stream: true })).split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        if (received === sent) {
          throw fail(
            received === requests
              ? `unexpected line after the last reply: ${quote(line)}`
              : `unexpected line with no request outstanding: ${quote(line)}`,
          );
        }
        const expected = received + 1;
        const message = parseMessage(line);
        if (message === null || message.type === "REQ" || message.seq !== expected) {
          throw fail(`expected reply to seq ${expected}, got ${quote(line)}`);
        }
        received = expected;
        if (message.type === "ACK") counts.acks++;
        else counts.naks++;
        counts.verified++;
      }
      if (partial.length > MAX_LINE) {
        throw fail(`reply line longer than ${MAX_LINE} bytes: ${quote(partial.slice(0, 40))}…`);
      }
      if (lines.length > 0) {
        room?.resolve();
        driver.progress();
      }
    }
    // Every reply is in. Half-close like a polite client; the server then has nothing more to say.
    // closeWrite() is async: await it, or a rejection (the server already gone) would be
    // unhandled and end the process instead of failing this run with a clear message.
    try {
      await conn.closeWrite();
    } catch (error) {
      throw fail(`half-close failed: ${describeError(error)}`, error);
    }
    const n = await read();
    if (typeof n === "number") {
      const extra = partial + decoder.decode(buf.subarray(0, n));
      throw fail(`unexpected data after the last reply: ${quote(extra.split("\n")[0])}`);
    }
    if (partial !== "") throw fail(`unexpected data after the last reply: ${quote(partial)}`);
    if (n === "timeout") {
      driver.logger.debug("{target} kept connection {index} open after the half-close", {
        target,
        index,
      });
    }
  } finally {
    close();
    driver.stop.removeEventListener("abort", onStop);
    await sender;
  }
}

async function dial(
  driver: Driver,
  target: string,
  fail: (message: string, cause?: unknown) => ClientError,
): Promise<ClientConn> {
  if (driver.stop.aborted) throw driver.stop.reason;
  const attempt = new AbortController();
  const onStop = () => attempt.abort();
  driver.stop.addEventListener("abort", onStop, { once: true });
  let timedOut = false;
  const timer = driver.timeoutMs > 0
    ? setTimeout(() => {
      timedOut = true;
      attempt.abort();
    }, driver.timeoutMs)
    : undefined;
  try {
    if (driver.webSocket !== undefined) {
      return await connectWebSocket(driver.webSocket, { signal: attempt.signal });
    }
    const conn = await Deno.connect({
      hostname: driver.address.hostname,
      port: driver.address.port,
      transport: "tcp",
      signal: attempt.signal,
    });
    conn.setNoDelay(true);
    return conn;
  } catch (error) {
    if (driver.stop.aborted) throw driver.stop.reason;
    const why = timedOut ? `connect timed out after ${driver.timeoutMs} ms` : describeError(error);
    throw fail(`Cannot connect to "${target}": ${why}`, error);
  } finally {
    clearTimeout(timer);
    driver.stop.removeEventListener("abort", onStop);
  }
}

function checkCount(name: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`Invalid ${name} ${value}: expected an integer >= ${min}`);
  }
}

function quote(text: string): string {
  return JSON.stringify(text.length > 200 ? text.slice(0, 200) + "…" : text);
}
