// Early finals: with an engine that recognizes at the end (the OpenAI upload), the asr sends the utterance so far
// ASR_EARLY_FINAL_LEAD_MS before the endpoint would come, so the round trip runs during the rest of the endpoint
// silence. Speech before the endpoint makes that result stale; an early upload that failed before the endpoint is
// redone there, one that fails after it is not (the caller would wait twice).
// The service runs against the fake OpenAI transcription server, which answers by the uploaded audio's length.
import { subjects, type Bus } from "@voicebot/bus";
import { SpeechActivity, SpeechActivity_Kind, Transcript } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore, keys } from "@voicebot/state";
import {
  metricSum,
  startFakeOpenAI,
  startNats,
  startRedis,
  waitFor,
  type FakeOpenAI,
  type FakeTranscriptionReply,
  type FakeTranscriptionRequest,
  type ServerHandle,
} from "@voicebot/testing";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { synthesizeTo8kPcm } from "../test/fixtures/make-audio.js";
import { collect, connectTestBus, lineNoise, newCallId, standInDialog, startCall, streamAudio, utteranceFrames } from "../test/helpers.js";
import { AssemblyAIEngine } from "./engines/assemblyai.js";
import { FallbackEngine } from "./engines/fallback.js";
import { OpenAIEngine } from "./engines/openai.js";
import { definition } from "./service.js";

const API_KEY = "openai-test-key-early";
const MIN_SILENCE_MS = 600;
/** 600 − 400: the early upload goes 200 ms into the silence. */
const LEAD_MS = 400;

let nats: ServerHandle;
let redis: ServerHandle;
let openai: FakeOpenAI;
let bus: Bus;
let store: CallStore;
let consumer: { stop(): Promise<void> } | undefined;
/** How the fake answers the next uploads (default: the audio's length as text, after 150 ms). */
let answer: (request: FakeTranscriptionRequest) => FakeTranscriptionReply | Promise<FakeTranscriptionReply>;
const byLength = (request: FakeTranscriptionRequest): FakeTranscriptionReply => ({ text: `bytes ${request.file.wav.dataBytes}`, delayMs: 150 });

async function startAsr(instanceId: string, leadMs: number, extra: Record<string, string> = {}): Promise<ServiceHandle> {
  const asr = await startService(definition, {
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    HTTP_PORT: "0",
    LOG_LEVEL: "error",
    INSTANCE_ID: instanceId,
    ASR_ENGINES: "openai",
    ASR_OPENAI_BASE_URL: openai.baseUrl,
    ASR_OPENAI_API_KEY: API_KEY,
    ASR_VAD: "energy",
    ASR_MIN_SILENCE_MS: String(MIN_SILENCE_MS),
    ASR_EARLY_FINAL_LEAD_MS: String(leadMs),
    ...extra,
  });
  return asr;
}

async function ownedCall(instanceId: string, hints?: object) {
  const callId = newCallId();
  const speech = collect(bus, subjects.speech(callId), SpeechActivity);
  const transcripts = collect(bus, subjects.transcript(callId), Transcript);
  await bus.nc.flush();
  await startCall(bus, store, callId);
  if (hints) await store.setJson(keys.hints(callId), hints);
  await waitFor(async () => (await store.leaseOwner(callId, "asr")) === instanceId, { what: "the asr lease" });
  return { callId, speech, transcripts };
}

/**
 * One utterance (400 ms of line noise before it, `silenceMs` after) into a new call owned by `instanceId`, up to its
 * final: the call and the uploads the fake saw for it.
 */
async function speakUntilFinal(instanceId: string, pcm: Int16Array, silenceMs = 1200, hints?: object) {
  const call = await ownedCall(instanceId, hints);
  const uploadsBefore = openai.transcriptions.length;
  await streamAudio(bus, call.callId, utteranceFrames(pcm, 400, silenceMs), 0);
  await waitFor(() => call.transcripts.some((t) => t.isFinal), { what: "the final" });
  return { call, uploads: openai.transcriptions.slice(uploadsBefore) };
}

/** When the asr decided the utterance was over: its STOPPED names the caller's last speech, the endpoint is later. */
function endpointAt(call: { speech: SpeechActivity[] }): number {
  const stopped = call.speech.find((s) => s.kind === SpeechActivity_Kind.KIND_STOPPED);
  if (!stopped) throw new Error("no STOPPED activity");
  return stopped.atMs + MIN_SILENCE_MS;
}

