import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { subjects, type Bus } from "@voicebot/bus";
import { CallEnded, DialogInput, SpeechActivity, SpeechActivity_Kind, Transcript } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore, keys } from "@voicebot/state";
import { metricSum, startNats, startRedis, startTcpProxy, waitFor, type ServerHandle } from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { synthesizeTo8kPcm } from "../test/fixtures/make-audio.js";
import { collect, connectTestBus, newCallId, noiseFrames, standInDialog, startCall, streamAudio, utteranceFrames } from "../test/helpers.js";
import { definition } from "./service.js";

let nats: ServerHandle;
let redis: ServerHandle;
let bus: Bus;
let store: CallStore;
const replicas: ServiceHandle[] = [];
/** DialogInputs taken off the JetStream work queue, as the dialog service would. */
const dialogInputs: DialogInput[] = [];
let consumer: { stop(): Promise<void> } | undefined;

async function startReplica(instance: string, extra: Record<string, string> = {}): Promise<ServiceHandle> {
  const handle = await startService(definition, {
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    HTTP_PORT: "0",
    LOG_LEVEL: "warn",
    INSTANCE_ID: instance,
    ASR_LEASE_MS: "900",
    ...extra,
  });
  replicas.push(handle);
  return handle;
}

async function info(handle: ServiceHandle): Promise<{ activeCalls: number }> {
  return (await fetch(`http://127.0.0.1:${handle.ctx.port}/info`)).json() as Promise<{ activeCalls: number }>;
}

const metric = (handle: ServiceHandle, name: string) => metricSum(handle.ctx.registry, name);

/** Starts a call, waits until one replica owns it, and collects what asr publishes for it. */
async function ownedCall(expectedOwner?: string) {
  const callId = newCallId();
  const speech = collect(bus, subjects.speech(callId), SpeechActivity);
  const transcripts = collect(bus, subjects.transcript(callId), Transcript);
  await bus.nc.flush();
  await startCall(bus, store, callId);
  const owner = await waitFor(() => store.leaseOwner(callId, "asr"), { what: "the asr lease" });
  if (expectedOwner) expect(owner).toBe(expectedOwner);
  return { callId, speech, transcripts, owner };
}

const finals = (transcripts: Transcript[]) => transcripts.filter((t) => t.isFinal);

beforeAll(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  bus = await connectTestBus(nats.url);
  store = CallStore.connect(redis.url);
  consumer = await standInDialog(bus, dialogInputs);
});

// A failed test must not leave a replica behind to claim the next test's calls.
afterEach(async () => {
  await Promise.allSettled(replicas.splice(0).map((r) => r.stop()));
});

afterAll(async () => {
  await consumer?.stop();
  await bus?.close();
  await store?.close();
  await Promise.allSettled([nats?.stop(), redis?.stop()]);
});

