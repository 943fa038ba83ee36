/**
 * The proxy's start-up permission preflight: before anything is opened, check that every address
 * and path the configuration names is granted, and otherwise fail with one line naming the
 * permission, the address or path, and the flag to add.
 *
 * @module
 */
import { dirname } from "node:path";
import { type Address, formatAddress } from "../net/address.ts";

/** What the proxy will touch, from its parsed configuration. */
export interface PermissionTargets {
  /** Where clients connect (listened on). */
  listen: Address;
  /** The upstream Foo server (dialed). */
  forward: Address;
  /** Every upstream when there are several (each dialed); unset: `forward` alone. */
  upstreams?: readonly { address: Address; dns?: true }[];
  /** The stats HTTP server's address; unset, `null` or `false`: not served. */
  http?: Address | null | false;
  /** The health HTTP server's address; unset, `null` or `false`: not served. */
  health?: Address | null | false;
  /**
   * Whether `http` was asked for (`--http ADDR`). `false`: it is the default address, which the
   * proxy serves only if it can (it logs a warning and runs without it otherwise), so it is not
   * checked here. Unset: checked.
   */
  httpExplicit?: boolean;
  /** Like `httpExplicit`, for `health` (`--health ADDR`). Unset: checked. */
  healthExplicit?: boolean;
  /** The recovery file; unset, `null` or `""`: none (no file access at all). */
  recoveryPath?: string | null;
  /** The pid file; unset, `null` or `""`: none. */
  pidFile?: string | null;
  /** The access-log file; unset, `null` or `""`: none (stderr). */
  accessLogFile?: string | null;
  /** `--upstream-ca`, `--upstream-cert`, `--upstream-key` (read at start and on reload). */
  upstreamCa?: string | null;
  upstreamCert?: string | null;
  upstreamKey?: string | null;
  /** The TLS certificate and key files (read at start and at each reload); unset: none. */
  tlsCert?: string | null;
  tlsKey?: string | null;
  /** The WebSocket listener's address (`--ws-listen`); unset or `null`: none. */
  wsListen?: Address | null;
}

/** One permission the proxy needs, with the words used when it is missing. */
export interface PermissionNeed {
  /** What to query. */
  descriptor:
    | Deno.NetPermissionDescriptor
    | Deno.ReadPermissionDescriptor
    | Deno.WritePermissionDescriptor;
  /** The address or path, as the flag takes it: `127.0.0.1:8001`, `/var/lib/foo-proxy`. */
  target: string;
  /** Why it is needed, naming the flag that asked for it: `upstream --forward`. */
  purpose: string;
  /**
   * Only read, never written (a TLS file): a binary is rebuilt with `--allow-read=PATH`, not
   * with the read and write of `--recovery-dir`. Unset: not known to be read only.
   */
  readOnly?: boolean;
}

/** The target of a net permission to every address (`--allow-net` without a list). */
const ANY_ADDRESS = "any address";

/** Permissions the proxy needs were not granted. The message is the one line to print. */
export class MissingPermissionError extends Error {
  /** The first need that was not granted. */
  readonly need: PermissionNeed;
  /** Every need that was not granted, in order. */
  readonly needs: PermissionNeed[];
  /** Creates the error for `needs` (at least one); `message` names them and the fix. */
  constructor(needs: PermissionNeed[], message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "MissingPermissionError";
    this.needs = needs;
    this.need = needs[0];
  }
}

/**
 * Every permission `targets` need, in the order they would be used: listen (and the WebSocket
 * listener), forward, HTTP and health (when asked for explicitly), then the files: read and
 * write of the recovery file's directory (the file is replaced through a temporary file beside
 * it, so the directory must be writable) and of the access log, read only of the TLS files, read
 * and write of the pid file.
 */
export function permissionNeeds(targets: PermissionTargets): PermissionNeed[] {
  const net = (address: Address, purpose: string): PermissionNeed => {
    const host = formatAddress(address);
    return { descriptor: { name: "net", host }, target: host, purpose };
  };
  const upstreams = targets.upstreams?.filter((u) => !u.dns).map((u) => u.address) ??
    [targets.forward];
  const needs: PermissionNeed[] = [
    net(targets.listen, "listen --listen"),
    ...(targets.wsListen ? [net(targets.wsListen, "WebSocket listen --ws-listen")] : []),
    ...upstreams.map((address) => net(address, "upstream --forward")),
  ];
  // The records' addresses, and the system resolver's name servers, are known only at run time:
  // Deno checks net access to the name server it asks, and to every address dialed.
  if (targets.upstreams?.some((u) => u.dns)) {
    needs.push({
      descriptor: { name: "net" },
      target: ANY_ADDRESS,
      purpose: "upstreams from DNS --forward dns+NAME:PORT and their name server",
    });
  }
  if (targets.http && targets.httpExplicit !== false) {
    needs.push(net(targets.http, "stats HTTP --http"));
  }
  if (targets.health && targets.healthExplicit !== false) {
    needs.push(net(targets.health, "health HTTP --health"));
  }
  if (targets.recoveryPath) {
    const path = dirname(targets.recoveryPath);
    const purpose = "recovery file --recovery-path";
    needs.push({ descriptor: { name: "read", path }, target: path, purpose });
    needs.push({ descriptor: { name: "write", path }, target: path, purpose });
  }
  if (targets.accessLogFile) {
    // Read too: the path is lstat'ed, so that a symbolic link planted there is never followed.
    const path = targets.accessLogFile;
    const purpose = "access log --access-log-file";
    needs.push({ descriptor: { name: "read", path }, target: path, purpose });
    needs.push({ descriptor: { name: "write", path }, target: path, purpose });
  }
  for (
    const [path, flag] of [
      [targets.upstreamCa, "--upstream-ca"],
      [targets.upstreamCert, "--upstream-cert"],
      [targets.upstreamKey, "--upstream-key"],
      [targets.tlsCert, "--tls-cert"],
      [targets.tlsKey, "--tls-key"],
    ] as const
  ) {
    if (path) {
      const purpose = `TLS file ${flag}`;
      needs.push({ descriptor: { name: "read", path }, target: path, purpose, readOnly: true });
    }
  }
  if (targets.pidFile) {
    const path = targets.pidFile;
    const purpose = "pid file --pid-file";
    needs.push({ descriptor: { name: "read", path }, target: path, purpose });
    needs.push({ descriptor: { name: "write", path }, target: path, purpose });
  }
  return needs;
}

