// The /twilio WebSocket endpoint: admission (drain, capacity, calls per client, signature), one CallSession per
// stream.
import type { IncomingMessage } from "node:http";
import { performance } from "node:perf_hooks";
import type { Duplex } from "node:stream";
import { BusError, callIdOfSubject, errorText, NOT_MINE, subjects, type Subscription } from "@voicebot/bus";
import { CallEnded, CallerAudio, CallerAudioReplayRequest, CancelTurn, DialogInput, ReadinessRequest, ReadinessResponse } from "@voicebot/proto";
import { WebSocketServer } from "ws";
import { clientAddress } from "./client-address.js";
import { callEndMessages, CallSession, STREAM_LEASE, type SessionDeps } from "./session.js";
import { loggedUrls, signedUrls, validTwilioSignature } from "./signature.js";

/** Calls whose lost stream one replica ends at a time, and the lock that keeps two replicas from ending one call. */
const SWEEP_PARALLEL = 10;
/** While draining, how often streams that started since are looked at for a hand-over. */
const DRAIN_RECHECK_MS = 250;
const SWEEP_LOCK = "stream-sweep";

export class TwilioEndpoint {
  private readonly wss: WebSocketServer;
  private readonly sessions = new Set<CallSession>();
  private readonly idleWaiters: Array<() => void> = [];
  /** Live streams per client address (only kept when INGRESS_MAX_CALLS_PER_CLIENT is set). */
  private readonly perClient = new Map<string, number>();
  /** Refusals are counted each time but logged at most once a second per reason (a flood must not flood logs). */
  private readonly refusalLog = new Map<string, { at: number; suppressed: number }>();
  private draining = false;
  private readonly pinger: NodeJS.Timeout;
  private readonly replays: Subscription;

