// A POST whose answer streams back, over node:http keep-alive connections: the transport of the cloud engines
// that do not come with an SDK of their own (ElevenLabs). Node's fetch runs the same exchange through web streams
// and a WebAssembly HTTP parser: measured against a local streaming server (20 ms apart, one at a time), its first
// chunk came ~1 ms later at p50 and ~5 ms later at p99, for twice the CPU (docs/benchmarks.md, Load, session 6).
// On a synthesized sentence that first chunk is the caller's wait.

import http from "node:http";
import https from "node:https";
import type net from "node:net";
import { performance } from "node:perf_hooks";

/** Idle keep-alive connections are closed after this; most API front ends keep theirs longer. */
const IDLE_SOCKET_MS = 15_000;
/**
 * A kept connection the server had closed fails within a round trip of the write; a failure later than this may
 * come after the server began the (billed) work, so the request is not sent again.
 */
const STALE_FAILURE_MS = 500;

export interface StreamingAnswer {
  status: number;
  /** The content-type header ("" when there is none). */
  contentType: string;
  /** The body's chunks as they arrive. Leaving the loop early closes the connection. */
  chunks(): AsyncIterable<Buffer>;
  /** The whole body as text (error bodies), at most `maxBytes` of it; the rest is dropped with the connection. */
  text(maxBytes?: number): Promise<string>;
  /** Drops the body and the connection (an answer that will not be read). */
  discard(): void;
}

export interface StreamingPost {
  headers: Record<string, string>;
  body: string;
  /** Aborting destroys the request (or the body being read); the promise rejects with the signal's reason. */
  signal: AbortSignal;
}

/**
 * Keeps the engine's connections open while it is in use. API front ends close idle connections (Node's own server
 * after 5 s, load balancers after a minute or more); a sentence that finds none idle pays a TCP and TLS handshake
 * (several round trips to a cloud API) before its request goes out. So when a connection closes within the window
 * after a request, free GETs on the same origin bring the pool back to the most connections the engine had open at
 * once in that window (up to MAX_KEPT_CONNECTIONS); they go out together, so each one that finds no idle
 * connection opens a new one, which then waits in the pool.
 */
export interface KeepWarm {
  /** A GET that costs nothing (ElevenLabs: /v1/models); its answer, whatever its status, is read and dropped. */
  url: URL;
  headers: Record<string, string>;
  /** Connections are kept open for this long after the last request (or after warm()), in ms. */
  forMs: number;
  /** A warm-up GET got no answer (the next request simply opens its own connection). */
  onFailure?: (error: Error) => void;
}

/** Most connections kept open by warm-up GETs (more concurrent sentences open their own). */
const MAX_KEPT_CONNECTIONS = 4;
/** At most this many warm-up GETs per second (a server that drops connections at once is not chased). */
const MAX_WARM_UPS_PER_SECOND = MAX_KEPT_CONNECTIONS;
const WARM_TIMEOUT_MS = 10_000;

/** One keep-alive connection pool per engine; `post` resolves once the answer's headers are in. */
export class StreamingHttpClient {
  private readonly agents = {
    "http:": new http.Agent({ keepAlive: true, timeout: IDLE_SOCKET_MS, scheduling: "lifo" }),
    "https:": new https.Agent({ keepAlive: true, timeout: IDLE_SOCKET_MS, scheduling: "lifo" }),
  };
  /** Until when connections are kept open (performance.now()). */
  private warmUntil = -Infinity;
  /** The most connections open at once in the current window: the pool size to keep. */
  private peakOpen = 0;
  /** Start of the current one-second rate window, and the warm-up GETs sent in it. */
  private rateWindowAt = -Infinity;
  private sentInWindow = 0;
  private topUpTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly watched = new WeakSet<net.Socket>();
  /** Warm-up GETs sent, and how many got no answer (for tests and the benchmark). */
  readonly warmUps = { sent: 0, failed: 0 };

