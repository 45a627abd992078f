// The caller's silence in fewer messages. Callers are quiet most of a call (they listen to the bot), and each 20 ms
// frame published on its own costs ingress, NATS and the asr one message (the per-frame media path is most of the
// pipeline's CPU under load, docs/benchmarks.md). So, per call: once the caller has been quiet for a hangover and
// the asr has no utterance open, consecutive quiet frames go out together, up to `maxFrames` per CallerAudio.
// Anything that is not quiet ends that at once: the frames held so far go out first, then that frame, and frames
// go out one by one again until the hangover has passed.
//
// Why no decision of the asr waits for a batch:
// - "Quiet" = a frame's RMS level below `levelDbfs`. A 256-sample (32 ms) window of the asr spans at most three
//   160-sample frames, so its energy is at most 3 × 160 / 256 = 1.875 times one quiet frame's (+2.73 dB): with the
//   level 2.73 dB or more below the asr's Silero gate (ASR_VAD_GATE_DBFS, -55; default level -58) and below the
//   energy VAD's floor (ASR_VAD_MIN_SPEECH_DBFS, -50), no window made of quiet frames can be speech: a speech
//   onset always arrives in a frame that is sent at once. RMS, not peak: a real line's hiss has peaks ~10 dB above
//   its RMS, and a peak rule took a quiet line at -65 dBFS RMS for sound, so nothing was batched on it.
// - Endpointing counts silence inside an open utterance; from the asr's SpeechActivity STARTED to its STOPPED the
//   frames go out one by one whatever they hold (the silence an utterance ends on can be up to the asr's maximum or
//   an agent's hints, longer than any fixed hangover). The hangover covers the time STARTED takes to come back.

import { performance } from "node:perf_hooks";
import { mulawFrameEnergy } from "@voicebot/audio";
import { FRAME_BYTES, FRAME_MS } from "./turn-queue.js";

export interface SilenceBatchOptions {
  /** Most frames in one CallerAudio of quiet frames (0 or 1 = every block goes out as it comes). */
  maxFrames: number;
  /** Frames go out one by one until the caller has been quiet this long (counted in stream time, 20 ms frames). */
  hangoverMs: number;
  /** A frame is quiet when its RMS level is below this (dBFS, full scale = 32768). */
  levelDbfs: number;
}

/** Consecutive caller frames to publish as one CallerAudio. */
export interface CallerAudioBlock {
  /** Index of the first frame (0 = stream start, i.e. Twilio chunk − 1). */
  firstFrame: number;
  frameCount: number;
  payload: Buffer;
  /** Wall clock when the block's last frame arrived. */
  receivedAtMs: number;
  /** Frames that came from Twilio (the others were concealed: gap fill). */
  receivedFrames: number;
  /** Quiet frames held back and sent together. */
  batched: boolean;
  /** Frames that went through a batch (maybe alone): quiet, past the hangover, with no utterance open. */
  quiet: boolean;
}

/** The asr's open utterance is forgotten after this (its STOPPED was lost): it caps an utterance at 60 s. */
export const UTTERANCE_STALE_MS = 65_000;

/** The asr's default Silero gate (ASR_VAD_GATE_DBFS) less 2.73 dB: the highest level that keeps the guarantee. */
export const SAFE_SILENCE_LEVEL_DBFS = -55 - 10 * Math.log10((3 * FRAME_BYTES) / 256);

/** True when every 160-byte frame of the payload (and a shorter rest) has an RMS level below `levelDbfs`. */
export function isQuiet(payload: Uint8Array, levelDbfs: number): boolean {
  for (let start = 0; start < payload.length; start += FRAME_BYTES) {
    if (mulawFrameEnergy(payload.subarray(start, start + FRAME_BYTES)) >= levelDbfs) return false;
  }
  return true;
}

interface Held {
  /**
   * The held frames, copied into a buffer of the batch's size: a decoded Twilio frame is a view into an 8 KB pool
   * slab, and holding views kept a slab alive per call (the load bench's heap snapshots).
   */
  payload: Buffer;
  bytes: number;
  messages: number;
  firstFrame: number;
  frameCount: number;
  receivedAtMs: number;
  receivedFrames: number;
}

