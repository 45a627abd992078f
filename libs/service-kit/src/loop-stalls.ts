// Time this process's event loop could not run: a CPU-starved or CFS-throttled pod, a long GC pause, a SIGSTOP. What
// came meanwhile (an engine's audio, the caller's frames, a reply) waits in a socket, and is read only after the
// timers that came due during the stall have run. A deadline that fires then blames the other side for our own
// stall: a tts engine taken for stalled (another voice mid-sentence, the primary cooled down for every call), an LLM
// for slow, a caller for silent. Deadlines here count only time the process could run.

import { performance } from "node:perf_hooks";

/** How often the loop is checked. */
const PERIOD_MS = 20;
/**
 * A tick this much later than due was a stall, and all its lateness counts. Smaller lateness is a busy machine's
 * scheduling jitter: counted, it would add up under sustained load and stretch every deadline by a fraction.
 */
const STALL_MS = 50;

function stalledBy(lateMs: number): number {
  return lateMs >= STALL_MS ? lateMs : 0;
}

export class LoopStalls {
  private stalled = 0;
  private lastTick: number;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly now: () => number = () => performance.now()) {
    this.lastTick = now();
    this.timer = setInterval(() => {
      const now = this.now();
      this.stalled += stalledBy(now - this.lastTick - PERIOD_MS);
      this.lastTick = now;
    }, PERIOD_MS);
    this.timer.unref();
  }

  /** Stalled time so far in ms, a stall that just ended (its tick not yet run) included. */
  get stalledMs(): number {
    return this.stalled + stalledBy(this.now() - this.lastTick - PERIOD_MS);
  }

  close(): void {
    clearInterval(this.timer);
  }
}

let shared: LoopStalls | undefined;

/** The process's own, started on first use. */
export function processLoopStalls(): LoopStalls {
  shared ??= new LoopStalls();
  return shared;
}

/**
 * setTimeout that counts only time the process could run: when it comes due after a stall, it waits on for the
 * runnable time it still lacks (what came during the stall is read meanwhile), and only then does `onExpire` run.
 */
export class RunnableTimer {
  private timer: NodeJS.Timeout | undefined;
  private startedAt = 0;
  private stalledAtStart = 0;

  constructor(
    private readonly ms: number,
    private readonly onExpire: () => void,
    private readonly stalls: LoopStalls = processLoopStalls(),
  ) {
    this.start();
  }

  /** Starts the full wait again from now. */
  refresh(): void {
    clearTimeout(this.timer);
    this.start();
  }

  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private start(): void {
    this.startedAt = performance.now();
    this.stalledAtStart = this.stalls.stalledMs;
    this.timer = setTimeout(() => this.due(), this.ms);
  }

  private due(): void {
    const runnable = performance.now() - this.startedAt - (this.stalls.stalledMs - this.stalledAtStart);
    if (this.ms - runnable >= 1) {
      this.timer = setTimeout(() => this.due(), this.ms - runnable);
      return;
    }
    this.timer = undefined;
    this.onExpire();
  }
}