/** Speech without the synthesizer's own leading and trailing silence. */
function trimmed(pcm: Int16Array): Int16Array {
  const loud = (x: number) => Math.abs(x) > 300;
  const start = pcm.findIndex(loud);
  const end = pcm.findLastIndex(loud);
  return pcm.slice(start, end + 1);
}

beforeAll(async () => {
  [nats, redis, openai] = await Promise.all([startNats(), startRedis(), startFakeOpenAI({ apiKey: API_KEY, transcribe: (request) => answer(request) })]);
  bus = await connectTestBus(nats.url);
  store = CallStore.connect(redis.url);
  consumer = await standInDialog(bus);
});

afterAll(async () => {
  await consumer?.stop();
  await bus?.close();
  await store?.close();
  await Promise.allSettled([nats?.stop(), redis?.stop(), openai?.stop()]);
});

beforeEach(() => {
  answer = byLength;
});

describe("early finals (ASR_EARLY_FINAL_LEAD_MS)", () => {
  let asr: ServiceHandle;
  const early = (outcome: string) => metricSum(asr.ctx.registry, "voicebot_asr_early_finals_total", { outcome });
  beforeAll(async () => {
    asr = await startAsr("asr-early", LEAD_MS);
  });
  afterAll(async () => {
    await asr?.stop();
  });

  it("uploads during the endpoint silence and publishes that result at the endpoint, with no second upload", async () => {
    const speech = await synthesizeTo8kPcm("order status", "slt");
    const usedBefore = await early("used");
    const { call, uploads } = await speakUntilFinal("asr-early", speech);

    expect(uploads).toHaveLength(1);
    // The upload went out while the caller was still inside the endpoint silence (200 ms into its 600).
    expect(uploads[0].request.at).toBeLessThan(endpointAt(call) - 100);
    const final = call.transcripts.find((t) => t.isFinal)!;
    expect(final.text).toBe(`bytes ${uploads[0].file.wav.dataBytes}`);
    expect(final.engine).toBe("openai");
    expect((await early("used")) - usedBefore).toBe(1);
    await store.endCall(call.callId, "test");
  });

  it("drops the early result when the caller speaks again before the endpoint; the final hears the whole utterance", async () => {
    const first = trimmed(await synthesizeTo8kPcm("order status", "slt"));
    const second = trimmed(await synthesizeTo8kPcm("for my last order", "slt"));
    // A 350 ms pause inside the utterance: past the early point, short of the minimum silence.
    const pause = 2800;
    const pcm = new Int16Array(first.length + pause + second.length);
    pcm.set(first, 0);
    pcm.set(lineNoise(350, 7), first.length);
    pcm.set(second, first.length + pause);
    const usedBefore = await early("used");
    const discardedBefore = await early("discarded");
    const { call, uploads } = await speakUntilFinal("asr-early", pcm);

    expect(uploads).toHaveLength(2);
    expect(uploads[1].file.wav.dataBytes).toBeGreaterThan(uploads[0].file.wav.dataBytes + second.length * 2);
    const finals = call.transcripts.filter((t) => t.isFinal);
    expect(call.speech.filter((a) => a.kind === SpeechActivity_Kind.KIND_STOPPED)).toHaveLength(1);
    expect(finals.map((t) => t.text)).toEqual([`bytes ${uploads[1].file.wav.dataBytes}`]);
    expect((await early("discarded")) - discardedBefore).toBe(1);
    expect((await early("used")) - usedBefore).toBe(1);
    // Every recognizer, early ones included, is let go.
    await waitFor(async () => (await metricSum(asr.ctx.registry, "voicebot_asr_active_sessions")) === 0, { what: "no recognizer left open" });
    await store.endCall(call.callId, "test");
  });

  it("recognizes again at the endpoint when the early upload fails", async () => {
    const speech = await synthesizeTo8kPcm("agent please", "kal");
    let answered = 0;
    answer = (request) => (++answered === 1 ? { status: 400, message: "bad early request" } : byLength(request));
    const failedBefore = await early("failed");
    const { call, uploads } = await speakUntilFinal("asr-early", speech);

    expect(uploads).toHaveLength(2);
    const final = call.transcripts.find((t) => t.isFinal)!;
    expect(final.text).toBe(`bytes ${uploads[1].file.wav.dataBytes}`);
    expect((await early("failed")) - failedBefore).toBe(1);
    await store.endCall(call.callId, "test");
  });

  it("does not redo an early upload that fails after the endpoint: the utterance ends as an engine error", async () => {
    const speech = await synthesizeTo8kPcm("agent please", "kal");
    // Answered 700 ms after the early upload (200 ms into a 600 ms silence): after the endpoint, with an error.
    answer = async () => {
      await new Promise((resolve) => setTimeout(resolve, 700));
      return { status: 400, message: "late failure" };
    };
    const failedBefore = await early("failed");
    const { call, uploads } = await speakUntilFinal("asr-early", speech, 1500);

    expect(uploads).toHaveLength(1);
    expect(call.transcripts.find((t) => t.isFinal)!.text).toBe("");
    expect((await early("failed")) - failedBefore).toBe(1);
    await store.endCall(call.callId, "test");
  });

  it("sends nothing early for an utterance too short to recognize (a click)", async () => {
    const click = new Int16Array(800); // 100 ms of a loud tone: opens an utterance, less than the 150 ms minimum speech
    for (let i = 0; i < click.length; i++) click[i] = Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / 8000));
    const discardedBefore = await early("discarded");
    const call = await ownedCall("asr-early");
    const uploadsBefore = openai.transcriptions.length;
    await streamAudio(bus, call.callId, utteranceFrames(click, 400, 1200), 0);
    await waitFor(() => call.speech.some((a) => a.kind === SpeechActivity_Kind.KIND_STOPPED), { what: "the click's end" });
    expect(openai.transcriptions.length - uploadsBefore).toBe(0);
    expect(call.transcripts.filter((t) => t.isFinal)).toEqual([]);
    expect((await early("discarded")) - discardedBefore).toBe(0);
    await store.endCall(call.callId, "test");
  });
});

