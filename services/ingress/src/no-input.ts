// "The caller said nothing": when neither the bot nor the caller has been heard for a while after the bot's turn
// (it played out, or the caller cut it off with a sound too short to become an utterance), the dialog is asked to
// prompt again (`DialogInput{noInput}` naming the last turn the caller heard; the agent's reprompt, then its
// `onMaxReprompts`). Ingress keeps this timer because only it sees, as they happen, both the bot's playout and the
// caller's speech and keys; a call that moves to another replica gets a reprompt on resume instead. How long "a while"
// is comes with each bot turn (the dialog state's wait, e.g. longer while the caller looks for a card number), else
// NO_INPUT_MS.

import { StallAwareTimer } from "@voicebot/service-kit";
import { UTTERANCE_STALE_MS } from "./silence-batch.js";

/** After a stall of this replica: time for the caller audio read then to reach the asr and its verdict to come back. */
const AFTER_STALL_GRACE_MS = 500;

/** One call's timer. Any activity restarts it; it runs only while nobody speaks. */
export class NoInputTimer {
  private timer: StallAwareTimer | undefined;
  private botSpeaking = false;
  private callerSpeaking = false;
  /**
   * Ends an utterance whose STOPPED never came after UTTERANCE_STALE_MS (a STOPPED lost in an asr hand-over must not
   * keep the wait off for the whole call).
   */
  private staleSpeech: NodeJS.Timeout | undefined;
  private closed = false;
  /** The last bot turn that began: what the caller is being asked to answer. */
  private lastTurnId = "";
  /** The call came to this stream at a quiet moment (see resumedQuiet): the wait runs before any turn of its own. */
  private resumedQuietly = false;
  /** The wait after the last bot turn that named one (0 = off). */
  private waitMs: number;

  constructor(
    /** NO_INPUT_MS: the wait when the dialog names none (0 = off). */
    private readonly defaultMs: number,
    private readonly onNoInput: (turnId: string, waitMs: number) => void,
    /** Whether bot audio is playing or queued: the playout knows, events alone do not (a turn can end after the next began). */
    private readonly botTalking: () => boolean,
  ) {
    this.waitMs = defaultMs;
  }

  get armed(): boolean {
    return this.timer !== undefined;
  }

  /** A bot turn began to play (`turnId` undefined: a line of ingress's own, not a dialog turn). */
  botTurnStarted(turnId: string | undefined): void {
    if (turnId) this.lastTurnId = turnId;
    this.botSpeaking = true;
    this.disarm();
  }

  /**
   * The bot stopped talking: its turn played out or was cut off. `waitMs` is the turn's wait (0 = the default;
   * undefined, e.g. for ingress's own line: the wait stays as it was).
   */
  botTurnEnded(waitMs?: number): void {
    if (waitMs !== undefined) this.waitMs = waitMs > 0 ? waitMs : this.defaultMs;
    this.botSpeaking = false;
    this.restart();
  }

  callerSpeechStarted(): void {
    this.callerSpeaking = true;
    this.disarm();
    clearTimeout(this.staleSpeech);
    this.staleSpeech = setTimeout(() => this.callerSpeechStopped(), UTTERANCE_STALE_MS);
    this.staleSpeech.unref?.();
  }

  /**
   * The caller's speech ended (its STOPPED, or its final when the STOPPED was lost); it may come to nothing (too
   * short, not understood), so the wait starts again.
   */
  callerSpeechStopped(): void {
    clearTimeout(this.staleSpeech);
    this.staleSpeech = undefined;
    this.callerSpeaking = false;
    this.restart();
  }

  /** A key or a final transcript: the caller is there. An answer disarms it when its audio starts. */
  callerInput(): void {
    this.restart();
  }

  /** The wait that runs after the bot's turn now (the turn's own, else the default; 0 = off): kept over a hand-over. */
  get currentWaitMs(): number {
    return this.waitMs;
  }

  /**
   * The call was handed to this stream at a quiet moment (a draining replica's hand-over, the way back from keypad
   * tones): the caller may be thinking about a question this stream never played, and is asked again (a noInput
   * naming no turn) if they stay silent for the wait the old stream had (`waitMs`; unknown: the default).
   */
  resumedQuiet(waitMs?: number): void {
    if (waitMs !== undefined) this.waitMs = waitMs;
    this.resumedQuietly = true;
    this.restart();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.staleSpeech);
    this.disarm();
  }

  private restart(): void {
    this.disarm();
    // Nothing to prompt again before the first turn (the greeting) has begun.
    if (this.closed || this.waitMs <= 0 || this.botSpeaking || this.callerSpeaking || (!this.lastTurnId && !this.resumedQuietly)) return;
    // After a stall of this replica, the caller's frames that came meanwhile are read, and the asr's verdict on
    // them (speech started) has time to come back, before this fires (StallAwareTimer).
    this.timer = new StallAwareTimer(this.waitMs, () => {
      this.timer = undefined;
      if (this.closed) return;
      if (this.botTalking()) return this.restart(); // another turn plays on: its end starts the wait again
      this.onNoInput(this.lastTurnId, this.waitMs);
      // Still silent after the reprompt's own turn would restart it; if the dialog sends nothing (the input was
      // stale), the caller is asked again after another wait rather than never.
      this.restart();
    }, { graceMs: AFTER_STALL_GRACE_MS });
  }

  private disarm(): void {
    this.timer?.clear();
    this.timer = undefined;
  }
}
