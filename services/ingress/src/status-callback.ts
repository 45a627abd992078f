// POST /twilio/status: Twilio's progress reports (initiated, ringing, answered, completed) of the calls placed through
// POST /v1/calls. A call that ends without ever streaming here (busy, no answer, failed, cancelled, or answered while
// its stream never connected) gets a record saying so; an answered call's record is its stream's. Each report is
// passed on to the statusCallback the client gave, signed for that URL as Twilio signs its own.
import https from "node:https";
import { errorText, isValidCallId, type Logger } from "@voicebot/bus";
import { loggedTarget, sendJson, type HttpServer } from "@voicebot/service-kit";
import type { CallStore } from "@voicebot/state";
import type { IngressConfig } from "./config.js";
import type { IngressMetrics } from "./metrics.js";
import { NotPublicError, privateHostReason, publicOnlyLookup } from "./public-address.js";
import { logBadSignature, publicHttpOrigin, readWebhookForm, signedByTwilio, signedPayload, twilioSignature } from "./signature.js";

const MAX_BODY_BYTES = 64 * 1024;
const STATUS_PATH = "/twilio/status";
/** Twilio's CallStatus values; those of a call that ended are the record's end reason. */
const PROGRESS = new Set(["queued", "initiated", "ringing", "in-progress"]);
const UNANSWERED = new Set(["busy", "no-answer", "failed", "canceled"]);
const RELAY_TIMEOUT_MS = 5_000;

/**
 * Where Twilio reports a placed call's progress: this path on TWILIO_STREAM_URL's host, with the client's own
 * statusCallback (if any) in the query, so every report can be passed on; Twilio's signature covers the query.
 */
export function statusCallbackUrl(publicStreamUrl: string, relay: string | undefined): string {
  const url = new URL(publicHttpOrigin(publicStreamUrl) + STATUS_PATH);
  if (relay) url.searchParams.set("relay", relay);
  return url.toString();
}

export function registerStatusCallback(
  http: HttpServer,
  deps: { config: IngressConfig; store: CallStore; log: Logger; metrics: IngressMetrics },
): void {
  const { config, store, log, metrics } = deps;
  const authToken = config.twilioRest?.authToken;
  // Only calls this platform placed report here, and placing needs the Twilio credentials.
  if (!authToken) return;
  http.route("POST", /^\/twilio\/status\/?$/, async (req, res) => {
    const form = await readWebhookForm(req, res, MAX_BODY_BYTES);
    if (!form) return metrics.statusCallbacks.inc({ outcome: "invalid" });
    // Always checked: a report can end a record and is passed on to a URL named in the request.
    const { signed, urls } = signedByTwilio(req, form, authToken, config.publicStreamUrl);
    if (!signed) {
      metrics.statusCallbacks.inc({ outcome: "bad_signature" });
      // Without their query: the relay names the client's URL, which may carry the client's own secret.
      logBadSignature(log, "status callback refused: bad X-Twilio-Signature", urls.map(loggedTarget));
      sendJson(res, 403, { error: "bad X-Twilio-Signature" });
      return;
    }
    const callSid = form.get("CallSid") ?? "";
    const status = form.get("CallStatus") ?? "";
    if (!isValidCallId(callSid) || !(PROGRESS.has(status) || UNANSWERED.has(status) || status === "completed")) {
      metrics.statusCallbacks.inc({ outcome: "invalid" });
      sendJson(res, 400, { error: "a status callback needs a CallSid and a CallStatus" });
      return;
    }
    const relay = new URL(req.url ?? "/", "http://ingress").searchParams.get("relay");
    if (relay) void passOn(relay, form, authToken, { callSid, status }, deps);

    if (!PROGRESS.has(status)) {
      // completed: answered, and then ended. If the stream never came, the record still says dialing.
      const reason = status === "completed" ? "stream_never_connected" : status;
      try {
        const ended = await store.endUnanswered({ callSid, from: form.get("From") ?? "", to: form.get("To") ?? "" }, reason);
        if (ended) {
          metrics.statusCallbacks.inc({ outcome: "ended_unanswered" });
          log.info("outbound call ended without a stream", { callId: callSid, reason, duration: form.get("CallDuration") ?? undefined });
          res.writeHead(204).end();
          return;
        }
      } catch (error) {
        metrics.statusCallbacks.inc({ outcome: "store_error" });
        metrics.storeErrors.inc({ op: "end_unanswered" });
        log.error("could not record how an outbound call ended", { callId: callSid, status, error: errorText(error) });
        sendJson(res, 503, { error: "the call record could not be written" });
        return;
      }
    }
    metrics.statusCallbacks.inc({ outcome: "reported" });
    res.writeHead(204).end();
  });
}

/** Passes a report on to the client's statusCallback, with Twilio's fields and a Twilio signature for its URL. */
async function passOn(
  relay: string,
  form: URLSearchParams,
  authToken: string,
  call: { callSid: string; status: string },
  { config, log, metrics }: { config: IngressConfig; log: Logger; metrics: IngressMetrics },
): Promise<void> {
  try {
    const status = await postForm(relay, form, twilioSignature(authToken, signedPayload(relay, form)), config.statusCallbackPrivate);
    // The report goes where the client said, not where that server sends it on (an internal address): no redirect.
    if (status < 200 || status > 299) throw new Error(`HTTP ${status}`);
    metrics.statusRelays.inc({ outcome: "ok" });
  } catch (error) {
    const refused = error instanceof NotPublicError;
    metrics.statusRelays.inc({ outcome: refused ? "refused" : "failed" });
    // The URL without its query, which may carry the client's own secret.
    const { origin, pathname } = new URL(relay);
    log.warn(refused ? "statusCallback refused: not a public address (STATUS_CALLBACK_ALLOW_PRIVATE=true allows it)" : "could not pass a call's status on to its statusCallback", {
      callId: call.callSid,
      status: call.status,
      url: origin + pathname,
      error: errorText(error),
    });
  }
}

/** POSTs the form to an https URL (connecting to public addresses only unless `anyAddress`); resolves to the status. */
function postForm(url: string, form: URLSearchParams, signature: string, anyAddress: boolean): Promise<number> {
  // A literal IP is connected to without a lookup: judged here.
  const literalRefusal = anyAddress ? undefined : privateHostReason(new URL(url).hostname);
  if (literalRefusal) return Promise.reject(new NotPublicError(literalRefusal));
  const body = form.toString();
  return new Promise((resolve, reject) => {
    const request = https.request(url, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "content-length": Buffer.byteLength(body), "x-twilio-signature": signature },
      lookup: anyAddress ? undefined : publicOnlyLookup,
    });
    const deadline = setTimeout(() => request.destroy(new Error(`no answer within ${RELAY_TIMEOUT_MS} ms`)), RELAY_TIMEOUT_MS);
    request.on("error", (error) => {
      clearTimeout(deadline);
      reject(error);
    });
    request.on("response", (response) => {
      clearTimeout(deadline);
      response.resume(); // the answer's body is not read
      resolve(response.statusCode ?? 0);
    });
    request.end(body);
  });
}

