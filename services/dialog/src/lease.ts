import { errorText, type Logger } from "@voicebot/bus";
import type { CallStore } from "@voicebot/state";

const POLL_MS = 25;

/**
 * The per-call `dialog` lease: one replica takes a turn of a call at a time. It is held only for the turn
 * (renewed while the turn runs), so the next input of the call can go to any replica.
 */
export class TurnLease {
  constructor(
    private readonly store: CallStore,
    private readonly owner: string,
    private readonly ttlMs: number,
    /** How long to wait for another replica's turn to finish before handing the input back. */
    private readonly waitMs: number,
    private readonly log: Logger,
  ) {}

  /** Takes the lease (waiting up to waitMs); returns a release function, or undefined if another replica holds it. */
  async acquire(callId: string): Promise<(() => Promise<void>) | undefined> {
    const deadline = Date.now() + this.waitMs;
    while (!(await this.store.acquireLease(callId, "dialog", this.owner, this.ttlMs))) {
      if (Date.now() >= deadline) return undefined;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    const renew = setInterval(() => {
      this.store.acquireLease(callId, "dialog", this.owner, this.ttlMs).then(
        (held) => {
          if (!held) this.log.warn("dialog lease lost during a turn", { callId });
        },
        (error) => this.log.warn("dialog lease renewal failed", { callId, error: errorText(error) }),
      );
    }, Math.max(100, Math.floor(this.ttlMs / 3)));
    return async () => {
      clearInterval(renew);
      try {
        // Dialog has no orphan recovery (JetStream redelivers its inputs), so keep the index small. Both in one
        // Redis round trip: the call's next input (the next key of an entry) waits for this release.
        await Promise.all([this.store.releaseLease(callId, "dialog", this.owner), this.store.forgetLease(callId, "dialog")]);
      } catch (error) {
        this.log.warn("dialog lease release failed; it expires by itself", { callId, error: errorText(error) });
      }
    };
  }
}
