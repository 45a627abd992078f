// The two Twilio REST calls the ingress makes: redirect a live call to new TwiML (transfer, keypad tones).
import type { TwilioRestConfig } from "./config.js";

export class TwilioApiError extends Error {}

export class TwilioRestClient {
  private readonly authorization: string;

  constructor(private readonly config: TwilioRestConfig) {
    this.authorization = "Basic " + Buffer.from(`${config.accountSid}:${config.authToken}`).toString("base64");
  }

  /** Replaces the call's TwiML; Twilio then leaves the <Connect><Stream> (our stream gets `stop`). */
  async updateCallTwiml(callSid: string, twiml: string): Promise<void> {
    const { baseUrl, accountSid, timeoutMs } = this.config;
    const url = `${baseUrl}/2010-04-01/Accounts/${encodeURIComponent(accountSid)}/Calls/${encodeURIComponent(callSid)}.json`;
    let res: Response;
    try {
      res = await fetch(url, {
        method: "POST",
        headers: { authorization: this.authorization, "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
        body: new URLSearchParams({ Twiml: twiml }).toString(),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (error) {
      throw new TwilioApiError(`Twilio API unreachable: ${error instanceof Error ? error.message : String(error)}`);
    }
    if (!res.ok) {
      const body = (await res.text().catch(() => "")).slice(0, 300);
      throw new TwilioApiError(`Twilio API answered ${res.status}: ${body}`);
    }
    await res.body?.cancel().catch(() => undefined);
  }
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

/** `<Play digits>` TwiML (w = half-second pause); undefined for anything but keypad digits. */
export function playDigitsTwiml(digits: string): string | undefined {
  const d = digits.trim();
  return DIGITS.test(d) ? `<Response><Play digits="${xmlEscape(d)}"/></Response>` : undefined;
}

function xmlEscape(text: string): string {
  return text.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!);
}
