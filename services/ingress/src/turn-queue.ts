// Reassembles one call's bot audio into a single ordered stream of 20 ms frames and marks.
// BotAudio parts come from several tts replicas, so they may arrive in any order: turns play in the order their
// first part (or failure) arrived, except that a dialog turn (t<n>) goes before a later dialog turn that has not
// begun; chunks play in chunkSeq order, parts in partSeq order. This module is pure state; CallPlayout paces it and
// does the I/O.
import { MULAW_SILENCE } from "@voicebot/audio";
import { dialogTurnNumber } from "@voicebot/bus";
import type { TurnTiming } from "@voicebot/proto";
import { dropOldest } from "@voicebot/service-kit";

export const FRAME_BYTES = 160;
export const FRAME_MS = 20;

export interface AudioPart {
  turnId: string;
  chunkSeq: number;
  partSeq: number;
  payload: Uint8Array;
  chunkDone: boolean;
  turnDone: boolean;
  text: string;
  timing: TurnTiming | undefined;
  /** The dialog state's no-input wait (on part 0 of a chunk; 0 = ingress's default; absent on ingress's own lines). */
  noInputMs?: number;
}

export type AddResult = "accepted" | "finished_turn" | "late_chunk" | "duplicate" | "after_last_chunk";
export type SkipReason = "synthesis_failed" | "bad_format" | "stalled" | "empty";

export class ChunkState {
  /** Parts that came ahead of an earlier one, by partSeq. */
  readonly parts = new Map<number, Uint8Array>();
  nextPart = 0;
  lastPart: number | undefined;
  /**
   * Parts taken in order whose audio is not all sent: the first from `readyOffset` on. Frames are cut from them as
   * they are (no copy into one growing buffer, which copied a chunk's audio again with every part).
   */
  private readonly ready: Uint8Array[] = [];
  private readyOffset = 0;
  /** Bytes in `ready` not yet sent (less than a frame, or waiting for lead). */
  readyBytes = 0;
  framesSent = 0;
  text = "";
  timing: TurnTiming | undefined;
  constructor(readonly seq: number) {}

  get complete(): boolean {
    return this.lastPart !== undefined && this.nextPart > this.lastPart;
  }

  /** Keep what has arrived in order, drop the rest: the chunk ends where it is. */
  truncate(): void {
    this.parts.clear();
    this.lastPart = this.nextPart - 1;
  }

  /** Makes the parts that are next in order ready to send. */
  takeInOrderParts(): void {
    for (let part = this.parts.get(this.nextPart); part !== undefined; part = this.parts.get(this.nextPart)) {
      this.parts.delete(this.nextPart);
      this.nextPart++;
      if (part.length === 0) continue;
      this.ready.push(part);
      this.readyBytes += part.length;
    }
  }

  /** The next 20 ms of ready audio (readyBytes > 0); a short last frame is padded with silence. */
  takeFrame(): Buffer {
    const head = this.ready[0];
    if (head.length - this.readyOffset >= FRAME_BYTES) {
      const frame = Buffer.from(head.buffer, head.byteOffset + this.readyOffset, FRAME_BYTES);
      this.consume(FRAME_BYTES);
      return frame;
    }
    // The frame spans parts, or is the chunk's short last one.
    const frame = Buffer.alloc(FRAME_BYTES, MULAW_SILENCE);
    for (let filled = 0; filled < FRAME_BYTES && this.ready.length > 0; ) {
      const part = this.ready[0];
      const n = Math.min(FRAME_BYTES - filled, part.length - this.readyOffset);
      frame.set(part.subarray(this.readyOffset, this.readyOffset + n), filled);
      filled += n;
      this.consume(n);
    }
    return frame;
  }

  private consume(bytes: number): void {
    this.readyBytes -= bytes;
    this.readyOffset += bytes;
    if (this.readyOffset >= this.ready[0].length) {
      this.ready.shift();
      this.readyOffset = 0;
    }
  }
}