describe("complete answers (ASR_COMPLETE_SILENCE_MS, default 300)", () => {
  let asr: ServiceHandle;
  const orderLine = { mode: "phrases", phrases: ["order status", "agent", "goodbye"] };
  const ended = (end: string) => metricSum(asr.ctx.registry, "voicebot_asr_utterances_total", { end });
  /** The final of "order status" as the fake hears it (`text`, after `delayMs`), in a state with these hints. */
  async function finalOf(text: string, delayMs: number, hints: object) {
    answer = () => ({ text, delayMs });
    const { call, uploads } = await speakUntilFinal("asr-complete", await synthesizeTo8kPcm("order status", "slt"), 1200, hints);
    await store.endCall(call.callId, "test");
    return { final: call.transcripts.find((t) => t.isFinal)!, uploads };
  }
  beforeAll(async () => {
    asr = await startAsr("asr-complete", 350);
  });
  afterAll(async () => {
    await asr?.stop();
  });

  it("ends an utterance that is one of the state's answers after 300 ms of silence, not 600", async () => {
    const completeBefore = await ended("complete");
    const { final, uploads } = await finalOf("Order status.", 20, orderLine);
    expect(final.text).toBe("Order status.");
    expect(uploads).toHaveLength(1);
    // The early upload at 250 ms of silence came back complete; the end is the first frame at 300 ms.
    expect(final.endpointWaitMs).toBeGreaterThanOrEqual(280);
    expect(final.endpointWaitMs).toBeLessThan(560); // the usual end is 600 (slack for a busy machine's late answer)
    expect((await ended("complete")) - completeBefore).toBe(1);
  });

  it("ends when a slower engine's answer comes, once past 300 ms of silence", async () => {
    const { final, uploads } = await finalOf("agent", 200, orderLine);
    expect(uploads).toHaveLength(1);
    // Sent at 250 ms of silence, answered ~200 ms later, between two frames: ended then, well short of 600.
    expect(final.endpointWaitMs).toBeGreaterThanOrEqual(430);
    expect(final.endpointWaitMs).toBeLessThan(570);
  });

  it("sends only the first early recognition at the complete-answer silence; after the caller goes on, the usual point", async () => {
    // A state with a long minimum silence (1500 ms: the early point is at 1150): a pause inside the answer costs one
    // extra upload, not one per pause.
    answer = (request) => ({ text: `order status and more ${request.file.wav.dataBytes}`, delayMs: 20 });
    const first = trimmed(await synthesizeTo8kPcm("order status", "slt"));
    const second = trimmed(await synthesizeTo8kPcm("for my last order", "slt"));
    const pause = lineNoise(450, 7);
    const pcm = new Int16Array(first.length + pause.length + second.length);
    pcm.set(first, 0);
    pcm.set(pause, first.length);
    pcm.set(second, first.length + pause.length);
    const { call, uploads } = await speakUntilFinal("asr-complete", pcm, 2200, { ...orderLine, minSilenceMs: 1500 });
    await store.endCall(call.callId, "test");
    expect(uploads).toHaveLength(2);
    const stopped = call.speech.find((a) => a.kind === SpeechActivity_Kind.KIND_STOPPED)!;
    // The first went out in the pause, before the second part's last sound; the second 1150 ms into the final silence.
    expect(uploads[0].request.at).toBeLessThan(stopped.atMs - 500);
    expect(uploads[1].request.at - stopped.atMs).toBeGreaterThanOrEqual(1100);
    expect(call.transcripts.find((t) => t.isFinal)!.endpointWaitMs).toBeGreaterThanOrEqual(1480);
  });

  it("waits the full minimum silence for words that are not one of the answers, in a digits or free-text state, and where the state turns it off", async () => {
    const silenceBefore = await ended("silence");
    const cases = [
      await finalOf("order status for my last order", 20, orderLine),
      await finalOf("order status", 20, { mode: "digits", phrases: [] }),
      await finalOf("order status", 20, { mode: "phrases", phrases: [] }),
      await finalOf("order status", 20, { ...orderLine, completeSilenceMs: 0 }),
    ];
    for (const { final } of cases) expect(final.endpointWaitMs).toBeGreaterThanOrEqual(580);
    expect((await ended("silence")) - silenceBefore).toBe(4);
  });
});

