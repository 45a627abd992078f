import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { ensureTestCertificate, trustTestCertificateInProcess } from "@voicebot/testing";
import { afterEach, describe, expect, it } from "vitest";
import { StreamingHttpClient } from "./http-stream.js";

/** A server that answers each connection's `answerFirst` requests and drops the connection on the next one. */
async function serverDropping(answerFirst: number, dropAfterMs = 0) {
  const perSocket = new WeakMap<object, number>();
  let connections = 0;
  const server = http.createServer((req, res) => {
    const seen = (perSocket.get(req.socket) ?? 0) + 1;
    perSocket.set(req.socket, seen);
    req.resume();
    req.on("end", () => {
      // At once: as a server that had closed an idle keep-alive connection. Later: a failure while it works.
      if (seen > answerFirst) return void setTimeout(() => req.socket.destroy(), dropAfterMs);
      res.writeHead(200, { "content-type": "audio/basic" });
      res.write(Buffer.alloc(160, 0xff));
      res.end(Buffer.alloc(160, 0x7f));
    });
  });
  server.on("connection", () => connections++);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/speak`);
  return { url, connections: () => connections, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

async function bodyBytes(client: StreamingHttpClient, url: URL): Promise<number> {
  const answer = await client.post(url, { headers: {}, body: "{}", signal: new AbortController().signal });
  let bytes = 0;
  for await (const chunk of answer.chunks()) bytes += chunk.length;
  return bytes;
}

describe("StreamingHttpClient", () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });

  it("keeps the connection for the next request, and sends a request again on a new one when a kept connection was closed", async () => {
    const server = await serverDropping(1);
    const client = new StreamingHttpClient();
    cleanups.push(() => client.close(), server.close);
    expect(await bodyBytes(client, server.url)).toBe(320);
    // The kept connection is dropped when written to: the request goes again, once, on a new connection.
    expect(await bodyBytes(client, server.url)).toBe(320);
    expect(server.connections()).toBe(2);
  });

  it("streams over TLS (the cloud APIs), keeping the connection for the next request", async () => {
    const certificate = await ensureTestCertificate();
    trustTestCertificateInProcess(certificate);
    let connections = 0;
    const server = https.createServer({ cert: certificate.cert, key: certificate.key }, (req, res) => {
      req.resume();
      req.on("end", () => {
        res.writeHead(200, { "content-type": "audio/basic" });
        res.write(Buffer.alloc(800, 0xff));
        setTimeout(() => res.end(Buffer.alloc(800, 0x7f)), 10);
      });
    });
    server.on("secureConnection", () => connections++);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const client = new StreamingHttpClient();
    cleanups.push(() => client.close(), () => new Promise<void>((resolve) => server.close(() => resolve())));
    const url = new URL(`https://127.0.0.1:${(server.address() as AddressInfo).port}/v1/speak`);
    expect(await bodyBytes(client, url)).toBe(1600);
    expect(await bodyBytes(client, url)).toBe(1600);
    expect(connections).toBe(1);
  });

  it("does not send a request again when a kept connection fails only after the server had time to work on it", async () => {
    const server = await serverDropping(1, 700);
    const client = new StreamingHttpClient();
    cleanups.push(() => client.close(), server.close);
    expect(await bodyBytes(client, server.url)).toBe(320);
    await expect(bodyBytes(client, server.url)).rejects.toThrow(/socket hang up/);
    expect(server.connections()).toBe(1);
  });

  it("does not send a request twice when a new connection fails", async () => {
    const server = await serverDropping(0);
    const client = new StreamingHttpClient();
    cleanups.push(() => client.close(), server.close);
    await expect(bodyBytes(client, server.url)).rejects.toThrow(/socket hang up/);
    expect(server.connections()).toBe(1);
  });
});
