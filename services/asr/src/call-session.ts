import { FRAME_MS, l16FromBytes, mulawDecodeInto } from "@voicebot/audio";
import { errorText, InOrder, subjects, type Bus, type Logger } from "@voicebot/bus";
import { withinMs } from "@voicebot/service-kit";
import {
  AudioEncoding,
  DialogInput,
  SpeechActivity,
  SpeechActivity_Kind,
  Transcript,
  type Alternative,
  type CallerAudio,
} from "@voicebot/proto";
import { keys, type CallStore } from "@voicebot/state";
import { expectedAnswers, isCompleteAnswer } from "./complete-answer.js";
import { looksUnfinished, type Continuations } from "./continuation.js";
import type { AsrEngine, RecognitionHints, RecognitionResult, UtteranceRecognizer } from "./engine.js";
import { parseHints, type ParsedHints } from "./hints.js";
import type { AsrMetrics } from "./metrics.js";
import { Segmenter, type Frame, type SegmenterOptions, type SegmentEvent } from "./segmenter.js";
import type { VadStream, VoiceActivityDetector } from "./vad.js";

/**
 * Decoded caller audio is cut from blocks of this many frames (one call's; see takePcm). A block lives while any
 * frame cut from it is held (the pre-roll keeps ~20 frames), so a call holds a few blocks: 50-frame blocks (1 s)
 * cost ~19 KB per call in the load bench's heap snapshots, 10-frame ones a third of that.
 */
const PCM_BLOCK_FRAMES = 10;

/** Early recognitions per utterance at most: a caller who keeps pausing and going on costs a bounded number. */
const MAX_EARLY_FINALS = 3;
/** Silence an early recognition always waits for, however short the minimum silence (a breath is not an end). */
const MIN_EARLY_SILENCE_MS = 200;
/** How long an utterance's start waits for its hints while Redis is unreachable (see readHints). */
const HINTS_WAIT_MS = 3_000;
/**
 * Audio before an utterance's pre-roll that a replica taking the call over replays too (see resumeFrame): a cold
 * VAD needs some context to find the onset where the first owner found it (the utterance id is its frame index).
 */
const RESUME_CONTEXT_FRAMES = 10;
/** More than a caller says in one utterance: a longer text is an engine's fault, and would bloat records and logs. */
export const MAX_TRANSCRIPT_CHARS = 2_000;

export interface SessionOptions {
  segmenter: SegmenterOptions;
  /** Longest run of lost frames replaced by silence; longer gaps are bridged by this much only. */
  gapFillMaxMs: number;
  /**
   * This long before the endpoint would come (at least MIN_EARLY_SILENCE_MS into the silence), an engine that
   * recognizes at the end (earlyFinals) is run on the audio so far, so the final is ready at the endpoint; speech
   * before the endpoint discards it. 0: off.
   */
  earlyFinalLeadMs: number;
  /**
   * In a state that expects one of a few answers, an utterance whose words so far (an early final, or a partial that
   * came after the last speech) are exactly one of them ends after this much silence instead of the minimum. 0: off.
   */
  completeSilenceMs: number;
  /** Partial texts ending in one of these keep the utterance open past the minimum silence. */
  continuations: Continuations;
}

export interface SessionDeps {
  callId: string;
  bus: Bus;
  store: CallStore;
  engine: AsrEngine;
  vad: VoiceActivityDetector;
  log: Logger;
  metrics: AsrMetrics;
  options: SessionOptions;
  /** A final went out (or failed to): resumeFrame moved past its utterance. */
  onFinalPublished?: () => void;
}

interface OpenUtterance {
  id: string;
  /** Where a replica taking the call over replays from to hear this utterance whole (see resumeFrame). */
  resumeFrom: number;
  recognizer: UtteranceRecognizer | undefined;
  /** The engine failed on this utterance: it ends with an empty final. */
  failed: boolean;
  lastPartial: string;
  /** The latest partial ends like an unfinished sentence ("... and", "my order number is"). */
  unfinished: boolean;
  hints: RecognitionHints;
  /** The answers the dialog state expects, as isCompleteAnswer compares them (undefined: none, never complete). */
  answers: Set<string> | undefined;
  /** The words so far are one of the answers: an early recognition's or a partial's, with no speech since. */
  complete: boolean;
  /** Everything given to the recognizer, kept only when early finals are on: an early recognizer replays it. */
  audio: Int16Array[] | undefined;
  /** Silence into the utterance's silence at which it is recognized early (the first time: firstEarlyAtMs). */
  earlyAtMs: number;
  firstEarlyAtMs: number;
  early: EarlyFinal | undefined;
  earlyTries: number;
}