describe("complete answers off (ASR_COMPLETE_SILENCE_MS=0)", () => {
  let asr: ServiceHandle;
  beforeAll(async () => {
    asr = await startAsr("asr-no-complete", 350, { ASR_COMPLETE_SILENCE_MS: "0" });
  });
  afterAll(async () => {
    await asr?.stop();
  });

  it("waits the minimum silence even for an expected answer", async () => {
    answer = () => ({ text: "order status", delayMs: 20 });
    const { call } = await speakUntilFinal("asr-no-complete", await synthesizeTo8kPcm("order status", "slt"), 1200, { mode: "phrases", phrases: ["order status"] });
    expect(call.transcripts.find((t) => t.isFinal)!.endpointWaitMs).toBeGreaterThanOrEqual(580);
    await store.endCall(call.callId, "test");
  });
});

describe("early finals off (ASR_EARLY_FINAL_LEAD_MS=0)", () => {
  let asr: ServiceHandle;
  beforeAll(async () => {
    asr = await startAsr("asr-no-early", 0);
  });
  afterAll(async () => {
    await asr?.stop();
  });

  it("uploads once, after the endpoint", async () => {
    const speech = await synthesizeTo8kPcm("order status", "slt");
    const { call, uploads } = await speakUntilFinal("asr-no-early", speech);
    expect(uploads).toHaveLength(1);
    // One frame of slack: the endpoint is counted in whole frames from the last speech frame.
    expect(uploads[0].request.at).toBeGreaterThanOrEqual(endpointAt(call) - 20);
    expect(await metricSum(asr.ctx.registry, "voicebot_asr_early_finals_total", {})).toBe(0);
    await store.endCall(call.callId, "test");
  });
});

