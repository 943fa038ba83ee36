/**
 * WebSocket clients in a real browser: Debian's Chromium (`/usr/bin/chromium`) driven by
 * playwright-core in test/_ws_browser_driver.ts (a child with `--allow-all`, which playwright-core
 * needs), against a proxy with `--ws-origin` naming the page's origin. Ignored when Chromium is
 * missing. A page served from that origin sends REQs split across messages and gets its replies
 * as text messages; a page of another origin is refused before the upgrade.
 */
import { CHROMIUM, chromiumInstalled } from "./_chromium.ts";
import assert from "node:assert/strict";
import { Proxy } from "../src/proxy/proxy.ts";
import { acks, REPO_ROOT, startUpstream } from "./_util.ts";

const DRIVER = `${REPO_ROOT}test/_ws_browser_driver.ts`;

Deno.test({
  name:
    "a page in Chromium sends REQs over WebSocket, split across messages, and gets its replies; a page of another origin is refused",
  ignore: !chromiumInstalled(),
  async fn() {
    const servePage = () =>
      Deno.serve(
        { hostname: "127.0.0.1", port: 0, onListen: () => {} },
        () =>
          new Response("<!doctype html><title>foo-proxy WebSocket test</title><p>hello</p>", {
            headers: { "content-type": "text/html; charset=utf-8" },
          }),
      );
    await using page = servePage();
    await using other = servePage();
    const pageOrigin = `http://127.0.0.1:${page.addr.port}`;
    await using upstream = await startUpstream();
    await using proxy = new Proxy({
      listen: { hostname: "127.0.0.1", port: 0 },
      forward: upstream.addr,
      webSocket: { listen: { hostname: "127.0.0.1", port: 0 }, origins: [pageOrigin] },
    });
    await proxy.start();
    const ws = `ws://127.0.0.1:${proxy.webSocketAddr!.port}/`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        DRIVER,
        `${pageOrigin}/`,
        `http://127.0.0.1:${other.addr.port}/`,
        ws,
        CHROMIUM,
      ],
      cwd: REPO_ROOT,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const { served, elsewhere } = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.equal(served.opened, true, stderr);
    assert.deepEqual(served.lines, acks(1, 30));
    assert.ok(served.types.every((t: string) => t === "string"), "text in, text out");
    assert.equal(elsewhere.opened, false, "a page of another origin is not let in");
    assert.equal(proxy.stats.wsRejectedOrigin, 1);
    assert.equal(proxy.stats.wsConnections, 1);
    assert.equal(proxy.stats.counts.msg_req, 30);
  },
});
