import assert from "node:assert/strict";
import { DURATION_HELP, MAX_DURATION_MS, parseDuration } from "../src/cli/duration.ts";
import { UsageError } from "../src/cli/flags.ts";

const GOOD: [string, number][] = [
  // Backward compatible: off, bare seconds, one unit.
  ["off", 0],
  ["0", 0],
  ["0s", 0],
  ["0ms", 0],
  ["5", 5000],
  ["1.5", 1500],
  ["0.25", 250],
  ["5s", 5000],
  ["90s", 90_000],
  ["250ms", 250],
  ["2m", 120_000],
  ["1h", 3_600_000],
  [" 30s ", 30_000],
  // Fractional and compound, as Go's time.ParseDuration.
  ["1.5s", 1500],
  [".5s", 500],
  ["1.s", 1000],
  ["1.5m", 90_000],
  ["2m30s", 150_000],
  ["1h2m3s", 3_723_000],
  ["1h30m", 5_400_000],
  ["1s500ms", 1500],
  ["30s2m", 150_000],
  // Sub-millisecond: nearest ms, but anything positive is at least 1 ms.
  ["500us", 1],
  ["500\u00b5s", 1],
  ["500\u03bcs", 1],
  ["1ns", 1],
  ["1500us", 2],
  ["1400us", 1],
  ["2500000ns", 3],
  ["0us", 0],
  ["1.0004s", 1000],
  ["596h", 596 * 3_600_000],
  [`${MAX_DURATION_MS}ms`, MAX_DURATION_MS],
];

for (const [text, ms] of GOOD) {
  Deno.test(`parseDuration("${text}") is ${ms} ms`, () => {
    assert.equal(parseDuration("idle-timeout", text), ms);
  });
}

const BAD: string[] = [
  "",
  " ",
  "s",
  "ms",
  "5x",
  "5 s",
  "5sec",
  "5S",
  "-1",
  "-1s",
  "+1s",
  "1e3",
  "1e3s",
  "2m30",
  "1h 30m",
  "1.2.3s",
  ".",
  ".s",
  "Infinity",
  "NaN",
  "0x10",
  "on",
  "OFF",
  "1d",
  "597h",
  `${MAX_DURATION_MS + 1}ms`,
];

for (const text of BAD) {
  Deno.test(`parseDuration(${JSON.stringify(text)}) throws a UsageError naming the flag`, () => {
    assert.throws(() => parseDuration("idle-timeout", text), (error: unknown) => {
      assert.ok(error instanceof UsageError, String(error));
      assert.match(error.message, /--idle-timeout/);
      assert.ok(error.message.includes(JSON.stringify(text)), error.message);
      assert.match(error.message, /1\.5s|596h/, "gives examples or the limit");
      return true;
    });
  });
}

Deno.test("parseDuration rejects a missing value with a UsageError naming the flag", () => {
  for (const value of [undefined, true, false]) {
    assert.throws(() => parseDuration("drain-delay", value), /Missing value for --drain-delay/);
    assert.throws(() => parseDuration("drain-delay", value), UsageError);
  }
});

Deno.test("DURATION_HELP is one line and every example in it parses", () => {
  assert.doesNotMatch(DURATION_HELP, /\n/);
  const examples = DURATION_HELP.match(/\b[\d.]+(?:h|m|s|ms|us)\b|\boff\b|\b0\b/g) ?? [];
  assert.ok(examples.length >= 6, DURATION_HELP);
  for (const example of examples) assert.doesNotThrow(() => parseDuration("x", example), example);
});
