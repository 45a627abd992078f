import { startRedis, type ServerHandle } from "@voicebot/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { keys } from "./keys.js";
import { CallStore } from "./store.js";

let redis: ServerHandle;
let store: CallStore;
beforeAll(async () => {
  redis = await startRedis();
  store = CallStore.connect(redis.url, { liveTtlMs: 60_000, recordTtlMs: 3_600_000 });
});
afterAll(async () => {
  await store.close();
  await redis.stop();
});

const meta = (callSid: string) => ({ callSid, provider: "twilio", streamSid: "MZ1", agent: "order-line", from: "", to: "", startedAt: new Date().toISOString() });

describe("CallStore", () => {
  it("keeps an ordered call record that outlives the call by the record TTL", async () => {
    await store.createCall(meta("CA1"));
    await store.appendTranscript("CA1", { role: "bot", text: "hello", at: "t1" });
    await store.appendTranscript("CA1", { role: "caller", text: "1", at: "t2", source: "keypad" });
    await store.appendToolCall("CA1", { name: "lookup_order", arguments: { order_number: "12345" }, result: { status: "shipped" }, ok: true, ms: 3, at: "t3" });
    await store.appendSpeechChunk("CA1", { turnId: "t1", chunkSeq: 0, source: "engine", engine: "flite", firstAudioMs: 42, at: "t4" });
    await store.saveDialog("CA1", { state: "menu" }, "0");
    await store.acquireLease("CA1", "asr", "asr-1", 10_000);
    await store.endCall("CA1", "caller_hangup");
    const record = await store.getRecord("CA1");
    expect(record).toMatchObject({ callSid: "CA1", state: "ended", endReason: "caller_hangup" });
    expect(record!.transcript.map((t) => t.text)).toEqual(["hello", "1"]);
    expect(record!.toolCalls[0].name).toBe("lookup_order");
    expect(record!.speech).toEqual([{ turnId: "t1", chunkSeq: 0, source: "engine", engine: "flite", firstAudioMs: 42, at: "t4" }]);
    const ttl = await store.redis.pttl(keys.meta("CA1"));
    expect(ttl).toBeGreaterThan(3_500_000);
    // live state and leases are gone
    expect((await store.loadDialog("CA1")).value).toBeUndefined();
    expect(await store.leaseOwner("CA1", "asr")).toBeUndefined();
    expect(await store.orphanedCalls("asr", Date.now() + 60_000)).not.toContain("CA1");
    expect(await store.getRecord("nope")).toBeUndefined();
  });

  it("saves versioned state only over the version it read", async () => {
    const first = await store.loadDialog<{ n: number }>("CA2");
    expect(first.version).toBe("0");
    expect(await store.saveDialog("CA2", { n: 1 }, first.version)).toBe(true);
    expect(await store.saveDialog("CA2", { n: 2 }, first.version)).toBe(false); // a concurrent writer lost
    const second = await store.loadDialog<{ n: number }>("CA2");
    expect(second).toEqual({ value: { n: 1 }, version: "1" });
  });

  it("leases: one owner at a time, renewable, and visible as orphaned once expired", async () => {
    expect(await store.acquireLease("CA3", "asr", "a", 200)).toBe(true);
    expect(await store.acquireLease("CA3", "asr", "b", 200)).toBe(false);
    expect(await store.acquireLease("CA3", "asr", "a", 200)).toBe(true);
    await new Promise((r) => setTimeout(r, 250));
    expect(await store.orphanedCalls("asr")).toContain("CA3");
    expect(await store.acquireLease("CA3", "asr", "b", 200)).toBe(true);
    await store.releaseLease("CA3", "asr", "a"); // not the owner: no effect
    expect(await store.leaseOwner("CA3", "asr")).toBe("b");
  });

  it("saves no dialog state for a call that has ended", async () => {
    await store.createCall(meta("CA5"));
    const before = await store.loadDialog("CA5");
    await store.endCall("CA5", "caller_hangup");
    expect(await store.saveDialog("CA5", { late: true }, before.version)).toBe(false);
    expect((await store.loadDialog("CA5")).value).toBeUndefined();
  });

  it("firstTime is true once per id", async () => {
    expect(await store.firstTime("CA4", "tool", "x")).toBe(true);
    expect(await store.firstTime("CA4", "tool", "x")).toBe(false);
  });
});
