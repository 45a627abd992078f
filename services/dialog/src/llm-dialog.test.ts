// The dialog service running agents on an LLM (the fake OpenAI server, through the real SDK), with real NATS,
// Redis and the tools service: streaming to speech, tools and webhooks, keypad entries, fillers, barge-in,
// fallback to the scripted agent.
import { copyFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Bus, OVERTAKEN_CANCEL_REASON, silentLogger, subjects } from "@voicebot/bus";
import {
  AudioEncoding,
  CallStarted,
  CancelTurn,
  DialogInput,
  FalseInterruption,
  KeypadPress,
  PlaybackEvent,
  PlaybackEvent_Kind,
  SpeakRequest,
  Transcript,
} from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import {
  addFakeChatCompletions,
  metricSum,
  startFakeOpenAI,
  startNats,
  startRedis,
  waitFor,
  type FakeChat,
  type FakeChatReply,
  type FakeChatRequest,
  type FakeOpenAI,
  type ServerHandle,
} from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { definition as toolsDefinition } from "../../tools/src/service.js";
import { definition } from "./service.js";

let nats: ServerHandle;
let redis: ServerHandle;
let fake: FakeOpenAI;
let chat: FakeChat;
let webhook: http.Server;
let webhookUrl: string;
const webhookCalls: Array<{ headers: http.IncomingHttpHeaders; body: unknown }> = [];
let webhookDelayMs = 0;
let dialog: ServiceHandle;
let tools: ServiceHandle;
let bus: Bus;
let store: CallStore;
let agentsDir: string;
const speaks: SpeakRequest[] = [];
let counter = 0;
let replies: Array<FakeChatReply | ((request: FakeChatRequest) => FakeChatReply)> = [];

/** The points webhook both points agents call. */
const CHECK_POINTS_TOOL = `
tools:
  - name: check_points
    description: Loyalty points of a member.
    parameters:
      type: object
      properties:
        member_id: { type: string, pattern: "^[0-9]{6}$" }
      required: [member_id]
      additionalProperties: false
    idempotent: true
    timeoutMs: 3000
    webhook:
      url: "\${POINTS_URL}/points"
      method: POST
      headers: { Authorization: "Bearer \${POINTS_TOKEN}" }
`;

const WEBHOOK_AGENT = `
greeting: { say: "Points line.", goto: menu }
reprompt: Say points.
states:
  menu:
    prompt: Say points.
toolFiller: One moment while I check that.
llm:
  systemPrompt: You answer questions about loyalty points.
  greeting: Hi, this is the points line.
${CHECK_POINTS_TOOL}`;

/** The points line without an LLM: "let me check" said before the webhook tool, its answer after. */
const SCRIPTED_POINTS_AGENT = `
greeting: { say: "Points line.", goto: menu }
reprompt: Say points.
intents:
  - name: points
    phrases: [points]
    do:
      say: Let me check your points for you.
      tool: { name: check_points, args: { member_id: "123456" } }
      results:
        - say: You have {{result.points}} points.
states:
  menu:
    prompt: Say points.
${CHECK_POINTS_TOOL}`;

