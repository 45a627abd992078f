// How soon a synthesized chunk's first audio leaves the tts, alone and with two cached later chunks of its turn
// requested beside it (the keypad answer of the load test: "Order ... has shipped." then two cached lines). The tts
// runs as its own process (dist) against the fake ElevenLabs (its own process) and a NATS and Redis started here;
// this process publishes the SpeakRequests and times the first BotAudio of chunk 0.
//
//   cd /work/main && pnpm -s build && node services/tts/bench/turn-order.mjs [--turns 100] [--gap-ms 300]
import { fork, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { Bus, silentLogger, subjects } from "@voicebot/bus";
import { AudioEncoding, BotAudio, SpeakRequest } from "@voicebot/proto";
import { freePort, startNats, startRedis, waitFor } from "@voicebot/testing";
import { Registry } from "prom-client";

const { values: args } = parseArgs({ options: { turns: { type: "string", default: "100" }, "gap-ms": { type: "string", default: "300" } } });
const turns = Number(args.turns);
const gapMs = Number(args["gap-ms"]);
const format = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };
const SYNTHESIZED = "Order 1 0 0 0 4 2 has shipped.";
const CACHED = ["Is there anything else I can help you with today?", "Press one to check another order, or just say goodbye."];

const [nats, redis] = await Promise.all([startNats(), startRedis()]);
const fake = fork(new URL("./first-audio.mjs", import.meta.url).pathname, ["--server"]);
const { baseUrl } = await new Promise((resolve) => fake.once("message", resolve));
const port = await freePort();
const tts = spawn(process.execPath, ["--single-threaded-gc", new URL("../dist/main.js", import.meta.url).pathname], {
  env: { ...process.env, NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: String(port), LOG_LEVEL: "warn", TTS_ENGINES: "elevenlabs", ELEVENLABS_BASE_URL: baseUrl, ELEVENLABS_API_KEY: "bench-key", TTS_MAX_CONCURRENT: "512" },
  stdio: ["ignore", "inherit", "inherit"],
});
await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined))?.status === 200, { what: "the tts to be ready", timeoutMs: 30_000 });
const bus = await Bus.connect({ servers: nats.url, name: "turn-order-bench", log: silentLogger, registry: new Registry() });

/** One turn on a new call: ms from publishing to chunk 0's first BotAudio, and the tts's own stage (integer ms). */
async function turn(withCached) {
  const callId = `CA${randomUUID().replace(/-/g, "")}`;
  let sentAt = 0;
  let result;
  const done = new Promise((resolve) => {
    const sub = bus.subscribe(subjects.botAudio(callId), BotAudio, (part) => {
      if (part.chunkSeq !== 0) return;
      result ??= { ms: performance.now() - sentAt, ttsMs: part.timing.ttsFirstAudioMs - part.timing.ttsRequestMs };
      if (part.chunkDone) {
        sub.unsubscribe();
        resolve();
      }
    }, { name: "bench-audio" });
  });
  await bus.nc.flush();
  sentAt = performance.now();
  bus.publish(subjects.ttsSpeak, SpeakRequest, SpeakRequest.create({ callId, turnId: "t1", chunkSeq: 0, text: SYNTHESIZED, format }), callId);
  if (withCached) {
    CACHED.forEach((text, i) => {
      const request = SpeakRequest.create({ callId, turnId: "t1", chunkSeq: i + 1, text, cacheable: true, turnDone: i === CACHED.length - 1, format });
      bus.publish(subjects.ttsSpeak, SpeakRequest, request, callId);
    });
  }
  await done;
  return result;
}

const sides = { alone: [], "with 2 cached chunks": [] };
for (let i = 0; i < 10; i++) for (const withCached of [false, true]) await turn(withCached); // warm: cache, connections, JIT
for (let i = 0; i < turns; i++) {
  for (const [name, samples] of Object.entries(sides)) {
    await new Promise((resolve) => setTimeout(resolve, gapMs / 2));
    samples.push(await turn(name !== "alone"));
  }
}
const q = (values, p) => values.sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(p * values.length))];
console.log(`${turns} turns each, alternating, ${gapMs} ms apart; chunk 0 ("${SYNTHESIZED}") first audio, ms:`);
for (const [name, samples] of Object.entries(sides)) {
  const ms = samples.map((s) => s.ms);
  const stage = samples.map((s) => s.ttsMs);
  console.log(`  ${name.padEnd(22)} publish -> first audio p50 ${q(ms, 0.5).toFixed(2)} p90 ${q(ms, 0.9).toFixed(2)} p99 ${q(ms, 0.99).toFixed(2)} max ${q(ms, 1).toFixed(2)}; tts stage p50 ${q(stage, 0.5)} p90 ${q(stage, 0.9)} max ${q(stage, 1)}`);
}
tts.kill("SIGTERM");
await new Promise((resolve) => tts.once("exit", resolve));
fake.kill();
await bus.close();
await Promise.all([nats.stop(), redis.stop()]);
