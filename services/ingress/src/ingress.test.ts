// The ingress in-process against real NATS and Redis, driven by a WebSocket client speaking Twilio Media Streams.
// The test plays the other stages by publishing and subscribing their messages on the bus.
import { createHmac } from "node:crypto";
import http from "node:http";
import https from "node:https";
import dns from "node:dns";
import net from "node:net";
import { performance } from "node:perf_hooks";
import { subjects } from "@voicebot/bus";
import {
  AudioEncoding,
  BotAudio,
  CallControl,
  CancelTurn,
  CallControl_Action,
  CallEnded,
  CallerAudio,
  CallStarted,
  PlaybackEvent,
  PlaybackEvent_Kind,
  SynthesisFailed,
  TurnTiming,
} from "@voicebot/proto";
import { CallStore, keys, type CallRecord } from "@voicebot/state";
import { ensureTestCertificate, trustTestCertificateInProcess } from "@voicebot/testing";
import { describe, expect, it, onTestFinished, vi } from "vitest";
import { signedPayload } from "./signature.js";
import {
  collect,
  frames,
  logs,
  metricValue,
  newCallSid,
  startIngress,
  TwilioClient,
  useIngressWorld,
  waitFor,
  waitForLog,
} from "./test-support/harness.js";

const world = useIngressWorld({ env: { DEFAULT_AGENT: "order-line", PLAYOUT_LEAD_MS: "100" } });

/** The bot audio the caller got after the stream's first `clear`. */
function audioAfterClear(client: TwilioClient): Buffer {
  const after = client.received.slice(client.received.findIndex((r) => r.message.event === "clear") + 1);
  return Buffer.concat(after.filter((r) => r.message.event === "media").map((r) => Buffer.from(r.message.media.payload, "base64")));
}

function inputsFor(callSid: string) {
  return world.dialog.items.filter((i) => i.callId === callSid);
}

