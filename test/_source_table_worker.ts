/**
 * A Worker for source_table_test.ts: opens and closes connections of a few addresses in a shared
 * source table, and takes tokens of one, as fast as it can for `rounds` rounds; then says how
 * many tokens it got.
 */
import { SourceTable } from "../src/proxy/source_table.ts";

const scope = self as unknown as Worker;
scope.onmessage = (event: MessageEvent) => {
  const { buffer, addresses, rounds, rate, burst, start } = event.data as {
    buffer: SharedArrayBuffer;
    addresses: Uint8Array[];
    rounds: number;
    rate: number;
    burst: number;
    start: SharedArrayBuffer;
  };
  const table = new SourceTable(buffer);
  // A barrier: both workers start together, so their updates overlap.
  const ready = new Int32Array(start);
  Atomics.add(ready, 0, 1);
  while (Atomics.load(ready, 0) < 2) {
    // Spin until the other worker is here too.
  }
  let tokens = 0;
  let refused = 0;
  for (let i = 0; i < rounds; i++) {
    const address = addresses[i % addresses.length];
    const slot = table.open(address, 0, burst, 0);
    if (slot < 0) {
      refused++;
      continue;
    }
    // Time runs 1 ms a round, the same in both workers: tokens come at `rate` per second.
    tokens += table.take(slot, 1, rate, burst, i);
    table.close(slot);
  }
  scope.postMessage({ tokens, refused });
};
