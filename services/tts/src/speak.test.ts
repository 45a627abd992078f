import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { mulawDecode, mulawFrameEnergy, l16FromBytes, rmsDbfs } from "@voicebot/audio";
import { Bus, silentLogger, subjects } from "@voicebot/bus";
import {
  AudioEncoding,
  BotAudio,
  CallEnded,
  CancelTurn,
  SpeakRequest,
  SynthesisFailed,
  TurnTiming,
} from "@voicebot/proto";
import { ConfigError, startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import { metricSum, startNats, startRedis, startTcpProxy, waitFor, type ServerHandle } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TtsEngine } from "./engine.js";
import { defaultEngines, type EngineRegistry } from "./registry.js";
import { createDefinition } from "./service.js";
import { PacedEngine, startTts as startTtsService } from "./test-support/harness.js";

// ---- test doubles of the engine edge ----

type EngineRequest = Parameters<TtsEngine["synthesize"]>[0];

/** Throws before any audio. */
class ThrowingEngine implements TtsEngine {
  readonly label = "throwing";
  readonly sampleRate = 16000;
  calls = 0;
  // eslint-disable-next-line require-yield
  async *synthesize(): AsyncGenerator<Int16Array> {
    this.calls++;
    throw new Error("engine exploded");
  }
  async close() {}
}

/** Never yields until aborted. */
class StallingEngine implements TtsEngine {
  readonly label = "stalling";
  readonly sampleRate = 16000;
  aborts = 0;
  // eslint-disable-next-line require-yield
  async *synthesize(request: EngineRequest): AsyncGenerator<Int16Array> {
    await new Promise<void>((resolve) => request.signal?.addEventListener("abort", () => resolve(), { once: true }));
    this.aborts++;
    throw new Error("aborted");
  }
  async close() {}
}

/** Yields 100 ms of a tone, then dies (the warm-up word succeeds). */
class DyingEngine implements TtsEngine {
  readonly label = "dying";
  readonly sampleRate = 16000;
  async *synthesize(request: EngineRequest): AsyncGenerator<Int16Array> {
    yield tone(1600, this.sampleRate);
    if (request.text !== "Hello.") throw new Error("engine died mid-sentence");
  }
  async close() {}
}

/** A tone, released once `open` is true (checked every 2 ms): a synthesis whose first audio the test holds back. */
class HeldEngine implements TtsEngine {
  readonly label = "held";
  readonly sampleRate = 8000;
  open = true;
  async *synthesize(request: EngineRequest): AsyncGenerator<Int16Array> {
    while (!this.open) {
      if (request.signal?.aborted) throw new Error("aborted");
      await sleep(2);
    }
    yield tone(8000, this.sampleRate);
  }
  async close() {}
}

/** Real flite audio, released at real-time pace in 20 ms pieces, so a chunk can be cancelled mid-synthesis. */
function tone(samples: number, rate: number): Int16Array {
  return Int16Array.from({ length: samples }, (_, i) => Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / rate)));
}

// ---- harness ----

let nats: ServerHandle;
let redis: ServerHandle;
let client: Bus;

beforeAll(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  client = await Bus.connect({ servers: nats.url, name: "tts-test", log: silentLogger, registry: new Registry() });
});

afterAll(async () => {
  await client?.close();
  await Promise.all([nats?.stop(), redis?.stop()]);
});

const startTts = (env: Record<string, string>, engines?: EngineRegistry, waitReady = true) =>
  startTtsService({ natsUrl: nats.url, redisUrl: redis.url }, env, { engines, waitReady });

function newCallId(): string {
  return `CA${randomUUID().replace(/-/g, "")}`;
}

