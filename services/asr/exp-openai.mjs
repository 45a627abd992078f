import { startFakeOpenAI } from "@voicebot/testing";
import { OpenAIEngine } from "./dist/engines/openai.js";
const fake = await startFakeOpenAI({ apiKey: null, transcribe: () => ({ text: "order status" }) });
const e = new OpenAIEngine({ baseUrl: fake.baseUrl, apiKey: "sk-x", model: "gpt-4o-mini-transcribe", timeoutMs: 3000, stream: true });
const times = [];
for (let n = 0; n < 60; n++) {
  const r = e.start({ mode: "phrases", phrases: ["order status"] });
  for (let f = 0; f < 65; f++) r.push(new Int16Array(160).fill(n));
  const t0 = performance.now();
  await r.finish();
  times.push(performance.now() - t0);
  await new Promise((res) => setTimeout(res, n % 10 === 0 ? 6000 : 50));
}
console.log("finish ms", times.map((t) => t.toFixed(1)).join(" "));
await e.close(); await fake.stop();
