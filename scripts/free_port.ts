/**
 * Ports on 127.0.0.1 for a child process to bind later, shared by the tests and the benchmarks.
 *
 * A port read off a port-0 listener and closed is free when read, but it comes from the kernel's
 * ephemeral range (`net.ipv4.ip_local_port_range`): by the time the child binds it, another port-0
 * listener or an outgoing connection's source port may hold it. These are taken below that range,
 * where neither ever lands, and never twice in one process.
 */

/** The lowest ephemeral port (Linux's default where the range cannot be read). */
const EPHEMERAL_LOW = (() => {
  try {
    const text = Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range");
    const low = Number(text.split(/\s+/)[0]);
    return Number.isInteger(low) && low > 10_000 ? low : 32_768;
  } catch {
    return 32_768;
  }
})();

/** How many ports below the ephemeral range are drawn from. */
const SPAN = 10_000;

/** Ports given out in this process. */
const given = new Set<number>();

/** `count` distinct ports that were free a moment ago (bound and closed), below the ephemeral range. */
export function freePorts(count: number, hostname = "127.0.0.1"): number[] {
  const ports: number[] = [];
  for (let attempt = 0; ports.length < count; attempt++) {
    if (attempt >= 1000 * count) {
      throw new Error(
        `no free port on ${hostname} in ${EPHEMERAL_LOW - SPAN}..${EPHEMERAL_LOW - 1}`,
      );
    }
    const port = EPHEMERAL_LOW - SPAN + Math.floor(Math.random() * SPAN);
    if (given.has(port)) continue;
    try {
      Deno.listen({ hostname, port }).close();
    } catch {
      continue; // someone else's
    }
    given.add(port);
    ports.push(port);
  }
  return ports;
}
