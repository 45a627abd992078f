// POST /twilio/amd: Twilio's answering machine detection verdict on a call placed with `onMachine` (POST /v1/calls).
// Detection runs alongside the call (async AMD): the stream starts as soon as someone answers and the agent greets at
// once, so a human never waits for the verdict. A human (or no verdict) changes nothing but the record. A machine or
// a fax: with `onMachine: "voicemail"` and the machine's greeting over (the beep), what the agent is saying stops
// (CallControl CLEAR to whichever replica streams the call) and the dialog leaves the agent's voicemail message, then
// hangs up; otherwise the call is hung up at once.
import { errorText, isValidCallId, subjects, type Bus, type Logger } from "@voicebot/bus";
import { AnsweredBy, CallControl, CallControl_Action, DialogInput } from "@voicebot/proto";
import { sendJson, type HttpServer } from "@voicebot/service-kit";
import type { CallStore } from "@voicebot/state";
import type { IngressConfig } from "./config.js";
import type { IngressMetrics } from "./metrics.js";
import { publicHttpOrigin, readWebhookForm, signedByTwilio } from "./signature.js";

const MAX_BODY_BYTES = 64 * 1024;
const AMD_PATH = "/twilio/amd";
/** Twilio's AnsweredBy values. */
const ANSWERED_BY = new Set(["human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"]);

/** What a placed call does when a machine answers. */
export const ON_MACHINE = ["voicemail", "hangup"] as const;
export type OnMachine = (typeof ON_MACHINE)[number];

export function isOnMachine(value: unknown): value is OnMachine {
  return typeof value === "string" && (ON_MACHINE as readonly string[]).includes(value);
}

/**
 * Twilio's detection settings for a placed call: a message can only be left once the machine's greeting is over
 * (DetectMessageEnd waits for the beep); hanging up needs only the first verdict (Enable, a few seconds). The verdict
 * comes to this path on TWILIO_STREAM_URL's host, with `onMachine` in the query (Twilio's signature covers it).
 */
export function machineDetection(publicStreamUrl: string, onMachine: OnMachine): { mode: "Enable" | "DetectMessageEnd"; callbackUrl: string } {
  const url = new URL(publicHttpOrigin(publicStreamUrl) + AMD_PATH);
  url.searchParams.set("onMachine", onMachine);
  return { mode: onMachine === "voicemail" ? "DetectMessageEnd" : "Enable", callbackUrl: url.toString() };
}

export function registerAmdCallback(
  http: HttpServer,
  deps: { config: IngressConfig; store: CallStore; bus: Bus; log: Logger; metrics: IngressMetrics },
): void {
  const { config, store, bus, log, metrics } = deps;
  const authToken = config.twilioRest?.authToken;
  // Only calls this platform placed report here, and placing needs the Twilio credentials.
  if (!authToken) return;
  http.route("POST", /^\/twilio\/amd\/?$/, async (req, res) => {
    const form = await readWebhookForm(req, res, MAX_BODY_BYTES);
    if (!form) return metrics.amdVerdicts.inc({ answered_by: "none", outcome: "invalid" });
    // Always checked: a verdict can hang up a call.
    const { signed, urls } = signedByTwilio(req, form, authToken, config.publicStreamUrl);
    if (!signed) {
      metrics.amdVerdicts.inc({ answered_by: "none", outcome: "bad_signature" });
      log.warn("answering machine verdict refused: bad X-Twilio-Signature", { urls });
      sendJson(res, 403, { error: "bad X-Twilio-Signature" });
      return;
    }
    const callSid = form.get("CallSid") ?? "";
    const answeredBy = form.get("AnsweredBy") ?? "";
    const onMachine = new URL(req.url ?? "/", "http://ingress").searchParams.get("onMachine");
    if (!isValidCallId(callSid) || !ANSWERED_BY.has(answeredBy) || !isOnMachine(onMachine)) {
      metrics.amdVerdicts.inc({ answered_by: "none", outcome: "invalid" });
      sendJson(res, 400, { error: "a verdict needs a CallSid, one of Twilio's AnsweredBy values and onMachine (voicemail or hangup)" });
      return;
    }
    const detectionMs = Math.max(0, Math.min(Number(form.get("MachineDetectionDuration")) || 0, 600_000));
    const fields = { callId: callSid, answeredBy, onMachine, detectionMs };
    let state: string | undefined;
    try {
      state = await store.callState(callSid);
      if (state) await store.setAnsweredBy(callSid, answeredBy);
    } catch (error) {
      metrics.storeErrors.inc({ op: "set_answered_by" });
      log.error("could not record who answered a placed call", { ...fields, error: errorText(error) });
      sendJson(res, 503, { error: "the call record could not be read or written" });
      return;
    }
    const machine = answeredBy.startsWith("machine_") || answeredBy === "fax";
    const outcome = !machine ? "recorded" : state !== "live" ? "not_live" : leavesMessage(answeredBy, onMachine) ? "voicemail" : "hung_up";
    metrics.amdVerdicts.inc({ answered_by: answeredBy, outcome });
    if (outcome === "not_live") {
      // Too early (the stream has not started: the agent will greet the machine) or too late (the call ended).
      log.warn("answering machine verdict for a call without a live stream; nothing to act on", { ...fields, state: state ?? "none" });
    } else {
      log.info("answering machine detection", { ...fields, outcome });
    }
    if (outcome === "hung_up") {
      bus.publish(subjects.control(callSid), CallControl, CallControl.create({ callId: callSid, action: CallControl_Action.ACTION_HANGUP, reason: answeredBy }), callSid);
    } else if (outcome === "voicemail") {
      // Queued first: the agent is cut off only once the message that follows is sure to come.
      const inputId = `${callSid}:amd`;
      const input = DialogInput.create({ callId: callSid, inputId, atMs: Date.now(), input: { $case: "answeredBy", value: AnsweredBy.create({ answeredBy, onMachine, detectionMs }) } });
      try {
        await bus.publishDurable(subjects.dialogInput(callSid), DialogInput, input, inputId, callSid);
      } catch (error) {
        metrics.publishErrors.inc({ message: "dialog_answeredBy" });
        log.error("answering machine verdict could not be queued for the dialog", { ...fields, error: errorText(error) });
        sendJson(res, 503, { error: "the verdict could not be queued" });
        return;
      }
      bus.publish(subjects.control(callSid), CallControl, CallControl.create({ callId: callSid, action: CallControl_Action.ACTION_CLEAR, reason: answeredBy }), callSid);
    }
    res.writeHead(204).end();
  });
}

/** A message is left only on a machine whose greeting is over, for a call placed to leave one. */
function leavesMessage(answeredBy: string, onMachine: OnMachine): boolean {
  return onMachine === "voicemail" && answeredBy.startsWith("machine_end_");
}
