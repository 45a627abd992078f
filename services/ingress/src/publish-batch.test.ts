import { describe, expect, test } from "vitest";
import { PublishBatch } from "./publish-batch.js";

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

describe("PublishBatch", () => {
  test("publishes everything added in one event-loop turn together, in order, on the next turn", async () => {
    const batch = new PublishBatch();
    const out: number[] = [];
    for (let i = 0; i < 5; i++) batch.add(() => out.push(i), () => undefined);
    expect(out).toEqual([]);
    expect(batch.pending).toBe(5);
    await nextTurn();
    expect(out).toEqual([0, 1, 2, 3, 4]);
    expect(batch.pending).toBe(0);
    batch.add(() => out.push(5), () => undefined);
    await nextTurn();
    expect(out).toEqual([0, 1, 2, 3, 4, 5]);
  });

  test("flush() publishes at once, and the scheduled turn then has nothing left to send twice", async () => {
    const batch = new PublishBatch();
    const out: string[] = [];
    batch.add(() => out.push("a"), () => undefined);
    batch.flush();
    expect(out).toEqual(["a"]);
    await nextTurn();
    expect(out).toEqual(["a"]);
  });

  test("a publish that throws is reported and the rest still go out", async () => {
    const batch = new PublishBatch();
    const out: string[] = [];
    const failures: unknown[] = [];
    batch.add(() => out.push("a"), (e) => failures.push(e));
    batch.add(() => {
      throw new Error("boom");
    }, (e) => failures.push(e));
    batch.add(() => out.push("c"), (e) => failures.push(e));
    await nextTurn();
    expect(out).toEqual(["a", "c"]);
    expect(failures).toHaveLength(1);
    expect((failures[0] as Error).message).toBe("boom");
  });
});
