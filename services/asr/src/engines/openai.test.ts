import { startFakeOpenAI, waitFor, type FakeOpenAI, type FakeTranscriptionReply, type FakeTranscriptionRequest } from "@voicebot/testing";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DIGITS_PROMPT, OpenAIEngine, promptFor, type OpenAIAsrConfig } from "./openai.js";

const API_KEY = "sk-test-openai-SECRET";

function frames(ms: number): Int16Array[] {
  const out: Int16Array[] = [];
  for (let f = 0; f < ms / 20; f++) {
    const frame = new Int16Array(160);
    for (let i = 0; i < frame.length; i++) frame[i] = Math.round(8000 * Math.sin((2 * Math.PI * 300 * (f * 160 + i)) / 8000));
    out.push(frame);
  }
  return out;
}

describe("OpenAIEngine against a fake OpenAI server", () => {
  let fake: FakeOpenAI;
  let reply: (request: FakeTranscriptionRequest, attempt: number) => FakeTranscriptionReply = () => ({ text: "" });
  let attempts = 0;
  const engines: OpenAIEngine[] = [];
  const engine = (overrides: Partial<OpenAIAsrConfig> = {}) => {
    const e = new OpenAIEngine({ baseUrl: fake.baseUrl, apiKey: API_KEY, model: "gpt-4o-mini-transcribe", timeoutMs: 3000, stream: true, keepWarmMs: 0, ...overrides });
    engines.push(e);
    return e;
  };
  const utterance = (e: OpenAIEngine, mode: "phrases" | "digits", phrases: string[] = [], ms = 600) => {
    const recognizer = e.start({ mode, phrases });
    for (const frame of frames(ms)) recognizer.push(frame);
    return recognizer;
  };

  beforeAll(async () => {
    fake = await startFakeOpenAI({ apiKey: API_KEY, transcribe: (request) => reply(request, ++attempts) });
  });
  beforeEach(() => {
    attempts = 0;
  });
  afterAll(async () => {
    await Promise.all(engines.map((e) => e.close()));
    await fake?.stop();
  });

  it("uploads the utterance as an 8 kHz WAV, streams partials and resolves with the done text", async () => {
    reply = () => ({ text: "I'd like to book a table.", logprobs: [-0.1, -0.2, -0.3], eventIntervalMs: 10 });
    const recognizer = utterance(engine(), "phrases", ["book a table", "cancel my order"], 1000);
    const partials: string[] = [];
    recognizer.onPartial = (text) => partials.push(text);

    const result = await recognizer.finish();
    expect(result.text).toBe("I'd like to book a table.");
    expect(result.confidence).toBeCloseTo(Math.exp(-0.2), 5);
    expect(result.alternatives).toEqual([]);
    expect(partials).toEqual(["I'd", "I'd like", "I'd like to", "I'd like to book", "I'd like to book a", "I'd like to book a table."]);

    const request = fake.transcriptions.at(-1)!;
    expect(request.request.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(request.model).toBe("gpt-4o-mini-transcribe");
    expect(request.stream).toBe(true);
    expect(request.prompt).toBe("book a table, cancel my order");
    expect(request.include).toEqual(["logprobs"]);
    expect(request.file.name).toBe("utterance.wav");
    expect(request.file.type).toBe("audio/wav");
    expect(request.file.wav).toMatchObject({ format: 1, channels: 1, sampleRate: 8000, bitsPerSample: 16, dataBytes: 16_000 });
  });

  it("prompts for digits and normalizes spoken digits", async () => {
    reply = () => ({ text: "Four oh seven, twenty one." });
    const result = await utterance(engine({ language: "en" }), "digits", ["order number"]).finish();
    expect(result.text).toBe("40721");
    expect(result.confidence).toBe(1); // no logprobs: no doubt signalled
    const request = fake.transcriptions.at(-1)!;
    expect(request.prompt).toBe(`${DIGITS_PROMPT} order number`);
    expect(request.language).toBe("en");
  });

  it("works without streaming, and without logprobs for other models", async () => {
    reply = () => ({ text: "yes please", logprobs: [-0.5] });
    const result = await utterance(engine({ stream: false, model: "whisper-1" }), "phrases").finish();
    expect(result).toEqual({ text: "yes please", confidence: 1, alternatives: [] });
    const request = fake.transcriptions.at(-1)!;
    expect(request.stream).toBe(false);
    expect(request.include).toEqual([]);
    expect(request.prompt).toBeUndefined();
    // whisper-1 cannot stream: asked for JSON even when streaming is on; the diarizing model is asked for no logprobs.
    await utterance(engine({ model: "whisper-1" }), "phrases").finish();
    expect(fake.transcriptions.at(-1)!.stream).toBe(false);
    await utterance(engine({ model: "gpt-4o-transcribe-diarize" }), "phrases").finish();
    expect(fake.transcriptions.at(-1)!.include).toEqual([]);
    await utterance(engine({ model: "gpt-4o-transcribe-2025-03-20" }), "phrases").finish();
    expect(fake.transcriptions.at(-1)!.include).toEqual(["logprobs"]);
  });

  it("retries one server error and then succeeds", async () => {
    reply = (_req, attempt) => (attempt === 1 ? { status: 500, message: "boom" } : { text: "second time lucky" });
    await expect(utterance(engine(), "phrases").finish()).resolves.toMatchObject({ text: "second time lucky" });
    expect(attempts).toBe(2);
  });

  it("rejects clearly on repeated server errors", async () => {
    reply = () => ({ status: 503, message: "overloaded" });
    await expect(utterance(engine(), "phrases").finish()).rejects.toThrow("openai: HTTP 503: overloaded");
  });

  it("rejects clearly when the key is refused, without revealing it", async () => {
    const error = await utterance(engine({ apiKey: "sk-wrong-SECRET" }), "phrases").finish().then(
      () => undefined,
      (e: Error) => e,
    );
    expect(error?.message).toMatch(/^openai: authentication failed: Incorrect API key provided/);
    expect(error?.message).not.toContain("SECRET");
    expect(fake.requests.at(-1)!.headers.authorization).toBe("Bearer sk-wrong-SECRET");
  });

  it("rejects within the deadline when the server never answers", async () => {
    reply = () => ({ stall: true });
    const started = Date.now();
    await expect(utterance(engine({ timeoutMs: 500 }), "phrases").finish()).rejects.toThrow("openai: no transcript within 500 ms");
    expect(Date.now() - started).toBeLessThan(1500);
  });

  it("rejects within the deadline when the stream stalls midway", async () => {
    reply = () => ({ text: "one two three four five", eventIntervalMs: 300 });
    const recognizer = utterance(engine({ timeoutMs: 500 }), "phrases");
    const partials: string[] = [];
    recognizer.onPartial = (text) => partials.push(text);
    await expect(recognizer.finish()).rejects.toThrow("openai: no transcript within 500 ms");
    expect(partials.length).toBeGreaterThan(0);
  });

  it("accepts a slow answer inside the deadline", async () => {
    reply = () => ({ text: "took a while", delayMs: 400 });
    await expect(utterance(engine({ timeoutMs: 2000 }), "phrases").finish()).resolves.toMatchObject({ text: "took a while" });
  });

  it("rejects cleanly on a malformed SSE event", async () => {
    reply = () => ({ malformed: true });
    await expect(utterance(engine(), "phrases").finish()).rejects.toThrow(/^openai: malformed stream event/);
  });

  it("rejects when the stream ends without transcript.text.done", async () => {
    reply = () => ({ text: "cut short", omitDone: true });
    await expect(utterance(engine(), "phrases").finish()).rejects.toThrow("openai: the transcription stream ended without transcript.text.done");
  });

  it("rejects when the server is unreachable", async () => {
    const recognizer = utterance(engine({ baseUrl: "http://127.0.0.1:1/v1" }), "phrases");
    await expect(recognizer.finish()).rejects.toThrow(/^openai: could not reach the API/);
  });

  it("abort() cancels a pending request", async () => {
    reply = () => ({ stall: true });
    const recognizer = utterance(engine(), "phrases");
    const before = fake.transcriptions.length;
    const pending = recognizer.finish();
    await waitFor(() => fake.transcriptions.length > before, { what: "the upload" });
    recognizer.abort();
    await expect(pending).rejects.toThrow("openai: aborted");
  });

  it("resolves an utterance without audio as empty, without a request", async () => {
    const before = fake.requests.length;
    await expect(engine().start({ mode: "phrases", phrases: [] }).finish()).resolves.toEqual({ text: "", confidence: 0, alternatives: [] });
    expect(fake.requests.length).toBe(before);
  });

  it("warmUp() checks the key and opens a connection with a free GET /models; start() refuses without a key", async () => {
    const pings = () => fake.requests.filter((r) => r.method === "GET" && r.path === "/v1/models");
    const before = pings().length;
    const uploads = fake.transcriptions.length;
    await expect(engine({ keepWarmMs: 60_000 }).warmUp()).resolves.toBeUndefined();
    await waitFor(() => pings().length === before + 1, { what: "the keep-warm request" });
    expect(pings().at(-1)!.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(fake.transcriptions.length).toBe(uploads); // a transcription costs money: warm-up never sends one
    const unconfigured = engine({ apiKey: "" });
    await expect(unconfigured.warmUp()).rejects.toThrow("openai: ASR_OPENAI_API_KEY is not set");
    expect(() => unconfigured.start({ mode: "phrases", phrases: [] })).toThrow("ASR_OPENAI_API_KEY is not set");
  });
});

describe("promptFor", () => {
  it("lists the phrases, leads with the digits instruction in digits mode, and bounds the length", () => {
    expect(promptFor({ mode: "phrases", phrases: [] })).toBeUndefined();
    expect(promptFor({ mode: "phrases", phrases: [" yes ", "no", "yes"] })).toBe("yes, no");
    expect(promptFor({ mode: "digits", phrases: [] })).toBe(DIGITS_PROMPT);
    expect(promptFor({ mode: "phrases", phrases: Array.from({ length: 500 }, (_, i) => `phrase ${i}`) })!.length).toBe(800);
  });
});