async function getRecord(callSid: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${world.ingress.baseUrl}/v1/calls/${encodeURIComponent(callSid)}`);
  return { status: res.status, body: await res.json() };
}

/** Connects, starts the call and waits until the pipeline knows about it. */
async function startCall(params: Record<string, string> = {}, url = world.ingress.wsUrl): Promise<TwilioClient> {
  const client = await TwilioClient.connect(url, newCallSid());
  client.sendConnected();
  client.sendStart(params);
  await waitFor(() => inputsFor(client.callSid).some((i) => i.input?.$case === "callStarted"), { what: "DialogInput callStarted" });
  return client;
}

function botAudio(callId: string, turnId: string, chunkSeq: number, partSeq: number, payload: Buffer, extra: Partial<BotAudio> = {}) {
  world.bus.publish(
    subjects.botAudio(callId),
    BotAudio,
    BotAudio.create({
      callId,
      turnId,
      chunkSeq,
      partSeq,
      payload,
      format: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 },
      ...extra,
    }),
    callId,
  );
}

function control(callId: string, action: CallControl_Action, extra: Partial<CallControl> = {}) {
  world.bus.publish(subjects.control(callId), CallControl, CallControl.create({ callId, action, ...extra }), callId);
}

describe("call start, caller audio and keys", () => {
  it("start creates the record and publishes CallStarted and DialogInput{callStarted}", async () => {
    const started = collect(world.bus, subjects.callStarted, CallStarted);
    await world.bus.nc.flush();
    const client = await startCall({ agent: "pharmacy", from: "+15550100", to: "+15550199" });
    const callSid = client.callSid;
    await waitFor(() => started.items.find((s) => s.callId === callSid), { what: "CallStarted" });
    const callStarted = started.items.find((s) => s.callId === callSid)!;
    expect(callStarted).toMatchObject({
      provider: "twilio",
      streamId: client.streamSid,
      accountId: "ACtest",
      from: "+15550100",
      to: "+15550199",
      agent: "pharmacy",
      callerFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 },
      botFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 },
      customParameters: { agent: "pharmacy", from: "+15550100", to: "+15550199" },
    });
    const input = inputsFor(callSid).find((i) => i.input?.$case === "callStarted")!;
    expect(input.inputId).toBe(`${callSid}:start`);
    expect(input.input?.value).toMatchObject({ callId: callSid, agent: "pharmacy" });

    const record = await getRecord(callSid);
    expect(record.status).toBe(200);
    expect(record.body).toMatchObject({ callSid, provider: "twilio", streamSid: client.streamSid, agent: "pharmacy", state: "live" });
    started.sub.unsubscribe();
    client.sendStop();
    await client.closed;
  });

  it("uses the default agent when the stream names none", async () => {
    const started = collect(world.bus, subjects.callStarted, CallStarted);
    await world.bus.nc.flush();
    const client = await startCall();
    await waitFor(() => started.items.find((s) => s.callId === client.callSid), { what: "CallStarted" });
    expect(started.items.find((s) => s.callId === client.callSid)!.agent).toBe("order-line");
    started.sub.unsubscribe();
    client.close();
  });

  it("forwards inbound media as CallerAudio frames, in order", async () => {
    const client = await startCall();
    const audio = collect(world.bus, subjects.callerAudio(client.callSid), CallerAudio);
    await world.bus.nc.flush();
    for (let chunk = 1; chunk <= 50; chunk++) client.sendMedia(chunk, Buffer.alloc(160, chunk));
    // The outbound track (if a stream had one) is not forwarded.
    client.send({ event: "media", streamSid: client.streamSid, media: { track: "outbound", chunk: "51", timestamp: "1000", payload: frames(1, 1).toString("base64") } });
    await waitFor(() => audio.items.length >= 50, { what: "50 CallerAudio messages" });
    expect(audio.items.map((a) => a.firstFrame)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    for (const [i, a] of audio.items.entries()) {
      expect(a).toMatchObject({ callId: client.callSid, frameCount: 1, format: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 } });
      expect(a.payload.equals(Buffer.alloc(160, i + 1))).toBe(true);
      expect(a.receivedAtMs).toBeGreaterThan(Date.now() - 10_000);
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(audio.items.length).toBe(50);
    audio.sub.unsubscribe();
    client.close();
  });

  it("turns each dtmf into a durable DialogInput{keypad}", async () => {
    const client = await startCall();
    const seq1 = client.sendDtmf("4");
    const seq2 = client.sendDtmf("#");
    await waitFor(() => inputsFor(client.callSid).filter((i) => i.input?.$case === "keypad").length === 2, { what: "two keypad inputs" });
    const keys = inputsFor(client.callSid).filter((i) => i.input?.$case === "keypad");
    expect(keys.map((k) => k.inputId)).toEqual([`${client.callSid}:dtmf:${client.streamSid}:${seq1}`, `${client.callSid}:dtmf:${client.streamSid}:${seq2}`]);
    expect(keys.map((k) => (k.input?.value as { digit: string }).digit)).toEqual(["4", "#"]);
    client.close();
  });

  it("stop ends the call: CallEnded, DialogInput{callEnded} and an ended record", async () => {
    const client = await startCall();
    const ended = collect(world.bus, subjects.ended(client.callSid), CallEnded);
    await world.bus.nc.flush();
    client.sendStop();
    await waitFor(() => ended.items[0], { what: "CallEnded" });
    expect(ended.items[0]).toMatchObject({ callId: client.callSid, reason: "caller_hangup" });
    await waitFor(() => inputsFor(client.callSid).find((i) => i.input?.$case === "callEnded"), { what: "DialogInput callEnded" });
    expect(inputsFor(client.callSid).map((i) => i.inputId)).toEqual([`${client.callSid}:start`, `${client.callSid}:end`]);
    await waitFor(async () => (await getRecord(client.callSid)).body.state === "ended", { what: "record ended" });
    expect((await getRecord(client.callSid)).body).toMatchObject({ state: "ended", endReason: "caller_hangup" });
    ended.sub.unsubscribe();
    await client.closed;
  });

  it("a socket that just closes also ends the call", async () => {
    const client = await startCall();
    client.close();
    await waitFor(async () => (await getRecord(client.callSid)).body.state === "ended", { what: "record ended" });
    expect((await getRecord(client.callSid)).body.endReason).toBe("stream_closed");
  });
});

describe("bot audio playout", () => {
  it("plays out-of-order parts in order, paced at real time, with marks, and reports what was heard", async () => {
    const client = await startCall();
    const callId = client.callSid;
    const playback = collect(world.bus, subjects.playback(callId), PlaybackEvent);
    await world.bus.nc.flush();
    client.echoMarks(0); // our own check below reads when marks were sent; echo right away
    const inputEndMs = Date.now() - 500;
    const timing = TurnTiming.create({ inputEndMs, asrFinalMs: inputEndMs + 200, dialogStartMs: inputEndMs + 210, ttsRequestMs: Date.now() - 50, ttsFirstAudioMs: Date.now() - 20 });
    // Turn t1: 2 chunks x 2 parts x 10 frames (800 ms), then t2 (200 ms). Parts from different tts replicas.
    botAudio(callId, "t1", 1, 1, frames(10, 4), { chunkDone: true, turnDone: true });
    botAudio(callId, "t2", 0, 0, frames(10, 5), { chunkDone: true, turnDone: true, text: "Bye." });
    botAudio(callId, "t1", 1, 0, frames(10, 3), { text: "How are you?" });
    botAudio(callId, "t1", 0, 1, frames(10, 2), { chunkDone: true });
    botAudio(callId, "t1", 0, 0, frames(10, 1), { text: "Hello.", timing });

    await waitFor(() => client.events("mark").length === 3, { what: "three marks", timeoutMs: 5_000 });
    const audio = client.audio();
    expect(audio.length).toBe(50 * 160);
    const valueAt = (frame: number) => audio[frame * 160];
    expect([0, 9, 10, 19, 20, 29, 30, 39, 40, 49].map(valueAt)).toEqual([1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);

    // Marks follow the last frame of their chunk.
    const sequence: string[] = [];
    let framesSoFar = 0;
    for (const r of client.received) {
      if (r.message.event === "media") framesSoFar += Buffer.from(r.message.media.payload, "base64").length / 160;
      if (r.message.event === "mark") sequence.push(`${r.message.mark.name}@${framesSoFar}`);
      expect(r.message.streamSid).toBe(client.streamSid);
    }
    expect(sequence).toEqual(["t1.0@20", "t1.1@40", "t2.0@50"]);
    expect(client.binaryFrames).toBe(0);

    // Pacing: 1 s of audio takes ~(1 s - lead) to send, and never runs more than the lead ahead.
    const media = client.events("media");
    const t0 = media[0].at;
    expect(media.at(-1)!.at - t0).toBeGreaterThan(1000 - 100 - 60);
    expect(media.at(-1)!.at - t0).toBeLessThan(2_000); // not stuck (stalls of a busy machine are not made up)
    let sentMs = 0;
    for (const m of media) {
      sentMs += (Buffer.from(m.message.media.payload, "base64").length / 160) * 20;
      expect(sentMs - (m.at - t0)).toBeLessThanOrEqual(100 + 40);
    }

    await waitFor(() => playback.items.filter((e) => e.kind === PlaybackEvent_Kind.KIND_TURN_PLAYED).length === 2, { what: "two TURN_PLAYED" });
    expect(playback.items.map((e) => [e.turnId, PlaybackEvent_Kind[e.kind], e.chunkSeq, e.heardText])).toEqual([
      ["t1", "KIND_CHUNK_PLAYED", 0, "Hello."],
      ["t1", "KIND_CHUNK_PLAYED", 1, "Hello. How are you?"],
      ["t1", "KIND_TURN_PLAYED", 1, "Hello. How are you?"],
      ["t2", "KIND_CHUNK_PLAYED", 0, "Bye."],
      ["t2", "KIND_TURN_PLAYED", 0, "Bye."],
    ]);

    // The record has both turns, t1 with its latency split.
    const record = await waitFor(async () => {
      const r = (await getRecord(callId)).body as CallRecord;
      return r.turns.length === 2 ? r : undefined;
    }, { what: "two turns in the record" });
    expect(record.turns.map((t) => t.turnId)).toEqual(["t1", "t2"]);
    expect(record.turns[0].latencyMs).toBeGreaterThanOrEqual(500);
    expect(record.turns[0].latencyMs).toBeLessThan(5_000);
    expect(record.turns[0].inputEndAt).toBe(new Date(inputEndMs).toISOString());
    expect(record.turns[0].stages).toMatchObject({ asrMs: 200, asrToDialogQueueMs: 10, ttsMs: 30 });
    expect(Object.keys(record.turns[0].stages)).not.toContain("dialogMs");
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_turn_latency_seconds_count")).toBeGreaterThanOrEqual(1);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_turn_stage_seconds_count", { stage: "asr" })).toBeGreaterThanOrEqual(1);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_frames_out_total")).toBeGreaterThanOrEqual(50);
    playback.sub.unsubscribe();
    client.close();
  });

  it("skips a chunk whose synthesis failed", async () => {
    const client = await startCall();
    const callId = client.callSid;
    client.echoMarks(0);
    botAudio(callId, "t1", 0, 0, frames(2, 1), { chunkDone: true });
    world.bus.publish(subjects.ttsFailed(callId), SynthesisFailed, SynthesisFailed.create({ callId, turnId: "t1", chunkSeq: 1, error: "all engines failed" }), callId);
    botAudio(callId, "t1", 2, 0, frames(2, 3), { chunkDone: true, turnDone: true });
    await waitFor(() => client.events("mark").length === 2, { what: "two marks" });
    expect(client.events("mark").map((m) => m.message.mark.name)).toEqual(["t1.0", "t1.2"]);
    expect(client.audio().length).toBe(4 * 160);
    client.close();
  });

  it("a turn whose last chunk failed ends there: a hang-up after it goes ahead at once, not after the playout stall", async () => {
    const client = await startCall();
    const callId = client.callSid;
    client.echoMarks(0);
    const playback = collect(world.bus, subjects.playback(callId), PlaybackEvent);
    await world.bus.nc.flush();
    botAudio(callId, "t2", 0, 0, frames(2, 1), { chunkDone: true, text: "Goodbye." });
    control(callId, CallControl_Action.ACTION_HANGUP, { afterTurnId: "t2", reason: "done" });
    // The turn's last chunk (turn_done on its speak request) could not be synthesized: no part will say turnDone.
    world.bus.publish(subjects.ttsFailed(callId), SynthesisFailed, SynthesisFailed.create({ callId, turnId: "t2", chunkSeq: 1, error: "all engines failed", turnDone: true }), callId);
    const started = Date.now();
    expect((await client.closed).code).toBe(1000);
    expect(Date.now() - started).toBeLessThan(3_000); // PLAYOUT_ALONE_STALL_MS is 30 s
    await waitFor(() => playback.items.some((e) => e.turnId === "t2" && e.kind === PlaybackEvent_Kind.KIND_TURN_PLAYED), { what: "TURN_PLAYED for t2" });
    playback.sub.unsubscribe();
  });

  it("CLEAR sends clear, drops queued audio and reports INTERRUPTED with the last chunk heard", async () => {
    const client = await startCall();
    const callId = client.callSid;
    const playback = collect(world.bus, subjects.playback(callId), PlaybackEvent);
    await world.bus.nc.flush();
    botAudio(callId, "t1", 0, 0, frames(2, 1), { chunkDone: true, text: "One." });
    botAudio(callId, "t1", 1, 0, frames(500, 2), { chunkDone: true, turnDone: true, text: "Two." }); // 10 s
    await waitFor(() => client.events("mark").length === 1, { what: "mark t1.0" });
    client.sendMark("t1.0");
    await waitFor(() => playback.items.length === 1, { what: "CHUNK_PLAYED" });
    control(callId, CallControl_Action.ACTION_CLEAR, { reason: "barge-in" });
    await waitFor(() => client.events("clear").length === 1, { what: "clear" });
    const framesAtClear = client.audio().length / 160;
    expect(framesAtClear).toBeLessThan(250); // cut well inside the 10 s (a busy machine slows the hops before it)
    await waitFor(() => playback.items.find((e) => e.kind === PlaybackEvent_Kind.KIND_INTERRUPTED), { what: "INTERRUPTED" });
    expect(playback.items.at(-1)).toMatchObject({ turnId: "t1", chunkSeq: 0, heardText: "One." });

    // Twilio echoes the pending mark after a clear: it is not reported as played.
    client.sendMark("t1.1");
    // Late audio of the cut turn is dropped; the next turn plays.
    botAudio(callId, "t1", 1, 1, frames(5, 7), { chunkDone: true });
    botAudio(callId, "t2", 0, 0, frames(3, 8), { chunkDone: true, turnDone: true });
    await waitFor(() => client.events("mark").some((m) => m.message.mark.name === "t2.0"), { what: "mark t2.0" });
    const afterAudio = audioAfterClear(client);
    expect([...new Set(afterAudio)]).toEqual([8]);
    expect(playback.items.filter((e) => e.turnId === "t1").map((e) => PlaybackEvent_Kind[e.kind])).toEqual(["KIND_CHUNK_PLAYED", "KIND_INTERRUPTED"]);
    playback.sub.unsubscribe();
    client.close();
  });

  it("a CLEAR naming the turn that supersedes the bot's speech (a voicemail message) also drops earlier turns' audio that comes after it, and cancels their synthesis", async () => {
    const client = await startCall();
    const callId = client.callSid;
    const cancels = collect(world.bus, subjects.cancel(callId), CancelTurn);
    await world.bus.nc.flush();
    botAudio(callId, "t1", 0, 0, frames(100, 1), { chunkDone: true, turnDone: true, text: "Hello, is this Sam?" }); // 2 s
    await waitFor(() => client.audio().length >= 160, { what: "the greeting to play" });
    control(callId, CallControl_Action.ACTION_CLEAR, { reason: "voicemail", beforeTurnId: "t3" });
    await waitFor(() => client.events("clear").length === 1, { what: "clear" });
    const skipped = await metricValue(world.ingress.baseUrl, "voicebot_ingress_playout_skipped_chunks_total");
    // The answer to the machine's greeting was on its way when the verdict came: it arrives after the CLEAR (one of
    // its chunks failed), and so does the rest of the greeting the CLEAR cut.
    world.bus.publish(subjects.ttsFailed(callId), SynthesisFailed, SynthesisFailed.create({ callId, turnId: "t2", chunkSeq: 2, error: "engine down" }), callId);
    botAudio(callId, "t2", 0, 0, frames(10, 2), { chunkDone: true, text: "Sorry, I did not catch that." });
    botAudio(callId, "t2", 1, 0, frames(10, 2), { chunkDone: true });
    botAudio(callId, "t1", 0, 1, frames(10, 1), { chunkDone: true, turnDone: true });
    botAudio(callId, "t3", 0, 0, frames(5, 3), { chunkDone: true, turnDone: true, text: "Please call us back." });
    await waitFor(() => client.events("mark").some((m) => m.message.mark.name === "t3.0"), { what: "mark t3.0" });
    const afterAudio = audioAfterClear(client);
    expect([...new Set(afterAudio)]).toEqual([3]);
    expect(afterAudio.length).toBe(5 * 160);
    await waitFor(() => cancels.items.some((c) => c.turnId === "t2"), { what: "t2's synthesis to be cancelled" });
    // Each turn cancelled once: t2 as superseded, t1 by the CLEAR that cut it.
    expect(cancels.items.map((c) => [c.turnId, c.reason])).toEqual([
      ["t1", "clear"],
      ["t2", "superseded"],
    ]);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_bot_audio_dropped_total", { reason: "superseded" })).toBe(3);
    // Nothing of t2 was waited for or skipped: its failed chunk did not make it a turn ahead of t3.
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_playout_skipped_chunks_total")).toBe(skipped);
    // The dialog learns that neither was heard past the cut: t1 up to the CLEAR, t2 not at all.
    const cut = await waitFor(() => inputsFor(callId).filter((i) => i.input?.$case === "playback").length === 2 && inputsFor(callId).filter((i) => i.input?.$case === "playback"), {
      what: "INTERRUPTED for t1 and t2",
    });
    // t1 was cut by a clear (no reason); t2 was dropped unplayed, which the dialog must not count as a barge-in.
    expect(cut.map((i) => [i.inputId, i.input?.$case === "playback" && i.input.value.heardText, i.input?.$case === "playback" && i.input.value.reason])).toEqual([
      [`${callId}:int:t1`, "", ""],
      [`${callId}:int:t2`, "", "superseded"],
    ]);
    // A CLEAR that comes after the turn it names began (reordered across NATS servers) cuts nothing.
    const clears = client.events("clear").length;
    control(callId, CallControl_Action.ACTION_CLEAR, { reason: "voicemail", beforeTurnId: "t3" });
    await waitFor(async () => (await metricValue(world.ingress.baseUrl, "voicebot_ingress_controls_total", { action: "clear", outcome: "after_turn" })) === 1, {
      what: "the late CLEAR counted",
    });
    expect(client.events("clear").length).toBe(clears);
    // A later turn (after the voicemail message) is not affected.
    botAudio(callId, "t4", 0, 0, frames(2, 4), { chunkDone: true, turnDone: true });
    await waitFor(() => client.events("mark").some((m) => m.message.mark.name === "t4.0"), { what: "mark t4.0" });
    cancels.sub.unsubscribe();
    client.close();
  });

  it("a superseding CLEAR that comes after its turn's first audio, while an older turn still plays, cuts the older turn and plays the new one at once", async () => {
    const client = await startCall();
    const callId = client.callSid;
    const cancels = collect(world.bus, subjects.cancel(callId), CancelTurn);
    await world.bus.nc.flush();
    // t5 plays its first of three chunks; the message (t6) arrives behind it; then the dialog's CLEAR naming t6.
    botAudio(callId, "t5", 0, 0, frames(100, 5), { chunkDone: true, text: "Hello, is this Sam?" }); // 2 s
    await waitFor(() => client.audio().length >= 160, { what: "t5 to play" });
    botAudio(callId, "t6", 0, 0, frames(10, 6), { chunkDone: true, turnDone: true, text: "Please call us back." });
    await new Promise((r) => setTimeout(r, 50));
    const clearedAt = performance.now();
    control(callId, CallControl_Action.ACTION_CLEAR, { reason: "voicemail", beforeTurnId: "t6" });
    await waitFor(() => client.events("clear").length === 1, { what: "clear" });
    // t5's later chunks come after the CLEAR: dropped. t6 plays at once, not after a stall.
    botAudio(callId, "t5", 1, 0, frames(10, 5), { chunkDone: true });
    botAudio(callId, "t5", 2, 0, frames(10, 5), { chunkDone: true, turnDone: true });
    await waitFor(() => client.events("mark").some((m) => m.message.mark.name === "t6.0"), { what: "mark t6.0" });
    const sixStarted = client.events("media").find((m) => m.at > clearedAt && Buffer.from(m.message.media.payload, "base64")[0] === 6)!.at;
    expect(sixStarted - clearedAt).toBeLessThan(1_000);
    expect([...new Set(audioAfterClear(client))]).toEqual([6]);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_controls_total", { action: "clear", outcome: "after_turn_cut" })).toBe(1);
    // t5 is reported cut as heard up to the CLEAR (by the clear itself), once.
    await waitFor(() => cancels.items.some((c) => c.turnId === "t5"), { what: "t5's synthesis cancelled" });
    expect(cancels.items.map((c) => [c.turnId, c.reason])).toEqual([["t5", "clear"]]);
    const interrupted = await waitFor(() => inputsFor(callId).filter((i) => i.input?.$case === "playback"), { what: "t5 interrupted" });
    expect(interrupted.map((i) => i.inputId)).toEqual([`${callId}:int:t5`]);
    cancels.sub.unsubscribe();
    client.close();
  });

  it("the verdict's own CLEAR coming after the dialog's superseding CLEAR and the message's start cuts nothing", async () => {
    const client = await startCall();
    const callId = client.callSid;
    botAudio(callId, "t1", 0, 0, frames(100, 1), { chunkDone: true, turnDone: true, text: "Hello, is this Sam?" }); // 2 s
    await waitFor(() => client.audio().length >= 160, { what: "the greeting to play" });
    control(callId, CallControl_Action.ACTION_CLEAR, { reason: "voicemail", beforeTurnId: "t2" });
    await waitFor(() => client.events("clear").length === 1, { what: "the dialog's clear" });
    botAudio(callId, "t2", 0, 0, frames(25, 2), { chunkDone: true, turnDone: true, text: "Please call us back." });
    await waitFor(() => client.audio().includes(2), { what: "the message to begin" });
    control(callId, CallControl_Action.ACTION_CLEAR, { reason: "machine_end_beep" });
    await waitFor(async () => (await metricValue(world.ingress.baseUrl, "voicebot_ingress_controls_total", { action: "clear", outcome: "superseded_already" })) === 1, {
      what: "the verdict's CLEAR counted",
    });
    await waitFor(() => client.events("mark").some((m) => m.message.mark.name === "t2.0"), { what: "the whole message" });
    expect(client.events("clear")).toHaveLength(1);
    const message = audioAfterClear(client);
    expect(message.length).toBe(25 * 160);
    client.close();
  });

  it("a turn whose audio first comes after a later turn began (redelivered after an outage) is not played out of order: dropped, cancelled, reported unheard", async () => {
    const client = await startCall();
    const callId = client.callSid;
    const cancels = collect(world.bus, subjects.cancel(callId), CancelTurn);
    await world.bus.nc.flush();
    const dropped = (await metricValue(world.ingress.baseUrl, "voicebot_ingress_bot_audio_dropped_total", { reason: "overtaken" })) ?? 0;
    botAudio(callId, "t3", 0, 0, frames(25, 3), { chunkDone: true, turnDone: true, text: "You chose two." }); // 0.5 s
    await waitFor(() => client.audio().length >= 160, { what: "t3 to begin" });
    botAudio(callId, "t2", 0, 0, frames(5, 2), { chunkDone: true, text: "You chose one." });
    botAudio(callId, "t2", 1, 0, frames(5, 2), { chunkDone: true, turnDone: true });
    // A hang-up after the dropped turn does not wait for it.
    control(callId, CallControl_Action.ACTION_HANGUP, { afterTurnId: "t2", reason: "done" });
    await waitFor(() => cancels.items.some((c) => c.turnId === "t2"), { what: "t2's synthesis to be cancelled" });
    const closed = await client.closed;
    expect(closed.code).toBe(1000);
    expect([...new Set(client.audio())]).toEqual([3]);
    expect(cancels.items.filter((c) => c.turnId === "t2").map((c) => c.reason)).toEqual(["overtaken"]);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_bot_audio_dropped_total", { reason: "overtaken" })).toBe(dropped + 1);
    const unheard = await waitFor(() => inputsFor(callId).find((i) => i.input?.$case === "playback" && i.input.value.turnId === "t2"), { what: "t2 reported to the dialog" });
    expect(unheard.inputId).toBe(`${callId}:int:t2`);
    expect(unheard.input?.$case === "playback" && unheard.input.value).toMatchObject({ heardText: "", reason: "overtaken" });
    cancels.sub.unsubscribe();
  });
});

describe("call control", () => {
  it("HANGUP after a turn waits until its last mark is echoed, then closes the socket (1000) and ends the call", async () => {
    const client = await startCall();
    const callId = client.callSid;
    const ended = collect(world.bus, subjects.ended(callId), CallEnded);
    await world.bus.nc.flush();
    control(callId, CallControl_Action.ACTION_HANGUP, { afterTurnId: "t3", reason: "goodbye" });
    botAudio(callId, "t3", 0, 0, frames(10, 1), { chunkDone: true, turnDone: true, text: "Goodbye." });
    await waitFor(() => client.events("mark").length === 1, { what: "mark t3.0" });
    // Not yet heard: the socket must stay open.
    await new Promise((r) => setTimeout(r, 300));
    expect(client.ws.readyState).toBe(client.ws.OPEN);
    const echoedAt = performance.now();
    client.sendMark("t3.0");
    const closed = await client.closed;
    expect(closed.code).toBe(1000);
    expect(performance.now() - echoedAt).toBeLessThan(1_000);
    await waitFor(() => ended.items[0], { what: "CallEnded" });
    expect(ended.items[0].reason).toBe("bot_hangup");
    await waitFor(async () => (await getRecord(callId)).body.state === "ended", { what: "record ended" });
    expect((await getRecord(callId)).body.endReason).toBe("bot_hangup");
    expect(inputsFor(callId).at(-1)?.input?.$case).toBe("callEnded");
    ended.sub.unsubscribe();
  });

  it("HANGUP for a turn that never plays acts after the safety timeout", async () => {
    const quick = await startIngress({ ...world.env(), CONTROL_TIMEOUT_MS: "300" });
    try {
      const client = await startCall({}, quick.wsUrl);
      control(client.callSid, CallControl_Action.ACTION_HANGUP, { afterTurnId: "t9" });
      const closed = await client.closed;
      expect(closed.code).toBe(1000);
      await waitFor(async () => (await getRecord(client.callSid)).body.endReason === "bot_hangup", { what: "record ended" });
    } finally {
      await quick.handle.stop();
    }
  });

  it("TRANSFER without REST credentials closes the stream with reason transfer", async () => {
    const client = await startCall();
    control(client.callSid, CallControl_Action.ACTION_TRANSFER, { target: "+15550123" });
    expect((await client.closed).code).toBe(1000);
    await waitFor(async () => (await getRecord(client.callSid)).body.endReason === "transfer", { what: "transfer recorded" });
  });

  it("TRANSFER without REST credentials on a stream of our voice webhook: the webhook's redirect dials the target", async () => {
    // Our TwiML follows <Connect><Stream> with a <Redirect> back to the voice webhook: after the stream closes,
    // Twilio asks it what next, and it must dial the transfer's target rather than hang up the ended call.
    const client = await startCall({ vbResumable: "1" });
    control(client.callSid, CallControl_Action.ACTION_TRANSFER, { target: " sip:desk@pbx.example.com " });
    expect((await client.closed).code).toBe(1000);
    const record = (await getRecord(client.callSid)).body;
    expect(record).toMatchObject({ state: "ended", endReason: "transfer", transferTo: "sip:desk@pbx.example.com" });
    const redirect = await fetch(`${world.ingress.baseUrl}/twilio/voice?vbResume=1`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ CallSid: client.callSid, AccountSid: "ACtest", From: "+15550100003", To: "+15550100004" }).toString(),
    });
    expect(await redirect.text()).toBe(`<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Sip>sip:desk@pbx.example.com</Sip></Dial></Response>`);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_voice_webhooks_total", { outcome: "transfer" })).toBe(1);
  });

  it("TRANSFER with REST credentials redirects the call to <Dial> through the Twilio API", async () => {
    const requests: Array<{ method: string; url: string; auth: string; body: string }> = [];
    const api = http.createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        requests.push({ method: req.method!, url: req.url!, auth: req.headers.authorization ?? "", body });
        res.writeHead(200, { "content-type": "application/json" }).end('{"sid":"CA"}');
      });
    });
    await new Promise<void>((resolve) => api.listen(0, "127.0.0.1", resolve));
    const apiUrl = `http://127.0.0.1:${(api.address() as { port: number }).port}`;
    const rest = await startIngress({ ...world.env(), TWILIO_ACCOUNT_SID: "ACabc", TWILIO_AUTH_TOKEN: "secret-token", TWILIO_API_BASE_URL: apiUrl });
    try {
      const client = await startCall({}, rest.wsUrl);
      control(client.callSid, CallControl_Action.ACTION_TRANSFER, { target: "+15550123" });
      expect((await client.closed).code).toBe(1000);
      expect(requests).toHaveLength(1);
      expect(requests[0].method).toBe("POST");
      expect(requests[0].url).toBe(`/2010-04-01/Accounts/ACabc/Calls/${client.callSid}.json`);
      expect(requests[0].auth).toBe("Basic " + Buffer.from("ACabc:secret-token").toString("base64"));
      expect(new URLSearchParams(requests[0].body).get("Twiml")).toBe("<Response><Dial>+15550123</Dial></Response>");
      await waitFor(async () => (await getRecord(client.callSid)).body.endReason === "transfer", { what: "transfer recorded" });
      expect(JSON.stringify(logs)).not.toContain("secret-token");
    } finally {
      await rest.handle.stop();
      api.close();
    }
  });
});