describe("asr service", () => {
  it("each started call is claimed by exactly one of two replicas", async () => {
    const a = await startReplica("asr-claim-a");
    const b = await startReplica("asr-claim-b");
    const callIds = Array.from({ length: 8 }, () => newCallId());
    for (const callId of callIds) await startCall(bus, store, callId);
    const owners = await waitFor(
      async () => {
        const all = await Promise.all(callIds.map((id) => store.leaseOwner(id, "asr")));
        return all.every(Boolean) ? all : undefined;
      },
      { what: "every call to be owned" },
    );
    expect(owners.every((owner) => owner === "asr-claim-a" || owner === "asr-claim-b")).toBe(true);
    // Each call is worked on by one replica only: the counts add up to the number of calls.
    await waitFor(async () => (await info(a)).activeCalls + (await info(b)).activeCalls === callIds.length, { what: "active calls" });
    const perReplica = owners.filter((o) => o === "asr-claim-a").length;
    expect((await info(a)).activeCalls).toBe(perReplica);
    expect((await info(b)).activeCalls).toBe(callIds.length - perReplica);
    await Promise.all(callIds.map((id) => store.endCall(id, "test")));
  });

  it("recognizes an utterance: STARTED/STOPPED, a final transcript and the DialogInput on the work queue", async () => {
    const a = await startReplica("asr-speech");
    const { callId, speech, transcripts } = await ownedCall("asr-speech");
    await store.setJson(keys.hints(callId), { mode: "phrases", phrases: ["order status", "agent", "goodbye"] });
    const audio = await synthesizeTo8kPcm("order status", "slt");
    // Two frames lost before the speech: bridged with silence and counted.
    const lostBefore = await metric(a, "voicebot_asr_lost_frames_total");
    const sentAt = Date.now();
    await streamAudio(bus, callId, utteranceFrames(audio), 0, { skip: (i) => i === 10 || i === 11 });

    const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "a final", timeoutMs: 10_000 });
    expect(final).toMatchObject({ callId, text: "order status", isFinal: true, engine: "pocketsphinx" });
    expect(final.confidence).toBeGreaterThan(0);
    // The speech ended about when the synthesized audio did (500 ms lead-in + the clip), not at the 600 ms endpoint.
    const clipEndMs = sentAt + 500 + (audio.length / 8000) * 1000;
    expect(Math.abs(final.speechEndMs - clipEndMs)).toBeLessThan(400);
    expect(final.endpointWaitMs).toBeGreaterThanOrEqual(550);
    expect(final.endpointWaitMs).toBeLessThan(1_000);
    expect(final.finalAtMs).toBeGreaterThanOrEqual(final.speechEndMs + final.endpointWaitMs);

    await waitFor(() => speech.length === 2, { what: "STARTED and STOPPED" });
    expect(speech.map((s) => s.kind)).toEqual([SpeechActivity_Kind.KIND_STARTED, SpeechActivity_Kind.KIND_STOPPED]);
    expect(speech.every((s) => s.utteranceId === final.utteranceId && s.callId === callId && !s.discarded)).toBe(true);
    // The utterance id is the onset frame: the clip starts at frame 25 (500 ms), its first word a little later.
    expect(Number(final.utteranceId)).toBeGreaterThanOrEqual(25);
    expect(Number(final.utteranceId)).toBeLessThanOrEqual(45);
    expect(speech[0].audioMs).toBe(Number(final.utteranceId) * 20);
    expect(speech[1].atMs).toBe(final.speechEndMs);

    const input = await waitFor(() => dialogInputs.find((d) => d.callId === callId), { what: "the DialogInput" });
    expect(input.inputId).toBe(`${callId}:utt:${final.utteranceId}`);
    expect(input.input).toEqual({ $case: "transcript", value: final });
    expect(transcripts.filter((t) => !t.isFinal)).toEqual([]); // pocketsphinx has no partials
    expect((await metric(a, "voicebot_asr_lost_frames_total")) - lostBefore).toBe(2);
    expect(await metric(a, "voicebot_asr_final_latency_seconds")).toBeGreaterThan(0);
    await store.endCall(callId, "test");
  });

  it("honours digits hints: the final is a digit string", async () => {
    const a = await startReplica("asr-digits");
    const { callId, transcripts } = await ownedCall("asr-digits");
    await store.setJson(keys.hints(callId), { mode: "digits", phrases: [], minSilenceMs: 800 });
    const audio = await synthesizeTo8kPcm("four two seven one", "slt");
    await streamAudio(bus, callId, utteranceFrames(audio), 0);
    const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "a final", timeoutMs: 10_000 });
    expect(final.text).toBe("4271");
    // The dialog's 800 ms minimum silence replaced the 600 ms default.
    expect(final.endpointWaitMs).toBeGreaterThanOrEqual(750);
    await store.endCall(callId, "test");
  });

  it("a Redis link gone dark holds an utterance at most 3 s for its hints, then the last hints read are used", async () => {
    const link = await startTcpProxy(redis.port);
    try {
      await startReplica("asr-dark", { REDIS_URL: `redis://127.0.0.1:${link.port}` });
      const { callId, transcripts } = await ownedCall("asr-dark");
      await store.setJson(keys.hints(callId), { mode: "digits", phrases: [], minSilenceMs: 800 });
      const audio = await synthesizeTo8kPcm("four two seven one", "slt");
      const next = await streamAudio(bus, callId, utteranceFrames(audio), 0);
      await waitFor(() => finals(transcripts).length === 1 || undefined, { what: "the first final", timeoutMs: 10_000 });

      link.blackhole();
      const sentAt = Date.now();
      await streamAudio(bus, callId, utteranceFrames(audio), next);
      const [, second] = await waitFor(() => (finals(transcripts).length === 2 ? finals(transcripts) : undefined), { what: "the second final", timeoutMs: 15_000 });
      // The hints read gave up 3 s after the onset (a read on the dark link would have taken the store's 6 s command
      // deadline), and the digits hints read before still applied.
      expect(second.text).toBe("4271");
      expect(second.finalAtMs - sentAt).toBeLessThan(5_500);
      await store.endCall(callId, "test"); // else its lease, left behind, is an orphan for the next test's replicas
    } finally {
      link.restore();
      await link.close();
    }
  });

  it("a claim that fails on a lost Redis link is tried again: the call is owned once the link is back", async () => {
    const link = await startTcpProxy(redis.port);
    try {
      const a = await startReplica("asr-claim-retry", { REDIS_URL: `redis://127.0.0.1:${link.port}`, LOG_LEVEL: "error" });
      link.cut();
      const callId = newCallId();
      const transcripts = collect(bus, subjects.transcript(callId), Transcript);
      await bus.nc.flush();
      await startCall(bus, store, callId); // CallStarted reaches one replica, once
      await waitFor(async () => (await metric(a, "voicebot_asr_lease_errors_total")) >= 1 || undefined, { what: "the failed claim" });
      link.restore();
      await waitFor(async () => (await store.leaseOwner(callId, "asr")) === "asr-claim-retry" || undefined, { what: "the claim tried again", timeoutMs: 10_000 });
      expect(await metricSum(a.ctx.registry, "voicebot_asr_claims_total", { result: "claimed" })).toBe(1);
      await streamAudio(bus, callId, utteranceFrames(await synthesizeTo8kPcm("goodbye", "kal")), 0);
      await waitFor(() => finals(transcripts).length === 1 || undefined, { what: "the final", timeoutMs: 10_000 });
      await store.endCall(callId, "test");
    } finally {
      link.restore();
      await link.close();
    }
  });

  it("Silero hears no speech in clicks, tones or faint noise: nothing is published", async () => {
    const a = await startReplica("asr-clicks");
    const { callId, speech, transcripts } = await ownedCall("asr-clicks");
    const click = new Int16Array(8000 / 10); // 100 ms burst
    for (let i = 0; i < click.length; i++) click[i] = i % 8 < 4 ? 8000 : -8000;
    const tone = Int16Array.from({ length: 4000 }, (_, i) => Math.round(6000 * Math.sin((2 * Math.PI * 1000 * i) / 8000)));
    const frames = [...utteranceFrames(click, 500, 800), ...utteranceFrames(tone, 300, 800)];
    await streamAudio(bus, callId, frames, 0);
    // Every complete 32 ms window was decided (by the gate or the model).
    const windows = Math.floor((frames.length * 160) / 256);
    await waitFor(async () => (await metric(a, "voicebot_asr_vad_windows_total")) >= windows, { what: "the VAD to decide every window" });
    expect(speech).toEqual([]);
    expect(transcripts).toEqual([]);
    expect(await metric(a, "voicebot_asr_utterances_total")).toBe(0);
    await store.endCall(callId, "test");
  });

  it("with the energy VAD, a click opens an utterance that is dropped as too short", async () => {
    const a = await startReplica("asr-clicks-energy", { ASR_VAD: "energy" });
    const { callId, speech, transcripts } = await ownedCall("asr-clicks-energy");
    const click = new Int16Array(8000 / 10); // 100 ms burst: opens an utterance but is too short to keep
    for (let i = 0; i < click.length; i++) click[i] = i % 8 < 4 ? 8000 : -8000;
    await streamAudio(bus, callId, utteranceFrames(click, 500, 800), 0);
    await waitFor(() => speech.length === 2, { what: "STARTED and STOPPED of the click" });
    const dropped = await waitFor(async () => (await metric(a, "voicebot_asr_utterances_total")) || undefined, { what: "the click to be counted" });
    expect(dropped).toBe(1);
    expect(transcripts).toEqual([]);
    expect(dialogInputs.some((d) => d.callId === callId)).toBe(false);
    // Its STOPPED says no transcript follows (a barge-in by it was a false one).
    expect(speech.map((s) => [s.kind, s.discarded])).toEqual([
      [SpeechActivity_Kind.KIND_STARTED, false],
      [SpeechActivity_Kind.KIND_STOPPED, true],
    ]);
    await store.endCall(callId, "test");
  });

  it("publishes STARTED within about 100 ms of the caller starting to speak", async () => {
    await startReplica("asr-onset");
    const { callId, speech } = await ownedCall("asr-onset");
    const audio = await synthesizeTo8kPcm("agent please", "rms");
    // The onset: the first 10 ms of the clip within 40 dB of its loudest 10 ms.
    const levels = Array.from({ length: Math.floor(audio.length / 80) }, (_, i) => {
      let sum = 0;
      for (let j = i * 80; j < i * 80 + 80; j++) sum += audio[j] * audio[j];
      return 10 * Math.log10(sum / 80 + 1e-9);
    });
    const peak = Math.max(...levels);
    const onsetMs = 500 + levels.findIndex((l) => l > peak - 40) * 10;
    const started = Date.now();
    const onsetAt = started + onsetMs; // frames are published at real time from `started`
    const sent = streamAudio(bus, callId, utteranceFrames(audio), 0);
    const arrived = await waitFor(() => (speech.length > 0 ? Date.now() : undefined), { what: "STARTED", intervalMs: 2 });
    await sent;
    expect(speech[0].kind).toBe(SpeechActivity_Kind.KIND_STARTED);
    const delay = arrived - onsetAt;
    expect(delay).toBeGreaterThan(0);
    expect(delay).toBeLessThan(400); // about 65 ms here, with room for a busy test machine (the endpoint is 600 ms past the speech)
    await store.endCall(callId, "test");
  });

  it("an ended call releases its lease and audio subscription", async () => {
    const a = await startReplica("asr-end");
    const { callId, speech } = await ownedCall("asr-end");
    await waitFor(async () => (await info(a)).activeCalls === 1, { what: "the call to be active" });
    bus.publish(subjects.ended(callId), CallEnded, CallEnded.create({ callId, reason: "hangup", endedAtMs: Date.now() }), callId);
    await waitFor(async () => (await info(a)).activeCalls === 0, { what: "the call to be dropped" });
    await waitFor(async () => (await store.leaseOwner(callId, "asr")) === undefined, { what: "the lease to be released" });
    // A renewal round in flight when the call ended may re-add the index entry; it undoes that within its round.
    await waitFor(async () => (await store.redis.zscore(keys.leaseIndex("asr"), callId)) === null, { what: "the lease index entry to go" });

    // Audio still published for the call reaches nobody: the subscription is gone.
    const received = () => metric(a, "voicebot_bus_messages_received_total");
    const before = await received();
    await streamAudio(bus, callId, noiseFrames(100), 0);
    await a.ctx.bus.nc.flush(); // a round trip on A's connection: anything routed to A has been handled
    expect(await received()).toBe(before);
    expect(speech).toEqual([]);
    // Lease renewals have stopped too: nothing re-creates the lease.
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(await store.leaseOwner(callId, "asr")).toBeUndefined();
  });

  it("a replica whose connections die loses its call to another replica, which recognizes the next utterance", async () => {
    const a = await startReplica("asr-crash-a", { LOG_LEVEL: "error" });
    const { callId, transcripts } = await ownedCall("asr-crash-a");
    const b = await startReplica("asr-crash-b");
    await store.setJson(keys.hints(callId), { mode: "phrases", phrases: ["order status", "agent", "goodbye"] });

    // A crash as seen from outside: A stops renewing its lease and stops hearing audio.
    a.ctx.store.redis.disconnect();
    await a.ctx.bus.close();
    const crashedAt = Date.now();
    await waitFor(async () => (await store.leaseOwner(callId, "asr")) === "asr-crash-b", { what: "B to take the call", intervalMs: 20 });
    expect(Date.now() - crashedAt).toBeLessThan(2_000); // 900 ms lease + a 250 ms scan, with margin
    // B counts the takeover right after its lease write returns, which the test's own read may see first.
    await waitFor(async () => (await metric(b, "voicebot_asr_takeovers_total")) === 1, { what: "B to count the takeover", timeoutMs: 1_000 });

    const audio = await synthesizeTo8kPcm("goodbye", "kal");
    await streamAudio(bus, callId, utteranceFrames(audio), 500);
    const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "B's final", timeoutMs: 10_000 });
    expect(final.text).toBe("goodbye");
    await waitFor(() => dialogInputs.some((d) => d.inputId === `${callId}:utt:${final.utteranceId}`), { what: "B's DialogInput" });
    await store.endCall(callId, "test");
  });

  it("an engine failure still gives the caller an empty final (so the dialog reprompts)", async () => {
    // The engine's working directory disappearing under it (a tmp cleaner) makes every decode fail.
    const modelDir = await mkdtemp(path.join(os.tmpdir(), "asr-model-"));
    const a = await startReplica("asr-engine-error", { ASR_MODEL_DIR: modelDir, LOG_LEVEL: "error" });
    const { callId, speech, transcripts } = await ownedCall("asr-engine-error");
    await rm(modelDir, { recursive: true, force: true });
    await streamAudio(bus, callId, utteranceFrames(await synthesizeTo8kPcm("agent", "slt")), 0);
    const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "a final", timeoutMs: 10_000 });
    expect(final).toMatchObject({ callId, text: "", confidence: 0, isFinal: true });
    expect(speech.map((s) => s.kind)).toEqual([SpeechActivity_Kind.KIND_STARTED, SpeechActivity_Kind.KIND_STOPPED]);
    expect(await metric(a, "voicebot_asr_engine_errors_total")).toBe(1);
    await waitFor(() => dialogInputs.some((d) => d.inputId === `${callId}:utt:${final.utteranceId}`), { what: "the empty final's DialogInput" });
    await store.endCall(callId, "test");
  });
});
