// Test helpers shared by the asr integration tests (in-process replicas) and end-to-end tests (processes).
import { FRAME_MS, mulawEncode } from "@voicebot/audio";
import { Bus, streams, subjects, type Codec } from "@voicebot/bus";
import { AudioEncoding, CallerAudio, CallStarted, DialogInput } from "@voicebot/proto";
import { createLogger } from "@voicebot/service-kit";
import type { CallStore } from "@voicebot/state";
import { Registry } from "prom-client";

const SAMPLES_PER_FRAME = 160;

export async function connectTestBus(natsUrl: string): Promise<Bus> {
  return Bus.connect({ servers: natsUrl, name: "asr-test", log: createLogger({ test: "asr" }, "error"), registry: new Registry() });
}

/** Faint deterministic line noise (about -66 dBFS), so the silence around speech is not digital zero. */
export function lineNoise(ms: number, seed = 1): Int16Array {
  let state = seed;
  return Int16Array.from({ length: (ms / 1000) * 8000 }, () => {
    state = (state * 1103515245 + 12345) & 0x7fffffff;
    return Math.round((state / 0x7fffffff) * 30 - 15);
  });
}

/** Speech with noise before and after, split into 20 ms μ-law frames. */
export function utteranceFrames(speech: Int16Array, beforeMs = 500, afterMs = 1200): Uint8Array[] {
  const pcm = new Int16Array(((beforeMs + afterMs) / 1000) * 8000 + speech.length + SAMPLES_PER_FRAME);
  pcm.set(lineNoise(beforeMs, 3), 0);
  pcm.set(speech, (beforeMs / 1000) * 8000);
  pcm.set(lineNoise(afterMs + FRAME_MS, 5), (beforeMs / 1000) * 8000 + speech.length);
  const frames: Uint8Array[] = [];
  for (let i = 0; i + SAMPLES_PER_FRAME <= pcm.length; i += SAMPLES_PER_FRAME) {
    frames.push(mulawEncode(pcm.subarray(i, i + SAMPLES_PER_FRAME)));
  }
  return frames;
}

/** Only line noise, as 20 ms μ-law frames. */
export function noiseFrames(ms: number, seed = 9): Uint8Array[] {
  const pcm = lineNoise(ms, seed);
  const frames: Uint8Array[] = [];
  for (let i = 0; i + SAMPLES_PER_FRAME <= pcm.length; i += SAMPLES_PER_FRAME) {
    frames.push(mulawEncode(pcm.subarray(i, i + SAMPLES_PER_FRAME)));
  }
  return frames;
}

/**
 * Publishes frames as Twilio would arrive through ingress: one CallerAudio per 20 ms frame, paced at real time.
 * `skip` drops frame indices (lost packets). Returns the index after the last frame.
 */
export async function streamAudio(
  bus: Bus,
  callId: string,
  frames: Uint8Array[],
  firstFrame: number,
  options: { skip?: (index: number) => boolean } = {},
): Promise<number> {
  const started = performance.now();
  for (let i = 0; i < frames.length; i++) {
    const index = firstFrame + i;
    if (!options.skip?.(index)) {
      const message = CallerAudio.create({
        callId,
        firstFrame: index,
        frameCount: 1,
        format: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 },
        payload: frames[i],
        receivedAtMs: Date.now(),
      });
      bus.publish(subjects.callerAudio(callId), CallerAudio, message, callId);
    }
    const wait = started + (i + 1) * FRAME_MS - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }
  await bus.nc.flush();
  return firstFrame + frames.length;
}

/** What ingress does when a stream opens: the call record, then CallStarted for the asr queue group. */
export async function startCall(bus: Bus, store: CallStore, callId: string): Promise<void> {
  await store.createCall({
    callSid: callId,
    provider: "twilio",
    streamSid: `MZ${callId}`,
    agent: "test",
    from: "+15550001111",
    to: "+15550002222",
    startedAt: new Date().toISOString(),
  });
  const started = CallStarted.create({
    callId,
    provider: "twilio",
    streamId: `MZ${callId}`,
    callerFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 },
    botFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 },
    agent: "test",
    startedAtMs: Date.now(),
  });
  bus.publish(subjects.callStarted, CallStarted, started, callId);
  await bus.nc.flush();
}

/** Collects every message on a subject, decoded. */
export function collect<T>(bus: Bus, subject: string, codec: Codec<T>): T[] {
  const messages: T[] = [];
  bus.subscribe(subject, codec, (message) => void messages.push(message), { name: "test-collect" });
  return messages;
}

let counter = 0;
export function newCallId(): string {
  return `CA${Date.now().toString(16)}${(counter++).toString(16).padStart(4, "0")}${Math.random().toString(16).slice(2, 10)}`;
}

/** Stands in for the dialog: drains its work queue, where the asr queues every final, keeping what arrives. */
export function standInDialog(bus: Bus, inputs: DialogInput[] = []): Promise<{ stop(): Promise<void> }> {
  return bus.consume(
    streams.dialog,
    DialogInput,
    async (input, item) => {
      inputs.push(input);
      item.ack();
    },
    { name: "test-dialog", ackWaitMs: 5_000, maxDeliver: 3, concurrency: 4 },
  );
}
