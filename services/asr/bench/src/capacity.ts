// Calls per core with VAD on: N synthetic calls stream 20 ms frames at real time (each call at its own phase
// within the 20 ms period, as NATS delivers them) into the replica's VAD; the process CPU time over a measured
// stretch, per call-second of audio, gives the cost per call. A run with a do-nothing VAD measures the
// harness itself, which is subtracted.

import { EnergyVadDetector, type VadStream, type VoiceActivityDetector } from "../../dist/vad.js";
import { SileroVad, defaultSileroOptions } from "../../dist/silero.js";
import type { Clip } from "./dataset.js";
import { percentile } from "./scoring.js";

const RATE = 8000;
const FRAME = 160;
const FRAME_MS = 20;
/** Calls are spread over this many phases within each 20 ms period. */
const PHASES = 20;
const POOL = 16;
const POOL_SECONDS = 60;

export type Workload = "conversation" | "speech";

export interface CapacityResult {
  vad: string;
  workload: Workload;
  calls: number;
  measuredMs: number;
  cpuMs: number;
  /** Frames decided / frames pushed while measuring (1 = kept up with real time). */
  keptUp: number;
  /** Silero only: share of 32 ms windows that needed the model, and windows per inference. */
  modelShare?: number;
  batchSize?: number;
  /** Frame pushed → its decision, ms. */
  lagP50: number;
  lagP95: number;
}

/** Line noise at `dbfs` (uniform white), deterministic. */
function noise(samples: number, dbfs: number, seed: number): Float64Array {
  const out = new Float64Array(samples);
  const amplitude = 32768 * 10 ** (dbfs / 20) * Math.sqrt(3);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < samples; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    out[i] = (state / 4294967296 - 0.5) * 2 * amplitude;
  }
  return out;
}

/**
 * One minute of a call. "conversation": the caller answers in turns (a clip, then 1.5–4.5 s listening to the
 * bot), on a quiet line (-66 dBFS) or, one call in four, a noisy one (-45 dBFS). "speech": clips back to back.
 */
function callAudio(clips: Clip[], workload: Workload, seed: number): Int16Array {
  const total = RATE * POOL_SECONDS;
  const pcm = noise(total, workload === "speech" || seed % 4 !== 0 ? -66 : -45, seed);
  let at = 0;
  for (let k = seed; at < total; k++) {
    at += workload === "speech" ? RATE / 5 : Math.round(RATE * (1.5 + ((k * 7919) % 31) / 10));
    const clip = clips[(k * 31) % clips.length];
    for (let i = 0; i < clip.pcm.length && at + i < total; i++) pcm[at + i] += clip.pcm[i];
    at += clip.pcm.length;
  }
  return Int16Array.from(pcm, (x) => Math.max(-32768, Math.min(32767, Math.round(x))));
}

/** A VAD that decides every frame at once and does nothing else: the harness's own cost. */
class NoVad implements VoiceActivityDetector {
  readonly kind = "energy";
  open(decide: (speech: boolean) => void): VadStream {
    return { push: () => decide(false), close: () => undefined };
  }
  async close(): Promise<void> {}
}

export async function measureCapacity(
  clips: Clip[],
  options: { vad: "silero" | "energy" | "none"; workload: Workload; calls: number; warmUpMs: number; measureMs: number },
): Promise<CapacityResult> {
  const vad: VoiceActivityDetector =
    options.vad === "silero" ? await SileroVad.create(defaultSileroOptions()) : options.vad === "energy" ? new EnergyVadDetector() : new NoVad();
  const pool = Array.from({ length: POOL }, (_, i) => callAudio(clips, options.workload, i + 1));
  const poolFrames = (RATE * POOL_SECONDS) / FRAME;

  let decided = 0;
  let measuring = false;
  const lags: number[] = [];
  const calls = Array.from({ length: options.calls }, (_, i) => {
    const pushedAt: number[] = [];
    const call = {
      audio: pool[i % POOL],
      frame: (i * 7919) % poolFrames,
      pushes: 0,
      pushedAt,
      stream: vad.open(() => {
        const at = pushedAt.shift()!;
        if (!measuring) return;
        decided++;
        // Every 10th decision is enough for the percentiles.
        if (decided % 10 === 0) lags.push(performance.now() - at);
      }),
    };
    return call;
  });
  const phases = Array.from({ length: PHASES }, (_, p) => calls.filter((_, i) => i % PHASES === p));

  let pushed = 0;
  const start = performance.now();
  let cpuStart: NodeJS.CpuUsage | undefined;
  let measureStart = 0;
  let sileroStart = { gated: 0, inferred: 0, batches: 0 };
  const end = start + options.warmUpMs + options.measureMs;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now();
      if (!measuring && now >= start + options.warmUpMs) {
        measuring = true;
        measureStart = now;
        cpuStart = process.cpuUsage();
        if (vad instanceof SileroVad) sileroStart = { ...vad.counts };
      }
      if (now >= end) return resolve();
      phases.forEach((group, p) => {
        const due = Math.floor((now - start - p) / FRAME_MS);
        for (const call of group) {
          while (call.pushes < due) {
            call.pushes++;
            if (call.frame + 1 > poolFrames) call.frame = 0;
            call.pushedAt.push(performance.now());
            call.stream.push(call.audio.subarray(call.frame * FRAME, (call.frame + 1) * FRAME));
            call.frame++;
            if (measuring) pushed++;
          }
        }
      });
      setTimeout(tick, 1);
    };
    tick();
  });
  const cpu = process.cpuUsage(cpuStart);
  const measuredMs = performance.now() - measureStart;
  // Decisions still owed for frames pushed while measuring (at most a window's worth per call is normal).
  const result: CapacityResult = {
    vad: options.vad,
    workload: options.workload,
    calls: options.calls,
    measuredMs,
    cpuMs: (cpu.user + cpu.system) / 1000,
    keptUp: pushed === 0 ? 0 : Math.min(1, decided / pushed),
    lagP50: percentile(lags, 50),
    lagP95: percentile(lags, 95),
  };
  if (vad instanceof SileroVad) {
    const gated = vad.counts.gated - sileroStart.gated;
    const inferred = vad.counts.inferred - sileroStart.inferred;
    result.modelShare = inferred / (gated + inferred);
    result.batchSize = inferred / (vad.counts.batches - sileroStart.batches);
  }
  for (const call of calls) call.stream.close();
  await vad.close();
  return result;
}

/** CPU ms per second of call audio, the harness subtracted. */
export function cpuPerCallSecond(result: CapacityResult, harness: CapacityResult): number {
  const perCallSecond = (r: CapacityResult) => r.cpuMs / ((r.calls * r.measuredMs) / 1000);
  return Math.max(0, perCallSecond(result) - perCallSecond(harness));
}
