// A service reaching a NATS and a Redis that require credentials and TLS, as production ones do: real servers
// configured that way, the service kit's own env settings, and no secret in any log line.

import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { makeTestCertificates, startNats, startRedis, startRedisSentinel, startServiceProcess, waitFor, type ServerHandle, type TestCertificates } from "@voicebot/testing";
import { encodeAccount, encodeOperator, encodeUser, fmtCreds } from "@nats-io/jwt";
import { connect, credsAuthenticator, nkeys } from "nats";
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from "vitest";
import { CallStore } from "@voicebot/state";
import { startService, type ServiceDefinition } from "./service.js";

const noop: ServiceDefinition<undefined> = {
  name: "tools",
  defaultHttpPort: 0,
  readConfig: () => undefined,
  start: async () => ({ activeCalls: () => 0, drain: async () => undefined }),
};

/** The log lines services in this process write (to stdout) until the test ends. */
function captureLog(): string[] {
  const lines: string[] = [];
  const write = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
    lines.push(String(chunk));
    return true;
  });
  onTestFinished(() => write.mockRestore());
  return lines;
}

/** Starts the service with `env`, waits for /readyz 200 and returns the log lines it wrote meanwhile. */
async function runReady(env: Record<string, string>): Promise<string> {
  const lines = captureLog();
  const handle = await startService(noop, { HTTP_PORT: "0", LOG_LEVEL: "debug", ...env });
  onTestFinished(() => handle.stop());
  const ready = await waitFor(async () => (await fetch(`http://127.0.0.1:${handle.ctx.port}/readyz`)).status === 200, { what: "ready", timeoutMs: 15_000 });
  expect(ready).toBe(true);
  return lines.join("");
}

