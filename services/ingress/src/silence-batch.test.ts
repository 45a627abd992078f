// The caller's quiet stretches in fewer CallerAudio messages: a Twilio-speaking client sends loud and quiet frames,
// the test plays the asr's SpeechActivity, and what the asr would receive is read back from the bus.
import { performance } from "node:perf_hooks";
import { MULAW_DECODE_TABLE, mulawEncode } from "@voicebot/audio";
import { subjects } from "@voicebot/bus";
import { CallEnded, CallerAudio, SpeechActivity, SpeechActivity_Kind } from "@voicebot/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isQuiet, SAFE_SILENCE_LEVEL_DBFS } from "./silence-batch.js";
import {
  logs,
  metricValue,
  startCall,
  startIngress,
  useIngressWorld,
  waitFor,
  waitForLog,
  type Ingress,
  type TwilioClient,
} from "./test-support/harness.js";

const HANGOVER_MS = 200;
const HANGOVER_FRAMES = HANGOVER_MS / 20;
const BATCH = 10;
const world = useIngressWorld({ ingress: false });
let ingress: Ingress;
let perFrame: Ingress;
/** Default silence settings (hangover 1000 ms, 10 frames, -58 dBFS RMS). */
let defaults: Ingress;

beforeAll(async () => {
  // The minute below is sent at 10× real time: above the default message rate limit.
  const env = { ...world.env(), INGRESS_MAX_MSGS_PER_SEC: "2000", INGRESS_MSG_BURST: "4000" };
  ingress = await startIngress({ ...env, INGRESS_SILENCE_HANGOVER_MS: String(HANGOVER_MS), INGRESS_SILENCE_BATCH_FRAMES: String(BATCH) });
  perFrame = await startIngress({ ...env, INGRESS_SILENCE_BATCH_FRAMES: "0" });
  defaults = await startIngress(env);
});

