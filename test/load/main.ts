// pnpm bench:load: N concurrent simulated Twilio calls against the whole voicebot (real ingress, NATS, Redis and
// the five services as processes; fake cloud engines that answer at once, in their own process) for a fixed
// time. Prints calls held, per-turn pipeline overhead, the caller's outbound frame gaps, NATS and Redis traffic,
// CPU and memory per process and per call, errors, and whether everything was cleaned up after the calls ended.
//
//   node test/load/dist/main.js [--calls 150] [--duration 60s] [--ramp <max(5s, calls/50 s)>] [--call-length 60s]
//   node test/load/dist/main.js --find-max [--start 100] [--step 100] [--max 1500] [--duration 30s] [--all-steps]
//   --vad silero|energy (ASR_VAD)  --env NAME=value  --node-args "..."
//   --quiet-below 0.3 (wait for a quiet machine)  --p99-limit 20  --gap-limit 40  --profile asr,ingress
//   (node --cpu-prof; .cpuprofile files in .run/profiles)  --json out.json  --keep (logs)
//   --heap-snapshots dir (each service idle and loaded; compare them: node test/load/dist/heap-diff.js)
// Definitions and results: docs/benchmarks.md, section "Load".
import { mkdirSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import type { ServiceName } from "@voicebot/testing";
import { keys, type TurnEntry } from "@voicebot/state";
import WebSocket from "ws";
import { calibrate } from "./calibrate.js";
import { measureHopFloor, type HopFloor } from "./hops.js";
import { FRAME_MS, lineNoiseTails, sileroDecidedBy, sileroLastSpeech, silenceFrames, speechBurst } from "./audio.js";
import type { EngineRecord } from "./fakes.js";
import { LoadGenerator, type TurnSample } from "./loadgen.js";
import { orderNumber } from "./script.js";
import { fmt, parseDuration, summarize, table, type Summary } from "./stats.js";
import { liveMemory, type LiveMemory } from "./inspect.js";
import { asrReads, cpuSeconds, machineBusySeconds, metricSum, removeDir, rssBytes, SERVICE_NAMES, startBenchSystem, type BenchSystem } from "./system.js";

interface Options {
  calls: number;
  durationMs: number;
  rampMs: number | undefined;
  callMs: number;
  minSilenceMs: number;
  /** ASR_COMPLETE_SILENCE_MS: the callers' "order status" is an answer the menu expects, so it ends after this. */
  completeSilenceMs: number;
  findMax: boolean;
  start: number;
  step: number;
  max: number;
  overheadLimitMs: number;
  gapLimitMs: number;
  profile: ServiceName[];
  json: string | undefined;
  keep: boolean;
  /** A directory for each service's heap snapshots, idle and loaded (compare them with heap-diff.ts). */
  heapSnapshots?: string;
  vad: "energy" | "silero";
  /** Before each run, wait (up to 15 min) until the machine has been this idle (busy cores) for 5 s. */
  quietBelow: number | undefined;
  /** --find-max: run every step instead of stopping at the first failure. */
  allSteps: boolean;
  /** Extra node flags for the services (--node-args "--max-semi-space-size=32"). */
  nodeArgs: string[];
  /** Extra environment for the services (--env NAME=value, repeatable). */
  env: Record<string, string>;
  /**
   * Nice value of the processes that stand for the outside world: the callers (this process) and the cloud engines
   * (the fakes). 0 = the same priority as the pipeline (--outside-nice 0).
   */
  outsideNice: number;
  /**
   * How long the fake transcription server waits before answering (--asr-engine-ms; default 0). A cloud engine
   * takes hundreds of ms: with it, caller latency shows what the asr's early finals take off a spoken turn.
   */
  asrEngineMs: number;
  /**
   * The callers' silence as a real line carries it: white noise at this RMS level (dBFS) instead of digital
   * silence (--line-noise; default none). Ingress batches only the frames it takes for quiet.
   */
  lineNoiseDbfs: number | undefined;
  /** The callers' timer (--tick-ms; default 5: calls' frames spread over the 20 ms; 20: all calls in one burst). */
  tickMs: number;
}

/**
 * Silence after the callers' last speech frame that lets the asr end "order status": an answer the menu expects
 * (and the fake transcribes it so), so the complete-answer silence when it is on and below the minimum.
 */
function endpointSilenceMs(options: Options): number {
  // --env overrides the bench's own settings in the services.
  const setting = (name: string, value: number) => (options.env[name] === undefined ? value : Number(options.env[name]));
  const minSilenceMs = setting("ASR_MIN_SILENCE_MS", options.minSilenceMs);
  const completeSilenceMs = setting("ASR_COMPLETE_SILENCE_MS", options.completeSilenceMs);
  // The fake transcription server gives no partials: the words come from an early final or not at all.
  const early = setting("ASR_EARLY_FINAL_LEAD_MS", 350) > 0;
  return early && completeSilenceMs > 0 && completeSilenceMs < minSilenceMs ? completeSilenceMs : minSilenceMs;
}

function parseArgs(argv: string[]): Options {
  const options: Options = {
    // The most calls this repository's 2-core dev box held without errors or outbound gaps (docs/benchmarks.md).
    calls: 150,
    durationMs: 60_000,
    rampMs: undefined,
    callMs: 60_000,
    minSilenceMs: 600,
    completeSilenceMs: 300,
    asrEngineMs: 0,
    lineNoiseDbfs: undefined,
    tickMs: 5,
    findMax: false,
    start: 100,
    step: 100,
    max: 1500,
    overheadLimitMs: 20,
    gapLimitMs: 40,
    profile: [],
    json: undefined,
    keep: false,
    // The asr's default VAD (builds before the choice existed only have the energy VAD).
    vad: asrReads("ASR_VAD") ? "silero" : "energy",
    quietBelow: undefined,
    outsideNice: -10,
    allSteps: false,
    nodeArgs: [],
    env: {},
  };
  let durationSet = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    const int = () => {
      const v = Number(value());
      if (!Number.isInteger(v) || v <= 0) throw new Error(`${arg} needs a positive integer`);
      return v;
    };
    switch (arg) {
      case "--calls":
        options.calls = int();
        break;
      case "--duration":
        options.durationMs = parseDuration(value());
        durationSet = true;
        break;
      case "--ramp":
        options.rampMs = parseDuration(value());
        break;
      case "--call-length":
        options.callMs = parseDuration(value());
        break;
      case "--min-silence":
        options.minSilenceMs = parseDuration(value());
        break;
      case "--complete-silence":
        options.completeSilenceMs = int();
        break;
      case "--asr-engine-ms":
        options.asrEngineMs = int();
        break;
      case "--line-noise": {
        const dbfs = Number(value());
        if (!Number.isFinite(dbfs) || dbfs > -20 || dbfs < -90) throw new Error("--line-noise needs a level in dBFS from -90 to -20");
        options.lineNoiseDbfs = dbfs;
        break;
      }
      case "--tick-ms":
        options.tickMs = int();
        if (options.tickMs > FRAME_MS) throw new Error(`--tick-ms must be at most ${FRAME_MS}`);
        break;
      case "--find-max":
        options.findMax = true;
        break;
      case "--start":
        options.start = int();
        break;
      case "--step":
        options.step = int();
        break;
      case "--max":
        options.max = int();
        break;
      case "--p99-limit":
        options.overheadLimitMs = Number(value());
        break;
      case "--gap-limit":
        options.gapLimitMs = Number(value());
        break;
      case "--profile":
        options.profile = value().split(",").map((s) => s.trim()) as ServiceName[];
        for (const name of options.profile) if (!SERVICE_NAMES.includes(name)) throw new Error(`--profile: unknown service ${name}`);
        break;
      case "--json":
        options.json = value();
        break;
      case "--keep":
        options.keep = true;
        break;
      case "--heap-snapshots":
        options.heapSnapshots = value();
        break;
      case "--node-args":
        options.nodeArgs = value().split(/\s+/).filter(Boolean);
        break;
      case "--env": {
        const [name, ...rest] = value().split("=");
        if (!name || rest.length === 0) throw new Error("--env needs NAME=value");
        options.env[name] = rest.join("=");
        break;
      }
      case "--all-steps":
        options.allSteps = true;
        break;
      case "--quiet-below":
        options.quietBelow = Number(value());
        break;
      case "--outside-nice":
        options.outsideNice = Number(value());
        if (!Number.isInteger(options.outsideNice) || options.outsideNice < -20 || options.outsideNice > 19) throw new Error("--outside-nice must be an integer from -20 to 19");
        break;
      case "--vad": {
        const vad = value();
        if (vad !== "energy" && vad !== "silero") throw new Error("--vad must be energy or silero");
        options.vad = vad;
        break;
      }
      case "--help":
      case "-h":
        console.log(`usage: bench:load [--calls 150] [--duration 60s] [--ramp max(5s, calls/50 s)] [--call-length 60s] [--asr-engine-ms 0] [--line-noise -65] [--tick-ms 5]
       [--min-silence 600ms] [--complete-silence 300 (ms; 0: off)]
       bench:load --find-max [--start 100] [--step 100] [--max 1500] [--duration 30s] [--all-steps]
       [--vad silero|energy] [--env NAME=value] [--node-args "..."] [--quiet-below 0.3] [--outside-nice -10] [--p99-limit 20] [--gap-limit 40] [--profile asr,ingress] [--json file] [--keep] [--heap-snapshots dir]`);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown option ${arg} (--help lists them)`);
    }
  }
  if (options.findMax && !durationSet) options.durationMs = 30_000;
  return options;
}

// ---- one run ----

interface ProcessFigures {
  name: string;
  cpuCores: number;
  /** Node services: event-loop delay over the window (p99, max) and time in GC per second. */
  loopLagP99Ms?: number;
  loopLagMaxMs?: number;
  gcMsPerSec?: number;
  rssIdleMb: number;
  rssLoadedMb: number;
  /** (loaded - idle) RSS per call held, KB. */
  rssPerCallKb: number;
  /** Services: (loaded - idle) V8 heap used + external memory after a full GC, per call held, KB. */
  livePerCallKb?: number;
}

interface RunResult {
  calls: number;
  held: { min: number; mean: number };
  windowSeconds: number;
  callsStarted: number;
  turns: number;
  turnsByKind: Record<string, number>;
  overhead: Summary;
  overheadByKind: Record<string, Summary>;
  latency: Summary;
  latencyByKind: Record<string, Summary>;
  greeting: Summary;
  engine: { asr: Summary; tts: Summary; unattributed: number };
  gaps: Summary & { over40: number };
  underruns: number;
  generatorLag: Summary;
  stages: Record<string, Summary>;
  /** Speech turns: the asr's end-of-utterance decision after the caller sent the frame that allowed it. */
  decisionLag: Summary;
  /** One hop's cost on the idle system (hops.ts): the floor under the overhead. */
  hopFloor: HopFloor;
  /** The turns with the most overhead, with their stage split from the call record: where the tail comes from. */
  slowest: Array<{ kind: string; overheadMs: number; engineMs: number; stages: Record<string, number> | undefined }>;
  vad: string;
  nats: { inPerSec: number; outPerSec: number; inMbPerSec: number; outMbPerSec: number };
  /** Ingress's CallerAudio messages and the caller frames they carried, per second (silence batching at work). */
  callerAudio: { messagesPerSec: number; framesPerSec: number };
  redis: {
    commandsPerSec: number;
    commandsPerTurn: number;
    /** The busiest commands, per bot turn. */
    topCommands: Array<[string, number]>;
    usedIdleMb: number;
    usedLoadedMb: number;
    usedPerCallKb: number;
  };
  processes: ProcessFigures[];
  pipeline: {
    cpuCores: number;
    cpuMsPerCallSecond: number;
    memoryPerCallKb: number;
    heapPerCallKb: number;
    /** What the calls keep alive: the services' heap + external memory after a full GC, plus Redis used_memory. */
    livePerCallKb: number;
    /** Services' RSS plus Redis used_memory under load, MB (the find-max table takes the slope between steps). */
    loadedMb: number;
  };
  /** Cores busy on the whole machine during the window, and how much of that was not this bench's processes. */
  machine: { busyCores: number; otherCores: number };
  errors: { total: number; details: string[] };
  cleanup: { gaugesZeroAfterMs: number | undefined; gauges: Record<string, number>; liveKeys: number; leaseIndex: number; notEnded: number; details: string[] };
  pass: boolean;
}

function hopFloorLine(h: HopFloor): string {
  const pair = (s: Summary) => `${fmt(s.p50, 2)} / ${fmt(s.p99, 2)}`;
  return `one hop on the idle system, p50 / p99 ms (20 ms apart): Redis round trip ${pair(h.redisRoundTrip)}, NATS message ${pair(h.natsOneWay)}, JetStream work-queue message ${pair(h.jetStreamOneWay)}`;
}

/**
 * In production the callers (Twilio) and the engines (cloud APIs) do not run on the pipeline's cores. Here they do,
 * and at the same priority a starved fake answers late before it even stamps the request (charged to the
 * pipeline), and a starved generator reads bot audio late (charged to the gap). So they get the CPU first when they
 * need it; their CPU is still measured and reported apart. Needs root (CAP_SYS_NICE) for a negative value.
 */
function raiseOutsidePriority(nice: number, fakesPid: number): void {
  if (nice === 0) return;
  try {
    os.setPriority(process.pid, nice);
    os.setPriority(fakesPid, nice);
  } catch (error) {
    console.log(`    (callers and fakes keep the pipeline's priority: cannot set nice ${nice}: ${(error as Error).message})`);
  }
}

/** How many of the slowest turns the report lists. */
const SLOWEST_TURNS = 8;
/** Different noise tails per slot with --line-noise (sent in turn, so frames differ as on a line). */
const LINE_NOISE_VARIANTS = 8;
/** prom-client's event-loop monitor interval (its default precision, which the services keep). */
const LOOP_MONITOR_MS = 10;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Gauges that count work in progress; all must read 0 once every call has ended. */
const ACTIVE_GAUGES: Array<[ServiceName, string]> = [
  ["ingress", "voicebot_ingress_active_calls"],
  ["asr", "voicebot_asr_active_calls"],
  ["asr", "voicebot_asr_active_sessions"],
  ["dialog", "voicebot_dialog_active_calls"],
  ["tools", "voicebot_tools_active_calls"],
  ["tts", "voicebot_tts_active_calls"],
  ["tts", "voicebot_tts_queued_chunks"],
  ["tts", "voicebot_tts_active_syntheses"],
];

/** Counters whose increase during a run is an error (something a caller would notice, or a replica losing work). */
const ERROR_COUNTERS =
  /(_errors_total|_failovers_total|_underruns_total|_skipped_chunks_total|_rejected_streams_total|_lost_frames_total|_bad_audio_total|_bad_requests_total|_leases_lost_total|_takeovers_total|_http_rejected_total|_no_silence_fallbacks_total|_call_records_restored_total|_conversation_restarts_total)$/;
/** Labelled series of other counters that are errors. */
const ERROR_SERIES = [/^voicebot_tts_cache_lookups_total\{.*result="error"/];

async function counterSnapshot(system: BenchSystem): Promise<Map<string, number>> {
  const all = new Map<string, number>();
  for (const name of SERVICE_NAMES) {
    for (const [key, value] of await system.metrics(name)) {
      if (ERROR_COUNTERS.test(key.split("{")[0]) || ERROR_SERIES.some((re) => re.test(key))) all.set(`${name} ${key}`, value);
    }
  }
  return all;
}

/** One short call that makes the tts cache every prompt of the script (as a warm production system has them). */
async function warmUp(url: string): Promise<void> {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  const streamSid = `MZ${"0".repeat(32)}`;
  let seq = 0;
  let firstAudio: () => void;
  const audio = new Promise<void>((resolve) => (firstAudio = resolve));
  ws.on("message", (data: Buffer) => {
    const text = data.toString();
    if (text.startsWith('{"event":"media"')) firstAudio();
    const mark = /"event":"mark".*"name":"([^"]+)"/.exec(text);
    if (mark) ws.send(JSON.stringify({ event: "mark", sequenceNumber: String(++seq), streamSid, mark: { name: mark[1] } }));
  });
  ws.send(JSON.stringify({ event: "connected", protocol: "Call", version: "1.0.0" }));
  ws.send(
    JSON.stringify({
      event: "start",
      sequenceNumber: String(++seq),
      start: { accountSid: `AC${"0".repeat(32)}`, streamSid, callSid: `CA${"f".repeat(32)}`, tracks: ["inbound"], customParameters: {}, mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 } },
      streamSid,
    }),
  );
  const key = (digit: string) => ws.send(JSON.stringify({ event: "dtmf", streamSid, sequenceNumber: String(++seq), dtmf: { track: "inbound_track", digit } }));
  await Promise.race([audio, sleep(15_000)]);
  key("1");
  await sleep(500);
  for (const digit of `${orderNumber(0)}#`) {
    key(digit);
    await sleep(100);
  }
  await sleep(2_500);
  ws.send(JSON.stringify({ event: "stop", sequenceNumber: String(++seq), streamSid, stop: {} }));
  ws.close(1000);
  await sleep(500);
}

