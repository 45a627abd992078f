// POST /twilio/amd: Twilio's answering machine detection verdict on a call placed with `onMachine` (POST /v1/calls).
// Detection runs alongside the call (async AMD): the stream starts as soon as someone answers and the agent greets at
// once, so a human never waits for the verdict. A human (or no verdict) changes nothing but the record. A machine or
// a fax: with `onMachine: "voicemail"` and the machine's greeting over (the beep), what the agent is saying stops
// (CallControl CLEAR to whichever replica streams the call) and the dialog leaves the agent's voicemail message, then
// hangs up; otherwise the call is hung up at once. A verdict that comes before the stream has started (its
// connection was slow) is acted on by the stream when it starts: the placed call's stream carries `onMachine`.
import { errorText, isValidCallId, subjects, type Bus, type Logger } from "@voicebot/bus";
import { AnsweredBy, CallControl, CallControl_Action, DialogInput } from "@voicebot/proto";
import { sendJson, type HttpServer } from "@voicebot/service-kit";
import type { CallStore } from "@voicebot/state";
import type { IngressConfig } from "./config.js";
import type { IngressMetrics } from "./metrics.js";
import { logBadSignature, publicHttpOrigin, readWebhookForm, signedByTwilio } from "./signature.js";

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
      logBadSignature(log, "answering machine verdict refused: bad X-Twilio-Signature", urls);
      sendJson(res, 403, { error: "bad X-Twilio-Signature" });
      return;
    }
    const callSid = form.get("CallSid") ?? "";
    const answeredBy = form.get("AnsweredBy") ?? "";
    const onMachine = new URL(req.url ?? "/", "http://ingress").searchParams.get("onMachine") ?? "";
    if (!isValidCallId(callSid) || !ANSWERED_BY.has(answeredBy) || !isOnMachine(onMachine)) {
      metrics.amdVerdicts.inc({ answered_by: "none", outcome: "invalid" });
      sendJson(res, 400, { error: "a verdict needs a CallSid, one of Twilio's AnsweredBy values and onMachine (voicemail or hangup)" });
      return;
    }
    const detectionMs = Math.max(0, Math.min(Number(form.get("MachineDetectionDuration")) || 0, 600_000));
    const verdict: MachineVerdict = { callSid, answeredBy, onMachine, detectionMs };
    let state: string | undefined;
    try {
      // The state as of the write: a stream that starts after it finds the verdict in the record and acts on it.
      state = await store.setAnsweredBy(callSid, answeredBy, detectionMs);
    } catch (error) {
      metrics.storeErrors.inc({ op: "set_answered_by" });
      log.error("could not record who answered a placed call", { ...verdict, error: errorText(error) });
      sendJson(res, 503, { error: "the call record could not be read or written" });
      return;
    }
    if (!isMachine(answeredBy) || state !== "live") {
      const outcome = !isMachine(answeredBy) ? "recorded" : state === "dialing" ? "before_stream" : "not_live";
      metrics.amdVerdicts.inc({ answered_by: answeredBy, outcome });
      if (outcome === "before_stream") log.info("answering machine verdict before the stream started; the stream acts on it", { ...verdict });
      else if (outcome === "not_live") log.warn("answering machine verdict for a call that has ended or is unknown; nothing to act on", { ...verdict, state: state ?? "none" });
      else log.info("answering machine detection", { ...verdict, outcome });
      res.writeHead(204).end();
      return;
    }
    try {
      const outcome = await actOnMachine(verdict, bus);
      metrics.amdVerdicts.inc({ answered_by: answeredBy, outcome });
      log.info("answering machine detection", { ...verdict, outcome });
    } catch (error) {
      metrics.publishErrors.inc({ message: "dialog_answeredBy" });
      log.error("answering machine verdict could not be queued for the dialog", { ...verdict, error: errorText(error) });
      sendJson(res, 503, { error: "the verdict could not be queued" });
      return;
    }
    res.writeHead(204).end();
  });
}

export interface MachineVerdict {
  callSid: string;
  answeredBy: string;
  onMachine: OnMachine;
  detectionMs: number;
}

/** A machine or a fax answered (not a person, not "unknown"). */
export function isMachine(answeredBy: string): boolean {
  return answeredBy.startsWith("machine_") || answeredBy === "fax";
}

/**
 * What a machine's verdict does to a live call: with `voicemail` and the machine's greeting over, the agent is cut
 * off and the dialog leaves its message; otherwise the call is hung up. Throws if the message cannot be queued
 * (then nothing was cut off).
 */
export async function actOnMachine(verdict: MachineVerdict, bus: Bus): Promise<"voicemail" | "hung_up"> {
  const { callSid, answeredBy, onMachine, detectionMs } = verdict;
  if (!leavesMessage(answeredBy, onMachine)) {
    bus.publish(subjects.control(callSid), CallControl, CallControl.create({ callId: callSid, action: CallControl_Action.ACTION_HANGUP, reason: answeredBy }), callSid);
    return "hung_up";
  }
  // Queued first: the agent is cut off only once the message that follows is sure to come. Once per call
  // (msgId), however many times the verdict is acted on.
  const inputId = `${callSid}:amd`;
  const input = DialogInput.create({ callId: callSid, inputId, atMs: Date.now(), input: { $case: "answeredBy", value: AnsweredBy.create({ answeredBy, onMachine, detectionMs }) } });
  await bus.publishDurable(subjects.dialogInput(callSid), DialogInput, input, inputId, callSid);
  bus.publish(subjects.control(callSid), CallControl, CallControl.create({ callId: callSid, action: CallControl_Action.ACTION_CLEAR, reason: answeredBy }), callSid);
  return "voicemail";
}

/** A message is left only on a machine whose greeting is over, for a call placed to leave one. */
function leavesMessage(answeredBy: string, onMachine: OnMachine): boolean {
  return onMachine === "voicemail" && answeredBy.startsWith("machine_end_");
}
