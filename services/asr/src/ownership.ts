import { errorText, isValidCallId, LogThrottle, queueGroups, subjects, type Bus, type Logger, type Subscription } from "@voicebot/bus";
import { CallEnded, CallerAudio, CallerAudioReplayRequest, CallStarted } from "@voicebot/proto";
import type { CallStore } from "@voicebot/state";
import type { CallSession } from "./call-session.js";
import type { AsrMetrics } from "./metrics.js";

export const LEASE_ROLE = "asr";
/** A live call's record may be missing this long (Redis lost its data; ingress restores it) before asr lets go. */
const RECORD_LOSS_GRACE_MS = 10_000;
/** Waits before each new try of a claim that failed on Redis (then it is given up): ~8 s in all. */
const CLAIM_RETRY_MS = [250, 500, 1_000, 2_000, 4_000];
/** How long a new owner waits for ingress's recent caller audio before it listens from now on (live audio waits too). */
const REPLAY_TIMEOUT_MS = 1_000;

export interface OwnershipOptions {
  instanceId: string;
  /** Lease time-to-live; renewed every third of it, so one missed renewal does not lose the call. */
  leaseMs: number;
  /** How often to look for calls whose owner died. */
  orphanScanMs: number;
}

export interface OwnershipDeps {
  bus: Bus;
  store: CallStore;
  log: Logger;
  metrics: AsrMetrics;
  options: OwnershipOptions;
  /** Builds the audio pipeline of a call this replica now owns; it calls `onFinalPublished` after each final. */
  createSession(callId: string, onFinalPublished: () => void): CallSession;
}

interface OwnedCall {
  session: CallSession;
  audio: Subscription;
}

/**
 * Which calls this replica listens to. A call is owned while this replica holds its `asr` lease in Redis:
 * claimed from CallStarted (queue group, one replica each), renewed on one shared timer, taken over when another
 * owner stops renewing, dropped when the call ends or the lease is lost, and handed over on drain.
 */
export class CallOwnership {
  private readonly owned = new Map<string, OwnedCall>();
  private readonly recordMissingSince = new Map<string, number>();
  /** Calls being claimed or taken over right now (so the claim path and the orphan scan don't race). */
  private readonly pending = new Set<string>();
  private readonly subs: Subscription[] = [];
  private claimSub: Subscription | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private scanTimer: NodeJS.Timeout | undefined;
  private renewing = false;
  private scanning = false;
  private draining = false;
  /** Claims, orphan scans and drain-time hand-overs in flight: a drain waits for them all. */
  private readonly claims = new Set<Promise<void>>();

  constructor(private readonly deps: OwnershipDeps) {}

  get activeCalls(): number {
    return this.owned.size;
  }

  owns(callId: string): boolean {
    return this.owned.has(callId);
  }

  start(): void {
    const { bus, options } = this.deps;
    this.claimSub = bus.subscribe(subjects.callStarted, CallStarted, (message) => this.track(this.onCallStarted(message)), {
      name: "call-started",
      queue: queueGroups.asr,
    });
    this.subs.push(bus.subscribe(subjects.endedAll, CallEnded, (message, delivery) => this.onCallEnded(message, delivery.subject), { name: "call-ended" }));
    this.renewTimer = setInterval(() => void this.renewAll(), Math.max(50, Math.floor(options.leaseMs / 3)));
    // Tracked like a claim: a drain waits for a scan in flight, whose take-overs it then hands over.
    this.scanTimer = setInterval(() => void this.track(this.scanOrphans()), options.orphanScanMs);
  }

  /** Stops claiming, then gives every owned call back (lease released, marked orphaned) for another replica. */
  async drain(): Promise<void> {
    this.draining = true;
    // Drained, not unsubscribed: a CallStarted the server already sent this replica would be dropped by an UNSUB,
    // and no other replica would ever claim that call. Each one still comes in, is claimed and handed over.
    await this.claimSub?.drain().catch(() => this.claimSub?.unsubscribe());
    this.claimSub = undefined;
    clearInterval(this.scanTimer);
    // Claims and take-overs in flight hand their calls over as they finish (own): wait for those too.
    while (this.claims.size > 0) await Promise.allSettled([...this.claims]);
    const callIds = [...this.owned.keys()];
    await Promise.all(callIds.map((callId) => this.handOver(callId)));
    clearInterval(this.renewTimer);
    this.deps.log.info("asr calls handed over", { calls: callIds.length });
  }

  /** Stops everything at once (after drain, or when the service is stopped without one). */
  async close(): Promise<void> {
    this.draining = true;
    clearInterval(this.scanTimer);
    clearInterval(this.renewTimer);
    this.claimSub?.unsubscribe();
    for (const sub of this.subs) sub.unsubscribe();
    await Promise.all([...this.owned.keys()].map((callId) => this.dropLocally(callId)));
  }

