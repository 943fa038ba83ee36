/**
 * `GET /events`: the stats as Server-Sent Events, one `data: {json}` event a second, for the
 * dashboard. However many viewers there are, one snapshot is built and encoded per tick and the
 * same bytes go to every stream, so watching costs the proxy the same with 1 viewer or 16; the
 * number of streams is capped, and a stream whose reader falls behind is closed rather than
 * buffered without bound.
 *
 * @module
 */
import { systemTimers, type Timers } from "../async/timers.ts";

/** Options for {@linkcode SnapshotBroadcaster}. */
export interface SnapshotBroadcasterOptions {
  /** Time between two events in ms. @default {1000} */
  intervalMs?: number;
  /** Streams open at once; {@linkcode SnapshotBroadcaster.connect} refuses more. @default {16} */
  maxClients?: number;
  /**
   * Events queued for one stream that its reader has not taken yet; one more and the stream is
   * closed (the browser reconnects). @default {4}
   */
  maxQueued?: number;
  /** Called once per refused stream (e.g. to count it in the stats); unset: only counted here. */
  onRefused?: () => void;
  /** Timers for the ticks (tests pass fake ones). @default {systemTimers} */
  timers?: Timers;
  /** Time source in ms, to keep ticks on the interval's grid. @default {performance.now} */
  clock?: () => number;
  /**
   * Milliseconds the browser waits before reconnecting a stream that ended, sent as the first
   * line (`retry:`); 0: not sent (the browser's default, about 3 s). @default {1000}
   */
  retryMs?: number;
}

interface Client {
  controller: ReadableStreamDefaultController<Uint8Array>;
}

const encoder = new TextEncoder();

/**
 * Shares one snapshot a tick among every `GET /events` stream. The timer runs only while a stream
 * is open (nothing is built when nobody watches). Start it with {@linkcode start}; {@linkcode stop}
 * closes every stream and clears the timer, so a shutdown waits for no viewer.
 */
export class SnapshotBroadcaster {
  #snapshot: () => unknown;
  #intervalMs: number;
  #maxClients: number;
  #maxQueued: number;
  #onRefused: (() => void) | undefined;
  #timers: Timers;
  #clock: () => number;
  #retry: Uint8Array | undefined;
  #clients = new Set<Client>();
  #timer: unknown = undefined;
  #armedAt = 0;
  #frame: Uint8Array | undefined;
  #running = false;
  #refused = 0;
  #ticks = 0;
  #evicted = 0;

