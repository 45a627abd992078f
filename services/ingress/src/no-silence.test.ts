// Ingress covering for a pipeline that fails the caller: the fallback line when no bot turn answers an input in
// time, and a call whose record vanished from Redis written and announced again. In-process against real NATS and
// Redis; the test plays the other stages on the bus.
import { performance } from "node:perf_hooks";
import { subjects } from "@voicebot/bus";
import { CallStarted, PlaybackEvent, SpeechActivity, SpeechActivity_Kind, Transcript } from "@voicebot/proto";
import { CallStore, keys } from "@voicebot/state";
import { startTcpProxy, type TcpProxy } from "@voicebot/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_NO_SILENCE_FILE, DEFAULT_NO_SILENCE_TEXT, loadNoSilenceClip, SilenceGuard } from "./no-silence.js";
import {
  collect,
  frames,
  metricValue,
  publishBotAudio,
  startCall,
  startIngress,
  useIngressWorld,
  waitFor,
  type Ingress,
  type TwilioClient,
} from "./test-support/harness.js";

// Long enough that a busy machine's timer slips and NATS hops stay well inside the steps of each test.
const DEADLINE_MS = 1_000;
const world = useIngressWorld({ env: { NO_SILENCE_DEADLINE_MS: String(DEADLINE_MS), INGRESS_RECORD_CHECK_MS: "200" } });
let store: CallStore;
const clip = loadNoSilenceClip(DEFAULT_NO_SILENCE_FILE);

beforeAll(() => {
  store = CallStore.connect(world.redis.url);
});

afterAll(async () => {
  await store?.close();
});

/** When the fallback line's mark went out to the caller (undefined if it did not). */
function fallbackMark(client: TwilioClient, n = 1): number | undefined {
  return client.events("mark").find((r) => r.message.mark.name === `nosilence-${n}.0`)?.at;
}

const fallbacks = () => metricValue(world.ingress.baseUrl, "voicebot_ingress_no_silence_fallbacks_total");

/** Publishes the asr's speech events of the client's call, as the asr does. */
function speechActivityOf(client: TwilioClient) {
  return (kind: SpeechActivity_Kind, utteranceId: string, discarded = false) =>
    world.bus.publish(subjects.speech(client.callSid), SpeechActivity, SpeechActivity.create({ callId: client.callSid, kind, utteranceId, atMs: Date.now(), discarded }), client.callSid);
}

