import { Resampler } from "@voicebot/audio";
import { errorText } from "@voicebot/bus";
import { processLoopStalls, StallAwareTimer } from "@voicebot/service-kit";
import { RequestRefusedError, type TtsEngine } from "./engine.js";

type EngineRequest = Parameters<TtsEngine["synthesize"]>[0];

export interface FallbackRequest extends EngineRequest {
  /**
   * Told which engine is speaking, once its first audio arrives (index 0 = the primary engine); `continuing` when
   * it says the rest of a chunk another engine broke off (the chunk's audio is then a mix of two voices).
   */
  onEngine?: (label: string, index: number, continuing: boolean) => void;
  /** Only the primary engine, no failover (a cache prefetch: only the primary engine's audio is cached). */
  primaryOnly?: boolean;
}

/** Why a chunk moved on: before audio, the engine failed, stalled or ended without audio; after it, the engine
 *  broke off (error or stall mid-stream) or fell behind real time (`slow`), and the next engine says the rest. */
export type FailoverReason = "error" | "stall" | "empty" | "broke" | "slow";

export interface FallbackOptions {
  /** An engine that yields nothing for this long is given up (before audio: the next engine takes over). */
  stallMs: number;
  /**
   * TTS_ENGINE_COOLDOWN_MS: an engine that failed a chunk before its audio is tried after the others by later chunks
   * for this long (0 = always in list order), so an outage costs one stall, not one per sentence and synthesis slot.
   */
  cooldownMs?: number;
  /**
   * A chunk whose audio has begun and whose engine then falls this far behind real time (the caller's playout runs
   * dry) is moved on as if it broke off (0 = never). An engine streams faster than real time; one that trickles
   * makes the caller hear the sentence in pieces.
   */
  maxLagMs?: number;
  /** A chunk moved past a failing engine. */
  onFailover?: (engine: TtsEngine, reason: FailoverReason, error: string) => void;
  /** An engine began or ended a cool-down. */
  onHealth?: (engine: TtsEngine, healthy: boolean) => void;
  now?: () => number;
}

/**
 * A pace no voice speaks slower than at its normal rate (engines speak 13–16 characters a second): what an engine
 * said before it broke off is estimated at it, so the estimate errs short and a few words are said twice rather
 * than one lost.
 */
const SLOWEST_CHARACTERS_PER_SECOND = 10;

/**
 * The part of `text` a listener may not have heard after `saidSeconds` of its audio at speaking `rate`: from the
 * word the estimate falls in, one word back (so the cut word and its neighbour are heard whole). Empty when the
 * audio already runs longer than the slowest reading of the whole text (the engine most likely said it all). A rate
 * below 1 slows the estimate; one above it does not speed it up (engines clamp fast rates differently).
 */
export function unsaidRest(text: string, saidSeconds: number, rate = 1): string {
  const pace = rate > 0 ? Math.min(1, rate) : 1;
  const saidChars = Math.floor(saidSeconds * SLOWEST_CHARACTERS_PER_SECOND * pace);
  const trimmed = text.trim();
  if (saidChars >= trimmed.length) return "";
  const wordStarts = [...trimmed.matchAll(/\S+/g)].map((word) => word.index);
  const within = wordStarts.findLastIndex((start) => start <= saidChars);
  return trimmed.slice(wordStarts[Math.max(0, within - 1)] ?? 0);
}

/** Every engine failed before producing audio for a chunk (or, for the rest of a chunk one broke off, for that rest). */
export class AllEnginesFailedError extends Error {
  constructor(readonly failures: string[]) {
    super(`all tts engines failed: ${failures.join("; ")}`);
  }
}

export class EngineStalledError extends Error {
  constructor(engine: string, stallMs: number) {
    super(`${engine} produced no audio for ${stallMs} ms`);
  }
}

export class EngineTooSlowError extends Error {
  constructor(engine: string, lagMs: number) {
    super(`${engine} fell ${lagMs} ms behind real time`);
  }
}

