// The floor under every turn: what one hop costs on this machine right now, with the system idle. A turn is a chain
// of them (a cached key: WebSocket in, a JetStream message to the dialog, its Redis round trip, a JetStream message
// to tts, its cache read, a NATS message to ingress, WebSocket out), and each one wakes a sleeping process, which on
// a VM costs far more than the work. Measured through libs/bus, as the services send, with messages 20 ms apart (a
// process woken from sleep, as during a call, rather than one kept hot by back-to-back messages).
import { Bus, silentLogger, type Codec } from "@voicebot/bus";
import type { CallStore } from "@voicebot/state";
import { Registry } from "prom-client";
import { summarize, type Summary } from "./stats.js";

export interface HopFloor {
  redisRoundTrip: Summary;
  natsOneWay: Summary;
  jetStreamOneWay: Summary;
}

const SAMPLES = 100;
const GAP_MS = 20;
const STREAM = { name: "VB_BENCH_HOPS", subjects: ["vb.bench.hops.queue"], durable: "bench-hops" } as const;

/** The send time travels in the message (both ends are this process, so one clock). */
const timeCodec: Codec<number> = {
  encode: (at) => ({ finish: () => new Uint8Array(new Float64Array([at]).buffer) }),
  decode: (bytes) => new Float64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 8))[0],
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function measureHopFloor(natsUrl: string, store: CallStore): Promise<HopFloor> {
  const { redis } = store;
  const registry = new Registry();
  // Two connections, as between two services: the message goes out on one and comes in on the other.
  const [sender, receiver] = await Promise.all([
    Bus.connect({ servers: natsUrl, name: "bench-hops-out", log: silentLogger, registry }),
    Bus.connect({ servers: natsUrl, name: "bench-hops-in", log: silentLogger, registry }),
  ]);
  try {
    const redisTrips: number[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      const at = performance.now();
      await redis.get("vb:bench:hops");
      redisTrips.push(performance.now() - at);
      await sleep(GAP_MS);
    }

    const natsTrips: number[] = [];
    let arrived: (() => void) | undefined;
    receiver.subscribe("vb.bench.hops.core", timeCodec, (at) => {
      natsTrips.push(performance.now() - at);
      arrived?.();
    }, { name: "bench-hops" });
    await receiver.nc.flush();
    for (let i = 0; i < SAMPLES; i++) {
      const got = new Promise<void>((resolve) => (arrived = resolve));
      sender.publish("vb.bench.hops.core", timeCodec, performance.now());
      await got;
      await sleep(GAP_MS);
    }

    const jetStreamTrips: number[] = [];
    const consumer = await receiver.consume(STREAM, timeCodec, async (at, item) => {
      jetStreamTrips.push(performance.now() - at);
      item.ack();
      arrived?.();
    }, { name: "bench-hops", ackWaitMs: 5_000, maxDeliver: 1, concurrency: 16 });
    for (let i = 0; i < SAMPLES; i++) {
      const got = new Promise<void>((resolve) => (arrived = resolve));
      await sender.publishDurable(STREAM.subjects[0], timeCodec, performance.now(), `hop-${i}-${Date.now()}`);
      await got;
      await sleep(GAP_MS);
    }
    await consumer.stop();
    const jsm = await sender.nc.jetstreamManager();
    await jsm.streams.delete(STREAM.name).catch(() => undefined);
    return { redisRoundTrip: summarize(redisTrips), natsOneWay: summarize(natsTrips), jetStreamOneWay: summarize(jetStreamTrips) };
  } finally {
    await Promise.all([sender.close(), receiver.close()]);
  }
}
