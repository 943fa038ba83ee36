/**
 * The proxy's settings table is the one source: the flag spec, `FOO_PROXY_*`, config-file keys,
 * `--help`, the README table, {@linkcode ProxyConfig}, the engine and pool options and the reload
 * diff all come from {@linkcode PROXY_SETTINGS}. These tests fail when one of them stops following
 * a row.
 */
import assert from "node:assert/strict";
import { parseConfigFile } from "../src/cli/config_file.ts";
import { flagUsage } from "../src/cli/flag_help.ts";
import { envName } from "../src/cli/flags.ts";
import { applyReload } from "../src/cmd/apply_reload.ts";
import { PROXY_USAGE } from "../src/cmd/proxy.ts";
import {
  DERIVED_CONFIG_FIELDS,
  parseProxyConfig,
  type ProxyConfig,
} from "../src/cmd/proxy_config.ts";
import {
  engineUpdateOf,
  poolOptionsOf,
  PROXY_FLAGS,
  PROXY_SETTINGS,
  proxyOptionsOf,
  RELOAD_ORDER,
} from "../src/cmd/proxy_settings.ts";
import { ENGINE_DEFAULTS } from "../src/proxy/engine_config.ts";
import { CONNECTION_SETTINGS } from "../src/proxy/proxy.ts";
import { REPO_ROOT } from "./_util.ts";

/** A value other than the default for each flag, to see what a change of it does. */
const OTHER_VALUE: Record<string, string> = {
  listen: ":9",
  forward: "127.0.0.1:7",
  balance: "first",
  "dns-interval": "10s",
  "dns-server": "127.0.0.1:53",
  "health-interval": "5s",
  "health-timeout": "2s",
  "health-mode": "tcp",
  "health-rise": "4",
  "health-fall": "5",
  "eject-after": "6",
  "eject-time": "1m",
  http: "off",
  health: "off",
  "recovery-path": "/tmp/stats.json",
  config: "x.jsonc",
  "admin-token": "secret",
  "admin-hosts": "a.example",
  "access-log": "json",
  "config-watch": "off",
  "access-log-file": "/tmp/access.log",
  "pid-file": "/tmp/foo.pid",
  takeover: "",
  check: "",
  "connect-timeout": "2s",
  "connect-retries": "1",
  pool: "8",
  "pool-idle-timeout": "5s",
  "upstream-tls": "",
  "upstream-ca": "/tmp/ca.pem",
  "upstream-sni": "upstream.example",
  "upstream-cert": "/tmp/client.pem",
  "upstream-key": "/tmp/client.key",
  workers: "3",
  "max-connections": "50",
  "fd-limit": "1000",
  allow: "10.0.0.0/8,::1/128",
  deny: "192.0.2.0/24",
  "max-connections-per-source": "4",
  "rate-limit-per-source": "200",
  "max-inflight": "5",
  "idle-timeout": "1m",
  "half-close-timeout": "10s",
  "drain-delay": "1s",
  "drain-timeout": "5s",
  mux: "3",
  resume: "verbatim",
  "resume-retries": "2",
  "resume-max-failovers": "1",
  "resume-retain": "4096",
  "accept-proxy": "10.0.0.0/8",
  "accept-proxy-timeout": "1s",
  "send-proxy": "v2",
  "ws-listen": "127.0.0.1:9",
  "ws-origin": "https://a.example",
  "tls-cert": "/tmp/cert.pem",
  "tls-key": "/tmp/key.pem",
  "tls-handshake-timeout": "2s",
  "log-level": "debug",
  "log-format": "json",
  help: "",
  version: "",
};

function argOf(flag: string): string {
  const value = OTHER_VALUE[flag];
  return value === "" ? `--${flag}` : `--${flag}=${value}`;
}

Deno.test("PROXY_FLAGS is the settings table: one flag per row, in order, with its help and default", () => {
  assert.deepEqual(Object.keys(PROXY_FLAGS), PROXY_SETTINGS.map((s) => s.flag));
  for (const s of PROXY_SETTINGS) {
    const spec = PROXY_FLAGS[s.flag];
    assert.equal(spec.help, s.help, s.flag);
    assert.equal(spec.default, s.default, s.flag);
    assert.equal(spec.defaultText, s.defaultText, s.flag);
    assert.equal(spec.value, s.value, s.flag);
  }
});