/** On a shared machine: wait until other work leaves the cores alone (busy below `cores` for 5 s in a row). */
async function waitForQuiet(cores: number): Promise<void> {
  const deadline = performance.now() + 15 * 60_000;
  let said = false;
  for (;;) {
    const before = machineBusySeconds();
    await sleep(5_000);
    const busy = (machineBusySeconds() - before) / 5;
    if (busy < cores) return;
    if (performance.now() > deadline) {
      console.log(`    the machine stayed busy (${fmt(busy, 2)} cores); running anyway`);
      return;
    }
    if (!said) console.log(`    waiting for the machine to be quiet (${fmt(busy, 2)} cores busy, want < ${cores})`);
    said = true;
  }
}

/** The system of the run in progress, stopped on Ctrl-C so no service, nats-server or redis-server is left behind. */
let running: BenchSystem | undefined;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    console.log(`\n${signal}: stopping the system`);
    void (running?.stop() ?? Promise.resolve()).finally(() => process.exit(130));
  });
}

async function runOnce(options: Options, calls: number, speech: string[]): Promise<RunResult> {
  if (options.quietBelow !== undefined) await waitForQuiet(options.quietBelow);
  const rampMs = options.rampMs ?? Math.max(5_000, (calls / 50) * 1000);
  const settleMs = 3_000;
  const profileDir = path.resolve(process.cwd(), ".run", "profiles");
  if (options.profile.length > 0) mkdirSync(profileDir, { recursive: true });
  console.log(`\n=== ${calls} calls: starting the system`);
  const system = await startBenchSystem({ slots: calls, minSilenceMs: options.minSilenceMs, completeSilenceMs: options.completeSilenceMs, asrEngineMs: options.asrEngineMs, vad: options.vad, profile: options.profile, profileDir, env: options.env, nodeArgs: options.nodeArgs });
  running = system;
  try {
    raiseOutsidePriority(options.outsideNice, system.fakes.pid!);
    await warmUp(system.twilioUrl);
    await sleep(2_000);
    const pids = system.pids();
    pids.loadgen = process.pid;
    const names = Object.keys(pids);

    // Idle baseline, after warm-up (the tts cache holds the prompts).
    const idleRss: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
    for (let i = 0; i < 3; i++) {
      for (const n of names) idleRss[n] += rssBytes(pids[n]) / 3;
      await sleep(500);
    }
    const idleRedisUsed = Number((await system.redisInfo("memory")).used_memory);
    const idleMetrics = await allMetrics(system);
    const idleLive = await allLiveMemory(system, options.heapSnapshots, "idle");
    const errorsBefore = await counterSnapshot(system);
    const hopFloor = await measureHopFloor(system.nats.url, system.store);
    console.log(`    ${hopFloorLine(hopFloor)}`);

    const noiseTails = options.lineNoiseDbfs === undefined ? [] : lineNoiseTails(options.lineNoiseDbfs, LINE_NOISE_VARIANTS);
    const silence = Array.from({ length: calls }, (_, slot) => silenceFrames(slot, noiseTails).map((frame) => Buffer.from(frame).toString("base64")));
    const gen = new LoadGenerator({
      url: system.twilioUrl,
      calls,
      rampMs,
      callMs: options.callMs,
      endpointSilenceMs: endpointSilenceMs(options),
      decidedBy: options.vad === "silero" ? sileroDecidedBy : (chunk) => chunk,
      lastSpeech: options.vad === "silero" ? sileroLastSpeech : (chunk) => chunk,
      speech,
      silence,
      tickMs: options.tickMs,
    });
    const t0 = performance.now();
    const windowStart = t0 + rampMs + settleMs;
    const windowEnd = windowStart + options.durationMs;
    gen.setWindow(windowStart, windowEnd);
    console.log(`    ramp ${(rampMs / 1000).toFixed(0)} s, then ${(options.durationMs / 1000).toFixed(0)} s measured (calls last ${(options.callMs / 2000).toFixed(0)}-${((options.callMs * 1.5) / 1000).toFixed(0)} s, then redial)`);
    gen.start();

    const progress = setInterval(() => {
      const s = performance.now() - t0;
      process.stdout.write(`    t=${(s / 1000).toFixed(0)}s live calls ${gen.liveCalls}, turns ${gen.turns.length}, errors ${gen.counters.connectErrors + gen.counters.serverCloses + gen.counters.noReply}\n`);
    }, 10_000);

    await sleep(windowStart - performance.now());
    const cpu0 = Object.fromEntries(names.map((n) => [n, cpuSeconds(pids[n])]));
    const machine0 = machineBusySeconds();
    const varz0 = await system.varz();
    const redis0 = await system.redisInfo();
    // Also resets the services' event-loop lag histograms (prom-client resets them on every scrape).
    const metrics0 = await allMetrics(system);
    const w0 = performance.now();
    const rssSum: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
    let rssSamples = 0;
    let redisUsedSum = 0;
    while (performance.now() < windowEnd - 500) {
      for (const n of names) rssSum[n] += rssBytes(pids[n]);
      redisUsedSum += Number((await system.redisInfo("memory")).used_memory);
      rssSamples++;
      await sleep(Math.min(1_000, windowEnd - performance.now()));
    }
    await sleep(Math.max(0, windowEnd - performance.now()));
    const cpu1 = Object.fromEntries(names.map((n) => [n, cpuSeconds(pids[n])]));
    const machine1 = machineBusySeconds();
    const varz1 = await system.varz();
    const redis1 = await system.redisInfo();
    const metrics1 = await allMetrics(system);
    const windowSeconds = (performance.now() - w0) / 1000;
    clearInterval(progress);
    // After the window, with every call still live. The full GC pauses each service (tens of ms in ingress under
    // load, long enough for its playout to run dry once on every call that is talking): what the service counters
    // record during the sample is the sample's doing and is not counted as an error below.
    const beforeSample = await counterSnapshot(system);
    const loadedLive = await allLiveMemory(system, options.heapSnapshots, "loaded");
    // Ingress finds a call's playout ran dry at that call's next tick: up to a tick period after the pause.
    await sleep(Number(options.env.PLAYOUT_TICK_MS ?? 20) + 80);
    const afterSample = await counterSnapshot(system);

    console.log(`    window over: hanging up ${gen.liveCalls} calls`);
    await gen.stop();
    const cleanup = await checkCleanup(system, gen.callSids);
    const errorsAfter = await counterSnapshot(system);
    const engine = await system.engineRecords();

    // ---- figures ----
    const held = { min: gen.held.min, mean: gen.held.ticks > 0 ? gen.held.sum / gen.held.ticks : 0 };
    const perCall = Math.max(1, held.mean);
    const attributed = attributeEngineTime(gen.turns, engine.asr, engine.tts, options.minSilenceMs);
    const records = await turnRecords(system, gen.callSids, attributed.turns, performance.timeOrigin + windowStart, performance.timeOrigin + windowEnd);
    const bySomeKind = (kind: string, pick: (t: AnalyzedTurn) => number) => summarize(attributed.turns.filter((t) => t.kind === kind).map(pick));
    const measured = attributed.turns.filter((t) => t.kind !== "greeting");
    const kinds = ["speech", "keys", "key"];

    await system.stop();
    running = undefined;
    const logProblems = await countLogProblems(system);

    const processes: ProcessFigures[] = names.map((n) => {
      const loaded = rssSamples > 0 ? rssSum[n] / rssSamples : NaN;
      const m0 = metrics0[n];
      const m1 = metrics1[n];
      return {
        name: n,
        cpuCores: (cpu1[n] - cpu0[n]) / windowSeconds,
        ...(m0 && m1
          ? {
              // prom-client's monitor is a 10 ms timer whose histogram holds whole intervals: an idle loop reads 10.
              loopLagP99Ms: Math.max(0, metricSum(m1, "nodejs_eventloop_lag_p99_seconds") * 1000 - LOOP_MONITOR_MS),
              loopLagMaxMs: Math.max(0, metricSum(m1, "nodejs_eventloop_lag_max_seconds") * 1000 - LOOP_MONITOR_MS),
              gcMsPerSec: ((metricSum(m1, "nodejs_gc_duration_seconds_sum") - metricSum(m0, "nodejs_gc_duration_seconds_sum")) * 1000) / windowSeconds,
            }
          : {}),
        rssIdleMb: idleRss[n] / 2 ** 20,
        rssLoadedMb: loaded / 2 ** 20,
        rssPerCallKb: (loaded - idleRss[n]) / 1024 / perCall,
        ...(loadedLive[n] && idleLive[n] ? { livePerCallKb: (liveBytes(loadedLive[n]) - liveBytes(idleLive[n])) / 1024 / perCall } : {}),
      };
    });
    const pipelineNames = [...SERVICE_NAMES, "nats-server", "redis-server"];
    const pipelineCpu = processes.filter((p) => pipelineNames.includes(p.name)).reduce((a, p) => a + p.cpuCores, 0);
    const redisUsedLoaded = rssSamples > 0 ? redisUsedSum / rssSamples : NaN;
    const redisPerCallKb = (redisUsedLoaded - idleRedisUsed) / 1024 / perCall;
    const servicesPerCallKb = processes.filter((p) => (SERVICE_NAMES as string[]).includes(p.name)).reduce((a, p) => a + p.rssPerCallKb, 0);
    const heap = (m: Record<string, Map<string, number>>, n: string) => metricSum(m[n], "nodejs_heap_size_used_bytes");
    const heapPerCallKb = SERVICE_NAMES.reduce((a, n) => a + (heap(metrics1, n) - heap(idleMetrics, n)), 0) / 1024 / perCall;
    const commands = Number(redis1.total_commands_processed) - Number(redis0.total_commands_processed);
    const ingressDelta = (name: string) => metricSum(metrics1.ingress, name) - metricSum(metrics0.ingress, name);
    const turnCount = measured.length;

    const errorDetails: string[] = [];
    const c = gen.counters;
    for (const [what, n] of [
      ["loadgen: connect errors", c.connectErrors],
      ["loadgen: streams closed by the server", c.serverCloses],
      ["loadgen: inputs without a reply", c.noReply],
      ["loadgen: protocol anomalies", c.anomalies],
    ] as const) {
      if (n > 0) errorDetails.push(`${what}: ${n}`);
    }
    for (const example of gen.anomalyExamples.slice(0, 5)) errorDetails.push(`  e.g. ${example}`);
    let counterErrors = 0;
    for (const [key, value] of errorsAfter) {
      const duringSample = (afterSample.get(key) ?? 0) - (beforeSample.get(key) ?? 0);
      const delta = value - (errorsBefore.get(key) ?? 0) - duringSample;
      if (delta > 0) {
        counterErrors += delta;
        errorDetails.push(`${key} +${delta}`);
      }
    }
    let logErrors = 0;
    for (const [name, p] of Object.entries(logProblems)) {
      logErrors += p.errors;
      if (p.errors > 0 || p.warnings > 0) errorDetails.push(`${name} log: ${p.errors} errors, ${p.warnings} warnings${p.examples.length ? `; e.g. ${p.examples.join(" | ")}` : ""}`);
    }
    const errorTotal = c.connectErrors + c.serverCloses + c.noReply + c.anomalies + counterErrors + logErrors;

    const overhead = summarize(measured.map((t) => t.overhead));
    const gaps = gen.gaps.summary();
    const result: RunResult = {
      calls,
      held,
      windowSeconds,
      callsStarted: c.callsStarted,
      turns: turnCount,
      turnsByKind: Object.fromEntries(kinds.map((k) => [k, measured.filter((t) => t.kind === k).length])),
      overhead,
      overheadByKind: Object.fromEntries(kinds.map((k) => [k, bySomeKind(k, (t) => t.overhead)])),
      latency: summarize(measured.map((t) => t.firstAudioAt - t.inputEndAt)),
      latencyByKind: Object.fromEntries(kinds.map((k) => [k, bySomeKind(k, (t) => t.firstAudioAt - t.inputEndAt)])),
      greeting: bySomeKind("greeting", (t) => t.firstAudioAt - t.baseAt),
      engine: { asr: summarize(attributed.asrMs), tts: summarize(attributed.ttsMs), unattributed: attributed.unattributed },
      gaps: { ...gaps, over40: gen.gaps.above(40) },
      underruns: measured.reduce((a, t) => a + t.underruns, 0),
      generatorLag: gen.tickLag.summary(),
      stages: records.stages,
      decisionLag: records.decisionLag,
      slowest: records.slowest,
      hopFloor,
      vad: options.vad,
      nats: {
        inPerSec: (varz1.in_msgs - varz0.in_msgs) / windowSeconds,
        outPerSec: (varz1.out_msgs - varz0.out_msgs) / windowSeconds,
        inMbPerSec: (varz1.in_bytes - varz0.in_bytes) / windowSeconds / 2 ** 20,
        outMbPerSec: (varz1.out_bytes - varz0.out_bytes) / windowSeconds / 2 ** 20,
      },
      callerAudio: {
        messagesPerSec: ingressDelta("voicebot_ingress_caller_audio_messages_total") / windowSeconds,
        framesPerSec: ingressDelta("voicebot_ingress_frames_in_total") / windowSeconds,
      },
      redis: {
        commandsPerSec: commands / windowSeconds,
        commandsPerTurn: turnCount > 0 ? commands / turnCount : NaN,
        topCommands: Object.entries(commandCounts(redis0, redis1))
          .sort((a, b) => b[1] - a[1])
          .slice(0, 8)
          .map(([name, n]) => [name, turnCount > 0 ? n / turnCount : NaN]),
        usedIdleMb: idleRedisUsed / 2 ** 20,
        usedLoadedMb: redisUsedLoaded / 2 ** 20,
        usedPerCallKb: redisPerCallKb,
      },
      processes,
      pipeline: {
        cpuCores: pipelineCpu,
        cpuMsPerCallSecond: (pipelineCpu * 1000) / perCall,
        memoryPerCallKb: servicesPerCallKb + redisPerCallKb,
        heapPerCallKb,
        livePerCallKb: processes.reduce((a, p) => a + (p.livePerCallKb ?? 0), 0) + redisPerCallKb,
        loadedMb:
          processes.filter((p) => (SERVICE_NAMES as string[]).includes(p.name)).reduce((a, p) => a + p.rssLoadedMb, 0) + redisUsedLoaded / 2 ** 20,
      },
      machine: {
        busyCores: (machine1 - machine0) / windowSeconds,
        otherCores: (machine1 - machine0) / windowSeconds - processes.reduce((a, p) => a + p.cpuCores, 0),
      },
      errors: { total: errorTotal, details: errorDetails },
      cleanup,
      pass: false,
    };
    result.pass =
      errorTotal === 0 &&
      overhead.p99 <= options.overheadLimitMs &&
      gaps.p99 <= options.gapLimitMs &&
      // Redialling calls leave their slot empty for up to a second: the mean counts, the minimum dips.
      held.mean >= calls * 0.97 &&
      cleanup.details.length === 0;
    if (!options.keep) await removeDir(system.dir);
    else console.log(`    logs kept in ${system.dir}`);
    return result;
  } catch (error) {
    await system.stop();
    console.log(`    logs kept in ${system.dir}`);
    throw error;
  }
}

