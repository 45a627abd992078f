// Bad input at every service, not only ingress: for a bounded time, junk goes to every NATS subject the five
// services listen on (random bytes, truncated and oversized protobuf, messages for unknown or malformed call ids, a
// flood) and to every service's HTTP port, while one well-formed call runs its keypad flow. Every process must stay
// up and ready with bounded memory, count what it refused, and the good call must not notice.
//
// The junk goes out over a raw NATS connection (the text protocol, PUB/HPUB), as a buggy or hostile client would
// send it: nothing of ours encodes it.
import { randomBytes, randomInt } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import { afterAll, beforeAll, expect, test } from "vitest";
import { keypadCall, noteTurns, serviceNames, startSystem, type System } from "./system.js";

const FUZZ_MS = 8_000;
const TURN_MS = 20_000;

let system: System;
const report: string[] = [];

beforeAll(async () => {
  system = await startSystem();
});

afterAll(async () => {
  console.log(`fuzz-services.test.ts:\n  ${report.join("\n  ")}`);
  await system?.stop();
});

/** A raw NATS publisher: PUB and HPUB on the text protocol, no client library. */
class RawNats {
  private constructor(private readonly socket: net.Socket) {}

  static async connect(url: string): Promise<RawNats> {
    const { hostname, port } = new URL(url);
    const socket = net.connect(Number(port), hostname);
    await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
    socket.on("data", () => undefined); // INFO, PINGs (answered below) and -ERR for oversized payloads
    socket.on("error", () => undefined);
    socket.write(`CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":false,"name":"fuzz"}\r\nPING\r\n`);
    return new RawNats(socket);
  }

  pub(subject: string, payload: Uint8Array, reply?: string): void {
    this.socket.write(`PUB ${subject}${reply ? ` ${reply}` : ""} ${payload.length}\r\n`);
    this.socket.write(payload);
    this.socket.write("\r\n");
  }

  /** With a header block (here: a call-id header naming some other call, or junk). */
  hpub(subject: string, header: string, payload: Uint8Array): void {
    const headers = `NATS/1.0\r\n${header}\r\n\r\n`;
    this.socket.write(`HPUB ${subject} ${Buffer.byteLength(headers)} ${Buffer.byteLength(headers) + payload.length}\r\n${headers}`);
    this.socket.write(payload);
    this.socket.write("\r\n");
  }

  async flush(): Promise<void> {
    await new Promise<void>((resolve) => this.socket.write("PING\r\n", () => resolve()));
  }

  close(): void {
    this.socket.end();
  }
}

const pick = <T>(items: readonly T[]): T => items[randomInt(items.length)];

/** Call ids no live call has: plausible, odd, at the length limit. */
function strangerCallId(): string {
  return pick([
    () => `CA${randomBytes(16).toString("hex")}`,
    () => "CA" + "z".repeat(126),
    () => `_-_${randomInt(1e9)}`,
    () => "x",
  ])();
}

/** Protobuf-shaped bytes: fields with the wire types our messages use, some naming a call, cut anywhere. */
function protobufish(callId: string, maxBytes: number): Uint8Array {
  const parts: number[] = [];
  const varint = (v: number) => {
    while (v > 0x7f) {
      parts.push((v & 0x7f) | 0x80);
      v = Math.floor(v / 128);
    }
    parts.push(v);
  };
  const id = Buffer.from(callId);
  parts.push(0x0a);
  varint(id.length);
  parts.push(...id);
  for (let i = randomInt(1, 8); i > 0; i--) {
    const field = randomInt(1, 16);
    const wire = pick([0, 1, 2, 5]);
    varint((field << 3) | wire);
    if (wire === 0) varint(randomInt(2 ** 31));
    else if (wire === 1) parts.push(...randomBytes(8));
    else if (wire === 5) parts.push(...randomBytes(4));
    else {
      const body = randomBytes(randomInt(0, 64));
      varint(body.length + (randomInt(4) === 0 ? randomInt(1, 1000) : 0)); // sometimes a length past the end
      parts.push(...body);
    }
  }
  const bytes = Uint8Array.from(parts);
  return bytes.subarray(0, Math.min(bytes.length, randomInt(1, maxBytes + 1)));
}

