// ElevenLabs streaming text-to-speech as a TtsEngine: POST {base}/v1/text-to-speech/{voice_id}/stream with
// `xi-api-key`, over node:http keep-alive connections (http-stream.ts: the first audio sooner than through fetch;
// the official SDK adds node-fetch, ws and more for one POST).
//
// - Output format ulaw_8000 by default: exactly what Twilio plays (G.711 μ-law, 8 kHz), so nothing is resampled,
//   the μ-law decode here and the re-encode in the service are lossless (the caller hears the bytes ElevenLabs
//   made), and it is a quarter of pcm_16000's bytes on the wire. A service whose bot audio is wideband (L16 at
//   16 kHz and up) should set ELEVENLABS_OUTPUT_FORMAT=pcm_16000 (or higher) instead.
// - μ-law is one byte per sample, so any network chunk decodes on its own; pcm_* chunks may split a sample and are
//   put back together (L16ChunkDecoder).
// - `optimize_streaming_latency` is deprecated in the API reference, so it is not sent; the model choice
//   (eleven_flash_v2_5, ~75 ms) is the latency lever.
// - No retries: failing at once lets the FallbackEngine hand the chunk to the next engine.

import { setTimeout as sleep } from "node:timers/promises";
import { mulawDecode } from "@voicebot/audio";
import { hideSecret, type EnvReader } from "@voicebot/service-kit";
import { providerError, RequestRefusedError, type SynthesisRequest, type TtsEngine } from "../engine.js";
import { assertAudio, assertRawStart, causes, L16ChunkDecoder, NotRawAudioError, snippet } from "./cloud.js";
import { StreamingHttpClient, type StreamingAnswer } from "./http-stream.js";
import { groupSentences } from "./text.js";

export const ELEVENLABS_DEFAULT_BASE_URL = "https://api.elevenlabs.io";
export const ELEVENLABS_DEFAULT_MODEL = "eleven_flash_v2_5";
/** "George", one of the premade voices every account has (the API reference's example voice). */
export const ELEVENLABS_DEFAULT_VOICE_ID = "JBFqnCBsd6RMkjVDRZzb";

/** Raw output formats (no container), by the rate of the PCM they give. pcm_44100 needs a Pro subscription. */
export const ELEVENLABS_OUTPUT_FORMATS = {
  ulaw_8000: 8000,
  pcm_8000: 8000,
  pcm_16000: 16000,
  pcm_22050: 22050,
  pcm_24000: 24000,
  pcm_44100: 44100,
} as const;
export type ElevenLabsOutputFormat = keyof typeof ELEVENLABS_OUTPUT_FORMATS;

/** Text per request: the smallest per-request limit of the current models (multilingual v2: 10,000; flash: 40,000). */
const MAX_TEXT_CHARS = 5000;
/** ELEVENLABS_KEEP_WARM_S default: a connection stays open through the pauses of a call and between calls. */
const DEFAULT_KEEP_WARM_MS = 300_000;
/** voice_settings.speed range. */
const MIN_SPEED = 0.7;
const MAX_SPEED = 1.2;

export interface ElevenLabsEngineOptions {
  apiKey: string;
  /** API base without /v1 (default https://api.elevenlabs.io). */
  baseUrl?: string;
  /** Default eleven_flash_v2_5. */
  model?: string;
  /** Voice id when the request names none. */
  voiceId?: string;
  /** Default ulaw_8000. */
  outputFormat?: ElevenLabsOutputFormat;
  /** voice_settings sent with every request (stability, similarity_boost, style, use_speaker_boost...). */
  voiceSettings?: Record<string, unknown>;
  /** Longest wait for the response headers (default 15 s); the FallbackEngine usually gives up sooner. */
  timeoutMs?: number;
  /** Keep a connection to the API open for this long after the last sentence (default 5 min; 0 = off). */
  keepWarmMs?: number;
  /** A keep-warm request (GET /v1/models) failed. */
  onKeepWarmFailure?: (error: string) => void;
}

export class ElevenLabsEngine implements TtsEngine {
  readonly label = "elevenlabs";
  readonly sampleRate: number;
  readonly variant: string;
  private readonly apiKey: string;
  private readonly baseUrl: string;
  private readonly model: string;
  private readonly voiceId: string;
  private readonly outputFormat: ElevenLabsOutputFormat;
  private readonly voiceSettings: Record<string, unknown> | undefined;
  private readonly timeoutMs: number;
  private readonly inFlight = new Set<AbortController>();
  private readonly http: StreamingHttpClient;
  private closed = false;

