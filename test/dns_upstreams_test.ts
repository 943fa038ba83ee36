/**
 * Upstreams from DNS (issue 21): `--forward dns+NAME:PORT` takes the A records of NAME, asked of our
 * own name server on 127.0.0.1 (`node:dgram`: no `--unstable-net` here) whose answers change during
 * the test. A record that appears joins and gets traffic, one that vanishes drains (its open
 * connection is served to the end, no new one), and a failing resolver keeps the set and counts.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { Buffer } from "node:buffer";
import { MAX_UPSTREAMS, parseUpstreams } from "../src/cli/upstreams.ts";
import { permissionNeeds } from "../src/cli/permissions.ts";
import { DnsUpstreams } from "../src/cmd/dns_upstreams.ts";
import {
  connectTo,
  freePort,
  LineReader,
  lockStepClient,
  recordingLogger,
  spawnMain,
  spawnWithConfig,
  startUpstream,
  waitUntil,
  writeAll,
} from "./_util.ts";

/** What the name server answers for a name: A records, or a failure code. */
type Answer = string[] | "servfail" | "nxdomain";

/** A small authoritative DNS server over UDP: A records from `answers`, nothing else. */
async function startDnsServer(answers: Map<string, Answer>) {
  const socket = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  let queries = 0;
  socket.on("message", (query: Buffer, peer: dgram.RemoteInfo) => {
    queries++;
    const labels: string[] = [];
    let at = 12;
    while (query[at] !== 0) {
      labels.push(query.subarray(at + 1, at + 1 + query[at]).toString("latin1"));
      at += query[at] + 1;
    }
    const questionEnd = at + 5;
    const type = query.readUInt16BE(at + 1);
    const answer = answers.get(labels.join(".").toLowerCase()) ?? "nxdomain";
    const rcode = answer === "servfail" ? 2 : answer === "nxdomain" ? 3 : 0;
    const records = Array.isArray(answer) && type === 1 ? answer : [];
    const header = Buffer.alloc(12);
    header.writeUInt16BE(query.readUInt16BE(0), 0);
    header.writeUInt16BE(0x8580 | rcode, 2); // response, authoritative, RD and RA
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(records.length, 6);
    const rrs = records.map((ip) => {
      const rr = Buffer.alloc(16);
      rr.writeUInt16BE(0xc00c, 0); // the question's name
      rr.writeUInt16BE(1, 2); // A
      rr.writeUInt16BE(1, 4); // IN
      rr.writeUInt32BE(0, 6); // TTL 0
      rr.writeUInt16BE(4, 10);
      ip.split(".").forEach((octet, i) => rr.writeUInt8(Number(octet), 12 + i));
      return rr;
    });
    socket.send(
      Buffer.concat([header, query.subarray(12, questionEnd), ...rrs]),
      peer.port,
      peer.address,
    );
  });
  return {
    port: (socket.address() as { port: number }).port,
    get queries() {
      return queries;
    },
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

/**
 * A proxy forwarding to `dns+svc.test:PORT`, asking the name server on `dnsPort` every second,
 * checking upstreams every 100 ms; resolves once it listens.
 */
async function spawnDnsProxy(port: number, dnsPort: number) {
  const http = freePort();
  const child = spawnMain([
    "proxy",
    "--listen=127.0.0.1:0",
    `--http=127.0.0.1:${http}`,
    "--health=off",
    `--forward=dns+svc.test:${port}`,
    `--dns-server=127.0.0.1:${dnsPort}`,
    "--dns-interval=1s",
    "--health-interval=100ms",
    "--health-rise=1",
  ]);
  try {
    const listening = await child.stderr.waitFor(/Listening on 127\.0\.0\.1:(\d+)/, 20_000);
    return { child, http, proxyPort: Number(listening[1]) };
  } catch (error) {
    await child[Symbol.asyncDispose]();
    throw error;
  }
}

interface Row {
  name: string;
  state: string;
  connections_active: number;
  connections_total: number;
}

/** One REQ/ACK round trip on a fresh client through `port`; the client stays open. */
async function served(port: number, seq = 1): Promise<{ conn: Deno.TcpConn; reader: LineReader }> {
  const conn = await connectTo(port);
  const reader = new LineReader(conn);
  await writeAll(conn, `REQ ${seq}\n`);
  assert.deepEqual(await reader.readLines(1), [`ACK ${seq}`]);
  return { conn, reader };
}

Deno.test("dns+NAME:PORT: a record that appears joins and gets traffic, one that vanishes drains, a failing resolver keeps the set and counts", async () => {
  // Two upstreams on one port, at two loopback addresses: the port is the --forward entry's.
  await using a = await startUpstream();
  const port = a.addr.port;
  await using _b = await startUpstream({ listen: { hostname: "127.0.0.2", port } });
  const answers = new Map<string, Answer>([["svc.test", ["127.0.0.1"]]]);
  const dns = await startDnsServer(answers);
  try {
    const { child, http, proxyPort } = await spawnDnsProxy(port, dns.port);
    await using _child = child;
    const json = async (path: string) =>
      await (await fetch(`http://127.0.0.1:${http}${path}`)).json();
    const rows = async () =>
      Object.fromEntries(((await json("/upstreams")) as Row[]).map((u) => [u.name, u]));
    const nameA = `svc.test:${port}@127.0.0.1`;
    const nameB = `svc.test:${port}@127.0.0.2`;
    assert.deepEqual(Object.keys(await rows()), [nameA], "resolved before serving");

    const first = await served(proxyPort, 1);
    assert.equal((await rows())[nameA].connections_active, 1);

    // A record appears: it joins, is checked, and takes the next client (leastconn: a has one).
    answers.set("svc.test", ["127.0.0.1", "127.0.0.2"]);
    await waitUntil(async () => (await rows())[nameB]?.state === "up", "b to join and be up");
    const second = await served(proxyPort, 1);
    await waitUntil(
      async () => (await rows())[nameB]?.connections_active === 1,
      "the new record to get the next client",
    );

    // A record vanishes: a drains; its open client is still served, new ones go to b.
    answers.set("svc.test", ["127.0.0.2"]);
    await waitUntil(async () => (await rows())[nameA]?.state === "draining", "a to drain");
    await writeAll(first.conn, "REQ 2\n");
    assert.deepEqual(await first.reader.readLines(1), ["ACK 2"], "the draining one still serves");
    const third = await served(proxyPort, 1);
    let now = await rows();
    assert.equal(now[nameA].connections_total, 1, "no new client on the vanished record");
    assert.equal(now[nameB].connections_total, 2);
    first.conn.close();
    await waitUntil(async () => !(nameA in await rows()), "a to leave once its client is done");

    // The resolver fails: the set is kept, the failures counted.
    const before = dns.queries;
    answers.set("svc.test", "servfail");
    await waitUntil(
      async () => (await json("/stats")).dns_resolve_failures >= 2 && dns.queries > before,
      "failures to be counted",
    );
    answers.set("svc.test", "nxdomain");
    const counted = (await json("/stats")).dns_resolve_failures;
    await waitUntil(
      async () => (await json("/stats")).dns_resolve_failures > counted,
      "an NXDOMAIN to be counted",
    );
    now = await rows();
    assert.deepEqual(Object.keys(now), [nameB], "the last good set is kept");
    assert.equal(now[nameB].state, "up");
    const fourth = await served(proxyPort, 1);
    assert.equal((await rows())[nameB].connections_total, 3);
    assert.match(child.stderr.text, /dns\+svc\.test could not be resolved/);
    for (const c of [second, third, fourth]) c.conn.close();
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0);
  } finally {
    await dns.close();
  }
});

/** Fresh clients, one REQ/ACK each, until `stop()`: resolves with how many were served. */
function newClients(port: number) {
  let stopped = false;
  let count = 0;
  const done = (async () => {
    while (!stopped) {
      const { conn } = await served(port, 1);
      conn.close();
      count++;
    }
    return count;
  })();
  done.catch(() => {});
  return {
    stop: () => {
      stopped = true;
      return done;
    },
  };
}

Deno.test("dns+NAME:PORT under load: records appear, vanish and fail to resolve while clients run, and none is dropped", async () => {
  await using a = await startUpstream();
  const port = a.addr.port;
  await using _b = await startUpstream({ listen: { hostname: "127.0.0.2", port } });
  await using _c = await startUpstream({ listen: { hostname: "127.0.0.3", port } });
  const answers = new Map<string, Answer>([["svc.test", ["127.0.0.1"]]]);
  const dns = await startDnsServer(answers);
  try {
    const { child, http, proxyPort } = await spawnDnsProxy(port, dns.port);
    await using _child = child;
    const rows = async () =>
      Object.fromEntries(
        ((await (await fetch(`http://127.0.0.1:${http}/upstreams`)).json()) as Row[])
          .map((u) => [u.name.replace(/^.*@/, ""), u]),
      );
    const steady = await Promise.all([1, 2, 3].map(() => lockStepClient(proxyPort)));
    const fresh = [newClients(proxyPort), newClients(proxyPort)];
    answers.set("svc.test", ["127.0.0.1", "127.0.0.2"]);
    await waitUntil(async () => (await rows())["127.0.0.2"]?.connections_total > 0, "b to serve");
    answers.set("svc.test", ["127.0.0.2", "127.0.0.3"]);
    await waitUntil(async () => (await rows())["127.0.0.3"]?.connections_total > 0, "c to serve");
    assert.equal((await rows())["127.0.0.1"]?.state, "draining", "a drains, its clients served");
    answers.set("svc.test", "servfail");
    await waitUntil(
      async () =>
        (await (await fetch(`http://127.0.0.1:${http}/stats`)).json()).dns_resolve_failures > 0,
      "a failure to be counted",
    );
    answers.set("svc.test", ["127.0.0.3"]);
    await waitUntil(async () => (await rows())["127.0.0.2"]?.state !== "up", "b to drain");
    const served = await Promise.all([...steady, ...fresh].map((client) => client.stop()));
    assert.ok(served.every((n) => n > 0), `each client was served: ${served}`);
    const stats = await (await fetch(`http://127.0.0.1:${http}/stats`)).json();
    const sent = served.slice(0, 3).reduce((x, y) => x + y, 0) + served[3] + served[4];
    assert.equal(stats.msg_req, sent, "every REQ sent reached the proxy");
    assert.equal(stats.msg_ack, sent, "and was answered");
    assert.deepEqual(
      Object.keys(stats.connections_closed).filter((reason) => reason !== "client_closed"),
      [],
      "no connection closed for any reason but its client's",
    );
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0);
  } finally {
    await dns.close();
  }
});

