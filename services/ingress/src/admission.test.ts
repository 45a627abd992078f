// Who may open streams: calls per replica (INGRESS_MAX_CALLS), calls per client (by socket address, or
// X-Forwarded-For behind a trusted proxy), and requests whose target the router cannot parse.
import net from "node:net";
import type { IncomingMessage } from "node:http";
import { describe, expect, it } from "vitest";
import { clientAddress } from "./client-address.js";
import {
  metricValue,
  newCallSid,
  startIngress,
  TwilioClient,
  useIngressWorld,
  waitFor,
  waitForLog,
} from "./test-support/harness.js";

const world = useIngressWorld({ ingress: false });

function fakeRequest(remoteAddress: string, forwardedFor?: string | string[]): IncomingMessage {
  return { socket: { remoteAddress }, headers: forwardedFor === undefined ? {} : { "x-forwarded-for": forwardedFor } } as unknown as IncomingMessage;
}

/** One raw HTTP exchange; resolves with the status line. */
function rawRequest(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => socket.write(text));
    let out = "";
    socket.on("data", (d) => (out += d.toString("latin1")));
    socket.on("close", () => resolve(out.split("\r\n")[0]));
    socket.on("error", reject);
    socket.setTimeout(3_000, () => {
      socket.destroy();
      resolve(`no answer: ${out.split("\r\n")[0]}`);
    });
  });
}

describe("clientAddress", () => {
  it("uses the socket peer unless a proxy is trusted, then the entry our proxies appended", () => {
    const direct = { trustProxy: false, proxyHops: 1 };
    const proxied = { trustProxy: true, proxyHops: 1 };
    expect(clientAddress(fakeRequest("::ffff:10.0.0.7", "203.0.113.9"), direct)).toBe("10.0.0.7");
    expect(clientAddress(fakeRequest("10.0.0.7", "203.0.113.9"), proxied)).toBe("203.0.113.9");
    // The client may send its own X-Forwarded-For; only the rightmost entry (written by our proxy) counts.
    expect(clientAddress(fakeRequest("10.0.0.7", "1.1.1.1, 203.0.113.9"), proxied)).toBe("203.0.113.9");
    expect(clientAddress(fakeRequest("10.0.0.7", "198.51.100.4, 203.0.113.9"), { trustProxy: true, proxyHops: 2 })).toBe("198.51.100.4");
    expect(clientAddress(fakeRequest("10.0.0.7", ["1.1.1.1", "[2001:db8::1]:443"]), proxied)).toBe("2001:db8::1");
    expect(clientAddress(fakeRequest("10.0.0.7", "203.0.113.9:5060"), proxied)).toBe("203.0.113.9");
    // Junk in the header: the peer.
    expect(clientAddress(fakeRequest("10.0.0.7", "not-an-ip"), proxied)).toBe("10.0.0.7");
    expect(clientAddress(fakeRequest("10.0.0.7", ""), proxied)).toBe("10.0.0.7");
  });
});

describe("calls per replica", () => {
  it("at INGRESS_MAX_CALLS the replica reports not ready and refuses new streams with 503; a call ending frees it", async () => {
    const ingress = await startIngress({ ...world.env(), INGRESS_MAX_CALLS: "2" });
    const readiness = async () => {
      const res = await fetch(`${ingress.baseUrl}/readyz`);
      return { status: res.status, body: (await res.json()) as { reason?: string } };
    };
    try {
      await waitFor(async () => (await readiness()).status === 200, { what: "ingress ready" });
      const a = await TwilioClient.connect(ingress.wsUrl, newCallSid());
      const b = await TwilioClient.connect(ingress.wsUrl, newCallSid());
      // Kubernetes takes the full replica out of the Service; a stream that still arrives is refused.
      await waitFor(async () => (await readiness()).status === 503, { what: "the full replica to report not ready" });
      expect((await readiness()).body.reason).toBe("at capacity");
      await expect(TwilioClient.connect(ingress.wsUrl, newCallSid())).rejects.toThrow(/503/);
      expect(await metricValue(ingress.baseUrl, "voicebot_ingress_rejected_streams_total", { reason: "at_capacity" })).toBe(1);
      a.sendStart();
      a.close();
      await waitFor(async () => (await readiness()).status === 200, { what: "ready again once a call ended" });
      const c = await TwilioClient.connect(ingress.wsUrl, newCallSid());
      c.close();
      b.close();
    } finally {
      await ingress.handle.stop();
    }
  });
});

