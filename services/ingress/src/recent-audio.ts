// The last few seconds of a call's caller audio, as published, so an asr replica that takes the call over can hear
// what was said while nobody owned it. Caller audio is core NATS (a JetStream stream of every frame would cost the
// media path more than everything else): frames published while the owner was dead reached no one. The new owner
// asks for the frames from where its predecessor's finished work ends (CallerAudioReplayRequest) and the caller's
// words spoken across the takeover are recognized whole.
//
// One fixed ring of 160-byte μ-law frames per call, filled in frame order; frames that never came (a gap the jitter
// buffer did not conceal) are kept as silence, as the asr fills them.

import { MULAW_SILENCE } from "@voicebot/audio";
import { FRAME_BYTES } from "./turn-queue.js";

export interface RecentFrames {
  firstFrame: number;
  frameCount: number;
  payload: Buffer;
  /** Wall clock when the last of these frames arrived. */
  receivedAtMs: number;
}

export class RecentCallerAudio {
  private readonly ring: Buffer;
  private readonly capacity: number;
  /** Index of the newest frame kept (-1: none yet) and of the oldest one still kept. */
  private newest = -1;
  private oldest = 0;
  private newestAtMs = 0;

  constructor(capacityFrames: number) {
    this.capacity = Math.max(1, Math.floor(capacityFrames));
    this.ring = Buffer.allocUnsafe(this.capacity * FRAME_BYTES);
  }

  get capacityFrames(): number {
    return this.capacity;
  }

  /** Consecutive frames from `firstFrame` on (a published block). Frames at or before the newest one are ignored. */
  add(firstFrame: number, payload: Uint8Array, receivedAtMs: number): void {
    const count = Math.floor(payload.length / FRAME_BYTES);
    if (count === 0) return;
    let skip = 0;
    if (this.newest < 0) {
      this.oldest = firstFrame;
    } else if (firstFrame <= this.newest) {
      skip = Math.min(count, this.newest + 1 - firstFrame);
      if (skip === count) return;
    } else if (firstFrame > this.newest + 1) {
      // Lost frames: silence, at most a ring's worth.
      for (let frame = Math.max(this.newest + 1, firstFrame - this.capacity); frame < firstFrame; frame++) {
        const at = (frame % this.capacity) * FRAME_BYTES;
        this.ring.fill(MULAW_SILENCE, at, at + FRAME_BYTES);
      }
    }
    // The ring's last `capacity` frames of the block, in at most two pieces (the ring wraps once at most).
    const from = Math.max(skip, count - this.capacity);
    for (let i = from; i < count; ) {
      const slot = (firstFrame + i) % this.capacity;
      const run = Math.min(count - i, this.capacity - slot);
      this.ring.set(payload.subarray(i * FRAME_BYTES, (i + run) * FRAME_BYTES), slot * FRAME_BYTES);
      i += run;
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
    const payload = Buffer.allocUnsafe(frameCount * FRAME_BYTES);
    for (let i = 0; i < frameCount; ) {
      const slot = (first + i) % this.capacity;
      const run = Math.min(frameCount - i, this.capacity - slot);
      this.ring.copy(payload, i * FRAME_BYTES, slot * FRAME_BYTES, (slot + run) * FRAME_BYTES);
      i += run;
    }
    return { firstFrame: first, frameCount, payload, receivedAtMs: this.newestAtMs };
  }
}
