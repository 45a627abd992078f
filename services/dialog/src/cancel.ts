import { dialogTurnNumber, OVERTAKEN_CANCEL_REASON } from "@voicebot/bus";
import type { CancelTurn } from "@voicebot/proto";
import type { SpeechOutput } from "./speech.js";

interface InFlight {
  /** The number of the last bot turn before this input. */
  startTurns: number;
  abort: AbortController;
  /** Aborted when the whole call is cancelled (it ended): waiting on a tool stops too. */
  ended: AbortController;
  speech?: SpeechOutput;
}

/**
 * The inputs this replica is playing right now, so a CancelTurn (the caller barged in) can stop them: the LLM
 * stream is aborted and no more speech is sent. Every replica hears every cancel; only the one playing the
 * call's input acts.
 */
export class InFlightTurns {
  private readonly calls = new Map<string, InFlight>();

  begin(callId: string, startTurns: number): AbortController {
    const abort = new AbortController();
    this.calls.set(callId, { startTurns, abort, ended: new AbortController() });
    return abort;
  }

  /** Aborted once the call's input in progress is cancelled for the whole call (the call ended). */
  endedSignal(callId: string): AbortSignal | undefined {
    return this.calls.get(callId)?.ended.signal;
  }

  /** The speech output of the current attempt (a redone attempt gets a new one). */
  attach(callId: string, speech: SpeechOutput): void {
    const entry = this.calls.get(callId);
    if (!entry) return;
    entry.speech = speech;
    if (entry.abort.signal.aborted) speech.cancel();
  }

  end(callId: string, abort: AbortController): void {
    if (this.calls.get(callId)?.abort === abort) this.calls.delete(callId);
  }

  /**
   * Stops the call's input in progress when the cancel is about its speech: every turn (empty turnId), a turn
   * it produced, or the turn just before it (the caller talked over the last answer, so what the dialog is
   * producing after it is moot). Returns whether something was stopped.
   */
  cancel(message: CancelTurn): boolean {
    const entry = this.calls.get(message.callId);
    if (!entry) return false;
    const turnId = message.turnId;
    // Ingress cancels every turn ("") when the call ends: a tool being waited on is abandoned as well.
    if (turnId === "") entry.ended.abort();
    if (entry.abort.signal.aborted) return false;
    // Ingress dropped an old turn that came after a later one had begun: nothing the caller said, nothing to stop.
    if (message.reason === OVERTAKEN_CANCEL_REASON) return false;
    const n = dialogTurnNumber(turnId);
    const ours = turnId === "" || (n !== undefined && n >= entry.startTurns) || (entry.speech?.turnIds.includes(turnId) ?? false);
    if (!ours) return false;
    entry.abort.abort();
    entry.speech?.cancel();
    return true;
  }
}