/** A Twilio REST API stand-in: records each request and answers as `answer` says. */
async function fakeTwilioApi(answer: (form: URLSearchParams) => { status: number; body: unknown; delayMs?: number }) {
  const requests: Array<{ url: string; auth: string; form: URLSearchParams }> = [];
  const api = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const form = new URLSearchParams(body);
      requests.push({ url: req.url!, auth: req.headers.authorization ?? "", form });
      const { status, body: json, delayMs = 0 } = answer(form);
      setTimeout(() => res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(json)), delayMs);
    });
  });
  await new Promise<void>((resolve) => api.listen(0, "127.0.0.1", resolve));
  const close = () => {
    api.close();
    api.closeAllConnections(); // kept-alive connections too: the next request must find nobody listening
  };
  return { url: `http://127.0.0.1:${(api.address() as { port: number }).port}`, requests, close };
}

/** An ingress with Twilio REST credentials against a fake of the API that answers every request with 200. */
async function startWithTwilioApi() {
  const api = await fakeTwilioApi(() => ({ status: 200, body: { sid: "CA" } }));
  const rest = await startIngress({ ...world.env(), TWILIO_ACCOUNT_SID: "ACabc", TWILIO_AUTH_TOKEN: "secret-token", TWILIO_API_BASE_URL: api.url });
  const twimls = () => api.requests.map((r) => r.form.get("Twiml") ?? "");
  return { rest, twimls, stop: async () => (await rest.handle.stop(), api.close()) };
}

