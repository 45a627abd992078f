// Barge-in over the wire: the asr's SpeechActivity on the bus, a Twilio-speaking client on the socket, and the
// dialog's work queue read back from JetStream.
import { performance } from "node:perf_hooks";
import { subjects } from "@voicebot/bus";
import {
  CallControl,
  CallControl_Action,
  CallEnded,
  CancelTurn,
  PlaybackEvent,
  PlaybackEvent_Kind,
  SpeechActivity,
  SpeechActivity_Kind,
  type DialogInput,
} from "@voicebot/proto";
import { describe, expect, it } from "vitest";
import {
  collect,
  frames,
  metricValue,
  publishBotAudio,
  startCall,
  startIngress,
  useIngressWorld,
  waitFor,
  type TwilioClient,
} from "./test-support/harness.js";

const world = useIngressWorld({ env: { PLAYOUT_LEAD_MS: "100" } });

function speech(callId: string, kind: SpeechActivity_Kind, utteranceId: string, atMs = Date.now(), discarded = false): void {
  world.bus.publish(subjects.speech(callId), SpeechActivity, SpeechActivity.create({ callId, kind, utteranceId, audioMs: 1_000, atMs, discarded }), callId);
}

function input(callId: string, inputId: string): DialogInput | undefined {
  return world.dialog.items.find((i) => i.callId === callId && i.inputId === inputId);
}

/** Every 20 ms frame sent to the client, in wire order, as the byte value it was filled with. */
function frameValues(client: TwilioClient, from = 0, to = client.received.length): number[] {
  const values: number[] = [];
  for (const r of client.received.slice(from, to)) {
    if (r.message.event !== "media") continue;
    const bytes = Buffer.from(r.message.media.payload as string, "base64");
    for (let i = 0; i < bytes.length; i += 160) values.push(bytes[i]);
  }
  return values;
}

