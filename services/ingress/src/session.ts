// One Twilio media stream = one call: forwards caller audio and keys to the pipeline, plays the bot's audio back,
// and acts on call controls. Everything that goes wrong with one stream stays inside its session.
import { performance } from "node:perf_hooks";
import { dialogTurnNumber, errorText, OVERTAKEN_CANCEL_REASON, subjects, type Bus, type Codec, type Logger, type Subscription } from "@voicebot/bus";
import { retryWhileLinkLost } from "@voicebot/service-kit";
import {
  AudioEncoding,
  BotAudio,
  CallControl,
  CallControl_Action,
  CallEnded,
  CallerAudio,
  CallStarted,
  CancelTurn,
  DialogInput,
  FalseInterruption,
  KeypadPress,
  NoInput,
  PlaybackEvent,
  PlaybackEvent_Kind,
  ReadinessRequest,
  ReadinessResponse,
  SpeechActivity,
  SpeechActivity_Kind,
  SynthesisFailed,
  Transcript,
} from "@voicebot/proto";
import { keys, type CallCreation, type CallMeta, type CallStore } from "@voicebot/state";
import WebSocket, { type RawData } from "ws";
import { actOnMachine, isMachine, isOnMachine, type OnMachine } from "./amd-callback.js";
import { callerAudioCodec } from "./caller-audio-codec.js";
import { isValidAgent, parseBool, type IngressConfig } from "./config.js";
import { ProtocolErrorReporter, RateLimiter } from "./guard.js";
import { RecentCallerAudio } from "./recent-audio.js";
import { InboundJitterBuffer, type JitterSink } from "./jitter.js";
import type { IngressMetrics } from "./metrics.js";
import { NoInputTimer } from "./no-input.js";
import { isNoSilenceTurn, NO_SILENCE_TURN_PREFIX, SilenceGuard, type InputEnd } from "./no-silence.js";
import { CallPlayout, type PlayoutListener, type PlayoutOutput } from "./playout.js";
import { callerAudioBatch } from "./publish-batch.js";
import { SilenceBatcher, type CallerAudioBlock } from "./silence-batch.js";
import type { Pacer, PlayoutScheduler } from "./scheduler.js";
import { MULAW_SILENCE } from "@voicebot/audio";
import { FRAME_BYTES, type SkipReason, type TurnState } from "./turn-queue.js";
import { RESUMABLE_PARAM, RESUME_PARAM, resumeUrl, STARTED_AT_PARAM } from "./resume.js";
import { publicHost, webhookOrigin } from "./voice-webhook.js";
import { turnLatency } from "./turn-record.js";
import {
  clearMessage,
  markMessage,
  MediaMessages,
  parseInbound,
  ProtocolError,
  type DtmfMessage,
  type InboundMessage,
  type MediaMessage,
  type StartMessage,
} from "./twilio.js";
import { dialTwiml, digitsPlayMs, HANGUP_TWIML, playDigitsTwiml, type TwilioRestClient } from "./twilio-rest.js";

export interface SessionDeps {
  bus: Bus;
  store: CallStore;
  log: Logger;
  metrics: IngressMetrics;
  config: IngressConfig;
  scheduler: PlayoutScheduler;
  /** Set when Twilio REST credentials are configured. */
  twilioApi: TwilioRestClient | undefined;
  liveCalls: LiveCalls;
  /** This replica's name on the stream leases it holds. */
  instanceId: string;
}

/**
 * Call ids streaming through this process. Twilio opens one bidirectional stream per call, so a second `start`
 * for a live call id is someone else's: refused, or it would inject audio into that call and end it.
 */
export class LiveCalls {
  private readonly owners = new Map<string, CallSession>();

  claim(callId: string, owner: CallSession): boolean {
    const current = this.owners.get(callId);
    if (current && current !== owner) return false;
    this.owners.set(callId, owner);
    return true;
  }

  release(callId: string, owner: CallSession): void {
    if (this.owners.get(callId) === owner) this.owners.delete(callId);
  }

  holder(callId: string): CallSession | undefined {
    return this.owners.get(callId);
  }
}

const MULAW_8K = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };
/** End reasons on the caller's side: the call's work is cancelled with reason "hangup". */
const CALLER_END_REASONS = new Set(["caller_hangup", "stream_closed"]);
/** Every message to Twilio is a text frame, strings and the Buffers of `media` messages alike. */
const TEXT_FRAME = { binary: false };
/** The lease role of the ingress replica streaming a call (renewed by the endpoint, see keepStreams). */
export const STREAM_LEASE = "stream";
const FRAME_MS = 20;
/** A resumed stream's start naming a call older than this is not believed (see STARTED_AT_PARAM). */
const MAX_CALL_AGE_MS = 24 * 3_600_000;
/** Caller frames held while a resumed stream's frame offset is looked up: 10 s, far beyond a Redis round trip. */
const MAX_FRAMES_BEFORE_OFFSET = 500;
/** Control messages (not media) a stream may send a second past the message rate limit: marks, keys, stop. */
const CONTROL_MESSAGES_PER_SEC = 50;
/** How long the end of a call is retried while Redis is unreachable, before its resumable stream closes anyway. */
const END_RECORD_RETRY_MS = 10_000;
/** The fallback line's deadline ran out while the caller spoke: whether they stopped is looked at again this often. */
const SILENCE_RECHECK_MS = 250;

/** The call's end as every stage hears it: CallEnded, and the dialog's input (msgId `<id>:end`, stored once). */
export function callEndMessages(callId: string, reason: string, endedAtMs: number): { ended: CallEnded; input: DialogInput } {
  const ended = CallEnded.create({ callId, reason, endedAtMs });
  return { ended, input: DialogInput.create({ callId, inputId: `${callId}:end`, atMs: endedAtMs, input: { $case: "callEnded", value: ended } }) };
}

export class CallSession {
  private callSid: string | undefined;
  private streamSid = "";
  /** Set at start: where the caller's audio goes, and the bot's `media` messages of this stream. */
  private callerAudioSubject = "";
  private mediaMessages: MediaMessages | undefined;
  private log: Logger;
  private playout: CallPlayout | undefined;
  private readonly subs: Subscription[] = [];
  private jitter: InboundJitterBuffer | undefined;
  /** After the jitter buffer: the caller's quiet stretches go out several frames to a message. */
  private callerAudio: SilenceBatcher | undefined;
  /** The caller's last seconds as published, for an asr replica that takes the call over (recent-audio.ts). */
  private recentAudio: RecentCallerAudio | undefined;
  /** Pumps the jitter buffer from the shared scheduler while it holds frames. */
  private readonly jitterPacer: Pacer = { pump: (now) => this.jitter?.pump(now) ?? false };
  private bargeIn = true;
  /** A speech onset waiting out BARGE_IN_MIN_SPEECH_MS before it cuts the bot off. */
  private pendingBargeIn: { utteranceId: string; timer: NodeJS.Timeout } | undefined;
  /** Utterances whose end (STOPPED) armed the no-silence deadline: their final must not arm it again. */
  private readonly speechEndsArmed = new Set<string>();
  /** The last barge-in by speech: which utterance cut which bot turn (it may turn out to be a cough). */
  private speechCut: { utteranceId: string; turnId: string } | undefined;
  private startedAtMs = 0;
  /** Dialog turns numbered below this were superseded (CallControl CLEAR with `beforeTurnId`): their audio is dropped. */
  private supersededBelow = 0;
  /** The highest dialog turn number whose audio has come (its first part). */
  private latestDialogTurn = 0;
  /** Superseded turns already cancelled for tts (once each). */
  private readonly supersededCancelled = new Set<string>();
  /**
   * Twilio's `<Redirect>` after our `<Connect>` brings a stream that closed without `stop` back to the voice webhook,
   * which resumes the call on a new stream: such a close leaves the call live (detach) instead of ending it.
   */
  private resumable = false;
  /** Which resume of its call this stream is (0: the call's first stream). */
  private resumeCount = 0;
  /** Where the voice webhook is, for TwiML that brings the call back to a new stream (undefined: unknown). */
  private readonly webhookOrigin: string | undefined;
  /** The call was redirected to play keypad tones and comes back on a new stream: the `stop` that follows ends only this stream. */
  private redirectedForTones = false;
  /** SEND_DTMF is under way (waiting for its turn to play, or for the REST API): a hand-over waits for it. */
  private tonesPending = false;
  /** How long the keypad tones of the redirect take to play (see digitsPlayMs). */
  private tonesMs = 0;
  /** A transfer the voice webhook carries out after the stream closes (no Twilio REST credentials): its target. */
  private transferTo: string | undefined;
  /** Added to Twilio's chunk numbers: a resumed stream counts from 1 again, the call's frames go on. */
  private frameOffset = 0;
  /**
   * A resumed stream's caller frames while its frame offset is not known yet (its record look-up is under way):
   * numbered from 0 they would be behind the call's frames, and the asr would drop them as repeats.
   */
  private framesBeforeOffset: Array<{ frame: number; payload: Buffer; frameCount: number; receivedAtMs: number; concealed: boolean }> | undefined;
  /**
   * 20 ms frames in one media chunk of this stream, from its first one: 1 for Twilio. A client that sends longer
   * chunks (40 ms, 100 ms) has each placed as that many frames of the timeline, by its chunk number.
   */
  private framesPerChunk = 0;
  private endReason: string | undefined;
  private ended = false;
  private ending: Promise<void> | undefined;
  private finalActionPending = false;
  /** Ordered async work of this call (record writes, durable inputs), so start < keys < end everywhere. */
  private tasks: Promise<void> = Promise.resolve();
  private readonly limiter: RateLimiter;
  private readonly keyLimiter: RateLimiter;
  /** Past the message rate limit, Twilio's few control messages (mark echoes, keys, stop) still pass, at this rate. */
  private readonly controlLimiter: RateLimiter;
  private readonly errors: ProtocolErrorReporter;
  private readonly startTimer: NodeJS.Timeout;
  private lastPublishErrorLog = 0;
  /** When Twilio's side last answered a ping (it reads what we send): see checkAlive. */
  private lastPongAt = performance.now();
  /** Twilio sends `media` every 20 ms for the whole call, silence included. */
  private lastMediaAt = performance.now();
  /**
   * The highest chunk number of this stream's caller audio passed on so far (an unnumbered chunk is the next one):
   * what the jitter buffer forwarded, so a bogus number it dropped does not carry the count away.
   */
  private latestChunk = 0;
  private unnumberedMediaSeen = false;
  /** Keys of a client that numbers no message, counted on this stream. */
  private unnumberedKeys = 0;
  private closeCode: number | undefined;
  /** Plays the fallback line when the pipeline leaves an input unanswered. */
  private guard: SilenceGuard | undefined;
  private noInput: NoInputTimer | undefined;
  /** The caller's utterance the asr said STARTED for and no STOPPED yet (its final ends it if the STOPPED was lost). */
  private openUtterance: string | undefined;
  private noInputs = 0;
  private fallbacks = 0;
  /** What announced the call (kept to announce it again if its record vanishes). */
  private announcement: { meta: CallMeta; callStarted: CallStarted } | undefined;
  /** The call's record was written (or tried) at start: from then on a missing record means Redis lost it. */
  private announced = false;
  private reannouncing = false;
  private restarts = 0;
  private resolveFinished!: () => void;
  /** Resolves once the stream is over and the call's end has been published and recorded. */
  readonly finished = new Promise<void>((resolve) => (this.resolveFinished = resolve));