/** What goes on a subject: random bytes, protobuf-shaped bytes, nothing at all, or a large blob. */
function junkPayload(callId: string, maxBytes: number): Uint8Array {
  return pick([
    () => randomBytes(randomInt(0, maxBytes)),
    () => protobufish(callId, maxBytes),
    () => new Uint8Array(0),
    () => randomBytes(randomInt(maxBytes, 4 * maxBytes)),
  ])();
}

/** Every subject a service listens on, for a call id (per-call subjects) or as is. */
const SUBJECTS: Array<{ subject: (callId: string) => string; maxBytes: number; request?: boolean }> = [
  { subject: (id) => `vb.v1.call.${id}.audio.in`, maxBytes: 2_000 }, // asr: CallerAudio
  { subject: (id) => `vb.v1.call.${id}.audio.out`, maxBytes: 2_000 }, // ingress: BotAudio
  { subject: (id) => `vb.v1.call.${id}.audio.replay`, maxBytes: 64, request: true }, // ingress: CallerAudioReplayRequest
  { subject: (id) => `vb.v1.call.${id}.speech`, maxBytes: 200 }, // ingress, dialog: SpeechActivity
  { subject: (id) => `vb.v1.call.${id}.transcript`, maxBytes: 200 },
  { subject: (id) => `vb.v1.call.${id}.control`, maxBytes: 200 }, // ingress: CallControl
  { subject: (id) => `vb.v1.call.${id}.cancel`, maxBytes: 200 }, // asr, tts, dialog: CancelTurn
  { subject: (id) => `vb.v1.call.${id}.ended`, maxBytes: 200 }, // asr, tts: CallEnded
  { subject: (id) => `vb.v1.call.${id}.tts.failed`, maxBytes: 200 }, // ingress: SynthesisFailed
  { subject: (id) => `vb.v1.call.${id}.dialog.in`, maxBytes: 300 }, // dialog work queue: DialogInput
  { subject: () => "vb.v1.calls.started", maxBytes: 300 }, // asr: CallStarted
  { subject: () => "vb.v1.tts.speak", maxBytes: 120 }, // tts work queue: SpeakRequest (short: junk text is synthesized)
  { subject: () => "vb.v1.tools.call", maxBytes: 300, request: true }, // tools: ToolCallRequest
  ...serviceNames.map((name) => ({ subject: () => `vb.v1.ping.${name}`, maxBytes: 64, request: true })),
];

/** Junk HTTP at one service: odd methods, paths, headers and bodies. */
async function junkHttp(baseUrl: string, stats: Map<number, number>): Promise<void> {
  const path = pick([
    "/metrics",
    "/healthz",
    "/readyz",
    "/info",
    "/",
    "/metrics?x=" + "y".repeat(5_000),
    "/%E0%A4%A",
    "/../../etc/passwd",
    `/${randomBytes(12).toString("hex")}`,
    "/v1/calls/" + encodeURIComponent(randomBytes(8).toString("latin1")),
    "/v1/calls",
    "/twilio/voice",
    "/twilio/voice?agent=" + encodeURIComponent(randomBytes(6).toString("latin1")),
  ]);
  const method = pick(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]);
  const body = method === "GET" || method === "OPTIONS" ? undefined : randomBytes(randomInt(0, 20_000));
  try {
    const res = await fetch(`${baseUrl}${path}`, { method, body, headers: { "content-type": pick(["application/json", "text/plain", "x/y"]) }, signal: AbortSignal.timeout(5_000) });
    await res.arrayBuffer();
    stats.set(res.status, (stats.get(res.status) ?? 0) + 1);
  } catch {
    stats.set(0, (stats.get(0) ?? 0) + 1);
  }
}

function rssMb(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:"));
  return Number(line?.split(/\s+/)[1] ?? 0) / 1024;
}

