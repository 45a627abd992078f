import { AsyncLocalStorage } from "node:async_hooks";
import { errorText, type Logger } from "@voicebot/bus";
import { apiDispatcher, StallAwareTimer, type ApiKeepWarm } from "@voicebot/service-kit";
import OpenAI, { APIConnectionError, APIError, APIUserAbortError } from "openai";
import type { DialogMetrics } from "../metrics.js";
import type { CircuitBreaker } from "./breaker.js";

export type ChatMessage = OpenAI.Chat.Completions.ChatCompletionMessageParam;
export type ChatTool = OpenAI.Chat.Completions.ChatCompletionFunctionTool;
type Chunk = OpenAI.Chat.Completions.ChatCompletionChunk;

/** Why an LLM request gave no usable answer (also the `reason` label of the fallback metric). */
export type LlmFailure =
  | "first_token_timeout"
  | "timeout"
  | "stalled"
  /** The stream ended without a finish reason (or usage): cut mid-answer, e.g. by a proxy's timeout. */
  | "truncated"
  | "http_error"
  | "connection"
  | "malformed"
  | "empty"
  | "circuit_open"
  | "cancelled"
  /** The conversation no longer fits the model's context window (a 400 the history causes, not the endpoint). */
  | "context_length";

export class LlmError extends Error {
  constructor(
    readonly reason: LlmFailure,
    message: string,
    /** The HTTP status of an `http_error` answer. */
    readonly status?: number,
  ) {
    super(message);
  }
}

/**
 * OpenAI's reasoning models (o1, o3, o4-mini, gpt-5, ...), wherever they are served (OpenAI, Azure, a gateway): they
 * refuse any temperature but the default and max_tokens (400 on every turn), and count their hidden reasoning in
 * max_completion_tokens, so a voice answer's small cap would go to reasoning and leave the answer empty.
 */
const REASONING_MODEL = /(^|\/)(o\d|gpt-5)/i;
/** Room for a reasoning model's hidden reasoning on top of the answer's own cap. */
export const REASONING_TOKENS = 2_048;

/** Temperature and the answer's token cap, in the parameters the model and its server take. */
export function generationLimits(settings: Pick<LlmSettings, "baseUrl" | "model" | "temperature" | "maxTokens">): {
  temperature?: number;
  max_tokens?: number;
  max_completion_tokens?: number;
} {
  const { baseUrl, model, temperature, maxTokens } = settings;
  if (REASONING_MODEL.test(model)) return maxTokens === undefined ? {} : { max_completion_tokens: maxTokens + REASONING_TOKENS };
  // OpenAI itself wants max_completion_tokens; compatible servers (vLLM, Ollama, ...) know max_tokens.
  const openAi = !baseUrl || /^https:\/\/api\.openai\.com(\/|$)/i.test(baseUrl);
  return {
    ...(temperature !== undefined ? { temperature } : {}),
    ...(maxTokens !== undefined ? (openAi ? { max_completion_tokens: maxTokens } : { max_tokens: maxTokens }) : {}),
  };
}

/** When the chat request being sent began (its first-token deadline runs from there), for the fetch wrapper. */
const requestStarted = new AsyncLocalStorage<number>();

/**
 * Answers that say the request itself was bad (invalid messages, unknown model, too large): the endpoint is
 * healthy, so they do not count towards opening the circuit.
 */
const REQUEST_ERROR_STATUSES = new Set([400, 404, 413, 422]);

export interface LlmSettings {
  /** Empty = the SDK's default (api.openai.com). */
  baseUrl: string;
  apiKey: string;
  model: string;
  temperature?: number;
  maxTokens?: number;
  /** No content or tool call within this time: give up (the caller must not wait in silence). */
  firstTokenTimeoutMs: number;
  /** After the first token, no content or tool call for this long: give up on the rest of the answer. */
  stallTimeoutMs: number;
  /** The whole streamed answer must be complete within this time. */
  timeoutMs: number;
  /** Retries of failed requests (5xx, 429, connection errors) by the SDK, within the first-token deadline. */
  maxRetries: number;
}

export interface LlmToolCall {
  id: string;
  name: string;
  /** The arguments as the model wrote them (JSON text, maybe invalid). */
  arguments: string;
}

export interface LlmResponse {
  text: string;
  toolCalls: LlmToolCall[];
  /** The endpoint's finish reason, or "stopped" when `onText` asked to stop reading. */
  finishReason: string;
  firstTokenMs: number;
}