describe("keypad tones to the far end (SEND_DTMF)", () => {
  it("after its turn has played, redirects the call to play the tones; the call comes back through the voice webhook on a new stream and goes on", async () => {
    const { rest, twimls, stop } = await startWithTwilioApi();
    try {
      const client = await startCall({ vbResumable: "1", agent: "pharmacy" }, rest.wsUrl);
      const callId = client.callSid;
      botAudio(callId, "t2", 0, 0, frames(25, 2), { chunkDone: true, turnDone: true, text: "I will press one for billing." });
      control(callId, CallControl_Action.ACTION_SEND_DTMF, { target: "1w2#", afterTurnId: "t2", reason: "send_dtmf" });
      await waitFor(() => client.events("mark").some((m) => m.message.mark.name === "t2.0"), { what: "the turn's audio and mark" });
      await new Promise((r) => setTimeout(r, 150));
      expect(twimls()).toEqual([]); // the tones would cut the bot's own sentence off
      client.sendMark("t2.0");
      await waitFor(() => twimls().length === 1, { what: "the redirect through the REST API" });
      const host = new URL(rest.baseUrl).host;
      expect(twimls()[0]).toBe(`<Response><Play digits="1w2#"/><Redirect method="POST">https://${host}/twilio/voice?vbResume=1&amp;agent=pharmacy</Redirect></Response>`);
      // Twilio leaves the stream for the new TwiML: this `stop` is no hang-up.
      client.sendStop();
      expect((await client.closed).code).toBe(1000);
      await new Promise((r) => setTimeout(r, 100));
      expect((await getRecord(callId)).body.state).toBe("live");
      // After the tones, the redirect: the webhook connects the live call to a new stream, which resumes it.
      const redirect = await fetch(`${rest.baseUrl}/twilio/voice?vbResume=1&agent=pharmacy`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ CallSid: callId, AccountSid: "ACtest" }).toString(),
      });
      const twiml = await redirect.text();
      expect(twiml).toContain('<Parameter name="vbResume" value="1"/>');
      const resumed = await TwilioClient.connect(rest.wsUrl, callId);
      resumed.sendConnected();
      resumed.sendStart({ agent: "pharmacy", vbResume: "1", vbResumable: "1" });
      await waitFor(async () => (await metricValue(rest.baseUrl, "voicebot_ingress_resumes_total", { outcome: "resumed" })) === 1, { what: "the call resumed" });
      // Nothing was cut, so the dialog is not told the line dropped (it would prompt the far end again).
      await new Promise((r) => setTimeout(r, 200));
      expect(inputsFor(callId).filter((i) => i.inputId.includes(":resume:"))).toEqual([]);
      expect(await metricValue(rest.baseUrl, "voicebot_ingress_controls_total", { action: "send_dtmf", outcome: "done" })).toBe(1);
      // The conversation goes on: the next turn plays on the new stream.
      botAudio(callId, "t3", 0, 0, frames(5, 3), { chunkDone: true, turnDone: true, text: "Now I am through." });
      await waitFor(() => resumed.events("mark").some((m) => m.message.mark.name === "t3.0"), { what: "the next turn on the new stream" });
      resumed.sendStop();
      await waitFor(async () => (await getRecord(callId)).body.endReason === "caller_hangup", { what: "the hang-up recorded" });
    } finally {
      await stop();
    }
  });

  it("a call away for keypad tones longer than the stream lease is not ended as lost meanwhile", async () => {
    const api = await fakeTwilioApi(() => ({ status: 200, body: { sid: "CA" } }));
    const rest = await startIngress({
      ...world.env(),
      TWILIO_ACCOUNT_SID: "ACabc",
      TWILIO_AUTH_TOKEN: "secret-token",
      TWILIO_API_BASE_URL: api.url,
      INGRESS_STREAM_LEASE_MS: "1000",
      INGRESS_RECORD_CHECK_MS: "250",
    });
    try {
      const client = await startCall({ vbResumable: "1" }, rest.wsUrl);
      control(client.callSid, CallControl_Action.ACTION_SEND_DTMF, { target: `1${"w".repeat(8)}2`, reason: "send_dtmf" }); // ~4.6 s
      await waitFor(() => api.requests.length === 1 || undefined, { what: "the redirect through the REST API" });
      client.sendStop(); // Twilio leaves the stream to play the tones
      await client.closed;
      await new Promise((r) => setTimeout(r, 2_500)); // past the 1 s lease, within the tones
      expect((await getRecord(client.callSid)).body.state).toBe("live");
    } finally {
      await rest.handle.stop();
      api.close();
    }
  });

  it("a drain that begins while the tones' redirect is on its way waits for it instead of handing the call over", async () => {
    // Handed over first, the old TwiML's <Redirect> would resume the call on another replica, whose stream the
    // tones' `stop` would then end as a hang-up.
    const api = await fakeTwilioApi(() => ({ status: 200, body: { sid: "CA" }, delayMs: 600 }));
    const rest = await startIngress({ ...world.env(), TWILIO_ACCOUNT_SID: "ACabc", TWILIO_AUTH_TOKEN: "secret-token", TWILIO_API_BASE_URL: api.url });
    try {
      const client = await startCall({ vbResumable: "1" }, rest.wsUrl);
      control(client.callSid, CallControl_Action.ACTION_SEND_DTMF, { target: "9", reason: "send_dtmf" });
      await waitFor(() => api.requests.length === 1 || undefined, { what: "the redirect request on its way" });
      const stopping = rest.handle.stop();
      const first = await Promise.race([client.closed.then(() => "closed"), new Promise((r) => setTimeout(() => r("open"), 400))]);
      expect(first).toBe("open");
      await new Promise((r) => setTimeout(r, 400)); // the REST answer is in: Twilio leaves the stream for the tones
      client.sendStop();
      expect((await client.closed).code).toBe(1000);
      await stopping;
      expect((await getRecord(client.callSid)).body.state).toBe("live"); // the tones' redirect brings it back
    } finally {
      api.close();
    }
  });

  it("a bot hang-up with Twilio REST credentials hangs the call up through the API (whatever TwiML follows <Connect> does not run), then closes", async () => {
    const { rest, twimls, stop } = await startWithTwilioApi();
    try {
      const client = await startCall({}, rest.wsUrl); // a number's own TwiML: it may <Dial> after <Connect>
      client.echoMarks(0);
      botAudio(client.callSid, "t2", 0, 0, frames(2, 1), { chunkDone: true, turnDone: true, text: "Goodbye." });
      control(client.callSid, CallControl_Action.ACTION_HANGUP, { afterTurnId: "t2", reason: "done" });
      expect((await client.closed).code).toBe(1000);
      expect(twimls()).toEqual(["<Response><Hangup/></Response>"]);
      await waitFor(async () => (await getRecord(client.callSid)).body.endReason === "bot_hangup", { what: "the end recorded" });
    } finally {
      await stop();
    }
  });

  it("on a stream without a voice webhook to come back to, the call ends after the tones", async () => {
    const { rest, twimls, stop } = await startWithTwilioApi();
    try {
      const client = await startCall({}, rest.wsUrl);
      control(client.callSid, CallControl_Action.ACTION_SEND_DTMF, { target: "9", reason: "send_dtmf" });
      await waitFor(() => twimls().length === 1, { what: "the redirect through the REST API" });
      expect(twimls()[0]).toBe(`<Response><Play digits="9"/></Response>`);
      client.sendStop();
      await waitFor(async () => (await getRecord(client.callSid)).body.endReason === "sent_dtmf", { what: "the end recorded" });
    } finally {
      await stop();
    }
  });
});

describe("stream admission", () => {
  it("checks X-Twilio-Signature when asked to", async () => {
    const streamUrl = "wss://voice.example.com/twilio?tenant=a";
    const signed = await startIngress({ ...world.env(), TWILIO_VALIDATE_SIGNATURE: "true", TWILIO_AUTH_TOKEN: "tok", TWILIO_STREAM_URL: streamUrl });
    try {
      const signature = createHmac("sha1", "tok").update(streamUrl).digest("base64");
      await expect(TwilioClient.connect(signed.wsUrl, newCallSid())).rejects.toThrow(/403/);
      await expect(TwilioClient.connect(signed.wsUrl, newCallSid(), { "x-twilio-signature": "bm9wZQ==" })).rejects.toThrow(/403/);
      const client = await TwilioClient.connect(signed.wsUrl, newCallSid(), { "x-twilio-signature": signature });
      client.close();
      // Signed with the default port written out: Twilio's own validators take both forms.
      const withPort = createHmac("sha1", "tok").update("wss://voice.example.com:443/twilio?tenant=a").digest("base64");
      const third = await TwilioClient.connect(signed.wsUrl, newCallSid(), { "x-twilio-signature": withPort });
      third.close();
      // A number's own TwiML may point at another query or path on the same host: Twilio signed that URL.
      const other = "wss://voice.example.com/twilio?tenant=b";
      const otherSigned = createHmac("sha1", "tok").update(other).digest("base64");
      const second = await TwilioClient.connect(`${signed.wsUrl}?tenant=b`, newCallSid(), { "x-twilio-signature": otherSigned });
      second.close();
      await expect(TwilioClient.connect(`${signed.wsUrl}?tenant=c`, newCallSid(), { "x-twilio-signature": otherSigned })).rejects.toThrow(/403/);
      expect(await metricValue(signed.baseUrl, "voicebot_ingress_rejected_streams_total", { reason: "bad_signature" })).toBe(3);
    } finally {
      await signed.handle.stop();
    }
  });
});

describe("record route", () => {
  it("answers 404 for an unknown call and 400 for an invalid id", async () => {
    const missing = await getRecord("CAdoesnotexist");
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ error: "call not found" });
    const invalid = await getRecord("bad id!");
    expect(invalid.status).toBe(400);
    expect(invalid.body).toMatchObject({ error: "invalid call id" });
  });
});

describe("drain", () => {
  it("refuses new streams with 503 and finishes once live calls end", async () => {
    const draining = await startIngress(world.env());
    const client = await startCall({}, draining.wsUrl);
    expect(((await (await fetch(`${draining.baseUrl}/info`)).json()) as { activeCalls: number }).activeCalls).toBe(1);
    let stopped = false;
    const stop = draining.handle.stop().then(() => (stopped = true));
    await waitFor(async () => (await fetch(`${draining.baseUrl}/readyz`)).status === 503, { what: "readyz 503" });
    await expect(TwilioClient.connect(draining.wsUrl, newCallSid())).rejects.toThrow(/503/);
    await new Promise((r) => setTimeout(r, 200));
    expect(stopped).toBe(false);
    client.sendStop();
    await stop;
    await waitFor(async () => (await getRecord(client.callSid)).body.state === "ended", { what: "record ended" });
  });

  it("hands over a resumable call whose stream was accepted before the drain but started after it", async () => {
    const draining = await startIngress(world.env());
    const client = await TwilioClient.connect(draining.wsUrl, newCallSid());
    client.sendConnected();
    const stop = draining.handle.stop();
    await waitFor(async () => (await fetch(`${draining.baseUrl}/readyz`)).status === 503, { what: "readyz 503" });
    client.sendStart({ vbResumable: "1" });
    // Handed over (1001: Twilio's <Redirect> brings it to another replica), not kept until the drain times out.
    expect((await client.closed).code).toBe(1001);
    await stop;
    const record = (await getRecord(client.callSid)).body;
    expect(record.state).toBe("live");
  });
});