/** The utterance so far, recognized during the caller's silence. */
interface EarlyFinal {
  recognizer: UtteranceRecognizer;
  outcome: Promise<{ result: RecognitionResult } | { error: unknown }>;
  /** The outcome is in (it may have come before the endpoint). */
  settled: boolean;
}

/**
 * One call's caller audio on this replica: decode, fill gaps, VAD, segment into utterances, recognize, publish.
 * Audio messages must be given one at a time in order (an ordered subscription); finals are published in order.
 */
export class CallSession {
  private readonly segmenter: Segmenter;
  private readonly vad: VadStream;
  private readonly samplesPerFrame: number;
  private nextFrame: number | undefined;
  private lastAtMs = 0;
  /** Frames given to the VAD and not decided yet, oldest first (decisions come back in this order). */
  private readonly undecided: Frame[] = [];
  /**
   * Decided frames through the segmenter, in order. An utterance start reads its hints and the segmenter must not
   * run ahead of it: frames decided meanwhile wait, and are segmented once it is done.
   */
  private readonly segmenting = new InOrder<{ frame: Frame; speech: boolean }>(({ frame, speech }) => this.segment(frame, speech));
  private utterance: OpenUtterance | undefined;
  /** Finals being decoded and published, chained so they go out in utterance order. */
  private finals: Promise<void> = Promise.resolve();
  private stopped = false;
  /** Problems already logged for this call: a bad stream is logged once, counted always. */
  private readonly warned = new Set<string>();
  /** The frame after the last one given to the segmenter. */
  private segmentedTo: number | undefined;
  /** The frame after the one that ended the last utterance: audio before it belongs to utterances dealt with. */
  private endedAt = 0;
  /** Where each utterance begun and not yet published (or dropped as too short) resumes, oldest first. */
  private readonly unpublished: number[] = [];
  /** The block decoded audio is being cut from, and how much of it is taken. */
  private pcmBlock: Int16Array | undefined;
  private pcmBlockUsed = 0;

  constructor(private readonly deps: SessionDeps) {
    this.segmenter = new Segmenter(deps.options.segmenter);
    this.segmenter.holdAtSilence = () => this.utterance?.unfinished === true;
    this.segmenter.completeAtSilence = () => this.utterance?.complete === true && !this.utterance.unfinished;
    this.samplesPerFrame = (deps.engine.sampleRate * FRAME_MS) / 1000;
    this.vad = deps.vad.open((speech) => this.onDecision(speech));
  }

  get callId(): string {
    return this.deps.callId;
  }

  /**
   * One CallerAudio message: one frame or several contiguous ones (`firstFrame` is the first one's index). Returns
   * a promise only while an utterance start is reading its hints: the caller should hold back the next message
   * until it settles (the ordered subscription does). Otherwise every frame decided so far is segmented already.
   */
  handleAudio(message: CallerAudio): Promise<void> | undefined {
    if (this.stopped) return undefined;
    const { metrics } = this.deps;
    if (message.callId && message.callId !== this.callId) {
      metrics.badAudio.inc({ reason: "wrong_call" });
      this.warnOnce("wrong_call", "caller audio for another call dropped", { messageCallId: message.callId });
      return undefined;
    }
    const pcm = this.decode(message);
    if (!pcm) return undefined;

    const count = Math.floor(pcm.length / this.samplesPerFrame);
    if (count * this.samplesPerFrame !== pcm.length) {
      metrics.badAudio.inc({ reason: "partial_frame" });
      this.warnOnce("partial_frame", "caller audio with a partial frame: the remainder is dropped", { samples: pcm.length });
    }
    if (message.frameCount !== 0 && message.frameCount !== count) {
      // The payload is what was heard: its frames are used, the count is only reported.
      metrics.badAudio.inc({ reason: "frame_count_mismatch" });
      this.warnOnce("frame_count_mismatch", "caller audio whose frameCount does not match its payload: the payload's frames are used", {
        frameCount: message.frameCount,
        payloadFrames: count,
      });
    }
    if (count === 0) return this.segmenting.pending;
    const receivedAt = Number(message.receivedAtMs) || Date.now();
    const first = Number(message.firstFrame);
    let skip = 0;

    if (this.nextFrame !== undefined && first < this.nextFrame) {
      // Frames we already have (a duplicate, or overlap after a reconnect): keep only the new ones.
      skip = Math.min(count, this.nextFrame - first);
      metrics.badAudio.inc({ reason: "duplicate_frames" }, skip);
      if (skip === count) return this.segmenting.pending;
    } else if (this.nextFrame !== undefined && first > this.nextFrame) {
      this.fillGap(first - this.nextFrame, receivedAt - count * FRAME_MS);
    }
    this.pushFrames(pcm, first, skip, count, receivedAt);
    return this.segmenting.pending;
  }

