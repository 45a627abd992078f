// The tts service with cloud engines, each against a local fake of its provider (real NATS and Redis).

import { randomUUID } from "node:crypto";
import { mulawDecode, mulawEncode, mulawFrameEnergy, rmsDbfs } from "@voicebot/audio";
import { Bus, silentLogger, subjects } from "@voicebot/bus";
import { AudioEncoding, BotAudio, SpeakRequest, SynthesisFailed } from "@voicebot/proto";
import { ConfigError, startService, type ServiceHandle } from "@voicebot/service-kit";
import {
  freePort,
  metricSum,
  startFakeElevenLabs,
  startFakeOpenAISpeech,
  startNats,
  startRedis,
  startServiceProcess,
  waitFor,
  type FakeElevenLabs,
  type FakeOpenAISpeech,
  type FakeTtsReply,
  type ServerHandle,
} from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FliteEngine } from "./engines/flite.js";
import { createDefinition } from "./service.js";
import { unsaidRest } from "./fallback.js";
import { maxChunkSeconds } from "./speaker.js";
import { startTts as startTtsService } from "./test-support/harness.js";

const OPENAI_KEY = "sk-test-service-0123456789";
const ELEVENLABS_KEY = "xi-test-service-0123456789";
const SENTENCE = "Thanks for calling Acme dental, this is the virtual assistant. How can I help you today?";

/** Real speech for the fakes to send: flite at the asked rate, made once per text and rate (so the fakes answer
 *  at once, like a provider's first byte, rather than after a flite run). */
const flites = new Map<number, FliteEngine>();
const spoken = new Map<string, Promise<Int16Array>>();
function fliteSpeech(text: string, sampleRate: number): Promise<Int16Array> {
  const key = `${sampleRate}:${text}`;
  if (!spoken.has(key)) {
    if (!flites.has(sampleRate)) flites.set(sampleRate, new FliteEngine({ voice: "slt", sampleRate }));
    const engine = flites.get(sampleRate)!;
    spoken.set(key, (async () => {
      const pieces: Int16Array[] = [];
      for await (const piece of engine.synthesize({ text })) pieces.push(piece);
      return Int16Array.from(pieces.flatMap((p) => [...p]));
    })());
  }
  return spoken.get(key)!;
}

let nats: ServerHandle;
let redis: ServerHandle;
let client: Bus;
let openai: FakeOpenAISpeech;
let elevenlabs: FakeElevenLabs;
let openaiReply: () => FakeTtsReply = () => ({});
let elevenlabsReply: () => FakeTtsReply = () => ({});

beforeAll(async () => {
  [nats, redis, openai, elevenlabs] = await Promise.all([
    startNats(),
    startRedis(),
    startFakeOpenAISpeech({ apiKey: OPENAI_KEY, speech: fliteSpeech, reply: () => openaiReply() }),
    startFakeElevenLabs({ apiKey: ELEVENLABS_KEY, speech: fliteSpeech, reply: () => elevenlabsReply() }),
  ]);
  client = await Bus.connect({ servers: nats.url, name: "tts-cloud-test", log: silentLogger, registry: new Registry() });
  await Promise.all([fliteSpeech(SENTENCE, 24000), fliteSpeech(SENTENCE, 8000)]);
});

afterAll(async () => {
  await client?.close();
  await Promise.all([nats?.stop(), redis?.stop(), openai?.stop(), elevenlabs?.stop(), ...[...flites.values()].map((f) => f.close())]);
});

const startTts = (env: Record<string, string>) =>
  startTtsService(
    { natsUrl: nats.url, redisUrl: redis.url },
    {
      TTS_OPENAI_BASE_URL: openai.baseUrl,
      TTS_OPENAI_API_KEY: OPENAI_KEY,
      ELEVENLABS_BASE_URL: elevenlabs.baseUrl,
      ELEVENLABS_API_KEY: ELEVENLABS_KEY,
      ...env,
    },
  );

/**
 * Speaks one chunk on a new call and returns its BotAudio parts once the chunk is done; `meanwhile` runs as soon as
 * the request is out, with the parts as they come.
 */