Deno.test("--forward dns+: plain HOST:PORT keeps its meaning, an address after dns+ is refused, each name counts 64 toward the limit", () => {
  assert.deepEqual(parseUpstreams(["db.svc:8001"]), [
    { name: "db.svc:8001", address: { hostname: "db.svc", port: 8001 }, weight: 1 },
  ]);
  assert.deepEqual(parseUpstreams(["b=dns+db.svc:8001*2"]), [
    { name: "b", address: { hostname: "db.svc", port: 8001 }, weight: 2, dns: true },
  ]);
  assert.throws(() => parseUpstreams(["dns+10.0.0.1:8001"]), /needs a DNS name/);
  const names = Array.from({ length: MAX_UPSTREAMS / 64 + 1 }, (_, i) => `dns+n${i}.svc:8001`);
  assert.throws(() => parseUpstreams(names), /at most 1000/);
});

Deno.test("--forward dns+ needs net access to any address: the records and the name server are known only at run time", async () => {
  const needs = permissionNeeds({
    listen: { hostname: "127.0.0.1", port: 8002 },
    forward: { hostname: "db.svc", port: 8001 },
    upstreams: parseUpstreams(["dns+db.svc:8001"]),
  });
  assert.deepEqual(needs.map((n) => n.descriptor), [
    { name: "net", host: "127.0.0.1:8002" },
    { name: "net" },
  ]);
  await using child = spawnMain(["proxy", "--listen=127.0.0.1:0", "--forward=dns+db.svc:8001"], {
    permissions: ["--allow-net=127.0.0.1,db.svc", "--allow-env=FOO_PROXY_*"],
  });
  assert.equal((await child.status()).code, 2);
  assert.match(
    child.stderr.text,
    /Missing permission: net access to any address \(upstreams from DNS .*run: deno run --allow-net /,
  );
});

Deno.test("dns+: at most 64 records a name (the same ones whatever the order), an empty answer or a failed AAAA query keeps the last good set", async () => {
  const { logger, warnings } = recordingLogger();
  const counters = { dnsResolveFailures: 0 };
  let a: string[] | Error = Array.from({ length: 70 }, (_, i) => `10.0.0.${i + 1}`).reverse();
  let aaaa: string[] | Error = new Deno.errors.NotFound("no records found");
  const answer = (value: string[] | Error) =>
    value instanceof Error ? Promise.reject(value) : Promise.resolve(value);
  const dns = new DnsUpstreams({
    intervalMs: 1000,
    nameServer: null,
    counters,
    logger,
    resolve: (_name, type) => answer(type === "A" ? a : aaaa),
  });
  const specs = parseUpstreams(["db=dns+db.svc:8001*2", "x.svc:9"]);
  dns.setSpecs(specs);
  assert.deepEqual(dns.expand(specs), specs, "a name without an answer stands for itself");
  assert.equal(await dns.refresh(), true);
  const taken = dns.expand(specs);
  assert.equal(taken.length, 64 + 1);
  assert.deepEqual(taken[0], {
    name: "db@10.0.0.1",
    address: { hostname: "10.0.0.1", port: 8001 },
    weight: 2,
  });
  assert.equal(taken.at(-1)!.name, "x.svc:9");
  assert.match(warnings.join(), /70 records, only the first \{max\}|"count":70/);
  a = [...(a as string[])].reverse(); // the same records in another order: no change
  assert.equal(await dns.refresh(), false);
  a = [];
  assert.equal(await dns.refresh(), false, "an empty answer changes nothing");
  a = ["10.0.0.1"];
  aaaa = new Error("request timed out");
  assert.equal(await dns.refresh(), false, "a failed AAAA query keeps the IPv6 side too");
  assert.equal(counters.dnsResolveFailures, 2);
  assert.deepEqual(dns.expand(specs), taken);
  assert.equal(
    warnings.filter((w) => w.includes("could not be resolved")).length,
    1,
    "rate-limited",
  );
});

Deno.test("a reload that adds a dns+ name resolves it before the set is applied", async () => {
  await using upstream = await startUpstream();
  const port = upstream.addr.port;
  const dns = await startDnsServer(new Map([["svc.test", ["127.0.0.1"]]]));
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/proxy.json`;
    await Deno.writeTextFile(path, JSON.stringify({ forward: [`plain=127.0.0.1:${port}`] }));
    const http = freePort();
    await using child = spawnWithConfig(dir, path, http, [`--dns-server=127.0.0.1:${dns.port}`]);
    await child.stderr.waitFor(/Listening on/, 20_000);
    await Deno.writeTextFile(
      path,
      JSON.stringify({ forward: [`plain=127.0.0.1:${port}`, `svc=dns+svc.test:${port}`] }),
    );
    child.kill("SIGHUP");
    await child.stderr.waitFor(/Reloaded .*svc@127\.0\.0\.1 added/);
    const rows: Row[] = await (await fetch(`http://127.0.0.1:${http}/upstreams`)).json();
    assert.deepEqual(rows.map((u) => u.name), ["plain", "svc@127.0.0.1"]);
    child.kill("SIGTERM");
    assert.equal((await child.status()).code, 0);
  } finally {
    await dns.close();
    await Deno.remove(dir, { recursive: true });
  }
});
