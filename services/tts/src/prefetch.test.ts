// Prefetch requests (SpeakRequest.prefetch): fixed lines put into the audio cache ahead of the calls that say them.
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Bus, silentLogger, streams, subjects } from "@voicebot/bus";
import { AudioEncoding, BotAudio, SpeakRequest } from "@voicebot/proto";
import type { ServiceHandle } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import { metricSum, startNats, startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { TtsEngine } from "./engine.js";
import { defaultEngines, type EngineRegistry } from "./registry.js";
import { PacedEngine, startTts as startTtsService } from "./test-support/harness.js";

type EngineRequest = Parameters<TtsEngine["synthesize"]>[0];

/** Fails every line but the warm-up word, before any audio. */
class FailingEngine implements TtsEngine {
  readonly label = "failing";
  readonly sampleRate = 16000;
  calls = 0;
  async *synthesize(request: EngineRequest): AsyncGenerator<Int16Array> {
    if (request.text === "Hello.") {
      yield new Int16Array(1600).fill(3000);
      return;
    }
    this.calls++;
    throw new Error("engine exploded");
  }
  async close() {}
}

let nats: ServerHandle;
let redis: ServerHandle;
let client: Bus;
let store: CallStore;
/** Every message on a per-call subject (bot audio, synthesis failures...), whichever call it names. */
const perCall: string[] = [];
let perCallSub: ReturnType<Bus["nc"]["subscribe"]>;

beforeAll(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  client = await Bus.connect({ servers: nats.url, name: "tts-prefetch-test", log: silentLogger, registry: new Registry() });
  store = CallStore.connect(redis.url);
  // vb.v1.call.>: the per-call subjects, whichever call they name.
  perCallSub = client.nc.subscribe(`${subjects.botAudio("CAany").split(".").slice(0, 3).join(".")}.>`, {
    callback: (_error, message) => void perCall.push(message.subject),
  });
  await client.nc.flush();
});

afterAll(async () => {
  perCallSub?.unsubscribe();
  await client?.close();
  await store?.close();
  await Promise.all([nats?.stop(), redis?.stop()]);
});

beforeEach(async () => {
  perCall.length = 0;
  await store.redis.flushall();
});

const startTts = (env: Record<string, string>, engines?: EngineRegistry) =>
  startTtsService({ natsUrl: nats.url, redisUrl: redis.url }, env, { engines });

const MULAW_8K = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };

/** What the dialog sends at start for a fixed line: no call, no turn, no timing. */
function prefetch(text: string, voice = ""): void {
  const request = SpeakRequest.create({ text, voice, format: MULAW_8K, cacheable: true, prefetch: true });
  client.publish(subjects.ttsSpeak, SpeakRequest, request);
}

/** A live chunk of a call; resolves with its audio parts once the chunk is done. */
async function speakLive(text: string, fields: Partial<SpeakRequest> = {}): Promise<{ parts: BotAudio[]; done: Promise<BotAudio[]> }> {
  const callId = `CA${randomUUID().replace(/-/g, "")}`;
  const parts: BotAudio[] = [];
  const sub = client.subscribe(subjects.botAudio(callId), BotAudio, (m) => void parts.push(m), { name: "test-audio" });
  await client.nc.flush();
  client.publish(subjects.ttsSpeak, SpeakRequest, SpeakRequest.create({ callId, turnId: "t1", text, format: MULAW_8K, turnDone: true, ...fields }), callId);
  const done = waitFor(() => parts.some((p) => p.chunkDone), { what: `the chunk "${text}"` }).then(() => {
    sub.unsubscribe();
    return parts;
  });
  return { parts, done };
}

const metric = (handle: ServiceHandle, name: string, labels: Record<string, string> = {}) =>
  metricSum(handle.ctx.registry, name, labels);

async function cacheKeys(handle: ServiceHandle): Promise<string[]> {
  return handle.ctx.store.redis.keys("vb:cache:tts:*");
}

async function speakQueueDepth(): Promise<number> {
  const jsm = await client.nc.jetstreamManager();
  return (await jsm.streams.info(streams.tts.name)).state.messages;
}

const LINE = "Thanks for calling the demo shop. Say order status, agent, or goodbye.";
const LONG_LINE = "Our office is open Monday to Friday from eight in the morning until six in the evening.";

