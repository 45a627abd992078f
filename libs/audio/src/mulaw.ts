// ITU-T G.711 μ-law, the 16-bit-input form used by most telephony code (Twilio, SoX, Asterisk):
// magnitude clipped to 32635, biased by 0x84, then a 3-bit segment + 4-bit mantissa, all bits inverted.
// Both directions are table lookups; the tables are built once at module load.

const BIAS = 0x84;
const CLIP = 32635;

function encodeSample(sample: number): number {
  let s = sample;
  const sign = s < 0 ? 0x80 : 0;
  if (sign) s = -s;
  if (s > CLIP) s = CLIP;
  s += BIAS;
  // Segment = position of the highest set bit among bits 7..14 of the biased magnitude.
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

function decodeByte(byte: number): number {
  const u = ~byte & 0xff;
  const exponent = (u >> 4) & 0x07;
  const magnitude = ((((u & 0x0f) << 3) + BIAS) << exponent) - BIAS;
  return u & 0x80 ? -magnitude : magnitude;
}

/** code -> linear sample. Exported for level meters that want to avoid allocating. */
export const MULAW_DECODE_TABLE: Int16Array = (() => {
  const t = new Int16Array(256);
  for (let i = 0; i < 256; i++) t[i] = decodeByte(i);
  return t;
})();

/** Indexed by the sample's 16-bit two's-complement pattern (sample & 0xffff): 64 KiB, exact for every input. */
const ENCODE_TABLE: Uint8Array = (() => {
  const t = new Uint8Array(65536);
  for (let i = 0; i < 65536; i++) t[i] = encodeSample(i < 32768 ? i : i - 65536);
  return t;
})();

export function mulawEncode(pcm: Int16Array): Uint8Array {
  const out = new Uint8Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) out[i] = ENCODE_TABLE[pcm[i] & 0xffff];
  return out;
}

export function mulawDecode(bytes: Uint8Array): Int16Array {
  return mulawDecodeInto(bytes, new Int16Array(bytes.length));
}

/** Decodes into `out` (at least `bytes.length` long), for callers that reuse their buffers; returns `out`. */
export function mulawDecodeInto(bytes: Uint8Array, out: Int16Array): Int16Array {
  for (let i = 0; i < bytes.length; i++) out[i] = MULAW_DECODE_TABLE[bytes[i]];
  return out;
}
