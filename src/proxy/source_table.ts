/**
 * The per-source table behind `--max-connections-per-source` and `--rate-limit-per-source`: one
 * `SharedArrayBuffer` made by the supervisor and handed to every data plane, so both limits hold
 * for the whole process (the kernel spreads one source's connections over every worker).
 *
 * Its size is fixed when it is made (memory is bounded by construction: a flood of random
 * sources can never grow it). Sources are found by a 64-bit keyed hash of their 16-byte address
 * (a random key per process, so an attacker cannot aim collisions); each has two candidate
 * buckets of {@linkcode BUCKET_SLOTS} slots and goes to the emptier one (two choices keep every
 * bucket short). A bucket is guarded by a spin lock word; every change happens under it. An
 * entry holds the source's open connections, its tokens and the time of its last refill; one
 * with no connection open is reused (the stalest first) when its buckets are full. Every live
 * entry holds a connection, so with twice `--max-connections` slots it cannot overflow in normal
 * use; when both buckets are full of live sources {@linkcode SourceTable.open} says so
 * ({@linkcode TABLE_FULL}) and the caller decides (the proxy serves the connection unlimited,
 * and counts it).
 *
 * @module
 */
import type { Timers } from "../async/timers.ts";

/** Slots per bucket: a lookup reads two buckets of this many. */
export const BUCKET_SLOTS = 8;
/** {@linkcode SourceTable.open}: the source has `max` connections open already. */
export const SOURCE_LIMITED = -1;
/** {@linkcode SourceTable.open}: both of the source's buckets are full of live sources. */
export const TABLE_FULL = -2;

const HEADER_BYTES = 32;
const SLOT_BYTES = 32;
const SLOT_WORDS = SLOT_BYTES / 4;
const HEADER_WORDS = HEADER_BYTES / 4;
// Header words: [0] slots, [1] buckets, [2], [3] the hash key.
const H_SLOTS = 0;
const H_BUCKETS = 1;
const H_KEY = 2;
// Slot words (Int32): the bucket's lock (first slot of a bucket only), the hash (its second
// word is odd: 0 marks a free slot), the connections open.
const S_LOCK = 0;
const S_HASH0 = 1;
const S_HASH1 = 2;
const S_CONNS = 3;
// Slot doubles (Float64, at byte 16 of the slot): tokens, time of the last refill (ms).
const F_TOKENS = 2;
const F_LAST = 3;
/** Tries of a held lock before sleeping between tries. */
const SPINS = 64;
/** A lock held this long (ms) is taken anyway: its holder was ended mid-update. */
const STEAL_MS = 1000;

/**
 * The slots a table for `maxConnections` gets: twice as many, rounded up to a power of two (at
 * least two buckets).
 */
export function sourceTableSlots(maxConnections: number): number {
  let slots = 2 * BUCKET_SLOTS;
  while (slots < 2 * maxConnections && slots < 2 ** 21) slots *= 2;
  return slots;
}

/**
 * Makes the shared memory of a table sized for `maxConnections` (see
 * {@linkcode sourceTableSlots}) with a random hash key.
 */
export function createSourceTableBuffer(maxConnections: number): SharedArrayBuffer {
  const slots = sourceTableSlots(maxConnections);
  const buffer = new SharedArrayBuffer(HEADER_BYTES + slots * SLOT_BYTES);
  const words = new Int32Array(buffer);
  words[H_SLOTS] = slots;
  words[H_BUCKETS] = slots / BUCKET_SLOTS;
  crypto.getRandomValues(words.subarray(H_KEY, H_KEY + 2));
  return buffer;
}

/** The process's clock for token refills: the same across Workers (ms). */
export function sourceClock(): number {
  return performance.timeOrigin + performance.now();
}

/** A view of a table made by {@linkcode createSourceTableBuffer}; every Worker makes its own. */
export class SourceTable {
  /** The shared memory (hand it to another Worker). */
  readonly buffer: SharedArrayBuffer;
  /** Slots in all. */
  readonly slots: number;
  #words: Int32Array;
  #doubles: Float64Array;
  #bucketMask: number;
  #k0: number;
  #k1: number;
  #hash = new Int32Array(2);

