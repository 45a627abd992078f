// The Twilio REST calls the ingress makes: place a call (POST /v1/calls), redirect a live call to new TwiML
// (transfer, keypad tones).
import { errorText } from "@voicebot/bus";
import type { TwilioRestConfig } from "./config.js";
import { RESUMABLE_PARAM } from "./resume.js";

export class TwilioApiError extends Error {
  constructor(
    message: string,
    /** Twilio's HTTP status when it answered with an error. */
    readonly status?: number,
    /** The request may have reached Twilio and done its work (no answer in time, or an unreadable one). */
    readonly outcomeUnknown = false,
  ) {
    super(message);
  }
}

/** Connection failures in which the request never left: nothing can have happened at Twilio. */
const NOT_SENT = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ENETUNREACH", "EHOSTUNREACH"]);

export class TwilioRestClient {
  private readonly authorization: string;

  constructor(private readonly config: TwilioRestConfig) {
    this.authorization = "Basic " + Buffer.from(`${config.accountSid}:${config.authToken}`).toString("base64");
  }

  /** Replaces the call's TwiML; Twilio then leaves the <Connect><Stream> (our stream gets `stop`). */
  async updateCallTwiml(callSid: string, twiml: string): Promise<void> {
    await this.post(`Calls/${encodeURIComponent(callSid)}.json`, new URLSearchParams({ Twiml: twiml }));
  }

  /**
   * Places a call that runs `twiml` once answered; Twilio's call SID and status ("queued"). With `machineDetection`
   * Twilio runs answering machine detection alongside the call (async: the stream starts at once) and posts its
   * verdict to `callbackUrl`.
   */
  async createCall(call: {
    to: string;
    from: string;
    twiml: string;
    ringTimeoutS: number;
    statusCallback?: string;
    machineDetection?: { mode: "Enable" | "DetectMessageEnd"; callbackUrl: string };
  }): Promise<{ sid: string; status: string }> {
    const form = new URLSearchParams({ To: call.to, From: call.from, Twiml: call.twiml, Timeout: String(call.ringTimeoutS) });
    if (call.statusCallback) {
      form.set("StatusCallback", call.statusCallback);
      form.set("StatusCallbackMethod", "POST");
      // Twilio takes the events as a repeated field.
      for (const event of ["initiated", "ringing", "answered", "completed"]) form.append("StatusCallbackEvent", event);
    }
    if (call.machineDetection) {
      form.set("MachineDetection", call.machineDetection.mode);
      form.set("AsyncAmd", "true");
      form.set("AsyncAmdStatusCallback", call.machineDetection.callbackUrl);
      form.set("AsyncAmdStatusCallbackMethod", "POST");
    }
    const answer = await this.post("Calls.json", form);
    const { sid, status } = (answer ?? {}) as { sid?: unknown; status?: unknown };
    if (typeof sid !== "string" || !sid) throw new TwilioApiError("Twilio API accepted the call but its answer held no call sid", undefined, true);
    return { sid, status: typeof status === "string" ? status : "queued" };
  }

