import assert from "node:assert/strict";
import {
  FORBIDDEN_PERMISSION_FLAGS,
  PermissionPolicyError,
  shellQuote,
  splitCommandLine,
  startPermissionFlags,
  startV8Flags,
} from "../scripts/permissions.ts";
import { denortCachePath, planCompile, RELEASE_TARGETS, sha256Sums } from "../scripts/release.ts";
import { VERSION } from "../src/version.ts";
import { REPO_ROOT } from "./_util.ts";

const decoder = new TextDecoder();

/**
 * The flags binaries bake in: those of `deno task start`, read from deno.json's task string,
 * less its read grant of ./examples (a relative path for trying the example config from a clone).
 */
async function bakedFlags(): Promise<string[]> {
  return (await startTaskFlags()).filter((f) => f !== "--allow-read=examples,src");
}

/** What follows the baked flags in every compile command: the data-plane Worker, embedded. */
const WORKER_INCLUDE = ["--include", "src/cmd/plane_worker.ts"];

/** The permission flags of `deno task start`, read from deno.json's task string. */
async function startTaskFlags(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}/deno.json`));
  const words = (config.tasks.start as string).split(/\s+/);
  assert.deepEqual(words.slice(0, 2), ["deno", "run"]);
  return words.slice(2, words.indexOf("src/main.ts"));
}

/** Splits `line` into words with a real POSIX shell, proving it can be pasted as printed. */
async function shellWords(line: string): Promise<string[]> {
  const { code, stdout } = await new Deno.Command("sh", {
    args: ["-c", `printf '%s\\n' ${line}`],
    stdin: "null",
  }).output();
  assert.equal(code, 0, line);
  return decoder.decode(stdout).trimEnd().split("\n");
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: REPO_ROOT,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
  }).output();
  return { code, stdout: decoder.decode(stdout), stderr: decoder.decode(stderr) };
}

/** Runs scripts/release.ts with broad file access (tests write to a temporary directory). */
function runRelease(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const flags = ["--allow-run", "--allow-read", "--allow-write", "--allow-env=DENORT_BIN"];
  return run(["run", ...flags, "scripts/release.ts", ...args], env);
}

/** stderr lines that are not progress (`Task …`, `release: building …`, `release: wrote …`). */
function problemLines(stderr: string): string[] {
  return stderr.trimEnd().split("\n").filter((line) =>
    line !== "" && !/^Task |^release: (building|wrote) /.test(line)
  );
}

async function tempDir(): Promise<AsyncDisposable & { path: string }> {
  const path = await Deno.makeTempDir({ prefix: "foo-proxy-release-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

Deno.test("deno task start grants only net and FOO_PROXY_* env, and reads examples and src: nothing forbidden", async () => {
  const flags = (await startTaskFlags()).filter((f) => !f.startsWith("--v8-flags="));
  // Reading ./examples lets `deno task start --config examples/foo-proxy.jsonc` work from a clone,
  // ./src is where the data-plane workers load from; binaries get neither (they embed src).
  assert.deepEqual(flags, [
    "--allow-net",
    "--allow-env=FOO_PROXY_*",
    "--allow-read=examples,src",
    "--unstable-net",
  ]);
  assert.deepEqual(startPermissionFlags(), ["--allow-net", "--allow-env=FOO_PROXY_*"]);
  for (const flag of flags) assert.ok(!FORBIDDEN_PERMISSION_FLAGS.includes(flag.split("=")[0]));
});

Deno.test("deno task release --dry-run prints one compile command per target with the start task's permissions", async () => {
  const start = await bakedFlags();
  const { code, stdout, stderr } = await run(["task", "release", "--dry-run"]);
  assert.equal(code, 0, stderr);
  const lines = stdout.trimEnd().split("\n");
  assert.equal(lines.length, RELEASE_TARGETS.length, stdout);
  for (const [i, target] of RELEASE_TARGETS.entries()) {
    const words = await shellWords(lines[i]);
    const exe = target.includes("windows") ? ".exe" : "";
    assert.equal(words[0], Deno.execPath());
    assert.deepEqual(words.slice(1), [
      "compile",
      ...start,
      ...WORKER_INCLUDE,
      "--target",
      target,
      "--output",
      `dist/foo-proxy-${target}${exe}`,
      "src/main.ts",
    ]);
  }
});

Deno.test("deno task compile --dry-run prints one command for this machine; flags narrow net and add a recovery dir", async () => {
  const start = await bakedFlags();
  const plain = await run(["task", "compile", "--dry-run"]);
  assert.equal(plain.code, 0, plain.stderr);
  const exe = Deno.build.os === "windows" ? ".exe" : "";
  assert.deepEqual((await shellWords(plain.stdout.trimEnd())).slice(1), [
    "compile",
    ...start,
    ...WORKER_INCLUDE,
    "--output",
    `dist/foo-proxy${exe}`,
    "src/main.ts",
  ]);
  const custom = await run([
    "task",
    "compile",
    "--dry-run",
    "--allow-net=127.0.0.1:8002,localhost:8001",
    "--recovery-dir",
    "/var/lib/foo proxy",
  ]);
  assert.equal(custom.code, 0, custom.stderr);
  const words = await shellWords(custom.stdout.trimEnd());
  assert.deepEqual(words.filter((w) => w.startsWith("--allow-")), [
    "--allow-net=127.0.0.1:8002,localhost:8001",
    "--allow-env=FOO_PROXY_*",
    "--allow-read=/var/lib/foo proxy",
    "--allow-write=/var/lib/foo proxy",
  ]);
});

Deno.test("deno task compile --allow-read=PATHS bakes in read (only) of the TLS files, in one list with --recovery-dir's; a relative path is refused", async () => {
  const tls = "/etc/foo-proxy/tls";
  const ca = "/etc/foo-proxy/upstream ca.pem";
  const readOnly = await run(["task", "compile", "--dry-run", `--allow-read=${tls},${ca}`]);
  assert.equal(readOnly.code, 0, readOnly.stderr);
  const words = await shellWords(readOnly.stdout.trimEnd());
  assert.deepEqual(words.filter((w) => w.startsWith("--allow-")), [
    "--allow-net",
    "--allow-env=FOO_PROXY_*",
    `--allow-read=${tls},${ca}`,
  ]);
  const both = await run([
    "task",
    "compile",
    "--dry-run",
    "--recovery-dir",
    "/var/lib/foo-proxy",
    `--allow-read=${tls}`,
    "--allow-read=/etc/foo-proxy/proxy.jsonc",
  ]);
  assert.equal(both.code, 0, both.stderr);
  assert.deepEqual(
    (await shellWords(both.stdout.trimEnd())).filter((w) => /^--allow-(read|write)/.test(w)),
    [
      `--allow-read=/var/lib/foo-proxy,${tls},/etc/foo-proxy/proxy.jsonc`,
      "--allow-write=/var/lib/foo-proxy",
    ],
  );
  const relative = await runRelease(["compile", "--dry-run", "--allow-read=certs/server.pem"]);
  assert.equal(relative.code, 2);
  assert.deepEqual(problemLines(relative.stderr), [
    'release: --allow-read: "certs/server.pem" is not an absolute path (a binary runs from any directory, where a relative path names another file)',
  ]);
  assert.equal(relative.stdout, "");
});

Deno.test("release script rejects an unknown target and a forbidden permission with one line", async () => {
  const bad = await runRelease(["release", "--dry-run", "--target", "riscv64-unknown-linux-gnu"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^release: Unknown target "riscv64-unknown-linux-gnu": expected one of/);
  assert.equal(bad.stderr.trimEnd().split("\n").length, 1);
  assert.equal(bad.stdout, "");
  for (
    const flag of ["-A", "--allow-all", "--allow-run=sh", "--allow-ffi", "--allow-sys=hostname"]
  ) {
    assert.throws(
      () => startPermissionFlags({ tasks: { start: `deno run --allow-net ${flag} src/main.ts` } }),
      PermissionPolicyError,
      flag,
    );
  }
  assert.throws(() => startPermissionFlags({ tasks: {} }), PermissionPolicyError);
  assert.throws(() => planCompile("release", { targets: ["x86_64-unknown-freebsd"] }), RangeError);
});

Deno.test("a missing DENORT_BIN file, and DENORT_BIN with several targets, each fail with one line", async () => {
  await using out = await tempDir();
  const missing = await runRelease(["compile", "--out-dir", out.path], {
    DENORT_BIN: `${out.path}/no-such-denort`,
  });
  assert.equal(missing.code, 1);
  assert.deepEqual(problemLines(missing.stderr), [
    `release: deno compile: DENORT_BIN="${out.path}/no-such-denort" does not exist; point it at ` +
    `the denort binary of Deno ${Deno.version.deno} for ${Deno.build.target}`,
  ]);
  const several = await runRelease(["release", "--out-dir", out.path], { DENORT_BIN: "/x/denort" });
  assert.equal(several.code, 2);
  assert.equal(problemLines(several.stderr).length, 1);
  assert.match(several.stderr, /DENORT_BIN is one runtime for one target/);
  assert.deepEqual([...Deno.readDirSync(out.path)], []);
});

const denoDir: string = JSON.parse(decoder.decode(
  (await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stderr: "null" }).output())
    .stdout,
)).denoDir;
const runtimeCached = await Deno.lstat(denortCachePath(denoDir, Deno.build.target)).then(
  () => true,
  () => false,
);

Deno.test({
  name:
    "when the runtime cannot be downloaded, compile fails with one line saying how to supply it",
  // With the runtime cached (or DENORT_BIN set) nothing is downloaded, so nothing can fail.
  ignore: runtimeCached || Deno.env.get("DENORT_BIN") !== undefined,
  async fn() {
    await using out = await tempDir();
    let closedPort: number;
    {
      using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      closedPort = listener.addr.port;
    }
    // A proxy nobody listens on makes the download fail at once, online or not.
    const proxy = `http://127.0.0.1:${closedPort}`;
    const { code, stderr } = await runRelease(["compile", "--out-dir", out.path], {
      HTTPS_PROXY: proxy,
      https_proxy: proxy,
      RUST_BACKTRACE: "1",
    });
    assert.equal(code, 1);
    const problems = problemLines(stderr);
    assert.equal(problems.length, 1, stderr);
    assert.match(
      problems[0],
      new RegExp(
        `^release: deno compile cannot download its runtime denort-${Deno.build.target}\\.zip .*` +
          `DENORT_BIN=/path/to/denort deno task compile`,
      ),
    );
    assert.ok(problems[0].includes(`${denoDir}/dl/release/v${Deno.version.deno}/`), problems[0]);
    assert.doesNotMatch(stderr, /backtrace|Caused by/i);
    assert.deepEqual([...Deno.readDirSync(out.path)], []);
  },
});

