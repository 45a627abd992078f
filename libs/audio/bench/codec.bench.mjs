// Per-frame cost of the hot audio paths. Run after building: `npx tsc -b libs/audio && node libs/audio/bench/codec.bench.mjs`
import { mulawDecode, mulawEncode, Resampler, resample } from "../dist/index.js";

function bench(name, iterations, fn) {
  for (let i = 0; i < Math.min(iterations, 2000); i++) fn(i); // warm up the JIT
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) fn(i);
  const ns = Number(process.hrtime.bigint() - t0) / iterations;
  console.log(`${name.padEnd(44)} ${ns.toFixed(0).padStart(8)} ns/frame  (${((ns / 20e6) * 100).toFixed(4)}% of real time)`);
}

const pcm8k = new Int16Array(160).map((_, i) => Math.round(8000 * Math.sin(i / 3)));
const mulaw = mulawEncode(pcm8k);
const pcm16k = new Int16Array(320).map((_, i) => Math.round(8000 * Math.sin(i / 6)));
const pcm22k = new Int16Array(441).map((_, i) => Math.round(8000 * Math.sin(i / 8)));

let sink = 0; // keep results alive so the work is not optimised away
bench("mulawEncode 160 samples (20 ms @ 8 kHz)", 200_000, () => (sink += mulawEncode(pcm8k)[7]));
bench("mulawDecode 160 bytes", 200_000, () => (sink += mulawDecode(mulaw)[7]));
const r16 = new Resampler(16000, 8000);
bench("Resampler 16k->8k push of 320 samples", 50_000, () => (sink += r16.push(pcm16k).length));
const r22 = new Resampler(22050, 8000);
bench("Resampler 22.05k->8k push of 441 samples", 50_000, () => (sink += r22.push(pcm22k).length));
bench("resample() one-shot 16k->8k of 320 samples", 20_000, () => (sink += resample(pcm16k, 16000, 8000).length));
console.log(sink > 0 ? "" : "(sink)");