async function speakChunk(
  text: string,
  cacheable = false,
  meanwhile?: (parts: BotAudio[]) => Promise<void>,
): Promise<{ parts: BotAudio[]; failures: SynthesisFailed[] }> {
  const callId = `CA${randomUUID().replace(/-/g, "")}`;
  const parts: BotAudio[] = [];
  const failures: SynthesisFailed[] = [];
  const subs = [
    client.subscribe(subjects.botAudio(callId), BotAudio, (m) => void parts.push(m), { name: "test-audio" }),
    client.subscribe(subjects.ttsFailed(callId), SynthesisFailed, (m) => void failures.push(m), { name: "test-failed" }),
  ];
  await client.nc.flush();
  const request = SpeakRequest.create({ callId, turnId: "t1", chunkSeq: 0, text, turnDone: true, cacheable, format: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 } });
  client.publish(subjects.ttsSpeak, SpeakRequest, request, callId);
  await meanwhile?.(parts);
  await waitFor(() => parts.some((p) => p.chunkDone) || failures.length > 0, { what: "the chunk to finish" });
  subs.forEach((s) => s.unsubscribe());
  return { parts, failures };
}

const metric = (handle: ServiceHandle, name: string, labels: Record<string, string> = {}) =>
  metricSum(handle.ctx.registry, name, labels);

/** Whole μ-law frames with speech in them: loud enough overall, and most frames above the noise floor. */
function expectSpeech(parts: BotAudio[]): Uint8Array {
  const bytes = Buffer.concat(parts.map((p) => p.payload));
  expect(parts.map((p) => p.partSeq)).toEqual(parts.map((_, i) => i));
  expect(parts.every((p) => p.payload.length % 160 === 0)).toBe(true);
  expect(bytes.length / 8000).toBeGreaterThan(2.5);
  expect(rmsDbfs(mulawDecode(bytes))).toBeGreaterThan(-35);
  const frames = Array.from({ length: bytes.length / 160 }, (_, i) => mulawFrameEnergy(bytes.subarray(i * 160, (i + 1) * 160)));
  expect(frames.filter((db) => db > -40).length / frames.length).toBeGreaterThan(0.4);
  return bytes;
}

const firstAudioMs = (parts: BotAudio[]) => parts[0].timing!.ttsFirstAudioMs - parts[0].timing!.ttsRequestMs;

