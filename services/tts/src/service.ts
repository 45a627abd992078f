import os from "node:os";
import { errorText, streams, subjects, type WorkItem } from "@voicebot/bus";
import { CallEnded, CancelTurn, SpeakRequest } from "@voicebot/proto";
import type { EnvReader, RunningService, ServiceContext, ServiceDefinition } from "@voicebot/service-kit";
import type { FallbackEngine } from "./fallback.js";
import { JobRegistry } from "./jobs.js";
import { Limiter } from "./limiter.js";
import { MemoryAudioCache } from "./memory-cache.js";
import { TtsMetrics } from "./metrics.js";
import { PrefetchQueue } from "./prefetch.js";
import { createEngine, defaultEngines, readEngineSettings, type EngineRegistry, type EngineSettings } from "./registry.js";
import { publishUnspoken, Speaker } from "./speaker.js";
import { warmUp } from "./warmup.js";

export interface TtsConfig extends EngineSettings {
  /** TTS_RATE: speaking rate, 1 = the engine's normal speed. */
  rate: number;
  /** TTS_CACHE_TTL_SECONDS (default 7 days), in ms. */
  cacheTtlMs: number;
  /** TTS_MAX_CONCURRENT: syntheses at once (default 2 per CPU core); more requests wait in a queue. */
  maxConcurrent: number;
  /** TTS_ACK_WAIT_MS: a request whose replica stops heart-beating for this long goes to another replica. */
  ackWaitMs: number;
  /** TTS_MAX_REQUEST_AGE_MS: a request older than this (it waited out an outage in the queue) is dropped. */
  maxRequestAgeMs: number;
  /** TTS_MEMORY_CACHE_MB: the replica's own copy of the cached audio it served last (0 = Redis only), in bytes. */
  memoryCacheBytes: number;
  /** TTS_MEMORY_CACHE_TTL_S: a copy is read again from Redis after this long (a line deleted there is re-spoken). */
  memoryCacheMaxAgeMs: number;
  /** TTS_LATER_CHUNK_WAIT_MS: the longest a cached later chunk of a turn waits for the first audio of a synthesis. */
  laterChunkWaitMs: number;
}

export interface TtsServiceOptions {
  /** Engines selectable in TTS_ENGINES (default: flite, espeak, openai, elevenlabs). */
  engines?: EngineRegistry;
}

/** Part 0 carries 2 frames (40 ms) so playback starts at once; later parts up to 200 ms. */
const FIRST_PART_FRAMES = 2;
const MAX_PART_FRAMES = 10;
/** After a warm-up in which no engine worked, try again this often. */
const WARMUP_RETRY_MS = 10_000;
/** An engine that cannot say one word in this long (or TTS_STALL_MS if longer) fails warm-up. */
const WARMUP_TIMEOUT_MS = 10_000;
/** Prefetch requests held at most per replica (the fixed lines of many agents); more are dropped. */
const MAX_PREFETCH_QUEUED = 2_000;

export function readTtsConfig(env: EnvReader, registry: EngineRegistry = defaultEngines): TtsConfig {
  return {
    ...readEngineSettings(env, registry),
    rate: env.number("TTS_RATE", 1, { min: 0.5, max: 2 }),
    cacheTtlMs: env.int("TTS_CACHE_TTL_SECONDS", 7 * 24 * 3600, { min: 1 }) * 1000,
    maxConcurrent: env.int("TTS_MAX_CONCURRENT", 2 * os.availableParallelism(), { min: 1, max: 1024 }),
    ackWaitMs: env.int("TTS_ACK_WAIT_MS", 2_000, { min: 500, max: 60_000 }),
    maxRequestAgeMs: env.int("TTS_MAX_REQUEST_AGE_MS", 60_000, { min: 1_000 }),
    memoryCacheBytes: env.int("TTS_MEMORY_CACHE_MB", 32, { min: 0, max: 4_096 }) * 1024 * 1024,
    memoryCacheMaxAgeMs: env.int("TTS_MEMORY_CACHE_TTL_S", 600, { min: 1, max: 86_400 }) * 1000,
    laterChunkWaitMs: env.int("TTS_LATER_CHUNK_WAIT_MS", 50, { min: 0, max: 10_000 }),
  };
}

