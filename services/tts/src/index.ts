// What other packages and end-to-end tests use from the tts service (importing this does not start it).
export { createDefinition, definition, readTtsConfig, type TtsConfig, type TtsServiceOptions } from "./service.js";
export {
  createEngine,
  defaultEngines,
  engineFromEnv,
  readEngineSettings,
  type ConfigurableEngine,
  type EngineEntry,
  type EngineRegistry,
  type EngineSettings,
} from "./registry.js";
export { AllEnginesFailedError, EngineStalledError, FallbackEngine, type FallbackRequest } from "./fallback.js";
export type { TtsEngine } from "./engine.js";