beforeAll(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  fake = await startFakeOpenAI({ apiKey: "llm-test-key" });
  chat = addFakeChatCompletions(fake, {
    reply: (request) => {
      const next = replies.shift();
      if (!next) return { status: 500, message: "no reply scripted" };
      return typeof next === "function" ? next(request) : next;
    },
  });
  webhook = http.createServer((req, res) => {
    let data = "";
    req.on("data", (c) => (data += c));
    req.on("end", () => {
      webhookCalls.push({ headers: req.headers, body: JSON.parse(data || "null") });
      setTimeout(() => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ member_id: "123456", points: 4200 })), webhookDelayMs);
    });
  });
  await new Promise<void>((resolve) => webhook.listen(0, "127.0.0.1", resolve));
  webhookUrl = `http://127.0.0.1:${(webhook.address() as AddressInfo).port}`;

  agentsDir = await mkdtemp(path.join(os.tmpdir(), "vb-llm-agents-"));
  await copyFile(fileURLToPath(new URL("../agents/order-line.yaml", import.meta.url)), path.join(agentsDir, "order-line.yaml"));
  await writeFile(path.join(agentsDir, "points.yaml"), WEBHOOK_AGENT);
  await writeFile(path.join(agentsDir, "points-scripted.yaml"), SCRIPTED_POINTS_AGENT);

  const env = { NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: "0", LOG_LEVEL: "error", AGENTS_DIR: agentsDir };
  tools = await startService(toolsDefinition, { ...env, POINTS_URL: webhookUrl, POINTS_TOKEN: "s3cret-token" });
  dialog = await startService(definition, {
    ...env,
    LLM_BASE_URL: fake.baseUrl,
    LLM_API_KEY: "llm-test-key",
    LLM_MODEL: "fake-model",
    LLM_FIRST_TOKEN_TIMEOUT_MS: "1500",
    LLM_BREAKER_FAILURES: "100",
    TOOL_FILLER_MS: "300",
    KEYPAD_PAUSE_MS: "400",
    DIALOG_LEASE_WAIT_MS: "100",
    DIALOG_CONCURRENCY: "2", // so that one call's waiting inputs could hold up every other call (they must not)
  });
  bus = await Bus.connect({ servers: nats.url, name: "llm-dialog-test", log: silentLogger, registry: new Registry() });
  store = CallStore.connect(redis.url);
  bus.subscribe(subjects.ttsSpeak, SpeakRequest, (m) => void speaks.push(m), { name: "test.speak" });
  await bus.nc.flush();
});

afterAll(async () => {
  await bus?.close();
  await store?.close();
  await dialog?.stop();
  await tools?.stop();
  await fake?.stop();
  await new Promise((resolve) => webhook?.close(resolve));
  await Promise.all([nats?.stop(), redis?.stop()]);
  if (agentsDir) await rm(agentsDir, { recursive: true, force: true });
});

beforeEach(() => {
  replies = [];
  chat.requests.length = 0;
  webhookCalls.length = 0;
  webhookDelayMs = 0;
});

class TestCall {
  readonly id = `CAllm${++counter}x${Date.now()}`;
  private dtmfSeq = 0;
  private utterance = 0;

  async start(agent = "order-line"): Promise<void> {
    await store.createCall({ callSid: this.id, provider: "twilio", streamSid: "MZ1", agent, from: "+15551234567", to: "+15557654321", startedAt: new Date().toISOString() });
    const started = CallStarted.create({ callId: this.id, provider: "twilio", agent, botFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 }, startedAtMs: Date.now() });
    await this.publish({ $case: "callStarted", value: started }, `${this.id}:start`);
  }

  async key(digit: string): Promise<void> {
    await this.publish({ $case: "keypad", value: KeypadPress.create({ callId: this.id, digit, atMs: Date.now() }) }, `${this.id}:dtmf:${++this.dtmfSeq}`);
  }

  async say(text: string, confidence = 0.95): Promise<void> {
    const utteranceId = `u${++this.utterance}`;
    const transcript = Transcript.create({ callId: this.id, utteranceId, text, isFinal: true, confidence, engine: "test", speechEndMs: Date.now() - 300, finalAtMs: Date.now() });
    await this.publish({ $case: "transcript", value: transcript }, `${this.id}:utt:${utteranceId}`);
  }

  async publish(input: DialogInput["input"], msgId: string): Promise<void> {
    const message = DialogInput.create({ callId: this.id, inputId: msgId, atMs: Date.now() });
    message.input = input;
    await bus.publishDurable(subjects.dialogInput(this.id), DialogInput, message, msgId, this.id);
  }

  chunks(turnId: string): SpeakRequest[] {
    return speaks.filter((s) => s.callId === this.id && s.turnId === turnId).sort((a, b) => a.chunkSeq - b.chunkSeq);
  }

  turnIds(): string[] {
    return [...new Set(speaks.filter((s) => s.callId === this.id).map((s) => s.turnId))];
  }

  /** Waits until every chunk of the turn arrived; returns its text (empty closing chunks left out). */
  async turn(turnId: string, timeoutMs = 10_000): Promise<string> {
    const chunks = await waitFor(
      () => {
        const got = this.chunks(turnId);
        const last = got.find((c) => c.turnDone);
        return last && got.length === last.chunkSeq + 1 && got.every((c, i) => c.chunkSeq === i) ? got : undefined;
      },
      { what: `turn ${turnId} of ${this.id}`, timeoutMs },
    );
    return chunks.map((c) => c.text).filter(Boolean).join(" ");
  }

  async record() {
    return (await store.getRecord(this.id))!;
  }
}

