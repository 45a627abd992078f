import { describe, it, expect } from "vitest";
import { mulawDecode, mulawEncode, MULAW_DECODE_TABLE } from "./index.js";

// Independent reference: the classic public-domain G.711 encoder (Reese/Campbell) with its exponent lookup.
function referenceEncode(sample: number): number {
  const sign = (sample >> 8) & 0x80;
  let s = sign ? -sample : sample;
  if (s > 32635) s = 32635;
  s += 0x84;
  const hi = (s >> 7) & 0xff;
  const exponent = hi === 0 ? 0 : 31 - Math.clz32(hi);
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

describe("μ-law", () => {
  it("decodes to the G.711 table values", () => {
    // First row of the standard μ-law decode table (codes 0x00..0x0f).
    const row0 = [-32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956, -23932, -22908, -21884, -20860, -19836, -18812, -17788, -16764];
    expect(Array.from(mulawDecode(Uint8Array.from(row0.map((_, i) => i))))).toEqual(row0);
    expect(MULAW_DECODE_TABLE[0x80]).toBe(32124);
    expect(MULAW_DECODE_TABLE[0xff]).toBe(0);
    expect(MULAW_DECODE_TABLE[0x7f]).toBe(0);
    expect(MULAW_DECODE_TABLE[0xfe]).toBe(8);
    expect(MULAW_DECODE_TABLE[0x7e]).toBe(-8);
    for (let c = 0; c < 128; c++) expect(MULAW_DECODE_TABLE[c] + MULAW_DECODE_TABLE[c | 0x80]).toBe(0);
  });

  it("encodes every 16-bit value exactly like the reference encoder", () => {
    const all = new Int16Array(65536);
    for (let i = 0; i < 65536; i++) all[i] = i - 32768;
    const enc = mulawEncode(all);
    for (let i = 0; i < 65536; i++) {
      if (enc[i] !== referenceEncode(all[i])) throw new Error(`sample ${all[i]}: got ${enc[i]}, want ${referenceEncode(all[i])}`);
    }
    expect(mulawEncode(Int16Array.from([0, 32767, -32768, 1, -1]))).toEqual(Uint8Array.from([0xff, 0x80, 0x00, 0xff, 0x7f]));
  });

  it("round-trips all 256 codes (0x7f, negative zero, comes back as 0xff)", () => {
    const codes = new Uint8Array(256).map((_, i) => i);
    const back = mulawEncode(mulawDecode(codes));
    for (let c = 0; c < 256; c++) expect(back[c]).toBe(c === 0x7f ? 0xff : c);
  });

  it("quantizes within half a step and keeps a speech-level sine at ~38 dB SNR", () => {
    const n = 8000;
    const pcm = new Int16Array(n);
    for (let i = 0; i < n; i++) pcm[i] = Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / 8000));
    const back = mulawDecode(mulawEncode(pcm));
    let sig = 0;
    let err = 0;
    for (let i = 0; i < n; i++) {
      sig += pcm[i] ** 2;
      err += (pcm[i] - back[i]) ** 2;
      // Segment e has a step of 2^(e+3); the decoder reconstructs mid-step.
      const step = 2 ** (((~mulawEncode(Int16Array.of(pcm[i]))[0] >> 4) & 7) + 3);
      expect(Math.abs(pcm[i] - back[i])).toBeLessThanOrEqual(step / 2);
    }
    expect(10 * Math.log10(sig / err)).toBeGreaterThan(35);
  });

  it("handles empty input", () => {
    expect(mulawEncode(new Int16Array(0)).length).toBe(0);
    expect(mulawDecode(new Uint8Array(0)).length).toBe(0);
  });
});