describe("tts with TTS_ENGINES=openai,flite", () => {
  let tts: ServiceHandle;
  beforeAll(async () => {
    // Each case meets openai afresh (a failure would otherwise send the next cases to flite first: see below).
    tts = await startTts({ TTS_ENGINES: "openai,flite", TTS_STALL_MS: "1000", TTS_ENGINE_COOLDOWN_MS: "0" });
  });
  afterAll(async () => {
    await tts?.stop();
  });

  it("is ready without calling the paid API, then speaks with openai (24 kHz resampled to μ-law 8 kHz)", async () => {
    // Warm-up checked the configuration and opened a connection with the free GET /models: no synthesis.
    await waitFor(() => openai.requests.length > 0, { what: "the keep-warm request" });
    expect(openai.requests.map((r) => `${r.method} ${r.path} ${r.headers.authorization}`)).toEqual([`GET /v1/models Bearer ${OPENAI_KEY}`]);
    openaiReply = () => ({});
    const { parts, failures } = await speakChunk(SENTENCE);
    expect(failures).toEqual([]);
    expectSpeech(parts);
    expect(parts.at(-1)!.turnDone).toBe(true);
    expect(openai.speeches.length).toBe(1);
    expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "openai", outcome: "ok" })).toBe(1);
    expect(await metric(tts, "voicebot_tts_first_audio_seconds", { source: "engine", engine: "openai" })).toBe(1);
    expect(firstAudioMs(parts)).toBeLessThan(1000);
  });

  it("moves a chunk to flite when openai answers 500, and when it stalls after the headers", async () => {
    for (const [reply, reason] of [[{ status: 500, message: "The server had an error" }, "error"], [{ stallAfterChunks: 0 }, "stall"]] as const) {
      openaiReply = () => reply;
      const asked = openai.speeches.length;
      const { parts, failures } = await speakChunk(SENTENCE);
      expect(failures).toEqual([]);
      expectSpeech(parts);
      expect(openai.speeches.length).toBe(asked + 1);
      expect(await metric(tts, "voicebot_tts_failovers_total", { from: "openai", reason })).toBe(1);
      if (reason === "stall") {
        expect(firstAudioMs(parts)).toBeGreaterThanOrEqual(990);
        expect(await openai.speeches.at(-1)!.delivery.ended).toBe("client-closed"); // the stalled request was dropped
      }
    }
    expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "flite", outcome: "ok" })).toBe(2);
    expect(await metric(tts, "voicebot_tts_first_audio_seconds", { source: "engine", engine: "flite" })).toBe(2);
    expect(await metric(tts, "voicebot_tts_engine_errors_total", { engine: "openai", phase: "before_audio" })).toBe(2);
  });

  it("has flite say the sentence again when openai's stream is cut before a word was through: a restart, not a sentence lost", async () => {
    openaiReply = () => ({ cutAfterChunks: 4 });
    const { parts, failures } = await speakChunk(SENTENCE);
    openaiReply = () => ({});
    expect(failures).toEqual([]);
    expect(parts.at(-1)!.chunkDone).toBe(true);
    expect(parts.at(-1)!.turnDone).toBe(true);
    const seconds = Buffer.concat(parts.map((p) => p.payload)).length / 8000;
    const flite = (await fliteSpeech(SENTENCE, 8000)).length / 8000;
    expect(seconds).toBeGreaterThan(0.3 + flite - 0.1); // openai's 0.4 s, then flite's whole sentence
    expect(seconds).toBeLessThan(0.5 + flite + 0.1);
    expect(await metric(tts, "voicebot_tts_failovers_total", { from: "openai", reason: "broke" })).toBe(1);
    expect(await metric(tts, "voicebot_tts_engine_errors_total", { engine: "openai", phase: "after_audio" })).toBe(1);
    expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "flite", outcome: "ok" })).toBe(3);
    expect(await metric(tts, "voicebot_tts_chunks_total", { outcome: "partial" })).toBe(0);
  });

  it("cuts audio far longer than its text could take (an engine fault: two minutes for 'Hello.'): the chunk ends there as a partial one", async () => {
    const twoMinutes = Buffer.alloc(120 * 24_000 * 2);
    for (let i = 0; i < twoMinutes.length; i += 2) twoMinutes.writeInt16LE(i % 96 < 48 ? 3000 : -3000, i);
    openaiReply = () => ({ raw: { status: 200, contentType: "audio/pcm", body: twoMinutes } });
    const { parts, failures } = await speakChunk("Hello.");
    openaiReply = () => ({});
    expect(failures).toEqual([]);
    expect(parts.at(-1)!.chunkDone).toBe(true);
    const seconds = Buffer.concat(parts.map((p) => p.payload)).length / 8000;
    expect(seconds).toBeGreaterThan(maxChunkSeconds("Hello.", 1) - 0.5);
    expect(seconds).toBeLessThan(maxChunkSeconds("Hello.", 1) + 1.5); // cut at the first piece past the limit
    expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "openai", outcome: "partial" })).toBe(1);
  });
});

