// A local stand-in for ElevenLabs' streaming text-to-speech HTTP API, speaking its wire format:
// POST /v1/text-to-speech/{voice_id}/stream?output_format=<fmt> (also the non-streaming /v1/text-to-speech/{voice_id})
// with an `xi-api-key` header and a JSON body {text, model_id, voice_settings}; answered with raw audio in chunks
// (ulaw_8000: G.711 μ-law bytes at 8 kHz; pcm_<rate>: 16-bit little-endian mono) or an ElevenLabs-shaped error
// ({"detail": {...}}, validation errors as FastAPI's {"detail": [{loc, msg, type}]}).

import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import {
  DeliveryTracker,
  FakeTimers,
  pcmToLittleEndian,
  pcmToMulaw,
  streamAudioReply,
  syntheticSpeech,
  type FakeSpeechSource,
  type FakeTtsDelivery,
  type FakeTtsReply,
} from "./tts-audio.js";

export const ELEVENLABS_MODELS = [
  "eleven_flash_v2_5",
  "eleven_flash_v2",
  "eleven_turbo_v2_5",
  "eleven_turbo_v2",
  "eleven_multilingual_v2",
  "eleven_v3",
  "eleven_monolingual_v1",
];

/** The output formats this fake produces (ElevenLabs has more, e.g. mp3_*, which it refuses). */
export const ELEVENLABS_FAKE_FORMATS: Readonly<Record<string, { encoding: "ulaw" | "pcm"; sampleRate: number }>> = {
  ulaw_8000: { encoding: "ulaw", sampleRate: 8000 },
  pcm_8000: { encoding: "pcm", sampleRate: 8000 },
  pcm_16000: { encoding: "pcm", sampleRate: 16000 },
  pcm_22050: { encoding: "pcm", sampleRate: 22050 },
  pcm_24000: { encoding: "pcm", sampleRate: 24000 },
  pcm_44100: { encoding: "pcm", sampleRate: 44100 },
};

/** Documented voice_settings ranges. */
const SETTING_RANGES: Record<string, [number, number]> = {
  stability: [0, 1],
  similarity_boost: [0, 1],
  style: [0, 1],
  speed: [0.7, 1.2],
};

export interface FakeElevenLabsRequest {
  method: string;
  /** Path without the query. */
  path: string;
  query: Record<string, string>;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  at: number;
}

/** One valid text-to-speech request, as the fake understood it. */
export interface FakeElevenLabsSpeechRequest {
  request: FakeElevenLabsRequest;
  voiceId: string;
  text: string;
  modelId: string;
  outputFormat: string;
  /** Whether it came to the /stream endpoint. */
  streaming: boolean;
  voiceSettings?: Record<string, unknown>;
  optimizeStreamingLatency?: number;
  /** The JSON body as sent. */
  body: Record<string, unknown>;
}

export interface FakeElevenLabsCall extends FakeElevenLabsSpeechRequest {
  delivery: FakeTtsDelivery;
}

export interface FakeElevenLabsOptions {
  /** Accepted `xi-api-key` (default "test-elevenlabs-key"); null accepts any request. */
  apiKey?: string | null;
  /** Known voice ids (default: any). */
  voices?: string[] | null;
  /** Known model ids (default: ElevenLabs' TTS models); null accepts any. */
  models?: string[] | null;
  /** The audio for a request's text (default: synthetic speech-like sound). */
  speech?: FakeSpeechSource;
  /** How to answer each valid request (default: stream all the audio). */
  reply?: (request: FakeElevenLabsSpeechRequest) => FakeTtsReply | Promise<FakeTtsReply>;
}