describe("tts prefetch with flite", () => {
  let tts: ServiceHandle;
  beforeAll(async () => {
    tts = await startTts({ TTS_ENGINES: "flite" });
  });
  afterAll(async () => {
    await tts?.stop();
  });

  it("puts a line into the cache without publishing anything; a live chunk of it is then served from the cache, same bytes", async () => {
    prefetch(LINE);
    await waitFor(async () => (await metric(tts, "voicebot_tts_prefetch_total", { outcome: "synthesized" })) === 1, { what: "the prefetch" });
    const [key] = await cacheKeys(tts);
    expect(key).toBeDefined();
    const cached = await tts.ctx.store.getBuffer(key);
    expect(cached!.length).toBeGreaterThan(8000); // seconds of μ-law speech
    expect(cached!.length % 160).toBe(0);
    expect(await speakQueueDepth()).toBe(0); // acked
    await client.nc.flush();
    expect(perCall).toEqual([]); // no BotAudio, no SynthesisFailed, for any call
    expect(await metric(tts, "voicebot_tts_chunks_total")).toBe(0);
    expect(await metric(tts, "voicebot_tts_cache_lookups_total")).toBe(0); // prefetch checks are not call lookups

    const live = await speakLive(LINE, { cacheable: true });
    const fromCache = await live.done;
    expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "cache", outcome: "ok" })).toBe(1);
    expect(await metric(tts, "voicebot_tts_cache_lookups_total", { result: "hit" })).toBe(1);
    expect(Buffer.compare(Buffer.concat(fromCache.map((p) => p.payload)), cached!)).toBe(0);

    // flite is deterministic: a live synthesis of the same line gives the very bytes the prefetch cached.
    const synthesized = await (await speakLive(LINE)).done;
    expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "flite", outcome: "ok" })).toBe(1);
    expect(Buffer.compare(Buffer.concat(synthesized.map((p) => p.payload)), cached!)).toBe(0);
  });

  it("counts a line that is already cached, or already being cached, without synthesizing it again", async () => {
    const before = await metric(tts, "voicebot_tts_prefetch_total", { outcome: "synthesized" });
    // Three dialog replicas starting at once send the same line.
    for (let i = 0; i < 3; i++) prefetch("Please say or key in your order number.");
    await waitFor(async () => (await metric(tts, "voicebot_tts_prefetch_total", { outcome: "cached" })) === 2, { what: "the duplicates" });
    await waitFor(async () => (await metric(tts, "voicebot_tts_prefetch_total", { outcome: "synthesized" })) === before + 1, { what: "the line" });
    prefetch("Please say or key in your order number.");
    await waitFor(async () => (await metric(tts, "voicebot_tts_prefetch_total", { outcome: "cached" })) === 3, { what: "the cache hit" });
    expect(await metric(tts, "voicebot_tts_prefetch_total", { outcome: "synthesized" })).toBe(before + 1);
    expect(await cacheKeys(tts)).toHaveLength(1);
    expect(perCall).toEqual([]);
  });

  it("keys the cache by voice and format as live chunks do, and rejects a format it cannot make", async () => {
    const fromCache = () => metric(tts, "voicebot_tts_chunks_total", { engine: "cache" });
    const servedBefore = await fromCache();
    prefetch("Goodbye.", "kal");
    client.publish(subjects.ttsSpeak, SpeakRequest, SpeakRequest.create({ text: "Goodbye.", format: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 12345 }, prefetch: true }));
    await waitFor(async () => (await metric(tts, "voicebot_tts_prefetch_total", { outcome: "failed" })) === 1, { what: "the bad format" });
    await waitFor(async () => (await cacheKeys(tts)).length === 1, { what: "the kal line cached" });
    expect(await metric(tts, "voicebot_tts_bad_requests_total", { reason: "unsupported_format" })).toBe(1);
    await (await speakLive("Goodbye.", { cacheable: true, voice: "kal" })).done;
    expect(await fromCache()).toBe(servedBefore + 1);
    await (await speakLive("Goodbye.", { cacheable: true })).done; // another voice: not the prefetched audio
    expect(await fromCache()).toBe(servedBefore + 1);
    expect(perCall.filter((s) => s.endsWith(".tts.failed"))).toEqual([]);
  });
});