Deno.test("every setting is in --help, and in the README's table with its variable", async () => {
  const readme = await Deno.readTextFile(`${REPO_ROOT}/README.md`);
  for (const s of PROXY_SETTINGS) {
    const usage = flagUsage(s.flag, PROXY_FLAGS[s.flag]);
    assert.ok(PROXY_USAGE.includes(usage), s.flag);
    assert.ok(readme.includes(`\`${usage.replaceAll("|", "\\|")}\``), s.flag);
    if (s.env !== false) assert.ok(readme.includes(`\`${envName(s.flag)}\``), s.flag);
  }
});

Deno.test("each setting is read from its FOO_PROXY_* variable and its config-file key", () => {
  for (const s of PROXY_SETTINGS) {
    if (s.type === "boolean") continue;
    const other = parseProxyConfig([argOf(s.flag)], undefined, () => "{}");
    if (s.env !== false) {
      const fromEnv = parseProxyConfig(
        [],
        (name) => name === envName(s.flag) ? OTHER_VALUE[s.flag] : undefined,
        () => "{}",
      );
      assert.deepEqual(fromEnv[s.field], other[s.field], `${envName(s.flag)}`);
    }
    if (s.reload === "none") continue; // --config names the file; a file cannot
    const file = JSON.stringify({ [s.flag]: OTHER_VALUE[s.flag] });
    assert.deepEqual(parseConfigFile(file, "f.jsonc", PROXY_FLAGS), {
      [s.flag]: OTHER_VALUE[s.flag],
    });
    const fromFile = parseProxyConfig(["--config=f.jsonc"], undefined, () => file);
    assert.deepEqual(fromFile[s.field], other[s.field], `"${s.flag}" in a config file`);
  }
  for (const flag of ["help", "version", "config"]) {
    assert.throws(() => parseConfigFile(`{"${flag}": "x"}`, "f.jsonc", PROXY_FLAGS), /Unknown key/);
  }
});

Deno.test("every ProxyConfig property comes from exactly one row, or follows from others", () => {
  const fields = PROXY_SETTINGS.map((s) => s.field as string);
  assert.equal(new Set(fields).size, fields.length, "a property set by two rows");
  const config = parseProxyConfig([]);
  assert.deepEqual(
    Object.keys(config).sort(),
    [...fields, ...DERIVED_CONFIG_FIELDS].sort(),
  );
  for (const s of PROXY_SETTINGS) {
    // The default is written once, as flag text: parsing it gives the configured value.
    assert.deepEqual(s.parse(s.default, s), config[s.field], s.flag);
    assert.ok(OTHER_VALUE[s.flag] !== undefined, `OTHER_VALUE lacks ${s.flag}`);
  }
});

Deno.test("the flags' defaults are the engine's own defaults (ENGINE_DEFAULTS)", () => {
  let compared = 0;
  for (const s of PROXY_SETTINGS) {
    if (s.option === undefined || !(s.option in ENGINE_DEFAULTS)) continue;
    const engineDefault = ENGINE_DEFAULTS[s.option as keyof typeof ENGINE_DEFAULTS];
    assert.deepEqual(s.parse(s.default, s), engineDefault, `--${s.flag} vs ${s.option}`);
    compared++;
  }
  assert.ok(compared >= 6, `only ${compared} engine settings compared`);
});

/** Every setting at its other value, twice over: --mux and --pool exclude each other. */
function allOtherValues(): ProxyConfig[] {
  const args = (...skip: string[]) =>
    PROXY_SETTINGS.filter((s) =>
      s.type !== "boolean" && s.reload !== "none" && !skip.includes(s.flag)
    )
      .map((s) => argOf(s.flag));
  // --send-proxy excludes --pool and --mux, which exclude each other.
  return [
    parseProxyConfig(args("pool", "send-proxy")),
    parseProxyConfig(args("mux", "send-proxy")),
    parseProxyConfig(args("mux", "pool")),
  ];
}

Deno.test("the Proxy, pool and engine options are the rows' values under the rows' keys", () => {
  for (const config of allOtherValues()) checkOptionsOf(config);
});

