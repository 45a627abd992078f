import { rmsDbfs } from "@voicebot/audio";
import { EnvReader } from "@voicebot/service-kit";
import { freePort, startFakeOpenAISpeech, waitFor, type FakeOpenAISpeech, type FakeSpeechRequest, type FakeTtsReply } from "@voicebot/testing";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { AllEnginesFailedError, FallbackEngine } from "../fallback.js";
import { L16ChunkDecoder } from "./cloud.js";
import { FliteEngine } from "./flite.js";
import { OpenAIEngine, readOpenAIConfig, type OpenAIEngineOptions } from "./openai.js";

const API_KEY = "sk-test-0123456789abcdef";
const SENTENCE = "Thanks for calling. Your order has shipped and should arrive on Tuesday.";

/** Real speech for the fake to send: flite, resampled band-limited to the asked rate (cached per text and rate). */
const flite = new FliteEngine({ voice: "slt", sampleRate: 24000 });
const spoken = new Map<string, Promise<Int16Array>>();
function fliteSpeech(text: string): Promise<Int16Array> {
  if (!spoken.has(text)) spoken.set(text, collect(flite.synthesize({ text })).then((r) => r.pcm));
  return spoken.get(text)!;
}

async function collect(audio: AsyncIterable<Int16Array>, onPiece?: (pcm: Int16Array) => void) {
  const pieces: Int16Array[] = [];
  for await (const piece of audio) {
    pieces.push(piece);
    onPiece?.(piece);
  }
  const pcm = new Int16Array(pieces.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of pieces) {
    pcm.set(p, at);
    at += p.length;
  }
  return { pcm, pieces };
}

/** Collects until the engine fails; returns what came before the error. */
async function collectUntilError(audio: AsyncIterable<Int16Array>) {
  let samples = 0;
  try {
    for await (const piece of audio) samples += piece.length;
  } catch (error) {
    return { samples, error: error as Error };
  }
  return { samples, error: undefined };
}

