/**
 * The Kubernetes manifests in `deploy/kubernetes/` agree with the proxy's own definitions: they
 * parse (test/_yaml.ts, a strict reader of the subset they use), every container arg is a real
 * flag and the args plus the ConfigMap's file parse with the proxy's own parser, the ports and
 * probe paths are the proxy's, the Service and the ServiceMonitor reach the container ports by
 * name, and the grace period outlasts the drain. The proxy started with the manifest's args fails
 * `/readyz` from SIGTERM on while it still serves for `--drain-delay` (the preStop wait).
 */
import assert from "node:assert/strict";
import { parseProxyConfig, type ProxyConfig } from "../src/cmd/proxy_config.ts";
import { PROXY_FLAGS } from "../src/cmd/proxy_settings.ts";
import { createHealthApp } from "../src/http/health_app.ts";
import { proxyReadinessChecks } from "../src/http/readiness.ts";
import {
  connectTo,
  DEFAULT_CHILD_FLAGS,
  freePort,
  readLines,
  REPO_ROOT,
  spawnMain,
  startUpstream,
  waitUntil,
  writeAll,
} from "./_util.ts";
import { parseYaml, type YamlValue } from "./_yaml.ts";

const DIR = `${REPO_ROOT}/deploy/kubernetes`;

// deno-lint-ignore no-explicit-any
type Obj = any;

function manifest(file: string): Obj {
  return parseYaml(Deno.readTextFileSync(`${DIR}/${file}`));
}

const deployment = manifest("deployment.yaml");
const service = manifest("service.yaml");
const configMap = manifest("configmap.yaml");
const pdb = manifest("pdb.yaml");
const serviceMonitor = manifest("servicemonitor.yaml");
const pod = deployment.spec.template.spec;
const container = pod.containers.find((c: Obj) => c.name === "foo-proxy");
const args: string[] = container.args;

/** The container port named `name`. */
function containerPort(name: string): number {
  const port = container.ports.find((p: Obj) => p.name === name);
  assert.ok(port, `deployment.yaml has no container port named ${name}`);
  return port.containerPort;
}

/** The value of `--flag` in the container args. */
function argOf(flag: string): string {
  const at = args.indexOf(`--${flag}`);
  assert.ok(at >= 0 && at + 1 < args.length, `deployment.yaml's args have no --${flag} VALUE`);
  return args[at + 1];
}

/** Reads `--config`'s path the way the pod does: the ConfigMap volume mounted as a directory. */
function readMountedConfig(path: string): string {
  const mount = container.volumeMounts.find((m: Obj) => path.startsWith(`${m.mountPath}/`));
  assert.ok(mount, `${path} is on no volume mount`);
  assert.equal(mount.subPath, undefined, "a subPath mount never sees a ConfigMap update");
  const volume = pod.volumes.find((v: Obj) => v.name === mount.name);
  assert.equal(volume?.configMap?.name, configMap.metadata.name, `${path} is not the ConfigMap`);
  const file = path.slice(mount.mountPath.length + 1);
  assert.ok(!file.includes("/"), `${path}: the ConfigMap's keys are files in its directory`);
  const text = configMap.data[file];
  assert.equal(typeof text, "string", `the ConfigMap has no key ${file}`);
  return text;
}

function podConfig(): ProxyConfig {
  return parseProxyConfig(args, () => undefined, readMountedConfig);
}

const seconds = (ms: number) => ms / 1000;

Deno.test("the manifests parse: one object each, of the kinds expected", () => {
  const kinds = [deployment, service, configMap, pdb, serviceMonitor].map((m) => m.kind);
  assert.deepEqual(kinds, [
    "Deployment",
    "Service",
    "ConfigMap",
    "PodDisruptionBudget",
    "ServiceMonitor",
  ]);
  const files = [...Deno.readDirSync(DIR)].map((e) => e.name).filter((n) => n.endsWith(".yaml"));
  for (const file of files) assert.ok(typeof manifest(file) === "object", file);
});

