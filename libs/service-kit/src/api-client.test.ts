import http from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import { Agent } from "undici";
import { describe, expect, it } from "vitest";
import { apiDispatcher, API_IDLE_PING_MS, API_KEEP_ALIVE_MS, ApiKeepWarm, type ApiKeepWarmOptions } from "./api-client.js";

describe("apiDispatcher", () => {
  it("keeps an idle connection past fetch's own 4 s, for a server that names no keep-alive time", async () => {
    let connections = 0;
    const server = http.createServer((req, res) => {
      req.resume();
      req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end("{}"));
    });
    server.keepAliveTimeout = 0; // no Keep-Alive header, and the server never closes an idle connection itself
    server.on("connection", () => connections++);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`;
    const post = async (init: RequestInit) => {
      const res = await fetch(url, { method: "POST", body: "{}", ...init });
      expect(res.headers.get("keep-alive")).toBeNull();
      await res.arrayBuffer();
    };
    try {
      const dispatcher = { dispatcher: apiDispatcher() } as RequestInit;
      await post(dispatcher);
      await post({});
      expect(connections).toBe(2);
      await new Promise((resolve) => setTimeout(resolve, 5_000));
      // fetch's own pool dropped its connection after 4 s; the API dispatcher's is still there.
      await post(dispatcher);
      await post({});
      expect(connections).toBe(3);
      expect(API_KEEP_ALIVE_MS).toBeGreaterThan(5_000);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForPings(server: { pings(): number }, count: number): Promise<void> {
  for (let waited = 0; server.pings() < count; waited += 20) {
    if (waited > 3_000) throw new Error(`${server.pings()} pings after 3 s, not ${count}`);
    await sleep(20);
  }
}

interface Served {
  path: string;
  authorization: string | undefined;
  /** How long the connection the request came on had been open. */
  connectionAgeMs: number;
}

/**
 * An API server that records each request and the age of its connection. It names no keep-alive time (as many API
 * front ends) and closes a connection idle for `closeIdleAfterMs` (0 = never).
 */
async function apiServer(options: { closeIdleAfterMs: number; closeAfterEachAnswer?: boolean; keepAliveHintMs?: number }) {
  const served: Served[] = [];
  let connections = 0;
  const opened = new WeakMap<object, number>();
  const idleTimers = new WeakMap<object, NodeJS.Timeout>();
  const server = http.createServer((req, res) => {
    clearTimeout(idleTimers.get(req.socket));
    if (options.closeIdleAfterMs > 0) {
      res.on("finish", () => idleTimers.set(req.socket, setTimeout(() => req.socket.destroy(), options.closeIdleAfterMs)));
    }
    served.push({ path: req.url ?? "", authorization: req.headers.authorization, connectionAgeMs: performance.now() - (opened.get(req.socket) ?? 0) });
    req.resume();
    req.on("end", () => {
      const headers: http.OutgoingHttpHeaders = { "content-type": "application/json" };
      if (options.closeAfterEachAnswer) headers.connection = "close";
      res.writeHead(req.url === "/v1/models" ? 200 : 404, headers).end('{"data":[]}');
    });
  });
  server.keepAliveTimeout = options.keepAliveHintMs ?? 0;
  server.on("connection", (socket) => {
    connections++;
    opened.set(socket, performance.now());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`,
    served,
    get connections() {
      return connections;
    },
    pings: () => served.filter((s) => s.path === "/v1/models").length,
    close() {
      server.closeAllConnections();
      server.close();
    },
  };
}

type ApiServer = Awaited<ReturnType<typeof apiServer>>;

/** A keep-warm of `server`'s API on a pool of its own (25 s idle, as apiDispatcher()); all closed after `test`. */
async function withKeepWarm(
  serverOptions: Parameters<typeof apiServer>[0],
  keepWarmOptions: Partial<ApiKeepWarmOptions>,
  test: (keepWarm: ApiKeepWarm, server: ApiServer) => Promise<void>,
): Promise<void> {
  const server = await apiServer(serverOptions);
  const agent = new Agent({ keepAliveTimeout: 25_000, keepAliveMaxTimeout: 25_000 });
  const keepWarm = new ApiKeepWarm({ baseUrl: server.baseUrl, apiKey: "k", forMs: 60_000, dispatcher: agent, ...keepWarmOptions });
  try {
    await test(keepWarm, server);
  } finally {
    keepWarm.close();
    server.close();
    await agent.close();
  }
}

describe("ApiKeepWarm", () => {
  it("a request after the server closed the idle connection finds one a ping opened; without it, a new one", async () => {
    const server = await apiServer({ closeIdleAfterMs: 3_000 });
    const post = async (dispatcher: Agent) => {
      const res = await fetch(`${server.baseUrl}/chat/completions`, { method: "POST", body: "{}", dispatcher } as RequestInit);
      await res.arrayBuffer();
      return server.served[server.served.length - 1];
    };
    const warmAgent = new Agent({ keepAliveTimeout: 25_000, keepAliveMaxTimeout: 25_000 });
    const coldAgent = new Agent({ keepAliveTimeout: 25_000, keepAliveMaxTimeout: 25_000 });
    const keepWarm = new ApiKeepWarm({ baseUrl: server.baseUrl, apiKey: "sk-test-key", forMs: 60_000, dispatcher: warmAgent });
    try {
      keepWarm.warm();
      await post(coldAgent);
      await sleep(4_500);
      // The server closed both idle connections at ~3 s; the keep-warm one was reopened by a ping at once.
      const warm = await post(warmAgent);
      const cold = await post(coldAgent);
      expect(warm.connectionAgeMs).toBeGreaterThan(1_000);
      expect(cold.connectionAgeMs).toBeLessThan(400);
      expect(server.pings()).toBe(2);
      expect(server.served.find((s) => s.path === "/v1/models")?.authorization).toBe("Bearer sk-test-key");
      expect(keepWarm.pings).toEqual({ sent: 2, failed: 0 });
    } finally {
      keepWarm.close();
      server.close();
      await Promise.all([warmAgent.close(), coldAgent.close()]);
    }
  });

  it("pings when the API was idle, on one connection, and stops forMs after the last request", async () => {
    await withKeepWarm({ closeIdleAfterMs: 0 }, { forMs: 1_000, idleMs: 200 }, async (keepWarm, server) => {
      keepWarm.started();
      keepWarm.finished();
      await sleep(1_500);
      const pings = server.pings();
      expect(pings).toBeGreaterThanOrEqual(3);
      expect(pings).toBeLessThanOrEqual(5);
      expect(server.connections).toBe(1);
      await sleep(600);
      expect(server.pings()).toBe(pings);
      expect(API_IDLE_PING_MS).toBeLessThan(API_KEEP_ALIVE_MS);
    });
  });

  it.each([
    ["closes the connection after every answer", { closeIdleAfterMs: 0, closeAfterEachAnswer: true }],
    // `Keep-Alive: timeout=1`: undici keeps a connection for the hint less its 2 s margin, i.e. not at all.
    ["names a keep-alive time that leaves the client none", { closeIdleAfterMs: 0, keepAliveHintMs: 1_000 }],
  ])("a server that %s gets one ping, not a ping per second", async (_what, serverOptions) => {
    await withKeepWarm(serverOptions, {}, async (keepWarm, server) => {
      keepWarm.warm();
      await sleep(2_200);
      expect(server.pings()).toBe(1);
    });
  });

  it("a server that closes idle connections within a second: the pings that reopen one back off", async () => {
    // Lives 700 ms: pings at 0, 1 and 3 s, the next at 7 s (every second without the backoff: 5 by 4.5 s).
    await withKeepWarm({ closeIdleAfterMs: 700 }, {}, async (keepWarm, server) => {
      keepWarm.warm();
      await sleep(4_500);
      expect(server.pings()).toBe(3);
    });
  });

  it("no ping while a request is in flight (it holds its own connection)", async () => {
    await withKeepWarm({ closeIdleAfterMs: 0 }, { idleMs: 100 }, async (keepWarm, server) => {
      keepWarm.started();
      await sleep(600);
      expect(server.pings()).toBe(0);
      keepWarm.finished();
      await waitForPings(server, 1);
    });
  });

  it("an API that cannot be reached: one failure reported, without the key, and no retry loop", async () => {
    const server = await apiServer({ closeIdleAfterMs: 0 });
    const baseUrl = server.baseUrl;
    server.close();
    const failures: string[] = [];
    const agent = new Agent({ keepAliveTimeout: 25_000, keepAliveMaxTimeout: 25_000 });
    const keepWarm = new ApiKeepWarm({ baseUrl, apiKey: "sk-secret-123", forMs: 60_000, dispatcher: agent, onFailure: (error) => failures.push(error) });
    try {
      keepWarm.warm();
      await sleep(1_500);
      expect(keepWarm.pings).toEqual({ sent: 1, failed: 1 });
      expect(failures).toHaveLength(1);
      expect(failures[0]).toMatch(/models/);
      expect(failures[0]).not.toContain("sk-secret-123");
    } finally {
      keepWarm.close();
      await agent.close();
    }
  });

  it("forMs 0 is off: no ping, ever", async () => {
    const server = await apiServer({ closeIdleAfterMs: 0 });
    const keepWarm = new ApiKeepWarm({ baseUrl: server.baseUrl, apiKey: "k", forMs: 0, idleMs: 50 });
    try {
      keepWarm.warm();
      keepWarm.started();
      keepWarm.finished();
      await sleep(300);
      expect(server.pings()).toBe(0);
    } finally {
      keepWarm.close();
      server.close();
    }
  });
});
