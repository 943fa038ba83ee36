/**
 * The soak's clients that send lines real Foo servers answer although they are no REQs: each
 * connection mixes invalid lines among pipelined REQs with data, written in pieces of any size,
 * then half-closes (FIN) and reads to EOF, verifying every line it gets; then it reconnects and
 * does it again with another mix, for the whole run.
 *
 * Against a server that answers every line (`foo-proxy server --answer-invalid`), each invalid
 * line gets `NAK 0 ERRDECODE`, in order: a reply that answers no REQ. A proxy that counted those
 * answers as answers to REQs ended half-closed exchanges before their real replies came (lost
 * replies) or let clients past `--max-inflight` (issue 17 item 1).
 *
 * Two mixes ({@linkcode InvalidLineKind}):
 * - `invalid`: blank lines, `req 1`, `REQ +1`, `REQ 1x`, `FOO`, `ACK 5` and `\r\n`;
 * - `wrong-way`: the "unsolicited-reply clients": replies sent the wrong way, client to server
 *   (`ACK <seq>`, `NAK <seq>`, `ACK <seq> <hash>`, `NAK 0 ERRDECODE`, with the Seqs of the
 *   connection's own REQs), each answered by the server with a `NAK 0 ERRDECODE` that answers
 *   nothing: to the proxy, an unsolicited reply on a connection with REQs of those very Seqs in
 *   flight. (A second Foo server sending unsolicited replies by itself, e.g.
 *   `--duplicate-replies`, would need a second `--forward` whose every client then gets extra
 *   lines; the soak keeps one upstream.)
 *
 * What a connection can expect, and so checks ({@linkcode ScriptChecker}):
 * - every REQ it sent is answered exactly once, in order among the REQs, by the reply the server
 *   computes for it (`hashReply`: Seq, type and data); a reply whose type or data is wrong is
 *   `wrong`, one whose Seq is not the next owed is `wrong` and ends the checking of the
 *   connection; a REQ without reply at EOF is `lost` (with or without `--resume` a bug on a
 *   connection no upstream restart touched: the proxy cut the exchange short);
 * - the `NAK 0 ERRDECODE` lines are never more than the invalid lines sent, and never come before
 *   the reply to a REQ sent before them: the count seen before the reply to a REQ is at most the
 *   invalid lines sent before that REQ (else `misplaced`). This holds across upstream restarts
 *   with `--resume`: the server answers in order, and replayed REQs go first on a new connection;
 * - when all of them came, each one is exactly where its invalid line was;
 * - all of them come unless an upstream restart fell within the connection's life: an invalid
 *   line the killed server had not answered is not replayed (only REQs are), so its answer is
 *   gone for good. Missing answers are `missing`; on a connection no restart touched they are a
 *   bug (the half-close cut them off), on others they are only reported.
 *
 * @module
 */
import { hashReply } from "../src/protocol/reply_hash.ts";
import { waitOrAbort as sleep } from "../src/async/wait_or_abort.ts";

/** The server's answer to a line it cannot decode. */
export const ERRDECODE = "NAK 0 ERRDECODE";

/** The invalid lines of the `invalid` mix (without their `\n`; `"\r"` is a CRLF blank line). */
export const INVALID_LINES: readonly string[] = [
  "",
  "req 1",
  "REQ +1",
  "REQ 1x",
  "FOO",
  "ACK 5",
  "\r",
];

/** Which lines a client mixes among its REQs; see the module doc. */
export type InvalidLineKind = "invalid" | "wrong-way";

/** One line of a connection's script (without its `\n`). */
export type ScriptLine = { req: true; seq: number; text: string } | { req: false; text: string };

const DATA_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_!?=+/";

function pick<T>(items: readonly T[]): T {
  return items[Math.floor(Math.random() * items.length)];
}

function between(min: number, max: number): number {
  return min + Math.floor(Math.random() * (max - min + 1));
}

function wrongWayLine(reqs: number): string {
  const seq = between(1, reqs);
  const hash = Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, "0");
  return pick([`ACK ${seq}`, `NAK ${seq}`, `ACK ${seq} ${hash}`, ERRDECODE]);
}

