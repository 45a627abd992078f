import http from "node:http";
import type { AddressInfo } from "node:net";
import { describe, expect, it } from "vitest";
import { apiDispatcher, API_KEEP_ALIVE_MS } from "./api-client.js";

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
