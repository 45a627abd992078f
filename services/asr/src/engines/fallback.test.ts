// FallbackEngine with real engines: the AssemblyAI SDK against the fake streaming server (scripted to work,
// stall or fail) in front of the local pocketsphinx decoder.
import {
  ensureTestCertificate,
  metricSum,
  startFakeAssemblyAI,
  trustTestCertificateInProcess,
  waitFor,
  type FakeAssemblyAI,
  type FakeAssemblyAIScript,
} from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { chunks, synthesizeTo8kPcm } from "../../test/fixtures/make-audio.js";
import type { RecognitionHints, UtteranceRecognizer } from "../engine.js";
import { createMetrics } from "../metrics.js";
import { AssemblyAIEngine } from "./assemblyai.js";
import { FallbackEngine } from "./fallback.js";
import { defaultPocketsphinxConfig, PocketsphinxEngine } from "./pocketsphinx.js";

const API_KEY = "aai-test-key-fallback";
const HINTS: RecognitionHints = { mode: "phrases", phrases: ["order status", "agent", "goodbye"] };

let fake: FakeAssemblyAI;
let script: FakeAssemblyAIScript = {};
let speech: Int16Array;
let pocketsphinx: PocketsphinxEngine;
const engines: FallbackEngine[] = [];

function setup(options: { apiKey?: string; timeoutMs?: number; cooldownMs?: number; second?: PocketsphinxEngine } = {}) {
  const registry = new Registry();
  const metrics = createMetrics(registry);
  const assemblyai = new AssemblyAIEngine({ apiKey: options.apiKey ?? API_KEY, baseUrl: fake.url, finalTimeoutMs: 5000, speechModel: "universal-streaming-english" });
  const engine = new FallbackEngine([assemblyai, options.second ?? pocketsphinx], { timeoutMs: options.timeoutMs ?? 800, cooldownMs: options.cooldownMs ?? 30_000 }, metrics);
  engines.push(engine);
  const value = (name: string, labels: Record<string, string> = {}) => metricSum(registry, name, labels);
  return { engine, value };
}

function feed(recognizer: UtteranceRecognizer, pcm = speech): void {
  for (const frame of chunks(pcm)) recognizer.push(frame);
}

beforeAll(async () => {
  trustTestCertificateInProcess(await ensureTestCertificate());
  fake = await startFakeAssemblyAI({ apiKey: API_KEY, script: () => script });
  speech = await synthesizeTo8kPcm("order status", "slt", { leadMs: 200, trailMs: 300, noiseDbfs: -70 });
  pocketsphinx = new PocketsphinxEngine(defaultPocketsphinxConfig());
  await pocketsphinx.warmUp();
});

afterEach(() => {
  script = {};
});

afterAll(async () => {
  for (const engine of engines) await engine.engines[0].close();
  await pocketsphinx?.close();
  await fake?.stop();
});

