import { Bus, silentLogger, streams, subjects } from "@voicebot/bus";
import {
  AnsweredBy,
  AudioEncoding,
  CallControl,
  CallControl_Action,
  CallEnded,
  CallStarted,
  DialogInput,
  FalseInterruption,
  KeypadPress,
  NoInput,
  PlaybackEvent,
  PlaybackEvent_Kind,
  SpeakRequest,
  ToolCallRequest,
  Transcript,
} from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore, keys } from "@voicebot/state";
import { metricSum, startNats, startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { definition as toolsDefinition } from "../../tools/src/service.js";
import { definition } from "./service.js";

let nats: ServerHandle;
let redis: ServerHandle;
let dialog: ServiceHandle;
let tools: ServiceHandle | undefined;
let bus: Bus;
let store: CallStore;
const speaks: SpeakRequest[] = [];
let counter = 0;

beforeAll(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const env = { NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: "0", LOG_LEVEL: "error" };
  tools = await startService(toolsDefinition, env);
  dialog = await startService(definition, { ...env, DIALOG_LEASE_WAIT_MS: "100" });
  bus = await Bus.connect({ servers: nats.url, name: "dialog-test", log: silentLogger, registry: new Registry() });
  store = CallStore.connect(redis.url);
  bus.subscribe(subjects.ttsSpeak, SpeakRequest, (m) => void speaks.push(m), { name: "test.speak" });
  await bus.nc.flush();
});

afterAll(async () => {
  await bus?.close();
  await store?.close();
  await dialog?.stop();
  await tools?.stop();
  await Promise.all([nats?.stop(), redis?.stop()]);
});

/** Plays the parts of ingress and asr for one call: creates it, publishes its dialog inputs, watches the output. */
class TestCall {
  readonly id = `CAdialog${++counter}x${Date.now()}`;
  readonly controls: CallControl[] = [];
  private dtmfSeq = 0;
  private utterance = 0;
  readonly startedAtMs = Date.now() - 500;

  /** The call's record, as ingress writes it before it queues the start; and its controls watched. */
  async open(agent = "order-line"): Promise<void> {
    bus.subscribe(subjects.control(this.id), CallControl, (m) => void this.controls.push(m), { name: "test.control" });
    await bus.nc.flush();
    await store.createCall({ callSid: this.id, provider: "twilio", streamSid: "MZ1", agent, from: "+15551234567", to: "+15557654321", startedAt: new Date(this.startedAtMs).toISOString() });
  }

  async start(agent = "order-line"): Promise<void> {
    await this.open(agent);
    await this.announce(agent);
  }

  async announce(agent = "order-line"): Promise<void> {
    const started = CallStarted.create({
      callId: this.id,
      provider: "twilio",
      agent,
      botFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 },
      startedAtMs: this.startedAtMs,
    });
    await this.publish({ $case: "callStarted", value: started }, `${this.id}:start`);
  }

  async key(digit: string, atMs = Date.now()): Promise<string> {
    const id = `${this.id}:dtmf:${++this.dtmfSeq}`;
    await this.publish({ $case: "keypad", value: KeypadPress.create({ callId: this.id, digit, atMs }) }, id);
    return id;
  }

  async keys(digits: string): Promise<void> {
    for (const d of digits) await this.key(d);
  }

  async say(text: string, extra: Partial<Transcript> = {}, inputId?: string, msgId?: string): Promise<string> {
    const utteranceId = `u${++this.utterance}`;
    const id = inputId ?? `${this.id}:utt:${utteranceId}`;
    const transcript = Transcript.create({
      callId: this.id,
      utteranceId,
      text,
      isFinal: true,
      confidence: 0.87,
      alternatives: [],
      engine: "test",
      speechEndMs: Date.now() - 300,
      finalAtMs: Date.now(),
      endpointWaitMs: 300,
      ...extra,
    });
    await this.publish({ $case: "transcript", value: transcript }, msgId ?? id, id);
    return id;
  }

  async publish(input: DialogInput["input"], msgId: string, inputId = msgId): Promise<void> {
    const message = DialogInput.create({ callId: this.id, inputId, atMs: Date.now() });
    message.input = input;
    await bus.publishDurable(subjects.dialogInput(this.id), DialogInput, message, msgId, this.id);
  }

  chunks(turnId: string): SpeakRequest[] {
    return speaks.filter((s) => s.callId === this.id && s.turnId === turnId).sort((a, b) => a.chunkSeq - b.chunkSeq);
  }

  turnIds(): string[] {
    return [...new Set(speaks.filter((s) => s.callId === this.id).map((s) => s.turnId))];
  }

  /** Waits until every chunk of the turn arrived; returns its text. */
  async turn(turnId: string): Promise<string> {
    const chunks = await waitFor(
      () => {
        const got = this.chunks(turnId);
        const last = got.find((c) => c.turnDone);
        return last && got.length === last.chunkSeq + 1 && got.every((c, i) => c.chunkSeq === i) ? got : undefined;
      },
      { what: `turn ${turnId} of ${this.id}`, timeoutMs: 10_000 },
    );
    return chunks.map((c) => c.text).join(" ");
  }

  async hints(): Promise<{ mode: string; phrases: string[] } | undefined> {
    return store.getJson(keys.hints(this.id));
  }

  async record() {
    return (await store.getRecord(this.id))!;
  }
}

