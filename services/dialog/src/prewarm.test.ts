// TTS prewarm: the dialog sends every fixed line of its agents to tts at start, cut exactly as a live turn cuts it.
import path from "node:path";
import { Bus, silentLogger, subjects } from "@voicebot/bus";
import { AudioEncoding, CallStarted, DialogInput, KeypadPress, SpeakRequest, Transcript } from "@voicebot/proto";
import { ConfigError, startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import { repoRoot, startNats, startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { definition as toolsDefinition } from "../../tools/src/service.js";
import { validateAgent } from "./agents/config.js";
import { loadAgents } from "./agents/load.js";
import { fixedLines, PREWARM_FORMAT, prewarmRequests } from "./prewarm.js";
import { definition } from "./service.js";

const AGENTS_DIR = path.join(repoRoot, "services/dialog/agents");

describe("fixed lines of an agent", () => {
  it("lists the greeting's turn first and leaves out lines with templates", async () => {
    const config = (await loadAgents(AGENTS_DIR)).get("order-line")!;
    const scripted = fixedLines({ config, onLlm: false });
    expect(scripted.slice(0, 2)).toEqual([
      "Thanks for calling the demo shop.",
      "To check an order, say order status or press 1. To talk to an agent, say agent or press 0.",
    ]);
    expect(scripted).toContain("One moment while I check that.");
    expect(scripted).toContain("Please key in the number on your keypad, then press pound.");
    expect(scripted.some((line) => line.includes("{{") || /has shipped/.test(line))).toBe(false);
    // On the LLM the call starts with the LLM's greeting; the scripted lines stay (the LLM's fallback says them).
    const llm = fixedLines({ config, onLlm: true });
    expect(llm[0]).toBe("Thanks for calling the demo shop. How can I help you today?");
    expect(scripted.includes(llm[0])).toBe(false);
    expect(llm).toEqual(expect.arrayContaining(scripted.slice(1)));
  });

  it("cuts lines into sentence chunks as live turns do, once each, normalized like the scripted engine's speech", () => {
    const config = validateAgent(
      {
        voice: "kal",
        greeting: { say: "Hello   there.  Welcome!", goto: "menu" },
        reprompt: "Sorry? Say menu.",
        toolFiller: false,
        states: {
          menu: { prompt: "Say menu.", reprompt: "Sorry? Say menu.", intents: [{ name: "x", phrases: ["x"], do: { goto: "ask" } }] },
          ask: { prompt: "Your number?", collect: { slot: "n", confirm: false, do: { say: "You are caller {{slots.n}}. Bye!", goto: "menu" } } },
        },
      },
      "tiny",
    );
    const requests = prewarmRequests([{ config, onLlm: false }]);
    // The default onToolError line is one of the agent's too; "Bye!" comes with a template, so it is not fixed.
    expect(requests.map((r) => r.text)).toEqual(["Hello there.", "Welcome!", "Say menu.", "Sorry?", "Sorry, something went wrong on my side.", "Your number?"]);
    for (const request of requests) {
      expect(request).toMatchObject({ callId: "", turnId: "", voice: "kal", format: PREWARM_FORMAT, cacheable: true, prefetch: true });
      expect(request.timing).toBeUndefined();
    }
  });
});

describe("dialog start", () => {
  let nats: ServerHandle;
  let redis: ServerHandle;
  let tools: ServiceHandle;
  let dialog: ServiceHandle;
  let bus: Bus;
  let store: CallStore;
  const speaks: SpeakRequest[] = [];
  let env: Record<string, string>;

  beforeAll(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    env = { NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: "0", LOG_LEVEL: "error" };
    bus = await Bus.connect({ servers: nats.url, name: "prewarm-test", log: silentLogger, registry: new Registry() });
    store = CallStore.connect(redis.url);
    bus.subscribe(subjects.ttsSpeak, SpeakRequest, (m) => void speaks.push(m), { name: "test.speak" });
    await bus.nc.flush();
    tools = await startService(toolsDefinition, env);
    dialog = await startService(definition, env);
  });

  afterAll(async () => {
    await bus?.close();
    await store?.close();
    await dialog?.stop();
    await tools?.stop();
    await Promise.all([nats?.stop(), redis?.stop()]);
  });

  const prefetched = () => speaks.filter((s) => s.prefetch);

  it("sends every fixed line once, as prefetch requests that are the very chunks a call's turns send", async () => {
    const expected = prewarmRequests([{ config: (await loadAgents(AGENTS_DIR)).get("order-line")!, onLlm: false }]);
    await waitFor(() => prefetched().length === expected.length, { what: "the prefetch requests" });
    expect(prefetched()).toEqual(expected);
    const metric = await dialog.ctx.registry.getSingleMetric("voicebot_dialog_tts_prewarm_chunks_total")!.get();
    expect(metric.values).toEqual([expect.objectContaining({ labels: { result: "queued" }, value: expected.length })]);

    // A call through the menu, a number, a reprompt and the goodbye: every cacheable chunk it sends was prefetched
    // with the same text, voice and format (the tts cache key); the chunks with the caller's data were not.
    const callId = `CAprewarm${Date.now()}`;
    await store.createCall({ callSid: callId, provider: "twilio", streamSid: "MZ1", agent: "order-line", from: "+15551234567", to: "+15557654321", startedAt: new Date().toISOString() });
    let inputs = 0;
    const send = async (input: DialogInput["input"]) => {
      const inputId = `${callId}:${inputs === 0 ? "start" : `in:${inputs}`}`;
      inputs++;
      const message = DialogInput.create({ callId, inputId, atMs: Date.now() });
      message.input = input;
      await bus.publishDurable(subjects.dialogInput(callId), DialogInput, message, inputId, callId);
    };
    const turnDone = (turnId: string) => waitFor(() => speaks.some((s) => s.callId === callId && s.turnId === turnId && s.turnDone), { what: `turn ${turnId}` });
    /** The turn that says something matching `pattern`, once its last chunk is out. */
    const turnSaying = async (pattern: RegExp) => {
      const chunk = await waitFor(() => speaks.find((s) => s.callId === callId && pattern.test(s.text)), { what: `a line matching ${pattern}` });
      await turnDone(chunk.turnId);
    };
    const key = (digit: string) => send({ $case: "keypad", value: KeypadPress.create({ callId, digit, atMs: Date.now() }) });
    await send({
      $case: "callStarted",
      value: CallStarted.create({ callId, provider: "twilio", agent: "order-line", botFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 }, startedAtMs: Date.now() }),
    });
    await turnDone("t1");
    await key("1");
    await turnDone("t2");
    for (const digit of "12345#") await key(digit);
    await turnSaying(/anything else/);
    const said = Transcript.create({ callId, utteranceId: "u1", text: "banana", isFinal: true, confidence: 0.9, speechEndMs: Date.now(), finalAtMs: Date.now() });
    await send({ $case: "transcript", value: said });
    await turnSaying(/didn't catch that/);
    await key("9");
    await turnSaying(/^Goodbye\.$/);

    const live = speaks.filter((s) => s.callId === callId && s.text !== "");
    const cacheable = live.filter((s) => s.cacheable);
    expect(cacheable.length).toBeGreaterThanOrEqual(8);
    const line = (s: SpeakRequest) => JSON.stringify([s.voice, s.format, s.text]);
    const prefetchedLines = new Set(prefetched().map(line));
    expect(cacheable.filter((s) => !prefetchedLines.has(line(s)))).toEqual([]);
    const personal = live.filter((s) => !s.cacheable);
    expect(personal.map((s) => s.text)).toContainEqual(expect.stringMatching(/1 2 3 4 5/));
    expect(personal.filter((s) => prefetchedLines.has(line(s)))).toEqual([]);
  });

  it("sends nothing with DIALOG_PREWARM_TTS=0, and rejects a value that is not a yes or no", async () => {
    const before = prefetched().length;
    const quiet = await startService(definition, { ...env, DIALOG_PREWARM_TTS: "0" });
    try {
      await new Promise((resolve) => setTimeout(resolve, 500));
      await bus.nc.flush();
      expect(prefetched().length).toBe(before);
      expect(quiet.ctx.registry.getSingleMetric("voicebot_dialog_tts_prewarm_chunks_total")).toBeUndefined();
    } finally {
      await quiet.stop();
    }
    await expect(startService(definition, { ...env, DIALOG_PREWARM_TTS: "sometimes" })).rejects.toBeInstanceOf(ConfigError);
  });
});
