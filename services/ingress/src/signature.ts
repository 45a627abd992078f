import { createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { LogThrottle, type Logger } from "@voicebot/bus";
import { readBody, sendJson } from "@voicebot/service-kit";

/**
 * Twilio signs the WebSocket upgrade like a webhook without parameters: X-Twilio-Signature is
 * base64(HMAC-SHA1(auth token, the stream URL exactly as given in <Stream url>)).
 */
export function validTwilioSignature(authToken: string, url: string, signature: string | undefined): boolean {
  if (!signature) return false;
  const expected = Buffer.from(twilioSignature(authToken, url), "base64");
  const given = Buffer.from(signature, "base64");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** X-Twilio-Signature for `payload` (a URL, or a webhook's signedPayload), as Twilio computes it. */
export function twilioSignature(authToken: string, payload: string): string {
  return createHmac("sha1", authToken).update(payload, "utf8").digest("base64");
}

/** The HTTP origin of the public stream URL's host (wss://host/twilio → https://host): where Twilio's webhooks go. */
export function publicHttpOrigin(publicStreamUrl: string): string {
  const stream = new URL(publicStreamUrl);
  return `${stream.protocol === "ws:" ? "http:" : "https:"}//${stream.host}`;
}

/**
 * The URLs Twilio may have signed (the <Stream url> as given, which this side cannot see). With the public stream URL
 * configured: that URL exactly (our TwiML's), or the path and query requested on its host (a number's own TwiML may
 * add a query or use another path), never the client's Host (a signature made for another host with the same auth
 * token must not pass here). Without it: the requested path on the request's Host.
 */
export function signedUrls(req: IncomingMessage, publicStreamUrl: string | undefined): string[] {
  const path = req.url ?? "/";
  if (!publicStreamUrl) return withAndWithoutPort([`wss://${req.headers.host ?? "localhost"}${path}`]);
  const stream = new URL(publicStreamUrl);
  return withAndWithoutPort([publicStreamUrl, `${stream.protocol}//${stream.host}${path}`]);
}

/** Each URL, and with its default port written out or left out (Twilio's own validators try both); others kept. */
function withAndWithoutPort(urls: string[]): string[] {
  const all = new Set<string>();
  for (const text of urls) {
    all.add(text);
    const parts = /^(wss?|https?):\/\/([^/?#:]+|\[[^\]]*\])(?::(\d+))?(.*)$/i.exec(text);
    if (!parts) continue;
    const [, scheme, host, port, rest] = parts;
    const defaultPort = /^(wss|https)$/i.test(scheme) ? "443" : "80";
    if (port === undefined) all.add(`${scheme}://${host}:${defaultPort}${rest}`);
    else if (port === defaultPort) all.add(`${scheme}://${host}${rest}`);
  }
  return [...all];
}

/**
 * What Twilio signs for a webhook POST: the full URL it requested, then every form field sorted by name, each
 * name followed by its value (https://www.twilio.com/docs/usage/security#validating-requests).
 */
export function signedPayload(url: string, form: URLSearchParams): string {
  const fields = [...form.entries()].sort(([a, va], [b, vb]) => (a < b ? -1 : a > b ? 1 : va < vb ? -1 : va > vb ? 1 : 0));
  return url + fields.map(([name, value]) => name + value).join("");
}

/**
 * The URLs Twilio may have signed (the webhook URL as set on the number, which this side cannot see): this path on
 * the request's Host and on TWILIO_STREAM_URL's host (the media and the webhook may have different public names),
 * each with and without the default port, as Twilio's own validators try.
 */
export function webhookUrls(req: IncomingMessage, publicStreamUrl: string | undefined): string[] {
  const path = req.url ?? "/";
  const origins: string[] = [];
  if (req.headers.host) origins.push(`https://${req.headers.host}`);
  if (publicStreamUrl) origins.push(publicHttpOrigin(publicStreamUrl));
  const urls = new Set<string>();
  for (const origin of origins) {
    let url: URL;
    try {
      url = new URL(origin);
    } catch {
      continue; // a Host header that is no host name
    }
    urls.add(`${url.protocol}//${url.host}${path}`);
    const defaultPort = url.protocol === "https:" ? "443" : "80";
    urls.add(url.port ? `${url.protocol}//${url.hostname}${path}` : `${url.protocol}//${url.hostname}:${defaultPort}${path}`);
  }
  return [...urls];
}

/** A Twilio webhook's form; answers 413 and returns undefined when the body is over `maxBytes`. */
export async function readWebhookForm(req: IncomingMessage, res: ServerResponse, maxBytes: number): Promise<URLSearchParams | undefined> {
  const body = await readBody(req, maxBytes);
  if (body) return new URLSearchParams(body.toString("utf8"));
  res.setHeader("connection", "close");
  sendJson(res, 413, { error: `the body is over ${maxBytes} bytes` });
  return undefined;
}

/** Whether the webhook's X-Twilio-Signature is Twilio's for any URL it may have requested (see webhookUrls). */
export function signedByTwilio(
  req: IncomingMessage,
  form: URLSearchParams,
  authToken: string,
  publicStreamUrl: string | undefined,
): { signed: boolean; urls: string[] } {
  const urls = webhookUrls(req, publicStreamUrl);
  const header = req.headers["x-twilio-signature"];
  const signature = typeof header === "string" ? header : undefined;
  return { signed: urls.some((url) => validTwilioSignature(authToken, signedPayload(url, form), signature)), urls };
}

/** Refused webhooks are anyone's to send: one line a second per kind, each URL cut short (the metric counts them all). */
const refusals = new LogThrottle(1_000);
const MAX_LOGGED_URL_CHARS = 200;

/** Logs a webhook refused for its signature, with the URLs it was checked against (see signedByTwilio). */
export function logBadSignature(log: Logger, message: string, urls: readonly string[]): void {
  const admitted = refusals.admit(message);
  if (admitted) log.warn(message, { urls: loggedUrls(urls), ...admitted });
}

/** URLs as they go into a log line: anyone's to send, so each cut short. */
export function loggedUrls(urls: readonly string[]): string[] {
  return urls.map((url) => url.slice(0, MAX_LOGGED_URL_CHARS));
}
