// Per-connection protection: a message rate limit, and protocol-error reporting that counts every error but
// logs each reason at most once a second across all streams, so misbehaving clients cannot flood the logs (one
// client opening thousands of short streams included).
import { LogThrottle, type Logger } from "@voicebot/bus";
import type { IngressMetrics } from "./metrics.js";
import type { ProtocolErrorReason } from "./twilio.js";

/** Seconds in a row a client must send over twice the rate before its stream is closed as a flood. */
const FLOOD_SECONDS = 3;

/**
 * Token bucket: `ratePerSecond` sustained, `burst` at once. `flooding` turns true once more than `ratePerSecond`
 * messages were dropped in each of FLOOD_SECONDS seconds in a row: a client that keeps that up is not a phone
 * line with a hiccup (a late burst), and dropping its messages still costs the process a read and a frame parse each.
 */
export class RateLimiter {
  private tokens: number;
  private last: number;
  private windowStart: number;
  private droppedInWindow = 0;
  private floodWindows = 0;

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    nowMs: number,
  ) {
    this.tokens = burst;
    this.last = nowMs;
    this.windowStart = nowMs;
  }

  get flooding(): boolean {
    return this.floodWindows >= FLOOD_SECONDS;
  }

  take(nowMs: number): boolean {
    this.tokens = Math.min(this.burst, this.tokens + ((nowMs - this.last) * this.ratePerSecond) / 1000);
    this.last = nowMs;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    if (nowMs - this.windowStart >= 1_000) {
      // A window without enough drops (or a gap of whole windows) breaks the run.
      const overrun = this.droppedInWindow > this.ratePerSecond && nowMs - this.windowStart < 2_000;
      this.floodWindows = overrun ? this.floodWindows + 1 : 0;
      this.windowStart = nowMs;
      this.droppedInWindow = 0;
    }
    this.droppedInWindow++;
    if (this.droppedInWindow > this.ratePerSecond && this.floodWindows === FLOOD_SECONDS - 1) this.floodWindows = FLOOD_SECONDS;
    return false;
  }
}

const LOG_INTERVAL_MS = 1_000;

/** Shared by every stream of the process: the limit holds however many connections the errors come from. */
const protocolErrorLog = new LogThrottle(LOG_INTERVAL_MS);

export class ProtocolErrorReporter {
  private readonly throttle = protocolErrorLog;

  constructor(
    private log: Logger,
    private readonly metrics: IngressMetrics,
  ) {}

  setLogger(log: Logger): void {
    this.log = log;
  }

  report(reason: ProtocolErrorReason, detail: string, nowMs: number, fields: Record<string, unknown> = {}): void {
    this.metrics.protocolErrors.inc({ reason });
    const admitted = this.throttle.admit(reason, nowMs);
    if (admitted) this.log.warn("twilio protocol error", { reason, detail, ...admitted, ...fields });
  }
}