describe("ingress API: token and placing calls", () => {
  const TOKEN = "api-token-0123456789abcdef";
  const STREAM_URL = "wss://voice.example.com/twilio";
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

  /** An ingress that may place calls: the API token, Twilio credentials against `apiUrl`, a public stream URL. */
  function startPlacing(apiUrl: string, extra: Record<string, string> = {}) {
    return startIngress({
      ...world.env(),
      INGRESS_API_TOKEN: TOKEN,
      TWILIO_ACCOUNT_SID: "ACout",
      TWILIO_AUTH_TOKEN: "twilio-secret",
      TWILIO_API_BASE_URL: apiUrl,
      TWILIO_STREAM_URL: STREAM_URL,
      ...extra,
    });
  }

  function placeCall(base: string, body: unknown, headers: Record<string, string> = bearer(TOKEN)) {
    return fetch(`${base}/v1/calls`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });
  }

  it("guards the call records with INGRESS_API_TOKEN when it is set", async () => {
    const guarded = await startIngress({ ...world.env(), INGRESS_API_TOKEN: TOKEN });
    try {
      const client = await startCall({}, guarded.wsUrl);
      const url = `${guarded.baseUrl}/v1/calls/${client.callSid}`;
      const none = await fetch(url);
      expect(none.status).toBe(401);
      expect(none.headers.get("www-authenticate")).toMatch(/^Bearer/);
      expect((await fetch(url, { headers: bearer("wrong-token-0123456789") })).status).toBe(401);
      const allowed = await fetch(url, { headers: bearer(TOKEN) });
      expect(allowed.status).toBe(200);
      expect(await allowed.json()).toMatchObject({ callSid: client.callSid, state: "live" });
      expect(await metricValue(guarded.baseUrl, "voicebot_ingress_api_unauthorized_total", { route: "get_record" })).toBe(2);
      client.sendStop();
      await client.closed;
    } finally {
      await guarded.handle.stop();
    }
  });

  it("refuses to place calls unless the token, the Twilio credentials and the stream URL are all set", async () => {
    // The shared ingress has none of them.
    const refused = await placeCall(world.ingress.baseUrl, { to: "+15550100001", from: "+15550100002" });
    expect(refused.status).toBe(503);
    expect((await refused.json()).error).toMatch(/INGRESS_API_TOKEN/);
  });

  it("with an Idempotency-Key, a repeated request gets the first one's answer instead of ringing the callee again", async () => {
    const api = await fakeTwilioApi((form) =>
      form.get("To") === "+15550109999"
        ? { status: 400, body: { code: 21211, message: "The 'To' number is not a valid phone number.", status: 400 } }
        : { status: 201, body: { sid: newCallSid(), status: "queued" } },
    );
    const outbound = await startPlacing(api.url);
    try {
      const key = { ...bearer(TOKEN), "idempotency-key": `order-${newCallSid()}` };
      const call = { to: "+15550100001", from: "+15550100002", agent: "pharmacy" };
      const first = await placeCall(outbound.baseUrl, call, key);
      expect(first.status).toBe(201);
      const placed = await first.json();
      const again = await placeCall(outbound.baseUrl, call, key);
      expect(again.status).toBe(201);
      expect(again.headers.get("idempotent-replayed")).toBe("true");
      expect(await again.json()).toEqual(placed);
      expect(api.requests).toHaveLength(1); // rung once
      // The same key with another request is refused; a request without a key is placed as before.
      const other = await placeCall(outbound.baseUrl, { ...call, to: "+15550100009" }, key);
      expect(other.status).toBe(422);
      expect((await other.json()).error).toMatch(/different request/);
      expect((await placeCall(outbound.baseUrl, call)).status).toBe(201);
      expect(api.requests).toHaveLength(2);
      // A call Twilio definitely did not place frees its key: the same request again is tried again, not answered
      // from memory.
      const badKey = { ...bearer(TOKEN), "idempotency-key": `bad-${newCallSid()}` };
      expect((await placeCall(outbound.baseUrl, { ...call, to: "+15550109999" }, badKey)).status).toBe(422);
      const retried = await placeCall(outbound.baseUrl, { ...call, to: "+15550109999" }, badKey);
      expect(retried.status).toBe(422);
      expect(retried.headers.get("idempotent-replayed")).toBeNull();
      expect(api.requests).toHaveLength(4);
      expect((await placeCall(outbound.baseUrl, call, { ...bearer(TOKEN), "idempotency-key": "no spaces allowed" })).status).toBe(400);
    } finally {
      await outbound.handle.stop();
      api.close();
    }
  });

  it("places a call through the Twilio API with TwiML that streams the answered call here, with its agent", async () => {
    const api = await fakeTwilioApi((form) => {
      switch (form.get("To")) {
        case "+15550109999":
          return { status: 400, body: { code: 21211, message: "The 'To' number +15550109999 is not a valid phone number.", status: 400 } };
        case "+15550109401":
          return { status: 401, body: { code: 20003, message: "Authenticate", status: 401 } };
        case "+15550109429":
          return { status: 429, body: { code: 20429, message: "Too Many Requests", status: 429 } };
        case "+15550109504":
          return { status: 201, body: { sid: newCallSid(), status: "queued" }, delayMs: 1_500 };
        default:
          return { status: 201, body: { sid: newCallSid(), status: "queued" } };
      }
    });
    const outbound = await startPlacing(api.url, { TWILIO_API_TIMEOUT_MS: "500" });
    try {
      const anonymous = await placeCall(outbound.baseUrl, { to: "+15550100001", from: "+15550100002" }, {});
      expect(anonymous.status).toBe(401);
      expect(await anonymous.text()).not.toMatch(/TWILIO/);
      for (const body of [
        { to: "5550100", from: "+15550100002" },
        { to: "+15550100001", from: "me" },
        { to: "+15550100001", from: "+15550100002", agent: "no spaces" },
        { to: "+15550100001", from: "+15550100002", parameters: { agent: "x" } },
        { to: "+15550100001", from: "+15550100002", parameters: { vbResume: "3" } },
        { to: "+15550100001", from: "+15550100002", parameters: { onMachine: "hangup" } },
        { to: "+15550100001", from: "+15550100002", ringTimeoutS: 1 },
        { to: "+15550100001", from: "+15550100002", statusCallback: "http://plain.example.com/status" },
        { to: "+15550100001", from: "+15550100002", statusCallback: "https://user:secret@hooks.example.com/status" },
        { to: "+15550100001", from: "+15550100002", parameters: Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`p${i}`, "&".repeat(400)])) },
        [],
      ]) {
        const bad = await placeCall(outbound.baseUrl, body);
        expect(bad.status, JSON.stringify(body)).toBe(400);
        expect((await bad.json()).error).toBeTruthy();
      }
      expect(api.requests).toHaveLength(0);

      const placed = await placeCall(outbound.baseUrl, {
        to: "+15550100001",
        from: "+15550100002",
        agent: "pharmacy",
        parameters: { campaign: "refill <7>" },
        ringTimeoutS: 25,
        statusCallback: "https://crm.example.com/calls/status",
      });
      expect(placed.status).toBe(201);
      const answer = await placed.json();
      expect(answer).toMatchObject({ status: "queued", agent: "pharmacy" });
      expect(api.requests).toHaveLength(1);
      const request = api.requests[0];
      expect(request.url).toBe("/2010-04-01/Accounts/ACout/Calls.json");
      expect(request.auth).toBe("Basic " + Buffer.from("ACout:twilio-secret").toString("base64"));
      expect(request.form.get("To")).toBe("+15550100001");
      expect(request.form.get("From")).toBe("+15550100002");
      expect(request.form.get("Timeout")).toBe("25");
      // Twilio reports to this platform, which passes each report on to the client's URL (next test).
      expect(request.form.get("StatusCallback")).toBe(`https://voice.example.com/twilio/status?relay=${encodeURIComponent("https://crm.example.com/calls/status")}`);
      expect(request.form.getAll("StatusCallbackEvent")).toEqual(["initiated", "ringing", "answered", "completed"]);
      const twiml = request.form.get("Twiml")!;
      expect(twiml).toBe(
        `<Response><Connect><Stream url="${STREAM_URL}"><Parameter name="campaign" value="refill &lt;7&gt;"/>` +
          `<Parameter name="from" value="+15550100002"/><Parameter name="to" value="+15550100001"/>` +
          `<Parameter name="agent" value="pharmacy"/><Parameter name="vbResumable" value="1"/></Stream></Connect>` +
          `<Redirect method="POST">https://voice.example.com/twilio/voice?vbResume=1&amp;agent=pharmacy</Redirect></Response>`,
      );

      const dialing = await (await fetch(`${outbound.baseUrl}/v1/calls/${answer.callSid}`, { headers: bearer(TOKEN) })).json();
      expect(dialing).toMatchObject({ callSid: answer.callSid, agent: "pharmacy", from: "+15550100002", to: "+15550100001", state: "dialing" });
      // Had the first stream failed to connect, Twilio's <Redirect> would start the call with its own parameters.
      const redirect = await fetch(`${outbound.baseUrl}/twilio/voice?vbResume=1&agent=pharmacy`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ CallSid: answer.callSid, AccountSid: "ACout" }).toString(),
      });
      expect(await redirect.text()).toContain(
        `<Parameter name="campaign" value="refill &lt;7&gt;"/><Parameter name="from" value="+15550100002"/><Parameter name="to" value="+15550100001"/>` +
          `<Parameter name="agent" value="pharmacy"/><Parameter name="vbResume" value="1"/>`,
      );

      // The callee answers: Twilio opens the stream with the TwiML's parameters as customParameters.
      const customParameters = Object.fromEntries([...twiml.matchAll(/<Parameter name="([^"]+)" value="([^"]+)"\/>/g)].map((m) => [m[1], m[2].replace("&lt;", "<").replace("&gt;", ">")]));
      const client = await TwilioClient.connect(outbound.wsUrl, answer.callSid);
      client.sendConnected();
      client.sendStart(customParameters);
      await waitFor(() => inputsFor(answer.callSid).some((i) => i.input?.$case === "callStarted"), { what: "DialogInput callStarted" });
      expect(inputsFor(answer.callSid).find((i) => i.input?.$case === "callStarted")!.input?.value).toMatchObject({ callId: answer.callSid, agent: "pharmacy" });
      const record = await (await fetch(`${outbound.baseUrl}/v1/calls/${answer.callSid}`, { headers: bearer(TOKEN) })).json();
      expect(record).toMatchObject({ callSid: answer.callSid, agent: "pharmacy", from: "+15550100002", to: "+15550100001", state: "live" });
      client.sendStop();
      await client.closed;

      const invalidNumber = await placeCall(outbound.baseUrl, { to: "+15550109999", from: "+15550100002" });
      expect(invalidNumber.status).toBe(422);
      expect((await invalidNumber.json()).error).toBe("Twilio API answered 400: The 'To' number +15550109999 is not a valid phone number. (code 21211)");
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_outbound_calls_total", { outcome: "placed" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_outbound_calls_total", { outcome: "invalid" })).toBe(11);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_outbound_calls_total", { outcome: "refused" })).toBe(1);

      // Twilio refusing this platform (credentials), rate-limiting it, and answering too late (the call may exist).
      const credentials = await placeCall(outbound.baseUrl, { to: "+15550109401", from: "+15550100002" });
      expect(credentials.status).toBe(502);
      expect((await credentials.json()).error).toBe("Twilio API answered 401: Authenticate (code 20003)");
      expect((await placeCall(outbound.baseUrl, { to: "+15550109429", from: "+15550100002" })).status).toBe(503);
      const late = await placeCall(outbound.baseUrl, { to: "+15550109504", from: "+15550100002" });
      expect(late.status).toBe(504);
      expect((await late.json()).error).toBe(
        "Twilio API did not answer (no answer within 500 ms); the request may have taken effect; check Twilio's call log before placing it again",
      );
      for (const outcome of ["twilio_error", "rate_limited", "unknown"]) {
        expect(await metricValue(outbound.baseUrl, "voicebot_ingress_outbound_calls_total", { outcome }), outcome).toBe(1);
      }

      api.close();
      const unreachable = await placeCall(outbound.baseUrl, { to: "+15550100001", from: "+15550100002" });
      expect(unreachable.status).toBe(502);
      expect((await unreachable.json()).error).toMatch(/^Twilio API unreachable/);
      expect(JSON.stringify(logs)).not.toContain("twilio-secret");
      expect(JSON.stringify(logs)).not.toContain(TOKEN);
    } finally {
      await outbound.handle.stop();
      api.close();
    }
  });

  it("places a call with answering machine detection and acts on the verdict: the voicemail message, a hang-up, or nothing for a person", async () => {
    const api = await fakeTwilioApi(() => ({ status: 201, body: { sid: newCallSid(), status: "queued" } }));
    const outbound = await startPlacing(api.url);
    const sign = (url: string, form: URLSearchParams) => createHmac("sha1", "twilio-secret").update(signedPayload(url, form)).digest("base64");
    /** Places a call with `onMachine`; the AMD callback URL Twilio was given. */
    const placed = async (onMachine: string) => {
      const response = await placeCall(outbound.baseUrl, { to: "+15550100001", from: "+15550100002", onMachine });
      expect(response.status).toBe(201);
      const { callSid } = (await response.json()) as { callSid: string };
      const form = api.requests.at(-1)!.form;
      return { callSid, form, amdUrl: form.get("AsyncAmdStatusCallback")! };
    };
    /** The callee answers: Twilio starts the stream with the TwiML's parameters as customParameters. */
    const startStream = async (call: Awaited<ReturnType<typeof placed>>) => {
      const customParameters = Object.fromEntries([...call.form.get("Twiml")!.matchAll(/<Parameter name="([^"]+)" value="([^"]+)"\/>/g)].map((m) => [m[1], m[2]]));
      expect(customParameters.onMachine).toBe(call.amdUrl.split("onMachine=")[1]);
      const client = await TwilioClient.connect(outbound.wsUrl, call.callSid);
      client.sendConnected();
      client.sendStart(customParameters);
      await waitFor(() => inputsFor(call.callSid).some((i) => i.input?.$case === "callStarted"), { what: "DialogInput callStarted" });
      client.echoMarks(0);
      return { ...call, client };
    };
    const answered = async (onMachine: string) => startStream(await placed(onMachine));
    const verdict = (amdUrl: string, callSid: string, answeredBy: string, signature?: string) => {
      const form = new URLSearchParams({ AccountSid: "ACout", CallSid: callSid, AnsweredBy: answeredBy, MachineDetectionDuration: "4100" });
      return fetch(`${outbound.baseUrl}/twilio/amd${new URL(amdUrl).search}`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature ?? sign(amdUrl, form) },
        body: form.toString(),
      });
    };
    const record = async (callSid: string) => (await fetch(`${outbound.baseUrl}/v1/calls/${callSid}`, { headers: bearer(TOKEN) })).json();
    try {
      const bad = await placeCall(outbound.baseUrl, { to: "+15550100001", from: "+15550100002", onMachine: "beep" });
      expect(bad.status).toBe(400);
      expect((await bad.json()).error).toMatch(/onMachine/);

      // Voicemail: Twilio waits for the end of the machine's greeting (the beep) and reports here.
      const machine = await answered("voicemail");
      expect(machine.form.get("MachineDetection")).toBe("DetectMessageEnd");
      expect(machine.form.get("AsyncAmd")).toBe("true");
      expect(machine.amdUrl).toBe("https://voice.example.com/twilio/amd?onMachine=voicemail");
      expect(machine.form.get("AsyncAmdStatusCallbackMethod")).toBe("POST");
      // The agent greets the machine meanwhile (3 s of audio).
      botAudio(machine.callSid, "t1", 0, 0, frames(150, 0x55), { chunkDone: true, turnDone: true, text: "Hello, this is the demo shop." });
      await waitFor(() => machine.client.events("media").length > 5, { what: "the greeting playing" });
      expect((await verdict(machine.amdUrl, machine.callSid, "machine_end_beep", "bm90LWEtc2lnbmF0dXJl")).status).toBe(403);
      expect((await verdict(machine.amdUrl, machine.callSid, "robot")).status).toBe(400);
      expect(inputsFor(machine.callSid).some((i) => i.input?.$case === "answeredBy")).toBe(false);
      expect((await verdict(machine.amdUrl, machine.callSid, "machine_end_beep")).status).toBe(204);
      // The greeting is cut off, and the dialog is asked to leave the message.
      await waitFor(() => machine.client.events("clear").length > 0, { what: "the greeting cut off" });
      const input = await waitFor(() => inputsFor(machine.callSid).find((i) => i.input?.$case === "answeredBy"), { what: "DialogInput answeredBy" });
      expect(input.inputId).toBe(`${machine.callSid}:amd`);
      expect(input.input?.$case === "answeredBy" && input.input.value).toMatchObject({ answeredBy: "machine_end_beep", onMachine: "voicemail", detectionMs: 4100 });
      expect(await record(machine.callSid)).toMatchObject({ state: "live", answeredBy: "machine_end_beep" });

      // Hang up on machines: Twilio's quick verdict ends the call at once.
      const quick = await answered("hangup");
      expect(quick.form.get("MachineDetection")).toBe("Enable");
      expect(quick.amdUrl).toBe("https://voice.example.com/twilio/amd?onMachine=hangup");
      expect((await verdict(quick.amdUrl, quick.callSid, "machine_start")).status).toBe(204);
      await quick.client.closed;
      await waitFor(async () => (await record(quick.callSid)).state === "ended", { what: "the machine's call ended" });
      expect(await record(quick.callSid)).toMatchObject({ endReason: "bot_hangup", answeredBy: "machine_start" });
      expect(inputsFor(quick.callSid).some((i) => i.input?.$case === "answeredBy")).toBe(false);

      // A person: only the record says so.
      const person = await answered("voicemail");
      botAudio(person.callSid, "t1", 0, 0, frames(100, 0x55), { chunkDone: true, turnDone: true, text: "Hello." });
      expect((await verdict(person.amdUrl, person.callSid, "human")).status).toBe(204);
      expect(await record(person.callSid)).toMatchObject({ state: "live", answeredBy: "human" });
      await waitFor(() => person.client.events("mark").length > 0, { what: "the greeting played out" });
      expect(person.client.events("clear")).toEqual([]);
      expect(inputsFor(person.callSid).some((i) => i.input?.$case === "answeredBy")).toBe(false);

      // A verdict before the stream started (its connection was slow): recorded, then acted on as the stream starts.
      const early = await placed("voicemail");
      expect((await verdict(early.amdUrl, early.callSid, "machine_end_silence")).status).toBe(204);
      expect(await record(early.callSid)).toMatchObject({ state: "dialing", answeredBy: "machine_end_silence" });
      expect(inputsFor(early.callSid)).toEqual([]);
      const late = await startStream(early);
      await waitFor(() => late.client.events("clear").length > 0, { what: "the greeting cut off as the stream starts" });
      await waitFor(() => inputsFor(early.callSid).length === 2, { what: "the voicemail input queued after the start" });
      expect(inputsFor(early.callSid).map((i) => i.inputId)).toEqual([`${early.callSid}:start`, `${early.callSid}:amd`]);
      // Twilio's detection time is kept with the verdict for the stream to pass on.
      const earlyInput = inputsFor(early.callSid)[1];
      expect(earlyInput.input?.$case === "answeredBy" && earlyInput.input.value).toMatchObject({ answeredBy: "machine_end_silence", detectionMs: 4100 });
      const quickEarly = await placed("hangup");
      expect((await verdict(quickEarly.amdUrl, quickEarly.callSid, "fax")).status).toBe(204);
      const faxed = await startStream(quickEarly);
      await faxed.client.closed;
      await waitFor(async () => (await record(quickEarly.callSid)).state === "ended", { what: "the fax's call ended" });
      expect(await record(quickEarly.callSid)).toMatchObject({ endReason: "bot_hangup", answeredBy: "fax" });

      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_verdicts_total", { answered_by: "machine_end_beep", outcome: "voicemail" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_verdicts_total", { answered_by: "machine_end_silence", outcome: "before_stream" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_verdicts_total", { answered_by: "fax", outcome: "before_stream" })).toBe(1);
      // A verdict is counted once, when it comes; what the stream did with an early one is counted apart.
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_verdicts_total", { answered_by: "machine_end_silence" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_verdicts_total", { answered_by: "fax" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_actions_at_stream_start_total", { answered_by: "machine_end_silence", outcome: "voicemail" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_actions_at_stream_start_total", { answered_by: "fax", outcome: "hung_up" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_verdicts_total", { answered_by: "machine_start", outcome: "hung_up" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_verdicts_total", { answered_by: "human", outcome: "recorded" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_verdicts_total", { outcome: "bad_signature" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_amd_verdicts_total", { outcome: "invalid" })).toBe(1);
      for (const call of [machine, person, late]) {
        call.client.sendStop();
        await call.client.closed;
      }
    } finally {
      await outbound.handle.stop();
      api.close();
    }
  });

  it("records a placed call that was never answered, and passes each status report on to the client's URL, signed for it", async () => {
    const certificate = await ensureTestCertificate();
    trustTestCertificateInProcess(certificate);
    const relayed: Array<{ url: string; signature: string; form: URLSearchParams }> = [];
    const crm = https.createServer({ cert: certificate.cert, key: certificate.key }, (req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        relayed.push({ url: req.url!, signature: String(req.headers["x-twilio-signature"]), form: new URLSearchParams(body) });
        // A client URL that sends the report on elsewhere (an internal address, say): not followed.
        if (req.url!.startsWith("/moved")) res.writeHead(307, { location: "/calls/stolen" }).end();
        else res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => crm.listen(0, "127.0.0.1", resolve));
    const api = await fakeTwilioApi(() => ({ status: 201, body: { sid: newCallSid(), status: "queued" } }));
    // The client's server is on loopback here: allowed by its setting (see the next test for the default).
    const outbound = await startPlacing(api.url, { STATUS_CALLBACK_ALLOW_PRIVATE: "true" });
    try {
      const crmOrigin = `https://127.0.0.1:${(crm.address() as { port: number }).port}`;
      // As a client may write it: the report is requested, and signed, as fetch sends it (the space as %20).
      const crmUrl = `${crmOrigin}/calls/status?tenant=7&team=a b`;
      const requested = `${crmOrigin}/calls/status?tenant=7&team=a%20b`;
      const placed = await placeCall(outbound.baseUrl, { to: "+15550100001", from: "+15550100002", agent: "pharmacy", statusCallback: crmUrl });
      const { callSid } = await placed.json();
      const statusUrl = api.requests[0].form.get("StatusCallback")!;
      expect(statusUrl).toBe(`https://voice.example.com/twilio/status?relay=${encodeURIComponent(requested)}`);

      const sign = (url: string, form: URLSearchParams) => createHmac("sha1", "twilio-secret").update(signedPayload(url, form)).digest("base64");
      const report = (fields: Record<string, string>, signature?: string) => {
        const form = new URLSearchParams({ AccountSid: "ACout", CallSid: callSid, From: "+15550100002", To: "+15550100001", Direction: "outbound-api", ...fields });
        return fetch(`${outbound.baseUrl}/twilio/status${new URL(statusUrl).search}`, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature ?? sign(statusUrl, form) },
          body: form.toString(),
        });
      };
      const record = async () => (await fetch(`${outbound.baseUrl}/v1/calls/${callSid}`, { headers: bearer(TOKEN) })).json();

      expect((await report({ CallStatus: "ringing", SequenceNumber: "1" })).status).toBe(204);
      expect(await record()).toMatchObject({ state: "dialing", agent: "pharmacy" });
      expect((await report({ CallStatus: "no-answer", SequenceNumber: "2", CallDuration: "0" })).status).toBe(204);
      expect(await record()).toMatchObject({ callSid, state: "ended", endReason: "no-answer", agent: "pharmacy", from: "+15550100002", to: "+15550100001" });

      // Forged or malformed reports change nothing and are not passed on.
      expect((await report({ CallStatus: "completed" }, "bm90LWEtc2lnbmF0dXJl")).status).toBe(403);
      // Its log line names the URLs tried without their query: the relay holds the client's URL and its query.
      const refusal = await waitFor(() => logs.find((l) => l.msg === "status callback refused: bad X-Twilio-Signature"), { what: "the refusal logged" });
      expect(JSON.stringify(refusal)).not.toContain("tenant");
      expect((await report({ CallStatus: "exploded" })).status).toBe(400);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_status_callbacks_total", { outcome: "ended_unanswered" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_status_callbacks_total", { outcome: "reported" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_status_callbacks_total", { outcome: "bad_signature" })).toBe(1);
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_status_callbacks_total", { outcome: "invalid" })).toBe(1);

      // The client got both real reports, with Twilio's fields and a signature its own Twilio validator accepts.
      await waitFor(() => relayed.length === 2, { what: "both reports passed on" });
      expect(relayed.map((r) => r.form.get("CallStatus"))).toEqual(["ringing", "no-answer"]);
      for (const { url, signature, form } of relayed) {
        expect(url).toBe("/calls/status?tenant=7&team=a%20b");
        expect(signature).toBe(sign(requested, form));
      }
      expect(await metricValue(outbound.baseUrl, "voicebot_ingress_status_relays_total", { outcome: "ok" })).toBe(2);

      // A client URL that redirects: the report is not sent on to where it points.
      const moved = await (await placeCall(outbound.baseUrl, { to: "+15550100001", from: "+15550100002", statusCallback: `${crmOrigin}/moved` })).json();
      const movedStatusUrl = api.requests[1].form.get("StatusCallback")!;
      const movedForm = new URLSearchParams({ AccountSid: "ACout", CallSid: moved.callSid, From: "+15550100002", To: "+15550100001", CallStatus: "ringing" });
      const movedReport = await fetch(`${outbound.baseUrl}/twilio/status${new URL(movedStatusUrl).search}`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": sign(movedStatusUrl, movedForm) },
        body: movedForm.toString(),
      });
      expect(movedReport.status).toBe(204);
      await waitFor(async () => (await metricValue(outbound.baseUrl, "voicebot_ingress_status_relays_total", { outcome: "failed" })) === 1, { what: "the relay to fail" });
      expect(relayed.map((r) => r.url)).toEqual(["/calls/status?tenant=7&team=a%20b", "/calls/status?tenant=7&team=a%20b", "/moved"]);
    } finally {
      await outbound.handle.stop();
      api.close();
      crm.close();
    }
  });

  it("refuses a statusCallback on a private address, at placing when it is one and at relaying when its name resolves to one", async () => {
    const api = await fakeTwilioApi(() => ({ status: 201, body: { sid: newCallSid(), status: "queued" } }));
    const outbound = await startPlacing(api.url);
    try {
      const call = { to: "+15550100001", from: "+15550100002" };
      for (const url of [
        "https://127.0.0.1/status",
        "https://0x7f.1/status", // 127.0.0.1 as a URL parser reads it
        "https://[::1]/status",
        "https://[::ffff:10.0.0.7]/status",
        "https://10.0.0.7/status",
        "https://172.20.1.1/status",
        "https://192.168.1.1/status",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/status",
        "https://[fd00::1]/status",
        "https://[fe80::1]/status",
        "https://localhost/status",
        "https://LOCALHOST./status",
        "https://crm.localhost/status",
      ]) {
        const refused = await placeCall(outbound.baseUrl, { ...call, statusCallback: url });
        expect({ url, status: refused.status }).toEqual({ url, status: 400 });
        expect((await refused.json()).error).toMatch(/^statusCallback must be on a public address \(.+\); STATUS_CALLBACK_ALLOW_PRIVATE=true allows private ones$/);
      }
      expect(api.requests).toHaveLength(0);

      // A name is judged on the addresses it resolves to when the report is passed on (they may change after placing):
      // here a name inside the cluster, which the resolver (DNS is the edge: stubbed for this one name) says is
      // on this machine and on the pod network.
      const ownName = "crm.internal.test";
      const realLookup = dns.lookup;
      const lookup = vi.spyOn(dns, "lookup").mockImplementation(((hostname: string, options: unknown, callback: (...args: unknown[]) => void) => {
        if (hostname !== ownName) return (realLookup as (...args: unknown[]) => void)(hostname, options, callback);
        const addresses = [{ address: "127.0.0.1", family: 4 }, { address: "10.0.0.5", family: 4 }];
        if ((options as { all?: boolean }).all) callback(null, addresses);
        else callback(null, addresses[0].address, addresses[0].family);
      }) as typeof dns.lookup);
      onTestFinished(() => lookup.mockRestore());
      let internalHits = 0;
      const { cert, key } = await ensureTestCertificate();
      const internal = https.createServer({ cert, key }, (_req, res) => {
        internalHits++;
        res.writeHead(204).end();
      });
      await new Promise<void>((resolve) => internal.listen(0, "0.0.0.0", resolve));
      try {
        const port = (internal.address() as { port: number }).port;
        const placed = await placeCall(outbound.baseUrl, { ...call, statusCallback: `https://${ownName}:${port}/status?key=crm-secret` });
        expect(placed.status).toBe(201);
        const { callSid } = await placed.json();
        const statusUrl = api.requests[0].form.get("StatusCallback")!;
        const form = new URLSearchParams({ AccountSid: "ACout", CallSid: callSid, From: "+15550100002", To: "+15550100001", CallStatus: "ringing" });
        const signature = createHmac("sha1", "twilio-secret").update(signedPayload(statusUrl, form)).digest("base64");
        const report = await fetch(`${outbound.baseUrl}/twilio/status${new URL(statusUrl).search}`, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature },
          body: form.toString(),
        });
        expect(report.status).toBe(204); // Twilio's report is taken; only passing it on is refused
        await waitFor(async () => (await metricValue(outbound.baseUrl, "voicebot_ingress_status_relays_total", { outcome: "refused" })) === 1, { what: "the relay refused" });
        const refusal = logs.findLast((l) => String(l.msg).startsWith("statusCallback refused: not a public address"));
        expect(refusal).toMatchObject({ callId: callSid, url: `https://${ownName}:${port}/status`, error: `${ownName} resolves to no public address` });
        expect(JSON.stringify(refusal)).not.toContain("crm-secret");
        expect(internalHits).toBe(0);
      } finally {
        internal.close();
      }
    } finally {
      await outbound.handle.stop();
      api.close();
    }
  });
});