async function listen(callId: string) {
  const parts: BotAudio[] = [];
  const failures: SynthesisFailed[] = [];
  const subs = [
    client.subscribe(subjects.botAudio(callId), BotAudio, (m) => void parts.push(m), { name: "test-audio" }),
    client.subscribe(subjects.ttsFailed(callId), SynthesisFailed, (m) => void failures.push(m), { name: "test-failed" }),
  ];
  await client.nc.flush();
  return {
    parts,
    failures,
    chunk: (turnId: string, chunkSeq = 0) => parts.filter((p) => p.turnId === turnId && p.chunkSeq === chunkSeq),
    done: (turnId: string, chunkSeq = 0) =>
      waitFor(() => parts.some((p) => p.turnId === turnId && p.chunkSeq === chunkSeq && p.chunkDone), {
        what: `chunk ${turnId}.${chunkSeq} to finish`,
      }),
    close: () => subs.forEach((s) => s.unsubscribe()),
  };
}

function speak(fields: Partial<SpeakRequest> & { callId: string }): void {
  const request = SpeakRequest.create({
    turnId: "t1",
    format: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 },
    ...fields,
  });
  client.publish(subjects.ttsSpeak, SpeakRequest, request, fields.callId);
}

const metric = (handle: ServiceHandle, name: string, labels: Record<string, string> = {}) =>
  metricSum(handle.ctx.registry, name, labels);

async function info(handle: ServiceHandle): Promise<{ activeCalls: number }> {
  return (await (await fetch(`http://127.0.0.1:${handle.ctx.port}/info`)).json()) as { activeCalls: number };
}

function joined(parts: BotAudio[]): Uint8Array {
  return Buffer.concat(parts.map((p) => p.payload));
}

/** Parts are numbered 0.. in order; part 0 alone has text and timing; only the last closes the chunk. */
function expectWellFormedChunk(parts: BotAudio[], frameBytes: number): void {
  expect(parts.length).toBeGreaterThan(1);
  expect(parts.map((p) => p.partSeq)).toEqual(parts.map((_, i) => i));
  expect(parts.map((p) => p.chunkDone)).toEqual(parts.map((_, i) => i === parts.length - 1));
  for (const part of parts) {
    expect(part.payload.length % frameBytes).toBe(0);
    expect(part.payload.length).toBeGreaterThan(0);
    expect(part.payload.length).toBeLessThanOrEqual(10 * frameBytes); // ≤ 200 ms
  }
  expect(parts[0].payload.length).toBeLessThanOrEqual(2 * frameBytes); // small first part
  expect(parts.slice(1).every((p) => p.text === "" && p.timing === undefined && p.noInputMs === 0)).toBe(true);
}

const SENTENCE = "Thanks for calling Acme dental, this is the virtual assistant. How can I help you today?";

/** Speaks a cacheable one-chunk turn on a new call: its parts and how long they took. */
async function speakAndTime(text: string): Promise<{ ms: number; parts: BotAudio[] }> {
  const callId = newCallId();
  const audio = await listen(callId);
  const started = performance.now();
  speak({ callId, text, cacheable: true, turnDone: true });
  await audio.done("t1");
  const ms = performance.now() - started;
  audio.close();
  return { ms, parts: audio.chunk("t1") };
}

// ---- behaviour ----

