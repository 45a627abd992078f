export type CircuitState = "closed" | "open" | "half_open";

export interface BreakerOptions {
  /** Failures within `windowMs` that open the circuit. */
  failures: number;
  windowMs: number;
  /** How long the circuit stays open before one probe request may try again. */
  cooldownMs: number;
  now?: () => number;
  onChange?: (state: CircuitState) => void;
}

/**
 * A circuit breaker for the LLM endpoint: after `failures` failures within `windowMs` it opens and calls go
 * straight to the fallback for `cooldownMs`; then one probe is let through (half-open): success closes the
 * circuit, failure opens it for another cool-down. Per process: each replica learns about the endpoint itself.
 */
export class CircuitBreaker {
  private current: CircuitState = "closed";
  private failureTimes: number[] = [];
  private openedAt = 0;
  private probeInFlight = false;

  constructor(private readonly options: BreakerOptions) {}

  get state(): CircuitState {
    return this.current;
  }

  /** May a request go out now? In half-open state only one probe at a time. */
  allow(): boolean {
    if (this.current === "closed") return true;
    if (this.current === "open") {
      if (this.now() - this.openedAt < this.options.cooldownMs) return false;
      this.set("half_open");
    }
    if (this.probeInFlight) return false;
    this.probeInFlight = true;
    return true;
  }

  success(): void {
    this.probeInFlight = false;
    this.failureTimes = [];
    if (this.current !== "closed") this.set("closed");
  }

  failure(): void {
    this.probeInFlight = false;
    const now = this.now();
    if (this.current === "half_open") {
      this.open(now);
      return;
    }
    this.failureTimes = this.failureTimes.filter((t) => now - t < this.options.windowMs);
    this.failureTimes.push(now);
    if (this.current === "closed" && this.failureTimes.length >= this.options.failures) this.open(now);
  }

  /** A request that ended without telling anything about the endpoint (the caller barged in). */
  release(): void {
    this.probeInFlight = false;
  }

  private open(now: number): void {
    this.openedAt = now;
    this.failureTimes = [];
    this.set("open");
  }

  private set(state: CircuitState): void {
    if (state === this.current) return;
    this.current = state;
    this.options.onChange?.(state);
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }
}
