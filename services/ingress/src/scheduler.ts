import { performance } from "node:perf_hooks";

export interface Pacer {
  /**
   * Sends what is due at `nowMs` (monotonic); false when it has nothing left to pace. `onTick` is false when
   * woken by new input between ticks.
   */
  pump(nowMs: number, onTick: boolean): boolean;
}

/**
 * One timer for the playout of every call in the process: each tick pumps only the calls that have audio queued
 * or are waiting for some, so hundreds of calls cost one timer, and an idle process has none running.
 */
export class PlayoutScheduler {
  private readonly active = new Set<Pacer>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly tickMs: number,
    private readonly onError: (error: unknown) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get activeCount(): number {
    return this.active.size;
  }

  /** New audio (or a new state) for a call: pace it now, then on every tick while it has work. */
  wake(pacer: Pacer): void {
    this.active.add(pacer);
    this.run(pacer, this.now(), false);
    if (this.active.size > 0 && !this.timer) this.timer = setInterval(() => this.tick(), this.tickMs);
  }

  remove(pacer: Pacer): void {
    this.active.delete(pacer);
    this.stopIfIdle();
  }

  close(): void {
    this.active.clear();
    this.stopIfIdle();
  }

  private tick(): void {
    const now = this.now();
    for (const pacer of this.active) this.run(pacer, now, true);
    this.stopIfIdle();
  }

  private run(pacer: Pacer, now: number, onTick: boolean): void {
    try {
      if (!pacer.pump(now, onTick)) this.active.delete(pacer);
    } catch (error) {
      // One call's failure must not stop the others' audio.
      this.active.delete(pacer);
      this.onError(error);
    }
  }

  private stopIfIdle(): void {
    if (this.active.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }
}