const metric = (name: string, labels: Record<string, string> = {}) => metricSum(dialog.ctx.registry, name, labels);

/** A caller line after the conversation is over is dropped, unanswered. */
async function expectLateInputDropped(call: TestCall): Promise<void> {
  const before = await metric("voicebot_dialog_inputs_dropped_total", { reason: "conversation_over" });
  await call.say("hello?");
  await waitFor(async () => (await metric("voicebot_dialog_inputs_dropped_total", { reason: "conversation_over" })) > before, {
    what: "the late input to be dropped",
  });
}

const GREETING =
  "Thanks for calling the demo shop. To check an order, say order status or press 1. To talk to an agent, say agent or press 0.";
const ASK = "Please say or key in your order number, then press pound.";

describe("dialog service", () => {
  it("greets on callStarted, with cacheable chunks, timing and phrase hints", async () => {
    const call = new TestCall();
    await call.start();
    expect(await call.turn("t1")).toBe(GREETING);
    const chunks = call.chunks("t1");
    expect(chunks.map((c) => c.chunkSeq)).toEqual([0, 1, 2]);
    expect(chunks.map((c) => c.turnDone)).toEqual([false, false, true]);
    for (const chunk of chunks) {
      expect(chunk.cacheable).toBe(true);
      expect(chunk.format).toEqual({ encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 });
      expect(chunk.timing!.inputEndMs).toBe(call.startedAtMs);
      expect(chunk.timing!.dialogStartMs).toBeGreaterThanOrEqual(call.startedAtMs);
      expect(chunk.timing!.dialogFirstTextMs).toBeGreaterThanOrEqual(chunk.timing!.dialogStartMs);
    }
    await waitFor(async () => (await call.record()).transcript.length === 1, { what: "greeting in the record" });
    expect((await call.record()).transcript[0]).toMatchObject({ role: "bot", text: GREETING });
    expect(await call.hints()).toMatchObject({ mode: "phrases", phrases: expect.arrayContaining(["order status", "agent"]) });
  });

  it('"1" then "12345#" looks up the order and says it has shipped', async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await call.key("1");
    expect(await call.turn("t2")).toBe(ASK);
    expect(await call.hints()).toMatchObject({ mode: "digits" });
    // The ask leaves the caller in ask_order, whose no-input wait (15 s) goes to ingress with the turn's speech.
    expect(call.chunks("t1").at(-1)!.noInputMs).toBe(0); // menu: ingress's default
    expect(call.chunks("t2").at(-1)!.noInputMs).toBe(15_000);
    await call.keys("12345");
    const poundAt = Date.now();
    await call.key("#", poundAt);
    const reply = await call.turn("t3");
    expect(reply).toMatch(/^Order 1 2 3 4 5 has shipped with UPS and should arrive on [A-Z]\w+day, [A-Z]\w+ \d+\. Is there anything else\?/);
    const first = call.chunks("t3")[0];
    expect(first.cacheable).toBe(false); // it holds the order number
    expect(first.timing!.inputEndMs).toBe(poundAt);
    expect(first.timing!.toolMs).toBeGreaterThanOrEqual(0);
    expect(call.chunks("t3").at(-1)!.cacheable).toBe(true);
    expect(call.chunks("t3").at(-1)!.noInputMs).toBe(0); // back in a state without a wait of its own

    await waitFor(async () => (await call.record()).transcript.length === 5, { what: "five transcript entries" });
    const record = await call.record();
    expect(record.transcript.map((e) => [e.role, e.text, e.source])).toEqual([
      ["bot", GREETING, undefined],
      ["caller", "1", "keypad"],
      ["bot", ASK, undefined],
      ["caller", "12345#", "keypad"],
      ["bot", reply, undefined],
    ]);
    expect(record.toolCalls).toHaveLength(1);
    expect(record.toolCalls[0]).toMatchObject({ name: "lookup_order", ok: true, arguments: { order_number: "12345" } });
    expect(await call.hints()).toMatchObject({ mode: "phrases" });
    expect(await metric("voicebot_dialog_turns_total", { outcome: "slot" })).toBeGreaterThan(0);
  });

  it('"0" transfers: the line is spoken, then transfer_to_human sends CallControl TRANSFER after that turn', async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await call.key("0");
    expect(await call.turn("t2")).toBe("Transferring you to an agent now.");
    await waitFor(() => call.controls.length > 0, { what: "CallControl" });
    expect(call.controls).toEqual([
      expect.objectContaining({ callId: call.id, action: CallControl_Action.ACTION_TRANSFER, afterTurnId: "t2", target: "+15550100" }),
    ]);
    const record = await call.record();
    expect(record.toolCalls.map((t) => t.name)).toEqual(["transfer_to_human"]);
  });

  it('"9" says goodbye and hangs up after the goodbye turn; later input is ignored', async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await call.key("9");
    expect(await call.turn("t2")).toBe("Thanks for calling. Goodbye.");
    await waitFor(() => call.controls.length > 0, { what: "CallControl" });
    expect(call.controls[0]).toMatchObject({ action: CallControl_Action.ACTION_HANGUP, afterTurnId: "t2" });

    await expectLateInputDropped(call);
    expect(call.turnIds()).toEqual(["t1", "t2"]);
    // Marked in progress when its turn was taken, then dropped: the mark went with it.
    expect(await store.redis.hget(keys.dialog(call.id), "p")).toBeNull();
  });

  it("an answering machine's verdict on a call placed to leave a message: the agent's voicemail, then the hang-up after it", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await call.publish({ $case: "answeredBy", value: AnsweredBy.create({ answeredBy: "machine_end_beep", onMachine: "voicemail", detectionMs: 4_100 }) }, `${call.id}:amd`);
    expect(await call.turn("t2")).toBe("Hello, this is the demo shop calling about your order. Please call us back when it suits you. Goodbye.");
    await waitFor(() => call.controls.length > 1, { what: "CallControl" });
    // First what the agent was saying to the machine is cut off, down to anything still on its way; then the hang-up.
    expect(call.controls[0]).toMatchObject({ action: CallControl_Action.ACTION_CLEAR, beforeTurnId: "t2", reason: "voicemail" });
    expect(call.controls[1]).toMatchObject({ action: CallControl_Action.ACTION_HANGUP, afterTurnId: "t2" });
    // Whatever the machine records next is no caller to answer.
    await expectLateInputDropped(call);
    expect(await metric("voicebot_dialog_turns_total", { outcome: "voicemail" })).toBeGreaterThan(0);
  });

  it("a machine's verdict queued before the call's start (the stream had just begun): the message without a greeting, then the hang-up", async () => {
    const call = new TestCall();
    await call.open();
    const dropped = await metric("voicebot_dialog_inputs_dropped_total", { reason: "already_started" });
    await call.publish({ $case: "answeredBy", value: AnsweredBy.create({ answeredBy: "machine_end_beep", onMachine: "voicemail" }) }, `${call.id}:amd`);
    await call.announce();
    await waitFor(async () => (await metric("voicebot_dialog_inputs_dropped_total", { reason: "already_started" })) > dropped, { what: "the start dropped" });
    const [turnId] = call.turnIds();
    expect(call.turnIds()).toEqual([turnId]);
    expect(await call.turn(turnId)).toBe("Hello, this is the demo shop calling about your order. Please call us back when it suits you. Goodbye.");
    await waitFor(() => call.controls.length > 1, { what: "CallControl" });
    expect(call.controls.map((c) => [CallControl_Action[c.action], c.beforeTurnId, c.afterTurnId])).toEqual([
      ["ACTION_CLEAR", turnId, ""],
      ["ACTION_HANGUP", "", turnId],
    ]);
  });

  it("a cough that cut the greeting off (too short to be speech) lets the greeting go on: the sentences not heard are said again", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    const heard = "Thanks for calling the demo shop.";
    const interrupted = PlaybackEvent.create({ callId: call.id, turnId: "t1", kind: PlaybackEvent_Kind.KIND_INTERRUPTED, chunkSeq: 0, atMs: Date.now(), heardText: heard });
    await call.publish({ $case: "playback", value: interrupted }, `${call.id}:int:t1`);
    await call.publish({ $case: "falseInterruption", value: FalseInterruption.create({ turnId: "t1", utteranceId: "77" }) }, `${call.id}:false-int:MZ1:77`);
    expect(await call.turn("t2")).toBe("To check an order, say order status or press 1. To talk to an agent, say agent or press 0.");
    await waitFor(async () => (await call.record()).transcript.length === 2, { what: "the rest of the greeting in the record" });
    expect((await call.record()).transcript.map((e) => [e.role, e.text, e.interrupted])).toEqual([
      ["bot", heard, true],
      ["bot", "To check an order, say order status or press 1. To talk to an agent, say agent or press 0.", undefined],
    ]);
    expect(await metric("voicebot_dialog_turns_total", { outcome: "resumed" })).toBeGreaterThan(0);

    // Said once: the same sound reported again, or one that names a turn the conversation has left, changes nothing.
    const before = await metric("voicebot_dialog_inputs_dropped_total", { reason: "stale_false_interruption" });
    await call.publish({ $case: "falseInterruption", value: FalseInterruption.create({ turnId: "t1", utteranceId: "78" }) }, `${call.id}:false-int:MZ1:78`);
    await waitFor(async () => (await metric("voicebot_dialog_inputs_dropped_total", { reason: "stale_false_interruption" })) > before, { what: "the stale one dropped" });
    await call.key("1");
    expect(await call.turn("t3")).toBe(ASK);
  });

  it("a cough that cut off a turn and the one queued behind it: the unheard rest of both is said again; a no-input wait naming the first is not stale", async () => {
    const cutTwo = async (call: TestCall) => {
      await call.start();
      await call.turn("t1");
      await call.key("1");
      expect(await call.turn("t2")).toBe(ASK);
      // t1 was still playing when the cough came; t2 waited behind it and was cut before a word of it played.
      for (const [turnId, heardText] of [["t1", "Thanks for calling the demo shop."], ["t2", ""]]) {
        const event = PlaybackEvent.create({ callId: call.id, turnId, kind: PlaybackEvent_Kind.KIND_INTERRUPTED, chunkSeq: 0, atMs: Date.now(), heardText });
        await call.publish({ $case: "playback", value: event }, `${call.id}:int:${turnId}`);
      }
    };
    const coughed = new TestCall();
    await cutTwo(coughed);
    await coughed.publish({ $case: "falseInterruption", value: FalseInterruption.create({ turnId: "t1", utteranceId: "40" }) }, `${coughed.id}:false-int:MZ1:40`);
    expect(await coughed.turn("t3")).toBe(`To check an order, say order status or press 1. To talk to an agent, say agent or press 0. ${ASK}`);

    const silent = new TestCall();
    await cutTwo(silent);
    await silent.publish({ $case: "noInput", value: NoInput.create({ turnId: "t1" }) }, `${silent.id}:noinput:MZ1:1`);
    expect(await silent.turn("t3")).toMatch(/^Sorry, I didn't get that\./);
  });

  it("spoken order status, then a spoken number, looks the order up", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await call.say("order status please");
    expect(await call.turn("t2")).toBe(ASK);
    const speechEnd = Date.now() - 400;
    await call.say("one two three four five", { speechEndMs: speechEnd, finalAtMs: speechEnd + 350, endpointWaitMs: 350 });
    expect(await call.turn("t3")).toContain("has shipped");
    const timing = call.chunks("t3")[0].timing!;
    expect(timing).toMatchObject({ inputEndMs: speechEnd, asrFinalMs: speechEnd + 350, endpointWaitMs: 350 });
    const record = await call.record();
    expect(record.toolCalls[0].arguments).toEqual({ order_number: "12345" });
    expect(record.transcript.filter((e) => e.role === "caller")).toEqual([
      expect.objectContaining({ text: "order status please", source: "speech", confidence: expect.closeTo(0.87, 5) }),
      expect.objectContaining({ text: "one two three four five", source: "speech" }),
    ]);
  });

  it("reads back an order number heard with low confidence, and looks it up after a yes", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await call.key("1");
    await call.turn("t2");
    await call.say("one two three four five", { confidence: 0.55 });
    expect(await call.turn("t3")).toBe("I heard 1 2 3 4 5. Is that right? Say yes, or key in the number.");
    expect(await call.hints()).toMatchObject({ mode: "phrases", phrases: expect.arrayContaining(["yes", "no"]) });
    expect((await call.record()).toolCalls).toEqual([]);
    await call.say("yes", { confidence: 0.9 });
    expect(await call.turn("t4")).toContain("has shipped with UPS");
    expect((await call.record()).toolCalls.map((t) => t.arguments)).toEqual([{ order_number: "12345" }]);
    expect(await metric("voicebot_dialog_digit_confirmations_total", { outcome: "asked" })).toBeGreaterThan(0);
    expect(await metric("voicebot_dialog_digit_confirmations_total", { outcome: "confirmed" })).toBeGreaterThan(0);
  });

  it("an empty transcript gets a reprompt", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await call.say("");
    const reprompt = await call.turn("t2");
    expect(reprompt).toMatch(/^Sorry, I didn't catch that\./);
    expect(call.chunks("t2").every((c) => c.cacheable)).toBe(true);
    expect(await metric("voicebot_dialog_reprompts_total", { agent: "order-line" })).toBeGreaterThan(0);
  });

  it("a redelivered input (same inputId) is acted on once", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    const inputId = await call.say("order status");
    // The same input again, as JetStream redelivers it after a worker died between saving and acking.
    await call.say("order status", {}, inputId, `${inputId}:again`);
    await call.say("goodbye");
    expect(await call.turn("t2")).toBe(ASK);
    expect(await call.turn("t3")).toBe("Thanks for calling. Goodbye.");
    expect(call.turnIds()).toEqual(["t1", "t2", "t3"]);
    const record = await call.record();
    expect(record.transcript.filter((e) => e.role === "caller").map((e) => e.text)).toEqual(["order status", "goodbye"]);
    expect(await metric("voicebot_dialog_inputs_dropped_total", { reason: "duplicate" })).toBeGreaterThan(0);
    expect(await store.redis.hget(keys.dialog(call.id), "p")).toBeNull();
  });

  it("an input left in progress inside the state (the older format, during a rolling update) is done before the next", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    // An older replica died on key "1": it kept the input in progress inside the state.
    const leftId = `${call.id}:dtmf:left`;
    const left = DialogInput.create({ callId: call.id, inputId: leftId, atMs: Date.now(), input: { $case: "keypad", value: KeypadPress.create({ callId: call.id, digit: "1", atMs: Date.now() }) } });
    const state = JSON.parse((await store.redis.hget(keys.dialog(call.id), "d"))!) as Record<string, unknown>;
    state.inProgress = { inputId: leftId, input: Buffer.from(DialogInput.encode(left).finish()).toString("base64") };
    await store.redis.hset(keys.dialog(call.id), "d", JSON.stringify(state));

    await call.say("goodbye");
    expect(await call.turn("t22")).toBe(ASK); // the left input, redone (numbered past what it may have sent)
    expect(await call.turn("t23")).toBe("Thanks for calling. Goodbye.");
    const saved = JSON.parse((await store.redis.hget(keys.dialog(call.id), "d"))!) as { inProgress?: unknown; processed: string[] };
    expect(saved.inProgress).toBeUndefined();
    expect(saved.processed).toContain(leftId);
    expect(await store.redis.hget(keys.dialog(call.id), "p")).toBeNull();
  });

  it("a start for a call that has a state is dropped without ever being marked in progress; an unreadable mark is replaced", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    const before = await metric("voicebot_dialog_inputs_dropped_total", { reason: "already_started" });
    const started = CallStarted.create({ callId: call.id, provider: "twilio", agent: "order-line", botFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 }, startedAtMs: call.startedAtMs });
    await call.publish({ $case: "callStarted", value: started }, `${call.id}:restart:1`);
    await waitFor(async () => (await metric("voicebot_dialog_inputs_dropped_total", { reason: "already_started" })) > before, { what: "the late start to be dropped" });
    // Not marked, so no lost clear could leave it behind for the next input to redo (the greeting replayed).
    expect(await store.redis.hexists(keys.once(call.id), `dialog-input:${call.id}:restart:1`)).toBe(0);
    expect(await store.redis.hget(keys.dialog(call.id), "p")).toBeNull();

    await store.redis.hset(keys.dialog(call.id), "p", "{not json");
    await call.key("1");
    expect(await call.turn("t2")).toBe(ASK);
    expect(call.turnIds()).toEqual(["t1", "t2"]);
    expect(await store.redis.hget(keys.dialog(call.id), "p")).toBeNull();
  });

  it("a start left in progress by a replica that died before saving anything is played before the next input", async () => {
    const call = new TestCall();
    await store.createCall({ callSid: call.id, provider: "twilio", streamSid: "MZ1", agent: "order-line", from: "", to: "", startedAt: new Date(call.startedAtMs).toISOString() });
    // What a replica leaves when it dies right after taking the call's first turn: the start marked in progress
    // (with its once-mark), no dialog state yet. JetStream would hand the start back only after the ack wait.
    const inputId = `${call.id}:start`;
    const started = CallStarted.create({ callId: call.id, provider: "twilio", agent: "order-line", botFormat: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 }, startedAtMs: call.startedAtMs });
    const input = Buffer.from(DialogInput.encode(DialogInput.create({ callId: call.id, inputId, atMs: call.startedAtMs, input: { $case: "callStarted", value: started } })).finish()).toString("base64");
    await store.redis.hset(keys.dialog(call.id), "v", "1", "p", JSON.stringify({ inputId, input }));
    await store.redis.hset(keys.once(call.id), `dialog-input:${inputId}`, "1");

    await call.key("1");
    // The start is redone first (its turns numbered past what the dead replica may have sent), then the key.
    expect(await call.turn("t21")).toBe(GREETING);
    expect(await call.turn("t22")).toBe(ASK);
    expect(call.turnIds()).toEqual(["t21", "t22"]);
    expect(await store.redis.hget(keys.dialog(call.id), "p")).toBeNull();
    // The start's own redelivery comes later and is dropped as a duplicate.
    const before = await metric("voicebot_dialog_inputs_dropped_total", { reason: "duplicate" });
    await call.publish({ $case: "callStarted", value: started }, `${inputId}:redelivered`, inputId);
    await waitFor(async () => (await metric("voicebot_dialog_inputs_dropped_total", { reason: "duplicate" })) > before, { what: "the start's redelivery to be dropped" });
    expect(call.turnIds()).toEqual(["t21", "t22"]);
  });

  it("the tool requests of an input redone after its replica died are marked repeat, a first input's are not", async () => {
    // A plain subscriber sees every request the tools service's queue group gets.
    const requests: ToolCallRequest[] = [];
    const watch = bus.subscribe(subjects.toolsCall, ToolCallRequest, (m) => void requests.push(m), { name: "test.tools-watch" });
    await bus.nc.flush();
    // Gone after this test: a later test needs the bus to find no responder once the tools service stops.
    onTestFinished(() => watch.unsubscribe());
    const processed = async (call: TestCall, inputId: string) => {
      const state = await store.redis.hget(keys.dialog(call.id), "d");
      return state !== null && (JSON.parse(state) as { processed: string[] }).processed.includes(inputId);
    };

    const first = new TestCall();
    await first.start();
    await first.key("1");
    await first.keys("12345");
    await first.key("#");
    await waitFor(() => requests.some((r) => r.callId === first.id), { what: "the first call's lookup" });

    const redone = new TestCall();
    await redone.start();
    await redone.key("1");
    await redone.keys("1234");
    const lastDigit = await redone.key("5");
    await waitFor(() => processed(redone, lastDigit), { what: "the digits to be processed" });
    // A replica took "#" (marked it in progress, with its once-mark), asked for the lookup and died.
    const inputId = `${redone.id}:dtmf:left`;
    const pound = DialogInput.create({ callId: redone.id, inputId, atMs: Date.now(), input: { $case: "keypad", value: KeypadPress.create({ callId: redone.id, digit: "#", atMs: Date.now() }) } });
    await store.redis.hset(keys.dialog(redone.id), "p", JSON.stringify({ inputId, input: Buffer.from(DialogInput.encode(pound).finish()).toString("base64") }));
    await store.redis.hset(keys.once(redone.id), `dialog-input:${inputId}`, "1");
    await redone.say("goodbye");
    await waitFor(() => requests.some((r) => r.callId === redone.id), { what: "the redone lookup" });

    const lookups = (call: TestCall) => requests.filter((r) => r.callId === call.id).map((r) => ({ name: r.name, repeat: r.repeat }));
    expect(lookups(first)).toEqual([{ name: "lookup_order", repeat: false }]);
    // The redone "#" repeats; "goodbye", a first attempt, does not.
    await waitFor(() => lookups(redone).length === 2, { what: "goodbye's end_call" });
    expect(lookups(redone)).toEqual([
      { name: "lookup_order", repeat: true },
      { name: "end_call", repeat: false },
    ]);
  });

  it("a not-found order is reported and asked for again", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await call.key("1");
    await call.turn("t2");
    await call.keys("99999#");
    expect(await call.turn("t3")).toBe(`Sorry, I couldn't find order 9 9 9 9 9. ${ASK}`);
  });

  it("waits for another replica's turn of the same call (lease), then plays the input", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    // The greeting's chunks go out before its turn has saved and released the lease.
    await waitFor(() => store.acquireLease(call.id, "dialog", "other-replica", 10_000), { what: "the dialog lease" });
    const busy = await metric("voicebot_dialog_lease_busy_total");
    await call.key("1");
    await waitFor(async () => (await metric("voicebot_dialog_lease_busy_total")) > busy, { what: "the input to be handed back" });
    expect(call.turnIds()).toEqual(["t1"]);
    await store.releaseLease(call.id, "dialog", "other-replica");
    expect(await call.turn("t2")).toBe(ASK);
  });

  it("an input that waits past its deliveries for another replica's long turn waits in place: played, not given up", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await waitFor(() => store.acquireLease(call.id, "dialog", "slow-replica", 10_000), { what: "the dialog lease" });
    const dropped = await metric("voicebot_bus_work_items_dropped_total");
    await call.key("1");
    // Handed back with growing delays, the input reaches its last deliveries after ~12 s; the other replica's turn
    // (a slow webhook, several LLM rounds) goes on past them, renewing its lease.
    const renewing = setInterval(() => void store.acquireLease(call.id, "dialog", "slow-replica", 10_000), 2_000);
    await new Promise((resolve) => setTimeout(resolve, 16_000));
    clearInterval(renewing);
    expect(call.turnIds()).toEqual(["t1"]);
    await store.releaseLease(call.id, "dialog", "slow-replica");
    expect(await call.turn("t2")).toBe(ASK);
    expect(await metric("voicebot_bus_work_items_dropped_total")).toBe(dropped);
  }, 40_000);

  it("keys stay in order when the replica JetStream gave the first one died before starting it", async () => {
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    // The only replica consuming is one that takes "1" and dies before it marks it in progress: the input is back
    // only after the ack wait (4 s), by when the caller's number has been queued behind it.
    await dialog.stop();
    const doomed = await Bus.connect({ servers: nats.url, name: "dialog-doomed", log: silentLogger, registry: new Registry() });
    let taken = false;
    await doomed.consume(streams.dialog, DialogInput, () => ((taken = true), new Promise<void>(() => undefined)), { name: "doomed", ackWaitMs: 4_000, maxDeliver: 10, concurrency: 1 });
    await call.key("1");
    await waitFor(() => taken, { what: "the doomed replica to take the key" });
    await doomed.close();
    dialog = await startService(definition, { NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: "0", LOG_LEVEL: "error", DIALOG_LEASE_WAIT_MS: "100" });
    await call.keys("12345#");

    expect(await call.turn("t2")).toBe(ASK);
    expect(await call.turn("t3")).toMatch(/^Order 1 2 3 4 5 has shipped/);
    await waitFor(async () => (await call.record()).transcript.length === 5, { what: "five transcript entries" });
    expect((await call.record()).transcript.filter((e) => e.role === "caller").map((e) => e.text)).toEqual(["1", "12345#"]);
    expect(await metric("voicebot_dialog_earlier_input_waits_total", { outcome: "arrived" })).toBeGreaterThan(0);
  });

  it("drops inputs for unknown and ended calls without disturbing other calls", async () => {
    const ghost = new TestCall();
    const unknownBefore = await metric("voicebot_dialog_inputs_dropped_total", { reason: "unknown_call" });
    await ghost.key("1");
    await waitFor(async () => (await metric("voicebot_dialog_inputs_dropped_total", { reason: "unknown_call" })) > unknownBefore, {
      what: "unknown call dropped",
    });

    const ended = new TestCall();
    await ended.start();
    await ended.turn("t1");
    await store.endCall(ended.id, "caller hung up");
    const message = DialogInput.create({ callId: ended.id, inputId: `${ended.id}:end`, atMs: Date.now() });
    message.input = { $case: "callEnded", value: CallEnded.create({ callId: ended.id, reason: "caller hung up", endedAtMs: Date.now() }) };
    await bus.publishDurable(subjects.dialogInput(ended.id), DialogInput, message, `${ended.id}:end`, ended.id);
    const endedBefore = await metric("voicebot_dialog_inputs_dropped_total", { reason: "ended_call" });
    await ended.key("1");
    await waitFor(async () => (await metric("voicebot_dialog_inputs_dropped_total", { reason: "ended_call" })) > endedBefore, {
      what: "ended call dropped",
    });
    expect(ended.turnIds()).toEqual(["t1"]);
    expect(await store.loadDialog(ended.id)).toEqual({ value: undefined, version: "0" });

    const live = new TestCall();
    await live.start();
    expect(await live.turn("t1")).toBe(GREETING);
  });

  it("gives a call that asks for an unknown agent the default agent", async () => {
    const before = await metric("voicebot_dialog_unknown_agents_total");
    const call = new TestCall();
    await call.start("no-such-agent");
    expect(await call.turn("t1")).toBe(GREETING);
    expect(await metric("voicebot_dialog_unknown_agents_total")).toBe(before + 1);
    await waitFor(async () => ((await store.getRecord(call.id))?.agent === "order-line" ? true : undefined), { what: "the record naming the agent that runs" });
  });

  it("apologizes when the tools service is unavailable", async () => {
    await tools!.stop();
    tools = undefined;
    const call = new TestCall();
    await call.start();
    await call.turn("t1");
    await call.key("1");
    await call.turn("t2");
    await call.keys("12345#");
    expect(await call.turn("t3")).toMatch(/^Sorry, I can't look up orders right now\./);
    expect(await metric("voicebot_dialog_tool_duration_seconds", { tool: "lookup_order", outcome: "unavailable" })).toBeGreaterThan(0);
  });
});