  /** A form POST under the account; the JSON answer. Failures throw TwilioApiError (status set when Twilio answered). */
  private async post(path: string, form: URLSearchParams): Promise<unknown> {
    const { baseUrl, accountSid, timeoutMs } = this.config;
    const url = `${baseUrl}/2010-04-01/Accounts/${encodeURIComponent(accountSid)}/${path}`;
    let res: Response;
    try {
      res = await fetch(url, {
        method: "POST",
        headers: { authorization: this.authorization, "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
        body: form.toString(),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (error) {
      const code = (error as { cause?: { code?: string } }).cause?.code;
      if (code && NOT_SENT.has(code)) throw new TwilioApiError(`Twilio API unreachable: ${code}`);
      // A timeout or a connection lost after the request went out: Twilio may have acted on it.
      const reason = error instanceof Error && error.name === "TimeoutError" ? `no answer within ${timeoutMs} ms` : errorText(error);
      throw new TwilioApiError(`Twilio API did not answer (${reason}); the request may have taken effect`, undefined, true);
    }
    let text: string;
    try {
      text = await res.text();
    } catch (error) {
      if (!res.ok) throw new TwilioApiError(`Twilio API answered ${res.status}`, res.status);
      throw new TwilioApiError(`Twilio API answered ${res.status} but its body broke off (${errorText(error)})`, undefined, true);
    }
    if (!res.ok) throw new TwilioApiError(`Twilio API answered ${res.status}: ${twilioReason(text)}`, res.status);
    try {
      return text ? JSON.parse(text) : undefined;
    } catch {
      return undefined;
    }
  }
}

/** Twilio's error body {code, message, more_info, status} as "message (code N)"; anything else, its start. */
function twilioReason(body: string): string {
  try {
    const { code, message } = JSON.parse(body) as { code?: unknown; message?: unknown };
    if (typeof message === "string") return code === undefined ? message : `${message} (code ${String(code)})`;
  } catch {
    // not JSON
  }
  return body.slice(0, 300);
}

const PHONE = /^\+?[0-9]{2,20}$/;
const SIP = /^sips?:[^\s<>"'&]{3,250}$/i;
const DIGITS = /^[0-9*#wW]{1,64}$/;

/** `<Dial>` TwiML for a phone number or SIP URI; undefined when the target is neither. */
export function dialTwiml(target: string): string | undefined {
  const t = target.trim();
  if (PHONE.test(t)) return `<Response><Dial>${xmlEscape(t)}</Dial></Response>`;
  if (SIP.test(t)) return `<Response><Dial><Sip>${xmlEscape(t)}</Sip></Dial></Response>`;
  return undefined;
}

/**
 * TwiML that connects the answered call to our media stream, passing `parameters` as its customParameters. With
 * `resumeUrl`, a `<Redirect>` there follows the stream, and the stream says so (see resume.ts).
 */
export function streamTwiml(streamUrl: string, parameters: Record<string, string>, resumeUrl?: string): string {
  const all = resumeUrl ? { ...parameters, [RESUMABLE_PARAM]: "1" } : parameters;
  const tags = Object.entries(all).map(([name, value]) => `<Parameter name="${xmlEscape(name)}" value="${xmlEscape(value)}"/>`);
  const redirect = resumeUrl ? `<Redirect method="POST">${xmlEscape(resumeUrl)}</Redirect>` : "";
  return `<Response><Connect><Stream url="${xmlEscape(streamUrl)}">${tags.join("")}</Stream></Connect>${redirect}</Response>`;
}

export const HANGUP_TWIML = "<Response><Hangup/></Response>";

/**
 * `<Play digits>` TwiML (w = half-second pause), then, with `thenRedirectTo`, a `<Redirect>` there (the voice
 * webhook, which resumes the call on a new stream); undefined for anything but keypad digits.
 */
export function playDigitsTwiml(digits: string, thenRedirectTo?: string): string | undefined {
  const d = digits.trim();
  if (!DIGITS.test(d)) return undefined;
  const redirect = thenRedirectTo ? `<Redirect method="POST">${xmlEscape(thenRedirectTo)}</Redirect>` : "";
  // Twilio documents `w` only (half a second): a one-second `W` is written as two.
  return `<Response><Play digits="${xmlEscape(d.replace(/W/g, "ww"))}"/>${redirect}</Response>`;
}

/** Characters XML 1.0 forbids even escaped (controls, U+FFFE/U+FFFF, lone surrogates): one would make the TwiML ill-formed. */
const NOT_XML = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** Text safe in XML content and attribute values; characters XML cannot carry are dropped. */
function xmlEscape(text: string): string {
  // Line breaks and tabs as references: in an attribute value XML would read them as spaces.
  return text
    .replace(NOT_XML, "")
    .replace(/[<>&"'\n\r\t]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;" })[c]!);
}

/** About how long Twilio takes to play `digits` (a tone with its gap per key, 0.5 s per `w`, 1 s per `W`), generously. */
export function digitsPlayMs(digits: string): number {
  let ms = 0;
  for (const key of digits.trim()) ms += key === "w" ? 500 : key === "W" ? 1_000 : 300;
  return ms;
}
