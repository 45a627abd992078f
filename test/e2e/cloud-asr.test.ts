// A spoken call through the whole system with a cloud transcription engine (ASR_ENGINES=openai against the fake
// OpenAI server, which takes 300 ms per transcription as the real API does): the asr's early final uploads the
// utterance during the endpoint silence, so the transcript is ready when the endpoint comes instead of 300 ms
// after it, and the caller is answered as with any engine.
import { synthesize } from "@voicebot/callsim";
import { startFakeOpenAI, type FakeOpenAI } from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, expect, test } from "vitest";
import { startSystem, type System } from "./system.js";

const API_KEY = "openai-test-key-e2e";
const ENGINE_MS = 300;
const TURN_MS = 20_000;

let system: System;
let openai: FakeOpenAI;
let orderStatus: Uint8Array;

beforeAll(async () => {
  openai = await startFakeOpenAI({ apiKey: API_KEY, transcribe: () => ({ text: "order status", delayMs: ENGINE_MS }) });
  [system, orderStatus] = await Promise.all([
    startSystem({ env: { ASR_ENGINES: "openai", ASR_OPENAI_BASE_URL: openai.baseUrl, ASR_OPENAI_API_KEY: API_KEY } }),
    synthesize("order status", { engine: "flite", voice: "slt" }),
  ]);
});

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") console.log(`service logs after "${ctx.task.name}":\n${system?.recentLogs()}`);
});

afterAll(async () => {
  await system?.stop();
  await openai?.stop();
});

test("a slow cloud transcription runs inside the endpoint silence: the spoken turn is answered without waiting for it", async () => {
  const sim = system.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  const uploadsBefore = openai.transcriptions.length;

  await sim.say(orderStatus);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  const record = await system.waitForRecord(sim.callSid, "the spoken turn and its answer", (r) =>
    r.turns.some((t) => t.stages.endpointMs !== undefined && t.stages.asrMs !== undefined),
  );
  expect(record.transcript.find((e) => e.role === "caller" && e.source === "speech")?.text).toBe("order status");
  expect(record.transcript.filter((e) => e.role === "bot").at(-1)?.text).toMatch(/order number/i);

  // One upload for the utterance, and its answer was in hand at the endpoint: the final followed the endpoint by
  // far less than the engine's own 300 ms (without early finals it cannot come sooner than that).
  expect(openai.transcriptions.length - uploadsBefore).toBe(1);
  const spoken = record.turns.find((t) => t.stages.endpointMs !== undefined)!;
  console.log(`spoken turn stages: ${JSON.stringify(spoken.stages)}`);
  expect(spoken.stages.asrMs - spoken.stages.endpointMs).toBeLessThan(ENGINE_MS - 100);
  // One early final in all (the caller said one thing), and the timing above shows it was the one used.
  expect(await system.metric("asr", "voicebot_asr_early_finals_total")).toBe(1);

  await sim.hangUp();
  await system.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  expect(sim.protocolErrors).toEqual([]);
});
