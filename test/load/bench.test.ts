// The load test's own arithmetic: call attribution (watermark, order number), VAD alignment, percentiles.
import { mulawDecode, wavFromPcm } from "@voicebot/audio";
import { describe, expect, test } from "vitest";
import { readWatermarkWav, sileroDecidedBy, sileroLastSpeech, watermarkFrame } from "./audio.js";
import { orderNumber, slotOfOrderText } from "./script.js";
import { Histogram, parseDuration, summarize } from "./stats.js";

describe("load test helpers", () => {
  test("a slot's silence watermark survives the asr's decode and the WAV upload, after some other audio", () => {
    for (const slot of [0, 1, 42, 999, 123_456]) {
      const frames = [new Int16Array(160), mulawDecode(watermarkFrame(slot)), mulawDecode(watermarkFrame(slot))];
      const pcm = new Int16Array(160 * frames.length);
      frames.forEach((f, i) => pcm.set(f, i * 160));
      expect(readWatermarkWav(wavFromPcm(pcm, 8000))).toBe(slot);
    }
    expect(readWatermarkWav(wavFromPcm(new Int16Array(1600), 8000))).toBe(-1);
  });

  test("the answer sentence names its call slot", () => {
    const spelled = orderNumber(42).split("").join(" ");
    expect(slotOfOrderText(`Order ${spelled} has shipped with UPS and should arrive on Friday, March 6.`)).toBe(42);
    expect(slotOfOrderText("Please say or key in your order number, then press pound.")).toBe(-1);
  });

  test("Silero decides a frame when the 256-sample window holding its middle sample is complete", () => {
    // Frame k (from 1) spans samples [160(k-1), 160k); windows are [256w, 256(w+1)).
    for (let chunk = 1; chunk <= 200; chunk++) {
      const middle = (chunk - 1) * 160 + 80;
      const windowEnd = (Math.floor(middle / 256) + 1) * 256; // exclusive
      const by = sileroDecidedBy(chunk);
      expect(by * 160).toBeGreaterThanOrEqual(windowEnd); // the deciding frame completes the window...
      expect((by - 1) * 160).toBeLessThan(windowEnd); // ...and the frame before it does not
      expect(by - chunk).toBeLessThanOrEqual(1);
    }
  });

  test("Silero hears one frame more after speech that ends in 5 of the 8 frame/window alignments", () => {
    const extra = Array.from({ length: 8 }, (_, i) => sileroLastSpeech(101 + i) - (101 + i));
    expect(extra.filter((e) => e === 1)).toHaveLength(5);
    expect(extra.every((e) => e === 0 || e === 1)).toBe(true);
    // Chunk 1 = samples 0-159; chunk 2's middle (240) is in window 0 (0-255), which starts inside chunk 1.
    expect(sileroLastSpeech(1)).toBe(2);
  });

  test("percentiles and durations", () => {
    expect(summarize([5, 1, 4, 2, 3])).toMatchObject({ n: 5, p50: 3, max: 5 });
    const h = new Histogram();
    for (let i = 1; i <= 100; i++) h.add(i);
    expect(h.quantile(50)).toBeCloseTo(50, 0);
    expect(h.quantile(99)).toBeCloseTo(99, 0);
    expect(h.quantile(100)).toBe(100);
    expect(h.above(90)).toBe(10);
    expect(parseDuration("60s")).toBe(60_000);
    expect(parseDuration("2m")).toBe(120_000);
    expect(parseDuration("1500ms")).toBe(1500);
  });
});
