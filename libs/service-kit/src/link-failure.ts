import { errorText } from "@voicebot/bus";

/** Messages of a lost or failing-over link: ioredis, Redis replies during a failover (a script's wrapped too). */
const LINK_FAILURE_MESSAGE =
  /max retries per request|Connection is closed|Socket timeout|Command timed out|Stream isn't writeable|All sentinels are unreachable|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|\bREADONLY\b|\bLOADING\b|\bMASTERDOWN\b|\bTRYAGAIN\b/;
/** nats.js error codes of a lost link (a JetStream publish that found no server), and libs/bus's own. */
const LINK_FAILURE_CODES = new Set(["TIMEOUT", "DISCONNECT", "CONNECTION_CLOSED", "CONNECTION_REFUSED", "503", "timeout", "disconnected", "no_responders"]);

/** The error came from Redis or NATS being unreachable or failing over, not from the input or a bug. */
export function isLinkFailure(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return LINK_FAILURE_MESSAGE.test(errorText(error)) || (typeof code === "string" && LINK_FAILURE_CODES.has(code));
}

export interface LinkRetryOptions {
  /** Tries again until this long after the first failure (then the last error is thrown). */
  limitMs: number;
  /** Checked before each try again: true throws the error at once (the replica drains, the caller is gone). */
  giveUp?: () => boolean;
  /** Told of each failure that will be tried again (a metric, a throttled log line). */
  onRetry?: (error: unknown) => void;
}

/**
 * Runs `act` again while it fails on a lost link (a Redis failover or restart, a NATS reconnect: seconds), backing
 * off from 100 ms to 1 s. Any other error, or one past `limitMs` from the first failure, is thrown.
 */
export async function retryWhileLinkLost<T>(act: () => Promise<T>, options: LinkRetryOptions): Promise<T> {
  let failingSince: number | undefined;
  for (let attempt = 0; ; attempt++) {
    try {
      return await act();
    } catch (error) {
      failingSince ??= Date.now();
      const backoffMs = Math.min(100 * 2 ** attempt, 1_000);
      if (!isLinkFailure(error) || options.giveUp?.() || Date.now() + backoffMs - failingSince > options.limitMs) throw error;
      options.onRetry?.(error);
      await new Promise((resolve) => setTimeout(resolve, backoffMs));
    }
  }
}