describe("voice webhook", () => {
  const form = { CallSid: "CA0123456789abcdef0123456789abcdef", AccountSid: "ACtest", From: "+15550100003", To: "+15550100004", Direction: "inbound" };
  const post = (base: string, path: string, body: Record<string, string>, headers: Record<string, string> = {}) =>
    fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded", ...headers }, body: new URLSearchParams(body).toString() });

  it("answers a number's voice webhook with TwiML that streams the call here, with From, To and the URL's agent", async () => {
    const res = await post(world.ingress.baseUrl, "/twilio/voice?agent=pharmacy", form);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/xml/);
    const host = new URL(world.ingress.baseUrl).host;
    expect(await res.text()).toBe(
      `<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://${host}/twilio">` +
        `<Parameter name="from" value="+15550100003"/><Parameter name="to" value="+15550100004"/><Parameter name="agent" value="pharmacy"/>` +
        `<Parameter name="vbResumable" value="1"/></Stream></Connect>` +
        `<Redirect method="POST">https://${host}/twilio/voice?vbResume=1&amp;agent=pharmacy</Redirect></Response>`,
    );
    expect((await post(world.ingress.baseUrl, "/twilio/voice?agent=no%20spaces", form)).status).toBe(400);
    const huge = await post(world.ingress.baseUrl, "/twilio/voice", { ...form, Junk: "x".repeat(100_000) });
    expect(huge.status).toBe(413);
    expect(huge.headers.get("connection")).toBe("close");
  });

  it("a stream that closed without stop comes back through the redirect: a live call is resumed on a new stream, an ended one hung up", async () => {
    const store = CallStore.connect(world.redis.url);
    try {
      const host = new URL(world.ingress.baseUrl).host;
      const callSid = "CAresume0123456789abcdef0123456789";
      const startedAt = new Date(Date.now() - 61_000);
      await store.createCall({ callSid, provider: "twilio", streamSid: "MZold", agent: "pharmacy", from: "+15550100003", to: "+15550100004", startedAt: startedAt.toISOString() });
      const resumed = await post(world.ingress.baseUrl, "/twilio/voice?vbResume=2&agent=pharmacy", { ...form, CallSid: callSid });
      // The new stream learns when the call started, to number its caller frames on from the call's first.
      expect(await resumed.text()).toBe(
        `<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://${host}/twilio">` +
          `<Parameter name="from" value="+15550100003"/><Parameter name="to" value="+15550100004"/><Parameter name="agent" value="pharmacy"/>` +
          `<Parameter name="vbResume" value="2"/><Parameter name="vbStartedAt" value="${startedAt.getTime()}"/><Parameter name="vbResumable" value="1"/></Stream></Connect>` +
          `<Redirect method="POST">https://${host}/twilio/voice?vbResume=3&amp;agent=pharmacy</Redirect></Response>`,
      );
      // Resumed too often (a stream that fails at once every time): hung up rather than looped.
      expect(await (await post(world.ingress.baseUrl, "/twilio/voice?vbResume=6", { ...form, CallSid: callSid })).text()).toContain("<Response><Hangup/></Response>");
      // The bot hung up (the record says ended before the stream closes): the redirect hangs up.
      await store.endCall(callSid, "bot_hangup");
      expect(await (await post(world.ingress.baseUrl, "/twilio/voice?vbResume=1", { ...form, CallSid: callSid })).text()).toContain("<Response><Hangup/></Response>");
      // No record at all (Redis lost it, or no stream of the call ever started): the call starts over on a fresh
      // stream, still counting, so a stream that is refused every time ends in a hang-up, not an endless loop.
      const unknown = "CAunknown0123456789abcdef012345678";
      const fresh = await (await post(world.ingress.baseUrl, "/twilio/voice?vbResume=1", { ...form, CallSid: unknown })).text();
      expect(fresh).toContain('<Parameter name="vbResumable" value="1"/>');
      expect(fresh).not.toContain('name="vbResume"');
      expect(fresh).toContain(`<Redirect method="POST">https://${host}/twilio/voice?vbResume=2</Redirect>`);
      expect(await (await post(world.ingress.baseUrl, "/twilio/voice?vbResume=6", { ...form, CallSid: unknown })).text()).toContain("<Response><Hangup/></Response>");
      expect((await post(world.ingress.baseUrl, "/twilio/voice?vbResume=x", form)).status).toBe(400);
      expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_voice_webhooks_total", { outcome: "resumed" })).toBe(1);
      expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_voice_webhooks_total", { outcome: "resume_ended" })).toBe(1);
      expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_voice_webhooks_total", { outcome: "resume_limit" })).toBe(2);
    } finally {
      await store.close();
    }
  });

  /** A POST with its own Host header (fetch will not send another Host: node:http does). */
  const postWithHost = (base: string, path: string, host: string, body: Record<string, string>) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = http.request(`${base}${path}`, { method: "POST", headers: { host, "content-type": "application/x-www-form-urlencoded" } }, (res) => {
        let text = "";
        res.on("data", (d) => (text += d));
        res.on("end", () => resolve({ status: res.statusCode!, text }));
      });
      req.on("error", reject);
      req.end(new URLSearchParams(body).toString());
    });

  it("refuses a Host that is no plain host[:port] with 400, and names one normalised host in both the stream URL and the redirect", async () => {
    const failedBefore = await metricValue(world.ingress.baseUrl, "voicebot_http_rejected_total", { reason: "handler_failed" });
    for (const host of ["a<b>&c", 'evil.com"><x', "a b", "evil.com:99999", "evil.com/x?y#", "ev%41l.com", "evil.com\\x", "user@evil.com"]) {
      const res = await postWithHost(world.ingress.baseUrl, "/twilio/voice", host, form);
      expect(res.status, JSON.stringify(host)).toBe(400);
      expect(JSON.parse(res.text).error, JSON.stringify(host)).toMatch(/Host header/);
    }
    // node:http puts its own Host in place of an empty one: this one goes out by hand.
    const emptyHost = await new Promise<string>((resolve, reject) => {
      const body = new URLSearchParams(form).toString();
      const socket = net.connect(Number(new URL(world.ingress.baseUrl).port), "127.0.0.1");
      let answer = "";
      socket.on("data", (d) => (answer += d));
      socket.on("end", () => resolve(answer));
      socket.on("error", reject);
      socket.end(`POST /twilio/voice HTTP/1.1\r\nHost:\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    });
    expect(emptyHost).toMatch(/^HTTP\/1\.1 400 /);
    expect(emptyHost).toContain("Host header");
    expect(await metricValue(world.ingress.baseUrl, "voicebot_http_rejected_total", { reason: "handler_failed" })).toBe(failedBefore);
    const upper = await postWithHost(world.ingress.baseUrl, "/twilio/voice", "Voice.Example.COM:443", form);
    expect(upper.status).toBe(200);
    expect(upper.text).toContain('<Stream url="wss://voice.example.com/twilio">');
    expect(upper.text).toContain('<Redirect method="POST">https://voice.example.com/twilio/voice?vbResume=1</Redirect>');
    const ipv6 = await postWithHost(world.ingress.baseUrl, "/twilio/voice", "[::1]:8443", form);
    expect(ipv6.text).toContain('<Stream url="wss://[::1]:8443/twilio">');
    expect(ipv6.text).toContain('<Redirect method="POST">https://[::1]:8443/twilio/voice?vbResume=1</Redirect>');
  });

  it("refuses a resume with a malformed CallSid before looking it up, and samples the log of resumes of unknown calls", async () => {
    for (const callSid of ["", "CA" + "x".repeat(60_000), "CA../../etc", "CA 1"]) {
      const res = await post(world.ingress.baseUrl, "/twilio/voice?vbResume=1", { ...form, CallSid: callSid });
      expect(res.status, callSid.slice(0, 20)).toBe(400);
      expect((await res.json()).error).toMatch(/CallSid/);
    }
    expect(JSON.stringify(logs)).not.toContain("x".repeat(1_000));
    const noRecord = () => logs.filter((l) => l.msg === "resume: no record of the call; starting it over").length;
    const before = noRecord();
    for (let i = 0; i < 20; i++) {
      const res = await post(world.ingress.baseUrl, "/twilio/voice?vbResume=1", { ...form, CallSid: newCallSid() });
      expect(res.status).toBe(200); // each call still starts over; only its log line is sampled
    }
    expect(noRecord() - before).toBeLessThanOrEqual(1);
  });

  it("leaves characters XML cannot carry out of the TwiML", async () => {
    const res = await post(world.ingress.baseUrl, "/twilio/voice", { ...form, From: "+1555\u0000\u0001\u000b0100\u001f003", To: "+1555\ufffe0100\uffff004\u00e9\u{1f600}" });
    expect(res.status).toBe(200);
    const twiml = await res.text();
    expect(twiml).toContain('<Parameter name="from" value="+15550100003"/>');
    expect(twiml).toContain('<Parameter name="to" value="+15550100004\u00e9\u{1f600}"/>'); // real characters stay, pairs too
    expect(twiml).not.toMatch(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/);
  });

  it("checks X-Twilio-Signature over the URL and the sorted form fields when asked to", async () => {
    const signed = await startIngress({ ...world.env(), TWILIO_VALIDATE_SIGNATURE: "true", TWILIO_AUTH_TOKEN: "tok", TWILIO_STREAM_URL: "wss://voice.example.com/twilio" });
    try {
      // Twilio's algorithm, written out: the URL it requested, then name+value of each field in name order.
      const url = "https://voice.example.com/twilio/voice?agent=pharmacy";
      const payload = url + Object.keys(form).sort().map((name) => name + form[name as keyof typeof form]).join("");
      const signature = createHmac("sha1", "tok").update(payload).digest("base64");
      const good = await post(signed.baseUrl, "/twilio/voice?agent=pharmacy", form, { "x-twilio-signature": signature });
      expect(good.status).toBe(200);
      expect(await good.text()).toContain('<Stream url="wss://voice.example.com/twilio">');
      const logged = logs.length;
      expect((await post(signed.baseUrl, "/twilio/voice?agent=pharmacy", form)).status).toBe(403);
      expect((await post(signed.baseUrl, "/twilio/voice?agent=pharmacy", { ...form, From: "+15550100009" }, { "x-twilio-signature": signature })).status).toBe(403);
      expect((await post(signed.baseUrl, "/twilio/voice?agent=support", form, { "x-twilio-signature": signature })).status).toBe(403);
      // Anyone can send these: counted each, logged at most once a second.
      expect(logs.slice(logged).filter((l) => l.msg === "voice webhook refused: bad X-Twilio-Signature")).toHaveLength(1);
      // The webhook may have its own public name (not the stream's), and the number's URL may spell out :443.
      const sign = (signedUrl: string) =>
        createHmac("sha1", "tok").update(signedUrl + Object.keys(form).sort().map((name) => name + form[name as keyof typeof form]).join("")).digest("base64");
      // (fetch will not send another Host: node:http does)
      const ownHostStatus = await new Promise<number>((resolve, reject) => {
        const body = new URLSearchParams(form).toString();
        const headers = { host: "hooks.example.com", "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": sign("https://hooks.example.com/twilio/voice") };
        const req = http.request(`${signed.baseUrl}/twilio/voice`, { method: "POST", headers }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        });
        req.on("error", reject);
        req.end(body);
      });
      expect(ownHostStatus).toBe(200);
      const withPort = await post(signed.baseUrl, "/twilio/voice", form, { "x-twilio-signature": sign("https://voice.example.com:443/twilio/voice") });
      expect(withPort.status).toBe(200);
      expect(await metricValue(signed.baseUrl, "voicebot_ingress_voice_webhooks_total", { outcome: "bad_signature" })).toBe(3);
      expect(await metricValue(signed.baseUrl, "voicebot_ingress_voice_webhooks_total", { outcome: "answered" })).toBe(3);
    } finally {
      await signed.handle.stop();
    }
  });
});

describe("streams that stop without ending their call", () => {
  const ended = (callSid: string) => inputsFor(callSid).some((i) => i.input?.$case === "callEnded");

  it("a resumable stream that closes without stop leaves the call live; the stream that resumes it goes on from the call's clock", async () => {
    const first = await startCall({ vbResumable: "1", agent: "pharmacy" });
    const callSid = first.callSid;
    const record = await waitFor(async () => ((await getRecord(callSid)).body.state === "live" ? true : undefined), { what: "live record" });
    expect(record).toBe(true);
    first.close(); // no stop: Twilio's side went away
    await first.closed;
    await waitFor(async () => (await metricValue(world.ingress.baseUrl, "voicebot_ingress_detached_streams_total")) >= 1, { what: "the stream left" });
    await new Promise((r) => setTimeout(r, 300));
    expect(ended(callSid)).toBe(false);
    expect((await getRecord(callSid)).body.state).toBe("live");

    await new Promise((r) => setTimeout(r, 500)); // the gap: the caller's frames of it are gone
    const audio = collect(world.bus, subjects.callerAudio(callSid), CallerAudio);
    const second = await TwilioClient.connect(world.ingress.wsUrl, callSid);
    second.sendConnected();
    second.sendStart({ vbResumable: "1", vbResume: "1", agent: "pharmacy" });
    await waitFor(async () => (await metricValue(world.ingress.baseUrl, "voicebot_ingress_resumes_total", { outcome: "resumed" })) >= 1, { what: "resumed" });
    second.sendMedia(1, frames(1, 0x7f));
    const [frame] = await waitFor(() => (audio.items.length > 0 ? audio.items : undefined), { what: "caller audio" });
    // Chunk 1 of the new stream is not frame 0 of the call: at least the first stream's time and the gap have passed.
    expect(frame.firstFrame).toBeGreaterThanOrEqual(800 / 20);
    expect(inputsFor(callSid).filter((i) => i.input?.$case === "callStarted")).toHaveLength(1); // no second greeting
    second.sendStop();
    await second.closed;
    await waitFor(() => ended(callSid), { what: "the end once the caller hung up" });
    audio.sub.unsubscribe();
  });

  it("a resumed stream's frames sent with its start, as Twilio does, go on from the call's clock: from the webhook's start time, or held for the record", async () => {
    const first = await startCall({ vbResumable: "1" });
    const callSid = first.callSid;
    await waitFor(async () => ((await getRecord(callSid)).body.state === "live" ? true : undefined), { what: "live record" });
    const startedAtMs = Date.parse((await getRecord(callSid)).body.startedAt as string);
    first.close();
    await first.closed;
    await new Promise((r) => setTimeout(r, 600));
    const audio = collect(world.bus, subjects.callerAudio(callSid), CallerAudio);
    // Twilio sends start and the first media at once: nothing waits for this replica's record look-up.
    const resumeWith = async (resume: string, extra: Record<string, string>) => {
      const stream = await TwilioClient.connect(world.ingress.wsUrl, callSid);
      stream.sendConnected();
      stream.sendStart({ vbResumable: "1", vbResume: resume, ...extra });
      for (let chunk = 1; chunk <= 5; chunk++) stream.sendMedia(chunk, frames(1, 0x7f));
      const at = audio.items.length;
      await waitFor(() => (audio.items.slice(at).reduce((n, m) => n + m.frameCount, 0) >= 5 ? true : undefined), { what: `resume ${resume}'s 5 frames` });
      const firstFrames = audio.items.slice(at).map((m) => m.firstFrame);
      stream.close();
      await stream.closed;
      return firstFrames;
    };
    // Without the webhook's parameter the frames wait for the record (numbered from 0 they were taken for repeats).
    const held = await resumeWith("1", {});
    expect(Math.min(...held)).toBeGreaterThanOrEqual(600 / 20);
    // The webhook's start time is used at once (here a minute before the record's, to tell the two apart).
    const named = await resumeWith("2", { vbStartedAt: String(startedAtMs - 60_000) });
    expect(Math.min(...named)).toBeGreaterThanOrEqual(60_000 / 20);
    const ender = await TwilioClient.connect(world.ingress.wsUrl, callSid);
    ender.sendConnected();
    ender.sendStart({ vbResumable: "1", vbResume: "3" });
    ender.sendStop();
    await ender.closed;
    await waitFor(() => ended(callSid), { what: "the end once the caller hung up" });
    audio.sub.unsubscribe();
  });

  it("a resume that reaches the replica still holding the call's old stream (a socket it never saw close) takes the call over", async () => {
    const resumesBefore = await metricValue(world.ingress.baseUrl, "voicebot_ingress_resumes_total", { outcome: "resumed" });
    const old = await startCall({ vbResumable: "1" });
    const resumed = await TwilioClient.connect(world.ingress.wsUrl, old.callSid);
    resumed.sendConnected();
    resumed.sendStart({ vbResumable: "1", vbResume: "1" });
    expect(await old.closed).toMatchObject({ code: 1000, reason: "superseded" });
    await waitFor(async () => (await metricValue(world.ingress.baseUrl, "voicebot_ingress_resumes_total", { outcome: "resumed" })) > resumesBefore, { what: "resumed" });
    expect(ended(old.callSid)).toBe(false);
    resumed.sendStop();
    await resumed.closed;
    await waitFor(() => ended(old.callSid), { what: "the end once the caller hung up" });
  });

  it("a stream another stream took the call from stops, the call going on; one whose call ended elsewhere closes", async () => {
    const store = CallStore.connect(world.redis.url);
    try {
      const superseded = await startCall({ vbResumable: "1" });
      await store.takeLease(superseded.callSid, "stream", "ingress-elsewhere", 30_000);
      expect(await superseded.closed).toMatchObject({ code: 1000, reason: "superseded" });
      expect(ended(superseded.callSid)).toBe(false);

      const over = await startCall();
      await store.endCall(over.callSid, "stream_lost");
      expect(await over.closed).toMatchObject({ code: 1000, reason: "call_ended" });
    } finally {
      await store.close();
    }
  });
});