describe("secured NATS", () => {
  let redis: ServerHandle;
  let certs: TestCertificates;
  beforeAll(async () => {
    [redis, certs] = await Promise.all([startRedis(), makeTestCertificates()]);
  });
  afterAll(() => redis.stop());

  const natsWith = async (args: string[]) => {
    const nats = await startNats({ args });
    onTestFinished(() => nats.stop());
    return nats;
  };

  it("a user and password, written into NATS_URL or set apart", async () => {
    const nats = await natsWith(["--user", "alice", "--pass", "pw-in-url-77"]);
    const logs = await runReady({ NATS_URL: `nats://alice:pw-in-url-77@127.0.0.1:${nats.port}`, REDIS_URL: redis.url });
    expect(logs).toContain(`"nats":"nats://127.0.0.1:${nats.port}"`);
    expect(logs).not.toContain("pw-in-url-77");
    const apart = await runReady({ NATS_URL: nats.url, NATS_USER: "alice", NATS_PASSWORD: "pw-in-url-77", REDIS_URL: redis.url });
    expect(apart).not.toContain("pw-in-url-77");
  });

  it("a token, written into NATS_URL or set apart; a wrong one fails the start with the server's reason", async () => {
    const nats = await natsWith(["--auth", "token-x9y8z7"]);
    expect(await runReady({ NATS_URL: `nats://token-x9y8z7@127.0.0.1:${nats.port}`, REDIS_URL: redis.url })).not.toContain("token-x9y8z7");
    expect(await runReady({ NATS_URL: nats.url, NATS_TOKEN: "token-x9y8z7", REDIS_URL: redis.url })).not.toContain("token-x9y8z7");
    await expect(startService(noop, { HTTP_PORT: "0", LOG_LEVEL: "error", NATS_URL: nats.url, NATS_TOKEN: "wrong", REDIS_URL: redis.url })).rejects.toThrow(
      /Authorization Violation/,
    );
  });

  it("an nkey seed from a file", async () => {
    const user = nkeys.createUser();
    const config = path.join(certs.dir, "nkey.conf");
    await writeFile(config, `authorization { users = [ { nkey: "${user.getPublicKey()}" } ] }\n`);
    const seedFile = path.join(certs.dir, "user.nk");
    await writeFile(seedFile, new TextDecoder().decode(user.getSeed()) + "\n");
    const nats = await natsWith(["-c", config]);
    await expect(startService(noop, { HTTP_PORT: "0", LOG_LEVEL: "error", NATS_URL: nats.url, REDIS_URL: redis.url })).rejects.toThrow(/Authorization/);
    await runReady({ NATS_URL: nats.url, NATS_NKEY_SEED_FILE: seedFile, REDIS_URL: redis.url });
  });

  it("a credentials file (user JWT and seed) for a server in operator mode, JetStream included", async () => {
    // What nsc or Synadia Cloud hand out: an operator, an account with JetStream, a user of it, and its .creds file.
    const operator = nkeys.createOperator();
    const account = nkeys.createAccount();
    const system = nkeys.createAccount();
    const user = nkeys.createUser();
    // Limits given replace every default (0: no subscriptions): all unlimited, JetStream on.
    const limits = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1, mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 };
    const accountJwt = await encodeAccount("voicebot", account, { limits }, { signer: operator });
    const systemJwt = await encodeAccount("SYS", system, {}, { signer: operator });
    const config = path.join(certs.dir, "operator.conf");
    await writeFile(
      config,
      [
        `operator: ${await encodeOperator("O", operator, { system_account: system.getPublicKey() })}`,
        `system_account: ${system.getPublicKey()}`,
        "resolver: MEMORY",
        `resolver_preload: { ${account.getPublicKey()}: ${accountJwt}, ${system.getPublicKey()}: ${systemJwt} }`,
      ].join("\n") + "\n",
    );
    const credsFile = path.join(certs.dir, "voicebot.creds");
    await writeFile(credsFile, fmtCreds(await encodeUser("voicebot", user, account), user));
    const nats = await natsWith(["-c", config]);
    await expect(startService(noop, { HTTP_PORT: "0", LOG_LEVEL: "error", NATS_URL: nats.url, REDIS_URL: redis.url })).rejects.toThrow(/Authorization/);
    const seed = new TextDecoder().decode(user.getSeed());
    expect(await runReady({ NATS_URL: nats.url, NATS_CREDS_FILE: credsFile, REDIS_URL: redis.url })).not.toContain(seed);
    // A real dialog process makes its JetStream work queue in the account and goes ready.
    const dialog = await startServiceProcess("dialog", { NATS_URL: nats.url, NATS_CREDS_FILE: credsFile, REDIS_URL: redis.url });
    onTestFinished(() => dialog.kill());
    expect(dialog.logs.map((l) => JSON.stringify(l)).join("\n")).not.toContain(seed);
    const nc = await connect({ servers: nats.url, authenticator: credsAuthenticator(await readFile(credsFile)) });
    onTestFinished(() => nc.close());
    expect((await (await nc.jetstreamManager()).streams.info("VB_DIALOG_IN")).config.subjects).toEqual(["vb.v1.call.*.dialog.in"]);
  });

  it("TLS with a private CA", async () => {
    const nats = await natsWith(["--tls", "--tlscert", certs.certFile, "--tlskey", certs.keyFile]);
    await runReady({ NATS_URL: `tls://127.0.0.1:${nats.port}`, NATS_TLS_CA_FILE: certs.caFile, REDIS_URL: redis.url });
    // Without the CA the server's certificate is not trusted: nothing goes in clear, the service stays unready and
    // its log says why (a real service process: its start waits for NATS).
    const tools = await startServiceProcess("tools", { NATS_URL: nats.url, REDIS_URL: redis.url }, { waitReady: false });
    onTestFinished(() => tools.kill());
    const line = await waitFor(() => tools.logs.find((l) => l.msg === "nats not reachable yet"), { what: "the log line" });
    expect(String(line.error)).toMatch(/certificate/i);
    const res = await fetch(`${tools.baseUrl}/readyz`);
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ reason: "nats: connecting" });
  });

  it("names bad settings before connecting", async () => {
    await expect(
      startService(noop, {
        NATS_URL: "nats://a:1@127.0.0.1:4222,nats://b:2@127.0.0.1:4223",
        NATS_USER: "u",
        NATS_TOKEN: "t",
        NATS_TLS_CERT_FILE: "/nonexistent/cert.pem",
        REDIS_URL: "rediss://redis:6379/zero",
        REDIS_SENTINELS: "host:99999,sentinel-1",
      }),
    ).rejects.toThrow(
      /NATS_URL: the NATS URLs carry different credentials.*NATS_USER and NATS_PASSWORD go together.*NATS_TLS_CERT_FILE: cannot read.*REDIS_SENTINELS: "host:99999".*REDIS_URL: "\/zero" is not a database number/,
    );
    const seedFile = path.join(certs.dir, "not-a-seed.nk");
    await writeFile(seedFile, "SUNOTASEED\n");
    await expect(startService(noop, { NATS_NKEY_SEED_FILE: seedFile })).rejects.toThrow(/NATS_NKEY_SEED_FILE does not hold an nkey seed/);
    // A seed file given as the credentials file.
    const seed = path.join(certs.dir, "seed-as-creds.nk");
    await writeFile(seed, new TextDecoder().decode(nkeys.createUser().getSeed()) + "\n");
    await expect(startService(noop, { NATS_CREDS_FILE: seed })).rejects.toThrow(/NATS_CREDS_FILE does not hold a NATS user JWT/);
  });
});

