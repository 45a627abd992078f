import { CallEnded, CallStarted, DialogInput, KeypadPress } from "@voicebot/proto";
import { startNats, waitFor, type ServerHandle } from "@voicebot/testing";
import { connect as natsConnect, headers as natsHeaders } from "nats";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Bus, BusError } from "./bus.js";
import { silentLogger } from "./log.js";
import { callIdOfSubject, headerNames, isValidCallId, subjects } from "./subjects.js";

let nats: ServerHandle;
const buses: Bus[] = [];
async function connect(registry = new Registry()): Promise<Bus> {
  const bus = await Bus.connect({ servers: nats.url, name: "test", log: silentLogger, registry });
  buses.push(bus);
  return bus;
}

async function metricValue(registry: Registry, name: string): Promise<number> {
  const metric = registry.getSingleMetric(name);
  return metric ? (await metric.get()).values.reduce((sum, v) => sum + v.value, 0) : 0;
}

beforeAll(async () => {
  nats = await startNats();
});
afterAll(async () => {
  await Promise.all(buses.map((b) => b.close()));
  await nats.stop();
});

describe("subjects", () => {
  it("accepts provider call ids and rejects anything that would break a subject or key", () => {
    expect(isValidCallId("CA0123456789abcdef0123456789abcdef")).toBe(true);
    for (const bad of ["", "a.b", "a*", "a>", "a b", "x".repeat(129), "{x}"]) {
      expect(isValidCallId(bad)).toBe(false);
      expect(() => subjects.callerAudio(bad)).toThrow(/invalid call id/);
    }
  });

  it("reads the call id back out of a per-call subject", () => {
    expect(callIdOfSubject(subjects.callerAudio("CA12_ab-3"))).toBe("CA12_ab-3");
    expect(callIdOfSubject(subjects.dialogInput("CA9"))).toBe("CA9");
    for (const other of [subjects.callStarted, subjects.ttsSpeak, "vb.v1.call.", "vb.v1.call.CA1", "vb.v1.call.*.ended", "x.vb.v1.call.CA1.speech"]) {
      expect(callIdOfSubject(other)).toBeUndefined();
    }
  });
});