/**
 * A random script: 5-40 REQs (Seq 1, 2, …; data of 0-40 characters, some lines ending in CRLF)
 * with invalid lines of `kind` before about a third of them, and at times at the very start and
 * after the last REQ (answers owed once every REQ is answered: what a half-close must wait for).
 */
export function makeScript(kind: InvalidLineKind): ScriptLine[] {
  const reqs = between(5, 40);
  const invalid = () => kind === "invalid" ? pick(INVALID_LINES) : wrongWayLine(reqs);
  const some = (n: number): ScriptLine[] =>
    Array.from({ length: n }, () => ({ req: false, text: invalid() }));
  const script: ScriptLine[] = Math.random() < 0.3 ? some(between(1, 3)) : [];
  for (let seq = 1; seq <= reqs; seq++) {
    if (seq > 1 && Math.random() < 0.35) script.push(...some(between(1, 3)));
    const length = between(0, 40);
    let data = "";
    for (let k = 0; k < length; k++) data += pick([...DATA_CHARS]);
    // No blank at either end of the data: easier to read in a capture (the server would not mind).
    const text = length === 0 ? `REQ ${seq}` : `REQ ${seq} ${data.trim() || "x"}`;
    script.push({ req: true, seq, text: Math.random() < 0.1 ? `${text}\r` : text });
  }
  if (Math.random() < 0.5) script.push(...some(between(1, 4)));
  return script;
}

/** What one connection's lines added up to, from {@linkcode ScriptChecker.end}. */
export interface CheckedConnection {
  /** REQs written (counted when their newline was handed to a write). */
  sent: number;
  /** Replies that were exactly the server's answer to their REQ. */
  received: number;
  /** Replies with the right Seq but the wrong type or data, or with the wrong Seq. */
  wrong: number;
  /** REQs written and not answered by EOF (after a wrong Seq: every REQ not answered before it). */
  lost: number;
  /** Invalid lines written. */
  invalidSent: number;
  /** `NAK 0 ERRDECODE` lines received. */
  errdecode: number;
  /** `NAK 0 ERRDECODE` lines that came before the reply to a REQ sent before their line. */
  misplaced: number;
  /** Invalid lines written whose `NAK 0 ERRDECODE` never came (0 once checking stopped). */
  missing: number;
  /** Why checking stopped early (`"wrong_seq"`), if it did. */
  abandoned?: string;
}

/**
 * Checks the lines one connection receives against its script; see the module doc. Feed it
 * {@linkcode ScriptChecker.written} before each write and every received line in order.
 */
export class ScriptChecker {
  #reqs: { text: string; seq: number; invalidBefore: number; errAtReply: number }[] = [];
  #invalidTotal = 0;
  #script: readonly ScriptLine[];
  #written = 0;
  #reqsSent = 0;
  #invalidSent = 0;
  #next = 0; // index of the next REQ owed a reply
  #received = 0;
  #wrong = 0;
  #errdecode = 0;
  #misplaced = 0;
  #abandoned: string | undefined;