describe("calls per client", () => {
  it("refuses the upgrade with 429 above INGRESS_MAX_CALLS_PER_CLIENT, and admits again once a call ends", async () => {
    const ingress = await startIngress({ ...world.env(), INGRESS_MAX_CALLS_PER_CLIENT: "2" });
    try {
      const a = await TwilioClient.connect(ingress.wsUrl, newCallSid());
      const b = await TwilioClient.connect(ingress.wsUrl, newCallSid());
      // Without a trusted proxy, a forged X-Forwarded-For changes nothing.
      await expect(TwilioClient.connect(ingress.wsUrl, newCallSid(), { "x-forwarded-for": "198.51.100.77" })).rejects.toThrow(/429/);
      expect(await metricValue(ingress.baseUrl, "voicebot_ingress_rejected_streams_total", { reason: "client_limit" })).toBe(1);
      await waitForLog((l) => l.msg === "stream refused" && l.reason === "client_limit" && l.client === "127.0.0.1", "the refusal logged");
      a.close();
      await waitFor(async () => {
        try {
          const c = await TwilioClient.connect(ingress.wsUrl, newCallSid());
          c.close();
          return true;
        } catch {
          return false;
        }
      }, { what: "a slot freed" });
      b.close();
    } finally {
      await ingress.handle.stop();
    }
  });

  it("counts by X-Forwarded-For when INGRESS_TRUST_PROXY=true", async () => {
    const ingress = await startIngress({ ...world.env(), INGRESS_MAX_CALLS_PER_CLIENT: "1", INGRESS_TRUST_PROXY: "true" });
    try {
      const one = await TwilioClient.connect(ingress.wsUrl, newCallSid(), { "x-forwarded-for": "203.0.113.5" });
      await expect(TwilioClient.connect(ingress.wsUrl, newCallSid(), { "x-forwarded-for": "9.9.9.9, 203.0.113.5" })).rejects.toThrow(/429/);
      const other = await TwilioClient.connect(ingress.wsUrl, newCallSid(), { "x-forwarded-for": "203.0.113.6" });
      other.sendStart();
      await waitFor(() => world.dialog.items.some((i) => i.callId === other.callSid), { what: "the other client's call started" });
      one.close();
      other.close();
    } finally {
      await ingress.handle.stop();
    }
  });
});

describe("unparsable request targets", () => {
  it("are answered 400 (requests and upgrades), counted, and the process keeps serving", async () => {
    const ingress = await startIngress(world.env());
    try {
      expect(await rawRequest(ingress.port, "GET // HTTP/1.1\r\nHost: x\r\n\r\n")).toBe("HTTP/1.1 400 Bad Request");
      expect(await rawRequest(ingress.port, "GET //[ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).toBe("HTTP/1.1 400 Bad Request");
      const upgrade = "GET // HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
      expect(await rawRequest(ingress.port, upgrade)).toBe("HTTP/1.1 400 Bad Request");
      expect(await metricValue(ingress.baseUrl, "voicebot_http_rejected_total", { reason: "bad_url" })).toBe(3);
      expect((await fetch(`${ingress.baseUrl}/healthz`)).status).toBe(200);
      const client = await TwilioClient.connect(ingress.wsUrl, newCallSid());
      client.close();
    } finally {
      await ingress.handle.stop();
    }
  });
});