describe("tts with flite", () => {
  let tts: ServiceHandle;
  beforeAll(async () => {
    tts = await startTts({ TTS_ENGINES: "flite" });
  });
  afterAll(async () => {
    await tts?.stop();
  });

  it("speaks a chunk as ordered μ-law parts of whole 20 ms frames with text, timing and the done flags", async () => {
    const callId = newCallId();
    const audio = await listen(callId);
    const timing = TurnTiming.create({ inputEndMs: Date.now() - 500, dialogFirstTextMs: Date.now() - 50 });
    const sentAt = Date.now();
    speak({ callId, turnId: "t3", chunkSeq: 1, text: SENTENCE, turnDone: true, timing, noInputMs: 15_000 });
    await audio.done("t3", 1);
    const parts = audio.chunk("t3", 1);
    expectWellFormedChunk(parts, 160);

    const first = parts[0];
    expect(first.text).toBe(SENTENCE);
    expect(first.format).toEqual({ encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 });
    expect(first.timing?.inputEndMs).toBe(timing.inputEndMs);
    expect(first.timing?.dialogFirstTextMs).toBe(timing.dialogFirstTextMs);
    expect(first.timing!.ttsRequestMs).toBeGreaterThanOrEqual(sentAt);
    expect(first.timing!.ttsFirstAudioMs).toBeGreaterThanOrEqual(first.timing!.ttsRequestMs);
    expect(first.noInputMs).toBe(15_000); // the dialog state's wait, for ingress
    expect(parts.at(-1)!.turnDone).toBe(true);
    expect(parts.slice(0, -1).some((p) => p.turnDone)).toBe(false);

    // 15 words: a few seconds of speech, with real energy in it.
    const bytes = joined(parts);
    const seconds = bytes.length / 8000;
    expect(seconds).toBeGreaterThan(2.5);
    expect(seconds).toBeLessThan(9);
    expect(rmsDbfs(mulawDecode(bytes))).toBeGreaterThan(-35);
    const frames = Array.from({ length: bytes.length / 160 }, (_, i) => mulawFrameEnergy(bytes.subarray(i * 160, (i + 1) * 160)));
    expect(frames.filter((db) => db > -40).length / frames.length).toBeGreaterThan(0.4);
    expect(await metric(tts, "voicebot_tts_first_audio_seconds", { source: "engine" })).toBeGreaterThanOrEqual(1);
    audio.close();
  });

  it("produces L16 16 kHz when asked, and a turn's chunks independently", async () => {
    const callId = newCallId();
    const audio = await listen(callId);
    speak({ callId, chunkSeq: 0, text: "One moment please.", format: { encoding: AudioEncoding.AUDIO_ENCODING_L16, sampleRate: 16000 } });
    speak({ callId, chunkSeq: 1, text: "Let me check.", turnDone: true, format: { encoding: AudioEncoding.AUDIO_ENCODING_L16, sampleRate: 16000 } });
    await audio.done("t1", 0);
    await audio.done("t1", 1);
    for (const seq of [0, 1]) {
      const parts = audio.chunk("t1", seq);
      expectWellFormedChunk(parts, 640);
      expect(parts[0].format).toEqual({ encoding: AudioEncoding.AUDIO_ENCODING_L16, sampleRate: 16000 });
      expect(rmsDbfs(l16FromBytes(joined(parts)))).toBeGreaterThan(-35);
      expect(parts.at(-1)!.turnDone).toBe(seq === 1);
    }
    audio.close();
  });

  it("serves a repeated cacheable chunk from the cache, identical and much faster: from its own copy, Redis or not", async () => {
    const text = "Our office is open Monday to Friday from eight in the morning until six in the evening. On Saturdays we open from nine until noon. We are closed on Sundays and public holidays.";
    const run = () => speakAndTime(text);
    const first = await run();
    expect(await metric(tts, "voicebot_tts_cache_lookups_total", { result: "miss", tier: "redis" })).toBe(1);
    await waitFor(async () => (await tts.ctx.store.redis.keys("vb:cache:tts:*")).length === 1, { what: "the audio to be cached" });
    const [key] = await tts.ctx.store.redis.keys("vb:cache:tts:*");
    const ttl = await tts.ctx.store.redis.pttl(key);
    expect(ttl).toBeGreaterThan(7 * 24 * 3600_000 - 60_000);
    expect(ttl).toBeLessThanOrEqual(7 * 24 * 3600_000);

    const second = await run();
    expect(await metric(tts, "voicebot_tts_cache_lookups_total", { result: "hit", tier: "memory" })).toBe(1);
    expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "cache", outcome: "ok" })).toBe(1);
    expectWellFormedChunk(second.parts, 160);
    expect(Buffer.compare(joined(second.parts), joined(first.parts))).toBe(0);
    expect(second.parts[0].text).toBe(text);
    expect(second.parts.at(-1)!.turnDone).toBe(true);
    expect(second.ms).toBeLessThan(first.ms / 3);
    expect(await metric(tts, "voicebot_tts_memory_cache_bytes")).toBe(joined(first.parts).length);

    // The replica's own copy does not need Redis: the same audio with the key gone from Redis.
    await tts.ctx.store.redis.del(key);
    const third = await run();
    expect(Buffer.compare(joined(third.parts), joined(first.parts))).toBe(0);
    expect(await metric(tts, "voicebot_tts_cache_lookups_total", { result: "hit", tier: "memory" })).toBe(2);
    expect(await metric(tts, "voicebot_tts_cache_lookups_total", { tier: "redis" })).toBe(1);
  });

  it("answers a request it cannot serve with SynthesisFailed, and keeps serving others", async () => {
    const callId = newCallId();
    const audio = await listen(callId);
    speak({ callId, text: "Hello there.", turnDone: true, format: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 12345 } });
    await waitFor(() => audio.failures.length === 1, { what: "SynthesisFailed" });
    // It was the turn's last chunk: ingress ends the turn there instead of waiting for more.
    expect(audio.failures[0]).toMatchObject({ callId, turnId: "t1", chunkSeq: 0, turnDone: true });
    expect(audio.failures[0].error).toMatch(/sample rate/);
    speak({ callId, turnId: "t2", text: "Hello there." });
    await audio.done("t2");
    expect(audio.parts.every((p) => p.turnId === "t2")).toBe(true);
    audio.close();
  });

  it("drops a request too old to be worth speaking (TTS_MAX_REQUEST_AGE_MS) and says so, so ingress plays past it", async () => {
    const callId = newCallId();
    const audio = await listen(callId);
    const stale = Date.now() - 61_000;
    speak({ callId, turnId: "t4", chunkSeq: 2, text: "Too late to say.", turnDone: true, timing: { dialogStartMs: stale, dialogFirstTextMs: stale } as SpeakRequest["timing"] });
    await waitFor(() => audio.failures.length === 1, { what: "SynthesisFailed for the stale request" });
    expect(audio.failures[0]).toMatchObject({ callId, turnId: "t4", chunkSeq: 2, turnDone: true });
    expect(audio.failures[0].error).toMatch(/^stale/);
    expect(audio.parts).toEqual([]);
    audio.close();
  });
});

