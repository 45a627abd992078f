// /readyz is 200 only when a call could be served: NATS and Redis up, and every stage answering readiness pings.
import { subjects, type Subscription } from "@voicebot/bus";
import { ReadinessRequest, ReadinessResponse } from "@voicebot/proto";
import { startNats, startRedis } from "@voicebot/testing";
import { describe, it } from "vitest";
import { startIngress, useIngressWorld, waitFor } from "./test-support/harness.js";

const world = useIngressWorld({ env: { INGRESS_REQUIRE_SERVICES: "asr,dialog,tools,tts" }, dialog: false });
const responders = new Map<string, Subscription>();

/** Plays a ready replica of `service`: answers its readiness pings. */
function serve(service: string): void {
  responders.set(
    service,
    world.bus.serve(subjects.ping(service), ReadinessRequest, ReadinessResponse, async () => ({ service, instance: `${service}-test`, activeCalls: 0 }), {
      name: "ping",
      queue: service,
    }),
  );
}

async function readiness(): Promise<{ status: number; reason?: string }> {
  const res = await fetch(`${world.ingress.baseUrl}/readyz`).catch(() => undefined);
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
    world.nats.kill();
    await waitReadiness(503, /nats/);
    world.nats = await startNats({ port: world.nats.port, storeDir: world.nats.storeDir });
    await waitReadiness(200, undefined, 15_000);

    // Redis dies: not ready; restarted on the same port: ready again.
    world.redis.kill();
    await waitReadiness(503, /redis/);
    world.redis = await startRedis({ port: world.redis.port });
    await waitReadiness(200, undefined, 15_000);

    // The last tts replica goes away: not ready within a few probe rounds.
    responders.get("tts")!.unsubscribe();
    await world.bus.nc.flush();
    await waitReadiness(503, /^no ready tts replica$/, 6_000);
  });

  it("requires nothing from other stages when INGRESS_REQUIRE_SERVICES is empty", async () => {
    const alone = await startIngress({ NATS_URL: world.nats.url, REDIS_URL: world.redis.url, INGRESS_REQUIRE_SERVICES: "" });
    try {
      // Ready as soon as its own links are up, with no other stage running.
      await waitFor(async () => (await fetch(`${alone.baseUrl}/readyz`)).status === 200, { timeoutMs: 5_000, what: "ready" });
    } finally {
      await alone.handle.stop();
    }
  });
});
