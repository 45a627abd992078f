// Runs the benchmark calls through the asr SERVICE as production does: a real NATS and Redis, the built service
// as its own process, calls started like ingress starts them, the hints written per utterance like the dialog
// writes them, and CallerAudio frames published at real time (many calls at once).

import { readFile } from "node:fs/promises";
import os from "node:os";
import { Bus, streams, subjects } from "@voicebot/bus";
import { AudioEncoding, CallerAudio, CallStarted, DialogInput, SpeechActivity, SpeechActivity_Kind, Transcript } from "@voicebot/proto";
import { createLogger } from "@voicebot/service-kit";
import { CallStore, keys } from "@voicebot/state";
import { startNats, startRedis, startServiceProcess, waitFor, type ServerHandle, type ServiceProcess } from "@voicebot/testing";
import { Registry } from "prom-client";
import { HINT_PHRASES, type BenchCall, type CallUtterance } from "./dataset.js";

const FRAME_MS = 20;
const FRAME = 160;
/** Hints the dialog stores for the demo agent: its menu-like states, and the order-number state. */
const PHRASE_HINTS = { mode: "phrases", phrases: HINT_PHRASES };
const DIGIT_HINTS = { mode: "digits", phrases: [], minSilenceMs: 1000, maxSilenceMs: 2500 };
/** How long to wait for the last finals of a call once its audio is sent. */
const SETTLE_MS = 6000;

/** Stands in for the dialog: acks what the asr queues on its work queue (which must exist, as in production). */
export function drainDialogQueue(bus: Bus, concurrency: number): Promise<{ stop(): Promise<void> }> {
  const options = { name: "bench-dialog", ackWaitMs: 5_000, maxDeliver: 3, concurrency };
  return bus.consume(streams.dialog, DialogInput, async (_input, item) => item.ack(), options);
}

export interface UtteranceOutcome {
  call: BenchCall;
  utterance: CallUtterance;
  /** Finals whose onset lies in the utterance's stretch of the call, in order. */
  finals: Transcript[];
  hypothesis: string;
  /** Wall clock (ms) of the speech onset and end in the stream, from the frames' publish times. */
  onsetAtMs: number;
  speechEndAtMs: number;
  /** When the first STARTED and the last final of the utterance reached the benchmark. */
  startedAtMs?: number;
  finalReceivedAtMs?: number;
}

export interface ServiceRunResult {
  outcomes: UtteranceOutcome[];
  /** Finals and STARTEDs outside any utterance's stretch: noise heard as speech. */
  strayFinals: number;
  strayStarts: number;
  wallMs: number;
  callSeconds: number;
  /** CPU of the asr process itself, and of the decoder processes it ran, in ms. */
  serviceCpuMs: number;
  childCpuMs: number;
  metricsText: string;
  /** The machine's load average (1, 5, 15 min) when the run started and ended. */
  loadBefore: string;
  loadAfter: string;
}

const loadAverage = (): string => os.loadavg().map((l) => l.toFixed(1)).join(" ");

/** utime+stime and cutime+cstime of a process, in ms (Linux /proc). */
export async function processCpuMs(pid: number): Promise<{ self: number; children: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = (i: number) => Number(fields[i - 3]);
  const tickMs = 10; // USER_HZ is 100 on Linux
  return { self: (ticks(14) + ticks(15)) * tickMs, children: (ticks(16) + ticks(17)) * tickMs };
}

export async function runServiceBench(
  calls: BenchCall[],
  options: { concurrency: number; env?: Record<string, string>; progress?: (text: string) => void },
): Promise<ServiceRunResult> {
  let nats: ServerHandle | undefined;
  let redis: ServerHandle | undefined;
  let asr: ServiceProcess | undefined;
  let bus: Bus | undefined;
  let store: CallStore | undefined;
  let consumer: { stop(): Promise<void> } | undefined;
  try {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    asr = await startServiceProcess("asr", { NATS_URL: nats.url, REDIS_URL: redis.url, LOG_LEVEL: "warn", ...options.env }, { readyTimeoutMs: 60_000 });
    bus = await Bus.connect({ servers: nats.url, name: "asr-bench", log: createLogger({ bench: "asr" }, "error"), registry: new Registry() });
    store = CallStore.connect(redis.url);
    // The dialog's work queue must exist (and be drained) for the finals to be queued as in production.
    consumer = await drainDialogQueue(bus, 16);

    const loadBefore = loadAverage();
    const pid = asr.process.pid!;
    const cpuBefore = await processCpuMs(pid);
    const started = Date.now();
    const outcomes: UtteranceOutcome[] = [];
    let stray = 0;
    let strayStarts = 0;
    let next = 0;
    let done = 0;
    const worker = async () => {
      for (let i = next++; i < calls.length; i = next++) {
        const result = await runCall(bus!, store!, asr!, calls[i], i);
        outcomes.push(...result.outcomes);
        stray += result.stray;
        strayStarts += result.strayStarts;
        options.progress?.(`calls done: ${++done}/${calls.length}`);
      }
    };
    await Promise.all(Array.from({ length: Math.min(options.concurrency, calls.length) }, worker));
    const wallMs = Date.now() - started;
    const cpuAfter = await processCpuMs(pid);
    const metricsText = await (await fetch(`${asr.baseUrl}/metrics`)).text();
    // Anything the service warned about belongs in the report (it should be nothing).
    const problems = asr.logs.filter((l) => l.level === "warn" || l.level === "error");
    for (const line of problems.slice(0, 20)) options.progress?.(`asr ${String(line.level)}: ${JSON.stringify(line)}`);
    if (problems.length > 20) options.progress?.(`... and ${problems.length - 20} more warnings`);
    const callSeconds = calls.reduce((sum, c) => sum + (c.frames.length * FRAME_MS) / 1000, 0);
    return {
      outcomes,
      strayFinals: stray,
      strayStarts,
      wallMs,
      callSeconds,
      serviceCpuMs: cpuAfter.self - cpuBefore.self,
      childCpuMs: cpuAfter.children - cpuBefore.children,
      metricsText,
      loadBefore,
      loadAfter: loadAverage(),
    };
  } finally {
    await consumer?.stop().catch(() => undefined);
    if (asr && asr.process.exitCode === null) await asr.terminate().catch(() => undefined);
    await bus?.close().catch(() => undefined);
    await store?.close().catch(() => undefined);
    await Promise.allSettled([nats?.stop(), redis?.stop()]);
  }
}

