/**
 * Shared test helpers: our Foo server as upstream, line reading with bounded timeouts from
 * sockets, streams and subprocesses, and spawning `src/main.ts`. Everything is closable with
 * `await using`, so the op and resource sanitizers stay happy; nothing sleeps to synchronise.
 *
 * @module
 */
import { freePorts } from "../scripts/free_port.ts";
import type { Logger } from "@logtape/logtape";
import { fileURLToPath } from "node:url";
import type { Timers } from "../src/async/timers.ts";
import { Proxy, type ProxyOptions } from "../src/proxy/proxy.ts";
import { FooServer, type FooServerOptions } from "../src/tools/server.ts";

/** The repository root (where deno.json lives). */
export const REPO_ROOT: string = fileURLToPath(new URL("..", import.meta.url));
/** Absolute path of `src/main.ts`. */
export const MAIN_PATH: string = fileURLToPath(new URL("../src/main.ts", import.meta.url));

/**
 * Starts our Foo server on `127.0.0.1:0` (unless `options.listen` says otherwise).
 * Use with `await using upstream = await startUpstream();`.
 */
export async function startUpstream(options: Partial<FooServerOptions> = {}): Promise<FooServer> {
  const server = new FooServer({ listen: { hostname: "127.0.0.1", port: 0 }, ...options });
  await server.start();
  return server;
}

/** A raw TCP listener on `127.0.0.1:0` (for hand-written peers). `using l = listenLocal();` */
export function listenLocal(): Deno.TcpListener {
  return Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
}

/** Connects to `addr` (a bound address or a port on 127.0.0.1) with `setNoDelay(true)`. */
export async function connectTo(addr: Deno.NetAddr | number): Promise<Deno.TcpConn> {
  const { hostname, port } = typeof addr === "number"
    ? { hostname: "127.0.0.1", port: addr }
    : addr;
  const conn = await Deno.connect({ hostname, port, transport: "tcp" });
  conn.setNoDelay(true);
  return conn;
}