  constructor(
    private readonly ws: WebSocket,
    private readonly deps: SessionDeps,
    remote: string,
    host?: string,
  ) {
    this.log = deps.log.child({ remote });
    // The voice webhook is on the origin Twilio reached this stream on (as the webhook's own TwiML builds it).
    this.webhookOrigin = webhookOrigin(deps.config, publicHost(host));
    this.errors = new ProtocolErrorReporter(this.log, deps.metrics);
    this.limiter = new RateLimiter(deps.config.maxMessagesPerSecond, deps.config.messageBurst, performance.now());
    this.keyLimiter = new RateLimiter(deps.config.maxKeysPerSecond, 2 * deps.config.maxKeysPerSecond, performance.now());
    this.controlLimiter = new RateLimiter(CONTROL_MESSAGES_PER_SEC, 2 * CONTROL_MESSAGES_PER_SEC, performance.now());
    ws.on("message", (data, isBinary) => this.onMessage(data, isBinary));
    ws.on("pong", () => (this.lastPongAt = performance.now()));
    ws.on("close", (code) => {
      this.closeCode = code;
      // No `stop` and not ended by us: Twilio's side went away (our process restarting, the network). The call
      // resumes on a new stream when this one was resumable; the stream sweeper ends it if none comes.
      if (this.resumable && this.endReason === undefined) void this.detach("the stream closed without stop");
      else void this.end(this.endReason ?? "stream_closed");
    });
    ws.on("error", (error: Error & { code?: string }) => {
      const oversized = error.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH";
      this.errors.report(oversized ? "oversized_message" : "websocket_error", error.message, performance.now(), { code: error.code });
    });
    this.startTimer = setTimeout(() => {
      if (this.callSid || this.ended) return;
      this.errors.report("start_timeout", `no start within ${deps.config.startTimeoutMs} ms`, performance.now());
      this.close(1008, "no start");
    }, deps.config.startTimeoutMs);
  }

  /** Ends the call from our side (shutdown after a drain timeout); a resumable call is handed over instead. */
  shutdown(reason: string): Promise<void> {
    if (this.resumable && this.endReason === undefined) return this.handOverNow(reason);
    this.endReason ??= reason;
    this.close(1001, reason);
    return this.end(this.endReason);
  }

  private get streamAlive(): ReadinessResponse {
    return ReadinessResponse.create({ service: "ingress", instance: this.deps.instanceId, activeCalls: 1 });
  }

  /**
   * A socket whose peer vanished without a close (a half-open TCP link: a network path gone, a crashed proxy) would
   * hold its call forever, renewing the stream lease; one whose peer still sends but no longer reads (a stuck client)
   * would pile the bot's audio up in this process without bound. Every WebSocket peer that reads answers a ping: one
   * that has answered none for `silentMs` is dropped, however much it sends (the call then resumes or ends as for
   * any close).
   */
  checkAlive(now: number, silentMs: number): void {
    if (this.ending) return;
    const mediaTimeoutMs = this.deps.config.mediaTimeoutMs;
    if (this.callSid && mediaTimeoutMs > 0 && now - this.lastMediaAt > mediaTimeoutMs) {
      // Alive (it answers pings) but no audio: a call nobody can hear, that no silence prompt will end either.
      this.errors.report("media_timeout", `no media for ${Math.round((now - this.lastMediaAt) / 1000)} s; ending the call`, now);
      this.finish("media_timeout");
      return;
    }
    if (now - this.lastPongAt > silentMs) {
      const unsentBytes = this.ws.bufferedAmount;
      this.errors.report("dead_socket", `pings unanswered for ${Math.round((now - this.lastPongAt) / 1000)} s: the peer reads nothing`, now, { closing: "terminate", unsentBytes });
      this.ws.terminate();
      return;
    }
    try {
      this.ws.ping();
    } catch {
      /* not open (closing): its close event ends the session */
    }
  }

  /** Whether a draining ingress can hand this call over to another replica (see handOver). */
  get canHandOver(): boolean {
    return this.resumable && this.endReason === undefined && !this.ended;
  }

  /**
   * Hands the call over to another ingress replica: at a quiet moment (the bot's audio all heard, the caller not in
   * an utterance, no hang-up pending), or after `maxWaitMs` anyway, the stream closes with 1001; Twilio's
   * `<Redirect>` then brings the call back through the voice webhook to a replica that is not draining.
   */
  async handOver(maxWaitMs: number): Promise<void> {
    const deadline = Date.now() + maxWaitMs;
    await this.tasks; // a call that just started is announced (its record written) before it is handed over
    // Quiet: nothing unheard, the caller not mid-utterance, no answer on its way (the caller's input ended and no turn
    // began since: its audio would reach no stream), and never with a hang-up or transfer pending (it would be lost).
    const busy = () =>
      this.playout?.hasPendingAudio === true || this.callerAudio?.callerSpeaking === true || this.guard?.armed === true;
    // Nor while keypad tones are on their way: closed before Twilio has the tones' TwiML, the old TwiML's <Redirect>
    // would resume the call elsewhere, whose stream the tones' `stop` then ends as a hang-up. Once Twilio has it,
    // its `stop` is waited for (the tones' own redirect moves the call), for as long as a quiet moment would be.
    const leaving = () => this.redirectedForTones && Date.now() < deadline;
    while (!this.ended && (this.finalActionPending || this.tonesPending || leaving() || (busy() && Date.now() < deadline))) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    if (!this.ended && this.endReason === undefined) await this.handOverNow("handover");
    await this.finished;
  }

  private async handOverNow(why: string): Promise<void> {
    if (this.ending) return this.ending;
    this.deps.metrics.handovers.inc();
    const callId = this.callSid;
    // The stream that resumes the call must not take this for a cut line (see resumeCall).
    if (callId && this.announced) await this.storeOp("mark_handover", () => this.deps.store.markHandover(callId, this.noInput?.currentWaitMs));
    return this.closeAndDetach(1001, why, why === "handover" ? "handed over to another ingress replica" : why);
  }

  /** Another stream took the call over (a resume elsewhere): this one stops without ending the call. */
  superseded(): void {
    if (!this.ending) void this.closeAndDetach(1000, "superseded", "another stream took the call over");
  }

  /** The call ended elsewhere (the stream sweeper, a status callback) while this stream was up: it stops. */
  endedElsewhere(): void {
    if (!this.ending) void this.closeAndDetach(1000, "call_ended", "the call's record says it ended");
  }

  /** Closes the socket and leaves the call as it is (see detach). */
  private closeAndDetach(code: number, closeReason: string, why: string): Promise<void> {
    this.close(code, closeReason);
    return this.detach(why);
  }

  // ---- Twilio -> us ----

  private onMessage(data: RawData, isBinary: boolean): void {
    // Once this side is closing the socket, nothing the peer still sends counts: a start after a refused one must
    // not become a call (ws goes on delivering messages until the close handshake ends).
    if (this.ws.readyState !== WebSocket.OPEN) return;
    try {
      this.handleMessage(data, isBinary);
    } catch (error) {
      // A bug triggered by one message must not take the process (and every other call) down.
      this.log.error("handling a twilio message failed", { error: errorText(error) });
    }
  }