/** Each service's live memory after a full GC (a service whose inspector does not answer is left out). */
async function allLiveMemory(system: BenchSystem, snapshotDir?: string, phase?: string): Promise<Record<string, LiveMemory | undefined>> {
  const all: Record<string, LiveMemory | undefined> = {};
  if (snapshotDir) await mkdir(snapshotDir, { recursive: true });
  await Promise.all(
    SERVICE_NAMES.map(async (name) => {
      const snapshotFile = snapshotDir ? path.join(snapshotDir, `${name}-${phase}.heapsnapshot`) : undefined;
      all[name] = await liveMemory(system.services[name].inspectPort, undefined, snapshotFile).catch((error: Error) => {
        console.log(`    ${name}: no live-memory sample (${error.message})`);
        return undefined;
      });
    }),
  );
  return all;
}

const liveBytes = (m: LiveMemory) => m.heapUsed + m.external;

async function allMetrics(system: BenchSystem): Promise<Record<string, Map<string, number>>> {
  const all: Record<string, Map<string, number>> = {};
  await Promise.all(SERVICE_NAMES.map(async (name) => (all[name] = await system.metrics(name))));
  return all;
}

interface AnalyzedTurn extends TurnSample {
  overhead: number;
}

/**
 * Engine time on a turn's critical path, as the fakes measured it (request received -> answer written): the
 * transcription of a speech turn, the first synthesized chunk of a keypad turn (prompts come from the tts cache).
 * Requests are matched to turns by the call slot they name and by time. A transcription may start during the
 * endpoint silence (the asr's early finals): only its time after the caller's endpoint frame is on the path.
 */
