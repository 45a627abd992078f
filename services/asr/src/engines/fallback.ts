// ASR_ENGINES as one engine: each utterance runs on the first healthy engine of the list. When that engine's
// recognizer fails (it throws, reports a lost socket mid-utterance, rejects, or gives no result within the
// watchdog time after finish()), the utterance's audio so far is replayed into the next engine, which carries
// on with it, and the failed engine cools down: later utterances skip it until the cool-down has passed.

import { errorText, type Logger } from "@voicebot/bus";
import { withinMs } from "@voicebot/service-kit";
import type { AsrEngine, RecognitionHints, RecognitionResult, UtteranceRecognizer } from "../engine.js";
import type { AsrMetrics } from "../metrics.js";

export interface FallbackOptions {
  /** ASR_ENGINE_TIMEOUT_MS: longest wait for an engine's result after finish() before failing over. */
  timeoutMs: number;
  /** ASR_ENGINE_COOLDOWN_MS: how long a failed engine is skipped by new utterances. */
  cooldownMs: number;
}

export type FailoverReason = "start_error" | "push_error" | "stream_error" | "error" | "timeout";

type FailoverMetrics = Pick<AsrMetrics, "failovers" | "providerErrors" | "engineHealthy">;

class WatchdogTimeout extends Error {}

export class FallbackEngine implements AsrEngine {
  readonly label: string;
  readonly sampleRate: number;
  /** Engines cooling down, with the time (ms) they are tried first again. */
  private readonly coolingUntil = new Map<AsrEngine, number>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(
    readonly engines: AsrEngine[],
    readonly options: FallbackOptions,
    private readonly metrics?: FailoverMetrics,
    private readonly log?: Logger,
  ) {
    if (engines.length === 0) throw new Error("FallbackEngine needs at least one engine");
    const rates = new Set(engines.map((e) => e.sampleRate));
    if (rates.size > 1) throw new Error(`the engines of ASR_ENGINES take different sample rates: ${engines.map((e) => `${e.label} ${e.sampleRate}`).join(", ")}`);
    this.sampleRate = engines[0].sampleRate;
    this.label = engines.map((e) => e.label).join(",");
    for (const engine of engines) metrics?.engineHealthy.set({ engine: engine.label }, 1);
  }

  /** As the engine that takes a new utterance now: a local fallback standing in for a cloud engine is not run twice. */
  get earlyFinals(): boolean {
    return this.order()[0].earlyFinals === true;
  }

  /** Every engine must be usable: a broken fallback would only be found out during an outage. */
  async warmUp(): Promise<void> {
    for (const engine of this.engines) await engine.warmUp();
  }

  start(hints: RecognitionHints): UtteranceRecognizer {
    return new FallbackRecognizer(this, hints, this.order());
  }

  async close(): Promise<void> {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    await Promise.all(this.engines.map((e) => e.close()));
  }

  /** Healthy engines in list order, then (as a last resort) the ones cooling down, soonest back first. */
  private order(): AsrEngine[] {
    const now = Date.now();
    const healthy = this.engines.filter((e) => (this.coolingUntil.get(e) ?? 0) <= now);
    const cooling = this.engines.filter((e) => !healthy.includes(e)).sort((a, b) => this.coolingUntil.get(a)! - this.coolingUntil.get(b)!);
    return [...healthy, ...cooling];
  }

  /** @internal */
  failed(engine: AsrEngine, reason: FailoverReason, error: unknown): void {
    this.metrics?.providerErrors.inc({ engine: engine.label, reason });
    const wasHealthy = (this.coolingUntil.get(engine) ?? 0) <= Date.now();
    this.coolingUntil.set(engine, Date.now() + this.options.cooldownMs);
    this.metrics?.engineHealthy.set({ engine: engine.label }, 0);
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if ((this.coolingUntil.get(engine) ?? 0) <= Date.now()) this.metrics?.engineHealthy.set({ engine: engine.label }, 1);
    }, this.options.cooldownMs + 10);
    timer.unref();
    this.timers.add(timer);
    const fields = { engine: engine.label, reason, error: errorText(error), cooldownMs: this.options.cooldownMs };
    if (wasHealthy) this.log?.warn("asr engine failed: skipped by new utterances while it cools down", fields);
    else this.log?.info("asr engine failed again", fields);
  }

  /** @internal A result came back: an engine tried as a last resort is healthy again. */
  worked(engine: AsrEngine): void {
    if (!this.coolingUntil.delete(engine)) return;
    this.metrics?.engineHealthy.set({ engine: engine.label }, 1);
    this.log?.info("asr engine healthy again", { engine: engine.label });
  }

  /** @internal */
  failedOver(from: AsrEngine, to: AsrEngine, reason: FailoverReason): void {
    this.metrics?.failovers.inc({ from: from.label, to: to.label, reason });
  }
}

