/**
 * The browser half of test/browser_test.ts, run as its own process because playwright-core needs
 * `--allow-all` when it loads (it reads `/proc/sys` and the home directory), which the test suite
 * does not grant. It drives Debian's Chromium (never a downloaded one) headless against a running
 * proxy's dashboard, checks it, saves the screenshot, and reports on stdout, one JSON line per
 * phase:
 *
 * 1. `{"phase":"live",…}`: the page went live, its numbers moved, its request rate agrees with
 *    `/stats`, every part is filled in (the workers' table with a row per worker: the proxy runs
 *    two), nothing was logged as an error, the screenshot is saved.
 * 2. After a line `gone` on stdin (the test stopped the proxy): `{"phase":"gone",…}` once the
 *    page says the proxy is unreachable.
 *
 * A failed check ends the process with status 1 and the reason on stderr.
 *
 * Usage: `deno run -A test/_browser_driver.ts URL RATE SCREENSHOT [CHROMIUM]`
 *
 * @module
 */
import assert from "node:assert/strict";
import { CHROMIUM } from "./_chromium.ts";
import { launchChromium } from "./_chromium_launch.ts";

/** What the predicates use of the page's `window` (they run there, not here). */
interface Page {
  document: {
    getElementById(id: string): { dataset: Record<string, string | undefined> } | null;
  };
}

/** What the workers' check reads of the page, in one turn (so from one event). */
interface WorkersPage {
  document: {
    getElementById(id: string): {
      hidden: boolean;
      textContent: string | null;
      dataset: Record<string, string | undefined>;
      closest(selector: string): { hidden: boolean } | null;
    } | null;
    querySelectorAll(selector: string): ArrayLike<{ children: ArrayLike<{ textContent: string }> }>;
  };
}

interface StatsFields {
  uptime_seconds: number;
  request_rate_10s: number;
}