function attributeEngineTime(turns: TurnSample[], asr: EngineRecord[], tts: EngineRecord[], minSilenceMs: number) {
  const bySlot = (records: EngineRecord[]) => {
    const map = new Map<number, EngineRecord[]>();
    for (const r of records) {
      if (r.slot < 0) continue;
      let list = map.get(r.slot);
      if (!list) map.set(r.slot, (list = []));
      list.push(r);
    }
    for (const list of map.values()) list.sort((a, b) => a.atMs - b.atMs);
    return map;
  };
  const asrBySlot = bySlot(asr);
  const ttsBySlot = bySlot(tts);
  // Date.now() in the fakes has 1 ms resolution; the turn's times are sub-ms.
  const find = (map: Map<number, EngineRecord[]>, turn: TurnSample) =>
    map.get(turn.slot)?.find((r) => r.atMs >= turn.baseAt - 1 && r.atMs <= turn.firstAudioAt);
  // The latest transcription of the utterance: requested inside its endpoint silence or after it.
  const findTranscription = (turn: TurnSample) =>
    asrBySlot.get(turn.slot)?.findLast((r) => r.atMs >= turn.baseAt - minSilenceMs && r.atMs <= turn.firstAudioAt);
  const asrMs: number[] = [];
  const ttsMs: number[] = [];
  let unattributed = 0;
  const analyzed: AnalyzedTurn[] = turns.map((turn) => {
    let engine = 0;
    if (turn.kind === "speech") {
      const r = findTranscription(turn);
      if (r) {
        const onPath = Math.max(0, r.answeredMs - Math.max(r.atMs, turn.baseAt));
        asrMs.push(onPath);
        engine += onPath;
      } else unattributed++;
    }
    const t = find(ttsBySlot, turn);
    if (t) {
      ttsMs.push(t.answeredMs - t.atMs);
      engine += t.answeredMs - t.atMs;
    } else if (turn.kind === "keys") unattributed++;
    return { ...turn, overhead: turn.firstAudioAt - turn.baseAt - engine };
  });
  return { turns: analyzed, asrMs, ttsMs, unattributed };
}

