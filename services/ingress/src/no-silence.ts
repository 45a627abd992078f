// "No turn ends in silence": when the caller has finished an input the dialog answers (a final transcript, a
// keypad entry) and no new bot turn has begun to arrive within the deadline, ingress plays a short fallback line
// itself. The clip ships with the service and is loaded at start, so it plays even when the dialog, tts, NATS or
// Redis is what failed.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { MULAW_SILENCE, mulawEncode, parseWav, resample } from "@voicebot/audio";
import { dropOldest, StallAwareTimer } from "@voicebot/service-kit";

/** The shipped clip: flite (voice slt) saying DEFAULT_NO_SILENCE_TEXT, μ-law 8 kHz (see the README to redo it). */
export const DEFAULT_NO_SILENCE_FILE = fileURLToPath(new URL("../assets/no-silence.wav", import.meta.url));
export const DEFAULT_NO_SILENCE_TEXT = "Sorry, I'm having trouble. One moment please.";
/** Turn ids of the fallback line; the pipeline's own turns are t<n>, so they never collide. */
export const NO_SILENCE_TURN_PREFIX = "nosilence-";
const FRAME_BYTES = 160;

export function isNoSilenceTurn(turnId: string): boolean {
  return turnId.startsWith(NO_SILENCE_TURN_PREFIX);
}

/** Reads a WAV file (16-bit PCM, 8-bit or μ-law, any rate) as Twilio plays it: μ-law 8 kHz in whole 20 ms frames. */
export function loadNoSilenceClip(file: string): Uint8Array {
  const wav = parseWav(readFileSync(file));
  const pcm = wav.sampleRate === 8000 ? wav.pcm : resample(wav.pcm, wav.sampleRate, 8000);
  if (pcm.length < 8000 / 4) throw new Error(`${file}: the clip is shorter than 250 ms`);
  const mulaw = mulawEncode(pcm);
  const clip = new Uint8Array(Math.ceil(mulaw.length / FRAME_BYTES) * FRAME_BYTES).fill(MULAW_SILENCE);
  clip.set(mulaw);
  return clip;
}

/** Most turn ids remembered per call (a call has far fewer turns). */
const MAX_KNOWN_TURNS = 1_000;

/** The moment an input ended, in the order of what the guard saw and on the clock. */
export interface InputEnd {
  readonly seq: number;
  readonly atMs: number;
}

/**
 * One call's deadline: armed when the caller finishes an input, disarmed by the first audio of a turn that was not
 * heard of before; if it runs out, `onSilence` plays the fallback. A later input moves the deadline.
 *
 * Decided by the order things happened in, not by when a check finished: an input that needs an async look-up
 * before it is known to want an answer takes its `InputEnd` first and arms with it afterwards; a new turn that
 * began in between means the answer is already on its way (the guard stays off), and the deadline still runs from
 * the input's end.
 */
export class SilenceGuard {
  private timer: StallAwareTimer | undefined;
  private readonly knownTurns = new Set<string>();
  private closed = false;
  /** Events seen so far (input ends, new turns): their order. */
  private seq = 0;
  /** When the latest new bot turn began (its `seq`). */
  private lastTurnSeq = 0;
  /** The input the armed deadline is for, and its name for the log. */
  private armedFor: InputEnd | undefined;
  private armedInput = "";

  constructor(
    private readonly deadlineMs: number,
    /** `end`: the input the deadline ran from (to arm again with it). */
    private readonly onSilence: (input: string, end: InputEnd) => void,
  ) {}

  get armed(): boolean {
    return this.timer !== undefined;
  }

  /** Marks that an input ended now; arm with it once it is known to need an answer. */
  inputEnd(): InputEnd {
    return { seq: ++this.seq, atMs: performance.now() };
  }

  /** The caller finished an input that gets an answer (`input` names it for the log), now or at `end`. */
  inputEnded(input: string, end: InputEnd = this.inputEnd()): void {
    if (this.deadlineMs <= 0 || this.closed) return;
    if (this.lastTurnSeq > end.seq) return; // a turn began after this input ended: it is being answered
    if (this.timer && this.armedFor && this.armedFor.seq > end.seq) return; // a later input already set the deadline
    this.arm(input, end, Math.max(0, end.atMs + this.deadlineMs - performance.now()));
  }

  /**
   * The deadline for `input` ran out while the caller was speaking: `onSilence` is asked again in `ms`, unless a new
   * bot turn (disarms) or a later input (a deadline of its own) comes first.
   */
  deferred(input: string, end: InputEnd, ms: number): void {
    if (!this.closed) this.arm(input, end, ms);
  }

  private arm(input: string, end: InputEnd, ms: number): void {
    this.timer?.clear();
    this.armedFor = end;
    this.armedInput = input;
    // After a stall of this replica, bot audio that came meanwhile is read before this fires (StallAwareTimer).
    this.timer = new StallAwareTimer(ms, () => {
      this.timer = undefined;
      this.armedFor = undefined;
      if (!this.closed) this.onSilence(input, end);
    });
  }

  /**
   * The caller is still at it (a digit of an entry the dialog answers only at its end): an armed deadline runs
   * from here, so a caller keying a long number after saying something is not told "one moment" mid-entry.
   */
  callerBusy(end: InputEnd): void {
    if (!this.timer || !this.armedFor || this.armedFor.seq > end.seq) return;
    this.inputEnded(this.armedInput, end);
  }

  /** Bot audio of `turnId` arrived: a new turn means the pipeline answered. */
  botAudio(turnId: string): void {
    if (this.knownTurns.has(turnId)) return;
    this.knownTurns.add(turnId);
    dropOldest(this.knownTurns, MAX_KNOWN_TURNS);
    this.lastTurnSeq = ++this.seq;
    this.disarm();
  }

  close(): void {
    this.closed = true;
    this.disarm();
  }

  private disarm(): void {
    this.timer?.clear();
    this.timer = undefined;
    this.armedFor = undefined;
  }
}
