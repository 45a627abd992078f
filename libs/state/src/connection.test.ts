// After a failover behind one address (managed Redis moves its primary endpoint's DNS name), a store connected to
// the demoted node gets READONLY: it must reconnect and reach the new primary, not fail every write until restarted.
// A link that goes dark without closing must be found out and made again, not hold every command for minutes.

import { startRedis, startTcpProxy, waitFor, type ServerHandle } from "@voicebot/testing";
import { afterAll, beforeAll, expect, it } from "vitest";
import { redisConnectionOptions, redisDatabase } from "./connection.js";
import { CallStore, defaultStoreOptions } from "./store.js";

let first: ServerHandle;
let second: ServerHandle;
beforeAll(async () => {
  first = await startRedis();
  second = await startRedis();
});
afterAll(async () => {
  await Promise.all([first.stop(), second.stop()]);
});

it("a store behind a stable endpoint follows a failover: one write fails READONLY, the next reach the new primary", async () => {
  const endpoint = await startTcpProxy(first.port);
  const store = CallStore.connect(`redis://127.0.0.1:${endpoint.port}`);
  try {
    await store.redis.set("vb:test:failover", "before");

    // The failover: the second node becomes the primary, the first its replica, and the endpoint moves.
    const admin = (p: number) => CallStore.connect(`redis://127.0.0.1:${p}`);
    const [a, b] = [admin(first.port), admin(second.port)];
    await b.redis.replicaof("NO", "ONE");
    await a.redis.replicaof("127.0.0.1", second.port);
    endpoint.targetPort = second.port;
    await Promise.all([a.close(), b.close()]);

    await expect(store.redis.set("vb:test:failover", "during")).rejects.toThrow(/READONLY/);
    const written = await waitFor(async () => (await store.redis.set("vb:test:failover", "after")) === "OK", { what: "a write on the new primary" });
    expect(written).toBe(true);
    const check = CallStore.connect(second.url);
    expect(await check.redis.get("vb:test:failover")).toBe("after");
    await check.close();
  } finally {
    await store.close();
    await endpoint.close();
  }
});

it("a link that goes dark without closing is dropped and made again: commands fail within the link timeout instead of hanging, and work once it is back", async () => {
  const link = await startTcpProxy(second.port); // the primary since the test above
  const store = CallStore.connect(`redis://127.0.0.1:${link.port}`, { ...defaultStoreOptions, linkTimeoutMs: 1_000 });
  try {
    await store.redis.set("vb:test:dark", "before");
    link.blackhole();
    const started = Date.now();
    await expect(store.redis.get("vb:test:dark")).rejects.toThrow(/Command timed out/);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(store.ready).toBe(false); // the dead connection was dropped: not ready while it is being made again
    link.restore();
    expect(await waitFor(async () => (await store.redis.get("vb:test:dark").catch(() => undefined)) ?? undefined, { what: "a read once the link is back" })).toBe("before");

    // Idle (no command waiting), the heartbeat finds the dark link: the store stops being ready.
    link.blackhole();
    await waitFor(() => !store.ready, { timeoutMs: 4_000, what: "the idle store to notice the dark link" });
    link.restore();
    await waitFor(() => store.ready, { what: "the store ready again" });
  } finally {
    await store.close();
    await link.close();
  }
});

it("the connection options: URL credentials, database and IPv6 host, settings apart taking precedence, TLS and Sentinel", () => {
  expect(redisConnectionOptions({ url: "redis://u:p%40ss@redis.example:6380/3" })).toMatchObject({ host: "redis.example", port: 6380, db: 3, username: "u", password: "p@ss" });
  expect(redisConnectionOptions({ url: "redis://:old@h", password: "new" })).toMatchObject({ host: "h", port: 6379, db: 0, password: "new" });
  expect(redisConnectionOptions({ url: "redis://[::1]:6390/2/" })).toMatchObject({ host: "::1", port: 6390, db: 2 });
  expect(redisDatabase(new URL("redis://h/zero"))).toBeNaN();
  expect(redisConnectionOptions({ url: "rediss://h" }).tls).toEqual({});
  expect(redisConnectionOptions({ url: "redis://h", tls: { ca: "PEM" } }).tls).toEqual({ ca: "PEM" });
  const sentinel = redisConnectionOptions({ url: "redis://ignored/1", sentinels: [{ host: "s1", port: 26379 }], sentinelMaster: "calls", password: "pw", sentinelPassword: "spw" });
  expect(sentinel).toMatchObject({ sentinels: [{ host: "s1", port: 26379 }], name: "calls", db: 1, password: "pw", sentinelPassword: "spw" });
  expect(sentinel).not.toHaveProperty("host");
});
