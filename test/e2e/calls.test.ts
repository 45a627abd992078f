// Whole calls over the Twilio protocol against all five services as real processes. The calls run at the same
// time on one system (as real calls would), which also shows that calls do not disturb each other.
import { afterAll, afterEach, beforeAll, describe, test } from "vitest";
import { synthesize } from "@voicebot/callsim";
import { WebSocket } from "ws";
import { audioMs, keypadCall, loudnessDbfs, noteTurns, printLatencies, serviceNames, startSystem, type System } from "./system.js";

let system: System;

beforeAll(async () => {
  system = await startSystem();
});

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") console.log(`service logs after "${ctx.task.name}":\n${system?.recentLogs()}`);
});

afterAll(async () => {
  printLatencies("calls.test.ts");
  await system?.stop();
});

const TURN_MS = 15_000;

describe("calls over /twilio", () => {
  test.concurrent("greeting, then 1 and order 12345# on the keypad: lookup_order runs and the bot says it shipped", async ({ expect }) => {
    const sim = system.call();
    await sim.connect();
    const greeting = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    expect(audioMs(greeting.audio)).toBeGreaterThan(500);
    expect(loudnessDbfs(greeting.audio)).toBeGreaterThan(-40);

    await sim.pressKeys("1");
    const ask = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    expect(loudnessDbfs(ask.audio)).toBeGreaterThan(-40);
    await system.waitForRecord(sim.callSid, "the keypad 1", (r) => r.transcript.some((e) => e.role === "caller" && e.source === "keypad"));

    await sim.pressKeys("12345#");
    const answer = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    expect(loudnessDbfs(answer.audio)).toBeGreaterThan(-40);
    const live = await system.waitForRecord(sim.callSid, "lookup_order and a 'shipped' line", (r) =>
      r.toolCalls.some((t) => t.name === "lookup_order") && r.transcript.some((e) => e.role === "bot" && /shipped/i.test(e.text)),
    );
    const lookup = live.toolCalls.find((t) => t.name === "lookup_order")!;
    expect(JSON.stringify(lookup.arguments)).toContain("12345");
    expect(lookup.ok).toBe(true);
    expect(live.state).toBe("live");

    await sim.hangUp();
    const record = await system.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
    expect(record.callSid).toBe(sim.callSid);
    expect(record.streamSid).toBe(sim.streamSid);
    expect(record.turns.length).toBeGreaterThanOrEqual(3);
    for (const turn of record.turns) {
      expect(turn.latencyMs).toBeGreaterThanOrEqual(0);
      expect(turn.latencyMs).toBeLessThan(10_000);
    }
    // Every chunk of bot speech has its TTS time to first audio in the record.
    expect(record.speech.length).toBeGreaterThanOrEqual(record.turns.length);
    for (const chunk of record.speech) expect(chunk.firstAudioMs).toBeGreaterThanOrEqual(0);
    expect(record.speech.some((c) => c.turnId === "t1" && c.chunkSeq === 0)).toBe(true);
    expect(sim.protocolErrors).toEqual([]);
    noteTurns("keypad order status", sim.turns, record);
  });

  test.concurrent("0 transfers to a human: the transfer line plays, then ingress closes the stream", async ({ expect }) => {
    const sim = system.call();
    await sim.connect();
    await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    await sim.pressKeys("0");
    const transferLine = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    expect(loudnessDbfs(transferLine.audio)).toBeGreaterThan(-40);
    const code = await Promise.race([sim.closed, new Promise((r) => setTimeout(() => r("still open"), TURN_MS))]);
    expect(code).not.toBe("still open");
    expect(sim.closeDetails!.by).toBe("server");
    // Closed only once the caller had heard the whole line.
    expect(sim.closeDetails!.unplayedMs).toBe(0);
    const record = await system.waitForRecord(sim.callSid, "transfer_to_human and the end", (r) =>
      r.toolCalls.some((t) => t.name === "transfer_to_human") && r.state === "ended",
    );
    expect(record.endReason).toBeTruthy();
    expect(sim.protocolErrors).toEqual([]);
    noteTurns("transfer", sim.turns, record);
  });

  test.concurrent("9 says goodbye, then ingress hangs up (the socket closes before the caller hangs up)", async ({ expect }) => {
    const sim = system.call();
    await sim.connect();
    await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    await sim.pressKeys("9");
    const goodbye = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    expect(audioMs(goodbye.audio)).toBeGreaterThan(300);
    expect(loudnessDbfs(goodbye.audio)).toBeGreaterThan(-40);
    const code = await Promise.race([sim.closed, new Promise((r) => setTimeout(() => r("still open"), TURN_MS))]);
    expect(code).not.toBe("still open");
    expect(sim.closeDetails!.by).toBe("server");
    expect(sim.closeDetails!.unplayedMs).toBe(0);
    expect(sim.events.some((e) => e.type === "stop")).toBe(false); // we never hung up
    const record = await system.waitForRecord(sim.callSid, "state ended", (r) => r.state === "ended");
    expect(record.endedAt).toBeTruthy();
    expect(sim.protocolErrors).toEqual([]);
    noteTurns("goodbye", sim.turns, record);
  });

  test.concurrent("a caller who says nothing after the greeting hears the reprompt (NO_INPUT_MS, 8 s by default)", async ({ expect }) => {
    const sim = system.call();
    await sim.connect();
    await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    const greetingEnded = Date.now();
    const reprompt = await sim.waitForBotTurn({ timeoutMs: 8_000 + TURN_MS });
    // The simulator returns a turn 0.7 s after its audio played out; the reprompt starts 8 s after that.
    expect(reprompt.firstAudioAt - greetingEnded).toBeGreaterThanOrEqual(6_500);
    expect(loudnessDbfs(reprompt.audio)).toBeGreaterThan(-40);
    const record = await system.waitForRecord(sim.callSid, "the reprompt in the transcript", (r) =>
      r.transcript.some((e) => e.role === "bot" && /didn't catch that/i.test(e.text)),
    );
    expect(record.transcript.filter((e) => e.role === "caller")).toEqual([]);
    await sim.hangUp();
    await system.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  });

  test.concurrent("a cough over the greeting (a sound too short to be speech) cuts it off, and the greeting goes on", async ({ expect }) => {
    const speech = await synthesize("order status", { engine: "flite", voice: "slt" });
    let start = 0;
    while (start < speech.length && loudnessDbfs(speech.subarray(start, start + 160)) < -30) start += 160;
    const cough = speech.subarray(start, start + 800); // 100 ms: the VAD hears an onset, too short for an utterance
    const before = await system.metric("ingress", "voicebot_ingress_false_interruptions_total");
    const sim = system.call();
    await sim.connect();
    await system.waitForRecord(sim.callSid, "the greeting playing", (r) => r.turns.length > 0, TURN_MS);
    await new Promise((r) => setTimeout(r, 1_000));
    await sim.say(cough);
    const record = await system.waitForRecord(sim.callSid, "the greeting said again", (r) => r.transcript.filter((e) => e.role === "bot").length >= 2, TURN_MS);
    const [cut, again] = record.transcript.filter((e) => e.role === "bot");
    expect(cut.interrupted).toBe(true);
    expect(again.text).toMatch(/To talk to an agent, say agent or press 0\.$/);
    expect(again.interrupted).toBeFalsy();
    expect(record.transcript.filter((e) => e.role === "caller")).toEqual([]); // no reprompt: nothing was said
    expect(sim.events.some((e) => e.dir === "received" && e.type === "clear")).toBe(true);
    expect(await system.metric("ingress", "voicebot_ingress_false_interruptions_total")).toBeGreaterThan(before);
    await sim.hangUp();
  });

  test.concurrent("a state with its own no-input wait (order-line's order number: 15 s) gives the silent caller that long", async ({ expect }) => {
    const sim = system.call();
    await sim.connect();
    await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    await sim.pressKeys("1");
    await sim.waitForBotTurn({ timeoutMs: TURN_MS }); // "Please say or key in your order number, then press pound."
    const askEnded = Date.now();
    const reprompt = await sim.waitForBotTurn({ timeoutMs: 15_000 + TURN_MS });
    // The simulator returns a turn 0.7 s after its audio played out; NO_INPUT_MS (8 s) would have spoken long before.
    expect(reprompt.firstAudioAt - askEnded).toBeGreaterThanOrEqual(13_500);
    const record = await system.waitForRecord(sim.callSid, "the order-number reprompt in the transcript", (r) =>
      r.transcript.some((e) => e.role === "bot" && /didn't get that\. Please say or key in your order number/i.test(e.text)),
    );
    expect(record.transcript.filter((e) => e.role === "caller").map((e) => e.text)).toEqual(["1"]);
    await sim.hangUp();
    await system.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  });

  test.concurrent("malformed input at ingress is counted and survived while another call completes", async ({ expect }) => {
    const errorsBefore = await system.metric("ingress", "voicebot_ingress_protocol_errors_total");

    // A well-formed call runs through the whole keypad flow meanwhile.
    const good = keypadCall(system, TURN_MS).then(async (sim) => {
      noteTurns("next to malformed input", sim.turns, await system.record(sim.callSid));
      return sim;
    });

    const open = async () => {
      const ws = new WebSocket(system.twilioUrl);
      await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
      const closed = new Promise<number>((r) => ws.once("close", (c) => r(c)));
      return { ws, closed };
    };
    const streamSid = "MZ" + "ab".repeat(16);
    // 1: garbage on a fresh stream (each on its own socket: ingress may close a socket after bad input).
    const bad: Array<string | Buffer> = [
      "this is not json",
      JSON.stringify({ event: "dance", sequenceNumber: "1", streamSid }),
      JSON.stringify({ event: "media", sequenceNumber: "2", streamSid, media: { track: "inbound", chunk: "1", timestamp: "0", payload: Buffer.alloc(160, 0xff).toString("base64") } }),
      Buffer.from([0x01, 0x02, 0x03, 0x04]),
    ];
    for (const message of bad) {
      const { ws, closed } = await open();
      ws.send(message);
      await Promise.race([closed, new Promise((r) => setTimeout(r, 300))]);
      ws.terminate();
    }
    // 2: a proper start, then media whose payload is not base64.
    {
      const { ws, closed } = await open();
      const callSid = "CA" + "cd".repeat(16);
      ws.send(JSON.stringify({ event: "connected", protocol: "Call", version: "1.0.0" }));
      ws.send(
        JSON.stringify({
          event: "start",
          sequenceNumber: "1",
          streamSid,
          start: {
            accountSid: "AC" + "ef".repeat(16),
            streamSid,
            callSid,
            tracks: ["inbound"],
            customParameters: {},
            mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
          },
        }),
      );
      ws.send(JSON.stringify({ event: "media", sequenceNumber: "2", streamSid, media: { track: "inbound", chunk: "1", timestamp: "0", payload: "@@not base64!!" } }));
      await Promise.race([closed, new Promise((r) => setTimeout(r, 300))]);
      ws.close();
      await closed;
    }

    await expect.poll(() => system.metric("ingress", "voicebot_ingress_protocol_errors_total"), { timeout: 5_000 }).toBeGreaterThan(errorsBefore);
    const counted = (await system.metric("ingress", "voicebot_ingress_protocol_errors_total")) - errorsBefore;
    console.log(`ingress counted ${counted} protocol errors for 5 malformed inputs`);
    const sim = await good;
    expect(sim.protocolErrors).toEqual([]);
    expect(system.services.ingress.process.exitCode).toBeNull();
    expect(await system.readyz("ingress")).toBe(200);
  });
});

test("no service crashed or wrote to stderr during the calls", ({ expect }) => {
  for (const name of serviceNames) {
    expect(system.services[name].process.exitCode, name).toBeNull();
    expect(system.services[name].stderr(), name).toBe("");
  }
});
