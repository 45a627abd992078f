import net from "node:net";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { HttpServer, readBody, sendJson, type HttpTimeouts } from "./http.js";
import { createLogger } from "./log.js";

const servers: HttpServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

/** A real HttpServer on a free port with a body-reading route; its log lines and refusal counts. */
async function start(timeouts?: HttpTimeouts) {
  const lines: Array<Record<string, unknown>> = [];
  const registry = new Registry();
  const http = new HttpServer(createLogger({ service: "t" }, "debug", (l) => lines.push(JSON.parse(l))), registry, timeouts);
  servers.push(http);
  http.route("POST", /^\/echo$/, async (req, res) => {
    const body = await readBody(req, 1_000_000);
    sendJson(res, 200, { bytes: body?.length });
  });
  http.upgrade("/raw", (_req, socket) => {
    socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\n");
    socket.on("data", (d) => socket.write(d)); // an echo, standing in for a WebSocket
    socket.on("end", () => socket.end());
  });
  const port = await http.listen(0, "127.0.0.1");
  const rejected = async (reason: string) => {
    const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === "voicebot_http_rejected_total");
    return (metric?.values ?? []).find((v) => v.labels.reason === reason)?.value ?? 0;
  };
  return { http, port, lines, rejected };
}

/** A raw client: what it got back and when the server closed it. */
function connect(port: number) {
  const socket = net.connect(port, "127.0.0.1");
  let received = "";
  socket.on("data", (d) => (received += d));
  socket.on("error", () => undefined);
  const closed = new Promise<number>((resolve) => socket.on("close", () => resolve(performance.now())));
  return { socket, closed, received: () => received };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `times` clients that go away mid-body of a POST to `target`; waits (≤ 2 s) until the server counted them. */
async function abortMidBody(port: number, target: string, times: number, rejected: (reason: string) => Promise<number>): Promise<void> {
  for (let i = 0; i < times; i++) {
    const client = connect(port);
    client.socket.write(`POST ${target} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nFrom=1`);
    await sleep(50);
    client.socket.destroy();
  }
  const deadline = performance.now() + 2_000;
  while ((await rejected("client_aborted")) < times && performance.now() < deadline) await sleep(20);
}

describe("HttpServer", () => {
  it("counts a client that goes away mid-body as client_aborted, not as a failed handler, and logs no warning", async () => {
    const { port, lines, rejected } = await start();
    await abortMidBody(port, "/echo", 3, rejected);
    expect(await rejected("client_aborted")).toBe(3);
    expect(await rejected("handler_failed")).toBe(0);
    expect(lines.filter((l) => l.level === "warn" || l.level === "error")).toEqual([]);
    expect(lines.some((l) => l.level === "debug" && l.msg === "http client went away mid-request")).toBe(true);
  });

  it("logs a failed or aborted request by its path, never its query (a client's URL or secret may ride there)", async () => {
    const { http, port, lines, rejected } = await start();
    http.route("POST", /^\/fails$/, async () => {
      throw new Error("boom");
    });
    const failed = await fetch(`http://127.0.0.1:${port}/fails?relay=https%3A%2F%2Fcrm.example.com%2Fs%3Fkey%3Dclient-secret`, { method: "POST" });
    expect(failed.status).toBe(500);
    await abortMidBody(port, "/echo?token=client-secret", 1, rejected);
    expect(lines.find((l) => l.msg === "http request refused")).toMatchObject({ reason: "handler_failed", target: "/fails?…" });
    expect(lines.find((l) => l.msg === "http client went away mid-request")).toMatchObject({ target: "/echo?…" });
    expect(JSON.stringify(lines)).not.toContain("client-secret");
  });

  it("has headers and request timeouts far below Node's 300 s", async () => {
    const { http } = await start();
    expect(http.server.headersTimeout).toBe(10_000);
    expect(http.server.requestTimeout).toBe(30_000);
  });

  it("drops a client that drips its headers or its body, but not a socket upgraded before the request timeout", async () => {
    const { port } = await start({ headersTimeoutMs: 300, requestTimeoutMs: 600 });
    const t0 = performance.now();
    const headers = connect(port);
    headers.socket.write("GET /metrics HTTP/1.1\r\nHost: x\r\n");
    const body = connect(port);
    body.socket.write("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n");
    const upgraded = connect(port);
    upgraded.socket.write("GET /raw HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n");
    const drip = setInterval(() => {
      if (!headers.socket.destroyed) headers.socket.write("X-Drip: 1\r\n");
      if (!body.socket.destroyed) body.socket.write("x");
    }, 100);
    try {
      const [headersClosed, bodyClosed] = await Promise.all([headers.closed, body.closed]);
      expect(headersClosed - t0).toBeLessThan(2_000);
      expect(bodyClosed - t0).toBeLessThan(2_000);
      expect(headers.received()).toMatch(/^HTTP\/1\.1 408 /);
      expect(body.received()).toMatch(/^HTTP\/1\.1 408 /);
    } finally {
      clearInterval(drip);
    }
    // The upgraded socket outlived the request timeout and still carries data.
    await sleep(Math.max(0, t0 + 1_200 - performance.now()));
    upgraded.socket.write("ping");
    await sleep(100);
    expect(upgraded.socket.destroyed).toBe(false);
    expect(upgraded.received()).toMatch(/101 Switching Protocols[\s\S]*ping$/);
    upgraded.socket.destroy();
  });
});
