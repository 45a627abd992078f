// The bearer token of the ingress's own API (/v1/...): the call records hold what callers said, and POST /v1/calls
// places calls that cost money. The ingress port faces Twilio, so the API must not be open to whoever finds it.
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { sendJson } from "@voicebot/service-kit";

/** True when the request carries `Authorization: Bearer <token>` (compared in constant time). */
export function hasApiToken(req: IncomingMessage, token: string): boolean {
  const header = req.headers.authorization ?? "";
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!match) return false;
  // Equal-length digests: timingSafeEqual needs equal lengths, and the length of the token must not leak either.
  const digest = (text: string) => createHash("sha256").update(text).digest();
  return timingSafeEqual(digest(match[1]), digest(token));
}

/** Answers 401 unless the request carries the token; with no token configured, everything passes. */
export function refuseWithoutToken(req: IncomingMessage, res: ServerResponse, token: string | undefined): boolean {
  if (token === undefined || hasApiToken(req, token)) return false;
  res.setHeader("www-authenticate", 'Bearer realm="voicebot"');
  sendJson(res, 401, { error: "this API needs Authorization: Bearer <INGRESS_API_TOKEN>" });
  return true;
}
