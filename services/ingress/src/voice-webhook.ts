// POST /twilio/voice: the voice webhook of a Twilio number pointed straight at the ingress (instead of a TwiML Bin).
// It answers TwiML that connects the call's media stream here, with the caller's From and To and the agent of the
// webhook URL (?agent=...) as the stream's custom parameters, so the call record has them. A `<Redirect>` back here
// follows the stream: a stream that closes without `stop` (its ingress died or handed the call over) comes back as
// ?vbResume=n, and a live call is connected to a new stream that resumes it (resume.ts); an ended one is hung up,
// or, when the bot transferred it without Twilio REST credentials, dialed through to the transfer's target.
import type { Logger } from "@voicebot/bus";
import { errorText, isValidCallId, LogThrottle } from "@voicebot/bus";
import { sendJson, type HttpServer } from "@voicebot/service-kit";
import type { CallStore } from "@voicebot/state";
import { isValidAgent, type IngressConfig } from "./config.js";
import type { IngressMetrics } from "./metrics.js";
import { MAX_RESUMES, RESUME_PARAM, RESUME_QUERY, resumeUrl, STARTED_AT_PARAM } from "./resume.js";
import { logBadSignature, publicHttpOrigin, readWebhookForm, signedByTwilio } from "./signature.js";
import { dialTwiml, HANGUP_TWIML, streamTwiml } from "./twilio-rest.js";

