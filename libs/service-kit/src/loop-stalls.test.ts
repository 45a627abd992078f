import { performance } from "node:perf_hooks";
import { describe, expect, it } from "vitest";
import { LoopStalls, RunnableTimer } from "./loop-stalls.js";

const block = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** Polls until `done()` (a busy test machine delays timers: no fixed sleep). */
async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 300 && !done(); i++) await sleep(10);
}

describe("LoopStalls", () => {
  it("counts the time the event loop was blocked, a stall that just ended included, and not the time it was idle", async () => {
    const stalls = new LoopStalls();
    try {
      await sleep(200);
      const idle = stalls.stalledMs;
      expect(idle).toBeLessThan(150); // not the idle time (a tick a little late is jitter, not a stall)
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

  it("runs a RunnableTimer after its time of running, not counting a stall: what came meanwhile is read first", async () => {
    const started = performance.now();
    let firedAt = 0;
    const timer = new RunnableTimer(100, () => (firedAt = performance.now() - started));
    block(300); // the timer comes due during the stall, with ~0 ms of running behind it
    let readAfterStall = 0;
    setImmediate(() => (readAfterStall = performance.now() - started)); // stands for a socket read after the stall
    await until(() => firedAt > 0);
    timer.clear();
    expect(readAfterStall).toBeGreaterThan(0);
    expect(firedAt).toBeGreaterThan(readAfterStall);
    expect(firedAt).toBeGreaterThanOrEqual(370); // 300 ms stalled + ~80 ms of the wait still to run
  });

  it("fires a RunnableTimer on time when nothing stalls, and not at all once cleared or refreshed", async () => {
    const started = performance.now();
    let firedAt = 0;
    new RunnableTimer(50, () => (firedAt = performance.now() - started));
    let refreshedFired = 0;
    const refreshed = new RunnableTimer(100, () => (refreshedFired = performance.now() - started));
    let clearedFired = false;
    new RunnableTimer(30, () => (clearedFired = true)).clear();
    await sleep(60);
    refreshed.refresh();
    await until(() => firedAt > 0 && refreshedFired > 0);
    await sleep(50);
    expect(firedAt).toBeGreaterThanOrEqual(49);
    expect(refreshedFired).toBeGreaterThanOrEqual(155); // 100 ms after the refresh at 60
    expect(clearedFired).toBe(false);
  });
});