  /**
   * The frame a replica taking the call over should replay the caller's audio from (store.saveProgress), so that
   * nothing the caller said is lost and nothing recognized is heard twice: the start (less some context) of the
   * oldest utterance whose final has not gone out, else of the audio the segmenter may still make an utterance of.
   * Never before the end of an utterance dealt with. Undefined before any audio. Still meaningful after stop: an
   * utterance it dropped counts as unpublished.
   */
  resumeFrame(): number | undefined {
    if (this.unpublished.length > 0) return this.unpublished[0];
    if (this.segmentedTo === undefined) return undefined;
    return Math.max(this.endedAt, this.segmentedTo - this.segmenter.heldFrames - RESUME_CONTEXT_FRAMES);
  }

  /**
   * Audio before `frame` belongs to utterances another replica dealt with (this one took the call over from there):
   * resumeFrame never goes back past it.
   */
  resumesAt(frame: number): void {
    this.endedAt = Math.max(this.endedAt, frame);
  }

  /** Stops listening: drops the utterance in progress and waits for finals already being decoded. */
  async stop(): Promise<void> {
    if (this.stopped) return this.finals;
    this.stopped = true;
    this.vad.close();
    this.undecided.length = 0;
    this.segmenting.clear();
    const open = this.utterance;
    this.utterance = undefined;
    if (open) this.abort(open);
    await this.finals;
  }

  private decode(message: CallerAudio): Int16Array | undefined {
    // Unset fields mean the contract's format: μ-law at 8 kHz.
    const encoding = message.format?.encoding || AudioEncoding.AUDIO_ENCODING_MULAW;
    const rate = message.format?.sampleRate || this.deps.engine.sampleRate;
    if (rate !== this.deps.engine.sampleRate || (encoding !== AudioEncoding.AUDIO_ENCODING_MULAW && encoding !== AudioEncoding.AUDIO_ENCODING_L16)) {
      this.deps.metrics.badAudio.inc({ reason: "unsupported_format" });
      this.warnOnce("format", "caller audio in an unsupported format dropped", { encoding, sampleRate: rate });
      return undefined;
    }
    // Copies either way: frames are kept for pre-roll, and the payload may be a view into a read buffer.
    if (encoding === AudioEncoding.AUDIO_ENCODING_L16) return l16FromBytes(message.payload).slice();
    return mulawDecodeInto(message.payload, this.takePcm(message.payload.length));
  }

  /**
   * Room for `samples` of decoded audio, cut from this call's current block: a typed array of its own per
   * message cost more than decoding into it. Blocks are only appended to; one lives on while any of its frames
   * is still held (pre-roll, the recognizer), so a call keeps about its own recent audio.
   */
  private takePcm(samples: number): Int16Array {
    if (!this.pcmBlock || this.pcmBlockUsed + samples > this.pcmBlock.length) {
      this.pcmBlock = new Int16Array(Math.max(samples, PCM_BLOCK_FRAMES * this.samplesPerFrame));
      this.pcmBlockUsed = 0;
    }
    const pcm = this.pcmBlock.subarray(this.pcmBlockUsed, this.pcmBlockUsed + samples);
    this.pcmBlockUsed += samples;
    return pcm;
  }

