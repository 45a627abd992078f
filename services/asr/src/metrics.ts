import { hotCounter, pendingCount } from "@voicebot/bus";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export type AsrMetrics = ReturnType<typeof createMetrics>;

export function createMetrics(registry: Registry) {
  const registers = [registry];
  const vadWindows = hotCounter({
    name: "voicebot_asr_vad_windows_total",
    help: "Silero VAD windows (32 ms), by how they were decided: gated (line silence), inferred, overload (too far behind: energy), error",
    labelNames: ["result"],
    registers,
  });
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
    transcriptsCut: new Counter({
      name: "voicebot_asr_transcripts_cut_total",
      help: "Final transcripts longer than any utterance (an engine fault), cut to the maximum length",
      labelNames: ["engine"],
      registers,
    }),
    engineErrors: new Counter({
      name: "voicebot_asr_engine_errors_total",
      help: "Utterances no engine could recognize (the caller gets an empty final and a reprompt)",
      labelNames: ["engine", "stage"],
      registers,
    }),
    providerErrors: new Counter({
      name: "voicebot_asr_provider_errors_total",
      help: "Failures of one engine on one utterance (error, stall, socket error); the utterance fails over if it can",
      labelNames: ["engine", "reason"],
      registers,
    }),
    failovers: new Counter({
      name: "voicebot_asr_engine_failovers_total",
      help: "Utterances replayed into the next engine of ASR_ENGINES after an engine failed",
      labelNames: ["from", "to", "reason"],
      registers,
    }),
    engineHealthy: new Gauge({
      name: "voicebot_asr_engine_healthy",
      help: "1 when the engine takes new utterances, 0 while it cools down after a failure",
      labelNames: ["engine"],
      registers,
    }),
    earlyFinals: new Counter({
      name: "voicebot_asr_early_finals_total",
      help: "Utterances recognized early, during the caller's silence: used as the final, discarded (the caller spoke again or the utterance was dropped) or failed (recognized again at the endpoint)",
      labelNames: ["outcome"],
      registers,
    }),
    endpointExtensions: new Counter({
      name: "voicebot_asr_endpoint_extensions_total",
      help: "Utterances kept open past the minimum silence because the partial text looked unfinished",
      registers,
    }),
    speechStartDelay: new Histogram({
      name: "voicebot_asr_speech_start_delay_seconds",
      help: "Onset frame received -> SpeechActivity STARTED published (VAD decision and start hysteresis)",
      buckets: [0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1],
      registers,
    }),
    vadWindows,
    /** Windows decided without the model, one per 32 ms window of every call: hot counts. */
    vadWindowsSkipped: { gated: pendingCount(vadWindows, { result: "gated" }), overload: pendingCount(vadWindows, { result: "overload" }) },
    vadErrors: new Counter({
      name: "voicebot_asr_vad_errors_total",
      help: "Silero inference runs that failed (their windows were decided by energy)",
      registers,
    }),
    vadBatchSize: new Histogram({
      name: "voicebot_asr_vad_batch_size",
      help: "Windows (one per call) per Silero inference run",
      buckets: [1, 2, 4, 8, 16, 32, 64, 128],
      registers,
    }),
    vadInferenceSeconds: new Histogram({
      name: "voicebot_asr_vad_inference_seconds",
      help: "Duration of one batched Silero inference run",
      buckets: [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064],
      registers,
    }),
    vadLagSeconds: new Histogram({
      name: "voicebot_asr_vad_lag_seconds",
      help: "Oldest window of a batch: complete -> decided (batch wait, queueing and inference)",
      buckets: [0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32],
      registers,
    }),
    utterances: new Counter({
      name: "voicebot_asr_utterances_total",
      help: "Utterances found by the VAD, by how they ended: silence, complete (an expected answer, after ASR_COMPLETE_SILENCE_MS), max_silence, max_length, too_short (dropped)",
      labelNames: ["end"],
      registers,
    }),
    takeovers: new Counter({
      name: "voicebot_asr_takeovers_total",
      help: "Calls taken over from a replica that stopped renewing its lease",
      registers,
    }),
    replays: new Counter({
      name: "voicebot_asr_replays_total",
      help: "Caller audio asked of ingress for a call this replica claimed or took over, from where the last owner's finished work ends, by result: whole, partial (ingress no longer kept the oldest frames), none (no frames to replay), failed (no answer: heard from now on)",
      labelNames: ["result"],
      registers,
    }),
    replayedFrames: new Counter({
      name: "voicebot_asr_replayed_frames_total",
      help: "Caller frames of claimed or taken-over calls: replayed (heard from ingress's recent audio), too_old (asked for, no longer kept: lost)",
      labelNames: ["outcome"],
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
      help: "Redis failures while claiming, renewing, scanning or releasing leases, or saving a call's progress",
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
      help: "CallerAudio messages (or parts) dropped, or malformed (frame_count_mismatch), by reason",
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