  /** Creates a stopped broadcaster of `snapshot()` (called once per tick, JSON-encoded). */
  constructor(snapshot: () => unknown, options: SnapshotBroadcasterOptions = {}) {
    const intervalMs = options.intervalMs ?? 1000;
    const maxClients = options.maxClients ?? 16;
    const maxQueued = options.maxQueued ?? 4;
    if (!(intervalMs > 0)) {
      throw new RangeError(`Invalid intervalMs ${intervalMs}: expected a positive number`);
    }
    for (const [name, value] of [["maxClients", maxClients], ["maxQueued", maxQueued]] as const) {
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new RangeError(`Invalid ${name} ${value}: expected a non-negative integer`);
      }
    }
    this.#snapshot = snapshot;
    this.#intervalMs = intervalMs;
    this.#maxClients = maxClients;
    this.#maxQueued = Math.max(1, maxQueued);
    this.#onRefused = options.onRefused;
    this.#timers = options.timers ?? systemTimers;
    this.#clock = options.clock ?? (() => performance.now());
    const retryMs = options.retryMs ?? 1000;
    this.#retry = retryMs > 0 ? encoder.encode(`retry: ${Math.round(retryMs)}\n\n`) : undefined;
  }

  /** Streams open now. */
  get clients(): number {
    return this.#clients.size;
  }

  /** Streams refused so far (over the cap, or after {@linkcode stop}). */
  get refused(): number {
    return this.#refused;
  }

  /** Snapshots built so far: one per tick while a stream is open (and one when the first opens). */
  get ticks(): number {
    return this.#ticks;
  }

  /** Streams closed because their reader fell `maxQueued` events behind. */
  get evicted(): number {
    return this.#evicted;
  }

  /** The cap on streams. */
  get maxClients(): number {
    return this.#maxClients;
  }

  /** Whether {@linkcode start} was called and {@linkcode stop} was not since. */
  get running(): boolean {
    return this.#running;
  }

  /** Lets {@linkcode connect} open streams. Idempotent. */
  start(): void {
    this.#running = true;
  }

  /** Closes every stream (each ends cleanly, as after a last event), clears the timer. */
  stop(): void {
    this.#running = false;
    this.#disarm();
    for (const client of this.#clients) closeQuietly(client.controller);
    this.#clients.clear();
  }

  /**
   * Opens a stream of events: the `retry:` line, the current snapshot at once, then one event
   * per tick. Returns `undefined` (and counts a refusal) when the cap is reached or the
   * broadcaster is not running. Cancelling the stream (the peer left) frees its place.
   */
  connect(): ReadableStream<Uint8Array> | undefined {
    if (!this.#running || this.#clients.size >= this.#maxClients) {
      this.#refused++;
      this.#onRefused?.();
      return undefined;
    }
    let client: Client | undefined;
    const stream = new ReadableStream<Uint8Array>({
      start: (controller) => {
        client = { controller };
      },
      cancel: () => {
        if (client) this.#remove(client);
      },
    }, new CountQueuingStrategy({ highWaterMark: this.#maxQueued }));
    if (!client) throw new Error("ReadableStream did not call start()");
    this.#clients.add(client);
    if (this.#retry) client.controller.enqueue(this.#retry);
    // A viewer arriving between ticks gets the last tick's event, so a burst of new viewers
    // still costs one snapshot.
    this.#frame ??= this.#build();
    client.controller.enqueue(this.#frame);
    this.#arm();
    return stream;
  }

  /** Builds one snapshot and sends it to every stream now (the timer calls it; tests may too). */
  tick(): void {
    if (this.#clients.size === 0) {
      this.#frame = undefined;
      return;
    }
    const frame = this.#build();
    this.#frame = frame;
    for (const client of this.#clients) {
      const room = client.controller.desiredSize ?? 0;
      if (room <= 0) {
        // Its reader is maxQueued events behind (a stalled peer): end it rather than queue more.
        this.#evicted++;
        this.#remove(client);
        closeQuietly(client.controller);
        continue;
      }
      client.controller.enqueue(frame);
    }
  }

  #build(): Uint8Array {
    this.#ticks++;
    return encoder.encode(`data: ${JSON.stringify(this.#snapshot())}\n\n`);
  }

  #remove(client: Client): void {
    this.#clients.delete(client);
    if (this.#clients.size === 0) {
      this.#disarm();
      this.#frame = undefined;
    }
  }

  #arm(): void {
    if (this.#timer !== undefined || !this.#running) return;
    if (this.#clients.size === 0) return;
    const now = this.#clock();
    const interval = this.#intervalMs;
    // Stay on the grid of the first tick, so a slow tick does not push the next ones later; a
    // timer that fired a little early must not make the next tick come milliseconds after this
    // one (seen: two events 3 ms apart), so the next due time is always at least half an
    // interval away.
    if (this.#armedAt === 0) this.#armedAt = now;
    let due = this.#armedAt + (Math.floor((now - this.#armedAt) / interval) + 1) * interval;
    if (due - now < interval / 2) due += interval;
    this.#timer = this.#timers.setTimeout(() => {
      this.#timer = undefined;
      this.tick();
      this.#arm();
    }, due - now);
  }

  #disarm(): void {
    if (this.#timer !== undefined) this.#timers.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#armedAt = 0;
  }
}

function closeQuietly(controller: ReadableStreamDefaultController<Uint8Array>): void {
  try {
    controller.close();
  } catch {
    // Already closed or cancelled.
  }
}
