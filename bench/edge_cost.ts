/**
 * What the edge costs (issue 20), a suite of the bench harness (`bench/harness/`), side by side
 * in one run:
 *
 * - **TLS termination**: foo-proxy with `--tls-cert/--tls-key` beside HAProxy with `bind … ssl
 *   crt` on the same certificate, the load generator speaking TLS to both (`--tls --ca`):
 *   replies/s and proxy CPU per reply, pipelined and lock-step, and new TLS connections per second
 *   (a handshake each).
 * - **Source checks and limits**: foo-proxy with `--allow`, `--deny`,
 *   `--max-connections-per-source` and `--rate-limit-per-source` set (high enough never to bite)
 *   against the same proxy without them, and (with `--base DIR`) against a checkout from before
 *   the edge features: what they cost when on, and when off.
 *
 * ```sh
 * git worktree add /tmp/edge-base <commit before the edge>   # optional: the "before" column
 * deno run -A bench/edge_cost.ts --base /tmp/edge-base        # --help for the flags
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { writeStderrLine, writeStdoutLine } from "../src/cmd/output.ts";
import { makeCertificates } from "../test/_tls.ts";
import { numberFlag } from "./harness/number_flag.ts";
import { type LoadScenario, runComparison } from "./harness/comparison.ts";
import { CHURN_LOAD, closedLoop, THROUGHPUT_LOAD } from "./harness/load.ts";
import {
  comparisonTable,
  loadRows,
  machineFacts,
  type RatioPair,
  rawRounds,
  writeReport,
} from "./harness/report.ts";
import { REPO_ROOT } from "./harness/spawn.ts";
import type { TargetSpec } from "./harness/target.ts";

const RESULTS = new URL("./EDGE_COST.md", import.meta.url).pathname;

/** Limits high enough never to refuse or slow the bench's one source: only their cost shows. */
const ACCESS_FLAGS = [
  "--allow",
  "127.0.0.0/8,::1",
  "--deny",
  "10.0.0.0/8,192.168.0.0/16,fc00::/7",
  "--max-connections-per-source",
  "100000",
  "--rate-limit-per-source",
  "100000000",
];

