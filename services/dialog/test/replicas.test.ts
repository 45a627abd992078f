// Two dialog replicas as real processes (build first: npx tsc -b services/dialog services/tools). One is killed
// (SIGKILL) in the middle of a turn; JetStream hands the input to the other, which completes the turn: the
// caller gets a whole answer with fresh turn ids, the record has the caller's line once, and a tool the dead
// replica had started runs once.
import { copyFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { Bus, silentLogger, subjects } from "@voicebot/bus";
import { AudioEncoding, CallStarted, DialogInput, SpeakRequest, Transcript } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import {
  addFakeChatCompletions,
  repoRoot,
  startFakeOpenAI,
  startNats,
  startRedis,
  startServiceProcess,
  waitFor,
  type FakeChat,
  type FakeChatReply,
  type FakeChatRequest,
  type FakeOpenAI,
  type ServerHandle,
  type ServiceProcess,
} from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { definition as toolsDefinition } from "../../tools/src/service.js";

let nats: ServerHandle;
let redis: ServerHandle;
let fake: FakeOpenAI;
let chat: FakeChat;
let tools: ServiceHandle;
let bus: Bus;
let store: CallStore;
let agentsDir: string;
let webhook: http.Server;
let webhookCalls = 0;
const replicas: ServiceProcess[] = [];
const speaks: SpeakRequest[] = [];
/** Answers by conversation: each test sets how the LLM behaves. */
let llm: (request: FakeChatRequest) => FakeChatReply = () => ({ status: 500 });
let dialogEnv: Record<string, string>;

const POINTS_AGENT = `
greeting: { say: "Points line.", goto: menu }
reprompt: Say points.
states:
  menu:
    prompt: Say points.
llm:
  systemPrompt: You answer questions about loyalty points.
  greeting: Hi, this is the points line.
tools:
  - name: check_points
    description: Loyalty points of a member.
    parameters: { type: object, properties: { member_id: { type: string } }, required: [member_id] }
    timeoutMs: 10000
    webhook: { url: "\${POINTS_URL}/points", method: POST }
`;

beforeAll(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  fake = await startFakeOpenAI({ apiKey: "replica-key" });
  chat = addFakeChatCompletions(fake, { reply: (request) => llm(request) });
  webhook = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      webhookCalls++;
      // Slow enough to kill a replica while it waits.
      setTimeout(() => res.writeHead(200, { "content-type": "application/json" }).end('{"points":4200}'), 3_000);
    });
  });
  await new Promise<void>((resolve) => webhook.listen(0, "127.0.0.1", resolve));
  agentsDir = await mkdtemp(path.join(os.tmpdir(), "vb-replica-agents-"));
  await copyFile(path.join(repoRoot, "services/dialog/agents/order-line.yaml"), path.join(agentsDir, "order-line.yaml"));
  await writeFile(path.join(agentsDir, "points.yaml"), POINTS_AGENT);

  const env = { NATS_URL: nats.url, REDIS_URL: redis.url, LOG_LEVEL: "info", AGENTS_DIR: agentsDir };
  tools = await startService(toolsDefinition, {
    ...env,
    HTTP_PORT: "0",
    LOG_LEVEL: "error",
    POINTS_URL: `http://127.0.0.1:${(webhook.address() as AddressInfo).port}`,
  });
  dialogEnv = {
    ...env,
    LLM_BASE_URL: fake.baseUrl,
    LLM_API_KEY: "replica-key",
    LLM_MODEL: "fake-model",
    // A dead replica's input comes back after 2 s; its lease is gone by then.
    DIALOG_ACK_WAIT_MS: "2000",
    DIALOG_LEASE_TTL_MS: "1500",
    DIALOG_LEASE_WAIT_MS: "300",
    TOOL_FILLER_MS: "30000",
  };
  replicas.push(...(await Promise.all([startServiceProcess("dialog", dialogEnv), startServiceProcess("dialog", dialogEnv)])));
  bus = await Bus.connect({ servers: nats.url, name: "replica-test", log: silentLogger, registry: new Registry() });
  store = CallStore.connect(redis.url);
  bus.subscribe(subjects.ttsSpeak, SpeakRequest, (m) => void speaks.push(m), { name: "test.speak" });
  await bus.nc.flush();
}, 60_000);

afterAll(async () => {
  await Promise.all(replicas.map((r) => (r.process.exitCode === null && r.process.signalCode === null ? r.terminate(10_000) : undefined)));
  await bus?.close();
  await store?.close();
  await tools?.stop();
  await fake?.stop();
  await new Promise((resolve) => webhook?.close(resolve));
  await Promise.all([nats?.stop(), redis?.stop()]);
  if (agentsDir) await rm(agentsDir, { recursive: true, force: true });
});

