import { EnvReader } from "@voicebot/service-kit";
import type { TtsEngine } from "./engine.js";
import { EspeakEngine } from "./engines/espeak.js";
import { FliteEngine } from "./engines/flite.js";
import { FallbackEngine, type FallbackOptions } from "./fallback.js";

export interface EngineEntry {
  /** Voice used when TTS_VOICE and the request name none. */
  defaultVoice: string;
  create(voice: string): TtsEngine;
}

/** Engines by the name used in TTS_ENGINES. Tests add doubles of the engine edge here. */
export type EngineRegistry = Readonly<Record<string, EngineEntry>>;

export const defaultEngines: EngineRegistry = {
  flite: { defaultVoice: "slt", create: (voice) => new FliteEngine({ voice }) },
  espeak: { defaultVoice: "en-us", create: (voice) => new EspeakEngine({ voice }) },
};

export interface EngineSettings {
  /** Failover order: the first is the primary engine. */
  engines: string[];
  /** Voice of the primary engine (TTS_VOICE); the others speak in their default voice. */
  voice: string;
  /** TTS_STALL_MS: no audio for this long counts as a failed engine. */
  stallMs: number;
}

/** TTS_ENGINES (ordered failover list, default "flite"), TTS_VOICE, TTS_STALL_MS. */
export function readEngineSettings(env: EnvReader, registry: EngineRegistry = defaultEngines): EngineSettings {
  const names = Object.keys(registry);
  const engines = [...new Set(env.list("TTS_ENGINES", names, [names.includes("flite") ? "flite" : names[0]]))];
  const primary = registry[engines[0]] ?? registry[names[0]];
  return {
    engines,
    voice: env.string("TTS_VOICE", primary.defaultVoice),
    stallMs: env.int("TTS_STALL_MS", 3_000, { min: 100, max: 60_000 }),
  };
}

/** The configured engines in failover order, behind one TtsEngine. */
export function createEngine(
  settings: EngineSettings,
  registry: EngineRegistry = defaultEngines,
  events: Omit<FallbackOptions, "stallMs"> = {},
): FallbackEngine {
  const engines = settings.engines.map((name, index) => {
    const entry = registry[name];
    if (!entry) throw new Error(`unknown tts engine ${JSON.stringify(name)} (known: ${Object.keys(registry).join(", ")})`);
    return entry.create(index === 0 ? settings.voice : entry.defaultVoice);
  });
  return new FallbackEngine(engines, { ...events, stallMs: settings.stallMs });
}

/** The engine a tts replica would use with this environment (for end-to-end tests that pick engines by env). */
export function engineFromEnv(env: NodeJS.ProcessEnv = process.env, registry: EngineRegistry = defaultEngines): FallbackEngine {
  const reader = new EnvReader(env);
  const settings = readEngineSettings(reader, registry);
  reader.done();
  return createEngine(settings, registry);
}