describe("no turn ends in silence", () => {
  it("ships a clip of the fallback line: μ-law 8 kHz in whole frames, a few seconds of speech", () => {
    expect(clip.length % 160).toBe(0);
    expect(clip.length / 8000).toBeGreaterThan(2);
    expect(clip.length / 8000).toBeLessThan(5);
  });

  it("plays the fallback line when no bot turn begins within the deadline after a key, and tells nobody else", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    const playback = collect(world.bus, subjects.playback(client.callSid), PlaybackEvent);
    const before = await fallbacks();
    const pressedAt = performance.now();
    client.sendDtmf("1");
    await waitFor(() => fallbackMark(client), { what: "the fallback line", timeoutMs: 10_000 });
    const media = client.events("media");
    expect(media[0].at - pressedAt).toBeGreaterThanOrEqual(DEADLINE_MS - 5);
    expect(media[0].at - pressedAt).toBeLessThan(DEADLINE_MS + 300);
    expect(client.audio().equals(Buffer.from(clip))).toBe(true);
    expect(await fallbacks()).toBe(before + 1);
    const record = await waitFor(async () => {
      const r = await store.getRecord(client.callSid);
      return r?.transcript.some((e) => e.role === "bot" && e.text === DEFAULT_NO_SILENCE_TEXT) ? r : undefined;
    });
    expect(record.turns).toEqual([]); // not a pipeline turn: no latency line
    // Its mark was echoed, yet the dialog and observers hear nothing of it.
    await new Promise((r) => setTimeout(r, 200));
    expect(playback.items).toEqual([]);
    expect(world.dialog.items.filter((i) => i.callId === client.callSid && i.input?.$case === "playback")).toEqual([]);
    client.close();
  });

  it("stays quiet when a new bot turn arrives in time, and for digits the dialog collects silently; '#' ends that entry", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    client.sendDtmf("1");
    await new Promise((r) => setTimeout(r, DEADLINE_MS / 2));
    publishBotAudio(world.bus, client.callSid, "t2", 0, 0, frames(2, 0x55), { chunkDone: true, turnDone: true });
    await waitFor(() => client.events("mark").some((r) => r.message.mark.name === "t2.0"), { what: "the answer" });

    // The dialog collects digits (its hints say so): keys with pauses longer than the deadline are no silence.
    await store.setJson(keys.hints(client.callSid), { mode: "digits", phrases: [] });
    const before = await fallbacks();
    client.sendDtmf("1");
    await new Promise((r) => setTimeout(r, DEADLINE_MS + 300));
    client.sendDtmf("2");
    await new Promise((r) => setTimeout(r, DEADLINE_MS + 300));
    expect(await fallbacks()).toBe(before);
    // "#" ends the entry: it must be answered.
    client.sendDtmf("#");
    await waitFor(async () => (await fallbacks()) === before + 1, { what: "the fallback line after #", timeoutMs: 5_000 });
    await waitFor(() => client.events("media").length > 0, { what: "its audio" });

    // Something said (a final) and then a number keyed: the deadline runs from the latest key, not mid-entry.
    world.bus.publish(subjects.transcript(client.callSid), Transcript, Transcript.create({ callId: client.callSid, utteranceId: "5", text: "", isFinal: true }), client.callSid);
    for (const digit of "345") {
      await new Promise((r) => setTimeout(r, DEADLINE_MS * 0.6));
      client.sendDtmf(digit);
    }
    await new Promise((r) => setTimeout(r, DEADLINE_MS * 0.6));
    expect(await fallbacks()).toBe(before + 1);
    await waitFor(async () => (await fallbacks()) === before + 2, { what: "the fallback line once the keys stop", timeoutMs: 5_000 });
    client.close();
  });

  it("a final transcript starts the deadline too; partials do not", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    const transcript = (isFinal: boolean) =>
      world.bus.publish(subjects.transcript(client.callSid), Transcript, Transcript.create({ callId: client.callSid, utteranceId: "7", text: "hello", isFinal }), client.callSid);
    const before = await fallbacks();
    transcript(false);
    await new Promise((r) => setTimeout(r, DEADLINE_MS + 300));
    expect(await fallbacks()).toBe(before);
    transcript(true);
    await waitFor(async () => (await fallbacks()) === before + 1, { what: "the fallback line after the final", timeoutMs: 5_000 });
    await waitFor(() => client.events("media").length > 0, { what: "its audio" });
    client.close();
  });

  it("runs from the end of the caller's speech, so a recognizer slow to give its final still costs no more than the deadline; once", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    const activity = speechActivityOf(client);
    const before = await fallbacks();
    // A cough: too short to be speech, no answer is owed.
    activity(SpeechActivity_Kind.KIND_STARTED, "3");
    activity(SpeechActivity_Kind.KIND_STOPPED, "3", true);
    await new Promise((r) => setTimeout(r, DEADLINE_MS + 300));
    expect(await fallbacks()).toBe(before);

    // Speech: the recognizer stalls, its final comes late; the fallback line plays at the deadline from the speech's end.
    activity(SpeechActivity_Kind.KIND_STARTED, "9");
    const endedAt = performance.now();
    activity(SpeechActivity_Kind.KIND_STOPPED, "9");
    await waitFor(async () => (await fallbacks()) === before + 1, { what: "the fallback line before any final", timeoutMs: 5_000 });
    expect(performance.now() - endedAt).toBeLessThan(DEADLINE_MS + 400);
    world.bus.publish(subjects.transcript(client.callSid), Transcript, Transcript.create({ callId: client.callSid, utteranceId: "9", text: "hello", isFinal: true }), client.callSid);
    await new Promise((r) => setTimeout(r, DEADLINE_MS + 300));
    expect(await fallbacks()).toBe(before + 1); // the late final does not start another deadline
    client.close();
  });

  it("does not play the fallback over a caller who is speaking: it plays when they stop, if that speech wants no answer", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    const activity = speechActivityOf(client);
    const before = await fallbacks();
    client.sendDtmf("1"); // an input the dialog answers: the deadline runs
    activity(SpeechActivity_Kind.KIND_STARTED, "5"); // the caller goes on talking past the deadline
    await new Promise((r) => setTimeout(r, DEADLINE_MS + 300));
    expect(await fallbacks()).toBe(before);
    expect(fallbackMark(client)).toBeUndefined();
    // It was noise (no answer owed for it): the fallback for the key now.
    const stoppedAt = performance.now();
    activity(SpeechActivity_Kind.KIND_STOPPED, "5", true);
    const firstMedia = await waitFor(() => client.events("media")[0], { what: "the fallback line after the speech", timeoutMs: 5_000 });
    expect(firstMedia.at - stoppedAt).toBeLessThan(DEADLINE_MS);
    expect(await fallbacks()).toBe(before + 1);
    client.close();

    // The speech's STOPPED is lost (an asr handing over) and its final comes: it ends the speech, the fallback plays.
    const second = await startCall(world.ingress.wsUrl, world.dialog.items);
    second.echoMarks(0);
    speechActivityOf(second)(SpeechActivity_Kind.KIND_STARTED, "7");
    await new Promise((r) => setTimeout(r, 100));
    world.bus.publish(subjects.transcript(second.callSid), Transcript, Transcript.create({ callId: second.callSid, utteranceId: "7", text: "hello", isFinal: true }), second.callSid);
    await waitFor(() => second.events("media")[0], { what: "the fallback line after the final", timeoutMs: 5_000 });
    expect(await fallbacks()).toBe(before + 2);
    second.close();
  });
});

