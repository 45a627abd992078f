/** Thrown to a waiter whose work was cancelled while it stood in the queue. */
export class QueueAbortedError extends Error {
  constructor() {
    super("cancelled while queued");
  }
}

/**
 * At most `max` holders at once, the rest wait by when they are due (earliest first; arrival order among equals).
 * A waiter whose signal aborts leaves the queue at once, so cancelled work never holds up the work behind it.
 */
export class Limiter {
  private running = 0;
  private readonly waiting: Array<{ grant: () => void; dueAt: number }> = [];
  /** Told when a slot is free and nobody waits (see whenSpare). */
  private spareWaiters: Array<() => void> = [];

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new Error(`limiter size must be a positive integer, got ${max}`);
  }

  get active(): number {
    return this.running;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /** A slot is free and no work waits for one. */
  get hasSpare(): boolean {
    return this.running < this.max && this.waiting.length === 0;
  }

  /**
   * Resolves once the limiter has spare capacity (a free slot, nobody waiting), without taking a slot: for
   * background work that may run only while live work could start at once. Rejects with QueueAbortedError if
   * `signal` aborts first.
   */
  whenSpare(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(new QueueAbortedError());
    if (this.hasSpare) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.spareWaiters = this.spareWaiters.filter((waiter) => waiter !== notify);
        reject(new QueueAbortedError());
      };
      const notify = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.spareWaiters.push(notify);
    });
  }

  /**
   * Resolves with a release function once a slot is free; rejects with QueueAbortedError if `signal` aborts first.
   * While slots are full, a waiter due earlier (`dueAt`, ms; default now) is served before later ones.
   */
  acquire(signal?: AbortSignal, dueAt = Date.now()): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(new QueueAbortedError());
    if (this.running < this.max) {
      this.running++;
      return Promise.resolve(this.releaser());
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const index = this.waiting.indexOf(waiter);
        if (index >= 0) this.waiting.splice(index, 1);
        reject(new QueueAbortedError());
      };
      const waiter = {
        dueAt,
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve(this.releaser());
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      // After every waiter due no later: the queue stays sorted, equals in arrival order.
      let at = this.waiting.length;
      while (at > 0 && this.waiting[at - 1].dueAt > dueAt) at--;
      this.waiting.splice(at, 0, waiter);
    });
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      // The slot passes straight to the next waiter, so `running` only drops when nobody waits.
      if (next) {
        next.grant();
        return;
      }
      this.running--;
      const spare = this.spareWaiters;
      this.spareWaiters = [];
      for (const notify of spare) notify();
    };
  }
}
