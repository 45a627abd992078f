// /readyz is 200 only when a call could be served: NATS and Redis up, and every stage answering readiness pings.
import { subjects, type Bus, type Subscription } from "@voicebot/bus";
import { ReadinessRequest, ReadinessResponse } from "@voicebot/proto";
import { startNats, startRedis, type ServerHandle } from "@voicebot/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { captureLogs, connectBus, startIngress, waitFor, type Ingress } from "./test-support/harness.js";

let nats: ServerHandle & { storeDir: string };
let redis: ServerHandle;
let bus: Bus;
let ingress: Ingress;
const responders = new Map<string, Subscription>();

beforeAll(async () => {
  captureLogs();
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  bus = await connectBus(nats.url);
  ingress = await startIngress({
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    INGRESS_REQUIRE_SERVICES: "asr,dialog,tools,tts",
  });
});

afterAll(async () => {
  await ingress?.handle.stop();
  await bus?.close();
  await Promise.all([nats?.stop(), redis?.stop()]);
});

/** Plays a ready replica of `service`: answers its readiness pings. */
function serve(service: string): void {
  responders.set(
    service,
    bus.serve(subjects.ping(service), ReadinessRequest, ReadinessResponse, async () => ({ service, instance: `${service}-test`, activeCalls: 0 }), {
      name: "ping",
      queue: service,
    }),
  );
}

async function readiness(): Promise<{ status: number; reason?: string }> {
  const res = await fetch(`${ingress.baseUrl}/readyz`).catch(() => undefined);
  if (!res) return { status: 0 };
  const body = (await res.json()) as { reason?: string };
  return { status: res.status, reason: body.reason };
}

async function waitReadiness(status: number, reason?: RegExp, timeoutMs = 10_000) {
  return waitFor(
    async () => {
      const r = await readiness();
      return r.status === status && (!reason || reason.test(r.reason ?? "")) ? r : undefined;
    },
    { timeoutMs, intervalMs: 50, what: `/readyz ${status} ${reason ?? ""}` },
  );
}

describe("readiness", () => {
  it("needs a ready replica of every stage, NATS and Redis", async () => {
    // No stage is up.
    await waitReadiness(503, /^no ready asr replica$/);
    serve("asr");
    serve("dialog");
    serve("tools");
    await waitReadiness(503, /^no ready tts replica$/);
    serve("tts");
    await waitReadiness(200);

    // NATS dies: not ready; a NATS restarted on the same port brings it back.
    nats.kill();
    await waitReadiness(503, /nats/);
    nats = await startNats({ port: nats.port, storeDir: nats.storeDir });
    await waitReadiness(200, undefined, 15_000);

    // Redis dies: not ready; restarted on the same port: ready again.
    redis.kill();
    await waitReadiness(503, /redis/);
    redis = await startRedis({ port: redis.port });
    await waitReadiness(200, undefined, 15_000);

    // The last tts replica goes away: not ready within a few probe rounds.
    responders.get("tts")!.unsubscribe();
    await bus.nc.flush();
    await waitReadiness(503, /^no ready tts replica$/, 6_000);
  });

  it("requires nothing from other stages when INGRESS_REQUIRE_SERVICES is empty", async () => {
    const alone = await startIngress({ NATS_URL: nats.url, REDIS_URL: redis.url, INGRESS_REQUIRE_SERVICES: "" });
    try {
      // Ready as soon as its own links are up, with no other stage running.
      await waitFor(async () => (await fetch(`${alone.baseUrl}/readyz`)).status === 200, { timeoutMs: 5_000, what: "ready" });
    } finally {
      await alone.handle.stop();
    }
  });
});
