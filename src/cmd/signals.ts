/**
 * The proxy's signal handling. Every listener is installed before the first accept (a SIGUSR2 with
 * no listener kills the process):
 *
 * - SIGUSR2: one stats line.
 * - SIGINT, SIGTERM, SIGQUIT: drain. A second one forces, unless it comes within
 *   {@linkcode REPEAT_WINDOW_MS} of the first: at a terminal Ctrl-C reaches the proxy twice within
 *   milliseconds (the terminal signals the process group and `deno task` forwards its own), and
 *   that is one request from a person, not two.
 * - SIGHUP: reload what can be reloaded; never kills.
 * - SIGUSR1: neutralised. Deno (>= 2.9.2) opens its V8 inspector on 127.0.0.1:9229 on SIGUSR1, an
 *   unauthenticated debugger with the proxy's permissions; it is closed again at once (and a few
 *   more times over the next second, in case it opens late), a warning says stats are on SIGUSR2
 *   (at most once a minute), and the count is kept.
 *
 * @module
 */
import inspector from "node:inspector";

/** A second stop signal this soon after the first is the same Ctrl-C delivered twice. */
export const REPEAT_WINDOW_MS = 1000;
/** The SIGUSR1 warning is logged at most this often. */
const USR1_WARN_EVERY_MS = 60_000;

/** What the signals do. */
export interface SignalHooks {
  /** SIGUSR2. */
  onStats: () => void;
  /** The first SIGINT/SIGTERM/SIGQUIT (drain), with the signal's name. */
  onStop: (signal: string) => void;
  /** A later stop signal, past {@linkcode REPEAT_WINDOW_MS}: close at once. */
  onForce: (signal: string) => void;
  /** SIGHUP. */
  onReload: () => void;
  /** Each SIGUSR1 (after the inspector was closed); `warn` says whether to log this one. */
  onUsr1: (warn: boolean) => void;
  /** A warning to log (e.g. no SIGUSR2 on Windows). */
  warn: (message: string) => void;
  /** Milliseconds now; unset: `performance.now`. */
  now?: () => number;
}

/** Installed listeners; `remove()` takes them away. */
export interface InstalledSignals {
  remove: () => void;
  /**
   * Feeds a stop signal as if it had arrived (the abort of a `CommandContext`), through the same
   * repeat rule.
   */
  stop: (signal: string) => void;
}

/** Installs the listeners for the platform. */
export function installSignals(hooks: SignalHooks): InstalledSignals {
  const now = hooks.now ?? (() => performance.now());
  const installed: [Deno.Signal, () => void][] = [];
  const add = (signal: Deno.Signal, handler: () => void) => {
    Deno.addSignalListener(signal, handler);
    installed.push([signal, handler]);
  };
  let firstStopAt: number | undefined;
  const stop = (signal: string) => {
    const t = now();
    if (firstStopAt === undefined) {
      firstStopAt = t;
      hooks.onStop(signal);
    } else if (t - firstStopAt >= REPEAT_WINDOW_MS) {
      hooks.onForce(signal);
    }
    // Within the window: the same Ctrl-C delivered twice; ignored.
  };
  let lastUsr1Warning = -Infinity;
  const usr1 = () => {
    closeInspectorSoon();
    const t = now();
    const warn = t - lastUsr1Warning >= USR1_WARN_EVERY_MS;
    if (warn) lastUsr1Warning = t;
    hooks.onUsr1(warn);
  };
  if (Deno.build.os === "windows") {
    hooks.warn("SIGUSR2 does not exist on Windows: stats are not printed on a signal");
    add("SIGINT", () => stop("SIGINT"));
    add("SIGBREAK", () => stop("SIGBREAK"));
  } else {
    add("SIGUSR2", hooks.onStats);
    add("SIGUSR1", usr1);
    add("SIGINT", () => stop("SIGINT"));
    add("SIGTERM", () => stop("SIGTERM"));
    add("SIGQUIT", () => stop("SIGQUIT"));
    add("SIGHUP", hooks.onReload);
  }
  return {
    remove: () => {
      for (const [signal, handler] of installed) Deno.removeSignalListener(signal, handler);
    },
    stop,
  };
}

/**
 * Closes the inspector Deno opens on SIGUSR1. Measured here (Deno 2.9.6): `close()` called from
 * inside the listener runs before the inspector has started and leaves the port open; called
 * from a timer after it, it closes the port. So: on the next turn, then every 50 ms for a second.
 */
function closeInspectorSoon(): void {
  let tries = 20;
  const close = () => {
    try {
      inspector.close();
    } catch {
      // Not open: nothing to close.
    }
    if (--tries > 0) setTimeout(close, 50);
  };
  setTimeout(close, 0);
}
