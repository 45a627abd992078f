// Inbound jitter buffer of one call: Twilio `media` frames may arrive in bursts, late, out of order, twice or not
// at all. Frames are keyed by Twilio's 1-based `chunk` counter. A frame that arrives in order is passed on at
// once; one that arrives ahead of a gap is held (at most `holdMs`) for the missing frames; when the gap is still
// open after that, the missing frames are concealed (silence, or a repeat of the previous frame for a single one)
// so the recognizer sees continuous audio with correct frame numbering. Pure state: the caller drives time, and
// the shared playout scheduler calls `pump` while frames are held (no timer per call).
import { MULAW_SILENCE } from "@voicebot/audio";
import { FRAME_BYTES } from "./turn-queue.js";

/** Gaps longer than this (1 s) are passed on as gaps, not filled: the recognizer caps its own filling. */
export const MAX_CONCEAL_FRAMES = 50;
/** More frames than this (2.5 s) waiting behind one gap: stop waiting for it. Bounds memory per call. */
export const MAX_HELD_FRAMES = 128;
/** Concealed ranges remembered, to tell a frame that came too late from a duplicate. */
const MAX_CONCEALED_RANGES = 16;

export interface JitterSink {
  /**
   * Audio to pass on, in chunk order: `frames` frames starting at Twilio chunk `chunk`. `concealed` blocks
   * stand in for frames that never arrived. `receivedAtMs` is the wall-clock arrival of the block's last frame.
   */
  forward(chunk: number, payload: Buffer, frames: number, receivedAtMs: number, concealed: boolean): void;
  /** A held frame passed on because the frame it waited for arrived late: it came out of order. */
  reordered(): void;
  /** `implausible`: a lone frame numbered far ahead that no frame followed (a bad chunk number). */
  dropped(reason: "duplicate" | "late" | "implausible"): void;
  /** `missing` frames never came in time; `concealed` of them were filled in (0 when the gap was too long). */
  gap(missing: number, concealed: number): void;
}

interface HeldFrame {
  payload: Buffer;
  receivedAtMs: number;
  /** Monotonic arrival time (the hold is measured on it). */
  arrivedAt: number;
}

export type PushResult = "forwarded" | "held" | "duplicate" | "late";

export class InboundJitterBuffer {
  /** The chunk expected next: every chunk below it has been passed on (or concealed, or skipped). */
  private next = 1;
  private readonly held = new Map<number, HeldFrame>();
  private lastPayload: Buffer | undefined;
  private readonly concealedRanges: Array<[number, number]> = [];
  /** When a frame last arrived in order (`nowMs` of push). */
  private lastInOrderAt = -Infinity;

  constructor(
    private readonly holdMs: number,
    private readonly sink: JitterSink,
  ) {}

  /** True while frames are held for a gap (the scheduler keeps pumping until then). */
  get holding(): boolean {
    return this.held.size > 0;
  }

  push(chunk: number, payload: Buffer, nowMs: number, receivedAtMs: number): PushResult {
    if (chunk < this.next) {
      const reason = this.wasConcealed(chunk) ? "late" : "duplicate";
      this.sink.dropped(reason);
      return reason;
    }
    if (this.held.has(chunk)) {
      this.sink.dropped("duplicate");
      return "duplicate";
    }
    if (chunk === this.next) {
      this.lastInOrderAt = nowMs;
      this.pass(chunk, payload, receivedAtMs);
      this.releaseRun(true);
      return "forwarded";
    }
    this.held.set(chunk, { payload, receivedAtMs, arrivedAt: nowMs });
    if (this.held.size > MAX_HELD_FRAMES) this.closeGap(true);
    this.pump(nowMs); // closes at once a gap whose hold is over (no hold time; a far gap this frame confirms)
    return "held";
  }

  /** Closes every gap whose hold time is over; true while frames are still held. */
  pump(nowMs: number): boolean {
    while (this.held.size > 0) {
      let earliest = Infinity;
      for (const frame of this.held.values()) earliest = Math.min(earliest, frame.arrivedAt);
      if (nowMs - earliest < this.holdMs) break;
      if (!this.closeGap(false)) break;
    }
    return this.held.size > 0;
  }

