// Time this process's event loop could not run: a CPU-starved or CFS-throttled pod, a long GC pause, a SIGSTOP. What
// came meanwhile (an engine's audio, the caller's frames, a reply) waits in a socket, and is read only after the
// timers that came due during the stall have run. A deadline that fires then blames the other side for our own
// stall: a tts engine taken for stalled (another voice mid-sentence, the primary cooled down for every call), an LLM
// for slow, a caller for silent. So a deadline that comes due during a stall reads the socket before it fires
// (StallAwareTimer), and a rate measured over a stall leaves the stall out (LoopStalls).
//
// performance.now() is read directly: vitest's fake timers do not move it, so these are not for fake-timer tests.

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

/** The default grace a deadline that came due during a stall gives the socket: a few turns of the loop to read it. */
const READ_GRACE_MS = 20;

export interface StallAwareTimerOptions {
  /**
   * How long a deadline that came due during a stall waits before it fires (default 20 ms). Longer when what ends
   * the wait is a round trip away (caller audio read after the stall must reach the asr and its verdict come back).
   */
  graceMs?: number;
}

/**
 * setTimeout that does not blame the other side for a stall of this process's own. What came meanwhile waits in a
 * socket and is read in the loop's poll phase, which may come after the timers: so a deadline first lets one poll
 * phase run (setImmediate), and one that came due during a stall (it runs STALL_MS or more late) waits a short
 * grace; only then does `onExpire` run, unless the reader cleared or refreshed it. The deadline stays wall-clock:
 * stall time is not given back, so sustained CPU throttling (every tick late) does not stretch it either.
 */
export class StallAwareTimer {
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private dueAt = 0;
  private readonly graceMs: number;

  constructor(
    private readonly ms: number,
    private readonly onExpire: () => void,
    options: StallAwareTimerOptions = {},
  ) {
    this.graceMs = options.graceMs ?? READ_GRACE_MS;
    this.start();
  }

  /** Starts the full wait again from now. */
  refresh(): void {
    this.clear();
    this.start();
  }

  clear(): void {
    clearTimeout(this.timer);
    clearImmediate(this.immediate);
    this.timer = undefined;
    this.immediate = undefined;
  }

  private start(): void {
    this.dueAt = performance.now() + this.ms;
    this.timer = setTimeout(() => this.due(), this.ms);
  }

  private due(): void {
    this.timer = undefined;
    if (performance.now() - this.dueAt >= STALL_MS) {
      this.timer = setTimeout(() => this.expire(), this.graceMs);
      return;
    }
    this.immediate = setImmediate(() => this.expire());
  }

  private expire(): void {
    this.timer = undefined;
    this.immediate = undefined;
    this.onExpire();
  }
}