  private handleMessage(data: RawData, isBinary: boolean): void {
    const now = performance.now();
    // Twilio's backlog after a network stall comes at once, over the limit: its media may be dropped (the jitter
    // buffer conceals the gap), but not a mark echo (what the caller heard), a key or the stop among it. So a
    // message over the limit that is not media as Twilio writes it gets a second chance on a small bucket of its
    // own (and is dropped after parsing if it was media after all).
    const overLimit = !this.limiter.take(now);
    if (overLimit && (isBinary || looksLikeMedia(data) || !this.controlLimiter.take(now))) {
      if (this.limiter.flooding && !this.ending) {
        this.errors.report("flood", `over twice the message rate limit for seconds on end; closing the stream`, now);
        this.finish("flood", 1008);
        return;
      }
      this.errors.report("rate_limited", "message rate above the limit; message dropped", now);
      return;
    }
    if (isBinary) {
      this.errors.report("binary_frame", "binary frames are not part of the protocol", now);
      return;
    }
    let message: InboundMessage;
    try {
      message = parseInbound(rawText(data), { maxMediaBytes: this.deps.config.maxMediaBytes });
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error; // a bug, logged by onMessage
      // A bad second start must not end a call that is already running.
      const fatal = error.fatal && !this.callSid;
      this.errors.report(error.reason, error.message, now, fatal ? { closing: 1008 } : {});
      if (fatal) this.close(1008, error.reason);
      return;
    }
    if (overLimit && message.event === "media") {
      this.errors.report("rate_limited", "message rate above the limit; message dropped", now);
      return;
    }
    if (this.ended) return;
    switch (message.event) {
      case "connected":
        this.log.debug("twilio connected");
        return;
      case "start":
        this.onStart(message);
        return;
      case "media":
        this.onMedia(message, now);
        return;
      case "dtmf":
        this.onDtmf(message, now);
        return;
      case "mark":
        if (!this.playout) return this.errors.report("event_before_start", "mark before start", now);
        if (this.foreignStream("mark", message.streamSid, now)) return;
        if (!this.playout.markEchoed(message.name)) this.log.debug("mark echo ignored (cleared or unknown)", { mark: message.name });
        return;
      case "stop":
        if (this.streamSid && this.foreignStream("stop", message.streamSid, now)) return;
        if (this.redirectedForTones && this.endReason === undefined) {
          // Twilio left the stream to play our tones; its <Redirect> brings the call back on a new stream. The stream
          // lease, no longer renewed here, is made to outlast the tones: the sweeper would end a long string's call.
          this.close(1000, "stop");
          const { store, config, instanceId } = this.deps;
          const callId = this.callSid!;
          // Only while still this replica's (the new stream may already have taken it), and at once, not after the
          // call's other record writes.
          void this.storeOp("extend_stream_lease", async () => void (await store.acquireLease(callId, STREAM_LEASE, instanceId, config.streamLeaseMs + this.tonesMs)));
          void this.detach("the call was redirected to play keypad tones; it comes back on a new stream");
          return;
        }
        this.endReason ??= "caller_hangup";
        this.close(1000, "stop");
        void this.end(this.endReason);
        return;
    }
  }

  private onStart(start: StartMessage): void {
    const now = performance.now();
    if (this.callSid) return this.errors.report("duplicate_start", "second start on one stream ignored", now);
    // A resume that reaches the replica still holding the call's old stream (a half-open socket it never saw close):
    // the new stream is Twilio's, the old one is gone.
    const holder = this.deps.liveCalls.holder(start.callSid);
    if (start.customParameters[RESUME_PARAM] !== undefined && holder !== undefined && holder !== this) holder.superseded();
    if (!this.deps.liveCalls.claim(start.callSid, this)) {
      this.errors.report("call_already_streaming", `call ${start.callSid} already has a live stream here`, now, { closing: 1008 });
      this.close(1008, "call_already_streaming");
      return;
    }
    clearTimeout(this.startTimer);
    const callId = start.callSid;
    this.callSid = callId;
    this.lastMediaAt = performance.now();
    this.streamSid = start.streamSid;
    this.callerAudioSubject = subjects.callerAudio(callId);
    this.mediaMessages = new MediaMessages(start.streamSid);
    this.log = this.log.child({ callId, streamSid: start.streamSid });
    this.errors.setLogger(this.log);

    const { config, bus } = this.deps;
    const params = start.customParameters;
    let agent = config.defaultAgent;
    if (params.agent) {
      if (isValidAgent(params.agent)) agent = params.agent;
      else this.log.warn("invalid agent parameter ignored", { agent: params.agent.slice(0, 80), using: agent });
    }
    const startedAtMs = Date.now();
    this.startedAtMs = startedAtMs;
    const from = params.from ?? params.From ?? "";
    const to = params.to ?? params.To ?? "";
    this.bargeIn = config.bargeIn;
    if (params.bargeIn !== undefined) {
      const value = parseBool(params.bargeIn);
      if (value === undefined) this.log.warn("invalid bargeIn parameter ignored", { bargeIn: params.bargeIn.slice(0, 20), using: this.bargeIn });
      else this.bargeIn = value;
    }
    this.callerAudio = new SilenceBatcher(config.silenceBatch, (block) => this.publishCallerAudio(block));
    if (config.callerAudioReplayMs > 0) this.recentAudio = new RecentCallerAudio(Math.ceil(config.callerAudioReplayMs / FRAME_MS));
    this.jitter = new InboundJitterBuffer(config.inboundJitterMs, this.jitterSink);
    if (config.noSilenceDeadlineMs > 0 && config.noSilenceClip) {
      this.guard = new SilenceGuard(config.noSilenceDeadlineMs, (input, end) => this.onSilence(input, end));
    }
    // Always kept: an agent may set a wait for its states even where NO_INPUT_MS (the default) is 0.
    this.noInput = new NoInputTimer(config.noInputMs, (turnId, waitMs) => this.onNoInput(turnId, waitMs), () => this.playout?.hasPendingAudio === true);

    this.playout = new CallPlayout(
      { leadMs: config.playoutLeadMs, stallMs: config.playoutStallMs, aloneStallMs: config.playoutAloneStallMs },
      this.output,
      this.listener,
    );
    this.subs.push(
      bus.subscribe(subjects.botAudio(callId), BotAudio, (m) => this.onBotAudio(m), { name: "bot-audio", ordered: true }),
      bus.subscribe(subjects.ttsFailed(callId), SynthesisFailed, (m) => this.onSynthesisFailed(m), { name: "tts-failed" }),
      bus.subscribe(subjects.control(callId), CallControl, (m) => this.onControl(m), { name: "control" }),
      bus.subscribe(subjects.speech(callId), SpeechActivity, (m) => this.onSpeech(m), { name: "speech", ordered: true }),
      // The stream sweeper asks before it ends a call whose stream lease lapsed: this replica may only have lost Redis.
      bus.serve(subjects.stream(callId), ReadinessRequest, ReadinessResponse, async () => this.streamAlive, { name: "stream-probe" }),
    );
    // A final transcript is an input the dialog answers: the caller is there (no-input), and the no-silence deadline
    // runs if the speech's end did not start it.
    this.subs.push(bus.subscribe(subjects.transcript(callId), Transcript, (m) => this.onTranscript(m), { name: "transcript" }));

    const callStarted = CallStarted.create({
      callId,
      provider: "twilio",
      streamId: start.streamSid,
      accountId: start.accountSid,
      from,
      to,
      customParameters: params,
      callerFormat: MULAW_8K,
      botFormat: MULAW_8K,
      agent,
      startedAtMs,
    });
    const meta: CallMeta = {
      callSid: callId,
      provider: "twilio",
      streamSid: start.streamSid,
      agent,
      from,
      to,
      startedAt: new Date(startedAtMs).toISOString(),
    };
    this.resumable = params[RESUMABLE_PARAM] === "1";
    this.announcement = { meta, callStarted };
    const resume = params[RESUME_PARAM];
    const resumeCount = Number(resume);
    this.resumeCount = Number.isInteger(resumeCount) && resumeCount > 0 ? resumeCount : 0;
    if (resume !== undefined) {
      this.log.info("stream resumes a call", { agent, resume, tracks: start.tracks });
      // The voice webhook names when the call started: the frames go on from there at once. Without it, they wait for
      // the record (resumeCall).
      const callStartedAt = Number(params[STARTED_AT_PARAM]);
      if (Number.isInteger(callStartedAt) && callStartedAt <= startedAtMs && startedAtMs - callStartedAt <= MAX_CALL_AGE_MS) {
        this.frameOffset = this.framesSince(callStartedAt);
      } else {
        this.framesBeforeOffset = [];
      }
      this.enqueue(() => this.resumeCall(meta, callStarted, resume));
      return;
    }
    this.log.info("call started", { agent, tracks: start.tracks, bargeIn: this.bargeIn });
    this.enqueue(() => this.announceCall(meta, callStarted));
  }

  /** A new call: its record, this replica's stream lease, the asr's claim and the dialog's greeting. */
  private async announceCall(meta: CallMeta, callStarted: CallStarted): Promise<void> {
    const callId = meta.callSid;
    const created = await this.createRecord(meta);
    if (created === "ended") {
      // A call sid is used once: a new stream (not a resume) for a call that ended would be a call without a dialog.
      this.errors.report("call_ended", "a stream started for a call that has ended; closing it", Date.now());
      return void this.closeAndDetach(1008, "call_ended", "the call's record says it ended");
    }
    if (created === "live_elsewhere") {
      // Twilio brings a call back on a new stream only as a resume: a plain start for a call that is live on another
      // stream (of any replica) must not take it over.
      this.errors.report("call_already_streaming", `call ${callId} already has a live stream`, Date.now(), { closing: 1008 });
      return void this.closeAndDetach(1008, "call_already_streaming", "the call is live on another stream");
    }
    await this.takeStream(callId);
    this.publish(subjects.callStarted, CallStarted, callStarted, "call_started");
    await this.publishInput(
      DialogInput.create({ callId, inputId: `${callId}:start`, atMs: callStarted.startedAtMs, input: { $case: "callStarted", value: callStarted } }),
    );
    this.announced = true;
    const onMachine = callStarted.customParameters.onMachine;
    if (isOnMachine(onMachine)) await this.machineVerdictBeforeStream(callId, onMachine);
  }

  /**
   * A placed call's answering machine verdict can come before its stream starts (the verdict route then only records
   * it): the stream acts on it now, as the route would have. The dialog has the greeting first, which the voicemail
   * turn cuts off.
   */
  private async machineVerdictBeforeStream(callId: string, onMachine: OnMachine): Promise<void> {
    const { store, metrics, bus } = this.deps;
    let found: { answeredBy: string; detectionMs: number } | undefined;
    await this.storeOp("read_answered_by", async () => void (found = await store.machineVerdict(callId)));
    if (!found || !isMachine(found.answeredBy)) return;
    const { answeredBy, detectionMs } = found;
    const verdict = { callSid: callId, answeredBy, onMachine, detectionMs };
    try {
      const outcome = await actOnMachine(verdict, bus);
      // The verdict itself was counted when it came (amd_verdicts_total, before_stream).
      metrics.amdActionsAtStreamStart.inc({ answered_by: answeredBy, outcome });
      this.log.info("answering machine verdict that came before the stream acted on", { answeredBy, onMachine, detectionMs, outcome });
    } catch (error) {
      metrics.publishErrors.inc({ message: "dialog_answeredBy" });
      this.log.error("answering machine verdict could not be queued for the dialog", { answeredBy, error: errorText(error) });
    }
  }