  /** Lost frames become silence so the VAD and the recognizer keep real time; very long gaps are capped. */
  private fillGap(missing: number, gapEndMs: number): void {
    this.deps.metrics.lostFrames.inc(missing);
    const fill = Math.min(missing, Math.max(0, Math.round(this.deps.options.gapFillMaxMs / FRAME_MS)));
    this.deps.log.debug("caller audio gap", { callId: this.callId, missingFrames: missing, filledFrames: fill });
    if (fill === 0 || this.stopped) return;
    const start = this.nextFrame!;
    const lastAtMs = this.lastAtMs;
    const samples = this.samplesPerFrame;
    const silence = new Int16Array(fill * samples);
    let atMs = lastAtMs;
    for (let i = 0; i < fill; i++) {
      atMs = Math.max(lastAtMs + (i + 1) * FRAME_MS, gapEndMs - (fill - 1 - i) * FRAME_MS);
      this.undecided.push({ index: start + i, pcm: silence.subarray(i * samples, (i + 1) * samples), atMs });
    }
    this.nextFrame = start + fill;
    this.lastAtMs = atMs;
    this.vad.push(silence);
  }

  /**
   * Frames `from`..`count`-1 of a message's PCM (frame 0 has index `first`, the last one arrived at `lastAtMs`):
   * queued for their decisions, then given to the VAD in one go.
   */
  private pushFrames(pcm: Int16Array, first: number, from: number, count: number, lastAtMs: number): void {
    if (this.stopped) return;
    const samples = this.samplesPerFrame;
    for (let i = from; i < count; i++) {
      const framePcm = pcm.length === samples ? pcm : pcm.subarray(i * samples, (i + 1) * samples);
      this.undecided.push({ index: first + i, pcm: framePcm, atMs: lastAtMs - (count - 1 - i) * FRAME_MS });
    }
    this.nextFrame = first + count;
    this.lastAtMs = lastAtMs;
    // The energy VAD decides during this call (onDecision runs before it returns), Silero later.
    this.vad.push(from === 0 && pcm.length === count * samples ? pcm : pcm.subarray(from * samples, count * samples));
  }

  /** The VAD's decision for the oldest undecided frame. */
  private onDecision(speech: boolean): void {
    const frame = this.undecided.shift();
    if (!frame || this.stopped) return;
    this.segmenting.push({ frame, speech });
  }

  /** One decided frame through the segmenter. Returns the utterance start's promise when the frame began one. */
  private segment(frame: Frame, speech: boolean): Promise<void> | undefined {
    if (this.stopped) return undefined;
    this.segmentedTo = frame.index + 1;
    try {
      const events = this.segmenter.push(frame, speech);
      for (let i = 0; i < events.length; i++) {
        const event = events[i];
        // A start is the only event of its frame; it waits for the hints, so the frames after it wait too.
        if (event.type === "start") return this.startUtterance(event.onset, event.frames).catch((error: unknown) => this.segmentFailed(error));
        this.onEvent(event, speech);
      }
    } catch (error) {
      this.segmentFailed(error);
    }
    return undefined;
  }

  private segmentFailed(error: unknown): void {
    // A bug, not bad input: log it and keep the call's pipeline going.
    this.deps.log.error("segmenting caller audio failed", { callId: this.callId, error: errorText(error) });
  }

