// Generated protobuf messages (ts-proto). Regenerate with `pnpm proto`; never edit gen/ by hand.
export * from "./gen/voicebot/media/v1/media.js";
export * from "./gen/voicebot/call/v1/call.js";
export * from "./gen/voicebot/asr/v1/asr.js";
export * from "./gen/voicebot/dialog/v1/dialog.js";
export * from "./gen/voicebot/tools/v1/tools.js";
export * from "./gen/voicebot/tts/v1/tts.js";
export * from "./gen/voicebot/health/v1/health.js";
// What dialog and tts agree on about a SpeakRequest beyond its fields.
export * from "./speak.js";
