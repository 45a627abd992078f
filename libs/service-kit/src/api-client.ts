import { Agent } from "undici";
import { hideSecret } from "./log.js";

/**
 * How long the cloud API clients (the OpenAI SDK's fetch) keep an idle connection. fetch's own pool closes one
 * after 4 s when the server names no time, so a turn after a longer pause (the caller speaking, listening) paid a
 * new TCP and TLS handshake to the API. API front ends keep idle connections 30 s or more (Cloudflare's shortest
 * known), so 25 s is reused without racing a server that closes first; a longer time the server names is capped
 * to it for the same reason.
 */
export const API_KEEP_ALIVE_MS = 25_000;

let shared: Agent | undefined;

/** The fetch dispatcher of the cloud API clients (`new OpenAI({ fetchOptions: { dispatcher: apiDispatcher() } })`)
 *  and of the tools' webhooks. */
export function apiDispatcher(): Agent {
  shared ??= new Agent({ keepAliveTimeout: API_KEEP_ALIVE_MS, keepAliveMaxTimeout: API_KEEP_ALIVE_MS });
  return shared;
}

/** A warm connection is refreshed when the API was idle this long: below API_KEEP_ALIVE_MS, so ours never lapses. */
export const API_IDLE_PING_MS = 20_000;
/** At most one ping per this long (a server that drops connections at once is not chased). */
const MIN_PING_GAP_MS = 1_000;
/** A connection that closes this soon after a ping's answer shows a server that keeps none open: stop pinging. */
const SHORT_LIVED_MS = 500;
/** A ping without an answer in this long failed. */
const PING_TIMEOUT_MS = 10_000;

export interface ApiKeepWarmOptions {
  /** The API's base URL (`…/v1`). Pings are `GET <baseUrl>/models`: free at OpenAI, served by compatible servers. */
  baseUrl: string;
  apiKey: string;
  /** A connection is kept open this long after the last request (and after `warm()`); 0 = off. */
  forMs: number;
  /** Ping after this long without a request or ping (default API_IDLE_PING_MS; tests shorten it). */
  idleMs?: number;
  /** A ping got no HTTP answer (an error status is an answer: the connection was used). */
  onFailure?: (error: string) => void;
  /** Default: apiDispatcher(), the pool the API clients use. */
  dispatcher?: Agent;
}

/**
 * Keeps one connection to a cloud API open while the service uses it, so that a turn after a pause (the caller
 * thinking, listening to a long answer) does not wait for a TCP and TLS handshake to the API, and neither does the
 * first turn after a replica starts. A free `GET /models` goes out when the API was idle for `idleMs` (before our
 * pool's own idle timeout) and soon after the server closes a connection of that origin (API front ends close idle
 * connections after 5–60 s; uvicorn-served compatible servers after 5 s). It stops `forMs` after the last request,
 * and until the next request when a ping fails or the server keeps no connection open.
 */
export class ApiKeepWarm {
  /** Pings sent and failed (metrics, tests). */
  readonly pings = { sent: 0, failed: 0 };
  private readonly url: string;
  private readonly origin: string;
  private readonly idleMs: number;
  private readonly dispatcher: Agent;
  private warmUntil = -Infinity;
  private lastActivity = -Infinity;
  private lastPing = -Infinity;
  private lastPingEnd = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  private pinging = false;
  private inFlight = 0;
  /** Closed connections to replace since the last request: each replacement waits twice as long as the one before,
   *  so a server closing idle connections within seconds is not pinged every second. */
  private reopens = 0;
  /** A connection of the origin closed (or none is open yet): ping as soon as the rate allows. */
  private reopenDue = false;
  private closed = false;
  private readonly onDisconnect = (origin: URL | string) => {
    const closedOrigin = typeof origin === "string" ? new URL(origin).origin : origin.origin;
    if (closedOrigin !== this.origin || !this.warm_) return;
    const now = performance.now();
    if (!this.pinging && now - this.lastPingEnd < SHORT_LIVED_MS && this.lastActivity < this.lastPing) {
      this.warmUntil = -Infinity; // until the next request
      return;
    }
    if (!this.reopenDue) this.reopens++;
    this.reopenDue = true;
    this.schedule(0);
  };