const MAX_BODY_BYTES = 64 * 1024;
/** Twilio's form fields copied into the stream's parameters (From/To as the record's from/to). */
const FORWARDED = { From: "from", To: "to" } as const;
/** A host name or IP literal (IPv6 in brackets), with an optional port: nothing a URL would read another way. */
const HOST = /^(?:[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$/;

/**
 * The request's Host as it goes into our TwiML URLs, or undefined when it is not a plain host[:port]. Checked once
 * and normalised once (by URL), so the stream URL and the redirect name the same host.
 */
export function publicHost(header: string | undefined): string | undefined {
  if (!header || header.length > 260 || !HOST.test(header)) return undefined;
  try {
    const url = new URL(`https://${header}`);
    return url.hostname && url.pathname === "/" ? url.host : undefined;
  } catch {
    return undefined; // a port over 65535, a bad IPv6 literal...
  }
}

/**
 * The voice webhook's origin as Twilio sees it (https://host[:port]): TWILIO_STREAM_URL's host when set, else the
 * Host Twilio called (`host`, checked by publicHost); undefined when neither is known.
 */
export function webhookOrigin(config: Pick<IngressConfig, "publicStreamUrl">, host: string | undefined): string | undefined {
  if (config.publicStreamUrl) return publicHttpOrigin(config.publicStreamUrl);
  return host ? `https://${host}` : undefined;
}

export function registerVoiceWebhook(http: HttpServer, deps: { config: IngressConfig; store: CallStore; log: Logger; metrics: IngressMetrics }): void {
  const { config, store, log, metrics } = deps;
  // Webhooks that come back about calls we know nothing of are worth a sample in the log, not a line each.
  const throttle = new LogThrottle(10_000);
  http.route("POST", /^\/twilio\/voice\/?$/, async (req, res) => {
    const form = await readWebhookForm(req, res, MAX_BODY_BYTES);
    if (!form) return metrics.voiceWebhooks.inc({ outcome: "invalid" });
    if (config.validateSignature) {
      const { signed, urls } = signedByTwilio(req, form, config.authToken!, config.publicStreamUrl);
      if (!signed) {
        metrics.voiceWebhooks.inc({ outcome: "bad_signature" });
        logBadSignature(log, "voice webhook refused: bad X-Twilio-Signature", urls);
        sendJson(res, 403, { error: "bad X-Twilio-Signature" });
        return;
      }
    }
    const query = new URL(req.url ?? "/", "http://ingress").searchParams;
    const agent = query.get("agent") ?? undefined;
    const resume = query.has(RESUME_QUERY) ? Number(query.get(RESUME_QUERY)) : 0;
    if ((agent !== undefined && !isValidAgent(agent)) || !Number.isInteger(resume) || resume < 0) {
      metrics.voiceWebhooks.inc({ outcome: "invalid" });
      sendJson(res, 400, { error: "agent must be 1-64 letters, digits, '_', '.' or '-'; vbResume a count" });
      return;
    }
    const parameters: Record<string, string> = {};
    for (const [field, name] of Object.entries(FORWARDED)) {
      const value = form.get(field);
      if (value) parameters[name] = value.slice(0, 500);
    }
    if (agent) parameters.agent = agent;
    // Without TWILIO_STREAM_URL the URLs Twilio gets back are on the Host it called.
    const host = config.publicStreamUrl ? undefined : publicHost(req.headers.host);
    if (!config.publicStreamUrl && !host) {
      metrics.voiceWebhooks.inc({ outcome: "invalid" });
      sendJson(res, 400, { error: "the Host header must be a host name or IP address with an optional port (or set TWILIO_STREAM_URL)" });
      return;
    }
    const streamUrl = config.publicStreamUrl ?? `wss://${host}/twilio`;
    const origin = webhookOrigin(config, host)!;
    const answer = (outcome: string, twiml: string) => {
      metrics.voiceWebhooks.inc({ outcome });
      res.writeHead(200, { "content-type": "text/xml; charset=utf-8" });
      res.end(`<?xml version="1.0" encoding="UTF-8"?>${twiml}`);
    };
    if (resume === 0) return answer("answered", streamTwiml(streamUrl, parameters, resumeUrl(origin, 1, agent)));

    // A stream of this call closed without `stop`: resume the call if it is still live.
    const callSid = form.get("CallSid") ?? "";
    if (!isValidCallId(callSid)) {
      // The same rule as the stream's callSid: a junk one could name no call, and must not reach Redis or the log.
      metrics.voiceWebhooks.inc({ outcome: "invalid" });
      sendJson(res, 400, { error: "CallSid must be 1-128 letters, digits, '_' or '-'" });
      return;
    }
    let call: Awaited<ReturnType<CallStore["callParties"]>>;
    try {
      call = await store.callParties(callSid);
    } catch (error) {
      // Redis away: keep the caller; the new stream finds out what is left of the call.
      const admitted = throttle.admit("unreadable");
      if (admitted) log.warn("resume: the call record is unreadable; resuming the call anyway", { callId: callSid, error: errorText(error), ...admitted });
      call = { state: "live", agent: agent ?? "", from: parameters.from ?? "", to: parameters.to ?? "", endReason: "", transferTo: "", startedAt: "", streamParams: {} };
    }
    if (call?.state === "ended") {
      // A transfer without Twilio REST credentials: the bot closed the stream so that this redirect dials the target.
      const dial = call.endReason === "transfer" && call.transferTo ? dialTwiml(call.transferTo) : undefined;
      if (dial) {
        log.info("transfer: dialing the target the call record names", { callId: callSid });
        return answer("transfer", dial);
      }
      log.info("resume: the call has ended; hanging up", { callId: callSid });
      return answer("resume_ended", HANGUP_TWIML);
    }
    if (resume > MAX_RESUMES) {
      log.warn("resume: the call was resumed too many times; hanging up", { callId: callSid, resume });
      return answer("resume_limit", HANGUP_TWIML);
    }
    if (!call) {
      // Redis lost the record, or no stream of this call ever started (each one refused: at capacity, draining, a
      // bad signature, no start): start it over, still counting, so a stream that can never start ends in a
      // hang-up rather than an endless loop of silence.
      const admitted = throttle.admit("no_record");
      if (admitted) log.warn("resume: no record of the call; starting it over", { callId: callSid, resume, ...admitted });
      return answer("answered", streamTwiml(streamUrl, parameters, resumeUrl(origin, resume + 1, agent)));
    }
    const callAgent = call.agent || agent;
    // A placed call whose first stream never connected starts now: with the parameters its own TwiML gave it (the
    // client's, and onMachine for a machine verdict that came before any stream).
    const placedWith = call.state === "dialing" ? call.streamParams : {};
    const startedAtMs = call.state === "live" ? Date.parse(call.startedAt) : Number.NaN;
    const resumed = {
      ...placedWith,
      ...(call.from ? { from: call.from } : {}),
      ...(call.to ? { to: call.to } : {}),
      ...(callAgent ? { agent: callAgent } : {}),
      [RESUME_PARAM]: String(resume),
      ...(Number.isFinite(startedAtMs) ? { [STARTED_AT_PARAM]: String(startedAtMs) } : {}),
    };
    log.info("resume: connecting the call to a new stream", { callId: callSid, resume });
    return answer("resumed", streamTwiml(streamUrl, resumed, resumeUrl(origin, resume + 1, callAgent)));
  });
}
