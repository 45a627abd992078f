// A call the platform places (POST /v1/calls) that an answering machine takes. Twilio's REST API is a local HTTP
// server that records the request; the test answers the call as Twilio would (the stream the TwiML names, with its
// parameters) and posts Twilio's signed answering machine verdict. All five services run as processes.
import { createHmac } from "node:crypto";
import http from "node:http";
import { parseStreamTwiml, TwilioCallSimulator } from "@voicebot/callsim";
import type { CallRecord } from "@voicebot/state";
import { waitFor } from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, expect, test } from "vitest";
import { loudnessDbfs, startSystem, type System } from "./system.js";

const TOKEN = "e2e-api-token-0123456789";
const AUTH_TOKEN = "e2e-twilio-secret";
const PUBLIC_STREAM_URL = "wss://voice.example.com/twilio";
const TURN_MS = 20_000;
const VOICEMAIL = "Hello, this is the demo shop calling about your order. Please call us back when it suits you. Goodbye.";

let system: System;
let api: http.Server;
const placed: URLSearchParams[] = [];

beforeAll(async () => {
  // Twilio's Calls.json: accepts every call and remembers what it was asked.
  api = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      placed.push(new URLSearchParams(body));
      res.writeHead(201, { "content-type": "application/json" }).end(JSON.stringify({ sid: `CA${Date.now().toString(16).padStart(32, "0")}`, status: "queued" }));
    });
  });
  await new Promise<void>((resolve) => api.listen(0, "127.0.0.1", resolve));
  system = await startSystem({
    env: {
      INGRESS_API_TOKEN: TOKEN,
      TWILIO_ACCOUNT_SID: "ACe2e",
      TWILIO_AUTH_TOKEN: AUTH_TOKEN,
      TWILIO_API_BASE_URL: `http://127.0.0.1:${(api.address() as { port: number }).port}`,
      TWILIO_STREAM_URL: PUBLIC_STREAM_URL,
    },
  });
}, 120_000);

/** X-Twilio-Signature as Twilio computes it: HMAC-SHA1 of the URL followed by each POST field's name and value, sorted. */
function twilioSignature(url: string, form: URLSearchParams): string {
  const fields = [...form.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHmac("sha1", AUTH_TOKEN).update(url + fields.map(([name, value]) => name + value).join("")).digest("base64");
}

/** The call record, through the API token this ingress requires. */
function recordWhen(callSid: string, what: string, predicate: (record: CallRecord) => boolean, timeoutMs = TURN_MS): Promise<CallRecord> {
  return waitFor(
    async () => {
      const response = await fetch(`${system.ingressUrl}/v1/calls/${callSid}`, { headers: { authorization: `Bearer ${TOKEN}` } });
      const record = response.ok ? ((await response.json()) as CallRecord) : undefined;
      return record && predicate(record) ? record : undefined;
    },
    { what, timeoutMs },
  );
}

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") console.log(`service logs after "${ctx.task.name}":\n${system?.recentLogs()}`);
});

afterAll(async () => {
  await system?.stop();
  api?.close();
});

test("a placed call that a machine answers: the greeting is cut at the beep, the agent's voicemail message plays, then the bot hangs up", async () => {
  const response = await fetch(`${system.ingressUrl}/v1/calls`, {
    method: "POST",
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify({ to: "+15550100001", from: "+15550100002", agent: "order-line", onMachine: "voicemail" }),
  });
  expect(response.status).toBe(201);
  const { callSid } = (await response.json()) as { callSid: string };
  const request = placed.at(-1)!;
  expect(request.get("MachineDetection")).toBe("DetectMessageEnd");
  const amdUrl = request.get("AsyncAmdStatusCallback")!;

  // The machine picks up: Twilio opens the stream the TwiML names (here, straight to ingress).
  const twiml = parseStreamTwiml(request.get("Twiml")!);
  if (twiml === "hangup") throw new Error("the TwiML holds no stream");
  expect(twiml.url).toBe(PUBLIC_STREAM_URL);
  const sim = new TwilioCallSimulator({ url: system.twilioUrl, callSid, customParameters: twiml.parameters });
  await sim.connect();
  // The agent greets the machine; the machine's greeting ends with the beep while ours still plays.
  await recordWhen(callSid, "the greeting playing", (r) => r.turns.length > 0);

  const form = new URLSearchParams({ AccountSid: "ACe2e", CallSid: callSid, AnsweredBy: "machine_end_beep", MachineDetectionDuration: "5200" });
  const signature = twilioSignature(amdUrl, form);
  const verdict = await fetch(`${system.ingressUrl}/twilio/amd${new URL(amdUrl).search}`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature },
    body: form.toString(),
  });
  expect(verdict.status).toBe(204);

  // The greeting is cut off; the message is left, and only once it has played (its marks came back from the
  // caller's side) does the bot hang up: the socket closes from ingress's side.
  const record = await recordWhen(callSid, "the call ended after the voicemail", (r) => r.state === "ended", 2 * TURN_MS);
  expect(record).toMatchObject({ answeredBy: "machine_end_beep", endReason: "bot_hangup", agent: "order-line" });
  expect(record.transcript.filter((e) => e.role === "bot").map((e) => e.text)).toContain(VOICEMAIL);
  expect(record.turns.map((t) => t.turnId)).toEqual(["t1", "t2"]);
  expect(record.toolCalls.map((t) => t.name)).toEqual(["end_call"]);
  await sim.closed;
  expect(sim.closeDetails?.by).toBe("server");
  const clearedAt = sim.events.find((e) => e.dir === "received" && e.type === "clear")?.at;
  expect(clearedAt).toBeDefined();
  // Several seconds of loud speech reached the caller's side (greeting and message).
  expect(sim.botAudio().length / 8).toBeGreaterThan(4_000);
  expect(loudnessDbfs(sim.botAudio())).toBeGreaterThan(-40);
  expect(sim.protocolErrors).toEqual([]);
  expect(await system.metric("ingress", "voicebot_ingress_amd_verdicts_total", 'outcome="voicemail"')).toBe(1);
});
