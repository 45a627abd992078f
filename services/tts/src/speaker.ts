import { createHash } from "node:crypto";
import { errorText, isValidCallId, LogThrottle, subjects, type Bus, type Logger } from "@voicebot/bus";
import { withinMs } from "@voicebot/service-kit";
import { BotAudio, isSpeakable, SynthesisFailed, TurnTiming, type SpeakRequest } from "@voicebot/proto";
import { keys, type CallStore } from "@voicebot/state";
import type { TtsEngine } from "./engine.js";
import { AllEnginesFailedError, type FallbackEngine } from "./fallback.js";
import { PcmEncoder, resolveFormat, type OutputFormat } from "./format.js";
import { wasShutDown, type Job, type JobRegistry } from "./jobs.js";
import { QueueAbortedError, type Limiter } from "./limiter.js";
import type { MemoryAudioCache } from "./memory-cache.js";
import type { ChunkOutcome, PrefetchOutcome, TtsMetrics } from "./metrics.js";
import { PartPacker } from "./packer.js";

export interface SpeakerOptions {
  /** Voice of the primary engine when a request names none (part of the cache key). */
  defaultVoice: string;
  /** Speaking rate passed to the engines (part of the cache key). */
  rate: number;
  cacheTtlMs: number;
  /** Frames in part 0 of a chunk (small: the caller hears the bot as soon as audio exists). */
  firstPartFrames: number;
  /** Most frames in a later part (10 = 200 ms). */
  maxPartFrames: number;
  /**
   * The longest a cached later chunk of a turn waits for the first audio of the replica's syntheses in progress
   * (its turn's earlier chunks play for longer than this), so a synthesized first chunk is not queued behind it.
   */
  laterChunkWaitMs: number;
}

export interface SpeakerDeps {
  bus: Bus;
  store: CallStore;
  log: Logger;
  engine: FallbackEngine;
  metrics: TtsMetrics;
  limiter: Limiter;
  jobs: JobRegistry;
  /** Checked before Redis; filled from Redis hits and from what this replica caches. */
  memory: MemoryAudioCache;
  options: SpeakerOptions;
}

/** A slow Redis must not delay the bot more than this: past it, the engines speak instead. */
const CACHE_READ_TIMEOUT_MS = 250;

/** How much later each chunk of a turn is due than the one before it, for synthesis slots: about the playing time
 *  of a short sentence, so a later chunk waits behind first chunks but is never starved by them. */
const LATER_CHUNK_SLACK_MS = 1_000;

/** Audio cache namespace; the digest covers everything that changes the audio. */
const CACHE_NAMESPACE = "tts";

/**
 * Serves SpeakRequests: cached audio when there is some, otherwise the engines' audio converted to the requested
 * format and published as BotAudio parts while it is being synthesized. Never throws: every failure ends either
 * in a closed chunk (chunkDone) or a SynthesisFailed, so ingress is never left waiting.
 */
export class Speaker {
  /** Bad requests are counted in full and logged in samples (a flood of them must not flood the log). */
  private readonly badRequestLog = new LogThrottle();
  private readonly firstAudio = new FirstAudioWaits();

  /** Cache writes of chunks already done (not waited for by their chunk): a drain waits for them. */
  private readonly cacheWrites = new Set<Promise<boolean>>();

  constructor(private readonly deps: SpeakerDeps) {}

  /** Resolves once the cache writes under way have ended (each is bounded by the store's command deadline). */
  async cacheWritesDone(): Promise<void> {
    await Promise.allSettled([...this.cacheWrites]);
  }

  /** Speaks one chunk. "handed_back" when the process stopped before it was done: the request should go to another replica. */
  async speak(request: SpeakRequest, receivedAtMs = Date.now()): Promise<"done" | "handed_back"> {
    const { log, metrics, jobs } = this.deps;
    const { callId, turnId, chunkSeq } = request;
    if (!isValidCallId(callId) || !turnId) {
      const reason = isValidCallId(callId) ? "missing_turn_id" : "invalid_call_id";
      metrics.badRequests.inc({ reason });
      const admitted = this.badRequestLog.admit(reason);
      if (admitted) {
        const fields = { callId: callId.slice(0, 140), turnId: turnId.slice(0, 140), chunkSeq, ...admitted };
        log.error("speak request dropped: it needs a valid call id and a turn id", fields);
      }
      return "done";
    }
    const started = jobs.start(callId, turnId, chunkSeq);
    if ("refused" in started) {
      metrics.cancellations.inc({ reason: started.refused });
      metrics.chunks.inc({ engine: "none", outcome: "cancelled" });
      log.debug("speak request dropped: turn cancelled or call ended", { callId, turnId, chunkSeq, reason: started.refused });
      return "done";
    }
    const job = started.job;
    try {
      await this.serve(request, job, receivedAtMs);
    } catch (error) {
      // Only a bug gets here; still close the chunk for ingress.
      log.error("speak request failed unexpectedly", { callId, turnId, chunkSeq, error: errorText(error) });
      this.fail(request, job, `internal error: ${errorText(error)}`);
    } finally {
      jobs.finish(job);
    }
    return wasShutDown(job) ? "handed_back" : "done";
  }

