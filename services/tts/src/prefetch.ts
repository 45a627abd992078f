import { errorText, type Logger } from "@voicebot/bus";
import { speakLineKey, type SpeakRequest } from "@voicebot/proto";
import { QueueAbortedError } from "./limiter.js";
import type { PrefetchOutcome } from "./metrics.js";

export interface PrefetchQueueDeps {
  /** Puts one line into the cache (Speaker.prefetch). */
  run(request: SpeakRequest, signal: AbortSignal): Promise<PrefetchOutcome>;
  /** Resolves once live work has spare synthesis capacity (Limiter.whenSpare). */
  whenSpare(signal: AbortSignal): Promise<void>;
  onOutcome(outcome: PrefetchOutcome, request: SpeakRequest): void;
  log: Logger;
  /** Lines held at most; more are dropped (each dialog start sends them again). */
  maxQueued: number;
}

/**
 * Prefetch requests at the lowest priority: taken off the work queue at once (they never hold a slot of the
 * consumer that live chunks need), held here, and run one at a time, each only when the synthesis limiter has a
 * free slot and no live chunk waiting. A prefetch takes no limiter slot, so a live chunk that arrives while one runs
 * starts at once. Best effort: lines still held when the replica stops are dropped.
 */
export class PrefetchQueue {
  private readonly waiting: Array<{ id: string; request: SpeakRequest }> = [];
  /** Lines held or running, so the same line sent by several dialog replicas is done once here. */
  private readonly held = new Set<string>();
  private readonly stopped = new AbortController();
  /** Set while work() runs; cleared by work() itself in the same step that finds nothing left to do. */
  private working = false;
  private running: Promise<void> = Promise.resolve();
  /** Outcomes since the queue last ran empty, for one summary line per batch. */
  private batch: Record<PrefetchOutcome, number> = { cached: 0, synthesized: 0, failed: 0, dropped: 0 };

  constructor(private readonly deps: PrefetchQueueDeps) {}

  /** Lines waiting (the one running excluded). */
  get queued(): number {
    return this.waiting.length;
  }

  add(request: SpeakRequest): void {
    const id = speakLineKey(request);
    if (this.held.has(id)) {
      // Another dialog replica sent the same line: the one held puts it into the cache.
      this.count("cached", request);
      return;
    }
    if (this.stopped.signal.aborted || this.waiting.length >= this.deps.maxQueued) {
      this.count("dropped", request);
      return;
    }
    this.held.add(id);
    this.waiting.push({ id, request });
    if (!this.working) {
      this.working = true;
      this.running = this.work().catch((error) => this.deps.log.error("tts prefetch queue stopped", { error: errorText(error) }));
    }
  }

  /** Stops: the running prefetch is aborted and the held ones dropped. */
  async close(): Promise<void> {
    this.stopped.abort(new Error("tts stopping"));
    await this.running;
    for (const { request } of this.waiting.splice(0)) this.count("dropped", request);
    this.held.clear();
    this.summarize(true);
  }

  private async work(): Promise<void> {
    const signal = this.stopped.signal;
    try {
      while (this.waiting.length > 0 && !signal.aborted) {
        try {
          await this.deps.whenSpare(signal);
        } catch (error) {
          if (error instanceof QueueAbortedError) return; // stopping: close() drops the rest
          throw error;
        }
        const next = this.waiting.shift()!;
        let outcome: PrefetchOutcome;
        try {
          outcome = await this.deps.run(next.request, signal);
        } catch (error) {
          // Only a bug gets here: count it and go on with the next line.
          this.deps.log.error("tts prefetch failed unexpectedly", { error: errorText(error) });
          outcome = "failed";
        } finally {
          this.held.delete(next.id);
        }
        this.count(outcome, next.request);
      }
      if (!signal.aborted) this.summarize(); // else close() sums up the batch with what it drops
    } finally {
      this.working = false;
    }
  }

  private count(outcome: PrefetchOutcome, request: SpeakRequest): void {
    this.deps.onOutcome(outcome, request);
    this.batch[outcome]++;
  }

  /** One line per batch of prefetches (a dialog start sends one batch per agent set). */
  private summarize(stopping = false): void {
    const batch = this.batch;
    if (Object.values(batch).every((n) => n === 0)) return;
    this.batch = { cached: 0, synthesized: 0, failed: 0, dropped: 0 };
    // Lines dropped because the replica stops are expected (a rolling update): not worth a warning.
    if (stopping && batch.failed === 0) this.deps.log.info("tts prefetch stopped: lines still held were dropped", { ...batch });
    else if (batch.failed > 0 || batch.dropped > 0) this.deps.log.warn("tts prefetch finished with lines left out of the cache", { ...batch });
    else this.deps.log.info("tts prefetch finished: the fixed lines are in the audio cache", { ...batch });
  }
}