export class TurnState {
  readonly chunks = new Map<number, ChunkState>();
  readonly failed = new Map<number, SkipReason>();
  /** The chunk to play next. */
  next = 0;
  /** chunkSeq of the turn's final chunk, once a part with turnDone arrived (or that chunk failed). */
  last: number | undefined;
  framesSent = 0;
  /** Every chunk has been sent (or skipped); only marks may still be pending. */
  sendingDone = false;
  timing: TurnTiming | undefined;
  /** No-input wait after this turn, from its latest chunk so far (0 = ingress's default, undefined = not said). */
  noInputMs: number | undefined;
  private noInputChunk = -1;
  lastActivityMs: number;
  waitingSince: number | undefined;
  // Playback bookkeeping, kept by CallPlayout.
  readonly pendingMarks = new Set<string>();
  readonly heard: string[] = [];
  lastHeardChunk = -1;
  /** The dialog's number for this turn (t<n>); undefined for ingress's own lines. */
  readonly dialogTurn: number | undefined;

  constructor(
    readonly id: string,
    nowMs: number,
  ) {
    this.lastActivityMs = nowMs;
    this.dialogTurn = dialogTurnNumber(id);
  }

  /** A chunk's no-input wait: the latest chunk's wins, as the dialog's state moves on while the turn is said. */
  noteNoInput(chunkSeq: number, ms: number): void {
    if (chunkSeq < this.noInputChunk) return;
    this.noInputChunk = chunkSeq;
    this.noInputMs = ms;
  }

  get heardText(): string {
    return this.heard.filter(Boolean).join(" ");
  }
}

export type QueueStep =
  | { kind: "frame"; frame: Buffer; turn: TurnState; chunk: ChunkState; firstOfTurn: boolean }
  | { kind: "mark"; name: string; turn: TurnState; chunkSeq: number; text: string }
  | { kind: "skipped"; turn: TurnState; chunkSeq: number; reason: SkipReason }
  | { kind: "abandoned"; turn: TurnState; missingChunk: number }
  | { kind: "turnSent"; turn: TurnState }
  /** The next frame is ready but the caller's lead budget is spent. */
  | { kind: "full" }
  /** The current turn is missing its next part or chunk. */
  | { kind: "wait"; turn: TurnState }
  | { kind: "idle" };

const IDLE: QueueStep = { kind: "idle" };
const FULL: QueueStep = { kind: "full" };

/** Remembers this many finished turn ids per call, to drop their late audio. */
const MAX_CLOSED_TURNS = 1_000;

export class TurnQueue {
  private readonly turns: TurnState[] = [];
  private readonly byId = new Map<string, TurnState>();
  private readonly closed = new Set<string>();
  /** The highest dialog turn number that has begun playing or is finished (-1: none). */
  private begunDialogTurn = -1;

  /**
   * @param stallMs how long a turn may wait for a missing chunk or part while a later turn is queued behind it
   *   (the dialog has moved on, so what is missing is late or lost)
   * @param aloneStallMs the same with nothing queued behind it: a long pause inside a turn (a tool call between
   *   two sentences) is normal then, and waiting blocks nothing
   */
  constructor(
    private readonly stallMs: number,
    private readonly aloneStallMs: number,
  ) {}

  /** The turn being played (or about to be). */
  get current(): TurnState | undefined {
    return this.turns[0];
  }

  get idle(): boolean {
    return this.turns.length === 0;
  }

  isClosed(turnId: string): boolean {
    return this.closed.has(turnId);
  }

  /** A dialog turn not seen before, older than a dialog turn that has begun playing or is finished. */
  isOvertaken(turnId: string): boolean {
    if (this.byId.has(turnId) || this.closed.has(turnId)) return false;
    const number = dialogTurnNumber(turnId);
    return number !== undefined && number < this.begunDialogTurn;
  }