  constructor(private readonly keepWarm?: KeepWarm) {}

  private get keepsWarm(): boolean {
    return this.keepWarm !== undefined && this.keepWarm.forMs > 0 && !this.closed;
  }

  private get inWindow(): boolean {
    return this.keepsWarm && performance.now() <= this.warmUntil;
  }

  /** Opens a connection now unless one is open, and keeps connections open for `forMs` (a replica starting up). */
  warm(): void {
    if (!this.keepsWarm) return;
    this.extendWindow();
    this.peakOpen = Math.max(this.peakOpen, 1);
    this.topUp();
  }

  async post(url: URL, request: StreamingPost): Promise<StreamingAnswer> {
    if (this.keepsWarm) this.extendWindow();
    try {
      return await this.send(url, request);
    } catch (error) {
      // A kept-alive connection the server closed while it was idle fails as soon as it is written to; the
      // request never reached the server, so it goes once more on a new connection (as the Node docs advise).
      if (!(error instanceof StaleConnectionError)) throw error;
      return await this.send(url, request);
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.topUpTimer);
    this.agents["http:"].destroy();
    this.agents["https:"].destroy();
  }

  private agentOf(url: URL): http.Agent {
    return this.agents[url.protocol === "https:" ? "https:" : "http:"];
  }

  /** A request on the pool's connection for `url`'s protocol. */
  private request(url: URL, options: http.RequestOptions): http.ClientRequest {
    return (url.protocol === "https:" ? https : http).request(url, { ...options, agent: this.agentOf(url) });
  }

  private extendWindow(): void {
    // A new window starts from what is open now, not from an old burst.
    if (performance.now() > this.warmUntil) this.peakOpen = 0;
    this.warmUntil = performance.now() + this.keepWarm!.forMs;
  }

  /** Connections of the keep-warm origin's agent: in use (warm-up GETs included) and idle. */
  private connections(): { busy: number; idle: number } {
    const agent = this.agentOf(this.keepWarm!.url);
    const count = (pool: NodeJS.ReadOnlyDict<net.Socket[]>) => {
      let n = 0;
      for (const list of Object.values(pool)) for (const socket of list ?? []) if (!socket.destroyed) n++;
      return n;
    };
    return { busy: count(agent.sockets), idle: count(agent.freeSockets) };
  }

  /** Every connection the pool makes is counted and watched for its close (once). */
  private watch(socket: net.Socket): void {
    if (!this.keepsWarm || this.watched.has(socket)) return;
    this.watched.add(socket);
    const { busy, idle } = this.connections();
    this.peakOpen = Math.max(this.peakOpen, Math.min(MAX_KEPT_CONNECTIONS, busy + idle));
    socket.once("close", () => {
      // Closes of one burst come together: top up once after them.
      if (this.inWindow && !this.topUpTimer) this.scheduleTopUp(0);
    });
  }

  private scheduleTopUp(delayMs: number): void {
    this.topUpTimer = setTimeout(() => this.topUp(), delayMs);
    this.topUpTimer.unref();
  }

  /**
   * Sends warm-up GETs, all at once, for the connections missing from the pool: each GET takes an idle connection
   * or, when none is left, opens one, so the pool ends with `peakOpen` connections.
   */
  private topUp(): void {
    this.topUpTimer = undefined;
    if (!this.inWindow) return;
    const { busy, idle } = this.connections();
    const missing = this.peakOpen - busy - idle;
    if (missing <= 0) return;
    const now = performance.now();
    if (now - this.rateWindowAt >= 1_000) {
      this.rateWindowAt = now;
      this.sentInWindow = 0;
    }
    const allowed = MAX_WARM_UPS_PER_SECOND - this.sentInWindow;
    if (allowed < idle + missing) {
      // Over the rate: the whole top-up waits for the next second (a partial one would only reuse idle connections).
      this.scheduleTopUp(this.rateWindowAt + 1_000 - now);
      return;
    }
    this.sentInWindow += idle + missing;
    for (let i = 0; i < idle + missing; i++) this.sendWarmUp();
  }