  constructor(private readonly deps: SessionDeps) {
    // Every stream is pinged a few times within the silence that drops it (see CallSession.checkAlive).
    const silentMs = deps.config.deadSocketMs;
    this.pinger = setInterval(() => {
      const now = performance.now();
      for (const session of this.sessions) session.checkAlive(now, silentMs);
    }, Math.max(250, Math.floor(Math.min(silentMs, deps.config.mediaTimeoutMs || Infinity) / 4))).unref();
    // Every replica hears every replay request (they are rare: an asr takeover); the one streaming the call answers.
    this.replays = deps.bus.serve(subjects.callerAudioReplayAll, CallerAudioReplayRequest, CallerAudio, async (request, delivery) => this.replay(request, delivery.subject), {
      name: "caller-audio-replay",
    });
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: deps.config.maxMessageBytes,
      perMessageDeflate: false,
      clientTracking: false,
    });
  }

  private replay(request: CallerAudioReplayRequest, subject: string): CallerAudio | typeof NOT_MINE {
    const callId = callIdOfSubject(subject);
    const session = callId === undefined ? undefined : this.deps.liveCalls.holder(callId);
    if (!session) return NOT_MINE;
    const { metrics, log } = this.deps;
    const fromFrame = Number(request.fromFrame);
    const audio = session.recentCallerAudio(fromFrame);
    metrics.callerAudioReplays.inc({ result: audio.frameCount > 0 ? "sent" : "none_kept" });
    metrics.callerAudioReplayedFrames.inc(audio.frameCount);
    log.info("caller audio sent again for an asr takeover", { callId, fromFrame, firstFrame: Number(audio.firstFrame), frames: audio.frameCount });
    return audio;
  }

  /** Live streams (calls in progress, plus sockets waiting for their `start`). */
  get activeCalls(): number {
    return this.sessions.size;
  }

  readonly handleUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    socket.on("error", () => undefined); // a peer resetting mid-handshake is not our error
    const { config } = this.deps;
    if (this.draining) return this.reject(socket, 503, "Service Unavailable", "draining");
    if (config.maxCalls > 0 && this.sessions.size >= config.maxCalls) return this.reject(socket, 503, "Service Unavailable", "at_capacity");
    const client = clientAddress(req, config);
    const limitPerClient = config.maxCallsPerClient;
    if (limitPerClient > 0 && (this.perClient.get(client) ?? 0) >= limitPerClient) {
      return this.reject(socket, 429, "Too Many Requests", "client_limit", { client, limit: limitPerClient });
    }
    if (config.validateSignature) {
      const urls = signedUrls(req, config.publicStreamUrl);
      const header = req.headers["x-twilio-signature"];
      const signature = typeof header === "string" ? header : undefined;
      if (!urls.some((url) => validTwilioSignature(config.authToken!, url, signature))) {
        return this.reject(socket, 403, "Forbidden", "bad_signature", { urls: loggedUrls(urls), client });
      }
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const session = new CallSession(ws, this.deps, client, req.headers.host);
      this.sessions.add(session);
      if (limitPerClient > 0) this.perClient.set(client, (this.perClient.get(client) ?? 0) + 1);
      void session.finished.then(() => {
        this.sessions.delete(session);
        if (limitPerClient > 0) {
          const left = (this.perClient.get(client) ?? 1) - 1;
          if (left > 0) this.perClient.set(client, left);
          else this.perClient.delete(client);
        }
        if (this.sessions.size === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
      });
    });
  };

  private keepingStreams = false;
  private sweeping = false;
  /**
   * When keeping the streams last failed (Redis away). Lapsed leases are swept only once Redis has answered for a
   * whole lease: right after an outage every replica's leases look lapsed until it has renewed them.
   */
  private renewalFailedAt = Date.now();

  /**
   * Every few seconds, in one Redis round trip: renews this replica's stream lease of every live call and reads
   * each call's state. A record that vanished (Redis restarted empty, or failed over to a replica that lacked it) is
   * written and the call announced again; a call another stream took over, or that ended elsewhere, stops here.
   * Then the calls whose stream lease lapsed are ended (sweepLostStreams).
   */
  async keepStreams(): Promise<void> {
    if (this.keepingStreams) return;
    this.keepingStreams = true;
    const { store, config, instanceId } = this.deps;
    try {
      const live = new Map<string, CallSession>();
      for (const session of this.sessions) {
        const callId = session.recordExpected;
        if (callId) live.set(callId, session);
      }
      const renewals = await store.renewLeases([...live.keys()], STREAM_LEASE, instanceId, config.streamLeaseMs);
      for (const renewal of renewals) {
        const session = live.get(renewal.callId)!;
        if ("error" in renewal) continue;
        if (renewal.call === undefined) session.reannounce();
        else if (renewal.call === "ended") session.endedElsewhere();
        else if (!renewal.held) session.superseded();
      }
      // Apart from the renewals: a long sweep (probes, publishes during a NATS election) must not hold them up.
      if (!this.sweeping && Date.now() - this.renewalFailedAt > config.streamLeaseMs) {
        this.sweeping = true;
        const streamingHere = new Set(live.keys());
        void this.sweepLostStreams(streamingHere)
          .catch((error) => {
            this.renewalFailedAt = Date.now();
            this.deps.log.warn("looking for lost streams failed", { error: errorText(error) });
          })
          .finally(() => (this.sweeping = false));
      }
    } catch (error) {
      this.renewalFailedAt = Date.now();
      throw error;
    } finally {
      this.keepingStreams = false;
    }
  }

  /**
   * Ends the live calls no stream carries any more: their stream lease lapsed (their ingress died, or their stream
   * closed without `stop` and no new stream took the call up within the lease). Every stage drops the call, as when
   * the caller hangs up. One replica ends each (under a lock of its own, SWEEP_LOCK). A call whose ingress still
   * answers for its stream is left alone: that replica only lost Redis for a while, and renews when it is back.
   */
  private async sweepLostStreams(streamingHere: Set<string>): Promise<void> {
    const lapsed = (await this.deps.store.orphanedCalls(STREAM_LEASE)).filter((callId) => !streamingHere.has(callId));
    for (let i = 0; i < lapsed.length; i += SWEEP_PARALLEL) {
      await Promise.all(lapsed.slice(i, i + SWEEP_PARALLEL).map((callId) => this.endLostStream(callId)));
    }
  }

  private async endLostStream(callId: string): Promise<void> {
    const { store, bus, log, metrics, instanceId } = this.deps;
    // One sweeper per call, by a lock of its own: never the stream lease (its replica would take that for a newer
    // stream and stop).
    const sweeper = `${instanceId}:sweeper`;
    try {
      if (!(await store.acquireLease(callId, SWEEP_LOCK, sweeper, 30_000, { index: false }))) return;
      try {
        if (await this.streamAnswers(callId)) {
          log.warn("a call's stream lease lapsed but its ingress still answers for it (it lost Redis for a while): left to it", { callId });
          return;
        }
        // A stream that resumed the call meanwhile holds the lease again: it is not lost.
        if ((await store.leaseOwner(callId, STREAM_LEASE)) !== undefined) return;
        if ((await store.callState(callId)) !== "live") {
          await store.forgetLease(callId, STREAM_LEASE);
          return;
        }
        // The record first: a stream that comes now finds the call ended and closes; then every stage lets it go.
        // Not if a stream took the call up since the checks above (the same script checks the lease).
        const reason = "stream_lost";
        const endedAtMs = Date.now();
        if (!(await store.endCallUnlessLeased(callId, STREAM_LEASE, reason, new Date(endedAtMs)))) return;
        bus.publish(subjects.cancel(callId), CancelTurn, CancelTurn.create({ callId, turnId: "", reason }), callId);
        const { ended, input } = callEndMessages(callId, reason, endedAtMs);
        bus.publish(subjects.ended(callId), CallEnded, ended, callId);
        metrics.lostStreams.inc();
        log.warn("call ended: no stream carries it any more (its ingress died, or it was not resumed in time)", { callId, reason });
        await bus.publishDurable(subjects.dialogInput(callId), DialogInput, input, input.inputId, callId);
      } finally {
        await store.releaseLease(callId, SWEEP_LOCK, sweeper, { index: false });
      }
    } catch (error) {
      log.warn("ending a call whose stream was lost failed; tried again next round", { callId, error: errorText(error) });
    }
  }

  /** Whether an ingress replica answers for the call's stream within a second (one that froze does not). */
  private async streamAnswers(callId: string): Promise<boolean> {
    try {
      await this.deps.bus.request(subjects.stream(callId), ReadinessRequest, ReadinessRequest.create({ from: this.deps.instanceId }), ReadinessResponse, 1_000, callId);
      return true;
    } catch (error) {
      if (error instanceof BusError && (error.code === "no_responders" || error.code === "timeout")) return false;
      throw error;
    }
  }

  /**
   * Refuses new streams, hands every resumable call over to another replica (see CallSession.handOver), and
   * resolves once every live call has left or ended.
   */
  async drain(): Promise<void> {
    this.draining = true;
    if (this.sessions.size === 0) return;
    const idle = new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    const askedToLeave = new Set<CallSession>();
    const handOverResumable = () => {
      for (const session of this.sessions) {
        if (askedToLeave.has(session) || !session.canHandOver) continue;
        askedToLeave.add(session);
        void session.handOver(this.deps.config.handoverWaitMs);
      }
    };
    handOverResumable();
    // A stream accepted just before the drain gets its `start`, and with it a resumable call, only afterwards.
    const latecomers = setInterval(handOverResumable, DRAIN_RECHECK_MS);
    await idle;
    clearInterval(latecomers);
  }

  /** Ends whatever is still live (after a drain timeout) and closes the endpoint. */
  async close(): Promise<void> {
    this.draining = true;
    clearInterval(this.pinger);
    this.replays.unsubscribe();
    await Promise.all([...this.sessions].map((session) => session.shutdown("ingress_shutdown")));
    this.wss.close();
  }

  private reject(socket: Duplex, status: number, text: string, reason: string, fields: Record<string, unknown> = {}): void {
    this.deps.metrics.rejectedStreams.inc({ reason });
    const now = Date.now();
    const seen = this.refusalLog.get(reason);
    if (seen && now - seen.at < 1_000) seen.suppressed++;
    else {
      const suppressed = seen?.suppressed ?? 0;
      this.refusalLog.set(reason, { at: now, suppressed: 0 });
      this.deps.log[reason === "draining" ? "info" : "warn"]("stream refused", {
        reason,
        status,
        ...fields,
        ...(suppressed > 0 ? { suppressedSinceLast: suppressed } : {}),
      });
    }
    const body = JSON.stringify({ error: reason });
    socket.end(
      `HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  }
}
