// What Twilio does with a number's voice webhook: POST the call's form, run the TwiML it answers. Enough of it to
// place a call through the ingress's /twilio/voice and to follow the `<Redirect>` after `<Connect><Stream>` when
// the server closes a stream (a call resumed on a new stream).
import { randomBytes } from "node:crypto";
import http from "node:http";
import https from "node:https";
import { TwilioCallSimulator, type ResumeTarget, type SimulatorOptions } from "./simulator.js";

/** A `<Connect><Stream>` and what follows it, or `<Hangup/>` (also: TwiML without a stream). */
export type StreamTwiml = { url: string; parameters: Record<string, string>; redirect?: string } | "hangup";

const ENTITIES: Record<string, string> = { "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&amp;": "&" };
const unescape = (text: string) => text.replace(/&(lt|gt|quot|apos|amp);/g, (entity) => ENTITIES[entity]!);

export function parseStreamTwiml(twiml: string): StreamTwiml {
  const stream = /<Connect>\s*<Stream\s+url="([^"]*)"\s*>([\s\S]*?)<\/Stream>\s*<\/Connect>/.exec(twiml);
  if (!stream) return "hangup";
  const parameters: Record<string, string> = {};
  for (const match of stream[2].matchAll(/<Parameter\s+name="([^"]*)"\s+value="([^"]*)"\s*\/>/g)) parameters[unescape(match[1])] = unescape(match[2]);
  const after = twiml.slice(stream.index + stream[0].length);
  const redirect = /^\s*<Redirect(?:\s+method="POST")?\s*>([^<]*)<\/Redirect>/.exec(after)?.[1];
  return { url: unescape(stream[1]), parameters, ...(redirect ? { redirect: unescape(redirect) } : {}) };
}

/** POSTs a webhook form on a connection of its own, as each of Twilio's webhook requests is (no pooled socket). */
function postForm(url: string, form: Record<string, string>): Promise<string> {
  const body = new URLSearchParams(form).toString();
  const request = url.startsWith("https:") ? https.request : http.request;
  return new Promise((resolve, reject) => {
    const req = request(url, { method: "POST", agent: false, headers: { "content-type": "application/x-www-form-urlencoded", "content-length": Buffer.byteLength(body) } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("end", () => (res.statusCode === 200 ? resolve(text) : reject(new Error(`${url}: HTTP ${res.statusCode}`))));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

/**
 * Places a call as Twilio would on a number whose voice webhook is `voiceUrl`: POSTs the call's form, connects the
 * stream the TwiML names with its parameters, and when the server closes that stream (the caller did not hang up)
 * follows the TwiML's `<Redirect>` to the next stream, until a `<Hangup/>` or TwiML without a stream.
 */
export async function dialThroughWebhook(
  voiceUrl: string,
  options: Omit<SimulatorOptions, "url" | "customParameters" | "resume"> & { from?: string; to?: string } = {},
): Promise<TwilioCallSimulator> {
  const callSid = options.callSid ?? `CA${randomBytes(16).toString("hex")}`;
  const form = {
    CallSid: callSid,
    AccountSid: options.accountSid ?? `AC${randomBytes(16).toString("hex")}`,
    From: options.from ?? "+15550100001",
    To: options.to ?? "+15550100002",
    CallStatus: "in-progress",
    Direction: "inbound",
  };
  const first = parseStreamTwiml(await postForm(voiceUrl, form));
  if (first === "hangup") throw new Error(`${voiceUrl} answered TwiML without a stream`);
  let redirect = first.redirect;
  const resume = async (): Promise<ResumeTarget | undefined> => {
    if (!redirect) return undefined;
    const next = parseStreamTwiml(await postForm(redirect, form));
    if (next === "hangup") return undefined;
    redirect = next.redirect;
    return { url: next.url, customParameters: next.parameters, ...(options.headers ? { headers: options.headers } : {}) };
  };
  const sim = new TwilioCallSimulator({ ...options, callSid, accountSid: form.AccountSid, url: first.url, customParameters: first.parameters, resume });
  await sim.connect();
  return sim;
}
