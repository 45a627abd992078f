// Cutting a byte stream into fixed-size frames (Twilio Media Streams: 20 ms of 8 kHz μ-law = 160 bytes).

/** μ-law code for zero amplitude (positive zero); pad with this, not 0x00, which is full-scale negative. */
export const MULAW_SILENCE = 0xff;
export const FRAME_MS = 20;

/** Samples in one FRAME_MS frame at `rate` (160 at 8 kHz). Throws if the frame is not a whole number of samples. */
export function samplesPerFrame(rate: number): number {
  const n = (rate * FRAME_MS) / 1000;
  if (!Number.isInteger(n) || n <= 0) throw new RangeError(`${FRAME_MS} ms at ${rate} Hz is not a whole number of samples`);
  return n;
}

export class FrameSplitter {
  readonly frameBytes: number;
  private pending: Uint8Array;
  private pendingLength = 0;

  constructor(frameBytes: number) {
    if (!Number.isInteger(frameBytes) || frameBytes <= 0) throw new RangeError(`frameBytes must be a positive integer, got ${frameBytes}`);
    this.frameBytes = frameBytes;
    this.pending = new Uint8Array(frameBytes);
  }

  /** Bytes buffered towards the next frame. */
  get buffered(): number {
    return this.pendingLength;
  }

  /** Returns every frame completed by `bytes` (each a fresh copy); keeps the remainder for the next call. */
  push(bytes: Uint8Array): Uint8Array[] {
    const frames: Uint8Array[] = [];
    let offset = 0;
    if (this.pendingLength > 0) {
      const take = Math.min(this.frameBytes - this.pendingLength, bytes.length);
      this.pending.set(bytes.subarray(0, take), this.pendingLength);
      this.pendingLength += take;
      offset = take;
      if (this.pendingLength < this.frameBytes) return frames;
      frames.push(this.pending.slice());
      this.pendingLength = 0;
    }
    for (; offset + this.frameBytes <= bytes.length; offset += this.frameBytes) {
      frames.push(bytes.slice(offset, offset + this.frameBytes));
    }
    this.pending.set(bytes.subarray(offset));
    this.pendingLength = bytes.length - offset;
    return frames;
  }

  /** The buffered remainder padded to a whole frame with `padByte` (μ-law silence by default), or undefined if none. */
  flush(padByte: number = MULAW_SILENCE): Uint8Array | undefined {
    if (this.pendingLength === 0) return undefined;
    const frame = this.pending.slice();
    frame.fill(padByte, this.pendingLength);
    this.pendingLength = 0;
    return frame;
  }
}
