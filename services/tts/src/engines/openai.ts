// OpenAI text-to-speech (POST /v1/audio/speech, also offered by compatible servers) as a TtsEngine, via the
// official `openai` SDK.
//
// - `response_format: "pcm"` is raw 24 kHz 16-bit mono little-endian samples with no header, streamed (chunked
//   transfer encoding) while the model speaks: each network chunk is yielded as soon as it arrives. Chunks end at
//   arbitrary bytes, so a sample split between two chunks is put back together (L16ChunkDecoder).
// - No SDK retries: a retry waits 0.5-8 s, while failing at once lets the FallbackEngine hand the chunk to the
//   next engine (the caller is waiting). A stall after the headers is the FallbackEngine's to judge (TTS_STALL_MS).
// - The API takes at most 4096 characters per request; longer text goes as several requests, one after another.

import OpenAI, { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from "openai";
import { ApiKeepWarm, apiDispatcher, hideSecret, type EnvReader } from "@voicebot/service-kit";
import { providerError, type SynthesisRequest, type TtsEngine } from "../engine.js";
import { assertAudio, assertRawStart, bodyChunks, causes, fetchedAnswer, L16ChunkDecoder } from "./cloud.js";
import { groupSentences } from "./text.js";

export const OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1";
export const OPENAI_DEFAULT_MODEL = "gpt-4o-mini-tts";
export const OPENAI_DEFAULT_VOICE = "alloy";
/** The only rate "pcm" comes in. */
export const OPENAI_PCM_RATE = 24_000;
const MAX_INPUT_CHARS = 4096;
/** The API's speed range. */
const MIN_SPEED = 0.25;
const MAX_SPEED = 4;

export interface OpenAIEngineOptions {
  apiKey: string;
  /** API base including /v1 (default https://api.openai.com/v1). */
  baseUrl?: string;
  /** Default gpt-4o-mini-tts. */
  model?: string;
  /** Voice when the request names none (default "alloy"). */
  voice?: string;
  /** How to speak (tone, pace, accent); gpt-4o-mini-tts only. */
  instructions?: string;
  /** Longest wait for the response headers (default 15 s); the FallbackEngine usually gives up sooner. */
  timeoutMs?: number;
  /** A connection to the API is kept open this long after the last sentence and after start (0 = off, the default). */
  keepWarmMs?: number;
  /** A keep-warm request (GET /models) got no answer. */
  onKeepWarmFailure?: (error: string) => void;
}

export class OpenAIEngine implements TtsEngine {
  readonly label = "openai";
  readonly sampleRate = OPENAI_PCM_RATE;
  readonly variant: string;
  private readonly client: OpenAI;
  private readonly apiKey: string;
  private readonly model: string;
  private readonly voice: string;
  private readonly instructions: string | undefined;
  private readonly baseUrl: string;
  /** In-flight requests, stopped by close(). */
  private readonly inFlight = new Set<AbortController>();
  private closed = false;
  /** A sentence after a pause finds a connection to the API open (no TCP and TLS handshake before its audio). */
  private readonly keepWarm: ApiKeepWarm;

  constructor(options: OpenAIEngineOptions) {
    if (!options.apiKey) throw new Error("openai tts engine needs an API key");
    this.apiKey = options.apiKey;
    this.baseUrl = options.baseUrl ?? OPENAI_DEFAULT_BASE_URL;
    this.model = options.model ?? OPENAI_DEFAULT_MODEL;
    this.voice = options.voice ?? OPENAI_DEFAULT_VOICE;
    this.instructions = options.instructions || undefined;
    this.variant = JSON.stringify([this.baseUrl, this.model, this.instructions ?? ""]);
    this.client = new OpenAI({
      apiKey: options.apiKey,
      baseURL: this.baseUrl,
      // Explicit, so the SDK does not pick up OPENAI_* variables meant for something else.
      organization: null,
      project: null,
      maxRetries: 0,
      timeout: options.timeoutMs ?? 15_000,
      // Failures reach us as errors (logged by the service, key redacted); the SDK's own console output is noise.
      logLevel: "off",
      // Idle connections kept 25 s instead of fetch's 4 s: a sentence after a pause needs no new handshake.
      fetchOptions: { dispatcher: apiDispatcher() },
    });
    this.keepWarm = new ApiKeepWarm({
      baseUrl: this.baseUrl,
      apiKey: options.apiKey,
      forMs: options.keepWarmMs ?? 0,
      onFailure: (error) => options.onKeepWarmFailure?.(`openai: ${error}`),
    });
  }

  /** Configuration was checked when the engine was made; a synthesis would cost money, and readiness must not
   *  depend on a third party being up (the FallbackEngine covers an outage per chunk). Opens a connection with a
   *  free GET /models, without waiting for it. */
  async warmUp(): Promise<void> {
    if (this.closed) throw new Error("openai engine is closed");
    this.keepWarm.warm();
  }

  async *synthesize(req: SynthesisRequest): AsyncGenerator<Int16Array, void, undefined> {
    if (this.closed) throw new Error("openai engine is closed");
    req.signal?.throwIfAborted();
    const speed = req.rate === undefined || req.rate === 1 ? undefined : Math.min(MAX_SPEED, Math.max(MIN_SPEED, req.rate));
    const voice = req.voice || this.voice;
    const inputs = groupSentences(req.text, MAX_INPUT_CHARS);
    let audio = false;
    this.keepWarm.started();
    try {
      for (const input of inputs) {
        for await (const pcm of this.speak(input, voice, speed, req.signal)) {
          audio = true;
          yield pcm;
        }
      }
    } finally {
      this.keepWarm.finished();
    }
    if (inputs.length > 0 && !audio) throw new Error("openai: the response held no audio");
  }

  async close(): Promise<void> {
    this.closed = true;
    this.keepWarm.close();
    for (const controller of this.inFlight) controller.abort(new Error("openai engine closed"));
  }

  /** One request: its audio as it arrives. */
  private async *speak(input: string, voice: string, speed: number | undefined, cancel: AbortSignal | undefined): AsyncGenerator<Int16Array> {
    const mine = new AbortController();
    const signal = cancel ? AbortSignal.any([cancel, mine.signal]) : mine.signal;
    this.inFlight.add(mine);
    try {
      let response: Response;
      try {
        response = await this.client.audio.speech.create(
          {
            model: this.model,
            voice,
            input,
            response_format: "pcm",
            ...(speed !== undefined ? { speed } : {}),
            ...(this.instructions ? { instructions: this.instructions } : {}),
          },
          { signal },
        );
      } catch (error) {
        signal.throwIfAborted();
        throw this.failure(error);
      }
      const answer = fetchedAnswer(response);
      await assertAudio("openai", answer, this.apiKey);
      const decoder = new L16ChunkDecoder();
      const broke = (error: unknown) => new Error(`openai: audio stream broke off: ${hideSecret(causes(error), this.apiKey)}`);
      let first = true;
      for await (const bytes of bodyChunks(response, signal, broke)) {
        if (first && bytes.length > 0) {
          first = false;
          assertRawStart("openai", bytes, "pcm", answer.contentType);
        }
        const pcm = decoder.push(bytes);
        if (pcm.length > 0) yield pcm;
      }
      // A half sample left at the very end is dropped: there is nothing to complete it with.
    } finally {
      this.inFlight.delete(mine);
      mine.abort(); // nothing is pending by now; releases the combined signal's listeners
    }
  }

  /** A clear, key-free error for a failed request. */
  private failure(error: unknown): Error {
    let text: string;
    if (error instanceof APIConnectionTimeoutError) text = `no response from ${this.baseUrl} in time`;
    else if (error instanceof APIConnectionError) text = `cannot reach ${this.baseUrl}: ${causes(error.cause ?? error)}`;
    else if (error instanceof APIUserAbortError) text = "request aborted";
    else if (error instanceof APIError) text = `HTTP ${error.status ?? "?"}: ${error.message.replace(/^\d{3} /, "")}`;
    else text = causes(error);
    return providerError(error instanceof APIError ? error.status : undefined, `openai speech request failed: ${hideSecret(text, this.apiKey)}`);
  }
}

export interface OpenAIEngineConfig extends OpenAIEngineOptions {
  voice: string;
}

/**
 * TTS_OPENAI_* settings, read only when TTS_ENGINES lists openai: TTS_OPENAI_API_KEY (required),
 * TTS_OPENAI_BASE_URL, TTS_OPENAI_MODEL, TTS_OPENAI_VOICE, TTS_OPENAI_INSTRUCTIONS, TTS_OPENAI_TIMEOUT_MS,
 * TTS_OPENAI_KEEP_WARM_S.
 */
export function readOpenAIConfig(env: EnvReader): OpenAIEngineConfig {
  const apiKey = env.optional("TTS_OPENAI_API_KEY") ?? "";
  if (!apiKey) env.problem("TTS_ENGINES includes openai but TTS_OPENAI_API_KEY is not set");
  const model = env.string("TTS_OPENAI_MODEL", OPENAI_DEFAULT_MODEL);
  const instructions = env.optional("TTS_OPENAI_INSTRUCTIONS");
  if (instructions && /^tts-1/.test(model)) env.problem(`TTS_OPENAI_INSTRUCTIONS is set but model ${model} does not take instructions (gpt-4o-mini-tts does)`);
  return {
    apiKey,
    baseUrl: env.url("TTS_OPENAI_BASE_URL", OPENAI_DEFAULT_BASE_URL, ["https", "http"]).replace(/\/+$/, ""),
    model,
    voice: env.string("TTS_OPENAI_VOICE", OPENAI_DEFAULT_VOICE),
    instructions,
    timeoutMs: env.int("TTS_OPENAI_TIMEOUT_MS", 15_000, { min: 100, max: 120_000 }),
    keepWarmMs: env.int("TTS_OPENAI_KEEP_WARM_S", 300, { min: 0, max: 86_400 }) * 1000,
  };
}
