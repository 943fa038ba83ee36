/**
 * The version baked into every build, read from `deno.json` at build time.
 *
 * @module
 */
import config from "../deno.json" with { type: "json" };

/** foo-proxy's version (from deno.json). */
export const VERSION: string = config.version;