let counter = 0;

async function startCall(agent: string): Promise<string> {
  const callId = `CAreplica${++counter}x${Date.now()}`;
  await store.createCall({ callSid: callId, provider: "twilio", streamSid: "MZ1", agent, from: "+15551234567", to: "+15557654321", startedAt: new Date().toISOString() });
  const started = CallStarted.create({ callId, provider: "twilio", agent, botFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 }, startedAtMs: Date.now() });
  await publish(callId, { $case: "callStarted", value: started }, `${callId}:start`);
  return callId;
}

async function say(callId: string, text: string, utteranceId: string): Promise<void> {
  const transcript = Transcript.create({ callId, utteranceId, text, isFinal: true, confidence: 0.95, engine: "test", speechEndMs: Date.now() - 200, finalAtMs: Date.now() });
  await publish(callId, { $case: "transcript", value: transcript }, `${callId}:utt:${utteranceId}`);
}

async function publish(callId: string, input: DialogInput["input"], msgId: string): Promise<void> {
  const message = DialogInput.create({ callId, inputId: msgId, atMs: Date.now() });
  message.input = input;
  await bus.publishDurable(subjects.dialogInput(callId), DialogInput, message, msgId, callId);
}

/** The complete turns of a call, in order: turn id -> text. */
function completeTurns(callId: string): Map<string, string> {
  const turns = new Map<string, SpeakRequest[]>();
  for (const s of speaks.filter((s) => s.callId === callId)) turns.set(s.turnId, [...(turns.get(s.turnId) ?? []), s]);
  const done = new Map<string, string>();
  for (const [turnId, chunks] of turns) {
    chunks.sort((a, b) => a.chunkSeq - b.chunkSeq);
    const last = chunks.find((c) => c.turnDone);
    if (last && chunks.length === last.chunkSeq + 1) done.set(turnId, chunks.map((c) => c.text).filter(Boolean).join(" "));
  }
  return done;
}

/** The replica working on an input right now (its /info counts the call). */
async function busyReplica(): Promise<ServiceProcess> {
  return waitFor(
    async () => {
      for (const replica of replicas) {
        if (replica.process.exitCode !== null || replica.process.signalCode !== null) continue;
        const info = (await (await fetch(`${replica.baseUrl}/info`)).json()) as { activeCalls: number };
        if (info.activeCalls > 0) return replica;
      }
      return undefined;
    },
    { what: "a replica working on the input", timeoutMs: 5_000, intervalMs: 20 },
  );
}

