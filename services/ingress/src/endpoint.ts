// The /twilio WebSocket endpoint: admission (drain, capacity, calls per client, signature), one CallSession per
// stream.
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer } from "ws";
import { clientAddress } from "./client-address.js";
import { CallSession, type SessionDeps } from "./session.js";
import { signedUrl, validTwilioSignature } from "./signature.js";

export class TwilioEndpoint {
  private readonly wss: WebSocketServer;
  private readonly sessions = new Set<CallSession>();
  private readonly idleWaiters: Array<() => void> = [];
  /** Live streams per client address (only kept when INGRESS_MAX_CALLS_PER_CLIENT is set). */
  private readonly perClient = new Map<string, number>();
  /** Refusals are counted each time but logged at most once a second per reason (a flood must not flood logs). */
  private readonly refusalLog = new Map<string, { at: number; suppressed: number }>();
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
    const { config } = this.deps;
    if (this.draining) return this.reject(socket, 503, "Service Unavailable", "draining");
    if (config.maxCalls > 0 && this.sessions.size >= config.maxCalls) return this.reject(socket, 503, "Service Unavailable", "at_capacity");
    const client = clientAddress(req, config);
    const limitPerClient = config.maxCallsPerClient;
    if (limitPerClient > 0 && (this.perClient.get(client) ?? 0) >= limitPerClient) {
      return this.reject(socket, 429, "Too Many Requests", "client_limit", { client, limit: limitPerClient });
    }
    if (config.validateSignature) {
      const url = signedUrl(req, config.publicStreamUrl);
      const signature = req.headers["x-twilio-signature"];
      if (!validTwilioSignature(config.authToken!, url, typeof signature === "string" ? signature : undefined)) {
        return this.reject(socket, 403, "Forbidden", "bad_signature", { url, client });
      }
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const session = new CallSession(ws, this.deps, client);
      this.sessions.add(session);
      if (limitPerClient > 0) this.perClient.set(client, (this.perClient.get(client) ?? 0) + 1);
      void session.finished.then(() => {
        this.sessions.delete(session);
        if (limitPerClient > 0) {
          const left = (this.perClient.get(client) ?? 1) - 1;
          if (left > 0) this.perClient.set(client, left);
          else this.perClient.delete(client);
        }
        if (this.sessions.size === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
      });
    });
  };

  private checkingRecords = false;

  /**
   * Looks up the record of every live call; a record that vanished (Redis restarted empty, or failed over to a
   * replica that lacked it) is written and the call announced again, so the pipeline picks it back up.
   */
  async checkRecords(): Promise<void> {
    if (this.checkingRecords) return;
    this.checkingRecords = true;
    try {
      const live = [...this.sessions].flatMap((session) => {
        const callId = session.recordExpected;
        return callId ? [{ session, callId }] : [];
      });
      const states = await Promise.all(live.map(({ callId }) => this.deps.store.callState(callId).catch(() => "unknown" as const)));
      live.forEach(({ session }, i) => {
        if (states[i] === undefined) session.reannounce();
      });
    } finally {
      this.checkingRecords = false;
    }
  }

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

  private reject(socket: Duplex, status: number, text: string, reason: string, fields: Record<string, unknown> = {}): void {
    this.deps.metrics.rejectedStreams.inc({ reason });
    const now = Date.now();
    const seen = this.refusalLog.get(reason);
    if (seen && now - seen.at < 1_000) seen.suppressed++;
    else {
      const suppressed = seen?.suppressed ?? 0;
      this.refusalLog.set(reason, { at: now, suppressed: 0 });
      this.deps.log[reason === "draining" ? "info" : "warn"]("stream refused", {
        reason,
        status,
        ...fields,
        ...(suppressed > 0 ? { suppressedSinceLast: suppressed } : {}),
      });
    }
    const body = JSON.stringify({ error: reason });
    socket.end(
      `HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  }
}