  /** Closes a turn that will not be played, so its audio and failures are dropped as a finished turn's. */
  closeUnplayed(turnId: string): void {
    const turn = this.byId.get(turnId);
    if (turn) this.finish(turn);
    else this.closed.add(turnId);
    dropOldest(this.closed, MAX_CLOSED_TURNS);
  }

  add(part: AudioPart, nowMs: number): AddResult {
    const turn = this.turn(part.turnId, nowMs);
    if (!turn) return "finished_turn";
    turn.lastActivityMs = nowMs;
    if (part.chunkSeq < turn.next) return "late_chunk";
    if (turn.last !== undefined && part.chunkSeq > turn.last) return "after_last_chunk";
    if (turn.failed.has(part.chunkSeq)) return "late_chunk";
    let chunk = turn.chunks.get(part.chunkSeq);
    if (!chunk) {
      chunk = new ChunkState(part.chunkSeq);
      turn.chunks.set(part.chunkSeq, chunk);
    }
    if (part.partSeq < chunk.nextPart || chunk.parts.has(part.partSeq)) return "duplicate";
    if (chunk.lastPart !== undefined && part.partSeq > chunk.lastPart) return "duplicate";
    // A copy of its own: a decoded message's bytes are a view into the NATS read buffer (an 8 KB slab), and a view
    // queued here for seconds kept the whole slab alive (5x the audio's size in the load bench's heap snapshots).
    chunk.parts.set(part.partSeq, new Uint8Array(part.payload));
    if (part.chunkDone) chunk.lastPart = part.partSeq;
    if (part.turnDone && part.chunkDone) turn.last = part.chunkSeq;
    if (part.text && !chunk.text) chunk.text = part.text;
    if (part.timing && !chunk.timing) chunk.timing = part.timing;
    if (part.timing && !turn.timing) turn.timing = part.timing;
    if (part.partSeq === 0 && part.noInputMs !== undefined) turn.noteNoInput(part.chunkSeq, part.noInputMs);
    return "accepted";
  }

  /** A chunk that will never come (synthesis failed, unusable audio): play past it. */
  /** A chunk that will have no audio; `turnDone`: it was the turn's last, so the turn ends after it. */
  fail(turnId: string, chunkSeq: number, reason: SkipReason, nowMs: number, turnDone = false): boolean {
    const turn = this.turn(turnId, nowMs);
    if (!turn || chunkSeq < turn.next || turn.failed.has(chunkSeq)) return false;
    turn.lastActivityMs = nowMs;
    turn.failed.set(chunkSeq, reason);
    if (turnDone) turn.last ??= chunkSeq;
    return true;
  }

