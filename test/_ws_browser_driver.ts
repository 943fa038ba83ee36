/**
 * The browser half of the WebSocket browser test (test/websocket_browser_test.ts), run as its own
 * process because playwright-core needs `--allow-all` when it loads. It drives Debian's Chromium
 * headless: opens PAGE (a tiny page the test serves), and in it opens a WebSocket to WS, sends
 * REQ lines split across messages (a line in three, many in one), and collects the replies; then
 * does the same from OTHER (a page of another origin, which the proxy must refuse). (Not
 * `about:blank`: Chromium does not let its opaque origin reach a loopback address at all.)
 * Prints one JSON line with what each page saw; a failure ends the process with status 1 and the
 * reason on stderr.
 *
 * Usage: `deno run -A test/_ws_browser_driver.ts PAGE OTHER WS [CHROMIUM]`
 *
 * @module
 */
import { CHROMIUM } from "./_chromium.ts";
import { launchChromium } from "./_chromium_launch.ts";

/** What a page saw: the reply lines, each message's type, and how the socket ended. */
interface Seen {
  opened: boolean;
  lines: string[];
  types: string[];
  closeCode: number;
}

/** Runs in the page: the WebSocket exchange. */
function exchange(url: string): Promise<Seen> {
  return new Promise((resolve) => {
    const seen: Seen = { opened: false, lines: [], types: [], closeCode: 0 };
    let text = "";
    const socket = new WebSocket(url);
    const timer = setTimeout(() => socket.close(), 10_000);
    socket.onopen = () => {
      seen.opened = true;
      socket.send("RE");
      socket.send("Q 1 from");
      socket.send(" a page\n");
      let many = "";
      for (let seq = 2; seq <= 30; seq++) many += `REQ ${seq} é\n`;
      socket.send(many);
    };
    socket.onmessage = (event) => {
      seen.types.push(typeof event.data);
      text += event.data;
      const lines = text.split("\n");
      if (lines.length > 30) {
        seen.lines = lines.slice(0, 30);
        socket.close(1000);
      }
    };
    socket.onclose = (event) => {
      clearTimeout(timer);
      seen.closeCode = event.code;
      resolve(seen);
    };
  });
}

async function main(args: string[]): Promise<number> {
  const [page, other, ws, executablePath = CHROMIUM] = args;
  const browser = await launchChromium(executablePath);
  const context = browser.context;
  try {
    const tab = context.pages()[0] ?? await context.newPage();
    await tab.goto(page);
    const served = await tab.evaluate(exchange, ws);
    await tab.goto(other);
    const elsewhere = await tab.evaluate(exchange, ws);
    const line = JSON.stringify({ served, elsewhere }) + "\n";
    await Deno.stdout.write(new TextEncoder().encode(line));
    return 0;
  } finally {
    await browser.close();
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    const text = error instanceof Error ? error.stack ?? error.message : String(error);
    await Deno.stderr.write(new TextEncoder().encode(text + "\n"));
    Deno.exit(1);
  }
}