  private async serve(request: SpeakRequest, job: Job, receivedAtMs: number): Promise<void> {
    const { log, metrics, limiter } = this.deps;
    const format = resolveFormat(request.format);
    if ("error" in format) {
      metrics.badRequests.inc({ reason: "unsupported_format" });
      log.error("speak request has an unsupported audio format", { callId: request.callId, turnId: request.turnId, error: format.error });
      this.fail(request, job, format.error);
      return;
    }
    const out = new ChunkOut(this.deps, request, format, job, receivedAtMs, request.cacheable);

    if (!isSpeakable(request.text)) {
      // Nothing to say (an empty closing chunk, lone punctuation): one frame of silence still carries the done flags.
      out.source = "none";
      out.push(new Uint8Array(format.frameBytes).fill(format.padByte));
      out.finish();
      metrics.chunks.inc({ engine: "none", outcome: "ok" });
      return;
    }

    const cacheKey = request.cacheable ? this.cacheKey(request, format) : undefined;
    if (cacheKey) {
      const cached = await this.cached(cacheKey, format, request);
      // A later chunk of a turn plays only after the chunks before it: its audio gives way to the syntheses
      // waiting for their first audio here (often the chunk before it), briefly. Published at once, two cached
      // chunks (40 parts) beside a synthesized one delayed its first audio from 2 to 5 ms (p50).
      if (cached && request.chunkSeq > 0) await this.firstAudio.settled(this.deps.options.laterChunkWaitMs);
      if (job.signal.aborted) return this.cancelled(request, "none");
      if (cached) {
        out.source = "cache";
        out.push(cached);
        out.finish();
        metrics.chunks.inc({ engine: "cache", outcome: "ok" });
        metrics.audioSeconds.inc({ source: "cache" }, out.seconds);
        return;
      }
    }

    let release: () => void;
    try {
      release = await limiter.acquire(job.signal, dueAt(request, receivedAtMs));
    } catch (error) {
      if (error instanceof QueueAbortedError) return this.cancelled(request, "none");
      throw error;
    }
    let result: { outcome: ChunkOutcome; engine: string; primary: boolean };
    try {
      result = await this.synthesize(request, job, format, out);
    } finally {
      release();
    }
    metrics.chunks.inc({ engine: result.engine, outcome: result.outcome });
    if (result.outcome === "ok") metrics.audioSeconds.inc({ source: "engine" }, out.seconds);
    if (result.outcome === "cancelled") this.cancelled(request, result.engine, false);

    // Only the primary engine's audio is cached: a failover voice must not be replayed for days.
    // Not waited for: the chunk is done for the caller (and acked) as soon as its audio is out. A Redis slow to take the
    // write must not hold it, or a drain cut off there would hand a chunk heard in full to another replica to say again.
    if (cacheKey && result.outcome === "ok" && result.primary) {
      const write = this.writeCache(cacheKey, out.collected(), { callId: request.callId });
      this.cacheWrites.add(write);
      void write.finally(() => this.cacheWrites.delete(write));
    }
  }

  /** False when the write failed (counted and logged: the line is synthesized again next time). */
  private async writeCache(key: string, audio: Buffer, context: Record<string, unknown>): Promise<boolean> {
    this.deps.memory.set(key, audio);
    try {
      await this.deps.store.setBuffer(key, audio, this.deps.options.cacheTtlMs);
      return true;
    } catch (error) {
      this.deps.metrics.cacheWriteErrors.inc();
      this.deps.log.warn("tts cache write failed", { ...context, error: errorText(error) });
      return false;
    }
  }