describe("tts cancellation", () => {
  let tts: ServiceHandle;
  let paced: PacedEngine;
  beforeAll(async () => {
    paced = new PacedEngine(defaultEngines.flite.create("slt"));
    tts = await startTts({ TTS_ENGINES: "paced" }, { paced: { defaultVoice: "slt", create: () => paced } });
  });
  afterAll(async () => {
    await tts?.stop();
  });

  it("stops a turn's synthesis mid-chunk on CancelTurn, publishes nothing more, and drops its late chunks", async () => {
    const callId = newCallId();
    const audio = await listen(callId);
    speak({ callId, turnId: "t2", text: SENTENCE });
    await waitFor(() => audio.parts.length >= 3, { what: "the first parts" });
    const signal = paced.signals.at(-1)!;
    client.publish(subjects.cancel(callId), CancelTurn, CancelTurn.create({ callId, turnId: "t2", reason: "barge-in" }), callId);
    await waitFor(() => signal.aborted, { what: "the engine to be told to stop" });
    await client.nc.flush();
    const heard = audio.parts.length;
    await sleep(400); // the paced engine makes 20 frames in this time: any leak would show as new parts
    expect(audio.parts.length).toBe(heard);
    expect(audio.parts.some((p) => p.chunkDone)).toBe(false);
    expect(await metric(tts, "voicebot_tts_cancellations_total", { reason: "cancel" })).toBe(1);

    // A chunk of the cancelled turn that arrives late is dropped; the next turn is spoken.
    speak({ callId, turnId: "t2", chunkSeq: 1, text: "And another thing." });
    speak({ callId, turnId: "t3", text: "Sure.", turnDone: true });
    await audio.done("t3");
    expect(audio.parts.filter((p) => p.turnId === "t2").length).toBe(heard);
    expect(await metric(tts, "voicebot_tts_chunks_total", { outcome: "cancelled" })).toBe(2);
    audio.close();
  });

  it("stops all of a call's work when the call ends, leaving other calls alone", async () => {
    const [ending, other] = [newCallId(), newCallId()];
    const [endingAudio, otherAudio] = await Promise.all([listen(ending), listen(other)]);
    speak({ callId: ending, text: SENTENCE });
    speak({ callId: other, text: "Goodbye.", turnDone: true });
    await waitFor(() => endingAudio.parts.length >= 2, { what: "the first parts" });
    client.publish(subjects.ended(ending), CallEnded, CallEnded.create({ callId: ending, reason: "hangup", endedAtMs: Date.now() }), ending);
    await waitFor(async () => (await metric(tts, "voicebot_tts_cancellations_total", { reason: "ended" })) === 1, { what: "the cancellation" });
    await otherAudio.done("t1");
    expect(endingAudio.parts.some((p) => p.chunkDone)).toBe(false);
    expectWellFormedChunk(otherAudio.chunk("t1"), 160);
    await waitFor(async () => (await info(tts)).activeCalls === 0, {
      what: "no active calls",
    });
    endingAudio.close();
    otherAudio.close();
  });
});

