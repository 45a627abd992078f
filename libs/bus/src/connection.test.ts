import { describe, expect, it } from "vitest";
import { natsSecurityOptions, parseNatsServers } from "./connection.js";

describe("parseNatsServers", () => {
  it("takes credentials out of the URLs: user and password, or a token", () => {
    expect(parseNatsServers("nats://alice:p%40ss@nats-0:4222, nats://nats-1:4222")).toEqual({
      servers: ["nats://nats-0:4222", "nats://nats-1:4222"],
      auth: { kind: "user", user: "alice", pass: "p@ss" },
      tls: false,
    });
    expect(parseNatsServers("nats://t0ken@nats:4222")).toEqual({ servers: ["nats://nats:4222"], auth: { kind: "token", token: "t0ken" }, tls: false });
  });
  it("keeps plain lists as they are, adds the scheme to bare host:port, and notes tls://", () => {
    expect(parseNatsServers("nats://127.0.0.1:4222")).toEqual({ servers: ["nats://127.0.0.1:4222"], tls: false });
    expect(parseNatsServers("nats-0:4222,tls://nats-1:4443")).toEqual({ servers: ["nats://nats-0:4222", "tls://nats-1:4443"], tls: true });
  });
  it("refuses URLs with different credentials, and an empty list", () => {
    expect(() => parseNatsServers("nats://a:1@h1,nats://b:2@h2")).toThrow(/different credentials/);
    expect(() => parseNatsServers(" , ")).toThrow(/no NATS server/);
  });
});

it("natsSecurityOptions maps each way to authenticate and the TLS settings onto nats.js options", () => {
  expect(natsSecurityOptions({ kind: "user", user: "u", pass: "p" }, undefined)).toEqual({ user: "u", pass: "p" });
  expect(natsSecurityOptions({ kind: "token", token: "t" }, {})).toEqual({ token: "t", tls: {} });
  expect(natsSecurityOptions(undefined, { ca: "PEM" })).toEqual({ tls: { ca: "PEM" } });
  expect(typeof natsSecurityOptions({ kind: "nkey", seed: new Uint8Array() }, undefined).authenticator).toBe("function");
});