async function main(args: string[]): Promise<number> {
  const [base, rateText, screenshot, executablePath = CHROMIUM] = args;
  const rate = Number(rateText);
  const stats = async (): Promise<StatsFields> => await (await fetch(`${base}/stats`)).json();
  const report = (line: Record<string, unknown>) =>
    Deno.stdout.write(new TextEncoder().encode(JSON.stringify(line) + "\n"));
  const stdin = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();

  const browser = await launchChromium(executablePath, { viewport: { width: 1280, height: 900 } });
  const context = browser.context;
  try {
    const page = context.pages()[0] ?? await context.newPage();
    const problems: string[] = [];
    let watching = true;
    page.on("console", (message) => {
      if (watching && message.type() === "error") problems.push(`console: ${message.text()}`);
    });
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    const elsewhere: string[] = [];
    page.on("request", (request) => {
      if (!request.url().startsWith(`${base}/`) && !request.url().startsWith("data:")) {
        elsewhere.push(request.url());
      }
    });
    const value = async (id: string) => Number(await page.getAttribute(`#${id}`, "data-value"));
    // Predicates are functions, not strings: the page's CSP (rightly) forbids eval.
    const above = (id: string, min: number, timeout: number) =>
      page.waitForFunction(
        ([id, min]) =>
          Number((globalThis as unknown as Page).document.getElementById(id)?.dataset.value) > min,
        [id, min] as const,
        { timeout, polling: 50 },
      );
    const stateIs = (state: string, timeout: number) =>
      page.waitForFunction(
        (state) =>
          (globalThis as unknown as Page).document.getElementById("status")?.dataset.state ===
            state,
        state,
        { timeout, polling: 50 },
      );

    await page.goto(`${base}/`);
    assert.equal(await page.title(), "foo-proxy dashboard");
    await stateIs("live", 10_000);
    // The live numbers move.
    const firstReqs = await value("msg_req");
    await above("msg_req", firstReqs + 2 * rate, 15_000);
    await above("request_rate_10s", rate / 4, 15_000);

    // The rate shown comes from an event built between these two /stats reads, so it lies
    // between them (with slack for the window's bucket edges), however the timing falls.
    const before = await stats();
    await above("uptime_seconds", before.uptime_seconds, 5_000);
    const shown = await value("request_rate_10s");
    const text = await page.textContent("#request_rate_10s");
    const after = await stats();
    const low = Math.min(before.request_rate_10s, after.request_rate_10s);
    const high = Math.max(before.request_rate_10s, after.request_rate_10s);
    assert.ok(
      shown >= low * 0.9 - 2 && shown <= high * 1.1 + 2,
      `page ${shown} req/s, /stats ${before.request_rate_10s} then ${after.request_rate_10s}`,
    );
    assert.ok(Math.abs(Number((text ?? "").replaceAll(",", "")) - shown) <= 1, `text ${text}`);

    // Every part is filled in, in words.
    assert.ok(await value("msg_invalid") >= 1, "the invalid line is counted");
    assert.ok(await value("latency_p99_seconds") > 0, "latency");
    assert.ok(await value("connections_active") >= 1, "connections");
    const rows = await page.locator("#upstreams tr").allInnerTexts();
    assert.equal(rows.length, 2, rows.join(" | "));
    assert.match(rows[0], /^alpha\s+127\.0\.0\.1:\d+\s+(up|down|ejected|draining)\s/);
    assert.match(rows[1], /^beta\s/);
    // Each upstream's requests/s (the difference of two events over their time): together they
    // carry the load, within the slack of a one-second difference.
    const perUpstream: number[] = [];
    for (let i = 0; i < 2; i++) {
      const cells = page.locator("#upstreams tr").nth(i).locator("td");
      const text = (await cells.nth(5).textContent()) ?? "";
      assert.match(text, /^[\d.,]+$/, `upstream ${i}: requests/s ${JSON.stringify(text)}`);
      perUpstream.push(Number(text.replaceAll(",", "")));
    }
    const together = perUpstream[0] + perUpstream[1];
    assert.ok(together >= rate * 0.5 && together <= rate * 1.5, `upstream rates ${perUpstream}`);
    // The workers' table (the proxy runs two): a row each, with connections and replies/s and
    // their shares; together they are the totals of the same event.
    const workers = await page.evaluate(() => {
      const doc = (globalThis as unknown as WorkersPage).document;
      const body = doc.getElementById("workers");
      const rows = Array.from(
        doc.querySelectorAll("#workers tr"),
        (tr) => Array.from(tr.children, (cell) => cell.textContent),
      );
      return {
        rows,
        shown: body?.closest("section")?.hidden === false,
        restartsShown: doc.getElementById("workers-restarts")?.hidden === false,
        caption: doc.getElementById("workers-caption")?.textContent ?? "",
        connections: Number(doc.getElementById("connections_active")?.dataset.value),
      };
    });
    assert.ok(workers.shown, "the workers' panel is shown");
    assert.match(workers.caption, /^One row per data-plane worker/);
    assert.equal(workers.restartsShown, false, "no worker restarted: no Restarts column");
    assert.deepEqual(workers.rows.map((cells) => cells[0]), ["0", "1"], JSON.stringify(workers));
    const figure = (text: string) => Number(text.replace(/ \(\d+ %\)$/, "").replaceAll(",", ""));
    for (const cells of workers.rows) {
      assert.equal(cells.length, 3, JSON.stringify(cells));
      assert.match(cells[1], /^[\d,]+( \(\d+ %\))?$/, `connections ${JSON.stringify(cells)}`);
      assert.match(cells[2], /^[\d.,]+( \(\d+ %\))?$/, `replies/s ${JSON.stringify(cells)}`);
    }
    const sum = (column: number) =>
      workers.rows.reduce((total, cells) => total + figure(cells[column]), 0);
    assert.equal(sum(1), workers.connections, `worker connections ${JSON.stringify(workers)}`);
    assert.ok(
      sum(2) >= rate * 0.5 && sum(2) <= rate * 1.5,
      `worker replies/s ${JSON.stringify(workers)}`,
    );
    const rates = await page.getAttribute("#chart-rates", "aria-label");
    assert.match(rates ?? "", /^requests\/s: now [\d.,]+, 5-minute max [\d.,]+; responses\/s/);
    assert.match(await page.textContent("#chart-rates-0") ?? "", /requests\/s: now [\d.,]+/);

    // A few more seconds of history for the picture.
    const now = await value("uptime_seconds");
    await above("uptime_seconds", now + 4, 10_000);
    await page.screenshot({ path: screenshot, fullPage: true });
    assert.deepEqual(problems, []);
    assert.deepEqual(elsewhere, [], "the page loads nothing from elsewhere");
    await report({
      phase: "live",
      shown,
      before,
      after,
      upstreams: rows.length,
      workers: workers.rows.length,
    });

    // Reconnect attempts to a stopped proxy fail, and Chromium logs each one: expected now.
    const { value: line } = await stdin.read();
    assert.equal(line?.trim(), "gone");
    watching = false;
    await stateIs("unreachable", 15_000);
    const status = await page.textContent("#status");
    assert.match(status ?? "", /^Proxy unreachable/);
    assert.deepEqual(problems, []);
    await report({ phase: "gone", status });
    return 0;
  } finally {
    await browser.close();
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    await Deno.stderr.write(
      new TextEncoder().encode(`${error instanceof Error ? error.stack : error}\n`),
    );
    Deno.exit(1);
  }
}