describe("a call whose record vanished from Redis", () => {
  it("is written again and announced again: CallStarted for asr, and a restart input for the dialog", async () => {
    const announced = collect(world.bus, subjects.callStarted, CallStarted);
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    const original = (await store.getRecord(client.callSid))!;
    await waitFor(() => announced.items.some((c) => c.callId === client.callSid), { what: "the first CallStarted" });

    await store.redis.flushall(); // what a Redis restarted without persistence holds
    const restart = await waitFor(
      () => world.dialog.items.find((i) => i.callId === client.callSid && i.inputId === `${client.callSid}:restart:1`),
      { what: "the restart input", timeoutMs: 5_000 },
    );
    expect(restart.input?.$case).toBe("callStarted");
    const record = (await store.getRecord(client.callSid))!;
    expect(record.state).toBe("live");
    expect(record.startedAt).toBe(original.startedAt);
    expect(record.streamSid).toBe(original.streamSid);
    expect(announced.items.filter((c) => c.callId === client.callSid)).toHaveLength(2);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_call_records_restored_total")).toBeGreaterThanOrEqual(1);

    // Once written again, it is left alone.
    await new Promise((r) => setTimeout(r, 600));
    expect(world.dialog.items.filter((i) => i.callId === client.callSid && i.inputId.includes(":restart:"))).toHaveLength(1);
    client.close();
    await waitFor(async () => (await store.callState(client.callSid)) === "ended", { what: "the call to end" });
  });
});

