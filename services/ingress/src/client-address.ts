// Who is connecting, for per-client limits. Behind a reverse proxy the socket's peer is the proxy, so the client
// comes from X-Forwarded-For, but only when the operator says a proxy sets it (otherwise anyone could forge it).
import type { IncomingMessage } from "node:http";
import { isIP } from "node:net";

export interface ClientAddressOptions {
  trustProxy: boolean;
  /** Proxies that append to X-Forwarded-For; the client is the entry this many places from the right. */
  proxyHops: number;
}

export function clientAddress(req: IncomingMessage, options: ClientAddressOptions): string {
  const peer = normalize(req.socket.remoteAddress ?? "") ?? "unknown";
  if (!options.trustProxy) return peer;
  const header = req.headers["x-forwarded-for"];
  const text = Array.isArray(header) ? header.join(",") : header;
  if (!text) return peer;
  const entries = text.split(",").map((s) => s.trim()).filter(Boolean);
  if (entries.length === 0) return peer;
  // Entries left of what our own proxies appended were written by the client and prove nothing.
  const entry = entries[Math.max(0, entries.length - options.proxyHops)];
  return normalize(entry) ?? peer;
}

/** A bare IP ("::ffff:1.2.3.4" -> "1.2.3.4", "[::1]:80" -> "::1", "1.2.3.4:80" -> "1.2.3.4"), or undefined. */
function normalize(address: string): string | undefined {
  let a = address.trim();
  const bracketed = a.match(/^\[([^\]]+)\](?::\d+)?$/);
  if (bracketed) a = bracketed[1];
  else if (/^[\d.]+:\d+$/.test(a)) a = a.slice(0, a.lastIndexOf(":"));
  if (a.toLowerCase().startsWith("::ffff:") && isIP(a.slice(7)) === 4) a = a.slice(7);
  return isIP(a) ? a.toLowerCase() : undefined;
}
