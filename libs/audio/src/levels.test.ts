import { describe, it, expect } from "vitest";
import { mulawEncode, mulawFrameEnergy, rmsDbfs } from "./index.js";

describe("levels", () => {
  it("measures RMS in dBFS", () => {
    expect(rmsDbfs(new Int16Array(160))).toBe(-120);
    expect(rmsDbfs(new Int16Array(0))).toBe(-120);
    expect(rmsDbfs(new Int16Array(160).fill(-32768))).toBeCloseTo(0, 6);
    const sine = new Int16Array(1600).map((_, i) => Math.round(16384 * Math.sin((2 * Math.PI * i) / 16)));
    expect(rmsDbfs(sine)).toBeCloseTo(-9.03, 1); // half scale (−6.02) and sine crest (−3.01)
  });

  it("measures a μ-law frame like its decoded PCM", () => {
    expect(mulawFrameEnergy(new Uint8Array(160).fill(0xff))).toBe(-120);
    for (const amp of [300, 3000, 20000]) {
      const pcm = new Int16Array(160).map((_, i) => Math.round(amp * Math.sin((2 * Math.PI * 1000 * i) / 8000)));
      expect(Math.abs(mulawFrameEnergy(mulawEncode(pcm)) - rmsDbfs(pcm))).toBeLessThan(0.3);
    }
  });
});