describe("Bus", () => {
  it("delivers typed messages with the call id header, in order when asked", async () => {
    const bus = await connect();
    const got: Array<{ digit: string; callId?: string }> = [];
    bus.subscribe(
      "t.order",
      KeypadPress,
      async (m, d) => {
        await new Promise((r) => setTimeout(r, Math.random() * 5));
        got.push({ digit: m.digit, callId: d.callId });
      },
      { name: "t", ordered: true },
    );
    await bus.nc.flush();
    for (const digit of "0123456789") bus.publish("t.order", KeypadPress, KeypadPress.create({ callId: "CA1", digit }), "CA1");
    await waitFor(() => got.length === 10);
    expect(got.map((g) => g.digit).join("")).toBe("0123456789");
    expect(got[0].callId).toBe("CA1");
  });

  it("ordered: handlers that return promises hold back later messages, synchronous ones run at once, failures do not stop it", async () => {
    const registry = new Registry();
    const bus = await connect(registry);
    const got: string[] = [];
    bus.subscribe(
      "t.mixed",
      KeypadPress,
      (m) => {
        const digit = Number(m.digit);
        if (digit === 3) throw new Error("sync failure");
        if (digit % 2 === 1) {
          got.push(m.digit);
          return;
        }
        // Even digits finish later than the odd one after them would on its own; 4 fails after its wait.
        return new Promise<void>((resolve, reject) =>
          setTimeout(() => {
            got.push(m.digit);
            if (digit === 4) reject(new Error("async failure"));
            else resolve();
          }, 10 - digit),
        );
      },
      { name: "mixed", ordered: true },
    );
    await bus.nc.flush();
    for (const digit of "0123456789") bus.publish("t.mixed", KeypadPress, KeypadPress.create({ digit }));
    await waitFor(() => got.length === 9);
    expect(got.join("")).toBe("012456789");
    const text = await registry.metrics();
    expect(text).toMatch(/voicebot_bus_messages_received_total\{handler="mixed"\} 10/);
    expect(text).toMatch(/voicebot_bus_handler_errors_total\{handler="mixed"\} 2/);
    expect(text).toMatch(/voicebot_bus_messages_published_total 10/);
  });

  it("gives the call id from the header, else from a per-call subject (media goes without headers)", async () => {
    const bus = await connect();
    const got: Array<{ subject: string; callId?: string }> = [];
    const record = (_: KeypadPress, d: { subject: string; callId?: string }) => void got.push({ subject: d.subject, callId: d.callId });
    bus.subscribe("vb.v1.call.*.speech", KeypadPress, record, { name: "calls", ordered: true });
    bus.subscribe("t.plain", KeypadPress, record, { name: "plain", ordered: true });
    await bus.nc.flush();
    bus.publish(subjects.speech("CA1"), KeypadPress, KeypadPress.create({}), "CA1");
    bus.publish(subjects.speech("CA2"), KeypadPress, KeypadPress.create({}));
    bus.publish("t.plain", KeypadPress, KeypadPress.create({}), "CA3");
    bus.publish("t.plain", KeypadPress, KeypadPress.create({}));
    await waitFor(() => got.length === 4);
    expect(got).toEqual([
      { subject: subjects.speech("CA1"), callId: "CA1" },
      { subject: subjects.speech("CA2"), callId: "CA2" },
      { subject: "t.plain", callId: "CA3" },
      { subject: "t.plain", callId: undefined },
    ]);
  });

  it("counts and survives undecodable messages and throwing handlers", async () => {
    const registry = new Registry();
    const bus = await connect(registry);
    const seen: string[] = [];
    bus.subscribe(
      "t.bad",
      CallEnded,
      (m) => {
        if (m.reason === "boom") throw new Error("handler bug");
        seen.push(m.reason);
      },
      { name: "bad" },
    );
    await bus.nc.flush();
    bus.nc.publish("t.bad", new Uint8Array([0xff, 0xff, 0xff, 0xff]));
    bus.publish("t.bad", CallEnded, CallEnded.create({ reason: "boom" }));
    bus.publish("t.bad", CallEnded, CallEnded.create({ reason: "ok" }));
    await waitFor(() => seen.includes("ok"));
    const text = await registry.metrics();
    expect(text).toMatch(/voicebot_bus_decode_errors_total\{handler="bad"\} 1/);
    expect(text).toMatch(/voicebot_bus_handler_errors_total\{handler="bad"\} 1/);
  });

  it("splits a queue group's work and answers requests, with clear errors when nobody answers", async () => {
    const a = await connect();
    const b = await connect();
    let countA = 0;
    let countB = 0;
    a.subscribe("t.q", CallEnded, () => void countA++, { name: "q", queue: "g" });
    b.subscribe("t.q", CallEnded, () => void countB++, { name: "q", queue: "g" });
    await Promise.all([a.nc.flush(), b.nc.flush()]);
    for (let i = 0; i < 40; i++) a.publish("t.q", CallEnded, CallEnded.create({ reason: String(i) }));
    await waitFor(() => countA + countB === 40);
    await new Promise((r) => setTimeout(r, 50));
    expect(countA + countB).toBe(40);

    b.serve("t.echo", KeypadPress, KeypadPress, async (m) => ({ ...m, digit: m.digit + "!" }), { name: "echo", queue: "g" });
    await b.nc.flush();
    const reply = await a.request("t.echo", KeypadPress, KeypadPress.create({ digit: "5" }), KeypadPress, 1000);
    expect(reply.digit).toBe("5!");
    await expect(a.request("t.nobody", KeypadPress, KeypadPress.create({}), KeypadPress, 500)).rejects.toMatchObject({
      code: "no_responders",
    } satisfies Partial<BusError>);
  });

  it("a request with a receipt goes around a queue member that took it and never answered (a frozen replica)", async () => {
    const registry = new Registry();
    const client = await connect(registry);
    const live = await connect();
    const frozen = await connect();
    let liveServed = 0;
    live.serve("t.receipt", KeypadPress, KeypadPress, async (m) => (liveServed++, { ...m, digit: m.digit + "!" }), { name: "r", queue: "g" });
    // What NATS sees of a frozen replica: a queue member with an open connection that never reads what it is sent.
    let frozenTook = 0;
    frozen.nc.subscribe("t.receipt", { queue: "g", callback: () => void frozenTook++ });
    await Promise.all([live.nc.flush(), frozen.nc.flush()]);
    const times: number[] = [];
    for (let i = 0; i < 12; i++) {
      const started = Date.now();
      const reply = await client.request("t.receipt", KeypadPress, KeypadPress.create({ digit: String(i) }), KeypadPress, 5_000, "CA1", { receiptMs: 100, maxSends: 25 });
      expect(reply.digit).toBe(`${i}!`);
      times.push(Date.now() - started);
    }
    expect(frozenTook).toBeGreaterThan(0); // NATS did pick the frozen member, and every request was answered anyway
    expect(liveServed).toBe(12);
    expect(Math.max(...times)).toBeLessThan(3_000);
    expect(await metricValue(registry, "voicebot_bus_requests_resent_total")).toBe(frozenTook);

    // A server without receipts (an older version): its answer to the first sending is taken.
    const old = await connect();
    let oldServed = 0;
    old.nc.subscribe("t.old", { callback: (_e, msg) => setTimeout(() => (oldServed++, msg.respond(KeypadPress.encode(KeypadPress.create({ digit: "old" })).finish())), 250) });
    await old.nc.flush();
    const reply = await client.request("t.old", KeypadPress, KeypadPress.create({}), KeypadPress, 2_000, undefined, { receiptMs: 100, maxSends: 2 });
    expect(reply.digit).toBe("old");
    await expect(client.request("t.nobody", KeypadPress, KeypadPress.create({}), KeypadPress, 500, undefined, { receiptMs: 100 })).rejects.toMatchObject({
      code: "no_responders",
    } satisfies Partial<BusError>);
    await expect(client.request("t.receipt.none", KeypadPress, KeypadPress.create({}), KeypadPress, 300, undefined, { receiptMs: 100 })).rejects.toMatchObject({
      code: "no_responders",
    } satisfies Partial<BusError>);
    frozen.nc.subscribe("t.silent", { callback: () => undefined });
    await frozen.nc.flush();
    const started = Date.now();
    await expect(client.request("t.silent", KeypadPress, KeypadPress.create({}), KeypadPress, 400, undefined, { receiptMs: 100 })).rejects.toMatchObject({
      code: "timeout",
    } satisfies Partial<BusError>);
    expect(Date.now() - started).toBeGreaterThanOrEqual(390);
  });

  it("a request whose taker dies or freezes after its receipt is sent again and answered by another replica; one at work is not", async () => {
    const registry = new Registry();
    const client = await connect(registry);
    const resent = async (reason: string) => {
      const values = (await registry.getSingleMetric("voicebot_bus_requests_resent_total")!.get()).values;
      return values.filter((v) => v.labels.reason === reason).reduce((sum, v) => sum + v.value, 0);
    };

    // At work for 3 s, confirming it all along: never sent again.
    const worker = await connect();
    worker.serve("t.long", KeypadPress, KeypadPress, async (m) => (await new Promise((r) => setTimeout(r, 3_000)), m), { name: "long", queue: "g" });
    await worker.nc.flush();
    await client.request("t.long", KeypadPress, KeypadPress.create({ digit: "1" }), KeypadPress, 6_000, undefined, { receiptMs: 100, maxSends: 60 });
    expect(await resent("taker_silent")).toBe(0);
    expect(await resent("no_receipt")).toBe(0);

    // Dies while at work (its connection closes, as a killed process's does): the request goes to the survivor.
    const dying = await connect();
    let dyingTook!: () => void;
    const took = new Promise<void>((resolve) => (dyingTook = resolve));
    dying.serve("t.die", KeypadPress, KeypadPress, () => (dyingTook(), new Promise<never>(() => undefined)), { name: "die", queue: "g" });
    await dying.nc.flush();
    const started = Date.now();
    const answer = client.request("t.die", KeypadPress, KeypadPress.create({ digit: "2" }), KeypadPress, 10_000, undefined, { receiptMs: 100, maxSends: 60 });
    await took;
    const survivor = await connect();
    survivor.serve("t.die", KeypadPress, KeypadPress, async (m) => ({ ...m, digit: m.digit + "!" }), { name: "die", queue: "g" });
    await survivor.nc.flush();
    await dying.close();
    expect((await answer).digit).toBe("2!");
    expect(Date.now() - started).toBeLessThan(6_000);
    expect(await resent("taker_silent")).toBe(1);

    // Freezes after its first receipt (open connection, silent): the request goes around it.
    const frozen = await connect();
    const receipt = natsHeaders();
    receipt.set(headerNames.receipt, "sent");
    let frozenTook = 0;
    frozen.nc.subscribe("t.die", { queue: "g", callback: (_e, msg) => frozenTook++ === 0 && msg.respond(new Uint8Array(0), { headers: receipt }) });
    await frozen.nc.flush();
    for (let i = 0; i < 20 && frozenTook === 0; i++) {
      const reply = await client.request("t.die", KeypadPress, KeypadPress.create({ digit: String(i) }), KeypadPress, 10_000, undefined, { receiptMs: 100, maxSends: 60 });
      expect(reply.digit).toBe(`${i}!`);
    }
    expect(frozenTook).toBeGreaterThan(0);
    expect(await resent("taker_silent")).toBe(2);
  }, 60_000);

  it("work queue: deduplicates by message id and redelivers what a worker did not ack", async () => {
    const bus = await connect();
    const queue = { name: "T_WORK", subjects: ["t.work.>"], durable: "w" };
    await bus.ensureWorkQueue(queue, 500, 5);
    const input = DialogInput.create({
      callId: "CA1",
      inputId: "CA1:start",
      input: { $case: "callStarted", value: CallStarted.create({ callId: "CA1" }) },
    });
    await bus.publishDurable("t.work.CA1", DialogInput, input, "CA1:start");
    await bus.publishDurable("t.work.CA1", DialogInput, input, "CA1:start"); // duplicate: stored once
    const deliveries: number[] = [];
    const consumer = await bus.consume(
      queue,
      DialogInput,
      async (m, item) => {
        expect(m.input?.$case).toBe("callStarted");
        deliveries.push(item.deliveryCount);
        if (deliveries.length === 1) return; // "crash": neither ack nor nak; JetStream redelivers after ack_wait
        item.ack();
      },
      { name: "w", ackWaitMs: 500, maxDeliver: 5, concurrency: 4 },
    );
    await waitFor(() => deliveries.length >= 2, { timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 700));
    await consumer.stop();
    expect(deliveries).toEqual([1, 2]);
  });

  it("work queue: a consumer that exists with another ack wait and delivery limit takes the new ones (a rolling update changed them)", async () => {
    const bus = await connect();
    const queue = { name: "T_SETTINGS", subjects: ["t.settings.*"], durable: "s" };
    await bus.ensureWorkQueue(queue, 500, 5);
    await bus.ensureWorkQueue(queue, 2_000, 7);
    const nc = await natsConnect({ servers: nats.url });
    try {
      const info = await (await nc.jetstreamManager()).consumers.info(queue.name, queue.durable);
      expect({ ackWait: info.config.ack_wait, maxDeliver: info.config.max_deliver }).toEqual({ ackWait: 2_000_000_000, maxDeliver: 7 });
    } finally {
      await nc.close();
    }
  });

  it("work queue: a message redelivered while its handler still runs here (the process stalled past the ack wait) is not run twice", async () => {
    const registry = new Registry();
    const bus = await connect(registry);
    const queue = { name: "T_IN_HAND", subjects: ["t.inhand.*"], durable: "ih" };
    await bus.ensureWorkQueue(queue, 500, 5);
    const runs: string[] = [];
    const consumer = await bus.consume(
      queue,
      DialogInput,
      async (m, item) => {
        runs.push(`${m.inputId}:${item.deliveryCount}`);
        if (m.inputId === "waits") {
          // No heartbeat for three ack waits while the process runs on: JetStream delivers it again meanwhile.
          await new Promise((resolve) => setTimeout(resolve, 1_600));
        } else {
          // The process itself stands still (paused) while the consumer has a pull out (it reads on once the item
          // has started): the redelivery waits in the socket until after this ack.
          await new Promise((resolve) => setTimeout(resolve, 50));
          const until = Date.now() + 1_600;
          while (Date.now() < until);
        }
        item.ack();
      },
      { name: "ih", ackWaitMs: 500, maxDeliver: 5, concurrency: 4 },
    );
    for (const id of ["waits", "frozen"]) {
      const redelivered = await metricValue(registry, "voicebot_bus_redelivered_in_hand_total");
      await bus.publishDurable(`t.inhand.${id}`, DialogInput, DialogInput.create({ callId: "CA1", inputId: id }), id);
      await waitFor(async () => (await metricValue(registry, "voicebot_bus_redelivered_in_hand_total")) > redelivered, { what: "a redelivery while in hand", timeoutMs: 3_000 });
      // The late ack of the first delivery removes the message: nothing comes back after it.
      await waitFor(async () => (await bus.firstQueued(queue.name, "t.inhand.*")) === undefined, { what: "the message acked", timeoutMs: 3_000 });
    }
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    await consumer.stop();
    expect(runs).toEqual(["waits:1", "frozen:1"]);
  });

  it("work queue: a message that fails or is handed back at its last delivery is removed from the queue, counted and logged", async () => {
    const registry = new Registry();
    const bus = await connect(registry);
    const queue = { name: "T_POISON", subjects: ["t.poison.*"], durable: "p" };
    await bus.ensureWorkQueue(queue, 1_000, 3);
    const input = (id: string) => DialogInput.create({ callId: "CA1", inputId: id });
    await bus.publishDurable("t.poison.fails", DialogInput, input("fails"), "fails");
    await bus.publishDurable("t.poison.naks", DialogInput, input("naks"), "naks");
    const deliveries: Record<string, number[]> = { fails: [], naks: [] };
    const consumer = await bus.consume(
      queue,
      DialogInput,
      async (m, item) => {
        deliveries[m.inputId].push(item.deliveryCount);
        if (m.inputId === "fails") throw new Error("poison");
        item.nak(10);
      },
      { name: "p", ackWaitMs: 1_000, maxDeliver: 3, concurrency: 4 },
    );
    await waitFor(async () => (await metricValue(registry, "voicebot_bus_work_items_dropped_total")) === 2, { what: "both given up on", timeoutMs: 5_000 });
    // Without the removal each would stay in the work queue for good, never delivered again.
    await waitFor(async () => (await bus.firstQueued(queue.name, "t.poison.*")) === undefined, { what: "the queue emptied" });
    await consumer.stop();
    expect(deliveries).toEqual({ fails: [1, 2, 3], naks: [1, 2, 3] });
  });

  it("work queue: items that only wait for other work give their slot back, up to the concurrency; past that they count", async () => {
    const bus = await connect();
    const queue = { name: "T_WAITING", subjects: ["t.waiting.*"], durable: "wt" };
    await bus.ensureWorkQueue(queue, 5_000, 5);
    let openGate!: () => void;
    const gate = new Promise<void>((resolve) => (openGate = resolve));
    const done: string[] = [];
    const consumer = await bus.consume(
      queue,
      DialogInput,
      async (m, item) => {
        if (m.inputId.startsWith("wait")) {
          item.waiting();
          await gate;
        }
        done.push(m.inputId);
        item.ack();
      },
      { name: "wt", ackWaitMs: 5_000, maxDeliver: 5, concurrency: 2 },
    );
    const publish = (id: string) => bus.publishDurable("t.waiting.CA1", DialogInput, DialogInput.create({ callId: "CA1", inputId: id }), id);
    // Two waiters: neither takes one of the two slots.
    for (const id of ["wait1", "wait2", "work1", "work2", "work3"]) await publish(id);
    await waitFor(() => done.length === 3, { what: "the work behind two waiting items" });
    expect(done).toEqual(["work1", "work2", "work3"]);
    // Two more: the waiting allowance (2) is used up, so they keep their slots and the next work waits for the gate.
    for (const id of ["wait3", "wait4", "work4"]) await publish(id);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(done).toEqual(["work1", "work2", "work3"]);
    openGate();
    await waitFor(() => done.length === 8, { what: "everything once the waits are over" });
    expect(done.indexOf("work4")).toBeGreaterThan(done.indexOf("wait3"));
    await consumer.stop();
  });

  it("work queue: a busy consumer holds no more than a few it cannot start; the rest stay in the queue for another replica", async () => {
    const queue = { name: "T_BUSY", subjects: ["t.busy.*"], durable: "busy" };
    const busy = await connect();
    await busy.ensureWorkQueue(queue, 30_000, 5);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const started: string[] = [];
    const first = await busy.consume(
      queue,
      DialogInput,
      async (m, item) => {
        started.push(m.inputId);
        await gate;
        item.ack();
      },
      { name: "busy", ackWaitMs: 30_000, maxDeliver: 5, concurrency: 8 },
    );
    for (let i = 0; i < 40; i++) await busy.publishDurable(`t.busy.CA${i}`, DialogInput, DialogInput.create({ callId: `CA${i}`, inputId: `in${i}` }), `in${i}`);
    await waitFor(() => started.length === 8, { what: "the first replica's 8 slots busy" });
    // An idle replica gets all the rest at once but the few the busy one pulled ahead (4), not `concurrency` of them.
    const idle = await connect();
    const taken: string[] = [];
    const second = await idle.consume(
      queue,
      DialogInput,
      async (m, item) => {
        taken.push(m.inputId);
        item.ack();
      },
      { name: "busy", ackWaitMs: 30_000, maxDeliver: 5, concurrency: 40 },
    );
    await waitFor(() => taken.length >= 40 - 8 - 4, { what: "all but the busy replica's few at the idle replica", timeoutMs: 3_000 });
    expect(started).toHaveLength(8);
    release();
    // Each message runs once: the ones pulled ahead run at the busy replica as its slots free.
    await waitFor(() => started.length + taken.length === 40, { what: "every message run" });
    await first.stop();
    await second.stop();
    expect(new Set([...started, ...taken]).size).toBe(40);
  });

  it("work queue: finds the first message of a subject still queued, from a sequence on; none once acked", async () => {
    const bus = await connect();
    const queue = { name: "T_FIRST", subjects: ["t.first.*"], durable: "f" };
    await bus.ensureWorkQueue(queue, 1_000, 5);
    const input = (id: string) => DialogInput.create({ callId: "CA1", inputId: id });
    await bus.publishDurable("t.first.a", DialogInput, input("a1"), "a1");
    await bus.publishDurable("t.first.b", DialogInput, input("b1"), "b1");
    await bus.publishDurable("t.first.a", DialogInput, input("a2"), "a2");
    const first = await bus.firstQueued(queue.name, "t.first.a");
    expect(first?.seq).toBe(1);
    expect(DialogInput.decode(first!.data).inputId).toBe("a1");
    expect((await bus.firstQueued(queue.name, "t.first.a", 2))?.seq).toBe(3);
    expect(await bus.firstQueued(queue.name, "t.first.a", 4)).toBeUndefined();
    expect(await bus.firstQueued(queue.name, "t.first.c")).toBeUndefined();
    const seen: number[] = [];
    const consumer = await bus.consume(queue, DialogInput, async (_m, item) => (seen.push(item.streamSeq), item.ack()), { name: "f", ackWaitMs: 1_000, maxDeliver: 5, concurrency: 4 });
    await waitFor(async () => (await bus.firstQueued(queue.name, "t.first.a")) === undefined, { what: "the acked messages to leave the queue" });
    await consumer.stop();
    expect(seen.sort()).toEqual([1, 2, 3]);
  });

  it("durable publish: outlasts a NATS cluster's stream election (no stream answers for 9 s), and is stored once", async () => {
    // While a crashed node's streams elect new leaders, publishes get "no responders" (503) for up to a Raft
    // election timeout (4-9 s in nats-server). A publish given up before that is an answer the caller never hears.
    const bus = await connect();
    const queue = { name: "T_ELECTION", subjects: ["t.election"], durable: "e" };
    const input = DialogInput.create({ callId: "CA1", inputId: "CA1:late" });
    const started = Date.now();
    const publishing = bus.publishDurable("t.election", DialogInput, input, "CA1:late");
    await new Promise((r) => setTimeout(r, 9_000));
    await bus.ensureWorkQueue(queue, 1_000, 5);
    await publishing;
    expect(Date.now() - started).toBeGreaterThanOrEqual(9_000);
    const jsm = await bus.nc.jetstreamManager();
    expect((await jsm.streams.info("T_ELECTION")).state.messages).toBe(1);
  }, 30_000);

  it("work queue: a consumer that stops while work streams in finishes what it pulled; nothing waits for the ack wait", async () => {
    // A rolling update: the old replica's consumer stops mid-stream while the new one runs. Messages the old one had
    // pulled but not begun must be worked at once (by it, or by the other), not come back after the ack wait.
    const [producer, oldWorker, newWorker] = [await connect(), await connect(), await connect()];
    const queue = { name: "T_ROLL", subjects: ["t.roll"], durable: "roll" };
    const ackWaitMs = 2_000;
    const worked: Array<{ id: string; delivery: number; by: string }> = [];
    const worker = (by: string) => async (m: DialogInput, item: { deliveryCount: number; ack(): void }) => {
      await new Promise((r) => setTimeout(r, 30)); // each item takes a while, so some sit pulled but not begun
      worked.push({ id: m.inputId, delivery: item.deliveryCount, by });
      item.ack();
    };
    // Few slots for the rate: work backs up, so the stopping consumer holds pulled messages it has not begun.
    const options = { name: "roll", ackWaitMs, maxDeliver: 5, concurrency: 2 };
    const oldConsumer = await oldWorker.consume(queue, DialogInput, worker("old"), options);
    const newConsumer = await newWorker.consume(queue, DialogInput, worker("new"), options);
    let sent = 0;
    const publishing = (async () => {
      for (; sent < 120; sent++) {
        const id = `m${sent}`;
        await producer.publishDurable("t.roll", DialogInput, DialogInput.create({ callId: "CA1", inputId: id }), id);
        await new Promise((r) => setTimeout(r, 4));
      }
    })();
    await waitFor(() => sent >= 40);
    await oldConsumer.stop();
    await publishing;
    await waitFor(() => worked.length >= 120, { timeoutMs: 10_000 });
    await newConsumer.stop();
    expect(new Set(worked.map((w) => w.id)).size).toBe(120);
    // A message dropped by the stopping consumer would come back only after the ack wait, as delivery 2.
    expect(worked.filter((w) => w.delivery > 1)).toEqual([]);
    expect(worked.some((w) => w.by === "old")).toBe(true);
    expect(worked.filter((w) => w.by === "new").length).toBeGreaterThan(60);
  });
});
