// The service with ASR_ENGINES=assemblyai,pocketsphinx: the real AssemblyAI SDK talks to the fake streaming
// server. Partials are relayed, a stalled provider fails over to pocketsphinx (the final still arrives), and
// partials that end mid-sentence keep the utterance open.
import { subjects, type Bus } from "@voicebot/bus";
import { DialogInput, Transcript } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore, keys } from "@voicebot/state";
import {
  ensureTestCertificate,
  metricSum,
  startFakeAssemblyAI,
  startNats,
  startRedis,
  trustTestCertificateInProcess,
  waitFor,
  type FakeAssemblyAI,
  type FakeAssemblyAIScript,
  type ServerHandle,
} from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { synthesizeTo8kPcm } from "../test/fixtures/make-audio.js";
import { collect, connectTestBus, lineNoise, newCallId, standInDialog, startCall, streamAudio, utteranceFrames } from "../test/helpers.js";
import { MAX_TRANSCRIPT_CHARS } from "./call-session.js";
import { definition } from "./service.js";

const API_KEY = "aai-test-key-service";

let nats: ServerHandle;
let redis: ServerHandle;
let fake: FakeAssemblyAI;
let script: FakeAssemblyAIScript = {};
let bus: Bus;
let store: CallStore;
const replicas: ServiceHandle[] = [];
const dialogInputs: DialogInput[] = [];
let consumer: { stop(): Promise<void> } | undefined;

async function startReplica(instance: string, extra: Record<string, string> = {}): Promise<ServiceHandle> {
  const handle = await startService(definition, {
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    HTTP_PORT: "0",
    LOG_LEVEL: "error",
    INSTANCE_ID: instance,
    ASR_ENGINES: "assemblyai,pocketsphinx",
    ASSEMBLYAI_API_KEY: API_KEY,
    ASSEMBLYAI_BASE_URL: fake.url,
    ...extra,
  });
  replicas.push(handle);
  return handle;
}

const metric = (handle: ServiceHandle, name: string, labels: Record<string, string> = {}) =>
  metricSum(handle.ctx.registry, name, labels);

async function ownedCall(owner: string, hints: object = { mode: "phrases", phrases: ["order status", "agent", "goodbye"] }) {
  const callId = newCallId();
  const transcripts = collect(bus, subjects.transcript(callId), Transcript);
  await bus.nc.flush();
  await startCall(bus, store, callId);
  await store.setJson(keys.hints(callId), hints);
  await waitFor(async () => (await store.leaseOwner(callId, "asr")) === owner, { what: "the asr lease" });
  return { callId, transcripts };
}

const finals = (transcripts: Transcript[]) => transcripts.filter((t) => t.isFinal);

/** flite pads each clip with ~250 ms of silence: the caller pauses for ~800 ms between the two. */
const PAUSE_MS = 300;

/** Speech without the synthesizer's own leading and trailing silence. */
function trimmed(pcm: Int16Array): Int16Array {
  const loud = (x: number) => Math.abs(x) > 300;
  return pcm.slice(pcm.findIndex(loud), pcm.findLastIndex(loud) + 1);
}

/** Two stretches of speech with `pauseMs` of line noise between them, as 20 ms μ-law frames. */
function twoPartFrames(first: Int16Array, second: Int16Array, pauseMs: number): Uint8Array[] {
  const pause = lineNoise(pauseMs, 7);
  const joined = new Int16Array(first.length + pause.length + second.length);
  joined.set(first, 0);
  joined.set(pause, first.length);
  joined.set(second, first.length + pause.length);
  return utteranceFrames(joined, 500, 2000);
}

beforeAll(async () => {
  trustTestCertificateInProcess(await ensureTestCertificate());
  [nats, redis, fake] = await Promise.all([startNats(), startRedis(), startFakeAssemblyAI({ apiKey: API_KEY, script: () => script })]);
  bus = await connectTestBus(nats.url);
  store = CallStore.connect(redis.url);
  consumer = await standInDialog(bus, dialogInputs);
});

afterEach(async () => {
  script = {};
  await Promise.allSettled(replicas.splice(0).map((r) => r.stop()));
});

afterAll(async () => {
  await consumer?.stop();
  await bus?.close();
  await store?.close();
  await Promise.allSettled([nats?.stop(), redis?.stop(), fake?.stop()]);
});