/** Writes all of `data` (a string is UTF-8 encoded) to `conn`. */
export async function writeAll(conn: Deno.Conn, data: string | Uint8Array): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/** A wait that took too long. */
export class TimeoutError extends Error {
  /** Creates the error; `message` says what was awaited. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TimeoutError";
  }
}

/**
 * Resolves like `promise`, or rejects with a {@linkcode TimeoutError} naming `what` after `ms`.
 * The timer is always cleared, and a late rejection of `promise` is not left unhandled.
 */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  promise.catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new TimeoutError(`Timed out after ${ms} ms waiting for ${what}`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Checks `predicate` every few ms until it holds, for state no event announces (a handler that
 * ended, a counter); throws a {@linkcode TimeoutError} naming `what` after `timeoutMs`. The result
 * never depends on timing, only how long the wait takes does.
 */
export async function waitUntil(
  predicate: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!await predicate()) {
    if (Date.now() > deadline) throw new TimeoutError(`Timed out after ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/**
 * A port on 127.0.0.1 that was free a moment ago, for a child to bind later: below the kernel's
 * ephemeral range, so that nothing else takes it meanwhile (`scripts/free_port.ts`).
 */
export function freePort(): number {
  return freePorts(1)[0];
}

/** Something {@linkcode LineReader} can read bytes from. */
export type ByteSource =
  | Deno.Conn
  | ReadableStream<Uint8Array>
  | ReadableStreamDefaultReader<Uint8Array>;

/**
 * Reads lines (or everything) from a socket or a byte stream with a deadline per call. A read
 * still pending when a call times out is kept for the next call, so no bytes are lost.
 */
export class LineReader {
  #read: () => Promise<Uint8Array | null>;
  #buffer = new Uint8Array(0);
  #pending: Promise<Uint8Array | null> | undefined;
  #eof = false;
  #decoder = new TextDecoder();

  /** Wraps `source`; a stream is locked by this reader from now on. */
  constructor(source: ByteSource) {
    if (source instanceof ReadableStream) source = source.getReader();
    if ("releaseLock" in source) {
      const reader = source;
      this.#read = async () => {
        const { value, done } = await reader.read();
        return done ? null : value;
      };
    } else {
      const conn = source;
      this.#read = async () => {
        const buf = new Uint8Array(65536);
        const n = await conn.read(buf);
        return n === null ? null : buf.subarray(0, n);
      };
    }
  }

  /** Bytes received but not yet returned. */
  get buffered(): Uint8Array {
    return this.#buffer;
  }

  /**
   * The next line without its `"\n"` (a `"\r"` is kept), the unterminated rest at EOF, or `null`
   * at EOF with nothing left.
   *
   * @throws {TimeoutError} when no full line arrives within `timeoutMs`.
   */
  async readLine(timeoutMs = 5000): Promise<string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const nl = this.#buffer.indexOf(10);
      if (nl >= 0) return this.#decode(this.#take(nl + 1).subarray(0, nl));
      if (this.#eof) {
        return this.#buffer.length > 0 ? this.#decode(this.#take(this.#buffer.length)) : null;
      }
      await this.#fill(deadline, "a line");
    }
  }

  /**
   * The next `count` lines.
   *
   * @throws {TimeoutError} when they do not all arrive within `timeoutMs` (total).
   * @throws {Error} at EOF before `count` lines.
   */
  async readLines(count: number, timeoutMs = 5000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    const lines: string[] = [];
    while (lines.length < count) {
      const line = await this.readLine(Math.max(1, deadline - Date.now()));
      if (line === null) {
        throw new Error(`End of stream after ${lines.length} of ${count} lines: ${show(lines)}`);
      }
      lines.push(line);
    }
    return lines;
  }

  /**
   * Reads lines until one matches `pattern`; resolves with the match.
   *
   * @throws {TimeoutError} or {Error} (at EOF) listing the lines skipped.
   */
  async waitForLine(pattern: RegExp, timeoutMs = 5000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    const skipped: string[] = [];
    for (;;) {
      let line: string | null;
      try {
        line = await this.readLine(Math.max(1, deadline - Date.now()));
      } catch (error) {
        if (!(error instanceof TimeoutError)) throw error;
        throw new TimeoutError(
          `Timed out after ${timeoutMs} ms waiting for a line matching ${pattern}; got ${
            show(skipped)
          }`,
          { cause: error },
        );
      }
      if (line === null) {
        throw new Error(`End of stream before a line matching ${pattern}; got ${show(skipped)}`);
      }
      const match = pattern.exec(line);
      if (match) return match;
      skipped.push(line);
    }
  }

  /**
   * Everything up to EOF.
   *
   * @throws {TimeoutError} when EOF does not come within `timeoutMs`.
   */
  async readAll(timeoutMs = 5000): Promise<Uint8Array> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#eof) await this.#fill(deadline, "end of stream");
    return this.#take(this.#buffer.length);
  }

  /**
   * Exactly the next `count` bytes, decoded as UTF-8.
   *
   * @throws {TimeoutError} when they do not come within `timeoutMs`; an Error at EOF before them.
   */
  async readExactly(count: number, timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.#buffer.length < count) {
      if (this.#eof) throw new Error(`EOF after ${this.#buffer.length} of ${count} bytes`);
      await this.#fill(deadline, `${count} bytes`);
    }
    return this.#decode(this.#take(count));
  }

  /** Everything up to EOF, decoded as UTF-8. */
  async readText(timeoutMs = 5000): Promise<string> {
    return this.#decoder.decode(await this.readAll(timeoutMs));
  }

  async #fill(deadline: number, what: string): Promise<void> {
    this.#pending ??= this.#read();
    const ms = Math.max(1, deadline - Date.now());
    const chunk = await withTimeout(this.#pending, ms, what);
    this.#pending = undefined;
    if (chunk === null) {
      this.#eof = true;
      return;
    }
    const joined = new Uint8Array(this.#buffer.length + chunk.length);
    joined.set(this.#buffer);
    joined.set(chunk, this.#buffer.length);
    this.#buffer = joined;
  }

  #take(n: number): Uint8Array {
    const head = this.#buffer.subarray(0, n);
    this.#buffer = this.#buffer.subarray(n);
    return head;
  }

  #decode(bytes: Uint8Array): string {
    return this.#decoder.decode(bytes);
  }
}

const lineReaders = new WeakMap<object, LineReader>();

/**
 * The {@linkcode LineReader} of `source`, created on first use and reused after, so successive
 * {@linkcode readLine} calls on one socket or stream never lose buffered bytes.
 */
export function lineReader(source: ByteSource | LineReader): LineReader {
  if (source instanceof LineReader) return source;
  let reader = lineReaders.get(source);
  if (!reader) {
    reader = new LineReader(source);
    lineReaders.set(source, reader);
  }
  return reader;
}

/**
 * The next line from `source` (see {@linkcode LineReader.readLine}): `null` at EOF.
 *
 * @throws {TimeoutError} when no line arrives within `timeoutMs`.
 */
export function readLine(
  source: ByteSource | LineReader,
  timeoutMs = 5000,
): Promise<string | null> {
  return lineReader(source).readLine(timeoutMs);
}

/** The next `count` lines from `source` (see {@linkcode LineReader.readLines}). */
export function readLines(
  source: ByteSource | LineReader,
  count: number,
  timeoutMs = 5000,
): Promise<string[]> {
  return lineReader(source).readLines(count, timeoutMs);
}

/** Everything up to EOF from `source`, as text (see {@linkcode LineReader.readText}). */
export function readExactly(
  source: ByteSource | LineReader,
  count: number,
  timeoutMs = 5000,
): Promise<string> {
  return lineReader(source).readExactly(count, timeoutMs);
}

/** Everything from `source` up to EOF, decoded as UTF-8 (see {@linkcode LineReader.readText}). */
export function readText(source: ByteSource | LineReader, timeoutMs = 5000): Promise<string> {
  return lineReader(source).readText(timeoutMs);
}

/**
 * Collects a subprocess's output stream in the background (so the child never blocks on a full
 * pipe) and lets a test consume it line by line.
 */
export class OutputLines {
  /** Every complete line so far, without `"\n"`. */
  readonly lines: string[] = [];
  #partial = "";
  #cursor = 0;
  #ended = false;
  #changed = Promise.withResolvers<void>();
  #done: Promise<void>;

  /** Starts draining `stream`. */
  constructor(stream: ReadableStream<Uint8Array>) {
    // A stream error (the child vanished) just ends the output; it is not a test failure here.
    this.#done = this.#pump(stream).catch(() => {});
  }

  /** Resolves when the stream has ended. */
  get done(): Promise<void> {
    return this.#done;
  }

  /** All text received so far (including an unterminated last line). */
  get text(): string {
    return this.lines.map((line) => line + "\n").join("") + this.#partial;
  }

  /**
   * The next line not yet consumed; `null` once the stream ended without more.
   *
   * @throws {TimeoutError} when none arrives within `timeoutMs`.
   */
  async next(timeoutMs = 10_000): Promise<string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.#cursor < this.lines.length) return this.lines[this.#cursor++];
      if (this.#ended) {
        if (this.#partial === "") return null;
        const rest = this.#partial;
        this.#partial = "";
        return rest;
      }
      await withTimeout(this.#changed.promise, Math.max(1, deadline - Date.now()), "a line");
    }
  }

  /**
   * Consumes lines until one matches `pattern`; resolves with the match.
   *
   * @throws {TimeoutError} or {Error} (at end of stream) quoting all the output seen.
   */
  async waitFor(pattern: RegExp, timeoutMs = 10_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let line: string | null;
      try {
        line = await this.next(Math.max(1, deadline - Date.now()));
      } catch (error) {
        if (!(error instanceof TimeoutError)) throw error;
        throw new TimeoutError(
          `Timed out after ${timeoutMs} ms waiting for a line matching ${pattern}; output: ${
            JSON.stringify(this.text)
          }`,
          { cause: error },
        );
      }
      if (line === null) {
        throw new Error(
          `Output ended before a line matching ${pattern}; output: ${JSON.stringify(this.text)}`,
        );
      }
      const match = pattern.exec(line);
      if (match) return match;
    }
  }

  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    const reader = stream.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        const text = done ? decoder.decode() : decoder.decode(value, { stream: true });
        const parts = (this.#partial + text).split("\n");
        this.#partial = parts.pop()!;
        this.lines.push(...parts);
        if (done) break;
        this.#notify();
      }
    } finally {
      this.#ended = true;
      reader.releaseLock();
      this.#notify();
    }
  }