  private onEvent(event: Exclude<SegmentEvent, { type: "start" }>, speech: boolean): void {
    switch (event.type) {
      case "audio":
        if (this.utterance) {
          // Words heard before this speech are not all the caller says: a text counts only once it came after it.
          if (speech) this.utterance.complete = false;
          this.push(this.utterance, event.frame.pcm);
          if (!this.utterance) return;
          // Early finals only save time: a bug there must not cost the frame's end event (the final).
          try {
            this.followSilence(this.utterance, speech);
          } catch (error) {
            this.segmentFailed(error);
          }
        }
        return;
      case "end": {
        const open = this.utterance;
        this.utterance = undefined;
        if (this.segmentedTo !== undefined) this.endedAt = this.segmentedTo;
        if (!open) return;
        // A sound too short to recognize says so: ingress may let a turn it cut off go on.
        this.publishActivity(SpeechActivity_Kind.KIND_STOPPED, open.id, (event.lastSpeech.index + 1) * FRAME_MS, event.lastSpeech.atMs, event.tooShort);
        this.deps.metrics.utterances.inc({ end: event.tooShort ? "too_short" : event.reason });
        if (event.held) this.deps.metrics.endpointExtensions.inc();
        if (event.tooShort) {
          this.deps.log.debug("utterance too short: ignored", { callId: this.callId, utteranceId: open.id, speechMs: event.speechMs });
          this.abort(open);
          this.published(open);
          return;
        }
        const decidedAtMs = Date.now();
        const speechEndMs = event.lastSpeech.atMs;
        this.finals = this.finals
          .then(() => this.finish(open, speechEndMs, decidedAtMs))
          .catch((error) => {
            // Only a dead NATS connection gets here; the chain must stay usable for the next utterance.
            this.deps.metrics.publishErrors.inc();
            this.deps.log.error("final transcript not published", { callId: this.callId, utteranceId: open.id, error: errorText(error) });
          })
          .finally(() => this.published(open));
        return;
      }
    }
  }

  private async startUtterance(onset: Frame, frames: Frame[]): Promise<void> {
    // Unpublished from here: a successor replays it even if this replica stops while it reads the hints.
    const resumeFrom = Math.max(this.endedAt, (frames[0]?.index ?? onset.index) - RESUME_CONTEXT_FRAMES);
    this.unpublished.push(resumeFrom);
    try {
      await this.openUtterance(onset, frames, resumeFrom);
    } catch (error) {
      // No utterance came of it (a bug, or NATS closed): it must not hold the progress back for good.
      if (!this.stopped && this.utterance?.resumeFrom !== resumeFrom) this.forgetUnpublished(resumeFrom);
      throw error;
    }
  }

  private async openUtterance(onset: Frame, frames: Frame[], resumeFrom: number): Promise<void> {
    // The onset frame's index is the utterance id: unique in the call and the same on whichever replica hears it.
    const id = String(onset.index);
    this.publishActivity(SpeechActivity_Kind.KIND_STARTED, id, onset.index * FRAME_MS, onset.atMs - FRAME_MS);
    this.deps.metrics.speechStartDelay.observe(Math.max(0, Date.now() - (onset.atMs - FRAME_MS)) / 1000);
    const hints = await this.readHints();
    if (this.stopped) return;
    const { engine, metrics, options } = this.deps;
    const answers = hints.completeSilenceMs > 0 ? expectedAnswers(hints) : undefined;
    const completeSilenceMs = answers && hints.completeSilenceMs < hints.minSilenceMs ? hints.completeSilenceMs : 0;
    this.segmenter.setSilence(hints.minSilenceMs, hints.maxSilenceMs, completeSilenceMs);
    const earlyAtMs = Math.max(MIN_EARLY_SILENCE_MS, hints.minSilenceMs - options.earlyFinalLeadMs);
    // The first early recognition goes at the complete-answer silence if that is sooner, to end the utterance there;
    // later ones (the caller went on) at the usual point, so pauses in a long answer cost one extra request at most.
    const firstEarlyAtMs = completeSilenceMs > 0 ? Math.max(MIN_EARLY_SILENCE_MS, Math.min(earlyAtMs, completeSilenceMs)) : earlyAtMs;
    const early = options.earlyFinalLeadMs > 0 && engine.earlyFinals === true && earlyAtMs < hints.minSilenceMs;
    const open: OpenUtterance = {
      id,
      resumeFrom,
      recognizer: undefined,
      failed: false,
      lastPartial: "",
      unfinished: false,
      hints: { mode: hints.mode, phrases: hints.phrases },
      answers,
      complete: false,
      audio: early ? [] : undefined,
      earlyAtMs,
      firstEarlyAtMs,
      early: undefined,
      earlyTries: 0,
    };
    this.utterance = open;
    try {
      const recognizer = engine.start(open.hints);
      open.recognizer = recognizer;
      metrics.activeSessions.inc();
      recognizer.onPartial = (text: string) => this.onPartial(open, text);
    } catch (error) {
      this.engineFailed(open, "start", error);
      return;
    }
    for (const frame of frames) this.push(open, frame.pcm);
  }