export interface LlmRequest {
  messages: ChatMessage[];
  tools: ChatTool[];
  toolChoice: "auto" | "none";
}

export interface StreamHandlers {
  /** Barge-in: stop at once. */
  signal?: AbortSignal;
  /** Content as it streams in; "stop" ends the request there (the answer is what came so far, without tool calls). */
  onText(delta: string): void | "stop";
  onFirstToken?(ms: number): void;
}

/** What the LLM engine needs from a model endpoint (the tests drive the real one against a fake server). */
export interface LlmCompleter {
  readonly model: string;
  complete(request: LlmRequest, handlers: StreamHandlers): Promise<LlmResponse>;
}

/**
 * Streaming chat completions with function calling through the `openai` SDK, against any OpenAI-compatible
 * endpoint. Enforces a first-token deadline, a stall deadline between streamed pieces and an overall deadline,
 * reports every failure as an LlmError, and feeds a circuit breaker so a dead endpoint is skipped instead of making
 * every caller wait for its timeout.
 */
export class OpenAiCompleter implements LlmCompleter {
  private readonly client: OpenAI;

  constructor(
    private readonly settings: LlmSettings,
    private readonly breaker: CircuitBreaker,
    private readonly metrics: DialogMetrics,
    private readonly log: Logger,
    /** Told of every request, so a connection to the endpoint stays open through the call's pauses. */
    private readonly keepWarm?: ApiKeepWarm,
  ) {
    this.client = new OpenAI({
      apiKey: settings.apiKey,
      baseURL: settings.baseUrl || undefined,
      maxRetries: settings.maxRetries,
      timeout: settings.timeoutMs,
      logLevel: "off", // failures are reported here, once, without request bodies
      // Idle connections kept 25 s instead of fetch's 4 s: a turn after a pause needs no new handshake.
      fetchOptions: { dispatcher: apiDispatcher() },
      fetch: async (url, init) => {
        const response = await fetch(url, init);
        const startedAt = requestStarted.getStore() ?? Date.now();
        return noHopelessRetry(response, settings.firstTokenTimeoutMs - (Date.now() - startedAt));
      },
    });
  }

  get model(): string {
    return this.settings.model;
  }

  async complete(request: LlmRequest, handlers: StreamHandlers): Promise<LlmResponse> {
    const model = this.settings.model;
    if (!this.breaker.allow()) {
      this.metrics.llmRequests.inc({ model, outcome: "circuit_open" });
      throw new LlmError("circuit_open", "the LLM circuit breaker is open");
    }
    const started = Date.now();
    this.keepWarm?.started();
    try {
      const response = await this.stream(request, handlers, started);
      this.breaker.success();
      this.metrics.llmRequests.inc({ model, outcome: "ok" });
      return response;
    } catch (error) {
      const failure = error instanceof LlmError ? error : new LlmError("connection", errorText(error));
      if (failure.reason === "cancelled") this.breaker.release();
      else {
        if (failure.status !== undefined && REQUEST_ERROR_STATUSES.has(failure.status)) this.breaker.release();
        else this.breaker.failure();
        this.log.warn("llm request failed", { model, reason: failure.reason, error: failure.message, ms: Date.now() - started });
      }
      this.metrics.llmRequests.inc({ model, outcome: failure.reason });
      throw failure;
    } finally {
      this.keepWarm?.finished();
    }
  }