/**
 * An ordered list of engines behind the TtsEngine interface. An engine that throws, stalls or ends without audio
 * before its first samples hands the chunk to the next one. One that breaks off after its audio began (an error, a
 * stall, or falling behind real time) hands the next one the part of the text it may not have said (`unsaidRest`):
 * the caller hears a few words twice in another voice rather than a sentence cut short. With no engine after it,
 * the one that broke off is given the rest itself, once; after that the stream ends with the error. Audio comes out
 * at the primary engine's sample rate; a later engine with another rate is resampled to it. An engine that failed
 * cools down: later chunks try it after the others until the cool-down has passed (as a last resort still), and its
 * first audio after that makes it healthy again.
 */
export class FallbackEngine implements TtsEngine {
  readonly label: string;
  readonly sampleRate: number;
  private readonly coolingUntil = new Map<TtsEngine, number>();

  constructor(
    readonly engines: readonly TtsEngine[],
    private readonly options: FallbackOptions,
  ) {
    if (engines.length === 0) throw new Error("FallbackEngine needs at least one engine");
    this.label = engines.map((e) => e.label).join(" > ");
    this.sampleRate = engines[0].sampleRate;
  }

  get primary(): TtsEngine {
    return this.engines[0];
  }

  async *synthesize(request: FallbackRequest): AsyncGenerator<Int16Array, void, undefined> {
    const failures: string[] = [];
    const engines = request.primaryOnly ? this.engines.slice(0, 1) : this.inOrder();
    // Without a next engine to move to, a failure is the caller's to report, not a failover.
    const failover = request.primaryOnly
      ? undefined
      : (engine: TtsEngine, reason: FailoverReason, error: unknown) => {
          // A refusal of this request (a voice the engine does not know, text it rejects) says nothing of the
          // engine's health: other calls keep it.
          if (!(error instanceof RequestRefusedError)) this.cool(engine);
          this.options.onFailover?.(engine, reason, errorText(error));
        };
    // What is left to say: the whole text, or what an engine that broke off may not have said.
    let text = request.text;
    let continuing = false;
    /** The only engine left broke off once and was given the rest again (a dropped connection is often just that). */
    let retried = false;
    for (let position = 0; position < engines.length; position++) {
      const engine = engines[position];
      // The engine's place in TTS_ENGINES: 0 is the primary engine (whose voice the request names, whose audio is cached).
      const index = this.engines.indexOf(engine);
      throwIfAborted(request.signal);
      const attempt = new AbortController();
      const signal = request.signal ? AbortSignal.any([request.signal, attempt.signal]) : attempt.signal;
      const resampler = engine.sampleRate === this.sampleRate ? undefined : new Resampler(engine.sampleRate, this.sampleRate);
      let iterator: AsyncIterator<Int16Array> | undefined;
      let samples = 0;
      let firstAudioAt = 0;
      let stalledAtFirstAudio = 0;
      // Slow audio is better than none: its pace is watched only with an engine after it to take the rest.
      const maxLagMs = failover && position < engines.length - 1 ? (this.options.maxLagMs ?? 0) : 0;
      try {
        // A request's voice names a voice of the primary engine; the others speak in their own default voice.
        const audio = engine.synthesize({ text, voice: index === 0 ? request.voice : undefined, rate: request.rate, signal });
        iterator = audio[Symbol.asyncIterator]();
        for (;;) {
          const next = await this.nextWithin(iterator, engine, request.signal);
          if (next.done) break;
          if (next.value.length === 0) continue;
          if (samples === 0) {
            firstAudioAt = this.now();
            stalledAtFirstAudio = this.loopStalledMs();
            this.healthy(engine);
            request.onEngine?.(engine.label, index, continuing);
          }
          samples += next.value.length;
          const pcm = resampler ? resampler.push(next.value) : next.value;
          if (pcm.length > 0) yield pcm;
          if (maxLagMs > 0) {
            // Our own stalls are not the engine's: its audio waited in the socket meanwhile.
            const lagMs = this.now() - firstAudioAt - (this.loopStalledMs() - stalledAtFirstAudio) - (samples / engine.sampleRate) * 1000;
            if (lagMs > maxLagMs && unsaidRest(text, samples / engine.sampleRate, request.rate)) throw new EngineTooSlowError(engine.label, Math.round(lagMs));
          }
        }
        if (samples > 0) {
          const tail = resampler?.flush();
          if (tail && tail.length > 0) yield tail;
          return;
        }
        failures.push(`${engine.label}: no audio`);
        failover?.(engine, "empty", "no audio");
      } catch (error) {
        throwIfAborted(request.signal);
        if (samples === 0) {
          const reason: FailoverReason = error instanceof EngineStalledError ? "stall" : "error";
          failures.push(`${engine.label}: ${errorText(error)}`);
          failover?.(engine, reason, error);
          continue;
        }
        const rest = unsaidRest(text, samples / engine.sampleRate, request.rate);
        if (!failover || !rest) throw error;
        if (position === engines.length - 1) {
          // No engine after it: it says the rest itself, once (not when it was only slow: it would be again).
          if (retried || error instanceof EngineTooSlowError) throw error;
          retried = true;
          engines.push(engine);
        }
        failover(engine, error instanceof EngineTooSlowError ? "slow" : "broke", error);
        text = rest;
        continuing = true;
      } finally {
        // Stops the engine's work (e.g. its process) if it is still going: stalled, failed or abandoned by our caller.
        attempt.abort(new Error("synthesis attempt ended"));
        if (iterator?.return) void Promise.resolve(iterator.return()).catch(() => undefined);
      }
    }
    throw new AllEnginesFailedError(failures);
  }

