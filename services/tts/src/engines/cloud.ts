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
/**
 * Compressed or wrapped audio: what a server sends when it ignored the raw format asked for. Decoded as raw samples
 * it is loud noise, and it would be cached for days.
 */
const NOT_RAW = /^(audio\/(mpeg|mp3|mp4|m4a|aac|ogg|opus|webm|flac|x-flac|wav|wave|x-wav|vnd\.wave)|video\/)/i;
/** The first bytes of files in those formats (ID3-tagged MP3, WAV, Ogg, FLAC). */
const CONTAINER_MAGIC = ["ID3", "RIFF", "OggS", "fLaC"].map((magic) => Buffer.from(magic, "latin1"));

/** What the checks below read of an answer: a fetch Response (the SDKs') or a StreamingAnswer (http-stream.ts). */
export interface AnswerBody {
  contentType: string;
  text(): Promise<string>;
}

export function fetchedAnswer(response: Response): AnswerBody {
  return { contentType: response.headers.get("content-type") ?? "", text: () => response.text() };
}

/** Throws a clear error when a 200 response is not raw audio of the `format` asked for (e.g. "pcm", "ulaw_8000"). */
export async function assertAudio(engine: string, answer: AnswerBody, secret: string, format: string): Promise<void> {
  const type = answer.contentType.trim();
  if (!type) throw new Error(`${engine}: the server sent no content type for the ${format} audio asked for`);
  if (NOT_RAW.test(type)) throw new Error(`${engine}: asked for raw ${format} audio, the server sent ${type}`);
  if (!NOT_AUDIO.test(type)) return;
  throw new Error(`${engine}: expected audio but the server sent ${type}: ${hideSecret(await snippet(answer), secret)}`);
}

/** Throws when the first bytes of an answer are a file's header rather than raw samples (the type said otherwise). */
export function assertRawStart(engine: string, first: Uint8Array, format: string): void {
  const start = Buffer.from(first.buffer, first.byteOffset, Math.min(first.byteLength, 4));
  const magic = CONTAINER_MAGIC.find((m) => start.subarray(0, m.length).equals(m));
  if (magic) throw new NotRawAudioError(`${engine}: asked for raw ${format} audio, the server sent a ${magic.toString("latin1")} file`);
}

export class NotRawAudioError extends Error {}

/** The start of a response body as one line, for error messages (bodies can be whole HTML pages). */
export async function snippet(answer: AnswerBody, max = 300): Promise<string> {
  let text: string;
  try {
    text = await answer.text();
  } catch (error) {
    return `(body unreadable: ${causes(error)})`;
  }
  const line = text.replace(/\s+/g, " ").trim();
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
