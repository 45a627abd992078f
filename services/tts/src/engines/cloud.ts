// What the cloud (HTTP) engines share: reading a streamed audio body as it arrives, telling audio from an error
// page, and error texts that never carry the API key.

import { l16FromBytes } from "@voicebot/audio";
import { hideSecret } from "@voicebot/service-kit";

/**
 * 16-bit little-endian PCM arriving in chunks of any size -> whole samples. A chunk may end inside a sample (TCP
 * and HTTP chunking know nothing of samples): its first byte is kept and completed by the next chunk.
 */
export class L16ChunkDecoder {
  private carry: number | undefined;

  push(bytes: Uint8Array): Int16Array {
    let data = bytes;
    if (this.carry !== undefined) {
      data = new Uint8Array(bytes.length + 1);
      data[0] = this.carry;
      data.set(bytes, 1);
      this.carry = undefined;
    }
    if (data.length % 2 === 1) {
      this.carry = data[data.length - 1];
      data = data.subarray(0, data.length - 1);
    }
    const pcm = l16FromBytes(data);
    // l16FromBytes may return a view of the network buffer; the samples outlive this call, so they get their own.
    return pcm.buffer === data.buffer ? pcm.slice() : pcm;
  }
}

/** Content types that are never audio: an API error body, or an HTML page from a proxy or captive portal. */
const NOT_AUDIO = /^(application\/(json|problem\+json|xml)|text\/)/i;
/** Types that say raw samples: the first bytes of such an answer are only checked for a file header. */
const RAW_TYPE = /^(audio\/(basic|pcm|l16|x-mulaw|mulaw|ulaw|x-raw)|application\/octet-stream)/i;
/** The first bytes of compressed or wrapped audio files (ID3-tagged MP3, WAV, Ogg, FLAC). */
const CONTAINER_MAGIC = ["ID3", "RIFF", "OggS", "fLaC"].map((magic) => Buffer.from(magic, "latin1"));

/** What the checks below read of an answer: a fetch Response (the SDKs') or a StreamingAnswer (http-stream.ts). */
export interface AnswerBody {
  contentType: string;
  text(): Promise<string>;
}

export function fetchedAnswer(response: Response): AnswerBody {
  return { contentType: response.headers.get("content-type") ?? "", text: () => response.text() };
}

/** Throws a clear error when a 200 response is not audio. */
export async function assertAudio(engine: string, answer: AnswerBody, secret: string): Promise<void> {
  const type = answer.contentType;
  if (!NOT_AUDIO.test(type)) return;
  throw new Error(`${engine}: expected audio but the server sent ${type}: ${await snippet(answer, secret)}`);
}

/**
 * Throws when an answer's first bytes are compressed or wrapped audio rather than the raw samples asked for (a
 * server that ignored the format): decoded as samples it is loud noise, and it would be cached for days. Decided by
 * the bytes, since gateways label raw audio "audio/mpeg" too: a file header (ID3, RIFF, OggS, fLaC) always fails;
 * so do two MP3 or AAC frames in a row, unless the content type says raw samples (quiet raw audio can look like one
 * frame header, hardly like two a frame's length apart).
 */
export function assertRawStart(engine: string, first: Uint8Array, format: string, contentType: string): void {
  const bytes = Buffer.from(first.buffer, first.byteOffset, first.byteLength);
  const magic = CONTAINER_MAGIC.find((m) => bytes.subarray(0, m.length).equals(m));
  if (magic) throw new NotRawAudioError(`${engine}: asked for raw ${format} audio, the server sent a ${magic.toString("latin1")} file`);
  if (RAW_TYPE.test(contentType.trim())) return;
  const length = frameLength(bytes, 0);
  if (length !== undefined && frameLength(bytes, length) !== undefined) {
    throw new NotRawAudioError(`${engine}: asked for raw ${format} audio, the server sent MPEG audio (${contentType.trim() || "no content type"})`);
  }
}

/** MP3 (MPEG layer III) bit rates in kbit/s by index, for MPEG-1 and for MPEG-2/2.5. */
const MP3_KBPS = { v1: [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320], v2: [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160] };
/** Sample rates by version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5) and index. */
const MP3_RATES: Record<number, number[]> = { 3: [44100, 48000, 32000], 2: [22050, 24000, 16000], 0: [11025, 12000, 8000] };

/** The length of the MP3 or ADTS (AAC) frame whose header starts at `at`, or undefined when none does. */
function frameLength(b: Uint8Array, at: number): number | undefined {
  if (at + 6 > b.length || b[at] !== 0xff || (b[at + 1] & 0xe0) !== 0xe0) return undefined;
  if ((b[at + 1] & 0xf6) === 0xf0) {
    const adts = ((b[at + 3] & 0x03) << 11) | (b[at + 4] << 3) | (b[at + 5] >> 5);
    return adts >= 7 ? adts : undefined;
  }
  const version = (b[at + 1] >> 3) & 3;
  const layer = (b[at + 1] >> 1) & 3;
  const bitrate = b[at + 2] >> 4;
  const rate = (b[at + 2] >> 2) & 3;
  if (version === 1 || layer !== 1 || bitrate === 0 || bitrate === 15 || rate === 3) return undefined;
  const kbps = (version === 3 ? MP3_KBPS.v1 : MP3_KBPS.v2)[bitrate];
  const padding = (b[at + 2] >> 1) & 1;
  return Math.floor(((version === 3 ? 144 : 72) * kbps * 1000) / MP3_RATES[version][rate]) + padding;
}

export class NotRawAudioError extends Error {}

/**
 * The start of a response body as one line, for error messages (bodies can be whole HTML pages). `secret` is
 * hidden before the cut: cut first, a secret echoed across the cut would keep its first characters.
 */
export async function snippet(answer: AnswerBody, secret: string, max = 300): Promise<string> {
  let text: string;
  try {
    text = await answer.text();
  } catch (error) {
    return `(body unreadable: ${hideSecret(causes(error), secret)})`;
  }
  const line = hideSecret(text, secret).replace(/\s+/g, " ").trim();
  return line.length > max ? `${line.slice(0, max)}…` : line || "(empty body)";
}

/** An error's message with the messages of its causes ("fetch failed: connect ECONNREFUSED 127.0.0.1:1"). */
export function causes(error: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = error; e !== undefined && e !== null && parts.length < 4; e = (e as { cause?: unknown }).cause) {
    const message = e instanceof Error ? e.message || e.name : String(e);
    if (message && !parts.includes(message)) parts.push(message);
    if (!(e instanceof Error)) break;
  }
  return parts.join(": ") || "unknown error";
}

/**
 * A response body's chunks as they arrive. Stopping early (the consumer breaks, or an error) cancels the body,
 * which closes the HTTP connection. A failure while reading is reported with `describe`; an abort rethrows the
 * abort reason.
 */
export async function* bodyChunks(
  response: Response,
  signal: AbortSignal | undefined,
  describe: (error: unknown) => Error,
): AsyncGenerator<Uint8Array, void, undefined> {
  if (!response.body) return;
  const reader = response.body.getReader();
  let finished = false;
  try {
    for (;;) {
      let next: Awaited<ReturnType<typeof reader.read>>;
      try {
        next = await reader.read();
      } catch (error) {
        signal?.throwIfAborted();
        throw describe(error);
      }
      if (next.done) {
        finished = true;
        return;
      }
      if (next.value.length > 0) yield next.value;
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