test("junk on every service's subjects and HTTP port, for a bounded time: nothing crashes, memory stays bounded, a live call is unaffected", async () => {
  const rssBefore = Object.fromEntries(serviceNames.map((name) => [name, rssMb(system.services[name].process.pid!)]));
  const logsBefore = Object.fromEntries(serviceNames.map((name) => [name, system.services[name].logs.length]));
  const decodeErrorsBefore = Object.fromEntries(
    await Promise.all(serviceNames.map(async (name) => [name, await system.metric(name, "voicebot_bus_decode_errors_total")] as const)),
  );

  const good = keypadCall(system, TURN_MS);

  const nats = await RawNats.connect(system.nats.url);
  const until = Date.now() + FUZZ_MS;
  let published = 0;
  const httpStats = new Map<number, number>();
  const http = (async () => {
    while (Date.now() < until) await Promise.all(serviceNames.map((name) => junkHttp(system.services[name].baseUrl, httpStats)));
  })();
  while (Date.now() < until) {
    for (let i = 0; i < 50; i++) {
      const target = pick(SUBJECTS);
      const callId = strangerCallId();
      const payload = junkPayload(callId, target.maxBytes);
      const subject = target.subject(callId);
      if (randomInt(3) === 0) nats.hpub(subject, pick([`vb-call-id: ${strangerCallId()}`, "vb-call-id:", `X-Junk: ${randomBytes(4).toString("hex")}`]), payload);
      else nats.pub(subject, payload, target.request ? `_INBOX.fuzz.${randomInt(1e9)}` : undefined);
      published++;
    }
    // A flood now and then: a burst of caller audio for a call nobody has.
    if (randomInt(10) === 0) {
      const flooded = strangerCallId();
      for (let i = 0; i < 2_000; i++) nats.pub(`vb.v1.call.${flooded}.audio.in`, randomBytes(randomInt(0, 400)));
      published += 2_000;
    }
    // A payload near the server's limit (1 MB) on a subject a service decodes.
    if (randomInt(20) === 0) {
      nats.pub(`vb.v1.call.${strangerCallId()}.audio.in`, randomBytes(900_000));
      published++;
    }
    await nats.flush();
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await http;
  nats.close();

  const sim = await good;
  expect(sim.protocolErrors).toEqual([]);
  noteTurns("next to junk on the bus", sim.turns, await system.record(sim.callSid));

  for (const name of serviceNames) {
    const service = system.services[name];
    expect(service.process.exitCode, `${name} exited`).toBeNull();
    expect(service.stderr(), `${name} wrote to stderr`).toBe("");
    await expect.poll(() => system.readyz(name), { timeout: 10_000, message: `${name} ready again` }).toBe(200);
  }
  const rssAfter = Object.fromEntries(serviceNames.map((name) => [name, rssMb(system.services[name].process.pid!)]));
  for (const name of serviceNames) expect(rssAfter[name] - rssBefore[name], `${name} RSS growth (MB)`).toBeLessThan(150);
  const decodeErrors = Object.fromEntries(
    await Promise.all(
      serviceNames.map(async (name) => [name, (await system.metric(name, "voicebot_bus_decode_errors_total")) - decodeErrorsBefore[name]] as const),
    ),
  );
  // Every service that decodes bus messages refused some of the junk (and said so).
  for (const name of serviceNames) expect(decodeErrors[name], `${name} decode errors counted`).toBeGreaterThan(0);
  // ...in its metrics in full, in its log in samples: tens of thousands of bad messages are not as many log lines.
  const problemLines = Object.fromEntries(
    serviceNames.map((name) => [name, system.services[name].logs.slice(logsBefore[name]).filter((l) => l.level === "error" || l.level === "warn").length]),
  );
  for (const name of serviceNames) expect(problemLines[name], `${name} error/warn log lines`).toBeLessThan(40 * (FUZZ_MS / 1000));

  report.push(
    `${published} junk NATS messages on ${SUBJECTS.length} subjects and ${[...httpStats.values()].reduce((a, b) => a + b, 0)} junk HTTP requests ` +
      `(statuses ${JSON.stringify(Object.fromEntries(httpStats))}) in ${FUZZ_MS / 1000} s; decode errors counted ${JSON.stringify(decodeErrors)}, error/warn log lines ${JSON.stringify(problemLines)}; ` +
      `RSS MB before -> after ${serviceNames.map((n) => `${n} ${rssBefore[n].toFixed(0)}->${rssAfter[n].toFixed(0)}`).join(", ")}; the live call completed`,
  );
});
