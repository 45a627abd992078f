// A local stand-in for the OpenAI HTTP API (and compatible servers): one HTTP server with a route table, so
// more endpoints (chat completions, speech) can be added next to transcriptions. It speaks the wire format
// the real `openai` SDK expects: Bearer auth, multipart uploads, SSE streams and OpenAI-shaped error bodies.

import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface FakeOpenAIRequest {
  method: string;
  /** Path without the query, e.g. /v1/audio/transcriptions. */
  path: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  at: number;
}

export interface FakeRouteContext {
  req: IncomingMessage;
  res: ServerResponse;
  request: FakeOpenAIRequest;
}

export type FakeRouteHandler = (ctx: FakeRouteContext) => Promise<void> | void;

export interface FakeWavInfo {
  format: number;
  channels: number;
  sampleRate: number;
  bitsPerSample: number;
  dataBytes: number;
  durationMs: number;
}

export interface FakeTranscriptionRequest {
  request: FakeOpenAIRequest;
  model: string;
  stream: boolean;
  prompt?: string;
  language?: string;
  responseFormat?: string;
  include: string[];
  /** Every form field but the file, as sent. */
  fields: Record<string, string[]>;
  file: { name: string; type: string; bytes: Uint8Array; wav: FakeWavInfo };
}

/** How the fake answers one transcription request. */
export type FakeTranscriptionReply =
  | {
      text: string;
      /** Streamed pieces (default: the text split after each word); they should add up to `text`. */
      deltas?: string[];
      /** Per-token log probabilities, returned when the request asked for `include[]=logprobs`. */
      logprobs?: number[];
      /** Wait before the response starts. */
      delayMs?: number;
      /** Wait between streamed events. */
      eventIntervalMs?: number;
      /** Stop the SSE stream before `transcript.text.done`. */
      omitDone?: boolean;
    }
  | { status: number; message?: string; type?: string; code?: string }
  /** A stream whose second event is cut-off JSON. */
  | { malformed: true }
  /** Never answer (the client must time out). */
  | { stall: true };

export interface FakeOpenAIOptions {
  /** Accepted bearer token (default "test-openai-key"); null accepts any request. */
  apiKey?: string | null;
  transcribe?: (request: FakeTranscriptionRequest) => FakeTranscriptionReply | Promise<FakeTranscriptionReply>;
}

export interface FakeOpenAI {
  /** Base URL including /v1, as the SDK's `baseURL` wants it. */
  baseUrl: string;
  port: number;
  /** Every request, in arrival order (also unauthorized and unknown ones). */
  requests: FakeOpenAIRequest[];
  transcriptions: FakeTranscriptionRequest[];
  /** Adds or replaces a route (`path` without the query). */
  route(method: string, path: string, handler: FakeRouteHandler): void;
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers }).end(text);
}

/** An error in the API's shape: `{"error":{"message","type","param","code"}}`. */
export function sendOpenAIError(res: ServerResponse, status: number, message: string, type = "invalid_request_error", code: string | null = null): void {
  sendJson(res, status, { error: { message, type, param: null, code } });
}

export function startSse(res: ServerResponse): void {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
}

