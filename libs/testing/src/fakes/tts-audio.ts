// What the fake text-to-speech servers (OpenAI speech, ElevenLabs) share: where their audio comes from, how it
// is encoded on the wire, and how a streamed audio response is played out, including its failure modes.
// Deliberately independent of @voicebot/audio: the fakes are the oracle the engines' decoding is tested against.

import type { ServerResponse } from "node:http";

/** PCM for `text` at `sampleRate` (mono, 16-bit). Tests pass real speech (e.g. flite); the default is synthetic. */
export type FakeSpeechSource = (text: string, sampleRate: number) => Int16Array | Promise<Int16Array>;

/** How a fake answers one synthesis request. */
export type FakeTtsReply =
  | {
      /** Wait this long before the status line: a slow first byte. */
      delayMs?: number;
      /** Bytes per written chunk (default: 100 ms of audio plus one byte, so chunk edges fall inside a sample). */
      chunkBytes?: number;
      /** Wait between chunks (default 10 ms). */
      intervalMs?: number;
      /** Destroy the connection after this many chunks (and one interval, so they have arrived): an abrupt close. */
      cutAfterChunks?: number;
      /** Stop sending after this many chunks and keep the response open (0: headers, then nothing). */
      stallAfterChunks?: number;
    }
  /** An API error with the provider's error body. */
  | { status: number; message?: string; code?: string; retryAfterSeconds?: number }
  /** Anything else, sent as is (a proxy's HTML page, JSON where audio belongs...). */
  | { raw: { status: number; contentType: string; body: string | Uint8Array } }
  /** Accept the connection and the request, then never answer (not even headers). */
  | { hang: true };

/** How a response ended: completed (all audio sent), answered (an error or raw body instead of audio), cut (the
 *  reply's abrupt close), or client-closed: the client went away first (an abort, a client timeout, or stop()). */
export type FakeTtsOutcome = "completed" | "answered" | "cut" | "client-closed";

/** What the fake saw of one synthesis response. */
export interface FakeTtsDelivery {
  /** Audio bytes written so far. */
  bytesSent: number;
  chunksSent: number;
  /** When the first audio byte was written (ms since the epoch). */
  firstByteAt?: number;
  /** Set once the connection's response is over. */
  outcome?: FakeTtsOutcome;
  /** Resolves with the outcome once the response is over. */
  ended: Promise<FakeTtsOutcome>;
}

/**
 * A speech-like stand-in for when a test brings no real speech: per word a voiced syllable (8 harmonics of a
 * gliding 110-180 Hz pitch under a smooth envelope, energy below 2 kHz as in telephone speech), 80 ms between
 * words. Cheap to make, so it adds little to the fake's time to first byte.
 */
export function syntheticSpeech(text: string, sampleRate: number): Int16Array {
  const words = text.split(/\s+/).filter((w) => /[\p{L}\p{N}]/u.test(w));
  const gap = Math.round(sampleRate * 0.08);
  const lengths = words.map((w) => Math.round(sampleRate * Math.min(0.6, 0.12 + 0.045 * w.length)));
  const out = new Int16Array(lengths.reduce((sum, n) => sum + n + gap, 0));
  let at = 0;
  words.forEach((word, index) => {
    const n = lengths[index];
    const f0 = 110 + ((word.charCodeAt(0) * 7 + index * 13) % 70);
    let phase = 0;
    for (let i = 0; i < n; i++) {
      const t = i / n;
      const pitch = f0 * (1 + 0.15 * Math.sin(Math.PI * t)); // rises and falls over the syllable
      phase += (2 * Math.PI * pitch) / sampleRate;
      let sample = 0;
      for (let h = 1; h <= 8 && h * pitch < sampleRate / 2 - 200; h++) sample += Math.sin(h * phase) / h;
      const envelope = Math.sin(Math.PI * t) ** 0.5;
      out[at + i] = Math.round(6000 * envelope * sample);
    }
    at += n + gap;
  });
  return out;
}

/** Samples -> 16-bit little-endian bytes (as "pcm" formats travel). */
export function pcmToLittleEndian(pcm: Int16Array): Uint8Array {
  const bytes = new Uint8Array(pcm.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < pcm.length; i++) view.setInt16(i * 2, pcm[i], true);
  return bytes;
}

