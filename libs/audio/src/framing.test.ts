import { describe, it, expect } from "vitest";
import { FrameSplitter, FRAME_MS, MULAW_SILENCE, samplesPerFrame } from "./index.js";

describe("framing", () => {
  it("has the Twilio frame constants", () => {
    expect(FRAME_MS).toBe(20);
    expect(MULAW_SILENCE).toBe(0xff);
    expect(samplesPerFrame(8000)).toBe(160);
    expect(samplesPerFrame(16000)).toBe(320);
    expect(samplesPerFrame(22050)).toBe(441);
    expect(() => samplesPerFrame(11025)).toThrow(RangeError);
  });

  it("cuts a stream into fixed frames whatever the piece sizes", () => {
    const stream = new Uint8Array(500).map((_, i) => i & 0xff);
    const s = new FrameSplitter(160);
    const frames = [...s.push(stream.subarray(0, 100)), ...s.push(stream.subarray(100, 107)), ...s.push(new Uint8Array(0)), ...s.push(stream.subarray(107))];
    expect(frames.map((f) => f.length)).toEqual([160, 160, 160]);
    expect(frames[1]).toEqual(stream.subarray(160, 320));
    expect(s.buffered).toBe(20);
    const last = s.flush()!;
    expect(last.length).toBe(160);
    expect(last.subarray(0, 20)).toEqual(stream.subarray(480));
    expect(last.subarray(20).every((b) => b === MULAW_SILENCE)).toBe(true);
    expect(s.flush()).toBeUndefined();
  });

  it("returns frames that do not alias the input and honours a pad byte", () => {
    const input = new Uint8Array(330).fill(7);
    const s = new FrameSplitter(160);
    const frames = s.push(input);
    input.fill(9);
    expect(frames[0][0]).toBe(7);
    expect(Array.from(s.flush(0)!.subarray(8, 12))).toEqual([7, 7, 0, 0]) // the remainder was copied too;
  });
});
