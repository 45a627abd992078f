import { FRAME_MS } from "@voicebot/audio";

/** One 20 ms frame of caller audio at the engine's rate. */
export interface Frame {
  /** Position in the caller's stream (20 ms frames, 0 = stream start). */
  index: number;
  pcm: Int16Array;
  /** Wall clock (ms since epoch) when ingress received the frame, i.e. about when it ended. */
  atMs: number;
}

export interface SegmenterOptions {
  /** Consecutive speech frames that open an utterance (hysteresis against clicks). */
  startMs: number;
  /** Audio kept from before the onset and given to the recognizer, so the first word is not clipped. */
  preRollMs: number;
  /** Continuous silence that ends an utterance. */
  minSilenceMs: number;
  /**
   * An utterance also ends this long after the last sustained speech (a run of start-length speech), even when
   * isolated noisy frames kept breaking the silence. Never shorter than minSilenceMs.
   */
  maxSilenceMs: number;
  /** Utterances with less speech than this are ignored (clicks, pops). */
  minSpeechMs: number;
  /** An utterance is cut here even if the caller keeps talking. */
  maxUtteranceMs: number;
}

export type EndReason = "silence" | "complete" | "max_silence" | "max_length";

export type SegmentEvent =
  | { type: "start"; onset: Frame; frames: Frame[] }
  | { type: "audio"; frame: Frame }
  | {
      type: "end";
      reason: EndReason;
      /** The last frame that counts as speech: its atMs is when the caller stopped talking. */
      lastSpeech: Frame;
      speechMs: number;
      /** Less speech than minSpeechMs: not worth recognizing. */
      tooShort: boolean;
      /** The end was put off past the minimum silence because the caller seemed to be mid-sentence. */
      held: boolean;
    };

type EndEvent = Extract<SegmentEvent, { type: "end" }>;

interface Utterance {
  frames: number;
  speechFrames: number;
  silenceRun: number;
  speechRun: number;
  lastSpeech: Frame;
  lastSustained: Frame;
  framesSinceSustained: number;
  minSilenceFrames: number;
  maxSilenceFrames: number;
  /** Silence after which words that already make a complete answer end the utterance (0: never early). */
  completeSilenceFrames: number;
  held: boolean;
}

const frames = (ms: number) => Math.max(1, Math.ceil(ms / FRAME_MS));

/** What most frames bring (silence between utterances): shared, so nothing is allocated for them. */
const NO_EVENTS: readonly SegmentEvent[] = Object.freeze([]);

/**
 * Turns per-frame speech decisions into utterances: start after a run of speech frames (with pre-roll), end after
 * enough silence or at the length limit. Pure logic, no clock: callers pass each frame's wall clock.
 */
export class Segmenter {
  private readonly startFrames: number;
  private readonly preRollFrames: number;
  /** Idle: the last frames, for pre-roll and the start run. */
  private recent: Frame[] = [];
  private idleRun = 0;
  private current: Utterance | undefined;
  /**
   * Asked once the minimum silence is reached: true keeps the utterance open (up to the maximum silence),
   * e.g. while the latest partial transcript ends in "and" or "my order number is".
   */
  holdAtSilence: (() => boolean) | undefined;
  /**
   * Asked on silent frames once the complete-answer silence is reached, before the minimum: true ends the utterance
   * there, e.g. when the words so far are one of the answers the dialog state expects ("order status", "no").
   */
  completeAtSilence: (() => boolean) | undefined;

  constructor(private readonly options: SegmenterOptions) {
    this.startFrames = frames(options.startMs);
    this.preRollFrames = Math.max(0, Math.round(options.preRollMs / FRAME_MS));
  }

  /** Frames held between utterances (the pre-roll and a start run so far) that a start would give the recognizer. */
  get heldFrames(): number {
    return this.current ? 0 : this.recent.length;
  }

  get inUtterance(): boolean {
    return this.current !== undefined;
  }

  /** Silence since the last speech frame of the utterance in progress (0 between utterances). */
  get silenceMs(): number {
    return (this.current?.silenceRun ?? 0) * FRAME_MS;
  }

  /** Speech of the utterance in progress after the run that started it (0 between utterances). */
  get speechSinceStartMs(): number {
    return this.current ? (this.current.speechFrames - this.startFrames) * FRAME_MS : 0;
  }

