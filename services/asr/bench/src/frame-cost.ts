// CPU the asr service spends per caller frame. N calls stream CallerAudio at real time (one 20 ms timer for all of
// them, as the load test's callers and ingress's publish batch deliver it) into the built asr service, run as its
// own process against a real NATS and Redis, with a fake OpenAI transcription engine that answers at once. Each
// caller says "order status" (flite), then stays quiet for --gap seconds (listening to the bot, keying digits), and
// again; the load test's callers say it about once per 30 s. The asr process's CPU time
// (/proc/<pid>/stat) over the measured window, divided by the frames sent in it, is the cost per frame.
//
//   node services/asr/bench/dist/frame-cost.js [options]      (after `pnpm -s build && tsc -b services/asr/bench`)
//
//   --calls <n>            calls at once (default 150)
//   --seconds <s>          measured window (default 30), after --warmup <s> (default 5)
//   --silence-batch <n>    silence frames per CallerAudio message (default 1; ingress may send up to ~10)
//   --lean                 publish CallerAudio without the call id header
//   --gap <min>-<max>      seconds of silence after each "order status" (default 20-40)
//   --vad silero|energy    the asr's VAD (default silero)
//   --profile <dir>        run the asr with --cpu-prof into <dir> and print where the window's CPU went
//   --repeat <n>           measured windows in a row (default 1), each reported
//   --no-audio             claim the calls but send nothing: the asr's fixed cost of holding them (lease renewals,
//                          timers, metrics), to set against the per-frame figures

import { execFile, spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs, promisify } from "node:util";
import { mulawEncode, mulawFrameEnergy } from "@voicebot/audio";
import { Bus, subjects } from "@voicebot/bus";
import { AudioEncoding, CallEnded, CallerAudio, CallStarted, Transcript } from "@voicebot/proto";
import { createLogger } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import { freePort, repoRoot, SERVICE_NODE_FLAGS, startFakeOpenAI, startNats, startRedis, waitFor } from "@voicebot/testing";
import { Registry } from "prom-client";
import { drainDialogQueue, processCpuMs } from "./service-run.js";

const FRAME_MS = 20;
const FRAME_BYTES = 160;
const OPENAI_KEY = "frame-cost-key";
const run = promisify(execFile);

const { values: args } = parseArgs({
  options: {
    calls: { type: "string", default: "150" },
    seconds: { type: "string", default: "30" },
    warmup: { type: "string", default: "5" },
    "silence-batch": { type: "string", default: "1" },
    lean: { type: "boolean", default: false },
    gap: { type: "string", default: "20-40" },
    vad: { type: "string", default: "silero" },
    profile: { type: "string" },
    repeat: { type: "string", default: "1" },
    "no-audio": { type: "boolean", default: false },
  },
});
const CALLS = Number(args.calls);
const WINDOW_MS = Number(args.seconds) * 1000;
const WARMUP_MS = Number(args.warmup) * 1000;
const SILENCE_BATCH = Math.max(1, Number(args["silence-batch"]));
const REPEAT = Math.max(1, Number(args.repeat));
const [GAP_MIN_FRAMES, GAP_MAX_FRAMES] = args.gap!.split("-").map((s) => Math.round((Number(s) * 1000) / FRAME_MS));
if (!(GAP_MIN_FRAMES > 0 && GAP_MAX_FRAMES >= GAP_MIN_FRAMES)) throw new Error(`--gap ${args.gap}: expected <min>-<max> seconds`);

const log = (text: string) => process.stderr.write(`${text}\n`);

/** utime+stime of a process in ms. */
const cpuMs = async (pid: number): Promise<number> => (await processCpuMs(pid)).self;

