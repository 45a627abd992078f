// POST /v1/calls: places a call through the Twilio API. Once the callee answers, Twilio runs TwiML that connects the
// call's media stream to this platform (TWILIO_STREAM_URL), and from the stream's `start` on, the call is like any
// answered one: the agent named here greets the callee.
import { randomUUID } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { errorText, type Logger } from "@voicebot/bus";
import { readBody, sendJson, type HttpServer } from "@voicebot/service-kit";
import type { CallStore, RequestClaim } from "@voicebot/state";
import { isOnMachine, machineDetection, ON_MACHINE, type OnMachine } from "./amd-callback.js";
import { refuseWithoutToken } from "./api-auth.js";
import { isValidAgent, type IngressConfig } from "./config.js";
import type { IngressMetrics } from "./metrics.js";
import { RESUMABLE_PARAM, RESUME_PARAM, resumeUrl, STARTED_AT_PARAM } from "./resume.js";
import { privateHostReason } from "./public-address.js";
import { publicHttpOrigin } from "./signature.js";
import { statusCallbackUrl } from "./status-callback.js";
import { streamTwiml, TwilioApiError, type TwilioRestClient } from "./twilio-rest.js";

const MAX_BODY_BYTES = 16 * 1024;
const E164 = /^\+[1-9][0-9]{6,14}$/;
const SIP_URI = /^sips?:[^\s<>"'&]{3,250}$/i;
const PARAMETER_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const MAX_PARAMETERS = 16;
/** Twilio's limit on the Twiml parameter of a call. */
const MAX_TWIML_CHARS = 4_000;
/** Names with fields of their own, or that the stream's own parameters use (resume bookkeeping, the machine verdict). */
const RESERVED_PARAMETERS = new Set(["agent", "from", "to", "onMachine", RESUME_PARAM, RESUMABLE_PARAM, STARTED_AT_PARAM]);
const MAX_PARAMETER_CHARS = 500;
/** Twilio's ring timeout range (seconds); its default is 60. */
const RING_TIMEOUT_S = { min: 5, max: 600, default: 60 };
/** A placed call's "dialing" record outlives its ring time by this much if no status report ever ends it. */
const DIALING_RECORD_GRACE_MS = 3_600_000;
/** Idempotency-Key: what a client may send (RFC 9110 token-ish, as Stripe and Twilio take them). */
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;
const IDEMPOTENCY_SCOPE = "place-call";
/** A request with a key is answered within this (Twilio's request timeout is well under it); then the key is free. */
const IDEMPOTENCY_CLAIM_MS = 120_000;
/** How long a placed call's answer is given again for its key. */
const IDEMPOTENCY_KEEP_MS = 24 * 3_600_000;

export interface OutboundCall {
  to: string;
  from: string;
  agent: string | undefined;
  parameters: Record<string, string>;
  ringTimeoutS: number;
  /**
   * The client's URL for the call's progress (initiated, ringing, answered, completed with busy, no-answer, failed):
   * Twilio reports to this platform (/twilio/status), which passes each report on.
   */
  statusCallback: string | undefined;
  /** Run answering machine detection, and leave the agent's voicemail message or hang up when a machine answers. */
  onMachine: OnMachine | undefined;
}

export function registerOutboundRoute(
  http: HttpServer,
  deps: { config: IngressConfig; twilioApi: TwilioRestClient | undefined; store: CallStore; log: Logger; metrics: IngressMetrics },
): void {
  const { config, twilioApi, store, log, metrics } = deps;
  http.route("POST", /^\/v1\/calls\/?$/, async (req, res) => {
    // With a token, nothing (not even which settings are missing) is told to a request without it.
    if (refuseWithoutToken(req, res, config.apiToken)) return metrics.apiRefused.inc({ route: "place_call" });
    // Placing calls costs money: never without a token, whatever else is set.
    if (!config.apiToken || !twilioApi || !config.publicStreamUrl) {
      metrics.outboundCalls.inc({ outcome: "not_configured" });
      sendJson(res, 503, { error: "placing calls needs INGRESS_API_TOKEN, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_STREAM_URL" });
      return;
    }
    const idempotencyKey = req.headers["idempotency-key"];
    if (idempotencyKey !== undefined && (typeof idempotencyKey !== "string" || !IDEMPOTENCY_KEY.test(idempotencyKey))) {
      metrics.outboundCalls.inc({ outcome: "invalid" });
      sendJson(res, 400, { error: "Idempotency-Key must be 1-255 printable ASCII characters" });
      return;
    }
    const body = await readJson(req);
    const call = "error" in body ? body : parseOutboundCall(body.value, { statusCallbackPrivate: config.statusCallbackPrivate });
    if ("error" in call) {
      metrics.outboundCalls.inc({ outcome: "invalid" });
      if (call.status === 413) res.setHeader("connection", "close");
      sendJson(res, call.status ?? 400, { error: call.error });
      return;
    }
    // With an Idempotency-Key, a retried request (the client timed out, or lost the answer) gets the first one's
    // answer instead of ringing the callee again.
    // Settled before the client hears it: a retry sent after this answer finds it.
    const answer = async (status: number, json: Record<string, unknown>) => {
      if (idempotencyKey !== undefined) {
        // A definite "not placed" frees the key for another try; a placed call or an unknown outcome is kept.
        const keep = status === 201 || status === 504;
        await store
          .settleRequest(IDEMPOTENCY_SCOPE, idempotencyKey, keep ? JSON.stringify({ status, json }) : undefined, IDEMPOTENCY_KEEP_MS)
          .catch((error: unknown) => {
            metrics.storeErrors.inc({ op: "settle_request" });
            log.warn("could not keep the answer of a request with an Idempotency-Key", { error: errorText(error) });
          });
      }
      sendJson(res, status, json);
    };
    if (idempotencyKey !== undefined) {
      let claim: RequestClaim;
      try {
        claim = await store.claimRequest(IDEMPOTENCY_SCOPE, idempotencyKey, JSON.stringify(call), IDEMPOTENCY_CLAIM_MS, randomUUID());
      } catch (error) {
        metrics.storeErrors.inc({ op: "claim_request" });
        metrics.outboundCalls.inc({ outcome: "unavailable" });
        log.warn("Idempotency-Key could not be checked; call not placed", { error: errorText(error) });
        sendJson(res, 503, { error: "the Idempotency-Key cannot be checked right now (call state store unreachable); nothing was placed" });
        return;
      }
      if (claim.kind !== "claimed") {
        metrics.outboundCalls.inc({ outcome: `idempotent_${claim.kind}` });
        if (claim.kind === "done") {
          const first = JSON.parse(claim.answer) as { status: number; json: Record<string, unknown> };
          res.setHeader("idempotent-replayed", "true");
          sendJson(res, first.status, first.json);
        } else if (claim.kind === "pending") {
          sendJson(res, 409, { error: "a request with this Idempotency-Key is still being answered" });
        } else {
          sendJson(res, 422, { error: "this Idempotency-Key was used with a different request" });
        }
        return;
      }
    }
    // from and to reach the call record as on an answered call (customParameters); the agent picks who speaks;
    // onMachine tells the stream to look for a machine verdict that came before it.
    const parameters = {
      ...call.parameters,
      from: call.from,
      to: call.to,
      ...(call.agent ? { agent: call.agent } : {}),
      ...(call.onMachine ? { onMachine: call.onMachine } : {}),
    };
    const twiml = streamTwiml(config.publicStreamUrl, parameters, resumeUrl(publicHttpOrigin(config.publicStreamUrl), 1, call.agent));
    if (twiml.length > MAX_TWIML_CHARS) {
      metrics.outboundCalls.inc({ outcome: "invalid" });
      await answer(400, { error: `the parameters make TwiML of ${twiml.length} characters; Twilio takes at most ${MAX_TWIML_CHARS}` });
      return;
    }
    try {
      const placed = await twilioApi.createCall({
        to: call.to,
        from: call.from,
        twiml,
        ringTimeoutS: call.ringTimeoutS,
        statusCallback: statusCallbackUrl(config.publicStreamUrl, call.statusCallback),
        ...(call.onMachine ? { machineDetection: machineDetection(config.publicStreamUrl, call.onMachine) } : {}),
      });
      metrics.outboundCalls.inc({ outcome: "placed" });
      log.info("outbound call placed", { callId: placed.sid, agent: call.agent ?? config.defaultAgent, status: placed.status });
      // GET /v1/calls/:sid says "dialing" until the stream starts or a status report ends the call. The call is
      // placed whatever happens here: a failed write costs only that state.
      const dialing = { callSid: placed.sid, agent: call.agent ?? config.defaultAgent, from: call.from, to: call.to, streamParams: parameters };
      await store.createDialingCall(dialing, call.ringTimeoutS * 1000 + DIALING_RECORD_GRACE_MS).catch((error: unknown) => {
        metrics.storeErrors.inc({ op: "create_dialing_call" });
        log.warn("could not record a placed call as dialing", { callId: placed.sid, error: errorText(error) });
      });
      await answer(201, { callSid: placed.sid, status: placed.status, agent: call.agent ?? config.defaultAgent });
    } catch (error) {
      const { outcome, status } = failureOf(error);
      metrics.outboundCalls.inc({ outcome });
      const fields = { agent: call.agent ?? config.defaultAgent, outcome, error: errorText(error) };
      if (outcome === "unknown") log.error("outbound call outcome unknown: Twilio may have placed it", fields);
      else if (outcome === "twilio_error") log.error("outbound call not placed: Twilio refused this platform's request (credentials, account)", fields);
      else log.warn("outbound call not placed", fields);
      const hint = outcome === "unknown" ? "; check Twilio's call log before placing it again" : "";
      await answer(status, { error: errorText(error) + hint });
    }
  });
}

/**
 * What a failed Twilio request means for the client:
 * - 400 is about this call (a number Twilio will not dial, an unverified caller id): 422, the client's to fix;
 * - 429 (Twilio's rate limit): 503, to try again later;
 * - any other 4xx is about this platform (credentials, account): 502;
 * - a 5xx, no answer, or an unreadable one, after the request went out: 504, the call may exist (a blind retry could
 *   ring the callee twice);
 * - not reachable at all: 502, nothing happened.
 */
function failureOf(error: unknown): { outcome: string; status: number } {
  if (!(error instanceof TwilioApiError)) return { outcome: "unknown", status: 504 };
  if (error.outcomeUnknown) return { outcome: "unknown", status: 504 };
  // A server error may come after the call was created.
  if (error.status !== undefined && error.status >= 500) return { outcome: "unknown", status: 504 };
  if (error.status === 400) return { outcome: "refused", status: 422 };
  if (error.status === 429) return { outcome: "rate_limited", status: 503 };
  if (error.status !== undefined) return { outcome: "twilio_error", status: 502 };
  return { outcome: "unreachable", status: 502 };
}

/** The request body's fields, checked; `error` says what is wrong in terms the caller of the API can act on. */
export function parseOutboundCall(value: unknown, { statusCallbackPrivate = false } = {}): OutboundCall | { error: string; status?: number } {
  if (!value || typeof value !== "object" || Array.isArray(value)) return { error: "the body must be a JSON object" };
  const { to, from, agent, parameters, ringTimeoutS, statusCallback, onMachine } = value as Record<string, unknown>;
  if (typeof to !== "string" || !(E164.test(to) || SIP_URI.test(to))) return { error: "to must be a phone number in E.164 form (+15551234567) or a sip: URI" };
  if (typeof from !== "string" || !E164.test(from)) return { error: "from must be your Twilio number in E.164 form (+15551234567)" };
  if (agent !== undefined && (typeof agent !== "string" || !isValidAgent(agent))) return { error: "agent must be 1-64 letters, digits, '_', '.' or '-'" };
  const params: Record<string, string> = {};
  if (parameters !== undefined) {
    if (!parameters || typeof parameters !== "object" || Array.isArray(parameters)) return { error: "parameters must be an object of strings" };
    const entries = Object.entries(parameters as Record<string, unknown>);
    if (entries.length > MAX_PARAMETERS) return { error: `at most ${MAX_PARAMETERS} parameters` };
    for (const [name, text] of entries) {
      if (!PARAMETER_NAME.test(name) || RESERVED_PARAMETERS.has(name)) {
        return { error: `parameter name ${JSON.stringify(name.slice(0, 80))} is not allowed (1-64 letters, digits, '_', '.', '-'; not ${[...RESERVED_PARAMETERS].join(", ")})` };
      }
      if (typeof text !== "string" || text.length > MAX_PARAMETER_CHARS) return { error: `parameter ${name} must be a string of at most ${MAX_PARAMETER_CHARS} characters` };
      params[name] = text;
    }
  }
  let ring = RING_TIMEOUT_S.default;
  if (ringTimeoutS !== undefined) {
    if (typeof ringTimeoutS !== "number" || !Number.isInteger(ringTimeoutS) || ringTimeoutS < RING_TIMEOUT_S.min || ringTimeoutS > RING_TIMEOUT_S.max) {
      return { error: `ringTimeoutS must be a whole number of seconds from ${RING_TIMEOUT_S.min} to ${RING_TIMEOUT_S.max}` };
    }
    ring = ringTimeoutS;
  }
  const relay = typeof statusCallback === "string" ? httpsUrl(statusCallback) : undefined;
  if (statusCallback !== undefined && relay === undefined) {
    return { error: "statusCallback must be an https:// URL without user or password (authenticate it with a secret in its query)" };
  }
  const privateHost = relay && !statusCallbackPrivate ? privateHostReason(new URL(relay).hostname) : undefined;
  if (privateHost) {
    return { error: `statusCallback must be on a public address (${privateHost}); STATUS_CALLBACK_ALLOW_PRIVATE=true allows private ones` };
  }
  if (onMachine !== undefined && !isOnMachine(onMachine)) return { error: `onMachine must be one of ${ON_MACHINE.join(", ")}` };
  return {
    to,
    from,
    agent: agent as string | undefined,
    parameters: params,
    ringTimeoutS: ring,
    statusCallback: relay,
    onMachine,
  };
}

/**
 * The URL as fetch will send it (normalised: the report is signed over exactly what is requested), if it is https
 * and carries no credentials (fetch refuses those, and would put the URL in its error); else undefined.
 */
function httpsUrl(text: string): string | undefined {
  if (text.length > 2_000) return undefined;
  try {
    const url = new URL(text);
    return url.protocol === "https:" && !url.username && !url.password ? url.href : undefined;
  } catch {
    return undefined;
  }
}

async function readJson(req: IncomingMessage): Promise<{ value: unknown } | { error: string; status: number }> {
  const body = await readBody(req, MAX_BODY_BYTES);
  if (!body) return { error: `the body is over ${MAX_BODY_BYTES} bytes`, status: 413 };
  try {
    return { value: JSON.parse(body.toString("utf8")) };
  } catch {
    return { error: "the body is not valid JSON", status: 400 };
  }
}
