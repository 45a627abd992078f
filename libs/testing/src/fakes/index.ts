export * from "./assemblyai.js";
export * from "./openai.js";
export * from "./tls.js";
export * from "./openai-speech.js";
export * from "./elevenlabs.js";
export { syntheticSpeech, type FakeSpeechSource, type FakeTtsDelivery, type FakeTtsOutcome, type FakeTtsReply } from "./tts-audio.js";
export * from "./openai-chat.js";
