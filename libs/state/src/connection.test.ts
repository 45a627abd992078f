// After a failover behind one address (managed Redis moves its primary endpoint's DNS name), a store connected to
// the demoted node gets READONLY: it must reconnect and reach the new primary, not fail every write until restarted.

import net from "node:net";
import { startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import { afterAll, beforeAll, expect, it } from "vitest";
import { redisConnectionOptions, redisDatabase } from "./connection.js";
import { CallStore } from "./store.js";

/** A TCP forwarder standing for the stable endpoint: new connections go to whichever port `target` says. */
function endpoint(target: { port: number }): Promise<net.Server> {
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, "127.0.0.1");
    client.pipe(upstream).pipe(client);
    const close = () => (client.destroy(), upstream.destroy());
    client.on("error", close).on("close", close);
    upstream.on("error", close).on("close", close);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

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
  const target = { port: first.port };
  const server = await endpoint(target);
  const { port } = server.address() as net.AddressInfo;
  const store = CallStore.connect(`redis://127.0.0.1:${port}`);
  try {
    await store.redis.set("vb:test:failover", "before");

    // The failover: the second node becomes the primary, the first its replica, and the endpoint moves.
    const admin = (p: number) => CallStore.connect(`redis://127.0.0.1:${p}`);
    const [a, b] = [admin(first.port), admin(second.port)];
    await b.redis.replicaof("NO", "ONE");
    await a.redis.replicaof("127.0.0.1", second.port);
    target.port = second.port;
    await Promise.all([a.close(), b.close()]);

    await expect(store.redis.set("vb:test:failover", "during")).rejects.toThrow(/READONLY/);
    const written = await waitFor(async () => (await store.redis.set("vb:test:failover", "after")) === "OK", { what: "a write on the new primary" });
    expect(written).toBe(true);
    const check = CallStore.connect(second.url);
    expect(await check.redis.get("vb:test:failover")).toBe("after");
    await check.close();
  } finally {
    await store.close();
    server.close();
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