export function writeSse(res: ServerResponse, data: unknown): void {
  res.write(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`);
}

export async function startFakeOpenAI(options: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const apiKey = options.apiKey === undefined ? "test-openai-key" : options.apiKey;
  const requests: FakeOpenAIRequest[] = [];
  const transcriptions: FakeTranscriptionRequest[] = [];
  const routes = new Map<string, FakeRouteHandler>();
  const open = new Set<ServerResponse>();
  const timers = new Set<NodeJS.Timeout>();
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        timers.delete(timer);
        resolve();
      }, ms);
      timers.add(timer);
    });

  routes.set("POST /v1/audio/transcriptions", async ({ res, request }) => {
    let transcription: FakeTranscriptionRequest;
    try {
      transcription = await parseTranscriptionRequest(request);
    } catch (error) {
      return sendOpenAIError(res, 400, (error as Error).message);
    }
    transcriptions.push(transcription);
    const reply: FakeTranscriptionReply = (await options.transcribe?.(transcription)) ?? { text: "" };
    if ("stall" in reply) return; // the response stays open until the client gives up or stop()
    if ("status" in reply) {
      return sendOpenAIError(res, reply.status, reply.message ?? `fake error ${reply.status}`, reply.type ?? (reply.status >= 500 ? "server_error" : "invalid_request_error"), reply.code ?? null);
    }
    if ("malformed" in reply) {
      startSse(res);
      writeSse(res, { type: "transcript.text.delta", delta: "hello" });
      res.write(`data: {"type":"transcript.text.delta","delta":"wor\n\n`);
      res.end();
      return;
    }
    if (reply.delayMs) await sleep(reply.delayMs);
    if (res.destroyed) return;
    const logprobs = transcription.include.includes("logprobs") && reply.logprobs
      ? reply.logprobs.map((logprob, i) => ({ token: `t${i}`, logprob, bytes: [] }))
      : undefined;
    if (!transcription.stream) {
      if (transcription.responseFormat === "text") {
        res.writeHead(200, { "content-type": "text/plain; charset=utf-8" }).end(reply.text);
        return;
      }
      return sendJson(res, 200, { text: reply.text, ...(logprobs ? { logprobs } : {}), usage: { type: "duration", seconds: Math.ceil(transcription.file.wav.durationMs / 1000) } });
    }
    startSse(res);
    const deltas = reply.deltas ?? (reply.text.match(/\S+\s*/g) ?? []);
    for (const delta of deltas) {
      if (res.destroyed) return;
      writeSse(res, { type: "transcript.text.delta", delta });
      if (reply.eventIntervalMs) await sleep(reply.eventIntervalMs);
    }
    if (res.destroyed) return;
    if (!reply.omitDone) {
      writeSse(res, {
        type: "transcript.text.done",
        text: reply.text,
        ...(logprobs ? { logprobs } : {}),
        usage: { type: "tokens", input_tokens: 10, output_tokens: deltas.length, total_tokens: 10 + deltas.length },
      });
    }
    res.end();
  });

  // Free in the real API; the services' keep-warm requests (GET /models) hold a connection open with it.
  routes.set("GET /v1/models", ({ res }) => sendJson(res, 200, { object: "list", data: [{ id: "gpt-4o-mini", object: "model", created: 0, owned_by: "fake" }] }));

  const server = http.createServer((req, res) => {
    open.add(res);
    res.on("close", () => open.delete(res));
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", () => res.destroy());
    req.on("end", () => {
      const url = new URL(req.url ?? "/", "http://fake");
      const request: FakeOpenAIRequest = { method: req.method ?? "GET", path: url.pathname, headers: req.headers, body: Buffer.concat(chunks), at: Date.now() };
      requests.push(request);
      if (apiKey !== null && req.headers.authorization !== `Bearer ${apiKey}`) {
        return sendOpenAIError(res, 401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key");
      }
      const handler = routes.get(`${request.method} ${request.path}`);
      if (!handler) return sendOpenAIError(res, 404, `Unknown request URL: ${request.method} ${request.path}.`, "invalid_request_error", "unknown_url");
      Promise.resolve()
        .then(() => handler({ req, res, request }))
        .catch((error: unknown) => {
          if (!res.headersSent) sendOpenAIError(res, 500, `fake handler failed: ${String(error)}`, "server_error");
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
    for (const timer of timers) clearTimeout(timer);
    for (const res of open) res.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    port,
    requests,
    transcriptions,
    route: (method, path, handler) => void routes.set(`${method.toUpperCase()} ${path}`, handler),
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** Parses the multipart body the way the API does, rejecting what it would reject. */
async function parseTranscriptionRequest(request: FakeOpenAIRequest): Promise<FakeTranscriptionRequest> {
  const contentType = request.headers["content-type"] ?? "";
  if (!contentType.startsWith("multipart/form-data")) throw new Error("Expected a multipart/form-data request body.");
  let form: FormData;
  try {
    form = await new Response(request.body, { headers: { "content-type": contentType } }).formData();
  } catch (error) {
    throw new Error(`Could not parse multipart form: ${(error as Error).message}`);
  }
  const file = form.get("file");
  if (!file || typeof file === "string") throw new Error("Missing required parameter: 'file'.");
  const model = form.get("model");
  if (typeof model !== "string" || model === "") throw new Error("Missing required parameter: 'model'.");
  const bytes = new Uint8Array(await file.arrayBuffer());
  const wav = parseWavHeader(bytes);
  const fields: Record<string, string[]> = {};
  for (const [name, value] of form.entries()) {
    if (typeof value === "string") (fields[name] ??= []).push(value);
  }
  const single = (name: string) => fields[name]?.[0];
  const stream = single("stream");
  if (stream !== undefined && stream !== "true" && stream !== "false") throw new Error(`Invalid value for 'stream': ${stream}.`);
  return {
    request,
    model,
    stream: stream === "true",
    prompt: single("prompt"),
    language: single("language"),
    responseFormat: single("response_format"),
    include: fields["include[]"] ?? [],
    fields,
    file: { name: (file as File).name, type: file.type, bytes, wav },
  };
}

/** Enough RIFF/WAVE parsing to tell a real WAV from anything else and report its format. */
function parseWavHeader(bytes: Uint8Array): FakeWavInfo {
  const fourcc = (at: number) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (bytes.length < 12 || fourcc(0) !== "RIFF" || fourcc(8) !== "WAVE") throw new Error("Invalid file format. The audio file is not a WAV (RIFF/WAVE) file.");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let fmt: Omit<FakeWavInfo, "dataBytes" | "durationMs"> | undefined;
  for (let offset = 12; offset + 8 <= bytes.length; ) {
    const id = fourcc(offset);
    const size = view.getUint32(offset + 4, true);
    if (id === "fmt " && offset + 24 <= bytes.length) {
      fmt = {
        format: view.getUint16(offset + 8, true),
        channels: view.getUint16(offset + 10, true),
        sampleRate: view.getUint32(offset + 12, true),
        bitsPerSample: view.getUint16(offset + 22, true),
      };
    } else if (id === "data") {
      if (!fmt) throw new Error("Invalid file format. WAV data before fmt.");
      const dataBytes = Math.min(size, bytes.length - offset - 8);
      const bytesPerSecond = fmt.sampleRate * fmt.channels * (fmt.bitsPerSample / 8);
      return { ...fmt, dataBytes, durationMs: bytesPerSecond > 0 ? (dataBytes / bytesPerSecond) * 1000 : 0 };
    }
    offset += 8 + size + (size & 1);
  }
  throw new Error("Invalid file format. WAV without a data chunk.");
}
