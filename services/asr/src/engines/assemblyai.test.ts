import { ensureTestCertificate, startFakeAssemblyAI, trustTestCertificateInProcess, waitFor, type FakeAssemblyAI, type FakeAssemblyAIScript } from "@voicebot/testing";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { AssemblyAIEngine, keytermsFrom, streamingUrl, type AssemblyAIConfig } from "./assemblyai.js";

const API_KEY = "aai-test-key-0123456789";

/** 20 ms frames of a 440 Hz tone, as the service pushes them. */
function frames(ms: number): Int16Array[] {
  const out: Int16Array[] = [];
  for (let f = 0; f < ms / 20; f++) {
    const frame = new Int16Array(160);
    for (let i = 0; i < frame.length; i++) frame[i] = Math.round(8000 * Math.sin((2 * Math.PI * 440 * (f * 160 + i)) / 8000));
    out.push(frame);
  }
  return out;
}

describe("AssemblyAIEngine against a fake Universal Streaming server", () => {
  let fake: FakeAssemblyAI;
  let script: FakeAssemblyAIScript = {};
  const engines: AssemblyAIEngine[] = [];
  const engine = (overrides: Partial<AssemblyAIConfig> = {}) => {
    const e = new AssemblyAIEngine({ apiKey: API_KEY, baseUrl: fake.url, finalTimeoutMs: 2000, speechModel: "universal-streaming-english", ...overrides });
    engines.push(e);
    return e;
  };

  beforeAll(async () => {
    // The SDK's `ws` socket cannot be given a CA: trust the fake's self-signed certificate in this process.
    trustTestCertificateInProcess(await ensureTestCertificate());
    fake = await startFakeAssemblyAI({ apiKey: API_KEY, script: () => script });
  });
  beforeEach(() => {
    script = {};
  });
  afterAll(async () => {
    await Promise.all(engines.map((e) => e.close()));
    await fake?.stop();
  });

  it("streams audio, reports partials and resolves with the forced end-of-turn transcript", async () => {
    script = { text: "i want to book a table", confidence: [0.9, 0.8, 0.7, 0.9, 0.8, 0.7] };
    const recognizer = engine().start({ mode: "phrases", phrases: ["book a table", "cancel my order"] });
    const partials: string[] = [];
    recognizer.onPartial = (text) => partials.push(text);
    for (const frame of frames(1000)) recognizer.push(frame);
    await waitFor(() => partials.length >= 2, { what: "partials", timeoutMs: 5000 });
    for (const frame of frames(300)) recognizer.push(frame);
    // The newest word is in the partial before the turn ends (the Turn's transcript holds only finalized words).
    await waitFor(() => partials.at(-1) === "i want to book a table", { what: "a partial with the last word", timeoutMs: 5000 });

    const result = await recognizer.finish();
    expect(result.text).toBe("i want to book a table");
    expect(result.confidence).toBeCloseTo(0.8, 5);
    expect(result.alternatives).toEqual([]);
    // Partials grow word by word towards the final (the backlog held until Begin arrives as one message).
    expect(partials.every((p, i) => "i want to book a table".startsWith(p) && (i === 0 || p.length > partials[i - 1].length))).toBe(true);

    const session = fake.sessions.at(-1)!;
    expect(session.authorization).toBe(API_KEY);
    expect(session.sampleRate).toBe(8000);
    expect(session.encoding).toBe("pcm_s16le");
    expect(session.query.speech_model).toBe("universal-streaming-english"); // always named: no surprise model
    expect(session.keyterms).toEqual(["book a table", "cancel my order"]);
    expect(session.audioMs).toBeCloseTo(1300, 0);
    expect(session.audioChunksMs.every((ms) => ms >= 50 && ms <= 1000)).toBe(true);
    expect(session.received.map((m) => m.type)).toEqual(["ForceEndpoint", "Terminate"]);
    await session.closed;
  });

  it("keeps turns the server ended by itself and normalizes digits in digits mode", async () => {
    script = { turns: ["my order number is", "four oh seven twenty one"] };
    const recognizer = engine().start({ mode: "digits", phrases: [] });
    const partials: string[] = [];
    recognizer.onPartial = (text) => partials.push(text);
    for (const frame of frames(1200)) recognizer.push(frame);
    await waitFor(() => partials.some((p) => p.startsWith("my order number is 4")), { what: "a partial of the second turn" });

    const result = await recognizer.finish();
    expect(result.text).toBe("my order number is 40721");
    expect(partials).toContain("my order number is");
    expect(fake.sessions.at(-1)!.keyterms).toBeUndefined();
  });

  it("sends audio pushed before the session opened, even when finish() comes first", async () => {
    script = { text: "yes please" };
    const recognizer = engine().start({ mode: "phrases", phrases: [] });
    for (const frame of frames(140)) recognizer.push(frame);
    await expect(recognizer.finish()).resolves.toMatchObject({ text: "yes please" });
    expect(fake.sessions.at(-1)!.audioChunksMs).toEqual([140]);
  });

  it("an utterance sent all at once (a failover's replay, a session still opening) keeps the turn the server ended inside it", async () => {
    // The server's own endpointing ends turn 0 at a pause within the audio; its Turn comes after ForceEndpoint went.
    script = { turns: ["my order number is", "four oh seven"] };
    const recognizer = engine().start({ mode: "digits", phrases: [] });
    for (const frame of frames(1400)) recognizer.push(frame);
    await expect(recognizer.finish()).resolves.toMatchObject({ text: "my order number is 407" });
  });

  it("a short answer whose backlog went at Begin and whose end streamed live is final at the forced Turn, not the later Termination", async () => {
    script = { text: "yes", terminationDelayMs: 1_500 };
    const recognizer = engine().start({ mode: "phrases", phrases: [] });
    for (const frame of frames(800)) recognizer.push(frame); // held while the session opens
    await waitFor(() => (fake.sessions.at(-1)?.audioMs ?? 0) >= 800 || undefined, { what: "the backlog at the fake" });
    for (const frame of frames(600)) {
      recognizer.push(frame);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const finishing = Date.now();
    await expect(recognizer.finish()).resolves.toMatchObject({ text: "yes" });
    expect(Date.now() - finishing).toBeLessThan(1_000);
  });

  it("sends 20 ms pushes as messages of at least 50 ms, padding the last one with silence", async () => {
    script = { text: "no" };
    const recognizer = engine().start({ mode: "phrases", phrases: [] });
    for (const frame of frames(200)) recognizer.push(frame);
    await waitFor(() => fake.sessions.at(-1)?.audioMs === 200, { what: "the first audio at the fake" });
    for (const frame of frames(100)) recognizer.push(frame);
    await expect(recognizer.finish()).resolves.toMatchObject({ text: "no" });
    // 200 held until Begin; then 60 (three frames), and the last 40 padded to 50.
    expect(fake.sessions.at(-1)!.audioChunksMs.map((ms) => Math.round(ms))).toEqual([200, 60, 50]);
  });

  it("resolves with an empty result when nothing was recognized (Termination, no Turn)", async () => {
    script = {};
    const recognizer = engine().start({ mode: "phrases", phrases: [] });
    for (const frame of frames(400)) recognizer.push(frame);
    await expect(recognizer.finish()).resolves.toEqual({ text: "", confidence: 0, alternatives: [] });
  });

  it("waits for a slow final within the deadline", async () => {
    script = { text: "slow but fine", finalDelayMs: 400 };
    const recognizer = engine().start({ mode: "phrases", phrases: [] });
    for (const frame of frames(400)) recognizer.push(frame);
    const started = Date.now();
    await expect(recognizer.finish()).resolves.toMatchObject({ text: "slow but fine" });
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
  });

  it("rejects with a clear error when the key is refused, without revealing the key", async () => {
    const recognizer = engine({ apiKey: "wrong-key-SECRET" }).start({ mode: "phrases", phrases: [] });
    for (const frame of frames(200)) recognizer.push(frame);
    const error = await recognizer.finish().then(
      () => undefined,
      (e: Error) => e,
    );
    expect(error?.message).toMatch(/^assemblyai: could not open a streaming session: Unauthorized Connection: Invalid API key/);
    expect(error?.message).not.toContain("SECRET");
    expect(fake.sessions.at(-1)!.closeCode).toBe(1008);
  });

  it("rejects within the deadline when the server stalls after Begin", async () => {
    script = { stallAfterBegin: true };
    const recognizer = engine({ finalTimeoutMs: 500 }).start({ mode: "phrases", phrases: [] });
    for (const frame of frames(300)) recognizer.push(frame);
    await waitFor(() => fake.sessions.at(-1)?.audioMs === 300, { what: "audio at the fake" });
    const started = Date.now();
    await expect(recognizer.finish()).rejects.toThrow("assemblyai: no final transcript within 500 ms");
    expect(Date.now() - started).toBeLessThan(1500);
    // The session is closed, not left open (and billed).
    await waitFor(() => fake.sessions.at(-1)!.closeCode !== undefined, { what: "the stalled session to close" });
  });

  it("rejects within the deadline when the server never sends Begin", async () => {
    script = { stallBeforeBegin: true };
    const recognizer = engine({ finalTimeoutMs: 400 }).start({ mode: "phrases", phrases: [] });
    for (const frame of frames(300)) recognizer.push(frame);
    const started = Date.now();
    await expect(recognizer.finish()).rejects.toThrow("assemblyai: no final transcript within 400 ms");
    expect(Date.now() - started).toBeLessThan(1400);
  });

  it("rejects when the server closes the session with an error, and reports it through onError at once", async () => {
    script = { text: "never finished", errorAfterAudioMs: 200 };
    const recognizer = engine().start({ mode: "phrases", phrases: [] });
    const errors: Error[] = [];
    recognizer.onError = (error) => errors.push(error);
    for (const frame of frames(600)) recognizer.push(frame);
    await waitFor(() => fake.sessions.at(-1)?.closeCode === 3005, { what: "the error close" });
    // Reported once (the Error frame and the close are one failure), before finish() was called.
    await waitFor(() => errors.length > 0, { what: "onError" });
    expect(errors).toHaveLength(1);
    expect(errors[0].message).toMatch(/^assemblyai: Session Cancelled: An error occurred/);
    await expect(recognizer.finish()).rejects.toThrow(/^assemblyai: Session Cancelled: An error occurred/);
    expect(errors).toHaveLength(1);
  });

  it("rejects when the server is unreachable", async () => {
    const recognizer = engine({ baseUrl: "wss://127.0.0.1:1" }).start({ mode: "phrases", phrases: [] });
    recognizer.push(frames(20)[0]);
    await expect(recognizer.finish()).rejects.toThrow(/^assemblyai: could not open a streaming session: .*ECONNREFUSED/);
  });

  it("abort() closes the session and fails a pending finish()", async () => {
    script = { text: "hello", finalDelayMs: 1000 };
    const recognizer = engine().start({ mode: "phrases", phrases: [] });
    for (const frame of frames(300)) recognizer.push(frame);
    const pending = recognizer.finish();
    await waitFor(() => fake.sessions.at(-1)?.received.length === 2, { what: "ForceEndpoint and Terminate" });
    const aborted = Date.now();
    recognizer.abort();
    await expect(pending).rejects.toThrow("assemblyai: aborted");
    await fake.sessions.at(-1)!.closed;
    expect(Date.now() - aborted).toBeLessThan(500); // closed at once, not after the delayed final
  });

  it("warmUp() checks the key without opening a session; start() refuses without one", async () => {
    const before = fake.sessions.length;
    await expect(engine().warmUp()).resolves.toBeUndefined();
    const unconfigured = engine({ apiKey: "" });
    await expect(unconfigured.warmUp()).rejects.toThrow("assemblyai: ASSEMBLYAI_API_KEY is not set");
    expect(() => unconfigured.start({ mode: "phrases", phrases: [] })).toThrow("ASSEMBLYAI_API_KEY is not set");
    expect(fake.sessions.length).toBe(before);
  });
});

describe("AssemblyAI helpers", () => {
  it("adds the v3 path to a bare base URL only", () => {
    expect(streamingUrl("wss://streaming.assemblyai.com")).toBe("wss://streaming.assemblyai.com/v3/ws");
    expect(streamingUrl("wss://127.0.0.1:4443/")).toBe("wss://127.0.0.1:4443/v3/ws");
    expect(streamingUrl("wss://streaming.eu.assemblyai.com/v3/ws")).toBe("wss://streaming.eu.assemblyai.com/v3/ws");
  });

  it("keeps keyterms within the API's limits", () => {
    expect(keytermsFrom([" book  a table ", "book a table", "", "x".repeat(51), "menu"])).toEqual(["book a table", "menu"]);
    expect(keytermsFrom(Array.from({ length: 150 }, (_, i) => `term ${i}`))).toHaveLength(100);
  });
});
