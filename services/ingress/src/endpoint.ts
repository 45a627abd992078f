// The /twilio WebSocket endpoint: admission (drain, capacity, signature), one CallSession per stream.
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer } from "ws";
import { CallSession, type SessionDeps } from "./session.js";
import { signedUrl, validTwilioSignature } from "./signature.js";

export class TwilioEndpoint {
  private readonly wss: WebSocketServer;
  private readonly sessions = new Set<CallSession>();
  private readonly idleWaiters: Array<() => void> = [];
  private draining = false;

  constructor(private readonly deps: SessionDeps) {
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: deps.config.maxMessageBytes,
      perMessageDeflate: false,
      clientTracking: false,
    });
  }

  /** Live streams (calls in progress, plus sockets waiting for their `start`). */
  get activeCalls(): number {
    return this.sessions.size;
  }

  readonly handleUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    socket.on("error", () => undefined); // a peer resetting mid-handshake is not our error
    const { config, log } = this.deps;
    if (this.draining) return this.reject(socket, 503, "Service Unavailable", "draining");
    if (config.maxCalls > 0 && this.sessions.size >= config.maxCalls) return this.reject(socket, 503, "Service Unavailable", "at_capacity");
    if (config.validateSignature) {
      const url = signedUrl(req, config.publicStreamUrl);
      const signature = req.headers["x-twilio-signature"];
      if (!validTwilioSignature(config.authToken!, url, typeof signature === "string" ? signature : undefined)) {
        log.warn("stream refused: bad X-Twilio-Signature", { url, remote: req.socket.remoteAddress });
        return this.reject(socket, 403, "Forbidden", "bad_signature");
      }
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const session = new CallSession(ws, this.deps, req.socket.remoteAddress ?? "");
      this.sessions.add(session);
      void session.finished.then(() => {
        this.sessions.delete(session);
        if (this.sessions.size === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
      });
    });
  };

  /** Refuses new streams and resolves once every live call has ended. */
  async drain(): Promise<void> {
    this.draining = true;
    if (this.sessions.size === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  /** Ends whatever is still live (after a drain timeout) and closes the endpoint. */
  async close(): Promise<void> {
    this.draining = true;
    await Promise.all([...this.sessions].map((session) => session.shutdown("ingress_shutdown")));
    this.wss.close();
  }

  private reject(socket: Duplex, status: number, text: string, reason: string): void {
    this.deps.metrics.rejectedStreams.inc({ reason });
    this.deps.log[reason === "draining" ? "info" : "warn"]("stream refused", { reason, status });
    const body = JSON.stringify({ error: reason });
    socket.end(
      `HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  }
}
