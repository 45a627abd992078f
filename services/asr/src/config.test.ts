import { EnvReader } from "@voicebot/service-kit";
import { describe, expect, it } from "vitest";
import { definition } from "./service.js";

function read(env: Record<string, string>) {
  const reader = new EnvReader(env);
  const config = definition.readConfig(reader);
  reader.done();
  return config;
}

describe("asr configuration", () => {
  it("defaults to pocketsphinx alone, the Silero VAD and the documented endpointing", () => {
    const config = read({});
    expect(config.engines.map((e) => e.kind)).toEqual(["pocketsphinx"]);
    expect(config.deprecatedEngineVariable).toBe(false);
    expect(config.vad.kind).toBe("silero");
    expect(config.vad.silero).toMatchObject({ threshold: 0.5, gateDbfs: -55, gateMarginDb: 6, batchMax: 64, batchWaitMs: 5 });
    expect(config.vad.silero.modelPath).toMatch(/silero_vad\.onnx$/);
    expect(config.session.segmenter).toMatchObject({ startMs: 40, minSilenceMs: 600, maxSilenceMs: 1500 });
    expect(config.fallback).toEqual({ timeoutMs: 3000, cooldownMs: 30_000 });
    expect(config.session.continuations).toContainEqual(["order", "number"]);
    expect(config.session.completeSilenceMs).toBe(300);
  });

  it("takes ASR_COMPLETE_SILENCE_MS as 0 (off) or at least 200 ms", () => {
    expect(read({ ASR_COMPLETE_SILENCE_MS: "0" }).session.completeSilenceMs).toBe(0);
    expect(read({ ASR_COMPLETE_SILENCE_MS: "250" }).session.completeSilenceMs).toBe(250);
    expect(() => read({ ASR_COMPLETE_SILENCE_MS: "150" })).toThrow(/ASR_COMPLETE_SILENCE_MS=150 must be 0 \(off\) or at least 200/);
  });

  it("reads ASR_ENGINES as an ordered failover list, with each listed engine's settings", () => {
    const config = read({ ASR_ENGINES: "assemblyai, pocketsphinx", ASSEMBLYAI_API_KEY: "k", ASR_ENGINE_TIMEOUT_MS: "2500", ASR_ENGINE_COOLDOWN_MS: "1000" });
    expect(config.engines.map((e) => e.kind)).toEqual(["assemblyai", "pocketsphinx"]);
    expect(config.engines[0]).toMatchObject({ kind: "assemblyai", config: { apiKey: "k" } });
    expect(config.fallback).toEqual({ timeoutMs: 2500, cooldownMs: 1000 });
  });

  it("still takes the deprecated ASR_ENGINE when ASR_ENGINES is not set", () => {
    expect(read({ ASR_ENGINE: "openai" })).toMatchObject({ engines: [{ kind: "openai" }], deprecatedEngineVariable: true });
    expect(read({ ASR_ENGINE: "openai", ASR_ENGINES: "pocketsphinx" })).toMatchObject({ engines: [{ kind: "pocketsphinx" }], deprecatedEngineVariable: false });
  });

  it("rejects unknown or repeated engines and bad VAD settings, all in one error", () => {
    expect(() => read({ ASR_ENGINES: "pocketsphinx,whisper" })).toThrow(/ASR_ENGINES.*unknown whisper/);
    expect(() => read({ ASR_ENGINES: "pocketsphinx,pocketsphinx" })).toThrow(/names an engine twice/);
    expect(() => read({ ASR_VAD: "webrtc", ASR_VAD_THRESHOLD: "1.5" })).toThrow(/ASR_VAD=.*silero, energy.*ASR_VAD_THRESHOLD/);
  });

  it("uses the energy VAD's 60 ms start hysteresis with ASR_VAD=energy, and can turn the longer wait off", () => {
    const config = read({ ASR_VAD: "energy", ASR_CONTINUATION_WORDS: "none" });
    expect(config.vad.kind).toBe("energy");
    expect(config.session.segmenter.startMs).toBe(60);
    expect(config.session.continuations).toEqual([]);
    expect(read({ ASR_CONTINUATION_WORDS: "and, my order number is" }).session.continuations).toEqual([["and"], ["my", "order", "number", "is"]]);
  });
});
