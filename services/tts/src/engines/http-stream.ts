// A POST whose answer streams back, over node:http keep-alive connections: the transport of the cloud engines
// that do not come with an SDK of their own (ElevenLabs). Node's fetch runs the same exchange through web streams
// and a WebAssembly HTTP parser: measured against a local streaming server (20 ms apart, one at a time), its first
// chunk came ~1 ms later at p50 and ~5 ms later at p99, for twice the CPU (docs/benchmarks.md, Load, session 6).
// On a synthesized sentence that first chunk is the caller's wait.

import http from "node:http";
import https from "node:https";
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

/** One keep-alive connection pool per engine; `post` resolves once the answer's headers are in. */
export class StreamingHttpClient {
  private readonly agents = {
    "http:": new http.Agent({ keepAlive: true, timeout: IDLE_SOCKET_MS, scheduling: "lifo" }),
    "https:": new https.Agent({ keepAlive: true, timeout: IDLE_SOCKET_MS, scheduling: "lifo" }),
  };

  async post(url: URL, request: StreamingPost): Promise<StreamingAnswer> {
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
    this.agents["http:"].destroy();
    this.agents["https:"].destroy();
  }

  private send(url: URL, { headers, body, signal }: StreamingPost): Promise<StreamingAnswer> {
    signal.throwIfAborted();
    const protocol = url.protocol === "https:" ? "https:" : "http:";
    const transport = protocol === "https:" ? https : http;
    return new Promise<StreamingAnswer>((resolve, reject) => {
      const req = transport.request(url, {
        method: "POST",
        agent: this.agents[protocol],
        headers: { ...headers, "content-length": String(Buffer.byteLength(body)) },
      });
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
