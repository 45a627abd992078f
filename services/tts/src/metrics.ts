import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export type ChunkOutcome = "ok" | "partial" | "failed" | "cancelled" | "rejected";
/** What became of a prefetch request (a line put into the audio cache ahead of the calls that will say it). */
export type PrefetchOutcome = "cached" | "synthesized" | "failed" | "dropped";

/** Everything the tts service counts, registered on the service's registry. */
export class TtsMetrics {
  readonly firstAudio: Histogram<"source" | "engine">;
  readonly chunks: Counter<"engine" | "outcome">;
  readonly cacheLookups: Counter<"result" | "tier">;
  readonly cacheWriteErrors: Counter;
  readonly failovers: Counter<"from" | "reason">;
  readonly engineHealthy: Gauge<"engine">;
  readonly cancellations: Counter<"reason">;
  readonly badRequests: Counter<"reason">;
  readonly engineErrors: Counter<"engine" | "phase">;
  readonly warmupFailures: Counter<"engine">;
  readonly audioSeconds: Counter<"source">;
  readonly prefetches: Counter<"outcome">;

  constructor(registry: Registry, queue: { queued(): number; active(): number; prefetchQueued(): number; memoryCacheBytes(): number }) {
    const registers = [registry];
    this.firstAudio = new Histogram({
      name: "voicebot_tts_first_audio_seconds",
      help: "SpeakRequest received -> first BotAudio part published, by source (engine, cache, none) and the engine that spoke",
      labelNames: ["source", "engine"],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 1, 1.5, 2.5, 5, 10],
      registers,
    });
    this.chunks = new Counter({
      name: "voicebot_tts_chunks_total",
      help: "Speech chunks handled, by the engine that spoke them (cache = served from cache) and outcome",
      labelNames: ["engine", "outcome"],
      registers,
    });
    this.cacheLookups = new Counter({
      name: "voicebot_tts_cache_lookups_total",
      help: "Audio cache lookups for cacheable chunks (hit, miss, error), by where they were answered (memory: the replica's own copy, redis)",
      labelNames: ["result", "tier"],
      registers,
    });
    this.cacheWriteErrors = new Counter({
      name: "voicebot_tts_cache_write_errors_total",
      help: "Synthesized audio that could not be stored in the cache",
      registers,
    });
    this.failovers = new Counter({
      name: "voicebot_tts_failovers_total",
      help: "Chunks moved to the next engine, by the engine that failed and why: before audio error, stall, empty; after it broke (the next engine says the rest) or slow (behind real time)",
      labelNames: ["from", "reason"],
      registers,
    });
    this.engineHealthy = new Gauge({
      name: "voicebot_tts_engine_healthy",
      help: "1 while an engine is tried in its TTS_ENGINES place, 0 while it cools down after a failure (tried after the others)",
      labelNames: ["engine"],
      registers,
    });
    this.cancellations = new Counter({
      name: "voicebot_tts_cancellations_total",
      help: "Chunks stopped or dropped because their turn was cancelled (cancel) or their call ended (ended)",
      labelNames: ["reason"],
      registers,
    });
    this.badRequests = new Counter({
      name: "voicebot_tts_bad_requests_total",
      help: "SpeakRequests that could not be served as sent",
      labelNames: ["reason"],
      registers,
    });
    this.engineErrors = new Counter({
      name: "voicebot_tts_engine_errors_total",
      help: "Engine failures, before audio (failover), after audio began (chunk cut short), of a cache prefetch, or of a keep-warm request",
      labelNames: ["engine", "phase"],
      registers,
    });
    this.warmupFailures = new Counter({
      name: "voicebot_tts_engine_warmup_failures_total",
      help: "Engines that failed their warm-up synthesis",
      labelNames: ["engine"],
      registers,
    });
    this.audioSeconds = new Counter({
      name: "voicebot_tts_audio_seconds_total",
      help: "Seconds of bot audio published, from engines or from the cache",
      labelNames: ["source"],
      registers,
    });
    this.prefetches = new Counter({
      name: "voicebot_tts_prefetch_total",
      help: "Prefetch requests (fixed lines put into the audio cache ahead of calls): already cached, synthesized, failed, dropped (queue full or shutdown)",
      labelNames: ["outcome"],
      registers,
    });
    new Gauge({
      name: "voicebot_tts_prefetch_queued",
      help: "Prefetch requests waiting for spare synthesis capacity",
      registers,
      collect() {
        this.set(queue.prefetchQueued());
      },
    });
    new Gauge({
      name: "voicebot_tts_memory_cache_bytes",
      help: "Audio held in the replica's own cache (TTS_MEMORY_CACHE_MB)",
      registers,
      collect() {
        this.set(queue.memoryCacheBytes());
      },
    });
    new Gauge({
      name: "voicebot_tts_queued_chunks",
      help: "Chunks waiting for a synthesis slot",
      registers,
      collect() {
        this.set(queue.queued());
      },
    });
    new Gauge({
      name: "voicebot_tts_active_syntheses",
      help: "Syntheses running now",
      registers,
      collect() {
        this.set(queue.active());
      },
    });
  }
}