/** One call's caller audio on its way to the bus: blocks in stream order in, blocks to publish out. */
export class SilenceBatcher {
  private readonly maxFrames: number;
  private readonly hangoverFrames: number;
  private readonly levelDbfs: number;
  /** Quiet frames since the last frame that was not. */
  private quietRun = 0;
  private held: Held | undefined;
  /** When the asr's SpeechActivity STARTED arrived (performance.now()); undefined once STOPPED did. */
  private utteranceSince: number | undefined;

  constructor(
    options: SilenceBatchOptions,
    private readonly emit: (block: CallerAudioBlock) => void,
  ) {
    this.maxFrames = options.maxFrames;
    this.hangoverFrames = Math.ceil(options.hangoverMs / FRAME_MS);
    this.levelDbfs = options.levelDbfs;
  }

  /** `frameCount` frames from `firstFrame`, in stream order (the jitter buffer's output). */
  add(firstFrame: number, payload: Buffer, frameCount: number, receivedAtMs: number, concealed: boolean): void {
    const receivedFrames = concealed ? 0 : frameCount;
    if (this.maxFrames <= 1) return this.emit({ firstFrame, frameCount, payload, receivedAtMs, receivedFrames, batched: false, quiet: false });
    if (!isQuiet(payload, this.levelDbfs)) {
      this.quietRun = 0;
      this.flush();
      return this.emit({ firstFrame, frameCount, payload, receivedAtMs, receivedFrames, batched: false, quiet: false });
    }
    const pastHangover = this.quietRun >= this.hangoverFrames;
    this.quietRun += frameCount;
    // Whole frames only: the asr cuts a payload into 160-byte frames.
    const batchable = pastHangover && !this.asrListening() && payload.length === frameCount * FRAME_BYTES && frameCount < this.maxFrames;
    if (!batchable) {
      this.flush();
      return this.emit({ firstFrame, frameCount, payload, receivedAtMs, receivedFrames, batched: false, quiet: false });
    }
    // A message holds consecutive frames only: a gap (or a full message) starts the next one.
    const open = this.held;
    if (open && (open.firstFrame + open.frameCount !== firstFrame || open.frameCount + frameCount > this.maxFrames)) this.flush();
    if (!this.held) {
      const room = Buffer.allocUnsafeSlow(this.maxFrames * FRAME_BYTES);
      this.held = { payload: room, bytes: 0, messages: 0, firstFrame, frameCount: 0, receivedAtMs, receivedFrames: 0 };
    }
    const held = this.held;
    held.payload.set(payload, held.bytes);
    held.bytes += payload.length;
    held.messages++;
    held.frameCount += frameCount;
    held.receivedAtMs = receivedAtMs;
    held.receivedFrames += receivedFrames;
    if (this.held.frameCount >= this.maxFrames) this.flush();
  }

  /** Sends what is held (before anything that must come after the audio: a key, the call's end). */
  flush(): void {
    const held = this.held;
    if (!held) return;
    this.held = undefined;
    const { firstFrame, frameCount, receivedAtMs, receivedFrames } = held;
    this.emit({ firstFrame, frameCount, payload: held.payload.subarray(0, held.bytes), receivedAtMs, receivedFrames, batched: held.messages > 1, quiet: true });
  }

  /** The asr heard the caller start an utterance: its endpointing needs every frame as it comes. */
  speechStarted(): void {
    this.utteranceSince = performance.now();
    this.flush();
  }

  speechStopped(): void {
    this.utteranceSince = undefined;
  }

  /** The asr has an utterance of the caller open (not stale). */
  get callerSpeaking(): boolean {
    return this.asrListening();
  }

  private asrListening(): boolean {
    if (this.utteranceSince === undefined) return false;
    if (performance.now() - this.utteranceSince < UTTERANCE_STALE_MS) return true;
    this.utteranceSince = undefined;
    return false;
  }
}