describe("FallbackEngine (ASR_ENGINES=assemblyai,pocketsphinx)", () => {
  it("uses the first engine while it works, relaying its partials", async () => {
    script = { text: "order status please", msPerWord: 150 };
    const { engine, value } = setup();
    const recognizer = engine.start(HINTS);
    const partials: string[] = [];
    recognizer.onPartial = (text) => partials.push(text);
    expect(recognizer.activeEngine).toBe("assemblyai");
    feed(recognizer);
    await waitFor(() => partials.length > 0, { what: "a partial" });
    const result = await recognizer.finish();
    expect(result).toMatchObject({ text: "order status please", engine: "assemblyai" });
    expect(partials.every((p) => "order status please".startsWith(p))).toBe(true);
    expect(await value("voicebot_asr_engine_failovers_total")).toBe(0);
    expect(await value("voicebot_asr_engine_healthy", { engine: "assemblyai" })).toBe(1);
  });

  it("replays the utterance into pocketsphinx when AssemblyAI stalls after finish(), and skips it while it cools down", async () => {
    script = { stallAfterBegin: true };
    const { engine, value } = setup({ timeoutMs: 1000 });
    const sessionsBefore = fake.sessions.length;
    const recognizer = engine.start(HINTS);
    feed(recognizer);
    await waitFor(() => fake.sessions.length > sessionsBefore && fake.sessions.at(-1)!.audioMs > 0, { what: "audio at the fake" });
    const finishing = Date.now();
    const result = await recognizer.finish();
    expect(result).toMatchObject({ text: "order status", engine: "pocketsphinx" });
    // The watchdog, then pocketsphinx decoding the replayed utterance (~0.1-0.5 s).
    expect(Date.now() - finishing).toBeGreaterThanOrEqual(1000);
    expect(Date.now() - finishing).toBeLessThan(3_000); // not AssemblyAI's own 5 s deadline
    expect(await value("voicebot_asr_engine_failovers_total", { from: "assemblyai", to: "pocketsphinx", reason: "timeout" })).toBe(1);
    expect(await value("voicebot_asr_provider_errors_total", { engine: "assemblyai", reason: "timeout" })).toBe(1);
    expect(await value("voicebot_asr_engine_healthy", { engine: "assemblyai" })).toBe(0);
    // The stalled session was dropped.
    await fake.sessions.at(-1)!.closed;

    const sessions = fake.sessions.length;
    const next = engine.start(HINTS);
    expect(next.activeEngine).toBe("pocketsphinx");
    feed(next);
    expect(await next.finish()).toMatchObject({ text: "order status", engine: "pocketsphinx" });
    expect(fake.sessions.length).toBe(sessions);
    expect(await value("voicebot_asr_engine_failovers_total")).toBe(1);
  });

  it("fails over at once when AssemblyAI drops the socket mid-utterance", async () => {
    script = { text: "order status", errorAfterAudioMs: 300 };
    const { engine, value } = setup({ timeoutMs: 5000 });
    const recognizer = engine.start(HINTS);
    const frames = chunks(speech);
    const half = Math.floor(frames.length / 2);
    for (const frame of frames.slice(0, half)) recognizer.push(frame);
    // The error arrives while the caller is still talking: the utterance moves before finish().
    await waitFor(async () => (await value("voicebot_asr_engine_failovers_total", { reason: "stream_error" })) === 1, { what: "the failover" });
    expect(recognizer.activeEngine).toBe("pocketsphinx");
    expect(fake.sessions.at(-1)!.closeCode).toBe(3005);
    for (const frame of frames.slice(half)) recognizer.push(frame);
    const finishing = Date.now();
    expect(await recognizer.finish()).toMatchObject({ text: "order status", engine: "pocketsphinx" });
    expect(Date.now() - finishing).toBeLessThan(3000); // no 5 s watchdog wait
  });

  it("fails over when the first engine cannot even start (no API key)", async () => {
    const { engine, value } = setup({ apiKey: "" });
    const recognizer = engine.start(HINTS);
    expect(recognizer.activeEngine).toBe("pocketsphinx");
    feed(recognizer);
    expect(await recognizer.finish()).toMatchObject({ text: "order status", engine: "pocketsphinx" });
    expect(await value("voicebot_asr_engine_failovers_total", { from: "assemblyai", to: "pocketsphinx", reason: "start_error" })).toBe(1);
  });

  it("tries a cooled-down engine first again, and rejects when every engine failed", async () => {
    script = { stallAfterBegin: true };
    const broken = new PocketsphinxEngine({ ...defaultPocketsphinxConfig(), binary: "/nonexistent/pocketsphinx_batch" });
    const { engine, value } = setup({ timeoutMs: 500, cooldownMs: 300, second: broken });
    const recognizer = engine.start(HINTS);
    feed(recognizer);
    await expect(recognizer.finish()).rejects.toThrow(/pocketsphinx is not installed/);
    expect(await value("voicebot_asr_provider_errors_total", { engine: "assemblyai" })).toBe(1);
    expect(await value("voicebot_asr_provider_errors_total", { engine: "pocketsphinx" })).toBe(1);

    // While both cool down, a new utterance still gets an engine: the one back soonest.
    const probe = engine.start(HINTS);
    expect(probe.activeEngine).toBe("assemblyai");
    probe.abort();
    await new Promise((resolve) => setTimeout(resolve, 350));
    await waitFor(async () => (await value("voicebot_asr_engine_healthy", { engine: "assemblyai" })) === 1, { what: "the gauge back to 1" });
    script = { text: "agent" };
    const again = engine.start(HINTS);
    expect(again.activeEngine).toBe("assemblyai");
    feed(again);
    expect(await again.finish()).toMatchObject({ text: "agent", engine: "assemblyai" });
    await broken.close();
  });
});