describe("the deadline is decided by what happened in order", () => {
  // A key needs a hints look-up in Redis before the deadline arms. With Redis this slow, the dialog's answer (a
  // cached prompt) arrives while the look-up is still out: the call has been answered, the guard must stay off.
  const REDIS_DELAY_MS = 2_000; // longer than the deadline
  let link: TcpProxy;
  let slowIngress: Ingress;

  beforeAll(async () => {
    link = await startTcpProxy(world.redis.port);
    slowIngress = await startIngress({
      NATS_URL: world.nats.url,
      REDIS_URL: `redis://127.0.0.1:${link.port}`,
      NO_SILENCE_DEADLINE_MS: String(DEADLINE_MS),
      INGRESS_RECORD_CHECK_MS: "60000",
      INGRESS_STREAM_LEASE_MS: "120000",
    });
  });

  afterAll(async () => {
    await slowIngress?.handle.stop();
    await link?.close();
  });

  const slowFallbacks = () => metricValue(slowIngress.baseUrl, "voicebot_ingress_no_silence_fallbacks_total");

  it("no fallback when the answer began while the key's hints look-up was still out", async () => {
    const client = await startCall(slowIngress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    const before = await slowFallbacks();
    link.delayMs = REDIS_DELAY_MS;
    const seq = client.sendDtmf("1");
    // The key reached ingress (its input is queued for the dialog); its look-up waits on Redis.
    await waitFor(() => world.dialog.items.find((i) => i.inputId === `${client.callSid}:dtmf:${client.streamSid}:${seq}`), { what: "the key's input" });
    publishBotAudio(world.bus, client.callSid, "t2", 0, 0, frames(2, 0x55), { chunkDone: true, turnDone: true });
    await waitFor(() => client.events("mark").some((r) => r.message.mark.name === "t2.0"), { what: "the answer" });
    // The look-up returns, then the deadline would run out.
    await new Promise((r) => setTimeout(r, REDIS_DELAY_MS + DEADLINE_MS + 400));
    link.delayMs = 0;
    expect(client.audio().length).toBe(2 * 160); // the answer, and nothing after it
    expect(await slowFallbacks()).toBe(before);
    client.close();
  });

  it("an unanswered key still gets the fallback, on time from the key, not from the end of the look-up", async () => {
    const client = await startCall(slowIngress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    link.delayMs = REDIS_DELAY_MS;
    const pressedAt = performance.now();
    client.sendDtmf("1");
    await waitFor(() => fallbackMark(client), { what: "the fallback line", timeoutMs: 10_000 });
    link.delayMs = 0;
    // The look-up took longer than the deadline: the line plays as soon as it is known the key needs an answer.
    const at = client.events("media")[0].at - pressedAt;
    expect(at).toBeGreaterThanOrEqual(REDIS_DELAY_MS - 5);
    expect(at).toBeLessThan(REDIS_DELAY_MS + 500);
    client.close();
  });
});

describe("SilenceGuard", () => {
  const guard = (fired: string[]) => new SilenceGuard(DEADLINE_MS, (input) => fired.push(input));

  it("does not arm for an input whose answer began before the input was known to need one", async () => {
    const fired: string[] = [];
    const g = guard(fired);
    const end = g.inputEnd();
    g.botAudio("t1"); // the reply starts while the look-up is out
    g.inputEnded("keypad", end);
    expect(g.armed).toBe(false);
    g.close();
  });

  it("a caller still keying digits moves an armed deadline to the latest key; with nothing armed a digit arms nothing", async () => {
    const fired: string[] = [];
    const g = guard(fired);
    g.callerBusy(g.inputEnd());
    expect(g.armed).toBe(false);
    g.inputEnded("speech");
    const spokeAt = performance.now();
    await new Promise((r) => setTimeout(r, DEADLINE_MS * 0.75));
    g.callerBusy(g.inputEnd());
    await new Promise((r) => setTimeout(r, DEADLINE_MS * 0.5));
    expect(fired).toEqual([]); // past the speech's deadline
    await waitFor(() => fired.length === 1, { what: "the deadline from the key" });
    expect(fired).toEqual(["speech"]);
    expect(performance.now() - spokeAt).toBeGreaterThan(DEADLINE_MS * 1.7);
    g.close();
  });

  it("arms for an input that ended after the latest new turn, and an earlier input does not move a later deadline", async () => {
    const fired: string[] = [];
    const g = guard(fired);
    g.botAudio("t1");
    const key = g.inputEnd();
    g.inputEnded("speech");
    expect(g.armed).toBe(true);
    g.inputEnded("keypad", key); // older than the armed input: ignored
    await new Promise((r) => setTimeout(r, DEADLINE_MS + 100));
    expect(fired).toEqual(["speech"]);
    g.close();
  });
});
