import { rmsDbfs } from "@voicebot/audio";
import { EnvReader } from "@voicebot/service-kit";
import { freePort, startFakeElevenLabs, waitFor, type FakeElevenLabs, type FakeElevenLabsSpeechRequest, type FakeTtsReply } from "@voicebot/testing";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { RequestRefusedError } from "../engine.js";
import { AllEnginesFailedError, FallbackEngine } from "../fallback.js";
import { ELEVENLABS_DEFAULT_VOICE_ID, ElevenLabsEngine, readElevenLabsConfig, type ElevenLabsEngineOptions } from "./elevenlabs.js";
import { FliteEngine } from "./flite.js";

const API_KEY = "xi-test-0123456789abcdef";
const SENTENCE = "Thanks for calling. Your order has shipped and should arrive on Tuesday.";

/** Real speech for the fake to send: flite at the asked rate (resampled band-limited when not 16 kHz). */
const flites = new Map<number, FliteEngine>();
const spoken = new Map<string, Promise<Int16Array>>();
function fliteSpeech(text: string, sampleRate: number): Promise<Int16Array> {
  const key = `${sampleRate}:${text}`;
  if (!spoken.has(key)) {
    if (!flites.has(sampleRate)) flites.set(sampleRate, new FliteEngine({ voice: "slt", sampleRate }));
    spoken.set(key, collect(flites.get(sampleRate)!.synthesize({ text })).then((r) => r.pcm));
  }
  return spoken.get(key)!;
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

async function collectUntilError(audio: AsyncIterable<Int16Array>) {
  let samples = 0;
  try {
    for await (const piece of audio) samples += piece.length;
  } catch (error) {
    return { samples, error: error as Error };
  }
  return { samples, error: undefined };
}

/** Signal-to-noise ratio of `out` against `reference` in dB. */
function snrDb(reference: Int16Array, out: Int16Array): number {
  let signal = 0;
  let noise = 0;
  reference.forEach((s, i) => {
    signal += s * s;
    noise += (out[i] - s) ** 2;
  });
  return 10 * Math.log10(signal / Math.max(1, noise));
}

describe("ElevenLabsEngine against a fake ElevenLabs API", () => {
  let fake: FakeElevenLabs;
  let reply: (request: FakeElevenLabsSpeechRequest) => FakeTtsReply | Promise<FakeTtsReply>;
  const engines: ElevenLabsEngine[] = [];
  const engine = (options: Partial<ElevenLabsEngineOptions> = {}) => {
    const made = new ElevenLabsEngine({ apiKey: API_KEY, baseUrl: fake.baseUrl, ...options });
    engines.push(made);
    return made;
  };

  beforeAll(async () => {
    fake = await startFakeElevenLabs({ apiKey: API_KEY, speech: fliteSpeech, reply: (request) => reply(request) });
  });
  beforeEach(() => {
    reply = () => ({});
  });
  afterAll(async () => {
    await Promise.all(engines.map((e) => e.close()));
    await fake?.stop();
    await Promise.all([...flites.values()].map((f) => f.close()));
  });

  it("streams μ-law 8 kHz speech (ulaw_8000 by default) decoded to PCM pieces as they arrive", async () => {
    const source = await fliteSpeech(SENTENCE, 8000);
    const tts = engine();
    expect(tts.sampleRate).toBe(8000);
    let outcomeAtFirstPiece: string | undefined = "unset";
    const started = performance.now();
    let firstMs = 0;
    const { pcm, pieces } = await collect(tts.synthesize({ text: SENTENCE }), () => {
      if (outcomeAtFirstPiece !== "unset") return;
      firstMs = performance.now() - started;
      outcomeAtFirstPiece = fake.speeches.at(-1)!.delivery.outcome;
    });
    expect(pcm.length).toBe(source.length);
    expect(snrDb(source, pcm)).toBeGreaterThan(30); // μ-law quantization only
    expect(pieces.length).toBeGreaterThan(10);
    expect(outcomeAtFirstPiece).toBeUndefined(); // audio came while the response was still streaming
    expect(firstMs).toBeLessThan(1000);
    expect(rmsDbfs(pcm)).toBeGreaterThan(-35);

    const request = fake.speeches.at(-1)!;
    expect(request.request.headers["xi-api-key"]).toBe(API_KEY);
    expect(request.request.path).toBe(`/v1/text-to-speech/${ELEVENLABS_DEFAULT_VOICE_ID}/stream`);
    expect(request.request.query).toEqual({ output_format: "ulaw_8000" });
    expect(request.body).toEqual({ text: SENTENCE, model_id: "eleven_flash_v2_5" });
    expect(await request.delivery.ended).toBe("completed");
  });

  it("streams pcm_16000 bit-exact across chunks that split samples", async () => {
    const source = await fliteSpeech(SENTENCE, 16000);
    const tts = engine({ outputFormat: "pcm_16000" });
    expect(tts.sampleRate).toBe(16000);
    const { pcm, pieces } = await collect(tts.synthesize({ text: SENTENCE }));
    expect(pieces.length).toBeGreaterThan(10);
    expect(Buffer.compare(Buffer.from(pcm.buffer), Buffer.from(source.buffer, source.byteOffset, source.byteLength))).toBe(0);
    expect(fake.speeches.at(-1)!.request.query.output_format).toBe("pcm_16000");
  });

  it("sends the request's voice, voice settings, and the speaking rate as speed within ElevenLabs' range", async () => {
    const tts = engine({ voiceId: "voice-a", voiceSettings: { stability: 0.4, similarity_boost: 0.8 }, model: "eleven_turbo_v2_5" });
    await collect(tts.synthesize({ text: "One moment.", voice: "voice-b", rate: 1.5 }));
    const request = fake.speeches.at(-1)!;
    expect(request.voiceId).toBe("voice-b");
    expect(request.body).toEqual({ text: "One moment.", model_id: "eleven_turbo_v2_5", voice_settings: { stability: 0.4, similarity_boost: 0.8, speed: 1.2 } });
    await collect(tts.synthesize({ text: "One moment." }));
    expect(fake.speeches.at(-1)!.voiceId).toBe("voice-a");
    expect(fake.speeches.at(-1)!.body.voice_settings).toEqual({ stability: 0.4, similarity_boost: 0.8 });
  });

  it("cancels the HTTP request on abort, mid-stream and while waiting for the first byte", async () => {
    const tts = engine();
    reply = () => ({ intervalMs: 40 });
    const reason = new Error("barge-in");
    const controller = new AbortController();
    let samples = 0;
    await expect(async () => {
      for await (const piece of tts.synthesize({ text: SENTENCE, signal: controller.signal })) {
        samples += piece.length;
        if (samples > 1600) controller.abort(reason);
      }
    }).rejects.toBe(reason);
    expect(await fake.speeches.at(-1)!.delivery.ended).toBe("client-closed");

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

  it("fails before any audio, with the API's reason and without the key, on 401, 422, 429, 500", async () => {
    const unauthorized = await collectUntilError(engine({ apiKey: "xi-wrong" }).synthesize({ text: "Hello." }));
    expect(unauthorized.samples).toBe(0);
    expect(unauthorized.error?.message).toBe("elevenlabs: HTTP 401: invalid_api_key: Invalid API key");

    const invalid = await collectUntilError(engine({ voiceSettings: { stability: 5 } }).synthesize({ text: "Hello." }));
    expect(invalid.samples).toBe(0);
    expect(invalid.error?.message).toBe("elevenlabs: HTTP 422: body.voice_settings.stability: Input should be a number between 0 and 1");

    const tts = engine();
    reply = () => ({ status: 401, message: `Key ${API_KEY} was revoked` });
    const echoed = await collectUntilError(tts.synthesize({ text: "Hello." }));
    expect(echoed.error?.message).toBe("elevenlabs: HTTP 401: invalid_api_key: Key *** was revoked");

    for (const [status, code] of [[429, "system_busy"], [500, "internal_error"]] as const) {
      reply = () => ({ status, code, message: "try later" });
      const count = fake.speeches.length;
      const failed = await collectUntilError(tts.synthesize({ text: "Hello." }));
      expect(failed.samples).toBe(0);
      expect(failed.error?.message).toBe(`elevenlabs: HTTP ${status}: ${code}: try later`);
      expect(failed.error).not.toBeInstanceOf(RequestRefusedError); // the engine's failure: it cools down
      expect(fake.speeches.length).toBe(count + 1);
    }
  });

  it("asks again after a 429 for the plan's concurrency limit (a burst), then refuses only that request: no cool-down", async () => {
    const tts = engine();
    // The limit passes after one refusal: the sentence is spoken, a little later.
    let refusals = 1;
    reply = () => (refusals-- > 0 ? { status: 429, code: "too_many_concurrent_requests", message: "Too many concurrent requests" } : {});
    let count = fake.speeches.length;
    const spoken = await collectUntilError(tts.synthesize({ text: "Hello." }));
    expect(spoken.error).toBeUndefined();
    expect(spoken.samples).toBeGreaterThan(0);
    expect(fake.speeches.length).toBe(count + 2);

    // It does not pass: after two more tries this one request is refused, so it moves on without cooling the engine.
    reply = () => ({ status: 429, code: "too_many_concurrent_requests", message: "Too many concurrent requests" });
    count = fake.speeches.length;
    const refused = await collectUntilError(tts.synthesize({ text: "Hello." }));
    expect(refused.samples).toBe(0);
    expect(refused.error).toBeInstanceOf(RequestRefusedError);
    expect(refused.error?.message).toBe("elevenlabs: HTTP 429: too_many_concurrent_requests: Too many concurrent requests");
    expect(fake.speeches.length).toBe(count + 3);

    // Slow refusals: asked again only within a second in all (the caller would hear the wait).
    reply = async () => {
      await new Promise((r) => setTimeout(r, 450));
      return { status: 429, code: "too_many_concurrent_requests", message: "Too many concurrent requests" };
    };
    count = fake.speeches.length;
    const startedAt = performance.now();
    const slow = await collectUntilError(tts.synthesize({ text: "Hello." }));
    expect(slow.error).toBeInstanceOf(RequestRefusedError);
    expect(fake.speeches.length).toBe(count + 2);
    expect(performance.now() - startedAt).toBeLessThan(1_300);
  });

  it("fails before any audio when the server is unreachable, answers with something other than audio, or never answers", async () => {
    const closedPort = await freePort();
    const unreachable = await collectUntilError(engine({ baseUrl: `http://127.0.0.1:${closedPort}` }).synthesize({ text: "Hello." }));
    expect(unreachable.samples).toBe(0);
    expect(unreachable.error?.message).toMatch(/^elevenlabs: cannot reach http:\/\/127\.0\.0\.1:\d+: connect ECONNREFUSED/);

    reply = () => ({ raw: { status: 200, contentType: "application/json", body: '{"detail":"maintenance"}' } });
    const json = await collectUntilError(engine().synthesize({ text: "Hello." }));
    expect(json.samples).toBe(0);
    expect(json.error?.message).toBe('elevenlabs: expected audio but the server sent application/json: {"detail":"maintenance"}');

    // Raw μ-law was asked for: compressed or wrapped audio would play (and be cached) as noise.
    // Two MP3 frames (MPEG-1 layer III, 128 kbit/s, 44.1 kHz: 417 bytes each).
    const frame = Buffer.concat([Buffer.from([0xff, 0xfb, 0x90, 0x64]), Buffer.alloc(413, 0x55)]);
    const mp3Frame = Buffer.concat([frame, frame]);
    for (const [contentType, body, error] of [
      ["audio/mpeg", mp3Frame, "elevenlabs: asked for raw ulaw_8000 audio, the server sent MPEG audio (audio/mpeg)"],
      ["", mp3Frame, "elevenlabs: asked for raw ulaw_8000 audio, the server sent MPEG audio (no content type)"],
      ["audio/basic", Buffer.concat([Buffer.from("RIFF"), Buffer.alloc(400, 0xff)]), "elevenlabs: asked for raw ulaw_8000 audio, the server sent a RIFF file"],
    ] as const) {
      reply = () => ({ raw: { status: 200, contentType, body } });
      const wrong = await collectUntilError(engine().synthesize({ text: "Hello." }));
      expect(wrong.samples, contentType).toBe(0);
      expect(wrong.error?.message).toBe(error);
    }
    // A gateway may label raw μ-law "audio/mpeg": the bytes decide, even when quiet raw audio starts like a frame header.
    for (const body of [Buffer.alloc(800, 0xff), Buffer.concat([Buffer.from([0xff, 0xfe, 0x74]), Buffer.alloc(797, 0xfe)])]) {
      reply = () => ({ raw: { status: 200, contentType: "audio/mpeg", body } });
      const mislabelled = await collectUntilError(engine().synthesize({ text: "Hello." }));
      expect(mislabelled.error).toBeUndefined();
      expect(mislabelled.samples).toBe(800);
    }

    reply = () => ({ hang: true });
    const hung = await collectUntilError(engine({ timeoutMs: 300 }).synthesize({ text: "Hello." }));
    expect(hung.samples).toBe(0);
    expect(hung.error?.message).toMatch(/^elevenlabs: no response from .* within 300 ms/);
    expect(await fake.speeches.at(-1)!.delivery.ended).toBe("client-closed");
  });

  it("is given up by the FallbackEngine when it stalls after the headers, and the request is closed", async () => {
    reply = () => ({ stallAfterChunks: 0 });
    const fallback = new FallbackEngine([engine()], { stallMs: 300 });
    const stalled = await collectUntilError(fallback.synthesize({ text: "Hello." }));
    expect(stalled.error).toBeInstanceOf(AllEnginesFailedError);
    expect(stalled.error?.message).toMatch(/elevenlabs produced no audio for 300 ms/);
    expect(await fake.speeches.at(-1)!.delivery.ended).toBe("client-closed");
  });

  it("waits out a slow first byte, and ends with an error when the connection is cut mid-stream", async () => {
    reply = () => ({ delayMs: 400 });
    const started = performance.now();
    let firstMs = 0;
    const slow = await collect(engine().synthesize({ text: "Hello there." }), () => (firstMs ||= performance.now() - started));
    expect(firstMs).toBeGreaterThanOrEqual(390);
    expect(slow.pcm.length).toBe((await fliteSpeech("Hello there.", 8000)).length);

    reply = () => ({ cutAfterChunks: 3 });
    const cut = await collectUntilError(engine().synthesize({ text: SENTENCE }));
    expect(cut.samples).toBe(3 * 801); // three chunks of 100 ms + 1 byte, one sample each
    expect(cut.error?.message).toMatch(/^elevenlabs: audio stream broke off: /);
    expect(await fake.speeches.at(-1)!.delivery.ended).toBe("cut");
  });

});

describe("ElevenLabsEngine keep-warm", () => {
  it("warms up without a synthesis: one free GET /v1/models opens a connection for the first sentence (none with keep-warm off)", async () => {
    await using fake = await startFakeElevenLabs({ apiKey: API_KEY });
    const warmed = new ElevenLabsEngine({ apiKey: API_KEY, baseUrl: fake.baseUrl });
    const off = new ElevenLabsEngine({ apiKey: API_KEY, baseUrl: fake.baseUrl, keepWarmMs: 0 });
    try {
      await off.warmUp();
      await warmed.warmUp();
      await waitFor(() => fake.requests.length === 1, { timeoutMs: 2_000 });
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(fake.requests).toHaveLength(1);
      expect(fake.requests[0]).toMatchObject({ method: "GET", path: "/v1/models" });
      expect(fake.requests[0].headers["xi-api-key"]).toBe(API_KEY);
      expect(fake.speeches).toHaveLength(0);
      expect(warmed.keepWarmRequests).toEqual({ sent: 1, failed: 0 });
    } finally {
      await Promise.all([warmed.close(), off.close()]);
    }
  });

  it("reports a keep-warm request that gets no answer, without the key", async () => {
    const port = await freePort();
    const failures: string[] = [];
    const unreachable = new ElevenLabsEngine({ apiKey: API_KEY, baseUrl: `http://127.0.0.1:${port}`, onKeepWarmFailure: (error) => failures.push(error) });
    try {
      await unreachable.warmUp();
      await waitFor(() => failures.length === 1, { timeoutMs: 2_000 });
      expect(failures[0]).toMatch(/^elevenlabs: connect ECONNREFUSED 127\.0\.0\.1:\d+/);
      expect(failures[0]).not.toContain(API_KEY);
    } finally {
      await unreachable.close();
    }
  });
});

describe("readElevenLabsConfig", () => {
  it("needs the API key and reads the defaults", () => {
    const missing = new EnvReader({});
    readElevenLabsConfig(missing);
    expect(() => missing.done()).toThrow(/TTS_ENGINES includes elevenlabs but ELEVENLABS_API_KEY is not set/);

    const env = new EnvReader({ ELEVENLABS_API_KEY: API_KEY });
    expect(readElevenLabsConfig(env)).toMatchObject({
      apiKey: API_KEY,
      baseUrl: "https://api.elevenlabs.io",
      model: "eleven_flash_v2_5",
      voiceId: ELEVENLABS_DEFAULT_VOICE_ID,
      outputFormat: "ulaw_8000",
      keepWarmMs: 300_000,
    });
    env.done();
    expect(readElevenLabsConfig(new EnvReader({ ELEVENLABS_API_KEY: API_KEY, ELEVENLABS_KEEP_WARM_S: "0" })).keepWarmMs).toBe(0);

    const bad = new EnvReader({ ELEVENLABS_API_KEY: API_KEY, ELEVENLABS_OUTPUT_FORMAT: "mp3_44100_128", ELEVENLABS_VOICE_SETTINGS: "[1]" });
    readElevenLabsConfig(bad);
    expect(() => bad.done()).toThrow(/ELEVENLABS_VOICE_SETTINGS must be a JSON object.*ELEVENLABS_OUTPUT_FORMAT="mp3_44100_128" must be one of ulaw_8000/);
  });
});
