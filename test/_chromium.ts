/**
 * Chromium for the browser tests: Debian's package (never a downloaded Playwright browser),
 * launched headless with the flags that keep it off the closed network, in a fresh profile.
 *
 * @module
 */
import { type BrowserContext, chromium } from "playwright-core";

/** Where Debian's `chromium` package puts the browser. */
export const CHROMIUM = "/usr/bin/chromium";

/** Whether the browser is installed (the browser tests are ignored otherwise). */
export function chromiumInstalled(path = CHROMIUM): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

// Without the networking flags Chromium tries the network (updates, sync) and waits on it.
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A launched browser: its context, and `close()`, which also removes its profile. */
export interface LaunchedChromium {
  context: BrowserContext;
  close(): Promise<void>;
}

/** Launches Chromium at `executablePath` headless in a new temporary profile. */
export async function launchChromium(
  executablePath: string,
  options: { viewport?: { width: number; height: number } } = {},
): Promise<LaunchedChromium> {
  const userDataDir = await Deno.makeTempDir({ prefix: "foo-proxy-chromium-" });
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ARGS,
    ...options,
  });
  return {
    context,
    close: async () => {
      await context.close();
      await Deno.remove(userDataDir, { recursive: true }).catch(() => {});
    },
  };
}