afterAll(async () => {
  await ingress?.handle.stop();
  await perFrame?.handle.stop();
  await defaults?.handle.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** μ-law codes whose samples stay within ±56 of 32768: frames of them are about -60 dBFS RMS, quiet. */
const QUIET_CODES = [0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8, 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x7a, 0x79, 0x78];

/** A quiet frame whose bytes depend on `seed`, so every frame's payload can be told apart. */
function quietFrame(seed: number): Buffer {
  const frame = Buffer.alloc(160);
  let x = seed * 2654435761;
  for (let i = 0; i < 160; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    frame[i] = QUIET_CODES[x >>> 28];
  }
  return frame;
}

/** A frame as loud as speech. */
const loudFrame = (seed: number) => Buffer.alloc(160, 0x10 + (seed % 32));

interface Arrival {
  audio: CallerAudio;
  at: number;
}

function listen(callId: string) {
  const items: Arrival[] = [];
  const sub = world.bus.subscribe(subjects.callerAudio(callId), CallerAudio, (audio) => void items.push({ audio, at: performance.now() }), {
    name: "test",
    ordered: true,
  });
  return { items, sub };
}

const framesIn = (items: Arrival[]) => items.reduce((n, a) => n + a.audio.frameCount, 0);
const shape = (items: Arrival[]) => items.map((a) => [Number(a.audio.firstFrame), a.audio.frameCount]);

/** Every message holds whole frames, consecutive; returns frame index → its 160 bytes, each index exactly once. */
function framesOf(items: Arrival[]): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (const { audio } of items) {
    expect(audio.payload.length).toBe(audio.frameCount * 160);
    for (let i = 0; i < audio.frameCount; i++) {
      const index = Number(audio.firstFrame) + i;
      expect(out.has(index), `frame ${index} twice`).toBe(false);
      out.set(index, Buffer.from(audio.payload.subarray(i * 160, (i + 1) * 160)));
    }
  }
  return out;
}

/** Sends `payloads` as chunks `firstChunk`…, `perTick` of them every 20 ms (1 = real time). */
async function send(client: TwilioClient, firstChunk: number, payloads: Buffer[], perTick = 1): Promise<void> {
  const start = performance.now();
  for (let i = 0; i < payloads.length; i += perTick) {
    for (let j = i; j < Math.min(i + perTick, payloads.length); j++) client.sendMedia(firstChunk + j, payloads[j]);
    await sleep(Math.max(0, start + (i / perTick + 1) * 20 - performance.now()));
  }
}

function speech(callId: string, kind: SpeechActivity_Kind, utteranceId: string): void {
  world.bus.publish(subjects.speech(callId), SpeechActivity, SpeechActivity.create({ callId, kind, utteranceId, atMs: Date.now() }), callId);
}

const metric = (target: Ingress, name: string, labels: Record<string, string> = {}) => metricValue(target.baseUrl, `voicebot_ingress_${name}`, labels);

describe("quiet frames", () => {
  const level = -58;
  const dbfs = (samples: ArrayLike<number>) => {
    let energy = 0;
    for (let i = 0; i < samples.length; i++) energy += samples[i] ** 2;
    return 10 * Math.log10(energy / samples.length / 32768 ** 2);
  };
  const decode = (frame: Uint8Array) => Array.from(frame, (code) => MULAW_DECODE_TABLE[code]);

  it("are frames whose RMS is below the level: a real line's hiss is quiet though its peaks are not", () => {
    const tone = (rmsDbfs: number) => {
      const pcm = new Int16Array(160);
      const peak = 32768 * 10 ** (rmsDbfs / 20) * Math.SQRT2;
      for (let i = 0; i < 160; i++) pcm[i] = Math.round(peak * Math.sin((2 * Math.PI * 400 * i) / 8000));
      return mulawEncode(pcm);
    };
    expect(isQuiet(tone(-60), level)).toBe(true);
    expect(isQuiet(tone(-56), level)).toBe(false);

    // Gaussian hiss at -62 dBFS RMS (a quiet phone line), from a fixed seed (mulberry32).
    let seed = 7;
    const uniform = () => {
      let t = (seed = (seed + 0x6d2b79f5) >>> 0);
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return (((t ^ (t >>> 14)) >>> 0) + 1) / 2 ** 32;
    };
    const hiss = new Int16Array(160);
    for (let i = 0; i < 160; i++) hiss[i] = Math.round(32768 * 10 ** (-62 / 20) * Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform()));
    const line = mulawEncode(hiss);
    expect(Math.max(...decode(line).map(Math.abs))).toBeGreaterThan(32768 * 10 ** (-55 / 20)); // a peak rule at -55 said "sound"
    expect(isQuiet(line, level)).toBe(true);

    expect(isQuiet(quietFrame(1), level)).toBe(true);
    expect(isQuiet(loudFrame(1), level)).toBe(false);
    // Every frame of a multi-frame payload must be quiet: one loud frame among them is not averaged away.
    expect(isQuiet(Buffer.concat([quietFrame(1), quietFrame(2)]), level)).toBe(true);
    expect(isQuiet(Buffer.concat([quietFrame(1), quietFrame(2), quietFrame(3), loudFrame(4)]), level)).toBe(false);
  });

  it("can never make a 32 ms window of the asr reach its -55 dBFS gate, even with their energy where it counts most", () => {
    // Worse than any real case: a 256-sample window over the last 48 samples of one frame, all of the next and the
    // first 48 of the third (the asr's windows start 0, 32, 64, 96 or 128 samples into a frame, and so share fewer
    // samples with the outer two), each frame's whole allowance packed into the samples the window holds.
    const worstWindowDbfs = (levelDbfs: number) => {
      const frameLimit = 32768 ** 2 * 10 ** (levelDbfs / 10); // a quiet frame's largest mean square
      const loudestCode = (samples: number) => {
        let best = 0xff;
        for (let code = 0; code < 256; code++) {
          const v = MULAW_DECODE_TABLE[code];
          if (v > 0 && samples * v * v < 160 * frameLimit && v > MULAW_DECODE_TABLE[best]) best = code;
        }
        return best;
      };
      const packed = (from: number, to: number) => {
        const frame = new Uint8Array(160).fill(0xff);
        frame.fill(loudestCode(to - from), from, to);
        return frame;
      };
      const frames = [packed(112, 160), packed(0, 160), packed(0, 48)];
      for (const frame of frames) expect(isQuiet(frame, levelDbfs)).toBe(true);
      return dbfs([...decode(frames[0]).slice(112), ...decode(frames[1]), ...decode(frames[2]).slice(0, 48)]);
    };
    expect(worstWindowDbfs(-58)).toBeLessThan(-55);
    expect(worstWindowDbfs(-58)).toBeGreaterThan(-56); // the bound is close: nothing much louder exists
    expect(worstWindowDbfs(-56)).toBeGreaterThan(-55); // a level too near the gate would let a window through
    expect(SAFE_SILENCE_LEVEL_DBFS).toBeCloseTo(-57.73, 2);
  });

  it("a level above that is taken, with a warning at start", async () => {
    const warned = (line: Record<string, unknown>) => String(line.msg).startsWith("INGRESS_SILENCE_LEVEL_DBFS is above");
    expect(logs.some(warned)).toBe(false); // the ingresses above run at safe levels
    const loose = await startIngress({ NATS_URL: world.nats.url, REDIS_URL: world.redis.url, INGRESS_SILENCE_LEVEL_DBFS: "-55" });
    await waitForLog((line) => warned(line) && line.levelDbfs === -55, "the warning");
    await loose.handle.stop();
  });
});