/** Options for {@linkcode missingPermissionsMessage}. */
export interface MissingMessageOptions {
  /** Word the fix for a compiled binary (its permissions were fixed when it was built). */
  standalone?: boolean;
  /**
   * The proxy's own arguments, quoted into the `deno run` line that works (a task such as
   * `deno task start` cannot take more permission flags). A leading `proxy` (the whole of
   * `Deno.args`, as `deno task start` passes it) is dropped: the line names the subcommand itself.
   * Unset: no arguments shown.
   */
  args?: readonly string[];
  /** The permission flags the process runs with today, kept in the line. @default {see below} */
  baseFlags?: readonly string[];
}

/**
 * What `deno task start` grants (less its `examples` read): the base of the suggested `deno run`
 * line, so the command it suggests runs on every core (the workers load from `src/` and share
 * the port with `--unstable-net`).
 */
const START_FLAGS = [
  "--allow-net",
  "--allow-env=FOO_PROXY_*",
  "--allow-read=src",
  "--unstable-net",
];

/**
 * The one line for the missing `needs`: each permission with its target and the flag that
 * asked for it, then the exact command that grants them all (or, for a compiled binary, how to
 * rebuild it).
 */
export function missingPermissionsMessage(
  needs: readonly PermissionNeed[],
  options: MissingMessageOptions = {},
): string {
  const what = needs.map((need) => {
    const name = need.descriptor.name;
    return `${name === "net" ? "net" : name} access to ${need.target} (${need.purpose})`;
  });
  const head = `Missing permission${needs.length > 1 ? "s" : ""}: ${what.join(", ")}`;
  if (options.standalone) {
    // Files only read (TLS files) are granted together by one --allow-read list of the build.
    const readOnly = needs.filter((need) => need.readOnly).map((need) => need.target);
    const fixes = needs.map((need) =>
      need.target === ANY_ADDRESS
        ? `this binary was built with a narrower --allow-net: rebuild it with "deno task compile" (any address)`
        : need.descriptor.name === "net"
        ? `this binary was built with a narrower --allow-net: rebuild it with "deno task compile" ` +
          `(any address) or add ${need.target} to its --allow-net list`
        : need.readOnly
        ? `rebuild the binary with "deno task compile --allow-read=${
          [...new Set(readOnly)].join(",")
        }"`
        : `rebuild the binary with "deno task compile --recovery-dir ${need.target}"`
    );
    return `${head}; ${[...new Set(fixes)].join("; ")}`;
  }
  const flags = [...(options.baseFlags ?? START_FLAGS)];
  for (const need of needs) {
    const name = need.descriptor.name;
    if (name === "net") {
      if (need.target === ANY_ADDRESS) {
        const narrow = flags.filter((f) => f.startsWith("--allow-net="));
        for (const flag of narrow) flags.splice(flags.indexOf(flag), 1);
        if (!flags.includes("--allow-net")) flags.push("--allow-net");
      } else if (!flags.some((f) => f === "--allow-net")) flags.push(`--allow-net=${need.target}`);
    } else {
      const flag = `--allow-${name}=${need.target}`;
      if (!flags.includes(flag)) flags.push(flag);
    }
  }
  const given = options.args ?? [];
  const args = (given[0] === "proxy" ? given.slice(1) : given).map(shellWord).join(" ");
  return `${head}; run: deno run ${flags.map(shellWord).join(" ")} src/main.ts proxy` +
    (args === "" ? "" : ` ${args}`) +
    " (deno task start cannot take more permission flags)";
}

/** Quotes `word` for a POSIX shell when it needs it. */
function shellWord(word: string): string {
  if (word !== "" && /^[\w@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Options for {@linkcode assertPermissions}. */
export interface AssertPermissionsOptions {
  /** Queries one permission without prompting; unset: `Deno.permissions.querySync`. */
  query?: (descriptor: PermissionNeed["descriptor"]) => Deno.PermissionState;
  /** Word the fix for a compiled binary; unset: `Deno.build.standalone`. */
  standalone?: boolean;
  /** The proxy's arguments, for the suggested command. Unset: none shown. */
  args?: readonly string[];
}

/**
 * Checks every permission `targets` need, without prompting and without opening anything.
 *
 * @throws {MissingPermissionError} naming every one not granted, and the command that grants
 * them, in one line.
 */
export function assertPermissions(
  targets: PermissionTargets,
  options: AssertPermissionsOptions = {},
): void {
  const query = options.query ?? ((d) => Deno.permissions.querySync(d).state);
  const standalone = options.standalone ?? Deno.build.standalone;
  // "prompt" counts as missing: a server must not stop to ask at a terminal.
  const missing = permissionNeeds(targets).filter((need) => query(need.descriptor) !== "granted");
  if (missing.length > 0) {
    throw new MissingPermissionError(
      missing,
      missingPermissionsMessage(missing, { standalone, args: options.args }),
    );
  }
}