/** "order status" by flite as μ-law frames from the first to the last loud one (as the load test's callers say it). */
async function speechFrames(): Promise<Uint8Array[]> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "vb-frame-cost-"));
  try {
    const wav = path.join(dir, "s.wav");
    const raw = path.join(dir, "s.raw");
    await run("flite", ["-voice", "slt", "-t", "order status", "-o", wav]);
    await run("sox", [wav, "-t", "raw", "-r", "8000", "-c", "1", "-e", "signed-integer", "-b", "16", "-L", raw]);
    const bytes = await readFile(raw);
    const pcm = new Int16Array(Math.floor(bytes.length / 2));
    for (let i = 0; i < pcm.length; i++) pcm[i] = bytes.readInt16LE(i * 2);
    const mulaw = mulawEncode(pcm);
    const frames: Uint8Array[] = [];
    for (let at = 0; at + FRAME_BYTES <= mulaw.length; at += FRAME_BYTES) frames.push(mulaw.slice(at, at + FRAME_BYTES));
    const loud = frames.map((f) => mulawFrameEnergy(f) >= -35);
    return frames.slice(loud.indexOf(true), loud.lastIndexOf(true) + 1);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A quiet line: μ-law codes of ±8..±24 (about -75 dBFS), different per call. */
function silenceFrame(seed: number): Uint8Array {
  const frame = new Uint8Array(FRAME_BYTES);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < FRAME_BYTES; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    frame[i] = (state & 1 ? 0xfc : 0x7c) + ((state >>> 8) & 3);
  }
  return frame;
}

interface BenchCall {
  id: string;
  silence: Uint8Array;
  /** Next frame index (0 = stream start). */
  next: number;
  /** Frames of speech left in the current burst; 0 while silent. */
  speechLeft: number;
  silenceLeft: number;
  /** Silence frames held for one multi-frame message. */
  held: number;
  heldFirst: number;
  rng: number;
}

interface Counts {
  frames: number;
  messages: number;
}

/** Profile samples inside [fromUs, toUs] (monotonic clock, as process.hrtime): self time by function and by area. */
async function summarizeProfile(dir: string, fromUs: number, toUs: number): Promise<void> {
  const files = (await readdir(dir)).filter((f) => f.endsWith(".cpuprofile"));
  if (files.length === 0) {
    log(`no .cpuprofile in ${dir}`);
    return;
  }
  type Node = { id: number; callFrame: { functionName: string; url: string; lineNumber: number } };
  const profile = JSON.parse(await readFile(path.join(dir, files[0]), "utf8")) as {
    nodes: Node[];
    startTime: number;
    samples: number[];
    timeDeltas: number[];
  };
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  const area = new Map<string, number>();
  let total = 0;
  let t = profile.startTime;
  const areaOf = (url: string, name: string): string => {
    if (!url) return name.startsWith("(") ? name : "native/builtin";
    const m = /node_modules\/\.pnpm\/([^/]+)\//.exec(url) ?? /\/(libs\/[^/]+|services\/[^/]+)\//.exec(url);
    if (m) return m[1].replace(/@[\d.]+.*$/, "");
    return url.startsWith("node:") ? "node core" : url;
  };
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i];
    if (t < fromUs || t > toUs) continue;
    const node = byId.get(profile.samples[i])!;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === "(idle)") continue;
    total++;
    const key = `${functionName || "(anonymous)"} ${url ? `${path.basename(url)}:${lineNumber + 1}` : ""}`;
    self.set(key, (self.get(key) ?? 0) + 1);
    const a = areaOf(url, functionName);
    area.set(a, (area.get(a) ?? 0) + 1);
  }
  const pct = (n: number) => `${((100 * n) / total).toFixed(1).padStart(5)} %`;
  log(`\nprofile: ${total} busy samples in the window`);
  log("self time by area:");
  for (const [k, n] of [...area].sort((a, b) => b[1] - a[1]).slice(0, 15)) log(`  ${pct(n)}  ${k}`);
  log("self time by function (top 40):");
  for (const [k, n] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 40)) log(`  ${pct(n)}  ${k}`);
}

interface AsrProcess {
  port: number;
  pid: number;
  /** Warning and error log lines. */
  problems: string[];
  terminate(): Promise<void>;
}

