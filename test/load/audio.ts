// The caller audio of the load test, made once per run: a real spoken "order status" (flite) cut to whole loud
// frames, and per-slot "silence" frames carrying an inaudible watermark, so the fake transcription server can tell
// which call an uploaded utterance came from (the recognizer's pre-roll always starts in that silence).
import { mulawEncode, mulawFrameEnergy } from "@voicebot/audio";
import { lineNoise, synthesize } from "@voicebot/callsim";

export const FRAME_MS = 20;
export const FRAME_BYTES = 160;

/** Smallest positive and negative μ-law codes (decode to +8 / -8: about -80 dBFS, far below any VAD threshold). */
const PLUS = 0xfe;
const MINUS = 0x7e;
const ZERO = 0xff;
const SYNC = [1, 0, 1, 1, 0, 0, 1, 0];
const SLOT_BITS = 20;
export const MAX_SLOTS = 2 ** SLOT_BITS;

/** A silence frame whose first samples spell `slot`. */
export function watermarkFrame(slot: number): Uint8Array {
  const frame = new Uint8Array(FRAME_BYTES).fill(ZERO);
  const bits = [...SYNC];
  for (let i = SLOT_BITS - 1; i >= 0; i--) bits.push((slot >> i) & 1);
  bits.forEach((bit, i) => (frame[i] = bit ? PLUS : MINUS));
  return frame;
}

/** Samples at the start of a silence frame that carry the watermark (line noise, when any, fills the rest). */
const WATERMARK_SAMPLES = SYNC.length + SLOT_BITS;

/**
 * `variants` different tails of white noise at `dbfs` RMS (Gaussian, as line hiss is), for the samples after the
 * watermark: a caller's silence on a real line, which is not digital silence.
 */
export function lineNoiseTails(dbfs: number, variants: number): Uint8Array[] {
  return Array.from({ length: variants }, () => mulawEncode(lineNoise(FRAME_BYTES - WATERMARK_SAMPLES, dbfs)));
}

/** A slot's silence frames: its watermark followed by each noise tail (no tails: the watermark in digital silence). */
export function silenceFrames(slot: number, noiseTails: Uint8Array[]): Uint8Array[] {
  const watermark = watermarkFrame(slot);
  if (noiseTails.length === 0) return [watermark];
  return noiseTails.map((tail) => {
    const frame = watermark.slice();
    frame.set(tail, WATERMARK_SAMPLES);
    return frame;
  });
}

/** The slot a watermarked frame of 16-bit PCM carries, or -1. */
export function readWatermarkPcm(pcm: Int16Array): number {
  const bit = (i: number) => (pcm[i] > 0 ? 1 : pcm[i] < 0 ? 0 : -1);
  for (let i = 0; i < SYNC.length; i++) if (bit(i) !== SYNC[i]) return -1;
  let slot = 0;
  for (let i = 0; i < SLOT_BITS; i++) {
    const b = bit(SYNC.length + i);
    if (b < 0) return -1;
    slot = slot * 2 + b;
  }
  return slot;
}

/** The slot of an uploaded WAV (16-bit mono PCM): the first watermarked frame among its first 30. */
export function readWatermarkWav(wav: Uint8Array): number {
  const view = new DataView(wav.buffer, wav.byteOffset, wav.byteLength);
  let offset = 12;
  while (offset + 8 <= wav.length) {
    const id = String.fromCharCode(wav[offset], wav[offset + 1], wav[offset + 2], wav[offset + 3]);
    const size = view.getUint32(offset + 4, true);
    if (id === "data") {
      const start = offset + 8;
      const samples = Math.floor(Math.min(size, wav.length - start) / 2);
      const pcm = new Int16Array(samples);
      for (let i = 0; i < samples; i++) pcm[i] = view.getInt16(start + i * 2, true);
      for (let frame = 0; frame < 30 && (frame + 1) * FRAME_BYTES <= samples; frame++) {
        const slot = readWatermarkPcm(pcm.subarray(frame * FRAME_BYTES, (frame + 1) * FRAME_BYTES));
        if (slot >= 0) return slot;
      }
      return -1;
    }
    offset += 8 + size + (size & 1);
  }
  return -1;
}

/** Frames at or above this are clearly speech for the asr's energy VAD (its floor is -50 dBFS at most). */
const LOUD_DBFS = -35;

/**
 * "order status" spoken by flite, as whole 20 ms μ-law frames from the first to the last loud frame: the energy VAD's
 * last speech frame is then exactly the burst's last frame (Silero's: sileroLastSpeech), so the caller knows when
 * the endpoint silence is complete.
 */
export async function speechBurst(text = "order status"): Promise<Uint8Array[]> {
  const mulaw = await synthesize(text, { engine: "flite" });
  const frames: Uint8Array[] = [];
  for (let at = 0; at + FRAME_BYTES <= mulaw.length; at += FRAME_BYTES) frames.push(mulaw.slice(at, at + FRAME_BYTES));
  const loud = frames.map((f) => mulawFrameEnergy(f) >= LOUD_DBFS);
  const first = loud.indexOf(true);
  const last = loud.lastIndexOf(true);
  if (first < 0) throw new Error("flite produced no loud speech");
  return frames.slice(first, last + 1);
}

/**
 * The last frame Silero takes for speech when `chunk` is the last loud one: the next frame too when the window
 * holding that frame's middle sample starts inside `chunk` (5 of the 8 alignments; the asr's silero.test.ts checks
 * this against the model). Windows are counted from chunk 1, as the asr counts them.
 */
export function sileroLastSpeech(chunk: number): number {
  const next = chunk + 1;
  const window = Math.floor(((next - 1) * FRAME_BYTES + FRAME_BYTES / 2) / 256);
  return window * 256 < (next - 1) * FRAME_BYTES ? next : chunk;
}

/**
 * Silero decides a frame with the 256-sample window holding its middle sample, windows counted from the first frame
 * the asr heard (chunk 1 here): the chunk whose arrival completes that window.
 */
export function sileroDecidedBy(chunk: number): number {
  const window = Math.floor(((chunk - 1) * FRAME_BYTES + FRAME_BYTES / 2) / 256);
  return Math.floor((256 * (window + 1) - 1) / FRAME_BYTES) + 1;
}
