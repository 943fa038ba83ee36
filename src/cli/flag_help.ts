/**
 * `--help` text, synopses and the README's flag tables, all generated from the one definition of
 * each flag ({@linkcode FlagSpec}), so the reference cannot drift from the parser.
 *
 * @module
 */
import type { FlagSpec } from "./flags.ts";

/** How a flag is written in help: `--listen ADDR`, `-h, --help`, `--resume[=MODE]`. */
export function flagUsage(name: string, spec: FlagSpec): string {
  const short = spec.short ? `-${spec.short}, ` : "";
  const value = spec.value === undefined
    ? ""
    : spec.optionalValue
    ? `[=${spec.value}]`
    : ` ${spec.value}`;
  return `${short}--${name}${value}`;
}

/** What help says the default is: `defaultText`, else the default value, else nothing. */
export function defaultOf(spec: FlagSpec): string | undefined {
  if (spec.defaultText !== undefined) return spec.defaultText;
  if (typeof spec.default === "string") return spec.default;
  if (spec.default === false && spec.type === "boolean") return "off";
  return undefined;
}

/** Options for {@linkcode formatFlagHelp}. */
export interface FlagHelpOptions {
  /** Line width to wrap at. @default {100} */
  width?: number;
}

/**
 * The flag lines of `--help`: each flag, padded to one column, then its help and default,
 * wrapped to `width`.
 */
export function formatFlagHelp(
  specs: Record<string, FlagSpec>,
  options: FlagHelpOptions = {},
): string {
  const width = options.width ?? 100;
  const entries = Object.entries(specs);
  const column = Math.min(32, 2 + Math.max(...entries.map(([n, s]) => flagUsage(n, s).length)) + 2);
  const lines: string[] = [];
  for (const [name, spec] of entries) {
    const head = `  ${flagUsage(name, spec)}`;
    const dflt = defaultOf(spec);
    const text = `${spec.help ?? ""}${dflt === undefined ? "" : ` (default ${dflt})`}`;
    const wrapped = wrap(text, width - column);
    if (head.length + 1 > column) {
      lines.push(head);
      for (const line of wrapped) lines.push(" ".repeat(column) + line);
    } else {
      lines.push(head.padEnd(column) + (wrapped[0] ?? ""));
      for (const line of wrapped.slice(1)) lines.push(" ".repeat(column) + line);
    }
  }
  return lines.join("\n");
}

/** `[--listen ADDR] [--forward ADDR] …` for usage errors and the top of `--help`. */
export function formatSynopsis(specs: Record<string, FlagSpec>): string {
  return Object.entries(specs)
    .filter(([name]) => name !== "help" && name !== "version")
    .map(([name, spec]) => `[${flagUsage(name, { ...spec, short: undefined })}]`)
    .join(" ");
}

/** The README's Markdown table of `specs`: flag, default, environment variable, meaning. */
export function formatFlagTable(
  specs: Record<string, FlagSpec>,
  envName: (flag: string) => string,
): string {
  const esc = (text: string) => text.replaceAll("|", "\\|");
  const rows = Object.entries(specs).map(([name, spec]) => {
    const dflt = defaultOf(spec);
    const env = spec.env === false ? "" : `\`${envName(name)}\``;
    return `| \`${esc(flagUsage(name, spec))}\` | ${
      dflt === undefined ? "" : `\`${esc(dflt)}\``
    } | ${env} | ${esc(spec.help ?? "")} |`;
  });
  return ["| flag | default | environment | meaning |", "| --- | --- | --- | --- |", ...rows].join(
    "\n",
  );
}

function wrap(text: string, width: number): string[] {
  const words = text.split(/\s+/).filter((w) => w !== "");
  const lines: string[] = [];
  let line = "";
  for (const word of words) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  if (line !== "") lines.push(line);
  return lines;
}
