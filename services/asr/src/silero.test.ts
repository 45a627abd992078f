import { rmsDbfs } from "@voicebot/audio";
import { waitFor } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chunks, silence8k, synthesizeTo8kPcm } from "../test/fixtures/make-audio.js";
import { createMetrics } from "./metrics.js";
import { defaultSileroOptions, SileroVad, type SileroModel, type SileroOptions } from "./silero.js";

/**
 * Runs frames through one stream and collects every decision (in order). Frames go in 100 ms at a time, each
 * batch once the earlier ones are decided: faster than real time, but never so far ahead that the stream
 * counts as overloaded.
 */
async function decide(vad: SileroVad, frames: Int16Array[]): Promise<boolean[]> {
  const decisions: boolean[] = [];
  const stream = vad.open((speech) => decisions.push(speech));
  for (let i = 0; i < frames.length; i += 5) {
    await waitFor(() => decisions.length >= i - 4, { what: "decisions to catch up", intervalMs: 1 });
    for (const frame of frames.slice(i, i + 5)) stream.push(frame);
  }
  // The last partial window is never complete: its frames stay undecided.
  const expected = frames.length - undecidedTail(frames.length);
  await waitFor(() => decisions.length >= expected, { what: `${expected} decisions` });
  stream.close();
  return decisions;
}

/** Frames whose middle sample lies in the incomplete last window. */
function undecidedTail(frameCount: number): number {
  const completeWindows = Math.floor((frameCount * 160) / 256);
  let n = 0;
  for (let f = frameCount - 1; f >= 0 && Math.floor((f * 160 + 80) / 256) >= completeWindows; f--) n++;
  return n;
}

const runs = (decisions: boolean[]) => decisions.map((d) => (d ? "s" : ".")).join("");

