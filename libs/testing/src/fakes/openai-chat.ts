// Chat completions for the fake OpenAI server (openai.ts): streamed SSE with content and tool calls (arguments
// split across chunks), usage on request, and the failures a client must survive (slow first token, HTTP errors,
// malformed chunks, stalls, dropped connections). Requests are checked the way the real API checks them, so a
// client that sends an invalid conversation (a tool call without its result) fails here too.

import type { ServerResponse } from "node:http";
import { sendJson, sendOpenAIError, startSse, writeSse, type FakeOpenAI, type FakeOpenAIRequest, type FakeRouteHandler } from "./openai.js";

export interface FakeChatToolCallMessage {
  id: string;
  type: string;
  function: { name: string; arguments: string };
}

export interface FakeChatMessage {
  role: "system" | "developer" | "user" | "assistant" | "tool";
  content?: unknown;
  tool_calls?: FakeChatToolCallMessage[];
  tool_call_id?: string;
}

export interface FakeChatTool {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

export interface FakeChatRequest {
  request: FakeOpenAIRequest;
  /** The parsed JSON body as sent. */
  body: Record<string, unknown>;
  model: string;
  messages: FakeChatMessage[];
  tools: FakeChatTool[];
  toolChoice?: unknown;
  stream: boolean;
  includeUsage: boolean;
  temperature?: number;
  /** Text of the last user message ("" when there is none). */
  lastUser: string;
  /** Tool results sent after the last assistant tool calls (what the model is asked to answer with). */
  toolResults: Array<{ toolCallId: string; name: string; content: string }>;
  /** The client closed the connection before the response was complete. */
  closedByClient: boolean;
}

export interface FakeChatToolCall {
  /** Default: call_<n>. */
  id?: string;
  name: string;
  arguments: string | Record<string, unknown>;
  /** How many pieces the arguments arrive in (default 3), each in its own chunk. */
  argumentChunks?: number;
}

/** How the fake answers one chat completion request. */
export type FakeChatReply =
  | {
      text?: string;
      /** Streamed content pieces (default: the text split after each word); they should add up to `text`. */
      deltas?: string[];
      toolCalls?: FakeChatToolCall[];
      /** Wait before the response starts (headers). */
      delayMs?: number;
      /** Wait after the opening chunk (role only) before the first content or tool call. */
      firstTokenDelayMs?: number;
      /** Wait between streamed chunks. */
      eventIntervalMs?: number;
      /** After this many content deltas, stop sending (no tool calls, no finish) but keep the connection open. */
      stallAfterDeltas?: number;
      /** While stalled, send an SSE comment (": keep-alive") this often, as proxies and some servers do. */
      keepAliveMs?: number;
      /** Tool call deltas without `index`, as Google Gemini's OpenAI-compatible endpoint sends them. */
      omitToolCallIndex?: boolean;
      /** Every tool call's deltas with `index` 0, each call with its own id (Ollama, some gateways). */
      sameToolCallIndex?: boolean;
      /**
       * Tool calls numbered from this index: gateways that translate Claude or Bedrock number a call by its place
       * among all content blocks, so after text the first call is index 1.
       */
      toolCallIndexFrom?: number;
      /** The function name again in every tool call delta, as some compatible servers send it (OpenAI: first only). */
      repeatToolCallName?: boolean;
      finishReason?: string;
      usage?: { promptTokens: number; completionTokens: number };
    }
  /** An API error (after `delayMs`); `retryAfterSeconds` sets Retry-After (a rate limit, an overloaded server). */
  | { status: number; message?: string; type?: string; code?: string; retryAfterSeconds?: number; delayMs?: number }
  /** A stream whose chunk after `afterDeltas` content pieces is cut-off JSON. */
  | { malformed: true; afterDeltas?: string[] }
  /** Never answer (the client must time out). */
  | { stall: true }
  /** Send `afterDeltas`, then drop the connection (`clean`: end the response properly, with no finish reason and no `[DONE]`, as a proxy's timeout may). */
  | { reset: true; afterDeltas?: string[]; clean?: boolean };

export interface FakeChatOptions {
  reply(request: FakeChatRequest): FakeChatReply | Promise<FakeChatReply>;
}

export interface FakeChat {
  /** Every valid chat completion request, in arrival order. */
  requests: FakeChatRequest[];
  /** Requests refused as invalid (400), with the reason. */
  rejected: Array<{ request: FakeOpenAIRequest; message: string }>;
}

const FUNCTION_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

/** Adds POST /v1/chat/completions to a fake OpenAI server. */
export function addFakeChatCompletions(fake: FakeOpenAI, options: FakeChatOptions): FakeChat {
  const chat: FakeChat = { requests: [], rejected: [] };
  fake.route("POST", "/v1/chat/completions", chatCompletionsHandler(options, chat));
  return chat;
}

/** The route handler itself (for a server of your own); records into `chat`. */
export function chatCompletionsHandler(options: FakeChatOptions, chat: FakeChat): FakeRouteHandler {
  let completions = 0;
  return async ({ res, request }) => {
    let parsed: FakeChatRequest;
    try {
      parsed = parseChatRequest(request);
    } catch (error) {
      const message = (error as Error).message;
      chat.rejected.push({ request, message });
      return sendOpenAIError(res, 400, message);
    }
    chat.requests.push(parsed);
    res.once("close", () => {
      if (!res.writableEnded) parsed.closedByClient = true;
    });
    const reply = await options.reply(parsed);
    const n = ++completions;
    const id = `chatcmpl-fake${n}`;
    if ("stall" in reply) return; // the response stays open until the client gives up or stop()
    if ("status" in reply) {
      if (reply.delayMs) await sleep(res, reply.delayMs);
      if (reply.retryAfterSeconds !== undefined) res.setHeader("retry-after", String(reply.retryAfterSeconds));
      const type = reply.type ?? (reply.status >= 500 ? "server_error" : "invalid_request_error");
      return sendOpenAIError(res, reply.status, reply.message ?? `fake error ${reply.status}`, type, reply.code ?? null);
    }
    if ("malformed" in reply || "reset" in reply) {
      startSse(res);
      writeSse(res, chunk(id, parsed, { role: "assistant", content: "" }, null, parsed.includeUsage));
      for (const delta of reply.afterDeltas ?? []) writeSse(res, chunk(id, parsed, { content: delta }, null, parsed.includeUsage));
      if ("reset" in reply) {
        await sleep(res, 50); // let the pieces reach the client before the connection drops
        if (reply.clean) res.end();
        else res.destroy();
        return;
      }
      res.write(`data: {"id":"${id}","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"wor\n\n`);
      res.end();
      return;
    }
    if (reply.delayMs) await sleep(res, reply.delayMs);
    if (res.destroyed) return;
    const text = reply.text ?? "";
    const deltas = reply.deltas ?? (text.match(/\S+\s*/g) ?? []);
    const calls = (reply.toolCalls ?? []).map((call, i) => ({
      id: call.id ?? `call_${n}_${i}`,
      name: call.name,
      arguments: typeof call.arguments === "string" ? call.arguments : JSON.stringify(call.arguments),
      pieces: Math.max(1, call.argumentChunks ?? 3),
    }));
    const finishReason = reply.finishReason ?? (calls.length > 0 ? "tool_calls" : "stop");
    const usage = reply.usage ?? { promptTokens: countTokens(parsed.messages), completionTokens: deltas.length + calls.length * 5 };

    if (!parsed.stream) {
      const message: Record<string, unknown> = { role: "assistant", content: text || null, refusal: null };
      if (calls.length > 0) message.tool_calls = calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
      return sendJson(res, 200, {
        id,
        object: "chat.completion",
        created: Math.floor(Date.now() / 1000),
        model: parsed.model,
        choices: [{ index: 0, message, logprobs: null, finish_reason: finishReason }],
        usage: { prompt_tokens: usage.promptTokens, completion_tokens: usage.completionTokens, total_tokens: usage.promptTokens + usage.completionTokens },
      });
    }

    startSse(res);
    const send = async (delta: Record<string, unknown>, finish: string | null = null) => {
      if (res.destroyed) return false;
      writeSse(res, chunk(id, parsed, delta, finish, parsed.includeUsage));
      if (reply.eventIntervalMs) await sleep(res, reply.eventIntervalMs);
      return !res.destroyed;
    };
    if (!(await send({ role: "assistant", content: "", refusal: null }))) return;
    if (reply.firstTokenDelayMs) await sleep(res, reply.firstTokenDelayMs);
    let sent = 0;
    // A stall leaves the response open and silent but for keep-alive comments (until the client gives up or stop()).
    const stalled = () => reply.stallAfterDeltas !== undefined && sent >= reply.stallAfterDeltas;
    const stall = async () => {
      while (reply.keepAliveMs && !res.destroyed) {
        res.write(": keep-alive\n\n");
        await sleep(res, reply.keepAliveMs);
      }
    };
    for (const delta of deltas) {
      if (stalled()) return stall();
      if (!(await send({ content: delta }))) return;
      sent++;
    }
    if (stalled()) return stall();
    for (const [index, call] of calls.entries()) {
      const numbered = reply.omitToolCallIndex ? {} : { index: reply.sameToolCallIndex ? 0 : index + (reply.toolCallIndexFrom ?? 0) };
      if (!(await send({ tool_calls: [{ ...numbered, id: call.id, type: "function", function: { name: call.name, arguments: "" } }] }))) return;
      for (const piece of split(call.arguments, call.pieces)) {
        const name = reply.repeatToolCallName ? { name: call.name } : {};
        if (!(await send({ tool_calls: [{ ...numbered, function: { ...name, arguments: piece } }] }))) return;
      }
    }
    if (!(await send({}, finishReason))) return;
    if (parsed.includeUsage) {
      writeSse(res, {
        id,
        object: "chat.completion.chunk",
        created: Math.floor(Date.now() / 1000),
        model: parsed.model,
        system_fingerprint: null,
        choices: [],
        usage: { prompt_tokens: usage.promptTokens, completion_tokens: usage.completionTokens, total_tokens: usage.promptTokens + usage.completionTokens },
      });
    }
    res.write("data: [DONE]\n\n");
    res.end();
  };
}

function chunk(id: string, request: FakeChatRequest, delta: Record<string, unknown>, finishReason: string | null, withUsage: boolean): Record<string, unknown> {
  return {
    id,
    object: "chat.completion.chunk",
    created: Math.floor(Date.now() / 1000),
    model: request.model,
    system_fingerprint: null,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
    ...(withUsage ? { usage: null } : {}),
  };
}

/** Splits text into `pieces` parts of about equal length (the last may be empty for short text). */
function split(text: string, pieces: number): string[] {
  if (pieces <= 1 || text.length <= 1) return [text];
  const size = Math.ceil(text.length / pieces);
  const parts: string[] = [];
  for (let i = 0; i < text.length; i += size) parts.push(text.slice(i, i + size));
  return parts;
}

function countTokens(messages: FakeChatMessage[]): number {
  return messages.reduce((sum, m) => sum + String(typeof m.content === "string" ? m.content : JSON.stringify(m.content ?? "")).split(/\s+/).length + 3, 0);
}

/** Waits, but not past the client hanging up; timers do not keep the test process alive. */
function sleep(res: ServerResponse, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    timer.unref();
    res.once("close", done);
    function done() {
      clearTimeout(timer);
      res.off("close", done);
      resolve();
    }
  });
}

