export { FliteEngine, type FliteEngineOptions } from "./flite.js";
export { EspeakEngine, type EspeakEngineOptions } from "./espeak.js";
export { OpenAIEngine, readOpenAIConfig, type OpenAIEngineOptions } from "./openai.js";
export { ElevenLabsEngine, readElevenLabsConfig, type ElevenLabsEngineOptions, type ElevenLabsOutputFormat } from "./elevenlabs.js";
