/**
 * readSmallFile(): the one way a file a user names is read (`--config`, the recovery file). A FIFO,
 * a device, a huge or growing file, or a read that stalls is one clear error, never a frozen or
 * flooded process (issue 17, item 4).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { readSmallFile, SmallFileError } from "../src/proxy/read_small_file.ts";
import { makeFifo, tempDir } from "./_files.ts";
import { fakeTimers, withTimeout } from "./_util.ts";

async function refusal(promise: Promise<unknown>): Promise<SmallFileError> {
  const error = await withTimeout(promise.then(() => undefined, (e) => e), 5000, "a refusal");
  assert.ok(error instanceof SmallFileError, `expected a SmallFileError, got ${error}`);
  return error;
}

Deno.test("readSmallFile() reads a regular file, and a symlink to one", async () => {
  await using dir = await tempDir("foo-proxy-small-file-");
  const path = join(dir.path, "config.jsonc");
  await Deno.writeTextFile(path, '\uFEFF{"listen": ":1"}');
  assert.equal(await readSmallFile(path), '{"listen": ":1"}', "the BOM is dropped");
  await Deno.symlink(path, join(dir.path, "link"));
  assert.equal(await readSmallFile(join(dir.path, "link")), '{"listen": ":1"}');
});

Deno.test("readSmallFile() refuses a FIFO with no writer at once instead of blocking for ever", async () => {
  await using dir = await tempDir("foo-proxy-small-file-");
  const path = join(dir.path, "fifo");
  await makeFifo(path);
  const error = await refusal(readSmallFile(path, { what: "config file" }));
  assert.equal(error.problem, "not_regular");
  assert.equal(
    error.message,
    `Cannot read config file "${path}": it is a FIFO, not a regular file`,
  );
});

Deno.test("readSmallFile() refuses a symlink to /dev/zero instead of reading it without end", async () => {
  await using dir = await tempDir("foo-proxy-small-file-");
  const path = join(dir.path, "zero");
  await Deno.symlink("/dev/zero", path);
  const error = await refusal(readSmallFile(path));
  assert.equal(error.problem, "not_regular");
  assert.match(error.message, /it is a character device, not a regular file$/);
  assert.equal((await refusal(readSmallFile(dir.path))).problem, "not_regular", "a directory");
});

Deno.test("readSmallFile() refuses a file over the cap before reading it", async () => {
  await using dir = await tempDir("foo-proxy-small-file-");
  const path = join(dir.path, "big");
  await Deno.writeFile(path, new Uint8Array(3 * 1024 * 1024));
  const error = await refusal(readSmallFile(path));
  assert.equal(error.problem, "too_large");
  assert.match(error.message, /it is 3 MiB, over the 1 MiB limit$/);
  assert.equal((await refusal(readSmallFile(path, { maxBytes: 100 }))).problem, "too_large");
});

Deno.test("readSmallFile() says a missing file is missing, and bytes that are not UTF-8 are not text", async () => {
  await using dir = await tempDir("foo-proxy-small-file-");
  const missing = await refusal(readSmallFile(join(dir.path, "nope")));
  assert.equal(missing.problem, "missing");
  const path = join(dir.path, "latin1");
  await Deno.writeFile(path, new Uint8Array([0x7b, 0xe9, 0x7d]));
  const error = await refusal(readSmallFile(path));
  assert.equal(error.problem, "not_utf8");
  assert.match(error.message, /it is not UTF-8 text$/);
});

Deno.test("readSmallFile() gives up at its deadline when the open never answers (a stalled mount)", async () => {
  await using dir = await tempDir("foo-proxy-small-file-");
  const path = join(dir.path, "stalled");
  await Deno.writeTextFile(path, "{}");
  const timers = fakeTimers();
  const never = Promise.withResolvers<Deno.FsFile>();
  const reading = readSmallFile(path, {
    what: "config file",
    timeoutMs: 5000,
    timers,
    open: () => never.promise,
  });
  const refused = refusal(reading);
  // The deadline is armed at once; firing it stands for 5 s passing.
  assert.deepEqual(timers.delays, [5000]);
  timers.fire();
  const error = await refused;
  assert.equal(error.problem, "timeout");
  assert.match(error.message, /^Cannot read config file ".*": reading it took over 5 s/);
});
