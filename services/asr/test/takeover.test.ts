// End to end: asr replicas as real processes. A SIGKILLed owner's call is taken over by another replica, and a
// SIGTERMed (draining) owner hands its call over at once.
import { subjects, type Bus } from "@voicebot/bus";
import { DialogInput, Transcript } from "@voicebot/proto";
import { CallStore, keys } from "@voicebot/state";
import { startNats, startRedis, startServiceProcess, waitFor, type ServerHandle, type ServiceProcess } from "@voicebot/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { synthesizeTo8kPcm } from "./fixtures/make-audio.js";
import { collect, connectTestBus, newCallId, noiseFrames, standInDialog, startCall, streamAudio, utteranceFrames } from "./helpers.js";

let nats: ServerHandle;
let redis: ServerHandle;
let bus: Bus;
let store: CallStore;
const processes: ServiceProcess[] = [];
const dialogInputs: DialogInput[] = [];
let consumer: { stop(): Promise<void> } | undefined;
let speech: Int16Array;

async function replica(): Promise<ServiceProcess> {
  const proc = await startServiceProcess("asr", { NATS_URL: nats.url, REDIS_URL: redis.url, ASR_LEASE_MS: "1500" });
  processes.push(proc);
  return proc;
}

const instanceOf = (proc: ServiceProcess) => `asr-${proc.port}`;

async function metricValue(proc: ServiceProcess, name: string): Promise<number> {
  const text = await (await fetch(`${proc.baseUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

beforeAll(async () => {
  // The processes run the built service: the test command builds everything first.
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  bus = await connectTestBus(nats.url);
  store = CallStore.connect(redis.url);
  consumer = await standInDialog(bus, dialogInputs);
  speech = await synthesizeTo8kPcm("order status", "slt");
});

afterAll(async () => {
  for (const proc of processes) if (proc.process.exitCode === null) proc.kill();
  await consumer?.stop();
  await bus?.close();
  await store?.close();
  await Promise.allSettled([nats?.stop(), redis?.stop()]);
});

describe("asr replicas as processes", () => {
  it("a crashed owner's call is taken over within two seconds and its next utterance is recognized", async () => {
    const a = await replica();
    const callId = newCallId();
    const transcripts = collect(bus, subjects.transcript(callId), Transcript);
    await bus.nc.flush();
    await startCall(bus, store, callId);
    await store.setJson(keys.hints(callId), { mode: "phrases", phrases: ["order status", "agent", "goodbye"] });
    await waitFor(async () => (await store.leaseOwner(callId, "asr")) === instanceOf(a), { what: "A to claim the call" });
    const b = await replica();

    let next = await streamAudio(bus, callId, utteranceFrames(speech), 0);
    await waitFor(() => transcripts.some((t) => t.isFinal), { what: "A's final", timeoutMs: 10_000 });

    a.kill();
    const killedAt = Date.now();
    await waitFor(async () => (await store.leaseOwner(callId, "asr")) === instanceOf(b), { what: "B to take the call", intervalMs: 20 });
    expect(Date.now() - killedAt).toBeLessThan(2_500);
    // Counted by B as its take-over's lease write returns: read once B has had the moment to.
    await waitFor(async () => (await metricValue(b, "voicebot_asr_takeovers_total")) === 1, { what: "B to count the take-over" });

    // The caller keeps talking (the audio during the takeover is lost; ingress keeps publishing in real time).
    next = await streamAudio(bus, callId, noiseFrames(400), next);
    next = await streamAudio(bus, callId, utteranceFrames(speech), next);
    const finals = await waitFor(() => {
      const f = transcripts.filter((t) => t.isFinal);
      return f.length >= 2 ? f : undefined;
    }, { what: "B's final", timeoutMs: 10_000 });
    expect(finals.map((f) => f.text)).toEqual(["order status", "order status"]);
    expect(Number(finals[1].utteranceId)).toBeGreaterThan(Number(finals[0].utteranceId));
    await waitFor(() => dialogInputs.some((d) => d.inputId === `${callId}:utt:${finals[1].utteranceId}`), { what: "B's DialogInput" });
    await b.waitForLog((l) => l.msg === "final transcript" && l.callId === callId);
    await store.endCall(callId, "test");
    expect(await b.terminate()).toBe(0);
    expect(b.stderr()).toBe("");
  });

  it("a draining owner hands its call over at once", async () => {
    const a = await replica();
    const callId = newCallId();
    await startCall(bus, store, callId);
    await waitFor(async () => (await store.leaseOwner(callId, "asr")) === instanceOf(a), { what: "A to claim the call" });
    const b = await replica();

    const terminated = a.terminate();
    const sentAt = Date.now();
    await waitFor(async () => (await store.leaseOwner(callId, "asr")) === instanceOf(b), { what: "B to take the call", intervalMs: 20 });
    // Well before the 1.5 s lease could have expired.
    expect(Date.now() - sentAt).toBeLessThan(1_000);
    expect(await terminated).toBe(0);
    expect(a.logs.some((l) => l.msg === "call handed over" && l.callId === callId)).toBe(true);
    await store.endCall(callId, "test");
    expect(await b.terminate()).toBe(0);
    expect(a.stderr() + b.stderr()).toBe("");
  });
});