  private push(open: OpenUtterance, pcm: Int16Array): void {
    if (!open.recognizer || open.failed) return;
    open.audio?.push(pcm);
    try {
      open.recognizer.push(pcm);
    } catch (error) {
      this.engineFailed(open, "push", error);
    }
  }

  /**
   * Early finals: a little before the endpoint would come, the audio so far goes to a second recognizer, so a cloud
   * upload's round trip runs during the rest of the endpoint silence instead of after it. Speech before the
   * endpoint makes that result stale: it is dropped and a later silence may start another.
   */
  private followSilence(open: OpenUtterance, speech: boolean): void {
    if (!open.audio) return;
    if (speech) {
      if (open.early) this.dropEarly(open);
      // No tries left: the audio need not be kept twice any more.
      if (open.earlyTries >= MAX_EARLY_FINALS) open.audio = undefined;
      return;
    }
    // The segmenter has counted this frame already: the early point is crossed by the frame that reaches it.
    const silentMs = this.segmenter.silenceMs;
    const atMs = open.earlyTries === 0 ? open.firstEarlyAtMs : open.earlyAtMs;
    const crossed = silentMs >= atMs && silentMs - FRAME_MS < atMs;
    if (!crossed || open.early || open.earlyTries >= MAX_EARLY_FINALS || !open.recognizer || open.failed) return;
    const { engine, metrics, log, options } = this.deps;
    // An utterance too short to recognize costs no request; nor does one while the cloud engine is cooling down
    // (the next engine of the list would take it: a local one is not run twice).
    if (this.segmenter.speechSinceStartMs < options.segmenter.minSpeechMs || engine.earlyFinals !== true) return;
    open.earlyTries++;
    let recognizer: UtteranceRecognizer | undefined;
    try {
      recognizer = engine.start(open.hints);
      for (const pcm of open.audio) recognizer.push(pcm);
    } catch (error) {
      // The utterance's own recognizer still recognizes it at the endpoint.
      metrics.earlyFinals.inc({ outcome: "failed" });
      log.debug("early final could not start", { callId: this.callId, utteranceId: open.id, error: errorText(error) });
      this.letGo(recognizer);
      return;
    }
    const outcome = recognizer.finish().then(
      (result) => ({ result }),
      (error: unknown) => ({ error }),
    );
    const early: EarlyFinal = { recognizer, outcome, settled: false };
    metrics.activeSessions.inc();
    void outcome.then((settled) => {
      early.settled = true;
      metrics.activeSessions.dec();
      // Still the utterance's early recognition (no speech since): its words may end the utterance now.
      if (open.early === early && "result" in settled && isCompleteAnswer(settled.result.text, open.answers)) {
        open.complete = true;
        this.endIfComplete(open);
      }
    });
    open.early = early;
  }

  /** Ends the utterance now if it is silent long enough and complete: a result that came between two frames. */
  private endIfComplete(open: OpenUtterance): void {
    if (this.utterance !== open || this.stopped) return;
    try {
      const end = this.segmenter.endIfComplete();
      if (end) this.onEvent(end, false);
    } catch (error) {
      this.segmentFailed(error);
    }
  }

  private dropEarly(open: OpenUtterance): void {
    const early = open.early;
    if (!early) return;
    open.early = undefined;
    // Its words were not all the caller says.
    open.complete = false;
    this.deps.metrics.earlyFinals.inc({ outcome: "discarded" });
    this.letGo(early.recognizer);
  }

  /**
   * At the endpoint, the early recognition if the utterance has one: its result (the utterance's own recognizer is
   * then let go), or undefined to recognize at the endpoint after all. An early recognition that fails only after
   * the endpoint is not redone: it had the engines' whole watchdog and failover already, and a second round would
   * keep the caller waiting twice as long; the utterance ends as an engine error.
   */
  private async earlyResult(open: OpenUtterance): Promise<RecognitionResult | { failed: unknown } | undefined> {
    const early = open.early;
    if (!early) return undefined;
    open.early = undefined;
    open.audio = undefined;
    const inBeforeEndpoint = early.settled;
    const outcome = await early.outcome;
    const { metrics, log } = this.deps;
    if ("error" in outcome) {
      metrics.earlyFinals.inc({ outcome: "failed" });
      log.debug("early final failed", { callId: this.callId, utteranceId: open.id, beforeEndpoint: inBeforeEndpoint, error: errorText(outcome.error) });
      return inBeforeEndpoint ? undefined : { failed: outcome.error };
    }
    metrics.earlyFinals.inc({ outcome: "used" });
    this.letGo(open.recognizer);
    return outcome.result;
  }

