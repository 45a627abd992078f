import { describe, expect, it } from "vitest";
import { LogThrottle } from "./log.js";

describe("LogThrottle", () => {
  it("admits one line per key and interval; the next admitted line says how many were left out", () => {
    const throttle = new LogThrottle(1_000);
    expect(throttle.admit("a", 0)).toEqual({});
    expect(throttle.admit("a", 10)).toBeUndefined();
    expect(throttle.admit("a", 999)).toBeUndefined();
    expect(throttle.admit("b", 20)).toEqual({}); // keys are independent
    expect(throttle.admit("a", 1_000)).toEqual({ suppressedSinceLast: 2 });
    expect(throttle.admit("a", 2_500)).toEqual({});
  });

  it("forgets its keys once there are too many (keys may come from input)", () => {
    const throttle = new LogThrottle(1_000, 2);
    throttle.admit("a", 0);
    throttle.admit("b", 0);
    expect(throttle.admit("c", 1)).toEqual({}); // memory started over
    expect(throttle.admit("a", 2)).toEqual({});
  });
});