function checkOptionsOf(config: ProxyConfig): void {
  const proxy = proxyOptionsOf(config) as Record<string, unknown>;
  const pool = poolOptionsOf(config) as Record<string, unknown>;
  const engine = engineUpdateOf(config);
  for (const s of PROXY_SETTINGS) {
    if (s.option !== undefined) assert.deepEqual(proxy[s.option], config[s.field], s.flag);
    if (s.poolOption !== undefined) assert.deepEqual(pool[s.poolOption], config[s.field], s.flag);
    if (s.reload === "engine") {
      assert.ok(s.option !== undefined, `--${s.flag} is applied to the engine: it needs an option`);
      assert.ok(
        s.option in ENGINE_DEFAULTS ||
          (CONNECTION_SETTINGS as readonly string[]).includes(s.option),
        `--${s.flag}: ${s.option} is no engine setting`,
      );
      assert.deepEqual(engine[s.option], config[s.field], s.flag);
    }
  }
  assert.deepEqual(
    Object.keys(proxy).sort(),
    PROXY_SETTINGS.flatMap((s) => s.option ?? []).sort(),
  );
}

/** What applyReload did, through fake targets. */
function reloadOne(old: ProxyConfig, next: ProxyConfig) {
  const calls: string[] = [];
  const warnings: string[] = [];
  let engine: Record<string, unknown> | undefined;
  const changed = applyReload(old, next, {
    pool: {
      update: () => (calls.push("update"), ["upstreams changed"]),
      setPolicy: () => void calls.push("setPolicy"),
    },
    proxy: {
      updateEngine: (changes) => {
        calls.push("updateEngine");
        engine = changes as Record<string, unknown>;
      },
      setMaxConnections: () => void calls.push("setMaxConnections"),
      setAccess: () => void calls.push("setAccess"),
    },
    relog: () => void calls.push("relog"),
    warn: (message) => void warnings.push(message),
  });
  return { calls, warnings, changed, engine };
}

Deno.test("a reload applies or warns about each changed setting as its row says", () => {
  const old = parseProxyConfig([]);
  for (const s of PROXY_SETTINGS) {
    if (s.reload === "none") continue;
    const next = parseProxyConfig([argOf(s.flag)]);
    assert.notDeepEqual(next[s.field], old[s.field], `OTHER_VALUE of ${s.flag} is its default`);
    const { calls, warnings, changed, engine } = reloadOne(old, next);
    const expected: Record<string, [string[], RegExp | undefined, string[]]> = {
      upstreams: [["update"], undefined, ["upstreams changed"]],
      balance: [["setPolicy"], undefined, [`balance ${OTHER_VALUE[s.flag]}`]],
      engine: [["updateEngine"], undefined, ["limits (for new connections)"]],
      "max-connections": [["setMaxConnections"], undefined, [`max-connections 50`]],
      access: [["setAccess"], undefined, ["source access (for new connections)"]],
      log: [["relog"], undefined, [`log ${next.logLevel} ${next.logFormat}`]],
      live: [[], undefined, [s.flag]],
      tls: [[], undefined, []], // the supervisor reads the pair again on every reload
      restart: [[], new RegExp(`^${s.reloadName ?? s.flag} changed in the config file`), []],
    };
    const [wantCalls, wantWarning, wantChanged] = expected[s.reload];
    assert.deepEqual(calls, wantCalls, s.flag);
    assert.deepEqual(changed, wantChanged, s.flag);
    if (wantWarning) {
      assert.equal(warnings.length, 1, s.flag);
      assert.match(warnings[0], wantWarning);
    } else {
      assert.deepEqual(warnings, [], s.flag);
    }
    if (s.reload === "engine") assert.deepEqual(engine?.[s.option!], next[s.field], s.flag);
  }
  assert.deepEqual(reloadOne(old, parseProxyConfig([])), {
    calls: [],
    warnings: [],
    changed: [],
    engine: undefined,
  });
});

Deno.test("a reload reports its changes in RELOAD_ORDER, and warns once about the health checks", () => {
  const old = parseProxyConfig([]);
  const next = parseProxyConfig([
    "--admin-hosts=h",
    "--log-level=debug",
    "--max-connections=9",
    "--max-inflight=3",
    "--balance=first",
    "--forward=127.0.0.1:7",
    "--admin-token=s3cret",
    "--health-rise=5",
    "--health-fall=5",
  ]);
  const { changed, warnings } = reloadOne(old, next);
  assert.deepEqual(changed, [
    "upstreams changed",
    "balance first",
    "limits (for new connections)",
    "max-connections 9",
    "log debug text",
    "admin-token",
    "admin-hosts",
  ]);
  assert.deepEqual(warnings, [
    "health checks changed in the config file: it takes effect on restart",
  ]);
  assert.ok(!changed.join().includes("s3cret"), "never the token itself");
  assert.deepEqual(RELOAD_ORDER.slice(0, 2), ["upstreams", "balance"]);
});
