/**
 * A strict parser for the block-style YAML subset the Kubernetes manifests in `deploy/kubernetes/`
 * use, so that their test needs no YAML dependency: one document per file; block mappings and
 * sequences (a sequence indented under its key); `- key: value` and `- |` items;
 * plain, double-quoted (JSON) and single-quoted scalars; flow sequences written as JSON
 * (`["ALL"]`); `|` literal blocks; full-line comments. Plain `true`/`false`/`null` and integers
 * are typed as YAML 1.2's core schema types them. Anything else (tabs, anchors, tags, flow
 * mappings, folded blocks, multi-line plain scalars, comments after a value, plain scalars a YAML
 * parser could read differently) throws naming the line, rather than being guessed at.
 *
 * @module
 */

/** A parsed YAML value. */
export type YamlValue = string | number | boolean | null | YamlValue[] | {
  [key: string]: YamlValue;
};

interface Line {
  /** 1-based line number. */
  number: number;
  indent: number;
  /** The line without its indent. */
  text: string;
}

const KEY = /^([A-Za-z0-9_./-]+):(?: (.*))?$/;
const ITEM_KEY = /^[A-Za-z0-9_./-]+:(?: |$)/;

/** Parses `source` (one document of the subset above). @throws {SyntaxError} naming the line. */
export function parseYaml(source: string): YamlValue {
  const parser = new Parser(source);
  return parser.document();
}

class Parser {
  #raw: string[];
  #pos = 0;
  /** A line rewritten in place: the mapping that starts on a `- ` item's line. */
  #override: Line | undefined;

