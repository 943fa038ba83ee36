/**
 * The client side of a WebSocket, through the WebSocket API, as the part of a `Deno.Conn` the
 * bundled client uses (`foo-proxy client --ws URL`): `write` sends its bytes as one text message
 * (as a browser page would), `read` gives the bytes of the messages received as one stream,
 * `closeWrite` and `close` close the WebSocket (it has no half-close: a close frame ends both
 * directions, so the client only closes once every reply is in).
 *
 * @module
 */

/** Options for {@linkcode connectWebSocket}. */
export interface ConnectWebSocketOptions {
  /** Aborting gives up the connect (the socket is closed). */
  signal?: AbortSignal;
}

/** The WebSocket could not be opened. */
export class WebSocketConnectError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "WebSocketConnectError";
  }
}

/** Opens a WebSocket to `url`; resolves once it is open. */
export function connectWebSocket(
  url: string,
  options: ConnectWebSocketOptions = {},
): Promise<WebSocketClientConn> {
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  const conn = new WebSocketClientConn(socket);
  const opened = Promise.withResolvers<WebSocketClientConn>();
  const onAbort = () => {
    socket.close();
    opened.reject(options.signal?.reason ?? new WebSocketConnectError("aborted"));
  };
  options.signal?.addEventListener("abort", onAbort, { once: true });
  socket.addEventListener("open", () => opened.resolve(conn), { once: true });
  socket.addEventListener("close", (event) => {
    opened.reject(
      new WebSocketConnectError(
        `the WebSocket handshake failed (close code ${event.code}${
          event.reason ? `: ${event.reason}` : ""
        })`,
      ),
    );
  }, { once: true });
  return opened.promise.finally(() => options.signal?.removeEventListener("abort", onAbort));
}

/** A client WebSocket as a byte stream; see the module docs. */
export class WebSocketClientConn {
  #socket: WebSocket;
  #chunks: Uint8Array[] = [];
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  #encoder = new TextEncoder();
  #decoder = new TextDecoder();

  /** Wraps `socket` (its messages are queued from now on). */
  constructor(socket: WebSocket) {
    this.#socket = socket;
    socket.addEventListener("message", (event: MessageEvent) => {
      const data = event.data;
      this.#chunks.push(
        typeof data === "string" ? this.#encoder.encode(data) : new Uint8Array(data as ArrayBuffer),
      );
      this.#notify();
    });
    socket.addEventListener("close", () => {
      this.#ended = true;
      this.#notify();
    });
    socket.addEventListener("error", (event) => {
      this.#error ??= new Error((event as ErrorEvent).message || "WebSocket error");
      this.#notify();
    });
  }

  /** Copies received bytes into `p`; null once the WebSocket closed and everything was read. */
  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#ended) return null;
      if (this.#error !== undefined) throw this.#error;
      const wait = Promise.withResolvers<void>();
      this.#wake = wait.resolve;
      await wait.promise;
    }
    const chunk = this.#chunks[0];
    const n = Math.min(p.length, chunk.length);
    p.set(chunk.subarray(0, n));
    if (n === chunk.length) this.#chunks.shift();
    else this.#chunks[0] = chunk.subarray(n);
    return n;
  }

  /** Sends `p` as one text message. */
  write(p: Uint8Array): Promise<number> {
    if (this.#socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Deno.errors.BrokenPipe("the WebSocket is closed"));
    }
    this.#socket.send(this.#decoder.decode(p));
    return Promise.resolve(p.length);
  }

  /** Closes the WebSocket (code 1000): it has no half-close. */
  closeWrite(): Promise<void> {
    this.#socket.close(1000);
    return Promise.resolve();
  }

  /** Closes the WebSocket; a pending read ends. */
  close(): void {
    if (this.#socket.readyState !== WebSocket.CLOSED) this.#socket.close(1000);
    this.#ended = true;
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