describe("two dialog replicas", () => {
  it("a replica killed while the LLM streams: the other replica completes the turn", async () => {
    let attempts = 0;
    llm = (request) => {
      if (request.toolResults.length > 0) return { text: "Order 1 2 3 4 5 has shipped with UPS. Anything else?" };
      if (request.lastUser !== "where is my order 12345") return { status: 400, message: "unexpected" };
      // The first attempt starts speaking, then hangs: its replica dies before the answer is complete.
      if (++attempts === 1) return { text: "Let me check that for you. One moment please.", stallAfterDeltas: 6 };
      return { toolCalls: [{ name: "lookup_order", arguments: { order_number: "12345" } }] };
    };
    const callId = await startCall("order-line");
    await waitFor(() => completeTurns(callId).get("t1"), { what: "the greeting" });
    await say(callId, "where is my order 12345", "u1");
    // The first clause of the answer went out: the turn is in progress.
    await waitFor(() => speaks.find((s) => s.callId === callId && s.turnId === "t2"), { what: "the first chunk of t2" });
    const victim = await busyReplica();
    victim.kill();
    await victim.exited;

    const started = Date.now();
    const turn = await waitFor(
      () => [...completeTurns(callId)].find(([turnId, text]) => turnId !== "t1" && text.includes("has shipped")),
      { what: "the answer from the surviving replica", timeoutMs: 15_000 },
    );
    // Fresh turn ids: ingress never mixes the dead replica's half turn with the new one.
    expect(turn[0]).toBe("t22");
    expect(turn[1]).toBe("Order 1 2 3 4 5 has shipped with UPS. Anything else?");
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(completeTurns(callId).has("t2")).toBe(false);
    expect(attempts).toBe(2);

    const record = (await store.getRecord(callId))!;
    expect(record.transcript.filter((e) => e.role === "caller").map((e) => e.text)).toEqual(["where is my order 12345"]);
    expect(record.transcript.at(-1)).toMatchObject({ role: "bot", text: turn[1] });
    expect(record.toolCalls.map((t) => t.name)).toEqual(["lookup_order"]);
    const survivor = replicas.find((r) => r !== victim)!;
    await survivor.waitForLog((line) => line.msg === "input was started before by a replica that did not finish it; redoing it" && line.callId === callId);

    // The call goes on on the survivor.
    llm = (request) => ({ text: request.lastUser === "no thanks" ? "Okay, thanks for calling!" : "Hmm?" });
    await say(callId, "no thanks", "u2");
    await waitFor(() => completeTurns(callId).get("t23"), { what: "the next turn" });
    expect(completeTurns(callId).get("t23")).toBe("Okay, thanks for calling!");
    expect(chat.rejected).toEqual([]);
  });

  it("a replica killed while a slow webhook runs: the other replica gets the same call's result without calling it again", async () => {
    // Only one replica is left from the first test; start another so both are candidates again.
    replicas.push(await startServiceProcess("dialog", dialogEnv));
    webhookCalls = 0;
    llm = (request) => {
      if (request.toolResults.length > 0) return { text: `You have ${JSON.parse(request.toolResults[0].content).points} points.` };
      return { toolCalls: [{ name: "check_points", arguments: { member_id: "123456" } }] };
    };
    const callId = await startCall("points");
    await waitFor(() => completeTurns(callId).get("t1"), { what: "the greeting" });
    await say(callId, "points for member 123456", "u1");
    await waitFor(() => webhookCalls === 1, { what: "the webhook call" });
    const victim = await busyReplica();
    victim.kill();
    await victim.exited;

    const turn = await waitFor(() => [...completeTurns(callId)].find(([, text]) => text.includes("points.")), {
      what: "the answer from the surviving replica",
      timeoutMs: 15_000,
    });
    expect(turn).toEqual(["t22", "You have 4200 points."]);
    expect(webhookCalls).toBe(1);
    const record = (await store.getRecord(callId))!;
    expect(record.toolCalls).toEqual([expect.objectContaining({ name: "check_points", ok: true, result: { points: 4200 } })]);
  });

  it("a replica killed mid-turn while the caller goes on talking: the unfinished input is answered first, then the next, each once", async () => {
    // A long ack wait (it applies to the shared consumer): JetStream hands the dead replica's input back only long
    // after the caller's next input reached the survivor, so only the survivor can keep the order.
    replicas.push(await startServiceProcess("dialog", { ...dialogEnv, DIALOG_ACK_WAIT_MS: "8000" }));
    webhookCalls = 0;
    llm = (request) => {
      if (request.lastUser === "and my balance") return { text: "Your balance is zero." };
      if (request.toolResults.length > 0) return { text: `You have ${JSON.parse(request.toolResults[0].content).points} points.` };
      return { toolCalls: [{ name: "check_points", arguments: { member_id: "123456" } }] };
    };
    const callId = await startCall("points");
    await waitFor(() => completeTurns(callId).get("t1"), { what: "the greeting" });
    await say(callId, "points for member 123456", "u1");
    await waitFor(() => webhookCalls === 1, { what: "the webhook call" });
    const victim = await busyReplica();
    victim.kill();
    await victim.exited;
    // The caller speaks again at once: that input reaches the survivor long before JetStream would hand back the
    // dead replica's input (after the ack wait), yet it must not be answered first.
    await say(callId, "and my balance", "u2");

    await waitFor(() => [...completeTurns(callId).values()].includes("Your balance is zero."), { what: "both answers", timeoutMs: 15_000 });
    await new Promise((r) => setTimeout(r, 500)); // an answer out of order would be in by now
    const answers = [...completeTurns(callId)].filter(([turnId]) => turnId !== "t1").sort(([a], [b]) => Number(a.slice(1)) - Number(b.slice(1)));
    expect(answers.map(([, text]) => text)).toEqual(["You have 4200 points.", "Your balance is zero."]);
    expect(webhookCalls).toBe(1);
    const record = (await store.getRecord(callId))!;
    expect(record.transcript.filter((e) => e.role === "caller").map((e) => e.text)).toEqual(["points for member 123456", "and my balance"]);
    const redoneFirst = (line: Record<string, unknown>) =>
      line.callId === callId && line.msg === "another replica died during an earlier input of this call; doing that input first";
    expect(replicas.some((r) => r !== victim && r.logs.some(redoneFirst))).toBe(true);
  });
});