describe("OpenAIEngine against a fake OpenAI speech endpoint", () => {
  let fake: FakeOpenAISpeech;
  let reply: (request: FakeSpeechRequest) => FakeTtsReply;
  const engines: OpenAIEngine[] = [];
  const engine = (options: Partial<OpenAIEngineOptions> = {}) => {
    const made = new OpenAIEngine({ apiKey: API_KEY, baseUrl: fake.baseUrl, ...options });
    engines.push(made);
    return made;
  };

  beforeAll(async () => {
    fake = await startFakeOpenAISpeech({ apiKey: API_KEY, speech: fliteSpeech, reply: (request) => reply(request) });
  });
  beforeEach(() => {
    reply = () => ({});
  });
  afterAll(async () => {
    await Promise.all(engines.map((e) => e.close()));
    await fake?.stop();
    await flite.close();
  });

  it("streams 24 kHz speech in pieces as it arrives, bit-exact across chunks that split samples", async () => {
    const source = await fliteSpeech(SENTENCE);
    const tts = engine();
    expect(tts.sampleRate).toBe(24000);
    let outcomeAtFirstPiece: string | undefined = "unset";
    const started = performance.now();
    let firstMs = 0;
    const { pcm, pieces } = await collect(tts.synthesize({ text: SENTENCE }), () => {
      if (outcomeAtFirstPiece !== "unset") return;
      firstMs = performance.now() - started;
      outcomeAtFirstPiece = fake.speeches.at(-1)!.delivery.outcome;
    });
    // Every chunk of 4801 bytes ends inside a sample: the output is still exactly what was sent.
    expect(pcm.length).toBe(source.length);
    expect(Buffer.compare(Buffer.from(pcm.buffer), Buffer.from(source.buffer, source.byteOffset, source.byteLength))).toBe(0);
    expect(pieces.length).toBeGreaterThan(10);
    expect(outcomeAtFirstPiece).toBeUndefined(); // the first audio came while the response was still streaming
    expect(firstMs).toBeLessThan(1000);
    expect(rmsDbfs(pcm)).toBeGreaterThan(-35);
    expect(pcm.length / 24000).toBeGreaterThan(2);

    const request = fake.speeches.at(-1)!;
    expect(request.request.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(request.body).toEqual({ model: "gpt-4o-mini-tts", voice: "alloy", input: SENTENCE, response_format: "pcm" });
    expect(await request.delivery.ended).toBe("completed");
  });

  it("sends the request's voice, the speaking rate as speed, and the instructions", async () => {
    const tts = engine({ model: "gpt-4o-mini-tts", voice: "coral", instructions: "Speak warmly and briefly." });
    await collect(tts.synthesize({ text: "One moment.", voice: "sage", rate: 1.25 }));
    expect(fake.speeches.at(-1)!.body).toEqual({
      model: "gpt-4o-mini-tts",
      voice: "sage",
      input: "One moment.",
      response_format: "pcm",
      speed: 1.25,
      instructions: "Speak warmly and briefly.",
    });
    await collect(tts.synthesize({ text: "One moment." }));
    expect(fake.speeches.at(-1)!.voice).toBe("coral");
  });

  it("cancels the HTTP request on abort, mid-stream and while waiting for the first byte", async () => {
    const tts = engine();
    reply = () => ({ intervalMs: 40 });
    const controller = new AbortController();
    const reason = new Error("barge-in");
    let samples = 0;
    await expect(async () => {
      for await (const piece of tts.synthesize({ text: SENTENCE, signal: controller.signal })) {
        samples += piece.length;
        if (samples > 4800) controller.abort(reason);
      }
    }).rejects.toBe(reason);
    const streaming = fake.speeches.at(-1)!;
    expect(await streaming.delivery.ended).toBe("client-closed");
    expect(streaming.delivery.bytesSent).toBeLessThan((await fliteSpeech(SENTENCE)).length * 2);

    reply = () => ({ delayMs: 5000 });
    const early = new AbortController();
    const count = fake.speeches.length;
    const attempt = collect(tts.synthesize({ text: "Hello there.", signal: early.signal }));
    await waitFor(() => fake.speeches.length > count, { what: "the request" });
    const abortedAt = performance.now();
    early.abort(reason);
    await expect(attempt).rejects.toBe(reason);
    expect(performance.now() - abortedAt).toBeLessThan(500);
    expect(await fake.speeches.at(-1)!.delivery.ended).toBe("client-closed");
  });

  it("closes the connection when the consumer stops reading early", async () => {
    const tts = engine();
    reply = () => ({ intervalMs: 40 });
    for await (const piece of tts.synthesize({ text: SENTENCE })) {
      expect(piece.length).toBeGreaterThan(0);
      break;
    }
    expect(await fake.speeches.at(-1)!.delivery.ended).toBe("client-closed");
  });

  it("fails before any audio, with a clear key-free error and no retry, on 401, 429, 500", async () => {
    const wrongKey = "sk-wrong-key-fedcba9876543210";
    const bad = engine({ apiKey: wrongKey });
    const before = fake.requests.length;
    const unauthorized = await collectUntilError(bad.synthesize({ text: "Hello." }));
    expect(unauthorized.samples).toBe(0);
    expect(unauthorized.error?.message).toMatch(/^openai speech request failed: HTTP 401: Incorrect API key/);
    expect(fake.requests.length).toBe(before + 1);

    const tts = engine();
    // A server that echoes the key in its error text: the key must not reach our error (and logs).
    reply = () => ({ status: 401, message: `Incorrect API key provided: ${API_KEY}.` });
    const echoed = await collectUntilError(tts.synthesize({ text: "Hello." }));
    expect(echoed.error?.message).toMatch(/HTTP 401/);
    expect(echoed.error?.message).not.toContain(API_KEY);

    for (const status of [429, 500, 503]) {
      reply = () => ({ status, message: `busy ${status}`, retryAfterSeconds: 0 });
      const count = fake.speeches.length;
      const failed = await collectUntilError(tts.synthesize({ text: "Hello." }));
      expect(failed.samples).toBe(0);
      expect(failed.error?.message).toBe(`openai speech request failed: HTTP ${status}: busy ${status}`);
      expect(fake.speeches.length).toBe(count + 1); // no SDK retry: the next engine is faster
    }
  });

  it("fails before any audio when the server is unreachable, answers with something other than audio, or never answers", async () => {
    const closedPort = await freePort();
    const unreachable = await collectUntilError(engine({ baseUrl: `http://127.0.0.1:${closedPort}/v1` }).synthesize({ text: "Hello." }));
    expect(unreachable.samples).toBe(0);
    expect(unreachable.error?.message).toMatch(/^openai speech request failed: cannot reach http:\/\/127\.0\.0\.1:\d+\/v1: .*ECONNREFUSED/);

    reply = () => ({ raw: { status: 200, contentType: "text/html; charset=utf-8", body: "<html><body>Please log in to the proxy</body></html>" } });
    const html = await collectUntilError(engine().synthesize({ text: "Hello." }));
    expect(html.samples).toBe(0);
    expect(html.error?.message).toMatch(/^openai: expected audio but the server sent text\/html.*Please log in to the proxy/);

    // Raw PCM was asked for: MP3 or WAV decoded as samples is loud noise.
    for (const [contentType, body, error] of [
      ["audio/mpeg", Buffer.concat([0, 1].map(() => Buffer.concat([Buffer.from([0xff, 0xfb, 0x90, 0x64]), Buffer.alloc(413, 1)]))), "openai: asked for raw pcm audio, the server sent MPEG audio (audio/mpeg)"],
      ["audio/pcm", Buffer.concat([Buffer.from("ID3"), Buffer.alloc(400)]), "openai: asked for raw pcm audio, the server sent a ID3 file"],
    ] as const) {
      reply = () => ({ raw: { status: 200, contentType, body } });
      const wrong = await collectUntilError(engine().synthesize({ text: "Hello." }));
      expect(wrong.samples, contentType).toBe(0);
      expect(wrong.error?.message).toBe(error);
    }

    reply = () => ({ raw: { status: 200, contentType: "audio/pcm", body: "" } });
    const empty = await collectUntilError(engine().synthesize({ text: "Hello." }));
    expect(empty.error?.message).toBe("openai: the response held no audio");

    reply = () => ({ hang: true });
    const hung = await collectUntilError(engine({ timeoutMs: 300 }).synthesize({ text: "Hello." }));
    expect(hung.samples).toBe(0);
    expect(hung.error?.message).toMatch(/^openai speech request failed: no response from .* in time/);
    expect(await fake.speeches.at(-1)!.delivery.ended).toBe("client-closed");
  });

  it("is given up by the FallbackEngine when it stalls after the headers, and the request is closed", async () => {
    reply = () => ({ stallAfterChunks: 0 });
    const fallback = new FallbackEngine([engine()], { stallMs: 300 });
    const stalled = await collectUntilError(fallback.synthesize({ text: "Hello." }));
    expect(stalled.error).toBeInstanceOf(AllEnginesFailedError);
    expect(stalled.error?.message).toMatch(/openai produced no audio for 300 ms/);
    expect(await fake.speeches.at(-1)!.delivery.ended).toBe("client-closed");
  });

  it("waits out a slow first byte, and ends with an error when the connection is cut mid-stream", async () => {
    reply = () => ({ delayMs: 400 });
    const started = performance.now();
    let firstMs = 0;
    const slow = await collect(engine().synthesize({ text: "Hello there." }), () => (firstMs ||= performance.now() - started));
    expect(firstMs).toBeGreaterThanOrEqual(390);
    expect(slow.pcm.length).toBe((await fliteSpeech("Hello there.")).length);

    reply = () => ({ cutAfterChunks: 3 });
    const cut = await collectUntilError(engine().synthesize({ text: SENTENCE }));
    expect(cut.samples).toBeGreaterThan(0); // audio had begun: no failover, the chunk ends short
    expect(cut.samples).toBeLessThan((await fliteSpeech(SENTENCE)).length);
    expect(cut.error?.message).toMatch(/^openai: audio stream broke off: /);
    expect(await fake.speeches.at(-1)!.delivery.ended).toBe("cut");
  });

  it("warms up without calling the API", async () => {
    const before = fake.requests.length;
    await engine().warmUp();
    expect(fake.requests.length).toBe(before);
  });
});

describe("L16ChunkDecoder", () => {
  it("rebuilds samples split across chunks of any size", () => {
    const source = Int16Array.from({ length: 1000 }, (_, i) => (i * 7919) % 65536 - 32768);
    const bytes = new Uint8Array(source.buffer);
    const decoder = new L16ChunkDecoder();
    const out: number[] = [];
    for (let at = 0, size = 1; at < bytes.length; at += size, size = (size % 5) + 1) out.push(...decoder.push(bytes.subarray(at, at + size)));
    expect(out).toEqual([...source]);
  });
});

describe("readOpenAIConfig", () => {
  it("needs the API key and reads the defaults", () => {
    const missing = new EnvReader({});
    readOpenAIConfig(missing);
    expect(() => missing.done()).toThrow(/TTS_ENGINES includes openai but TTS_OPENAI_API_KEY is not set/);

    const env = new EnvReader({ TTS_OPENAI_API_KEY: API_KEY });
    expect(readOpenAIConfig(env)).toMatchObject({ apiKey: API_KEY, baseUrl: "https://api.openai.com/v1", model: "gpt-4o-mini-tts", voice: "alloy" });
    env.done();

    const bad = new EnvReader({ TTS_OPENAI_API_KEY: API_KEY, TTS_OPENAI_MODEL: "tts-1", TTS_OPENAI_INSTRUCTIONS: "Be calm.", TTS_OPENAI_BASE_URL: "ftp://x" });
    readOpenAIConfig(bad);
    expect(() => bad.done()).toThrow(/model tts-1 does not take instructions.*TTS_OPENAI_BASE_URL must be a https\/http URL/);
  });
});
