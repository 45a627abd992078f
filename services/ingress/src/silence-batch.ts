// The caller's silence in fewer messages. Callers are quiet most of a call (they listen to the bot), and each 20 ms
// frame published on its own costs ingress, NATS and the asr one message (the per-frame media path is most of the
// pipeline's CPU under load, docs/benchmarks.md). So, per call: once the caller has been quiet for a hangover and
// the asr has no utterance open, consecutive quiet frames go out together, up to `maxFrames` per CallerAudio.
// Anything that is not quiet ends that at once: the frames held so far go out first, then that frame, and frames
// go out one by one again until the hangover has passed.
//
// Why no decision of the asr waits for a batch:
// - "Quiet" = every sample's magnitude below `levelDbfs` (peak). A window's RMS is never above its peak, so with
//   the level at or below the asr's Silero gate (ASR_VAD_GATE_DBFS, -55) and the energy VAD's floor
//   (ASR_VAD_MIN_SPEECH_DBFS, -50), no 32 ms window made of quiet frames can be speech: a speech onset always
//   arrives in a frame that is sent at once.
// - Endpointing counts silence inside an open utterance; from the asr's SpeechActivity STARTED to its STOPPED the
//   frames go out one by one whatever they hold (the silence an utterance ends on can be up to the asr's maximum or
//   an agent's hints, longer than any fixed hangover). The hangover covers the time STARTED takes to come back.

import { performance } from "node:perf_hooks";
import { MULAW_DECODE_TABLE } from "@voicebot/audio";
import { FRAME_BYTES, FRAME_MS } from "./turn-queue.js";

export interface SilenceBatchOptions {
  /** Most frames in one CallerAudio of quiet frames (0 or 1 = every block goes out as it comes). */
  maxFrames: number;
  /** Frames go out one by one until the caller has been quiet this long (counted in stream time, 20 ms frames). */
  hangoverMs: number;
  /** A frame is quiet when no sample reaches this level (dBFS, full scale = 32768). */
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
}

/** The asr's open utterance is forgotten after this (its STOPPED was lost): it caps an utterance at 60 s. */
const UTTERANCE_STALE_MS = 65_000;

/** For each μ-law code: 1 when its sample reaches `levelDbfs`. */
export function loudCodes(levelDbfs: number): Uint8Array {
  const limit = 32768 * 10 ** (levelDbfs / 20);
  const table = new Uint8Array(256);
  for (let code = 0; code < 256; code++) table[code] = Math.abs(MULAW_DECODE_TABLE[code]) >= limit ? 1 : 0;
  return table;
}

export function isQuiet(payload: Uint8Array, loud: Uint8Array): boolean {
  for (let i = 0; i < payload.length; i++) if (loud[payload[i]] === 1) return false;
  return true;
}

interface Held {
  parts: Buffer[];
  firstFrame: number;
  frameCount: number;
  receivedAtMs: number;
  receivedFrames: number;
}

/** One call's caller audio on its way to the bus: blocks in stream order in, blocks to publish out. */
export class SilenceBatcher {
  private readonly maxFrames: number;
  private readonly hangoverFrames: number;
  private readonly loud: Uint8Array;
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
    this.loud = loudCodes(options.levelDbfs);
  }

  /** `frameCount` frames from `firstFrame`, in stream order (the jitter buffer's output). */
  add(firstFrame: number, payload: Buffer, frameCount: number, receivedAtMs: number, concealed: boolean): void {
    const receivedFrames = concealed ? 0 : frameCount;
    if (this.maxFrames <= 1) return this.emit({ firstFrame, frameCount, payload, receivedAtMs, receivedFrames, batched: false });
    if (!isQuiet(payload, this.loud)) {
      this.quietRun = 0;
      this.flush();
      return this.emit({ firstFrame, frameCount, payload, receivedAtMs, receivedFrames, batched: false });
    }
    const pastHangover = this.quietRun >= this.hangoverFrames;
    this.quietRun += frameCount;
    // Whole frames only: the asr cuts a payload into 160-byte frames.
    const batchable = pastHangover && !this.asrListening() && payload.length === frameCount * FRAME_BYTES && frameCount < this.maxFrames;
    if (!batchable) {
      this.flush();
      return this.emit({ firstFrame, frameCount, payload, receivedAtMs, receivedFrames, batched: false });
    }
    const held = this.held;
    // A message holds consecutive frames only: a gap (or a full message) starts the next one.
    if (held && (held.firstFrame + held.frameCount !== firstFrame || held.frameCount + frameCount > this.maxFrames)) this.flush();
    if (!this.held) {
      this.held = { parts: [payload], firstFrame, frameCount, receivedAtMs, receivedFrames };
    } else {
      this.held.parts.push(payload);
      this.held.frameCount += frameCount;
      this.held.receivedAtMs = receivedAtMs;
      this.held.receivedFrames += receivedFrames;
    }
    if (this.held.frameCount >= this.maxFrames) this.flush();
  }

  /** Sends what is held (before anything that must come after the audio: a key, the call's end). */
  flush(): void {
    const held = this.held;
    if (!held) return;
    this.held = undefined;
    const payload = held.parts.length === 1 ? held.parts[0] : Buffer.concat(held.parts);
    const { firstFrame, frameCount, receivedAtMs, receivedFrames } = held;
    this.emit({ firstFrame, frameCount, payload, receivedAtMs, receivedFrames, batched: held.parts.length > 1 });
  }

  /** The asr heard the caller start an utterance: its endpointing needs every frame as it comes. */
  speechStarted(): void {
    this.utteranceSince = performance.now();
    this.flush();
  }

  speechStopped(): void {
    this.utteranceSince = undefined;
  }

  private asrListening(): boolean {
    if (this.utteranceSince === undefined) return false;
    if (performance.now() - this.utteranceSince < UTTERANCE_STALE_MS) return true;
    this.utteranceSince = undefined;
    return false;
  }
}