describe("caller silence batching", () => {
  it("sends quiet audio past the hangover in messages of consecutive frames, every frame once, bytes unchanged", async () => {
    const before = { batched: await metric(ingress, "caller_audio_messages_total", { batched: "true" }), frames: await metric(ingress, "frames_in_total") };
    const client = await startCall(ingress.wsUrl, world.dialog.items);
    const heard = listen(client.callSid);
    await world.bus.nc.flush();
    const sent = [loudFrame(0), ...Array.from({ length: 120 }, (_, i) => quietFrame(i + 1))];
    await send(client, 1, sent);
    await waitFor(() => framesIn(heard.items) === 121, { what: "121 frames" });

    const stream = framesOf(heard.items);
    expect([...stream.keys()]).toEqual(Array.from({ length: 121 }, (_, i) => i));
    expect(Buffer.concat([...stream.values()]).equals(Buffer.concat(sent))).toBe(true);
    // The loud frame and the hangover one by one, then 10 frames a message.
    const expected = [...Array.from({ length: 1 + HANGOVER_FRAMES }, (_, i) => [i, 1]), ...Array.from({ length: 11 }, (_, i) => [11 + i * 10, 10])];
    expect(shape(heard.items)).toEqual(expected);
    for (const { audio } of heard.items) expect(Number(audio.receivedAtMs)).toBeGreaterThan(0);

    expect(await metric(ingress, "caller_audio_messages_total", { batched: "true" })).toBe(before.batched + 11);
    expect(await metric(ingress, "frames_in_total")).toBe(before.frames + 121);
    heard.sub.unsubscribe();
    client.close();
  });

  it("sends a loud frame after long quiet at once, the quiet frames held before it first, then frame by frame again", async () => {
    const client = await startCall(ingress.wsUrl, world.dialog.items);
    const heard = listen(client.callSid);
    await world.bus.nc.flush();
    await send(client, 1, [loudFrame(0), ...Array.from({ length: 65 }, (_, i) => quietFrame(i + 1))]);
    await waitFor(() => framesIn(heard.items) === 61, { what: "frames 0-60" });
    await sleep(100);
    expect(framesIn(heard.items)).toBe(61); // 61-65 are held: half a message

    const sentAt = performance.now();
    client.sendMedia(67, loudFrame(66));
    const loud = await waitFor(() => heard.items.find((a) => Number(a.audio.firstFrame) === 66), { what: "the loud frame" });
    console.log(`loud frame after quiet, socket -> bus subscriber: ${(loud.at - sentAt).toFixed(1)} ms`);
    // Sent at once: waiting for the batch to fill would never send it (nothing more comes); a generous bound only
    // catches a flush on some slow timer.
    expect(loud.at - sentAt).toBeLessThan(500);
    expect(shape(heard.items).slice(-2)).toEqual([
      [61, 5],
      [66, 1],
    ]);
    expect(heard.items.at(-2)!.at).toBeLessThanOrEqual(loud.at);

    await send(client, 68, Array.from({ length: 5 }, (_, i) => quietFrame(100 + i)));
    await waitFor(() => framesIn(heard.items) === 72, { what: "5 more frames" });
    expect(shape(heard.items).slice(-5)).toEqual(Array.from({ length: 5 }, (_, i) => [67 + i, 1]));
    heard.sub.unsubscribe();
    client.close();
  });

  it("sends every frame as it comes while the asr has an utterance open (STARTED to STOPPED), whatever the level", async () => {
    const client = await startCall(ingress.wsUrl, world.dialog.items);
    const callId = client.callSid;
    const heard = listen(callId);
    await world.bus.nc.flush();
    await send(client, 1, [loudFrame(0), ...Array.from({ length: 25 }, (_, i) => quietFrame(i + 1))]);
    await waitFor(() => framesIn(heard.items) === 21, { what: "frames 0-20" });

    speech(callId, SpeechActivity_Kind.KIND_STARTED, "0");
    // The frames held back (21-25) go out at once: the asr counts the silence that ends the utterance.
    await waitFor(() => framesIn(heard.items) === 26, { what: "the held frames" });
    await send(client, 27, Array.from({ length: 30 }, (_, i) => quietFrame(50 + i)));
    await waitFor(() => framesIn(heard.items) === 56, { what: "frames 26-55" });
    expect(shape(heard.items).slice(-30)).toEqual(Array.from({ length: 30 }, (_, i) => [26 + i, 1]));

    speech(callId, SpeechActivity_Kind.KIND_STOPPED, "0");
    await world.bus.nc.flush();
    await sleep(50);
    await send(client, 57, Array.from({ length: 20 }, (_, i) => quietFrame(90 + i)));
    await waitFor(() => framesIn(heard.items) === 76, { what: "frames 56-75" });
    expect(shape(heard.items).slice(-2)).toEqual([
      [56, 10],
      [66, 10],
    ]);
    expect([...framesOf(heard.items).keys()]).toEqual(Array.from({ length: 76 }, (_, i) => i));
    heard.sub.unsubscribe();
    client.close();
  });

  it("starts a new message at a gap, batches concealed frames with the rest, and counts only received frames", async () => {
    const before = { frames: await metric(ingress, "frames_in_total"), concealed: await metric(ingress, "inbound_frames_concealed_total") };
    const client = await startCall(ingress.wsUrl, world.dialog.items);
    const heard = listen(client.callSid);
    await world.bus.nc.flush();
    const payloads = new Map<number, Buffer>([[0, loudFrame(0)]]);
    for (let i = 1; i <= 140; i++) payloads.set(i, quietFrame(i));
    // Lost: 21-22 (concealed as silence), 41-100 (too long to conceal: a gap).
    const lost = (i: number) => (i >= 21 && i <= 22) || (i >= 41 && i <= 100);
    const start = performance.now();
    for (let i = 0; i <= 140; i++) {
      if (!lost(i)) client.sendMedia(i + 1, payloads.get(i)!);
      await sleep(Math.max(0, start + (i + 1) * 20 - performance.now()));
    }
    client.sendStop();
    await waitFor(() => framesIn(heard.items) === 141 - 60, { what: "every frame but the gap" });
    await sleep(100);

    const stream = framesOf(heard.items);
    expect([...stream.keys()]).toEqual(Array.from({ length: 141 }, (_, i) => i).filter((i) => i < 41 || i > 100));
    for (const [index, bytes] of stream) {
      expect(bytes.equals(index === 21 || index === 22 ? Buffer.alloc(160, 0xff) : payloads.get(index)!), `frame ${index}`).toBe(true);
    }
    // Frames 11-40 in three full messages, the concealed pair inside the third; nothing spans the gap.
    expect(shape(heard.items).filter(([, count]) => count > 1)).toContainEqual([21, 10]);
    for (const { audio } of heard.items) {
      const first = Number(audio.firstFrame);
      expect(first <= 40 && first + audio.frameCount - 1 >= 101).toBe(false);
    }
    expect(shape(heard.items).find(([first]) => first === 101)?.[0]).toBe(101);
    expect(await metric(ingress, "frames_in_total")).toBe(before.frames + 141 - 62);
    expect(await metric(ingress, "inbound_frames_concealed_total")).toBe(before.concealed + 2);
    heard.sub.unsubscribe();
  });

  it("a key sends the frames held back before the key's input", async () => {
    const client = await startCall(ingress.wsUrl, world.dialog.items);
    const heard = listen(client.callSid);
    await world.bus.nc.flush();
    await send(client, 1, [loudFrame(0), ...Array.from({ length: 15 }, (_, i) => quietFrame(i + 1))]);
    await waitFor(() => framesIn(heard.items) === 11, { what: "frames 0-10" });
    await sleep(100);
    expect(framesIn(heard.items)).toBe(11);
    client.sendDtmf("5");
    await waitFor(() => framesIn(heard.items) === 16, { what: "the held frames" });
    expect(shape(heard.items).at(-1)).toEqual([11, 5]);
    heard.sub.unsubscribe();
    client.close();
  });

  it("on hang-up, the frames held back are published before CallEnded", async () => {
    const client = await startCall(ingress.wsUrl, world.dialog.items);
    const callId = client.callSid;
    // One subscription for both subjects: the order ingress published them in.
    const order: Array<{ subject: string; data: Uint8Array }> = [];
    const sub = world.bus.nc.subscribe(`vb.v1.call.${callId}.>`, { callback: (_e, msg) => void order.push({ subject: msg.subject, data: msg.data }) });
    await world.bus.nc.flush();
    await send(client, 1, [loudFrame(0), ...Array.from({ length: 17 }, (_, i) => quietFrame(i + 1))]);
    await waitFor(() => order.filter((m) => m.subject === subjects.callerAudio(callId)).length === 11, { what: "frames 0-10" });
    client.sendStop();
    await waitFor(() => order.find((m) => m.subject === subjects.ended(callId)), { what: "CallEnded" });

    const endedAt = order.findIndex((m) => m.subject === subjects.ended(callId));
    expect(CallEnded.decode(order[endedAt].data).reason).toBe("caller_hangup");
    const audio = order.filter((m, i) => m.subject === subjects.callerAudio(callId) && i < endedAt).map((m) => CallerAudio.decode(m.data));
    expect([Number(audio.at(-1)!.firstFrame), audio.at(-1)!.frameCount]).toEqual([11, 7]);
    expect(audio.reduce((n, a) => n + a.frameCount, 0)).toBe(18);
    expect(order.slice(endedAt).some((m) => m.subject === subjects.callerAudio(callId))).toBe(false);
    sub.unsubscribe();
  });

  it("with INGRESS_SILENCE_BATCH_FRAMES=0 every frame is its own message", async () => {
    const before = await metric(perFrame, "caller_audio_messages_total", { batched: "true" });
    const client = await startCall(perFrame.wsUrl, world.dialog.items);
    const heard = listen(client.callSid);
    await world.bus.nc.flush();
    const sent = [loudFrame(0), ...Array.from({ length: 60 }, (_, i) => quietFrame(i + 1))];
    await send(client, 1, sent);
    await waitFor(() => framesIn(heard.items) === 61, { what: "61 frames" });
    expect(shape(heard.items)).toEqual(Array.from({ length: 61 }, (_, i) => [i, 1]));
    expect(Buffer.concat([...framesOf(heard.items).values()]).equals(Buffer.concat(sent))).toBe(true);
    expect(await metric(perFrame, "caller_audio_messages_total", { batched: "true" })).toBe(before);
    heard.sub.unsubscribe();
    client.close();
  });
});

