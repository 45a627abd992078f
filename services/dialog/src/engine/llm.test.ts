import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { silentLogger, type Logger } from "@voicebot/bus";
import { addFakeChatCompletions, startFakeOpenAI, waitFor, type FakeChat, type FakeChatReply, type FakeChatRequest, type FakeOpenAI } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { validateAgent, type AgentConfig } from "../agents/config.js";
import { parseAgentText } from "../agents/load.js";
import { CircuitBreaker } from "../llm/breaker.js";
import { generationLimits, OpenAiCompleter, REASONING_TOKENS } from "../llm/client.js";
import { EnvReader } from "@voicebot/service-kit";
import { createDialogMetrics } from "../metrics.js";
import { llmSettingsFor, readDialogConfig } from "../service.js";
import { LlmEngine, trimHistory, type LlmState } from "./llm.js";
import { ScriptedEngine } from "./scripted.js";
import type { EngineInput, RecognitionHints, ToolOutcome, TurnIO } from "./types.js";

const orderLineFile = fileURLToPath(new URL("../../agents/order-line.yaml", import.meta.url));
const orderLine: AgentConfig = validateAgent(parseAgentText(readFileSync(orderLineFile, "utf8"), orderLineFile), "order-line");

let fake: FakeOpenAI;
let chat: FakeChat;
let replies: Array<FakeChatReply | ((request: FakeChatRequest) => FakeChatReply)> = [];

beforeAll(async () => {
  fake = await startFakeOpenAI({ apiKey: "test-key" });
  chat = addFakeChatCompletions(fake, {
    reply: (request) => {
      const next = replies.shift();
      if (!next) return { status: 500, message: "the test gave no reply for this request" };
      return typeof next === "function" ? next(request) : next;
    },
  });
});

afterAll(async () => {
  await fake?.stop();
});

beforeEach(() => {
  replies = [];
  chat.requests.length = 0;
  chat.rejected.length = 0;
});

type Event =
  | { type: "say"; text: string; cacheable: boolean; now: boolean; turnId: string; at: number }
  | { type: "tool"; name: string; args: Record<string, unknown> }
  | { type: "heard"; text: string; source: string }
  | { type: "hints"; hints: RecognitionHints };

const ORDERS: Record<string, unknown> = {
  "12345": { found: true, order_number: "12345", status: "shipped", carrier: "UPS", eta_text: "Thursday, March 6" },
};

type LogLine = { msg: string; fields?: Record<string, unknown> };

/** A logger that keeps its warnings. */
function warningsInto(lines: LogLine[]): Logger {
  const log: Logger = { debug() {}, info() {}, warn: (msg, fields) => void lines.push({ msg, fields }), error() {}, child: () => log };
  return log;
}

function engineWith(
  options: { firstTokenTimeoutMs?: number; stallTimeoutMs?: number; breakerFailures?: number; cooldownMs?: number; maxRetries?: number; model?: string; maxTokens?: number } = {},
) {
  const metrics = createDialogMetrics(new Registry());
  const warnings: LogLine[] = [];
  const log = warningsInto(warnings);
  const breaker = new CircuitBreaker({ failures: options.breakerFailures ?? 3, windowMs: 60_000, cooldownMs: options.cooldownMs ?? 60_000 });
  const client = new OpenAiCompleter(
    {
      baseUrl: fake.baseUrl,
      apiKey: "test-key",
      model: options.model ?? "fake-model",
      temperature: orderLine.llm!.temperature,
      maxTokens: options.maxTokens,
      firstTokenTimeoutMs: options.firstTokenTimeoutMs ?? 1_500,
      stallTimeoutMs: options.stallTimeoutMs ?? 3_000,
      timeoutMs: 5_000,
      maxRetries: options.maxRetries ?? 1,
    },
    breaker,
    metrics,
    log,
  );
  const engine = new LlmEngine({
    agent: orderLine,
    client,
    fallback: new ScriptedEngine(orderLine, { digitsConfirmConfidence: 0.8 }),
    digitsConfirmConfidence: 0.8,
    keypadPauseMs: 2_000,
    metrics,
    log,
    now: () => new Date("2025-03-04T12:00:00Z"),
  });
  return { engine, metrics, breaker, warnings };
}

/** Drives the engine with a recording TurnIO. */
class Conversation {
  state: LlmState;
  events: Event[] = [];
  done = false;
  outcome = "";
  wake: { afterMs: number; token: string } | undefined;
  abort = new AbortController();
  private turn = 0;
  private closed = true;

  constructor(
    readonly engine: LlmEngine,
    private readonly tools: (name: string, args: Record<string, unknown>) => ToolOutcome = defaultTools,
  ) {
    this.state = engine.initialState();
  }

  async send(input: EngineInput): Promise<Event[]> {
    const events: Event[] = [];
    this.closed = true; // every input starts a new bot turn
    const io: TurnIO = {
      heard: (e) => void events.push({ type: "heard", text: e.text, source: e.source }),
      say: (text, options) => {
        if (this.abort.signal.aborted) return "";
        if (this.closed) {
          this.turn++;
          this.closed = false;
        }
        const turnId = `t${this.turn}`;
        events.push({ type: "say", text, cacheable: options?.cacheable === true, now: options?.now === true, turnId, at: Date.now() });
        return turnId;
      },
      callTool: async (name, args) => {
        this.closed = true;
        events.push({ type: "tool", name, args });
        return this.tools(name, args);
      },
      setHints: (hints) => void events.push({ type: "hints", hints }),
      signal: this.abort.signal,
    };
    const result = await this.engine.turn(input, this.state, io);
    this.state = result.state;
    this.done = result.done === true;
    this.outcome = result.outcome;
    this.wake = result.wake;
    this.events.push(...events);
    return events;
  }

  start = () => this.send({ kind: "start" });
  speak = (text: string, confidence = 0.95) => this.send({ kind: "speech", text, confidence });
  key = (digit: string) => this.send({ kind: "keypad", digit, atMs: Date.now() });
  async keys(digits: string): Promise<Event[]> {
    const all: Event[] = [];
    for (const d of digits) all.push(...(await this.key(d)));
    return all;
  }
}

function defaultTools(name: string, args: Record<string, unknown>): ToolOutcome {
  if (name === "lookup_order") return { ok: true, result: ORDERS[String(args.order_number)] ?? { found: false, order_number: args.order_number }, ms: 5 };
  return { ok: true, result: { action: name }, ms: 1 };
}

