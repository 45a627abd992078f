// POST /twilio/voice: the voice webhook of a Twilio number pointed straight at the ingress (instead of a TwiML Bin).
// It answers TwiML that connects the call's media stream here, with the caller's From and To and the agent of the
// webhook URL (?agent=...) as the stream's custom parameters, so the call record has them.
import type { Logger } from "@voicebot/bus";
import { sendJson, type HttpServer } from "@voicebot/service-kit";
import { isValidAgent, type IngressConfig } from "./config.js";
import type { IngressMetrics } from "./metrics.js";
import { readWebhookForm, signedByTwilio } from "./signature.js";
import { streamTwiml } from "./twilio-rest.js";

const MAX_BODY_BYTES = 64 * 1024;
/** Twilio's form fields copied into the stream's parameters (From/To as the record's from/to). */
const FORWARDED = { From: "from", To: "to" } as const;

export function registerVoiceWebhook(http: HttpServer, deps: { config: IngressConfig; log: Logger; metrics: IngressMetrics }): void {
  const { config, log, metrics } = deps;
  http.route("POST", /^\/twilio\/voice\/?$/, async (req, res) => {
    const form = await readWebhookForm(req, res, MAX_BODY_BYTES);
    if (!form) return metrics.voiceWebhooks.inc({ outcome: "invalid" });
    if (config.validateSignature) {
      const { signed, urls } = signedByTwilio(req, form, config.authToken!, config.publicStreamUrl);
      if (!signed) {
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