/** Parses and checks a request the way the API does, throwing the API's kind of message. */
function parseChatRequest(request: FakeOpenAIRequest): FakeChatRequest {
  if (!String(request.headers["content-type"] ?? "").includes("application/json")) throw new Error("Expected a JSON request body.");
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(request.body.toString("utf8")) as Record<string, unknown>;
  } catch {
    throw new Error("We could not parse the JSON body of your request.");
  }
  if (!body || typeof body !== "object" || Array.isArray(body)) throw new Error("The request body must be a JSON object.");
  if (typeof body.model !== "string" || !body.model) throw new Error("Missing required parameter: 'model'.");
  if (!Array.isArray(body.messages) || body.messages.length === 0) throw new Error("Missing required parameter: 'messages'.");
  const stream = body.stream === true;
  const streamOptions = body.stream_options as { include_usage?: boolean } | undefined | null;
  if (streamOptions && !stream) throw new Error("The 'stream_options' parameter is only allowed when 'stream' is enabled.");
  const tools = (body.tools ?? []) as FakeChatTool[];
  if (!Array.isArray(tools)) throw new Error("Invalid type for 'tools': expected an array.");
  tools.forEach((tool, i) => {
    if (tool?.type !== "function" || !tool.function || !FUNCTION_NAME.test(String(tool.function.name))) {
      throw new Error(`Invalid 'tools[${i}]': expected a function with a name matching ^[a-zA-Z0-9_-]{1,64}$.`);
    }
    const parameters = tool.function.parameters;
    if (parameters !== undefined && (typeof parameters !== "object" || parameters === null || Array.isArray(parameters))) {
      throw new Error(`Invalid 'tools[${i}].function.parameters': expected an object.`);
    }
  });
  if (body.tool_choice !== undefined && tools.length === 0) throw new Error("'tool_choice' is only allowed when 'tools' are specified.");
  if (body.temperature !== undefined && (typeof body.temperature !== "number" || body.temperature < 0 || body.temperature > 2)) {
    throw new Error("Invalid 'temperature': expected a number between 0 and 2.");
  }
  // As OpenAI answers for its reasoning models (o1, o3, o4-mini, gpt-5, ...).
  if (/(^|\/)(o\d|gpt-5)/i.test(body.model)) {
    if (body.temperature !== undefined && body.temperature !== 1) {
      throw new Error(`Unsupported value: 'temperature' does not support ${body.temperature} with this model. Only the default (1) value is supported.`);
    }
    if (body.max_tokens !== undefined) {
      throw new Error("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.");
    }
  }

  const messages = body.messages as FakeChatMessage[];
  // Every assistant tool call must be answered by a tool message before anything else, and only those.
  let pending = new Map<string, string>();
  let toolResults: FakeChatRequest["toolResults"] = [];
  let lastUser = "";
  messages.forEach((message, i) => {
    const role = message?.role;
    if (!["system", "developer", "user", "assistant", "tool"].includes(role)) throw new Error(`Invalid value for 'messages[${i}].role'.`);
    if (role !== "tool" && pending.size > 0) {
      throw new Error(
        `An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. ` +
          `The following tool_call_ids did not have response messages: ${[...pending.keys()].join(", ")}`,
      );
    }
    if (role === "tool") {
      const id = message.tool_call_id;
      if (!id || !pending.has(id)) {
        throw new Error(`Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.`);
      }
      if (typeof message.content !== "string") throw new Error(`Invalid type for 'messages[${i}].content': expected a string.`);
      toolResults.push({ toolCallId: id, name: pending.get(id)!, content: message.content });
      pending.delete(id);
      return;
    }
    if (role === "assistant") {
      const calls = message.tool_calls ?? [];
      if ((message.content === undefined || message.content === null) && calls.length === 0) {
        throw new Error(`Invalid 'messages[${i}]': an assistant message needs 'content' or 'tool_calls'.`);
      }
      pending = new Map();
      if (calls.length > 0) toolResults = [];
      for (const call of calls) {
        if (!call?.id || call.type !== "function" || !FUNCTION_NAME.test(String(call.function?.name)) || typeof call.function?.arguments !== "string") {
          throw new Error(`Invalid 'messages[${i}].tool_calls': each needs an id, type "function", a name and arguments as a string.`);
        }
        pending.set(call.id, call.function.name);
      }
      return;
    }
    if (typeof message.content !== "string" && !Array.isArray(message.content)) throw new Error(`Invalid type for 'messages[${i}].content'.`);
    if (role === "user") {
      lastUser = typeof message.content === "string" ? message.content : "";
      toolResults = [];
    }
  });
  if (pending.size > 0) {
    throw new Error(
      `An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. ` +
        `The following tool_call_ids did not have response messages: ${[...pending.keys()].join(", ")}`,
    );
  }
  return {
    request,
    body,
    model: body.model,
    messages,
    tools,
    toolChoice: body.tool_choice,
    stream,
    includeUsage: stream && streamOptions?.include_usage === true,
    temperature: typeof body.temperature === "number" ? body.temperature : undefined,
    lastUser,
    toolResults,
    closedByClient: false,
  };
}