  /** Healthy engines in list order, then the cooling ones, soonest back first. */
  private inOrder(): TtsEngine[] {
    const now = this.now();
    const healthy = this.engines.filter((e) => (this.coolingUntil.get(e) ?? 0) <= now);
    const cooling = this.engines.filter((e) => !healthy.includes(e)).sort((a, b) => this.coolingUntil.get(a)! - this.coolingUntil.get(b)!);
    return [...healthy, ...cooling];
  }

  private cool(engine: TtsEngine): void {
    const cooldownMs = this.options.cooldownMs ?? 0;
    if (cooldownMs <= 0) return;
    const wasHealthy = !this.coolingUntil.has(engine);
    this.coolingUntil.set(engine, this.now() + cooldownMs);
    if (wasHealthy) this.options.onHealth?.(engine, false);
  }

  private healthy(engine: TtsEngine): void {
    if (this.coolingUntil.delete(engine)) this.options.onHealth?.(engine, true);
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }

  /** How long this process's event loop has stalled in all: time the watchdogs do not charge to an engine. */
  private loopStalledMs(): number {
    return processLoopStalls().stalledMs;
  }

  /** The engine's next piece of audio, unless it stalls or the caller cancels first. */
  private nextWithin(
    iterator: AsyncIterator<Int16Array>,
    engine: TtsEngine,
    cancel: AbortSignal | undefined,
  ): Promise<IteratorResult<Int16Array>> {
    const next = iterator.next();
    next.catch(() => undefined); // a late failure of an abandoned attempt is not an unhandled rejection
    let timer: StallAwareTimer | undefined;
    let onAbort: (() => void) | undefined;
    const stopped = new Promise<never>((_, reject) => {
      // After a stall of this replica, the audio that came meanwhile is read before this fires (StallAwareTimer).
      timer = new StallAwareTimer(this.options.stallMs, () => reject(new EngineStalledError(engine.label, this.options.stallMs)));
      if (cancel) {
        onAbort = () => reject(abortError(cancel));
        cancel.addEventListener("abort", onAbort, { once: true });
      }
    });
    return Promise.race([next, stopped]).finally(() => {
      timer?.clear();
      if (onAbort) cancel?.removeEventListener("abort", onAbort);
    });
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.engines.map((engine) => engine.close()));
  }
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error("synthesis cancelled");
}