function usage(): string {
  return `Usage: deno run -A bench/edge_cost.ts [flags]

  --rounds N     interleaved rounds                                       (default 3)
  --seconds S    measured seconds per load run, at least 2                (default 5)
  --warmup S     unmeasured seconds before each load run                  (default 1)
  --settle S     unmeasured seconds of load on each proxy once started    (default 5)
  --quick        a smoke run: 1 round, 2 s runs, 1 s settle
  --base DIR     also run foo-proxy from this checkout (before the edge) as "base"
  --parts L      tls, access or both                                      (default tls,access)
  --no-haproxy   leave HAProxy out even when installed
  --results FILE write the report there                     (default bench/EDGE_COST.md)
  --no-write     print the tables only, write no report`;
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      rounds: { type: "string" },
      seconds: { type: "string" },
      warmup: { type: "string", default: "1" },
      settle: { type: "string" },
      quick: { type: "boolean" },
      base: { type: "string" },
      parts: { type: "string", default: "tls,access" },
      "no-haproxy": { type: "boolean" },
      "no-write": { type: "boolean" },
      results: { type: "string", default: RESULTS },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    writeStdoutLine(usage());
    return 0;
  }
  const parts = new Set(values.parts.split(",").map((p) => p.trim()));
  for (const p of parts) {
    if (p !== "tls" && p !== "access") {
      throw new RangeError(`Invalid --parts "${values.parts}": expected tls, access or both`);
    }
  }
  const quick = values.quick === true;
  const rounds = Math.round(numberFlag("rounds", values.rounds, quick ? 1 : 3, 1));
  const haproxy = !values["no-haproxy"] &&
    await new Deno.Command("haproxy", { args: ["-v"], stdout: "null", stderr: "null" }).output()
      .then((o) => o.success, () => false);
  if (!values["no-haproxy"] && !haproxy) {
    writeStderrLine("edge_cost: haproxy is not installed (scripts/setup_haproxy.sh): skipping it");
  }
  await using certs = await makeCertificates();
  // HAProxy takes the certificate and its key in one file.
  const combined = `${certs.dir}/combined.pem`;
  await Deno.writeTextFile(combined, certs.serverCertPem + certs.serverKeyPem);

  const TLS = ["--tls", "--ca", certs.caCert];
  const targets: TargetSpec[] = [];
  const plain = new Set<string>();
  const tls = new Set<string>();
  if (parts.has("access")) {
    if (values.base !== undefined) {
      targets.push({
        key: "base",
        kind: "foo",
        title: "base (before the edge)",
        checkout: resolve(values.base),
      });
      plain.add("base");
    }
    targets.push({ key: "off", kind: "foo", title: "foo-proxy (edge flags off)" });
    targets.push({
      key: "access",
      kind: "foo",
      title: "foo-proxy + allow/deny/limits",
      flags: ACCESS_FLAGS,
    });
    plain.add("off").add("access");
    if (haproxy) {
      targets.push({ key: "haproxy", kind: "haproxy", title: "HAProxy" });
      plain.add("haproxy");
    }
  }
  if (parts.has("tls")) {
    targets.push({
      key: "tls",
      kind: "foo",
      title: "foo-proxy TLS",
      flags: ["--tls-cert", certs.serverCert, "--tls-key", certs.serverKey],
      // The certificate files are read at start (the task's read access covers src/ only).
      denoFlags: [`--allow-read=${certs.dir}`],
      settleArgs: [...THROUGHPUT_LOAD, ...TLS],
    });
    tls.add("tls");
    if (haproxy) {
      targets.push({
        key: "haproxy-tls",
        kind: "haproxy",
        title: "HAProxy TLS",
        sslCrt: combined,
        settleArgs: [...THROUGHPUT_LOAD, ...TLS],
      });
      tls.add("haproxy-tls");
    }
  }
  const inPlain = (t: TargetSpec) => plain.has(t.key);
  const inTls = (t: TargetSpec) => tls.has(t.key);
  const loads: LoadScenario[] = [
    ...(plain.size > 0
      ? [
        {
          id: "throughput",
          label: "throughput",
          title: "64 connections x 16 pipelined",
          args: THROUGHPUT_LOAD,
          metrics: ["replies", "proxyCores", "cpuPerReply"],
          targets: inPlain,
        },
        {
          id: "lockstep",
          label: "lock-step",
          title: "64 connections, 1 in flight",
          args: closedLoop(64, 1),
          metrics: ["replies", "proxyCores", "cpuPerReply"],
          targets: inPlain,
        },
        {
          id: "churn",
          label: "churn",
          title: "16 connections, 10 lock-step REQs each, then new ones",
          args: CHURN_LOAD,
          metrics: ["connections", "cpuPerConnection"],
          targets: inPlain,
        },
      ] satisfies LoadScenario[]
      : []),
    ...(tls.size > 0
      ? [
        {
          id: "tls-throughput",
          label: "TLS throughput",
          title: "TLS: 64 connections x 16 pipelined",
          args: [...THROUGHPUT_LOAD, ...TLS],
          metrics: ["replies", "proxyCores", "cpuPerReply"],
          targets: inTls,
        },
        {
          id: "tls-lockstep",
          label: "TLS lock-step",
          title: "TLS: 64 connections, 1 in flight",
          args: [...closedLoop(64, 1), ...TLS],
          metrics: ["replies", "proxyCores", "cpuPerReply"],
          targets: inTls,
        },
        {
          id: "tls-churn",
          label: "TLS churn",
          title: "TLS: 16 connections, 10 lock-step REQs each, then new ones (a handshake each)",
          args: [...CHURN_LOAD, ...TLS],
          metrics: ["connections", "cpuPerConnection"],
          targets: inTls,
        },
      ] satisfies LoadScenario[]
      : []),
  ];
  const results = await runComparison({ targets, loads }, {
    rounds,
    seconds: numberFlag("seconds", values.seconds, quick ? 2 : 5, 2),
    warmup: numberFlag("warmup", values.warmup, 1, 0),
    settle: numberFlag("settle", values.settle, quick ? 1 : 5, 0),
    log: (line) => writeStderrLine(`edge_cost: ${line}`),
  });
  const has = (key: string) => targets.some((t) => t.key === key);
  const ratios: RatioPair[] = [
    ...(has("base") ? [["off", "base"] as const, ["access", "base"] as const] : []),
    ...(has("access") ? [["access", "off"] as const] : []),
    ...(has("haproxy") ? [["off", "haproxy"] as const] : []),
    ...(has("haproxy-tls") ? [["tls", "haproxy-tls"] as const] : []),
  ];
  const rows = loads.flatMap((s) => loadRows(results, s, targets));
  const table = comparisonTable(rows, { targets, ratios, title: (t) => t.title ?? t.key });
  const errors = [...results.loads.values()].flat().reduce((n, s) => n + s.bench.errors_total, 0);
  writeStdoutLine(table);
  if (errors > 0) writeStdoutLine(`\n${errors} errors in load runs (see stderr)`);
  if (values["no-write"]) return errors > 0 ? 1 : 0;
  const command = `deno run -A bench/edge_cost.ts ${args.join(" ")}`.trim();
  const md = `# The edge's cost: TLS termination, source checks and limits

Generated by \`bench/edge_cost.ts\` (the bench harness); re-run \`${command}\`.

${await machineFacts({ started: results.started, command, checkout: REPO_ROOT })}
- ${rounds} interleaved rounds, one process per target for the run; ${
    Math.round(results.elapsedS)
  } s in all

Values are medians over the rounds. Proxy CPU per reply = the proxy's CPU time between the load
generator's first and last progress lines, divided by the replies counted in between. The TLS
loads speak TLS from the load generator (\`foo-proxy bench --tls --ca\`) to the proxy, whose
upstream is plain TCP. "allow/deny/limits" runs with \`${ACCESS_FLAGS.join(" ")}\`.

${table}

## Raw rounds

${rawRounds(results)}
`;
  await writeReport([values.results], md, `${REPO_ROOT}deno.json`);
  writeStderrLine(`edge_cost: wrote ${values.results}`);
  return errors > 0 ? 1 : 0;
}

if (import.meta.main) {
  Deno.exit(
    await main(Deno.args).catch((error) => {
      writeStderrLine(`edge_cost: ${error instanceof Error ? error.message : error}`);
      return error instanceof RangeError || error instanceof TypeError ? 2 : 1;
    }),
  );
}
