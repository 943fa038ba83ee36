/**
 * Files the proxy writes at a path a user names (`--pid-file`, `--access-log-file`, the recovery
 * lock) are never opened through a symbolic link planted there (issue 17, item 9).
 */
import assert from "node:assert/strict";
import { openOwnFile, OwnFileError } from "../src/cmd/open_own_file.ts";
import { PidFile, PidFileError } from "../src/cmd/pid_file.ts";
import { makeFifo, tempDir } from "./_files.ts";
import { spawnMain, startUpstream } from "./_util.ts";

Deno.test("openOwnFile() creates a missing file, and opens an existing one without truncating it", async () => {
  await using dir = await tempDir("foo-proxy-own-");
  const path = `${dir.path}/f`;
  (await openOwnFile(path)).close();
  assert.equal((await Deno.lstat(path)).isFile, true);
  await Deno.writeTextFile(path, "kept\n");
  using file = await openOwnFile(path, { append: true });
  await file.write(new TextEncoder().encode("added\n"));
  assert.equal(await Deno.readTextFile(path), "kept\nadded\n");
});

Deno.test("openOwnFile() refuses a symlink, dangling or not, and leaves its target alone", async () => {
  await using dir = await tempDir("foo-proxy-own-");
  const victim = `${dir.path}/victim`;
  await Deno.writeTextFile(victim, "precious\n");
  const link = `${dir.path}/link`;
  await Deno.symlink(victim, link);
  const dangling = `${dir.path}/dangling`;
  await Deno.symlink(`${dir.path}/would-be-created`, dangling);
  for (const path of [link, dangling]) {
    for (const append of [false, true]) {
      const error = await openOwnFile(path, { what: "pid file", append }).then(
        () => assert.fail("opened"),
        (e) => e,
      );
      assert.ok(error instanceof OwnFileError);
      assert.equal(
        error.message,
        `Cannot open pid file "${path}": it is a symbolic link, which is never followed (give the file's real path)`,
      );
    }
  }
  assert.equal(await Deno.readTextFile(victim), "precious\n");
  await assert.rejects(Deno.lstat(`${dir.path}/would-be-created`), Deno.errors.NotFound);
});

Deno.test("a hard link planted at a pid or lock file's path is refused; the file it names is neither truncated nor appended to", async () => {
  // Where fs.protected_hardlinks is 0, whoever can write /tmp can link any file there under the
  // pid file's name: lstat sees a regular file and the inode check passes, so PidFile.acquire
  // truncated the other file (and an access log appended to it).
  await using dir = await tempDir("foo-proxy-own-");
  const victim = `${dir.path}/victim`;
  await Deno.writeTextFile(victim, "precious\n");
  const link = `${dir.path}/foo-proxy.pid`;
  await Deno.link(victim, link);
  await assert.rejects(
    PidFile.acquire(link),
    (error: unknown) => {
      assert.ok(error instanceof PidFileError);
      assert.equal(
        error.message,
        `Cannot open pid file "${link}": it has 2 hard links, so it is also another file's name (remove it, or give another path)`,
      );
      return true;
    },
  );
  await assert.rejects(openOwnFile(link, { append: true }), OwnFileError);
  assert.equal(await Deno.readTextFile(victim), "precious\n");
});

Deno.test("openOwnFile() with regularOnly refuses a FIFO without blocking on it", async () => {
  await using dir = await tempDir("foo-proxy-own-");
  const fifo = `${dir.path}/fifo`;
  await makeFifo(fifo);
  await assert.rejects(
    openOwnFile(fifo, { regularOnly: true }),
    /Cannot open file ".*fifo": it is a FIFO, not a regular file/,
  );
});

Deno.test("a --pid-file that is a symlink planted at its path is refused (exit 2, one line); its target is untouched", async () => {
  await using upstream = await startUpstream();
  await using dir = await tempDir("foo-proxy-pid-");
  const victim = `${dir.path}/victim`;
  await Deno.writeTextFile(victim, "precious\n");
  const path = `${dir.path}/foo-proxy.pid`;
  await Deno.symlink(victim, path);
  await using child = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--forward=127.0.0.1:${upstream.addr.port}`,
    "--http=off",
    "--health=off",
    `--pid-file=${path}`,
  ], {
    permissions: [
      "--allow-net",
      "--allow-env=FOO_PROXY_*",
      `--allow-read=${dir.path}`,
      `--allow-write=${dir.path}`,
    ],
  });
  assert.equal((await child.status()).code, 2, child.stderr.text);
  assert.deepEqual(child.stderr.lines.filter((line) => line.startsWith("foo-proxy: ")), [
    `foo-proxy: Cannot open pid file "${path}": it is a symbolic link, which is never followed (give the file's real path)`,
  ]);
  assert.doesNotMatch(child.stderr.text, /Listening on/);
  assert.equal(await Deno.readTextFile(victim), "precious\n");
});