describe("tts drain", () => {
  it("stops taking requests but finishes the chunks in flight", async () => {
    const paced = new PacedEngine(defaultEngines.flite.create("slt"));
    const tts = await startTts({ TTS_ENGINES: "paced" }, { paced: { defaultVoice: "slt", create: () => paced } });
    const callId = newCallId();
    const audio = await listen(callId);
    speak({ callId, text: "Please hold while I check.", turnDone: true });
    await waitFor(() => audio.parts.length >= 2, { what: "the first parts" });
    expect((await info(tts)).activeCalls).toBe(1);
    const stopped = tts.stop();
    await audio.done("t1");
    await stopped;
    expectWellFormedChunk(audio.chunk("t1"), 160);
    audio.close();
  });

  it("hands a chunk it could not finish within DRAIN_TIMEOUT_MS back to the queue, for another replica to speak", async () => {
    const paced = new PacedEngine(defaultEngines.flite.create("slt"));
    const stopping = await startTts({ TTS_ENGINES: "paced", DRAIN_TIMEOUT_MS: "300" }, { paced: { defaultVoice: "slt", create: () => paced } });
    let next: ServiceHandle | undefined;
    try {
      const callId = newCallId();
      const audio = await listen(callId);
      speak({ callId, text: SENTENCE, turnDone: true });
      await waitFor(() => audio.parts.length >= 2, { what: "the first parts" });
      next = await startTts({ TTS_ENGINES: "flite" });
      await stopping.stop(); // the drain runs out of time mid-sentence
      await audio.done("t1");
      // The other replica said the chunk from its start: its parts are numbered from 0 again, the last one closes it.
      const parts = audio.parts.slice(audio.parts.findLastIndex((p) => p.partSeq === 0));
      expectWellFormedChunk(parts, 160);
      expect(joined(parts).length / 8000).toBeGreaterThan(2.5);
      expect(audio.failures).toEqual([]);
      expect(await metric(next, "voicebot_tts_chunks_total", { outcome: "ok" })).toBe(1);
      audio.close();
    } finally {
      await stopping.stop();
      await next?.stop();
    }
  });
});

describe("tts drain: a spoken chunk is not handed back", () => {
  it("a chunk whose audio all went out is not spoken again when the drain cuts off its cache write", async () => {
    const link = await startTcpProxy(redis.port);
    const stopping = await startTts({ TTS_ENGINES: "flite", DRAIN_TIMEOUT_MS: "300", REDIS_URL: `redis://127.0.0.1:${link.port}` });
    let next: ServiceHandle | undefined;
    try {
      const callId = newCallId();
      const audio = await listen(callId);
      link.blackhole(); // the cache read gives up at once; the cache write after the audio hangs
      speak({ callId, text: "Thank you for waiting.", turnDone: true, cacheable: true });
      await audio.done("t1");
      next = await startTts({ TTS_ENGINES: "flite" });
      await stopping.stop(); // the drain runs out of time during the cache write
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      expect(audio.parts.filter((p) => p.partSeq === 0)).toHaveLength(1); // heard once
      expect(await metric(next, "voicebot_tts_chunks_total", {})).toBe(0);
      audio.close();
    } finally {
      link.restore();
      await stopping.stop();
      await next?.stop();
      await link.close();
    }
  });
});