describe("tts with TTS_ENGINES=openai,elevenlabs: a stream that breaks off mid-sentence", () => {
  let tts: ServiceHandle;
  beforeAll(async () => {
    tts = await startTts({ TTS_ENGINES: "openai,elevenlabs", TTS_STALL_MS: "1000", TTS_ENGINE_COOLDOWN_MS: "0", TTS_MAX_LAG_MS: "500" });
  });
  afterAll(async () => {
    openaiReply = () => ({});
    await tts?.stop();
  });

  it("has ElevenLabs say what the caller may not have heard, from a word before the break", async () => {
    // 25 pieces of 100 ms: 2.5 s said, estimated at 10 characters a second as 25 characters ("Thanks for calling Acme
    // d|ental"): the word the estimate falls in and the one before it are said again.
    openaiReply = () => ({ cutAfterChunks: 25 });
    const rest = "Acme dental, this is the virtual assistant. How can I help you today?";
    expect(unsaidRest(SENTENCE, 2.5)).toBe(rest);
    for (let attempt = 1; attempt <= 2; attempt++) {
      const asked = elevenlabs.speeches.length;
      const { parts, failures } = await speakChunk(SENTENCE);
      expect(failures).toEqual([]);
      expect(parts[0].text).toBe(SENTENCE);
      expect(parts.at(-1)!.turnDone).toBe(true);
      expect(elevenlabs.speeches.length).toBe(asked + 1);
      expect(elevenlabs.speeches.at(-1)!.text).toBe(rest);
      const seconds = Buffer.concat(parts.map((p) => p.payload)).length / 8000;
      const restSeconds = (await fliteSpeech(rest, 8000)).length / 8000;
      expect(seconds).toBeGreaterThan(2.4 + restSeconds);
      expect(seconds).toBeLessThan(2.6 + restSeconds + 0.05);
    }
    expect(await metric(tts, "voicebot_tts_failovers_total", { from: "openai", reason: "broke" })).toBe(2);
    expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "elevenlabs", outcome: "ok" })).toBe(2);
    expect(await metric(tts, "voicebot_tts_cache_lookups_total", { result: "hit" })).toBe(0);
  });

  it("moves the rest on when openai trickles slower than real time (TTS_MAX_LAG_MS), and when it stalls mid-stream", async () => {
    // 100 ms of audio every 250 ms: 0.4 x real time, 650 ms behind after the sixth piece.
    for (const [reply, reason] of [[{ intervalMs: 250 }, "slow"], [{ stallAfterChunks: 3 }, "broke"]] as const) {
      openaiReply = () => reply;
      const asked = elevenlabs.speeches.length;
      const before = await metric(tts, "voicebot_tts_failovers_total", { from: "openai", reason });
      const { parts, failures } = await speakChunk(SENTENCE);
      expect(failures).toEqual([]);
      expect(parts.at(-1)!.chunkDone).toBe(true);
      expect(elevenlabs.speeches.length).toBe(asked + 1);
      expect(elevenlabs.speeches.at(-1)!.text).toBe(SENTENCE); // under a second said: the sentence again
      expect(await metric(tts, "voicebot_tts_failovers_total", { from: "openai", reason })).toBe(before + 1);
      expect(await openai.speeches.at(-1)!.delivery.ended).toBe("client-closed");
    }
  });
});

describe("tts with TTS_ENGINES=openai,elevenlabs in its own process, frozen mid-sentence", () => {
  it("does not take its own stall for the engine's: no failover when the process could not run for longer than TTS_STALL_MS and TTS_MAX_LAG_MS", async () => {
    // A CPU-throttled or paused pod: SIGSTOP while openai streams (2x real time); its audio waits in the socket.
    // Frozen past the speak queue's ack wait (2 s) too: JetStream's redelivery of the chunk must not say it twice.
    const tts = await startServiceProcess("tts", {
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      LOG_LEVEL: "info",
      TTS_ENGINES: "openai,elevenlabs",
      TTS_OPENAI_BASE_URL: openai.baseUrl,
      TTS_OPENAI_API_KEY: OPENAI_KEY,
      ELEVENLABS_BASE_URL: elevenlabs.baseUrl,
      ELEVENLABS_API_KEY: ELEVENLABS_KEY,
      TTS_STALL_MS: "1000",
      TTS_MAX_LAG_MS: "500",
      TTS_ENGINE_COOLDOWN_MS: "0",
    });
    try {
      openaiReply = () => ({ intervalMs: 50 });
      const askedElevenLabs = elevenlabs.speeches.length;
      const { parts, failures } = await speakChunk(SENTENCE, false, async (parts) => {
        await waitFor(() => parts.length > 0, { what: "the first audio" });
        await new Promise((resolve) => setTimeout(resolve, 300));
        tts.process.kill("SIGSTOP");
        await new Promise((resolve) => setTimeout(resolve, 2_400));
        tts.process.kill("SIGCONT");
      });

      expect(failures).toEqual([]);
      expect(elevenlabs.speeches.length).toBe(askedElevenLabs);
      const seconds = Buffer.concat(parts.map((p) => p.payload)).length / 8000;
      expect(seconds).toBeCloseTo((await fliteSpeech(SENTENCE, 8000)).length / 8000, 0);
      const metrics = await (await fetch(`${tts.baseUrl}/metrics`)).text();
      expect(metrics).not.toMatch(/^voicebot_tts_failovers_total\{/m);
      expect(metrics).toMatch(/^voicebot_tts_chunks_total\{[^}]*engine="openai"[^}]*outcome="ok"[^}]*\} 1$/m);
      expect(metrics).toMatch(/^voicebot_bus_messages_received_total\{handler="speak"[^}]*\} 1$/m); // run once
    } finally {
      openaiReply = () => ({});
      await tts.terminate();
    }
  });
});