  /**
   * A live call continues on this stream (its ingress died or handed it over): the record names this stream, this
   * replica takes the stream lease, and CallStarted lets an asr replica claim the call if its owner is gone too. The
   * dialog is not told: the conversation goes on where it was, without a second greeting.
   */
  private async resumeCall(meta: CallMeta, callStarted: CallStarted, resume: string): Promise<void> {
    const callId = meta.callSid;
    let found: Awaited<ReturnType<CallStore["resumeCall"]>> | undefined;
    try {
      found = await this.deps.store.resumeCall(callId, meta.streamSid);
    } catch (error) {
      this.deps.metrics.storeErrors.inc({ op: "resume_call" });
      this.log.error("could not look up the call to resume; resuming it anyway", {
        error: errorText(error),
        ...(this.framesBeforeOffset ? { frameOffset: "unknown: the caller's frames are numbered from 0 and the asr may take them for repeats" } : {}),
      });
    }
    if (this.ended) return void (this.framesBeforeOffset = undefined);
    if (found?.state === "ended") {
      // Ended meanwhile (the caller hung up during the gap, or the sweeper gave up on it): nothing to resume.
      this.framesBeforeOffset = undefined;
      this.deps.metrics.resumes.inc({ outcome: "call_ended" });
      this.log.warn("the call to resume has ended; closing the stream", { state: found.state });
      void this.closeAndDetach(1000, "call_ended", "the call had ended");
      return;
    }
    if (found && (found.state === undefined || found.state === "dialing")) {
      // Its record is gone (Redis lost it): start the call over, as for a record that vanishes mid-call. Or it never
      // started (its first stream did not connect): start it now.
      this.deps.metrics.resumes.inc({ outcome: "record_lost" });
      this.log.warn("the call to resume has no record; starting it over");
      // Frames already numbered from the start time the stream was given keep that numbering (never backwards).
      if (this.framesBeforeOffset) this.frameOffset = 0;
      this.forwardFramesBeforeOffset();
      await this.announceCall(meta, callStarted);
      return;
    }
    // The call's frames go on from where its first stream's clock says they are now: numbers never go back.
    const callStartedAt = found?.startedAt ? Date.parse(found.startedAt) : Number.NaN;
    if (this.framesBeforeOffset && Number.isFinite(callStartedAt)) this.frameOffset = this.framesSince(callStartedAt);
    this.forwardFramesBeforeOffset();
    await this.takeStream(callId);
    this.publish(subjects.callStarted, CallStarted, callStarted, "call_started");
    this.announced = true;
    this.deps.metrics.resumes.inc({ outcome: "resumed" });
    this.log.info("call resumed on this stream", { frameOffset: this.frameOffset, handedOver: found?.handedOver === true });
    const final = found?.finalAction;
    if (final) {
      // The bot had asked to hang up or transfer, and the stream that was to do it is gone (the message reached only
      // that one, or none): done now, as nothing is left to say (the dialog took the conversation as over).
      this.log.warn("the call resumes with the bot's hang-up or transfer still to do; doing it now", { action: final.action });
      const action = final.action === "hangup" ? CallControl_Action.ACTION_HANGUP : CallControl_Action.ACTION_TRANSFER;
      this.onControl(CallControl.create({ callId, action, target: final.target ?? "", reason: final.reason, afterTurnId: "" }));
      return;
    }
    if (found?.handedOver) {
      // Nothing was cut, but this stream's silence timer knows of no turn: it is started here.
      this.noInput?.resumedQuiet(found.noInputMs);
      return;
    }
    // The line was cut (its ingress died): whatever the bot was saying is lost, and a turn cut short never tells
    // the dialog it played, so nothing would start its wait for the caller. The dialog takes it as no input and
    // prompts the caller again rather than leave both sides waiting.
    await this.publishInput(
      DialogInput.create({ callId, inputId: `${callId}:resume:${resume}`, atMs: Date.now(), input: { $case: "noInput", value: NoInput.create({ turnId: "" }) } }),
    );
  }

  /** This replica streams the call now: the stream lease is its, whoever had it (a newer stream outranks an older). */
  private takeStream(callId: string): Promise<void> {
    const { store, config, instanceId } = this.deps;
    return this.storeOp("take_stream", () => store.takeLease(callId, STREAM_LEASE, instanceId, config.streamLeaseMs));
  }

  private onMedia(media: MediaMessage, now: number): void {
    const callId = this.callSid;
    if (!callId) return this.errors.report("media_before_start", "media before start dropped", now);
    this.lastMediaAt = now;
    if (this.foreignStream("media", media.streamSid, now)) return;
    if (media.track !== "inbound") return; // only the caller's side goes to recognition
    let chunk = media.chunk;
    if (chunk === 0) {
      // Not numbered (not Twilio, which numbers every chunk): the next one after the stream's latest, as it arrives.
      if (!this.unnumberedMediaSeen) {
        this.unnumberedMediaSeen = true;
        this.log.info("media without chunk numbers: taken in the order it arrives", { streamSid: this.streamSid });
      }
      chunk = this.latestChunk + 1;
    }
    const jitter = this.jitter!;
    if (this.framesPerChunk === 0) this.learnChunkLength(media.payload.length);
    const perChunk = this.framesPerChunk;
    if (perChunk === 1 && media.payload.length === FRAME_BYTES) {
      // Twilio: one 20 ms frame per chunk. In order: forwarded right here. Ahead of a gap: held, and the shared
      // scheduler closes the gap in time.
      if (jitter.push(chunk, media.payload, now, Date.now()) === "held") this.deps.scheduler.wake(this.jitterPacer);
      return;
    }
    let payload = media.payload;
    const chunkBytes = perChunk * FRAME_BYTES;
    if (payload.length !== chunkBytes) {
      // A chunk number is a fixed step of the caller's timeline: the payload is fitted to it (padded with silence or
      // cut) so the audio after it stays in place.
      this.errors.report("bad_payload_size", `media payload of ${payload.length} bytes, not ${chunkBytes}; fitted to ${perChunk * FRAME_MS} ms`, now);
      const fitted = Buffer.alloc(chunkBytes, MULAW_SILENCE);
      payload.copy(fitted, 0, 0, chunkBytes);
      payload = fitted;
    }
    const firstFrame = (chunk - 1) * perChunk + 1;
    const receivedAtMs = Date.now();
    let held = false;
    for (let i = 0; i < perChunk; i++) {
      held = jitter.push(firstFrame + i, payload.subarray(i * FRAME_BYTES, (i + 1) * FRAME_BYTES), now, receivedAtMs) === "held" || held;
    }
    if (held) this.deps.scheduler.wake(this.jitterPacer);
  }

  /** The 20 ms frames from the call's start (ms since the epoch) to this stream's: its frame offset. */
  private framesSince(callStartedAtMs: number): number {
    return Math.max(0, Math.round((this.startedAtMs - callStartedAtMs) / FRAME_MS));
  }

  /** The frames that came while the resumed call's frame offset was looked up, numbered with it now. */
  private forwardFramesBeforeOffset(): void {
    const waiting = this.framesBeforeOffset;
    if (!waiting) return;
    this.framesBeforeOffset = undefined;
    for (const { frame, payload, frameCount, receivedAtMs, concealed } of waiting) {
      this.callerAudio!.add(this.frameOffset + frame, payload, frameCount, receivedAtMs, concealed);
    }
  }

  /** The stream's chunk length, from its first media payload: whole 20 ms frames, at least one (see framesPerChunk). */
  private learnChunkLength(payloadBytes: number): void {
    this.framesPerChunk = Math.max(1, Math.round(payloadBytes / FRAME_BYTES));
    if (this.framesPerChunk > 1) {
      this.log.info("the caller's media chunks are longer than Twilio's 20 ms; each is placed as that many frames", {
        chunkMs: this.framesPerChunk * FRAME_MS,
        payloadBytes,
      });
    }
  }

  private readonly jitterSink: JitterSink = {
    forward: (chunk, payload, frameCount, receivedAtMs, concealed) => {
      this.latestChunk = Math.max(this.latestChunk, Math.ceil((chunk + frameCount - 1) / Math.max(1, this.framesPerChunk)));
      const waiting = this.framesBeforeOffset;
      if (!waiting) return this.callerAudio!.add(this.frameOffset + chunk - 1, payload, frameCount, receivedAtMs, concealed);
      if (waiting.length >= MAX_FRAMES_BEFORE_OFFSET) {
        this.deps.metrics.inboundDropped.inc({ reason: "offset_unknown" });
        return;
      }
      waiting.push({ frame: chunk - 1, payload: Buffer.from(payload), frameCount, receivedAtMs, concealed });
    },
    reordered: () => this.deps.metrics.inboundReordered.inc(),
    dropped: (reason) => {
      this.deps.metrics.inboundDropped.inc({ reason });
      if (reason === "implausible") this.errors.report("bad_chunk", "a media chunk numbered far ahead of the stream was dropped", performance.now());
      else this.log.debug("caller frame dropped", { reason });
    },
    gap: (missing, concealed) => {
      const { metrics } = this.deps;
      metrics.inboundMissing.inc(missing);
      if (concealed > 0) metrics.inboundConcealed.inc(concealed);
      this.log.debug("caller audio gap", { missingFrames: missing, concealedFrames: concealed });
    },
  };

  private publishCallerAudio(block: CallerAudioBlock): void {
    const { firstFrame, frameCount, payload, receivedAtMs, receivedFrames, batched, quiet } = block;
    const audio: CallerAudio = { callId: this.callSid!, firstFrame, frameCount, format: MULAW_8K, payload, receivedAtMs };
    this.recentAudio?.add(firstFrame, payload, receivedAtMs, quiet);
    const subject = this.callerAudioSubject;
    const counts = this.deps.metrics.media;
    // With every other call's frames of this event-loop turn: one socket write for all (see publish-batch.ts).
    callerAudioBatch.add(() => {
      // Without the call id header: the subject names the call, and a header costs every hop of the media path.
      if (!this.publish(subject, callerAudioCodec, audio, "caller_audio", false)) return;
      counts.framesIn.value += receivedFrames;
      if (batched) counts.batchedMessages.value++;
      else counts.singleMessages.value++;
    }, this.callerAudioFailed);
  }

