import { createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";

/**
 * Twilio signs the WebSocket upgrade like a webhook without parameters: X-Twilio-Signature is
 * base64(HMAC-SHA1(auth token, the stream URL exactly as given in <Stream url>)).
 */
export function validTwilioSignature(authToken: string, url: string, signature: string | undefined): boolean {
  if (!signature) return false;
  const expected = createHmac("sha1", authToken).update(url, "utf8").digest();
  const given = Buffer.from(signature, "base64");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** The URL Twilio signed: the configured public stream URL (exactly the <Stream url>), else one built from Host. */
export function signedUrl(req: IncomingMessage, publicStreamUrl: string | undefined): string {
  return publicStreamUrl ?? `wss://${req.headers.host ?? "localhost"}${req.url ?? "/"}`;
}
