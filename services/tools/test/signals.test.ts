// How a service process answers signals before it is up: as PID 1 in a container a signal nothing handles is
// ignored, so a pod stuck starting (NATS unreachable) would wait for SIGKILL at the end of its grace period.
import { startServiceProcess } from "@voicebot/testing";
import { expect, it } from "vitest";

it("a SIGTERM while the service is still starting (NATS unreachable) ends it at once", async () => {
  const tools = await startServiceProcess("tools", { NATS_URL: "nats://127.0.0.1:1", REDIS_URL: "redis://127.0.0.1:1" }, { waitReady: false });
  await tools.waitForLog((l) => typeof l.msg === "string" && /nats|redis/i.test(l.msg), 10_000);
  const started = Date.now();
  const code = await tools.terminate(10_000);
  expect(code).toBe(0);
  expect(Date.now() - started).toBeLessThan(3_000);
  expect(tools.logs.some((l) => l.msg === "signal received while starting; exiting")).toBe(true);
});