  /**
   * The caller audio kept from `fromFrame` on, for the asr replica taking the call over (no frames when none is
   * kept). Frames published from now on reach it live: it subscribed before it asked.
   */
  recentCallerAudio(fromFrame: number): CallerAudio {
    const callId = this.callSid!;
    const recent = this.recentAudio?.since(fromFrame);
    if (!recent) return { callId, firstFrame: fromFrame, frameCount: 0, format: MULAW_8K, payload: Buffer.alloc(0), receivedAtMs: Date.now() };
    return { callId, format: MULAW_8K, ...recent };
  }

  private readonly callerAudioFailed = (error: unknown): void => this.log.error("publishing caller audio failed", { error: errorText(error) });

  /** A message naming another stream than this socket's: reported and dropped (a message without one is ours). */
  private foreignStream(event: string, streamSid: string | undefined, now: number): boolean {
    if (!streamSid || streamSid === this.streamSid) return false;
    this.errors.report("stream_sid_mismatch", `${event} for stream ${streamSid.slice(0, 40)}`, now);
    return true;
  }

  private onDtmf(dtmf: DtmfMessage, now: number): void {
    const callId = this.callSid;
    if (!callId) return this.errors.report("event_before_start", "dtmf before start dropped", now);
    if (this.foreignStream("dtmf", dtmf.streamSid, now)) return;
    if (!this.keyLimiter.take(now)) {
      return this.errors.report("key_flood", `more than ${this.deps.config.maxKeysPerSecond} keys a second; key dropped`, now);
    }
    // The caller's audio up to the key goes out before the key (quiet frames may be held back).
    this.callerAudio?.flush();
    // A key over the bot's prompt cuts it off, as a phone menu does (Twilio's <Gather> too); the dialog hears of
    // the cut turn before the key, as it does before the words of a caller who talked over it.
    if (this.bargeIn && this.playout?.hasPendingAudio) this.cutOff("keypad");
    const atMs = Date.now();
    // Sequence numbers start again on a resumed call's new stream: the stream id keeps its keys apart from the old one's.
    // A client that numbers no message has its keys counted here instead.
    // (with its stream's start time: such a client may reuse a stream id when the call goes on on a new stream).
    const inputId = `${callId}:dtmf:${this.streamSid}:${dtmf.sequenceNumber ?? `k${this.startedAtMs.toString(36)}.${++this.unnumberedKeys}`}`;
    // The digit itself is not logged: callers key in card and account numbers.
    this.log.info("keypad press", { inputId });
    if (this.guard) void this.keyPressed(callId, dtmf.digit, this.guard.inputEnd());
    this.noInput?.callerInput();
    this.enqueue(() =>
      this.publishInput(
        DialogInput.create({ callId, inputId, atMs, input: { $case: "keypad", value: KeypadPress.create({ callId, digit: dtmf.digit, atMs }) } }),
      ),
    );
  }

  /**
   * A key ends an entry the dialog answers, except a digit while the dialog collects digits silently (its hints
   * say mode "digits"; "#" and "*" end such an entry). Unreadable hints count as an answered key.
   */
  private async keyPressed(callId: string, digit: string, end: InputEnd): Promise<void> {
    if (digit !== "#" && digit !== "*") {
      const hints = await this.deps.store.getJson<{ mode?: unknown }>(keys.hints(callId)).catch(() => undefined);
      if (hints?.mode === "digits") {
        if (!this.ended) this.guard?.callerBusy(end);
        return;
      }
    }
    // Armed as of the key (`end`): a reply that began during the look-up counts, and the deadline runs from the key.
    if (!this.ended) this.guard?.inputEnded("keypad", end);
  }

  private onTranscript(transcript: Transcript): void {
    if (!transcript.isFinal || this.ended) return;
    // Armed at the speech's end already, unless that STOPPED never came (then from now).
    if (!this.speechEndsArmed.delete(transcript.utteranceId)) this.guard?.inputEnded("speech");
    if (transcript.utteranceId && transcript.utteranceId === this.openUtterance) {
      // Its STOPPED was lost (an asr handing the call over mid-utterance): the final says the caller stopped.
      this.openUtterance = undefined;
      this.callerAudio?.speechStopped();
      this.noInput?.callerSpeechStopped();
    } else {
      this.noInput?.callerInput();
    }
  }

  /**
   * The caller's speech ended and will become a transcript the dialog answers: the no-silence deadline runs from
   * here, so a slow or stalled recognizer counts against it too. A sound too short to be speech gets no answer.
   */
  private speechEnded(activity: SpeechActivity): void {
    if (!this.guard || activity.discarded || !activity.utteranceId) return;
    this.guard.inputEnded("speech");
    this.speechEndsArmed.add(activity.utteranceId);
    // Finals normally follow within seconds; a lost one must not keep its id forever.
    if (this.speechEndsArmed.size > 32) this.speechEndsArmed.delete(this.speechEndsArmed.values().next().value!);
  }

  /** Nobody has spoken for a while since the bot's turn `turnId`: the dialog prompts the caller again. */
  private onNoInput(turnId: string, waitMs: number): void {
    const callId = this.callSid;
    if (this.ended || !callId || this.finalActionPending) return;
    const n = ++this.noInputs;
    this.deps.metrics.noInputs.inc();
    this.log.info("caller silent after the bot's turn; asking the dialog to prompt again", { turnId, noInput: n, afterMs: waitMs });
    // The stream id keeps the ids of a resumed call's new stream apart from its old one's.
    const inputId = `${callId}:noinput:${this.streamSid}:${n}`;
    this.enqueue(() =>
      this.publishInput(DialogInput.create({ callId, inputId, atMs: Date.now(), input: { $case: "noInput", value: NoInput.create({ turnId }) } })),
    );
  }

  /** Nothing answered the caller's input in time: ingress says the fallback line itself, as a turn of its own. */
  private onSilence(input: string, end: InputEnd): void {
    const playout = this.playout;
    const clip = this.deps.config.noSilenceClip;
    if (this.ended || !playout || !clip || this.finalActionPending) return;
    if (this.callerAudio?.callerSpeaking) {
      // Not over the caller's words (nothing would cut it: no bot turn was playing when they began): looked at again
      // shortly. Speech that owes an answer arms a deadline of its own when it ends; a turn that begins cancels it.
      this.guard?.deferred(input, end, SILENCE_RECHECK_MS);
      return;
    }
    const { config, metrics, scheduler } = this.deps;
    const turnId = `${NO_SILENCE_TURN_PREFIX}${++this.fallbacks}`;
    const text = config.noSilenceText;
    playout.addAudio({ turnId, chunkSeq: 0, partSeq: 0, payload: clip, chunkDone: true, turnDone: true, text, timing: undefined }, performance.now());
    scheduler.wake(playout);
    metrics.noSilenceFallbacks.inc();
    this.log.warn("no bot turn began in time after the caller's input; playing the fallback line", { input, deadlineMs: config.noSilenceDeadlineMs, turnId });
    const callId = this.callSid!;
    const at = new Date().toISOString();
    this.enqueue(() => this.storeOp("append_transcript", () => this.deps.store.appendTranscript(callId, { role: "bot", text, at })));
  }

  // ---- pipeline -> us ----

  private onBotAudio(audio: BotAudio): void {
    const playout = this.playout;
    if (this.ended || !playout) return;
    const { metrics, scheduler } = this.deps;
    if (!audio.turnId) {
      metrics.droppedBotAudio.inc({ reason: "no_turn_id" });
      this.log.warn("bot audio without turnId dropped");
      return;
    }
    if (this.turnSuperseded(audio.turnId, playout)) {
      metrics.droppedBotAudio.inc({ reason: "superseded" });
      return;
    }
    if (this.turnOvertaken(audio.turnId, playout)) {
      metrics.droppedBotAudio.inc({ reason: "overtaken" });
      return;
    }
    const now = performance.now();
    const format = audio.format;
    const usable =
      !format ||
      ((format.encoding === AudioEncoding.AUDIO_ENCODING_UNSPECIFIED || format.encoding === AudioEncoding.AUDIO_ENCODING_MULAW) &&
        (format.sampleRate === 0 || format.sampleRate === 8000));
    if (!usable) {
      metrics.droppedBotAudio.inc({ reason: "bad_format" });
      if (playout.failChunk(audio.turnId, audio.chunkSeq, "bad_format", now)) {
        this.log.error("bot audio is not μ-law 8000 Hz; chunk skipped", { turnId: audio.turnId, chunkSeq: audio.chunkSeq, format });
      }
      scheduler.wake(playout);
      return;
    }
    const result = playout.addAudio(
      {
        turnId: audio.turnId,
        chunkSeq: audio.chunkSeq,
        partSeq: audio.partSeq,
        payload: audio.payload,
        chunkDone: audio.chunkDone,
        turnDone: audio.turnDone,
        text: audio.text,
        timing: audio.timing,
        noInputMs: audio.noInputMs,
      },
      now,
    );
    if (result !== "accepted") {
      metrics.droppedBotAudio.inc({ reason: result });
      this.log.debug("bot audio part dropped", { reason: result, turnId: audio.turnId, chunkSeq: audio.chunkSeq, partSeq: audio.partSeq });
      return;
    }
    if (audio.chunkSeq === 0 && audio.partSeq === 0) this.latestDialogTurn = Math.max(this.latestDialogTurn, dialogTurnNumber(audio.turnId) ?? 0);
    this.guard?.botAudio(audio.turnId);
    scheduler.wake(playout);
  }

