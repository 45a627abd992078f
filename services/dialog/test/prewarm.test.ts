// A freshly started system (the five services as processes, flite): the dialog has tts cache its agents' fixed
// lines at start, so the first call's greeting comes from the cache. Build first: pnpm -s build.
import { CallStore } from "@voicebot/state";
import { waitFor } from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, expect, test } from "vitest";
import { startSystem, type System } from "../../../test/e2e/system.js";

let system: System;
let store: CallStore;

beforeAll(async () => {
  system = await startSystem();
  store = CallStore.connect(system.redis.url);
});

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") console.log(`service logs after "${ctx.task.name}":\n${system?.recentLogs()}`);
});

afterAll(async () => {
  await store?.close();
  await system?.stop();
});

/** The value of a counter's series that has all of `labels` (e.g. 'outcome="ok"'), from a service's /metrics (0 when absent). */
async function series(service: "dialog" | "tts", name: string, ...labels: string[]): Promise<number> {
  const text = await (await fetch(`${system.services[service].baseUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && labels.every((label) => l.includes(label)));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
}

test("the agents' fixed lines are in the tts cache before any call, and the first call's greeting comes from it", async () => {
  const sent = await waitFor(async () => (await series("dialog", "voicebot_dialog_tts_prewarm_chunks_total", 'result="queued"')) || undefined, {
    what: "the dialog to send its fixed lines",
  });
  expect(sent).toBeGreaterThanOrEqual(20); // order-line: greeting, menu, prompts, reprompts, goodbye...
  const synthesized = await waitFor(
    async () => {
      const done = await series("tts", "voicebot_tts_prefetch_total", 'outcome="synthesized"');
      return done === sent ? done : undefined;
    },
    { what: `tts to cache all ${sent} lines`, timeoutMs: 60_000, intervalMs: 200 },
  );
  expect(await series("tts", "voicebot_tts_prefetch_total", 'outcome="failed"')).toBe(0);
  expect(await store.redis.keys("vb:cache:tts:*")).toHaveLength(synthesized);
  expect(await system.metric("tts", "voicebot_tts_chunks_total")).toBe(0); // no call has been spoken to yet

  const sim = system.call();
  await sim.connect();
  const greeting = await sim.waitForBotTurn({ timeoutMs: 15_000 });
  console.log(`first call's greeting (prewarmed cache): ${greeting.latencyMs} ms from start to first audio`);
  const record = await system.waitForRecord(sim.callSid, "the greeting's speech", (r) => r.speech.filter((c) => c.turnId === "t1").length >= 3);
  const greetingChunks = record.speech.filter((c) => c.turnId === "t1");
  expect(greetingChunks.map((c) => c.source)).toEqual(greetingChunks.map(() => "cache"));
  expect(await series("tts", "voicebot_tts_chunks_total", 'engine="cache"', 'outcome="ok"')).toBeGreaterThanOrEqual(greetingChunks.length);
  expect(await series("tts", "voicebot_tts_chunks_total", 'engine="flite"', 'outcome="ok"')).toBe(0);
  await sim.hangUp();
});
