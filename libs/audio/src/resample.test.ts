import { describe, it, expect } from "vitest";
import { resample, Resampler, rmsDbfs } from "./index.js";

function tone(freq: number, rate: number, seconds: number, amp = 12000): Int16Array {
  const n = Math.round(rate * seconds);
  const out = new Int16Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.round(amp * Math.sin((2 * Math.PI * freq * i) / rate));
  return out;
}

/** Level in dBFS of one frequency component (Goertzel), for checking where energy went. */
function toneLevel(pcm: Int16Array, freq: number, rate: number): number {
  const w = (2 * Math.PI * freq) / rate;
  const c = 2 * Math.cos(w);
  let s1 = 0;
  let s2 = 0;
  for (let i = 0; i < pcm.length; i++) {
    const s0 = pcm[i] + c * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  const power = s1 * s1 + s2 * s2 - c * s1 * s2;
  const amplitude = (2 * Math.sqrt(Math.max(power, 0))) / pcm.length;
  return 20 * Math.log10(Math.max(amplitude, 1e-6) / Math.SQRT2 / 32768);
}

/** Drop 50 ms at each end (filter start-up / run-out). */
const steady = (pcm: Int16Array, rate: number) => pcm.subarray(rate / 20, pcm.length - rate / 20);

function noise(n: number, seed = 1): Int16Array {
  const out = new Int16Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = ((x >>> 16) & 0xffff) - 32768;
  }
  return out;
}

const RATES = [8000, 16000, 22050, 24000, 44100, 48000];
const PAIRS = RATES.flatMap((a) => RATES.filter((b) => b !== a).map((b) => [a, b] as const));

describe("resample", () => {
  it("16k→8k keeps a 1 kHz sine within 1 dB and at 1 kHz", () => {
    const x = tone(1000, 16000, 1);
    const y = resample(x, 16000, 8000);
    expect(y.length).toBe(8000);
    const out = steady(y, 8000);
    expect(Math.abs(rmsDbfs(out) - rmsDbfs(x))).toBeLessThan(1);
    expect(Math.abs(toneLevel(out, 1000, 8000) - rmsDbfs(out))).toBeLessThan(0.1);
  });

  it("16k→8k attenuates a 5 kHz tone (would alias to 3 kHz) by more than 40 dB", () => {
    const x = tone(5000, 16000, 1);
    const y = steady(resample(x, 16000, 8000), 8000);
    expect(rmsDbfs(x) - rmsDbfs(y)).toBeGreaterThan(40);
  });

  it.each(PAIRS)("%i→%i: length, passband, stopband, imaging", (from, to) => {
    const x = tone(1000, from, 0.5);
    const y = resample(x, from, to);
    expect(y.length).toBe(Math.ceil((x.length * to) / from));
    expect(Math.abs(rmsDbfs(steady(y, to)) - rmsDbfs(x))).toBeLessThan(0.2);
    expect(Math.abs(toneLevel(steady(y, to), 1000, to) - rmsDbfs(x))).toBeLessThan(0.2);
    if (to < from) {
      // A tone between the output Nyquist and the input Nyquist must not fold back into the band.
      const f = Math.min(to * 0.6, from * 0.45);
      const yy = steady(resample(tone(f, from, 0.5), from, to), to);
      expect(rmsDbfs(x) - rmsDbfs(yy)).toBeGreaterThan(40);
    } else {
      // Upsampling must not leave the spectral image of an in-band tone at (from − f).
      const f = from * 0.3;
      const yy = steady(resample(tone(f, from, 0.5), from, to), to);
      expect(toneLevel(yy, f, to) - toneLevel(yy, from - f, to)).toBeGreaterThan(40);
    }
  });

  it("keeps DC and time alignment", () => {
    const dc = resample(new Int16Array(16000).fill(10000), 16000, 8000);
    for (const s of steady(dc, 8000)) expect(Math.abs(s - 10000)).toBeLessThanOrEqual(1);
    const impulse = new Int16Array(4800);
    impulse[2400] = 30000;
    const y = resample(impulse, 48000, 8000);
    let peak = 0;
    for (let i = 1; i < y.length; i++) if (Math.abs(y[i]) > Math.abs(y[peak])) peak = i;
    expect(peak).toBe(400); // input 2400 at 48 kHz = output 400 at 8 kHz: no delay added
  });

  it.each([
    [16000, 8000],
    [8000, 16000],
    [44100, 8000],
    [8000, 22050],
    [48000, 44100],
    [24000, 16000],
  ])("streaming %i→%i in arbitrary pieces equals one-shot", (from, to) => {
    const x = noise(from / 2 + 37, from);
    const expected = resample(x, from, to);
    for (const seed of [1, 2, 3]) {
      const r = new Resampler(from, to);
      const parts: Int16Array[] = [];
      let rnd = seed;
      for (let i = 0; i < x.length; ) {
        rnd = (rnd * 1103515245 + 12345) >>> 0;
        const len = [0, 1, 2, 7, 160, 333, 1000][rnd % 7];
        parts.push(r.push(x.subarray(i, i + len)));
        i += len;
      }
      parts.push(r.flush());
      const got = new Int16Array(parts.reduce((n, p) => n + p.length, 0));
      let o = 0;
      for (const p of parts) got.set(p, (o += p.length) - p.length);
      expect(got).toEqual(expected);
    }
  });

  it("streams with bounded delay: a 20 ms push yields about 20 ms", () => {
    const r = new Resampler(16000, 8000);
    const first = r.push(new Int16Array(320));
    const second = r.push(new Int16Array(320));
    expect(first.length + second.length).toBeGreaterThan(320 - 40); // held back: ~half the filter
    expect(second.length).toBe(160);
  });

  it("passes equal rates through and rejects bad rates", () => {
    const x = noise(100);
    expect(resample(x, 8000, 8000)).toEqual(x);
    expect(() => new Resampler(0, 8000)).toThrow(RangeError);
    expect(() => new Resampler(8000, 8000.5)).toThrow(RangeError);
    const r = new Resampler(16000, 8000);
    r.flush();
    expect(() => r.push(x)).toThrow();
  });
});