  /** Caller speech onset/end from the asr's VAD: barge-in. */
  private onSpeech(activity: SpeechActivity): void {
    if (this.ended || !this.playout) return;
    // While the asr has an utterance open, its endpointing counts every frame: none may wait in a batch.
    if (activity.kind === SpeechActivity_Kind.KIND_STARTED) {
      this.openUtterance = activity.utteranceId;
      this.callerAudio?.speechStarted();
      this.noInput?.callerSpeechStarted();
    } else if (activity.kind === SpeechActivity_Kind.KIND_STOPPED) {
      this.openUtterance = undefined;
      this.callerAudio?.speechStopped();
      this.noInput?.callerSpeechStopped();
    }
    const { metrics, config } = this.deps;
    if (activity.kind === SpeechActivity_Kind.KIND_STOPPED) {
      this.afterCutSpeech(activity);
      this.speechEnded(activity);
      const pending = this.pendingBargeIn;
      if (pending && (!pending.utteranceId || !activity.utteranceId || pending.utteranceId === activity.utteranceId)) {
        clearTimeout(pending.timer);
        this.pendingBargeIn = undefined;
        metrics.bargeInsIgnored.inc({ reason: "short_speech" });
        this.log.debug("speech ended before the barge-in minimum; bot keeps talking", { utteranceId: activity.utteranceId });
      }
      return;
    }
    if (activity.kind !== SpeechActivity_Kind.KIND_STARTED) return;
    if (!this.playout.hasPendingAudio) {
      metrics.bargeInsIgnored.inc({ reason: "nothing_playing" });
      return;
    }
    if (!this.bargeIn) {
      metrics.bargeInsIgnored.inc({ reason: "disabled" });
      this.log.debug("caller spoke over the bot; barge-in is off for this call");
      return;
    }
    if (config.bargeInMinSpeechMs === 0) return this.bargeInNow(activity);
    if (this.pendingBargeIn) return; // already waiting on an onset
    const timer = setTimeout(() => {
      this.pendingBargeIn = undefined;
      this.bargeInNow(activity);
    }, config.bargeInMinSpeechMs);
    this.pendingBargeIn = { utteranceId: activity.utteranceId, timer };
  }

  /** Cuts the bot off: Twilio `clear` first, then tell the pipeline what was cut and what the caller heard. */
  private bargeInNow(activity: SpeechActivity): void {
    const playout = this.playout;
    if (this.ended || !playout) return;
    const { metrics } = this.deps;
    if (!playout.hasPendingAudio) {
      metrics.bargeInsIgnored.inc({ reason: "nothing_playing" });
      return;
    }
    const clearedAtMs = Date.now();
    if (activity.atMs > 0) metrics.clearLatency.observe(Math.max(0, clearedAtMs - activity.atMs) / 1000);
    const cut = this.cutOff("speech", { utteranceId: activity.utteranceId, onsetToClearMs: activity.atMs > 0 ? clearedAtMs - activity.atMs : undefined });
    const turn = cut.find((t) => !isNoSilenceTurn(t.id));
    this.speechCut = turn && activity.utteranceId ? { utteranceId: activity.utteranceId, turnId: turn.id } : undefined;
  }

  /**
   * The utterance that cut the bot off has ended. If the asr found it too short to be speech (a cough, a click), no
   * transcript will come: the dialog is told, so the cut turn can go on instead of the caller waiting in silence.
   */
  private afterCutSpeech(activity: SpeechActivity): void {
    const cut = this.speechCut;
    if (!cut || cut.utteranceId !== activity.utteranceId) return;
    this.speechCut = undefined;
    if (!activity.discarded) return;
    const callId = this.callSid!;
    this.deps.metrics.falseInterruptions.inc();
    this.log.info("the sound that cut the bot off was too short to be speech; asking the dialog to go on", cut);
    const input = DialogInput.create({
      callId,
      inputId: `${callId}:false-int:${this.streamSid}:${cut.utteranceId}`,
      atMs: Date.now(),
      input: { $case: "falseInterruption", value: FalseInterruption.create(cut) },
    });
    this.enqueue(() => this.publishInput(input));
  }

  /** Clears the bot's playout (Twilio `clear` first) and cancels the turns the caller will not hear. */
  private cutOff(by: "speech" | "keypad", fields: Record<string, unknown> = {}): TurnState[] {
    const cut = this.playout!.clear();
    this.deps.metrics.bargeIns.inc({ by });
    this.publishCancels(cut.map((t) => t.id), "barge_in");
    this.log.info(by === "speech" ? "barge-in: caller spoke over the bot; playback cleared" : "barge-in: caller pressed a key over the bot; playback cleared", {
      ...fields,
      cutTurns: cut.map((t) => ({ turnId: t.id, lastHeardChunk: t.lastHeardChunk })),
    });
    return cut;
  }

  /** Tells tts and the dialog to stop working on turns the caller will not hear ("" = every turn of the call). */
  private publishCancels(turnIds: string[], reason: string): void {
    const callId = this.callSid!;
    for (const turnId of turnIds) {
      if (isNoSilenceTurn(turnId)) continue; // ingress's own line: nobody else works on it
      if (this.publish(subjects.cancel(callId), CancelTurn, CancelTurn.create({ callId, turnId, reason }), "cancel_turn")) {
        this.deps.metrics.cancels.inc({ reason });
      }
    }
  }

  /**
   * Whether the turn was superseded (a CLEAR named a later dialog turn): nothing of it is played or waited for. The
   * first time, unless the CLEAR already cut it, tts is told to stop on it and the dialog that it was not heard.
   */
  private turnSuperseded(turnId: string, playout: CallPlayout): boolean {
    // Ingress's own lines are no dialog turn: nothing supersedes them.
    const turn = dialogTurnNumber(turnId);
    if (turn === undefined || turn >= this.supersededBelow) return false;
    if (!this.supersededCancelled.has(turnId)) {
      this.supersededCancelled.add(turnId);
      if (!playout.isTurnDone(turnId)) {
        this.dropUnheard(turnId, "superseded");
        this.log.info("a superseded turn's late audio dropped", { turnId, beforeTurnId: `t${this.supersededBelow}` });
      }
    }
    return true;
  }

  /**
   * Whether the turn's audio came only after a later dialog turn had begun playing (CallPlayout.dropIfOvertaken):
   * it is not played. The first time, tts is told to stop on it and the dialog that it was not heard.
   */
  private turnOvertaken(turnId: string, playout: CallPlayout): boolean {
    if (!playout.dropIfOvertaken(turnId)) return false;
    this.dropUnheard(turnId, OVERTAKEN_CANCEL_REASON);
    this.log.warn("a dialog turn's audio came after a later turn had begun playing; dropped, not played out of order", { turnId, latestTurn: `t${this.latestDialogTurn}` });
    return true;
  }

  /**
   * A turn the caller will never hear: tts stops on it, and the dialog's history and the record say it was not
   * heard, as for a turn cut before its first word.
   */
  private dropUnheard(turnId: string, reason: "superseded" | typeof OVERTAKEN_CANCEL_REASON): void {
    this.publishCancels([turnId], reason);
    this.publishPlayback(PlaybackEvent_Kind.KIND_INTERRUPTED, { id: turnId, heardText: "" }, -1, "int", reason);
  }

  private onSynthesisFailed(failure: SynthesisFailed): void {
    const playout = this.playout;
    if (this.ended || !playout || this.turnSuperseded(failure.turnId, playout) || this.turnOvertaken(failure.turnId, playout)) return;
    if (playout.failChunk(failure.turnId, failure.chunkSeq, "synthesis_failed", performance.now(), failure.turnDone)) {
      this.log.warn("chunk could not be synthesized; playing past it", { turnId: failure.turnId, chunkSeq: failure.chunkSeq, error: failure.error });
      this.deps.scheduler.wake(playout);
    }
  }

  private onControl(control: CallControl): void {
    const playout = this.playout;
    if (this.ended || !playout) return;
    const { metrics } = this.deps;
    switch (control.action) {
      case CallControl_Action.ACTION_CLEAR: {
        const before = dialogTurnNumber(control.beforeTurnId);
        if (before === undefined && this.supersededBelow > 0) {
          // A plain CLEAR (ingress's own, on a voicemail verdict) after the dialog's superseding one: that one cut
          // all that played then, and older turns' audio is dropped as it comes; this one could only cut the
          // message (the dialog may have started it before the verdict's CLEAR arrived: seen in CI).
          metrics.controls.inc({ action: "clear", outcome: "superseded_already" });
          this.log.info("a CLEAR after the dialog's superseding CLEAR; nothing cut", { reason: control.reason, supersededBelow: `t${this.supersededBelow}` });
          return;
        }
        if (before !== undefined && before > this.supersededBelow) this.supersededBelow = before;
        if (before !== undefined && before > 0 && this.latestDialogTurn >= before) {
          // The dialog sends its superseding CLEAR before that turn's speech exists, so the speech comes later, but
          // through tts and maybe another NATS server: if it came first, it is not cut. The older turns still
          // playing or queued ahead of it are (else the new turn waited behind their dropped chunks for the stall
          // limit), unless it has begun playing already.
          const cut = playout.clearBefore(before);
          this.publishCancels(cut.map((t) => t.id), "clear");
          metrics.controls.inc({ action: "clear", outcome: cut.length > 0 ? "after_turn_cut" : "after_turn" });
          this.log.warn(cut.length > 0 ? "a CLEAR came after the audio of the turn it names; the older turns cut, that turn kept" : "a CLEAR came after the turn it names had begun; nothing cut", {
            reason: control.reason,
            beforeTurnId: control.beforeTurnId,
            cutTurns: cut.map((t) => t.id),
          });
          if (cut.length > 0) this.deps.scheduler.wake(playout);
          return;
        }
        const cut = playout.clear();
        this.publishCancels(cut.map((t) => t.id), "clear");
        metrics.controls.inc({ action: "clear", outcome: "done" });
        this.log.info("playback cleared", { reason: control.reason, cutTurns: cut.map((t) => t.id), ...(control.beforeTurnId ? { beforeTurnId: control.beforeTurnId } : {}) });
        return;
      }
      case CallControl_Action.ACTION_HANGUP:
      case CallControl_Action.ACTION_TRANSFER:
        void this.runFinalAction(control, playout);
        return;
      case CallControl_Action.ACTION_SEND_DTMF:
        void this.sendDigits(control, playout);
        return;
      default:
        metrics.controls.inc({ action: "unknown", outcome: "ignored" });
        this.log.warn("unknown call control ignored", { action: control.action });
    }
  }

