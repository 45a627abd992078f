import { Resampler } from "@voicebot/audio";
import { errorText } from "@voicebot/bus";
import type { TtsEngine } from "./engine.js";

type EngineRequest = Parameters<TtsEngine["synthesize"]>[0];

export interface FallbackRequest extends EngineRequest {
  /** Told which engine is speaking, once its first audio arrives (index 0 = the primary engine). */
  onEngine?: (label: string, index: number) => void;
  /** Only the primary engine, no failover (a cache prefetch: only the primary engine's audio is cached). */
  primaryOnly?: boolean;
}

export type FailoverReason = "error" | "stall" | "empty";

export interface FallbackOptions {
  /** An engine that yields nothing for this long is given up (before audio: the next engine takes over). */
  stallMs: number;
  /**
   * TTS_ENGINE_COOLDOWN_MS: an engine that failed a chunk before its audio is tried after the others by later chunks
   * for this long (0 = always in list order), so an outage costs one stall, not one per sentence and synthesis slot.
   */
  cooldownMs?: number;
  /** A chunk moved past a failing engine. */
  onFailover?: (engine: TtsEngine, reason: FailoverReason, error: string) => void;
  /** An engine began or ended a cool-down. */
  onHealth?: (engine: TtsEngine, healthy: boolean) => void;
  now?: () => number;
}

/** An engine's answer that refused the request itself (HTTP 400, 404, 422), as the engines word their errors. */
const REQUEST_REFUSED = /\bHTTP (400|404|422)\b/;

/** Every engine failed before producing audio for a chunk. */
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

/**
 * An ordered list of engines behind the TtsEngine interface. An engine that throws, stalls or ends without audio
 * before its first samples hands the chunk to the next one. Once audio has begun there is no failover (the caller
 * would hear the start twice): an error or a stall then ends the stream with that error. Audio comes out at the
 * primary engine's sample rate; a later engine with another rate is resampled to it. An engine that failed cools
 * down: later chunks try it after the others until the cool-down has passed (as a last resort still), and its
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
      : (engine: TtsEngine, reason: FailoverReason, error: string) => {
          // A refusal of this request (a voice the engine does not know, text it rejects) says nothing of the
          // engine's health: other calls keep it.
          if (!REQUEST_REFUSED.test(error)) this.cool(engine);
          this.options.onFailover?.(engine, reason, error);
        };
    for (const engine of engines) {
      // The engine's place in TTS_ENGINES: 0 is the primary engine (whose voice the request names, whose audio is cached).
      const index = this.engines.indexOf(engine);
      throwIfAborted(request.signal);
      const attempt = new AbortController();
      const signal = request.signal ? AbortSignal.any([request.signal, attempt.signal]) : attempt.signal;
      const resampler = engine.sampleRate === this.sampleRate ? undefined : new Resampler(engine.sampleRate, this.sampleRate);
      let iterator: AsyncIterator<Int16Array> | undefined;
      let began = false;
      try {
        // A request's voice names a voice of the primary engine; the others speak in their own default voice.
        const audio = engine.synthesize({ text: request.text, voice: index === 0 ? request.voice : undefined, rate: request.rate, signal });
        iterator = audio[Symbol.asyncIterator]();
        for (;;) {
          const next = await this.nextWithin(iterator, engine, request.signal);
          if (next.done) break;
          if (next.value.length === 0) continue;
          if (!began) {
            began = true;
            this.healthy(engine);
            request.onEngine?.(engine.label, index);
          }
          const pcm = resampler ? resampler.push(next.value) : next.value;
          if (pcm.length > 0) yield pcm;
        }
        if (began) {
          const tail = resampler?.flush();
          if (tail && tail.length > 0) yield tail;
          return;
        }
        failures.push(`${engine.label}: no audio`);
        failover?.(engine, "empty", "no audio");
      } catch (error) {
        throwIfAborted(request.signal);
        if (began) throw error;
        const reason: FailoverReason = error instanceof EngineStalledError ? "stall" : "error";
        failures.push(`${engine.label}: ${errorText(error)}`);
        failover?.(engine, reason, errorText(error));
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

  /** The engine's next piece of audio, unless it stalls or the caller cancels first. */
  private nextWithin(
    iterator: AsyncIterator<Int16Array>,
    engine: TtsEngine,
    cancel: AbortSignal | undefined,
  ): Promise<IteratorResult<Int16Array>> {
    const next = iterator.next();
    next.catch(() => undefined); // a late failure of an abandoned attempt is not an unhandled rejection
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const stopped = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new EngineStalledError(engine.label, this.options.stallMs)), this.options.stallMs);
      if (cancel) {
        onAbort = () => reject(abortError(cancel));
        cancel.addEventListener("abort", onAbort, { once: true });
      }
    });
    return Promise.race([next, stopped]).finally(() => {
      clearTimeout(timer);
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
