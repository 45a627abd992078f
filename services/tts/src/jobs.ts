/** One chunk being spoken: queued, synthesizing or publishing. */
export interface Job {
  readonly callId: string;
  readonly turnId: string;
  readonly chunkSeq: number;
  /** Aborted when the turn is cancelled or the call ends; passed down to the engine. */
  readonly signal: AbortSignal;
}

interface Entry extends Job {
  readonly controller: AbortController;
}

export type CancelReason = "cancel" | "ended";

/** Why a job was cut off when the process stopped: its chunk is not done, and another replica should speak it. */
export class ShuttingDownError extends Error {
  constructor() {
    super("tts shutting down");
  }
}

/** Whether the job was cut off by the process stopping (not by a cancel or the call's end). */
export function wasShutDown(job: Job): boolean {
  return job.signal.reason instanceof ShuttingDownError;
}

/**
 * The work in flight per call, so a CancelTurn or CallEnded can stop exactly that call's (or turn's) work.
 * Cancelled turns and ended calls are remembered for a while: a SpeakRequest that was already on its way when
 * the cancel arrived is dropped instead of being spoken after the caller interrupted.
 */
export class JobRegistry {
  private readonly calls = new Map<string, Set<Entry>>();
  private readonly cancelledTurns = new Map<string, number>();
  private readonly endedCalls = new Map<string, number>();
  private idleWaiters: Array<() => void> = [];
  private lastSweep: number;

  constructor(
    private readonly rememberMs = 10 * 60_000,
    private readonly now: () => number = Date.now,
  ) {
    this.lastSweep = now();
  }

  /** Registers work for a chunk, or says why it must not be done (its turn was cancelled or its call ended). */
  start(callId: string, turnId: string, chunkSeq: number): { job: Job } | { refused: CancelReason } {
    this.sweep();
    if (this.endedCalls.has(callId)) return { refused: "ended" };
    if (this.cancelledTurns.has(turnKey(callId, turnId))) return { refused: "cancel" };
    const controller = new AbortController();
    const entry: Entry = { callId, turnId, chunkSeq, controller, signal: controller.signal };
    let set = this.calls.get(callId);
    if (!set) this.calls.set(callId, (set = new Set()));
    set.add(entry);
    return { job: entry };
  }

  finish(job: Job): void {
    const set = this.calls.get(job.callId);
    if (!set?.delete(job as Entry)) return;
    if (set.size === 0) this.calls.delete(job.callId);
    if (this.calls.size === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  /** Aborts the call's work for `turnId` (every turn when empty). Returns how many chunks were stopped. */
  cancel(callId: string, turnId: string): number {
    this.sweep();
    const until = this.now() + this.rememberMs;
    if (turnId) this.cancelledTurns.set(turnKey(callId, turnId), until);
    let stopped = 0;
    for (const entry of this.calls.get(callId) ?? []) {
      if (turnId && entry.turnId !== turnId) continue;
      this.cancelledTurns.set(turnKey(callId, entry.turnId), until);
      if (!entry.signal.aborted) {
        entry.controller.abort(new Error(`turn ${entry.turnId} cancelled`));
        stopped++;
      }
    }
    return stopped;
  }

  /** Aborts all of the call's work and refuses any more for it. */
  end(callId: string): number {
    this.sweep();
    this.endedCalls.set(callId, this.now() + this.rememberMs);
    let stopped = 0;
    for (const entry of this.calls.get(callId) ?? []) {
      if (!entry.signal.aborted) {
        entry.controller.abort(new Error("call ended"));
        stopped++;
      }
    }
    return stopped;
  }

  /** Aborts everything (shutdown after a drain timed out). */
  /** The process stops (its drain ran out of time): every job is cut off, to be handed back (see wasShutDown). */
  abortAll(): void {
    for (const set of this.calls.values()) for (const entry of set) entry.controller.abort(new ShuttingDownError());
  }

  /** Distinct calls with work queued or in flight. */
  activeCalls(): number {
    return this.calls.size;
  }

  /** Resolves when no work is in flight. */
  whenIdle(): Promise<void> {
    if (this.calls.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Forgets cancelled turns and ended calls older than `rememberMs` (at most once a minute, on use). */
  private sweep(): void {
    const now = this.now();
    if (now - this.lastSweep < 60_000) return;
    this.lastSweep = now;
    for (const [key, until] of this.cancelledTurns) if (until <= now) this.cancelledTurns.delete(key);
    for (const [key, until] of this.endedCalls) if (until <= now) this.endedCalls.delete(key);
  }
}

function turnKey(callId: string, turnId: string): string {
  return `${callId}\u0000${turnId}`;
}
