// Barge-in end to end: the caller talks over the greeting with real speech (flite), the real asr (its default VAD
// and pocketsphinx) hears it, ingress cuts the bot off with a Twilio `clear`, tts and the dialog drop the cut
// turn, and the bot answers what the caller said. All five services run as processes on real NATS and Redis; a
// relay between the simulated caller and ingress records the exact order of media, marks and clear on the wire.
import { synthesize, type SimEvent, type TwilioCallSimulator } from "@voicebot/callsim";
import { mulawFrameEnergy } from "@voicebot/audio";
import { waitFor } from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, describe, test } from "vitest";
import { afterClear, startTap, type TwilioTap } from "../latency/twilio-tap.js";
import { audioMs, loudnessDbfs, noteTurns, printLatencies, serviceNames, startSystem, type System } from "./system.js";

let system: System;
let tap: TwilioTap;
let orderStatus: Uint8Array;

beforeAll(async () => {
  [system, orderStatus] = await Promise.all([startSystem(), synthesize("order status", { engine: "flite", voice: "slt" })]);
  tap = await startTap(system.twilioUrl);
});

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") console.log(`service logs after "${ctx.task.name}":\n${system?.recentLogs()}`);
});

afterAll(async () => {
  printLatencies("bargein.test.ts");
  await tap?.close();
  await system?.stop();
});

const TURN_MS = 20_000;
/** Caller's speech onset -> Twilio `clear` at the caller. */
const CLEAR_TARGET_MS = 700;

/** Where the voice starts in synthesized speech: engines lead with some quiet the VAD rightly ignores. */
function leadingQuietMs(mulaw: Uint8Array): number {
  let offset = 0;
  while (offset + 160 <= mulaw.length && mulawFrameEnergy(mulaw.subarray(offset, offset + 160)) < -50) offset += 160;
  return offset / 8;
}

const echoedMarks = (sim: TwilioCallSimulator): Array<SimEvent & { name: string }> =>
  sim.events.flatMap((e) =>
    e.dir === "sent" && e.type === "mark" ? [{ ...e, name: (e.detail as { mark: { name: string } }).mark.name }] : [],
  );

/** Waits until the caller has heard the first chunk of the greeting (its mark echoed); returns the turn id. */
async function greetingFirstChunkHeard(sim: TwilioCallSimulator): Promise<string> {
  const mark = await waitFor(() => echoedMarks(sim)[0], { timeoutMs: TURN_MS, intervalMs: 10, what: "the greeting's first chunk to play" });
  return mark.name.slice(0, mark.name.lastIndexOf("."));
}

