// How soon a cloud engine's first audio reaches the tts, and the tts's CPU per streamed answer: the ElevenLabs
// engine (node:http, http-stream.ts) against Node's fetch reading the same answer, one request every 20 ms,
// alternating, against the fake ElevenLabs in its own process (40 chunks of 100 ms, 10 ms apart, as in the load
// test). CPU = this process's user+system time over each side's requests.
//
//   cd /work/main && npx tsc -b services/tts && node services/tts/bench/first-audio.mjs [--requests 300]
import { fork } from "node:child_process";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { ElevenLabsEngine } from "../dist/engines/elevenlabs.js";

const KEY = "bench-key";
const { values: args } = parseArgs({ options: { requests: { type: "string", default: "300" }, server: { type: "boolean", default: false } } });

if (args.server) {
  const { startFakeElevenLabs, syntheticSpeech } = await import("@voicebot/testing");
  const voice = syntheticSpeech("order one two three has shipped and should arrive on tuesday", 8000);
  const fake = await startFakeElevenLabs({ apiKey: KEY, speech: () => voice.subarray(0, 32_000), reply: () => ({}) });
  setInterval(() => {
    fake.requests.length = 0;
    fake.speeches.length = 0;
  }, 1000);
  process.send({ baseUrl: fake.baseUrl });
} else {
  const child = fork(new URL(import.meta.url).pathname, ["--server"]);
  const { baseUrl } = await new Promise((resolve) => child.once("message", resolve));
  const engine = new ElevenLabsEngine({ apiKey: KEY, baseUrl });
  const text = "Order 1 0 0 0 4 2 has shipped.";
  const viaEngine = async () => {
    const started = performance.now();
    let first;
    for await (const _pcm of engine.synthesize({ text })) first ??= performance.now() - started;
    return first;
  };
  const viaFetch = async () => {
    const started = performance.now();
    let first;
    const response = await fetch(`${baseUrl}/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream?output_format=ulaw_8000`, {
      method: "POST",
      headers: { "xi-api-key": KEY, "content-type": "application/json", accept: "audio/*" },
      body: JSON.stringify({ text, model_id: "eleven_flash_v2_5" }),
    });
    for await (const _chunk of response.body) first ??= performance.now() - started;
    return first;
  };
  const sides = { "engine (node:http)": { run: viaEngine, ms: [], cpu: 0 }, "fetch": { run: viaFetch, ms: [], cpu: 0 } };
  for (const side of Object.values(sides)) for (let i = 0; i < 10; i++) await side.run(); // warm: connections, JIT
  for (let i = 0; i < Number(args.requests); i++) {
    for (const side of Object.values(sides)) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      const before = process.cpuUsage();
      side.ms.push(await side.run());
      const used = process.cpuUsage(before);
      side.cpu += (used.user + used.system) / 1000;
    }
  }
  const q = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))].toFixed(2);
  console.log(`${args.requests} requests each, alternating; first audio after the request is sent, ms:`);
  for (const [name, side] of Object.entries(sides)) {
    const sorted = side.ms.sort((a, b) => a - b);
    console.log(`  ${name.padEnd(20)} p50 ${q(sorted, 0.5)}  p90 ${q(sorted, 0.9)}  p99 ${q(sorted, 0.99)}  CPU ${(side.cpu / side.ms.length).toFixed(2)} ms per answer`);
  }
  await engine.close();
  child.kill();
}