  private track(claim: Promise<void>): Promise<void> {
    this.claims.add(claim);
    return claim.finally(() => this.claims.delete(claim));
  }

  /** CallStarted messages that cannot be claimed are counted in full and logged in samples. */
  private readonly badInputLog = new LogThrottle();

  private async onCallStarted(message: CallStarted): Promise<void> {
    const { store, log, metrics, options } = this.deps;
    const callId = message.callId;
    if (!isValidCallId(callId)) {
      metrics.claims.inc({ result: "invalid" });
      const admitted = this.badInputLog.admit("invalid");
      if (admitted) log.warn("CallStarted with an invalid call id dropped", { callId: callId.slice(0, 140), ...admitted });
      return;
    }
    // Claimed even while draining (the claim subscription's last messages): own() then hands the call over at once.
    if (this.owned.has(callId) || this.pending.has(callId)) return;
    this.pending.add(callId);
    try {
      // CallStarted reaches one replica, once: a claim given up on leaves the call with no asr (the orphan scan finds
      // only calls with a lease), so one that fails on Redis is tried again for a while.
      for (let attempt = 0; ; attempt++) {
        try {
          if ((await store.callState(callId)) !== "live") {
            metrics.claims.inc({ result: "not_live" });
            const admitted = this.badInputLog.admit("not_live");
            if (admitted) log.warn("CallStarted for a call that is not live: ignored", { callId, ...admitted });
            return;
          }
          // Takes or renews: a retry after a lease written but unanswered (or not indexed) holds it.
          if (!(await store.acquireLease(callId, LEASE_ROLE, options.instanceId, options.leaseMs))) {
            metrics.claims.inc({ result: "held" });
            log.info("call already owned by another asr replica", { callId, owner: await store.leaseOwner(callId, LEASE_ROLE).catch(() => undefined) });
            return;
          }
          metrics.claims.inc({ result: "claimed" });
          // Claimed late, the call's first words went by unheard: they are asked for, as in a takeover.
          this.own(callId, attempt === 0 ? "claimed" : "claimed_late");
          return;
        } catch (error) {
          metrics.leaseErrors.inc({ operation: "claim" });
          // A drain waits for claims in flight: while draining, tried again at once (own() then hands the call over).
          const wait = CLAIM_RETRY_MS[attempt];
          const retryInMs = wait !== undefined && this.draining ? 0 : wait;
          if (retryInMs === undefined) {
            log.error("claiming a call failed; given up: no asr hears it unless it is started again", { callId, attempts: attempt + 1, error: errorText(error) });
            return;
          }
          log.warn("claiming a call failed; trying again", { callId, retryInMs, error: errorText(error) });
          await new Promise((resolve) => setTimeout(resolve, retryInMs));
        }
      }
    } finally {
      this.pending.delete(callId);
    }
  }

  private own(callId: string, how: "claimed" | "claimed_late" | "taken_over"): void {
    const { bus, log, createSession } = this.deps;
    const session: CallSession = createSession(callId, () => void this.saveProgress(callId, session));
    // A call taken over replays what its last owner had not finished with; live audio waits (in order) until that
    // is heard: the session takes frames in stream order.
    let replay: Promise<void> | undefined;
    /** The frame after the replayed ones: live messages that came in before the replay was taken hold only those. */
    let replayedTo = 0;
    const hear = (message: CallerAudio) =>
      message.frameCount > 0 && Number(message.firstFrame) + message.frameCount <= replayedTo ? undefined : session.handleAudio(message);
    const audio = bus.subscribe(subjects.callerAudio(callId), CallerAudio, (message) => (replay ? replay.then(() => hear(message)) : hear(message)), {
      name: "caller-audio",
      ordered: true,
    });
    // Asked only now: ingress answers with what it kept, and whatever it publishes after that reaches the subscription.
    if (how !== "claimed") {
      replay = this.replay(callId, session)
        .then((end) => void (replayedTo = end))
        .finally(() => (replay = undefined));
    }
    this.owned.set(callId, { session, audio });
    log.info(how === "taken_over" ? "call taken over" : how === "claimed" ? "call claimed" : "call claimed after failed tries", { callId });
    // A drain that began while this claim was in flight must not leave the call stranded here.
    if (this.draining) void this.track(this.handOver(callId));
  }

