export { FliteEngine, type FliteEngineOptions } from "./flite.js";
export { EspeakEngine, type EspeakEngineOptions } from "./espeak.js";
