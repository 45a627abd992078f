// /readyz tells the truth about the links every service depends on: losing NATS or Redis makes all five
// unready (so a load balancer stops sending calls), and they recover by themselves when it comes back.
import { startNats, startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, expect, test } from "vitest";
import { serviceNames, startSystem, type System } from "./system.js";

let system: System;
const extraServers: ServerHandle[] = [];

beforeAll(async () => {
  system = await startSystem();
});

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") console.log(`service logs after "${ctx.task.name}":\n${system?.recentLogs()}`);
});

afterAll(async () => {
  if (!system) return;
  await Promise.all(serviceNames.map((name) => system.services[name].terminate(15_000)));
  for (const server of extraServers) await server.stop();
  await system.nats.stop();
  await system.redis.stop();
});

async function allStatuses(): Promise<Record<string, number>> {
  const codes = await Promise.all(serviceNames.map((name) => system.readyz(name).catch(() => -1)));
  return Object.fromEntries(serviceNames.map((name, i) => [name, codes[i]]));
}

async function waitForAll(status: number, what: string, timeoutMs = 15_000): Promise<void> {
  let last: Record<string, number> = {};
  try {
    await waitFor(
      async () => {
        last = await allStatuses();
        return Object.values(last).every((code) => code === status) || undefined;
      },
      { timeoutMs, intervalMs: 100, what },
    );
  } catch (error) {
    throw new Error(`${(error as Error).message}; last /readyz codes: ${JSON.stringify(last)}`);
  }
}

test("every service is ready once started", async () => {
  expect(await allStatuses()).toEqual(Object.fromEntries(serviceNames.map((n) => [n, 200])));
});

test("NATS down: all five go unready; NATS back on the same port: all five ready again", async () => {
  const { port, storeDir } = system.nats;
  system.nats.kill();
  await waitForAll(503, "every service to report 503 without NATS");
  const reasons = await Promise.all(
    serviceNames.map(async (name) => ((await (await fetch(`${system.services[name].baseUrl}/readyz`)).json()) as { reason?: string }).reason),
  );
  for (const reason of reasons) expect(reason).toMatch(/nats/i);

  const nats = await startNats({ port, storeDir });
  extraServers.push(nats);
  await waitForAll(200, "every service to be ready again after NATS returned", 20_000);
});

test("Redis down: all five go unready; Redis back on the same port: all five ready again", async () => {
  const { port } = system.redis;
  system.redis.kill();
  await waitForAll(503, "every service to report 503 without Redis");
  const redis = await startRedis({ port });
  extraServers.push(redis);
  await waitForAll(200, "every service to be ready again after Redis returned", 20_000);
});

test("no service crashed or wrote to stderr while its links went away", () => {
  for (const name of serviceNames) {
    expect(system.services[name].process.exitCode, name).toBeNull();
    expect(system.services[name].stderr(), name).toBe("");
  }
});
