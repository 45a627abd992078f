import { describe, expect, it } from "vitest";
import { MemoryAudioCache } from "./memory-cache.js";

const audio = (bytes: number, fill = 1) => Buffer.alloc(bytes, fill);

describe("MemoryAudioCache", () => {
  it("keeps audio up to its byte budget, dropping the least recently used first", () => {
    const cache = new MemoryAudioCache(8_000);
    cache.set("a", audio(1_000, 1));
    cache.set("b", audio(1_000, 2));
    cache.set("c", audio(1_000, 3));
    expect(cache.get("a")?.[0]).toBe(1); // a is now the most recently used
    for (let i = 0; i < 5; i++) cache.set(`x${i}`, audio(1_000));
    expect(cache.bytes).toBe(8_000);
    cache.set("y", audio(1_000));
    // b was the least recently used: it went; a (read) and c stayed.
    expect(cache.get("b")).toBeUndefined();
    expect(cache.get("a")).toBeDefined();
    expect(cache.get("c")).toBeDefined();
    expect(cache.bytes).toBe(8_000);
    expect(cache.size).toBe(8);
  });

  it("misses an entry older than its maximum age, and drops it", () => {
    let now = 1_000;
    const cache = new MemoryAudioCache(8_000, 600_000, () => now);
    cache.set("a", audio(1_000, 1));
    now += 600_000;
    expect(cache.get("a")?.[0]).toBe(1); // reading does not make it younger
    now += 1;
    expect(cache.get("a")).toBeUndefined();
    expect(cache.bytes).toBe(0);
    cache.set("a", audio(1_000, 2)); // the copy read again from Redis starts a new age
    now += 599_999;
    expect(cache.get("a")?.[0]).toBe(2);
  });

  it("frees entries past their age that nobody reads, when asked for its size", () => {
    let now = 1_000;
    const cache = new MemoryAudioCache(8_000, 600_000, () => now);
    cache.set("old", audio(1_000, 1));
    now += 300_000;
    cache.set("young", audio(500, 2));
    now += 300_001;
    cache.dropExpired();
    expect(cache.bytes).toBe(500);
    expect(cache.size).toBe(1);
    expect(cache.get("young")?.[0]).toBe(2);
  });

  it("replaces an entry under the same key without counting it twice", () => {
    const cache = new MemoryAudioCache(8_000);
    cache.set("a", audio(500));
    cache.set("a", audio(700, 9));
    expect(cache.bytes).toBe(700);
    expect(cache.get("a")?.[0]).toBe(9);
  });

  it("keeps a copy of its own, not a view into a buffer that may hold more (a Redis client's read buffer)", () => {
    const cache = new MemoryAudioCache(8_000);
    const readBuffer = Buffer.alloc(4_000, 7);
    const view = readBuffer.subarray(100, 600);
    cache.set("a", view);
    readBuffer.fill(0);
    const kept = cache.get("a")!;
    expect(kept.length).toBe(500);
    expect(kept.every((b) => b === 7)).toBe(true);
    expect(kept.buffer.byteLength).toBe(500);
  });

  it("does not keep empty audio or an entry over an eighth of the budget, and keeps nothing when off", () => {
    const cache = new MemoryAudioCache(8_000);
    cache.set("big", audio(1_001));
    cache.set("empty", audio(0));
    expect(cache.size).toBe(0);
    const off = new MemoryAudioCache(0);
    off.set("a", audio(10));
    expect(off.get("a")).toBeUndefined();
    expect(off.bytes).toBe(0);
  });
});
