/**
 * An address given as a flag's value, with a bad one reported as a usage error naming the flag.
 *
 * @module
 */
import { type Address, parseAddress, type ParseAddressOptions } from "../net/address.ts";
import { UsageError } from "./flags.ts";

/**
 * Parses the value of `--<flag>` with {@linkcode parseAddress}.
 *
 * @throws {UsageError} `--<flag>: <why>` when the value is not an address.
 */
export function parseAddressFlag(
  flag: string,
  text: string,
  options: ParseAddressOptions = {},
): Address {
  try {
    return parseAddress(text, options);
  } catch (error) {
    throw new UsageError(`--${flag}: ${(error as Error).message}`, { cause: error });
  }
}
