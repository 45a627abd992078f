// Per-connection protection: a message rate limit, and protocol-error reporting that counts every error but
// logs each reason at most once a second, so a misbehaving client cannot flood the logs.
import { LogThrottle, type Logger } from "@voicebot/bus";
import type { IngressMetrics } from "./metrics.js";
import type { ProtocolErrorReason } from "./twilio.js";

/** Token bucket: `ratePerSecond` sustained, `burst` at once. */
export class RateLimiter {
  private tokens: number;
  private last: number;

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    nowMs: number,
  ) {
    this.tokens = burst;
    this.last = nowMs;
  }

  take(nowMs: number): boolean {
    this.tokens = Math.min(this.burst, this.tokens + ((nowMs - this.last) * this.ratePerSecond) / 1000);
    this.last = nowMs;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

const LOG_INTERVAL_MS = 1_000;

export class ProtocolErrorReporter {
  private readonly throttle = new LogThrottle(LOG_INTERVAL_MS);

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