describe("barge-in", () => {
  it("clears at once, plays nothing more of the cut turn, and tells tts, dialog and observers what was heard", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    const callId = client.callSid;
    const playback = collect(world.bus, subjects.playback(callId), PlaybackEvent);
    const cancels = collect(world.bus, subjects.cancel(callId), CancelTurn);
    await world.bus.nc.flush();
    const bargeInsBefore = await metricValue(world.ingress.baseUrl, "voicebot_ingress_barge_ins_total");

    // t1: a short first sentence, then a long second one that tts is still streaming.
    publishBotAudio(world.bus, callId, "t1", 0, 0, frames(2, 1), { chunkDone: true, text: "One." });
    publishBotAudio(world.bus, callId, "t1", 1, 0, frames(50, 2), { text: "Two, which is long." });
    await waitFor(() => client.events("mark").length === 1, { what: "mark t1.0" });
    client.sendMark("t1.0");
    await waitFor(() => playback.items.length === 1, { what: "CHUNK_PLAYED t1.0" });
    await waitFor(() => frameValues(client).length >= 15, { what: "some of chunk 1 on the wire" });

    // The caller starts talking; tts has not heard of it yet and keeps sending t1.
    const sentAt = performance.now();
    speech(callId, SpeechActivity_Kind.KIND_STARTED, "57");
    publishBotAudio(world.bus, callId, "t1", 1, 1, frames(10, 2));
    await waitFor(() => client.events("clear").length === 1, { what: "clear" });
    const clearMs = client.events("clear")[0].at - sentAt;
    console.log(`barge-in: SpeechActivity published -> clear received by the client: ${clearMs.toFixed(1)} ms`);
    expect(clearMs).toBeLessThan(200);

    // More of the cut turn arrives after the cancel; then the dialog's next turn.
    publishBotAudio(world.bus, callId, "t1", 1, 2, frames(10, 2), { chunkDone: true });
    publishBotAudio(world.bus, callId, "t1", 2, 0, frames(10, 3), { chunkDone: true, turnDone: true, text: "Three." });
    publishBotAudio(world.bus, callId, "t2", 0, 0, frames(3, 8), { chunkDone: true, turnDone: true, text: "Sure." });
    await waitFor(() => client.events("mark").some((m) => m.message.mark.name === "t2.0"), { what: "mark t2.0" });

    // On the wire: t1 audio, the clear, then only t2. No t1 media after the clear, no t1 marks either.
    const clearIndex = client.received.findIndex((r) => r.message.event === "clear");
    const before = frameValues(client, 0, clearIndex);
    expect(before.slice(0, 2)).toEqual([1, 1]);
    expect(new Set(before.slice(2))).toEqual(new Set([2]));
    expect(before.length).toBeLessThan(2 + 60);
    expect(frameValues(client, clearIndex + 1)).toEqual([8, 8, 8]);
    const after = client.received.slice(clearIndex + 1);
    expect(after.filter((r) => r.message.event === "mark").map((r) => r.message.mark.name)).toEqual(["t2.0"]);
    expect(client.received[clearIndex].message).toEqual({ event: "clear", streamSid: client.streamSid });

    // tts and the dialog stop working on t1.
    await waitFor(() => cancels.items.length >= 1, { what: "CancelTurn" });
    expect(cancels.items).toEqual([CancelTurn.create({ callId, turnId: "t1", reason: "barge_in" })]);
    // Observers: INTERRUPTED with the last chunk fully heard.
    const interrupted = await waitFor(() => playback.items.find((e) => e.kind === PlaybackEvent_Kind.KIND_INTERRUPTED), { what: "INTERRUPTED" });
    expect(interrupted).toMatchObject({ callId, turnId: "t1", chunkSeq: 0, heardText: "One." });
    // The dialog: the same event, durably, once.
    const stored = await waitFor(() => input(callId, `${callId}:int:t1`), { what: "DialogInput INTERRUPTED in the work queue" });
    expect(stored.input?.$case).toBe("playback");
    expect(stored.input?.value).toMatchObject({ turnId: "t1", kind: PlaybackEvent_Kind.KIND_INTERRUPTED, chunkSeq: 0, heardText: "One." });
    expect(world.dialog.items.filter((i) => i.inputId === `${callId}:int:t1`)).toHaveLength(1);
    // t1 is not reported as played; t2 is, durably too once its mark comes back.
    client.sendMark("t2.0");
    await waitFor(() => input(callId, `${callId}:played:t2`), { what: "DialogInput TURN_PLAYED t2" });
    expect(input(callId, `${callId}:played:t1`)).toBeUndefined();
    expect(playback.items.filter((e) => e.turnId === "t1").map((e) => PlaybackEvent_Kind[e.kind])).toEqual(["KIND_CHUNK_PLAYED", "KIND_INTERRUPTED"]);

    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_barge_ins_total")).toBe(bargeInsBefore + 1);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_clear_latency_seconds_count")).toBeGreaterThanOrEqual(1);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_bot_audio_dropped_total", { reason: "finished_turn" })).toBeGreaterThanOrEqual(2);
    playback.sub.unsubscribe();
    cancels.sub.unsubscribe();
    client.close();
  });

  it("cuts audio that was all sent but not yet heard (marks not echoed): INTERRUPTED with chunk -1", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    const callId = client.callSid;
    const cancels = collect(world.bus, subjects.cancel(callId), CancelTurn);
    await world.bus.nc.flush();
    publishBotAudio(world.bus, callId, "t1", 0, 0, frames(3, 1), { chunkDone: true, turnDone: true, text: "Hi." });
    await waitFor(() => client.events("mark").length === 1, { what: "mark t1.0" }); // all of t1 is in Twilio's buffer
    speech(callId, SpeechActivity_Kind.KIND_STARTED, "12");
    await waitFor(() => client.events("clear").length === 1, { what: "clear" });
    const stored = await waitFor(() => input(callId, `${callId}:int:t1`), { what: "DialogInput INTERRUPTED" });
    expect(stored.input?.value).toMatchObject({ kind: PlaybackEvent_Kind.KIND_INTERRUPTED, chunkSeq: -1, heardText: "" });
    await waitFor(() => cancels.items.length === 1, { what: "CancelTurn" });
    expect(cancels.items[0]).toMatchObject({ turnId: "t1", reason: "barge_in" });
    // Twilio echoes the cleared mark: ignored, t1 never counts as played.
    client.sendMark("t1.0");
    await new Promise((r) => setTimeout(r, 100));
    expect(input(callId, `${callId}:played:t1`)).toBeUndefined();
    cancels.sub.unsubscribe();
    client.close();
  });

  it("a sound that cut the bot off but was too short to be speech asks the dialog to go on with the cut turn; real speech does not", async () => {
    const before = await metricValue(world.ingress.baseUrl, "voicebot_ingress_false_interruptions_total");
    const cough = await startCall(world.ingress.wsUrl, world.dialog.items);
    publishBotAudio(world.bus, cough.callSid, "t1", 0, 0, frames(100, 1), { chunkDone: true, turnDone: true, text: "A long prompt." });
    await waitFor(() => cough.events("media").length > 3, { what: "the prompt playing" });
    speech(cough.callSid, SpeechActivity_Kind.KIND_STARTED, "31");
    await waitFor(() => cough.events("clear").length === 1, { what: "clear" });
    speech(cough.callSid, SpeechActivity_Kind.KIND_STOPPED, "31", Date.now(), true);
    const streamSid = cough.streamSid;
    const resume = await waitFor(() => input(cough.callSid, `${cough.callSid}:false-int:${streamSid}:31`), { what: "DialogInput falseInterruption" });
    expect(resume.input).toEqual({ $case: "falseInterruption", value: { turnId: "t1", utteranceId: "31" } });
    // After the INTERRUPTED that tells the dialog what was heard.
    const order = world.dialog.items.filter((i) => i.callId === cough.callSid).map((i) => i.input?.$case);
    expect(order.slice(-2)).toEqual(["playback", "falseInterruption"]);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_false_interruptions_total")).toBe(before + 1);

    // Speech the asr keeps (a transcript follows) is a real interruption.
    const talker = await startCall(world.ingress.wsUrl, world.dialog.items);
    publishBotAudio(world.bus, talker.callSid, "t1", 0, 0, frames(100, 1), { chunkDone: true, turnDone: true, text: "A long prompt." });
    await waitFor(() => talker.events("media").length > 3, { what: "the prompt playing" });
    speech(talker.callSid, SpeechActivity_Kind.KIND_STARTED, "40");
    await waitFor(() => talker.events("clear").length === 1, { what: "clear" });
    speech(talker.callSid, SpeechActivity_Kind.KIND_STOPPED, "40");
    await waitFor(() => input(talker.callSid, `${talker.callSid}:int:t1`), { what: "DialogInput INTERRUPTED" });
    await new Promise((r) => setTimeout(r, 300));
    expect(world.dialog.items.some((i) => i.callId === talker.callSid && i.input?.$case === "falseInterruption")).toBe(false);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_false_interruptions_total")).toBe(before + 1);
    cough.close();
    talker.close();
  });

  it("does nothing when the bot is silent: nothing queued, or the turn already heard (TURN_PLAYED goes to the dialog)", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    const callId = client.callSid;
    const cancels = collect(world.bus, subjects.cancel(callId), CancelTurn);
    await world.bus.nc.flush();
    client.echoMarks(0);
    const ignored = () => metricValue(world.ingress.baseUrl, "voicebot_ingress_barge_ins_ignored_total", { reason: "nothing_playing" });
    const before = await ignored();
    speech(callId, SpeechActivity_Kind.KIND_STARTED, "3");
    await waitFor(async () => (await ignored()) === before + 1, { what: "onset ignored" });

    publishBotAudio(world.bus, callId, "t1", 0, 0, frames(2, 1), { chunkDone: true, turnDone: true, text: "Hello." });
    const played = await waitFor(() => input(callId, `${callId}:played:t1`), { what: "DialogInput TURN_PLAYED t1" });
    expect(played.input?.value).toMatchObject({ turnId: "t1", kind: PlaybackEvent_Kind.KIND_TURN_PLAYED, chunkSeq: 0, heardText: "Hello." });
    speech(callId, SpeechActivity_Kind.KIND_STARTED, "40");
    await waitFor(async () => (await ignored()) === before + 2, { what: "second onset ignored" });
    expect(client.events("clear")).toHaveLength(0);
    expect(cancels.items).toHaveLength(0);
    cancels.sub.unsubscribe();
    client.close();
  });

  it("is off for a call started with customParameters bargeIn=false", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items, { bargeIn: "false" });
    const callId = client.callSid;
    publishBotAudio(world.bus, callId, "t1", 0, 0, frames(40, 1), { chunkDone: true, turnDone: true });
    await waitFor(() => frameValues(client).length > 0, { what: "bot audio" });
    const ignored = () => metricValue(world.ingress.baseUrl, "voicebot_ingress_barge_ins_ignored_total", { reason: "disabled" });
    const before = await ignored();
    speech(callId, SpeechActivity_Kind.KIND_STARTED, "9");
    await waitFor(async () => (await ignored()) === before + 1, { what: "onset ignored" });
    await waitFor(() => client.events("mark").length === 1, { what: "the whole turn sent" });
    expect(client.events("clear")).toHaveLength(0);
    expect(frameValues(client)).toHaveLength(40);
    client.close();
  });

  it("BARGE_IN=false turns it off by default; customParameters bargeIn=true turns it back on for a call", async () => {
    const off = await startIngress({ ...world.env(), BARGE_IN: "false" });
    try {
      const plain = await startCall(off.wsUrl, world.dialog.items);
      const opted = await startCall(off.wsUrl, world.dialog.items, { bargeIn: "true" });
      for (const client of [plain, opted]) {
        publishBotAudio(world.bus, client.callSid, "t1", 0, 0, frames(50, 1), { chunkDone: true, turnDone: true });
      }
      await waitFor(() => frameValues(plain).length > 0 && frameValues(opted).length > 0, { what: "bot audio on both calls" });
      speech(plain.callSid, SpeechActivity_Kind.KIND_STARTED, "5");
      speech(opted.callSid, SpeechActivity_Kind.KIND_STARTED, "5");
      await waitFor(() => opted.events("clear").length === 1, { what: "clear on the opted-in call" });
      await waitFor(async () => (await metricValue(off.baseUrl, "voicebot_ingress_barge_ins_ignored_total", { reason: "disabled" })) === 1, {
        what: "the other onset ignored",
      });
      expect(plain.events("clear")).toHaveLength(0);
      plain.close();
      opted.close();
    } finally {
      await off.handle.stop();
    }
  });

  it("a CallControl CLEAR also cancels the cut turns (reason clear) and tells the dialog what was heard", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    const callId = client.callSid;
    const cancels = collect(world.bus, subjects.cancel(callId), CancelTurn);
    await world.bus.nc.flush();
    publishBotAudio(world.bus, callId, "t4", 0, 0, frames(50, 1), { text: "Long." });
    await waitFor(() => frameValues(client).length > 0, { what: "bot audio" });
    world.bus.publish(subjects.control(callId), CallControl, CallControl.create({ callId, action: CallControl_Action.ACTION_CLEAR, reason: "dialog" }), callId);
    await waitFor(() => client.events("clear").length === 1, { what: "clear" });
    await waitFor(() => cancels.items.length === 1, { what: "CancelTurn" });
    expect(cancels.items[0]).toMatchObject({ turnId: "t4", reason: "clear" });
    const stored = await waitFor(() => input(callId, `${callId}:int:t4`), { what: "DialogInput INTERRUPTED" });
    expect(stored.input?.value).toMatchObject({ kind: PlaybackEvent_Kind.KIND_INTERRUPTED, chunkSeq: -1 });
    cancels.sub.unsubscribe();
    client.close();
  });

  it("with BARGE_IN_MIN_SPEECH_MS, a blip that stops in time cuts nothing; longer speech cuts", async () => {
    // A minimum far above a busy machine's timer slips: the blip's STOPPED (50 ms after) always comes within it.
    const guarded = await startIngress({ ...world.env(), BARGE_IN_MIN_SPEECH_MS: "1000" });
    try {
      const client = await startCall(guarded.wsUrl, world.dialog.items);
      const callId = client.callSid;
      publishBotAudio(world.bus, callId, "t1", 0, 0, frames(250, 1), { chunkDone: true, turnDone: true }); // 5 s
      await waitFor(() => frameValues(client).length > 0, { what: "bot audio" });
      speech(callId, SpeechActivity_Kind.KIND_STARTED, "20");
      await new Promise((r) => setTimeout(r, 50));
      speech(callId, SpeechActivity_Kind.KIND_STOPPED, "20");
      await waitFor(async () => (await metricValue(guarded.baseUrl, "voicebot_ingress_barge_ins_ignored_total", { reason: "short_speech" })) === 1, {
        what: "short speech ignored",
      });
      await new Promise((r) => setTimeout(r, 1_000)); // past the minimum: the cancelled wait must not fire
      expect(client.events("clear")).toHaveLength(0);

      const startedAt = performance.now();
      speech(callId, SpeechActivity_Kind.KIND_STARTED, "60");
      await waitFor(() => client.events("clear").length === 1, { what: "clear" });
      expect(client.events("clear")[0].at - startedAt).toBeGreaterThanOrEqual(995);
      await waitFor(() => input(callId, `${callId}:int:t1`), { what: "DialogInput INTERRUPTED" });
      client.close();
    } finally {
      await guarded.handle.stop();
    }
  });
});

