/**
 * Parsing an HTTP/1.1 request's line and header fields strictly (RFC 9112), for the admin server:
 * whatever a front proxy or a path ACL could read differently from us is refused, never repaired.
 *
 * @module
 */

/** A request line and header fields that passed every check. */
export interface RequestHead {
  /** One of {@linkcode IMPLEMENTED_METHODS}. */
  method: string;
  /** The origin-form target, in normal form, exactly as sent. */
  target: string;
  /** The path of `target` (before any `?`). */
  path: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number;
  headers: Headers;
}

/** Why a head was refused: the status to answer and a line for the client. */
export interface HeadRefusal {
  status: number;
  message: string;
}

/**
 * The methods handed to the apps (which answer 405 for the ones a path does not take); any other,
 * CONNECT, TRACE and TRACK among them, is 501 for every resource (RFC 9110 §9.1).
 */
export const IMPLEMENTED_METHODS: ReadonlySet<string> = new Set([
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "DELETE",
  "PATCH",
  "OPTIONS",
]);

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^ ]+) HTTP\/1\.([01])$/;
/** RFC 3986 pchar plus `/` in the path; the query adds `?`. */
const ORIGIN_FORM = /^\/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)?$/;
/** A field value: visible characters, spaces, tabs and obs-text; no other control character. */
// deno-lint-ignore no-control-regex -- matching control characters is the point
const FIELD_VALUE = /^[^\x00-\x08\x0a-\x1f\x7f]*$/;
const UNRESERVED = /[A-Za-z0-9\-._~]/;

/**
 * Parses the head (`text`: everything before the blank line, lines split by CRLF; the caller has
 * already refused a bare LF). Returns the head, or the refusal to answer.
 */
export function parseRequestHead(text: string): RequestHead | HeadRefusal {
  const lines = text.split("\r\n");
  if (lines.some((line) => line.includes("\r"))) return bad("bare CR in the request head");
  const m = REQUEST_LINE.exec(lines[0]);
  if (!m) return bad("bad request line");
  const [, method, target, minor] = m;
  if (!IMPLEMENTED_METHODS.has(method)) {
    return { status: 501, message: `method ${method} is not implemented` };
  }
  const problem = targetProblem(target);
  if (problem !== undefined) return bad(problem);
  const headers = new Headers();
  let hosts = 0;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    const name = colon < 0 ? "" : line.slice(0, colon);
    // RFC 9112 §5.1 and §5.2: no space before the colon, no line folding.
    if (!TOKEN.test(name)) return bad("bad header field name");
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (!FIELD_VALUE.test(value)) return bad(`control character in header ${name}`);
    if (name.toLowerCase() === "host") hosts++;
    headers.append(name, value);
  }
  // RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host.
  if (hosts > 1 || (hosts === 0 && minor === "1")) return bad("HTTP/1.1 needs exactly one Host");
  const query = target.indexOf("?");
  return {
    method,
    target,
    path: query < 0 ? target : target.slice(0, query),
    minor: Number(minor),
    headers,
  };
}

/**
 * What makes `target` other than an origin-form target in normal form, or undefined. Normal form
 * (RFC 3986 §6.2.2): no dot segments, and percent-encodings in upper case and only of characters
 * that need them, so the path routed is the path a filter in front of us saw.
 */
export function targetProblem(target: string): string | undefined {
  if (!ORIGIN_FORM.test(target)) return "the request target must be a path (/…) of URI characters";
  if (/%(?![0-9A-Fa-f]{2})/.test(target)) return "bad percent-encoding in the request target";
  const query = target.indexOf("?");
  const path = query < 0 ? target : target.slice(0, query);
  for (const [, hex] of path.matchAll(/%(..)/g)) {
    if (hex !== hex.toUpperCase() || UNRESERVED.test(String.fromCharCode(parseInt(hex, 16)))) {
      return "the request target is not in normal form (a needless or lower-case %-encoding)";
    }
  }
  if (path.split("/").some((segment) => segment === "." || segment === "..")) {
    return "the request target is not in normal form (a . or .. segment)";
  }
  return undefined;
}

/** Whether `head` is a refusal. */
export function isRefusal<T extends object>(head: T | HeadRefusal): head is HeadRefusal {
  return "status" in head;
}

function bad(message: string): HeadRefusal {
  return { status: 400, message };
}