Deno.test("the YAML reader refuses what it does not read rather than guessing", () => {
  assert.deepEqual(parseYaml('a:\n  - x: 1\n    y: "2"\n  - |\n    l1\n    l2\nb: ["c"]\n'), {
    a: [{ x: 1, y: "2" }, "l1\nl2\n"],
    b: ["c"],
  } as YamlValue);
  for (const bad of ["a: &x 1\n", "a:\n\t- 1\n", "a: {b: 1}\n", "a: 1 # c\n", "a: :80\n"]) {
    assert.throws(() => parseYaml(bad), SyntaxError, JSON.stringify(bad));
  }
  assert.throws(() => parseYaml("a: 1\na: 2\n"), /twice/);
});

Deno.test("every container arg is a proxy flag, and the args with the ConfigMap's file parse", () => {
  for (const arg of args.filter((a) => a.startsWith("-"))) {
    assert.match(arg, /^--[a-z-]+$/, `${arg}: write flags as --name VALUE`);
    assert.ok(Object.hasOwn(PROXY_FLAGS, arg.slice(2)), `${arg} is not a proxy flag`);
  }
  const config = podConfig();
  assert.equal(config.configPath, argOf("config"));
  assert.ok(config.upstreams.length > 0);
});

Deno.test("ports and probe paths are the proxy's: its default port numbers, bound on every interface for the kubelet", async () => {
  const config = podConfig();
  const defaults = parseProxyConfig([]);
  const bound = [
    ["foo", config.listen, defaults.listen],
    ["metrics", config.http, defaults.http],
    ["health", config.health, defaults.health],
  ] as const;
  for (const [name, address, byDefault] of bound) {
    assert.ok(address !== null && byDefault !== null, `${name} is off`);
    assert.equal(containerPort(name), address.port, `${name}: the container port is not bound`);
    assert.equal(address.port, byDefault.port, `${name}: not the proxy's default port`);
    assert.ok(["0.0.0.0", "::", ""].includes(address.hostname), `${name} on ${address.hostname}`);
  }
  assert.deepEqual(container.livenessProbe.httpGet, { path: "/livez", port: "health" });
  assert.deepEqual(container.readinessProbe.httpGet, { path: "/readyz", port: "health" });
  assert.equal(container.startupProbe.httpGet.port, "health");
  // The paths are the health app's: ready while serving, not ready once draining.
  let stopping = false;
  const app = createHealthApp({
    checks: proxyReadinessChecks({
      listening: () => true,
      shuttingDown: () => stopping,
      activeConnections: () => 0,
    }),
  });
  for (const probe of ["livenessProbe", "readinessProbe", "startupProbe"]) {
    const response = await app.request(container[probe].httpGet.path);
    assert.equal(response.status, 200, probe);
  }
  stopping = true;
  assert.equal((await app.request(container.readinessProbe.httpGet.path)).status, 503);
  assert.equal((await app.request(container.livenessProbe.httpGet.path)).status, 200);
});

Deno.test("the grace period outlasts the preStop wait, --drain-delay and --drain-timeout together", () => {
  const config = podConfig();
  const preStop = container.lifecycle?.preStop?.sleep?.seconds ?? 0;
  assert.equal(container.lifecycle?.preStop?.exec, undefined, "the image has no shell or sleep");
  const needed = preStop + seconds(config.drainDelayMs) + seconds(config.drainTimeoutMs);
  assert.ok(config.drainDelayMs > 0 || preStop > 0, "no wait for endpoints to drop the pod");
  assert.ok(
    pod.terminationGracePeriodSeconds > needed,
    `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} <= ${needed}`,
  );
  // A rollout never takes a replica away before its successor is ready.
  assert.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0);
});

Deno.test("the Service, ServiceMonitor and PodDisruptionBudget reach the pods and ports by name", () => {
  const labels = deployment.spec.template.metadata.labels;
  const matches = (selector: Record<string, string>) =>
    Object.entries(selector).every(([k, v]) => labels[k] === v);
  assert.ok(matches(deployment.spec.selector.matchLabels));
  assert.ok(matches(service.spec.selector));
  assert.ok(matches(pdb.spec.selector.matchLabels));
  assert.ok(
    Object.entries(serviceMonitor.spec.selector.matchLabels).every(([k, v]) =>
      service.metadata.labels[k] === v
    ),
  );
  for (const port of service.spec.ports) {
    assert.equal(typeof port.targetPort, "string", `${port.name}: target the port by name`);
    assert.equal(containerPort(port.targetPort), port.port, port.name);
  }
  const servicePorts = service.spec.ports.map((p: Obj) => p.name);
  for (const endpoint of serviceMonitor.spec.endpoints) {
    assert.ok(servicePorts.includes(endpoint.port), endpoint.port);
    assert.equal(endpoint.path, "/metrics");
  }
  assert.ok(deployment.spec.replicas > pdb.spec.maxUnavailable);
});

