import * as assert from "node:assert/strict";
import { LogBudget } from "../src/proxy/log_budget.ts";

Deno.test("LogBudget lets N lines a second through and says how many it held back", () => {
  let now = 0;
  const budget = new LogBudget(3, () => now);
  assert.deepEqual([budget.take(), budget.take(), budget.take()], [0, 0, 0]);
  // A flood within the same second: held back, counted.
  for (let i = 0; i < 1000; i++) assert.equal(budget.take(), false);
  now = 999;
  assert.equal(budget.take(), false);
  now = 1000;
  assert.equal(budget.take(), 1001, "the first line of the next second tells");
  assert.equal(budget.take(), 0);
});
