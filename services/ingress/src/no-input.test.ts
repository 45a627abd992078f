// A caller who says nothing is prompted again: ingress asks the dialog (`DialogInput{noInput}`) once neither the bot
// nor the caller has been heard for NO_INPUT_MS after the bot's turn. In-process against real NATS and Redis; the
// test plays the other stages on the bus.
import { performance } from "node:perf_hooks";
import { subjects } from "@voicebot/bus";
import { SpeechActivity, SpeechActivity_Kind, Transcript } from "@voicebot/proto";
import { describe, expect, it } from "vitest";
import { CallStore } from "@voicebot/state";
import {
  TwilioClient,
  frames,
  metricValue,
  publishBotAudio,
  startCall,
  startIngress,
  useIngressWorld,
  waitFor,
} from "./test-support/harness.js";

const NO_INPUT_MS = 600;
const world = useIngressWorld({ env: { NO_INPUT_MS: String(NO_INPUT_MS), NO_SILENCE_DEADLINE_MS: "0" } });

const noInputsOf = (client: TwilioClient) => world.dialog.items.filter((i) => i.callId === client.callSid && i.input?.$case === "noInput");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function speech(callId: string, kind: SpeechActivity_Kind): void {
  world.bus.publish(subjects.speech(callId), SpeechActivity, SpeechActivity.create({ callId, kind, utteranceId: "u1", audioMs: 1_000, atMs: Date.now() }), callId);
}

/**
 * The bot says turn `turnId` (two frames; `noInputMs`: the wait its dialog state names); resolves when its last
 * mark came back: the caller has heard it.
 */
async function botSays(client: TwilioClient, turnId: string, noInputMs?: number): Promise<number> {
  publishBotAudio(world.bus, client.callSid, turnId, 0, 0, frames(2, 0x55), { chunkDone: true, turnDone: true, ...(noInputMs === undefined ? {} : { noInputMs }) });
  const mark = await waitFor(() => client.events("mark").find((r) => r.message.mark.name === `${turnId}.0`), { what: `${turnId} played` });
  return mark.at;
}