describe("tts drain: cache writes", () => {
  it("a drain waits for the cache writes of chunks already spoken before the store closes", async () => {
    const link = await startTcpProxy(redis.port);
    const tts = await startTts({ TTS_ENGINES: "flite", REDIS_URL: `redis://127.0.0.1:${link.port}` });
    const direct = CallStore.connect(redis.url);
    const cached = () => direct.redis.keys("vb:cache:tts:*");
    try {
      const before = (await cached()).length;
      const callId = newCallId();
      const audio = await listen(callId);
      const text = `Your reference is ${newCallId().slice(-6)}.`; // not cached yet anywhere
      link.delayMs = 800; // Redis answers late: the write is still under way when the drain starts
      speak({ callId, text, turnDone: true, cacheable: true });
      await audio.done("t1");
      await tts.stop();
      expect(await metric(tts, "voicebot_tts_cache_write_errors_total", {})).toBe(0);
      expect((await cached()).length).toBe(before + 1);
      audio.close();
    } finally {
      link.delayMs = 0;
      await tts.stop();
      await direct.close();
      await link.close();
    }
  });
});

describe("tts engine failover", () => {
  const engines = (extra: EngineRegistry): EngineRegistry => ({ ...defaultEngines, ...extra });

  it("moves a chunk to flite when the first engine throws", async () => {
    const throwing = new ThrowingEngine();
    const tts = await startTts({ TTS_ENGINES: "throwing,flite" }, engines({ throwing: { defaultVoice: "x", create: () => throwing } }));
    try {
      const callId = newCallId();
      const audio = await listen(callId);
      speak({ callId, text: SENTENCE, turnDone: true });
      await audio.done("t1");
      expectWellFormedChunk(audio.chunk("t1"), 160);
      expect(rmsDbfs(mulawDecode(joined(audio.parts)))).toBeGreaterThan(-35);
      expect(throwing.calls).toBeGreaterThanOrEqual(2); // warm-up + the chunk
      expect(await metric(tts, "voicebot_tts_failovers_total", { from: "throwing", reason: "error" })).toBeGreaterThanOrEqual(1);
      expect(await metric(tts, "voicebot_tts_chunks_total", { outcome: "ok" })).toBe(1);
      audio.close();
    } finally {
      await tts.stop();
    }
  });

  it("fails over to espeak, whose 22.05 kHz audio is resampled to the request's format", async () => {
    const tts = await startTts(
      { TTS_ENGINES: "throwing,espeak" },
      engines({ throwing: { defaultVoice: "x", create: () => new ThrowingEngine() } }),
    );
    try {
      const callId = newCallId();
      const audio = await listen(callId);
      speak({ callId, text: SENTENCE, turnDone: true });
      await audio.done("t1");
      const parts = audio.chunk("t1");
      expectWellFormedChunk(parts, 160);
      const bytes = joined(parts);
      expect(bytes.length / 8000).toBeGreaterThan(2.5);
      expect(rmsDbfs(mulawDecode(bytes))).toBeGreaterThan(-35);
      expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "espeak-ng", outcome: "ok" })).toBe(1);
      audio.close();
    } finally {
      await tts.stop();
    }
  });

  it("moves a chunk on when the first engine stalls past TTS_STALL_MS", async () => {
    const stalling = new StallingEngine();
    const tts = await startTts(
      { TTS_ENGINES: "stalling,flite", TTS_STALL_MS: "300" },
      engines({ stalling: { defaultVoice: "x", create: () => stalling } }),
    );
    try {
      const callId = newCallId();
      const audio = await listen(callId);
      speak({ callId, text: "Please hold.", turnDone: true });
      await audio.done("t1");
      const timing = audio.parts[0].timing!;
      expect(timing.ttsFirstAudioMs - timing.ttsRequestMs).toBeGreaterThanOrEqual(290);
      expectWellFormedChunk(audio.chunk("t1"), 160);
      expect(await metric(tts, "voicebot_tts_failovers_total", { from: "stalling", reason: "stall" })).toBe(1);
      await waitFor(() => stalling.aborts >= 1, { what: "the stalled engine to be stopped" });
      audio.close();
    } finally {
      await tts.stop();
    }
  });

  it("gives its only engine the rest once when it dies after audio began, and closes the chunk with what exists when it dies again", async () => {
    const tts = await startTts({ TTS_ENGINES: "dying" }, engines({ dying: { defaultVoice: "x", create: () => new DyingEngine() } }));
    try {
      const callId = newCallId();
      const audio = await listen(callId);
      speak({ callId, text: SENTENCE, turnDone: true });
      await audio.done("t1");
      const parts = audio.chunk("t1");
      expectWellFormedChunk(parts, 160);
      expect(parts.at(-1)!.turnDone).toBe(true);
      expect(joined(parts).length).toBe(1600); // 100 ms, then 100 ms of the retry: nothing is left to try
      expect(await metric(tts, "voicebot_tts_failovers_total", { from: "dying", reason: "broke" })).toBe(1);
      expect(audio.failures).toEqual([]);
      expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "dying", outcome: "partial" })).toBe(1);
      audio.close();
    } finally {
      await tts.stop();
    }
  });

  it("reports SynthesisFailed when every engine fails, and is not ready when no engine passed warm-up", async () => {
    const tts = await startTts(
      { TTS_ENGINES: "throwing" },
      { ...defaultEngines, throwing: { defaultVoice: "x", create: () => new ThrowingEngine() } },
      false,
    );
    try {
      const ready = await waitFor(
        async () => {
          const res = await fetch(`http://127.0.0.1:${tts.ctx.port}/readyz`);
          const body = (await res.json()) as { reason?: string };
          return body.reason?.includes("warm-up") ? { status: res.status, body } : undefined;
        },
        { what: "the warm-up verdict" },
      );
      expect(ready.status).toBe(503);
      expect(ready.body.reason).toMatch(/throwing: engine exploded/);

      const callId = newCallId();
      const audio = await listen(callId);
      speak({ callId, turnId: "t4", chunkSeq: 2, text: "Hello.", turnDone: true });
      await waitFor(() => audio.failures.length === 1, { what: "SynthesisFailed" });
      expect(audio.failures[0]).toMatchObject({ callId, turnId: "t4", chunkSeq: 2 });
      expect(audio.failures[0].error).toMatch(/engine exploded/);
      expect(audio.parts).toEqual([]);
      expect(await metric(tts, "voicebot_tts_chunks_total", { outcome: "failed" })).toBe(1);
      audio.close();
    } finally {
      await tts.stop();
    }
  });
});