describe("tts with TTS_ENGINES=openai alone", () => {
  it("gives openai the rest of a sentence whose stream dropped mid-way: a dropped connection is not the sentence lost", async () => {
    const tts = await startTts({ TTS_ENGINES: "openai", TTS_STALL_MS: "1000" });
    try {
      let requests = 0;
      openaiReply = () => (++requests === 1 ? { cutAfterChunks: 25 } : {}); // 2.5 s, then the connection drops
      const { parts, failures } = await speakChunk(SENTENCE);
      expect(failures).toEqual([]);
      expect(openai.speeches.slice(-2).map((s) => s.input)).toEqual([SENTENCE, unsaidRest(SENTENCE, 2.5)]);
      const seconds = Buffer.concat(parts.map((p) => p.payload)).length / 8000;
      const restSeconds = (await fliteSpeech(unsaidRest(SENTENCE, 2.5), 24000)).length / 24000;
      expect(seconds).toBeGreaterThan(2.4 + restSeconds);
      expect(await metric(tts, "voicebot_tts_failovers_total", { from: "openai", reason: "broke" })).toBe(1);
      expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "openai", outcome: "ok" })).toBe(1);
    } finally {
      openaiReply = () => ({});
      await tts.stop();
    }
  });
});

// Its own replica: a second one on the work queue (another describe's) would take some of the chunks.
describe("tts with TTS_ENGINES=openai,elevenlabs and a cool-down", () => {
  it("never caches a chunk whose rest another engine said, even when that one is the primary (the first cooled down)", async () => {
    const cooling = await startTts({ TTS_ENGINES: "openai,elevenlabs", TTS_STALL_MS: "1000", TTS_ENGINE_COOLDOWN_MS: "20000" });
    try {
      openaiReply = () => ({ status: 500, message: "The server had an error" });
      await speakChunk("Just a moment."); // openai cools down: ElevenLabs is tried first now
      openaiReply = () => ({});
      elevenlabsReply = () => ({ cutAfterChunks: 25 }); // 2.5 s, then the connection drops
      const { parts } = await speakChunk(SENTENCE, true);
      elevenlabsReply = () => ({});
      expect(parts.at(-1)!.chunkDone).toBe(true);
      expect(openai.speeches.at(-1)!.input).toBe(unsaidRest(SENTENCE, 2.5)); // the primary engine said the rest
      expect(await metric(cooling, "voicebot_tts_failovers_total", { from: "elevenlabs", reason: "broke" })).toBe(1);
      const asked = openai.speeches.length + elevenlabs.speeches.length;
      await speakChunk(SENTENCE, true);
      expect(openai.speeches.length + elevenlabs.speeches.length).toBe(asked + 1); // synthesized again: nothing was cached
      expect(await metric(cooling, "voicebot_tts_cache_lookups_total", { result: "hit" })).toBe(0);
    } finally {
      openaiReply = () => ({});
      elevenlabsReply = () => ({});
      await cooling.stop();
    }
  });

});

describe("tts with TTS_ENGINES=openai,flite and a cool-down", () => {
  it("tries a provider that stalled after flite for TTS_ENGINE_COOLDOWN_MS: one stall, not one per sentence; then openai again", async () => {
    // A cool-down that outlasts flite saying the stalled sentence and the next one on a busy machine.
    const tts = await startTts({ TTS_ENGINES: "openai,flite", TTS_STALL_MS: "1000", TTS_ENGINE_COOLDOWN_MS: "6000" });
    try {
      // A refusal of one request (an unknown voice) says nothing of the engine: it is not cooled down.
      openaiReply = () => ({ status: 400, message: "Invalid voice" });
      const refused = await speakChunk(SENTENCE);
      expect(refused.failures).toEqual([]);
      expect(await metric(tts, "voicebot_tts_engine_healthy", { engine: "openai" })).toBe(1);
      expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "flite", outcome: "ok" })).toBe(1);

      openaiReply = () => ({ stallAfterChunks: 0 });
      const stalled = await speakChunk(SENTENCE);
      expect(stalled.failures).toEqual([]);
      expect(firstAudioMs(stalled.parts)).toBeGreaterThanOrEqual(1000); // the stall, once
      expect(await metric(tts, "voicebot_tts_engine_healthy", { engine: "openai" })).toBe(0);
      const requests = openai.speeches.length;
      const next = await speakChunk(SENTENCE);
      expect(firstAudioMs(next.parts)).toBeLessThan(700); // flite at once
      expect(openai.speeches.length).toBe(requests);
      expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "flite", outcome: "ok" })).toBe(3);

      // Cooled down, and the provider well again: openai speaks, and is healthy.
      openaiReply = () => ({});
      await new Promise((r) => setTimeout(r, 6_100));
      const back = await speakChunk(SENTENCE);
      expectSpeech(back.parts);
      expect(openai.speeches.length).toBe(requests + 1);
      expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "openai", outcome: "ok" })).toBe(1);
      expect(await metric(tts, "voicebot_tts_engine_healthy", { engine: "openai" })).toBe(1);
    } finally {
      openaiReply = () => ({});
      await tts.stop();
    }
  });
});