  private onPartial(open: OpenUtterance, full: string): void {
    const text = full.slice(0, MAX_TRANSCRIPT_CHARS);
    // Partials only while the caller is still talking; once the utterance ends the final supersedes them.
    if (this.utterance !== open || this.stopped || open.failed) return;
    open.complete = isCompleteAnswer(text, open.answers);
    if (text === open.lastPartial) {
      if (open.complete) this.endIfComplete(open);
      return;
    }
    open.lastPartial = text;
    open.unfinished = looksUnfinished(text, this.deps.options.continuations);
    const { bus, metrics } = this.deps;
    const label = open.recognizer?.activeEngine ?? this.deps.engine.label;
    const partial = Transcript.create({ callId: this.callId, utteranceId: open.id, text, isFinal: false, engine: label });
    bus.publish(subjects.transcript(this.callId), Transcript, partial, this.callId);
    metrics.partials.inc({ engine: label });
    if (open.complete) this.endIfComplete(open);
  }

  private async finish(open: OpenUtterance, speechEndMs: number, decidedAtMs: number): Promise<void> {
    const { bus, metrics, log } = this.deps;
    let result: { text: string; confidence: number; alternatives: Alternative[]; engine?: string } = { text: "", confidence: 0, alternatives: [] };
    const early = await this.earlyResult(open);
    if (early && "failed" in early) {
      this.letGo(open.recognizer);
      this.engineFailed(open, "finish", early.failed);
    } else if (early) result = early;
    else if (open.recognizer && !open.failed) {
      try {
        result = await open.recognizer.finish();
      } catch (error) {
        this.engineFailed(open, "finish", error);
      }
    }
    this.release(open);
    const engine = result.engine ?? this.deps.engine.label;
    if (result.text.length > MAX_TRANSCRIPT_CHARS) {
      log.warn("transcript longer than any utterance; cut", { callId: this.callId, utteranceId: open.id, engine, chars: result.text.length, keptChars: MAX_TRANSCRIPT_CHARS });
      metrics.transcriptsCut.inc({ engine });
      result = { ...result, text: result.text.slice(0, MAX_TRANSCRIPT_CHARS), alternatives: result.alternatives.map((a) => ({ ...a, text: a.text.slice(0, MAX_TRANSCRIPT_CHARS) })) };
    }

    const finalAtMs = Date.now();
    const transcript = Transcript.create({
      callId: this.callId,
      utteranceId: open.id,
      text: result.text,
      isFinal: true,
      confidence: result.confidence,
      alternatives: result.alternatives,
      engine,
      speechEndMs,
      finalAtMs,
      endpointWaitMs: Math.max(0, decidedAtMs - speechEndMs),
    });
    bus.publish(subjects.transcript(this.callId), Transcript, transcript, this.callId);
    const inputId = `${this.callId}:utt:${open.id}`;
    const input = DialogInput.create({ callId: this.callId, inputId, atMs: finalAtMs, input: { $case: "transcript", value: transcript } });
    const queued = await this.publishDurable(input, inputId);
    metrics.finals.inc({ engine, result: open.failed ? "engine_error" : result.text ? "text" : "empty" });
    if (queued) metrics.finalLatency.observe({ engine }, (Date.now() - speechEndMs) / 1000);
    log.info("final transcript", {
      callId: this.callId,
      utteranceId: open.id,
      engine,
      text: result.text,
      confidence: result.confidence,
      endpointWaitMs: transcript.endpointWaitMs,
      latencyMs: finalAtMs - speechEndMs,
      queued,
    });
  }

  /** The dialog must get every final: the bus retries it through a NATS restart or election (msgId: once). */
  private async publishDurable(input: DialogInput, msgId: string): Promise<boolean> {
    const { bus, log, metrics } = this.deps;
    try {
      await bus.publishDurable(subjects.dialogInput(this.callId), DialogInput, input, msgId, this.callId);
      return true;
    } catch (error) {
      metrics.publishErrors.inc();
      log.error("final transcript not queued for the dialog", { callId: this.callId, inputId: msgId, error: errorText(error) });
      return false;
    }
  }

