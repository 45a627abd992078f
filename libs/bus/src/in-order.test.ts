import { describe, expect, it } from "vitest";
import { InOrder } from "./in-order.js";

describe("InOrder", () => {
  it("runs synchronous work at once; work that returns a promise holds back what comes after it, which then runs in order", async () => {
    const ran: string[] = [];
    const gates = new Map<string, () => void>();
    const inOrder = new InOrder<string>((item) => {
      ran.push(item);
      if (!item.startsWith("slow")) return undefined;
      return new Promise<void>((resolve) => gates.set(item, resolve));
    });
    inOrder.push("a");
    expect(ran).toEqual(["a"]); // synchronously
    expect(inOrder.pending).toBeUndefined();

    inOrder.push("slow1");
    inOrder.push("b");
    inOrder.push("slow2");
    inOrder.push("c");
    expect(ran).toEqual(["a", "slow1"]);
    const pending = inOrder.pending!;
    gates.get("slow1")!();
    await new Promise((r) => setTimeout(r, 0));
    expect(ran).toEqual(["a", "slow1", "b", "slow2"]); // b at once, then held again by slow2
    inOrder.push("d");
    gates.get("slow2")!();
    await pending;
    expect(ran).toEqual(["a", "slow1", "b", "slow2", "c", "d"]);
    expect(inOrder.pending).toBeUndefined();
    inOrder.push("e");
    expect(ran.at(-1)).toBe("e");
  });

  it("clear() drops what is held back; the work in progress still settles", async () => {
    const ran: string[] = [];
    let release!: () => void;
    const inOrder = new InOrder<string>((item) => {
      ran.push(item);
      return item === "slow" ? new Promise<void>((resolve) => (release = resolve)) : undefined;
    });
    inOrder.push("slow");
    inOrder.push("dropped");
    inOrder.clear();
    release();
    await inOrder.pending;
    expect(ran).toEqual(["slow"]);
  });
});