  constructor(script: readonly ScriptLine[]) {
    this.#script = script;
    for (const line of script) {
      if (line.req) {
        this.#reqs.push({
          text: line.text,
          seq: line.seq,
          invalidBefore: this.#invalidTotal,
          errAtReply: -1,
        });
      } else this.#invalidTotal++;
    }
  }

  /** Notes that the first `lines` lines of the script have been (or are being) written whole. */
  written(lines: number): void {
    for (; this.#written < lines; this.#written++) {
      if (this.#script[this.#written].req) this.#reqsSent++;
      else this.#invalidSent++;
    }
  }

  /** Checks one received line (without its `\n`). */
  line(raw: string): void {
    if (this.#abandoned !== undefined) return;
    const line = raw.replace(/\r$/, "");
    if (line === ERRDECODE) {
      this.#errdecode++;
      const bound = this.#next < this.#reqs.length
        ? this.#reqs[this.#next].invalidBefore
        : this.#invalidTotal;
      if (this.#errdecode > bound) this.#misplaced++;
      return;
    }
    const req = this.#reqs[this.#next];
    const seq = /^(?:ACK|NAK)[ \t]+(\d+)(?:[ \t]|$)/.exec(line)?.[1];
    if (req === undefined || seq !== String(req.seq)) {
      // A reply to another REQ (or to none): the order is broken, nothing after it can be trusted.
      // It takes the place of the reply owed: it is wrong, not lost.
      this.#wrong++;
      this.#next++;
      this.#abandoned = "wrong_seq";
      return;
    }
    if (line === hashReply(req.text)) this.#received++;
    else this.#wrong++;
    req.errAtReply = this.#errdecode;
    this.#next++;
  }

  /** The connection's figures at EOF (or when it was given up). */
  end(): CheckedConnection {
    const sent = this.#reqsSent;
    let misplaced = this.#misplaced;
    // Every answer came: each must be exactly where its line was (see the module doc). Counted
    // once per REQ reply out of place, unless the bound above caught it already.
    if (
      misplaced === 0 && this.#abandoned === undefined && this.#next === this.#reqs.length &&
      this.#errdecode === this.#invalidTotal
    ) {
      for (const req of this.#reqs) if (req.errAtReply !== req.invalidBefore) misplaced++;
    }
    return {
      sent,
      received: this.#received,
      wrong: this.#wrong,
      lost: Math.max(0, sent - this.#next),
      invalidSent: this.#invalidSent,
      errdecode: this.#errdecode,
      misplaced,
      // After a wrong Seq the lines are no longer looked at.
      missing: this.#abandoned ? 0 : Math.max(0, this.#invalidSent - this.#errdecode),
      abandoned: this.#abandoned,
    };
  }
}

/**
 * Whether an upstream restart fell within a span of time: the soak calls `begin()` before it
 * kills the upstream and `end()` once the new one listens.
 */
export class RestartWindows {
  #epoch = 0;
  #active = false;

  /** A restart starts (the upstream is about to be killed). */
  begin(): void {
    this.#epoch++;
    this.#active = true;
  }

  /** The restarted upstream listens. */
  end(): void {
    this.#epoch++;
    this.#active = false;
  }

  /** A mark to hand to {@linkcode RestartWindows.since} later. */
  mark(): { epoch: number; active: boolean } {
    return { epoch: this.#epoch, active: this.#active };
  }

  /** Whether a restart was under way at `mark` or began since. */
  since(mark: { epoch: number; active: boolean }): boolean {
    return mark.active || this.#epoch !== mark.epoch || this.#active;
  }
}

/** The figures of {@linkcode InvalidLineClients}, summed over all their connections. */
export interface InvalidLineFigures {
  connections: number;
  /** Connections an upstream restart fell within. */
  touched: number;
  sent: number;
  received: number;
  wrong: number;
  lost: number;
  /** Of `lost`, those on connections no restart touched: a bug even without `--resume`. */
  lostWithoutRestart: number;
  invalidSent: number;
  errdecode: number;
  misplaced: number;
  /** Answers to invalid lines missing on connections a restart touched (expected: not replayed). */
  missingAfterRestart: number;
  /** Answers to invalid lines missing on connections no restart touched: a bug. */
  missingWithoutRestart: number;
}

/** How long one exchange may take before the client gives up on it (failovers included). */
const EXCHANGE_TIMEOUT_MS = 30_000;

/**
 * `count` connections to `port` that each run a {@linkcode makeScript} script, verify what comes
 * back with a {@linkcode ScriptChecker}, then reconnect, until `stop` aborts (the exchange under
 * way is finished, not cut).
 */
export class InvalidLineClients {
  readonly figures: InvalidLineFigures = {
    connections: 0,
    touched: 0,
    sent: 0,
    received: 0,
    wrong: 0,
    lost: 0,
    lostWithoutRestart: 0,
    invalidSent: 0,
    errdecode: 0,
    misplaced: 0,
    missingAfterRestart: 0,
    missingWithoutRestart: 0,
  };
  /** Errors by kind (`connect`, `write`, `read`, `timeout`, `closed`, `wrong_seq`, …). */
  readonly errors: Record<string, number> = {};

  constructor(
    readonly port: number,
    readonly count: number,
    readonly kind: InvalidLineKind,
    readonly restarts: RestartWindows,
  ) {}

  /** Runs the connections until `stop` aborts. */
  async run(stop: AbortSignal): Promise<void> {
    await Promise.all(Array.from({ length: this.count }, () => this.#loop(stop)));
  }

  #error(kind: string): void {
    this.errors[kind] = (this.errors[kind] ?? 0) + 1;
  }

  async #loop(stop: AbortSignal): Promise<void> {
    while (!stop.aborted) {
      let conn: Deno.TcpConn;
      try {
        conn = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
      } catch {
        this.#error("connect");
        await sleep(500, stop);
        continue;
      }
      await this.#exchange(conn, makeScript(this.kind));
      await sleep(Math.random() * 50, stop);
    }
  }

  async #exchange(conn: Deno.TcpConn, script: ScriptLine[]): Promise<void> {
    const mark = this.restarts.mark();
    const checker = new ScriptChecker(script);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        conn.close();
      } catch {
        // Closed already.
      }
    }, EXCHANGE_TIMEOUT_MS);
    const reading = this.#read(conn, checker);
    try {
      await this.#write(conn, script, checker);
    } catch {
      if (!timedOut) this.#error("write");
    }
    const ended = await reading;
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // Closed by the timer.
    }
    const touched = this.restarts.since(mark);
    const c = checker.end();
    if (timedOut) this.#error("timeout");
    else if (ended !== "eof") this.#error(ended);
    else if (c.lost > 0 && c.abandoned === undefined) this.#error("closed");
    if (c.abandoned !== undefined) this.#error(c.abandoned);
    if (c.misplaced > 0) this.#error("misplaced_errdecode");
    if (c.missing > 0 && !touched) this.#error("errdecode_missing");
    const f = this.figures;
    f.connections++;
    if (touched) f.touched++;
    f.sent += c.sent;
    f.received += c.received;
    f.wrong += c.wrong;
    f.lost += c.lost;
    if (!touched) f.lostWithoutRestart += c.lost;
    f.invalidSent += c.invalidSent;
    f.errdecode += c.errdecode;
    f.misplaced += c.misplaced;
    if (touched) f.missingAfterRestart += c.missing;
    else f.missingWithoutRestart += c.missing;
  }

  /** Writes the script in pieces of 1-120 bytes (cut anywhere), 0-20 ms apart, then FIN. */
  async #write(conn: Deno.TcpConn, script: ScriptLine[], checker: ScriptChecker): Promise<void> {
    const bytes = new TextEncoder().encode(script.map((l) => `${l.text}\n`).join(""));
    let lines = 0;
    for (let at = 0; at < bytes.length;) {
      const end = Math.min(bytes.length, at + between(1, 120));
      for (let i = at; i < end; i++) if (bytes[i] === 10) lines++;
      checker.written(lines);
      for (let off = at; off < end;) off += await conn.write(bytes.subarray(off, end));
      at = end;
      if (Math.random() < 0.5) await sleep(Math.random() * 20);
    }
    await conn.closeWrite();
  }

  /** Reads to EOF, handing each line to `checker`; says how the stream ended. */
  async #read(conn: Deno.TcpConn, checker: ScriptChecker): Promise<string> {
    const decoder = new TextDecoder();
    const buf = new Uint8Array(4096);
    let pending = "";
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        pending += decoder.decode(buf.subarray(0, n), { stream: true });
        let nl;
        while ((nl = pending.indexOf("\n")) >= 0) {
          checker.line(pending.slice(0, nl));
          pending = pending.slice(nl + 1);
        }
      }
    } catch {
      return "read";
    }
    return pending === "" ? "eof" : "partial_line";
  }
}
