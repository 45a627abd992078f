// One call's outbound audio: paces the TurnQueue at real time into Twilio, tracks marks to learn what the
// caller actually heard, and handles barge-in (clear). Driven by the shared PlayoutScheduler.
import { dropOldest } from "@voicebot/service-kit";
import { FRAME_MS, TurnQueue, type AddResult, type AudioPart, type ChunkState, type SkipReason, type TurnState } from "./turn-queue.js";

export interface PlayoutOutput {
  /** One media message carrying one or more consecutive 20 ms frames. */
  sendMedia(payload: Buffer, frames: number): void;
  sendMark(name: string): void;
  sendClear(): void;
}

export interface PlayoutListener {
  /** The first frame of a turn was just sent (wall-clock ms). */
  turnStarted(turn: TurnState, chunk: ChunkState, atMs: number): void;
  chunkPlayed(turn: TurnState, chunkSeq: number): void;
  /** Every chunk of the turn has played (or the rest was given up); chunkSeq = last heard, -1 if none. */
  turnPlayed(turn: TurnState): void;
  /** Cut by a clear; lastHeardChunk = last chunk fully heard, -1 if none. */
  interrupted(turn: TurnState): void;
  chunkSkipped(turn: TurnState, chunkSeq: number, reason: SkipReason): void;
  turnAbandoned(turn: TurnState, missingChunk: number): void;
  /** Twilio's buffer ran dry with the turn unfinished: inside a chunk (its next part was late) or between two. */
  underrun(turn: TurnState, where: "mid_chunk" | "between_chunks"): void;
}

export interface PlayoutOptions {
  leadMs: number;
  /** Give up waiting for missing audio of a turn after this long when a later turn is queued... */
  stallMs: number;
  /** ...and after this long when nothing is queued behind it. */
  aloneStallMs: number;
}

interface SentMark {
  turn: TurnState;
  chunkSeq: number;
  text: string;
}

/**
 * A tick may run a hair early by the monotonic clock (the event loop's timer clock has ms resolution). Without
 * this slack such a tick would send nothing and the next one two frames: a 40 ms hole in the cadence for nothing.
 */
const PACING_SLACK_MS = 5;

/** Remembers this many completed turn ids per call (for controls that wait on a turn). */
const MAX_COMPLETED_TURNS = 1_000;

export class CallPlayout {
  private readonly queue: TurnQueue;
  /** Monotonic ms at which Twilio will have played everything sent so far. */
  private bufferedUntil = 0;
  private starved = false;
  private readonly marks = new Map<string, SentMark>();
  private readonly completed = new Set<string>();
  private readonly waiters = new Map<string, Array<() => void>>();
  /** Frames taken in the current pump, not sent yet. */
  private readonly batch: Buffer[] = [];
  private closed = false;

  constructor(
    private readonly options: PlayoutOptions,
    private readonly output: PlayoutOutput,
    private readonly listener: PlayoutListener,
    private readonly wallClock: () => number = Date.now,
  ) {
    this.queue = new TurnQueue(options.stallMs, options.aloneStallMs);
  }

  addAudio(part: AudioPart, nowMs: number): AddResult {
    if (this.closed) return "finished_turn";
    return this.queue.add(part, nowMs);
  }

  failChunk(turnId: string, chunkSeq: number, reason: SkipReason, nowMs: number, turnDone = false): boolean {
    if (this.closed) return false;
    return this.queue.fail(turnId, chunkSeq, reason, nowMs, turnDone);
  }

  /**
   * Sends whatever is due; false when there is nothing left to pace (the scheduler stops calling). Between ticks
   * (new audio arrived) frames go out only while Twilio's buffer is low (a turn starts, or audio was late), so a
   * healthy stream keeps the ticks' steady one-frame-per-tick cadence.
   */
  pump(nowMs: number, onTick = true): boolean {
    if (this.closed) return false;
    if (this.bufferedUntil < nowMs) {
      // Twilio's buffer ran dry. In the middle of a turn that is an audible gap.
      const current = this.queue.current;
      if (!this.starved && current && current.framesSent > 0 && this.bufferedUntil > 0) {
        this.starved = true;
        const chunk = current.chunks.get(current.next);
        this.listener.underrun(current, chunk && chunk.framesSent > 0 ? "mid_chunk" : "between_chunks");
      }
      this.bufferedUntil = nowMs;
    }
    const budgetMs = onTick ? this.options.leadMs + PACING_SLACK_MS : Math.max(FRAME_MS, this.options.leadMs - FRAME_MS);
    this.batch.length = 0; // frames of a pump that threw are dropped, not sent by the next one
    for (;;) {
      const frameAllowed = this.bufferedUntil + FRAME_MS - nowMs <= budgetMs;
      const step = this.queue.next(nowMs, frameAllowed);
      switch (step.kind) {
        case "frame":
          this.batch.push(step.frame);
          this.bufferedUntil += FRAME_MS;
          this.starved = false;
          if (step.firstOfTurn) this.listener.turnStarted(step.turn, step.chunk, this.wallClock());
          continue;
        case "mark":
          this.sendBatch();
          this.marks.set(step.name, { turn: step.turn, chunkSeq: step.chunkSeq, text: step.text });
          step.turn.pendingMarks.add(step.name);
          this.output.sendMark(step.name);
          continue;
        case "skipped":
          this.listener.chunkSkipped(step.turn, step.chunkSeq, step.reason);
          continue;
        case "abandoned":
          this.listener.turnAbandoned(step.turn, step.missingChunk);
          continue;
        case "turnSent":
          this.maybeComplete(step.turn);
          continue;
        case "full":
        case "wait":
          this.sendBatch();
          return true;
        case "idle":
          this.sendBatch();
          return false;
      }
    }
  }

