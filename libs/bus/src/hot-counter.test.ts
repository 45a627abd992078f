import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { hotCounter, pendingCount } from "./hot-counter.js";

describe("hotCounter", () => {
  it("adds pending counts in when read, per label set, showing only label sets that were counted; inc() still works", async () => {
    const registry = new Registry();
    const counter = hotCounter({ name: "t_frames_total", help: "t", labelNames: ["kind"], registers: [registry] });
    const a = pendingCount(counter, { kind: "a" });
    pendingCount(counter, { kind: "never" });
    expect(pendingCount(counter, { kind: "a" })).toBe(a); // one count per label set
    a.value += 3;
    counter.inc({ kind: "b" });
    const read = async () => Object.fromEntries((await counter.get()).values.map((v) => [String(v.labels.kind), v.value]));
    expect(await read()).toEqual({ a: 3, b: 1 });
    a.value++;
    expect(await read()).toEqual({ a: 4, b: 1 });
    expect(a.value).toBe(0);
    expect(await registry.metrics()).toContain('t_frames_total{kind="a"} 4');
  });

  it("works without labels", async () => {
    const counter = hotCounter({ name: "t_plain_total", help: "t", registers: [] });
    pendingCount(counter).value += 5;
    expect((await counter.get()).values[0].value).toBe(5);
  });
});