  /** HANGUP / TRANSFER: after `afterTurnId` has played (or the safety timeout), end the stream. */
  private async runFinalAction(control: CallControl, playout: CallPlayout): Promise<void> {
    const action = control.action === CallControl_Action.ACTION_HANGUP ? "hangup" : "transfer";
    const { metrics } = this.deps;
    if (this.finalActionPending) {
      metrics.controls.inc({ action, outcome: "ignored" });
      this.log.warn("call control ignored: a hang-up or transfer is already pending", { action });
      return;
    }
    this.finalActionPending = true;
    await this.afterTurnPlayed(control.afterTurnId, playout, action);
    if (this.ended) {
      metrics.controls.inc({ action, outcome: "call_ended" });
      return;
    }
    if (action === "hangup") {
      this.log.info("bot hangs up", { reason: control.reason });
      this.endReason ??= "bot_hangup"; // Twilio answers the hang-up with `stop`
      await this.hangUpThroughApi();
      metrics.controls.inc({ action, outcome: "done" });
      if (!this.ended) this.finish("bot_hangup");
      return;
    }
    await this.transfer(control.target);
  }

  /**
   * With Twilio REST credentials the call itself is hung up: closing the stream alone runs whatever TwiML follows
   * <Connect> (a number's own TwiML may <Dial> there), and a resumable stream's redirect relies on the ended record.
   * Without them, or when the API fails, closing the stream is all there is.
   */
  private async hangUpThroughApi(): Promise<void> {
    const { twilioApi, metrics } = this.deps;
    if (!twilioApi) return;
    try {
      await twilioApi.updateCallTwiml(this.callSid!, HANGUP_TWIML);
      metrics.twilioApi.inc({ action: "hangup", outcome: "ok" });
    } catch (error) {
      metrics.twilioApi.inc({ action: "hangup", outcome: "error" });
      this.log.error("hang-up through the Twilio REST API failed; closing the stream instead", { error: errorText(error) });
    }
  }