describe("tts turn order", () => {
  it("publishes a cached later chunk after the first audio of a synthesis in progress, or after TTS_LATER_CHUNK_WAIT_MS (50)", async () => {
    const later = "Is there anything else?";
    {
      // A long wait, so that the order is the rule's and not a busy machine's timing.
      const held = new HeldEngine();
      const tts = await startTts({ TTS_ENGINES: "held", TTS_STALL_MS: "10000", TTS_LATER_CHUNK_WAIT_MS: "5000" }, { ...defaultEngines, held: { defaultVoice: "x", create: () => held } });
      try {
        await speakAndTime(later); // now cached

        // Chunk 0 is being synthesized (its first audio held back); chunk 1 is in the cache.
        const callId = newCallId();
        const audio = await listen(callId);
        held.open = false;
        speak({ callId, chunkSeq: 0, text: "Order 1 0 0 0 4 2 has shipped." });
        speak({ callId, chunkSeq: 1, text: later, cacheable: true, turnDone: true });
        await sleep(300);
        expect(audio.parts).toEqual([]);
        held.open = true;
        await audio.done("t1", 0);
        await audio.done("t1", 1);
        const firstOf = (chunkSeq: number) => audio.parts.findIndex((p) => p.chunkSeq === chunkSeq);
        expect(firstOf(0)).toBeLessThan(firstOf(1));
        audio.close();
      } finally {
        await tts.stop();
      }
    }
    const held = new HeldEngine();
    const tts = await startTts({ TTS_ENGINES: "held", TTS_STALL_MS: "10000" }, { ...defaultEngines, held: { defaultVoice: "x", create: () => held } });
    try {
      await speakAndTime(later); // cached (a replica of its own: its memory copy too)

      // A synthesis that has no audio for long does not hold the cached chunk back for more than 50 ms.
      const stuck = newCallId();
      const stuckAudio = await listen(stuck);
      held.open = false;
      speak({ callId: stuck, chunkSeq: 0, text: "Order 1 0 0 0 4 3 has shipped." });
      speak({ callId: stuck, chunkSeq: 1, text: later, cacheable: true, turnDone: true });
      await stuckAudio.done("t1", 1);
      expect(stuckAudio.chunk("t1", 0)).toEqual([]);
      const timing = stuckAudio.chunk("t1", 1)[0].timing!;
      expect(timing.ttsFirstAudioMs - timing.ttsRequestMs).toBeGreaterThanOrEqual(45);
      expect(timing.ttsFirstAudioMs - timing.ttsRequestMs).toBeLessThan(1000);
      held.open = true;
      await stuckAudio.done("t1", 0);
      stuckAudio.close();
    } finally {
      await tts.stop();
    }
  });
});