describe("tts with TTS_ENGINES=elevenlabs", () => {
  it("publishes ElevenLabs' μ-law speech as BotAudio parts, byte for byte", async () => {
    const earlier = elevenlabs.requests.length;
    const tts = await startTts({ TTS_ENGINES: "elevenlabs" });
    try {
      // Starting costs no synthesis: at most the free keep-warm GET /v1/models.
      expect(elevenlabs.requests.slice(earlier).filter((r) => r.method !== "GET" || r.path !== "/v1/models")).toEqual([]);
      const { parts, failures } = await speakChunk(SENTENCE);
      expect(failures).toEqual([]);
      const bytes = expectSpeech(parts);
      expect(parts[0].text).toBe(SENTENCE);
      expect(parts.at(-1)!.turnDone).toBe(true);
      // ulaw_8000 needs no resampling: decoding and re-encoding μ-law gives back the provider's bytes (but for
      // 0x7f, "negative zero", which comes back as 0xff: both are silence).
      const sent = mulawEncode(await fliteSpeech(SENTENCE, 8000)).map((b) => (b === 0x7f ? 0xff : b));
      expect(Buffer.compare(bytes.subarray(0, sent.length), sent)).toBe(0);
      expect(bytes.length - sent.length).toBeLessThan(160); // only the last frame's padding
      const request = elevenlabs.speeches.at(-1)!;
      expect(request.request.query.output_format).toBe("ulaw_8000");
      expect(request.body).toEqual({ text: SENTENCE, model_id: "eleven_flash_v2_5" });
      expect(await metric(tts, "voicebot_tts_first_audio_seconds", { source: "engine", engine: "elevenlabs" })).toBe(1);
      expect(firstAudioMs(parts)).toBeLessThan(1000);
    } finally {
      await tts.stop();
    }
  });
});

describe("tts with an unreachable ElevenLabs", () => {
  it("is ready (a local engine is listed after it), and counts and logs its failed keep-warm request", async () => {
    const tts = await startTts({ TTS_ENGINES: "elevenlabs,flite", ELEVENLABS_BASE_URL: `http://127.0.0.1:${await freePort()}` });
    try {
      await waitFor(async () => (await metric(tts, "voicebot_tts_engine_errors_total", { engine: "elevenlabs", phase: "keep_warm" })) === 1, {
        what: "the keep-warm failure to be counted",
      });
      const { parts, failures } = await speakChunk(SENTENCE);
      expect(failures).toEqual([]);
      expectSpeech(parts);
      expect(await metric(tts, "voicebot_tts_failovers_total", { from: "elevenlabs", reason: "error" })).toBe(1);
    } finally {
      await tts.stop();
    }
  });
});

describe("tts cloud engine configuration", () => {
  it("refuses a cloud engine without its API key", async () => {
    const attempt = startService(createDefinition(), { TTS_ENGINES: "openai,elevenlabs,flite", NATS_URL: "nats://127.0.0.1:1", HTTP_PORT: "0" });
    await expect(attempt).rejects.toBeInstanceOf(ConfigError);
    await expect(attempt).rejects.toThrow(
      /TTS_ENGINES includes openai but TTS_OPENAI_API_KEY is not set; TTS_ENGINES includes elevenlabs but ELEVENLABS_API_KEY is not set/,
    );
  });
});
