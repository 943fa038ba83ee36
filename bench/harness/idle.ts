/**
 * Idle memory: how much a proxy's resident memory grows per idle proxied connection.
 *
 * @module
 */
import { settledRss } from "./proc_stat.ts";
import { HOST } from "./spawn.ts";

const REQUEST = new TextEncoder().encode("REQ 1\n");

/**
 * Opens `count` connections to `port`, one REQ/ACK on each (so both sides are bridged), pushing
 * each onto `conns` as it opens (so a caller can close them all even when one fails).
 */
export async function openIdle(
  port: number,
  count: number,
  conns: Deno.TcpConn[] = [],
): Promise<Deno.TcpConn[]> {
  for (let i = 0; i < count; i += 200) {
    await Promise.all(
      Array.from({ length: Math.min(200, count - i) }, async () => {
        const conn = await Deno.connect({ hostname: HOST, port });
        conns.push(conn);
        await conn.write(REQUEST);
        const buf = new Uint8Array(64);
        let got = 0;
        while (!buf.subarray(0, got).includes(10)) {
          const n = await conn.read(buf.subarray(got));
          if (n === null) throw new Error("Connection closed before its ACK");
          got += n;
        }
      }),
    );
  }
  return conns;
}

/** One idle-memory measurement. */
export interface IdleSample {
  /** (RSS holding all − RSS before) / count: the figure the targets are about. */
  kibPerConnection: number;
  /** (RSS holding all − RSS holding half) / (count/2): the slope, without one-off growth. */
  marginalKib: number;
  beforeKib: number;
  halfKib: number;
  afterKib: number;
}

function closeAll(conns: Deno.TcpConn[]): void {
  for (const c of conns) {
    try {
      c.close();
    } catch {
      // Closed already.
    }
  }
}

/**
 * Opens and closes 50 connections (so lazily built code paths are not counted), then holds
 * `count` idle connections through `port` and reads the growth of process `pid`'s RSS.
 */
export async function measureIdle(port: number, pid: number, count: number): Promise<IdleSample> {
  const warm: Deno.TcpConn[] = [];
  await openIdle(port, 50, warm).finally(() => closeAll(warm));
  const beforeKib = await settledRss(pid);
  const half = Math.floor(count / 2);
  const conns: Deno.TcpConn[] = [];
  try {
    await openIdle(port, half, conns);
    const halfKib = await settledRss(pid);
    await openIdle(port, count - half, conns);
    const afterKib = await settledRss(pid);
    return {
      kibPerConnection: (afterKib - beforeKib) / count,
      marginalKib: (afterKib - halfKib) / (count - half),
      beforeKib,
      halfKib,
      afterKib,
    };
  } finally {
    closeAll(conns);
  }
}
