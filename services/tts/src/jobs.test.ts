import { describe, expect, it } from "vitest";
import { JobRegistry, type Job } from "./jobs.js";

function started(registry: JobRegistry, callId: string, turnId: string, chunkSeq = 0): Job {
  const result = registry.start(callId, turnId, chunkSeq);
  if (!("job" in result)) throw new Error(`refused: ${result.refused}`);
  return result.job;
}

describe("JobRegistry", () => {
  it("cancels one turn, or every turn of a call, and refuses late chunks of cancelled turns", () => {
    const registry = new JobRegistry();
    const t1 = started(registry, "CA1", "t1");
    const t2 = started(registry, "CA1", "t2");
    const other = started(registry, "CA2", "t1");
    expect(registry.activeCalls()).toBe(2);

    expect(registry.cancel("CA1", "t1")).toBe(1);
    expect(t1.signal.aborted).toBe(true);
    expect(t2.signal.aborted).toBe(false);
    expect(registry.start("CA1", "t1", 1)).toEqual({ refused: "cancel" });

    expect(registry.cancel("CA1", "")).toBe(1);
    expect(t2.signal.aborted).toBe(true);
    expect(other.signal.aborted).toBe(false);
    expect(registry.start("CA1", "t2", 1)).toEqual({ refused: "cancel" });
    // A later turn of the call is still spoken.
    expect("job" in registry.start("CA1", "t3", 0)).toBe(true);
  });

  it("stops and refuses all work of an ended call, and forgets it after a while", () => {
    let now = 0;
    const registry = new JobRegistry(1_000, () => now);
    const job = started(registry, "CA1", "t1");
    expect(registry.end("CA1")).toBe(1);
    expect(job.signal.aborted).toBe(true);
    expect(registry.start("CA1", "t2", 0)).toEqual({ refused: "ended" });
    now = 120_000;
    expect("job" in registry.start("CA1", "t2", 0)).toBe(true);
  });

  it("reports idle once every job finished", async () => {
    const registry = new JobRegistry();
    const a = started(registry, "CA1", "t1");
    const b = started(registry, "CA2", "t1");
    let idle = false;
    const waiting = registry.whenIdle().then(() => (idle = true));
    registry.finish(a);
    await Promise.resolve();
    expect(idle).toBe(false);
    expect(registry.activeCalls()).toBe(1);
    registry.finish(b);
    await waiting;
    expect(registry.activeCalls()).toBe(0);
  });
});
