import { Bus, silentLogger, subjects } from "@voicebot/bus";
import { AudioEncoding, CallStarted, DialogInput, KeypadPress, SpeakRequest, ToolCallRequest, ToolCallResult } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore, defaultStoreOptions, keys } from "@voicebot/state";
import { metricSum, startNats, startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import type { Redis } from "ioredis";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { definition } from "./service.js";

let nats: ServerHandle;
let redis: ServerHandle;
let dialog: ServiceHandle;
let bus: Bus;
let store: CallStore;
const speaks: SpeakRequest[] = [];

beforeAll(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  dialog = await startService(definition, { NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: "0", LOG_LEVEL: "error" });
  bus = await Bus.connect({ servers: nats.url, name: "redis-trips-test", log: silentLogger, registry: new Registry() });
  store = CallStore.connect(redis.url);
  bus.subscribe(subjects.ttsSpeak, SpeakRequest, (m) => void speaks.push(m), { name: "test.speak" });
  bus.serve(subjects.toolsCall, ToolCallRequest, ToolCallResult, (request) => answerTool(request), { name: "test.tools" });
  await bus.nc.flush();
});

afterAll(async () => {
  await bus?.close();
  await store?.close();
  await dialog?.stop();
  await Promise.all([nats?.stop(), redis?.stop()]);
});

/** Tool requests get this answer (no tools service runs here). */
let answerTool: (request: ToolCallRequest) => Promise<ToolCallResult> = async (request) =>
  ToolCallResult.create({ callId: request.callId, toolCallId: request.toolCallId, name: request.name, ok: false, errorCode: "failed" });

async function publish(callId: string, inputId: string, input: DialogInput["input"]): Promise<void> {
  const message = DialogInput.create({ callId, inputId, atMs: Date.now() });
  message.input = input;
  await bus.publishDurable(subjects.dialogInput(callId), DialogInput, message, inputId, callId);
}

/** The input is done once its turn is saved (no input in progress) and the turn lease is released. */
async function settled(callId: string, turnId: string): Promise<void> {
  await waitFor(() => speaks.some((s) => s.callId === callId && s.turnId === turnId && s.turnDone), { what: `turn ${turnId}` });
  await waitFor(
    async () => {
      const state = (await store.loadDialog<{ inProgress?: unknown }>(callId)).value;
      return state !== undefined && state.inProgress === undefined && (await store.leaseOwner(callId, "dialog")) === undefined;
    },
    { what: "the turn saved and its lease released" },
  );
}

async function startCall(name: string): Promise<string> {
  const callId = `CA${name}${Date.now()}`;
  await store.createCall({ callSid: callId, provider: "twilio", streamSid: "MZ1", agent: "order-line", from: "", to: "", startedAt: new Date().toISOString() });
  const started = CallStarted.create({ callId, provider: "twilio", agent: "order-line", botFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 } });
  await publish(callId, `${callId}:start`, { $case: "callStarted", value: started });
  await settled(callId, "t1");
  return callId;
}

async function key(callId: string, digit: string, n: number): Promise<void> {
  await publish(callId, `${callId}:dtmf:${n}`, { $case: "keypad", value: KeypadPress.create({ callId, digit, atMs: Date.now() }) });
}

const metric = (name: string, labels: Record<string, string>) => metricSum(dialog.ctx.registry, name, labels);

describe("dialog Redis use", () => {
  it("a keypad input costs a handful of Redis commands in a few round trips", async () => {
    const callId = await startCall("trips");

    // What the dialog's own Redis connection sends for one key press: commands (MONITOR) and socket writes, each
    // write being one round trip that the dialog waits for (concurrent commands share a write: auto-pipelining).
    const dialogRedis = dialog.ctx.store.redis as Redis & { stream: { write: (...args: unknown[]) => boolean; localPort: number } };
    const source = `127.0.0.1:${dialogRedis.stream.localPort}`;
    const commands: string[] = [];
    let caughtUp = false;
    const monitor = await store.redis.monitor();
    monitor.on("monitor", (_time: string, args: string[], from: string) => {
      // The store's own heartbeat PING may fall in the window: not part of the input.
      if (from === source && args[0].toUpperCase() !== "PING") commands.push(args[0].toUpperCase());
      else if (args[0].toUpperCase() === "ECHO" && args[1] === "trips-done") caughtUp = true;
    });
    const write = dialogRedis.stream.write;
    let writes = 0;
    dialogRedis.stream.write = (...args: unknown[]) => {
      if (!/^\*1\r\n\$4\r\nping\r\n$/i.test(String(args[0]))) writes++;
      return write.apply(dialogRedis.stream, args);
    };
    try {
      await key(callId, "1", 1);
      await settled(callId, "t2");
    } finally {
      dialogRedis.stream.write = write;
    }
    // MONITOR reports on its own connection: wait for a marker sent after the input was done.
    await store.redis.echo("trips-done");
    await waitFor(() => caughtUp, { what: "MONITOR to catch up" });
    monitor.disconnect();
    console.log(`one keypad input: ${commands.length} Redis commands in ${writes} writes: ${commands.join(" ")}`);
    // Take the turn (call state + lease + state, and the input marked in progress with its once-mark: the one
    // round trip before the engine), the caller's line (+ its once-mark), the bot's line, save the next state (+
    // hints + lease release + the mark cleared).
    expect(commands).toEqual(["EVALSHA", "EVALSHA", "EVALSHA", "EVALSHA"]);
    expect(writes).toBeLessThanOrEqual(4);
  });

  it("a turn that finishes after the hang-up leaves nothing of the call but its record, with the record's TTL", async () => {
    const callId = await startCall("hangup");
    await key(callId, "1", 1);
    await settled(callId, "t2");
    // The caller hangs up while the order is being looked up; the turn still says the answer and sets hints.
    answerTool = async (request) => {
      await store.endCall(callId, "caller_hangup");
      const order = { found: true, order_number: "12345", status: "shipped", carrier: "UPS", eta: "2030-01-04", eta_text: "Friday, January 4" };
      return ToolCallResult.create({ callId, toolCallId: request.toolCallId, name: request.name, ok: true, resultJson: JSON.stringify(order) });
    };
    const dropped = await metric("voicebot_dialog_inputs_dropped_total", { reason: "ended_call" });
    const conflicts = await metric("voicebot_dialog_state_conflicts_total");
    for (const [i, digit] of [..."12345#"].entries()) await key(callId, digit, i + 2);
    await waitFor(async () => (await metric("voicebot_dialog_inputs_dropped_total", { reason: "ended_call" })) > dropped, { what: "the turn to be dropped" });
    expect(await metric("voicebot_dialog_state_conflicts_total")).toBe(conflicts); // a hang-up is not a state conflict
    await waitFor(() => speaks.some((s) => s.callId === callId && s.turnId === "t3" && s.turnDone), { what: "the answer spoken" });

    expect(await store.redis.exists(keys.hints(callId), keys.dialog(callId))).toBe(0);
    const left = await store.redis.keys(`vb:{${callId}}:*`);
    expect(left.sort()).toEqual([keys.meta(callId), keys.transcript(callId)].sort());
    for (const key of left) {
      const ttl = await store.redis.pttl(key);
      expect(ttl, key).toBeGreaterThan(0);
      expect(ttl, key).toBeLessThanOrEqual(defaultStoreOptions.recordTtlMs);
    }
    // The answer said after the hang-up is in the record all the same.
    expect((await store.getRecord(callId))!.transcript.at(-1)).toMatchObject({ role: "bot", text: expect.stringContaining("has shipped") });
  });
});
