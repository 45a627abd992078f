// RIFF/WAVE reading and writing for the formats this system meets: 16-bit PCM (engines, fixtures),
// μ-law (format 7, telephony captures), and unsigned 8-bit PCM.

import { l16FromBytes, l16ToBytes } from "./l16.js";
import { MULAW_DECODE_TABLE } from "./mulaw.js";

export interface WavAudio {
  sampleRate: number;
  /** Channel count in the file; `pcm` is always mono (channels averaged). */
  channels: number;
  pcm: Int16Array;
}

const FORMAT_PCM = 1;
const FORMAT_MULAW = 7;
const FORMAT_EXTENSIBLE = 0xfffe;

function fourcc(buf: Uint8Array, at: number): string {
  return String.fromCharCode(buf[at], buf[at + 1], buf[at + 2], buf[at + 3]);
}

interface WavFormat {
  format: number;
  channels: number;
  sampleRate: number;
  bits: number;
}

/**
 * Data chunk sizes that mean "unknown, read to the end": left unpatched by a streaming writer. A 0 is that unless the
 * RIFF size counts chunks after the data chunk: then the data chunk is empty and those (metadata) are no audio.
 */
function isStreamedSize(size: number, riffSize: number, dataStart: number): boolean {
  const unpatched = (n: number) => n >= 0x7fff0000; // 0xFFFFFFFF, espeak-ng's 0x7FFFF000, ...
  return unpatched(size) || (size === 0 && (unpatched(riffSize) || riffSize + 8 <= dataStart));
}

type HeaderResult = { fmt: WavFormat; dataStart: number; dataSize: number | undefined } | "need-more";

/** Walks the chunks up to the data chunk. `complete` = buf is the whole file (else ask for more bytes). */
function readHeader(buf: Uint8Array, complete: boolean): HeaderResult {
  if (buf.length < 12) {
    if (complete) throw new Error("parseWav: not a RIFF/WAVE file");
    return "need-more";
  }
  if (fourcc(buf, 0) !== "RIFF" || fourcc(buf, 8) !== "WAVE") throw new Error("parseWav: not a RIFF/WAVE file");
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let fmt: WavFormat | undefined;
  let offset = 12;
  while (offset + 8 <= buf.length) {
    const id = fourcc(buf, offset);
    const size = view.getUint32(offset + 4, true);
    const body = offset + 8;
    if (id === "fmt ") {
      if (size < 16) throw new Error("parseWav: bad fmt chunk");
      if (body + 16 > buf.length) break;
      let format = view.getUint16(body, true);
      // WAVE_FORMAT_EXTENSIBLE keeps the real format tag in the first two bytes of the SubFormat GUID.
      if (format === FORMAT_EXTENSIBLE && size >= 40) {
        if (body + 26 > buf.length) break;
        format = view.getUint16(body + 24, true);
      }
      fmt = {
        format,
        channels: view.getUint16(body + 2, true),
        sampleRate: view.getUint32(body + 4, true),
        bits: view.getUint16(body + 14, true),
      };
      checkFormat(fmt);
    } else if (id === "data") {
      if (!fmt) throw new Error("parseWav: data chunk before fmt chunk");
      return { fmt, dataStart: body, dataSize: isStreamedSize(size, view.getUint32(4, true), body) ? undefined : size };
    }
    offset = body + size + (size & 1); // chunks are padded to an even length
  }
  if (complete) throw new Error(fmt ? "parseWav: no data chunk" : "parseWav: no fmt chunk");
  return "need-more";
}

function checkFormat(fmt: WavFormat): void {
  const ok = (fmt.format === FORMAT_PCM && (fmt.bits === 16 || fmt.bits === 8)) || (fmt.format === FORMAT_MULAW && fmt.bits === 8);
  if (!ok) throw new Error(`parseWav: unsupported format ${fmt.format} with ${fmt.bits} bits per sample`);
  if (fmt.channels < 1) throw new Error("parseWav: zero channels");
}

/**
 * Parses a WAV file into mono 16-bit samples (PCM 16/8-bit or μ-law; channels averaged). Tolerates files
 * whose size fields were never patched by a streaming writer: a data chunk size of 0, 0xFFFFFFFF, espeak-ng's
 * 0x7FFFF000, or anything larger than the file means "the rest of the file". A truncated last frame is dropped.
 */
export function parseWav(buf: Uint8Array): WavAudio {
  const header = readHeader(buf, true) as Exclude<HeaderResult, "need-more">;
  const { fmt, dataStart, dataSize } = header;
  const end = dataSize === undefined ? buf.length : Math.min(buf.length, dataStart + dataSize);
  const data = buf.subarray(dataStart, end);
  const frameBytes = (fmt.channels * fmt.bits) / 8;
  const pcm = decodeFrames(data.subarray(0, data.length - (data.length % frameBytes)), fmt);
  return { sampleRate: fmt.sampleRate, channels: fmt.channels, pcm: pcm.buffer === buf.buffer ? pcm.slice() : pcm };
}

