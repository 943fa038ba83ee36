/** File helpers for the tests of files a user names: temp directories and FIFOs. */
import assert from "node:assert/strict";

/** A temp directory removed on dispose: `await using dir = await tempDir("x-");`. */
export async function tempDir(prefix: string): Promise<AsyncDisposable & { path: string }> {
  const path = await Deno.makeTempDir({ prefix });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Makes a FIFO at `path` (nobody writes to it or reads it). */
export async function makeFifo(path: string): Promise<void> {
  const { code, stderr } = await new Deno.Command("mkfifo", { args: [path], stderr: "piped" })
    .output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
}