export function createDefinition(options: TtsServiceOptions = {}): ServiceDefinition<TtsConfig> {
  const registry = options.engines ?? defaultEngines;
  return {
    name: "tts",
    defaultHttpPort: 9104,
    readConfig: (env) => readTtsConfig(env, registry),
    start: (ctx, config) => startTts(ctx, config),
  };
}

export const definition = createDefinition();

async function startTts(ctx: ServiceContext, config: TtsConfig): Promise<RunningService> {
  const { bus, log } = ctx;
  const limiter = new Limiter(config.maxConcurrent);
  const jobs = new JobRegistry();
  const memory = new MemoryAudioCache(config.memoryCacheBytes, config.memoryCacheMaxAgeMs);
  const metrics = new TtsMetrics(ctx.registry, {
    memoryCacheBytes: () => {
      memory.dropExpired(); // each scrape frees what aged out unread
      return memory.bytes;
    },
    queued: () => limiter.queued,
    active: () => limiter.active,
    // Read on scrapes only, after start.
    prefetchQueued: (): number => prefetches.queued,
  });
  const engine: FallbackEngine = createEngine(config, {
    onFailover: (failed, reason, error) => {
      metrics.failovers.inc({ from: failed.label, reason });
      const afterAudio = reason === "broke" || reason === "slow";
      metrics.engineErrors.inc({ engine: failed.label, phase: afterAudio ? "after_audio" : "before_audio" });
      if (afterAudio) log.warn("tts engine broke off mid-chunk; the next one says the rest", { engine: failed.label, reason, error });
      else log.warn("tts engine failed; trying the next one", { engine: failed.label, reason, error });
    },
    onHealth: (changed, healthy) => {
      metrics.engineHealthy.set({ engine: changed.label }, healthy ? 1 : 0);
      if (healthy) log.info("tts engine healthy again", { engine: changed.label });
      else log.warn("tts engine cools down: later chunks try it after the others", { engine: changed.label, cooldownMs: config.cooldownMs });
    },
    onKeepWarmFailure: (label, error) => {
      metrics.engineErrors.inc({ engine: label, phase: "keep_warm" });
      log.warn("tts engine keep-warm request failed; the next sentence opens its own connection", { engine: label, error });
    },
  });
  for (const listed of engine.engines) metrics.engineHealthy.set({ engine: listed.label }, 1);
  const speaker = new Speaker({
    bus,
    store: ctx.store,
    log,
    engine,
    metrics,
    limiter,
    jobs,
    memory,
    options: {
      defaultVoice: config.voice,
      rate: config.rate,
      cacheTtlMs: config.cacheTtlMs,
      firstPartFrames: FIRST_PART_FRAMES,
      maxPartFrames: MAX_PART_FRAMES,
      laterChunkWaitMs: config.laterChunkWaitMs,
    },
  });
  const prefetches: PrefetchQueue = new PrefetchQueue({
    run: (request, signal) => speaker.prefetch(request, signal),
    whenSpare: (signal) => limiter.whenSpare(signal),
    onOutcome: (outcome, request) => {
      metrics.prefetches.inc({ outcome });
      log.debug("tts prefetch", { outcome, text: request.text });
    },
    log,
    maxQueued: MAX_PREFETCH_QUEUED,
  });
  log.info("tts engines", { engines: engine.engines.map((e) => e.label), voice: config.voice, maxConcurrent: config.maxConcurrent });

  // SpeakRequests come from a JetStream work queue: a request is removed only once a replica has published its
  // audio and acked it, so a chunk whose replica dies mid-synthesis goes to another replica after the ack wait
  // instead of being lost (core NATS queue delivery is at most once).
  const speakConsumer = await bus.consume(
    streams.tts,
    SpeakRequest,
    async (request: SpeakRequest, item: WorkItem) => {
      if (request.prefetch) {
        // Held here at the lowest priority, so it never occupies a slot of this consumer that a live chunk needs.
        prefetches.add(request);
        item.ack();
        return;
      }
      const receivedAtMs = Date.now();
      // Tell JetStream the chunk is in hand while it waits for a synthesis slot and while it is spoken.
      const heartbeat = setInterval(() => item.working(), Math.max(100, Math.floor(config.ackWaitMs / 3)));
      let handedBack = false;
      try {
        if (item.deliveryCount > 1) {
          log.warn("speak request redelivered: the replica that had it stopped before finishing", {
            callId: request.callId,
            turnId: request.turnId,
            chunkSeq: request.chunkSeq,
            delivery: item.deliveryCount,
          });
        }
        const sentAtMs = Number(request.timing?.dialogFirstTextMs || request.timing?.dialogStartMs || 0);
        if (sentAtMs > 0 && receivedAtMs - sentAtMs > config.maxRequestAgeMs) {
          metrics.badRequests.inc({ reason: "stale" });
          log.warn("speak request too old to be worth speaking; dropped", { callId: request.callId, turnId: request.turnId, ageMs: receivedAtMs - sentAtMs });
          publishUnspoken(bus, request, `stale: ${receivedAtMs - sentAtMs} ms old`);
          return;
        }
        if ((await speaker.speak(request, receivedAtMs)) === "handed_back") {
          // Cut off by the process stopping (its drain ran out of time): another replica speaks it.
          handedBack = true;
          log.warn("speak request handed back unfinished: this replica is stopping", { callId: request.callId, turnId: request.turnId, chunkSeq: request.chunkSeq });
        }
      } finally {
        clearInterval(heartbeat);
        if (handedBack) item.nak();
        else item.ack();
      }
    },
    // A small local queue: requests beyond it stay in the stream for a less busy replica.
    { name: "speak", ackWaitMs: config.ackWaitMs, maxDeliver: 5, concurrency: 2 * config.maxConcurrent },
  );
  bus.subscribe(
    subjects.cancelAll,
    CancelTurn,
    (cancel, delivery) => {
      const callId = callIdOf(delivery.subject) || cancel.callId;
      const stopped = jobs.cancel(callId, cancel.turnId);
      if (stopped > 0) {
        metrics.cancellations.inc({ reason: "cancel" }, stopped);
        log.info("tts work cancelled", { callId, turnId: cancel.turnId, reason: cancel.reason, chunks: stopped });
      }
    },
    { name: "cancel" },
  );
  bus.subscribe(
    subjects.endedAll,
    CallEnded,
    (ended, delivery) => {
      const callId = callIdOf(delivery.subject) || ended.callId;
      const stopped = jobs.end(callId);
      if (stopped > 0) {
        metrics.cancellations.inc({ reason: "ended" }, stopped);
        log.info("tts work dropped: call ended", { callId, chunks: stopped });
      }
    },
    { name: "ended" },
  );

  // Warm-up runs in the background; the replica is ready once one engine has spoken.
  const warm = new Set<string>();
  const coldErrors = new Map<string, string>();
  let warming = true;
  let retryTimer: NodeJS.Timeout | undefined;
  const stopWarmUp = new AbortController();
  const runWarmUp = async () => {
    warming = true;
    coldErrors.clear();
    await warmUp(engine.engines, {
      timeoutMs: Math.max(WARMUP_TIMEOUT_MS, config.stallMs),
      signal: stopWarmUp.signal,
      onResult: (warmed, error) => {
        if (!error) {
          warm.add(warmed.label);
          log.info("tts engine warm", { engine: warmed.label });
          return;
        }
        coldErrors.set(warmed.label, error);
        metrics.warmupFailures.inc({ engine: warmed.label });
        log.error("tts engine failed warm-up", { engine: warmed.label, error });
      },
    });
    warming = false;
    if (warm.size === 0 && !stopWarmUp.signal.aborted) retryTimer = setTimeout(() => void runWarmUp(), WARMUP_RETRY_MS);
  };
  void runWarmUp().catch((error) => log.error("tts warm-up crashed", { error: errorText(error) }));

  return {
    notReadyReason() {
      if (warm.size > 0) return undefined;
      if (warming) return "tts engines warming up";
      return `no tts engine passed warm-up (${[...coldErrors].map(([name, error]) => `${name}: ${error}`).join("; ")})`;
    },
    activeCalls: () => jobs.activeCalls(),
    async drain() {
      // Stops pulling; the chunks in hand are finished and acked (pulled ones not begun come back to the queue).
      // Prefetches first: a slot the live chunks free must not start one now.
      await prefetches.close();
      await speakConsumer.stop();
      await jobs.whenIdle();
      await speaker.cacheWritesDone(); // before the store closes
    },
    async close() {
      await prefetches.close();
      stopWarmUp.abort();
      clearTimeout(retryTimer);
      jobs.abortAll();
      await engine.close();
    },
  };
}

/** vb.v1.call.<id>.<kind>: the call id token of a per-call subject. */
function callIdOf(subject: string): string {
  return subject.split(".")[3] ?? "";
}
