import { describe, expect, it } from "vitest";
import { LiveCalls } from "./live-calls.js";

describe("LiveCalls", () => {
  it("knows a call live for the TTL after a claim last found it so", () => {
    let now = 1_000;
    const calls = new LiveCalls(30_000, () => now);
    expect(calls.isLive("CA1")).toBe(false);
    calls.seenLive("CA1");
    now += 29_999;
    expect(calls.isLive("CA1")).toBe(true);
    calls.seenLive("CA1"); // found live again: another TTL from here
    now += 29_999;
    expect(calls.isLive("CA1")).toBe(true);
    now += 1;
    expect(calls.isLive("CA1")).toBe(false);
    expect(calls.size).toBe(0);
  });

  it("forgets an ended call for good: a claim answered after the end does not bring it back", () => {
    let now = 0;
    const calls = new LiveCalls(30_000, () => now);
    calls.seenLive("CA1");
    calls.callEnded("CA1");
    expect(calls.isLive("CA1")).toBe(false);
    calls.seenLive("CA1"); // a claim made before the end, answered after it
    expect(calls.isLive("CA1")).toBe(false);
    // Call ids are unique: once the TTL has passed nothing is remembered of it, and no claim can find it live.
    now += 30_001;
    calls.callEnded("CA2"); // prunes what has expired
    calls.seenLive("CA1");
    expect(calls.isLive("CA1")).toBe(true);
  });
});
