/**
 * A child process whose stdout and stderr are collected line by line in the background, for the
 * scripts (`demo`, `soak`) and `bench/e2e.ts` that start foo-proxy, the Foo server or HAProxy as
 * separate processes, wait for a line of theirs, signal them and stop them in order.
 *
 * @module
 */

const ROOT = new URL("../", import.meta.url);

/** Options of {@linkcode Child}. */
export interface ChildOptions {
  /** A name for messages. @default the program's path */
  name?: string;
  /** The program to run. @default `Deno.execPath()` */
  command?: string;
  /** Working directory. @default the repository root */
  cwd?: string | URL;
  /** Variables added to the inherited environment. @default `{ NO_COLOR: "1" }` */
  env?: Record<string, string>;
  /**
   * Run in its own process group, so a Ctrl-C reaches only the parent, which then stops its
   * children in order. @default false
   */
  detached?: boolean;
  /**
   * How long a line may take to appear ({@linkcode Lines.waitFor}) and how long
   * {@linkcode Child.stop} waits after its signal before SIGKILL. @default 20000
   */
  patienceMs?: number;
  /**
   * The signal `[Symbol.asyncDispose]` stops the child with (SIGKILL after `disposeGraceMs`).
   * @default "SIGKILL"
   */
  disposeSignal?: Deno.Signal;
  /**
   * How long `[Symbol.asyncDispose]` waits after `disposeSignal` before SIGKILL.
   * @default patienceMs
   */
  disposeGraceMs?: number;
}

/** A running child process whose output is read line by line. */
export class Child implements AsyncDisposable {
  /** The name given in the options, else the program's path. */
  readonly name: string;
  /** The process itself. */
  readonly process: Deno.ChildProcess;
  /** Its stdout lines. */
  readonly stdout: Lines;
  /** Its stderr lines. */
  readonly stderr: Lines;
  /** Resolves when it exits. */
  readonly status: Promise<Deno.CommandStatus>;
  /** Whether it has exited. */
  exited = false;
  #patienceMs: number;
  #disposeSignal: Deno.Signal;
  #disposeGraceMs: number;

  /** Spawns the program of `options.command` (this Deno by default) with `args`. */
  constructor(args: string[], options: ChildOptions = {}) {
    const command = options.command ?? Deno.execPath();
    this.name = options.name ?? command;
    this.#patienceMs = options.patienceMs ?? 20_000;
    this.#disposeSignal = options.disposeSignal ?? "SIGKILL";
    this.#disposeGraceMs = options.disposeGraceMs ?? this.#patienceMs;
    this.process = new Deno.Command(command, {
      args,
      cwd: options.cwd ?? ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: options.env ?? { NO_COLOR: "1" },
      detached: options.detached ?? false,
    }).spawn();
    this.stdout = new Lines(this.process.stdout, this.#patienceMs);
    this.stderr = new Lines(this.process.stderr, this.#patienceMs);
    this.status = this.process.status.then((status) => {
      this.exited = true;
      return status;
    });
  }

  /** Its process id. */
  get pid(): number {
    return this.process.pid;
  }

  /** Sends `signal` unless it has exited. */
  kill(signal: Deno.Signal): void {
    if (this.exited) return;
    try {
      this.process.kill(signal);
    } catch {
      // It exited meanwhile.
    }
  }

  /** Sends `signal`, waits for the exit and the end of its output (SIGKILL after the patience). */
  stop(signal: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus> {
    return this.#stop(signal, this.#patienceMs);
  }

  /** Stops it with the `disposeSignal` of the options. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#stop(this.#disposeSignal, this.#disposeGraceMs);
  }

  async #stop(signal: Deno.Signal, graceMs: number): Promise<Deno.CommandStatus> {
    this.kill(signal);
    const timer = setTimeout(() => this.kill("SIGKILL"), graceMs);
    try {
      const status = await this.status;
      await Promise.all([this.stdout.done, this.stderr.done]);
      return status;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Collects a stream's lines in the background and lets the caller wait for one. */
export class Lines {
  /** The lines so far (without their `\n`). */
  readonly lines: string[] = [];
  /** Resolves when the stream has ended. */
  readonly done: Promise<void>;
  #patienceMs: number;
  #waiters: (() => void)[] = [];
  #ended = false;

  /** Starts reading `stream`; {@linkcode waitFor} gives up after `patienceMs`. */
  constructor(stream: ReadableStream<Uint8Array>, patienceMs = 20_000) {
    this.#patienceMs = patienceMs;
    this.done = this.#pump(stream).catch(() => {});
  }

  /** The last `chars` characters of the output so far, for error messages. */
  tail(chars = 500): string {
    return this.lines.join("\n").slice(-chars);
  }

  /** Resolves with the first match of `pattern` in a line from index `from` on. */
  async waitFor(pattern: RegExp, what: string, from = 0): Promise<RegExpExecArray> {
    const deadline = Date.now() + this.#patienceMs;
    for (let i = from;; i++) {
      while (i >= this.lines.length) {
        if (this.#ended) throw new Error(`${what}: the output ended without it`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`${what}: not seen within ${this.#patienceMs / 1000} s`);
        const changed = new Promise<void>((resolve) => this.#waiters.push(resolve));
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([changed, new Promise((r) => timer = setTimeout(r, left))]);
        clearTimeout(timer);
      }
      const match = pattern.exec(this.lines[i]);
      if (match) return match;
    }
  }

  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    let partial = "";
    try {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        const parts = (partial + chunk).split("\n");
        partial = parts.pop()!;
        this.lines.push(...parts);
        this.#wake();
      }
      if (partial) this.lines.push(partial);
    } finally {
      this.#ended = true;
      this.#wake();
    }
  }

  #wake(): void {
    for (const wake of this.#waiters.splice(0)) wake();
  }
}
