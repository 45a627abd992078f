// The calls this replica has lately found live. An idempotent tool for one of them runs without waiting for the
// claim's Redis round trip: the claim's other work (exactly once, a stored result for a repeat) means nothing to a
// tool that may run twice, and its check that the call is live was made moments ago. A claim that finds the call
// live adds it; the call's end (CallEnded, or ingress cancelling all its turns) removes it for good.

import { setNewest } from "@voicebot/service-kit";

/** A call stays known live this long after a claim last found it so: bounds what a missed CallEnded can do. */
export const LIVE_CALL_TTL_MS = 30_000;

/** Most calls remembered, live and ended each (~100 bytes apiece). */
const MAX_CALLS = 50_000;

export class LiveCalls {
  /** callId → known live until (ms); in order of the last claim, oldest first. */
  private readonly live = new Map<string, number>();
  /** callId → remembered as ended until (ms): a claim answered after the end must not bring the call back. */
  private readonly ended = new Map<string, number>();

  constructor(
    private readonly ttlMs = LIVE_CALL_TTL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** A claim just found the call live in Redis. */
  seenLive(callId: string): void {
    const now = this.now();
    const endedUntil = this.ended.get(callId);
    if (endedUntil !== undefined && endedUntil > now) return;
    setNewest(this.live, callId, now + this.ttlMs, MAX_CALLS);
  }

  isLive(callId: string): boolean {
    const until = this.live.get(callId);
    if (until === undefined) return false;
    if (until > this.now()) return true;
    this.live.delete(callId);
    return false;
  }

  /** The call's end was heard here lately (its record may not say so yet: ingress writes it after announcing it). */
  hasEnded(callId: string): boolean {
    const until = this.ended.get(callId);
    return until !== undefined && until > this.now();
  }

  callEnded(callId: string): void {
    const now = this.now();
    this.live.delete(callId);
    this.ended.delete(callId);
    this.ended.set(callId, now + this.ttlMs);
    // Oldest first, and all with the same TTL: stop at the first one still remembered.
    for (const [id, until] of this.ended) {
      if (until > now && this.ended.size <= MAX_CALLS) break;
      this.ended.delete(id);
    }
  }

  /** Calls remembered as live (expired entries included until next looked at). */
  get size(): number {
    return this.live.size;
  }
}