  /**
   * The next thing to send. Informational steps (skipped, abandoned, turnSent) and marks do not use the lead
   * budget; a frame is only taken when `frameAllowed`.
   */
  next(nowMs: number, frameAllowed: boolean): QueueStep {
    for (;;) {
      const turn = this.turns[0];
      if (!turn) return IDLE;
      if (turn.last !== undefined && turn.next > turn.last) {
        this.finish(turn);
        return { kind: "turnSent", turn };
      }
      const seq = turn.next;
      let chunk = turn.chunks.get(seq);
      // Before a failure is looked at: audio that came in order before it is played.
      chunk?.takeInOrderParts();
      const failure = turn.failed.get(seq);
      if (failure) {
        if (!chunk || (chunk.framesSent === 0 && chunk.readyBytes === 0)) {
          turn.chunks.delete(seq);
          turn.next++;
          return { kind: "skipped", turn, chunkSeq: seq, reason: failure };
        }
        // It failed half-way: finish with what was already sent.
        chunk.truncate();
      }
      if (chunk) {
        if (chunk.readyBytes >= FRAME_BYTES || (chunk.complete && chunk.readyBytes > 0)) {
          if (!frameAllowed) return FULL;
          return this.takeFrame(turn, chunk);
        }
        if (chunk.complete) {
          turn.chunks.delete(seq);
          turn.next++;
          if (chunk.framesSent === 0) return { kind: "skipped", turn, chunkSeq: seq, reason: "empty" };
          return { kind: "mark", name: `${turn.id}.${seq}`, turn, chunkSeq: seq, text: chunk.text };
        }
      }
      // Missing data: wait, unless this turn has been stuck longer than the stall limit.
      turn.waitingSince ??= nowMs;
      const limit = this.turns.length > 1 ? this.stallMs : this.aloneStallMs;
      if (nowMs - Math.max(turn.waitingSince, turn.lastActivityMs) < limit) return { kind: "wait", turn };
      if (chunk) {
        chunk.truncate();
        if (chunk.framesSent === 0 && chunk.readyBytes === 0) {
          turn.chunks.delete(seq);
          turn.next++;
          return { kind: "skipped", turn, chunkSeq: seq, reason: "stalled" };
        }
        continue; // ends the chunk with what arrived
      }
      const later = [...turn.chunks.keys(), ...turn.failed.keys()].some((k) => k > seq);
      if (later) {
        turn.next++;
        return { kind: "skipped", turn, chunkSeq: seq, reason: "stalled" };
      }
      // Nothing beyond the gap has arrived: the rest of the turn is not coming.
      turn.last = seq - 1;
      return { kind: "abandoned", turn, missingChunk: seq };
    }
  }

  /** Whether a dialog turn numbered `from` or later has begun playing (or is finished). */
  hasBegunFrom(from: number): boolean {
    return this.begunDialogTurn >= from;
  }

  /** Drops the queued dialog turns numbered below `before` (a superseding CLEAR); their late audio will be ignored. */
  dropBefore(before: number): TurnState[] {
    const dropped = this.turns.filter((turn) => turn.dialogTurn !== undefined && turn.dialogTurn < before);
    for (const turn of dropped) this.finish(turn);
    return dropped;
  }

  /** Drops every queued turn (barge-in); their late audio will be ignored. */
  dropAll(): TurnState[] {
    const dropped = this.turns.splice(0);
    for (const turn of dropped) this.finish(turn);
    return dropped;
  }

  private takeFrame(turn: TurnState, chunk: ChunkState): QueueStep {
    const frame = chunk.takeFrame();
    const firstOfTurn = turn.framesSent === 0;
    if (firstOfTurn) this.noteBegun(turn);
    chunk.framesSent++;
    turn.framesSent++;
    turn.waitingSince = undefined;
    return { kind: "frame", frame, turn, chunk, firstOfTurn };
  }

  private turn(turnId: string, nowMs: number): TurnState | undefined {
    const known = this.byId.get(turnId);
    if (known) return known;
    if (this.closed.has(turnId)) return undefined;
    const turn = new TurnState(turnId, nowMs);
    this.byId.set(turnId, turn);
    // The dialog's turns play in its order while they can: a later one that has not begun waits behind this one.
    const number = turn.dialogTurn;
    const before = number === undefined ? -1 : this.turns.findIndex((t) => t.framesSent === 0 && t.dialogTurn !== undefined && t.dialogTurn > number);
    if (before >= 0) this.turns.splice(before, 0, turn);
    else this.turns.push(turn);
    return turn;
  }

  private noteBegun(turn: TurnState): void {
    if (turn.dialogTurn !== undefined && turn.dialogTurn > this.begunDialogTurn) this.begunDialogTurn = turn.dialogTurn;
  }

  private finish(turn: TurnState): void {
    this.noteBegun(turn);
    turn.sendingDone = true;
    const index = this.turns.indexOf(turn);
    if (index >= 0) this.turns.splice(index, 1);
    this.byId.delete(turn.id);
    this.closed.add(turn.id);
    dropOldest(this.closed, MAX_CLOSED_TURNS);
  }
}