/**
 * The call records ingress wrote: the stage split of the turns that started playing inside the window, and per
 * speech turn the asr's decision lag (its endpoint decision after the caller sent the frame that allowed it).
 */
async function turnRecords(system: BenchSystem, callSids: string[], turns: AnalyzedTurn[], fromMs: number, toMs: number) {
  const pipeline = system.store.redis.pipeline();
  for (const sid of callSids) pipeline.lrange(keys.turns(sid), 0, -1);
  const replies = (await pipeline.exec()) ?? [];
  const bySid = new Map<string, TurnEntry[]>();
  const stages: Record<string, number[]> = {};
  replies.forEach(([error, list], i) => {
    if (error) return;
    const entries = (list as string[]).map((raw) => JSON.parse(raw) as TurnEntry);
    bySid.set(callSids[i], entries);
    for (const entry of entries) {
      const at = Date.parse(entry.firstAudioAt);
      if (!entry.inputEndAt || at < fromMs || at >= toMs) continue;
      for (const [stage, ms] of Object.entries(entry.stages)) (stages[stage] ??= []).push(ms);
      (stages.latencyMs ??= []).push(entry.latencyMs);
    }
  });
  // Ingress stamps the first frame just before sending it; the caller receives it a little later.
  const entryOf = (turn: AnalyzedTurn) =>
    bySid.get(turn.callSid)?.find((e) => {
      const d = turn.firstAudioAt - Date.parse(e.firstAudioAt);
      return e.inputEndAt && d >= -2 && d < 100;
    });
  const decisionLag: number[] = [];
  let unmatched = 0;
  for (const turn of turns) {
    if (turn.kind !== "speech") continue;
    const entry = entryOf(turn);
    if (entry?.stages.endpointMs === undefined) {
      unmatched++;
      continue;
    }
    decisionLag.push(entry.stages.endpointMs - (turn.baseAt - turn.speechEndAt));
  }
  const slowest = turns
    .filter((t) => t.kind !== "greeting" && t.firstAudioAt >= fromMs && t.firstAudioAt < toMs)
    .sort((a, b) => b.overhead - a.overhead)
    .slice(0, SLOWEST_TURNS)
    .map((t) => ({ kind: t.kind, overheadMs: t.overhead, engineMs: t.firstAudioAt - t.baseAt - t.overhead, stages: entryOf(t)?.stages }));
  return {
    stages: Object.fromEntries(Object.entries(stages).map(([k, v]) => [k, summarize(v)])),
    decisionLag: summarize(decisionLag),
    slowest,
    unmatched,
  };
}