  private async readHints(): Promise<ParsedHints> {
    const { store, log, metrics, options } = this.deps;
    const defaults = { minSilenceMs: options.segmenter.minSilenceMs, maxSilenceMs: options.segmenter.maxSilenceMs, completeSilenceMs: options.completeSilenceMs };
    let raw: unknown;
    for (const since = Date.now(); ; ) {
      try {
        // Bounded by what is left of the wait: on a link gone dark a read would take the store's command deadline.
        raw = await withinMs(store.getJson<unknown>(keys.hints(this.callId)), Math.max(50, HINTS_WAIT_MS - (Date.now() - since)));
        break;
      } catch (error) {
        // Redis is down or failing over. The utterance's frames wait behind this read, and without the hints a
        // state's grammar is lost ("order status" heard as "or you can"): wait for Redis a little (a Sentinel
        // failover takes ~2 s; the last read may add its own timeout), then take the hints read last (the dialog
        // cannot have moved on without Redis either), else the defaults. Unparseable hints do not get better.
        // A read that ran out the wait (withinMs) counts as a failure like any other.
        if (!(error instanceof SyntaxError) && Date.now() - since < HINTS_WAIT_MS && !this.stopped) {
          await new Promise((resolve) => setTimeout(resolve, 200));
          continue;
        }
        metrics.badHints.inc();
        log.warn(`recognition hints unreadable: using ${this.lastHints ? "the last ones read" : "defaults"}`, { callId: this.callId, error: errorText(error) });
        return this.lastHints ?? parseHints(undefined, defaults).hints;
      }
    }
    const { hints, problems } = parseHints(raw, defaults);
    if (problems.length > 0) {
      metrics.badHints.inc();
      log.warn("recognition hints partly invalid", { callId: this.callId, problems });
    }
    this.lastHints = hints;
    return hints;
  }

  /** The hints of the call's latest successful read (see readHints). */
  private lastHints: ParsedHints | undefined;

  private warnOnce(problem: string, msg: string, fields: Record<string, unknown>): void {
    if (this.warned.has(problem)) return;
    this.warned.add(problem);
    this.deps.log.warn(msg, { callId: this.callId, ...fields });
  }

  private publishActivity(kind: SpeechActivity_Kind, utteranceId: string, audioMs: number, atMs: number, discarded = false): void {
    const activity = SpeechActivity.create({ callId: this.callId, kind, utteranceId, audioMs, atMs, discarded });
    this.deps.bus.publish(subjects.speech(this.callId), SpeechActivity, activity, this.callId);
  }

  private engineFailed(open: OpenUtterance, stage: "start" | "push" | "finish", error: unknown): void {
    open.failed = true;
    this.deps.metrics.engineErrors.inc({ engine: this.deps.engine.label, stage });
    this.deps.log.error("recognizer failed: the utterance ends with an empty final", {
      callId: this.callId,
      utteranceId: open.id,
      stage,
      error: errorText(error),
    });
    if (stage !== "finish") this.abort(open);
  }

  private abort(open: OpenUtterance): void {
    this.dropEarly(open);
    open.audio = undefined;
    this.letGo(open.recognizer);
    this.release(open);
  }

  /** The utterance is dealt with: a successor no longer replays it. */
  private published(open: OpenUtterance): void {
    this.forgetUnpublished(open.resumeFrom);
    this.deps.onFinalPublished?.();
  }

  private forgetUnpublished(resumeFrom: number): void {
    const at = this.unpublished.indexOf(resumeFrom);
    if (at >= 0) this.unpublished.splice(at, 1);
  }

  /** Aborts a recognizer whose result is not wanted; one that throws doing so is only logged. */
  private letGo(recognizer: UtteranceRecognizer | undefined): void {
    try {
      recognizer?.abort();
    } catch (error) {
      this.deps.log.warn("recognizer abort failed", { callId: this.callId, error: errorText(error) });
    }
  }

  private release(open: OpenUtterance): void {
    if (!open.recognizer) return;
    open.recognizer = undefined;
    this.deps.metrics.activeSessions.dec();
  }
}
