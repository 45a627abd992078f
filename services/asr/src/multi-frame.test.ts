// Multi-frame CallerAudio (ingress sends quiet stretches as up to ~10 consecutive frames in one message): the asr
// must hear exactly what it hears from the same audio one frame per message — same VAD decisions (Silero, the
// default), same utterances and timing, same gap filling, same audio to the recognizer. The service runs with
// ASR_ENGINES=openai against the fake transcription server, which keeps every uploaded WAV.
import { subjects, type Bus } from "@voicebot/bus";
import { AudioEncoding, CallerAudio, SpeechActivity, SpeechActivity_Kind, Transcript } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import { metricSum, startFakeOpenAI, startNats, startRedis, waitFor, type FakeOpenAI, type ServerHandle } from "@voicebot/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { synthesizeTo8kPcm } from "../test/fixtures/make-audio.js";
import { collect, connectTestBus, lineNoise, newCallId, standInDialog, startCall, utteranceFrames } from "../test/helpers.js";
import { definition } from "./service.js";

const API_KEY = "openai-test-key-multi-frame";
const FRAME_MS = 20;
const FRAME_BYTES = 160;
const MULAW_8K = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };

let nats: ServerHandle;
let redis: ServerHandle;
let openai: FakeOpenAI;
let bus: Bus;
let store: CallStore;
let asr: ServiceHandle;
let consumer: { stop(): Promise<void> } | undefined;

const metric = (name: string, labels: Record<string, string> = {}) => metricSum(asr.ctx.registry, name, labels);

async function ownedCall() {
  const callId = newCallId();
  const speech = collect(bus, subjects.speech(callId), SpeechActivity);
  const transcripts = collect(bus, subjects.transcript(callId), Transcript);
  await bus.nc.flush();
  await startCall(bus, store, callId);
  await waitFor(async () => (await store.leaseOwner(callId, "asr")) === "asr-multi", { what: "the asr lease" });
  return { callId, speech, transcripts };
}

/** One CallerAudio: frames `first`.. of `frames`, as ingress sends them (receivedAtMs is the last frame's). */
function message(callId: string, frames: Uint8Array[], first: number, count: number, t0: number): CallerAudio {
  const payload = Buffer.alloc(count * FRAME_BYTES);
  for (let k = 0; k < count; k++) payload.set(frames[first + k], k * FRAME_BYTES);
  return CallerAudio.create({ callId, firstFrame: first, frameCount: count, format: MULAW_8K, payload, receivedAtMs: t0 + (first + count) * FRAME_MS });
}

beforeAll(async () => {
  [nats, redis, openai] = await Promise.all([startNats(), startRedis(), startFakeOpenAI({ apiKey: API_KEY, transcribe: () => ({ text: "order status" }) })]);
  bus = await connectTestBus(nats.url);
  store = CallStore.connect(redis.url);
  // Finals go to the dialog's work queue: it must exist and be drained.
  consumer = await standInDialog(bus);
  asr = await startService(definition, {
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    HTTP_PORT: "0",
    LOG_LEVEL: "error",
    INSTANCE_ID: "asr-multi",
    ASR_ENGINES: "openai",
    ASR_OPENAI_BASE_URL: openai.baseUrl,
    ASR_OPENAI_API_KEY: API_KEY,
  });
});

afterAll(async () => {
  await asr?.stop();
  await consumer?.stop();
  await bus?.close();
  await store?.close();
  await Promise.allSettled([nats?.stop(), redis?.stop(), openai?.stop()]);
});