/** Redis commands by name between two `INFO` replies (cmdstat_<name>:calls=N,...). */
function commandCounts(before: Record<string, string>, after: Record<string, string>): Record<string, number> {
  const calls = (info: Record<string, string>, key: string) => Number(/calls=(\d+)/.exec(info[key] ?? "")?.[1] ?? 0);
  const counts: Record<string, number> = {};
  for (const key of Object.keys(after)) {
    if (!key.startsWith("cmdstat_")) continue;
    const delta = calls(after, key) - calls(before, key);
    if (delta > 0) counts[key.slice("cmdstat_".length)] = delta;
  }
  return counts;
}

/** After the calls ended: every active-call gauge back to 0, and nothing live left in Redis for them. */
async function checkCleanup(system: BenchSystem, callSids: string[]): Promise<RunResult["cleanup"]> {
  const details: string[] = [];
  const started = performance.now();
  let gauges: Record<string, number> = {};
  let zeroAfter: number | undefined;
  while (performance.now() - started < 30_000) {
    gauges = {};
    for (const [service, name] of ACTIVE_GAUGES) gauges[name] = metricSum(await system.metrics(service), name);
    if (Object.values(gauges).every((v) => v === 0)) {
      zeroAfter = performance.now() - started;
      break;
    }
    await sleep(250);
  }
  for (const [name, value] of Object.entries(gauges)) if (value !== 0) details.push(`${name} = ${value} 30 s after the last call ended`);
  // Writes still in flight when the calls ended land now; whatever live key exists after this has leaked.
  await sleep(2_000);

  const redis = system.store.redis;
  const live = { "dialog state": keys.dialog, "asr hints": keys.hints, "asr lease": (id: string) => keys.lease(id, "asr"), "dialog lease": (id: string) => keys.lease(id, "dialog"), "once marks": keys.once, "tool results": keys.toolResults };
  const pipeline = redis.pipeline();
  for (const sid of callSids) {
    pipeline.hget(keys.meta(sid), "state");
    for (const key of Object.values(live)) pipeline.exists(key(sid));
  }
  const replies = (await pipeline.exec()) ?? [];
  const stride = 1 + Object.keys(live).length;
  let notEnded = 0;
  let liveKeys = 0;
  const liveByKind: Record<string, number> = {};
  const leftover: string[] = [];
  for (let i = 0; i < callSids.length; i++) {
    if (replies[stride * i][1] !== "ended") notEnded++;
    Object.entries(live).forEach(([kind, key], k) => {
      if (Number(replies[stride * i + 1 + k][1]) === 0) return;
      liveKeys++;
      liveByKind[kind] = (liveByKind[kind] ?? 0) + 1;
      leftover.push(key(callSids[i]));
    });
  }
  // A lease re-taken by a renewal that raced the hang-up expires on its own within seconds; anything else stays.
  const ttls = leftover.length > 0 ? ((await leftover.reduce((p, key) => p.pttl(key), redis.pipeline()).exec()) ?? []) : [];
  const lasting = ttls.filter(([, ttl]) => Number(ttl) < 0 || Number(ttl) > 60_000).length;
  const leaseIndex = (await redis.zcard(keys.leaseIndex("asr"))) + (await redis.zcard(keys.leaseIndex("dialog")));
  if (notEnded > 0) details.push(`${notEnded} calls not marked ended in their record`);
  if (liveKeys > 0) {
    details.push(
      `${liveKeys} live keys left for ended calls (${lasting} of them live for more than a minute): ${Object.entries(liveByKind).map(([kind, n]) => `${kind} ${n}`).join(", ")}`,
    );
  }
  if (leaseIndex > 0) details.push(`${leaseIndex} entries left in the lease indexes`);
  return { gaugesZeroAfterMs: zeroAfter, gauges, liveKeys, leaseIndex, notEnded, details };
}