  /** Resolves once turn `turnId` has played (every mark echoed), or after CONTROL_TIMEOUT_MS. */
  private async afterTurnPlayed(turnId: string, playout: CallPlayout, action: string): Promise<void> {
    if (!turnId || playout.isTurnDone(turnId)) return;
    const { config } = this.deps;
    this.log.info("call control waits for the turn to play", { action, afterTurnId: turnId });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      playout.whenTurnDone(turnId).then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), config.controlTimeoutMs))),
    ]);
    clearTimeout(timer);
    if (timedOut && !this.ended) {
      this.log.warn("turn did not finish playing in time; acting anyway", { action, afterTurnId: turnId, timeoutMs: config.controlTimeoutMs });
    }
  }

  private async transfer(target: string): Promise<void> {
    const { twilioApi, metrics } = this.deps;
    const twiml = dialTwiml(target);
    if (!twilioApi && this.resumable && twiml) {
      // The TwiML after <Connect> is our voice webhook's <Redirect>: it finds the call ended as a transfer and
      // dials the target the record names.
      this.transferTo = target.trim();
      this.log.info("transfer: closing the stream; the voice webhook's redirect dials the target (no Twilio REST credentials)", { target });
    } else if (!twilioApi) {
      this.log.info("transfer: closing the stream so the TwiML after <Connect> takes over (no Twilio REST credentials)", { target });
    } else if (!twiml) {
      metrics.twilioApi.inc({ action: "transfer", outcome: "invalid_target" });
      this.log.error("transfer target is not a phone number or SIP URI; closing the stream instead", { target });
    } else {
      this.endReason ??= "transfer"; // Twilio answers the redirect with `stop`
      try {
        await twilioApi.updateCallTwiml(this.callSid!, twiml);
        metrics.twilioApi.inc({ action: "transfer", outcome: "ok" });
        this.log.info("transfer: call redirected to <Dial> through the Twilio REST API", { target });
      } catch (error) {
        metrics.twilioApi.inc({ action: "transfer", outcome: "error" });
        this.log.error("transfer through the Twilio REST API failed; closing the stream instead", { target, error: errorText(error) });
      }
    }
    metrics.controls.inc({ action: "transfer", outcome: "done" });
    if (!this.ended) this.finish("transfer");
  }

  /**
   * SEND_DTMF: after `afterTurnId` has played, the call is redirected (Twilio REST API) to TwiML that plays the
   * tones. Twilio leaves <Connect><Stream> for it and sends this stream `stop`. On a stream of our voice webhook
   * the TwiML then redirects back to the webhook, which resumes the call on a new stream, so the conversation goes
   * on (an agent working through a phone menu); otherwise the call ends after the tones (`sent_dtmf`).
   */
  private async sendDigits(control: CallControl, playout: CallPlayout): Promise<void> {
    this.tonesPending = true;
    try {
      await this.sendDigitsNow(control, playout);
    } finally {
      this.tonesPending = false;
    }
  }

  private async sendDigitsNow(control: CallControl, playout: CallPlayout): Promise<void> {
    const { twilioApi, metrics } = this.deps;
    if (!twilioApi) {
      metrics.controls.inc({ action: "send_dtmf", outcome: "unsupported" });
      this.log.warn("SEND_DTMF is unsupported on media streams without the Twilio REST API; ignored");
      return;
    }
    if (!playDigitsTwiml(control.target)) {
      metrics.controls.inc({ action: "send_dtmf", outcome: "invalid_target" });
      this.log.error("SEND_DTMF target is not keypad digits; ignored", { length: control.target.length });
      return;
    }
    await this.afterTurnPlayed(control.afterTurnId, playout, "send_dtmf");
    if (this.ended || this.finalActionPending || this.redirectedForTones) {
      metrics.controls.inc({ action: "send_dtmf", outcome: this.ended ? "call_ended" : "ignored" });
      if (!this.ended) this.log.warn("SEND_DTMF ignored: the call is already leaving this stream", { finalActionPending: this.finalActionPending });
      return;
    }
    // Resumes are counted against loops of failing streams; tones sent from a first stream count as the first.
    const comeBack =
      this.resumable && this.webhookOrigin ? resumeUrl(this.webhookOrigin, Math.max(1, this.resumeCount), this.announcement?.meta.agent || undefined) : undefined;
    const twiml = playDigitsTwiml(control.target, comeBack)!;
    if (comeBack) {
      this.redirectedForTones = true;
      this.tonesMs = digitsPlayMs(control.target);
      // Nothing is cut: the stream that resumes the call must not take it for a dropped line and re-prompt.
      const callId = this.callSid;
      if (callId && this.announced) await this.storeOp("mark_handover", () => this.deps.store.markHandover(callId, this.noInput?.currentWaitMs));
    } else {
      this.endReason ??= "sent_dtmf";
    }
    try {
      await twilioApi.updateCallTwiml(this.callSid!, twiml);
      metrics.twilioApi.inc({ action: "send_dtmf", outcome: "ok" });
      metrics.controls.inc({ action: "send_dtmf", outcome: "done" });
      this.log.info(comeBack ? "keypad tones sent through the Twilio REST API; the call comes back on a new stream" : "keypad tones sent through the Twilio REST API; the call ends after them (no voice webhook to come back to)");
    } catch (error) {
      this.redirectedForTones = false;
      if (!comeBack && this.endReason === "sent_dtmf" && !this.ended) this.endReason = undefined;
      metrics.twilioApi.inc({ action: "send_dtmf", outcome: "error" });
      metrics.controls.inc({ action: "send_dtmf", outcome: "error" });
      this.log.error("SEND_DTMF through the Twilio REST API failed", { error: errorText(error) });
    }
  }

  // ---- playout -> Twilio and the bus ----

  private readonly output: PlayoutOutput = {
    sendMedia: (payload, frames) => {
      if (this.send(this.mediaMessages!.message(payload))) this.deps.metrics.media.framesOut.value += frames;
    },
    sendMark: (name) => void this.send(markMessage(this.streamSid, name)),
    sendClear: () => void this.send(clearMessage(this.streamSid)),
  };

  private readonly listener: PlayoutListener = {
    turnStarted: (turn, chunk, atMs) => {
      // The fallback line is not a turn the dialog knows: a reprompt names the pipeline's last turn.
      this.noInput?.botTurnStarted(isNoSilenceTurn(turn.id) ? undefined : turn.id);
      if (isNoSilenceTurn(turn.id)) return; // not the pipeline's turn: no latency to record
      const callId = this.callSid!;
      const { entry, inputLatencyMs } = turnLatency(turn.id, chunk.timing ?? turn.timing, atMs);
      if (inputLatencyMs !== undefined) this.deps.metrics.turnLatency.observe(Math.max(0, inputLatencyMs) / 1000);
      for (const [stage, ms] of Object.entries(entry.stages)) {
        this.deps.metrics.turnStage.observe({ stage: stage.replace(/Ms$/, "") }, Math.max(0, ms) / 1000);
      }
      this.log.info("turn started playing", { turnId: turn.id, latencyMs: entry.latencyMs, stages: entry.stages });
      this.enqueue(() => this.storeOp("append_turn", () => this.deps.store.appendTurn(callId, entry)));
    },
    chunkPlayed: (turn, chunkSeq) => this.publishPlayback(PlaybackEvent_Kind.KIND_CHUNK_PLAYED, turn, chunkSeq),
    turnPlayed: (turn) => {
      this.publishPlayback(PlaybackEvent_Kind.KIND_TURN_PLAYED, turn, turn.lastHeardChunk, "played");
      this.noInput?.botTurnEnded(turn.noInputMs);
    },
    interrupted: (turn) => {
      this.publishPlayback(PlaybackEvent_Kind.KIND_INTERRUPTED, turn, turn.lastHeardChunk, "int");
      this.noInput?.botTurnEnded(turn.noInputMs);
    },
    chunkSkipped: (turn, chunkSeq, reason: SkipReason) => {
      this.deps.metrics.skippedChunks.inc({ reason });
      const fields = { turnId: turn.id, chunkSeq, reason };
      if (reason === "stalled") this.log.warn("chunk never arrived in time; skipped", fields);
      else this.log.info("chunk skipped", fields);
    },
    turnAbandoned: (turn, missingChunk) => {
      this.deps.metrics.skippedChunks.inc({ reason: "turn_abandoned" });
      this.log.warn("rest of the turn never arrived; turn ended early", { turnId: turn.id, missingChunk });
    },
    underrun: (turn, where) => {
      this.deps.metrics.underruns.inc({ where });
      this.log.debug("playout underrun: bot audio arrived late", { turnId: turn.id, where });
    },
  };

  /**
   * On `playback(id)` for anyone watching; with `durableTag` also to the dialog's work queue, msgId
   * `<id>:<tag>:<turnId>` (INTERRUPTED tells it what was heard; ingress itself times the caller's silence).
   * `reason`: why an INTERRUPTED turn was dropped unplayed (none when a clear cut it).
   */
  private publishPlayback(kind: PlaybackEvent_Kind, turn: Pick<TurnState, "id" | "heardText">, chunkSeq: number, durableTag?: "played" | "int", reason = ""): void {
    const callId = this.callSid;
    if (!callId || isNoSilenceTurn(turn.id)) return; // the dialog knows nothing of ingress's own line
    const event = PlaybackEvent.create({ callId, turnId: turn.id, kind, chunkSeq, atMs: Date.now(), heardText: turn.heardText, reason });
    if (this.publish(subjects.playback(callId), PlaybackEvent, event, "playback")) {
      this.deps.metrics.playbackEvents.inc({ kind: PlaybackEvent_Kind[kind] ?? String(kind) });
    }
    if (!durableTag) return;
    const input = DialogInput.create({
      callId,
      inputId: `${callId}:${durableTag}:${turn.id}`,
      atMs: event.atMs,
      input: { $case: "playback", value: event },
    });
    this.enqueue(() => this.publishInput(input));
  }

  // ---- end of the call ----

  /** Ends the stream from our side: a normal close, then the call ends with `reason`. */
  private finish(reason: string, code = 1000): void {
    this.endReason ??= reason;
    // A resumable stream's close sends Twilio back to the voice webhook: the record must say ended by then, or the
    // webhook would resume the call the bot just ended.
    if (this.resumable) {
      void this.end(this.endReason, () => this.close(code, reason));
      return;
    }
    this.close(code, reason);
    void this.end(this.endReason);
  }

  private close(code: number, reason: string): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
  }

  /**
   * Publishes the end once (stop, close, hang-up, shutdown: whichever comes first) and records it; `recorded` runs
   * once the record says ended.
   */
  private end(reason: string, recorded?: () => void): Promise<void> {
    if (this.ending) return this.ending;
    this.stopStreaming();
    // Every stage drops the call's work now; CallEnded follows once the record writes are done.
    if (this.callSid) this.publishCancels([""], CALLER_END_REASONS.has(reason) ? "hangup" : reason);
    this.ending = (async () => {
      const callId = this.callSid;
      if (!callId) return;
      const endedAtMs = Date.now();
      await this.tasks; // the start and record writes land before the end
      const { ended, input: endInput } = callEndMessages(callId, reason, endedAtMs);
      this.publish(subjects.ended(callId), CallEnded, ended, "call_ended");
      const input = this.publishInput(endInput);
      const endCall = () => this.deps.store.endCall(callId, reason, new Date(endedAtMs), { transferTo: this.transferTo });
      // Before a resumable stream closes, the record must say ended (the redirect would resume the call): a Redis
      // failover is waited out for a while.
      await this.storeOp("end_call", recorded ? () => retryWhileLinkLost(endCall, { limitMs: END_RECORD_RETRY_MS }) : endCall);
      recorded?.();
      await input;
      this.log.info("call ended", { reason, durationMs: endedAtMs - this.startedAtMs, closeCode: this.closeCode });
    })()
      .catch((error) => this.log.error("ending the call failed", { error: errorText(error) }))
      .finally(() => {
        recorded?.(); // closing twice is harmless; a stream left open is not
        this.resolveFinished();
      });
    return this.ending;
  }

  /**
   * The stream is over, the call is not: it goes on on another stream (resumed through the voice webhook). Nothing
   * is ended or cancelled; this replica stops renewing the stream lease, so if no stream takes the call up within
   * the lease, the stream sweeper ends it.
   */
  private detach(why: string): Promise<void> {
    if (this.ending) return this.ending;
    this.stopStreaming();
    this.ending = (async () => {
      await this.tasks;
      this.deps.metrics.detachedStreams.inc();
      this.log.info("stream left; the call goes on without it", { why, durationMs: Date.now() - this.startedAtMs, closeCode: this.closeCode });
    })()
      .catch((error) => this.log.error("leaving the stream failed", { error: errorText(error) }))
      .finally(() => this.resolveFinished());
    return this.ending;
  }

  /** Stops everything this stream does here: the caller's last audio goes out, subscriptions and playout stop. */
  private stopStreaming(): void {
    if (this.jitter) {
      this.jitter.flushAll(); // the caller's last words still reach the recognizer
      this.callerAudio?.flush();
      callerAudioBatch.flush(); // ...before anything that ends the call
      this.deps.scheduler.remove(this.jitterPacer);
    }
    if (this.callSid) this.deps.liveCalls.release(this.callSid, this);
    if (this.pendingBargeIn) clearTimeout(this.pendingBargeIn.timer);
    this.pendingBargeIn = undefined;
    this.guard?.close();
    this.noInput?.close();
    this.ended = true;
    clearTimeout(this.startTimer);
    for (const sub of this.subs.splice(0)) {
      try {
        sub.unsubscribe();
      } catch {
        /* connection already closed: nothing left to unsubscribe */
      }
    }
    if (this.playout) {
      this.deps.scheduler.remove(this.playout);
      this.playout.close();
    }
  }

  // ---- the call's record ----

  /** The call is live here and its record was written: a missing record now means Redis lost it. */
  get recordExpected(): string | undefined {
    return this.announced && !this.ended && !this.reannouncing ? this.callSid : undefined;
  }

  /**
   * Redis lost the call's record (and with it the dialog state, the asr lease, the hints): write the record again
   * and announce the call again, so an asr replica claims it and the dialog starts the conversation over, telling
   * the caller (DialogInput{callStarted} with inputId `<id>:restart:<n>`).
   */
  reannounce(): void {
    const announcement = this.announcement;
    if (!announcement || this.ended || this.reannouncing) return;
    this.reannouncing = true;
    const callId = announcement.meta.callSid;
    const n = ++this.restarts;
    this.deps.metrics.recordsRestored.inc();
    this.log.warn("the call's record vanished from Redis; writing it again and restarting the conversation", { restart: n });
    this.enqueue(async () => {
      try {
        const created = await this.createRecord(announcement.meta);
        if (this.ended) return;
        if (created === "ended" || created === "live_elsewhere") {
          // Written again meanwhile by another stream of the call (it resumed elsewhere), or ended: not ours to restart.
          this.log.warn("the call's record came back before this stream wrote it; not restarting the conversation", { found: created });
          return;
        }
        this.publish(subjects.callStarted, CallStarted, announcement.callStarted, "call_started");
        await this.publishInput(
          DialogInput.create({
            callId,
            inputId: `${callId}:restart:${n}`,
            atMs: Date.now(),
            input: { $case: "callStarted", value: announcement.callStarted },
          }),
        );
      } finally {
        this.reannouncing = false;
      }
    });
  }

  // ---- helpers ----

  private send(text: string | Buffer): boolean {
    if (this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(text, TEXT_FRAME);
    return true;
  }

  private enqueue(task: () => Promise<void>): void {
    this.tasks = this.tasks.then(task).catch((error) => this.log.error("call task failed", { error: errorText(error) }));
  }

  private publish<T>(subject: string, codec: Codec<T>, message: T, what: string, callIdHeader = true): boolean {
    try {
      this.deps.bus.publish(subject, codec, message, callIdHeader ? this.callSid : undefined);
      return true;
    } catch (error) {
      this.deps.metrics.publishErrors.inc({ message: what });
      const now = performance.now();
      if (now - this.lastPublishErrorLog > 1_000) {
        this.lastPublishErrorLog = now;
        this.log.error("publish failed", { message: what, error: errorText(error) });
      }
      return false;
    }
  }

  /** Durable dialog input; the bus retries it through a NATS restart or election (a msgId is stored once). */
  private async publishInput(input: DialogInput): Promise<void> {
    try {
      await this.deps.bus.publishDurable(subjects.dialogInput(input.callId), DialogInput, input, input.inputId, input.callId);
    } catch (error) {
      this.deps.metrics.publishErrors.inc({ message: `dialog_${input.input?.$case ?? "input"}` });
      this.log.error("dialog input could not be published", { inputId: input.inputId, error: errorText(error) });
    }
  }

  /** The call's record written (store.createCall); undefined when Redis failed (the call goes on without it). */
  private async createRecord(meta: CallMeta): Promise<CallCreation | undefined> {
    let created: CallCreation | undefined;
    await this.storeOp("create_call", async () => void (created = await this.deps.store.createCall(meta)));
    return created;
  }

  private async storeOp(op: string, run: () => Promise<void>): Promise<void> {
    try {
      await run();
    } catch (error) {
      this.deps.metrics.storeErrors.inc({ op });
      this.log.error("call record write failed", { op, error: errorText(error) });
    }
  }
}

const MEDIA_PREFIX = Buffer.from('{"event":"media"');

/** Whether a text frame starts as every Twilio `media` message does (a cheap look, before any parsing). */
function looksLikeMedia(data: RawData): boolean {
  return Buffer.isBuffer(data) && data.length > MEDIA_PREFIX.length && MEDIA_PREFIX.equals(data.subarray(0, MEDIA_PREFIX.length));
}

function rawText(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString("utf8");
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  return Buffer.from(data).toString("utf8");
}
