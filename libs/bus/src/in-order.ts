/**
 * Runs items one after another in arrival order, synchronously while the work is synchronous: an item whose work
 * returns a promise holds back the items after it (queued here) until that promise settles, then those run in
 * order, each of them again able to hold back the rest. A message or frame path makes no promise and no queue entry
 * for work that finishes at once, which is most of it.
 */
export class InOrder<T> {
  private waiting: T[] = [];
  private running: Promise<void> | undefined;

  /** `run`'s promise must not reject: failures are the work's own to report. */
  constructor(private readonly run: (item: T) => Promise<void> | undefined) {}

  /** Settles once the items held back so far have run; undefined when nothing is held back. */
  get pending(): Promise<void> | undefined {
    return this.running;
  }

  push(item: T): void {
    if (this.running) {
      this.waiting.push(item);
      return;
    }
    const started = this.run(item);
    if (started) this.running = this.runHeldBack(started);
  }

  /** Drops the items held back (the one in progress still settles). */
  clear(): void {
    this.waiting.length = 0;
  }

  private async runHeldBack(started: Promise<void>): Promise<void> {
    for (let next: Promise<void> | undefined = started; next; ) {
      await next;
      next = undefined;
      while (!next && this.waiting.length > 0) next = this.run(this.waiting.shift()!);
    }
    this.running = undefined;
  }
}