Deno.test("release with a local runtime writes the binary, SHA256SUMS, the baked permissions and the version", async () => {
  // The deno CLI stands in for denort: the output does not run as foo-proxy, but deno compile
  // type-checks, resolves and embeds everything exactly as with the real runtime. A non-native
  // target skips the script's `--version` smoke run.
  await using out = await tempDir();
  const target = "aarch64-unknown-linux-gnu";
  const { code, stderr } = await runRelease(
    ["release", "--target", target, "--out-dir", out.path],
    {
      DENORT_BIN: Deno.execPath(),
    },
  );
  assert.equal(code, 0, stderr);
  const name = `foo-proxy-${target}`;
  const binary = await Deno.readFile(`${out.path}/${name}`);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", binary));
  const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(await Deno.readTextFile(`${out.path}/SHA256SUMS`), `${hex}  ${name}\n`);

  // What deno compile appends to the runtime: its metadata JSON holds the baked-in permissions.
  const tail = decoder.decode(binary.subarray((await Deno.stat(Deno.execPath())).size));
  const permissions = JSON.parse(/"permissions":(\{[^}]*\})/.exec(tail)![1]);
  assert.deepEqual(permissions.allow_net, []); // [] = any address
  assert.deepEqual(permissions.allow_env, ["FOO_PROXY_*"]);
  for (const kind of ["read", "write", "run", "ffi", "sys"]) {
    assert.equal(permissions[`allow_${kind}`], null, kind);
  }
  assert.ok(tail.includes(`"version": "${VERSION}"`), "deno.json's version is embedded");
  // ... and the start task's V8 flags (e.g. the young-generation cap), in deno compile's metadata.
  const v8Flags = JSON.parse(/"v8_flags":(\[[^\]]*\])/.exec(tail)![1]);
  const wanted = startV8Flags().map((f) => f.slice("--v8-flags=".length));
  assert.ok(wanted.length > 0);
  for (const flag of wanted) assert.ok(v8Flags.includes(flag), `${flag} in ${v8Flags}`);
});

Deno.test("splitCommandLine() undoes shellQuote(); sha256Sums() prints sha256sum lines", async () => {
  const words = ["deno", "--allow-env=FOO_PROXY_*", "it's here", "", 'say "hi"', "a\\b"];
  assert.deepEqual(splitCommandLine(words.map(shellQuote).join(" ")), words);
  assert.deepEqual(splitCommandLine(`a  "b c"\t'd'e`), ["a", "b c", "de"]);
  assert.throws(() => splitCommandLine("'open"), SyntaxError);
  const sums = await sha256Sums(
    new Map([["b", new TextEncoder().encode("abc")], ["a", new Uint8Array(0)]]),
  );
  assert.equal(
    sums,
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a\n" +
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  b\n",
  );
});