  /** A view of `buffer`. */
  constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.#words = new Int32Array(buffer);
    this.#doubles = new Float64Array(buffer);
    this.slots = this.#words[H_SLOTS];
    this.#bucketMask = this.#words[H_BUCKETS] - 1;
    this.#k0 = this.#words[H_KEY];
    this.#k1 = this.#words[H_KEY + 1];
  }

  /**
   * Counts a connection of `address` (16 bytes, as `parseIp` gives) in: returns its slot (hand it
   * to {@linkcode close}, {@linkcode take}), {@linkcode SOURCE_LIMITED} when it has `max` (> 0)
   * open already, or {@linkcode TABLE_FULL}. A new entry starts with `burst` tokens at `now`.
   */
  open(address: Uint8Array, max: number, burst: number, now: number): number {
    keyedHash(address, this.#k0, this.#k1, this.#hash);
    const h0 = this.#hash[0];
    const h1 = this.#hash[1];
    const b0 = h0 & this.#bucketMask;
    const b1 = h1 & this.#bucketMask;
    const first = Math.min(b0, b1);
    const second = Math.max(b0, b1);
    this.#lock(first);
    if (second !== first) this.#lock(second);
    try {
      const found = this.#find(b0, h0, h1);
      const slot = found >= 0 || b1 === b0 ? found : this.#find(b1, h0, h1);
      const w = this.#words;
      if (slot >= 0) {
        const at = slot * SLOT_WORDS + HEADER_WORDS;
        if (max > 0 && w[at + S_CONNS] >= max) return SOURCE_LIMITED;
        w[at + S_CONNS]++;
        return slot;
      }
      // New: in the bucket with fewer live sources, on a free or the stalest idle slot.
      const live0 = this.#live(b0);
      const live1 = b1 === b0 ? live0 : this.#live(b1);
      let free = this.#room(live0 <= live1 ? b0 : b1);
      if (free < 0 && b1 !== b0) free = this.#room(live0 <= live1 ? b1 : b0);
      if (free < 0) return TABLE_FULL;
      const at = free * SLOT_WORDS + HEADER_WORDS;
      w[at + S_HASH0] = h0;
      w[at + S_HASH1] = h1;
      w[at + S_CONNS] = 1;
      const d = this.#doubleAt(free);
      this.#doubles[d + F_TOKENS] = burst;
      this.#doubles[d + F_LAST] = now;
      return free;
    } finally {
      if (second !== first) this.#unlock(second);
      this.#unlock(first);
    }
  }

  /** Counts a connection of the source in `slot` out (its entry stays, reusable once idle). */
  close(slot: number): void {
    const bucket = (slot / BUCKET_SLOTS) | 0;
    this.#lock(bucket);
    const at = slot * SLOT_WORDS + HEADER_WORDS + S_CONNS;
    if (this.#words[at] > 0) this.#words[at]--;
    this.#unlock(bucket);
  }

  /**
   * Refills the tokens of `slot` at `rate` per second up to `burst` for the time since the last
   * refill, then takes up to `want` whole tokens: returns how many (0: none left).
   */
  take(slot: number, want: number, rate: number, burst: number, now: number): number {
    const bucket = (slot / BUCKET_SLOTS) | 0;
    const d = this.#doubleAt(slot);
    const doubles = this.#doubles;
    this.#lock(bucket);
    const last = doubles[d + F_LAST];
    let tokens = doubles[d + F_TOKENS];
    if (now > last) {
      tokens = Math.min(burst, tokens + (now - last) * rate / 1000);
      doubles[d + F_LAST] = now;
    }
    const got = Math.max(0, Math.min(want, Math.floor(tokens)));
    doubles[d + F_TOKENS] = tokens - got;
    this.#unlock(bucket);
    return got;
  }

  /** Puts back `count` tokens taken and not used (up to `burst`). */
  giveBack(slot: number, count: number, burst: number): void {
    if (count <= 0) return;
    const bucket = (slot / BUCKET_SLOTS) | 0;
    const d = this.#doubleAt(slot) + F_TOKENS;
    this.#lock(bucket);
    this.#doubles[d] = Math.min(burst, this.#doubles[d] + count);
    this.#unlock(bucket);
  }

  /**
   * Milliseconds a connection of `slot` should wait for a token at `rate` per second: until the
   * next one, times the source's open connections (each waits for its share, so a source's
   * paused connections wake about `rate` times a second in all, not each of them; at most 1 s).
   */
  waitMs(slot: number, rate: number): number {
    const tokens = this.#doubles[this.#doubleAt(slot) + F_TOKENS];
    const conns = Math.max(
      1,
      Atomics.load(this.#words, slot * SLOT_WORDS + HEADER_WORDS + S_CONNS),
    );
    return Math.min(1000, Math.max(1, Math.ceil((1 - tokens) * conns * 1000 / rate)));
  }

  /** Open connections of `address` (tests, and the curious). */
  connections(address: Uint8Array): number {
    keyedHash(address, this.#k0, this.#k1, this.#hash);
    const h0 = this.#hash[0];
    const h1 = this.#hash[1];
    let slot = this.#find(h0 & this.#bucketMask, h0, h1);
    if (slot < 0) slot = this.#find(h1 & this.#bucketMask, h0, h1);
    return slot < 0 ? 0 : Atomics.load(this.#words, slot * SLOT_WORDS + HEADER_WORDS + S_CONNS);
  }

  /** Entries in use (with or without connections), and connections open, over the table. */
  usage(): { entries: number; connections: number } {
    let entries = 0;
    let connections = 0;
    for (let slot = 0; slot < this.slots; slot++) {
      const at = slot * SLOT_WORDS + HEADER_WORDS;
      if (Atomics.load(this.#words, at + S_HASH1) === 0) continue;
      entries++;
      connections += Atomics.load(this.#words, at + S_CONNS);
    }
    return { entries, connections };
  }

  #doubleAt(slot: number): number {
    return (HEADER_BYTES + slot * SLOT_BYTES) / 8;
  }

  #find(bucket: number, h0: number, h1: number): number {
    const w = this.#words;
    const base = bucket * BUCKET_SLOTS;
    for (let slot = base; slot < base + BUCKET_SLOTS; slot++) {
      const at = slot * SLOT_WORDS + HEADER_WORDS;
      if (w[at + S_HASH1] === h1 && w[at + S_HASH0] === h0) return slot;
    }
    return -1;
  }

  #live(bucket: number): number {
    const w = this.#words;
    const base = bucket * BUCKET_SLOTS;
    let live = 0;
    for (let slot = base; slot < base + BUCKET_SLOTS; slot++) {
      if (w[slot * SLOT_WORDS + HEADER_WORDS + S_CONNS] > 0) live++;
    }
    return live;
  }

  /** A free slot of `bucket`, else its idle entry refilled longest ago, else -1. */
  #room(bucket: number): number {
    const w = this.#words;
    const base = bucket * BUCKET_SLOTS;
    let stalest = -1;
    let stalestAt = Infinity;
    for (let slot = base; slot < base + BUCKET_SLOTS; slot++) {
      const at = slot * SLOT_WORDS + HEADER_WORDS;
      if (w[at + S_HASH1] === 0) return slot;
      if (w[at + S_CONNS] > 0) continue;
      const last = this.#doubles[this.#doubleAt(slot) + F_LAST];
      if (last < stalestAt) {
        stalest = slot;
        stalestAt = last;
      }
    }
    return stalest;
  }

  #lock(bucket: number): void {
    const at = bucket * BUCKET_SLOTS * SLOT_WORDS + HEADER_WORDS + S_LOCK;
    if (Atomics.compareExchange(this.#words, at, 0, 1) !== 0) this.#lockSlowly(at);
  }

  /** The lock word at `at` is held: spin a little, then sleep in short steps. */
  #lockSlowly(at: number): void {
    const words = this.#words;
    let deadline = 0;
    for (let tries = 1;; tries++) {
      if (Atomics.compareExchange(words, at, 0, 1) === 0) return;
      if (tries < SPINS) continue;
      // Its holder may have lost its core (more threads than cores): give it ours a moment.
      Atomics.wait(words, at, 1, 0.05);
      const now = performance.now();
      if (deadline === 0) deadline = now + STEAL_MS;
      else if (now > deadline) {
        // Held for a second: its holder was ended in the middle (a Worker terminated). Take it
        // over rather than freeze this thread; at worst one count is off by one.
        Atomics.store(words, at, 1);
        return;
      }
    }
  }

  #unlock(bucket: number): void {
    Atomics.store(this.#words, bucket * BUCKET_SLOTS * SLOT_WORDS + HEADER_WORDS + S_LOCK, 0);
  }
}

/**
 * A connection's share of its source's token bucket (`--rate-limit-per-source`): what the pumps
 * take REQ tokens from. Rate and burst are fixed when the connection is accepted.
 */
export class SourceRate {
  readonly table: SourceTable;
  readonly slot: number;
  /** Tokens per second. */
  readonly rate: number;
  /** Tokens the bucket holds at most. */
  readonly burst: number;
  readonly clock: () => number;

  /** The bucket of `slot` in `table`. */
  constructor(table: SourceTable, slot: number, rate: number, burst: number, clock = sourceClock) {
    this.table = table;
    this.slot = slot;
    this.rate = rate;
    this.burst = burst;
    this.clock = clock;
  }

  /** Takes up to `want` tokens now; returns how many (0: none; wait {@linkcode waitMs}). */
  take(want: number): number {
    return this.table.take(this.slot, want, this.rate, this.burst, this.clock());
  }

  /** Puts back tokens taken and not used. */
  giveBack(count: number): void {
    this.table.giveBack(this.slot, count, this.burst);
  }

  /** Milliseconds until a token is there again. */
  waitMs(): number {
    return this.table.waitMs(this.slot, this.rate);
  }
}

/** What {@linkcode takeTokens} waits for: a connection's wake-up, resolved when it closes. */
export interface TokenWaiter {
  /** Whether the connection has closed. */
  readonly closed: boolean;
  /** Resolved by the connection when it closes (and maybe earlier: then it only re-checks). */
  room: PromiseWithResolvers<void> | undefined;
}

/**
 * Takes up to `want` tokens of `rate`, waiting until there is one: the pump that calls it does
 * not read its client meanwhile (backpressure: nothing is dropped, no reply invented). A wait is
 * counted in `counters.rateLimitPauses`. Resolves with how many, or 0 once `waiter` is closed.
 */
export async function takeTokens(
  rate: SourceRate,
  want: number,
  waiter: TokenWaiter,
  timers: Timers,
  counters: { rateLimitPauses: number },
): Promise<number> {
  let got = rate.take(want);
  if (got > 0) return got;
  counters.rateLimitPauses++;
  while (got === 0 && !waiter.closed) {
    const room = waiter.room = Promise.withResolvers();
    const timer = timers.setTimeout(room.resolve, rate.waitMs());
    await room.promise;
    timers.clearTimeout(timer);
    if (waiter.room === room) waiter.room = undefined;
    if (!waiter.closed) got = rate.take(want);
  }
  // Taken just as the connection closed: back to the source's other connections.
  if (waiter.closed && got > 0) rate.giveBack(got);
  return waiter.closed ? 0 : got;
}

/**
 * A 64-bit keyed hash of 16 bytes into `out` (two words; the second is made odd, so never 0), after HalfSipHash-2-4 (32-bit
 * arithmetic, a 64-bit key): without the key, nobody can choose addresses that collide.
 */
export function keyedHash(bytes: Uint8Array, k0: number, k1: number, out: Int32Array): void {
  let v0 = k0 | 0;
  let v1 = k1 | 0;
  let v2 = 0x6c796765 ^ k0;
  let v3 = 0x74656462 ^ k1;
  v1 ^= 0xee;
  const round = () => {
    v0 = (v0 + v1) | 0;
    v1 = (v1 << 5) | (v1 >>> 27);
    v1 ^= v0;
    v0 = (v0 << 16) | (v0 >>> 16);
    v2 = (v2 + v3) | 0;
    v3 = (v3 << 8) | (v3 >>> 24);
    v3 ^= v2;
    v0 = (v0 + v3) | 0;
    v3 = (v3 << 7) | (v3 >>> 25);
    v3 ^= v0;
    v2 = (v2 + v1) | 0;
    v1 = (v1 << 13) | (v1 >>> 19);
    v1 ^= v2;
    v2 = (v2 << 16) | (v2 >>> 16);
  };
  for (let i = 0; i < 16; i += 4) {
    const m = bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24);
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
  const b = 16 << 24;
  v3 ^= b;
  round();
  round();
  v0 ^= b;
  v2 ^= 0xee;
  round();
  round();
  round();
  round();
  out[0] = v1 ^ v3;
  v1 ^= 0xdd;
  round();
  round();
  round();
  round();
  out[1] = v1 ^ v3 | 1;
}