/** Whole sample frames -> mono samples. May return a view of `data` (mono 16-bit on little-endian hosts). */
function decodeFrames(data: Uint8Array, fmt: WavFormat): Int16Array {
  const { format, channels, bits } = fmt;
  let samples: Int16Array; // interleaved
  if (format === FORMAT_PCM && bits === 16) {
    samples = l16FromBytes(data);
  } else if (format === FORMAT_MULAW) {
    samples = new Int16Array(data.length);
    for (let i = 0; i < data.length; i++) samples[i] = MULAW_DECODE_TABLE[data[i]];
  } else {
    samples = new Int16Array(data.length);
    for (let i = 0; i < data.length; i++) samples[i] = (data[i] - 128) << 8; // unsigned 8-bit
  }
  if (channels === 1) return samples;
  const frames = samples.length / channels;
  const pcm = new Int16Array(frames);
  for (let f = 0; f < frames; f++) {
    let sum = 0;
    for (let c = 0; c < channels; c++) sum += samples[f * channels + c];
    pcm[f] = Math.round(sum / channels);
  }
  return pcm;
}

/**
 * Incremental WAV reader for audio arriving through a pipe (e.g. `espeak-ng --stdout`): push bytes as they
 * come, get the mono samples decodable so far. Sample frames split across pushes are carried over; bytes past
 * a declared (real) data size are ignored; streamed sizes (see parseWav) mean "until the stream ends".
 */
export class WavStreamParser {
  private head: Uint8Array | undefined = new Uint8Array(0); // bytes before the audio, until the header is read
  private fmtInfo: WavFormat | undefined;
  private remaining = Infinity; // data bytes still expected
  private carry = new Uint8Array(0); // partial sample frame

  /** Format of the stream, once the header has arrived. */
  get format(): { sampleRate: number; channels: number } | undefined {
    return this.fmtInfo && { sampleRate: this.fmtInfo.sampleRate, channels: this.fmtInfo.channels };
  }

  /** Feeds bytes; returns the samples they complete (often empty while the header is still arriving). Copies. */
  push(bytes: Uint8Array): Int16Array {
    let data = bytes;
    if (this.head) {
      const head = concat(this.head, bytes);
      const header = readHeader(head, false);
      if (header === "need-more") {
        this.head = head;
        return new Int16Array(0);
      }
      this.head = undefined;
      this.fmtInfo = header.fmt;
      this.remaining = header.dataSize ?? Infinity;
      data = head.subarray(header.dataStart);
    }
    if (data.length > this.remaining) data = data.subarray(0, this.remaining);
    this.remaining -= data.length;
    const fmt = this.fmtInfo!;
    const frameBytes = (fmt.channels * fmt.bits) / 8;
    const all = this.carry.length ? concat(this.carry, data) : data;
    const whole = all.length - (all.length % frameBytes);
    this.carry = all.slice(whole);
    const pcm = decodeFrames(all.subarray(0, whole), fmt);
    return pcm.buffer === bytes.buffer ? pcm.slice() : pcm; // never hand out a view of the caller's buffer
  }

  /** Call at end of stream: throws if no complete header ever arrived. */
  end(): void {
    if (this.head) readHeader(this.head, true);
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function header(totalLength: number): { bytes: Uint8Array; view: DataView } {
  const bytes = new Uint8Array(totalLength);
  const view = new DataView(bytes.buffer);
  bytes.set([0x52, 0x49, 0x46, 0x46], 0); // "RIFF"
  view.setUint32(4, totalLength - 8, true);
  bytes.set([0x57, 0x41, 0x56, 0x45], 8); // "WAVE"
  return { bytes, view };
}

function putId(bytes: Uint8Array, at: number, id: string): void {
  for (let i = 0; i < 4; i++) bytes[at + i] = id.charCodeAt(i);
}

/** Mono 16-bit PCM WAV (44-byte header). */
export function wavFromPcm(pcm: Int16Array, sampleRate: number): Uint8Array {
  const { bytes, view } = header(44 + pcm.byteLength);
  putId(bytes, 12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, FORMAT_PCM, true);
  view.setUint16(22, 1, true); // channels
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true); // byte rate
  view.setUint16(32, 2, true); // block align
  view.setUint16(34, 16, true); // bits
  putId(bytes, 36, "data");
  view.setUint32(40, pcm.byteLength, true);
  bytes.set(l16ToBytes(pcm), 44);
  return bytes;
}

/**
 * Mono μ-law WAV (format 7). Non-PCM formats need the 18-byte fmt chunk and a fact chunk (sample count)
 * for strict readers; the data chunk gets a pad byte when its length is odd.
 */
export function wavFromMulaw(bytes: Uint8Array, sampleRate = 8000): Uint8Array {
  const pad = bytes.length & 1;
  const { bytes: out, view } = header(58 + bytes.length + pad);
  putId(out, 12, "fmt ");
  view.setUint32(16, 18, true);
  view.setUint16(20, FORMAT_MULAW, true);
  view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate, true); // byte rate: 1 byte per sample
  view.setUint16(32, 1, true); // block align
  view.setUint16(34, 8, true); // bits
  view.setUint16(36, 0, true); // cbSize
  putId(out, 38, "fact");
  view.setUint32(42, 4, true);
  view.setUint32(46, bytes.length, true); // samples per channel
  putId(out, 50, "data");
  view.setUint32(54, bytes.length, true);
  out.set(bytes, 58);
  return out;
}
