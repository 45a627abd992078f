import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export type AsrMetrics = ReturnType<typeof createMetrics>;

export function createMetrics(registry: Registry) {
  const registers = [registry];
  return {
    activeSessions: new Gauge({
      name: "voicebot_asr_active_sessions",
      help: "Recognizer sessions open on this replica (utterances being heard or decoded)",
      registers,
    }),
    finalLatency: new Histogram({
      name: "voicebot_asr_final_latency_seconds",
      help: "Caller stopped speaking -> final transcript published",
      labelNames: ["engine"],
      buckets: [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10],
      registers,
    }),
    finals: new Counter({
      name: "voicebot_asr_finals_total",
      help: "Final transcripts published",
      labelNames: ["engine", "result"],
      registers,
    }),
    partials: new Counter({
      name: "voicebot_asr_partials_total",
      help: "Partial transcripts published",
      labelNames: ["engine"],
      registers,
    }),
    engineErrors: new Counter({
      name: "voicebot_asr_engine_errors_total",
      help: "Recognizer failures (the caller gets an empty final and a reprompt)",
      labelNames: ["engine", "stage"],
      registers,
    }),
    utterances: new Counter({
      name: "voicebot_asr_utterances_total",
      help: "Utterances found by the VAD, by how they ended (too_short ones are dropped)",
      labelNames: ["end"],
      registers,
    }),
    takeovers: new Counter({
      name: "voicebot_asr_takeovers_total",
      help: "Calls taken over from a replica that stopped renewing its lease",
      registers,
    }),
    claims: new Counter({
      name: "voicebot_asr_claims_total",
      help: "CallStarted messages handled, by result",
      labelNames: ["result"],
      registers,
    }),
    leaseLosses: new Counter({
      name: "voicebot_asr_leases_lost_total",
      help: "Calls dropped because another replica holds their lease",
      registers,
    }),
    leaseErrors: new Counter({
      name: "voicebot_asr_lease_errors_total",
      help: "Redis failures while claiming, renewing, scanning or releasing leases",
      labelNames: ["operation"],
      registers,
    }),
    lostFrames: new Counter({
      name: "voicebot_asr_lost_frames_total",
      help: "Caller audio frames missing from the stream (gaps in CallerAudio.firstFrame)",
      registers,
    }),
    badAudio: new Counter({
      name: "voicebot_asr_bad_audio_total",
      help: "CallerAudio messages (or parts) dropped, by reason",
      labelNames: ["reason"],
      registers,
    }),
    badHints: new Counter({
      name: "voicebot_asr_bad_hints_total",
      help: "Recognition hints in Redis that could not be read or parsed (defaults used)",
      registers,
    }),
    publishErrors: new Counter({
      name: "voicebot_asr_publish_errors_total",
      help: "Final transcripts that could not be put on the dialog work queue",
      registers,
    }),
  };
}
