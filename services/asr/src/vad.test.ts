import { describe, expect, it } from "vitest";
import { EnergyVad, EnergyVadDetector } from "./vad.js";

const RATE = 8000;
const FRAME = 160;

/** Deterministic white noise at an RMS level in dBFS (uniform samples: rms = amplitude / sqrt(3)). */
function noise(frames: number, dbfs: number, seed = 1): Int16Array[] {
  let state = seed;
  const random = () => ((state = (state * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff) * 2 - 1;
  const amplitude = 32768 * 10 ** (dbfs / 20) * Math.sqrt(3);
  return Array.from({ length: frames }, () => Int16Array.from({ length: FRAME }, () => Math.round(random() * amplitude)));
}

/** A sine tone at an RMS level in dBFS (peak = rms * sqrt(2)), optionally on top of noise frames. */
function tone(frames: number, dbfs: number, hz = 440, under?: Int16Array[]): Int16Array[] {
  const peak = 32768 * 10 ** (dbfs / 20) * Math.SQRT2;
  return Array.from({ length: frames }, (_, f) =>
    Int16Array.from({ length: FRAME }, (_, i) => {
      const t = (f * FRAME + i) / RATE;
      const sample = Math.round(peak * Math.sin(2 * Math.PI * hz * t)) + (under?.[f][i] ?? 0);
      return Math.max(-32768, Math.min(32767, sample));
    }),
  );
}

const silence = (frames: number) => Array.from({ length: frames }, () => new Int16Array(FRAME));

const decide = (vad: EnergyVad, frames: Int16Array[]) => frames.map((f) => vad.isSpeech(f));
const count = (decisions: boolean[]) => decisions.filter(Boolean).length;

describe("EnergyVad", () => {
  it("never calls digital silence or faint line hiss speech", () => {
    const vad = new EnergyVad();
    expect(count(decide(vad, silence(100)))).toBe(0);
    expect(count(decide(vad, noise(200, -65)))).toBe(0);
    expect(count(decide(vad, silence(50)))).toBe(0);
  });

  it("detects a tone burst over quiet noise from its first frame and lets go right after", () => {
    const vad = new EnergyVad();
    expect(count(decide(vad, noise(50, -60)))).toBe(0);
    const burst = decide(vad, tone(25, -20, 440, noise(25, -60, 7)));
    expect(burst.every(Boolean)).toBe(true);
    expect(count(decide(vad, noise(50, -60, 3)))).toBe(0);
  });

  it("adapts to stationary loud noise and still hears louder sound over it", () => {
    const vad = new EnergyVad();
    const settling = decide(vad, noise(50, -30));
    // Within the half-second warm-up the floor reaches the noise: from then on it is all non-speech.
    expect(count(settling.slice(25))).toBe(0);
    expect(vad.noiseFloorDbfs).toBeGreaterThan(-33);
    expect(count(decide(vad, noise(200, -30, 5)))).toBe(0);
    expect(count(decide(vad, tone(20, -12, 300, noise(20, -30, 9))))).toBe(20);
  });

  it("treats a tone that is not far enough above the noise as noise", () => {
    const vad = new EnergyVad();
    decide(vad, noise(100, -40));
    // The mix is about 3 dB above the floor: below the 10 dB threshold.
    expect(count(decide(vad, tone(20, -40, 500, noise(20, -40, 2))))).toBe(0);
  });

  it("absorbs a lasting jump in line noise within a few seconds", () => {
    const vad = new EnergyVad();
    decide(vad, noise(100, -60));
    const after = decide(vad, noise(400, -35, 11));
    expect(after[0]).toBe(true); // the jump itself looks like speech...
    const firstQuiet = after.indexOf(false);
    expect(firstQuiet).toBeGreaterThan(0);
    expect(firstQuiet * 20).toBeLessThan(6_000); // ...but not for long
    expect(count(after.slice(firstQuiet + 50))).toBe(0);
  });

  it("follows the floor back down when the noise drops", () => {
    const vad = new EnergyVad();
    decide(vad, noise(100, -30));
    decide(vad, noise(25, -60, 4));
    expect(vad.noiseFloorDbfs).toBeLessThan(-55);
    // Speech that would have been masked by the old floor is heard again.
    expect(count(decide(vad, tone(10, -35, 600, noise(10, -60, 8))))).toBe(10);
  });

  it("through the stream interface, decides a multi-frame push frame by frame, as single pushes", () => {
    const frames = [...noise(30, -60), ...tone(20, -20, 440, noise(20, -60, 7)), ...noise(33, -60, 3)];
    const single: boolean[] = [];
    const one = new EnergyVadDetector().open((speech) => single.push(speech));
    for (const frame of frames) one.push(frame);
    const multi: boolean[] = [];
    const many = new EnergyVadDetector().open((speech) => multi.push(speech));
    for (let i = 0; i < frames.length; i += 7) {
      const message = frames.slice(i, i + 7);
      const pcm = new Int16Array(message.length * FRAME);
      message.forEach((frame, k) => pcm.set(frame, k * FRAME));
      many.push(pcm);
    }
    expect(multi).toHaveLength(frames.length);
    expect(multi).toEqual(single);
    expect(count(single)).toBe(20);
  });
});
