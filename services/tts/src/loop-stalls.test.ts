import { describe, expect, it } from "vitest";
import { LoopStalls } from "./loop-stalls.js";

const block = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("LoopStalls", () => {
  it("counts the time the event loop was blocked, a stall that just ended included, and not the time it was idle", async () => {
    const stalls = new LoopStalls();
    try {
      await sleep(200);
      const idle = stalls.stalledMs;
      expect(idle).toBeLessThan(150); // timer jitter only (generous: a busy test machine delays timers too)
      block(300);
      // Read before the checker's tick has run: the stall is counted already.
      expect(stalls.stalledMs - idle).toBeGreaterThanOrEqual(270);
      await sleep(100);
      const after = stalls.stalledMs - idle;
      expect(after).toBeGreaterThanOrEqual(270);
      expect(after).toBeLessThan(800);
    } finally {
      stalls.close();
    }
  });
});