describe("secured Redis", () => {
  let nats: ServerHandle;
  let certs: TestCertificates;
  beforeAll(async () => {
    [nats, certs] = await Promise.all([startNats(), makeTestCertificates()]);
  });
  afterAll(() => nats.stop());

  it("a password, in REDIS_URL or set apart, and an ACL user", async () => {
    const redis = await startRedis({ args: ["--requirepass", "redis-pw-5150", "--user", "voicebot", "on", ">acl-pw-6160", "~*", "&*", "+@all"] });
    onTestFinished(() => redis.stop());
    const inUrl = await runReady({ NATS_URL: nats.url, REDIS_URL: `redis://:redis-pw-5150@127.0.0.1:${redis.port}` });
    expect(inUrl).toContain(`"redis":"redis://127.0.0.1:${redis.port}"`);
    expect(inUrl).not.toContain("redis-pw-5150");
    await runReady({ NATS_URL: nats.url, REDIS_URL: redis.url, REDIS_PASSWORD: "redis-pw-5150" });
    await runReady({ NATS_URL: nats.url, REDIS_URL: redis.url, REDIS_USERNAME: "voicebot", REDIS_PASSWORD: "acl-pw-6160" });
  });

  it("a wrong password keeps the service unready and says why in the log", async () => {
    const redis = await startRedis({ args: ["--requirepass", "right-pw"] });
    onTestFinished(() => redis.stop());
    const lines = captureLog();
    const handle = await startService(noop, { HTTP_PORT: "0", NATS_URL: nats.url, REDIS_URL: redis.url, REDIS_PASSWORD: "wrong-pw-4242" });
    onTestFinished(() => handle.stop());
    await waitFor(() => lines.some((l) => l.includes("redis link error") && /WRONGPASS|NOAUTH/.test(l)), { what: "the log line" });
    const res = await fetch(`http://127.0.0.1:${handle.ctx.port}/readyz`);
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ reason: expect.stringMatching(/^redis/) });
    expect(lines.join("")).not.toContain("wrong-pw-4242");
  });

  it("TLS with a private CA", async () => {
    const redis = await startRedis({ tls: certs });
    onTestFinished(() => redis.stop());
    expect(redis.url).toMatch(/^rediss:/);
    await runReady({ NATS_URL: nats.url, REDIS_URL: redis.url, REDIS_TLS_CA_FILE: certs.caFile });
  });

  it("Sentinel, every part with a password: the store follows the master through a failover", async () => {
    const auth = ["--requirepass", "data-pw-31", "--masterauth", "data-pw-31"];
    const master = await startRedis({ args: auth });
    const replica = await startRedis({ args: [...auth, "--replicaof", "127.0.0.1", String(master.port)] });
    const sentinel = await startRedisSentinel({ masterPort: master.port, name: "calls", replicas: 1, password: "sentinel-pw-47", masterPassword: "data-pw-31" });
    onTestFinished(async () => {
      await Promise.all([master.stop(), replica.stop(), sentinel.stop()]);
    });
    const lines = captureLog();
    const handle = await startService(noop, {
      HTTP_PORT: "0",
      NATS_URL: nats.url,
      REDIS_URL: "redis://ignored-with-sentinels:6379",
      REDIS_SENTINELS: `127.0.0.1:${sentinel.port}`,
      REDIS_SENTINEL_MASTER: "calls",
      REDIS_PASSWORD: "data-pw-31",
      REDIS_SENTINEL_PASSWORD: "sentinel-pw-47",
    });
    onTestFinished(() => handle.stop());
    const { store } = handle.ctx;
    await waitFor(() => store.ready, { what: "store ready" });
    expect(lines.join("")).toContain(`"redis":"sentinel://127.0.0.1:${sentinel.port}/calls"`);
    expect(lines.join("")).not.toMatch(/data-pw-31|sentinel-pw-47/);
    await followsFailover(store, master, CallStore.connect({ url: replica.url, password: "data-pw-31" }));
  });

  it("Sentinel over TLS (sentinels, master and replica all TLS only, a private CA): the store follows the master through a failover", async () => {
    const tls = { certFile: certs.certFile, keyFile: certs.keyFile, caFile: certs.caFile };
    const master = await startRedis({ tls });
    const replica = await startRedis({ tls, args: ["--tls-replication", "yes", "--replicaof", "127.0.0.1", String(master.port)] });
    const sentinel = await startRedisSentinel({ masterPort: master.port, name: "calls", replicas: 1, tls });
    onTestFinished(async () => {
      await Promise.all([master.stop(), replica.stop(), sentinel.stop()]);
    });
    const lines = captureLog();
    const handle = await startService(noop, {
      HTTP_PORT: "0",
      NATS_URL: nats.url,
      REDIS_URL: "rediss://ignored-with-sentinels:6379",
      REDIS_SENTINELS: `127.0.0.1:${sentinel.port}`,
      REDIS_SENTINEL_MASTER: "calls",
      REDIS_TLS_CA_FILE: certs.caFile,
    });
    onTestFinished(() => handle.stop());
    const { store } = handle.ctx;
    await waitFor(() => store.ready, { what: "store ready" });
    expect(lines.join("")).toContain(`"redis":"sentinel://127.0.0.1:${sentinel.port}/calls"`);
    await followsFailover(store, master, CallStore.connect({ url: replica.url, tls: { ca: await readFile(certs.caFile, "utf8") } }));
  });
});

/**
 * A live call's record is written through `store`, the master crashes, and writes go on once the sentinel promoted
 * the replica (`promoted`, a store connected to it straight): they are there, and it is the master now.
 */
async function followsFailover(store: CallStore, master: ServerHandle, promoted: CallStore): Promise<void> {
  onTestFinished(() => promoted.close());
  const callSid = `CAsentinel${Date.now()}`;
  await store.createCall({ callSid, provider: "twilio", streamSid: "MZ1", agent: "a", from: "+1", to: "+2", startedAt: new Date().toISOString() });
  await waitFor(async () => (await store.callState(callSid)) === "live", { what: "written" });
  master.kill(); // a crash: the replica is promoted once the sentinel sees the master down
  const afterFailover = await waitFor(
    async () => {
      await store.appendTranscript(callSid, { role: "caller", text: "still here", at: new Date().toISOString(), source: "speech" });
      return store.callState(callSid);
    },
    { what: "writes on the promoted replica", timeoutMs: 20_000, intervalMs: 200 },
  );
  expect(afterFailover).toBe("live");
  expect((await promoted.redis.info("replication")).includes("role:master")).toBe(true);
  expect((await promoted.getRecord(callSid))?.transcript.map((e) => e.text)).toContain("still here");
}
