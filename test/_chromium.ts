/**
 * Where the browser tests find Chromium: Debian's package, never a downloaded Playwright browser
 * (`_chromium_launch.ts` launches it, in the drivers' processes: playwright-core needs more
 * permissions than the tests have).
 *
 * @module
 */
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