  /**
   * Hears what the call's last owner had not finished with, the words spoken while the call had no owner among them:
   * the caller audio ingress kept from the progress that owner saved (none saved: all it kept). Returns the frame
   * after the replayed ones (0: none).
   */
  private async replay(callId: string, session: CallSession): Promise<number> {
    const { bus, store, log, metrics } = this.deps;
    let fromFrame = 0;
    try {
      fromFrame = parseProgress(await store.progress(callId, LEASE_ROLE));
      session.resumesAt(fromFrame);
      const audio = await bus.request(
        subjects.callerAudioReplay(callId),
        CallerAudioReplayRequest,
        CallerAudioReplayRequest.create({ callId, fromFrame }),
        CallerAudio,
        REPLAY_TIMEOUT_MS,
        callId,
      );
      const frames = audio.frameCount;
      const tooOld = frames > 0 ? Math.max(0, Number(audio.firstFrame) - fromFrame) : 0;
      metrics.replays.inc({ result: frames === 0 ? "none" : tooOld > 0 ? "partial" : "whole" });
      metrics.replayedFrames.inc({ outcome: "replayed" }, frames);
      if (tooOld > 0) metrics.replayedFrames.inc({ outcome: "too_old" }, tooOld);
      if (frames > 0) await session.handleAudio(audio);
      const fields = { callId, fromFrame, firstFrame: Number(audio.firstFrame), frames, lostFrames: tooOld };
      if (tooOld > 0) log.warn("caller audio replayed in part: ingress no longer kept the oldest frames", fields);
      else log.info("caller audio replayed", fields);
      return Number(audio.firstFrame) + frames;
    } catch (error) {
      metrics.replays.inc({ result: "failed" });
      log.warn("caller audio could not be replayed: listening from now on", { callId, fromFrame, error: errorText(error) });
      return 0;
    }
  }

  /** Saves the session's resume frame (after a final, or on hand-over) while this replica holds the lease. */
  private async saveProgress(callId: string, session: CallSession): Promise<void> {
    const { store, log, metrics, options } = this.deps;
    const frame = session.resumeFrame();
    if (frame === undefined) return;
    try {
      await store.saveProgress(callId, LEASE_ROLE, options.instanceId, String(frame));
    } catch (error) {
      // The next renewal saves it again; until then a successor would replay more, and may hear the last final twice.
      metrics.leaseErrors.inc({ operation: "progress" });
      log.warn("saving the call's asr progress failed", { callId, error: errorText(error) });
    }
  }

  private async onCallEnded(message: CallEnded, subject: string): Promise<void> {
    const callId = message.callId || subject.split(".")[3];
    if (!callId || !this.owned.has(callId)) return;
    this.deps.log.info("call ended: asr stops listening", { callId, reason: message.reason });
    await this.dropLocally(callId);
    await this.releaseAndForget(callId);
  }

  /** Unsubscribes the call's audio and stops its session (finals already being decoded still go out). */
  private async dropLocally(callId: string): Promise<void> {
    const call = this.owned.get(callId);
    if (!call) return;
    this.owned.delete(callId);
    this.recordMissingSince.delete(callId);
    call.audio.unsubscribe();
    await call.session.stop();
  }

  /** dropLocally for a renewal round, which goes on without waiting: a failure is logged, not thrown. */
  private async dropInBackground(callId: string): Promise<void> {
    try {
      await this.dropLocally(callId);
    } catch (error) {
      this.deps.log.warn("stopping a dropped call's session failed", { callId, error: errorText(error) });
    }
  }

  private async releaseAndForget(callId: string): Promise<void> {
    const { store, log, metrics, options } = this.deps;
    try {
      await store.releaseLease(callId, LEASE_ROLE, options.instanceId);
      await store.forgetLease(callId, LEASE_ROLE);
    } catch (error) {
      metrics.leaseErrors.inc({ operation: "release" });
      log.warn("releasing the lease of an ended call failed", { callId, error: errorText(error) });
    }
  }

  private async handOver(callId: string): Promise<void> {
    const { store, log, metrics, options } = this.deps;
    const call = this.owned.get(callId);
    if (!call) return;
    // Stops hearing and finishes the finals in flight while still owning the call: the renewals go on meanwhile (a
    // final may take an engine's deadline, longer than a lease), or another replica would take the call over from
    // the progress saved before that utterance and recognize it a second time.
    call.audio.unsubscribe();
    await call.session.stop();
    if (this.owned.get(callId) !== call) return; // dropped meanwhile: ended, or taken by another replica
    await this.dropLocally(callId);
    // The utterance the caller is in the middle of was dropped with the session: the successor replays it.
    await this.saveProgress(callId, call.session);
    try {
      await store.handOver(callId, LEASE_ROLE, options.instanceId);
      log.info("call handed over", { callId });
    } catch (error) {
      // The lease still expires on its own; another replica takes the call a little later.
      metrics.leaseErrors.inc({ operation: "hand_over" });
      log.warn("handing over a call failed", { callId, error: errorText(error) });
    }
  }

