// POST /twilio/voice: the voice webhook of a Twilio number pointed straight at the ingress (instead of a TwiML Bin).
// It answers TwiML that connects the call's media stream here, with the caller's From and To and the agent of the
// webhook URL (?agent=...) as the stream's custom parameters, so the call record has them.
import type { IncomingMessage } from "node:http";
import type { Logger } from "@voicebot/bus";
import { readBody, sendJson, type HttpServer } from "@voicebot/service-kit";
import { isValidAgent, type IngressConfig } from "./config.js";
import type { IngressMetrics } from "./metrics.js";
import { validTwilioSignature } from "./signature.js";
import { streamTwiml } from "./twilio-rest.js";

const MAX_BODY_BYTES = 64 * 1024;
/** Twilio's form fields copied into the stream's parameters (From/To as the record's from/to). */
const FORWARDED = { From: "from", To: "to" } as const;

export function registerVoiceWebhook(http: HttpServer, deps: { config: IngressConfig; log: Logger; metrics: IngressMetrics }): void {
  const { config, log, metrics } = deps;
  http.route("POST", /^\/twilio\/voice\/?$/, async (req, res) => {
    const body = await readBody(req, MAX_BODY_BYTES);
    if (!body) {
      metrics.voiceWebhooks.inc({ outcome: "invalid" });
      res.setHeader("connection", "close");
      sendJson(res, 413, { error: `the body is over ${MAX_BODY_BYTES} bytes` });
      return;
    }
    const form = new URLSearchParams(body.toString("utf8"));
    if (config.validateSignature) {
      const urls = webhookUrls(req, config.publicStreamUrl);
      const header = req.headers["x-twilio-signature"];
      const signature = typeof header === "string" ? header : undefined;
      if (!urls.some((url) => validTwilioSignature(config.authToken!, signedPayload(url, form), signature))) {
        metrics.voiceWebhooks.inc({ outcome: "bad_signature" });
        log.warn("voice webhook refused: bad X-Twilio-Signature", { urls });
        sendJson(res, 403, { error: "bad X-Twilio-Signature" });
        return;
      }
    }
    const agent = new URL(req.url ?? "/", "http://ingress").searchParams.get("agent") ?? undefined;
    if (agent !== undefined && !isValidAgent(agent)) {
      metrics.voiceWebhooks.inc({ outcome: "invalid" });
      sendJson(res, 400, { error: "agent must be 1-64 letters, digits, '_', '.' or '-'" });
      return;
    }
    const parameters: Record<string, string> = {};
    for (const [field, name] of Object.entries(FORWARDED)) {
      const value = form.get(field);
      if (value) parameters[name] = value.slice(0, 500);
    }
    if (agent) parameters.agent = agent;
    const streamUrl = config.publicStreamUrl ?? `wss://${req.headers.host ?? "localhost"}/twilio`;
    metrics.voiceWebhooks.inc({ outcome: "answered" });
    res.writeHead(200, { "content-type": "text/xml; charset=utf-8" });
    res.end(`<?xml version="1.0" encoding="UTF-8"?>${streamTwiml(streamUrl, parameters)}`);
  });
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
function webhookUrls(req: IncomingMessage, publicStreamUrl: string | undefined): string[] {
  const path = req.url ?? "/";
  const origins: string[] = [];
  if (req.headers.host) origins.push(`https://${req.headers.host}`);
  if (publicStreamUrl) {
    const stream = new URL(publicStreamUrl);
    origins.push(`${stream.protocol === "ws:" ? "http:" : "https:"}//${stream.host}`);
  }
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