const metric = (name: string, labels: Record<string, string> = {}) => metricSum(dialog.ctx.registry, name, labels);

const GREETING = "Thanks for calling the demo shop. How can I help you today?";

describe("dialog on an LLM", () => {
  it("opens a connection to the LLM endpoint at start, with its key, so the first turn waits for no handshake", async () => {
    // LLM_KEEP_WARM_S (default 300): a free GET /models at start and after every idle stretch (api-client.test.ts).
    await waitFor(() => fake.requests.some((r) => r.method === "GET" && r.path === "/v1/models"), { what: "the keep-warm request" });
    const ping = fake.requests.find((r) => r.method === "GET" && r.path === "/v1/models")!;
    expect(ping.headers.authorization).toBe("Bearer llm-test-key");
    expect(await metric("voicebot_dialog_llm_keep_warm_failures_total")).toBe(0);
  });

  it("streams an answer that used lookup_order into chunked SpeakRequests with the LLM's first-token time", async () => {
    const call = new TestCall();
    await call.start();
    expect(await call.turn("t1")).toBe(GREETING);
    expect(call.chunks("t1").every((c) => c.cacheable)).toBe(true);

    replies.push({ toolCalls: [{ name: "lookup_order", arguments: { order_number: "12345" } }], firstTokenDelayMs: 60 });
    replies.push((request) => ({
      text: `Order 1 2 3 4 5 has shipped with ${JSON.parse(request.toolResults[0].content).carrier}, and it should arrive on ${JSON.parse(request.toolResults[0].content).eta_text}. Anything else?`,
      firstTokenDelayMs: 60,
      eventIntervalMs: 10,
    }));
    await call.say("where is order one two three four five", 0.93);
    const reply = await call.turn("t2");
    expect(reply).toMatch(/^Order 1 2 3 4 5 has shipped with UPS, and it should arrive on \w+day, \w+ \d+\. Anything else\?$/);
    const chunks = call.chunks("t2");
    expect(chunks.length).toBeGreaterThanOrEqual(2);
    expect(chunks.map((c) => c.turnDone)).toEqual([...chunks.slice(1).map(() => false), true]);
    for (const chunk of chunks) {
      expect(chunk.cacheable).toBe(false);
      expect(chunk.timing!.llmFirstTokenMs).toBeGreaterThanOrEqual(55);
      expect(chunk.timing!.toolMs).toBeGreaterThanOrEqual(0);
    }
    await waitFor(async () => (await call.record()).transcript.length === 3, { what: "three transcript entries" });
    const record = await call.record();
    expect(record.transcript.map((e) => [e.role, e.text])).toEqual([
      ["bot", GREETING],
      ["caller", "where is order one two three four five"],
      ["bot", reply],
    ]);
    expect(record.toolCalls).toEqual([expect.objectContaining({ name: "lookup_order", ok: true, arguments: { order_number: "12345" } })]);
    expect(chat.rejected).toEqual([]);
    expect(await metric("voicebot_dialog_llm_requests_total", { outcome: "ok" })).toBeGreaterThanOrEqual(2);
    const firstToken = (await dialog.ctx.registry.getSingleMetric("voicebot_dialog_llm_first_token_seconds")!.get()).values;
    expect(firstToken.find((v) => (v as { metricName?: string }).metricName === "voicebot_dialog_llm_first_token_seconds_count")!.value).toBeGreaterThanOrEqual(2);
  });

  it("sends a keypad entry that ends with a pause to the LLM (durable timer input)", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    replies.push({ text: "Thanks, let me check order 1 2 3 4 5." });
    const sent = Date.now();
    for (const d of "12345") await call.key(d);
    expect(await call.turn("t2")).toBe("Thanks, let me check order 1 2 3 4 5.");
    expect(Date.now() - sent).toBeGreaterThanOrEqual(400);
    expect(chat.requests.map((r) => r.lastUser)).toEqual(["[keypad] 12345"]);
    const record = await call.record();
    expect(record.transcript.filter((e) => e.role === "caller")).toEqual([expect.objectContaining({ text: "12345", source: "keypad" })]);
  });

  it("calls a webhook tool with its secret header, says a filler while it is slow, and answers with its result", async () => {
    webhookDelayMs = 800;
    const call = new TestCall();
    await call.start("points");
    expect(await call.turn("t1")).toBe("Hi, this is the points line.");
    replies.push({ toolCalls: [{ name: "check_points", arguments: { member_id: "123456" } }] });
    replies.push((request) => ({ text: `You have ${JSON.parse(request.toolResults[0].content).points} points.` }));
    await call.say("how many points does member 123456 have");
    expect(await call.turn("t2")).toBe("One moment while I check that.");
    expect(call.chunks("t2")).toEqual([expect.objectContaining({ chunkSeq: 0, turnDone: true, cacheable: true })]);
    expect(await call.turn("t3")).toBe("You have 4200 points.");
    expect(webhookCalls).toHaveLength(1);
    expect(webhookCalls[0].body).toEqual({ member_id: "123456" });
    expect(webhookCalls[0].headers.authorization).toBe("Bearer s3cret-token");
    expect(webhookCalls[0].headers["idempotency-key"]).toMatch(/check_points/);
    expect(webhookCalls[0].headers["x-voicebot-call-id"]).toBe(call.id);
    expect(await metric("voicebot_dialog_tool_fillers_total")).toBeGreaterThanOrEqual(1);
    const record = await call.record();
    expect(record.toolCalls).toEqual([expect.objectContaining({ name: "check_points", ok: true, result: { member_id: "123456", points: 4200 } })]);
    expect(JSON.stringify(record)).not.toContain("s3cret-token");
  });

  it("gives the LLM a schema violation as the tool result, without calling the webhook", async () => {
    const call = new TestCall();
    await call.start("points");
    await call.turn("t1");
    replies.push({ toolCalls: [{ name: "check_points", arguments: { member_id: "12" } }] });
    replies.push((request) => {
      const result = JSON.parse(request.toolResults[0].content);
      expect(result).toMatchObject({ error: "invalid_arguments", message: expect.stringMatching(/member_id.*pattern/) });
      return { text: "Member numbers have six digits. What is yours?" };
    });
    await call.say("member twelve");
    expect(await call.turn("t2")).toBe("Member numbers have six digits. What is yours?");
    expect(webhookCalls).toHaveLength(0);
  });

  it("stops an answer the caller talks over, and keeps only what they heard in the record and the history", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    const long = "Our shipping policy is simple. Orders ship within two days. Delivery takes three to five days. Express delivery takes one day. Returns are free for thirty days.";
    replies.push({ text: long, eventIntervalMs: 120 });
    await call.say("tell me about shipping");
    await waitFor(() => call.chunks("t2").length >= 1, { what: "the first chunk" });
    const first = call.chunks("t2")[0].text;
    expect(first).toBe("Our shipping policy is simple.");
    bus.publish(subjects.cancel(call.id), CancelTurn, CancelTurn.create({ callId: call.id, turnId: "t2", reason: "barge-in" }), call.id);
    await waitFor(async () => (await metric("voicebot_dialog_cancelled_turns_total")) >= 1, { what: "the turn to be cancelled" });
    const countAfterCancel = call.chunks("t2").length;
    await new Promise((r) => setTimeout(r, 400));
    expect(call.chunks("t2").length).toBe(countAfterCancel);
    expect(call.chunks("t2").map((c) => c.text).join(" ")).not.toContain("Returns are free");

    const interrupted = PlaybackEvent.create({ callId: call.id, turnId: "t2", kind: PlaybackEvent_Kind.KIND_INTERRUPTED, chunkSeq: 0, atMs: Date.now(), heardText: first });
    await call.publish({ $case: "playback", value: interrupted }, `${call.id}:int:t2`);
    await waitFor(async () => (await metric("voicebot_dialog_barge_ins_total")) >= 1, { what: "the barge-in to be applied" });
    const record = await call.record();
    expect(record.transcript.map((e) => [e.role, e.text, e.interrupted])).toEqual([
      ["bot", GREETING, undefined],
      ["caller", "tell me about shipping", undefined],
      ["bot", first, true],
    ]);

    replies.push({ text: "Sure, returns are free for thirty days." });
    await call.say("what about returns");
    expect(await call.turn("t3")).toBe("Sure, returns are free for thirty days.");
    const history = chat.requests.at(-1)!.messages;
    expect(history.slice(-3)).toEqual([
      { role: "user", content: "tell me about shipping" },
      { role: "assistant", content: `${first}...` },
      { role: "user", content: "what about returns" },
    ]);
  });

  it("a cough that stopped an answer mid-generation (a false interruption): the LLM is asked for the rest of it", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    const long = "Our shipping policy is simple. Orders ship within two days. Delivery takes three to five days. Express delivery takes one day.";
    replies.push({ text: long, eventIntervalMs: 120 });
    await call.say("tell me about shipping");
    await waitFor(() => call.chunks("t2").length >= 1, { what: "the first chunk" });
    const cancelled = await metric("voicebot_dialog_cancelled_turns_total");
    bus.publish(subjects.cancel(call.id), CancelTurn, CancelTurn.create({ callId: call.id, turnId: "t2", reason: "barge_in" }), call.id);
    await waitFor(async () => (await metric("voicebot_dialog_cancelled_turns_total")) > cancelled, { what: "the turn to be cancelled" });
    const sent = call.chunks("t2").map((c) => c.text).join(" ");
    expect(sent).not.toContain("Express delivery");
    const heard = "Our shipping policy is simple.";
    const interrupted = PlaybackEvent.create({ callId: call.id, turnId: "t2", kind: PlaybackEvent_Kind.KIND_INTERRUPTED, chunkSeq: 0, atMs: Date.now(), heardText: heard });
    await call.publish({ $case: "playback", value: interrupted }, `${call.id}:int:t2`);
    const asked = chat.requests.length;
    replies.push({ text: "Express delivery takes one day." });
    await call.publish({ $case: "falseInterruption", value: FalseInterruption.create({ turnId: "t2", utteranceId: "7" }) }, `${call.id}:false-int:MZ1:7`);
    // What was sent and not heard is said again, then the LLM's rest of the answer.
    const unheard = sent.slice(heard.length).trim();
    expect(await call.turn("t3")).toBe([unheard, "Express delivery takes one day."].filter(Boolean).join(" "));
    expect(chat.requests.length).toBe(asked + 1);
    const messages = chat.requests.at(-1)!.messages;
    expect(messages.at(-1)).toMatchObject({ role: "user", content: expect.stringMatching(/^\(A noise on the line cut your answer off/) });
    expect(messages.some((m: { role: string; content?: unknown }) => m.role === "assistant" && m.content === `${heard}...`)).toBe(true);
  });

  it("a turn ingress dropped unplayed (its audio came too late) goes into the history as unheard, and is no barge-in", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    replies.push({ text: "Orders ship within two days." });
    await call.say("tell me about shipping");
    expect(await call.turn("t2")).toBe("Orders ship within two days.");
    const [bargeIns, overtaken] = [await metric("voicebot_dialog_barge_ins_total"), await metric("voicebot_dialog_unplayed_turns_total", { reason: "overtaken" })];
    const dropped = PlaybackEvent.create({ callId: call.id, turnId: "t2", kind: PlaybackEvent_Kind.KIND_INTERRUPTED, chunkSeq: -1, atMs: Date.now(), heardText: "", reason: "overtaken" });
    await call.publish({ $case: "playback", value: dropped }, `${call.id}:int:t2`);
    await waitFor(async () => (await metric("voicebot_dialog_unplayed_turns_total", { reason: "overtaken" })) === overtaken + 1, { what: "the unplayed turn to be applied" });
    expect(await metric("voicebot_dialog_barge_ins_total")).toBe(bargeIns);
    replies.push({ text: "Returns are free." });
    await call.say("what about returns");
    expect(await call.turn("t3")).toBe("Returns are free.");
    // The caller never heard t2's answer: the LLM is not told it was said.
    const history = chat.requests.at(-1)!.messages;
    expect(history.some((m: { content?: unknown }) => m.content === "Orders ship within two days.")).toBe(false);
  });

  describe("a cough over 'let me check' while the tool runs (a false interruption): the tool's answer is not lost", () => {
    /** Says "points", cuts the "let me check" turn (t2) while the 600 ms webhook runs, and lets the turn finish. */
    const cutDuringTool = async (call: TestCall, heardText: string) => {
      webhookDelayMs = 600;
      const cancelled = await metric("voicebot_dialog_cancelled_turns_total");
      await call.say("points");
      await call.turn("t2");
      bus.publish(subjects.cancel(call.id), CancelTurn, CancelTurn.create({ callId: call.id, turnId: "t2", reason: "barge_in" }), call.id);
      await waitFor(async () => (await metric("voicebot_dialog_cancelled_turns_total")) > cancelled, { what: "the turn to finish, cancelled", timeoutMs: 5_000 });
      expect(webhookCalls).toHaveLength(1);
      const interrupted = PlaybackEvent.create({ callId: call.id, turnId: "t2", kind: PlaybackEvent_Kind.KIND_INTERRUPTED, chunkSeq: 0, atMs: Date.now(), heardText });
      await call.publish({ $case: "playback", value: interrupted }, `${call.id}:int:t2`);
    };
    /** The sound that cut it was too short to be speech. */
    const falseInterruption = (call: TestCall) =>
      call.publish({ $case: "falseInterruption", value: FalseInterruption.create({ turnId: "t2", utteranceId: "9" }) }, `${call.id}:false-int:MZ1:9`);

    it("scripted: the unheard rest of the turn, then the answer the tool's result gave while the bot was cut off", async () => {
      const call = new TestCall();
      await call.start("points-scripted");
      expect(await call.turn("t1")).toBe("Points line. Say points.");
      await cutDuringTool(call, "Let me check");
      await falseInterruption(call);
      expect(await call.turn("t3")).toBe("your points for you. You have 4200 points.");
      expect(webhookCalls).toHaveLength(1); // the tool is not run again
    });

    it("LLM: the unheard rest of the answer that called the tool, then the LLM answers the tool's result", async () => {
      const call = new TestCall();
      await call.start("points");
      expect(await call.turn("t1")).toBe("Hi, this is the points line.");
      replies.push({ text: "Let me look that up for you.", toolCalls: [{ name: "check_points", arguments: { member_id: "123456" } }] });
      await cutDuringTool(call, "Let me look");
      const asked = chat.requests.length;
      replies.push((request) => ({ text: `You have ${JSON.parse(request.toolResults[0].content).points} points.` }));
      await falseInterruption(call);
      expect(await call.turn("t3")).toBe("that up for you. You have 4200 points.");
      expect(chat.requests.length).toBe(asked + 1);
      // The model sees the whole sentence it said before the tool, and the tool's result, as one exchange.
      const history = chat.requests.at(-1)!.messages.slice(-2);
      expect(history[0]).toMatchObject({ role: "assistant", content: "Let me look that up for you." });
      expect(history[1]).toMatchObject({ role: "tool" });
      expect(webhookCalls).toHaveLength(1);
    });

    it("LLM, a cut filler: the filler is not finished, the LLM answers the tool's result", async () => {
      const call = new TestCall();
      await call.start("points");
      expect(await call.turn("t1")).toBe("Hi, this is the points line.");
      replies.push({ toolCalls: [{ name: "check_points", arguments: { member_id: "123456" } }] });
      replies.push((request) => ({ text: `You have ${JSON.parse(request.toolResults[0].content).points} points.` }));
      await cutDuringTool(call, "One moment"); // t2 is the filler: nothing was said before the tool
      expect(call.chunks("t2").map((c) => c.text).join(" ")).toBe("One moment while I check that.");
      await falseInterruption(call);
      expect(await call.turn("t3")).toBe("You have 4200 points.");
    });
  });

  it("a cancel for a turn ingress dropped as overtaken (it came after a later turn began) does not stop the input in progress", async () => {
    const call = new TestCall();
    await call.start("points-scripted");
    await call.turn("t1");
    webhookDelayMs = 600;
    const cancelled = await metric("voicebot_dialog_cancelled_turns_total");
    await call.say("points");
    await call.turn("t2");
    bus.publish(subjects.cancel(call.id), CancelTurn, CancelTurn.create({ callId: call.id, turnId: "t2", reason: OVERTAKEN_CANCEL_REASON }), call.id);
    expect(await call.turn("t3")).toBe("You have 4200 points.");
    expect(await metric("voicebot_dialog_cancelled_turns_total")).toBe(cancelled);
  });

  it("a call's inputs waiting behind its slow one give their slot back: other calls are answered meanwhile (2 slots here)", async () => {
    const slow = new TestCall();
    await slow.start("points-scripted");
    await slow.turn("t1");
    webhookDelayMs = 2_000; // within the tool's timeout
    await slow.say("points");
    await slow.turn("t2"); // the filler: the tool is running
    for (const digit of "12") await slow.key(digit);
    await waitFor(async () => (await metric("voicebot_dialog_waiting_inputs")) === 2, { what: "two keys waiting behind the tool" });
    const others = [new TestCall(), new TestCall()];
    for (const call of others) await call.start();
    for (const call of others) expect(await call.turn("t1", 1_500)).toBe(GREETING);
    expect(slow.chunks("t3")).toEqual([]); // the tool is still running
    expect(await slow.turn("t3")).toBe("You have 4200 points.");
    await waitFor(async () => (await metric("voicebot_dialog_waiting_inputs")) === 0, { what: "the keys to be taken" });
  });

  it("speaks at most about 1,200 characters of a runaway answer, so one call cannot flood the shared tts queue", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    replies.push({ text: "Here is one more thing you might like to know about our shop. ".repeat(300) }); // 19 kB
    await call.say("tell me everything about your shop");
    const reply = await call.turn("t2");
    const sent = call.turnIds().flatMap((turnId) => (turnId === "t1" ? [] : call.chunks(turnId)));
    expect(sent.reduce((sum, chunk) => sum + chunk.text.length, 0)).toBeLessThanOrEqual(1_200);
    expect(reply.length).toBeGreaterThan(1_000);
    expect(await metric("voicebot_dialog_llm_answers_cut_total")).toBe(1);
    await waitFor(async () => (await call.record()).transcript.length === 3, { what: "three transcript entries" });
    expect((await call.record()).transcript.at(-1)).toMatchObject({ role: "bot", text: reply });
  });

  it("answers with the scripted agent when the LLM's answer has nothing speakable, and records what was said", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    replies.push({ text: "😀🚀👍" });
    await call.say("I want to check an order");
    expect(await call.turn("t2")).toBe("Please say or key in your order number, then press pound.");
    await waitFor(async () => (await call.record()).transcript.length === 3, { what: "three transcript entries" });
    expect((await call.record()).transcript.map((e) => [e.role, e.text])).toEqual([
      ["bot", GREETING],
      ["caller", "I want to check an order"],
      ["bot", "Please say or key in your order number, then press pound."],
    ]);
    expect(await metric("voicebot_dialog_llm_fallbacks_total", { reason: "empty" })).toBe(1);
  });

  it("answers with the scripted agent when the LLM fails, never leaving the caller in silence", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    replies.push({ status: 500 }, { status: 500 });
    await call.say("I want to check an order");
    expect(await call.turn("t2")).toBe("Please say or key in your order number, then press pound.");
    expect(await metric("voicebot_dialog_llm_fallbacks_total", { reason: "http_error" })).toBe(1);
    expect(await metric("voicebot_dialog_llm_circuit_state", { model: "fake-model" })).toBe(0);
  });
});