/** G.711 μ-law encoding of one sample (ITU-T G.711, bias 0x84, clip 32635). */
export function mulawByte(sample: number): number {
  const sign = sample < 0 ? 0x80 : 0;
  const magnitude = Math.min(Math.abs(sample), 32635) + 0x84;
  let exponent = 7;
  for (let mask = 0x4000; (magnitude & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (magnitude >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

// A plain loop: Uint8Array.from with a map function took ~5 ms for a 4 s sentence, which the fake spent before
// its first byte, at the load test's raised priority, on a core the pipeline shares.
export function pcmToMulaw(pcm: Int16Array): Uint8Array {
  const bytes = new Uint8Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) bytes[i] = mulawByte(pcm[i]);
  return bytes;
}

/** Timers the fake can cancel all at once on stop(). Unref'd: an open response keeps the process alive anyway. */
export class FakeTimers {
  private readonly timers = new Set<NodeJS.Timeout>();

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        resolve();
      }, ms);
      timer.unref();
      this.timers.add(timer);
    });
  }

  clear(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }
}

/** Watches how one response ends; streamAudioReply() reports its audio and failure modes to it. */
export class DeliveryTracker {
  readonly delivery: FakeTtsDelivery;
  private streamed = false;
  private cutByFake = false;

  constructor(res: ServerResponse) {
    let settle!: (outcome: FakeTtsOutcome) => void;
    this.delivery = { bytesSent: 0, chunksSent: 0, ended: new Promise<FakeTtsOutcome>((resolve) => (settle = resolve)) };
    res.on("close", () => {
      const outcome = this.cutByFake ? "cut" : !res.writableFinished ? "client-closed" : this.streamed ? "completed" : "answered";
      this.delivery.outcome = outcome;
      settle(outcome);
    });
  }

  streaming(): void {
    this.streamed = true;
  }

  cut(): void {
    this.cutByFake = true;
  }
}

/**
 * Plays out one audio response on `res`: headers, then `audio` in chunks with pauses, honouring the reply's
 * failure modes (slow first byte, stall, abrupt close).
 */
export function streamAudioReply(
  res: ServerResponse,
  tracker: DeliveryTracker,
  audio: Uint8Array,
  options: {
    contentType: string;
    /** Bytes per 100 ms of audio, for the default chunk size. */
    bytesPer100Ms: number;
    reply: Extract<FakeTtsReply, { delayMs?: number }>;
    timers: FakeTimers;
    headers?: Record<string, string>;
  },
): void {
  const { reply, timers } = options;
  const { delivery } = tracker;
  tracker.streaming();
  void (async () => {
    if (reply.delayMs) await timers.sleep(reply.delayMs);
    if (res.destroyed) return;
    // Chunked transfer encoding (no content-length), as the providers stream.
    res.writeHead(200, { "content-type": options.contentType, "cache-control": "no-cache", ...options.headers });
    res.flushHeaders();
    const chunkBytes = Math.max(1, reply.chunkBytes ?? options.bytesPer100Ms + 1);
    const intervalMs = reply.intervalMs ?? 10;
    for (let at = 0; at < audio.length; at += chunkBytes) {
      // The pause comes first, so what was written before a cut has reached the client.
      if (delivery.chunksSent > 0 && intervalMs > 0) await timers.sleep(intervalMs);
      if (res.destroyed) return;
      if (reply.stallAfterChunks !== undefined && delivery.chunksSent >= reply.stallAfterChunks) return; // open, silent
      if (reply.cutAfterChunks !== undefined && delivery.chunksSent >= reply.cutAfterChunks) {
        tracker.cut();
        res.socket?.destroy();
        return;
      }
      const chunk = audio.subarray(at, at + chunkBytes);
      delivery.firstByteAt ??= Date.now();
      res.write(chunk);
      delivery.chunksSent++;
      delivery.bytesSent += chunk.length;
    }
    if (reply.stallAfterChunks !== undefined && delivery.chunksSent >= reply.stallAfterChunks) return;
    res.end();
  })().catch(() => res.destroy());
}
