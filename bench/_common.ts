/**
 * Helpers the benchmark scripts share: waits, medians and ratios for their tables, reading a
 * process's CPU time from `/proc` (Linux; the scripts run with `-A`, which Deno needs for that),
 * and a reader of the dashboard's event stream (a viewer, for `e2e.ts --viewers` and
 * `viewers_cost.ts`).
 *
 * @module
 */

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The median of `xs`; NaN for none. */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** `x` with thousands separators and `digits` decimals; "—" when not finite. */
export function fmt(x: number, digits = 0): string {
  if (!Number.isFinite(x)) return "—";
  return x.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** `a ÷ b` as `1.23×`; "—" when either is not finite or `b` is 0. */
export function ratio(a: number, b: number): string {
  return Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}×` : "—";
}

/** `xs` rotated left by `by` (interleaving the order of targets between rounds). */
export function rotate<T>(xs: T[], by: number): T[] {
  const k = by % xs.length;
  return [...xs.slice(k), ...xs.slice(0, k)];
}

/**
 * The trimmed stdout of a command (run in `cwd`, else this process's directory), or `undefined`
 * when it fails or cannot run.
 */
export async function commandOutput(
  command: string,
  args: string[],
  cwd?: string,
): Promise<string | undefined> {
  try {
    const out = await new Deno.Command(command, { args, cwd, stdout: "piped", stderr: "null" })
      .output();
    return out.success ? decoder.decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) process `pid` has used, from `/proc/PID/stat`. */
export function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
}

/** CPU seconds every CPU of the machine has been busy, from `/proc/stat`. */
export function machineBusySeconds(): number {
  const line = Deno.readTextFileSync("/proc/stat").split("\n", 1)[0];
  const [user, nice, system, _idle, _iowait, irq, softirq, steal] = line.split(/\s+/).slice(1)
    .map(Number);
  return (user + nice + system + irq + softirq + steal) / 100;
}

/** Occurrences of `needle` in `hay` (a marker split across two chunks is missed: rare). */
export function countBytes(hay: Uint8Array, needle: Uint8Array): number {
  let n = 0;
  for (let i = hay.indexOf(needle[0]); i >= 0; i = hay.indexOf(needle[0], i + 1)) {
    let j = 1;
    while (j < needle.length && hay[i + j] === needle[j]) j++;
    if (j === needle.length) n++;
  }
  return n;
}

/** One SSE reader of `GET /events`: counts the events it reads until aborted. */
export class SseViewer {
  events = 0;
  readonly done: Promise<void>;
  #abort = new AbortController();
  #first: Promise<void>;
  #firstSeen!: () => void;

  constructor(url: string) {
    this.#first = new Promise((r) => this.#firstSeen = r);
    this.done = this.#read(url);
  }

  /** Resolves once an event has arrived (rejects when the stream failed first). */
  first(): Promise<void> {
    return Promise.race([
      this.#first,
      this.done.then(() => {
        throw new Error("The event stream ended before its first event");
      }),
    ]);
  }

  async close(): Promise<void> {
    this.#abort.abort();
    await this.done.catch(() => {});
  }

  async #read(url: string): Promise<void> {
    const res = await fetch(url, { signal: this.#abort.signal });
    if (!res.ok || !res.body) throw new Error(`GET ${url}: ${res.status}`);
    const marker = encoder.encode("data:");
    try {
      for await (const chunk of res.body) {
        const n = countBytes(chunk, marker);
        if (n > 0) {
          this.events += n;
          this.#firstSeen();
        }
      }
    } catch (error) {
      if (!this.#abort.signal.aborted) throw error;
    }
  }
}

const MAIN = new URL("../src/main.ts", import.meta.url).pathname;

/** `foo-proxy bench` flags of the throughput load the scripts share: 64 connections x 16 pipelined. */
export const THROUGHPUT_LOAD: readonly string[] = Object.freeze([
  "--connections",
  "64",
  "--pipeline",
  "16",
  "--payload",
  "32",
]);

/** `foo-proxy bench` flags of the churn load: 16 connections of 10 lock-step REQs, then new ones. */
export const CHURN_LOAD: readonly string[] = Object.freeze([
  "--connections",
  "16",
  "--pipeline",
  "1",
  "--payload",
  "32",
  "--requests-per-connection",
  "10",
]);

/**
 * Runs `foo-proxy bench` against `host:port` for `seconds`, unmeasured, with `loadArgs` (e.g.
 * the throughput scenario's), so a fresh proxy process reaches its steady state before it is
 * measured. Why: V8's heap changes regime after the first full GC (seen with `--trace-gc` under
 * the throughput load: no mark-compact for the first 6–8 s, then one or two a second). From then
 * on each scavenge moves two whole young pages (512 KB), pinned because the native stack pointed
 * into them, to the old generation, which fills with their dead objects (`--trace-gc-verbose`;
 * `--no-scavenger-promote-quarantined-pages` stops it). A proxy measured before that looks faster
 * than the same proxy later, and whatever brings its first full GC forward (a viewer's requests,
 * say) looks like a cost of its own. Throws when the load generator fails.
 */
export async function settle(
  host: string,
  port: number,
  seconds: number,
  loadArgs: readonly string[],
): Promise<void> {
  if (seconds <= 0) return;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      MAIN,
      "bench",
      "--connect",
      `${host}:${port}`,
      "--quiet",
      "--duration",
      `${seconds}s`,
      ...loadArgs,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    const tail = decoder.decode(out.stderr).trim().split("\n").slice(-3).join(" / ");
    throw new Error(`The settling load on ${host}:${port} failed (exit ${out.code}): ${tail}`);
  }
}