  /**
   * Changes the silence timeouts of the utterance in progress (hints arrive just after its start). A complete-answer
   * silence of 0, or not below the minimum, is off.
   */
  setSilence(minSilenceMs: number, maxSilenceMs: number, completeSilenceMs = 0): void {
    if (!this.current) return;
    this.current.minSilenceFrames = frames(minSilenceMs);
    this.current.maxSilenceFrames = Math.max(this.current.minSilenceFrames, frames(maxSilenceMs));
    const complete = completeSilenceMs > 0 ? frames(completeSilenceMs) : 0;
    this.current.completeSilenceFrames = complete < this.current.minSilenceFrames ? complete : 0;
  }

  /**
   * Ends the utterance in progress now if it has been silent for the complete-answer silence and completeAtSilence
   * says its words are a complete answer: for a result that comes between frames. Otherwise undefined.
   */
  endIfComplete(): EndEvent | undefined {
    const utterance = this.current;
    if (!utterance || !this.completeNow(utterance)) return undefined;
    return this.end(utterance, "complete");
  }

  push(frame: Frame, speech: boolean): readonly SegmentEvent[] {
    const utterance = this.current;
    if (!utterance) return this.pushIdle(frame, speech);

    const events: SegmentEvent[] = [{ type: "audio", frame }];
    utterance.frames++;
    if (speech) {
      utterance.speechFrames++;
      utterance.speechRun++;
      utterance.silenceRun = 0;
      utterance.lastSpeech = frame;
    } else {
      utterance.speechRun = 0;
      utterance.silenceRun++;
    }
    if (utterance.speechRun >= this.startFrames) {
      utterance.lastSustained = frame;
      utterance.framesSinceSustained = 0;
    } else {
      utterance.framesSinceSustained++;
    }

    let reason: EndReason | undefined;
    const silent = utterance.silenceRun >= utterance.minSilenceFrames;
    const hold = silent && utterance.silenceRun < utterance.maxSilenceFrames && this.holdAtSilence?.() === true;
    if (hold) utterance.held = true;
    if (silent && !hold) reason = "silence";
    else if (!silent && this.completeNow(utterance)) reason = "complete";
    else if (utterance.framesSinceSustained >= utterance.maxSilenceFrames) reason = "max_silence";
    else if (utterance.frames * FRAME_MS >= this.options.maxUtteranceMs) reason = "max_length";
    if (reason) events.push(this.end(utterance, reason));
    return events;
  }

  private completeNow(utterance: Utterance): boolean {
    return (
      utterance.completeSilenceFrames > 0 &&
      utterance.silenceRun >= utterance.completeSilenceFrames &&
      utterance.silenceRun < utterance.minSilenceFrames &&
      this.completeAtSilence?.() === true
    );
  }

  private end(utterance: Utterance, reason: EndReason): EndEvent {
    this.current = undefined;
    const speechMs = utterance.speechFrames * FRAME_MS;
    return {
      type: "end",
      reason,
      // After a max-silence end the stray speech frames were noise: the caller stopped at the sustained speech.
      lastSpeech: reason === "max_silence" ? utterance.lastSustained : utterance.lastSpeech,
      speechMs,
      tooShort: speechMs < this.options.minSpeechMs,
      held: utterance.held,
    };
  }

  private pushIdle(frame: Frame, speech: boolean): readonly SegmentEvent[] {
    this.recent.push(frame);
    if (this.recent.length > this.preRollFrames + this.startFrames) this.recent.shift();
    this.idleRun = speech ? this.idleRun + 1 : 0;
    if (this.idleRun < this.startFrames) return NO_EVENTS;

    const buffered = this.recent;
    this.recent = [];
    this.idleRun = 0;
    const minSilenceFrames = frames(this.options.minSilenceMs);
    this.current = {
      frames: this.startFrames,
      speechFrames: this.startFrames,
      silenceRun: 0,
      speechRun: this.startFrames,
      lastSpeech: frame,
      lastSustained: frame,
      framesSinceSustained: 0,
      minSilenceFrames,
      maxSilenceFrames: Math.max(minSilenceFrames, frames(this.options.maxSilenceMs)),
      completeSilenceFrames: 0,
      held: false,
    };
    return [{ type: "start", onset: buffered[buffered.length - this.startFrames], frames: buffered }];
  }
}