  constructor(options: ElevenLabsEngineOptions) {
    if (!options.apiKey) throw new Error("elevenlabs tts engine needs an API key");
    this.apiKey = options.apiKey;
    this.baseUrl = (options.baseUrl ?? ELEVENLABS_DEFAULT_BASE_URL).replace(/\/+$/, "");
    this.model = options.model ?? ELEVENLABS_DEFAULT_MODEL;
    this.voiceId = options.voiceId ?? ELEVENLABS_DEFAULT_VOICE_ID;
    this.outputFormat = options.outputFormat ?? "ulaw_8000";
    this.sampleRate = ELEVENLABS_OUTPUT_FORMATS[this.outputFormat];
    this.voiceSettings = options.voiceSettings;
    this.timeoutMs = options.timeoutMs ?? 15_000;
    this.variant = JSON.stringify([this.baseUrl, this.model, this.outputFormat, this.voiceSettings ?? {}]);
    const apiKey = this.apiKey;
    this.http = new StreamingHttpClient({
      url: new URL(`${this.baseUrl}/v1/models`),
      headers: { "xi-api-key": apiKey, accept: "application/json" },
      forMs: options.keepWarmMs ?? DEFAULT_KEEP_WARM_MS,
      onFailure: (error) => options.onKeepWarmFailure?.(`elevenlabs: ${hideSecret(causes(error), apiKey)}`),
    });
  }

  /** Configuration was checked when the engine was made; a synthesis costs characters, and readiness must not
   *  depend on a third party being up (the FallbackEngine covers an outage per chunk). */
  async warmUp(): Promise<void> {
    if (this.closed) throw new Error("elevenlabs engine is closed");
    // A connection for the first sentence, opened in the background (its failure is reported, not fatal).
    this.http.warm();
  }

  /** Keep-warm requests sent and failed (tests). */
  get keepWarmRequests(): { sent: number; failed: number } {
    return this.http.warmUps;
  }

  async *synthesize(req: SynthesisRequest): AsyncGenerator<Int16Array, void, undefined> {
    if (this.closed) throw new Error("elevenlabs engine is closed");
    req.signal?.throwIfAborted();
    const speed = req.rate === undefined || req.rate === 1 ? undefined : Math.min(MAX_SPEED, Math.max(MIN_SPEED, req.rate));
    const voiceSettings = speed === undefined ? this.voiceSettings : { ...this.voiceSettings, speed };
    const voiceId = req.voice || this.voiceId;
    const texts = groupSentences(req.text, MAX_TEXT_CHARS);
    let audio = false;
    for (const text of texts) {
      const firstAskedAt = Date.now();
      for (let attempt = 0; ; attempt++) {
        try {
          for await (const pcm of this.speak(text, voiceId, voiceSettings, req.signal)) {
            audio = true;
            yield pcm;
          }
          break;
        } catch (error) {
          if (!(error instanceof ConcurrencyLimitError)) throw error;
          // The plan's limit on requests at once (a burst), not an outage: asked again shortly, within a second in
          // all (longer, the caller hears the wait, and the stall watch, TTS_STALL_MS, would take it for an engine
          // failure); then this one request goes to the next engine, every other call keeping this voice.
          const waitMs = CONCURRENCY_RETRY_MS[attempt];
          if (waitMs === undefined || Date.now() - firstAskedAt + waitMs > CONCURRENCY_RETRY_BUDGET_MS) throw new RequestRefusedError(error.message);
          await sleep(waitMs, undefined, { signal: req.signal }).catch(() => req.signal?.throwIfAborted());
        }
      }
    }
    if (texts.length > 0 && !audio) throw new Error("elevenlabs: the response held no audio");
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const controller of this.inFlight) controller.abort(new Error("elevenlabs engine closed"));
    this.http.close();
  }

  /** One request: its audio as it arrives. */
  private async *speak(
    text: string,
    voiceId: string,
    voiceSettings: Record<string, unknown> | undefined,
    cancel: AbortSignal | undefined,
  ): AsyncGenerator<Int16Array> {
    const mine = new AbortController();
    const signal = cancel ? AbortSignal.any([cancel, mine.signal]) : mine.signal;
    this.inFlight.add(mine);
    const url = new URL(`${this.baseUrl}/v1/text-to-speech/${encodeURIComponent(voiceId)}/stream?output_format=${this.outputFormat}`);
    const timer = setTimeout(() => mine.abort(new Error(`elevenlabs: no response from ${this.baseUrl} within ${this.timeoutMs} ms`)), this.timeoutMs);
    try {
      let answer: StreamingAnswer;
      try {
        answer = await this.http.post(url, {
          headers: { "xi-api-key": this.apiKey, "content-type": "application/json", accept: "audio/*" },
          body: JSON.stringify({ text, model_id: this.model, ...(voiceSettings ? { voice_settings: voiceSettings } : {}) }),
          signal,
        });
      } catch (error) {
        cancel?.throwIfAborted();
        if (mine.signal.aborted) throw mine.signal.reason;
        throw new Error(`elevenlabs: cannot reach ${this.baseUrl}: ${hideSecret(causes(error), this.apiKey)}`);
      } finally {
        clearTimeout(timer);
      }
      if (answer.status < 200 || answer.status > 299) {
        const detail = await errorDetail(answer, this.apiKey);
        const message = `elevenlabs: HTTP ${answer.status}: ${detail.text}`;
        throw answer.status === 429 && detail.name === TOO_MANY_CONCURRENT ? new ConcurrencyLimitError(message) : providerError(answer.status, message);
      }
      await assertAudio("elevenlabs", answer, this.apiKey);
      const l16 = this.outputFormat === "ulaw_8000" ? undefined : new L16ChunkDecoder();
      let first = true;
      try {
        for await (const bytes of answer.chunks()) {
          if (first && bytes.length > 0) {
            first = false;
            assertRawStart("elevenlabs", bytes, this.outputFormat, answer.contentType);
          }
          const pcm = l16 ? l16.push(bytes) : mulawDecode(bytes);
          if (pcm.length > 0) yield pcm;
        }
      } catch (error) {
        signal.throwIfAborted();
        if (error instanceof NotRawAudioError) throw error;
        throw new Error(`elevenlabs: audio stream broke off: ${hideSecret(causes(error), this.apiKey)}`);
      }
    } finally {
      clearTimeout(timer);
      this.inFlight.delete(mine);
    }
  }
}

