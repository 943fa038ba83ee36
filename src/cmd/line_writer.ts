/**
 * Output that never blocks traffic: lines are queued and written by one asynchronous writer, so
 * a reader that stalls (a stdout or stderr pipe nobody reads) holds up nothing but the queue.
 * Past a bounded queue new lines are dropped and counted; when the reader catches up, one line
 * says how many were lost. The bound is for a reader that stalls, not for a line's size: a line
 * bigger than the bound itself (a stats line with hundreds of upstreams), which could never fit,
 * is taken when no other line waits.
 *
 * Measured with Deno 2.9.6: `Deno.stdout.write()` on a full pipe stays pending without blocking
 * the event loop, while `writeSync` blocks the whole process.
 *
 * @module
 */

/** Options for {@linkcode LineWriter}. */
export interface LineWriterOptions {
  /**
   * Most bytes queued; a line that does not fit is dropped. A line bigger than this, which could
   * never fit, is taken when no other line waits (so at most one waits behind the write under
   * way): a line is never dropped for its size alone. About 500 log lines: a burst rides it out,
   * a stalled reader costs no more. Counted in UTF-16 units of the queued text (lines are
   * encoded a batch at a time, when written), which is the byte count for ASCII text and at most
   * a third of it otherwise. @default {65536}
   */
  maxQueuedBytes?: number;
  /** Called once per dropped line. Unset: only {@linkcode LineWriter.dropped} counts. */
  onDrop?: () => void;
  /**
   * Called once when the output fails for good (a closed pipe, a full disk), with the error;
   * lines are dropped from then on until {@linkcode LineWriter.resume}.
   */
  onError?: (error: unknown) => void;
  /**
   * The line written once the reader catches up after drops, given how many were dropped.
   * Unset: `foo-proxy: N output line(s) dropped while the reader was stalled\n`.
   */
  dropNotice?: (dropped: number) => string;
  /**
   * Wait this many ms after a line arrives at an idle writer before writing, so the lines of a
   * busy moment go out in one write (a write to stdio costs a thread hand-off each). 0: write at
   * once. @default {0}
   */
  coalesceMs?: number;
}

const encoder = new TextEncoder();
/** Most text (UTF-16 units) one write takes from the queue. */
const BATCH_UNITS = 64 * 1024;

/** A bounded, non-blocking writer of text lines. */
export class LineWriter {
  #write: (bytes: Uint8Array) => Promise<number>;
  #max: number;
  #onDrop: (() => void) | undefined;
  #onError: ((error: unknown) => void) | undefined;
  #notice: (dropped: number) => string;
  #queue: string[] = [];
  #queued = 0;
  #writing: Promise<void> | undefined;
  #dropped = 0;
  #droppedSinceNotice = 0;
  #failed = false;
  #coalesceMs: number;
  #timer: ReturnType<typeof setTimeout> | undefined;

  /** A writer handing bytes to `write` (e.g. `(b) => Deno.stdout.write(b)`), one call at a time. */
  constructor(write: (bytes: Uint8Array) => Promise<number>, options: LineWriterOptions = {}) {
    this.#write = write;
    this.#max = options.maxQueuedBytes ?? 64 * 1024;
    this.#onDrop = options.onDrop;
    this.#onError = options.onError;
    this.#coalesceMs = options.coalesceMs ?? 0;
    this.#notice = options.dropNotice ??
      ((n) => `foo-proxy: ${n} output line(s) dropped while the reader was stalled\n`);
  }

  /** Lines dropped so far. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Bytes waiting to be written (UTF-16 units: see `maxQueuedBytes`). */
  get queuedBytes(): number {
    return this.#queued;
  }

  /**
   * Takes lines again after the output failed (e.g. `--access-log-file` reopened after the disk
   * was freed); lines dropped meanwhile are announced by the usual notice.
   */
  resume(): void {
    this.#failed = false;
  }

