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
 *
 * Every call is pumped once per `tickMs`, but the calls are spread over `phases` groups pumped in turn, one every
 * tickMs / phases. Pumped all at once, every talking call's frame went out in one burst of socket writes (~2–3 ms
 * at 150 calls) that each other message of the process waited behind, a turn's first bot audio included.
 */
export class PlayoutScheduler {
  private readonly groups: Array<Set<Pacer>>;
  private readonly groupOf = new Map<Pacer, Set<Pacer>>();
  private nextGroup = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Inside a tick: a wake from a pump leaves the timer to the tick, which re-arms it once (one timer chain). */
  private ticking = false;
  /** When the next tick is due (monotonic ms): ticks keep to a fixed grid, so a late one does not delay the rest. */
  private nextTickAt = 0;
  /** Between two ticks: each pumps one group. */
  private readonly periodMs: number;

  constructor(
    private readonly tickMs: number,
    private readonly onError: (error: unknown) => void,
    private readonly now: () => number = () => performance.now(),
    private readonly phases = 1,
  ) {
    if (!Number.isInteger(phases) || phases < 1) throw new Error(`phases must be a positive integer, got ${phases}`);
    this.groups = Array.from({ length: phases }, () => new Set<Pacer>());
    this.periodMs = tickMs / phases;
  }

  get activeCount(): number {
    return this.groupOf.size;
  }

  /** New audio (or a new state) for a call: pace it now, then on every tick of its group while it has work. */
  wake(pacer: Pacer): void {
    if (!this.groupOf.has(pacer)) {
      const group = this.groups.reduce((smallest, g) => (g.size < smallest.size ? g : smallest));
      group.add(pacer);
      this.groupOf.set(pacer, group);
    }
    const now = this.now();
    this.run(pacer, now, false);
    if (this.groupOf.size > 0 && !this.timer && !this.ticking) {
      this.nextTickAt = now + this.periodMs;
      this.timer = setTimeout(this.tick, Math.max(0, this.nextTickAt - this.now()));
    }
  }

  remove(pacer: Pacer): void {
    this.drop(pacer);
    this.stopIfIdle();
  }

  close(): void {
    for (const group of this.groups) group.clear();
    this.groupOf.clear();
    this.stopIfIdle();
  }

  private readonly tick = (): void => {
    this.timer = undefined;
    const group = this.groups[this.nextGroup];
    this.nextGroup = (this.nextGroup + 1) % this.phases;
    const now = this.now();
    // The pumps see the tick's time on the grid, not the moment the timer fired. Timers fire a little early or
    // late; a call whose buffer sat at the pacing budget's edge then sent nothing on one tick and two frames on the
    // next: a 40 ms hole at the caller. After a stall of more than a whole tick the grid starts again from now.
    if (now - this.nextTickAt > this.tickMs) this.nextTickAt = now;
    const tickAt = this.nextTickAt;
    this.ticking = true;
    try {
      for (const pacer of group) this.run(pacer, tickAt, true);
    } finally {
      this.ticking = false;
    }
    if (this.groupOf.size === 0) return;
    // Timers restarted from their callback would run every period plus their lateness: every call's tick would
    // come later and later. The next one is due a period after this one on the grid.
    this.nextTickAt += this.periodMs;
    this.timer = setTimeout(this.tick, Math.max(0, this.nextTickAt - this.now()));
  };

  private run(pacer: Pacer, now: number, onTick: boolean): void {
    try {
      if (!pacer.pump(now, onTick)) this.drop(pacer);
    } catch (error) {
      // One call's failure must not stop the others' audio.
      this.drop(pacer);
      this.onError(error);
    }
  }

  private drop(pacer: Pacer): void {
    this.groupOf.get(pacer)?.delete(pacer);
    this.groupOf.delete(pacer);
  }

  private stopIfIdle(): void {
    if (this.groupOf.size === 0 && this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }
}