  private async stream(request: LlmRequest, handlers: StreamHandlers, started: number): Promise<LlmResponse> {
    const { settings, metrics } = this;
    const abort = new AbortController();
    let failure: LlmError | undefined;
    let rejectDeadline!: (error: LlmError) => void;
    const deadline = new Promise<never>((_resolve, reject) => (rejectDeadline = reject));
    deadline.catch(() => undefined);
    const fail = (error: LlmError) => {
      if (failure) return;
      failure = error;
      abort.abort();
      rejectDeadline(error);
    };
    const onCancel = () => fail(new LlmError("cancelled", "the caller barged in"));
    if (handlers.signal?.aborted) onCancel();
    handlers.signal?.addEventListener("abort", onCancel);
    // Both deadlines race the SDK (whose retry back-off does not watch the abort signal). After a stall of this
    // replica, the tokens that came meanwhile are read before they fire (StallAwareTimer).
    const firstTokenTimer = new StallAwareTimer(settings.firstTokenTimeoutMs, () =>
      fail(new LlmError("first_token_timeout", `no token within ${settings.firstTokenTimeoutMs} ms`)),
    );
    const totalTimer = new StallAwareTimer(settings.timeoutMs, () => fail(new LlmError("timeout", `answer not complete within ${settings.timeoutMs} ms`)));
    // Started by the first token: a stream that stops mid-answer must not leave the caller waiting for the total deadline.
    let stallTimer: StallAwareTimer | undefined;

    let text = "";
    let finishReason = "";
    /** The final usage chunk came: the answer is complete even from a server that names no finish reason. */
    let usageSeen = false;
    let firstTokenMs = -1;
    let stopped = false;
    const calls: LlmToolCall[] = [];
    const callsByIndex = new Map<number, LlmToolCall>();
    /** Content or a tool call arrived (keep-alive comments and empty chunks are no progress). */
    const progress = () => {
      if (stallTimer) {
        stallTimer.refresh();
        return;
      }
      firstTokenMs = Date.now() - started;
      firstTokenTimer.clear();
      stallTimer = new StallAwareTimer(settings.stallTimeoutMs, () =>
        fail(new LlmError("stalled", `no content or tool call for ${settings.stallTimeoutMs} ms mid-answer`)),
      );
      metrics.llmFirstToken.observe({ model: settings.model }, firstTokenMs / 1000);
      handlers.onFirstToken?.(firstTokenMs);
    };

    const work = (async () => {
      const stream = await requestStarted.run(started, () => this.client.chat.completions.create(
        {
          model: settings.model,
          messages: request.messages,
          ...(request.tools.length > 0 ? { tools: request.tools, tool_choice: request.toolChoice } : {}),
          stream: true,
          stream_options: { include_usage: true },
          ...generationLimits(settings),
        },
        { signal: abort.signal },
      ));
      for await (const chunk of stream as AsyncIterable<Chunk>) {
        if (failure) break;
        if (!chunk || typeof chunk !== "object" || !Array.isArray(chunk.choices)) throw new LlmError("malformed", "a stream chunk has no choices");
        if (chunk.usage) {
          // The usage chunk after the last choice has no choices (some servers put usage on every chunk too).
          if (chunk.choices.length === 0) usageSeen = true;
          metrics.llmTokens.inc({ model: settings.model, kind: "prompt" }, chunk.usage.prompt_tokens ?? 0);
          metrics.llmTokens.inc({ model: settings.model, kind: "completion" }, chunk.usage.completion_tokens ?? 0);
        }
        const choice = chunk.choices[0];
        if (!choice) continue;
        const delta = choice.delta ?? {};
        if (typeof delta.content === "string" && delta.content.length > 0) {
          progress();
          text += delta.content;
          if (handlers.onText(delta.content) === "stop") {
            // Enough of this answer: the endpoint stops generating the rest.
            stopped = true;
            abort.abort();
            break;
          }
        }
        for (const call of delta.tool_calls ?? []) {
          const entry = toolCallOf(calls, callsByIndex, call);
          progress();
          if (call.id) entry.id = call.id;
          // OpenAI sends the name whole, in the call's first delta; some compatible servers repeat it in every delta.
          // Set, as the SDK's own accumulator does, never appended ("lookup_orderlookup_order" is no tool).
          if (call.function?.name) entry.name = call.function.name;
          if (call.function?.arguments) entry.arguments += call.function.arguments;
        }
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
    })();
    work.catch(() => undefined); // when a deadline wins the race, the SDK's late error is not wanted

    try {
      await Promise.race([work, deadline]);
    } catch (error) {
      if (failure) throw failure;
      throw classify(error);
    } finally {
      firstTokenTimer.clear();
      totalTimer.clear();
      stallTimer?.clear();
      handlers.signal?.removeEventListener("abort", onCancel);
    }
    // The SDK ends the iteration quietly when its request is aborted.
    if (failure) throw failure;
    // Tool calls of a stopped answer may be incomplete: none are run.
    if (stopped) return { text, toolCalls: [], finishReason: "stopped", firstTokenMs };
    // The SDK ends quietly when the body ends without `[DONE]`: a finish reason (or the usage after it) is the
    // only sign the answer is whole. A cut one fails as a stall does, only sooner (the caller may hear half a word
    // otherwise, and its tool calls' arguments may be cut).
    if (!finishReason && !usageSeen) throw new LlmError("truncated", `the stream ended mid-answer, without a finish reason (${text.length} characters)`);
    // Indexes may leave gaps (gateways that number a call by its place among all content blocks): the calls in order.
    const toolCalls = calls.filter(Boolean);
    for (const call of toolCalls) {
      if (!call.name) throw new LlmError("malformed", "a tool call has no function name");
      if (!call.id) call.id = `call_${Math.random().toString(36).slice(2, 12)}`;
    }
    if (!text.trim() && toolCalls.length === 0) throw new LlmError("empty", `the answer is empty (finish reason ${finishReason || "none"})`);
    return { text, toolCalls, finishReason, firstTokenMs };
  }
}

/**
 * The tool call a streamed delta belongs to. OpenAI numbers them (`index`); some compatible endpoints (Google
 * Gemini) send none: there a delta with an id starts a call (or continues the one with that id), a delta without
 * one continues the latest call. Others (Ollama, some gateways) number every call 0: there a delta whose id differs
 * from its index's call starts another call, which the index's deltas without an id then continue (`byIndex`).
 */
function toolCallOf(calls: LlmToolCall[], byIndex: Map<number, LlmToolCall>, delta: { index?: number | null; id?: string }): LlmToolCall {
  if (delta.index === undefined || delta.index === null) {
    if (delta.id) {
      const known = calls.find((call) => call.id === delta.id);
      if (known) return known;
      const started = { id: delta.id, name: "", arguments: "" };
      calls.push(started);
      return started;
    }
    const latest = calls.at(-1);
    if (!latest?.id) throw new LlmError("malformed", "a tool call delta has neither an index nor an id, and no call was started");
    return latest;
  }
  if (typeof delta.index !== "number" || delta.index < 0 || delta.index > 31) throw new LlmError("malformed", "a tool call delta has no valid index");
  const current = byIndex.get(delta.index) ?? calls[delta.index];
  if (current && current.id && delta.id && delta.id !== current.id) {
    if (calls.length >= 32) throw new LlmError("malformed", "too many tool calls");
    const started = { id: delta.id, name: "", arguments: "" };
    calls.push(started);
    byIndex.set(delta.index, started);
    return started;
  }
  return current ?? (calls[delta.index] = { id: "", name: "", arguments: "" });
}

/**
 * An answer that asks to be retried (429, 5xx) only after the first-token deadline (`leftMs` from now) is reported
 * at once instead of waited out (the SDK obeys Retry-After, and `x-should-retry: false` stops it): the caller gets
 * the fallback now, and the failure is the endpoint's answer, not a timeout.
 */
export function noHopelessRetry(response: Response, leftMs: number): Response {
  if (response.status !== 429 && response.status < 500) return response;
  const waitMs = retryAfterMs(response.headers);
  if (waitMs === undefined || waitMs < leftMs) return response;
  const headers = new Headers(response.headers);
  headers.set("x-should-retry", "false");
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

/** Retry-After-Ms or Retry-After (seconds or an HTTP date), as the SDK reads them. */
function retryAfterMs(headers: Headers): number | undefined {
  const millis = Number.parseFloat(headers.get("retry-after-ms") ?? "");
  if (Number.isFinite(millis)) return millis;
  const value = headers.get("retry-after");
  if (!value) return undefined;
  const seconds = Number.parseFloat(value);
  if (Number.isFinite(seconds)) return seconds * 1000;
  const at = Date.parse(value);
  return Number.isFinite(at) ? at - Date.now() : undefined;
}

/** How OpenAI and compatible servers (vLLM, llama.cpp, gateways) word a request over the model's context window. */
const CONTEXT_TOO_LONG = /context[_ ]length|maximum context|context window|too many tokens|prompt is too long/i;

function classify(error: unknown): LlmError {
  if (error instanceof LlmError) return error;
  if (error instanceof APIUserAbortError) return new LlmError("cancelled", "aborted");
  if (error instanceof APIConnectionError) return new LlmError("connection", error.message);
  if (error instanceof APIError && error.status !== undefined) {
    if ((error.status === 400 || error.status === 413) && (error.code === "context_length_exceeded" || CONTEXT_TOO_LONG.test(error.message))) {
      return new LlmError("context_length", `HTTP ${error.status}: ${error.message}`, error.status);
    }
    return new LlmError("http_error", `HTTP ${error.status}: ${error.message}`, error.status);
  }
  // An error event inside the stream.
  if (error instanceof APIError) return new LlmError("http_error", `error in the stream: ${error.message}`);
  if (error instanceof SyntaxError) return new LlmError("malformed", `a stream chunk is not JSON: ${error.message}`);
  return new LlmError("connection", errorText(error));
}