  private sendWarmUp(): void {
    const { url, headers, onFailure } = this.keepWarm!;
    this.warmUps.sent++;
    const req = this.request(url, { method: "GET", headers, timeout: WARM_TIMEOUT_MS });
    req.once("socket", (socket) => this.watch(socket));
    req.once("timeout", () => req.destroy(new Error(`no answer within ${WARM_TIMEOUT_MS} ms`)));
    req.once("error", (error) => {
      if (this.closed) return;
      // Not again until the next request: an unreachable API must not be probed (and logged) in a loop.
      this.warmUntil = -Infinity;
      this.warmUps.failed++;
      onFailure?.(error);
    });
    req.once("response", (res) => {
      // A server that closes every connection after its answer cannot be kept warm: stop until the next request.
      if (res.headers.connection?.toLowerCase() === "close") this.warmUntil = -Infinity;
      // Any answer will do, a refusal too (a key scoped to speech only may not list models): the connection is open.
      res.resume();
    });
    req.end();
  }

  private send(url: URL, { headers, body, signal }: StreamingPost): Promise<StreamingAnswer> {
    signal.throwIfAborted();
    return new Promise<StreamingAnswer>((resolve, reject) => {
      const req = this.request(url, { method: "POST", headers: { ...headers, "content-length": String(Buffer.byteLength(body)) } });
      req.once("socket", (socket) => this.watch(socket));
      let answered = false;
      const onAbort = () => {
        req.destroy();
        if (!answered) reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      req.once("error", (error) => {
        if (answered) return; // the body's reader reports it
        signal.removeEventListener("abort", onAbort);
        if (signal.aborted) return reject(signal.reason);
        const code = (error as NodeJS.ErrnoException).code;
        const stale = req.reusedSocket && (code === "ECONNRESET" || code === "EPIPE") && performance.now() - sentAt < STALE_FAILURE_MS;
        reject(stale ? new StaleConnectionError(error) : error);
      });
      req.once("response", (res) => {
        answered = true;
        // From here on the abort destroys the body; its reader rethrows the reason.
        signal.removeEventListener("abort", onAbort);
        const onBodyAbort = () => res.destroy();
        signal.addEventListener("abort", onBodyAbort, { once: true });
        res.once("close", () => signal.removeEventListener("abort", onBodyAbort));
        resolve(answerOf(res, signal));
      });
      const sentAt = performance.now();
      req.end(body);
    });
  }
}

/** An idle keep-alive connection that turned out closed: the request may go again. */
class StaleConnectionError extends Error {
  constructor(cause: Error) {
    super(cause.message, { cause });
  }
}

function answerOf(res: http.IncomingMessage, signal: AbortSignal): StreamingAnswer {
  return {
    status: res.statusCode ?? 0,
    contentType: String(res.headers["content-type"] ?? ""),
    chunks: () => chunksOf(res, signal),
    text: async (maxBytes = 64 * 1024) => {
      const parts: Buffer[] = [];
      let bytes = 0;
      for await (const chunk of chunksOf(res, signal)) {
        parts.push(chunk);
        bytes += chunk.length;
        if (bytes >= maxBytes) break;
      }
      return Buffer.concat(parts).subarray(0, maxBytes).toString("utf8");
    },
    discard: () => res.destroy(),
  };
}

async function* chunksOf(res: http.IncomingMessage, signal: AbortSignal): AsyncGenerator<Buffer, void, undefined> {
  try {
    for await (const chunk of res) yield chunk as Buffer;
    if (!res.complete) throw new Error("the connection closed before the answer ended");
  } catch (error) {
    signal.throwIfAborted();
    throw error;
  } finally {
    if (!res.complete) res.destroy();
  }
}
