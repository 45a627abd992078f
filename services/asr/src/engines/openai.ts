// OpenAI (or any compatible server) speech-to-text through the official SDK. The API takes whole files, so
// each utterance is held in memory and uploaded as an 8 kHz WAV when the service's VAD ends it; the answer is
// streamed (SSE) so partials arrive while the model is still writing.

import type { Logger } from "@voicebot/bus";
import { wavFromPcm } from "@voicebot/audio";
import { ApiKeepWarm, apiDispatcher, type EnvReader } from "@voicebot/service-kit";
import OpenAI, { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError, toFile } from "openai";
import type { TranscriptionCreateParams } from "openai/resources/audio/transcriptions";
import type { AsrEngine, RecognitionHints, RecognitionResult, UtteranceRecognizer } from "../engine.js";
import { fetchWithBufferedMultipart } from "./buffered-multipart.js";
import { normalizeSpokenDigits } from "./spoken-digits.js";

/** gpt-4o-transcribe and gpt-4o-mini-transcribe, dated snapshots included. */
const LOGPROB_MODELS = /^gpt-4o(?:-mini)?-transcribe(?:-\d{4}-\d{2}-\d{2})?$/;

export interface OpenAIAsrConfig {
  /** ASR_OPENAI_BASE_URL: API base including /v1 (default https://api.openai.com/v1). */
  baseUrl: string;
  /** ASR_OPENAI_API_KEY (required when the engine is used; checked by warmUp). */
  apiKey: string;
  /** ASR_OPENAI_MODEL (default gpt-4o-mini-transcribe). */
  model: string;
  /** ASR_OPENAI_TIMEOUT_MS: longest wait from finish() to the final transcript, retries included. */
  timeoutMs: number;
  /** ASR_OPENAI_STREAM: stream the answer (SSE); off for servers or models that only answer JSON (whisper-1). */
  stream: boolean;
  /** ASR_OPENAI_LANGUAGE: ISO-639-1 language of the callers, if known (faster and more accurate). */
  language?: string;
  /** ASR_OPENAI_KEEP_WARM_S (default 300): a connection to the API kept open this long after the last utterance. */
  keepWarmMs: number;
}

export function readOpenAIAsrConfig(env: EnvReader): OpenAIAsrConfig {
  return {
    baseUrl: env.url("ASR_OPENAI_BASE_URL", "https://api.openai.com/v1", ["http", "https"]),
    apiKey: env.string("ASR_OPENAI_API_KEY", ""),
    model: env.string("ASR_OPENAI_MODEL", "gpt-4o-mini-transcribe"),
    timeoutMs: env.int("ASR_OPENAI_TIMEOUT_MS", 5000, { min: 100, max: 120_000 }),
    stream: env.bool("ASR_OPENAI_STREAM", true),
    language: env.optional("ASR_OPENAI_LANGUAGE"),
    keepWarmMs: env.int("ASR_OPENAI_KEEP_WARM_S", 300, { min: 0, max: 86_400 }) * 1000,
  };
}

const SAMPLE_RATE = 8000;
// Utterances are capped by the service far below this; the bound only protects memory.
const MAX_SAMPLES = SAMPLE_RATE * 120;
// The prompt is context for the model, not a grammar; a long list only costs latency.
const MAX_PROMPT_CHARS = 800;
export const DIGITS_PROMPT = "The caller says a number, digits only.";

/** The prompt for the hints: the expected phrases, and for digits mode an instruction first. */
export function promptFor(hints: RecognitionHints): string | undefined {
  const phrases = [...new Set(hints.phrases.map((p) => p.trim()).filter(Boolean))].join(", ");
  const prompt = hints.mode === "digits" ? (phrases ? `${DIGITS_PROMPT} ${phrases}` : DIGITS_PROMPT) : phrases;
  return prompt ? prompt.slice(0, MAX_PROMPT_CHARS) : undefined;
}

