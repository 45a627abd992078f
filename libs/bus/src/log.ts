/** The logger shape the libs accept; @voicebot/service-kit provides the JSON implementation. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return silentLogger;
  },
};

/**
 * At most one log line per key and interval; the next line says how many were left out. Metrics count a flood of
 * bad input in full, the log gets samples of it, so a flood cannot also flood the logs.
 */
export class LogThrottle {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly intervalMs = 1_000,
    /** Keys remembered at most (they may come from input); past it, memory starts over. */
    private readonly maxKeys = 1_000,
  ) {}

  /** Fields to add when the line is to be logged now ({ suppressedSinceLast } after a gap); undefined: leave it out. */
  admit(key: string, nowMs = performance.now()): { suppressedSinceLast?: number } | undefined {
    const seen = this.last.get(key);
    if (seen && nowMs - seen.at < this.intervalMs) {
      seen.suppressed++;
      return undefined;
    }
    if (!seen && this.last.size >= this.maxKeys) this.last.clear();
    this.last.set(key, { at: nowMs, suppressed: 0 });
    return seen && seen.suppressed > 0 ? { suppressedSinceLast: seen.suppressed } : {};
  }
}