interface Current {
  engine: AsrEngine;
  recognizer: UtteranceRecognizer;
}

class FallbackRecognizer implements UtteranceRecognizer {
  onPartial?: (text: string) => void;
  onError?: (error: Error) => void;
  private current: Current | undefined;
  /** The utterance so far, replayed into the next engine on a failover. */
  private readonly audio: Int16Array[] = [];
  private state: "streaming" | "finishing" | "done" = "streaming";
  private lastError: Error | undefined;

  constructor(
    private readonly parent: FallbackEngine,
    private readonly hints: RecognitionHints,
    /** Engines not tried yet, in the order to try them. */
    private readonly remaining: AsrEngine[],
  ) {
    this.startNext(undefined);
  }

  get activeEngine(): string | undefined {
    return this.current?.engine.label;
  }

  push(pcm: Int16Array): void {
    if (this.state !== "streaming") return;
    this.audio.push(pcm.slice());
    const current = this.current;
    if (!current) return;
    try {
      current.recognizer.push(pcm);
    } catch (error) {
      this.failOver(current, "push_error", error);
    }
  }

  async finish(): Promise<RecognitionResult> {
    if (this.state !== "streaming") throw new Error("finish() called twice or after abort()");
    this.state = "finishing";
    try {
      while (this.current) {
        const current = this.current;
        try {
          const result = await this.withWatchdog(current.recognizer.finish());
          if (this.state !== "finishing") throw new Error("utterance was aborted");
          this.parent.worked(current.engine);
          return { ...result, engine: current.engine.label };
        } catch (error) {
          if (this.state !== "finishing") throw error;
          // The next engine gets the whole utterance and is finished right away (the loop goes round).
          this.failOver(current, error instanceof WatchdogTimeout ? "timeout" : "error", error);
        }
      }
      throw this.lastError ?? new Error("no speech engine available");
    } finally {
      this.state = "done";
      this.audio.length = 0;
    }
  }

  abort(): void {
    if (this.state === "done") return;
    this.state = "done";
    this.audio.length = 0;
    const current = this.current;
    this.current = undefined;
    current?.recognizer.abort();
  }

  private withWatchdog(result: Promise<RecognitionResult>): Promise<RecognitionResult> {
    const { timeoutMs } = this.parent.options;
    return withinMs(result, timeoutMs, () => new WatchdogTimeout(`no result within ${timeoutMs} ms of the end of speech`));
  }

  /** The current engine failed: drop it, mark it, and move the utterance to the next engine (if any). */
  private failOver(failed: Current, reason: FailoverReason, error: unknown): void {
    if (this.current !== failed) return;
    this.lastError = error instanceof Error ? error : new Error(String(error));
    this.current = undefined;
    try {
      failed.recognizer.abort();
    } catch {
      // it failed already; nothing more to release
    }
    this.parent.failed(failed.engine, reason, error);
    this.startNext({ engine: failed.engine, reason });
  }

  /** Starts the next engine that will take the utterance, replaying the audio so far into it. */
  private startNext(after: { engine: AsrEngine; reason: FailoverReason } | undefined): void {
    let from = after;
    for (let engine = this.remaining.shift(); engine; engine = this.remaining.shift()) {
      let recognizer: UtteranceRecognizer | undefined;
      try {
        recognizer = engine.start(this.hints);
        for (const pcm of this.audio) recognizer.push(pcm);
      } catch (error) {
        // Started but refused the audio: its socket or decoder must not outlive it.
        try {
          recognizer?.abort();
        } catch {
          /* it failed already */
        }
        this.lastError = error instanceof Error ? error : new Error(String(error));
        this.parent.failed(engine, "start_error", error);
        if (from) this.parent.failedOver(from.engine, engine, from.reason);
        from = { engine, reason: "start_error" };
        continue;
      }
      const current: Current = { engine, recognizer };
      recognizer.onPartial = (text) => {
        if (this.current === current && this.state === "streaming") this.onPartial?.(text);
      };
      recognizer.onError = (error) => {
        if (this.current === current && this.state === "streaming") this.failOver(current, "stream_error", error);
      };
      this.current = current;
      if (from) this.parent.failedOver(from.engine, engine, from.reason);
      return;
    }
    // Nothing left: finish() rejects with the last error; the caller reports it (an empty final).
    if (this.state === "streaming" && this.lastError) this.onError?.(this.lastError);
  }
}