  #notify(): void {
    const changed = this.#changed;
    this.#changed = Promise.withResolvers();
    changed.resolve();
  }
}

/**
 * The flags a child gets unless a test gives its own: net, `FOO_PROXY_*`, and what the
 * data-plane workers need (read access to `src/` to load them, `--unstable-net` to share the
 * port), as `deno task start` grants.
 */
export const DEFAULT_CHILD_FLAGS: readonly string[] = [
  "--allow-net",
  "--allow-env=FOO_PROXY_*",
  `--allow-read=${REPO_ROOT}/src`,
  "--unstable-net",
];

/** Options for {@linkcode spawnMain}. */
export interface SpawnMainOptions {
  /**
   * Deno permission flags for the child (they replace the default).
   * @default {DEFAULT_CHILD_FLAGS}
   */
  permissions?: readonly string[];
  /**
   * Extra environment variables (added to this process's environment; with the default
   * `permissions`, after `FOO_PROXY_WORKERS=2`, which a test may override). Unset: none.
   */
  env?: Record<string, string>;
  /**
   * A shell command run first, in the same process (`bash -c "PREFIX && exec deno …"`), e.g.
   * `ulimit -n 256`. Unset: deno is spawned directly.
   */
  shellPrefix?: string;
}

/** A running `deno run src/main.ts …` child. `await using child = spawnMain([...]);` */
export class MainProcess implements AsyncDisposable {
  /** The child process. */
  readonly process: Deno.ChildProcess;
  /** Its stdout, line by line. */
  readonly stdout: OutputLines;
  /** Its stderr, line by line (logs). */
  readonly stderr: OutputLines;
  #status: Promise<Deno.CommandStatus>;
  #exited = false;

