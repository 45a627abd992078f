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

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

describe("StreamingHttpClient", () => {

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

/** A server that drops idle connections after `idleMs` (as API front ends do) and notes each request's place on its connection. */
type IdleServer = Awaited<ReturnType<typeof serverClosingIdle>>;

async function serverClosingIdle(idleMs: number, options: { warmStatus?: number; closeAfterWarm?: boolean } = {}) {
  const perSocket = new WeakMap<object, number>();
  const requests: Array<{ method: string; path: string; nthOnConnection: number }> = [];
  let connections = 0;
  const server = http.createServer((req, res) => {
    const nth = (perSocket.get(req.socket) ?? 0) + 1;
    perSocket.set(req.socket, nth);
    requests.push({ method: req.method ?? "", path: req.url ?? "", nthOnConnection: nth });
    req.resume();
    req.on("end", () => {
      if (req.method === "GET") {
        const headers: Record<string, string> = { "content-type": "application/json" };
        if (options.closeAfterWarm) headers.connection = "close";
        res.writeHead(options.warmStatus ?? 200, headers).end("[]");
        return;
      }
      res.writeHead(200, { "content-type": "audio/basic" }).end(Buffer.alloc(160, 0xff));
    });
  });
  server.keepAliveTimeout = idleMs;
  server.on("connection", () => connections++);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    speakUrl: new URL(`${base}/v1/speak`),
    warmUrl: new URL(`${base}/v1/models`),
    requests,
    connections: () => connections,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A keep-warm client of `server`; both are closed after the test. */
function keepWarmClient(server: IdleServer, forMs = 60_000, onFailure?: (error: Error) => void): StreamingHttpClient {
  const client = new StreamingHttpClient({ url: server.warmUrl, headers: {}, forMs, onFailure });
  cleanups.push(() => client.close(), server.close);
  return client;
}

describe("StreamingHttpClient keep-warm", () => {
  it("opens a new connection when the server drops the idle one, so the next request needs no handshake", async () => {
    // The server keeps idle connections 2.5 s and says "Keep-Alive: timeout=2"; Node's agent closes its side 1 s
    // before that, at ~1 s: a GET opens a new connection at once, which the second request finds.
    const server = await serverClosingIdle(2_500);
    const client = keepWarmClient(server);
    expect(await bodyBytes(client, server.speakUrl)).toBe(160);
    await sleep(1_500);
    const speaks = () => server.requests.filter((r) => r.method === "POST");
    expect(await bodyBytes(client, server.speakUrl)).toBe(160);
    // The second sentence went out on a connection a keep-warm GET had opened before it.
    expect(speaks()[1].nthOnConnection).toBeGreaterThan(1);
    expect(server.requests.filter((r) => r.method === "GET" && r.path === "/v1/models")).toHaveLength(1);
    expect(client.warmUps.failed).toBe(0);
  });

  it("warm() opens a connection before the first request; without keep-warm the request makes its own", async () => {
    const server = await serverClosingIdle(5_000);
    const warmed = new StreamingHttpClient({ url: server.warmUrl, headers: {}, forMs: 60_000 });
    const plain = new StreamingHttpClient({ url: server.warmUrl, headers: {}, forMs: 0 });
    cleanups.push(() => warmed.close(), () => plain.close(), server.close);
    warmed.warm();
    plain.warm();
    await sleep(100);
    expect(await bodyBytes(warmed, server.speakUrl)).toBe(160);
    expect(await bodyBytes(plain, server.speakUrl)).toBe(160);
    const [first, second] = server.requests.filter((r) => r.method === "POST");
    expect(first.nthOnConnection).toBe(2);
    expect(second.nthOnConnection).toBe(1);
    expect(server.requests.filter((r) => r.method === "GET")).toHaveLength(1);
  });

  it("stops keeping a connection once the engine has been unused for its window", async () => {
    const server = await serverClosingIdle(100);
    const client = keepWarmClient(server, 300);
    expect(await bodyBytes(client, server.speakUrl)).toBe(160);
    await sleep(700);
    const connections = server.connections();
    await sleep(600);
    expect(server.connections()).toBe(connections);
    expect(client.warmUps.sent).toBeLessThanOrEqual(4);
  });

  it("keeps a connection warm with a refused GET too, and reports a GET that gets no answer", async () => {
    const server = await serverClosingIdle(2_500, { warmStatus: 401 });
    const failures: string[] = [];
    const client = keepWarmClient(server, 60_000, (error) => failures.push(error.message));
    expect(await bodyBytes(client, server.speakUrl)).toBe(160);
    await sleep(1_500);
    expect(await bodyBytes(client, server.speakUrl)).toBe(160);
    expect(server.requests.filter((r) => r.method === "POST")[1].nthOnConnection).toBeGreaterThan(1);
    expect(failures).toEqual([]);

    const port = Number(server.warmUrl.port);
    client.close();
    await server.close();
    const gone = new StreamingHttpClient({
      url: new URL(`http://127.0.0.1:${port}/v1/models`),
      headers: {},
      forMs: 60_000,
      onFailure: (error) => failures.push(error.message),
    });
    cleanups.push(() => gone.close());
    gone.warm();
    await sleep(300);
    expect(failures).toEqual([expect.stringMatching(/ECONNREFUSED/)]);
    expect(gone.warmUps).toEqual({ sent: 1, failed: 1 });
  });

  it("does not chase a server that closes every connection after its answer", async () => {
    const server = await serverClosingIdle(100, { closeAfterWarm: true });
    const client = keepWarmClient(server);
    expect(await bodyBytes(client, server.speakUrl)).toBe(160);
    await sleep(1_500);
    expect(client.warmUps.sent).toBe(1);
  });

  it("keeps as many connections as concurrent sentences used (up to 4), each replaced when the server drops it", async () => {
    const server = await serverClosingIdle(2_500);
    const client = keepWarmClient(server);
    // Three sentences at once: three connections.
    await Promise.all([1, 2, 3].map(() => bodyBytes(client, server.speakUrl)));
    expect(server.connections()).toBe(3);
    await sleep(1_500); // all three dropped at ~1 s, each replaced by a GET on a new connection
    await Promise.all([1, 2, 3].map(() => bodyBytes(client, server.speakUrl)));
    const speaks = server.requests.filter((r) => r.method === "POST");
    // Each on a connection a warm-up GET opened (not a new one); a slow machine may have warmed one twice.
    expect(speaks.slice(3).every((r) => r.nthOnConnection >= 2)).toBe(true);
    expect(client.warmUps.failed).toBe(0);
    expect(client.warmUps.sent).toBeGreaterThanOrEqual(3);
  });
});
