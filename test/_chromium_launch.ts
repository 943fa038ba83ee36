/**
 * Launches the browser tests' Chromium (`_chromium.ts`) headless, with the flags that keep it off
 * the closed network, in a fresh profile. Imported by the drivers only (their own processes).
 *
 * @module
 */
import { type BrowserContext, chromium } from "playwright-core";

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
