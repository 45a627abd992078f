import type { EnvReader } from "@voicebot/service-kit";
import type { SessionOptions } from "./call-session.js";
import type { EnergyVadOptions } from "./vad.js";

export interface AsrConfig {
  /** Lease TTL for owned calls; a crashed replica's calls are taken over within about this long. */
  leaseMs: number;
  orphanScanMs: number;
  vad: EnergyVadOptions;
  session: SessionOptions;
}

export function readAsrConfig(env: EnvReader): AsrConfig {
  const minSilenceMs = env.int("ASR_MIN_SILENCE_MS", 600, { min: 100, max: 10_000 });
  return {
    leaseMs: env.int("ASR_LEASE_MS", 1500, { min: 300, max: 60_000 }),
    orphanScanMs: env.int("ASR_ORPHAN_SCAN_MS", 250, { min: 50, max: 10_000 }),
    vad: {
      thresholdDb: env.number("ASR_VAD_THRESHOLD_DB", 10, { min: 1, max: 40 }),
      minSpeechDbfs: env.number("ASR_VAD_MIN_SPEECH_DBFS", -50, { min: -90, max: -10 }),
    },
    session: {
      segmenter: {
        startMs: env.int("ASR_VAD_START_MS", 60, { min: 20, max: 500 }),
        preRollMs: env.int("ASR_PRE_ROLL_MS", 300, { min: 0, max: 1_000 }),
        minSilenceMs,
        // Never below the min silence: it bounds how long stray noise can keep an utterance open.
        maxSilenceMs: Math.max(minSilenceMs, env.int("ASR_MAX_SILENCE_MS", 1500, { min: 100, max: 10_000 })),
        minSpeechMs: env.int("ASR_MIN_SPEECH_MS", 150, { min: 0, max: 2_000 }),
        maxUtteranceMs: env.int("ASR_MAX_UTTERANCE_MS", 15_000, { min: 1_000, max: 60_000 }),
      },
      gapFillMaxMs: env.int("ASR_GAP_FILL_MAX_MS", 1_000, { min: 0, max: 10_000 }),
      publishAttempts: env.int("ASR_PUBLISH_ATTEMPTS", 3, { min: 1, max: 10 }),
    },
  };
}
