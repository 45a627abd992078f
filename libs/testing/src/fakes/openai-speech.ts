// POST /v1/audio/speech for the fake OpenAI server (./openai.ts): checks a request the way the API does and
// answers like it: with `response_format: "pcm"`, raw 24 kHz 16-bit mono little-endian samples, streamed in chunks
// (chunked transfer encoding) as they are "made". The test decides per request how it goes (./tts-audio.ts).

import { sendOpenAIError, startFakeOpenAI, type FakeOpenAI, type FakeOpenAIOptions, type FakeOpenAIRequest } from "./openai.js";
import {
  DeliveryTracker,
  FakeTimers,
  pcmToLittleEndian,
  streamAudioReply,
  syntheticSpeech,
  type FakeSpeechSource,
  type FakeTtsDelivery,
  type FakeTtsReply,
} from "./tts-audio.js";

export const OPENAI_SPEECH_MODELS = ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15"];
export const OPENAI_SPEECH_VOICES = ["alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"];
const RESPONSE_FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"];
/** The only rate of "pcm". */
export const OPENAI_PCM_RATE = 24000;
const MAX_INPUT_CHARS = 4096;

/** One request to the speech endpoint, as the fake understood it. */
export interface FakeSpeechRequest {
  request: FakeOpenAIRequest;
  model: string;
  /** A built-in voice name, or the id of a custom voice object. */
  voice: string;
  input: string;
  responseFormat: string;
  speed?: number;
  instructions?: string;
  /** The JSON body as sent. */
  body: Record<string, unknown>;
}

export interface FakeSpeechCall extends FakeSpeechRequest {
  /** How the response went (audio sent, outcome, whether the client closed it early). */
  delivery: FakeTtsDelivery;
}

export interface FakeSpeechOptions {
  /** Accepted models (default: OpenAI's TTS models); null accepts any, as a compatible server might. */
  models?: string[] | null;
  /** Accepted voice names (default: OpenAI's built-in voices); null accepts any. */
  voices?: string[] | null;
  /** The audio for a request's input (default: synthetic speech-like sound). */
  speech?: FakeSpeechSource;
  /** How to answer each valid request (default: stream all the audio). */
  reply?: (request: FakeSpeechRequest) => FakeTtsReply | Promise<FakeTtsReply>;
}

export interface FakeSpeechRoute {
  /** Every valid speech request, in arrival order. */
  speeches: FakeSpeechCall[];
  /** Cancels the route's pending delays (the server's stop() closes its connections). */
  clearTimers(): void;
}

/** Adds POST /v1/audio/speech to a fake OpenAI server. */
export function addFakeSpeech(fake: FakeOpenAI, options: FakeSpeechOptions = {}): FakeSpeechRoute {
  const models = options.models === undefined ? OPENAI_SPEECH_MODELS : options.models;
  const voices = options.voices === undefined ? OPENAI_SPEECH_VOICES : options.voices;
  const speech = options.speech ?? syntheticSpeech;
  const timers = new FakeTimers();
  const speeches: FakeSpeechCall[] = [];

  fake.route("POST", "/v1/audio/speech", async ({ res, request }) => {
    const parsed = parseSpeechRequest(request, models, voices);
    if ("error" in parsed) return sendOpenAIError(res, 400, parsed.error, "invalid_request_error", parsed.code ?? null);
    const tracker = new DeliveryTracker(res);
    speeches.push({ ...parsed, delivery: tracker.delivery });
    res.setHeader("x-request-id", `req_fake_${speeches.length}`);
    const reply = (await options.reply?.(parsed)) ?? {};
    if ("hang" in reply) return; // the response stays open until the client gives up or stop()
    if ("status" in reply) {
      const type = reply.status === 429 ? "rate_limit_exceeded" : reply.status >= 500 ? "server_error" : "invalid_request_error";
      if (reply.retryAfterSeconds !== undefined) res.setHeader("retry-after", String(reply.retryAfterSeconds));
      return sendOpenAIError(res, reply.status, reply.message ?? `fake error ${reply.status}`, type, reply.code ?? null);
    }
    if ("raw" in reply) {
      res.writeHead(reply.raw.status, { "content-type": reply.raw.contentType }).end(reply.raw.body);
      return;
    }
    const pcm = await speech(parsed.input, OPENAI_PCM_RATE);
    streamAudioReply(res, tracker, pcmToLittleEndian(pcm), {
      contentType: "audio/pcm",
      bytesPer100Ms: (OPENAI_PCM_RATE / 10) * 2,
      reply,
      timers,
    });
  });
  return { speeches, clearTimers: () => timers.clear() };
}

