/**
 * The dashboard in a real browser: Debian's Chromium (`/usr/bin/chromium`, which `.ci/run`
 * installs) driven by playwright-core, against `foo-proxy proxy` in a child process with two of
 * our Foo servers behind it and load going through it. Ignored when Chromium is missing. Nothing
 * is downloaded (playwright-core is told where the browser is). The browser side runs in
 * test/_browser_driver.ts, a child with `--allow-all`, which playwright-core needs to load. It
 * takes a screenshot; the README's (docs/dashboard.png, tracked) is rewritten only when asked
 * for: `deno task screenshot` sets `FOO_PROXY_SCREENSHOT=docs/dashboard.png` (a path from the
 * repository root). Otherwise the picture goes to a temporary file, so `deno task test` leaves
 * the work tree clean.
 */
import { chromiumInstalled } from "./_chromium.ts";
import assert from "node:assert/strict";
import { runLoad } from "../src/tools/load.ts";
import { connectTo, OutputLines, REPO_ROOT, spawnMain, startUpstream, writeAll } from "./_util.ts";

const DRIVER = `${REPO_ROOT}test/_browser_driver.ts`;
const TRACKED_SCREENSHOT = `${REPO_ROOT}docs/dashboard.png`;
/** Where the screenshot goes when asked for (`FOO_PROXY_SCREENSHOT`); unset: a temporary file. */
const ASKED_SCREENSHOT = Deno.env.get("FOO_PROXY_SCREENSHOT");
const RATE = 400; // REQs per second sent through the proxy

Deno.test({
  name:
    "the dashboard in Chromium shows live numbers that agree with /stats, and says when the proxy is gone",
  ignore: !chromiumInstalled(),
  async fn() {
    const tracked = await Deno.readFile(TRACKED_SCREENSHOT);
    const screenshot = ASKED_SCREENSHOT === undefined
      ? await Deno.makeTempFile({ prefix: "foo-proxy-dashboard-", suffix: ".png" })
      : ASKED_SCREENSHOT.startsWith("/")
      ? ASKED_SCREENSHOT
      : `${REPO_ROOT}${ASKED_SCREENSHOT}`;
    await using _screenshot = {
      [Symbol.asyncDispose]: async () => {
        if (ASKED_SCREENSHOT === undefined) await Deno.remove(screenshot).catch(() => {});
      },
    };
    await using alpha = await startUpstream();
    await using beta = await startUpstream();
    await using proxy = spawnMain([
      "proxy",
      "--listen=127.0.0.1:0",
      `--forward=alpha=127.0.0.1:${alpha.addr.port},beta=127.0.0.1:${beta.addr.port}`,
      "--http=127.0.0.1:0",
      "--health=off",
      "--health-interval=1s",
      "--drain-timeout=1s",
      "--workers=2", // the dashboard's workers' table has a row each
    ]);
    const port = Number((await proxy.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
    const httpPort = Number(
      (await proxy.stderr.waitFor(/Serving stats on http:\/\/127\.0\.0\.1:(\d+)/, 20_000))[1],
    );

    // One line that breaks the protocol, so the invalid counters show something.
    {
      using conn = await connectTo(port);
      await writeAll(conn, "HELLO 1\n");
    }
    const stopLoad = new AbortController();
    const load = runLoad({ hostname: "127.0.0.1", port }, {
      connections: 4,
      rate: RATE,
      durationMs: 0,
      signal: stopLoad.signal,
    });

    const driver = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", DRIVER, `http://127.0.0.1:${httpPort}`, `${RATE}`, screenshot],
      cwd: REPO_ROOT,
      env: { NO_COLOR: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const out = new OutputLines(driver.stdout);
    const err = new OutputLines(driver.stderr);
    const input = driver.stdin.getWriter();
    const failed = () => `driver stderr: ${err.text}`;
    try {
      const live = JSON.parse(
        (await out.waitFor(/^\{"phase":"live".*/, 50_000).catch((e) => {
          throw new Error(`${e.message}; ${failed()}`);
        }))[0],
      );
      assert.equal(live.upstreams, 2);
      assert.equal(live.workers, 2, "the workers' table shows both data-plane workers");
      assert.ok(live.shown > 0);

      stopLoad.abort();
      await load;
      proxy.kill("SIGTERM");
      assert.equal((await proxy.status()).code, 0);
      await input.write(new TextEncoder().encode("gone\n"));
      const gone = JSON.parse(
        (await out.waitFor(/^\{"phase":"gone".*/, 20_000).catch((e) => {
          throw new Error(`${e.message}; ${failed()}`);
        }))[0],
      );
      assert.match(gone.status, /^Proxy unreachable/);
      assert.equal((await driver.status).code, 0, failed());
      assert.ok((await Deno.stat(screenshot)).size > 0, "the screenshot was taken");
      if (ASKED_SCREENSHOT === undefined) {
        // Not deepEqual: its diff of two PNGs takes minutes.
        const after = await Deno.readFile(TRACKED_SCREENSHOT);
        assert.ok(
          after.length === tracked.length && after.every((byte, i) => byte === tracked[i]),
          "the README's screenshot changes only when asked for",
        );
      }
    } finally {
      stopLoad.abort();
      await load.catch(() => {});
      await input.close().catch(() => {});
      try {
        driver.kill("SIGKILL");
      } catch {
        // Already exited.
      }
      await driver.status;
      await Promise.all([out.done, err.done]);
    }
  },
});
