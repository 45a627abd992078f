// CPU the ingress spends per Twilio media frame, in (caller -> ingress -> NATS) and out (BotAudio -> ingress ->
// caller). N Twilio Media Streams calls (one 20 ms timer for all of them, as the load test's callers) stream μ-law at
// real time into the built ingress, run as its own process against its own nats-server and redis-server (private, so
// the bench's dialog inputs and call records stay out of the shared ones). Callers are mostly quiet, loud 1 s in
// every 6 s. Window A: callers only -> CPU per inbound frame. Window B: the bot also talks on half the calls (BotAudio
// parts as the tts sends them: 2 frames, then up to 10; chunkDone/turnDone on the last) and the callers echo marks
// once the audio before them has played -> the CPU beyond window A's per inbound frame, per outbound frame (marks,
// BotAudio intake and playback events included). CPU = utime+stime from /proc/<pid>/stat. On a shared machine runs
// vary by up to ±20 % (the outbound figure, a difference, more): compare builds with --main, alternating, several
// rounds. Profile percentages are of V8's samples, taken on wall time: a syscall entry (writev, writeBuffer) also
// holds the time the process waited to run again after it.
//
//   cd /work/main && npx tsc -b services/ingress && node services/ingress/bench/frame-cost.mjs [options]
//
//   --calls <n>          calls at once (default 150)
//   --seconds <s>        window B, bot talking (default 20); --inbound-seconds <s> window A (default 10)
//   --profile <dir>      run the ingress with --cpu-prof into <dir> and print each window's top self-time entries
//   --main <file>        the ingress entry to run (default services/ingress/dist/main.js; e.g. a saved copy of an
//                        older build inside services/ingress/, for before/after runs on the same machine state)
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { mulawEncode } from "@voicebot/audio";
import { Bus, silentLogger, streams, subjects } from "@voicebot/bus";
import { AudioEncoding, BotAudio } from "@voicebot/proto";
import { freePort, repoRoot, startNats, startRedis, waitFor } from "@voicebot/testing";
import { Registry } from "prom-client";
import WebSocket from "ws";

const [FRAME_MS, FRAME_BYTES] = [20, 160];
const { values: args } = parseArgs({
  options: {
    calls: { type: "string", default: "150" },
    seconds: { type: "string", default: "20" },
    "inbound-seconds": { type: "string", default: "10" },
    profile: { type: "string" },
    main: { type: "string", default: path.join(repoRoot, "services/ingress/dist/main.js") },
  },
});
const [calls, log] = [Number(args.calls), (line) => process.stdout.write(`${line}\n`)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- audio: quiet frames (±8 of 32768, below the ingress's -55 dBFS batching level) and a loud 440 Hz tone ----
function frame(amplitude, offset) {
  const pcm = new Int16Array(FRAME_BYTES);
  for (let i = 0; i < pcm.length; i++) pcm[i] = Math.round(amplitude * Math.sin((2 * Math.PI * 440 * (offset + i)) / 8000));
  return Buffer.from(mulawEncode(pcm)).toString("base64");
}
const [QUIET, LOUD] = [frame(8, 0), Array.from({ length: 10 }, (_, i) => frame(8000, i * FRAME_BYTES))];
const BOT_AUDIO = Buffer.from(mulawEncode(Int16Array.from({ length: 125 * FRAME_BYTES }, (_, i) => 6000 * Math.sin(i / 3))));

// ---- the ingress process ----
const runId = Date.now().toString(36);
const [nats, redis] = await Promise.all([startNats(), startRedis()]);
const bus = await Bus.connect({ servers: nats.url, name: "frame-cost", log: silentLogger, registry: new Registry() });
await bus.ensureStream(streams.dialog); // ingress publishes dialog inputs (call start/end, playback) there
const port = await freePort();
if (args.profile) mkdirSync(args.profile, { recursive: true });
const nodeArgs = args.profile ? ["--cpu-prof", `--cpu-prof-dir=${path.resolve(args.profile)}`] : [];
const ingress = spawn(process.execPath, [...nodeArgs, path.resolve(args.main)], {
  // No asr, dialog or tts here: ready alone, and no fallback line (the load bench turns it off too).
  env: { ...process.env, NATS_URL: nats.url, REDIS_URL: redis.url, INGRESS_PORT: String(port), LOG_LEVEL: "info",
    INGRESS_REQUIRE_SERVICES: "none", NO_SILENCE_DEADLINE_MS: "0" },
  stdio: ["ignore", "pipe", "inherit"],
});
const problems = [];
ingress.stdout.setEncoding("utf8").on("data", (text) => {
  for (const line of text.split("\n")) if (/"level":"(warn|error)"/.test(line)) problems.push(line.slice(0, 300));
});
const ready = async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined))?.status === 200;
await waitFor(ready, { timeoutMs: 30_000, what: "ingress to be ready" });
const cpuTicks = () => {
  const fields = readFileSync(`/proc/${ingress.pid}/stat`, "utf8").split(") ")[1].split(" ");
  return { user: Number(fields[11]), sys: Number(fields[12]) }; // utime, stime (fields 14 and 15), in 1/100 s
};
/** read and write syscalls so far (socket reads and writes: NATS, Redis, the callers' WebSockets). */
const syscalls = () => {
  const io = Object.fromEntries(readFileSync(`/proc/${ingress.pid}/io`, "utf8").trim().split("\n").map((l) => l.split(": ")));
  return { reads: Number(io.syscr), writes: Number(io.syscw) };
};