describe("tts prefetch priority", () => {
  let tts: ServiceHandle;
  let paced: PacedEngine;
  beforeAll(async () => {
    paced = new PacedEngine(defaultEngines.flite.create("slt"));
    tts = await startTts({ TTS_ENGINES: "paced", TTS_MAX_CONCURRENT: "1" }, { paced: { defaultVoice: "slt", create: () => paced } });
  });
  afterAll(async () => {
    await tts?.stop();
  });

  it("waits while live chunks use every synthesis slot, and never makes a live chunk wait", async () => {
    // One slot, taken by a live chunk of several seconds: the prefetch must not start beside it.
    const long = await speakLive(LINE);
    await waitFor(() => long.parts.length >= 2, { what: "the live chunk to start" });
    prefetch("One moment while I check that.");
    await waitFor(async () => (await metric(tts, "voicebot_tts_prefetch_queued")) === 1, { what: "the prefetch to be held" });
    await sleep(300);
    expect(paced.texts).not.toContain("One moment while I check that.");
    await long.done;
    await waitFor(async () => (await metric(tts, "voicebot_tts_prefetch_total", { outcome: "synthesized" })) === 1, { what: "the prefetch after the live chunk" });

    // A prefetch in progress takes no slot: a live chunk arriving meanwhile starts at once and ends first.
    prefetch(LONG_LINE);
    await waitFor(() => paced.texts.includes(LONG_LINE), { what: "the prefetch of the long line to start" });
    const sentAt = Date.now();
    const short = await (await speakLive("Sure.")).done;
    expect(short[0].timing!.ttsFirstAudioMs - sentAt).toBeLessThan(1_000);
    expect(await metric(tts, "voicebot_tts_prefetch_total", { outcome: "synthesized" })).toBe(1); // still going
    await waitFor(async () => (await metric(tts, "voicebot_tts_prefetch_total", { outcome: "synthesized" })) === 2, { what: "the long prefetch", timeoutMs: 20_000 });
    expect(perCall.every((s) => s.endsWith(".audio.out"))).toBe(true);
  });

  it("drops what it holds when the replica stops", async () => {
    const engine = new PacedEngine(defaultEngines.flite.create("slt"));
    const other = await startTts({ TTS_ENGINES: "paced", TTS_MAX_CONCURRENT: "1" }, { paced: { defaultVoice: "slt", create: () => engine } });
    try {
      await tts.stop(); // only `other` takes requests now
      const long = await speakLive(LONG_LINE);
      await waitFor(() => long.parts.length >= 2, { what: "the live chunk to start" });
      prefetch("Transferring you to an agent now.");
      prefetch("Sorry, I didn't catch that.");
      await waitFor(async () => (await metric(other, "voicebot_tts_prefetch_queued")) === 2, { what: "the prefetches to be held" });
      await other.stop(); // drain: the live chunk finishes, the held prefetches are dropped
      await long.done;
      expect(await metric(other, "voicebot_tts_prefetch_total", { outcome: "dropped" })).toBe(2);
      expect(engine.texts).toEqual(["Hello.", LONG_LINE]); // the warm-up word and the live chunk
    } finally {
      await other.stop();
    }
  });
});

describe("tts prefetch with a failing engine", () => {
  it("fails quietly: counted and logged, no SynthesisFailed, no audio, no failover; live chunks still fail over", async () => {
    const failing = new FailingEngine();
    const tts = await startTts({ TTS_ENGINES: "failing,flite" }, { ...defaultEngines, failing: { defaultVoice: "x", create: () => failing } });
    try {
      prefetch(LINE);
      await waitFor(async () => (await metric(tts, "voicebot_tts_prefetch_total", { outcome: "failed" })) === 1, { what: "the failed prefetch" });
      expect(failing.calls).toBe(1);
      expect(await metric(tts, "voicebot_tts_engine_errors_total", { engine: "failing", phase: "prefetch" })).toBe(1);
      expect(await metric(tts, "voicebot_tts_failovers_total")).toBe(0); // flite's audio would not be cached anyway
      expect(await cacheKeys(tts)).toEqual([]);
      expect(await speakQueueDepth()).toBe(0);
      await client.nc.flush();
      expect(perCall).toEqual([]);

      const live = await (await speakLive(LINE, { cacheable: true })).done;
      expect(live.length).toBeGreaterThan(1);
      expect(await metric(tts, "voicebot_tts_chunks_total", { engine: "flite", outcome: "ok" })).toBe(1);
      expect(await metric(tts, "voicebot_tts_failovers_total", { from: "failing" })).toBe(1);
    } finally {
      await tts.stop();
    }
  });
});