export class OpenAIEngine implements AsrEngine {
  readonly label = "openai";
  readonly sampleRate = SAMPLE_RATE;
  /** A transcription is one upload after the utterance: worth starting during the caller's silence. */
  readonly earlyFinals = true;
  private readonly client: OpenAI;
  private readonly active = new Set<OpenAIRecognizer>();

  /** A spoken turn after a pause finds a connection to the API open (the upload waits for no handshake). */
  private readonly keepWarm: ApiKeepWarm;

  constructor(
    private readonly config: OpenAIAsrConfig,
    private readonly log?: Logger,
    onKeepWarmFailure?: (error: string) => void,
  ) {
    this.keepWarm = new ApiKeepWarm({
      baseUrl: config.baseUrl,
      apiKey: config.apiKey,
      forMs: config.apiKey ? config.keepWarmMs : 0,
      onFailure: (error) => {
        onKeepWarmFailure?.(error);
        log?.warn("openai: keep-warm request failed; the next utterance opens its own connection", { error });
      },
    });
    this.client = new OpenAI({
      apiKey: config.apiKey || "unset", // an empty key is reported by warmUp() and start()
      baseURL: config.baseUrl,
      // One quick retry of a 5xx/429/connection failure; the engine's own deadline bounds the total.
      maxRetries: 1,
      timeout: config.timeoutMs,
      // The SDK would print unparsable stream chunks (caller speech) to the console; errors reach us anyway.
      logLevel: "off",
      // The utterance goes up as one buffer rather than a streamed FormData: ~1 ms less per final.
      fetch: fetchWithBufferedMultipart,
      // Idle connections kept 25 s instead of fetch's 4 s: a turn after a pause needs no new handshake.
      fetchOptions: { dispatcher: apiDispatcher() },
    });
  }

  /** Checks the configuration (a transcription costs money), and opens a connection with a free GET /models. */
  async warmUp(): Promise<void> {
    this.checkConfig();
    this.keepWarm.warm();
  }

  start(hints: RecognitionHints): UtteranceRecognizer {
    this.checkConfig();
    this.keepWarm.started();
    const recognizer = new OpenAIRecognizer(this.client, this.config, hints, this.log, () => {
      this.active.delete(recognizer);
      this.keepWarm.finished();
    });
    this.active.add(recognizer);
    return recognizer;
  }

  async close(): Promise<void> {
    this.keepWarm.close();
    for (const recognizer of [...this.active]) recognizer.abort();
  }

  private checkConfig(): void {
    if (!this.config.apiKey) throw new Error("openai: ASR_OPENAI_API_KEY is not set");
  }
}

class OpenAIRecognizer implements UtteranceRecognizer {
  onPartial?: (text: string) => void;
  private chunks: Int16Array[] = [];
  private samples = 0;
  private state: "collecting" | "finishing" | "done" = "collecting";
  private readonly controller = new AbortController();
  private abortReason?: Error;

  constructor(
    private readonly client: OpenAI,
    private readonly config: OpenAIAsrConfig,
    private readonly hints: RecognitionHints,
    private readonly log: Logger | undefined,
    private readonly release: () => void,
  ) {}

  push(pcm: Int16Array): void {
    if (this.state !== "collecting" || pcm.length === 0) return;
    const room = MAX_SAMPLES - this.samples;
    if (room <= 0) return;
    const piece = pcm.length > room ? pcm.slice(0, room) : pcm.slice();
    this.chunks.push(piece);
    this.samples += piece.length;
  }

  async finish(): Promise<RecognitionResult> {
    if (this.state !== "collecting") throw new Error("openai: finish() called twice or after abort()");
    this.state = "finishing";
    const timer = setTimeout(() => this.stop(new Error(`openai: no transcript within ${this.config.timeoutMs} ms`)), this.config.timeoutMs);
    try {
      if (this.samples === 0) return { text: "", confidence: 0, alternatives: [] };
      const result = await this.transcribe();
      if (this.abortReason) throw this.abortReason;
      return result;
    } catch (error) {
      throw this.abortReason ?? describe(error);
    } finally {
      clearTimeout(timer);
      this.state = "done";
      this.chunks = [];
      this.release();
    }
  }