const said = (events: Event[]) => events.filter((e): e is Extract<Event, { type: "say" }> => e.type === "say").map((e) => e.text).join(" ");
const toolsOf = (events: Event[]) => events.filter((e) => e.type === "tool");
const GREETING = "Thanks for calling the demo shop. How can I help you today?";
const SCRIPTED_ASK = "Please say or key in your order number, then press pound.";

describe("LLM engine (real openai SDK against the fake server)", () => {
  it("greets with the fixed greeting without asking the LLM", async () => {
    const c = new Conversation(engineWith().engine);
    const events = await c.start();
    expect(said(events)).toBe(GREETING);
    expect(events.find((e) => e.type === "say")).toMatchObject({ cacheable: true });
    expect(chat.requests).toHaveLength(0);
    expect(c.state.history).toEqual([{ role: "assistant", content: GREETING, turnId: "t1" }]);
    expect(events.find((e) => e.type === "hints")).toMatchObject({ hints: { mode: "phrases" } });
  });

  it("leaves the agent's fixed voicemail message on an answering machine, without asking the LLM, and ends the call", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    const requests = chat.requests.length;
    const events = await c.send({ kind: "voicemail" });
    expect(said(events)).toBe("Hello, this is the demo shop calling about your order. Please call us back when it suits you. Goodbye.");
    expect(toolsOf(events)).toMatchObject([{ name: "end_call" }]);
    expect(c.done).toBe(true);
    expect(chat.requests.length).toBe(requests);
  });

  it("asks the caller again when the LLM fails on the rest of an answer a noise stopped (nothing unheard to say)", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    c.state.history.push({ role: "user", content: "where is my order" }, { role: "assistant", content: "Let me", turnId: "t1", unfinished: true });
    // No reply given: the endpoint answers 500 (and its retry too).
    const events = await c.send({ kind: "resume", text: "" });
    expect(c.outcome).toBe("fallback");
    // After the apology, the scripted agent's reprompt: not the apology and then silence.
    const afterApology = said(events).replace("Sorry, I had a problem there.", "").trim();
    expect(afterApology).toMatch(/say order status or press 1/);
  });

  it("a barge-in cuts what was heard across every message of the turn (streamed text, then a readback)", async () => {
    const { engine } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    c.state.history.push(
      { role: "user", content: "order one two three four five" },
      { role: "assistant", content: "Let me look that up.", turnId: "t2" },
      { role: "assistant", content: "I heard 1 2 3 4 5. Is that right?", turnId: "t2" },
    );
    const next = engine.interrupted(c.state, { turnId: "t2", heardText: "Let me look that up. I heard 1 2 3" });
    expect(next.history.slice(-2)).toEqual([
      { role: "assistant", content: "Let me look that up.", turnId: "t2" },
      { role: "assistant", content: "I heard 1 2 3", turnId: "t2", interrupted: true },
    ]);
    // Cut inside the first: the second was not heard at all.
    const early = engine.interrupted(c.state, { turnId: "t2", heardText: "Let me" });
    expect(early.history.slice(-2)).toEqual([
      { role: "assistant", content: "Let me", turnId: "t2", interrupted: true },
      { role: "assistant", content: "", turnId: "t2", interrupted: true },
    ]);
  });

  it("says the part of a cut turn the caller did not hear again, without asking the LLM, and keeps it in the history", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    const requests = chat.requests.length;
    const events = await c.send({ kind: "resume", text: "How can I help you today?" });
    expect(said(events)).toBe("How can I help you today?");
    expect(c.outcome).toBe("resumed");
    expect(c.state.history.at(-1)).toEqual({ role: "assistant", content: "How can I help you today?", turnId: "t2" });
    expect(chat.requests.length).toBe(requests);
  });

  it("speaks streamed text clause by clause, the first one before the stream has finished", async () => {
    const { engine, metrics } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    replies.push({
      text: "Sure, I can help you with checking an order today. What is your order number? You can also key it in.",
      eventIntervalMs: 40,
    });
    const started = Date.now();
    const events = await c.speak("I want to check my order");
    const finished = Date.now();
    const says = events.filter((e): e is Extract<Event, { type: "say" }> => e.type === "say");
    expect(says.map((e) => e.text)).toEqual([
      "Sure, I can help you with checking an order today.",
      "What is your order number?",
      "You can also key it in.",
    ]);
    // Complete clauses go out at once; the last one waits for the end of the stream (it carries turnDone).
    expect(says.map((e) => e.now)).toEqual([true, true, false]);
    // 12 more words at 40 ms each were still to come when the first clause went out.
    expect(finished - says[0].at).toBeGreaterThan(300);
    expect(says[0].at).toBeGreaterThan(started);
    expect(says.every((e) => e.turnId === "t2")).toBe(true);

    const request = chat.requests[0];
    expect(request.stream).toBe(true);
    expect(request.includeUsage).toBe(true);
    expect(request.model).toBe("fake-model");
    expect(request.temperature).toBe(0.3);
    expect(request.messages[0]).toMatchObject({ role: "system" });
    expect(String(request.messages[0].content)).toContain("Today is Tuesday, March 4, 2025.");
    expect(request.messages.slice(1)).toEqual([
      { role: "assistant", content: GREETING },
      { role: "user", content: "I want to check my order" },
    ]);
    expect(request.tools.map((t) => t.function.name)).toEqual(["lookup_order", "transfer_to_human", "end_call"]);
    expect(request.tools[0].function.parameters).toMatchObject({ required: ["order_number"] });
    expect(c.outcome).toBe("llm");
    const tokens = (await metrics.llmTokens.get()).values;
    expect(tokens.find((v) => v.labels.kind === "completion")!.value).toBeGreaterThan(0);
    expect((await metrics.llmFirstToken.get()).values.find((v) => (v as { metricName?: string }).metricName?.endsWith("_count"))!.value).toBe(1);
  });

  it("runs a tool call whose arguments arrive in pieces and answers with its result", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({ toolCalls: [{ name: "lookup_order", arguments: { order_number: "12345" }, argumentChunks: 5 }] });
    replies.push((request) => {
      expect(request.toolResults).toEqual([{ toolCallId: expect.any(String), name: "lookup_order", content: JSON.stringify(ORDERS["12345"]) }]);
      return { text: "Order 1 2 3 4 5 has shipped with UPS and should arrive Thursday, March 6." };
    });
    const events = await c.speak("where is order 12345", 0.95);
    expect(toolsOf(events)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    expect(said(events)).toBe("Order 1 2 3 4 5 has shipped with UPS and should arrive Thursday, March 6.");
    expect(chat.requests).toHaveLength(2);
    expect(chat.rejected).toEqual([]);
    const roles = c.state.history.map((m) => m.role);
    expect(roles).toEqual(["assistant", "user", "assistant", "tool", "assistant"]);
  });

  it("runs no tools the model asks for in its last round (tool_choice none): a model stuck calling tools gets the fallback", async () => {
    const { engine, metrics } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    const requestsBefore = chat.requests.length;
    for (let round = 0; round < 4; round++) replies.push({ toolCalls: [{ name: "lookup_order", arguments: { order_number: "12345" } }] });
    const events = await c.speak("where is order 12345", 0.95);
    expect(chat.requests.length - requestsBefore).toBe(4);
    expect(chat.requests.at(-1)!.toolChoice).toBe("none");
    expect(toolsOf(events)).toHaveLength(3); // the first three rounds' calls only
    expect(said(events)).not.toBe(""); // the scripted agent answered
    expect(c.outcome).toBe("fallback");
    const fallbacks = (await metrics.llmFallbacks.get()).values;
    expect(fallbacks).toContainEqual(expect.objectContaining({ labels: { agent: "order-line", reason: "tool_loop" }, value: 1 }));
  });

  it("reads back digits heard with low confidence before the tool runs, and runs it after a yes", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({ text: "Let me look that up.", toolCalls: [{ name: "lookup_order", arguments: '{"order_number":"12345"}' }] });
    const first = await c.speak("my order is one two three four five", 0.55);
    expect(toolsOf(first)).toEqual([]);
    expect(said(first)).toBe("Let me look that up. I heard 1 2 3 4 5. Is that right? Say yes, or key in the number.");
    expect(c.outcome).toBe("confirm_asked");
    expect(first.filter((e) => e.type === "hints").at(-1)).toMatchObject({ hints: { phrases: expect.arrayContaining(["yes", "no"]) } });

    replies.push((request) => {
      // The history the LLM sees is a valid conversation: the held call answered, then the confirmed call.
      expect(request.toolResults).toEqual([{ toolCallId: "confirmed_1", name: "lookup_order", content: JSON.stringify(ORDERS["12345"]) }]);
      return { text: "It has shipped with UPS." };
    });
    const yes = await c.speak("yes", 0.9);
    expect(toolsOf(yes)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    expect(said(yes)).toBe("It has shipped with UPS.");
    expect(c.outcome).toBe("confirmed");
    expect(chat.rejected).toEqual([]);
    expect(c.state.confirm).toBeUndefined();
  });

  it('takes a corrected number after "no", keyed in, without asking again', async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({ toolCalls: [{ name: "lookup_order", arguments: { order_number: "12346" } }] });
    await c.speak("one two three four six", 0.5);
    const no = await c.speak("no", 0.9);
    expect(said(no)).toBe("Sorry about that. Please say or key in the number again.");
    expect(c.outcome).toBe("confirm_rejected");
    expect(chat.requests).toHaveLength(1);
    expect(await c.keys("12345")).toEqual([]);
    expect(c.wake).toMatchObject({ afterMs: 2_000 });
    replies.push({ text: "Found it: it has shipped." });
    const pound = await c.key("#");
    expect(pound[0]).toEqual({ type: "heard", text: "12345#", source: "keypad" });
    expect(toolsOf(pound)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    expect(c.outcome).toBe("corrected");
    expect(chat.rejected).toEqual([]);
  });

  it("reads back a number the caller never said that way (the LLM made it up, cut it short or joined pieces)", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({ toolCalls: [{ name: "lookup_order", arguments: { order_number: "55555" } }] });
    const events = await c.speak("I think it ends in five", 0.99);
    expect(said(events)).toContain("I heard 5 5 5 5 5.");
    expect(toolsOf(events)).toEqual([]);

    const d = new Conversation(engineWith().engine);
    await d.start();
    replies.push({ toolCalls: [{ name: "lookup_order", arguments: { order_number: "12345" } }] });
    expect(said(await d.speak("my order is 123456", 0.99))).toContain("I heard 1 2 3 4 5.");

    // Said clearly among other words: trusted.
    const e = new Conversation(engineWith().engine);
    await e.start();
    replies.push({ toolCalls: [{ name: "lookup_order", arguments: { order_number: "12345" } }] }, { text: "It has shipped." });
    const clear = await e.speak("it's order one two three four five and my zip is 90210", 0.95);
    expect(toolsOf(clear)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
  });

  it("sends a keypad entry to the LLM as the caller's turn when the pause timer fires", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    await c.keys("123");
    expect(c.wake).toEqual({ afterMs: 2_000, token: "kp3" });
    await c.key("4");
    const current = c.wake!.token;
    expect(current).toBe("kp4");
    // Nothing recognized meanwhile (a key's tone): the entry and its timer go on, and the LLM is not asked.
    expect(await c.speak("", 0)).toEqual([]);
    expect(c.outcome).toBe("keying");
    expect(await c.send({ kind: "wake", token: "kp3" })).toEqual([]);
    expect(c.outcome).toBe("wake_stale");
    replies.push({ text: "Thanks. Is 1 2 3 4 your whole order number?" });
    const events = await c.send({ kind: "wake", token: current });
    expect(events[0]).toEqual({ type: "heard", text: "1234", source: "keypad" });
    expect(chat.requests[0].lastUser).toBe("[keypad] 1234");
    expect(said(events)).toContain("whole order number");
  });

  it("says goodbye before end_call when the LLM did not, and ends the conversation", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({ toolCalls: [{ name: "end_call", arguments: { reason: "caller is done" } }] });
    const events = await c.speak("that's all, bye", 0.9);
    expect(events.filter((e) => e.type !== "heard" && e.type !== "hints").map((e) => e.type)).toEqual(["say", "tool"]);
    expect(said(events)).toBe("Thanks for calling. Goodbye.");
    expect(c.done).toBe(true);
    expect(chat.requests).toHaveLength(1);
  });

  it("a transfer that fails keeps the history in the API's order: the line said for it belongs to the answer that called it", async () => {
    const failingTransfer = (name: string, args: Record<string, unknown>): ToolOutcome =>
      name === "transfer_to_human" ? { ok: false, errorCode: "not_allowed", errorMessage: "no transfer target is configured", ms: 1 } : defaultTools(name, args);
    const c = new Conversation(engineWith().engine, failingTransfer);
    await c.start();
    replies.push({ toolCalls: [{ name: "transfer_to_human", arguments: { reason: "caller asked" } }] }, { text: "I can't transfer you right now, sorry." });
    const events = await c.speak("let me talk to a person", 0.9);
    expect(said(events)).toBe("Transferring you to an agent now. I can't transfer you right now, sorry.");
    expect(c.done).toBe(false);
    // What the second round sent: an assistant message with tool_calls is followed at once by its results.
    const sent = chat.requests[1].messages as Array<{ role: string; content?: unknown; tool_calls?: Array<{ id: string }>; tool_call_id?: string }>;
    const asked = sent.findIndex((m) => m.role === "assistant" && m.tool_calls?.length);
    expect(sent[asked].content).toBe("Transferring you to an agent now.");
    expect(sent[asked + 1]).toMatchObject({ role: "tool", tool_call_id: sent[asked].tool_calls![0].id });
    expect(sent.slice(asked + 2)).toEqual([]);
  });

  it("falls back to the scripted agent when the first token is too slow", async () => {
    const { engine, metrics } = engineWith({ firstTokenTimeoutMs: 300 });
    const c = new Conversation(engine);
    await c.start();
    replies.push({ text: "Too late.", firstTokenDelayMs: 2_000 });
    const started = Date.now();
    const events = await c.speak("I want to check my order status", 0.9);
    expect(Date.now() - started).toBeLessThan(1_500);
    expect(said(events)).toBe(SCRIPTED_ASK);
    expect(c.outcome).toBe("fallback");
    expect(c.state.scriptedOwns).toBe(true); // the scripted agent is collecting the number now
    expect((await metrics.llmFallbacks.get()).values).toEqual([
      expect.objectContaining({ labels: { agent: "order-line", reason: "first_token_timeout" }, value: 1 }),
    ]);
    // A full-length entry there waits for its pound; the scripted agent's wake ends it (order not found: it asks again).
    await c.keys("123456789012");
    expect(c.wake).toEqual({ afterMs: expect.any(Number), token: expect.stringMatching(/^scripted:/) });
    const woken = await c.send({ kind: "wake", token: c.wake!.token });
    expect(toolsOf(woken)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "123456789012" } }]);
    expect(c.state.scriptedOwns).toBe(true);
    // The number goes to the scripted agent that asked for it, without the LLM.
    const number = await c.keys("12345#");
    expect(toolsOf(number)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    expect(said(number)).toContain("has shipped with UPS");
    expect(chat.requests).toHaveLength(1);
    expect(c.state.scriptedOwns).toBe(false);
    // What the scripted agent said is in the history for when the LLM takes over again.
    expect(c.state.history.filter((m) => m.role === "assistant").map((m) => m.content)).toContain(SCRIPTED_ASK);
  });

  it("retries HTTP 500s, falls back, and opens the circuit so later inputs skip the LLM until a probe succeeds", async () => {
    const { engine, metrics, breaker } = engineWith({ breakerFailures: 2, cooldownMs: 400, maxRetries: 1 });
    const c = new Conversation(engine);
    await c.start();
    replies.push({ status: 500 }, { status: 500 }); // a request and its retry
    expect(said(await c.speak("hello there", 0.9))).toMatch(/^Sorry, I didn't catch that\./);
    expect(chat.requests).toHaveLength(2);
    replies.push({ status: 503 }, { status: 503 });
    await c.speak("hello again", 0.9);
    expect(chat.requests).toHaveLength(4);
    expect(breaker.state).toBe("open");
    expect((await metrics.llmCircuit.get()).values).toEqual([]); // set by the service wiring, not the engine

    const before = chat.requests.length;
    expect(said(await c.speak("agent please", 0.9))).toBe("Transferring you to an agent now.");
    expect(chat.requests).toHaveLength(before); // open circuit: straight to the scripted agent
    const reasons = (await metrics.llmFallbacks.get()).values.map((v) => [v.labels.reason, v.value]);
    expect(reasons).toEqual(expect.arrayContaining([["http_error", 2], ["circuit_open", 1]]));

    await new Promise((r) => setTimeout(r, 450));
    const d = new Conversation(engine);
    await d.start();
    replies.push({ text: "Hello! How can I help?" });
    expect(said(await d.speak("hi", 0.9))).toBe("Hello! How can I help?");
    expect(breaker.state).toBe("closed");
  });

  it("falls back at once on a rate limit whose Retry-After outlasts the first-token deadline, and retries one within it", async () => {
    const { engine, metrics } = engineWith({ firstTokenTimeoutMs: 1_500, maxRetries: 1 });
    const c = new Conversation(engine);
    await c.start();
    replies.push({ status: 429, message: "Rate limit reached", retryAfterSeconds: 20 });
    expect(said(await c.speak("hello there", 0.9))).toMatch(/^Sorry, I didn't catch that\./);
    expect(chat.requests).toHaveLength(1);
    // The endpoint's answer, reported as it came: not the first-token deadline run out waiting for a retry.
    const reasons = (await metrics.llmFallbacks.get()).values.map((v) => [v.labels.reason, v.value]);
    expect(reasons).toEqual([["http_error", 1]]);

    replies.push({ status: 503, message: "Overloaded", retryAfterSeconds: 0.2 }, { text: "Hello! How can I help?" });
    expect(said(await c.speak("hi", 0.9))).toBe("Hello! How can I help?");
    expect(chat.requests).toHaveLength(3);

    // 1 s would fit the deadline, but not after the 700 ms the answer took: no retry either.
    replies.push({ status: 503, message: "Overloaded", retryAfterSeconds: 1, delayMs: 700 });
    expect(said(await c.speak("hello again", 0.9))).toMatch(/^Sorry/);
    expect(chat.requests).toHaveLength(4);
    const later = (await metrics.llmFallbacks.get()).values.map((v) => [v.labels.reason, v.value]);
    expect(later).toEqual([["http_error", 2]]);
  });

  it("falls back when a stream chunk is malformed or the connection drops", async () => {
    const { engine, metrics } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    replies.push({ malformed: true });
    expect(said(await c.speak("order status", 0.9))).toBe(SCRIPTED_ASK);
    const d = new Conversation(engine);
    await d.start();
    replies.push({ reset: true, afterDeltas: ["Your order has ", "shipped. It ", "will"] });
    const events = await d.speak("hello", 0.9);
    // Something was already spoken: a short bridge, then the scripted answer.
    expect(said(events)).toMatch(/^Your order has shipped\. Sorry, I had a problem there\. Sorry, I didn't catch that\./);
    expect(d.state.history.filter((m) => m.role === "assistant").map((m) => m.content)).toEqual([
      GREETING,
      "Your order has shipped.",
      "Sorry, I had a problem there.",
      expect.stringMatching(/^Sorry, I didn't catch that/),
    ]);
    const reasons = (await metrics.llmFallbacks.get()).values.map((v) => v.labels.reason);
    expect(reasons).toEqual(expect.arrayContaining(["malformed"]));
    expect(reasons.length).toBe(2);
  });

  it("falls back when the stream ends cleanly mid-answer (no finish reason, no [DONE]): the cut answer is not taken as whole", async () => {
    const { engine, metrics } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    replies.push({ reset: true, clean: true, afterDeltas: ["Your order has ", "shipped. It ", "will"] });
    const events = await c.speak("hello", 0.9);
    expect(said(events)).toMatch(/^Your order has shipped\. Sorry, I had a problem there\. Sorry, I didn't catch that\./);
    expect(said(events)).not.toContain("will");
    expect((await metrics.llmFallbacks.get()).values.map((v) => [v.labels.reason, v.value])).toEqual([["truncated", 1]]);
    // An answer complete by its usage chunk alone (a server that names no finish reason) is still whole.
    replies.push({ text: "Thanks, bye for now.", finishReason: "" });
    expect(said(await c.speak("thanks", 0.9))).toBe("Thanks, bye for now.");
  });

  it("stops at once when the caller barges in, without falling back", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({ text: "Let me tell you all about our shipping policies, which are long, and detailed, and boring.", eventIntervalMs: 100 });
    setTimeout(() => c.abort.abort(), 350);
    const started = Date.now();
    const events = await c.speak("tell me about shipping", 0.9);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(c.outcome).toBe("cancelled");
    expect(said(events)).not.toContain("boring");
    expect(chat.requests).toHaveLength(1);
  });

  it("rewrites an interrupted answer in the history to what the caller heard", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({ text: "Your order has shipped. It will arrive Thursday. Anything else?" });
    await c.speak("where is my order", 0.9);
    const state = c.engine.interrupted(c.state, { turnId: "t2", heardText: "Your order has shipped." });
    expect(state.history.at(-1)).toMatchObject({ role: "assistant", content: "Your order has shipped.", interrupted: true });
    expect(c.engine.messages(state.history).at(-1)).toEqual({ role: "assistant", content: "Your order has shipped...." });
    expect(c.state.history.at(-1)).toMatchObject({ content: "Your order has shipped. It will arrive Thursday. Anything else?" });
  });
});

describe("LLM answers and tool calls that cannot be used as they came", () => {
  const counts = async (counter: { get(): Promise<{ values: Array<{ labels: Record<string, unknown>; value: number }> }> }) =>
    Object.fromEntries((await counter.get()).values.map((v) => [String(v.labels.reason ?? v.labels.agent), v.value]));

  it("stores a tool call with an invalid name or a repeated id so that later requests stay valid", async () => {
    const { engine } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    replies.push({
      toolCalls: [
        { id: "call_same", name: "multi_tool_use.parallel", arguments: { tool_uses: [] } },
        { id: "call_same", name: "lookup order!", arguments: {} },
        { id: "call_same", name: "lookup_order", arguments: { order_number: "12345" } },
      ],
    });
    replies.push((request) => {
      // Every call has its own result; the model is told the tools it made up do not exist.
      expect(request.toolResults.map((r) => [r.toolCallId, r.name, JSON.parse(r.content).error ?? "ok"])).toEqual([
        ["call_same", "invalid_tool_name", "unknown_tool"],
        ["call_same_2", "invalid_tool_name", "unknown_tool"],
        ["call_same_3", "lookup_order", "ok"],
      ]);
      expect(JSON.parse(request.toolResults[0].content).message).toBe("There is no tool named multi_tool_use.parallel.");
      return { text: "Order 1 2 3 4 5 has shipped." };
    });
    const events = await c.speak("where is order 12345", 0.95);
    expect(toolsOf(events)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    expect(said(events)).toBe("Order 1 2 3 4 5 has shipped.");
    // The next input still reaches the LLM: the history is a conversation the API accepts.
    replies.push({ text: "You're welcome. Anything else?" });
    expect(said(await c.speak("thanks", 0.95))).toBe("You're welcome. Anything else?");
    expect(chat.rejected).toEqual([]);
    expect(chat.requests).toHaveLength(3);
    expect(c.outcome).toBe("llm");
  });

  it("does not count requests the endpoint refused as invalid (400, 404, 413, 422) towards opening the circuit", async () => {
    const { engine, metrics, breaker } = engineWith({ breakerFailures: 2 });
    for (const status of [400, 404, 413, 422]) {
      const c = new Conversation(engine);
      await c.start();
      replies.push({ status });
      expect(said(await c.speak("I want to check my order status", 0.9))).toBe(SCRIPTED_ASK);
      expect(c.outcome).toBe("fallback");
    }
    expect(breaker.state).toBe("closed");
    expect(await counts(metrics.llmFallbacks)).toEqual({ http_error: 4 });
    // A server error still says the endpoint is unwell.
    const c = new Conversation(engine);
    await c.start();
    replies.push({ status: 500 }, { status: 500 }, { status: 503 }, { status: 503 });
    await c.speak("hello", 0.9);
    await c.speak("hello again", 0.9);
    expect(breaker.state).toBe("open");
  });

  it("gives up on an answer that stalls mid-stream, keep-alives or not: what was said stays, then the bridge and the scripted agent", async () => {
    const { engine, metrics } = engineWith({ stallTimeoutMs: 400 });
    const c = new Conversation(engine);
    await c.start();
    replies.push({ text: "Your order has shipped. It will arrive on Thursday.", stallAfterDeltas: 4, keepAliveMs: 50 });
    const started = Date.now();
    const events = await c.speak("where is my order", 0.9);
    expect(Date.now() - started).toBeLessThan(1_500); // not the 5 s overall deadline
    expect(said(events)).toBe(`Your order has shipped. Sorry, I had a problem there. ${SCRIPTED_ASK}`);
    expect(c.outcome).toBe("fallback");
    expect(c.state.history.filter((m) => m.role === "assistant").map((m) => m.content).slice(1, 3)).toEqual([
      "Your order has shipped.",
      "Sorry, I had a problem there.",
    ]);
    expect(await counts(metrics.llmFallbacks)).toEqual({ stalled: 1 });
    await waitFor(() => chat.requests[0].closedByClient, { what: "the stalled request to be closed" });
  });

  /** Two lookups streamed in one answer with the given numbering of their deltas: both run, then the answer is said. */
  async function twoParallelLookups(numbering: { omitToolCallIndex?: boolean; sameToolCallIndex?: boolean }) {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({
      toolCalls: [
        { id: "g1", name: "lookup_order", arguments: { order_number: "12345" }, argumentChunks: 3 },
        { id: "g2", name: "lookup_order", arguments: { order_number: "67890" }, argumentChunks: 2 },
      ],
      ...numbering,
      finishReason: "stop",
    });
    replies.push({ text: "The first has shipped; I cannot find the second." });
    const events = await c.speak("order one two three four five and order six seven eight nine zero", 0.95);
    expect(toolsOf(events)).toEqual([
      { type: "tool", name: "lookup_order", args: { order_number: "12345" } },
      { type: "tool", name: "lookup_order", args: { order_number: "67890" } },
    ]);
    expect(said(events)).toBe("The first has shipped; I cannot find the second.");
    expect(chat.rejected).toEqual([]);
  }

  it("takes tool call deltas without an index (Google Gemini's compatible endpoint), by their ids", async () => {
    await twoParallelLookups({ omitToolCallIndex: true });

    // A delta with neither an index nor an id, before any call started, belongs to no call.
    const { engine, metrics } = engineWith();
    const d = new Conversation(engine);
    await d.start();
    replies.push({ toolCalls: [{ id: "", name: "lookup_order", arguments: { order_number: "12345" } }], omitToolCallIndex: true });
    expect(said(await d.speak("I want to check my order status", 0.9))).toBe(SCRIPTED_ASK);
    expect(await counts(metrics.llmFallbacks)).toEqual({ malformed: 1 });
  });

  it("takes parallel tool calls that all come as index 0 (Ollama, some gateways) apart, by their ids", async () => {
    await twoParallelLookups({ sameToolCallIndex: true });
  });

  it("a conversation that outgrew the model's context is asked again with its later half, and stays cut for later turns", async () => {
    const { engine, metrics } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    // A model with a small window: more than 6 messages (system prompt included) do not fit.
    const CONTEXT = 6;
    const answer = (text: string) => (request: FakeChatRequest): FakeChatReply =>
      request.messages.length > CONTEXT
        ? { status: 400, code: "context_length_exceeded", message: "This model's maximum context length is 4096 tokens. However, your messages resulted in 5012 tokens." }
        : { text };
    for (let i = 1; i <= 3; i++) {
      replies.length = 0;
      replies.push(answer(`Answer ${i}.`), answer(`Answer ${i}.`)); // a second request only if the first is refused
      expect(said(await c.speak(`question number ${i}`, 0.95))).toBe(`Answer ${i}.`);
    }
    expect(await counts(metrics.llmFallbacks)).toEqual({});
    expect(await counts(metrics.llmHistoryShortened)).toEqual({ "order-line": 1 });
    // The cut was at a caller's line; the current question is always in it.
    const last = chat.requests.at(-1)!;
    expect(last.messages.filter((m) => m.role !== "system")[0].role).toBe("user");
    expect(last.lastUser).toBe("question number 3");

    // Refused even when cut (too long by itself: max_tokens over the window): the scripted agent answers, and the
    // conversation is kept as it was, not lost for nothing.
    const firstBefore = c.state.history[0];
    replies.length = 0;
    const tooLong = { status: 400, code: "context_length_exceeded", message: "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens." };
    replies.push(tooLong, tooLong);
    await c.speak("question number 4", 0.95);
    expect(await counts(metrics.llmFallbacks)).toEqual({ context_length: 1 });
    expect(c.state.history[0]).toEqual(firstBefore);
  });

  it("takes tool calls numbered after the answer's text (gateways that number content blocks): index 1 is the first call", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({ text: "One moment, let me check.", toolCalls: [{ name: "lookup_order", arguments: { order_number: "12345" } }], toolCallIndexFrom: 1 });
    replies.push({ text: "It has shipped." });
    const events = await c.speak("order one two three four five", 0.95);
    expect(toolsOf(events)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    expect(said(events)).toBe("One moment, let me check. It has shipped.");
  });

  it("sends a reasoning model (gpt-5, o-series) no temperature and a token cap with room for its reasoning; others the agent's", async () => {
    const agentTemperature = orderLine.llm!.temperature;
    expect(agentTemperature).toBeDefined();
    expect(agentTemperature).not.toBe(1);
    for (const model of ["gpt-5-mini", "o4-mini", "openai/gpt-5.1"]) {
      const c = new Conversation(engineWith({ model, maxTokens: 300 }).engine);
      await c.start();
      replies.push({ text: "It has shipped." });
      expect(said(await c.speak("where is my order", 0.95))).toBe("It has shipped.");
      const body = chat.requests.at(-1)!.body;
      expect({ model, temperature: body.temperature, max_tokens: body.max_tokens, max_completion_tokens: body.max_completion_tokens }).toEqual({
        model,
        temperature: undefined,
        max_tokens: undefined,
        max_completion_tokens: 300 + REASONING_TOKENS,
      });
    }
    // Another model on a compatible server (vLLM, Ollama): the agent's temperature, and max_tokens.
    const c = new Conversation(engineWith({ maxTokens: 300 }).engine);
    await c.start();
    replies.push({ text: "It has shipped." });
    await c.speak("where is my order", 0.95);
    expect(chat.requests.at(-1)!.body).toMatchObject({ temperature: agentTemperature, max_tokens: 300 });
    expect(chat.requests.at(-1)!.body.max_completion_tokens).toBeUndefined();
    // On OpenAI itself: max_completion_tokens.
    expect(generationLimits({ baseUrl: "https://api.openai.com/v1", model: "gpt-4.1-mini", temperature: 0.3, maxTokens: 300 })).toEqual({ temperature: 0.3, max_completion_tokens: 300 });
    expect(generationLimits({ baseUrl: "", model: "gpt-4.1-mini", maxTokens: 300 })).toEqual({ max_completion_tokens: 300 });
  });

  it("takes a tool call whose name comes again in every delta (some compatible servers) as one name", async () => {
    const c = new Conversation(engineWith().engine);
    await c.start();
    replies.push({ toolCalls: [{ name: "lookup_order", arguments: { order_number: "12345" }, argumentChunks: 3 }], repeatToolCallName: true });
    replies.push({ text: "It has shipped." });
    const events = await c.speak("order one two three four five", 0.95);
    expect(toolsOf(events)).toEqual([{ type: "tool", name: "lookup_order", args: { order_number: "12345" } }]);
    expect(said(events)).toBe("It has shipped.");
  });

  it("speaks at most 1,200 characters of one answer, stops the stream there, and keeps what was said in the history", async () => {
    const { engine, metrics, warnings } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    replies.push({ text: "This is one more sentence of a very long answer. ".repeat(200), eventIntervalMs: 1 });
    const events = await c.speak("tell me everything", 0.9);
    const chunks = events.filter((e): e is Extract<Event, { type: "say" }> => e.type === "say").map((e) => e.text);
    const spokenChars = chunks.reduce((sum, text) => sum + text.length, 0);
    expect(spokenChars).toBeLessThanOrEqual(1_200);
    expect(spokenChars).toBeGreaterThan(1_000);
    expect(c.outcome).toBe("llm");
    expect(c.state.history.at(-1)).toEqual({ role: "assistant", content: chunks.join(" "), turnId: "t2" });
    expect(await counts(metrics.llmAnswersCut)).toEqual({ "order-line": 1 });
    expect(warnings.map((w) => w.msg)).toContain("llm answer too long; only its beginning was spoken");
    await waitFor(() => chat.requests[0].closedByClient, { what: "the request to be stopped" });
  });

  it("answers with the scripted agent when the LLM's answer has nothing to say (only emoji, punctuation or markup)", async () => {
    const { engine, metrics } = engineWith();
    for (const text of ["😀🚀👍", "... !!! ** ---"]) {
      const c = new Conversation(engine);
      await c.start();
      replies.push({ text });
      const events = await c.speak("I want to check my order status", 0.9);
      expect(said(events)).toBe(SCRIPTED_ASK); // no bridge: nothing was said before it
      expect(c.outcome).toBe("fallback");
      expect(c.state.history.filter((m) => m.role === "assistant").map((m) => m.content)).toEqual([GREETING, SCRIPTED_ASK]);
    }
    expect(await counts(metrics.llmFallbacks)).toEqual({ empty: 2 });
  });

  it("refuses tool arguments over 16 KB without calling the tool, and keeps only a placeholder of them in the history", async () => {
    const { engine } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    replies.push({ toolCalls: [{ name: "lookup_order", arguments: { order_number: "12345", note: "x".repeat(2_000_000) }, argumentChunks: 20 }] });
    replies.push((request) => {
      expect(JSON.parse(request.toolResults[0].content)).toEqual({ error: "invalid_arguments", message: expect.stringContaining("the limit is 16384") });
      return { text: "Sorry, something went wrong. What is your order number?" };
    });
    const events = await c.speak("where is order 12345", 0.95);
    expect(toolsOf(events)).toEqual([]);
    expect(said(events)).toBe("Sorry, something went wrong. What is your order number?");
    const stored = c.state.history.flatMap((m) => (m.role === "assistant" ? (m.toolCalls ?? []) : []));
    expect(stored).toHaveLength(1);
    expect(stored[0].arguments.length).toBeLessThan(100);
    expect(JSON.parse(stored[0].arguments)).toEqual({ omitted: expect.any(String) });
    expect(chat.requests[1].request.body.length).toBeLessThan(20_000);
  });

  it("keeps tool arguments that are no JSON object as valid JSON in the history (servers parse earlier calls again)", async () => {
    const { engine } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    replies.push({ toolCalls: [{ name: "lookup_order", arguments: '{"order_number": "123",' }, { name: "lookup_order", arguments: "" }, { name: "lookup_order", arguments: "[1]" }] });
    replies.push({ text: "Sorry, what is your order number?" });
    await c.speak("where is order 123", 0.95);
    replies.push({ text: "Let me check." });
    await c.speak("one two three", 0.95);
    const sent = JSON.parse(chat.requests.at(-1)!.request.body) as { messages: Array<{ tool_calls?: Array<{ function: { arguments: string } }> }> };
    const args = sent.messages.flatMap((m) => m.tool_calls ?? []).map((call) => JSON.parse(call.function.arguments));
    expect(args.slice(0, 3)).toEqual([{ invalid_json: '{"order_number": "123",' }, {}, { invalid_json: "[1]" }]);
  });

  it("logs and counts every tool call it refuses itself, by reason", async () => {
    const { engine, metrics, warnings } = engineWith();
    const c = new Conversation(engine);
    await c.start();
    replies.push({
      toolCalls: [
        { name: "delete_everything", arguments: {} },
        { name: "lookup_order", arguments: "{not json" },
        { name: "lookup_order", arguments: { order_number: "12345", note: "x".repeat(20_000) } },
      ],
    });
    replies.push({ text: "Sorry, let me try that again." });
    await c.speak("where is order 12345", 0.95);
    expect(await counts(metrics.llmToolCallsRefused)).toEqual({ unknown_tool: 1, invalid_arguments: 1, arguments_too_large: 1 });
    expect(warnings.filter((w) => w.msg === "llm tool call refused").map((w) => [w.fields?.reason, w.fields?.tool])).toEqual([
      ["unknown_tool", "delete_everything"],
      ["invalid_arguments", "lookup_order"],
      ["arguments_too_large", "lookup_order"],
    ]);
  });
});

describe("LLM settings", () => {
  it("runs an agent on the LLM only when an endpoint or key is known, with the environment winning over the file", () => {
    const settings = (env: Record<string, string>) => {
      const reader = new EnvReader(env);
      const config = readDialogConfig(reader);
      reader.done();
      return llmSettingsFor(orderLine, config);
    };
    expect(settings({})).toBeUndefined();
    expect(settings({ LLM_API_KEY: "k" })).toEqual({
      baseUrl: "",
      apiKey: "k",
      model: "gpt-4o-mini",
      temperature: 0.3,
      maxTokens: 300,
      firstTokenTimeoutMs: 2_500,
      stallTimeoutMs: 3_000,
      timeoutMs: 15_000,
      maxRetries: 1,
    });
    expect(
      settings({
        LLM_BASE_URL: "http://vllm:8000/v1",
        LLM_MODEL: "llama",
        LLM_TEMPERATURE: "0",
        LLM_FIRST_TOKEN_TIMEOUT_MS: "900",
        LLM_STALL_TIMEOUT_MS: "700",
        LLM_TIMEOUT_MS: "8000",
      }),
    ).toMatchObject({ baseUrl: "http://vllm:8000/v1", apiKey: "unused", model: "llama", temperature: 0, firstTokenTimeoutMs: 900, stallTimeoutMs: 700, timeoutMs: 8_000 });
    const noLlm = { ...orderLine, llm: undefined };
    const reader = new EnvReader({ LLM_API_KEY: "k" });
    expect(llmSettingsFor(noLlm, readDialogConfig(reader))).toBeUndefined();
    const bad = new EnvReader({ LLM_BASE_URL: "not a url", LLM_TEMPERATURE: "5", KEYPAD_PAUSE_MS: "1", DIGITS_CONFIRM_CONFIDENCE: "2" });
    readDialogConfig(bad);
    expect(() => bad.done()).toThrow(/LLM_BASE_URL must be a http\/https URL.*KEYPAD_PAUSE_MS.*DIGITS_CONFIRM_CONFIDENCE.*LLM_TEMPERATURE/);
  });

  it("continues a call whose saved state is the other engine's (the LLM was switched on or off mid-call)", async () => {
    const { engine } = engineWith();
    const scripted = new ScriptedEngine(orderLine);
    const io: TurnIO = { heard() {}, say: () => "t9", callTool: async () => ({ ok: true, result: null, ms: 0 }), setHints() {} };
    const menu = await scripted.turn({ kind: "start" }, scripted.initialState(), io);
    const ask = await scripted.turn({ kind: "keypad", digit: "1", atMs: 1 }, menu.state, io);
    // Mid-entry in the scripted agent: the LLM agent lets it finish.
    const next = await engine.turn({ kind: "keypad", digit: "5", atMs: 1 }, ask.state as unknown as LlmState, io);
    expect(next.state.scriptedOwns).toBe(true);
    expect(next.state.scripted.keypad).toBe("5");
    const back = await scripted.turn({ kind: "keypad", digit: "5", atMs: 1 }, next.state as never, io);
    expect(back.state.keypad).toBe("55");
    // The no-input wait is the scripted state's while it keeps the call (order-line's ask_order: 15 s), else the agent's.
    expect(engine.noInputMs(next.state)).toBe(15_000);
    expect(engine.noInputMs({ ...next.state, scriptedOwns: false })).toBeUndefined();
  });
});

describe("clause chunker", () => {
  it("cuts complete sentences and long clauses as they stream, never inside a number", async () => {
    const { ClauseChunker } = await import("./chunker.js");
    const chunker = new ClauseChunker();
    const out: string[] = [];
    for (const piece of ["It costs 3", ".50 dollars", ". Sure, ", "we ship to most countries in Europe, ", "and **fast**", "!\n- Next day", " delivery"]) {
      out.push(...chunker.push(piece));
    }
    out.push(chunker.flush());
    expect(out).toEqual(["It costs 3.50 dollars.", "Sure, we ship to most countries in Europe,", "and fast!", "Next day delivery"]);
    const long = new ClauseChunker();
    expect(long.push("word ".repeat(60))).toEqual([("word ".repeat(44)).trim()]);
  });

  it("trims the history at a caller's line, and never to nothing when the window holds none", () => {
    const round = (i: number): LlmState["history"] => [
      { role: "assistant", content: "", toolCalls: [{ id: `c${i}`, name: "lookup_order", arguments: "{}" }] },
      { role: "tool", toolCallId: `c${i}`, content: "{}" },
    ];
    const state = { history: [{ role: "user", content: "first" }, ...Array.from({ length: 20 }, (_, i) => round(i)).flat(), { role: "user", content: "second" }, ...Array.from({ length: 30 }, (_, i) => round(100 + i)).flat()] } as LlmState;
    trimHistory(state);
    // 81 messages: the window of 60 holds no caller line, so it starts at the caller's last one.
    expect(state.history[0]).toEqual({ role: "user", content: "second" });
    expect(state.history).toHaveLength(61);
  });

  it("does not cut a sentence at a title, a common abbreviation or a list item's number", async () => {
    const { ClauseChunker } = await import("./chunker.js");
    const chunker = new ClauseChunker();
    const chunks = chunker.push("Dr. Smith will see you at 9 a.m. tomorrow. Bring your card, e.g. a library card. Steps:\n1. Park\n2. Check in\n");
    expect(chunks).toEqual(["Dr. Smith will see you at 9 a.m. tomorrow.", "Bring your card, e.g. a library card.", "Steps:", "1. Park", "2. Check in"]);
    expect(chunker.push("Call Mr. Jones. ")).toEqual(["Call Mr. Jones."]);
  });

  it("drops markup tags and says a web address as its site", async () => {
    const { speakable } = await import("./chunker.js");
    expect(speakable('Let me check. <break time="2s"/> <emphasis level="strong">Done</emphasis>.')).toBe("Let me check. Done.");
    expect(speakable("See https://www.example.com/orders/12345?ref=a for details.")).toBe("See example.com for details.");
    expect(speakable("Is 3 < 5 and 7 > 2?")).toBe("Is 3 < 5 and 7 > 2?");
  });

  it("says the phone's keys named in a sentence, and still drops markdown's stars, bullets and headings", async () => {
    const { speakable } = await import("./chunker.js");
    expect(speakable("Press * then 1.")).toBe("Press star then 1.");
    expect(speakable("Key in your order number, then press #.")).toBe("Key in your order number, then press pound.");
    expect(speakable("Enter 12345# now, or dial *67 first.")).toBe("Enter 12345 pound now, or dial star 67 first.");
    expect(speakable("Press the * key or the '#' key")).toBe("Press the star key or the 'pound' key");
    expect(speakable("# Options\n* first item\n* second item")).toBe("Options first item second item");
    expect(speakable("This is **bold** and *this* is not a key.")).toBe("This is bold and this is not a key.");
    expect(speakable("Written in C# or F#.")).toBe("Written in C# or F#.");
  });
});