  /** Spawns the child (use {@linkcode spawnMain}). */
  constructor(args: string[], options: SpawnMainOptions = {}) {
    const permissions = options.permissions ?? DEFAULT_CHILD_FLAGS;
    const argv = ["run", ...permissions, MAIN_PATH, ...args];
    const quote = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;
    const [program, programArgs] = options.shellPrefix === undefined ? [Deno.execPath(), argv] : [
      "bash",
      ["-c", `${options.shellPrefix} && exec ${[Deno.execPath(), ...argv].map(quote).join(" ")}`],
    ];
    this.process = new Deno.Command(program, {
      args: programArgs,
      cwd: REPO_ROOT,
      // With the default grants, two workers unless a test says otherwise: the suite's load
      // does not grow with the CI machine's CPUs (auto), and two is where the split shows. A
      // test with grants of its own keeps auto (which falls back where a grant is missing).
      env: options.permissions === undefined
        ? { FOO_PROXY_WORKERS: "2", ...options.env }
        : options.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.stdout = new OutputLines(this.process.stdout);
    this.stderr = new OutputLines(this.process.stderr);
    this.#status = this.process.status.then((status) => {
      this.#exited = true;
      return status;
    });
  }

  /** The child's process id. */
  get pid(): number {
    return this.process.pid;
  }

  /** The next stdout line (`null` at end of output). */
  readLine(timeoutMs = 10_000): Promise<string | null> {
    return this.stdout.next(timeoutMs);
  }

  /** Consumes stdout lines until one matches `pattern` (spawning deno can take seconds). */
  waitForLine(pattern: RegExp, timeoutMs = 20_000): Promise<RegExpExecArray> {
    return this.stdout.waitFor(pattern, timeoutMs);
  }