describe("SileroVad (the shipped v4 model, batched)", () => {
  let speech: Int16Array;
  let call: Int16Array;
  const vads: SileroVad[] = [];
  const create = async (options: Partial<SileroOptions> = {}, registry = new Registry()) => {
    const vad = await SileroVad.create({ ...defaultSileroOptions(), ...options }, createMetrics(registry));
    vads.push(vad);
    return vad;
  };

  beforeAll(async () => {
    speech = await synthesizeTo8kPcm("my order number is four two seven one", "kal", { leadMs: 1000, trailMs: 1000, noiseDbfs: -65 });
    // A call: line noise, a sentence, a pause, another sentence.
    const second = await synthesizeTo8kPcm("that's all, goodbye", "slt");
    call = new Int16Array(speech.length + second.length + 8000);
    call.set(speech, 0);
    call.set(second, speech.length);
    call.set(silence8k(1000, -65), speech.length + second.length);
  });

  afterAll(async () => {
    await Promise.all(vads.map((v) => v.close()));
  });

  it("hears the sentence and nothing in the line noise around it, one decision per frame in order", async () => {
    const vad = await create();
    const frames = chunks(speech);
    const decisions = await decide(vad, frames);
    expect(decisions).toHaveLength(frames.length - undecidedTail(frames.length));
    const first = decisions.indexOf(true);
    const last = decisions.lastIndexOf(true);
    // The speech is 1000 ms (50 frames) in; it lasts about 2.3 s.
    expect(first).toBeGreaterThanOrEqual(48);
    expect(first).toBeLessThanOrEqual(66); // flite's own lead-in, and "my" starts softly
    expect(last * 20).toBeLessThan(speech.length / 8 - 1000 + 300);
    expect(last * 20).toBeGreaterThan(speech.length / 8 - 1000 - 300);
    expect(decisions.slice(0, 45).some(Boolean)).toBe(false);
    // Mostly speech in between (pauses between words are short).
    expect(decisions.slice(first, last).filter(Boolean).length / (last - first)).toBeGreaterThan(0.8);
  });

  it("speech that stops at a frame's end lasts one more frame exactly when the next frame's window starts inside it", async () => {
    // A frame takes the decision of the window holding its middle sample; the frame after the last loud one shares
    // that window with it in 5 of the 8 frame/window alignments. The load test's endpoint arithmetic relies on this.
    const vad = await create();
    const all = chunks(await synthesizeTo8kPcm("order status", "slt"));
    const loud = all.map((f) => f.length === 160 && rmsDbfs(f) >= -35);
    const burst = all.slice(loud.indexOf(true), loud.lastIndexOf(true) + 1);
    const outcomes: string[] = [];
    for (let lead = 40; lead < 48; lead++) {
      const frames = [...chunks(silence8k(lead * 20, -65)), ...burst, ...chunks(silence8k(600, -65))];
      const lastLoud = lead + burst.length - 1;
      const decisions = await decide(vad, frames);
      const window = Math.floor(((lastLoud + 1) * 160 + 80) / 256);
      const shared = window * 256 < (lastLoud + 1) * 160;
      outcomes.push(`${decisions.lastIndexOf(true) - lastLoud}/${shared ? 1 : 0}`);
    }
    expect(outcomes).toEqual(outcomes.map((o) => `${o.split("/")[1]}/${o.split("/")[1]}`));
    expect(outcomes.filter((o) => o === "1/1")).toHaveLength(5);
  });

  it("gates line silence: quiet windows never reach the model and are non-speech", async () => {
    const registry = new Registry();
    const vad = await create({}, registry);
    const decisions = await decide(vad, chunks(silence8k(3000, -70)));
    expect(decisions.some(Boolean)).toBe(false);
    expect(vad.counts.inferred).toBe(0);
    expect(vad.counts.gated).toBe(Math.floor((3000 * 8) / 256));
    const windows = await registry.getSingleMetric("voicebot_asr_vad_windows_total")!.get();
    expect(windows.values.find((v) => v.labels.result === "gated")?.value).toBe(vad.counts.gated);
  });

  it("does not take a click or a steady tone for speech", async () => {
    const vad = await create();
    const click = new Int16Array(800); // 100 ms square wave burst, loud
    for (let i = 0; i < click.length; i++) click[i] = i % 8 < 4 ? 8000 : -8000;
    const tone = Int16Array.from({ length: 8000 }, (_, i) => Math.round(6000 * Math.sin((2 * Math.PI * 1000 * i) / 8000)));
    const audio = new Int16Array(8000 * 3);
    audio.set(silence8k(3000, -65));
    audio.set(click, 4000);
    audio.set(tone, 12000);
    const decisions = await decide(vad, chunks(audio));
    expect(runs(decisions)).not.toMatch(/ss/);
  });

  it("gives every call of a batch the decisions it gets alone (per-call state is kept across batches)", async () => {
    const alone = await create({ batchWaitMs: 0 });
    // Each call hears the same recording from a different point, so their states differ at every batch.
    const offsets = Array.from({ length: 24 }, (_, i) => i * 7 * 160);
    const audioOf = (offset: number) => chunks(call.subarray(offset, offset + Math.floor((call.length - offset) / 160) * 160));
    const expected: boolean[][] = [];
    for (const offset of offsets) expected.push(await decide(alone, audioOf(offset)));
    expect(alone.counts.inferred).toBe(alone.counts.batches); // alone: one window per inference

    const batched = await create({ batchWaitMs: 5 });
    const got = offsets.map(() => [] as boolean[]);
    const streams = offsets.map((_, i) => batched.open((speech) => got[i].push(speech)));
    const audios = offsets.map(audioOf);
    // All calls at once, 100 ms of each at a time, as soon as the calls have caught up (faster than real time,
    // but never so far ahead that a call counts as overloaded, however slow the machine).
    const longest = Math.max(...audios.map((a) => a.length));
    for (let f = 0; f < longest; f += 5) {
      await waitFor(() => got.every((g, i) => g.length >= Math.min(f, audios[i].length) - 4), { what: "the calls to catch up", intervalMs: 1 });
      streams.forEach((stream, i) => audios[i].slice(f, f + 5).forEach((frame) => stream.push(frame)));
    }
    await waitFor(() => got.every((g, i) => g.length === expected[i].length), { what: "every call's decisions" });
    got.forEach((g, i) => expect(runs(g), `call ${i}`).toBe(runs(expected[i])));
    expect(batched.counts.inferred / batched.counts.batches).toBeGreaterThan(5);
    expect(batched.counts.overload).toBe(0);
    for (const stream of streams) stream.close();
  });

  it("decides frames pushed ten at a time (multi-frame messages) as it decides them one by one, none by overload", async () => {
    const frames = chunks(call.subarray(0, call.length - (call.length % 160)));
    const single = await decide(await create(), frames);
    const vad = await create();
    const decisions: boolean[] = [];
    const stream = vad.open((speech) => decisions.push(speech));
    for (let i = 0; i < frames.length; i += 10) {
      // As at real time: the earlier messages are decided before the next one arrives (200 ms later).
      await waitFor(() => decisions.length >= i - undecidedTail(i), { what: "decisions to catch up", intervalMs: 1 });
      const message = frames.slice(i, i + 10);
      const pcm = new Int16Array(message.length * 160);
      message.forEach((frame, k) => pcm.set(frame, k * 160));
      stream.push(pcm);
    }
    await waitFor(() => decisions.length >= single.length, { what: "every decision" });
    stream.close();
    expect(runs(decisions)).toBe(runs(single));
    expect(vad.counts.inferred).toBeGreaterThan(50); // the sentences went to the model...
    expect(vad.counts.overload).toBe(0); // ...though seven windows at a time came in
  });

  it("delivers nothing after a stream is closed, and other streams carry on", async () => {
    const vad = await create({ batchWaitMs: 20 });
    const a: boolean[] = [];
    const b: boolean[] = [];
    const streamA = vad.open((speech) => a.push(speech));
    const streamB = vad.open((speech) => b.push(speech));
    const frames = chunks(speech.subarray(12000, 20000)); // speech: windows that need the model
    for (const frame of frames) {
      streamA.push(frame);
      streamB.push(frame);
    }
    streamA.close(); // while its windows wait for the batch
    const decidedBeforeClose = a.length;
    expect(decidedBeforeClose).toBeLessThan(frames.length / 2);
    await waitFor(() => b.length >= frames.length - undecidedTail(frames.length), { what: "B's decisions" });
    expect(a).toHaveLength(decidedBeforeClose);
    streamB.close();
  });

  it("never falls far behind real time: windows queued behind the model are decided by energy", async () => {
    const vad = await create();
    const frames = chunks(speech.subarray(0, speech.length - (speech.length % 160)));
    const decisions: boolean[] = [];
    const stream = vad.open((s) => decisions.push(s));
    // Four seconds of audio at once, as after a long stall of the replica.
    for (const frame of frames) stream.push(frame);
    await waitFor(() => decisions.length >= frames.length - undecidedTail(frames.length), { what: "every decision" });
    stream.close();
    expect(vad.counts.overload).toBeGreaterThan(50);
    // Only the last few windows (the allowed backlog) and the first one went to the model.
    expect(vad.counts.inferred).toBeLessThanOrEqual(8);
    // Energy still finds the sentence in the line noise.
    expect(decisions.slice(0, 45).some(Boolean)).toBe(false);
    expect(decisions.filter(Boolean).length).toBeGreaterThan(60);
  });

  it("decides by energy, and counts it, when inference fails", async () => {
    const registry = new Registry();
    const vad = await create({}, registry);
    // The model's session gone (as after a runtime failure): every inference throws.
    await (vad as unknown as { model: SileroModel }).model.close();
    const decisions = await decide(vad, chunks(speech.subarray(0, speech.length - (speech.length % 160))));
    expect(decisions.slice(0, 45).some(Boolean)).toBe(false);
    expect(decisions.filter(Boolean).length).toBeGreaterThan(60);
    const errors = await registry.getSingleMetric("voicebot_asr_vad_errors_total")!.get();
    expect(errors.values[0].value).toBeGreaterThan(0);
    const windows = await registry.getSingleMetric("voicebot_asr_vad_windows_total")!.get();
    expect(windows.values.find((v) => v.labels.result === "error")?.value).toBeGreaterThan(0);
  });

  it("refuses a file that is not a Silero v4 model", async () => {
    await expect(SileroVad.create({ ...defaultSileroOptions(), modelPath: "/nonexistent/silero.onnx" })).rejects.toThrow(/not loadable from \/nonexistent/);
  });
});