describe("a silent caller is prompted again", () => {
  it("asks the dialog after NO_INPUT_MS of silence past the bot's turn, naming that turn, and again while the silence lasts", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    const before = await metricValue(world.ingress.baseUrl, "voicebot_ingress_no_inputs_total");
    const playedAt = await botSays(client, "t1");
    const first = await waitFor(() => noInputsOf(client)[0], { what: "a noInput", timeoutMs: 5_000 });
    const firstAt = performance.now();
    expect(firstAt - playedAt).toBeGreaterThanOrEqual(NO_INPUT_MS - 50);
    expect(first.input?.$case === "noInput" && first.input.value.turnId).toBe("t1");
    // No answer came (as when the dialog found the input stale): the caller is asked again after another wait.
    await waitFor(() => noInputsOf(client)[1], { what: "a second noInput", timeoutMs: 5_000 });
    expect(new Set(noInputsOf(client).map((i) => i.inputId)).size).toBe(2);
    expect(await metricValue(world.ingress.baseUrl, "voicebot_ingress_no_inputs_total")).toBeGreaterThanOrEqual(before + 2);
    client.close();
  });

  /**
   * Resumes the call on a new stream of the file's ingress and waits for the noInput that names no turn (the last
   * one played on the old stream); returns how long after the resume it came. Then hangs up.
   */
  async function silentAfterResume(callSid: string): Promise<number> {
    const stream = await TwilioClient.connect(world.ingress.wsUrl, callSid);
    stream.sendConnected();
    const resumedAt = performance.now();
    stream.sendStart({ vbResumable: "1", vbResume: "1" });
    const unnamed = () => noInputsOf(stream).find((i) => i.input?.$case === "noInput" && i.input.value.turnId === "");
    await waitFor(unnamed, { what: "a noInput on the new stream", timeoutMs: 5_000 });
    const afterMs = performance.now() - resumedAt;
    stream.sendStop();
    await stream.closed;
    return afterMs;
  }

  it("a call handed over at a quiet moment (a draining replica) is prompted again on its new stream if the caller stays silent", async () => {
    const first = await startCall(world.ingress.wsUrl, world.dialog.items, { vbResumable: "1" });
    first.echoMarks(0);
    await botSays(first, "t1");
    const store = CallStore.connect(world.redis.url);
    try {
      await store.markHandover(first.callSid); // as a draining ingress does before it closes with 1001
    } finally {
      await store.close();
    }
    first.close();
    await first.closed;
    expect(await silentAfterResume(first.callSid)).toBeGreaterThanOrEqual(NO_INPUT_MS - 50);
  });

  it("a drain's hand-over carries the turn's own no-input wait to the new stream", async () => {
    const draining = await startIngress({ ...world.env(), NO_INPUT_MS: String(NO_INPUT_MS), NO_SILENCE_DEADLINE_MS: "0" });
    const first = await startCall(draining.wsUrl, world.dialog.items, { vbResumable: "1" });
    first.echoMarks(0);
    await botSays(first, "t1", 2_000); // the state gives the caller 2 s (a number to find)
    await draining.handle.stop(); // a quiet moment: handed over at once
    expect((await first.closed).code).toBe(1001);
    expect(await silentAfterResume(first.callSid)).toBeGreaterThanOrEqual(2_000 - 50); // not NO_INPUT_MS (600)
  });

  it("after a reprompt turn, names the new turn", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    await botSays(client, "t1");
    await waitFor(() => noInputsOf(client)[0], { what: "a noInput", timeoutMs: 5_000 });
    await botSays(client, "t2");
    await waitFor(() => noInputsOf(client).find((i) => i.input?.$case === "noInput" && i.input.value.turnId === "t2"), {
      what: "a noInput naming t2",
      timeoutMs: 5_000,
    });
    client.close();
  });

  it("waits while the caller speaks or the bot talks, and starts over after each", async () => {
    // The turn's own wait (noInputMs), long enough that the steps below keep clear of it on a busy machine.
    const WAIT_MS = 1_500;
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    await botSays(client, "t1", WAIT_MS);
    // The caller speaks for longer than the wait: nothing is sent meanwhile.
    speech(client.callSid, SpeechActivity_Kind.KIND_STARTED);
    await sleep(WAIT_MS * 2);
    expect(noInputsOf(client)).toEqual([]);
    // The speech ends and comes to nothing (too short, no transcript): the wait starts over from its end.
    const stoppedAt = performance.now();
    speech(client.callSid, SpeechActivity_Kind.KIND_STOPPED);
    await waitFor(() => noInputsOf(client)[0], { what: "a noInput after the speech", timeoutMs: 5_000 });
    expect(performance.now() - stoppedAt).toBeGreaterThanOrEqual(WAIT_MS - 50);

    // A final transcript or a key starts the wait over; an answer that begins to play stops it.
    const sent = noInputsOf(client).length;
    await sleep(WAIT_MS / 2);
    world.bus.publish(subjects.transcript(client.callSid), Transcript, Transcript.create({ callId: client.callSid, utteranceId: "u2", text: "hello", isFinal: true }), client.callSid);
    await sleep(WAIT_MS / 2 + 100);
    client.sendDtmf("1");
    await sleep(WAIT_MS / 2 + 100);
    expect(noInputsOf(client).length).toBe(sent);
    publishBotAudio(world.bus, client.callSid, "t2", 0, 0, frames(150, 0x55), { chunkDone: true, turnDone: false }); // 3 s of speech
    await sleep(WAIT_MS + 300);
    expect(noInputsOf(client).length).toBe(sent);
    client.close();
  });

  it("an utterance whose STOPPED was lost (an asr handing the call over) ends with its final: the wait runs again", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    await botSays(client, "t1");
    speech(client.callSid, SpeechActivity_Kind.KIND_STARTED); // utterance u1; its STOPPED never comes
    await sleep(NO_INPUT_MS * 2);
    expect(noInputsOf(client)).toEqual([]);
    // Another utterance's final does not end u1.
    world.bus.publish(subjects.transcript(client.callSid), Transcript, Transcript.create({ callId: client.callSid, utteranceId: "u0", text: "um", isFinal: true }), client.callSid);
    await sleep(NO_INPUT_MS * 2);
    expect(noInputsOf(client)).toEqual([]);
    // u1's final does: the caller is silent again and is asked again after the wait.
    const finalAt = performance.now();
    world.bus.publish(subjects.transcript(client.callSid), Transcript, Transcript.create({ callId: client.callSid, utteranceId: "u1", text: "hello", isFinal: true }), client.callSid);
    await waitFor(() => noInputsOf(client)[0], { what: "a noInput after the final", timeoutMs: 5_000 });
    expect(performance.now() - finalAt).toBeGreaterThanOrEqual(NO_INPUT_MS - 50);
    client.close();
  });

  it("does not count a turn that plays on after the one before it ended (their events cross) as silence", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    // t2 queued behind t1: it starts playing before t1's last mark comes back.
    publishBotAudio(world.bus, client.callSid, "t1", 0, 0, frames(2, 0x55), { chunkDone: true, turnDone: true });
    publishBotAudio(world.bus, client.callSid, "t2", 0, 0, frames(150, 0x56), { chunkDone: true, turnDone: true }); // 3 s
    await waitFor(() => client.events("mark").find((r) => r.message.mark.name === "t2.0"), { what: "t2 played", timeoutMs: 10_000 });
    expect(noInputsOf(client)).toEqual([]); // t2 played 3 s: five waits' worth
    const first = await waitFor(() => noInputsOf(client)[0], { what: "a noInput after t2", timeoutMs: 5_000 });
    expect(first.input?.$case === "noInput" && first.input.value.turnId).toBe("t2");
    client.close();
  });

  it("waits as long as the turn's dialog state says (noInputMs on its audio), and NO_INPUT_MS after a turn that names none", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    client.echoMarks(0);
    const STATE_WAIT_MS = 2_000;
    // A state that gives callers time (e.g. to find a number): no reprompt after NO_INPUT_MS.
    const longPlayedAt = await botSays(client, "t1", STATE_WAIT_MS);
    await sleep(NO_INPUT_MS * 2);
    expect(noInputsOf(client)).toEqual([]);
    await waitFor(() => noInputsOf(client)[0], { what: "a noInput after the state's wait", timeoutMs: 5_000 });
    expect(performance.now() - longPlayedAt).toBeGreaterThanOrEqual(STATE_WAIT_MS - 50);

    // The answer's state names no wait (0): ingress's own again.
    const shortPlayedAt = await botSays(client, "t2", 0);
    const next = await waitFor(() => noInputsOf(client).find((i) => i.input?.$case === "noInput" && i.input.value.turnId === "t2"), {
      what: "a noInput naming t2",
      timeoutMs: 5_000,
    });
    expect(next).toBeDefined();
    expect(performance.now() - shortPlayedAt).toBeLessThan(STATE_WAIT_MS);
    client.close();
  });

  it("with NO_INPUT_MS=0, prompts again only after turns whose dialog state names a wait", async () => {
    const off = await startIngress({ NATS_URL: world.nats.url, REDIS_URL: world.redis.url, NO_INPUT_MS: "0", NO_SILENCE_DEADLINE_MS: "0" });
    try {
      const client = await startCall(off.wsUrl, world.dialog.items);
      client.echoMarks(0);
      await botSays(client, "t1");
      await sleep(NO_INPUT_MS * 2);
      expect(noInputsOf(client)).toEqual([]);
      await botSays(client, "t2", NO_INPUT_MS);
      await waitFor(() => noInputsOf(client)[0], { what: "a noInput after t2", timeoutMs: 5_000 });
      client.close();
    } finally {
      await off.handle.stop();
    }
  });

  it("sends nothing before the first turn or after the call ended", async () => {
    const client = await startCall(world.ingress.wsUrl, world.dialog.items);
    await sleep(NO_INPUT_MS * 2);
    expect(noInputsOf(client)).toEqual([]);
    client.echoMarks(0);
    await botSays(client, "t1");
    client.sendStop();
    await sleep(NO_INPUT_MS * 2);
    expect(noInputsOf(client)).toEqual([]);
    client.close();
  });
});