  /** End of the stream: pass on everything held, closing the gaps now. */
  flushAll(): void {
    while (this.held.size > 0) this.closeGap(true);
  }

  /**
   * Gives up on the frames missing before the lowest held one, then passes on the run that follows. False when it
   * did nothing: the lowest is a lone frame far ahead, waiting for the frame after it to show the jump is real.
   * `force` (too much held, end of stream) drops such a frame instead.
   */
  private closeGap(force: boolean): boolean {
    let lowest = Infinity;
    for (const chunk of this.held.keys()) lowest = Math.min(lowest, chunk);
    const missing = lowest - this.next;
    const frame = this.held.get(lowest)!;
    if (missing > MAX_CONCEAL_FRAMES) {
      // Numbered over a second ahead: its number may be wrong, not the stream's. Jumping to it would make every
      // later frame look like a duplicate and leave the caller unheard for the rest of the call. Frames in order
      // that arrived after it show a wrong number; a real jump (the stream going on after a long gap) shows itself
      // by the frames after it, the next one 20 ms later. Until anything arrives after it, it waits (dropped if
      // forced); when frames that came later do not follow it, it is dropped (the stream goes on without it).
      const wrong = this.lastInOrderAt > frame.arrivedAt;
      const after = this.arrivedAfter(lowest, frame.arrivedAt);
      if (wrong || after !== "following") {
        if (!wrong && !force && after === "nothing") return false;
        this.held.delete(lowest);
        this.sink.dropped("implausible");
        return true;
      }
    }
    if (missing <= MAX_CONCEAL_FRAMES) {
      const repeat = missing === 1 && this.lastPayload?.length === FRAME_BYTES;
      const fill = repeat ? Buffer.from(this.lastPayload!) : Buffer.alloc(missing * FRAME_BYTES, MULAW_SILENCE);
      this.sink.forward(this.next, fill, missing, frame.receivedAtMs, true);
      this.rememberConcealed(this.next, lowest - 1);
      this.sink.gap(missing, missing);
    } else {
      this.sink.gap(missing, 0);
    }
    this.next = lowest;
    this.releaseRun(false);
    return true;
  }

  /**
   * What arrived after frame `chunk` (at `arrivedAt`) among the held frames: one less than the concealment limit
   * after it (`following`: the stream goes on from there), only others, or nothing. The frames of one longer media
   * message arrive together: they do not vouch for each other.
   */
  private arrivedAfter(chunk: number, arrivedAt: number): "following" | "others" | "nothing" {
    let found: "others" | "nothing" = "nothing";
    for (const [other, held] of this.held) {
      if (held.arrivedAt <= arrivedAt) continue;
      if (other > chunk && other - chunk <= MAX_CONCEAL_FRAMES) return "following";
      found = "others";
    }
    return found;
  }

  /** Passes on held frames that are now in order (`reordered`: because the frame they waited for arrived). */
  private releaseRun(reordered: boolean): void {
    for (let frame = this.held.get(this.next); frame; frame = this.held.get(this.next)) {
      this.held.delete(this.next);
      if (reordered) this.sink.reordered();
      this.pass(this.next, frame.payload, frame.receivedAtMs);
    }
  }

  private pass(chunk: number, payload: Buffer, receivedAtMs: number): void {
    this.next = chunk + 1;
    this.lastPayload = payload;
    this.sink.forward(chunk, payload, Math.ceil(payload.length / FRAME_BYTES), receivedAtMs, false);
  }

  private rememberConcealed(from: number, to: number): void {
    this.concealedRanges.push([from, to]);
    if (this.concealedRanges.length > MAX_CONCEALED_RANGES) this.concealedRanges.shift();
  }

  private wasConcealed(chunk: number): boolean {
    return this.concealedRanges.some(([from, to]) => chunk >= from && chunk <= to);
  }
}
