/**
 * Readings from Linux's `/proc`: a process's CPU time and resident memory, and the machine's busy
 * time. Deno asks for `--allow-all` to read another process's entries, so the bench scripts run
 * with `-A`. The reads are synchronous on purpose: a reading is taken the moment a progress line
 * of the load generator arrives, and must not wait behind other work of this process.
 *
 * @module
 */

/**
 * CPU seconds (user + system) process `pid` has used, every thread counted; NaN once it has
 * exited.
 */
export function cpuSeconds(pid: number): number {
  let stat: string;
  try {
    stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return NaN;
  }
  // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
}

/** CPU seconds every CPU of the machine has been busy, from `/proc/stat`. */
export function machineBusySeconds(): number {
  const line = Deno.readTextFileSync("/proc/stat").split("\n", 1)[0];
  const [user, nice, system, _idle, _iowait, irq, softirq, steal] = line.split(/\s+/).slice(1)
    .map(Number);
  return (user + nice + system + irq + softirq + steal) / 100;
}

/** Resident set size of `pid` in KiB (VmRSS in `/proc/<pid>/status`). */
export function rssKib(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  if (!m) throw new Error(`No VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/** Reads RSS until two readings 250 ms apart agree within 1 % (at most 3 s). */
export async function settledRss(pid: number): Promise<number> {
  let last = rssKib(pid);
  for (let i = 0; i < 12; i++) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    const now = rssKib(pid);
    if (Math.abs(now - last) <= last * 0.01) return now;
    last = now;
  }
  return last;
}