// ---- callers ----
const counts = { inFrames: 0, outFrames: 0, outMessages: 0, marks: 0 };
class Caller {
  constructor(slot) {
    this.slot = slot;
    this.callSid = `CA${runId}x${slot}`;
    this.streamSid = `MZ${runId}x${slot}`;
    this.sent = 0;
    this.playedUntil = 0;
    this.marks = [];
    this.suffix = `,"streamSid":"${this.streamSid}"}`;
    this.ws = new WebSocket(`ws://127.0.0.1:${port}/twilio`);
    this.ws.on("message", (data) => this.onMessage(String(data)));
    this.opened = new Promise((resolve, reject) => this.ws.once("open", resolve).once("error", reject));
  }

  async start() {
    await this.opened;
    this.ws.send(`{"event":"connected","protocol":"Call","version":"1.0.0"}`);
    const mediaFormat = { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 };
    const start = { accountSid: "ACframecost", streamSid: this.streamSid, callSid: this.callSid, tracks: ["inbound"], mediaFormat };
    this.ws.send(JSON.stringify({ event: "start", sequenceNumber: "1", start, streamSid: this.streamSid }));
    this.startedAt = performance.now();
  }

  tick(now) {
    for (const due = Math.floor((now - this.startedAt) / FRAME_MS) + 1; this.sent < due; ) {
      const chunk = ++this.sent;
      // Loud one second in every six, each call at its own phase.
      const loud = (chunk + this.slot * 7) % 300 < 50;
      const payload = loud ? LOUD[chunk % LOUD.length] : QUIET;
      const media = `{"track":"inbound","chunk":"${chunk}","timestamp":"${chunk * FRAME_MS}","payload":"${payload}"}`;
      this.ws.send(`{"event":"media","sequenceNumber":"${chunk + 1}","media":${media}${this.suffix}`); // Twilio's key order
      counts.inFrames++;
    }
    while (this.marks.length > 0 && this.marks[0].due <= now) {
      const name = this.marks.shift().name;
      this.ws.send(`{"event":"mark","sequenceNumber":"0","streamSid":"${this.streamSid}","mark":{"name":"${name}"}}`);
    }
  }

  onMessage(text) {
    const message = JSON.parse(text);
    const now = performance.now();
    if (message.event === "media") {
      const frames = Buffer.byteLength(message.media.payload, "base64") / FRAME_BYTES;
      this.playedUntil = Math.max(this.playedUntil, now) + frames * FRAME_MS;
      counts.outFrames += frames;
      counts.outMessages++;
    } else if (message.event === "mark") {
      counts.marks++;
      this.marks.push({ name: message.mark.name, due: this.playedUntil });
    }
  }
}

/** One bot turn on a call: two 2.5 s chunks, in parts as the tts publishes them (2 frames, then 10). */
function botTurn(caller, turn) {
  const callId = caller.callSid;
  for (let chunkSeq = 0; chunkSeq < 2; chunkSeq++) {
    for (let partSeq = 0, at = 0; at < BOT_AUDIO.length; partSeq++) {
      const frames = partSeq === 0 ? 2 : 10;
      const payload = BOT_AUDIO.subarray(at, at + frames * FRAME_BYTES);
      at += payload.length;
      const last = at >= BOT_AUDIO.length;
      const message = BotAudio.create({
        callId,
        turnId: `t${turn}`,
        chunkSeq,
        partSeq,
        format: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 },
        payload,
        chunkDone: last,
        turnDone: last && chunkSeq === 1,
        text: partSeq === 0 ? `turn ${turn} sentence ${chunkSeq}` : "",
      });
      bus.publish(subjects.botAudio(callId), BotAudio, message, callId);
    }
  }
}

const callers = Array.from({ length: calls }, (_, slot) => new Caller(slot));
for (const caller of callers) {
  await caller.start();
  await sleep(2_000 / calls); // calls start over 2 s
}
const timer = setInterval(() => {
  const now = performance.now();
  for (const caller of callers) caller.tick(now);
}, FRAME_MS);
await sleep(3_000);

