// The progress an asr owner saves in Redis: the frame a replica taking the call over asks ingress to replay from.
// It must never be past the start of an utterance whose final has not gone out (its words would be lost), and must
// move past every utterance whose final has (it would be heard twice). The replay itself runs through a real
// ingress in test/e2e (faults-replicas, faults-rolling).
import { subjects, type Bus } from "@voicebot/bus";
import { DialogInput, SpeechActivity, SpeechActivity_Kind, Transcript } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import { startNats, startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { synthesizeTo8kPcm } from "../test/fixtures/make-audio.js";
import { collect, connectTestBus, newCallId, standInDialog, startCall, streamAudio, utteranceFrames } from "../test/helpers.js";
import { definition } from "./service.js";

let nats: ServerHandle;
let redis: ServerHandle;
let bus: Bus;
let store: CallStore;
let speechPcm: Int16Array;
const replicas: ServiceHandle[] = [];
const dialogInputs: DialogInput[] = [];
let consumer: { stop(): Promise<void> } | undefined;

/** Lease 600 ms: renewed (and the progress saved with it) every 200 ms. */
async function startReplica(instance: string): Promise<ServiceHandle> {
  const handle = await startService(definition, {
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    HTTP_PORT: "0",
    LOG_LEVEL: "error",
    INSTANCE_ID: instance,
    ASR_LEASE_MS: "600",
    ASR_VAD: "energy",
  });
  replicas.push(handle);
  return handle;
}

async function ownedCall(owner: string) {
  const callId = newCallId();
  const speech = collect(bus, subjects.speech(callId), SpeechActivity);
  const transcripts = collect(bus, subjects.transcript(callId), Transcript);
  await bus.nc.flush();
  await startCall(bus, store, callId);
  await waitFor(async () => (await store.leaseOwner(callId, "asr")) === owner, { what: "the asr lease" });
  return { callId, speech, transcripts };
}

const saved = async (callId: string) => {
  const progress = await store.progress(callId, "asr");
  return progress === undefined ? undefined : Number(progress);
};
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

beforeAll(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  bus = await connectTestBus(nats.url);
  store = CallStore.connect(redis.url);
  consumer = await standInDialog(bus, dialogInputs);
  speechPcm = await synthesizeTo8kPcm("order status", "flite");
});

afterEach(async () => {
  await Promise.allSettled(replicas.splice(0).map((r) => r.stop()));
});

afterAll(async () => {
  await consumer?.stop();
  await bus?.close();
  await store?.close();
  await Promise.allSettled([nats?.stop(), redis?.stop()]);
});

describe("asr progress", () => {
  it("stays before an utterance until its final is out, then moves past it; quiet audio moves it along", async () => {
    await startReplica("asr-progress-a");
    const { callId, speech, transcripts } = await ownedCall("asr-progress-a");
    const frames = utteranceFrames(speechPcm, 1_000, 1_200);
    const speechFrames = Math.ceil(speechPcm.length / 160);
    // Quiet, then the first two thirds of the words: the utterance is open.
    const openUntil = 50 + Math.floor((speechFrames * 2) / 3);
    await streamAudio(bus, callId, frames.slice(0, openUntil), 0);
    const started = await waitFor(() => speech.find((s) => s.kind === SpeechActivity_Kind.KIND_STARTED), { what: "the utterance's start" });
    const onset = Number(started.utteranceId);
    await sleep(500); // two renewals
    const whileOpen = await saved(callId);
    expect(whileOpen, "saved by the renewals").toBeDefined();
    expect(whileOpen!).toBeLessThan(onset);
    // Quiet before it was dealt with: the progress moved along it (it was not left at 0).
    expect(whileOpen!).toBeGreaterThan(10);

    await streamAudio(bus, callId, frames.slice(openUntil), openUntil);
    const final = await waitFor(() => transcripts.find((t) => t.isFinal), { what: "the final", timeoutMs: 10_000 });
    expect(final.text).not.toBe("");
    const stopped = speech.find((s) => s.kind === SpeechActivity_Kind.KIND_STOPPED)!;
    const lastSpeechFrame = stopped.audioMs / 20 - 1;
    await waitFor(async () => ((await saved(callId)) ?? 0) > lastSpeechFrame, { what: "the progress past the utterance" });
    expect(await saved(callId)).toBeLessThanOrEqual(frames.length);
  });

  it("a replica handing the call over on drain leaves the progress at the utterance it dropped", async () => {
    const a = await startReplica("asr-progress-drain-a");
    const { callId, speech } = await ownedCall("asr-progress-drain-a");
    const frames = utteranceFrames(speechPcm, 600, 1_200);
    const speechFrames = Math.ceil(speechPcm.length / 160);
    await streamAudio(bus, callId, frames.slice(0, 30 + Math.floor(speechFrames / 2)), 0);
    const started = await waitFor(() => speech.find((s) => s.kind === SpeechActivity_Kind.KIND_STARTED), { what: "the utterance's start" });
    await a.stop();
    const handedOver = await saved(callId);
    expect(handedOver).toBeDefined();
    expect(handedOver!).toBeLessThan(Number(started.utteranceId));
    // No final went out for it: the successor is the one to recognize it.
    expect(dialogInputs.filter((i) => i.callId === callId)).toHaveLength(0);
  });

  it("a replica that lost the lease saves nothing over its successor's progress", async () => {
    await startReplica("asr-progress-old");
    const { callId } = await ownedCall("asr-progress-old");
    await store.redis.set(`vb:{${callId}}:lease:asr`, "asr-progress-new", "PX", 60_000);
    expect(await store.saveProgress(callId, "asr", "asr-progress-new", "120")).toBe(true);
    expect(await store.saveProgress(callId, "asr", "asr-progress-old", "7")).toBe(false);
    await streamAudio(bus, callId, utteranceFrames(speechPcm, 400, 400), 0);
    await sleep(400); // renewals of the old owner: refused
    expect(await saved(callId)).toBe(120);
  });
});
