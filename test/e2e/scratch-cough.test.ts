import { synthesize } from "@voicebot/callsim";
import { afterAll, beforeAll, expect, test } from "vitest";
import { startSystem, type System } from "./system.js";

let system: System;
beforeAll(async () => {
  system = await startSystem();
}, 120_000);
afterAll(async () => system?.stop());

test("scratch: a short speech fragment during the greeting", async () => {
  const speech = await synthesize("order status", { engine: "flite", voice: "slt" });
  // first loud frames
  let start = 0;
  while (start < speech.length && Math.abs((speech[start] ^ 0xff) & 0x7f) < 0x30) start += 160;
  for (const ms of [60, 100, 140]) {
    const sim = system.call();
    await sim.connect();
    await new Promise((r) => setTimeout(r, 1500));
    const fragment = speech.subarray(start, start + ms * 8);
    await sim.say(fragment);
    await new Promise((r) => setTimeout(r, 6000));
    const record = await system.record(sim.callSid);
    console.log(ms, JSON.stringify(record?.transcript.map((e) => [e.role, e.text, e.interrupted])), JSON.stringify(sim.events.filter((e) => e.type === "clear")));
    await sim.hangUp();
  }
  console.log(await system.metric("ingress", "voicebot_ingress_false_interruptions_total"), await system.metric("asr", "voicebot_asr_utterances_total"));
  expect(true).toBe(true);
}, 120_000);