  /** Bot audio is playing or waiting to: sent but not yet heard (marks pending), or queued here. */
  get hasPendingAudio(): boolean {
    return !this.closed && (this.marks.size > 0 || !this.queue.idle);
  }

  /** Twilio echoed a mark: everything before it has played. False for marks we do not know (e.g. after a clear). */
  markEchoed(name: string): boolean {
    const mark = this.marks.get(name);
    if (!mark) return false;
    this.marks.delete(name);
    const { turn } = mark;
    turn.pendingMarks.delete(name);
    turn.lastHeardChunk = mark.chunkSeq;
    turn.heard.push(mark.text);
    this.listener.chunkPlayed(turn, mark.chunkSeq);
    this.maybeComplete(turn);
    return true;
  }

  /**
   * Barge-in: tells Twilio to drop its buffer, drops everything queued here, and reports each cut turn with
   * what the caller heard of it. Marks Twilio echoes for the cleared audio are then unknown and ignored.
   */
  clear(): TurnState[] {
    if (this.closed) return [];
    return this.cut(this.queue.dropAll());
  }

  /**
   * A superseding CLEAR (dialog turn `before` replaces the bot's speech) that came after that turn's audio: the
   * older dialog turns are cut as by clear(), the newer ones stay queued and play next. Nothing is cut once a turn
   * numbered `before` or later has begun playing (Twilio's buffer holds it then).
   */
  clearBefore(before: number): TurnState[] {
    if (this.closed || this.queue.hasBegunFrom(before)) return [];
    const dropped = this.queue.dropBefore(before);
    if (dropped.length === 0 && this.marks.size === 0) return []; // the older turns have all been heard
    return this.cut(dropped);
  }

  /** Empties Twilio's buffer (every sent frame's turn is cut with it) and reports the cut turns interrupted. */
  private cut(dropped: TurnState[]): TurnState[] {
    const cut = new Set<TurnState>();
    for (const mark of this.marks.values()) cut.add(mark.turn);
    for (const turn of dropped) cut.add(turn);
    this.marks.clear();
    this.bufferedUntil = 0;
    this.starved = false;
    this.output.sendClear();
    const turns = [...cut].filter((turn) => !this.completed.has(turn.id));
    for (const turn of turns) {
      turn.pendingMarks.clear();
      this.markDone(turn.id);
      this.listener.interrupted(turn);
    }
    return turns;
  }

  /**
   * A dialog turn whose audio comes only after a later dialog turn has begun playing (its speech request was
   * redelivered after an outage, or its synthesis took longer than the next turn's): played now it would answer out
   * of order, so it is not played at all, and it is done. True the first time only; its later audio is then a
   * finished turn's.
   */
  dropIfOvertaken(turnId: string): boolean {
    if (this.closed || !this.queue.isOvertaken(turnId)) return false;
    this.queue.closeUnplayed(turnId);
    this.markDone(turnId);
    return true;
  }

  /** True once the turn has fully played, was given up, was cut, or was overtaken. */
  isTurnDone(turnId: string): boolean {
    return this.completed.has(turnId);
  }

  /** Resolves when the turn is done, or when the call's playout closes. */
  whenTurnDone(turnId: string): Promise<void> {
    if (this.closed || this.completed.has(turnId)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.waiters.get(turnId) ?? [];
      list.push(resolve);
      this.waiters.set(turnId, list);
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.dropAll();
    this.marks.clear();
    for (const list of this.waiters.values()) for (const resolve of list) resolve();
    this.waiters.clear();
  }

  /** The frames taken since the last send, as one media message. */
  private sendBatch(): void {
    const batch = this.batch;
    if (batch.length === 0) return;
    this.output.sendMedia(batch.length === 1 ? batch[0] : Buffer.concat(batch), batch.length);
    batch.length = 0;
  }

  private maybeComplete(turn: TurnState): void {
    if (!turn.sendingDone || turn.pendingMarks.size > 0 || this.completed.has(turn.id)) return;
    this.markDone(turn.id);
    this.listener.turnPlayed(turn);
  }

  private markDone(turnId: string): void {
    this.completed.add(turnId);
    dropOldest(this.completed, MAX_COMPLETED_TURNS);
    const list = this.waiters.get(turnId);
    this.waiters.delete(turnId);
    for (const resolve of list ?? []) resolve();
  }
}
