// Time this process's event loop could not run: a CPU-starved or CFS-throttled pod, a long GC pause, a SIGSTOP. An
// engine's audio that arrived meanwhile waits in the socket, so a watchdog that reads the clock after such a stall
// would charge it to the engine (a "slow" or "stalled" engine, a voice switched mid-sentence, the primary cooled down
// for every call on the replica). The watchdogs subtract it.

import { performance } from "node:perf_hooks";

/** How often the loop is checked; a tick later than this counts the excess as stalled. */
const PERIOD_MS = 20;

export class LoopStalls {
  private stalled = 0;
  private lastTick: number;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly now: () => number = () => performance.now()) {
    this.lastTick = now();
    this.timer = setInterval(() => {
      const now = this.now();
      this.stalled += Math.max(0, now - this.lastTick - PERIOD_MS);
      this.lastTick = now;
    }, PERIOD_MS);
    this.timer.unref();
  }

  /** Stalled time so far in ms, a stall that just ended (its tick not yet run) included. */
  get stalledMs(): number {
    return this.stalled + Math.max(0, this.now() - this.lastTick - PERIOD_MS);
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