  /**
   * A prefetch request: puts the text's audio into the cache unless it is there, exactly as a live cacheable
   * chunk of the same text, voice and format would have cached it (same key, same bytes), so a later live request
   * is a cache hit. Publishes nothing and reports no failure to any call. Only the primary engine speaks (only its
   * audio is cached). The caller decides when it runs (PrefetchQueue: only while live work has spare slots).
   */
  async prefetch(request: SpeakRequest, signal: AbortSignal): Promise<PrefetchOutcome> {
    const { engine, log, metrics, options } = this.deps;
    const text = request.text;
    const format = resolveFormat(request.format);
    if ("error" in format) {
      metrics.badRequests.inc({ reason: "unsupported_format" });
      log.warn("tts prefetch has an unsupported audio format", { text: excerpt(text), error: format.error });
      return "failed";
    }
    if (!isSpeakable(text)) {
      metrics.badRequests.inc({ reason: "unspeakable_prefetch" });
      log.warn("tts prefetch has nothing to speak", { text: excerpt(text) });
      return "failed";
    }
    const key = this.cacheKey(request, format);
    // Redis, not this replica's memory: the point is that every replica finds the line. Found, it is kept here too.
    const existing = await this.readCache(key, format);
    if ("audio" in existing && existing.audio) {
      this.deps.memory.set(key, existing.audio);
      return "cached";
    }
    if (signal.aborted) return "dropped";

    // The same encoding and framing as a live chunk, so the cached bytes equal what a live chunk would cache.
    const encoder = new PcmEncoder(engine.sampleRate, format);
    const packer = partPacker(format, options);
    const audio: Uint8Array[] = [];
    try {
      const pcmStream = engine.synthesize({ text, voice: request.voice || undefined, rate: options.rate, signal, primaryOnly: true });
      const limitBytes = maxChunkSeconds(text, options.rate) * 50 * format.frameBytes;
      let bytes = 0;
      for await (const pcm of pcmStream) {
        for (const part of packer.push(encoder.push(pcm))) {
          audio.push(part);
          bytes += part.length;
        }
        if (bytes > limitBytes) throw tooLong(text, limitBytes / (50 * format.frameBytes));
      }
      audio.push(...packer.push(encoder.flush()));
      if (!packer.hasAudio) throw new Error("engine produced no audio");
      audio.push(...packer.finish());
    } catch (error) {
      if (signal.aborted) return "dropped";
      metrics.engineErrors.inc({ engine: engine.primary.label, phase: "prefetch" });
      log.warn("tts prefetch failed; the line will be synthesized when a call needs it", {
        engine: engine.primary.label,
        text: excerpt(text),
        error: errorText(error),
      });
      return "failed";
    }
    return (await this.writeCache(key, Buffer.concat(audio), { prefetch: true, text: excerpt(text) })) ? "synthesized" : "failed";
  }

  /** The cache key of a chunk: everything that changes its audio. */
  private cacheKey(request: SpeakRequest, format: OutputFormat): string {
    const { engine, options } = this.deps;
    const voice = request.voice || options.defaultVoice;
    return keys.cache(CACHE_NAMESPACE, digest([engine.primary.label, ...variant(engine.primary), voice, options.rate, format.label, request.text]));
  }

  private async synthesize(
    request: SpeakRequest,
    job: Job,
    format: OutputFormat,
    out: ChunkOut,
  ): Promise<{ outcome: ChunkOutcome; engine: string; primary: boolean }> {
    const { engine, log, metrics, options } = this.deps;
    const { callId, turnId, chunkSeq } = request;
    const encoder = new PcmEncoder(engine.sampleRate, format);
    let answered = { label: "none", index: -1 };
    // A chunk one engine broke off and another finished is two voices: never cached.
    let mixed = false;
    const heard = this.firstAudio.begin();
    try {
      const audio = engine.synthesize({
        text: request.text,
        voice: request.voice || undefined,
        rate: options.rate,
        signal: job.signal,
        onEngine: (label, index, continuing) => {
          answered = { label, index };
          mixed ||= continuing;
          out.engine = label;
        },
      });
      const limit = maxChunkSeconds(request.text, options.rate);
      for await (const pcm of audio) {
        if (job.signal.aborted) break;
        out.push(encoder.push(pcm));
        if (out.hasAudio) heard();
        if (out.seconds > limit) throw tooLong(request.text, limit);
      }
      if (job.signal.aborted) return { outcome: "cancelled", engine: answered.label, primary: false };
      out.push(encoder.flush());
      if (!out.hasAudio) throw new Error("engine produced no audio");
      out.finish();
      return { outcome: "ok", engine: answered.label, primary: answered.index === 0 && !mixed };
    } catch (error) {
      if (job.signal.aborted) return { outcome: "cancelled", engine: answered.label, primary: false };
      if (out.hasAudio) {
        // The caller already hears this chunk and no engine could say the rest: close it with what exists. Engines
        // that failed to take over the rest were counted as failovers, and so was the one that broke off then.
        if (!(error instanceof AllEnginesFailedError)) metrics.engineErrors.inc({ engine: answered.label, phase: "after_audio" });
        log.error("tts engine failed after audio began; chunk cut short", { callId, turnId, chunkSeq, engine: answered.label, error: errorText(error) });
        out.push(encoder.flush());
        out.finish();
        return { outcome: "partial", engine: answered.label, primary: false };
      }
      log.error("no tts engine could speak the chunk", { callId, turnId, chunkSeq, error: errorText(error) });
      this.fail(request, job, errorText(error));
      return { outcome: "failed", engine: "none", primary: false };
    } finally {
      heard();
    }
  }