describe("dead sockets", () => {
  it("drops a stream whose peer stopped answering (no message, pings unanswered: a half-open link), and ends its call", async () => {
    const quick = await startIngress({ ...world.env(), INGRESS_DEAD_SOCKET_MS: "1500" });
    try {
      const client = await TwilioClient.connect(quick.wsUrl, newCallSid());
      client.sendConnected();
      client.sendStart({});
      await waitFor(() => inputsFor(client.callSid).some((i) => i.input?.$case === "callStarted"), { what: "started" });
      // A peer that still answers pings keeps its stream however quiet it is.
      await new Promise((r) => setTimeout(r, 2_500));
      expect(inputsFor(client.callSid).some((i) => i.input?.$case === "callEnded")).toBe(false);
      // The link goes half-open: nothing of ours is read any more, no pong comes back.
      (client.ws as unknown as { _socket: { pause(): void } })._socket.pause();
      await waitFor(() => inputsFor(client.callSid).some((i) => i.input?.$case === "callEnded"), { what: "the call ended", timeoutMs: 10_000 });
      expect(await metricValue(quick.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "dead_socket" })).toBe(1);
    } finally {
      await quick.handle.stop();
    }
  });

  it("drops a stream whose peer goes on sending audio but reads nothing (the bot's audio would pile up in ingress)", async () => {
    const quick = await startIngress({ ...world.env(), INGRESS_DEAD_SOCKET_MS: "1500" });
    const silence = new Uint8Array(160).fill(0xff);
    const client = await TwilioClient.connect(quick.wsUrl, newCallSid());
    let chunk = 0;
    let lastSentAt = 0;
    const sender = setInterval(() => {
      if (client.ws.readyState !== client.ws.OPEN) return;
      client.sendMedia(++chunk, silence);
      lastSentAt = Date.now();
    }, 20);
    try {
      client.sendConnected();
      client.sendStart({});
      await waitFor(() => inputsFor(client.callSid).some((i) => i.input?.$case === "callStarted"), { what: "started" });
      // Reading stops; its media goes on every 20 ms: what it sends says nothing of what it reads.
      (client.ws as unknown as { _socket: { pause(): void } })._socket.pause();
      const chunkAtPause = chunk;
      await waitFor(() => inputsFor(client.callSid).some((i) => i.input?.$case === "callEnded"), { what: "the call ended", timeoutMs: 10_000 });
      // It was still sending when dropped (timers slip on a busy machine, so no exact count).
      expect(chunk - chunkAtPause).toBeGreaterThan(25);
      expect(Date.now() - lastSentAt).toBeLessThan(1_000);
      expect(await metricValue(quick.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "dead_socket" })).toBe(1);
      const dropped = logs.findLast((l) => l.reason === "dead_socket");
      expect(dropped).toMatchObject({ msg: "twilio protocol error", closing: "terminate" });
      expect(typeof dropped!.unsentBytes).toBe("number");
    } finally {
      clearInterval(sender);
      await quick.handle.stop();
    }
  });
});

