import { FrameSplitter } from "@voicebot/audio";

export interface PackerOptions {
  /** Bytes of one 20 ms frame in the output format. */
  frameBytes: number;
  /** Byte that fills the last partial frame (μ-law silence 0xFF, or 0 for L16). */
  padByte: number;
  /** Frames in part 0: small, so the caller hears the bot as soon as the first audio exists. */
  firstPartFrames: number;
  /** Most frames in any later part (10 = 200 ms). */
  maxPartFrames: number;
}

/**
 * Cuts a stream of encoded audio into BotAudio payloads of whole 20 ms frames, handing them out as soon as they
 * exist. One frame is always held back until `finish`, so the part that carries `chunkDone` is never empty and no
 * extra empty message is needed to close a chunk.
 */
export class PartPacker {
  private readonly splitter: FrameSplitter;
  private pending: Uint8Array[] = [];
  private parts = 0;
  private bytesIn = 0;

  constructor(private readonly options: PackerOptions) {
    this.splitter = new FrameSplitter(options.frameBytes);
  }

  /** True once any audio came in: the chunk can then be ended with what exists. */
  get hasAudio(): boolean {
    return this.bytesIn > 0;
  }

  get partsOut(): number {
    return this.parts;
  }

  /** Payloads ready to publish now (possibly none). */
  push(bytes: Uint8Array): Uint8Array[] {
    if (bytes.length === 0) return [];
    this.bytesIn += bytes.length;
    this.pending.push(...this.splitter.push(bytes));
    return this.take(false);
  }

  /** The remaining payloads, the last padded to a whole frame; empty only if no audio ever came in. */
  finish(): Uint8Array[] {
    const last = this.splitter.flush(this.options.padByte);
    if (last) this.pending.push(last);
    return this.take(true);
  }

  private take(final: boolean): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (;;) {
      const available = final ? this.pending.length : this.pending.length - 1;
      if (available <= 0) return out;
      const limit = this.parts === 0 ? this.options.firstPartFrames : this.options.maxPartFrames;
      const frames = this.pending.splice(0, Math.min(limit, available));
      out.push(concat(frames));
      this.parts++;
    }
  }
}

function concat(frames: Uint8Array[]): Uint8Array {
  if (frames.length === 1) return frames[0];
  const out = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let offset = 0;
  for (const frame of frames) {
    out.set(frame, offset);
    offset += frame.length;
  }
  return out;
}
