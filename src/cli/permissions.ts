/**
 * The proxy's start-up permission preflight: before anything is opened, check that every address
 * and path the configuration names is granted, and otherwise fail with one line naming the
 * permission, the address or path, and the flag to add.
 *
 * @module
 */
import { dirname } from "node:path";
import { type Address, formatAddress } from "./address.ts";

/** What the proxy will touch, from its parsed configuration. */
export interface PermissionTargets {
  /** Where clients connect (listened on). */
  listen: Address;
  /** The upstream Foo server (dialed). */
  forward: Address;
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
}

/** A permission the proxy needs was not granted. The message is the one line to print. */
export class MissingPermissionError extends Error {
  /** The need that was not granted. */
  readonly need: PermissionNeed;
  /** Creates the error for `need`; `message` names the permission, target and flag. */
  constructor(need: PermissionNeed, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "MissingPermissionError";
    this.need = need;
  }
}

/**
 * Every permission `targets` need, in the order they would be used: listen, forward, HTTP and
 * health (when asked for explicitly), then read and write of the recovery file's directory (the
 * file is replaced through a temporary file beside it, so the directory must be writable).
 */
export function permissionNeeds(targets: PermissionTargets): PermissionNeed[] {
  const net = (address: Address, purpose: string): PermissionNeed => {
    const host = formatAddress(address);
    return { descriptor: { name: "net", host }, target: host, purpose };
  };
  const needs = [
    net(targets.listen, "listen --listen"),
    net(targets.forward, "upstream --forward"),
  ];
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
  return needs;
}

/**
 * The one line for a missing `need`. `standalone` words the fix for a compiled binary, whose
 * permissions were fixed when `scripts/release.ts` built it.
 */
export function missingPermissionMessage(need: PermissionNeed, standalone = false): string {
  const name = need.descriptor.name;
  const flag = `--allow-${name}=${need.target}`;
  const access = name === "net" ? "net access to" : `${name} access to`;
  let fix = `run with ${flag} or widen --allow-${name}`;
  if (standalone) {
    fix = name === "net"
      ? `this binary was built with a narrower --allow-net: rebuild it with "deno task compile" ` +
        `(any address) or add ${need.target} to its --allow-net list`
      : `rebuild the binary with "deno task compile --recovery-dir ${need.target}"`;
  }
  return `Missing permission: ${access} ${need.target} (${need.purpose}); ${fix}`;
}

/** Options for {@linkcode assertPermissions}. */
export interface AssertPermissionsOptions {
  /** Queries one permission without prompting; unset: `Deno.permissions.querySync`. */
  query?: (descriptor: PermissionNeed["descriptor"]) => Deno.PermissionState;
  /** Word the fix for a compiled binary; unset: `Deno.build.standalone`. */
  standalone?: boolean;
}

/**
 * Checks every permission `targets` need, without prompting and without opening anything.
 *
 * @throws {MissingPermissionError} for the first one not granted; its message is one line naming
 * the permission, the address or path, and the flag to add.
 */
export function assertPermissions(
  targets: PermissionTargets,
  options: AssertPermissionsOptions = {},
): void {
  const query = options.query ?? ((d) => Deno.permissions.querySync(d).state);
  const standalone = options.standalone ?? Deno.build.standalone;
  for (const need of permissionNeeds(targets)) {
    // "prompt" counts as missing: a server must not stop to ask at a terminal.
    if (query(need.descriptor) !== "granted") {
      throw new MissingPermissionError(need, missingPermissionMessage(need, standalone));
    }
  }
}
