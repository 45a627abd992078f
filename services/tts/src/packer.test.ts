import { describe, expect, it } from "vitest";
import { PartPacker } from "./packer.js";

const options = { frameBytes: 160, padByte: 0xff, firstPartFrames: 2, maxPartFrames: 10 };
const bytes = (n: number, value = 1) => new Uint8Array(n).fill(value);

describe("PartPacker", () => {
  it("sends a small first part as soon as frames exist, then parts of at most 200 ms, ending in a padded frame", () => {
    const packer = new PartPacker(options);
    expect(packer.push(bytes(100))).toEqual([]); // not yet a frame
    const first = packer.push(bytes(400)); // 500 bytes: 3 whole frames, one held back
    expect(first.map((p) => p.length)).toEqual([320]);
    const more = packer.push(bytes(160 * 25));
    expect(more.every((p) => p.length % 160 === 0 && p.length <= 1600)).toBe(true);
    const last = packer.finish();
    expect(last.length).toBeGreaterThan(0);
    const all = [...first, ...more, ...last];
    const total = all.reduce((n, p) => n + p.length, 0);
    expect(total % 160).toBe(0);
    expect(total).toBe(Math.ceil((500 + 160 * 25) / 160) * 160);
    // The padding is μ-law silence and sits at the very end.
    const tail = last[last.length - 1];
    expect(tail[tail.length - 1]).toBe(0xff);
    expect(tail[tail.length - 1 - ((500 + 160 * 25) % 160 === 0 ? 0 : 160 - ((500 + 160 * 25) % 160))]).toBe(1);
  });

  it("never ends a chunk with an empty part when the audio is frame-aligned", () => {
    const packer = new PartPacker(options);
    const parts = [...packer.push(bytes(160 * 4)), ...packer.finish()];
    expect(parts.map((p) => p.length)).toEqual([320, 160, 160]);
  });

  it("returns nothing at finish when no audio came in", () => {
    const packer = new PartPacker(options);
    expect(packer.hasAudio).toBe(false);
    expect(packer.finish()).toEqual([]);
  });

  it("keeps byte order across frames", () => {
    const packer = new PartPacker({ ...options, frameBytes: 4, firstPartFrames: 1, maxPartFrames: 2 });
    const input = Uint8Array.from({ length: 23 }, (_, i) => i);
    const out: Uint8Array[] = [];
    for (let i = 0; i < input.length; i += 5) out.push(...packer.push(input.subarray(i, i + 5)));
    out.push(...packer.finish());
    expect(out[0].length).toBe(4);
    expect(out.every((p) => p.length <= 8 && p.length % 4 === 0)).toBe(true);
    const joined = Uint8Array.from(out.flatMap((p) => [...p]));
    expect([...joined.subarray(0, 23)]).toEqual([...input]);
    expect([...joined.subarray(23)]).toEqual([0xff]);
  });
});