export interface FakeElevenLabs {
  /** API base URL without /v1, as ElevenLabs documents it (https://api.elevenlabs.io). */
  baseUrl: string;
  port: number;
  /** Every request, in arrival order (also unauthorized and invalid ones). */
  requests: FakeElevenLabsRequest[];
  /** Every valid text-to-speech request, with how its response went. */
  speeches: FakeElevenLabsCall[];
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const SPEECH_PATH = /^\/v1\/text-to-speech\/([^/]+)(\/stream)?$/;

export async function startFakeElevenLabs(options: FakeElevenLabsOptions = {}): Promise<FakeElevenLabs> {
  const apiKey = options.apiKey === undefined ? "test-elevenlabs-key" : options.apiKey;
  const models = options.models === undefined ? ELEVENLABS_MODELS : options.models;
  const speech = options.speech ?? syntheticSpeech;
  const requests: FakeElevenLabsRequest[] = [];
  const speeches: FakeElevenLabsCall[] = [];
  const timers = new FakeTimers();
  let requestIds = 0;

  const handle = async (req: IncomingMessage, res: ServerResponse, request: FakeElevenLabsRequest) => {
    res.setHeader("request-id", `fake-${++requestIds}`);
    if (apiKey !== null && req.headers["xi-api-key"] !== apiKey) {
      const missing = req.headers["xi-api-key"] === undefined;
      return sendDetail(res, 401, missing ? "needs_authorization" : "invalid_api_key", missing ? "Missing xi-api-key header." : "Invalid API key");
    }
    if (request.method === "GET" && request.path === "/v1/models") {
      // The real list has many more fields per model; clients (and the tts's keep-warm) read only what they need.
      const list = (models ?? ELEVENLABS_MODELS).map((id) => ({ model_id: id, name: id, can_do_text_to_speech: true }));
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(list));
      return;
    }
    const match = request.method === "POST" ? SPEECH_PATH.exec(request.path) : null;
    if (!match) return sendDetail(res, 404, "not_found", `Not Found: ${request.method} ${request.path}`);
    const parsed = parseSpeechRequest(request, decodeURIComponent(match[1]), Boolean(match[2]), models, options.voices ?? null);
    if ("status" in parsed) {
      if (parsed.validation) return sendValidation(res, parsed.validation);
      return sendDetail(res, parsed.status, parsed.code, parsed.message);
    }
    const tracker = new DeliveryTracker(res);
    speeches.push({ ...parsed, delivery: tracker.delivery });
    const reply = (await options.reply?.(parsed)) ?? {};
    if ("hang" in reply) return; // the response stays open until the client gives up or stop()
    if ("status" in reply) {
      if (reply.retryAfterSeconds !== undefined) res.setHeader("retry-after", String(reply.retryAfterSeconds));
      const code = reply.code ?? (reply.status === 429 ? "too_many_concurrent_requests" : reply.status === 401 ? "invalid_api_key" : reply.status >= 500 ? "internal_error" : "bad_request");
      return sendDetail(res, reply.status, code, reply.message ?? `fake error ${reply.status}`);
    }
    if ("raw" in reply) {
      res.writeHead(reply.raw.status, { "content-type": reply.raw.contentType }).end(reply.raw.body);
      return;
    }
    const format = ELEVENLABS_FAKE_FORMATS[parsed.outputFormat];
    const pcm = await speech(parsed.text, format.sampleRate);
    const ulaw = format.encoding === "ulaw";
    streamAudioReply(res, tracker, ulaw ? pcmToMulaw(pcm) : pcmToLittleEndian(pcm), {
      contentType: ulaw ? "audio/basic" : "audio/pcm",
      bytesPer100Ms: (format.sampleRate / 10) * (ulaw ? 1 : 2),
      reply,
      timers,
      headers: { "x-character-count": String(parsed.text.length) },
    });
  };

