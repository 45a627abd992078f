import { describe, expect, it } from "vitest";
import { dropOldest, setNewest } from "./bounded.js";

describe("bounded collections", () => {
  it("drop their oldest entries beyond the bound; a key set again becomes the newest", () => {
    const map = new Map<string, number>();
    for (const key of ["a", "b", "c"]) setNewest(map, key, 1, 3);
    setNewest(map, "a", 2, 3); // a is the newest now
    setNewest(map, "d", 1, 3); // b, the oldest, goes
    expect([...map.keys()]).toEqual(["c", "a", "d"]);
    expect(map.get("a")).toBe(2);

    const set = new Set([1, 2, 3, 4, 5]);
    dropOldest(set, 2);
    expect([...set]).toEqual([4, 5]);
    dropOldest(set, 10);
    expect([...set]).toEqual([4, 5]);
  });
});
