import assert from "node:assert/strict";
import { pinning } from "../bench/harness/pinning.ts";
import { parseWorkersList } from "../bench/harness/target_list.ts";

Deno.test("bench:e2e --workers takes counts from 1 and auto, in the order given", () => {
  assert.deepEqual(parseWorkersList("1,2"), [1, 2]);
  assert.deepEqual(parseWorkersList("2,1,auto"), [2, 1, "auto"]);
  assert.deepEqual(parseWorkersList("16"), [16]);
});

Deno.test("bench:e2e --workers rejects zero, non-numbers, blanks and repeats", () => {
  for (const bad of ["0", "1,0", "-1", "1.5", "two", "", "1,,2", "1,1", "auto,auto", "01"]) {
    assert.throws(() => parseWorkersList(bad), RangeError, bad);
  }
});

Deno.test("bench:e2e --taskset gives a proxy as many cores as workers and the load the rest", () => {
  // This box: 1 worker on core 0 with the load on core 1; 2 workers take both, the load shares.
  assert.deepEqual(pinning(1, 2), { proxy: "0", rest: "1" });
  assert.deepEqual(pinning(2, 2), { proxy: "0-1", rest: undefined });
  assert.deepEqual(pinning("auto", 2), { proxy: "0-1", rest: undefined });
  // More workers than cores: every core, nothing left for the load.
  assert.deepEqual(pinning(4, 2), { proxy: "0-1", rest: undefined });
  // Bigger machines: the load keeps the cores the proxy leaves.
  assert.deepEqual(pinning(2, 8), { proxy: "0-1", rest: "2-7" });
  assert.deepEqual(pinning(7, 8), { proxy: "0-6", rest: "7" });
  assert.deepEqual(pinning(1, 1), { proxy: "0", rest: undefined });
});