describe("a mostly silent minute", () => {
  it("takes well under half the messages of per-frame publishing, at the default settings", async () => {
    // 60 s of call at 10× real time: the caller listens most of the time and speaks five times (9.5 s in all).
    // The test plays the asr: STARTED at the first word, STOPPED 600 ms (its default endpoint) after the last.
    const speaking: Array<[number, number]> = [
      [4_000, 6_000],
      [14_000, 16_500],
      [25_000, 27_000],
      [40_000, 42_000],
      [55_000, 56_000],
    ];
    const counts: Record<string, number> = {};
    for (const [name, target] of [
      ["batched", defaults],
      ["per-frame", perFrame],
    ] as const) {
      const client = await startCall(target.wsUrl, world.dialog.items);
      const callId = client.callSid;
      const heard = listen(callId);
      await world.bus.nc.flush();
      let chunk = 1;
      const sendMs = async (ms: number, frame: (i: number) => Buffer) => {
        const payloads = Array.from({ length: ms / 20 }, (_, i) => frame(chunk + i));
        await send(client, chunk, payloads, 10);
        chunk += payloads.length;
      };
      let at = 0;
      for (const [from, to] of speaking) {
        await sendMs(from - at, quietFrame);
        speech(callId, SpeechActivity_Kind.KIND_STARTED, String(chunk));
        await sendMs(to - from, loudFrame);
        await sendMs(600, quietFrame);
        speech(callId, SpeechActivity_Kind.KIND_STOPPED, "");
        at = to + 600;
      }
      await sendMs(60_000 - at, quietFrame);
      client.sendStop();
      await waitFor(() => framesIn(heard.items) === 3_000, { what: "3000 frames" });
      expect([...framesOf(heard.items).keys()]).toEqual(Array.from({ length: 3_000 }, (_, i) => i));
      counts[name] = heard.items.length;
      heard.sub.unsubscribe();
    }
    console.log(`CallerAudio messages for a 60 s call, 9.5 s of speech: per frame ${counts["per-frame"]}, batched ${counts.batched}`);
    expect(counts["per-frame"]).toBe(3_000);
    // Irreducible: 475 speech frames and 5 × 50 frames of hangover after speech (+ 50 at the start).
    expect(counts.batched).toBeLessThan(1_200);
  });
});
