/**
 * The deploy recipes agree with the proxy's own definitions: `deno task install` gives a working
 * `foo-proxy` command; the systemd unit and the Dockerfile use only real flags, the default ports,
 * a stop timeout longer than the drain, and the directories their compile command grants.
 */
import assert from "node:assert/strict";
import { parseProxyConfig, type ProxyConfig } from "../src/cmd/proxy_config.ts";
import { WAIT_FLAGS } from "../src/cmd/wait.ts";
import { parseDuration } from "../src/cli/duration.ts";
import { VERSION } from "../src/version.ts";
import { splitCommandLine } from "../scripts/permissions.ts";
import { connectTo, OutputLines, readLine, REPO_ROOT, startUpstream, writeAll } from "./_util.ts";

const UNIT_PATH = `${REPO_ROOT}/deploy/foo-proxy.service`;
const DOCKERFILE_PATH = `${REPO_ROOT}/deploy/Dockerfile`;
const EXAMPLE_CONFIG = `${REPO_ROOT}/examples/foo-proxy.jsonc`;

/** Lines with their `\`-continuations joined, comments and blank lines dropped. */
function logicalLines(text: string): string[] {
  const out: string[] = [];
  let pending = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (pending === "" && (line === "" || line.startsWith("#"))) continue;
    if (line.endsWith("\\")) {
      pending += line.slice(0, -1) + " ";
      continue;
    }
    out.push(pending + line);
    pending = "";
  }
  if (pending !== "") out.push(pending);
  return out;
}

/** A systemd unit's `Key=value` entries by section, in order (a key may repeat). */
function parseUnit(text: string): Map<string, [string, string][]> {
  const sections = new Map<string, [string, string][]>();
  let section = "";
  for (const line of logicalLines(text)) {
    const header = /^\[(\w+)\]$/.exec(line);
    if (header) {
      section = header[1];
      sections.set(section, []);
      continue;
    }
    const eq = line.indexOf("=");
    assert.ok(eq > 0, `not Key=value: ${line}`);
    sections.get(section)!.push([line.slice(0, eq), line.slice(eq + 1)]);
  }
  return sections;
}

/** The one value of `key` in `entries`. */
function one(entries: [string, string][], key: string): string {
  const values = entries.filter(([k]) => k === key).map(([, v]) => v);
  assert.deepEqual(values.length, 1, `${key}= appears ${values.length} times`);
  return values[0];
}

/** The defaults: what the proxy runs with given nothing. */
const DEFAULTS: ProxyConfig = parseProxyConfig([], () => undefined);

/** Reads the config file a recipe names: the example the recipe installs there. */
function readConfigAt(expected: string): (path: string) => string {
  return (path) => {
    assert.deepEqual(path, expected);
    return Deno.readTextFileSync(EXAMPLE_CONFIG);
  };
}

/** `/a/b/c` → `/a/b`. */
function dirname(path: string): string {
  return path.slice(0, path.lastIndexOf("/"));
}

/** The value after `flag` (`--flag value` or `--flag=value`) in `words`. */
function flagValue(words: readonly string[], flag: string): string | undefined {
  for (let i = 0; i < words.length; i++) {
    if (words[i] === flag) return words[i + 1];
    if (words[i].startsWith(`${flag}=`)) return words[i].slice(flag.length + 1);
  }
  return undefined;
}

/** Checks the addresses of `config` are the defaults' ports. */
function assertDefaultPorts(config: ProxyConfig): void {
  assert.deepEqual(config.listen.port, DEFAULTS.listen.port);
  assert.deepEqual(config.http?.port, DEFAULTS.http?.port);
  assert.deepEqual(config.health?.port, DEFAULTS.health?.port);
}

