import http from "node:http";
import type { Duplex } from "node:stream";
import { errorText, silentLogger, type Logger } from "@voicebot/bus";
import { Counter, type Registry } from "prom-client";

export type RouteHandler = (req: http.IncomingMessage, res: http.ServerResponse, match: RegExpMatchArray) => void | Promise<void>;
export type UpgradeHandler = (req: http.IncomingMessage, socket: Duplex, head: Buffer) => void;

interface Route {
  method: string;
  pattern: RegExp;
  handler: RouteHandler;
}

/** The path of a request target, or undefined for targets URL cannot parse (`//[`, `//`...). */
function pathOf(target: string | undefined): string | undefined {
  try {
    return new URL(target ?? "/", "http://x").pathname;
  } catch {
    return undefined;
  }
}

/** Node's defaults let a client drip a request for 300 s; a real client sends its headers and body well within these. */
export interface HttpTimeouts {
  /** Time to receive the request headers. */
  headersTimeoutMs: number;
  /** Time to receive the whole request, body included (not the answer; not a WebSocket once upgraded). */
  requestTimeoutMs: number;
}
export const DEFAULT_HTTP_TIMEOUTS: HttpTimeouts = { headersTimeoutMs: 10_000, requestTimeoutMs: 30_000 };

/** The client went away mid-request (its body aborted): not a fault of the handler that was reading it. */
function clientAborted(req: http.IncomingMessage, error: unknown): boolean {
  if (req.complete) return false;
  return error === req.errored || (error as { code?: unknown } | undefined)?.code === "ECONNRESET";
}

/**
 * The one HTTP server of a process: ops endpoints plus whatever routes and WebSocket paths the service adds.
 * A bad request target or a throwing handler costs only that request or socket, never the process.
 */
export class HttpServer {
  readonly server: http.Server;
  private readonly routes: Route[] = [];
  private readonly upgrades = new Map<string, UpgradeHandler>();
  private readonly rejected: Counter<"reason">;
  private lastRejectLog = 0;

  constructor(
    private readonly log: Logger = silentLogger,
    registry?: Registry,
    timeouts: HttpTimeouts = DEFAULT_HTTP_TIMEOUTS,
  ) {
    this.rejected = new Counter({
      name: "voicebot_http_rejected_total",
      help: "HTTP requests and upgrades refused before reaching a handler",
      labelNames: ["reason"],
      registers: registry ? [registry] : [],
    });
    const { headersTimeoutMs, requestTimeoutMs } = timeouts;
    // Node checks these timeouts every connectionsCheckingInterval (default 30 s): check often enough to keep them.
    const checkEveryMs = Math.max(100, Math.min(5_000, Math.floor(headersTimeoutMs / 2)));
    const options = { headersTimeout: headersTimeoutMs, requestTimeout: requestTimeoutMs, connectionsCheckingInterval: checkEveryMs };
    this.server = http.createServer(options, (req, res) => {
      this.handle(req, res).catch((error) => this.refuse("handler_failed", req, error));
    });
    this.server.on("upgrade", (req, socket, head) => {
      socket.on("error", () => undefined); // a peer resetting mid-handshake is not our error
      const path = pathOf(req.url);
      if (path === undefined) {
        this.refuse("bad_url", req);
        socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        return;
      }
      const handler = this.upgrades.get(path);
      if (!handler) {
        socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        return;
      }
      try {
        handler(req, socket, head);
      } catch (error) {
        this.refuse("upgrade_failed", req, error);
        socket.destroy();
      }
    });
    // Keep-alive sockets of scrapers must not hold a drain open.
    this.server.keepAliveTimeout = 5_000;
  }

  /** Counts every refusal; logs at most one line a second so junk traffic cannot flood the logs. */
  private refuse(reason: string, req: http.IncomingMessage, error?: unknown): void {
    this.rejected.inc({ reason });
    const now = Date.now();
    if (now - this.lastRejectLog < 1_000) return;
    this.lastRejectLog = now;
    this.log.warn("http request refused", {
      reason,
      method: req.method,
      target: loggedTarget(req.url),
      ...(error === undefined ? {} : { error: errorText(error) }),
    });
  }

  route(method: string, pattern: RegExp, handler: RouteHandler): void {
    this.routes.push({ method, pattern, handler });
  }

  upgrade(path: string, handler: UpgradeHandler): void {
    this.upgrades.set(path, handler);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = pathOf(req.url);
    if (path === undefined) {
      this.refuse("bad_url", req);
      res.setHeader("connection", "close");
      sendJson(res, 400, { error: "bad request target" });
      return;
    }
    for (const route of this.routes) {
      const match = path.match(route.pattern);
      if (!match) continue;
      if (req.method !== route.method && !(route.method === "GET" && req.method === "HEAD")) continue;
      try {
        await route.handler(req, res, match);
      } catch (error) {
        if (clientAborted(req, error)) {
          // Counted apart so that alerts on handler_failed fire on our faults only; nobody is left to answer.
          res.destroy();
          this.rejected.inc({ reason: "client_aborted" });
          this.log.debug("http client went away mid-request", { method: req.method, target: loggedTarget(req.url), error: errorText(error) });
          return;
        }
        if (!res.headersSent) sendJson(res, 500, { error: "internal error" });
        else res.destroy();
        this.refuse("handler_failed", req, error);
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

/**
 * A request's body, or undefined when it is over `maxBytes`. Then the rest is left unread (the socket stays open
 * so the answer gets through): answer 413 with `connection: close`, or Node would go on reading and dropping
 * whatever the client sends to keep the connection.
 */
export function readBody(req: http.IncomingMessage, maxBytes: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let bytes = 0;
    const stop = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
    };
    const onData = (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes <= maxBytes) return void parts.push(chunk);
      stop();
      req.pause();
      resolve(undefined);
    };
    const onEnd = () => {
      stop();
      resolve(Buffer.concat(parts));
    };
    const onError = (error: Error) => {
      stop();
      reject(error);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
  });
}

/** A request target as logs show it: the query (a client's URL or secret may ride in it) left out, the path cut. */
export function loggedTarget(url: string | undefined): string {
  const text = url ?? "";
  const at = text.indexOf("?");
  return at < 0 ? text.slice(0, 120) : `${text.slice(0, Math.min(at, 120))}?…`;
}