/** ElevenLabs' 429 for more requests at once than the plan allows (others, e.g. system_busy, are the service's). */
const TOO_MANY_CONCURRENT = "too_many_concurrent_requests";
/** Waits before asking again after that 429: a burst of sentences across calls passes within them. */
const CONCURRENCY_RETRY_MS = [150, 400];
/** The most a sentence waits for the concurrency limit, its refused requests included. */
const CONCURRENCY_RETRY_BUDGET_MS = 1_000;

/** A 429 for the plan's concurrency limit (see synthesize: asked again, then refused for this request only). */
class ConcurrencyLimitError extends Error {}

/**
 * An ElevenLabs error body, {"detail": {"status"|"code", "message"}} or a validation list: its error name (code or
 * status) and the text to report.
 */
async function errorDetail(answer: StreamingAnswer, secret: string): Promise<{ name?: string; text: string }> {
  const body = await snippet(answer, secret, 2000);
  try {
    const { detail } = JSON.parse(body) as { detail?: unknown };
    if (Array.isArray(detail)) {
      return { text: detail.map((d: { loc?: unknown[]; msg?: string }) => `${(d.loc ?? []).join(".")}: ${d.msg ?? "invalid"}`).join("; ") };
    }
    if (detail && typeof detail === "object") {
      const { status, code, message } = detail as { status?: string; code?: string; message?: string };
      const name = code ?? status;
      return { name, text: [name, message].filter(Boolean).join(": ") || body };
    }
    if (typeof detail === "string") return { text: detail };
  } catch {
    // not JSON: the text itself says what went wrong
  }
  return { text: body.length > 300 ? `${body.slice(0, 300)}…` : body };
}

export interface ElevenLabsEngineConfig extends ElevenLabsEngineOptions {
  voiceId: string;
}

/**
 * ELEVENLABS_* settings, read only when TTS_ENGINES lists elevenlabs: ELEVENLABS_API_KEY (required),
 * ELEVENLABS_BASE_URL, ELEVENLABS_MODEL, ELEVENLABS_VOICE_ID, ELEVENLABS_OUTPUT_FORMAT, ELEVENLABS_VOICE_SETTINGS
 * (a JSON object), ELEVENLABS_TIMEOUT_MS, ELEVENLABS_KEEP_WARM_S.
 */
export function readElevenLabsConfig(env: EnvReader): ElevenLabsEngineConfig {
  const apiKey = env.optional("ELEVENLABS_API_KEY") ?? "";
  if (!apiKey) env.problem("TTS_ENGINES includes elevenlabs but ELEVENLABS_API_KEY is not set");
  const formats = Object.keys(ELEVENLABS_OUTPUT_FORMATS) as ElevenLabsOutputFormat[];
  let voiceSettings: Record<string, unknown> | undefined;
  const rawSettings = env.optional("ELEVENLABS_VOICE_SETTINGS");
  if (rawSettings) {
    try {
      const parsed = JSON.parse(rawSettings) as unknown;
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not an object");
      voiceSettings = parsed as Record<string, unknown>;
    } catch {
      env.problem(`ELEVENLABS_VOICE_SETTINGS must be a JSON object such as {"stability":0.5,"similarity_boost":0.75}`);
    }
  }
  return {
    apiKey,
    baseUrl: env.url("ELEVENLABS_BASE_URL", ELEVENLABS_DEFAULT_BASE_URL, ["https", "http"]),
    model: env.string("ELEVENLABS_MODEL", ELEVENLABS_DEFAULT_MODEL),
    voiceId: env.string("ELEVENLABS_VOICE_ID", ELEVENLABS_DEFAULT_VOICE_ID),
    outputFormat: env.oneOf("ELEVENLABS_OUTPUT_FORMAT", formats, "ulaw_8000"),
    voiceSettings,
    timeoutMs: env.int("ELEVENLABS_TIMEOUT_MS", 15_000, { min: 100, max: 120_000 }),
    keepWarmMs: env.int("ELEVENLABS_KEEP_WARM_S", DEFAULT_KEEP_WARM_MS / 1000, { min: 0, max: 86_400 }) * 1000,
  };
}
