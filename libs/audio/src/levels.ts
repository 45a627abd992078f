import { MULAW_DECODE_TABLE } from "./mulaw.js";

/** Floor for digital silence (log of zero). */
export const SILENCE_DBFS = -120;

function toDbfs(sumSquares: number, n: number): number {
  if (n === 0 || sumSquares === 0) return SILENCE_DBFS;
  // Relative to a full-scale square wave (32768): a full-scale sine reads −3.01 dBFS.
  return Math.max(SILENCE_DBFS, 10 * Math.log10(sumSquares / n / (32768 * 32768)));
}

/** RMS level in dBFS; −120 for silence or an empty array. */
export function rmsDbfs(pcm: Int16Array): number {
  let sum = 0;
  for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
  return toDbfs(sum, pcm.length);
}

/** RMS level in dBFS of a μ-law frame, decoded sample by sample through the table (no allocation). */
export function mulawFrameEnergy(bytes: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) {
    const s = MULAW_DECODE_TABLE[bytes[i]];
    sum += s * s;
  }
  return toDbfs(sum, bytes.length);
}
