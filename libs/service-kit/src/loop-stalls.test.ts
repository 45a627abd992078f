import { performance } from "node:perf_hooks";
import { describe, expect, it } from "vitest";
import { LoopStalls, StallAwareTimer } from "./loop-stalls.js";

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

  it("fires a StallAwareTimer that came due during a stall only after what came meanwhile is read", async () => {
    const started = performance.now();
    let firedAt = 0;
    const timer = new StallAwareTimer(100, () => (firedAt = performance.now() - started));
    block(300); // the timer comes due during the stall
    let readAfterStall = 0;
    setImmediate(() => (readAfterStall = performance.now() - started)); // stands for a socket read after the stall
    await until(() => firedAt > 0);
    timer.clear();
    expect(readAfterStall).toBeGreaterThan(0);
    expect(firedAt).toBeGreaterThan(readAfterStall);
    expect(firedAt).toBeGreaterThanOrEqual(300);
  });

  it("waits a StallAwareTimer's own grace after a stall (a verdict a round trip away)", async () => {
    const started = performance.now();
    let firedAt = 0;
    new StallAwareTimer(50, () => (firedAt = performance.now() - started), { graceMs: 200 });
    block(150);
    await until(() => firedAt > 0);
    expect(firedAt).toBeGreaterThanOrEqual(340); // the 150 ms stall, then the 200 ms grace
  });

  it("keeps a StallAwareTimer's deadline wall-clock under sustained stalls (every tick late): the stalls are not given back", async () => {
    const started = performance.now();
    let firedAt = 0;
    new StallAwareTimer(300, () => (firedAt = performance.now() - started));
    // 80 ms blocked in every 100 ms, as a CPU-throttled pod: counting only the time it could run would put this at ~1.5 s.
    while (firedAt === 0 && performance.now() - started < 3000) {
      block(80);
      await sleep(20);
    }
    expect(firedAt).toBeGreaterThanOrEqual(295);
    expect(firedAt).toBeLessThan(800);
  });

  it("fires a StallAwareTimer on time when nothing stalls, and not at all once cleared or refreshed", async () => {
    const started = performance.now();
    let firedAt = 0;
    new StallAwareTimer(50, () => (firedAt = performance.now() - started));
    let refreshedFired = 0;
    const refreshed = new StallAwareTimer(100, () => (refreshedFired = performance.now() - started));
    let clearedFired = false;
    new StallAwareTimer(30, () => (clearedFired = true)).clear();
    await sleep(60);
    refreshed.refresh();
    await until(() => firedAt > 0 && refreshedFired > 0);
    await sleep(50);
    expect(firedAt).toBeGreaterThanOrEqual(49);
    expect(refreshedFired).toBeGreaterThanOrEqual(155); // 100 ms after the refresh at 60
    expect(clearedFired).toBe(false);
  });
});