  constructor(source: string) {
    this.#raw = source.split("\n");
    if (this.#raw.at(-1) === "") this.#raw.pop();
    this.#raw.forEach((line, index) => {
      if (line.includes("\t")) this.#fail(index + 1, "a tab");
      if (line.endsWith(" ")) this.#fail(index + 1, "trailing spaces");
    });
  }

  document(): YamlValue {
    const first = this.#peek();
    if (first === undefined) throw new SyntaxError("an empty document");
    if (first.indent !== 0) this.#fail(first.number, "the document does not start at column 0");
    const value = this.#block(0);
    const rest = this.#peek();
    if (rest !== undefined) this.#fail(rest.number, "unexpected indentation or content");
    return value;
  }

  #fail(line: number, what: string): never {
    throw new SyntaxError(`line ${line}: ${what} (outside the YAML subset test/_yaml.ts reads)`);
  }

  /** The next line with content (blank and comment lines skipped), not consumed. */
  #peek(): Line | undefined {
    if (this.#override) return this.#override;
    while (this.#pos < this.#raw.length) {
      const raw = this.#raw[this.#pos];
      const text = raw.trimStart();
      if (text === "" || text.startsWith("#")) {
        this.#pos++;
        continue;
      }
      if (text === "---" || text.startsWith("--- ") || text === "...") {
        this.#fail(this.#pos + 1, "a document marker (one document per file)");
      }
      return { number: this.#pos + 1, indent: raw.length - text.length, text };
    }
    return undefined;
  }

  #take(): void {
    if (this.#override) this.#override = undefined;
    else this.#pos++;
  }

  #block(indent: number): YamlValue {
    const line = this.#peek()!;
    return line.text === "-" || line.text.startsWith("- ")
      ? this.#sequence(indent)
      : this.#mapping(indent);
  }

  #mapping(indent: number): YamlValue {
    const map: Record<string, YamlValue> = {};
    for (let line = this.#peek(); line !== undefined; line = this.#peek()) {
      if (line.indent < indent) break;
      if (line.indent > indent) this.#fail(line.number, "unexpected indentation");
      const match = KEY.exec(line.text);
      if (!match) this.#fail(line.number, "not a `key: value` line");
      const [, key, value] = match;
      if (Object.hasOwn(map, key)) this.#fail(line.number, `the key "${key}" twice`);
      this.#take();
      if (value === "|") map[key] = this.#literal(indent, line.number);
      else if (value !== undefined) map[key] = scalar(value, line.number, (w) => this.#fail(...w));
      else {
        const next = this.#peek();
        if (next === undefined || next.indent <= indent) {
          this.#fail(line.number, `no value for "${key}" (write null)`);
        }
        map[key] = this.#block(next.indent);
      }
    }
    return map;
  }

  #sequence(indent: number): YamlValue {
    const list: YamlValue[] = [];
    for (let line = this.#peek(); line !== undefined; line = this.#peek()) {
      if (line.indent < indent) break;
      if (line.indent > indent) this.#fail(line.number, "unexpected indentation");
      if (line.text !== "-" && !line.text.startsWith("- ")) {
        this.#fail(line.number, "a mapping key among sequence items");
      }
      const rest = line.text.slice(2);
      if (rest === "" || rest.startsWith(" ")) this.#fail(line.number, "an empty or nested item");
      if (ITEM_KEY.test(rest)) {
        // `- key: value`: a mapping whose first key is on the item's line, two columns in.
        this.#take();
        this.#override = { number: line.number, indent: indent + 2, text: rest };
        list.push(this.#mapping(indent + 2));
      } else if (rest === "|") {
        this.#take();
        list.push(this.#literal(indent, line.number));
      } else {
        this.#take();
        list.push(scalar(rest, line.number, (w) => this.#fail(...w)));
      }
    }
    return list;
  }

  /** A `|` block: the lines indented past `parentIndent`, with one final newline. */
  #literal(parentIndent: number, keyLine: number): string {
    const lines: string[] = [];
    let blockIndent = -1;
    while (this.#pos < this.#raw.length) {
      const raw = this.#raw[this.#pos];
      const text = raw.trimStart();
      const indent = raw.length - text.length;
      if (text !== "") {
        if (indent <= parentIndent) break;
        if (blockIndent < 0) blockIndent = indent;
        if (indent < blockIndent) this.#fail(this.#pos + 1, "a literal line indented less");
      }
      lines.push(text === "" ? "" : raw.slice(blockIndent));
      this.#pos++;
    }
    while (lines.at(-1) === "") lines.pop();
    if (lines.length === 0) this.#fail(keyLine, "an empty literal block");
    return lines.join("\n") + "\n";
  }
}

const PLAIN_START = /^[^\s\-?:,[\]{}#&*!|>'"%@`]/;
const INTEGER = /^-?(?:0|[1-9]\d*)$/;

function scalar(
  text: string,
  line: number,
  fail: (why: [number, string]) => never,
): YamlValue {
  if (text.startsWith('"')) {
    try {
      const value = JSON.parse(text);
      if (typeof value === "string") return value;
    } catch {
      // below
    }
    return fail([line, "a double-quoted string that is not a JSON string"]);
  }
  if (text.startsWith("'")) {
    if (!/^'(?:[^']|'')*'$/.test(text)) return fail([line, "a bad single-quoted string"]);
    return text.slice(1, -1).replaceAll("''", "'");
  }
  if (text.startsWith("[")) {
    try {
      const value = JSON.parse(text);
      if (Array.isArray(value) && value.every((v) => typeof v === "string")) return value;
    } catch {
      // below
    }
    return fail([line, "a flow sequence that is not a JSON array of strings"]);
  }
  // A plain scalar: `-x`/`--flag` (a dash before a non-space is plain) or a safe first character.
  const plain = PLAIN_START.test(text) || /^-[^\s]/.test(text);
  if (!plain || text.includes(": ") || text.includes(" #") || text.endsWith(":")) {
    return fail([line, `the plain scalar ${JSON.stringify(text)} (quote it)`]);
  }
  if (text === "true") return true;
  if (text === "false") return false;
  if (text === "null" || text === "~") return null;
  if (INTEGER.test(text)) return Number(text);
  if (/^[-+]?(?:\.\d|\d[\d_]*\.|\.inf|\.nan|0x|0o)/i.test(text)) {
    return fail([line, `the plain scalar ${JSON.stringify(text)} could be a number (quote it)`]);
  }
  return text;
}
