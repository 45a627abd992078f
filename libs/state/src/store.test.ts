import { startRedis, startTcpProxy, waitFor, type ServerHandle } from "@voicebot/testing";
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
const claimer = { holder: "tools-test", ttlMs: 60_000, takeStale: false };

describe("CallStore", () => {
  it("keeps a live call's record alive the live TTL from its last activity, not from its start", async () => {
    await store.createCall(meta("CTTL"));
    await store.redis.pexpire(keys.meta("CTTL"), 5_000); // as if the call had been live for hours
    await store.appendTranscript("CTTL", { role: "caller", text: "still here", at: "t1" });
    expect(await store.redis.pttl(keys.meta("CTTL"))).toBeGreaterThan(55_000);
    await store.redis.pexpire(keys.meta("CTTL"), 5_000);
    await store.commitDialog("CTTL", { state: "menu" }, "0");
    expect(await store.redis.pttl(keys.meta("CTTL"))).toBeGreaterThan(55_000);
    // An ended call's record keeps the record TTL: an append does not bring it back to the live one.
    await store.endCall("CTTL", "caller_hangup");
    await store.appendTranscript("CTTL", { role: "bot", text: "late line", at: "t2" });
    expect(await store.redis.pttl(keys.meta("CTTL"))).toBeGreaterThan(3_500_000);
  });

  it("keeps an ordered call record that outlives the call by the record TTL", async () => {
    await store.createCall(meta("CA1"));
    await store.appendTranscript("CA1", { role: "bot", text: "hello", at: "t1" });
    await store.appendTranscript("CA1", { role: "caller", text: "1", at: "t2", source: "keypad" });
    await store.appendToolCall("CA1", { name: "lookup_order", arguments: { order_number: "12345" }, result: { status: "shipped" }, ok: true, ms: 3, at: "t3" });
    await store.appendSpeechChunk("CA1", { turnId: "t1", chunkSeq: 0, source: "engine", engine: "flite", firstAudioMs: 42, at: "t4" });
    await store.commitDialog("CA1", { state: "menu" }, "0");
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

  it("endCallUnlessLeased ends a live call only while nobody holds the lease (a stream that took the call up keeps it)", async () => {
    await store.createCall(meta("CLOST"));
    await store.commitDialog("CLOST", { state: "menu" }, "0");
    expect(await store.acquireLease("CLOST", "stream", "ingress-b", 10_000)).toBe(true);
    expect(await store.endCallUnlessLeased("CLOST", "stream", "stream_lost")).toBe(false);
    expect(await store.callState("CLOST")).toBe("live");
    expect((await store.loadDialog("CLOST")).value).toEqual({ state: "menu" });
    await store.releaseLease("CLOST", "stream", "ingress-b");
    expect(await store.endCallUnlessLeased("CLOST", "stream", "stream_lost", new Date("2026-01-01T00:00:00Z"))).toBe(true);
    expect(await store.getRecord("CLOST")).toMatchObject({ state: "ended", endReason: "stream_lost", endedAt: "2026-01-01T00:00:00.000Z" });
    expect(await liveKeysOf("CLOST")).toEqual([]);
    expect(await store.redis.pttl(keys.meta("CLOST"))).toBeGreaterThan(3_500_000);
    expect(await store.redis.zscore(keys.leaseIndex("stream"), "CLOST")).toBeNull();
    // Ended already (or no record): nothing to do.
    expect(await store.endCallUnlessLeased("CLOST", "stream", "again")).toBe(false);
    expect((await store.getRecord("CLOST"))!.endReason).toBe("stream_lost");
    expect(await store.endCallUnlessLeased("CNONE", "stream", "stream_lost")).toBe(false);
    expect(await store.redis.exists(keys.meta("CNONE"))).toBe(0);
  });

  it("keeps a long call's record bounded: each list its latest entries, the record counting those it dropped", async () => {
    const small = CallStore.connect(redis.url, { liveTtlMs: 60_000, recordTtlMs: 3_600_000, recordMaxEntries: 3 });
    try {
      await small.createCall(meta("CLONG"));
      for (let i = 1; i <= 5; i++) await small.appendTranscript("CLONG", { role: "caller", text: `line ${i}`, at: `t${i}` });
      await small.appendTurn("CLONG", { turnId: "t1", latencyMs: 500, inputEndAt: "t6", firstAudioAt: "t7", stages: {} });
      const record = await small.getRecord("CLONG");
      expect(record!.transcript.map((t) => t.text)).toEqual(["line 3", "line 4", "line 5"]);
      expect(record!.turns).toHaveLength(1);
      expect(record!.trimmedEntries).toBe(2);
      expect(await small.redis.llen(keys.transcript("CLONG"))).toBe(3);
      // A line is rewritten in place only if it is still where it was read: the next append moves every line.
      const lines = await small.transcriptLines("CLONG");
      await small.appendTranscript("CLONG", { role: "caller", text: "line 6", at: "t6" });
      expect(await small.replaceTranscriptEntry("CLONG", 0, lines[0], { role: "bot", text: "moved", at: "t3" })).toBe(false);
      const now = await small.transcriptLines("CLONG");
      expect(await small.replaceTranscriptEntry("CLONG", 0, now[0], { role: "bot", text: "line 4, heard", at: "t4" })).toBe(true);
      expect((await small.getRecord("CLONG"))!.transcript.map((t) => t.text)).toEqual(["line 4, heard", "line 5", "line 6"]);
      // A stray append for a call without a record leaves no meta behind (it would never expire).
      for (let i = 1; i <= 5; i++) await small.appendTranscript("CSTRAY", { role: "caller", text: `line ${i}`, at: `t${i}` });
      expect(await small.redis.exists(keys.meta("CSTRAY"))).toBe(0);
      expect(await small.redis.llen(keys.transcript("CSTRAY"))).toBe(3);
      expect(await store.getRecord("CA1")).not.toHaveProperty("trimmedEntries");
    } finally {
      await small.close();
    }
  });

  it("records an append once when the link drops after Redis ran it and before its reply (ioredis sends it again)", async () => {
    await store.createCall(meta("CRESENT"));
    const proxy = await startTcpProxy(Number(new URL(redis.url).port));
    const linked = CallStore.connect(`redis://127.0.0.1:${proxy.port}`, { liveTtlMs: 60_000, recordTtlMs: 3_600_000 });
    try {
      await linked.appendTranscript("CRESENT", { role: "bot", text: "hello", at: "t1" });
      proxy.delayMs = 1_000; // Redis runs the next command; its reply waits in the proxy
      const appended = linked.appendTurn("CRESENT", { turnId: "t1", latencyMs: 500, inputEndAt: "t1", firstAudioAt: "t2", stages: {} });
      const line = linked.appendTranscript("CRESENT", { role: "bot", text: "hello again", at: "t3" });
      await waitFor(async () => (await store.redis.llen(keys.transcript("CRESENT"))) === 2);
      proxy.cut();
      proxy.delayMs = 0;
      proxy.restore(); // the next connection gets through
      await Promise.all([appended, line]);
      const record = await store.getRecord("CRESENT");
      expect(record!.turns.map((turn) => turn.turnId)).toEqual(["t1"]);
      expect(record!.transcript.map((entry) => entry.text)).toEqual(["hello", "hello again"]);
      // Distinct entries with the same words are both kept (each carries its time).
      await linked.appendTranscript("CRESENT", { role: "bot", text: "hello again", at: "t4" });
      expect((await store.getRecord("CRESENT"))!.transcript).toHaveLength(3);
    } finally {
      await linked.close();
      await proxy.close();
    }
  });

  it("an outbound call's record: dialing until its stream starts, or ended without one (busy, no answer) by its status", async () => {
    const placed = { callSid: "CAout1", agent: "pharmacy", from: "+15550100002", to: "+15550100001" };
    expect(await store.createDialingCall(placed, 120_000)).toBe(true);
    expect(await store.getRecord("CAout1")).toMatchObject({ ...placed, state: "dialing", endReason: null, transcript: [] });
    expect(await store.redis.pttl(keys.meta("CAout1"))).toBeGreaterThan(110_000);
    expect(await store.endUnanswered(placed, "no-answer")).toBe(true);
    expect(await store.getRecord("CAout1")).toMatchObject({ ...placed, state: "ended", endReason: "no-answer" });
    expect(await store.redis.pttl(keys.meta("CAout1"))).toBeGreaterThan(3_500_000);
    // Said twice (Twilio retries a callback it thinks failed): the first reason stays.
    expect(await store.endUnanswered(placed, "completed")).toBe(false);
    expect((await store.getRecord("CAout1"))!.endReason).toBe("no-answer");

    // Answered: the stream's record takes over and a later status does not end it.
    const answered = { ...placed, callSid: "CAout2" };
    await store.createDialingCall(answered, 120_000);
    await store.createCall({ ...meta("CAout2"), agent: "pharmacy", from: placed.from, to: placed.to });
    expect(await store.endUnanswered(answered, "completed")).toBe(false);
    expect(await store.callState("CAout2")).toBe("live");

    // The status came before the placement was written (a call that failed at once): the record is not reopened.
    const failed = { ...placed, callSid: "CAout3" };
    expect(await store.endUnanswered(failed, "failed")).toBe(true);
    expect(await store.createDialingCall(failed, 120_000)).toBe(false);
    expect(await store.getRecord("CAout3")).toMatchObject({ ...failed, state: "ended", endReason: "failed" });
  });

  it("saves versioned state only over the version it read", async () => {
    const first = await store.loadDialog<{ n: number }>("CA2");
    expect(first.version).toBe("0");
    expect((await store.commitDialog("CA2", { n: 1 }, first.version)).saved).toBe(true);
    expect((await store.commitDialog("CA2", { n: 2 }, first.version)).saved).toBe(false); // a concurrent writer lost
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
    expect(await store.commitDialog("CA5", { late: true }, before.version)).toEqual({ saved: false, call: "ended" });
    expect((await store.loadDialog("CA5")).value).toBeUndefined();
  });

  it("an Idempotency-Key is claimed once; its holder's claim sent again is still its own; later requests get the answer", async () => {
    const key = `order-${Date.now()}`;
    expect(await store.claimRequest("place-call", key, "body-1", 5_000, "request-a")).toEqual({ kind: "claimed" });
    // ioredis sends the script again when a lost link took its reply: not a second request waiting for the first.
    expect(await store.claimRequest("place-call", key, "body-1", 5_000, "request-a")).toEqual({ kind: "claimed" });
    expect(await store.claimRequest("place-call", key, "body-1", 5_000, "request-b")).toEqual({ kind: "pending" });
    expect(await store.claimRequest("place-call", key, "body-2", 5_000, "request-b")).toEqual({ kind: "mismatch" });
    await store.settleRequest("place-call", key, '{"status":201}', 60_000);
    expect(await store.claimRequest("place-call", key, "body-1", 5_000, "request-c")).toEqual({ kind: "done", answer: '{"status":201}' });
    expect(await store.claimRequest("place-call", key, "body-1", 5_000, "request-a")).toEqual({ kind: "done", answer: '{"status":201}' });
  });

  it("a tool claim lasts while its holder keeps it; a stale one is reported, or taken over when asked", async () => {
    await store.createCall(meta("CA7"));
    // A claim's life well above a busy machine's stalls: kept every third of it, stale after a little more than it.
    const TTL_MS = 1_000;
    const a = { holder: "tools-a", ttlMs: TTL_MS, takeStale: false };
    const b = { holder: "tools-b", ttlMs: TTL_MS, takeStale: false };
    expect(await store.claimToolCall("CA7", "t1", a)).toEqual({ kind: "claimed" });
    expect(await store.claimToolCall("CA7", "t1", b)).toEqual({ kind: "taken" });
    // The same claim sent again (ioredis resends a script whose reply a lost link took) is its holder's own.
    expect(await store.claimToolCall("CA7", "t1", a)).toEqual({ kind: "claimed" });
    // Kept past its first life by its holder; another holder's keep does not touch it.
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, TTL_MS / 3));
      expect(await store.keepToolClaims([{ callId: "CA7", toolCallId: "t1", holder: "tools-a" }], TTL_MS)).toBe(1);
      expect(await store.keepToolClaims([{ callId: "CA7", toolCallId: "t1", holder: "tools-b" }], TTL_MS)).toBe(0);
    }
    expect(await store.claimToolCall("CA7", "t1", b)).toEqual({ kind: "taken" });
    // Its holder stops keeping it (died, froze): stale, and taken over only by a caller that may run it twice.
    await new Promise((r) => setTimeout(r, TTL_MS + 100));
    expect(await store.claimToolCall("CA7", "t1", b)).toEqual({ kind: "stale" });
    expect(await store.claimToolCall("CA7", "t1", { ...b, takeStale: true })).toEqual({ kind: "claimed", takenOver: true });
    expect(await store.claimToolCall("CA7", "t1", a)).toEqual({ kind: "taken" });
    // The old holder, woken, cannot keep what was taken over.
    expect(await store.keepToolClaims([{ callId: "CA7", toolCallId: "t1", holder: "tools-a" }], TTL_MS)).toBe(0);
    expect(await store.keepToolClaims([{ callId: "CA7", toolCallId: "t1", holder: "tools-b" }], TTL_MS)).toBe(1);
    // A claim an older version wrote (no expiry) is held for good, as it was.
    await store.redis.hset(keys.once("CA7"), "tool:t2", "1");
    expect(await store.claimToolCall("CA7", "t2", { ...b, takeStale: true })).toEqual({ kind: "taken" });
    // After the hang-up nothing is kept or written back.
    await store.endCall("CA7", "caller_hangup");
    expect(await store.keepToolClaims([{ callId: "CA7", toolCallId: "t1", holder: "tools-b" }], TTL_MS)).toBe(0);
    expect(await liveKeysOf("CA7")).toEqual([]);
  });

  it("endCall deletes the call's once-marks and stored tool results, and nothing brings them back", async () => {
    await store.createCall(meta("CA6"));
    const dialog = await store.loadDialog("CA6");
    expect(await store.commitDialog("CA6", { n: 1 }, dialog.version, { once: { scope: "heard", id: "in1#0" } })).toMatchObject({ firstTime: true });
    expect(await store.claimToolCall("CA6", "in1/0:lookup", claimer)).toEqual({ kind: "claimed" });
    expect(await store.saveToolResult("CA6", "in1/0:lookup", { ok: true })).toBe(true);
    expect(await store.claimToolCall("CA6", "in1/0:lookup", claimer)).toEqual({ kind: "stored", result: { ok: true } });
    await store.endCall("CA6", "caller_hangup");
    expect(await liveKeysOf("CA6")).toEqual([]);
    // After the hang-up: nothing is claimed or stored, so nothing can act twice and no key outlives the record.
    expect((await store.commitDialog("CA6", { n: 2 }, "1", { once: { scope: "heard", id: "in1#1" } })).saved).toBe(false);
    expect(await store.claimToolCall("CA6", "in1/0:lookup", claimer)).toEqual({ kind: "not_live", call: "ended" });
    expect(await store.saveToolResult("CA6", "in1/0:lookup", { ok: true })).toBe(false);
    expect(await liveKeysOf("CA6")).toEqual([]);
  });

  it("an append after the call ended keeps the record's TTL instead of the live one", async () => {
    await store.createCall(meta("CA7"));
    await store.appendTranscript("CA7", { role: "caller", text: "1", at: "t1" });
    await store.endCall("CA7", "caller_hangup");
    await store.appendTranscript("CA7", { role: "bot", text: "goodbye", at: "t2" });
    await store.appendToolCall("CA7", { name: "end_call", arguments: {}, result: null, ok: true, ms: 1, at: "t3" });
    for (const key of [keys.transcript("CA7"), keys.toolCalls("CA7")]) {
      expect(await store.redis.pttl(key), key).toBeGreaterThan(3_500_000);
    }
    expect((await store.getRecord("CA7"))!.transcript.map((t) => t.text)).toEqual(["1", "goodbye"]);
    // While live, appends keep the live TTL; a line recorded once per id is recorded once.
    await store.createCall(meta("CA8"));
    expect(await store.appendTranscriptOnce("CA8", "heard", "in1#0", { role: "caller", text: "2", at: "t1" })).toBe(true);
    expect(await store.appendTranscriptOnce("CA8", "heard", "in1#0", { role: "caller", text: "2", at: "t1" })).toBe(false);
    expect(await store.redis.pttl(keys.transcript("CA8"))).toBeLessThanOrEqual(60_000);
    expect((await store.getRecord("CA8"))!.transcript).toHaveLength(1);
  });

  it("commitDialog returns the new version, marks once, and writes hints and releases the lease only when it saves", async () => {
    await store.createCall(meta("CA9"));
    const start = await store.takeDialogTurn<{ n: number }>("CA9", "dialog-1", 10_000);
    expect(start).toEqual({ kind: "held", dialog: { value: undefined, version: "0" } });
    expect(await store.takeDialogTurn("CA9", "dialog-2", 10_000)).toEqual({ kind: "busy" });
    const marked = await store.commitDialog("CA9", { n: 1 }, "0", { once: { scope: "dialog-input", id: "in1" } });
    expect(marked).toEqual({ saved: true, version: "1", firstTime: true });
    // A stale version: nothing saved, no hints, the lease stays.
    expect(await store.commitDialog("CA9", { n: 9 }, "0", { hints: { mode: "digits" }, releaseLeaseOf: "dialog-1" })).toEqual({ saved: false, call: "live" });
    expect(await store.getJson(keys.hints("CA9"))).toBeUndefined();
    expect(await store.leaseOwner("CA9", "dialog")).toBe("dialog-1");
    const done = await store.commitDialog("CA9", { n: 2 }, "1", { hints: { mode: "digits" }, releaseLeaseOf: "dialog-1" });
    expect(done).toEqual({ saved: true, version: "2" });
    expect(await store.getJson(keys.hints("CA9"))).toEqual({ mode: "digits" });
    expect(await store.leaseOwner("CA9", "dialog")).toBeUndefined();
    expect(await store.commitDialog("CA9", { n: 3 }, "2", { once: { scope: "dialog-input", id: "in1" } })).toEqual({ saved: true, version: "3", firstTime: false });
    expect(await store.takeDialogTurn("CA9", "dialog-2", 10_000)).toEqual({ kind: "held", dialog: { value: { n: 3 }, version: "3" } });
    // No dialog lease index: nothing scans it (JetStream redelivers a dead replica's inputs).
    expect(await store.redis.zscore(keys.leaseIndex("dialog"), "CA9")).toBeNull();

    await store.endCall("CA9", "caller_hangup");
    expect(await store.commitDialog("CA9", { n: 4 }, "3", { hints: { mode: "phrases" } })).toEqual({ saved: false, call: "ended" });
    expect(await store.redis.exists(keys.hints("CA9"), keys.dialog("CA9"))).toBe(0);
    expect(await store.takeDialogTurn("CA9", "dialog-2", 10_000)).toEqual({ kind: "not_live", call: "ended" });
    expect(await store.takeDialogTurn("CA-unknown", "dialog-2", 10_000)).toEqual({ kind: "not_live", call: undefined });
    expect(await store.leaseOwner("CA9", "dialog")).toBeUndefined();
  });

  it("a dialog lease is extended only while it is its owner's, or free with the state where the owner left it; saves are fenced by it", async () => {
    await store.createCall(meta("CF1"));
    await store.takeDialogTurn("CF1", "dialog-1", 10_000);
    const saved = await store.commitDialog("CF1", { n: 1 }, "0", { fencedBy: "dialog-1" });
    expect(saved).toEqual({ saved: true, version: "1" });
    expect(await store.extendDialogLease("CF1", "dialog-1", 10_000, "1")).toBe(true);
    // Expired (Redis was unreachable past the TTL), nobody else took it: taken again at the version it left.
    await store.redis.del(keys.lease("CF1", "dialog"));
    expect(await store.extendDialogLease("CF1", "dialog-1", 10_000, "0")).toBe(false); // not where it left the state
    expect(await store.extendDialogLease("CF1", "dialog-1", 10_000, "1")).toBe(true);
    expect(await store.leaseOwner("CF1", "dialog")).toBe("dialog-1");
    // Another replica took it over (the owner paused past its TTL): not extended, and no save of the owner's goes in.
    await store.redis.set(keys.lease("CF1", "dialog"), "dialog-2");
    expect(await store.extendDialogLease("CF1", "dialog-1", 10_000, "1")).toBe(false);
    expect(await store.commitDialog("CF1", { n: 2 }, "1", { fencedBy: "dialog-1" })).toEqual({ saved: false, call: "live", leaseLost: true });
    expect(await store.commitDialog("CF1", { n: 2 }, "1", { releaseLeaseOf: "dialog-1" })).toEqual({ saved: false, call: "live", leaseLost: true });
    // The other replica finished the turn and gave the lease up: the state moved on, so it is not taken back.
    expect(await store.commitDialog("CF1", { n: 2 }, "1", { releaseLeaseOf: "dialog-2" })).toEqual({ saved: true, version: "2" });
    expect(await store.extendDialogLease("CF1", "dialog-1", 10_000, "1")).toBe(false);
    expect(await store.leaseOwner("CF1", "dialog")).toBeUndefined();
  });

  it("takeDialogTurn marks the turn's input in progress with the lease when none is, and commits set, keep or clear the mark", async () => {
    await store.createCall(meta("CM1"));
    const once = { scope: "dialog-input", id: "in1" };
    const first = await store.takeDialogTurn("CM1", "dialog-1", 10_000, { mark: "mark-in1", once });
    expect(first).toEqual({ kind: "held", dialog: { value: undefined, version: "1", mark: "mark-in1" }, marked: { firstTime: true } });
    expect(await store.loadDialog("CM1")).toEqual({ value: undefined, version: "1", mark: "mark-in1" });
    // Another input while in1 is in progress (its replica died): nothing is marked, the mark left is returned.
    await store.releaseLease("CM1", "dialog", "dialog-1", { index: false });
    const second = await store.takeDialogTurn("CM1", "dialog-2", 10_000, { mark: "mark-in2", once: { scope: "dialog-input", id: "in2" } });
    expect(second).toEqual({ kind: "held", dialog: { value: undefined, version: "1", mark: "mark-in1" } });
    expect(await store.redis.hexists(keys.once("CM1"), "dialog-input:in2")).toBe(0);
    // A save that keeps the mark (undefined), one that replaces it, one that clears it.
    expect(await store.commitDialog("CM1", { n: 1 }, "1")).toEqual({ saved: true, version: "2" });
    expect((await store.loadDialog("CM1")).mark).toBe("mark-in1");
    expect(await store.commitDialog("CM1", { n: 2 }, "2", { mark: "mark-in2", once: { scope: "dialog-input", id: "in2" } })).toEqual({ saved: true, version: "3", firstTime: true });
    expect((await store.loadDialog("CM1")).mark).toBe("mark-in2");
    expect(await store.commitDialog("CM1", { n: 3 }, "3", { mark: null })).toEqual({ saved: true, version: "4" });
    expect(await store.loadDialog("CM1")).toEqual({ value: { n: 3 }, version: "4" });
    // in1 again (a redelivery): marked, but not for the first time.
    await store.releaseLease("CM1", "dialog", "dialog-2", { index: false });
    expect(await store.takeDialogTurn("CM1", "dialog-1", 10_000, { mark: "mark-in1", once })).toEqual({
      kind: "held",
      dialog: { value: { n: 3 }, version: "5", mark: "mark-in1" },
      marked: { firstTime: false },
    });
    // Cleared only while it is still the same mark.
    expect(await store.clearDialogMark("CM1", "mark-other")).toBe(false);
    expect(await store.clearDialogMark("CM1", "mark-in1")).toBe(true);
    expect(await store.loadDialog("CM1")).toEqual({ value: { n: 3 }, version: "5" });
    expect(await store.redis.pttl(keys.dialog("CM1"))).toBeGreaterThan(0);
  });

  it("takeDialogTurn marks an input that is only for a call without state (a start) only while there is none", async () => {
    await store.createCall(meta("CM3"));
    const start = { mark: "mark-start", once: { scope: "dialog-input", id: "start" }, onlyWithoutState: true };
    expect(await store.takeDialogTurn("CM3", "dialog-1", 10_000, start)).toMatchObject({ dialog: { version: "1", mark: "mark-start" }, marked: { firstTime: true } });
    await store.commitDialog("CM3", { n: 1 }, "1", { mark: null, releaseLeaseOf: "dialog-1" });
    const again = await store.takeDialogTurn("CM3", "dialog-1", 10_000, { ...start, once: { scope: "dialog-input", id: "restart" } });
    expect(again).toEqual({ kind: "held", dialog: { value: { n: 1 }, version: "2" } });
    expect(await store.redis.hexists(keys.once("CM3"), "dialog-input:restart")).toBe(0);
  });

  it("takeDialogTurn leaves a mark of the older format (inside the state) to the caller and marks nothing", async () => {
    await store.createCall(meta("CM2"));
    await store.commitDialog("CM2", { n: 1, inProgress: { inputId: "old", input: "" } }, "0");
    const start = await store.takeDialogTurn("CM2", "dialog-1", 10_000, { mark: "mark-new", once: { scope: "dialog-input", id: "new" } });
    expect(start).toEqual({ kind: "held", dialog: { value: { n: 1, inProgress: { inputId: "old", input: "" } }, version: "1" } });
    expect(await store.redis.hget(keys.dialog("CM2"), "p")).toBeNull();
  });

  it("renewLeases renews many calls' leases in one pipeline: a script per call and one index update", async () => {
    for (const id of ["CR1", "CR2", "CR3"]) await store.createCall(meta(id));
    await store.acquireLease("CR2", "asr", "other", 10_000);
    await store.endCall("CR3", "caller_hangup");
    const commands: string[] = [];
    const monitor = await store.redis.monitor();
    // Commands the scripts run show up with the source "lua": only what the client sent counts.
    monitor.on("monitor", (_time: string, args: string[], source: string) => {
      // The store's own heartbeat PING may fall in the window: not part of the renewal.
      if (source !== "lua" && args[0].toUpperCase() !== "PING") commands.push(args[0].toUpperCase());
    });
    const stream = (store.redis as unknown as { stream: { write: (...args: unknown[]) => boolean } }).stream;
    const write = stream.write;
    let writes = 0;
    stream.write = (...args: unknown[]) => {
      if (!/^\*1\r\n\$4\r\nping\r\n$/i.test(String(args[0]))) writes++;
      return write.apply(stream, args);
    };
    let renewals;
    try {
      renewals = await store.renewLeases(["CR1", "CR2", "CR3", "CR4"], "asr", "mine", 10_000);
    } finally {
      stream.write = write;
    }
    // MONITOR reports on its own connection: wait for a marker sent after the renewal.
    await store.redis.echo("renewal-done");
    await waitFor(() => commands.includes("ECHO"), { what: "MONITOR to catch up" });
    monitor.disconnect();
    commands.pop();
    expect(renewals).toEqual([
      { callId: "CR1", held: true, call: "live" },
      { callId: "CR2", held: false, call: "live" },
      { callId: "CR3", held: false, call: "ended" }, // an ended call's lease is not taken again
      { callId: "CR4", held: true, call: undefined }, // no record (Redis lost it): the lease is kept meanwhile
    ]);
    // The first use of a script on a connection is sent as EVAL, later ones as EVALSHA.
    expect(commands.filter((c) => c === "EVAL" || c === "EVALSHA")).toHaveLength(4);
    expect(commands.filter((c) => c !== "EVAL" && c !== "EVALSHA")).toEqual(["ZADD"]);
    expect(writes).toBe(1);
    expect(await store.leaseOwner("CR1", "asr")).toBe("mine");
    expect(await store.leaseOwner("CR2", "asr")).toBe("other");
    expect(await store.leaseOwner("CR3", "asr")).toBeUndefined();
    expect(await store.orphanedCalls("asr", Date.now() + 60_000)).toEqual(expect.arrayContaining(["CR1", "CR4"]));
    expect(await store.renewLeases([], "asr", "mine", 10_000)).toEqual([]);
  });

  it("an owner's progress is saved with its renewals and on its own, only while it holds the lease, and goes with the call", async () => {
    for (const id of ["CP1", "CP2"]) await store.createCall(meta(id));
    await store.acquireLease("CP1", "asr", "mine", 10_000);
    await store.acquireLease("CP2", "asr", "other", 10_000);
    await store.renewLeases(["CP1", "CP2"], "asr", "mine", 10_000, (callId) => (callId === "CP1" ? "250" : "7"));
    expect(await store.progress("CP1", "asr")).toBe("250");
    expect(await store.progress("CP2", "asr")).toBeUndefined(); // not its lease
    await store.renewLeases(["CP1"], "asr", "mine", 10_000, () => undefined); // nothing new: kept
    expect(await store.progress("CP1", "asr")).toBe("250");
    expect(await store.saveProgress("CP1", "asr", "mine", "400")).toBe(true);
    expect(await store.saveProgress("CP1", "asr", "other", "9")).toBe(false);
    expect(await store.progress("CP1", "asr")).toBe("400");
    expect(await store.redis.pttl(keys.progress("CP1", "asr"))).toBeGreaterThan(store.options.liveTtlMs - 5_000); // the live TTL
    await store.endCall("CP1", "caller_hangup");
    expect(await liveKeysOf("CP1")).toEqual([]);
    expect(await store.saveProgress("CP1", "asr", "mine", "500")).toBe(false); // the lease went with the call
  });
});

/** The call's keys other than its record (meta, transcript, tools, turns, speech). */
async function liveKeysOf(callId: string): Promise<string[]> {
  const record = new Set([keys.meta(callId), keys.transcript(callId), keys.toolCalls(callId), keys.turns(callId), keys.speech(callId)]);
  return (await store.redis.keys(`vb:{${callId}}:*`)).filter((key) => !record.has(key));
}
