/**
 * `--config-watch` (issue 21): the proxy reloads its `--config` file when it changes, exactly like
 * SIGHUP: a rewrite, an editor's rename over it, a delete and re-create, and a Kubernetes
 * ConfigMap's symbolic-link swap are seen; a burst of writes is one reload; a bad file changes
 * nothing and is counted; a client in lock-step across the reloads gets every reply; a directory
 * that cannot be watched is logged, counted, and SIGHUP still works.
 */
import assert from "node:assert/strict";
import { freePort, lockStepClient, spawnConfigProxy, startUpstream } from "./_util.ts";

/** The config file's text: `forward` and fast checks, so an added upstream serves soon. */
function configText(forward: string[], extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ forward, "health-interval": "100ms", "health-rise": 1, ...extra });
}

async function getJson(port: number, path: string) {
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  return await response.json();
}

/**
 * Spawns the proxy with `--config=path`, reading only `read`; resolves once the watch is set up
 * (`watching`) or refused, with the child and its listen port.
 */
async function spawnWithConfig(path: string, read: string, http: number, watching = true) {
  const spawned = await spawnConfigProxy(path, { read, http });
  // The watch starts once everything serves: changes from now on are seen.
  await spawned.child.stderr.waitFor(watching ? /Reloading .* when it changes/ : /Cannot watch/);
  return spawned;
}

const reloaded = (generation: number) =>
  new RegExp(`Reloaded .* \\(the file changed, generation ${generation}\\): (.*)`);

Deno.test("--config-watch: a rewrite, a burst, an editor's rename, a bad file, a delete and re-create; no reply lost", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-watch-" });
  const path = `${dir}/foo-proxy.jsonc`;
  const fa = `a=127.0.0.1:${a.addr.port}`;
  const fb = `b=127.0.0.1:${b.addr.port}`;
  await Deno.writeTextFile(path, configText([fa]));
  const http = freePort();
  try {
    const { child, port } = await spawnWithConfig(path, dir, http);
    await using _child = child;
    const client = await lockStepClient(port);
    // A burst of writes (the last adds b): one reload, with the last text. Synchronous, back to
    // back: an await between two could let a loaded machine pass the debounce (250 ms) midway.
    for (let k = 1; k <= 5; k++) {
      Deno.writeTextFileSync(path, configText(k < 5 ? [fa] : [fa, fb], { "max-inflight": k }));
    }
    const first = await child.stderr.waitFor(reloaded(2), 10_000);
    assert.match(first[1], /b added/);
    // An editor's save: a temporary file renamed over the file. The next reload is generation 3:
    // the burst above was one reload.
    await Deno.writeTextFile(`${dir}/.foo-proxy.jsonc.tmp`, configText([fa, `${fb}*2`]));
    await Deno.rename(`${dir}/.foo-proxy.jsonc.tmp`, path);
    assert.match((await child.stderr.waitFor(reloaded(3), 10_000))[1], /b weight 2/);
    // A bad file: logged, counted, the running config kept.
    await Deno.writeTextFile(path, '{ "forward": [ "c=127.0.0.1:1" ], oops }');
    await child.stderr.waitFor(
      /Reload \(the file changed\) of .* failed; the running config is kept/,
    );
    let stats = await getJson(http, "/stats");
    assert.equal(stats.config_reload_failures, 1);
    assert.equal(stats.config_generation, 3);
    assert.deepEqual(stats.upstreams.map((u: { name: string }) => u.name), ["a", "b"]);
    // Deleted and created again (back to back, as above): b goes.
    Deno.removeSync(path);
    Deno.writeTextFileSync(path, configText([fa]));
    assert.match((await child.stderr.waitFor(reloaded(4), 10_000))[1], /b removed/);
    assert.ok(await client.stop() > 0);
    stats = await getJson(http, "/stats");
    assert.equal(stats.config_generation, 4);
    assert.equal(stats.config_watch_failures, 0);
    // Nothing was refused or cut on the way.
    assert.equal(stats.connections_total, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * What the kubelet does to a mounted ConfigMap: a new timestamped directory, `..data` swapped
 * (synchronous, back to back: within one debounce however loaded the machine).
 */
function configMapSwap(dir: string, stamp: string, text: string, old?: string) {
  Deno.mkdirSync(`${dir}/${stamp}`);
  Deno.writeTextFileSync(`${dir}/${stamp}/config.json`, text);
  Deno.symlinkSync(stamp, `${dir}/..data_tmp`);
  Deno.renameSync(`${dir}/..data_tmp`, `${dir}/..data`);
  if (old !== undefined) Deno.removeSync(`${dir}/${old}`, { recursive: true });
}

Deno.test("--config-watch: a Kubernetes ConfigMap update (the ..data symlink swapped) applies, twice in a row", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-configmap-" });
  const fa = `a=127.0.0.1:${a.addr.port}`;
  const fb = `b=127.0.0.1:${b.addr.port}`;
  configMapSwap(dir, "..2026_12_03_10_00_00.1", configText([fa]));
  await Deno.symlink("..data/config.json", `${dir}/config.json`);
  const http = freePort();
  try {
    const { child, port } = await spawnWithConfig(`${dir}/config.json`, dir, http);
    await using _child = child;
    const client = await lockStepClient(port);
    configMapSwap(
      dir,
      "..2026_12_03_10_01_00.2",
      configText([fa, fb]),
      "..2026_12_03_10_00_00.1",
    );
    assert.match((await child.stderr.waitFor(reloaded(2), 10_000))[1], /b added/);
    configMapSwap(
      dir,
      "..2026_12_03_10_02_00.3",
      configText([fa]),
      "..2026_12_03_10_01_00.2",
    );
    assert.match((await child.stderr.waitFor(reloaded(3), 10_000))[1], /b removed/);
    assert.ok(await client.stop() > 0);
    const stats = await getJson(http, "/stats");
    assert.equal(stats.config_generation, 3);
    assert.equal(stats.config_reload_failures, 0);
    // The watch does not hold the exit up.
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--config-watch: without read access to the directory the proxy says so once, counts it, and SIGHUP still reloads", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-nowatch-" });
  const path = `${dir}/foo-proxy.jsonc`;
  await Deno.writeTextFile(path, configText([`a=127.0.0.1:${a.addr.port}`]));
  const http = freePort();
  try {
    const { child } = await spawnWithConfig(path, path, http, false);
    await using _child = child;
    assert.match(
      child.stderr.text,
      /Cannot watch .* for changes \(no read access to .*--config-watch off\)/,
    );
    assert.equal((await getJson(http, "/stats")).config_watch_failures, 1);
    await Deno.writeTextFile(
      path,
      configText([`a=127.0.0.1:${a.addr.port}`, `b=127.0.0.1:${b.addr.port}`]),
    );
    child.kill("SIGHUP");
    await child.stderr.waitFor(/Reloaded .* \(SIGHUP, generation 2\): b added/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