describe("a stream without audio", () => {
  it("is ended as media_timeout once no media came for INGRESS_MEDIA_TIMEOUT_MS, though it answers pings; media keeps it", async () => {
    const quick = await startIngress({ ...world.env(), INGRESS_MEDIA_TIMEOUT_MS: "1500" });
    try {
      const talking = await TwilioClient.connect(quick.wsUrl, newCallSid());
      talking.sendStart({});
      let chunk = 0;
      const media = setInterval(() => talking.sendMedia(++chunk, frames(1, 0x55)), 20);
      const mute = await TwilioClient.connect(quick.wsUrl, newCallSid());
      mute.sendStart({});
      mute.sendMedia(1, frames(1, 0x55));
      try {
        const closed = await mute.closed;
        expect(closed.code).toBe(1000);
        expect(closed.reason).toBe("media_timeout");
        const ended = await waitFor(() => inputsFor(mute.callSid).find((i) => i.input?.$case === "callEnded"), { what: "the mute call ended" });
        expect(ended.input?.$case === "callEnded" && ended.input.value.reason).toBe("media_timeout");
        expect(await metricValue(quick.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "media_timeout" })).toBe(1);
        // The call that kept sending audio is still up.
        expect(talking.ws.readyState).toBe(1);
      } finally {
        clearInterval(media);
      }
      talking.sendStop();
      await talking.closed;
    } finally {
      await quick.handle.stop();
    }
  });
});

describe("the stream sweeper", () => {
  it("leaves alone a call whose stream lease lapsed while its ingress still answers for it (that replica lost Redis for a while)", async () => {
    // A: streams the call and renews nothing within the test (as if its Redis link were down); B: sweeps often.
    const a = await startIngress({ ...world.env(), INGRESS_RECORD_CHECK_MS: "60000", INGRESS_STREAM_LEASE_MS: "120000" });
    const b = await startIngress({ ...world.env(), INGRESS_RECORD_CHECK_MS: "200", INGRESS_STREAM_LEASE_MS: "1000" });
    const store = CallStore.connect(world.redis.url);
    try {
      const client = await startCall({}, a.wsUrl);
      await waitFor(async () => ((await store.leaseOwner(client.callSid, "stream")) ? true : undefined), { what: "the stream lease" });
      await store.redis.del(keys.lease(client.callSid, "stream"));
      await store.redis.zadd(keys.leaseIndex("stream"), 1, client.callSid); // lapsed long ago
      await waitForLog((l) => l.msg === "a call's stream lease lapsed but its ingress still answers for it (it lost Redis for a while): left to it" && l.callId === client.callSid, "the sweeper to ask", 10_000);
      expect(await store.callState(client.callSid)).toBe("live");
      expect(await metricValue(b.baseUrl, "voicebot_ingress_lost_streams_total")).toBe(0);
      client.sendStop();
      await client.closed;
    } finally {
      await store.close();
      await b.handle.stop();
      await a.handle.stop();
    }
  });
});