describe("caller hang-up", () => {
  it("mid-turn publishes CancelTurn for the whole call (reason hangup) along with CallEnded", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    const callId = client.callSid;
    const cancels = collect(world.bus, subjects.cancel(callId), CancelTurn);
    const ended = collect(world.bus, subjects.ended(callId), CallEnded);
    await world.bus.nc.flush();
    publishBotAudio(world.bus, callId, "t1", 0, 0, frames(50, 1), { text: "A long answer" });
    await waitFor(() => frameValues(client).length > 0, { what: "bot audio" });
    const stoppedAt = performance.now();
    client.sendStop();
    await waitFor(() => cancels.items.length === 1, { what: "CancelTurn" });
    expect(performance.now() - stoppedAt).toBeLessThan(1_000);
    expect(cancels.items[0]).toEqual(CancelTurn.create({ callId, turnId: "", reason: "hangup" }));
    await waitFor(() => ended.items.length === 1, { what: "CallEnded" });
    expect(ended.items[0].reason).toBe("caller_hangup");
    cancels.sub.unsubscribe();
    ended.sub.unsubscribe();
  });
});

describe("a key over the bot", () => {
  it("cuts the bot off like speech: clear, the cut turn cancelled and reported before the key reaches the dialog", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    const callId = client.callSid;
    const cancels = collect(world.bus, subjects.cancel(callId), CancelTurn);
    await world.bus.nc.flush();
    const before = await metricValue(world.ingress.baseUrl, "voicebot_ingress_barge_ins_total", { by: "keypad" });
    publishBotAudio(world.bus, callId, "t1", 0, 0, frames(100, 2), { chunkDone: true, turnDone: true, text: "Press 1 for orders." });
    await waitFor(() => frameValues(client).length >= 10, { what: "the prompt on the wire" });
    client.sendDtmf("1");
    await waitFor(() => client.events("clear").length === 1, { what: "clear after the key" });
    await waitFor(() => cancels.items.length >= 1, { what: "CancelTurn" });
    expect(cancels.items[0]).toMatchObject({ turnId: "t1", reason: "barge_in" });
    const inputs = await waitFor(() => {
      const ids = world.dialog.items.filter((i) => i.callId === callId).map((i) => i.input?.$case);
      return ids.includes("keypad") ? ids : undefined;
    }, { what: "the key in the dialog's queue" });
    expect(inputs.indexOf("playback")).toBeGreaterThan(-1);
    expect(inputs.indexOf("playback")).toBeLessThan(inputs.indexOf("keypad"));
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_barge_ins_total", { by: "keypad" })).toBe(before + 1);
    cancels.sub.unsubscribe();
    client.close();
  });

  it("leaves the bot talking when barge-in is off for the call", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items, { bargeIn: "false" });
    publishBotAudio(world.bus, client.callSid, "t1", 0, 0, frames(60, 2), { chunkDone: true, turnDone: true });
    await waitFor(() => frameValues(client).length >= 5, { what: "the prompt on the wire" });
    client.sendDtmf("1");
    await waitFor(() => frameValues(client).length >= 60, { what: "the whole prompt", timeoutMs: 5_000 });
    expect(client.events("clear")).toEqual([]);
    client.close();
  });
});