  /** Cached audio for the key, if present and sane; a Redis problem is a miss (the engines still work). */
  private async cached(key: string, format: OutputFormat, request: SpeakRequest): Promise<Uint8Array | undefined> {
    const { metrics, log, memory } = this.deps;
    const held = memory.get(key);
    if (held) {
      metrics.cacheLookups.inc({ result: "hit", tier: "memory" });
      return held;
    }
    const read = await this.readCache(key, format);
    if ("error" in read) {
      metrics.cacheLookups.inc({ result: "error", tier: "redis" });
      log.warn("tts cache read failed; synthesizing", { callId: request.callId, error: read.error });
      return undefined;
    }
    metrics.cacheLookups.inc({ result: read.audio ? "hit" : "miss", tier: "redis" });
    if (read.audio) memory.set(key, read.audio);
    return read.audio;
  }

  /** The cached audio under `key` if present and whole frames of `format`; a slow Redis counts as an error. */
  private async readCache(key: string, format: OutputFormat): Promise<{ audio: Buffer | undefined } | { error: string }> {
    let audio: Buffer | undefined;
    try {
      audio = await withinMs(this.deps.store.getBuffer(key), CACHE_READ_TIMEOUT_MS);
    } catch (error) {
      return { error: errorText(error) };
    }
    const usable = audio && audio.length > 0 && audio.length % format.frameBytes === 0;
    return { audio: usable ? audio : undefined };
  }

  private cancelled(request: SpeakRequest, engine: string, count = true): void {
    this.deps.log.debug("speak request cancelled", { callId: request.callId, turnId: request.turnId, chunkSeq: request.chunkSeq });
    if (count) this.deps.metrics.chunks.inc({ engine, outcome: "cancelled" });
  }

  private fail(request: SpeakRequest, job: Job, error: string): void {
    if (job.signal.aborted) return;
    publishUnspoken(this.deps.bus, request, error);
  }
}

/**
 * Tells ingress a chunk will have no audio, so it plays past it at once; when it was the turn's last, the turn ends
 * there (a hang-up after it, the caller's no-input wait) instead of waiting out the playout stall.
 */
export function publishUnspoken(bus: Bus, request: SpeakRequest, error: string): void {
  bus.publish(
    subjects.ttsFailed(request.callId),
    SynthesisFailed,
    SynthesisFailed.create({ callId: request.callId, turnId: request.turnId, chunkSeq: request.chunkSeq, error, turnDone: request.turnDone }),
    request.callId,
  );
}

/**
 * When a chunk's audio is needed, to order the waiters for synthesis slots: a turn's first chunk at once (its caller
 * waits in silence); a later one a sentence's playing time per chunk after its turn began (it plays only after the
 * chunks before it), counted from the dialog's first text of the turn, so a chunk the LLM streamed late is not
 * pushed back again. Never later than that counted from its own arrival.
 */
export function dueAt(request: SpeakRequest, receivedAtMs: number): number {
  const slack = request.chunkSeq * LATER_CHUNK_SLACK_MS;
  const turnBegan = Number(request.timing?.dialogFirstTextMs ?? 0);
  // Another host's clock: only a plausible time (not after this chunk arrived, nor long before it) is used.
  const usable = turnBegan > 0 && turnBegan <= receivedAtMs && receivedAtMs - turnBegan < 10 * 60_000;
  return (usable ? turnBegan : receivedAtMs) + slack;
}

/**
 * The most audio a chunk of text can take, in seconds: far above any voice's reading time (~0.07 s a character), so
 * only an engine fault (minutes of audio for one sentence) reaches it; that audio is cut there, never cached.
 */
export function maxChunkSeconds(text: string, rate: number): number {
  return (5 + 0.25 * text.length) / Math.min(1, rate > 0 ? rate : 1);
}