describe("tts configuration", () => {
  it("rejects an unknown engine in TTS_ENGINES with a clear error", async () => {
    const attempt = startService(createDefinition(), { TTS_ENGINES: "flite,festival", NATS_URL: "nats://127.0.0.1:1", HTTP_PORT: "0" });
    await expect(attempt).rejects.toBeInstanceOf(ConfigError);
    await expect(attempt).rejects.toThrow(/TTS_ENGINES="flite,festival": unknown festival \(allowed: flite, espeak, openai, elevenlabs\)/);
  });

  it("rejects bad numbers for the tts settings", async () => {
    const attempt = startService(createDefinition(), { TTS_STALL_MS: "soon", TTS_MAX_CONCURRENT: "0", HTTP_PORT: "0" });
    await expect(attempt).rejects.toThrow(/TTS_STALL_MS="soon".*TTS_MAX_CONCURRENT="0"/);
  });
});

describe("tts with its memory cache off (TTS_MEMORY_CACHE_MB=0)", () => {
  it("serves a repeated cacheable chunk from Redis, identical", async () => {
    const tts = await startTts({ TTS_ENGINES: "flite", TTS_MEMORY_CACHE_MB: "0" });
    try {
      const text = "Press two for opening hours, or stay on the line to hear them again.";
      const first = await speakAndTime(text);
      await waitFor(async () => (await metric(tts, "voicebot_tts_cache_lookups_total", { result: "miss" })) === 1, { what: "the miss" });
      await waitFor(async () => (await tts.ctx.store.redis.keys("vb:cache:tts:*")).length > 0, { what: "the audio to be cached" });
      const second = await speakAndTime(text);
      expect(Buffer.compare(joined(second.parts), joined(first.parts))).toBe(0);
      expect(await metric(tts, "voicebot_tts_cache_lookups_total", { result: "hit", tier: "redis" })).toBe(1);
      expect(await metric(tts, "voicebot_tts_cache_lookups_total", { tier: "memory" })).toBe(0);
      expect(await metric(tts, "voicebot_tts_memory_cache_bytes")).toBe(0);
    } finally {
      await tts.stop();
    }
  });
});