Deno.test("the pod runs unprivileged, read-only, with limits, and checks the nofile the proxy is told", () => {
  const config = podConfig();
  assert.equal(pod.securityContext.runAsNonRoot, true);
  assert.ok(pod.securityContext.runAsUser > 0);
  for (const c of [...pod.initContainers, ...pod.containers]) {
    assert.equal(c.securityContext.readOnlyRootFilesystem, true, c.name);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false, c.name);
    assert.deepEqual(c.securityContext.capabilities.drop, ["ALL"], c.name);
    assert.ok(c.resources.requests && c.resources.limits, c.name);
  }
  // Kubernetes sets no nofile: the init container fails on a node below the --fd-limit given.
  const check = pod.initContainers.find((c: Obj) => c.name === "nofile-check");
  const floor = /ulimit -Hn\)[\s\S]*-lt (\d+)/.exec(check.command.join(" "));
  assert.ok(floor, "the nofile check compares the hard limit");
  assert.equal(Number(floor[1]), config.fdLimit);
  assert.ok(config.fdLimit !== undefined && config.fdLimit >= 65536);
});

Deno.test("kubectl kustomize builds the manifests (where kubectl exists)", async (t) => {
  const listed = manifest("kustomization.yaml").resources as string[];
  assert.deepEqual(listed.toSorted(), [
    "configmap.yaml",
    "deployment.yaml",
    "pdb.yaml",
    "service.yaml",
  ]);
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command("kubectl", { args: ["kustomize", DIR] }).output();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    await t.step({ name: "kubectl is not installed here", ignore: true, fn: () => {} });
    return;
  }
  const text = new TextDecoder().decode(output.stdout);
  assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
  for (const kind of ["ConfigMap", "Service", "Deployment", "PodDisruptionBudget"]) {
    assert.match(text, new RegExp(`^kind: ${kind}$`, "m"));
  }
});

Deno.test("started with the manifest's args, the proxy serves, fails /readyz from SIGTERM on and keeps accepting for --drain-delay", async () => {
  await using upstream = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-k8s-" });
  try {
    const configPath = `${dir}/config.json`;
    await Deno.writeTextFile(configPath, readMountedConfig(argOf("config")));
    const [listen, http, health] = [freePort(), freePort(), freePort()];
    // The pod's args, with the file where this machine has it, loopback ports, and our upstream.
    const local: Record<string, string> = {
      config: configPath,
      listen: `127.0.0.1:${listen}`,
      http: `127.0.0.1:${http}`,
      health: `127.0.0.1:${health}`,
    };
    const podArgs = args.map((arg, i) => local[args[i - 1]?.slice(2)] ?? arg);
    await using child = spawnMain(
      ["proxy", ...podArgs, "--forward", `127.0.0.1:${upstream.addr.port}`, "--workers", "1"],
      {
        permissions: [
          ...DEFAULT_CHILD_FLAGS.filter((f) => !f.startsWith("--allow-read")),
          `--allow-read=${REPO_ROOT}/src,${dir}`,
        ],
      },
    );
    const get = async (port: number, path: string) => {
      try {
        const response = await fetch(`http://127.0.0.1:${port}${path}`);
        await response.body?.cancel();
        return response.status;
      } catch (error) {
        if (error instanceof TypeError) return 0; // not listening yet
        throw error;
      }
    };
    await waitUntil(async () => await get(health, "/readyz") === 200, "ready", 20_000);
    assert.equal(await get(http, "/metrics"), 200);
    child.kill("SIGTERM");
    await waitUntil(async () => await get(health, "/readyz") === 503, "not ready", 5000);
    assert.equal(await get(health, "/livez"), 200);
    // Still accepting (the endpoints are being updated): a new client is served.
    using late = await connectTo(listen);
    await writeAll(late, "REQ 1\n");
    assert.deepEqual(await readLines(late, 1), ["ACK 1"]);
    late.close();
    const config = podConfig();
    const status = await child.status(config.drainDelayMs + config.drainTimeoutMs + 5000);
    assert.equal(status.code, 0, child.stderr.text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