  constructor(private readonly options: ApiKeepWarmOptions) {
    this.url = `${options.baseUrl.replace(/\/+$/, "")}/models`;
    this.origin = new URL(options.baseUrl).origin;
    this.idleMs = options.idleMs ?? API_IDLE_PING_MS;
    this.dispatcher = options.dispatcher ?? apiDispatcher();
    if (options.forMs > 0) this.dispatcher.on("disconnect", this.onDisconnect);
  }

  /** A request to the API starts: no ping while it runs (it has its connection), and warm for `forMs` after it. */
  started(): void {
    this.inFlight++;
    this.touch();
  }

  /** A request that `started()` ended, however it ended. */
  finished(): void {
    this.inFlight = Math.max(0, this.inFlight - 1);
    this.touch();
  }

  /** The service starts: open a connection now and keep it for `forMs`. */
  warm(): void {
    if (this.options.forMs <= 0 || this.closed) return;
    this.warmUntil = performance.now() + this.options.forMs;
    this.reopenDue = true;
    this.schedule(0);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.dispatcher.off("disconnect", this.onDisconnect);
  }

  private touch(): void {
    if (this.options.forMs <= 0 || this.closed) return;
    const now = performance.now();
    this.lastActivity = now;
    this.warmUntil = now + this.options.forMs;
    this.reopens = 0;
    if (!this.timer) this.schedule(this.idleMs);
  }

  private get warm_(): boolean {
    return !this.closed && performance.now() <= this.warmUntil;
  }

  private schedule(delayMs: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick(), delayMs);
    this.timer.unref();
  }

  private tick(): void {
    this.timer = undefined;
    if (!this.warm_) return;
    const now = performance.now();
    if (this.inFlight > 0) {
      this.reopenDue = false; // the request in flight holds a connection; it is warm when the request ends
      return this.schedule(this.idleMs);
    }
    if (this.reopenDue) {
      const gap = Math.min(this.idleMs, MIN_PING_GAP_MS * 2 ** Math.max(0, this.reopens - 1));
      const wait = this.lastPing + gap - now;
      if (wait > 0) return this.schedule(wait);
    } else {
      // Due on idleness: a request since the timer was set already kept the connection fresh.
      const idleFor = now - Math.max(this.lastActivity, this.lastPing);
      if (idleFor < this.idleMs) return this.schedule(this.idleMs - idleFor);
    }
    this.reopenDue = false;
    void this.ping().finally(() => {
      if (this.warm_ && !this.timer) this.schedule(this.idleMs);
    });
  }

  private async ping(): Promise<void> {
    if (this.pinging) return;
    this.pinging = true;
    this.lastPing = performance.now();
    this.pings.sent++;
    try {
      const res = await fetch(this.url, {
        headers: { authorization: `Bearer ${this.options.apiKey}` },
        signal: AbortSignal.timeout(PING_TIMEOUT_MS),
        dispatcher: this.dispatcher,
      } as RequestInit);
      await res.arrayBuffer();
      // A server that closes every connection after its answer cannot be kept warm: stop until the next request.
      if (res.headers.get("connection")?.toLowerCase() === "close") this.warmUntil = -Infinity;
    } catch (error) {
      this.pings.failed++;
      // The next request opens its own connection; pinging a dead API until then only adds noise.
      this.warmUntil = -Infinity;
      const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : "";
      const message = `GET ${this.origin}/…/models: ${error instanceof Error ? error.message : String(error)}${cause}`;
      try {
        // fetch quotes a header it refuses (a key with a line break): the key must not reach the log.
        this.options.onFailure?.(hideSecret(message, this.options.apiKey));
      } catch {
        // a reporting failure must not become an unhandled rejection
      }
    } finally {
      this.pinging = false;
      this.lastPingEnd = performance.now();
    }
  }
}