async function countLogProblems(system: BenchSystem): Promise<Record<string, { errors: number; warnings: number; examples: string[] }>> {
  const out: Record<string, { errors: number; warnings: number; examples: string[] }> = {};
  for (const name of SERVICE_NAMES) {
    const text = await readFile(system.services[name].logFile, "utf8").catch(() => "");
    const counts = { errors: 0, warnings: 0, examples: [] as string[] };
    const seen = new Set<string>();
    for (const line of text.split("\n")) {
      if (!line.includes('"level":"error"') && !line.includes('"level":"warn"')) continue;
      let record: { level?: string; msg?: string };
      try {
        record = JSON.parse(line);
      } catch {
        continue;
      }
      if (record.level === "error") counts.errors++;
      else counts.warnings++;
      const msg = `${record.level}: ${record.msg}`;
      if (!seen.has(msg) && counts.examples.length < 3) {
        seen.add(msg);
        counts.examples.push(msg);
      }
    }
    out[name] = counts;
  }
  return out;
}

// ---- report ----

function report(r: RunResult, options: Options): string {
  const s = (x: Summary) => [fmt(x.p50), fmt(x.p95), fmt(x.p99), fmt(x.max), String(x.n)];
  const lines: string[] = [];
  lines.push(`\n--- ${r.calls} calls: ${r.pass ? "PASS" : "FAIL"} (p99 overhead <= ${options.overheadLimitMs} ms, outbound gap p99 <= ${options.gapLimitMs} ms, no errors, all calls held, clean after) ---`);
  lines.push(
    `calls held: min ${r.held.min === Infinity ? 0 : r.held.min}, mean ${fmt(r.held.mean)} over ${fmt(r.windowSeconds, 0)} s (${r.callsStarted} calls started in all); turns measured: ${r.turns} (${Object.entries(r.turnsByKind).map(([k, n]) => `${k} ${n}`).join(", ")})`,
  );
  lines.push("");
  lines.push(
    table(
      ["per turn, ms", "p50", "p95", "p99", "max", "n"],
      [
        ["pipeline overhead (all)", ...s(r.overhead)],
        ...Object.entries(r.overheadByKind).map(([k, v]) => [`  ${k}`, ...s(v)]),
        ["caller latency (all)", ...s(r.latency)],
        ...Object.entries(r.latencyByKind).map(([k, v]) => [`  ${k}`, ...s(v)]),
        ["engine: transcription after endpoint", ...s(r.engine.asr)],
        ["engine: first tts chunk", ...s(r.engine.tts)],
        ["stream start -> greeting", ...s(r.greeting)],
        ["outbound frame gap", ...s(r.gaps)],
        ["loadgen tick lag", ...s(r.generatorLag)],
      ],
    ),
  );
  lines.push(
    `outbound gaps > 40 ms: ${r.gaps.over40} of ${r.gaps.n}; caller-side underruns: ${r.underruns}; turns without engine attribution: ${r.engine.unattributed}`,
  );
  lines.push("");
  lines.push(`asr decision lag (speech turns, ${r.vad} VAD): p50 ${fmt(r.decisionLag.p50)} p99 ${fmt(r.decisionLag.p99)} max ${fmt(r.decisionLag.max)} ms (n ${r.decisionLag.n})`);
  lines.push("stage split from the call records (ms):");
  lines.push(table(["stage", "p50", "p95", "p99", "max", "n"], Object.entries(r.stages).map(([k, v]) => [k, ...s(v)])));
  lines.push(hopFloorLine(r.hopFloor));
  lines.push(`slowest turns (overhead ms, engine ms: the call record's stages):`);
  for (const t of r.slowest) {
    const stages = t.stages ? Object.entries(t.stages).map(([k, v]) => `${k.replace(/Ms$/, "")} ${v}`).join(" ") : "no record matched";
    lines.push(`  ${t.kind.padEnd(7)} ${fmt(t.overheadMs).padStart(6)} ${fmt(t.engineMs).padStart(5)}: ${stages}`);
  }
  lines.push("");
  lines.push(
    `NATS: ${fmt(r.nats.inPerSec, 0)} msgs/s in, ${fmt(r.nats.outPerSec, 0)} msgs/s out (${fmt(r.nats.inMbPerSec, 2)} / ${fmt(r.nats.outMbPerSec, 2)} MB/s)`,
  );
  lines.push(
    `caller audio: ${fmt(r.callerAudio.messagesPerSec, 0)} CallerAudio msgs/s for ${fmt(r.callerAudio.framesPerSec, 0)} frames/s (${fmt(r.callerAudio.framesPerSec / r.callerAudio.messagesPerSec, 2)} frames per message)`,
  );
  lines.push(
    `Redis: ${fmt(r.redis.commandsPerSec, 0)} commands/s, ${fmt(r.redis.commandsPerTurn, 1)} per bot turn (${r.redis.topCommands.map(([c, n]) => `${c} ${fmt(n, 1)}`).join(", ")}); used_memory ${fmt(r.redis.usedIdleMb)} -> ${fmt(r.redis.usedLoadedMb)} MB (${fmt(r.redis.usedPerCallKb)} KB per call)`,
  );
  lines.push("");
  lines.push(
    table(
      ["process", "CPU cores", "ms CPU/call·s", "loop delay p99/max ms", "GC ms/s", "RSS idle MB", "RSS loaded MB", "RSS KB/call", "live KB/call"],
      r.processes.map((p) => [
        p.name,
        fmt(p.cpuCores, 3),
        fmt((p.cpuCores * 1000) / Math.max(1, r.held.mean), 2),
        p.loopLagP99Ms === undefined ? "-" : `${fmt(p.loopLagP99Ms, 0)} / ${fmt(p.loopLagMaxMs ?? NaN, 0)}`,
        p.gcMsPerSec === undefined ? "-" : fmt(p.gcMsPerSec, 1),
        fmt(p.rssIdleMb),
        fmt(p.rssLoadedMb),
        fmt(p.rssPerCallKb),
        p.livePerCallKb === undefined ? "-" : fmt(p.livePerCallKb),
      ]),
    ),
  );
  lines.push(
    `pipeline (5 services + nats + redis): ${fmt(r.pipeline.cpuCores, 2)} cores = ${fmt(r.pipeline.cpuMsPerCallSecond, 2)} ms CPU per call-second; memory per call: ${fmt(r.pipeline.livePerCallKb)} KB live (services' heap + buffers after a full GC, + Redis used_memory); ${fmt(r.pipeline.memoryPerCallKb)} KB of RSS (services' RSS + Redis; V8 heap used between collections: ${fmt(r.pipeline.heapPerCallKb)} KB)`,
  );
  lines.push(
    `machine: ${fmt(r.machine.busyCores, 2)} of ${os.availableParallelism()} cores busy, ${fmt(Math.max(0, r.machine.otherCores), 2)} of them outside this bench${r.machine.otherCores > 0.15 ? " (other work on the machine: tail latencies are disturbed)" : ""}`,
  );
  lines.push("");
  lines.push(`errors: ${r.errors.total}${r.errors.details.length ? "\n  " + r.errors.details.join("\n  ") : ""}`);
  const c = r.cleanup;
  lines.push(
    `after the calls: active-call gauges ${c.gaugesZeroAfterMs !== undefined ? `all 0 after ${fmt(c.gaugesZeroAfterMs / 1000)} s` : `NOT 0: ${JSON.stringify(c.gauges)}`}; ` +
      `Redis: ${c.notEnded} calls not ended, ${c.liveKeys} live keys, ${c.leaseIndex} lease-index entries (live keys: dialog state, hints, leases, once-marks, tool results)`,
  );
  for (const d of c.details) lines.push(`  ${d}`);
  return lines.join("\n");
}

