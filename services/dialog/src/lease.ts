import { errorText, type Logger } from "@voicebot/bus";
import type { CallState, CallStore, DialogVersioned, TurnMark } from "@voicebot/state";

const POLL_MS = 25;

/** A turn of a call this replica holds the `dialog` lease for. */
export interface HeldTurn<T> {
  /** The dialog state read together with the lease. */
  dialog: DialogVersioned<T>;
  /** The turn's input was marked in progress together with the lease (acquire's `mark`). */
  marked?: { firstTime: boolean };
  /** The lease owner: a final save can release the lease in the same round trip (store.commitDialog). */
  owner: string;
  /**
   * Stops renewing before a save that releases the lease: a renewal sent after it would take the lease again. The
   * renewals already sent run first (one connection, in order).
   */
  pauseRenewal(): void;
  /** The save did not happen (the turn goes on): renew again. */
  resumeRenewal(): void;
  /** A save released the lease: release() then has nothing left to do in Redis. */
  releasedBySave(): void;
  /** Gives the lease up (stops renewing); never throws. */
  release(): Promise<void>;
  /**
   * Before anything the caller would notice (speech, a record line, a tool): true when the lease is still this
   * replica's. Without a Redis round trip while the last renewal Redis confirmed is fresh; after a pause longer than
   * that (a frozen or starved process) it asks Redis, and false means another replica has the turn now. Never
   * throws: a lease that cannot be checked (Redis unreachable) cannot have been taken by another replica either,
   * short of a partition, so the turn goes on rather than leave the caller in silence.
   */
  confirm(): Promise<boolean>;
  /** Aborted once the lease is known lost: the turn must stop, and leave its input to the replica that took it. */
  readonly lost: AbortSignal;
  /** The turn saved the state (version now `version`): an expired lease may be taken again only at this version. */
  saved(version: string): void;
}

export type TurnStart<T> = { kind: "not_live"; call: CallState | undefined } | { kind: "busy" } | { kind: "held"; turn: HeldTurn<T> };

/**
 * The per-call `dialog` lease: one replica takes a turn of a call at a time. It is held only for the turn
 * (renewed while the turn runs), so the next input of the call can go to any replica. Taken in the same round trip
 * as the call's state check and the dialog state read (store.takeDialogTurn); it has no orphan-index entry, since
 * JetStream hands a dead replica's inputs to another replica.
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

  /**
   * Takes the lease (waiting up to waitMs while another replica holds it) if the call is live; with `mark`, marks
   * the turn's input in progress in the same round trip when no input is (store.takeDialogTurn).
   */
  async acquire<T>(callId: string, mark?: TurnMark): Promise<TurnStart<T>> {
    const deadline = Date.now() + this.waitMs;
    for (;;) {
      const sentAt = performance.now();
      const start = await this.store.takeDialogTurn<T>(callId, this.owner, this.ttlMs, mark);
      if (start.kind === "not_live") return start;
      if (start.kind === "held") return { kind: "held", turn: this.held(callId, start.dialog, start.marked, sentAt) };
      if (Date.now() >= deadline) return start;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  private held<T>(callId: string, dialog: DialogVersioned<T>, marked: { firstTime: boolean } | undefined, takenAt: number): HeldTurn<T> {
    const { store, owner, ttlMs, log } = this;
    let paused = false;
    let released = false;
    const lost = new AbortController();
    // Until when the lease is surely ours: from the moment the last confirmed renewal was sent (Redis started its
    // TTL later), less a margin for the two clocks' rates.
    const margin = Math.max(100, ttlMs / 10);
    let confirmedUntil = takenAt + ttlMs - margin;
    let version = dialog.version;
    const extend = async (): Promise<boolean> => {
      if (lost.signal.aborted) return false;
      const sentAt = performance.now();
      // Only while it is still ours, or free with the state where this turn left it: a lease that another replica
      // took meanwhile (and maybe gave up after finishing this very turn) is not taken back.
      const held = await store.extendDialogLease(callId, owner, ttlMs, version);
      if (held) confirmedUntil = Math.max(confirmedUntil, sentAt + ttlMs - margin);
      else if (!lost.signal.aborted) {
        log.warn("dialog lease lost during a turn: another replica has it; this one stops the turn", { callId });
        lost.abort();
        clearInterval(renew);
      }
      return held;
    };
    const renew = setInterval(() => {
      if (paused) return;
      extend().catch((error) => log.warn("dialog lease renewal failed", { callId, error: errorText(error) }));
    }, Math.max(100, Math.floor(ttlMs / 3)));
    return {
      dialog,
      ...(marked ? { marked } : {}),
      owner,
      pauseRenewal: () => {
        paused = true;
      },
      resumeRenewal: () => {
        paused = false;
      },
      releasedBySave: () => {
        released = true;
      },
      confirm: async () => (lost.signal.aborted ? false : performance.now() < confirmedUntil ? true : extend().catch(() => true)),
      lost: lost.signal,
      saved: (next) => {
        version = next;
      },
      release: async () => {
        clearInterval(renew);
        if (released || lost.signal.aborted) return;
        try {
          await store.releaseLease(callId, "dialog", owner, { index: false });
        } catch (error) {
          log.warn("dialog lease release failed; it expires by itself", { callId, error: errorText(error) });
        }
      },
    };
  }
}
