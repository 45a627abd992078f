import { AudioFormat, SpeakRequest, TurnTiming } from "@voicebot/proto";
import { splitSentences } from "./engine/text.js";

export interface SpeechContext {
  callId: string;
  voice: string;
  format: AudioFormat;
  /** Turns the call has had so far; the next bot turn is t<turns+1>. */
  turnsSoFar: number;
  /** Timing known when the input arrived (input end, asr, dialog start). */
  timing: Pick<TurnTiming, "inputEndMs" | "asrFinalMs" | "endpointWaitMs" | "dialogStartMs">;
  /** Time spent in tools so far in this input's handling, ms. */
  toolMs(): number;
  /** False while a turn is redone: turn ids advance the same way, nothing is sent twice. */
  live: boolean;
  publish(request: SpeakRequest): void;
  /** A bot turn's speech is complete (every chunk sent). */
  onTurnDone(turnId: string, text: string): void;
  now?: () => number;
}

interface OpenTurn {
  turnId: string;
  nextSeq: number;
  /** The latest chunk, held back until we know whether it is the turn's last. */
  held?: { text: string; cacheable: boolean };
  texts: string[];
  firstTextMs: number;
  toolMsAtStart: number;
}

/**
 * Turns what an engine says into SpeakRequests: one per sentence, `chunkSeq` 0.., `turnDone` on the last.
 * One chunk is held back so the last one can carry `turnDone`; `close()` ends the turn (before a tool runs,
 * and at the end of the input's handling).
 */
export class SpeechOutput {
  private open: OpenTurn | undefined;
  private turns: number;
  /** The most recent turn that was finished (what a hang-up or transfer must wait for). */
  lastTurnId = "";

  constructor(private readonly ctx: SpeechContext) {
    this.turns = ctx.turnsSoFar;
  }

  /** Bot turns the call has had, including the ones of this input. */
  get turnCount(): number {
    return this.turns;
  }

  say(text: string, cacheable: boolean): void {
    for (const sentence of splitSentences(text)) {
      if (!this.open) {
        this.turns += 1;
        this.open = {
          turnId: `t${this.turns}`,
          nextSeq: 0,
          texts: [],
          firstTextMs: this.now(),
          toolMsAtStart: this.ctx.toolMs(),
        };
      }
      if (this.open.held) this.send(this.open, this.open.held, false);
      this.open.held = { text: sentence, cacheable };
      this.open.texts.push(sentence);
    }
  }

  close(): void {
    const open = this.open;
    if (!open) return;
    this.open = undefined;
    if (open.held) this.send(open, open.held, true);
    this.lastTurnId = open.turnId;
    if (this.ctx.live) this.ctx.onTurnDone(open.turnId, open.texts.join(" "));
  }

  private send(open: OpenTurn, chunk: { text: string; cacheable: boolean }, turnDone: boolean): void {
    const seq = open.nextSeq++;
    if (!this.ctx.live) return;
    this.ctx.publish(
      SpeakRequest.create({
        callId: this.ctx.callId,
        turnId: open.turnId,
        chunkSeq: seq,
        text: chunk.text,
        turnDone,
        voice: this.ctx.voice,
        format: this.ctx.format,
        cacheable: chunk.cacheable,
        timing: TurnTiming.create({
          ...this.ctx.timing,
          dialogFirstTextMs: open.firstTextMs,
          toolMs: open.toolMsAtStart,
        }),
      }),
    );
  }

  private now(): number {
    return (this.ctx.now ?? Date.now)();
  }
}
