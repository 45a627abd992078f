// The last few seconds of a call's caller audio, as published, so an asr replica that takes the call over can hear
// what was said while nobody owned it. Caller audio is core NATS (a JetStream stream of every frame would cost the
// media path more than everything else): frames published while the owner was dead reached no one. The new owner
// asks for the frames from where its predecessor's finished work ends (CallerAudioReplayRequest) and the caller's
// words spoken across the takeover are recognized whole.
//
// Kept in half-second blocks of 160-byte μ-law frames, in a ring by frame number. Frames that never came (a gap the
// jitter buffer did not conceal) read as silence, as the asr fills them. So do quiet frames that went out in a
// silence batch (caller quiet past the hangover, no utterance open: nothing the asr decides on): a block period with
// nothing else holds no buffer, so a caller listening to the bot costs next to nothing.

import { MULAW_SILENCE } from "@voicebot/audio";
import { FRAME_BYTES } from "./turn-queue.js";

export interface RecentFrames {
  firstFrame: number;
  frameCount: number;
  payload: Buffer;
  /** Wall clock when the last of these frames arrived. */
  receivedAtMs: number;
}

const BLOCK_FRAMES = 25;
const BLOCK_BYTES = BLOCK_FRAMES * FRAME_BYTES;

export class RecentCallerAudio {
  private readonly capacity: number;
  /** Per slot: the audio of block period `periods[slot]` (frame / BLOCK_FRAMES), or none when all of it is silence. */
  private readonly blocks: Array<Buffer | undefined>;
  private readonly periods: number[];
  /** Index of the newest frame kept (-1: none yet) and of the oldest one still kept. */
  private newest = -1;
  private oldest = 0;
  private newestAtMs = 0;

  constructor(capacityFrames: number) {
    this.capacity = Math.max(1, Math.floor(capacityFrames));
    // The kept frames span one block period more than their length when they do not start on a period.
    const slots = Math.ceil(this.capacity / BLOCK_FRAMES) + 1;
    this.blocks = new Array<Buffer | undefined>(slots).fill(undefined);
    this.periods = new Array<number>(slots).fill(-1);
  }

  get capacityFrames(): number {
    return this.capacity;
  }

  /**
   * Consecutive frames from `firstFrame` on (a published block); `quiet`: a silence batch. Frames at or before the
   * newest one are ignored.
   */
  add(firstFrame: number, payload: Uint8Array, receivedAtMs: number, quiet = false): void {
    const count = Math.floor(payload.length / FRAME_BYTES);
    if (count === 0) return;
    let from = 0;
    if (this.newest < 0) this.oldest = firstFrame;
    else if (firstFrame <= this.newest) from = this.newest + 1 - firstFrame;
    if (from >= count) return;
    // Only the ring's worth of a longer block.
    for (let i = Math.max(from, count - this.capacity); i < count; i++) {
      this.write(firstFrame + i, payload.subarray(i * FRAME_BYTES, (i + 1) * FRAME_BYTES), quiet);
    }
    this.newest = firstFrame + count - 1;
    this.oldest = Math.max(this.oldest, this.newest - this.capacity + 1);
    this.newestAtMs = receivedAtMs;
  }

  /** The frames kept from `fromFrame` on (from the oldest kept when that is later), or undefined when there are none. */
  since(fromFrame: number): RecentFrames | undefined {
    if (this.newest < 0) return undefined;
    const first = Math.max(Math.floor(fromFrame), this.oldest);
    if (first > this.newest) return undefined;
    const frameCount = this.newest - first + 1;
    const payload = Buffer.alloc(frameCount * FRAME_BYTES, MULAW_SILENCE);
    for (let i = 0; i < frameCount; i++) {
      const frame = first + i;
      const period = Math.floor(frame / BLOCK_FRAMES);
      const slot = period % this.blocks.length;
      const block = this.blocks[slot];
      if (!block || this.periods[slot] !== period) continue; // silence
      const at = (frame % BLOCK_FRAMES) * FRAME_BYTES;
      block.copy(payload, i * FRAME_BYTES, at, at + FRAME_BYTES);
    }
    return { firstFrame: first, frameCount, payload, receivedAtMs: this.newestAtMs };
  }

  private write(frame: number, bytes: Uint8Array, quiet: boolean): void {
    const period = Math.floor(frame / BLOCK_FRAMES);
    const slot = period % this.blocks.length;
    if (this.periods[slot] !== period) {
      // The slot's older period is out of the ring: its buffer is reused, or let go while the caller is quiet.
      this.periods[slot] = period;
      const old = this.blocks[slot];
      this.blocks[slot] = quiet || !old ? undefined : old.fill(MULAW_SILENCE);
    }
    let block = this.blocks[slot];
    if (!block) {
      if (quiet) return;
      block = this.blocks[slot] = Buffer.alloc(BLOCK_BYTES, MULAW_SILENCE);
    }
    block.set(bytes, (frame % BLOCK_FRAMES) * FRAME_BYTES);
  }
}
