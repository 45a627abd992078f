import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it, expect, afterAll } from "vitest";
import { mulawDecode, mulawEncode, parseWav, wavFromMulaw, wavFromPcm, WavStreamParser } from "./index.js";

const dir = mkdtempSync(join(tmpdir(), "audio-wav-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pcm = Int16Array.from({ length: 801 }, (_, i) => Math.round(9000 * Math.sin(i / 5)));

/** Hand-built WAV: header fields as given, chunks in order. */
function buildWav(
  fmt: { format: number; channels: number; rate: number; bits: number },
  data: Uint8Array,
  opts: { dataSize?: number; riffSize?: number; before?: Uint8Array } = {},
): Uint8Array {
  const before = opts.before ?? new Uint8Array(0);
  const out = new Uint8Array(12 + 24 + before.length + 8 + data.length);
  const v = new DataView(out.buffer);
  out.set(new TextEncoder().encode("RIFF"), 0);
  v.setUint32(4, opts.riffSize ?? out.length - 8, true);
  out.set(new TextEncoder().encode("WAVEfmt "), 8);
  v.setUint32(16, 16, true);
  v.setUint16(20, fmt.format, true);
  v.setUint16(22, fmt.channels, true);
  v.setUint32(24, fmt.rate, true);
  v.setUint32(28, (fmt.rate * fmt.channels * fmt.bits) / 8, true);
  v.setUint16(32, (fmt.channels * fmt.bits) / 8, true);
  v.setUint16(34, fmt.bits, true);
  out.set(before, 36);
  const d = 36 + before.length;
  out.set(new TextEncoder().encode("data"), d);
  v.setUint32(d + 4, opts.dataSize ?? data.length, true);
  out.set(data, d + 8);
  return out;
}

const bytesOf = (p: Int16Array) => new Uint8Array(p.buffer.slice(p.byteOffset, p.byteOffset + p.byteLength));

describe("wav", () => {
  it("round-trips 16-bit PCM", () => {
    const wav = wavFromPcm(pcm, 16000);
    expect(wav.length).toBe(44 + 2 * pcm.length);
    const back = parseWav(wav);
    expect(back.sampleRate).toBe(16000);
    expect(back.channels).toBe(1);
    expect(back.pcm).toEqual(pcm);
  });

  it("writes and reads μ-law WAV (format 7 with fact chunk, padded)", () => {
    const mu = mulawEncode(pcm); // odd length -> pad byte
    const wav = wavFromMulaw(mu);
    const v = new DataView(wav.buffer);
    expect(v.getUint16(20, true)).toBe(7);
    expect(v.getUint32(24, true)).toBe(8000);
    expect(new TextDecoder().decode(wav.subarray(38, 42))).toBe("fact");
    expect(wav.length % 2).toBe(0);
    expect(v.getUint32(4, true)).toBe(wav.length - 8);
    const back = parseWav(wav);
    expect(back.sampleRate).toBe(8000);
    expect(back.pcm).toEqual(mulawDecode(mu));
  });

  it("mixes stereo to mono", () => {
    const inter = new Int16Array(200);
    for (let i = 0; i < 100; i++) {
      inter[2 * i] = 1000;
      inter[2 * i + 1] = -3000;
    }
    const back = parseWav(buildWav({ format: 1, channels: 2, rate: 44100, bits: 16 }, bytesOf(inter)));
    expect(back.channels).toBe(2);
    expect(back.pcm.length).toBe(100);
    expect(back.pcm.every((s) => s === -1000)).toBe(true);
  });

  it.each([
    [0, 36], // the header of a writer that wrote it for no samples yet and could not patch it (a pipe)
    [0, 0],
    [0, 0xffffffff],
    [0xffffffff, undefined],
    [0x7ffff000, 0x7ffff024], // espeak-ng
  ])("takes the rest of the file when the data size is %i and the RIFF size %s (streamed)", (dataSize, riffSize) => {
    const back = parseWav(buildWav({ format: 1, channels: 1, rate: 16000, bits: 16 }, bytesOf(pcm), { dataSize, riffSize }));
    expect(back.pcm).toEqual(pcm);
  });

  it("reads an empty data chunk as no audio when the RIFF size counts chunks after it (metadata, not samples)", () => {
    const list = new Uint8Array([...new TextEncoder().encode("LIST"), 26, 0, 0, 0, ...new TextEncoder().encode("INFOISFT"), 14, 0, 0, 0, ...new TextEncoder().encode("Lavf60.3.100\0\0")]);
    const wav = buildWav({ format: 1, channels: 1, rate: 8000, bits: 16 }, list, { dataSize: 0 });
    expect(parseWav(wav).pcm.length).toBe(0);
  });

  it("skips odd-sized chunks with their pad byte and reads from an odd offset", () => {
    const list = new Uint8Array([...new TextEncoder().encode("LIST"), 3, 0, 0, 0, 1, 2, 3, 0]);
    const wav = buildWav({ format: 1, channels: 1, rate: 8000, bits: 16 }, bytesOf(pcm), { before: list });
    const shifted = new Uint8Array(wav.length + 1);
    shifted.set(wav, 1);
    expect(parseWav(shifted.subarray(1)).pcm).toEqual(pcm);
  });

  it("rejects what it cannot read", () => {
    expect(() => parseWav(new Uint8Array(44))).toThrow(/RIFF/);
    expect(() => parseWav(buildWav({ format: 3, channels: 1, rate: 8000, bits: 32 }, new Uint8Array(8)))).toThrow(/unsupported/);
  });

  it("parses a stream pushed in arbitrary pieces (odd splits, header split, streamed size)", () => {
    const stereo = new Int16Array(2 * 300).map((_, i) => (i % 2 ? -1 : 1) * (i * 7));
    const stereoWav = buildWav({ format: 1, channels: 2, rate: 16000, bits: 16 }, bytesOf(stereo));
    const cases: [Uint8Array, Int16Array, number][] = [
      [wavFromPcm(pcm, 22050), pcm, 22050],
      [buildWav({ format: 1, channels: 1, rate: 22050, bits: 16 }, bytesOf(pcm), { dataSize: 0x7ffff000 }), pcm, 22050],
      [stereoWav, parseWav(stereoWav).pcm, 16000],
      [wavFromMulaw(mulawEncode(pcm)), mulawDecode(mulawEncode(pcm)), 8000],
    ];
    for (const [wav, expected, rate] of cases) {
      for (const sizes of [[1], [3, 40, 1, 5], [44], [45, 2], [1000]]) {
        const p = new WavStreamParser();
        const got: number[] = [];
        for (let i = 0, k = 0; i < wav.length; k++) {
          const n = sizes[k % sizes.length];
          const piece = Buffer.from(wav.subarray(i, i + n)); // a Node Buffer, maybe at an odd pool offset
          got.push(...p.push(piece));
          i += n;
        }
        p.end();
        expect(p.format?.sampleRate).toBe(rate);
        expect(Int16Array.from(got)).toEqual(expected);
      }
    }
  });

  it("stream parser stops at a real data size and reports a missing header", () => {
    const wav = new Uint8Array([...wavFromPcm(Int16Array.of(1, 2, 3), 8000), ...new TextEncoder().encode("LIST\x04\0\0\0abcd")]);
    const p = new WavStreamParser();
    expect(Array.from(p.push(wav))).toEqual([1, 2, 3]);
    const q = new WavStreamParser();
    expect(q.push(wav.subarray(0, 20)).length).toBe(0);
    expect(() => q.end()).toThrow(/fmt/);
    expect(() => new WavStreamParser().push(new TextEncoder().encode("ID3 not a wav file"))).toThrow(/RIFF/);
  });

  it("interoperates with sox both ways", () => {
    const ours = join(dir, "ours.wav");
    writeFileSync(ours, wavFromMulaw(mulawEncode(pcm)));
    expect(execFileSync("sox", ["--i", "-e", ours]).toString()).toMatch(/u-law/i);
    expect(execFileSync("sox", ["--i", "-s", ours]).toString().trim()).toBe(String(pcm.length));
    const theirs = join(dir, "theirs.wav");
    execFileSync("sox", ["-n", "-r", "8000", "-c", "2", "-e", "mu-law", theirs, "synth", "0.5", "sine", "1000"]);
    const back = parseWav(readFileSync(theirs));
    expect(back).toMatchObject({ sampleRate: 8000, channels: 2 });
    expect(back.pcm.length).toBe(4000);
  });

  it("reads flite output", () => {
    const f = join(dir, "flite.wav");
    execFileSync("flite", ["-voice", "slt", "-t", "Hello there.", "-o", f]);
    const back = parseWav(readFileSync(f));
    expect(back.sampleRate).toBe(16000);
    expect(back.pcm.length).toBeGreaterThan(8000);
  });
});