/** The built asr service as its own process (like startServiceProcess, plus node flags such as --cpu-prof). */
async function startAsr(env: Record<string, string>, nodeArgs: string[]): Promise<AsrProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, [...SERVICE_NODE_FLAGS, ...nodeArgs, path.join(repoRoot, "services", "asr", "dist", "main.js")], {
    env: { ...process.env, ...env, HTTP_PORT: String(port), INSTANCE_ID: `asr-${port}` },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const problems: string[] = [];
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    for (const line of chunk.split("\n")) if (/"level":"(warn|error)"/.test(line)) problems.push(line);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`asr exited with ${child.exitCode}: ${problems.slice(-5).join("\n")}`);
        const res = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
        return res?.status === 200 || undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: "the asr to be ready" },
    );
  } catch (error) {
    child.kill("SIGKILL");
    throw error;
  }
  return {
    port,
    pid: child.pid!,
    problems,
    terminate: async () => {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** Everything started, stopped in reverse order however the run ends. */
const stops: Array<() => Promise<unknown>> = [];

async function main(): Promise<void> {
  const speech = await speechFrames();
  const nats = await startNats();
  stops.push(() => nats.stop());
  const redis = await startRedis();
  stops.push(() => redis.stop());
  const openai = await startFakeOpenAI({ apiKey: OPENAI_KEY, transcribe: () => ({ text: "order status" }) });
  stops.push(() => openai.stop());
  const profileDir = args.profile ? path.resolve(args.profile) : undefined;
  if (profileDir) await rm(profileDir, { recursive: true, force: true });
  const asr = await startAsr(
    {
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      LOG_LEVEL: "warn",
      ASR_VAD: args.vad!,
      ASR_ENGINES: "openai",
      ASR_OPENAI_BASE_URL: openai.baseUrl,
      ASR_OPENAI_API_KEY: OPENAI_KEY,
    },
    profileDir ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] : [],
  );
  stops.push(() => asr.terminate());
  const bus = await Bus.connect({ servers: nats.url, name: "frame-cost", log: createLogger({ bench: "frame-cost" }, "error"), registry: new Registry() });
  stops.push(() => bus.close());
  const store = CallStore.connect(redis.url);
  stops.push(() => store.close());
  const consumer = await drainDialogQueue(bus, 64);
  stops.push(() => consumer.stop());
  let finals = 0;
  bus.subscribe("vb.v1.call.*.transcript", Transcript, (t) => void (t.isFinal && finals++), { name: "bench-transcripts" });
  const format = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };

  const stamp = Date.now().toString(36);
  const calls: BenchCall[] = [];
  for (let n = 0; n < CALLS; n++) {
    const id = `CAframe${stamp}${n.toString(16).padStart(4, "0")}`;
    await store.createCall({ callSid: id, provider: "twilio", streamSid: `MZ${id}`, agent: "order-line", from: "+15550001111", to: "+15550002222", startedAt: new Date().toISOString() });
    bus.publish(subjects.callStarted, CallStarted, CallStarted.create({ callId: id, provider: "twilio", streamId: `MZ${id}`, callerFormat: format, botFormat: format, agent: "order-line", startedAtMs: Date.now() }), id);
    // Callers start talking at different moments: the first burst within the first gap.
    calls.push({ id, silence: silenceFrame(n + 1), next: 0, speechLeft: 0, silenceLeft: 25 + ((n * 7919) % GAP_MAX_FRAMES), held: 0, heldFirst: 0, rng: n + 1 });
  }
  const owner = `asr-${asr.port}`;
  await waitFor(async () => (await Promise.all(calls.map((c) => store.leaseOwner(c.id, "asr")))).every((o) => o === owner) || undefined, {
    what: "the asr to claim every call",
    timeoutMs: 30_000,
  });
  log(
    args["no-audio"]
      ? `${CALLS} calls claimed; vad ${args.vad}; no audio (figures per frame the calls would send)`
      : `${CALLS} calls claimed; vad ${args.vad}, silence ${SILENCE_BATCH} frame(s) per message, ${args.lean ? "no header" : "call id header"}`,
  );

  const counts: Counts = { frames: 0, messages: 0 };
  const publish = (call: BenchCall, first: number, payload: Uint8Array, frameCount: number) => {
    const message = CallerAudio.create({ callId: call.id, firstFrame: first, frameCount, format, payload: Buffer.from(payload), receivedAtMs: Date.now() });
    bus.publish(subjects.callerAudio(call.id), CallerAudio, message, args.lean ? undefined : call.id);
    counts.frames += frameCount;
    counts.messages++;
  };
  const flushHeld = (call: BenchCall) => {
    if (call.held === 0) return;
    const payload = new Uint8Array(call.held * FRAME_BYTES);
    for (let i = 0; i < call.held; i++) payload.set(call.silence, i * FRAME_BYTES);
    publish(call, call.heldFirst, payload, call.held);
    call.held = 0;
  };
  const step = (call: BenchCall) => {
    const index = call.next++;
    if (call.speechLeft === 0 && call.silenceLeft === 0) {
      call.speechLeft = speech.length;
      call.rng = (Math.imul(call.rng, 1103515245) + 12345) >>> 0;
      call.silenceLeft = GAP_MIN_FRAMES + (call.rng % (GAP_MAX_FRAMES - GAP_MIN_FRAMES + 1));
    }
    if (call.speechLeft > 0) {
      flushHeld(call);
      publish(call, index, speech[speech.length - call.speechLeft], 1);
      call.speechLeft--;
      return;
    }
    call.silenceLeft--;
    if (call.held === 0) call.heldFirst = index;
    call.held++;
    if (call.held >= SILENCE_BATCH) flushHeld(call);
  };

  const t0 = performance.now();
  const timer = setInterval(() => {
    if (args["no-audio"]) return;
    const due = Math.floor((performance.now() - t0) / FRAME_MS);
    for (const call of calls) while (call.next < due) step(call);
  }, FRAME_MS);

  await new Promise((resolve) => setTimeout(resolve, WARMUP_MS));
  const pid = asr.pid;
  const natsPid = nats.process.pid!;
  let profileFrom = 0;
  let profileTo = 0;
  for (let r = 0; r < REPEAT; r++) {
    const before = { asr: await cpuMs(pid), nats: await cpuMs(natsPid), bench: process.cpuUsage(), counts: { ...counts }, finals, at: performance.now() };
    if (r === 0) profileFrom = Number(process.hrtime.bigint() / 1000n);
    await new Promise((resolve) => setTimeout(resolve, WINDOW_MS));
    profileTo = Number(process.hrtime.bigint() / 1000n);
    const asrMs = (await cpuMs(pid)) - before.asr;
    const natsMs = (await cpuMs(natsPid)) - before.nats;
    // Without audio the figures are per frame the calls would have sent (50 per second each).
    const seconds = (performance.now() - before.at) / 1000;
    const frames = args["no-audio"] ? Math.round(CALLS * seconds * 50) : counts.frames - before.counts.frames;
    const messages = args["no-audio"] ? frames : counts.messages - before.counts.messages;
    const benchCpu = process.cpuUsage(before.bench);
    const benchMs = (benchCpu.user + benchCpu.system) / 1000;
    const line =
      `window ${r + 1}: ${frames} frames in ${messages} messages over ${seconds.toFixed(1)} s, ${finals - before.finals} finals; ` +
      `asr ${asrMs} ms CPU = ${((asrMs * 1000) / frames).toFixed(1)} µs/frame, ${((asrMs * 1000) / messages).toFixed(1)} µs/message, ` +
      `${(asrMs / (CALLS * seconds)).toFixed(2)} ms per call·s; nats-server ${((natsMs * 1000) / frames).toFixed(1)} µs/frame; ` +
      `bench ${(benchMs / seconds / 10).toFixed(0)} % of a core; load ${os.loadavg()[0].toFixed(2)}`;
    log(line);
  }
  clearInterval(timer);
  for (const call of calls) flushHeld(call);

  for (const line of asr.problems.slice(0, 10)) log(`asr: ${line}`);
  for (const call of calls) {
    bus.publish(subjects.ended(call.id), CallEnded, CallEnded.create({ callId: call.id, reason: "bench" }), call.id);
    await store.endCall(call.id, "bench");
  }
  await bus.nc.flush();
  await new Promise((resolve) => setTimeout(resolve, 500));
  await stopAll(); // the asr writes its profile as it exits
  if (profileDir) await summarizeProfile(profileDir, profileFrom, profileTo);
}

async function stopAll(): Promise<void> {
  for (const stop of stops.splice(0).reverse()) await stop().catch((error: unknown) => log(`stopping: ${String(error)}`));
}

main().catch(async (error) => {
  log(error instanceof Error ? (error.stack ?? error.message) : String(error));
  await stopAll();
  process.exit(1);
});
