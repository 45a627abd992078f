import { describe, it, expect } from "vitest";
import { l16FromBytes, l16ToBytes } from "./index.js";

describe("L16", () => {
  it("reads little-endian signed samples", () => {
    expect(Array.from(l16FromBytes(Uint8Array.from([0x34, 0x12, 0xff, 0xff, 0x00, 0x80, 0xff, 0x7f])))).toEqual([0x1234, -1, -32768, 32767]);
  });

  it("copies from an odd byte offset and ignores a trailing odd byte", () => {
    const backing = new Uint8Array(8);
    backing.set([0x34, 0x12, 0xfe, 0xff, 0x07], 1);
    const odd = backing.subarray(1, 6); // 5 bytes at offset 1
    const pcm = l16FromBytes(odd);
    expect(Array.from(pcm)).toEqual([0x1234, -2]);
    backing[1] = 0; // a copy does not follow the source
    expect(pcm[0]).toBe(0x1234);
  });

  it("round-trips", () => {
    const pcm = Int16Array.from([0, 1, -1, 32767, -32768, 1234, -4321]);
    const bytes = l16ToBytes(pcm);
    expect(bytes.length).toBe(14);
    expect(Array.from(bytes.subarray(0, 4))).toEqual([0, 0, 1, 0]);
    expect(l16FromBytes(bytes.slice())).toEqual(pcm);
  });
});