/** Ingress CPU and frame counts over `seconds`; with the profile window in process.hrtime µs. */
async function measure(seconds) {
  const nowUs = () => Number(process.hrtime.bigint() / 1000n);
  const snapshot = () => ({ ...counts, ...syscalls(), ...cpuTicks() });
  const [before, fromUs] = [snapshot(), nowUs()];
  await sleep(seconds * 1000);
  const [after, toUs] = [snapshot(), nowUs()];
  const d = Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - before[k]]));
  return { ...d, cpuMs: (d.user + d.sys) * 10, sysMs: d.sys * 10, fromUs, toUs, seconds };
}

log(`${calls} calls; window A (callers only, ${args["inbound-seconds"]} s)...`);
const a = await measure(Number(args["inbound-seconds"]));
// The bot talks on every other call: a 5 s turn every 7 s, each call at its own phase.
let turns = 0;
for (const caller of callers.filter((c) => c.slot % 2 === 0)) {
  const speak = () => botTurn(caller, ++turns);
  caller.botTimer = setTimeout(() => (speak(), (caller.interval = setInterval(speak, 7_000))), (caller.slot * 97) % 7_000);
}
await sleep(2_000);
log(`window B (bot talking on ${Math.ceil(calls / 2)} calls, ${args.seconds} s)...`);
const b = await measure(Number(args.seconds));
for (const caller of callers) clearTimeout(caller.botTimer), clearInterval(caller.interval);
clearInterval(timer);

const metricsText = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
/** Each series of a metric as name{labels}=value (none when it was never counted). */
const metric = (name) => metricsText.split("\n").filter((l) => l.startsWith(name)).map((l) => l.replace(" ", "=")).join(" ");
for (const caller of callers) {
  caller.ws.send(`{"event":"stop","sequenceNumber":"0","streamSid":"${caller.streamSid}","stop":{"callSid":"${caller.callSid}"}}`);
  caller.ws.close(1000);
}
await sleep(1_000);
ingress.kill("SIGTERM");
await new Promise((resolve) => ingress.once("exit", resolve));
await bus.close();
await Promise.all([nats.stop(), redis.stop()]);

const perIn = (a.cpuMs * 1000) / a.inFrames;
const perOut = (b.cpuMs * 1000 - perIn * b.inFrames) / b.outFrames;
/** CPU per call-second, the kernel's share of it, and syscalls per second. */
const load = (w) =>
  `${(w.cpuMs / w.seconds / calls).toFixed(2)} ms CPU per call·s (${Math.round((100 * w.sysMs) / w.cpuMs)} % kernel); ` +
  `syscalls/s: ${Math.round(w.reads / w.seconds)} reads, ${Math.round(w.writes / w.seconds)} writes`;
log(`\nwindow A: ${a.inFrames} inbound frames, ingress CPU ${a.cpuMs} ms -> ${perIn.toFixed(1)} µs per inbound frame`);
log(`  ${load(a)}`);
log(`window B: ${b.inFrames} inbound, ${b.outFrames} outbound frames (${b.outMessages} messages, ${b.marks} marks), ingress CPU ${b.cpuMs} ms`);
log(`  -> ${perOut.toFixed(1)} µs per outbound frame beyond window A's inbound cost; ${load(b)}`);
const counters = ["frames_in", "frames_out", "playout_underruns", "protocol_errors"].map((m) => metric(`voicebot_ingress_${m}_total`));
log(`metrics: ${counters.filter(Boolean).join(" ")}; ingress warnings/errors: ${problems.length}${problems.length ? `, first: ${problems[0]}` : ""}`);
if (args.profile) {
  const file = readdirSync(args.profile).filter((f) => f.endsWith(".cpuprofile")).map((f) => path.join(args.profile, f)).sort().pop();
  const profile = JSON.parse(readFileSync(file, "utf8"));
  for (const [name, w] of [["A (callers only)", a], ["B (bot talking)", b]]) topSelf(profile, name, w.fromUs, w.toUs);
}

/** Self time by function in [fromUs, toUs] of the profile (V8's clock is the same monotonic clock as hrtime). */
function topSelf(profile, name, fromUs, toUs) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let [total, t] = [0, profile.startTime];
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i];
    if (t < fromUs || t > toUs) continue;
    const { functionName, url, lineNumber } = byId.get(profile.samples[i]).callFrame;
    if (functionName === "(idle)") continue;
    total++;
    // Packages as name@version plus file, our own code as its file.
    const file = url.replace(/^.*\/node_modules\/\.pnpm\/([^/]+)\/.*\/([^/]+)$/, "$1 $2").replace(/^.*\//, "");
    const key = `${functionName || "(anonymous)"}${url ? ` ${file}:${lineNumber + 1}` : ""}`;
    self.set(key, (self.get(key) ?? 0) + 1);
  }
  log(`\nprofile, window ${name}: ${total} busy samples; top self time`);
  for (const [key, n] of [...self].sort((x, y) => y[1] - x[1]).slice(0, 25)) log(`  ${((100 * n) / total).toFixed(1).padStart(5)} %  ${key}`);
}
