import http from "node:http";
import type { Duplex } from "node:stream";

export type RouteHandler = (req: http.IncomingMessage, res: http.ServerResponse, match: RegExpMatchArray) => void | Promise<void>;
export type UpgradeHandler = (req: http.IncomingMessage, socket: Duplex, head: Buffer) => void;

interface Route {
  method: string;
  pattern: RegExp;
  handler: RouteHandler;
}

/** The one HTTP server of a process: ops endpoints plus whatever routes and WebSocket paths the service adds. */
export class HttpServer {
  readonly server: http.Server;
  private readonly routes: Route[] = [];
  private readonly upgrades = new Map<string, UpgradeHandler>();

  constructor() {
    this.server = http.createServer((req, res) => void this.handle(req, res));
    this.server.on("upgrade", (req, socket, head) => {
      const path = new URL(req.url ?? "/", "http://x").pathname;
      const handler = this.upgrades.get(path);
      if (!handler) {
        socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n");
        return;
      }
      handler(req, socket, head);
    });
    // Keep-alive sockets of scrapers must not hold a drain open.
    this.server.keepAliveTimeout = 5_000;
  }

  route(method: string, pattern: RegExp, handler: RouteHandler): void {
    this.routes.push({ method, pattern, handler });
  }

  upgrade(path: string, handler: UpgradeHandler): void {
    this.upgrades.set(path, handler);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    for (const route of this.routes) {
      const match = path.match(route.pattern);
      if (!match) continue;
      if (req.method !== route.method && !(route.method === "GET" && req.method === "HEAD")) continue;
      try {
        await route.handler(req, res, match);
      } catch (error) {
        if (!res.headersSent) sendJson(res, 500, { error: "internal error" });
        else res.destroy();
        throw error;
      }
      return;
    }
    sendJson(res, 404, { error: "not found" });
  }

  listen(port: number, host = "0.0.0.0"): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => {
        this.server.off("error", reject);
        resolve((this.server.address() as { port: number }).port);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
  }
}

export function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}
