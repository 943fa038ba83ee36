/**
 * `foo-proxy proxy`: its usage text, and its output writers around the supervisor
 * (`supervisor.ts`), which runs everything else.
 *
 * @module
 */
import { formatFlagHelp, formatSynopsis } from "../cli/flag_help.ts";
import { DURATION_HELP } from "../cli/duration.ts";
import { LineWriter } from "./line_writer.ts";
import type { CommandContext } from "./output.ts";
import { PROXY_FLAGS } from "./proxy_settings.ts";
import { superviseProxy } from "./supervisor.ts";

export { parseProxyConfig, type ProxyConfig } from "./proxy_config.ts";
export { PROXY_FLAGS } from "./proxy_settings.ts";

/** One-line synopsis of `foo-proxy proxy`. */
export const PROXY_SYNOPSIS = `foo-proxy [proxy] ${formatSynopsis(PROXY_FLAGS)}`;

/** Usage text of `foo-proxy proxy`. */
export const PROXY_USAGE = `Usage: foo-proxy [proxy] [flags]

Proxies Foo traffic from --listen to --forward and counts every message, on every core: one
data-plane worker per CPU (--workers) shares the port, behind one supervisor.
Send SIGUSR2 for one JSON stats line on stdout (signals sent at once may coalesce into one
line). SIGINT/SIGTERM/SIGQUIT drain (readiness fails at once, new clients are refused after
--drain-delay, open ones get --drain-timeout to finish), print a final line and exit 0; the same
signal again a second or more later closes every connection at once and exits 1 (a repeat within
a second, as a terminal's Ctrl-C under deno task delivers, is ignored). SIGHUP never stops it.
SIGUSR1 is ignored (stats are on SIGUSR2; the debugger Deno would open on it is closed).

Flags (each also from FOO_PROXY_<NAME>, e.g. FOO_PROXY_LISTEN; flags win):
${formatFlagHelp(PROXY_FLAGS)}

ADDR is :PORT, PORT, HOST:PORT or [IPv6]:PORT. ${DURATION_HELP}
Go-style -listen=:8002 also works.`;

/** How long the last output may take at exit before a stalled reader is given up on. */
const EXIT_FLUSH_MS = 1000;

/** Runs the proxy until SIGINT/SIGTERM (or `context.signal`); resolves with the exit code. */
export async function runProxy(args: string[], context: CommandContext = {}): Promise<number> {
  // Logs and stats lines go through bounded non-blocking writers: a stdout or stderr that nobody
  // reads must not freeze traffic (a blocking write would stop the whole event loop).
  const output = {
    stdout: new LineWriter((bytes) => Deno.stdout.write(bytes)),
    // Logs (and the access log on stderr) wait 10 ms for company: one write per busy moment.
    stderr: new LineWriter((bytes) => Deno.stderr.write(bytes), { coalesceMs: 10 }),
  };
  try {
    return await superviseProxy(args, context, output, PROXY_USAGE);
  } finally {
    await Promise.all([output.stdout.flush(EXIT_FLUSH_MS), output.stderr.flush(EXIT_FLUSH_MS)]);
  }
}
