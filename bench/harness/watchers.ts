/**
 * What watches a watched foo-proxy: readers of the dashboard's `GET /events` stream (in this
 * process) and one `foo-proxy top` process.
 *
 * @module
 */
import { Child } from "../../scripts/child.ts";

const encoder = new TextEncoder();

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

/** One SSE reader of `GET /events`: counts the events it reads until closed. */
export class SseViewer {
  /** Events read so far. */
  events = 0;
  /** Resolves when the stream has ended (rejects when it failed). */
  readonly done: Promise<void>;
  #abort = new AbortController();
  #first: Promise<void>;
  #firstSeen!: () => void;

  /** Starts reading `url`. */
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

  /** Stops reading. */
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

/** Options of {@linkcode attachWatchers}. */
export interface WatchersOptions {
  /** Dashboard streams to hold open. */
  streams: number;
  /** The `src/main.ts` that runs `foo-proxy top`. */
  main: string;
  /** The host of the stats app. @default "127.0.0.1" */
  host?: string;
}

/** Dashboard streams and a `foo-proxy top` on one stats app. */
export class Watchers implements AsyncDisposable {
  /** The streams. */
  readonly streams: SseViewer[];
  /** The `top` process. */
  readonly top: Child;

  /** Takes ownership of `streams` and `top`. */
  constructor(streams: SseViewer[], top: Child) {
    this.streams = streams;
    this.top = top;
  }

  /** Events read so far, summed over the streams. */
  get events(): number {
    return this.streams.reduce((n, s) => n + s.events, 0);
  }

  /** Frames `top` has drawn with numbers so far. */
  get frames(): number {
    return this.top.stdout.lines.filter((l) => l.includes("Requests/s")).length;
  }

  /** Closes the streams and stops `top`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.streams.map((s) => s.close()));
    await this.top[Symbol.asyncDispose]();
  }
}

/**
 * Attaches streams and a `top` to the stats app on `httpPort`; resolves once every stream has
 * had an event and `top` has drawn numbers.
 */
export async function attachWatchers(
  httpPort: number,
  options: WatchersOptions,
): Promise<Watchers> {
  const host = options.host ?? "127.0.0.1";
  const streams = Array.from(
    { length: options.streams },
    () => new SseViewer(`http://${host}:${httpPort}/events`),
  );
  const top = new Child(["run", "-A", options.main, "top", "--stats", `${host}:${httpPort}`], {
    name: "foo-proxy top",
    disposeSignal: "SIGTERM",
    disposeGraceMs: 5000,
  });
  const watchers = new Watchers(streams, top);
  try {
    await Promise.all(streams.map((s) => s.first()));
    // "Requests/s" is drawn only once top has numbers from /stats.
    await top.stdout.waitFor(/Requests\/s/, "foo-proxy top's first frame");
  } catch (error) {
    await watchers[Symbol.asyncDispose]();
    throw error;
  }
  return watchers;
}