describe("which engines run early", () => {
  const openaiEngine = () => new OpenAIEngine({ baseUrl: "http://127.0.0.1:9/v1", apiKey: "k", model: "gpt-4o-mini-transcribe", timeoutMs: 1000, stream: true, keepWarmMs: 0 });
  const assemblyEngine = () => new AssemblyAIEngine({ apiKey: "k", baseUrl: "wss://127.0.0.1:9", finalTimeoutMs: 1000, speechModel: "universal-streaming-english" });

  it("a cloud upload engine does; a streaming one does not", () => {
    expect(openaiEngine().earlyFinals).toBe(true);
    expect(assemblyEngine().earlyFinals).toBeUndefined();
  });

  it("a fallback list does while the engine taking new utterances does, not while a fallback stands in", () => {
    const openai = openaiEngine();
    const engine = new FallbackEngine([openai, assemblyEngine()], { timeoutMs: 1000, cooldownMs: 60_000 });
    expect(engine.earlyFinals).toBe(true);
    engine.failed(openai, "error", new Error("down"));
    expect(engine.earlyFinals).toBe(false);
    expect(new FallbackEngine([assemblyEngine(), openaiEngine()], { timeoutMs: 1000, cooldownMs: 60_000 }).earlyFinals).toBe(false);
  });
});

describe("lease renewal", () => {
  it("a call lost while its final is still being recognized does not hold up the renewal of the replica's other calls", async () => {
    // A lease that lapses a second after its renewals stop; the slow final takes longer than that.
    const asr = await startAsr("asr-renew", 0, { ASR_LEASE_MS: "1500", ASR_ENGINE_TIMEOUT_MS: "10000" });
    try {
      const lost = await ownedCall("asr-renew");
      const other = await ownedCall("asr-renew");
      // The lost call's final takes its time (a slow engine, up to the engine's own deadline).
      answer = () => ({ text: "slow", delayMs: 4_000 });
      const uploadsBefore = openai.transcriptions.length;
      await streamAudio(bus, lost.callId, utteranceFrames(await synthesizeTo8kPcm("order status", "slt"), 400, 800), 0);
      await waitFor(() => openai.transcriptions.length > uploadsBefore || undefined, { what: "the slow upload" });
      // Another replica took the call (this one looked stalled): the next round drops it here, finishing its final.
      await store.takeLease(lost.callId, "asr", "asr-intruder", 10_000);
      const until = Date.now() + 3_000;
      while (Date.now() < until) {
        expect(await store.leaseOwner(other.callId, "asr")).toBe("asr-renew");
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await waitFor(() => lost.transcripts.some((t) => t.isFinal) || undefined, { what: "the lost call's final, finished", timeoutMs: 5_000 });
      await store.endCall(lost.callId, "test");
      await store.endCall(other.callId, "test");
    } finally {
      await asr.stop();
    }
  });
});

describe("hand-over on drain", () => {
  it("a replica drained while a final is still being recognized keeps the call's lease until that final is out", async () => {
    const a = await startAsr("asr-drain-a", 0, { ASR_LEASE_MS: "1500", ASR_ENGINE_TIMEOUT_MS: "10000" });
    const call = await ownedCall("asr-drain-a");
    const b = await startAsr("asr-drain-b", 0, { ASR_LEASE_MS: "1500" });
    try {
      answer = () => ({ text: "slow", delayMs: 4_000 });
      const uploadsBefore = openai.transcriptions.length;
      await streamAudio(bus, call.callId, utteranceFrames(await synthesizeTo8kPcm("order status", "slt"), 400, 800), 0);
      await waitFor(() => openai.transcriptions.length > uploadsBefore || undefined, { what: "the slow upload" });
      const stopping = a.stop();
      const owners: Array<{ at: number; owner: string }> = [];
      while (!call.transcripts.some((t) => t.isFinal)) {
        const at = Date.now();
        owners.push({ at, owner: (await store.leaseOwner(call.callId, "asr")) ?? "none" });
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await stopping;
      const final = call.transcripts.find((t) => t.isFinal)!;
      expect(final.text).toBe("slow");
      // Until its final went out, the call stayed A's (a lapsed lease would have let B take it over before).
      const firstOther = owners.find((o) => o.owner !== "asr-drain-a");
      if (firstOther) expect(firstOther.at).toBeGreaterThanOrEqual(final.finalAtMs - 10);
      await waitFor(async () => (await store.leaseOwner(call.callId, "asr")) === "asr-drain-b" || undefined, { what: "B to take the call after the hand-over" });
      await store.endCall(call.callId, "test");
    } finally {
      await a.stop().catch(() => undefined);
      await b.stop();
    }
  });
});
