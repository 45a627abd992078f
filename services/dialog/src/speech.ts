import { AudioFormat, SpeakRequest, TurnTiming } from "@voicebot/proto";
import { splitSentences } from "./engine/text.js";

export interface SpeechContext {
  callId: string;
  voice: string;
  format: AudioFormat;
  /** The number of the last bot turn before this input's; the next bot turn is t<turnsSoFar+1>. */
  turnsSoFar: number;
  /** Timing known when the input arrived (input end, asr, dialog start). */
  timing: Pick<TurnTiming, "inputEndMs" | "asrFinalMs" | "endpointWaitMs" | "dialogStartMs">;
  /** Time spent in tools so far in this input's handling, ms. */
  toolMs(): number;
  /** False while a turn is redone: turn ids advance the same way, nothing is sent twice. */
  live: boolean;
  publish(request: SpeakRequest): void;
  /** A bot turn's speech is complete (every chunk sent); `text` is what was sent. */
  onTurnDone(turnId: string, text: string): void;
  now?: () => number;
}

interface OpenTurn {
  turnId: string;
  nextSeq: number;
  /** The latest chunk, held back until we know whether it is the turn's last. */
  held?: { text: string; cacheable: boolean };
  /** Texts of the chunks sent so far. */
  sent: string[];
  firstTextMs: number;
  toolMsAtStart: number;
  llmFirstTokenMs: number;
}

/**
 * Turns what an engine says into SpeakRequests: one per sentence, `chunkSeq` 0.., `turnDone` on the last.
 * One chunk is held back so the last one can carry `turnDone`, except for streamed text (`now`), which goes out
 * at once; a turn whose last chunk went out that way is closed with an empty `turnDone` chunk. `close()` ends the
 * turn (before a tool runs, and at the end of the input's handling).
 */
export class SpeechOutput {
  private open: OpenTurn | undefined;
  private turns: number;
  private llmFirstTokenMs = 0;
  private noInputMs = 0;
  private cancelled = false;
  /** The most recent turn that was finished (what a hang-up or transfer must wait for). */
  lastTurnId = "";
  /** Every turn id opened while handling this input. */
  readonly turnIds: string[] = [];
  /** What the engine said after the barge-in that cancelled this speech, with the chunk held back then: never sent. */
  readonly unsaid: string[] = [];

  constructor(private readonly ctx: SpeechContext) {
    this.turns = ctx.turnsSoFar;
  }

  /** The number of the last bot turn, including the ones of this input. */
  get turnCount(): number {
    return this.turns;
  }

  get isCancelled(): boolean {
    return this.cancelled;
  }

  /** The LLM's time to first token, for turns opened from now on. */
  setLlmFirstToken(ms: number): void {
    this.llmFirstTokenMs = Math.max(0, Math.round(ms));
  }

  /**
   * The no-input wait of the conversation's state (0 = ingress's default), sent with every chunk from now on:
   * the turn's last chunk, sent when the input's handling ends, names the state the caller is left in.
   */
  setNoInputMs(ms: number | undefined): void {
    this.noInputMs = ms ?? 0;
  }

  /** Queues text; returns the id of the turn it went into ("" once cancelled or for empty text). */
  say(text: string, cacheable: boolean, now = false): string {
    if (this.cancelled) {
      if (text.trim()) this.unsaid.push(text.trim());
      return "";
    }
    let turnId = "";
    for (const sentence of splitSentences(text)) {
      const open = this.ensureOpen();
      turnId = open.turnId;
      if (open.held) this.send(open, open.held, false);
      open.held = { text: sentence, cacheable };
      if (now) {
        this.send(open, open.held, false);
        open.held = undefined;
      }
    }
    return turnId;
  }

  /** A short line as its own finished turn (a filler while a tool runs); finishes any open turn first. */
  sayTurn(text: string, cacheable: boolean): string {
    if (this.cancelled) return "";
    this.close();
    const turnId = this.say(text, cacheable);
    this.close();
    return turnId;
  }

  close(): void {
    const open = this.open;
    if (!open) return;
    this.open = undefined;
    this.lastTurnId = open.turnId;
    if (this.cancelled) {
      // The caller talked over this turn: ingress dropped it, so it gets no closing chunk; record what was sent.
      if (this.ctx.live && open.sent.length > 0) this.ctx.onTurnDone(open.turnId, open.sent.join(" "));
      return;
    }
    if (open.held) this.send(open, open.held, true);
    else this.send(open, { text: "", cacheable: true }, true); // every chunk went out already: close the turn
    if (this.ctx.live) this.ctx.onTurnDone(open.turnId, open.sent.filter(Boolean).join(" "));
  }

  /** Barge-in: nothing more is sent for this input; the open turn is closed without its held chunk. */
  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    if (this.open?.held) this.unsaid.push(this.open.held.text);
    if (this.open) this.open.held = undefined;
    this.close();
  }

  private ensureOpen(): OpenTurn {
    if (!this.open) {
      this.turns += 1;
      this.open = {
        turnId: `t${this.turns}`,
        nextSeq: 0,
        sent: [],
        firstTextMs: this.now(),
        toolMsAtStart: this.ctx.toolMs(),
        llmFirstTokenMs: this.llmFirstTokenMs,
      };
      this.turnIds.push(this.open.turnId);
    }
    return this.open;
  }

  private send(open: OpenTurn, chunk: { text: string; cacheable: boolean }, turnDone: boolean): void {
    const seq = open.nextSeq++;
    open.sent.push(chunk.text);
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
        noInputMs: this.noInputMs,
        timing: TurnTiming.create({
          ...this.ctx.timing,
          dialogFirstTextMs: open.firstTextMs,
          toolMs: open.toolMsAtStart,
          llmFirstTokenMs: open.llmFirstTokenMs,
        }),
      }),
    );
  }

  private now(): number {
    return (this.ctx.now ?? Date.now)();
  }
}