Deno.test("deno task install puts a working foo-proxy command into --root, runnable from any directory", async () => {
  const root = await Deno.makeTempDir({ prefix: "foo-proxy-install-" });
  const elsewhere = await Deno.makeTempDir({ prefix: "foo-proxy-cwd-" });
  try {
    const install = await new Deno.Command(Deno.execPath(), {
      args: ["task", "install", "--root", root],
      cwd: REPO_ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(install.stdout);
    assert.deepEqual(install.code, 0, new TextDecoder().decode(install.stderr));
    // It printed the command it ran: the start task's permissions, src/ read by absolute path.
    assert.match(stdout, /--allow-net '--allow-env=FOO_PROXY_\*' --allow-read=\/\S+\/src /);
    assert.match(stdout, /--unstable-net --v8-flags=/);
    const command = `${root}/bin/foo-proxy`;
    const version = await new Deno.Command(command, {
      args: ["--version"],
      cwd: elsewhere,
      stdin: "null",
    }).output();
    assert.deepEqual(version.code, 0);
    assert.deepEqual(new TextDecoder().decode(version.stdout).trim(), `foo-proxy ${VERSION}`);
    const help = await new Deno.Command(command, {
      args: ["proxy", "--help"],
      cwd: elsewhere,
      stdin: "null",
    }).output();
    assert.deepEqual(help.code, 0);
    assert.match(new TextDecoder().decode(help.stdout), /^Usage: foo-proxy \[proxy\]/);

    // And it proxies, with two data-plane workers (their modules load from src/).
    await using upstream = await startUpstream();
    const child = new Deno.Command(command, {
      args: [
        "proxy",
        "--listen=127.0.0.1:0",
        `--forward=127.0.0.1:${upstream.addr.port}`,
        "--http=off",
        "--health=off",
        "--workers=2",
      ],
      cwd: elsewhere,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderr = new OutputLines(child.stderr);
    const stdoutLines = new OutputLines(child.stdout);
    try {
      const port = Number(
        (await stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+).*2 data-plane workers/, 20_000))[1],
      );
      const conn = await connectTo(port);
      try {
        await writeAll(conn, "REQ 1\n");
        assert.deepEqual(await readLine(conn), "ACK 1");
      } finally {
        conn.close();
      }
      child.kill("SIGTERM");
      assert.deepEqual((await child.status).code, 0);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
      await child.status;
      await Promise.all([stderr.done, stdoutLines.done]);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(elsewhere, { recursive: true });
  }
});

Deno.test("deno task install --dry-run adds the recovery directory and read paths to the grants", async () => {
  const { code, stdout } = await new Deno.Command(Deno.execPath(), {
    args: [
      "task",
      "install",
      "--dry-run",
      "--recovery-dir",
      "/var/lib/foo-proxy",
      "--allow-read=/etc/foo-proxy",
    ],
    cwd: REPO_ROOT,
    stdin: "null",
    stderr: "null",
  }).output();
  assert.deepEqual(code, 0);
  const words = splitCommandLine(new TextDecoder().decode(stdout).trim());
  assert.deepEqual(words.slice(1, 3), ["install", "--global"]);
  assert.deepEqual(
    words.filter((w) => w.startsWith("--allow-read=")),
    [`--allow-read=${REPO_ROOT.replace(/\/$/, "")}/src,/etc/foo-proxy,/var/lib/foo-proxy`],
  );
  assert.ok(words.includes("--allow-write=/var/lib/foo-proxy"));
  assert.ok(!words.some((w) => /^(-A|--allow-all|--allow-run|--allow-sys|--allow-ffi)/.test(w)));

  const relative = await new Deno.Command(Deno.execPath(), {
    args: ["task", "install", "--dry-run", "--allow-read=certs"],
    cwd: REPO_ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(relative.code, 2);
  assert.match(
    new TextDecoder().decode(relative.stderr),
    /install: --allow-read: "certs" is not an absolute path/,
  );
});

Deno.test("the systemd unit: real flags, default ports, a stop timeout past the drain, matching directories", () => {
  const text = Deno.readTextFileSync(UNIT_PATH);
  const unit = parseUnit(text);
  const service = unit.get("Service")!;
  const exec = splitCommandLine(one(service, "ExecStart"));
  assert.deepEqual(exec.slice(0, 2), ["/usr/local/bin/foo-proxy", "proxy"]);
  const env = new Map(
    service.filter(([k]) => k === "Environment").map(([, v]) =>
      v.split("=", 2) as [string, string]
    ),
  );
  for (const name of env.keys()) assert.match(name, /^FOO_PROXY_[A-Z_]+$/);
  const configPath = flagValue(exec, "--config")!;
  // Every flag and variable is the proxy's own and its value parses (else this throws).
  const config = parseProxyConfig(exec.slice(2), (name) => env.get(name), readConfigAt(configPath));
  assertDefaultPorts(config);

  // Stop: SIGTERM drains, and systemd waits longer than the drain can last.
  assert.deepEqual(one(service, "KillSignal"), "SIGTERM");
  const stopMs = parseDuration("TimeoutStopSec", one(service, "TimeoutStopSec"));
  assert.ok(stopMs > config.drainDelayMs + config.drainTimeoutMs, `TimeoutStopSec ${stopMs} ms`);
  assert.match(one(service, "ExecReload"), /^\/bin\/kill -HUP \$MAINPID$/);

  // The fd limit the proxy sizes --max-connections by is the one systemd sets.
  assert.deepEqual(config.fdLimit, Number(one(service, "LimitNOFILE")));

  // The recovery file lives in the state directory, the config in the configuration directory,
  // and the compile command in the header grants exactly those.
  const state = `/var/lib/${one(service, "StateDirectory")}`;
  const etc = `/etc/${one(service, "ConfigurationDirectory")}`;
  assert.deepEqual(dirname(config.recoveryPath!), state);
  assert.deepEqual(dirname(configPath), etc);
  assert.ok(
    text.includes(`deno task compile --allow-read=${etc} --recovery-dir ${state}\n`),
    "the header's compile command grants the unit's directories",
  );

  for (
    const [key, value] of [
      ["DynamicUser", "yes"],
      ["NoNewPrivileges", "yes"],
      ["ProtectSystem", "strict"],
      ["ProtectHome", "yes"],
      ["PrivateTmp", "yes"],
    ]
  ) assert.deepEqual(one(service, key), value, key);
  // V8's JIT needs writable, executable pages.
  assert.ok(!service.some(([k]) => k === "MemoryDenyWriteExecute"));
});

const SYSTEMD_ANALYZE = await (async () => {
  try {
    const { code } = await new Deno.Command("systemd-analyze", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return code === 0;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "systemd-analyze verify accepts the unit (every key and value known)",
  ignore: !SYSTEMD_ANALYZE,
  async fn() {
    // verify checks that ExecStart's program exists: point it at a stand-in.
    const dir = await Deno.makeTempDir({ prefix: "foo-proxy-unit-" });
    try {
      const binary = `${dir}/foo-proxy`;
      await Deno.writeTextFile(binary, "#!/bin/sh\n", { mode: 0o755 });
      const unitPath = `${dir}/foo-proxy.service`;
      await Deno.writeTextFile(
        unitPath,
        Deno.readTextFileSync(UNIT_PATH).replaceAll("/usr/local/bin/foo-proxy", binary),
      );
      const { code, stderr } = await new Deno.Command("systemd-analyze", {
        args: ["verify", unitPath],
        cwd: dir,
        stdin: "null",
        stdout: "null",
      }).output();
      const complaints = new TextDecoder().decode(stderr).split("\n")
        .filter((line) => line.includes("foo-proxy.service"));
      assert.deepEqual(code, 0, complaints.join("\n"));
      assert.deepEqual(complaints, []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** The Dockerfile's instructions, `[INSTRUCTION, arguments]`, continuations joined. */
function parseDockerfile(text: string): [string, string][] {
  return logicalLines(text).map((line) => {
    const space = line.search(/\s/);
    return [line.slice(0, space).toUpperCase(), line.slice(space).trim()];
  });
}

Deno.test("the Dockerfile: compile stage on this Deno, real flags, default ports exposed, health check on the health port", () => {
  const steps = parseDockerfile(Deno.readTextFileSync(DOCKERFILE_PATH));
  const all = (name: string) => steps.filter(([i]) => i === name).map(([, a]) => a);
  const [build, final] = all("FROM");
  assert.deepEqual(build, `denoland/deno:${Deno.version.deno} AS build`);
  assert.match(final, /^gcr\.io\/distroless\/cc-debian\d+(:nonroot)?$/);
  assert.ok(!["0", "root"].includes(all("USER").at(-1)!.split(":")[0]), "runs as non-root");

  const compile = splitCommandLine(all("RUN").find((r) => r.startsWith("deno task compile"))!);
  const recoveryDir = flagValue(compile, "--recovery-dir")!;
  const readDir = flagValue(compile, "--allow-read")!;

  const env = new Map(
    all("ENV").flatMap((a) => splitCommandLine(a)).map((w) => w.split("=", 2) as [string, string]),
  );
  const entrypoint: string[] = JSON.parse(all("ENTRYPOINT")[0]);
  const binary = "/usr/local/bin/foo-proxy";
  assert.deepEqual(entrypoint, [binary, "proxy"]);
  assert.ok(all("COPY").some((c) => c.endsWith(` ${binary}`)), "the binary is copied in");
  const configPath = env.get("FOO_PROXY_CONFIG")!;
  assert.ok(all("COPY").includes(`examples/foo-proxy.jsonc ${configPath}`));
  const config = parseProxyConfig([], (name) => env.get(name), readConfigAt(configPath));
  assertDefaultPorts(config);
  assert.deepEqual(dirname(config.recoveryPath!), recoveryDir);
  assert.deepEqual(dirname(configPath), readDir);
  assert.deepEqual(all("VOLUME"), [recoveryDir]);
  assert.deepEqual(
    new Set(all("EXPOSE").flatMap((e) => e.split(/\s+/)).map(Number)),
    new Set([config.listen.port, config.http!.port, config.health!.port]),
  );
  // Admin ports on every interface: published ports reach them.
  assert.deepEqual(config.http!.hostname, "0.0.0.0");
  assert.deepEqual(config.health!.hostname, "0.0.0.0");

  assert.deepEqual(all("STOPSIGNAL"), ["SIGTERM"]);
  const health = /^((?:--\S+\s+)*)CMD\s+(\[.*\])$/.exec(all("HEALTHCHECK")[0])!;
  const check: string[] = JSON.parse(health[2]);
  assert.deepEqual(check.slice(0, 2), [binary, "wait"]);
  for (const word of check.slice(2).filter((w) => w.startsWith("--"))) {
    assert.ok(word.slice(2) in WAIT_FLAGS, `foo-proxy wait has no ${word}`);
  }
  assert.deepEqual(check.at(-1), `127.0.0.1:${config.health!.port}`);
  const waitMs = parseDuration("--timeout", flagValue(check, "--timeout")!);
  const dockerMs = parseDuration("--timeout", /--timeout=(\S+)/.exec(health[1])![1]);
  assert.ok(dockerMs > waitMs, "wait gives up (exit 1) before Docker kills the check");
});