function summaryTable(results: RunResult[]): string {
  return table(
    ["calls", "held", "turns", "ovh p50", "ovh p95", "ovh p99", "gap p99", "latency p99", "errors", "CPU cores", "ms CPU/call·s", "live KB/call", "RSS KB/call", "marginal RSS KB/call", "other load", "result"],
    results.map((r, i) => [
      r.calls,
      fmt(r.held.mean, 0),
      r.turns,
      fmt(r.overhead.p50),
      fmt(r.overhead.p95),
      fmt(r.overhead.p99),
      fmt(r.gaps.p99),
      fmt(r.latency.p99, 0),
      r.errors.total,
      fmt(r.pipeline.cpuCores, 2),
      fmt(r.pipeline.cpuMsPerCallSecond, 2),
      fmt(r.pipeline.livePerCallKb, 0),
      fmt(r.pipeline.memoryPerCallKb, 0),
      // Slope between this step and the previous one: what one more call costs, without the fixed growth of a
      // process under load (young generation, JIT) that the per-call average spreads over the calls.
      i > 0 ? fmt(((r.pipeline.loadedMb - results[i - 1].pipeline.loadedMb) * 1024) / (r.held.mean - results[i - 1].held.mean), 0) : "-",
      fmt(Math.max(0, r.machine.otherCores), 2),
      r.pass ? "pass" : "FAIL",
    ]),
  );
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  console.log(`voicebot load test on ${os.availableParallelism()} cores (${os.cpus()[0]?.model ?? "?"}), node ${process.version}`);
  const speed = await calibrate();
  console.log(
    `machine speed now: ${(speed.alone / 1000).toFixed(0)} k media messages/s on one core alone, ${(speed.allCores / 1000).toFixed(0)} k per core with all ${speed.cores} busy (compare runs only at similar figures)`,
  );
  const speech = (await speechBurst()).map((frame) => Buffer.from(frame).toString("base64"));
  const silenceText = options.lineNoiseDbfs === undefined ? "digital silence" : `white noise at ${options.lineNoiseDbfs} dBFS RMS`;
  console.log(`caller speech: "order status", ${speech.length * FRAME_MS} ms; endpoint silence ${endpointSilenceMs(options)} ms (an expected answer; the minimum is ${options.env.ASR_MIN_SILENCE_MS ?? options.minSilenceMs}); between words ${silenceText}`);
  const phases = Math.round(FRAME_MS / options.tickMs);
  console.log(`callers' frames: ${phases === 1 ? "all calls in one burst every 20 ms" : `each call on its own 20 ms clock, sent on a ${options.tickMs} ms tick (${phases} phases)`}`);
  const results: RunResult[] = [];
  if (options.findMax) {
    for (let calls = options.start; calls <= options.max; calls += options.step) {
      const result = await runOnce(options, calls, speech);
      results.push(result);
      console.log(report(result, options));
      console.log(`\n${summaryTable(results)}`);
      if (!result.pass && !options.allSteps) break;
    }
    const best = results.filter((r) => r.pass).pop();
    console.log(best ? `\nmost calls held within the limits: ${best.calls}` : "\nno step passed");
  } else {
    const result = await runOnce(options, options.calls, speech);
    results.push(result);
    console.log(report(result, options));
  }
  if (options.json) await writeFile(options.json, JSON.stringify(results, null, 2));
  if (options.profile.length > 0) console.log(`cpu profiles: ${path.resolve(process.cwd(), ".run", "profiles")}`);
  process.exit(results.every((r) => r.pass) || options.findMax ? 0 : 1);
}

await main().catch((error) => {
  console.error(error instanceof Error ? error.stack : error);
  process.exit(2);
});
