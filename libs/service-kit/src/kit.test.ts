import { freePort, startNats, startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from "vitest";
import { ConfigError, EnvReader } from "./config.js";
import { createLogger } from "./log.js";
import { startService, type ServiceDefinition } from "./service.js";

describe("EnvReader", () => {
  it("reports every bad variable at once, by name", () => {
    const env = new EnvReader({ A: "x", B: "70000", C: "maybe", D: "tts,nope" });
    env.int("A", 1);
    env.int("B", 1, { min: 0, max: 65535 });
    env.bool("C", false);
    env.list("D", ["tts", "asr"] as const, ["tts"]);
    expect(() => env.done()).toThrow(ConfigError);
    try {
      env.done();
    } catch (error) {
      const message = (error as Error).message;
      for (const name of ["A=", "B=", "C=", "D="]) expect(message).toContain(name);
      expect(message).toContain("between 0 and 65535");
      expect(message).toContain("unknown nope");
    }
  });
  it("takes numbers only as people write them, and no duration past what a timer can wait", () => {
    const env = new EnvReader({
      PORT: " 8080 ",
      BLANK: " ",
      HEX: "0x1F90",
      HELM_TTL: "2.592e+06", // Helm's rendering of an unquoted 2592000
      PART: "2.5",
      INF: "Infinity",
      SHARE: "0.25",
      BAD_RATIO: "1/4",
      DRAIN_TIMEOUT_MS: "9999999999",
      LONG_MS: "2147483647",
    });
    expect(env.int("PORT", 1)).toBe(8080);
    expect(env.int("BLANK", 7)).toBe(7); // blank is unset, not 0
    expect(env.int("HELM_TTL", 1)).toBe(2_592_000);
    expect(env.number("SHARE", 1)).toBe(0.25);
    expect(env.int("LONG_MS", 1, { min: 0 })).toBe(2_147_483_647);
    for (const name of ["HEX", "PART"]) expect(env.int(name, 1)).toBe(1);
    for (const name of ["INF", "BAD_RATIO"]) expect(env.number(name, 1)).toBe(1);
    expect(env.int("DRAIN_TIMEOUT_MS", 30_000, { min: 0 })).toBe(30_000);
    try {
      env.done();
      expect.unreachable("bad values are reported");
    } catch (error) {
      const message = (error as Error).message;
      for (const name of ["HEX=", "PART=", "INF=", "BAD_RATIO=", "DRAIN_TIMEOUT_MS="]) expect(message).toContain(name);
      for (const name of ["PORT=", "BLANK=", "HELM_TTL=", "SHARE=", "LONG_MS="]) expect(message).not.toContain(name);
      expect(message).toContain("DRAIN_TIMEOUT_MS=\"9999999999\" must be an integer between 0 and 2147483647");
    }
  });
  it("uses defaults for unset values", () => {
    const env = new EnvReader({});
    expect(env.int("X", 5)).toBe(5);
    expect(env.list("Y", ["a", "b"] as const, ["a"])).toEqual(["a"]);
    env.done();
  });
});

describe("logger", () => {
  it("writes JSON lines and never writes secrets", () => {
    const lines: string[] = [];
    const log = createLogger({ service: "t" }, "info", (l) => lines.push(l));
    log.debug("hidden");
    log.info("connecting", { apiKey: "sk-123", url: "redis://:hunter2@localhost:6379", nested: { authToken: "abc" }, ok: 1 });
    expect(lines).toHaveLength(1);
    const record = JSON.parse(lines[0]);
    expect(record).toMatchObject({ level: "info", service: "t", msg: "connecting", apiKey: "***", ok: 1, nested: { authToken: "***" } });
    expect(lines[0]).not.toContain("sk-123");
    expect(lines[0]).not.toContain("hunter2");
    expect(record.url).toBe("redis://:***@localhost:6379");
    // A URL's whole userinfo is the secret when it has no password part: NATS takes a token there.
    log.warn("nats", { servers: "nats://s3cr3t-token@nats-0:4222,nats://ops:pw9@nats-1:4222", error: new Error("at tls://tok2@h:4222") });
    expect(JSON.parse(lines[1])).toMatchObject({ servers: "nats://***@nats-0:4222,nats://ops:***@nats-1:4222", error: "at tls://***@h:4222" });
    log.info("an @ in the password", { target: "redis://:p@ss@redis:6379/1" });
    expect(JSON.parse(lines[2]).target).toBe("redis://:***@redis:6379/1");
    // Deeper than redaction looks: left out, not written as it is.
    log.info("deep", { a: { b: { c: { d: { e: { password: "deep-secret" } } } } } });
    expect(lines[3]).not.toContain("deep-secret");
    expect(JSON.parse(lines[3]).a.b.c.d.e).toBe("[…]");
  });
});

describe("startService", () => {
  let nats: ServerHandle & { storeDir: string };
  let redis: ServerHandle;
  beforeAll(async () => {
    nats = await startNats();
    redis = await startRedis();
  });
  afterAll(async () => {
    await nats.stop();
    await redis.stop();
  });

  it("serves ops endpoints, follows NATS and Redis in /readyz and drains live work on stop", async () => {
    let live = 1;
    const definition: ServiceDefinition<{ greeting: string }> = {
      name: "tools",
      defaultHttpPort: 0,
      readConfig: (env) => ({ greeting: env.string("GREETING", "hi") }),
      start: async () => ({
        activeCalls: () => live,
        drain: () => waitFor(() => live === 0, { timeoutMs: 5000 }).then(() => undefined),
      }),
    };
    const handle = await startService(definition, { NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: "0", LOG_LEVEL: "error" });
    const base = `http://127.0.0.1:${handle.ctx.port}`;
    const status = async (path: string) => (await fetch(base + path)).status;
    await waitFor(async () => (await status("/readyz")) === 200, { what: "ready" });
    expect(await status("/healthz")).toBe(200);
    const metrics = await (await fetch(base + "/metrics")).text();
    expect(metrics).toContain('voicebot_tools_active_calls{service="tools"} 1');

    await redis.stop();
    await waitFor(async () => (await status("/readyz")) === 503, { what: "unready without redis" });
    expect(await (await fetch(base + "/readyz")).json()).toMatchObject({ reason: expect.stringMatching(/^redis/) });
    redis = await startRedis({ port: redis.port });
    await waitFor(async () => (await status("/readyz")) === 200, { what: "ready with redis back", timeoutMs: 15000 });

    nats.kill();
    await waitFor(async () => (await status("/readyz")) === 503, { what: "unready without nats" });
    nats = await startNats({ port: nats.port });
    await waitFor(async () => (await status("/readyz")) === 200, { what: "ready with nats back", timeoutMs: 15000 });

    let stopped = false;
    const stopping = handle.stop().then(() => (stopped = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(stopped).toBe(false); // a live call holds the drain open
    live = 0;
    await stopping;
  });

  it("started before NATS is up, says so in its log and connects once NATS listens", async () => {
    const port = await freePort();
    const lines: string[] = [];
    const write = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
      lines.push(String(chunk));
      return true;
    });
    onTestFinished(() => write.mockRestore());
    const definition: ServiceDefinition<undefined> = {
      name: "tools",
      defaultHttpPort: 0,
      readConfig: () => undefined,
      start: async () => ({ activeCalls: () => 0, drain: async () => undefined }),
    };
    const starting = startService(definition, { NATS_URL: `nats://127.0.0.1:${port}`, REDIS_URL: redis.url, HTTP_PORT: "0" });
    await waitFor(() => lines.some((l) => l.includes("nats not reachable yet") && l.includes("CONNECTION_REFUSED")), { what: "the log line" });
    const late = await startNats({ port });
    onTestFinished(() => late.stop());
    const handle = await starting;
    onTestFinished(() => handle.stop());
    await waitFor(async () => (await fetch(`http://127.0.0.1:${handle.ctx.port}/readyz`)).status === 200, { what: "ready" });
  });

  it("closes its engines and links even when the drain fails", async () => {
    let closed = false;
    const definition: ServiceDefinition<undefined> = {
      name: "tools",
      defaultHttpPort: 0,
      readConfig: () => undefined,
      start: async () => ({
        activeCalls: () => 0,
        drain: async () => {
          throw new Error("queue gone");
        },
        close: async () => {
          closed = true;
        },
      }),
    };
    const handle = await startService(definition, { NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: "0", LOG_LEVEL: "error" });
    const base = `http://127.0.0.1:${handle.ctx.port}`;
    await handle.stop();
    expect(closed).toBe(true);
    await expect(fetch(`${base}/healthz`)).rejects.toThrow(); // the HTTP server closed too
  });

  it("rejects a bad configuration with a ConfigError naming the variable", async () => {
    const definition: ServiceDefinition<number> = {
      name: "tts",
      defaultHttpPort: 0,
      readConfig: (env) => env.int("TTS_MAX_CONCURRENT", 4, { min: 1 }),
      start: async () => ({ activeCalls: () => 0, drain: async () => undefined }),
    };
    await expect(startService(definition, { TTS_MAX_CONCURRENT: "zero", NATS_URL: nats.url, REDIS_URL: redis.url })).rejects.toThrow(
      /TTS_MAX_CONCURRENT="zero" must be an integer/,
    );
  });
});