  /** Sends `signal` to the child (ignored when it has already exited). */
  kill(signal: Deno.Signal = "SIGTERM"): void {
    if (this.#exited) return;
    try {
      this.process.kill(signal);
    } catch (error) {
      if (!(error instanceof TypeError)) throw error; // TypeError: the child already exited.
    }
  }

  /**
   * Waits for the child to exit and for its output to end.
   *
   * @throws {TimeoutError} quoting stderr when it does not exit within `timeoutMs`.
   */
  async status(timeoutMs = 20_000): Promise<Deno.CommandStatus> {
    try {
      const status = await withTimeout(this.#status, timeoutMs, "the child to exit");
      await withTimeout(
        Promise.all([this.stdout.done, this.stderr.done]),
        timeoutMs,
        "the end of output",
      );
      return status;
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw error;
      throw new TimeoutError(`${error.message}; stderr: ${JSON.stringify(this.stderr.text)}`, {
        cause: error,
      });
    }
  }

  /** Kills the child if it still runs, and waits for it and its output. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.kill("SIGKILL");
    await this.#status;
    await Promise.all([this.stdout.done, this.stderr.done]);
  }
}

/**
 * Spawns `deno run <permissions> src/main.ts ...args` from the repository root with piped
 * stdout and stderr.
 */
export function spawnMain(args: string[], options: SpawnMainOptions = {}): MainProcess {
  return new MainProcess(args, options);
}

/**
 * `foo-proxy proxy --config=PATH` on `127.0.0.1:0`, `--http` on `http` (or off), `--health=off`,
 * then `flags`; allowed to read `dir` (the file's) and nothing else.
 */
export function spawnWithConfig(
  dir: string,
  path: string,
  http: number | "off",
  flags: readonly string[] = [],
): MainProcess {
  return spawnMain([
    "proxy",
    `--config=${path}`,
    "--listen=127.0.0.1:0",
    `--http=${http === "off" ? "off" : `127.0.0.1:${http}`}`,
    "--health=off",
    ...flags,
  ], { permissions: ["--allow-net", "--allow-env=FOO_PROXY_*", `--allow-read=${dir}`] });
}

function show(lines: string[]): string {
  return lines.length === 0 ? "nothing" : JSON.stringify(lines);
}

/** Options for {@linkcode spawnConfigProxy}. */
export interface ConfigProxyOptions {
  /** What the child may read (`--allow-read=`): the file, or its directory. */
  read: string;
  /** The `--http` port (/stats, /reload). */
  http: number;
  /** More flags. Unset: none. */
  flags?: string[];
  /** As {@linkcode SpawnMainOptions.shellPrefix}. */
  shellPrefix?: string;
}

/**
 * Spawns `foo-proxy proxy --config=PATH` on `127.0.0.1:0` with /stats on `options.http`, health
 * off, on the main thread (no read grant of `src/`); resolves once it listens, with the child
 * and its port (a child that does not get there is killed).
 */
export async function spawnConfigProxy(
  path: string,
  options: ConfigProxyOptions,
): Promise<{ child: MainProcess; port: number }> {
  const child = spawnMain([
    "proxy",
    `--config=${path}`,
    "--listen=127.0.0.1:0",
    `--http=127.0.0.1:${options.http}`,
    "--health=off",
    ...options.flags ?? [],
  ], {
    permissions: ["--allow-net", "--allow-env=FOO_PROXY_*", `--allow-read=${options.read}`],
    shellPrefix: options.shellPrefix,
  });
  try {
    const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
    return { child, port };
  } catch (error) {
    await child[Symbol.asyncDispose]();
    throw error;
  }
}

/** One way of running the bridge engine, for suites that must hold in every mode. */
export interface EngineMode {
  /** Appended to test names. */
  name: string;
  /** {@linkcode Proxy} options of the mode (spread first: a test's own options win). */
  options: Partial<ProxyOptions>;
  /** `foo-proxy proxy` flags of the mode. */
  flags: string[];
}

/** The table the resilience, shutdown and hostile-input suites run over. */
export const ENGINE_MODES: readonly EngineMode[] = [
  { name: "plain", options: {}, flags: [] },
  { name: "--resume", options: { resume: "verbatim" }, flags: ["--resume"] },
];

/**
 * Starts a {@linkcode Proxy} on `127.0.0.1:0` forwarding to `forward`.
 * Use with `await using proxy = await startProxy(upstream.addr);`.
 */
export async function startProxy(
  forward: Deno.NetAddr,
  options: Partial<ProxyOptions> = {},
): Promise<Proxy> {
  const proxy = new Proxy({ listen: { hostname: "127.0.0.1", port: 0 }, forward, ...options });
  await proxy.start();
  return proxy;
}

/**
 * Starts `foo-proxy proxy` in a child on `127.0.0.1:0` forwarding to `forward`, HTTP and health
 * off; resolves with the child and the port it listens on.
 */
export async function spawnProxy(
  forward: Deno.NetAddr,
  flags: string[] = [],
): Promise<{ child: MainProcess; port: number }> {
  const child = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${forward.port}`,
    "--http=off", // no fixed ports, and no readiness probes dialing the upstream
    "--health=off",
    ...flags,
  ]);
  const port = Number((await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
  return { child, port };
}

/** `REQ from\n` … `REQ to\n`, each with ` data` after the Seq when `data` is not empty. */
export function requests(from: number, to: number, data = ""): string {
  let text = "";
  for (let seq = from; seq <= to; seq++) text += data ? `REQ ${seq} ${data}\n` : `REQ ${seq}\n`;
  return text;
}

/** The lines `ACK from` … `ACK to`. */
export function acks(from: number, to: number): string[] {
  return Array.from({ length: to - from + 1 }, (_, i) => `ACK ${from + i}`);
}

/** A latin1 string as bytes: every char is one byte, so non-UTF-8 input survives a round trip. */
export function bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

/** Bytes as a latin1 string (the inverse of {@linkcode bytes}). */
export function latin1(data: Uint8Array): string {
  let text = "";
  for (const b of data) text += String.fromCharCode(b);
  return text;
}

/** `text` as latin1 bytes cut at `cuts` (any positions; deduplicated, sorted and clamped here). */
export function chunked(text: string, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const p of [...points, text.length]) {
    if (p > from) out.push(bytes(text.slice(from, p)));
    from = Math.max(from, p);
  }
  return out;
}

/** {@linkcode Timers} that fire only when a test says so (see {@linkcode fakeTimers}). */
export interface FakeTimers extends Timers {
  /** The delay of the timer armed last that is still pending, or 0 when none is. */
  readonly pending: number;
  /** The delays of every pending timer, in the order they were armed. */
  readonly delays: number[];
  /** Runs every pending timer now, whatever its delay; what their callbacks arm stays pending. */
  fire(): void;
}

/**
 * Timers for code that takes injectable {@linkcode Timers} (the engine's `timers` option): nothing
 * fires by itself, so a test moves its fake clock and then calls `fire()`, like a timer that went
 * off at that moment. Pair it with a clock the test sets (`clock: () => now`).
 */
export function fakeTimers(): FakeTimers {
  const armed = new Map<number, { callback: () => void; ms: number }>();
  let nextId = 1;
  return {
    setTimeout(callback: () => void, ms: number): number {
      const id = nextId++;
      armed.set(id, { callback, ms });
      return id;
    },
    clearTimeout(id: unknown): void {
      if (typeof id === "number") armed.delete(id);
    },
    get pending(): number {
      return [...armed.values()].at(-1)?.ms ?? 0;
    },
    get delays(): number[] {
      return [...armed.values()].map((timer) => timer.ms);
    },
    fire(): void {
      for (const [id, timer] of [...armed]) {
        // An earlier callback may have cleared this one.
        if (!armed.delete(id)) continue;
        timer.callback();
      }
    },
  };
}

/** A logger that keeps its lines by level (no error line may come from a client's request). */
export function recordingLogger(): {
  logger: Logger;
  errors: string[];
  warnings: string[];
  debug: string[];
} {
  const errors: string[] = [];
  const warnings: string[] = [];
  const debug: string[] = [];
  const keep = (into: string[]) => (message: string, props?: Record<string, unknown>) =>
    into.push(`${message} ${JSON.stringify(props ?? {})}`);
  const logger = {
    error: keep(errors),
    fatal: keep(errors),
    warn: keep(warnings),
    warning: keep(warnings),
    info: () => {},
    debug: keep(debug),
  } as unknown as Logger;
  return { logger, errors, warnings, debug };
}

/**
 * A client doing REQ/ACK in lock-step on one connection until `stop()`, which resolves with how
 * many round trips it made, or rejects with the first reply missing or wrong.
 */
export async function lockStepClient(port: number): Promise<{ stop: () => Promise<number> }> {
  const conn = await connectTo(port);
  const reader = new LineReader(conn);
  let stopped = false;
  let seq = 0;
  const done = (async () => {
    try {
      while (!stopped) {
        seq++;
        await writeAll(conn, `REQ ${seq}\n`);
        const line = await reader.readLine();
        if (line !== `ACK ${seq}`) throw new Error(`REQ ${seq} got ${JSON.stringify(line)}`);
      }
      return seq;
    } finally {
      conn.close();
    }
  })();
  done.catch(() => {}); // reported by stop(); a failing test kills the proxy first
  return {
    stop: () => {
      stopped = true;
      return done;
    },
  };
}