describe("asr service with ASR_ENGINES=assemblyai,pocketsphinx", () => {
  it("relays AssemblyAI's partials and publishes its final", async () => {
    script = { text: "i want to check my order status", msPerWord: 120 };
    await startReplica("asr-partials");
    const { callId, transcripts } = await ownedCall("asr-partials");
    await streamAudio(bus, callId, utteranceFrames(await synthesizeTo8kPcm("I want to check my order status", "slt")), 0);
    const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "a final", timeoutMs: 10_000 });
    expect(final).toMatchObject({ text: "i want to check my order status", engine: "assemblyai" });
    const partials = transcripts.filter((t) => !t.isFinal);
    expect(partials.length).toBeGreaterThan(2);
    for (const p of partials) expect(p).toMatchObject({ callId, utteranceId: final.utteranceId, engine: "assemblyai" });
    expect(partials.every((p) => final.text.startsWith(p.text))).toBe(true);
    // Partials come while the caller talks, so before the final.
    expect(transcripts.indexOf(final)).toBe(transcripts.length - 1);
    // Not one of the state's answers word for word: the whole minimum silence.
    expect(final.endpointWaitMs).toBeGreaterThanOrEqual(580);
    await store.endCall(callId, "test");
  });

  it("fails a stalled AssemblyAI session over to pocketsphinx: the final still arrives, and the next utterance skips AssemblyAI", async () => {
    script = { stallAfterBegin: true };
    const a = await startReplica("asr-failover", { ASR_ENGINE_TIMEOUT_MS: "1000" });
    const { callId, transcripts } = await ownedCall("asr-failover");
    const sessionsBefore = fake.sessions.length;
    const audio = await synthesizeTo8kPcm("order status", "slt");
    let next = await streamAudio(bus, callId, utteranceFrames(audio), 0);
    const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "the final", timeoutMs: 10_000 });
    expect(final).toMatchObject({ text: "order status", engine: "pocketsphinx" });
    // Watchdog (1 s after the end of speech was decided) plus the replayed decode.
    expect(final.finalAtMs - final.speechEndMs - final.endpointWaitMs).toBeGreaterThanOrEqual(1000);
    expect(final.finalAtMs - final.speechEndMs - final.endpointWaitMs).toBeLessThan(2500);
    await waitFor(() => dialogInputs.some((d) => d.inputId === `${callId}:utt:${final.utteranceId}`), { what: "the DialogInput" });
    expect(fake.sessions.length).toBe(sessionsBefore + 1);
    expect(await metric(a, "voicebot_asr_engine_failovers_total", { from: "assemblyai", to: "pocketsphinx", reason: "timeout" })).toBe(1);
    expect(await metric(a, "voicebot_asr_provider_errors_total", { engine: "assemblyai" })).toBe(1);
    expect(await metric(a, "voicebot_asr_engine_errors_total")).toBe(0);

    next = await streamAudio(bus, callId, utteranceFrames(await synthesizeTo8kPcm("goodbye", "kal")), next);
    const second = await waitFor(() => finals(transcripts)[1], { what: "the second final", timeoutMs: 10_000 });
    expect(second).toMatchObject({ text: "goodbye", engine: "pocketsphinx" });
    expect(second.finalAtMs - second.speechEndMs - second.endpointWaitMs).toBeLessThan(1000); // no watchdog wait
    expect(fake.sessions.length).toBe(sessionsBefore + 1); // AssemblyAI cools down
    await store.endCall(callId, "test");
  });

  it.each([
    ["a cut-off JSON text frame", '{"type":"Turn","transcript":"ord'],
    ["a binary frame", Buffer.from([1, 2, 3, 4])],
  ])("%s from AssemblyAI fails that session over to pocketsphinx, counted and logged; the process lives on", async (_, frame) => {
    // In-process: a frame that threw out of the SDK's socket handler would take this test process down.
    script = { text: "order status", garbage: { afterAudioMs: 300, frame } };
    const instance = `asr-garbage-${typeof frame === "string" ? "text" : "binary"}`;
    const a = await startReplica(instance);
    const { callId, transcripts } = await ownedCall(instance);
    await streamAudio(bus, callId, utteranceFrames(await synthesizeTo8kPcm("order status", "slt")), 0);
    const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "the final", timeoutMs: 10_000 });
    expect(final).toMatchObject({ text: "order status", engine: "pocketsphinx" });
    expect(await metric(a, "voicebot_asr_engine_failovers_total", { from: "assemblyai", to: "pocketsphinx" })).toBe(1);
    await store.endCall(callId, "test");
  });

  it("cuts a transcript longer than any utterance (an engine fault) before it reaches the record and the logs", async () => {
    script = { text: "order status ".repeat(300).trim() }; // 3,899 characters for 1 s of speech
    const a = await startReplica("asr-long-text");
    const { callId, transcripts } = await ownedCall("asr-long-text");
    await streamAudio(bus, callId, utteranceFrames(await synthesizeTo8kPcm("order status", "slt")), 0);
    const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "the final", timeoutMs: 10_000 });
    expect(final.engine).toBe("assemblyai");
    expect(final.text).toHaveLength(MAX_TRANSCRIPT_CHARS);
    expect(transcripts.every((t) => t.text.length <= MAX_TRANSCRIPT_CHARS)).toBe(true);
    expect(await metric(a, "voicebot_asr_transcripts_cut_total", { engine: "assemblyai" })).toBe(1);
    await store.endCall(callId, "test");
  });

  it("keeps the utterance open through a pause when the partial ends mid-sentence", async () => {
    // Everything the fake will say is revealed early, so the partial ends in "is" through the pause.
    script = { text: "my order number is", msPerWord: 50 };
    const a = await startReplica("asr-hold");
    const { callId, transcripts } = await ownedCall("asr-hold");
    const first = await synthesizeTo8kPcm("my order number is", "slt");
    const second = await synthesizeTo8kPcm("four two seven one", "slt");
    const sentAt = Date.now();
    await streamAudio(bus, callId, twoPartFrames(first, second, PAUSE_MS), 0);
    const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "the final", timeoutMs: 10_000 });
    await new Promise((resolve) => setTimeout(resolve, 300)); // a second final would be out by now
    expect(finals(transcripts)).toHaveLength(1);
    // One utterance to the end of the digits; the end waited for the maximum silence, as the text still ended in "is".
    const secondEndsAt = sentAt + 500 + ((first.length + second.length) / 8000) * 1000 + PAUSE_MS;
    expect(Math.abs(final.speechEndMs - secondEndsAt)).toBeLessThan(400);
    expect(final.endpointWaitMs).toBeGreaterThanOrEqual(1400);
    expect(await metric(a, "voicebot_asr_endpoint_extensions_total")).toBe(1);
    await store.endCall(callId, "test");
  });

  describe("complete answers from partials", () => {
    /** "agent" said, with the fake's partial "agent" revealed `revealMs` after the caller's last sound. */
    async function agentSaid(instance: string, revealMs: number) {
      const speech = trimmed(await synthesizeTo8kPcm("agent", "slt"));
      // The engine hears the utterance from 300 ms of pre-roll before the onset on.
      script = { text: "agent", msPerWord: Math.max(1, 300 + (speech.length / 8000) * 1000 + revealMs) };
      const a = await startReplica(instance);
      const { callId, transcripts } = await ownedCall(instance);
      await streamAudio(bus, callId, utteranceFrames(speech), 0);
      const [final] = await waitFor(() => (finals(transcripts).length ? finals(transcripts) : undefined), { what: "the final", timeoutMs: 10_000 });
      await store.endCall(callId, "test");
      return { final, complete: await metric(a, "voicebot_asr_utterances_total", { end: "complete" }) };
    }

    it("ends after 300 ms of silence when a partial that came in the silence is one of the state's answers", async () => {
      // As a streaming engine's last word comes: once the next audio shows it is over.
      const { final, complete } = await agentSaid("asr-complete", 150);
      expect(final).toMatchObject({ text: "agent", engine: "assemblyai" });
      expect(final.endpointWaitMs).toBeGreaterThanOrEqual(280);
      expect(final.endpointWaitMs).toBeLessThan(480);
      expect(complete).toBe(1);
    });

    it("does not count a partial that came while the caller was still speaking", async () => {
      // The whole answer was there before the caller's last sound: what followed might have been more words.
      const { final, complete } = await agentSaid("asr-complete-stale", -250);
      expect(final.text).toBe("agent");
      expect(final.endpointWaitMs).toBeGreaterThanOrEqual(580);
      expect(complete).toBe(0);
    });
  });

  it("ends at the minimum silence when the partial reads as complete", async () => {
    script = { text: "order status please", msPerWord: 50 };
    const a = await startReplica("asr-nohold");
    const { callId, transcripts } = await ownedCall("asr-nohold");
    const first = await synthesizeTo8kPcm("my order number is", "slt");
    const second = await synthesizeTo8kPcm("four two seven one", "slt");
    await streamAudio(bus, callId, twoPartFrames(first, second, PAUSE_MS), 0);
    const both = await waitFor(() => (finals(transcripts).length === 2 ? finals(transcripts) : undefined), { what: "two finals", timeoutMs: 10_000 });
    for (const final of both) expect(final.endpointWaitMs).toBeLessThan(900);
    expect(await metric(a, "voicebot_asr_endpoint_extensions_total")).toBe(0);
    await store.endCall(callId, "test");
  });
});
