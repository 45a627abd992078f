import { FRAME_MS, l16ToBytes, MULAW_SILENCE, mulawEncode, Resampler } from "@voicebot/audio";
import { AudioEncoding, type AudioFormat } from "@voicebot/proto";

/** The bot audio format a request asked for, with what framing it needs. */
export interface OutputFormat {
  encoding: AudioEncoding.AUDIO_ENCODING_MULAW | AudioEncoding.AUDIO_ENCODING_L16;
  sampleRate: number;
  /** Bytes in one 20 ms frame. */
  frameBytes: number;
  /** Fills the end of the last frame: silence in this encoding. */
  padByte: number;
  /** Short stable text for cache keys and logs, e.g. "mulaw/8000". */
  label: string;
}

/** What ingress uses for Twilio, and what a request without a format gets. */
export const DEFAULT_FORMAT: AudioFormat = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };

/** The requested format, or an error text when it cannot be produced. Unset fields mean the default (μ-law 8000). */
export function resolveFormat(format: AudioFormat | undefined): OutputFormat | { error: string } {
  const encoding = format?.encoding || DEFAULT_FORMAT.encoding;
  const sampleRate = format?.sampleRate || DEFAULT_FORMAT.sampleRate;
  if (encoding !== AudioEncoding.AUDIO_ENCODING_MULAW && encoding !== AudioEncoding.AUDIO_ENCODING_L16) {
    return { error: `unsupported audio encoding ${encoding}` };
  }
  // A 20 ms frame must hold a whole number of samples.
  if (sampleRate < 8000 || sampleRate > 48000 || (sampleRate * FRAME_MS) % 1000 !== 0) {
    return { error: `unsupported sample rate ${sampleRate}` };
  }
  const mulaw = encoding === AudioEncoding.AUDIO_ENCODING_MULAW;
  const bytesPerSample = mulaw ? 1 : 2;
  return {
    encoding,
    sampleRate,
    frameBytes: ((sampleRate * FRAME_MS) / 1000) * bytesPerSample,
    padByte: mulaw ? MULAW_SILENCE : 0,
    label: `${mulaw ? "mulaw" : "l16"}/${sampleRate}`,
  };
}

/** Engine PCM at `inputRate` -> bytes in the output format, streaming (band-limited resampling keeps its state). */
export class PcmEncoder {
  private readonly resampler: Resampler | undefined;

  constructor(
    inputRate: number,
    private readonly format: OutputFormat,
  ) {
    this.resampler = inputRate === format.sampleRate ? undefined : new Resampler(inputRate, format.sampleRate);
  }

  push(pcm: Int16Array): Uint8Array {
    return this.encode(this.resampler ? this.resampler.push(pcm) : pcm);
  }

  /** The resampler's tail once the engine is done. */
  flush(): Uint8Array {
    return this.resampler ? this.encode(this.resampler.flush()) : new Uint8Array(0);
  }

  private encode(pcm: Int16Array): Uint8Array {
    if (pcm.length === 0) return new Uint8Array(0);
    return this.format.encoding === AudioEncoding.AUDIO_ENCODING_MULAW ? mulawEncode(pcm) : l16ToBytes(pcm);
  }
}