  /** Counts dropped lines with `onDrop` from now on. */
  set onDrop(onDrop: (() => void) | undefined) {
    this.#onDrop = onDrop;
  }

  /**
   * Queues `text` (which carries its own newline) and returns at once: true when queued, false
   * when dropped (the queue is full, or the output failed for good, e.g. a closed pipe). Pass
   * whole lines: a character split between two calls (half a surrogate pair each) is rejoined
   * only when both land in one batch. `onDrop`, when given, counts this line if it is refused
   * here instead of the writer's own (two kinds of lines sharing one output, e.g. the access log
   * on stderr with the logs); lines lost in a failed write count with the writer's own.
   */
  write(text: string, onDrop?: () => void): boolean {
    // Written so that a length that is not a number (a caller past the types) is refused too.
    // A line bigger than the bound could never fit: it is taken when no line waits, since the
    // bound is there for a stalled reader and a line that is merely big (the stats with many
    // upstreams) must not vanish.
    const fits = this.#queued + text.length <= this.#max ||
      (text.length > this.#max && this.#queue.length === 0);
    if (this.#failed || !fits) {
      this.#dropped++;
      this.#droppedSinceNotice++;
      (onDrop ?? this.#onDrop)?.();
      return false;
    }
    // Kept as text: encoding each line was a runtime call per line, the batch's is one.
    this.#queue.push(text);
    this.#queued += text.length;
    if (this.#writing === undefined && this.#timer === undefined) {
      if (this.#coalesceMs > 0) {
        this.#timer = setTimeout(() => this.#start(), this.#coalesceMs);
      } else {
        this.#start();
      }
    }
    return true;
  }

  /** {@linkcode write} with a newline appended. */
  writeLine(line: string): boolean {
    return this.write(line + "\n");
  }

  /**
   * Resolves true once everything queued is written, or false when `timeoutMs` passes first (the
   * reader is stalled: exiting is not held up for it).
   */
  async flush(timeoutMs: number): Promise<boolean> {
    if (this.#timer !== undefined) this.#start(); // no more waiting for company
    const writing = this.#writing;
    if (writing === undefined) return true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<false>((resolve) =>
      timer = setTimeout(() => resolve(false), timeoutMs)
    );
    try {
      return await Promise.race([writing.then(() => true), late]);
    } finally {
      clearTimeout(timer);
    }
  }

  #start(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#writing ??= this.#drain();
  }

  async #drain(): Promise<void> {
    try {
      for (;;) {
        const next = this.#queue.shift();
        if (next === undefined) {
          if (this.#droppedSinceNotice === 0) return;
          // Caught up after drops: say so once, then carry on.
          const n = this.#droppedSinceNotice;
          this.#droppedSinceNotice = 0;
          const notice = this.#notice(n);
          this.#queue.push(notice);
          this.#queued += notice.length;
          continue;
        }
        // Lines queued meanwhile go out together: one write per batch, not per line (at a
        // thousand access-log lines a second the write per line was most of their cost).
        let size = next.length;
        let count = 1;
        while (count <= this.#queue.length && size + this.#queue[count - 1].length <= BATCH_UNITS) {
          size += this.#queue[count - 1].length;
          count++;
        }
        const text = count > 1 ? next + this.#queue.splice(0, count - 1).join("") : next;
        let bytes = encoder.encode(text);
        try {
          while (bytes.length > 0) bytes = bytes.subarray(await this.#write(bytes));
        } catch (error) {
          // The output is gone (closed pipe, full disk): drop what is queued and whatever comes
          // later, until resume(); say so once.
          this.#onError?.(error);
          // The lines of the failed batch are lost as well as those still queued.
          this.#failed = true;
          const lost = count + this.#queue.length;
          this.#dropped += lost;
          this.#droppedSinceNotice += lost;
          for (let i = 0; i < lost; i++) this.#onDrop?.();
          this.#queue = [];
          this.#queued = 0;
          return;
        }
        this.#queued -= size;
      }
    } finally {
      this.#writing = undefined;
    }
  }
}