describe("barge-in over the greeting", () => {
  test.concurrent("the caller says 'order status' mid-greeting: clear within 700 ms, nothing of the greeting after it, the record keeps what was heard, the bot answers", async ({ expect }) => {
    const sim = system.call({ url: tap.url });
    await sim.connect();
    const greetingTurn = await greetingFirstChunkHeard(sim);

    // The bot is now in its second sentence; the caller talks over it.
    const speaking = sim.say(orderStatus);
    const speechStart = await waitFor(() => sim.events.find((e) => e.type === "speech-start"), { timeoutMs: 2_000, intervalMs: 5, what: "the caller to start speaking" });
    const onsetAt = speechStart.at + leadingQuietMs(orderStatus);
    const clear = await waitFor(() => sim.events.find((e) => e.dir === "received" && e.type === "clear"), {
      timeoutMs: 5_000,
      intervalMs: 5,
      what: "ingress to send clear",
    });
    const clearMs = clear.at - onsetAt;
    console.log(`barge-in: caller speech onset -> clear at the caller: ${clearMs} ms (target <= ${CLEAR_TARGET_MS} ms)`);
    const said = await speaking;

    const greeting = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    const answer = await sim.waitForBotTurn({ timeoutMs: TURN_MS });

    expect(clearMs).toBeGreaterThan(0);
    expect(clearMs).toBeLessThanOrEqual(CLEAR_TARGET_MS);
    // The clear really cut the greeting short: audio was still queued at the caller.
    expect(greeting.clearedMs).toBeGreaterThan(0);
    expect(loudnessDbfs(answer.audio)).toBeGreaterThan(-40);

    // Nothing of the cut turn reached the caller after the clear: every frame after it is followed by a mark of a
    // later turn, and the first one only came once the caller had finished (it answers the caller).
    const wire = afterClear(tap.call(sim.callSid));
    expect(wire.cutTurns).toEqual([greetingTurn]);
    expect(wire.cutMarksAfter).toEqual([]);
    expect(wire.leakedBytes).toBe(0);
    expect(wire.laterBytes).toBeGreaterThan(0);
    expect(wire.firstMediaAfterAt).toBeGreaterThanOrEqual(said.speechEndAt);
    expect(sim.events.filter((e) => e.dir === "received" && e.type === "clear")).toHaveLength(1);

    // The record: the greeting cut to what was heard (its first sentence), then the caller, then the answer.
    const record = await system.waitForRecord(sim.callSid, "the cut greeting, the caller's words and the answer", (r) =>
      r.transcript.some((e) => e.role === "bot" && e.interrupted) &&
      r.transcript.some((e) => e.role === "caller" && e.source === "speech") &&
      r.transcript.filter((e) => e.role === "bot").length >= 2,
    );
    const bot = record.transcript.filter((e) => e.role === "bot");
    console.log(record.transcript.map((e) => `${e.role}${e.interrupted ? " (interrupted)" : ""}: ${e.text}`).join("\n"));
    expect(bot[0].interrupted).toBe(true);
    expect(bot[0].text).toBe("Thanks for calling the demo shop.");
    expect(bot[1].interrupted).toBeFalsy();
    expect(bot[1].text).toMatch(/order number/i);
    const caller = record.transcript.find((e) => e.role === "caller")!;
    expect(record.transcript.indexOf(caller)).toBeGreaterThan(record.transcript.indexOf(bot[0]));
    expect(caller.text).toMatch(/order|status/i);

    const ingressLine = system.services.ingress.logs.find((l) => l.callId === sim.callSid && String(l.msg).startsWith("barge-in"));
    console.log(`ingress: STARTED (asr VAD onset) -> clear sent: ${String(ingressLine?.onsetToClearMs)} ms`);
    await sim.hangUp();
    expect(sim.protocolErrors).toEqual([]);
    noteTurns("barge-in", sim.turns, await system.record(sim.callSid));
  });

  test.concurrent("with customParameters bargeIn=false the greeting plays to the end over the caller's speech", async ({ expect }) => {
    const sim = system.call({ url: tap.url, customParameters: { bargeIn: "false" } });
    await sim.connect();
    const greetingTurn = await greetingFirstChunkHeard(sim);
    await sim.say(orderStatus);

    // The asr heard the caller (its STARTED reached ingress, which kept playing)...
    await system.services.ingress.waitForLog((l) => l.callId === sim.callSid && l.msg === "caller spoke over the bot; barge-in is off for this call", TURN_MS);
    // ...and the bot still answers, after the whole greeting.
    const record = await system.waitForRecord(
      sim.callSid,
      "the full greeting, the caller's words and the answer",
      (r) => r.transcript.some((e) => e.role === "caller") && r.transcript.filter((e) => e.role === "bot").length >= 2,
      TURN_MS,
    );
    await waitFor(() => sim.turns.length > 0 && sim.bufferedMs === 0 && echoedMarks(sim).some((m) => !m.name.startsWith(`${greetingTurn}.`)), {
      timeoutMs: TURN_MS,
      intervalMs: 50,
      what: "the answer to play",
    });

    expect(sim.events.some((e) => e.type === "clear")).toBe(false);
    const marks = echoedMarks(sim).map((m) => m.name);
    const greetingMarks = marks.filter((m) => m.startsWith(`${greetingTurn}.`));
    // Every chunk of the greeting was played, in order, before anything of the answer.
    expect(greetingMarks.length).toBeGreaterThanOrEqual(3);
    expect(greetingMarks).toEqual(greetingMarks.map((_, i) => `${greetingTurn}.${i}`));
    expect(marks.slice(0, greetingMarks.length)).toEqual(greetingMarks);
    const bot = record.transcript.filter((e) => e.role === "bot");
    console.log(record.transcript.map((e) => `${e.role}${e.interrupted ? " (interrupted)" : ""}: ${e.text}`).join("\n"));
    expect(bot[0].interrupted).toBeFalsy();
    expect(bot[0].text).toMatch(/^Thanks for calling the demo shop\..+agent.+press 0\.$/);
    expect(audioMs(sim.botAudio())).toBeGreaterThan(4_000);
    await sim.hangUp();
    expect(sim.protocolErrors).toEqual([]);
  });
});

test("no service crashed or wrote to stderr during the barge-in calls", ({ expect }) => {
  for (const name of serviceNames) {
    expect(system.services[name].process.exitCode, name).toBeNull();
    expect(system.services[name].stderr(), name).toBe("");
  }
});