  const open = new Set<ServerResponse>();
  const server = http.createServer((req, res) => {
    open.add(res);
    res.on("close", () => open.delete(res));
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", () => res.destroy());
    req.on("end", () => {
      const url = new URL(req.url ?? "/", "http://fake");
      const request: FakeElevenLabsRequest = {
        method: req.method ?? "GET",
        path: url.pathname,
        query: Object.fromEntries(url.searchParams),
        headers: req.headers,
        body: Buffer.concat(chunks),
        at: Date.now(),
      };
      requests.push(request);
      handle(req, res, request).catch((error: unknown) => {
        if (!res.headersSent) sendDetail(res, 500, "internal_error", `fake handler failed: ${String(error)}`);
        else res.destroy();
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const stop = async () => {
    timers.clear();
    for (const res of open) res.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { baseUrl: `http://127.0.0.1:${port}`, port, requests, speeches, stop, [Symbol.asyncDispose]: stop };
}

type Invalid = { status: number; code: string; message: string; validation?: Array<{ loc: string[]; msg: string; type: string }> };

function parseSpeechRequest(
  request: FakeElevenLabsRequest,
  voiceId: string,
  streaming: boolean,
  models: string[] | null,
  voices: string[] | null,
): FakeElevenLabsSpeechRequest | Invalid {
  const invalid = (loc: string[], msg: string, type = "value_error"): Invalid => ({ status: 422, code: "validation_error", message: msg, validation: [{ loc, msg, type }] });
  if (voices && !voices.includes(voiceId)) return { status: 404, code: "voice_not_found", message: `A voice with voice_id ${voiceId} was not found.` };
  const outputFormat = request.query.output_format ?? "mp3_44100_128";
  if (!ELEVENLABS_FAKE_FORMATS[outputFormat]) {
    return { status: 400, code: "invalid_output_format", message: `This fake produces only ${Object.keys(ELEVENLABS_FAKE_FORMATS).join(", ")} (asked: ${outputFormat}).` };
  }
  let optimizeStreamingLatency: number | undefined;
  if (request.query.optimize_streaming_latency !== undefined) {
    optimizeStreamingLatency = Number(request.query.optimize_streaming_latency);
    if (!Number.isInteger(optimizeStreamingLatency) || optimizeStreamingLatency < 0 || optimizeStreamingLatency > 4) {
      return invalid(["query", "optimize_streaming_latency"], "Input should be an integer between 0 and 4");
    }
  }
  if (!(request.headers["content-type"] ?? "").startsWith("application/json")) return invalid(["body"], "Expected a JSON body", "model_attributes_type");
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(request.body.toString("utf8")) as Record<string, unknown>;
  } catch {
    return invalid(["body"], "JSON decode error", "json_invalid");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) return invalid(["body"], "Input should be a valid dictionary", "model_attributes_type");
  const { text, model_id: modelId = "eleven_multilingual_v2", voice_settings: voiceSettings } = body;
  if (typeof text !== "string") return invalid(["body", "text"], "Field required", "missing");
  if (text.trim() === "") return { status: 400, code: "empty_text", message: "Text must not be empty." };
  if (typeof modelId !== "string" || (models && !models.includes(modelId))) {
    return { status: 400, code: "model_not_found", message: `A model with model ID ${String(modelId)} does not exist.` };
  }
  if (voiceSettings !== undefined && voiceSettings !== null) {
    if (typeof voiceSettings !== "object" || Array.isArray(voiceSettings)) return invalid(["body", "voice_settings"], "Input should be a valid dictionary", "model_attributes_type");
    for (const [name, [min, max]] of Object.entries(SETTING_RANGES)) {
      const value = (voiceSettings as Record<string, unknown>)[name];
      if (value !== undefined && (typeof value !== "number" || value < min || value > max)) {
        return invalid(["body", "voice_settings", name], `Input should be a number between ${min} and ${max}`);
      }
    }
  }
  return {
    request,
    voiceId,
    text,
    modelId,
    outputFormat,
    streaming,
    voiceSettings: (voiceSettings ?? undefined) as Record<string, unknown> | undefined,
    optimizeStreamingLatency,
    body,
  };
}

function sendDetail(res: ServerResponse, status: number, code: string, message: string): void {
  // Both shapes seen from the API: the older {status, message} and the newer {type, code, message, request_id}.
  const requestId = String(res.getHeader("request-id") ?? "");
  const type = status === 401 ? "authentication_error" : status === 429 ? "rate_limit_error" : status >= 500 ? "internal_server_error" : "invalid_request";
  sendJson(res, status, { detail: { type, code, status: code, message, request_id: requestId } });
}

function sendValidation(res: ServerResponse, errors: Array<{ loc: string[]; msg: string; type: string }>): void {
  sendJson(res, 422, { detail: errors });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) }).end(text);
}