export interface FakeOpenAISpeech extends FakeOpenAI {
  speeches: FakeSpeechCall[];
}

/** A fake OpenAI server with the speech endpoint (and the fake's other routes). */
export async function startFakeOpenAISpeech(options: FakeOpenAIOptions & FakeSpeechOptions = {}): Promise<FakeOpenAISpeech> {
  const fake = await startFakeOpenAI(options);
  const route = addFakeSpeech(fake, options);
  const stopServer = fake.stop;
  const stop = async () => {
    route.clearTimers();
    await stopServer();
  };
  return Object.assign(fake, { speeches: route.speeches, stop, [Symbol.asyncDispose]: stop });
}

/** The request's fields, or the error the API would answer with. */
function parseSpeechRequest(
  request: FakeOpenAIRequest,
  models: string[] | null,
  voices: string[] | null,
): FakeSpeechRequest | { error: string; code?: string } {
  const contentType = request.headers["content-type"] ?? "";
  if (!contentType.startsWith("application/json")) return { error: "Expected a JSON request body (content-type: application/json)." };
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(request.body.toString("utf8")) as Record<string, unknown>;
  } catch {
    return { error: "We could not parse the JSON body of your request." };
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) return { error: "The request body must be a JSON object." };
  const { model, voice, input, instructions, speed, stream_format: streamFormat } = body;
  const responseFormat = body.response_format ?? "mp3";
  if (typeof model !== "string" || model === "") return { error: "Missing required parameter: 'model'.", code: "missing_required_parameter" };
  if (models && !models.includes(model)) return { error: `Invalid value for 'model': '${model}'.`, code: "invalid_value" };
  if (typeof input !== "string" || input === "") return { error: "Missing required parameter: 'input'.", code: "missing_required_parameter" };
  if (input.length > MAX_INPUT_CHARS) return { error: `Invalid 'input': string too long. Expected a string with maximum length ${MAX_INPUT_CHARS}.`, code: "string_above_max_length" };
  const voiceName = typeof voice === "string" ? voice : typeof voice === "object" && voice !== null && typeof (voice as { id?: unknown }).id === "string" ? (voice as { id: string }).id : undefined;
  if (!voiceName) return { error: "Missing required parameter: 'voice'.", code: "missing_required_parameter" };
  if (typeof voice === "string" && voices && !voices.includes(voice)) return { error: `Invalid value for 'voice': '${voice}'.`, code: "invalid_value" };
  if (typeof responseFormat !== "string" || !RESPONSE_FORMATS.includes(responseFormat)) return { error: `Invalid value for 'response_format': '${String(responseFormat)}'.`, code: "invalid_value" };
  if (responseFormat !== "pcm") return { error: `This fake only produces response_format 'pcm' (asked: '${responseFormat}').` };
  if (speed !== undefined && (typeof speed !== "number" || speed < 0.25 || speed > 4)) return { error: "Invalid 'speed': expected a number between 0.25 and 4.0.", code: "invalid_value" };
  if (instructions !== undefined && typeof instructions !== "string") return { error: "Invalid type for 'instructions': expected a string." };
  if (instructions !== undefined && model.startsWith("tts-1")) return { error: `'instructions' is not supported with model '${model}'.`, code: "unsupported_parameter" };
  if (streamFormat !== undefined && streamFormat !== "audio") return { error: `This fake only streams stream_format 'audio' (asked: '${String(streamFormat)}').` };
  return { request, model, voice: voiceName, input, responseFormat, speed: speed as number | undefined, instructions: instructions as string | undefined, body };
}