  abort(): void {
    if (this.state === "done") return;
    if (this.state === "collecting") {
      this.state = "done";
      this.chunks = [];
      this.release();
      return;
    }
    this.stop(new Error("openai: aborted"));
  }

  private stop(reason: Error): void {
    this.abortReason ??= reason;
    this.controller.abort(reason);
  }

  private async transcribe(): Promise<RecognitionResult> {
    const pcm = new Int16Array(this.samples);
    let at = 0;
    for (const chunk of this.chunks) {
      pcm.set(chunk, at);
      at += chunk.length;
    }
    this.chunks = [];
    const file = await toFile(wavFromPcm(pcm, SAMPLE_RATE), "utterance.wav", { type: "audio/wav" });
    const prompt = promptFor(this.hints);
    const params = {
      file,
      model: this.config.model,
      ...(prompt ? { prompt } : {}),
      ...(this.config.language ? { language: this.config.language } : {}),
      // Token log probabilities give a confidence; only the plain gpt-4o transcription models offer them (the
      // diarizing one refuses the request).
      ...(LOGPROB_MODELS.test(this.config.model) ? { include: ["logprobs" as const] } : {}),
    } satisfies Omit<TranscriptionCreateParams, "stream">;
    const options = { signal: this.controller.signal };

    // OpenAI's whisper-1 cannot stream: it would answer JSON that no stream event comes out of.
    if (!this.config.stream || this.config.model === "whisper-1") {
      const response = await this.client.audio.transcriptions.create({ ...params, stream: false, response_format: "json" }, options);
      return this.result(response.text, response.logprobs?.map((l) => l.logprob));
    }

    const stream = await this.client.audio.transcriptions.create({ ...params, stream: true }, options);
    let text = "";
    for await (const event of stream) {
      if (event.type === "transcript.text.delta") {
        text += event.delta;
        this.partial(text);
      } else if (event.type === "transcript.text.done") {
        return this.result(event.text, event.logprobs?.map((l) => l.logprob));
      }
    }
    throw new Error("openai: the transcription stream ended without transcript.text.done");
  }

  private partial(raw: string): void {
    const text = this.normalize(raw);
    if (!text || !this.onPartial || this.abortReason) return;
    try {
      this.onPartial(text);
    } catch (error) {
      this.log?.warn("openai: onPartial threw", { error: String(error) });
    }
  }

  private result(raw: string, logprobs: Array<number | undefined> | undefined): RecognitionResult {
    const text = this.normalize(raw);
    const known = (logprobs ?? []).filter((l): l is number => typeof l === "number" && Number.isFinite(l));
    // Geometric mean of the token probabilities; without them a text carries no doubt signal.
    const confidence = known.length > 0 ? Math.exp(known.reduce((a, b) => a + b, 0) / known.length) : text ? 1 : 0;
    return { text, confidence, alternatives: [] };
  }

  private normalize(raw: string): string {
    const text = raw.trim();
    return this.hints.mode === "digits" ? normalizeSpokenDigits(text) : text;
  }
}

/** A clear error from whatever the SDK threw (never containing the API key: the SDK does not echo it). */
function describe(error: unknown): Error {
  if (error instanceof APIUserAbortError) return new Error("openai: request aborted");
  if (error instanceof APIConnectionTimeoutError) return new Error("openai: request timed out");
  if (error instanceof APIConnectionError) return new Error(`openai: could not reach the API: ${error.cause instanceof Error ? error.cause.message : error.message}`);
  if (error instanceof APIError) {
    const what = error.status === 401 ? "authentication failed" : error.status ? `HTTP ${error.status}` : "API error";
    // The SDK prefixes the status to the server's message; say it once.
    return new Error(`openai: ${what}: ${error.message.replace(/^\d{3}\s+/, "")}`);
  }
  if (error instanceof SyntaxError) return new Error(`openai: malformed stream event: ${error.message}`);
  if (error instanceof Error) return error.message.startsWith("openai:") ? error : new Error(`openai: ${error.message}`);
  return new Error(`openai: ${String(error)}`);
}