  /** How long the call's record has been missing, as seen by the renewal rounds (0 on the first miss). */
  private recordMissingFor(callId: string): number {
    const since = this.recordMissingSince.get(callId);
    if (since === undefined) {
      this.recordMissingSince.set(callId, Date.now());
      return 0;
    }
    return Date.now() - since;
  }

  /**
   * Renews every owned lease and checks the calls are still live: one Redis round trip per round, one script per
   * call plus one index update (store.renewLeases).
   */
  private async renewAll(): Promise<void> {
    if (this.renewing || this.owned.size === 0) return;
    this.renewing = true;
    const { store, log, metrics, options } = this.deps;
    try {
      const callIds = [...this.owned.keys()];
      let renewals;
      try {
        renewals = await store.renewLeases(callIds, LEASE_ROLE, options.instanceId, options.leaseMs, (callId) => {
          const frame = this.owned.get(callId)?.session.resumeFrame();
          return frame === undefined ? undefined : String(frame);
        });
      } catch (error) {
        // Redis trouble: keep listening, the next round tries again.
        metrics.leaseErrors.inc({ operation: "renew" }, callIds.length);
        log.warn("lease renewal failed", { calls: callIds.length, error: errorText(error) });
        return;
      }
      let failures = 0;
      let firstError: unknown;
      for (const renewal of renewals) {
        const callId = renewal.callId;
        if ("error" in renewal) {
          failures++;
          firstError ??= renewal.error;
          continue; // keep listening, the next round tries again
        }
        const { held, call: state } = renewal;
        if (state !== undefined) this.recordMissingSince.delete(callId);
        if (!this.owned.has(callId)) {
          // Dropped while this round ran (ended, handed over): the drop's own release went to Redis after this
          // round's renewal (one connection, in order), so it has the last word on the lease and the index.
          continue;
        } else if (state === undefined && this.recordMissingFor(callId) < RECORD_LOSS_GRACE_MS) {
          // No record at all while we hold the call: Redis lost its data, and ingress writes the record again
          // (and re-announces the call) within seconds. Keep listening meanwhile instead of dropping the call.
          continue;
        } else if (state !== "live") {
          this.recordMissingSince.delete(callId);
          log.info("call no longer live: asr stops listening", { callId, state: state ?? "gone" });
          // Not waited for here: a final still being recognized (up to the engine's deadline) would hold up the
          // renewal of every other call of this replica, whose leases would lapse. Tracked, so a drain waits for it.
          void this.track(this.dropInBackground(callId).then(() => this.releaseAndForget(callId)));
        } else if (!held) {
          metrics.leaseLosses.inc();
          log.warn("lease taken by another replica: dropping the call", { callId });
          void this.track(this.dropInBackground(callId));
        }
      }
      if (failures > 0) {
        metrics.leaseErrors.inc({ operation: "renew" }, failures);
        log.warn("lease renewal failed", { calls: failures, error: errorText(firstError) });
      }
    } finally {
      this.renewing = false;
    }
  }

  /** Takes over calls whose owner stopped renewing; forgets calls that ended while nobody owned them. */
  private async scanOrphans(): Promise<void> {
    if (this.scanning || this.draining) return;
    this.scanning = true;
    const { store, log, metrics, options } = this.deps;
    try {
      const orphans = (await store.orphanedCalls(LEASE_ROLE)).filter((id) => !this.owned.has(id) && !this.pending.has(id));
      for (const callId of orphans) {
        if (this.draining) break;
        this.pending.add(callId);
        try {
          if (!isValidCallId(callId) || (await store.callState(callId)) !== "live") {
            await store.forgetLease(callId, LEASE_ROLE);
            continue;
          }
          if (!(await store.acquireLease(callId, LEASE_ROLE, options.instanceId, options.leaseMs))) continue;
          metrics.takeovers.inc();
          this.own(callId, "taken_over");
        } finally {
          this.pending.delete(callId);
        }
      }
    } catch (error) {
      metrics.leaseErrors.inc({ operation: "scan" });
      log.warn("orphaned call scan failed", { error: errorText(error) });
    } finally {
      this.scanning = false;
    }
  }
}

/** A saved resume frame; 0 (replay all that ingress kept) when none was saved or it is unreadable. */
function parseProgress(saved: string | undefined): number {
  const frame = saved === undefined ? 0 : Number(saved);
  return Number.isSafeInteger(frame) && frame >= 0 ? frame : 0;
}
