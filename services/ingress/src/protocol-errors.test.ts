// Malformed and abusive input on one stream: each case is logged with its reason and counted, recoverable ones
// leave the socket open, and a second call streaming at the same time is not affected.
import { subjects } from "@voicebot/bus";
import { CallerAudio } from "@voicebot/proto";
import { describe, expect, it } from "vitest";
import WebSocket from "ws";
import {
  collect,
  frames,
  logs,
  metricValue,
  newCallSid,
  TwilioClient,
  useIngressWorld,
  waitFor,
  waitForLog,
} from "./test-support/harness.js";

const world = useIngressWorld({ env: { INGRESS_MAX_MSGS_PER_SEC: "200", INGRESS_MSG_BURST: "400" } });

async function startedCall(): Promise<TwilioClient> {
  const client = await TwilioClient.connect(world.ingress.wsUrl, newCallSid());
  client.sendStart();
  await waitFor(() => world.dialog.items.some((i) => i.callId === client.callSid && i.input?.$case === "callStarted"), { what: "call started" });
  return client;
}

async function recordEnded(callSid: string, what: string): Promise<void> {
  const state = async () => ((await (await fetch(`${world.ingress.baseUrl}/v1/calls/${callSid}`)).json()) as { state?: string }).state;
  await waitFor(async () => (await state()) === "ended", { what });
}

function errorLogged(reason: string, streamSid?: string) {
  return waitForLog(
    (l) => l.msg === "twilio protocol error" && l.reason === reason && (streamSid === undefined || l.streamSid === streamSid),
    `a protocol error log with reason ${reason}`,
  );
}

async function expectCounted(reason: string, atLeast = 1) {
  await waitFor(async () => (await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total", { reason })) >= atLeast, {
    what: `voicebot_ingress_protocol_errors_total{reason="${reason}"} >= ${atLeast}`,
  });
}

