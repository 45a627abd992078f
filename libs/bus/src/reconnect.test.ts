// The work queue across a NATS restart: the server is killed (a crash) and started again on the same port, with
// its JetStream store (the stream and consumer survive on disk) or without it (they are gone and must be made
// again). Either way the consumer that was running keeps getting the messages published after the restart. And a
// link that goes dark without closing (a partition) is found out and made again.
import { rm } from "node:fs/promises";
import { DialogInput, KeypadPress } from "@voicebot/proto";
import { startNats, startTcpProxy, waitFor, type ServerHandle } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { Bus, type WorkItem } from "./bus.js";
import { silentLogger } from "./log.js";

const servers: ServerHandle[] = [];
const buses: Bus[] = [];

afterEach(async () => {
  await Promise.all(buses.splice(0).map((b) => b.close()));
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});
afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
});

const queue = { name: "VB_RECONNECT_TEST", subjects: ["t.reconnect.*"], durable: "workers" };

async function consumer(url: string) {
  const bus = await Bus.connect({ servers: url, name: "reconnect-test", log: silentLogger, registry: new Registry() });
  buses.push(bus);
  const got: string[] = [];
  await bus.consume(
    queue,
    DialogInput,
    async (message: DialogInput, item: WorkItem) => {
      got.push(message.inputId);
      item.ack();
    },
    { name: "test", ackWaitMs: 2_000, maxDeliver: 5, concurrency: 8 },
  );
  return { bus, got };
}

function input(id: string): DialogInput {
  return DialogInput.create({ callId: "CA1", inputId: id, input: { $case: "keypad", value: KeypadPress.create({ callId: "CA1", digit: "1" }) } });
}

/** Publishes until the restarted server stores it (the publisher reconnects too). */
async function publish(bus: Bus, id: string): Promise<void> {
  await waitFor(() => bus.publishDurable("t.reconnect.CA1", DialogInput, input(id), id).then(() => true), {
    timeoutMs: 15_000,
    intervalMs: 200,
    what: `${id} to be stored`,
  });
}

describe("work queue across a NATS restart", () => {
  for (const keepStore of [true, false]) {
    it(keepStore ? "with its store: the stream and consumer survive and consuming goes on" : "without its store: the stream and consumer are made again", async () => {
      const first = await startNats();
      servers.push(first);
      const { bus, got } = await consumer(first.url);
      await publish(bus, "before");
      await waitFor(() => got.includes("before"), { what: "the message before the restart" });

      const exited = new Promise((resolve) => first.process.once("exit", resolve));
      first.kill();
      await exited;
      if (!keepStore) await rm(first.storeDir, { recursive: true, force: true });
      const second = await startNats({ port: first.port, storeDir: first.storeDir });
      servers.push(second);

      const restartedAt = Date.now();
      await publish(bus, "after");
      await waitFor(() => got.includes("after"), { timeoutMs: 15_000, what: "the message after the restart" });
      // Two missed 1 s heartbeats make the client pull again (~2-3 s, more on a busy machine); with nats.js's
      // defaults the queue stood still ~30 s, which is what this bound catches.
      expect(Date.now() - restartedAt).toBeLessThan(10_000);
      console.log(`${keepStore ? "with" : "without"} store: consumed ${Date.now() - restartedAt} ms after the restart`);
      expect(got.filter((id) => id === "before")).toHaveLength(1);
    });
  }
});

it("a link that goes dark without closing is dropped after two unanswered pings and made again soon after it is back", async () => {
  const nats = await startNats();
  servers.push(nats);
  const link = await startTcpProxy(nats.port);
  try {
    const bus = await Bus.connect({ servers: `nats://127.0.0.1:${link.port}`, name: "dark-test", log: silentLogger, registry: new Registry() });
    buses.push(bus);
    link.blackhole();
    const darkAt = Date.now();
    // pingInterval 5 s, maxPingOut 2: without them nats.js's defaults took minutes, and the service stayed ready.
    await waitFor(() => !bus.connected, { timeoutMs: 20_000, intervalMs: 100, what: "the dark link to be dropped" });
    const droppedMs = Date.now() - darkAt;
    link.restore();
    const backAt = Date.now();
    // A connect attempt that hears nothing gives up after 5 s (nats.js: 20 s), then the next one gets through.
    await waitFor(() => bus.connected, { timeoutMs: 9_000, intervalMs: 100, what: "the link to be made again" });
    console.log(`dark NATS link dropped after ${droppedMs} ms; connected again ${Date.now() - backAt} ms after it was back`);
  } finally {
    await link.close();
  }
}, 40_000);
