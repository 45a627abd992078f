import { EnvReader } from "@voicebot/service-kit";
import type { TtsEngine } from "./engine.js";
import { ElevenLabsEngine, readElevenLabsConfig } from "./engines/elevenlabs.js";
import { EspeakEngine } from "./engines/espeak.js";
import { FliteEngine } from "./engines/flite.js";
import { OpenAIEngine, readOpenAIConfig } from "./engines/openai.js";
import { FallbackEngine, type FallbackOptions } from "./fallback.js";

export interface EngineEntry {
  /** Voice used when TTS_VOICE and the request name none. */
  defaultVoice: string;
  create(voice: string, events?: EngineEvents): TtsEngine;
}

/** What an engine reports outside a synthesis. */
export interface EngineEvents {
  /** A cloud engine's keep-warm request failed (engine label, redacted error). */
  onKeepWarmFailure?: (engine: string, error: string) => void;
}

/**
 * An engine with settings of its own (endpoint, API key, model), read from the environment only when TTS_ENGINES
 * lists it; problems (a missing key) go to `env.problem` and fail the configuration.
 */
export interface ConfigurableEngine {
  configure(env: EnvReader): EngineEntry;
}

/** Engines by the name used in TTS_ENGINES. Tests add doubles of the engine edge here. */
export type EngineRegistry = Readonly<Record<string, EngineEntry | ConfigurableEngine>>;

export const defaultEngines = {
  flite: { defaultVoice: "slt", create: (voice: string) => new FliteEngine({ voice }) },
  espeak: { defaultVoice: "en-us", create: (voice: string) => new EspeakEngine({ voice }) },
  openai: {
    configure(env: EnvReader): EngineEntry {
      const { voice, ...options } = readOpenAIConfig(env);
      return {
        defaultVoice: voice,
        create: (chosen, events) =>
          new OpenAIEngine({ ...options, voice: chosen, onKeepWarmFailure: (error) => events?.onKeepWarmFailure?.("openai", error) }),
      };
    },
  },
  elevenlabs: {
    configure(env: EnvReader): EngineEntry {
      const { voiceId, ...options } = readElevenLabsConfig(env);
      return {
        defaultVoice: voiceId,
        create: (chosen, events) =>
          new ElevenLabsEngine({ ...options, voiceId: chosen, onKeepWarmFailure: (error) => events?.onKeepWarmFailure?.("elevenlabs", error) }),
      };
    },
  },
} satisfies EngineRegistry;

export interface EngineSettings {
  /** Failover order: the first is the primary engine. */
  engines: string[];
  /** Voice of the primary engine (TTS_VOICE); the others speak in their default voice. */
  voice: string;
  /** TTS_STALL_MS: no audio for this long counts as a failed engine. */
  stallMs: number;
  /** TTS_ENGINE_COOLDOWN_MS: how long a failed engine is tried after the others. */
  cooldownMs: number;
  /** TTS_MAX_LAG_MS: an engine whose audio falls this far behind real time mid-chunk hands the rest on (0 = never). */
  maxLagMs: number;
  /** The listed engines with their settings read, in failover order. */
  entries: EngineEntry[];
}

/** TTS_ENGINES (ordered failover list, default "flite"), TTS_VOICE, TTS_STALL_MS, and the listed engines' own settings. */
export function readEngineSettings(env: EnvReader, registry: EngineRegistry = defaultEngines): EngineSettings {
  const names = Object.keys(registry);
  const engines = [...new Set(env.list("TTS_ENGINES", names, [names.includes("flite") ? "flite" : names[0]]))];
  const entries = engines.map((name) => {
    const entry = registry[name];
    return "configure" in entry ? entry.configure(env) : entry;
  });
  return {
    engines,
    voice: env.string("TTS_VOICE", entries[0].defaultVoice),
    stallMs: env.int("TTS_STALL_MS", 3_000, { min: 100, max: 60_000 }),
    cooldownMs: env.int("TTS_ENGINE_COOLDOWN_MS", 30_000, { min: 0, max: 3_600_000 }),
    maxLagMs: env.int("TTS_MAX_LAG_MS", 1_500, { min: 0, max: 60_000 }),
    entries,
  };
}

/** The configured engines in failover order, behind one TtsEngine. */
export function createEngine(settings: EngineSettings, events: Omit<FallbackOptions, "stallMs" | "cooldownMs" | "maxLagMs"> & EngineEvents = {}): FallbackEngine {
  const { onKeepWarmFailure, ...fallback } = events;
  const engines = settings.entries.map((entry, index) => entry.create(index === 0 ? settings.voice : entry.defaultVoice, { onKeepWarmFailure }));
  return new FallbackEngine(engines, { ...fallback, stallMs: settings.stallMs, cooldownMs: settings.cooldownMs, maxLagMs: settings.maxLagMs });
}

/** The engine a tts replica would use with this environment (for end-to-end tests that pick engines by env). */
export function engineFromEnv(env: NodeJS.ProcessEnv = process.env, registry: EngineRegistry = defaultEngines): FallbackEngine {
  const reader = new EnvReader(env);
  const settings = readEngineSettings(reader, registry);
  reader.done();
  return createEngine(settings);
}