async function runCall(
  bus: Bus,
  store: CallStore,
  asr: ServiceProcess,
  call: BenchCall,
  n: number,
): Promise<{ outcomes: UtteranceOutcome[]; stray: number; strayStarts: number }> {
  const callId = `CAbench${Date.now().toString(16)}${n.toString(16).padStart(6, "0")}`;
  const finals: Array<{ transcript: Transcript; receivedAtMs: number }> = [];
  const starts: Array<{ utteranceId: number; receivedAtMs: number }> = [];
  const subs = [
    bus.subscribe(subjects.transcript(callId), Transcript, (t) => void (t.isFinal && finals.push({ transcript: t, receivedAtMs: Date.now() })), { name: "bench-transcripts" }),
    bus.subscribe(
      subjects.speech(callId),
      SpeechActivity,
      (s) => void (s.kind === SpeechActivity_Kind.KIND_STARTED && starts.push({ utteranceId: Number(s.utteranceId), receivedAtMs: Date.now() })),
      { name: "bench-speech" },
    ),
  ];
  try {
    await bus.nc.flush();
    // What ingress does when a stream opens.
    await store.createCall({ callSid: callId, provider: "twilio", streamSid: `MZ${callId}`, agent: "order-line", from: "+15550001111", to: "+15550002222", startedAt: new Date().toISOString() });
    const format = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };
    bus.publish(subjects.callStarted, CallStarted, CallStarted.create({ callId, provider: "twilio", streamId: `MZ${callId}`, callerFormat: format, botFormat: format, agent: "order-line", startedAtMs: Date.now() }), callId);
    await waitFor(async () => (await store.leaseOwner(callId, "asr")) === `asr-${asr.port}`, { what: "the asr service to claim the call", timeoutMs: 10_000 });

    // Real-time publishing: frame i goes out at t0 + (i + 1) * 20 ms (when its last sample has "arrived").
    const publishedAt = new Float64Array(call.frames.length);
    const t0 = performance.now();
    const wall0 = Date.now();
    let nextUtterance = 0;
    for (let i = 0; i < call.frames.length; i++) {
      if (nextUtterance < call.utterances.length && call.utterances[nextUtterance].startFrame === i) {
        // The dialog writes the hints of its new state before the caller answers.
        await store.setJson(keys.hints(callId), call.utterances[nextUtterance].clip.kind === "digits" ? DIGIT_HINTS : PHRASE_HINTS);
        nextUtterance++;
      }
      const wait = t0 + (i + 1) * FRAME_MS - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      const frame = call.frames[i];
      const payload = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
      const message = CallerAudio.create({ callId, firstFrame: i, frameCount: 1, format, payload, receivedAtMs: Date.now() });
      bus.publish(subjects.callerAudio(callId), CallerAudio, message, callId);
      publishedAt[i] = wall0 + (performance.now() - t0);
    }
    await bus.nc.flush();
    // Every utterance's final, or the settle time.
    const last = call.utterances.at(-1)!;
    await waitFor(() => finals.some((f) => Number(f.transcript.utteranceId) >= last.startFrame) || undefined, { timeoutMs: SETTLE_MS }).catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 200));

    const wallAt = (sample: number) => {
      const frame = Math.min(call.frames.length - 1, Math.floor(sample / FRAME));
      return publishedAt[frame] - (((frame + 1) * FRAME - sample) / 8000) * 1000;
    };
    const within = (u: CallUtterance, frame: number) => frame >= u.startFrame && frame < u.endFrame;
    const outcomes = call.utterances.map((u): UtteranceOutcome => {
      const mine = finals.filter((f) => within(u, Number(f.transcript.utteranceId)));
      const started = starts.find((s) => within(u, s.utteranceId));
      return {
        call,
        utterance: u,
        finals: mine.map((f) => f.transcript),
        hypothesis: mine.map((f) => f.transcript.text).filter(Boolean).join(" "),
        onsetAtMs: wallAt(u.onsetSample),
        speechEndAtMs: wallAt(u.endSample),
        startedAtMs: started?.receivedAtMs,
        finalReceivedAtMs: mine.at(-1)?.receivedAtMs,
      };
    });
    const stray = finals.filter((f) => !call.utterances.some((u) => within(u, Number(f.transcript.utteranceId)))).length;
    const strayStarts = starts.filter((s) => !call.utterances.some((u) => within(u, s.utteranceId))).length;
    await store.endCall(callId, "bench");
    return { outcomes, stray, strayStarts };
  } finally {
    for (const sub of subs) sub.unsubscribe();
  }
}