describe("bad input", () => {
  it("is logged and counted per reason, and never disturbs another call", async () => {
    // Call B streams real-time audio for the whole test.
    const healthy = await startedCall();
    const healthyAudio = collect(world.bus, subjects.callerAudio(healthy.callSid), CallerAudio);
    await world.bus.nc.flush();
    let sent = 0;
    const streaming = setInterval(() => healthy.sendMedia(++sent, frames(1, sent % 256)), 20);

    try {
      const bad = await startedCall();
      let chunk = 0;
      const recoverable: Array<[string, () => void]> = [
        ["invalid_json", () => bad.send("this is not json")],
        ["not_an_object", () => bad.send("[1,2,3]")],
        ["unknown_event", () => bad.send({ event: "hello", streamSid: bad.streamSid })],
        [
          "bad_base64",
          () => bad.send({ event: "media", streamSid: bad.streamSid, media: { track: "inbound", chunk: String(++chunk), timestamp: "0", payload: "@@@@" } }),
        ],
        [
          "bad_payload_size",
          () =>
            bad.send({
              event: "media",
              streamSid: bad.streamSid,
              media: { track: "inbound", chunk: String(++chunk), timestamp: "0", payload: Buffer.alloc(8001, 1).toString("base64") },
            }),
        ],
        ["bad_media", () => bad.send({ event: "media", streamSid: bad.streamSid, media: { chunk: "one", payload: "AAAA" } })],
        ["bad_dtmf", () => bad.send({ event: "dtmf", sequenceNumber: "9", streamSid: bad.streamSid, dtmf: { digit: "??" } })],
        ["binary_frame", () => bad.ws.send(Buffer.alloc(160, 0xff), { binary: true })],
        ["duplicate_start", () => bad.sendStart()],
        ["stream_sid_mismatch", () => bad.send({ event: "media", streamSid: "MZother", media: { track: "inbound", chunk: String(++chunk + 100), timestamp: "0", payload: frames(1, 1).toString("base64") } })],
      ];
      for (const [reason, send] of recoverable) {
        send();
        await errorLogged(reason, bad.streamSid);
        await expectCounted(reason);
        expect(bad.ws.readyState, `socket open after ${reason}`).toBe(WebSocket.OPEN);
      }
      // A bad start on a call that is running does not end it either.
      bad.sendStart({}, { callSid: "not a sid!" });
      await waitFor(() => logs.some((l) => l.reason === "invalid_call_sid" && l.streamSid === bad.streamSid), { what: "invalid second start logged" });
      expect(bad.ws.readyState).toBe(WebSocket.OPEN);

      // A flood: far above 200 msgs/s; the excess is dropped and counted, the socket stays open.
      for (let i = 0; i < 1_500; i++) bad.sendConnected();
      await errorLogged("rate_limited", bad.streamSid);
      await expectCounted("rate_limited", 500);
      expect(bad.ws.readyState).toBe(WebSocket.OPEN);

      // Once the flood is over the stream works again.
      await new Promise((r) => setTimeout(r, 300));
      const badAudio = collect(world.bus, subjects.callerAudio(bad.callSid), CallerAudio);
      await world.bus.nc.flush();
      // Numbered far ahead of the stream (the bad messages took chunk numbers): the stream goes on from there once
      // the frame after it shows the jump is real.
      bad.sendMedia(200, frames(1, 42));
      bad.sendMedia(201, frames(1, 42));
      await waitFor(() => badAudio.items[0], { what: "audio after the bad input" });
      expect(badAudio.items[0].firstFrame).toBe(199);
      badAudio.sub.unsubscribe();
      bad.close();

      // Media before start: dropped, the socket stays open and can still start.
      const early = await TwilioClient.connect(world.ingress.wsUrl, newCallSid());
      early.sendMedia(1, frames(1, 1));
      await errorLogged("media_before_start");
      await expectCounted("media_before_start");
      expect(early.ws.readyState).toBe(WebSocket.OPEN);
      early.sendStart();
      await waitFor(() => world.dialog.items.some((i) => i.callId === early.callSid), { what: "late start accepted" });
      early.close();

      // A start we cannot serve closes the stream with 1008 (policy violation).
      const fatal: Array<[string, Record<string, unknown>]> = [
        ["missing_call_sid", { callSid: undefined }],
        ["invalid_call_sid", { callSid: "CA../../etc" }],
        ["unsupported_media_format", { mediaFormat: { encoding: "audio/l16", sampleRate: 16000, channels: 1 } }],
      ];
      for (const [reason, overrides] of fatal) {
        const client = await TwilioClient.connect(world.ingress.wsUrl, newCallSid());
        client.sendStart({}, overrides);
        const closed = await client.closed;
        expect(closed.code, reason).toBe(1008);
        await errorLogged(reason);
        await expectCounted(reason);
      }

      // A message above maxPayload (64 KiB): ws closes with 1009; logged and counted.
      const big = await startedCall();
      big.send({ event: "media", streamSid: big.streamSid, media: { track: "inbound", chunk: "1", timestamp: "0", payload: "A".repeat(70_000) } });
      expect((await big.closed).code).toBe(1009);
      await errorLogged("oversized_message");
      await expectCounted("oversized_message");
    } finally {
      clearInterval(streaming);
    }

    // The healthy call got every frame, in order, the whole time.
    await waitFor(() => healthyAudio.items.length === sent, { what: `all ${sent} healthy frames` });
    expect(healthyAudio.items.map((a) => a.firstFrame)).toEqual(Array.from({ length: sent }, (_, i) => i));
    expect(healthy.ws.readyState).toBe(WebSocket.OPEN);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total")).toBeGreaterThan(10);
    healthyAudio.sub.unsubscribe();
    healthy.sendStop();
    await healthy.closed;
  });

  it("fits a payload that is not one 20 ms frame to one (counted and logged), so the audio after it stays in place", async () => {
    const client = await startedCall();
    const audio = collect(world.bus, subjects.callerAudio(client.callSid), CallerAudio);
    await world.bus.nc.flush();
    const before = await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "bad_payload_size" });
    client.sendMedia(1, frames(1, 7).subarray(0, 80)); // 10 ms
    client.sendMedia(2, Buffer.concat([frames(1, 8), frames(1, 9)])); // 40 ms
    client.sendMedia(3, frames(1, 10));
    await waitFor(() => audio.items.reduce((n, a) => n + a.frameCount, 0) >= 3, { what: "three frames of caller audio" });
    const payload = Buffer.concat(audio.items.map((a) => Buffer.from(a.payload)));
    expect(payload.length).toBe(3 * 160);
    expect([...payload.subarray(0, 80)].every((b) => b === 7) && [...payload.subarray(80, 160)].every((b) => b === 0xff)).toBe(true);
    expect([...payload.subarray(160, 320)].every((b) => b === 8)).toBe(true);
    expect([...payload.subarray(320, 480)].every((b) => b === 10)).toBe(true);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "bad_payload_size" })).toBe(before + 2);
    audio.sub.unsubscribe();
    client.sendStop();
    await client.closed;
  });

  it("places a client's longer media chunks (40 ms each) as that many frames by chunk number, reordered ones too", async () => {
    const client = await TwilioClient.connect(world.ingress.wsUrl, newCallSid());
    client.sendStart();
    const audio = collect(world.bus, subjects.callerAudio(client.callSid), CallerAudio);
    await world.bus.nc.flush();
    const before = await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "bad_payload_size" });
    const chunk = (n: number) => Buffer.concat([frames(1, 2 * n - 1), frames(1, 2 * n)]); // frames 2n-1 and 2n
    for (const n of [1, 3, 2, 4, 5]) client.sendMedia(n, chunk(n));
    await waitFor(() => audio.items.reduce((n, a) => n + a.frameCount, 0) >= 10, { what: "ten frames of caller audio" });
    const payload = Buffer.concat(audio.items.map((a) => Buffer.from(a.payload)));
    expect(audio.items[0].firstFrame).toBe(0);
    expect([...payload].filter((_, i) => i % 160 === 0)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "bad_payload_size" })).toBe(before);
    audio.sub.unsubscribe();
    client.sendStop();
    await client.closed;
  });

  it("serves a client that leaves out what Twilio always sends: the media format, sequence numbers and chunk numbers", async () => {
    const client = await TwilioClient.connect(world.ingress.wsUrl, newCallSid());
    const errorsBefore = await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total");
    // No mediaFormat: Twilio's only format for these streams, μ-law 8 kHz, is taken. A different one is still refused.
    client.send({ event: "start", streamSid: client.streamSid, start: { streamSid: client.streamSid, callSid: client.callSid } });
    await waitFor(() => world.dialog.items.some((i) => i.callId === client.callSid && i.input?.$case === "callStarted"), { what: "call started" });
    const audio = collect(world.bus, subjects.callerAudio(client.callSid), CallerAudio);
    await world.bus.nc.flush();
    for (let value = 1; value <= 3; value++) client.send({ event: "media", streamSid: client.streamSid, media: { payload: frames(1, value).toString("base64") } });
    await waitFor(() => audio.items.reduce((n, a) => n + a.frameCount, 0) >= 3, { what: "three frames of caller audio" });
    // Keys without sequence numbers: each one its own dialog input.
    for (const digit of ["4", "2"]) client.send({ event: "dtmf", streamSid: client.streamSid, dtmf: { digit } });
    const keys = await waitFor(() => {
      const found = world.dialog.items.filter((i) => i.callId === client.callSid && i.input?.$case === "keypad");
      return found.length === 2 ? found : undefined;
    }, { what: "two keypad inputs" });
    expect(keys.map((k) => (k.input?.$case === "keypad" ? k.input.value.digit : ""))).toEqual(["4", "2"]);
    expect(new Set(keys.map((k) => k.inputId)).size).toBe(2);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total")).toBe(errorsBefore);
    audio.sub.unsubscribe();
    client.sendStop();
    await client.closed;
  });

  it("takes nothing more from a stream it is closing: a start right after a refused one does not become a call", async () => {
    const client = await TwilioClient.connect(world.ingress.wsUrl, newCallSid());
    client.sendStart({}, { mediaFormat: { encoding: "audio/l16", sampleRate: 16000, channels: 1 } });
    client.sendStart(); // in the same read as the refused one, before our close reaches the client
    expect((await client.closed).code).toBe(1008);
    await expectCounted("unsupported_media_format");
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(world.dialog.items.filter((i) => i.callId === client.callSid)).toEqual([]);
    const record = await fetch(`${world.ingress.baseUrl}/v1/calls/${client.callSid}`);
    expect(record.status).toBe(404);
  });

  it("refuses a new stream (not a resume) for a call that has ended", async () => {
    const first = await startedCall();
    first.sendStop();
    await first.closed;
    await recordEnded(first.callSid, "the first call's record ended");
    const again = await TwilioClient.connect(world.ingress.wsUrl, first.callSid);
    again.sendStart();
    const closed = await again.closed;
    expect(closed.code).toBe(1008);
    await expectCounted("call_ended");
    expect(world.dialog.items.filter((i) => i.callId === first.callSid && i.input?.$case === "callStarted")).toHaveLength(1);
  });

  it("keys faster than a keypad can send are dropped (each would be a dialog input); the keys of another call are not", async () => {
    const flooder = await startedCall();
    const caller = await startedCall();
    const keys = (callSid: string) => world.dialog.items.filter((i) => i.callId === callSid && i.input?.$case === "keypad").length;
    for (let i = 0; i < 200; i++) flooder.sendDtmf(String(i % 10)); // at once: 200 keys against 12 a second, 24 at once
    caller.sendDtmf("1");
    caller.sendDtmf("2");
    await errorLogged("key_flood", flooder.streamSid);
    await expectCounted("key_flood", 150);
    await waitFor(() => keys(caller.callSid) === 2, { what: "the other caller's keys" });
    await waitFor(() => keys(flooder.callSid) >= 24, { what: "the flooder's first 24 keys" });
    await new Promise((r) => setTimeout(r, 300));
    expect(keys(flooder.callSid)).toBeLessThanOrEqual(30);
    expect(flooder.ws.readyState).toBe(WebSocket.OPEN);
    // At a keypad's pace every key goes through again.
    await new Promise((r) => setTimeout(r, 2_000));
    const before = keys(flooder.callSid);
    for (const digit of "12345#") flooder.sendDtmf(digit);
    await waitFor(() => keys(flooder.callSid) === before + 6, { what: "keys at a keypad's pace" });
    flooder.close();
    caller.close();
  });

  it("a backlog over the rate limit (Twilio's queue after a network stall) loses media, never the key, mark or stop among it", async () => {
    const client = await startedCall();
    const dropped = (await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "rate_limited" })) ?? 0;
    const keys = () => world.dialog.items.filter((i) => i.callId === client.callSid && i.input?.$case === "keypad").length;
    // 700 frames at once against 200 a second with 400 at once: the bucket is empty when the key comes.
    let chunk = 1;
    for (; chunk <= 600; chunk++) client.sendMedia(chunk, frames(1, 7));
    client.sendDtmf("5");
    for (; chunk <= 700; chunk++) client.sendMedia(chunk, frames(1, 7));
    client.sendMark("no-such-mark");
    client.sendStop();
    await waitFor(() => keys() === 1, { what: "the key among the backlog" });
    await recordEnded(client.callSid, "the stop among the backlog to end the call");
    const state = (await (await fetch(`${world.ingress.baseUrl}/v1/calls/${client.callSid}`)).json()) as { endReason?: string };
    expect(state.endReason).toBe("caller_hangup");
    expect(((await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "rate_limited" })) ?? 0) - dropped).toBeGreaterThanOrEqual(200);
  });

  it("closes a stream that keeps sending at over twice the rate limit (1008 flood); a late burst is only trimmed", async () => {
    const flooder = await startedCall();
    const startedAt = Date.now();
    const flood = setInterval(() => {
      for (let i = 0; i < 20; i++) if (flooder.ws.readyState === WebSocket.OPEN) flooder.sendConnected(); // 2,000/s against 200/s
    }, 10);
    try {
      const closed = await flooder.closed;
      expect(closed).toEqual({ code: 1008, reason: "flood" });
      const after = Date.now() - startedAt;
      expect(after).toBeGreaterThanOrEqual(2_000);
      expect(after).toBeLessThan(8_000);
    } finally {
      clearInterval(flood);
    }
    await expectCounted("flood");
    await recordEnded(flooder.callSid, "the flooder's call ended");
  });
});