function tooLong(text: string, limitSeconds: number): Error {
  return new Error(`the engine sent over ${limitSeconds.toFixed(1)} s of audio for ${text.length} characters of text; cut there`);
}

/** A chunk's framing into BotAudio parts: the same for live chunks and prefetches, so cached bytes are alike. */
function partPacker(format: OutputFormat, options: SpeakerOptions): PartPacker {
  return new PartPacker({
    frameBytes: format.frameBytes,
    padByte: format.padByte,
    firstPartFrames: options.firstPartFrames,
    maxPartFrames: options.maxPartFrames,
  });
}

/** Publishes one chunk's BotAudio parts in order; nothing once the job is cancelled. */
class ChunkOut {
  private readonly packer: PartPacker;
  private partSeq = 0;
  private bytesOut = 0;
  private readonly kept: Uint8Array[] | undefined;
  /** Where the audio comes from (metric label). */
  source: "engine" | "cache" | "none" = "engine";
  /** The engine speaking, once known (metric label). */
  engine = "none";

  constructor(
    private readonly deps: SpeakerDeps,
    private readonly request: SpeakRequest,
    private readonly format: OutputFormat,
    private readonly job: Job,
    private readonly receivedAtMs: number,
    keep: boolean,
  ) {
    this.packer = partPacker(format, deps.options);
    this.kept = keep ? [] : undefined;
  }

  get hasAudio(): boolean {
    return this.packer.hasAudio;
  }

  /** Seconds of audio published so far. */
  get seconds(): number {
    return this.bytesOut / (this.format.frameBytes * 50);
  }

  push(bytes: Uint8Array): void {
    for (const payload of this.packer.push(bytes)) this.publish(payload, false);
  }

  finish(): void {
    const payloads = this.packer.finish();
    payloads.forEach((payload, i) => this.publish(payload, i === payloads.length - 1));
  }

  /** Everything published, as one buffer (for the cache). */
  collected(): Buffer {
    return Buffer.concat(this.kept ?? []);
  }

  private publish(payload: Uint8Array, last: boolean): void {
    if (this.job.signal.aborted) return;
    const { bus, metrics } = this.deps;
    const { callId, turnId, chunkSeq, text, turnDone } = this.request;
    const first = this.partSeq === 0;
    const now = Date.now();
    const message = BotAudio.create({
      callId,
      turnId,
      chunkSeq,
      partSeq: this.partSeq++,
      format: { encoding: this.format.encoding, sampleRate: this.format.sampleRate },
      payload: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
      chunkDone: last,
      turnDone: last && turnDone,
      text: first ? text : "",
      timing: first ? { ...TurnTiming.create(), ...this.request.timing, ttsRequestMs: this.receivedAtMs, ttsFirstAudioMs: now } : undefined,
      noInputMs: first ? this.request.noInputMs : 0,
    });
    bus.publish(subjects.botAudio(callId), BotAudio, message, callId);
    this.bytesOut += payload.length;
    this.kept?.push(payload);
    if (first) {
      const engine = this.source === "engine" ? this.engine : this.source;
      metrics.firstAudio.observe({ source: this.source, engine }, (now - this.receivedAtMs) / 1000);
      // The call record keeps each chunk's time to first audio; a failed write costs only that line.
      this.deps.store
        .appendSpeechChunk(callId, { turnId, chunkSeq, source: this.source, engine, firstAudioMs: now - this.receivedAtMs, at: new Date(now).toISOString() })
        .catch((error) => this.deps.log.warn("could not record speech chunk timing", { callId, error: String(error) }));
    }
  }
}

/** Syntheses waiting for their first audio, and who waits for them to have it. */
class FirstAudioWaits {
  private pending = 0;
  private readonly waiters = new Set<() => void>();

  /** A synthesis starts; call the result once it has audio (more calls are ignored). */
  begin(): () => void {
    this.pending++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.pending > 0) return;
      for (const wake of [...this.waiters]) wake();
    };
  }

  /** Resolves once no synthesis is waiting for its first audio, or after `maxMs`. */
  settled(maxMs: number): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.waiters.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, maxMs);
      this.waiters.add(wake);
    });
  }
}

/** The engine's variant for the cache key; none for engines whose label says it all (keeps their keys as they were). */
function variant(engine: TtsEngine): string[] {
  return engine.variant ? [engine.variant] : [];
}

/** The start of a line, for logs. */
function excerpt(text: string): string {
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function digest(parts: unknown[]): string {
  return createHash("sha256").update(JSON.stringify(parts)).digest("hex");
}