describe("asr with multi-frame CallerAudio", () => {
  it("hears the same utterances, at the same times, with the same audio, as from one frame per message", async () => {
    // Two utterances, with lost frames before the first one and in the pause after it.
    const first = await synthesizeTo8kPcm("order status", "slt");
    const second = await synthesizeTo8kPcm("agent please", "kal");
    const frames = [...utteranceFrames(first, 600, 900), ...utteranceFrames(second, 300, 1200)];
    const lost = (index: number) => (index >= 12 && index < 15) || (index >= frames.length - 90 && index < frames.length - 86);

    // The same stream cut two ways: every frame alone, and runs of 1–10 consecutive frames (a gap ends a run).
    const sizes = [10, 10, 10, 3, 10, 10, 7, 10, 1, 10, 10, 5, 10, 2];
    const single: Array<{ first: number; count: number }> = [];
    const multi: Array<{ first: number; count: number }> = [];
    for (let i = 0; i < frames.length; i++) if (!lost(i)) single.push({ first: i, count: 1 });
    for (let i = 0, n = 0; i < frames.length; ) {
      if (lost(i)) {
        i++;
        continue;
      }
      let count = 0;
      while (count < sizes[n % sizes.length] && i + count < frames.length && !lost(i + count)) count++;
      multi.push({ first: i, count });
      i += count;
      n++;
    }
    expect(multi.length).toBeLessThan(single.length / 4);

    const one = await ownedCall();
    const many = await ownedCall();
    const uploadsBefore = openai.transcriptions.length;
    // Both calls at real time from the same clock: a message goes out when its last frame has "arrived".
    const t0 = Date.now();
    const started = performance.now();
    const due = [...single.map((m) => ({ ...m, call: one.callId })), ...multi.map((m) => ({ ...m, call: many.callId }))].sort(
      (a, b) => a.first + a.count - (b.first + b.count),
    );
    for (const m of due) {
      const wait = started + (m.first + m.count) * FRAME_MS - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      bus.publish(subjects.callerAudio(m.call), CallerAudio, message(m.call, frames, m.first, m.count, t0));
    }
    await bus.nc.flush();

    const finalsOf = (transcripts: Transcript[]) => transcripts.filter((t) => t.isFinal);
    await waitFor(() => finalsOf(one.transcripts).length === 2 && finalsOf(many.transcripts).length === 2, { what: "two finals per call", timeoutMs: 10_000 });
    const activity = (speech: SpeechActivity[]) => speech.map((s) => ({ kind: s.kind, utteranceId: s.utteranceId, audioMs: s.audioMs, atMs: s.atMs - t0 }));
    const heard = (transcripts: Transcript[]) => finalsOf(transcripts).map((t) => ({ utteranceId: t.utteranceId, text: t.text, speechEndMs: t.speechEndMs - t0 }));

    expect(activity(one.speech).map((s) => s.kind)).toEqual([
      SpeechActivity_Kind.KIND_STARTED,
      SpeechActivity_Kind.KIND_STOPPED,
      SpeechActivity_Kind.KIND_STARTED,
      SpeechActivity_Kind.KIND_STOPPED,
    ]);
    expect(activity(many.speech)).toEqual(activity(one.speech));
    expect(heard(many.transcripts)).toEqual(heard(one.transcripts));
    // The recognizer got the same audio: each uploaded WAV twice, once per call.
    const uploads = openai.transcriptions.slice(uploadsBefore).map((t) => Buffer.from(t.file.bytes).toString("base64"));
    expect(uploads).toHaveLength(4);
    const counts = new Map<string, number>();
    for (const wav of uploads) counts.set(wav, (counts.get(wav) ?? 0) + 1);
    expect([...counts.values()]).toEqual([2, 2]);
    // Both saw the same 7 lost frames; Silero never had to fall back to energy for the multi-frame call.
    expect(await metric("voicebot_asr_lost_frames_total")).toBe(14);
    expect(await metric("voicebot_asr_vad_windows_total", { result: "overload" })).toBe(0);
    await Promise.all([store.endCall(one.callId, "test"), store.endCall(many.callId, "test")]);
  });

  it("counts a frameCount that disagrees with the payload, and uses the payload's frames", async () => {
    const { callId, speech } = await ownedCall();
    const lostBefore = await metric("voicebot_asr_lost_frames_total");
    const frames = utteranceFrames(lineNoise(200), 0, 0);
    const wrong = message(callId, frames, 0, 4, Date.now());
    wrong.frameCount = 9;
    bus.publish(subjects.callerAudio(callId), CallerAudio, wrong);
    // The next message follows on from the payload's 4 frames: no gap.
    bus.publish(subjects.callerAudio(callId), CallerAudio, message(callId, frames, 4, 2, Date.now()));
    await bus.nc.flush();
    await waitFor(async () => (await metric("voicebot_asr_bad_audio_total", { reason: "frame_count_mismatch" })) === 1, { what: "the mismatch to be counted" });
    await asr.ctx.bus.nc.flush();
    expect(await metric("voicebot_asr_bad_audio_total", { reason: "duplicate_frames" })).toBe(0);
    expect(await metric("voicebot_asr_lost_frames_total")).toBe(lostBefore);
    expect(speech).toEqual([]);
    await store.endCall(callId, "test");
  });
});
