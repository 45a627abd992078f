// For a few seconds, several sockets throw malformed, truncated, oversized, out-of-order and flooding Twilio
// messages at /twilio, and junk requests hit /v1/calls/*, /twilio/voice, /twilio/status, /twilio/amd and the HTTP
// port, while one well-formed call runs its normal flow (caller audio in, bot turns out, marks echoed). The ingress
// must not crash, the good call must not notice, memory must stay bounded, and the junk must be counted.
import http from "node:http";
import net from "node:net";
import { performance } from "node:perf_hooks";
import v8 from "node:v8";
import vm from "node:vm";
import { subjects } from "@voicebot/bus";
import { CallerAudio, PlaybackEvent, PlaybackEvent_Kind } from "@voicebot/proto";
import { describe, expect, it } from "vitest";
import WebSocket from "ws";
import {
  collect,
  frames,
  logs,
  metricValue,
  newCallSid,
  publishBotAudio,
  startCall,
  TwilioClient,
  useIngressWorld,
  waitFor,
} from "./test-support/harness.js";

const FUZZ_MS = Number(process.env.FUZZ_MS ?? 5_000);
const WARMUP_MS = 3_000;

/** A full GC, so RSS before and after compares live memory, not garbage the collector has not reached yet. */
v8.setFlagsFromString("--expose-gc");
const collectGarbage = vm.runInNewContext("gc") as () => void;
const JUNK_SOCKETS = 6;

const world = useIngressWorld({
  env: {
    LOG_LEVEL: "info",
    INGRESS_START_TIMEOUT_MS: "1000",
    PLAYOUT_ALONE_STALL_MS: "1000",
    // Twilio credentials turn on the routes Twilio calls back (status reports); its API is never reached here.
    TWILIO_ACCOUNT_SID: "ACfuzz",
    TWILIO_AUTH_TOKEN: "fuzz-twilio-secret",
    TWILIO_API_BASE_URL: "http://127.0.0.1:9",
    TWILIO_STREAM_URL: "wss://voice.example.com/twilio",
  },
});

// ---- randomness (seeded, printed, so a failure can be replayed with FUZZ_SEED) ----

const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);
let state = seed >>> 0;
function random(): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (n: number) => Math.floor(random() * n);
const pick = <T>(items: readonly T[]): T => items[int(items.length)];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function randomText(length: number): string {
  let s = "";
  for (let i = 0; i < length; i++) s += String.fromCharCode(int(3) === 0 ? int(0xd7ff) : 32 + int(95));
  return s;
}

const weirdValues: unknown[] = [
  null, -1, 0, 1.5, "", "-3", "1e3", "NaN", "999999999999999999999", 2 ** 60, true, [], {}, [1, 2], { a: 1 },
  "A".repeat(3_000), "\u0000", "../../etc/passwd", "CA" + "x".repeat(200),
];

/** Every field of a message, at any depth, may be replaced by a weird value or dropped. */
function mutate(value: unknown, depth = 0): unknown {
  if (random() < 0.15) return pick(weirdValues);
  if (value === null || typeof value !== "object" || depth > 4) return value;
  if (Array.isArray(value)) return value.map((v) => mutate(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) if (random() > 0.1) out[k] = mutate(v, depth + 1);
  if (random() < 0.1) out[randomText(8)] = pick(weirdValues);
  return out;
}

function templates(client: TwilioClient, goodCallSid: string): Array<Record<string, unknown>> {
  const streamSid = client.streamSid;
  const payload = Buffer.alloc(160, int(256)).toString("base64");
  const mediaFormat = { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 };
  return [
    { event: "connected", protocol: "Call", version: "1.0.0" },
    { event: "start", sequenceNumber: "1", streamSid, start: { accountSid: "AC1", streamSid, callSid: client.callSid, tracks: ["inbound"], customParameters: { agent: "x" }, mediaFormat } },
    // Someone else's live call: must be refused, never mixed into it.
    { event: "start", sequenceNumber: "1", streamSid, start: { accountSid: "AC1", streamSid, callSid: goodCallSid, tracks: ["inbound"], mediaFormat } },
    { event: "media", sequenceNumber: String(int(1e6)), streamSid, media: { track: "inbound", chunk: String(1 + int(5_000)), timestamp: String(int(1e6)), payload } },
    { event: "media", streamSid, media: { track: "outbound", chunk: "1", timestamp: "0", payload } },
    { event: "dtmf", sequenceNumber: String(int(1e9)), streamSid, dtmf: { track: "inbound_track", digit: pick(["1", "#", "*", "D", "x", "12"]) } },
    { event: "mark", sequenceNumber: "5", streamSid, mark: { name: pick(["t1.0", "t999.3", randomText(20), ""]) } },
    { event: "stop", sequenceNumber: "9", streamSid, stop: { accountSid: "AC1", callSid: client.callSid } },
    { event: pick(["clear", "hello", "", "MEDIA"]), streamSid },
  ];
}

// Big junk is made once: the point is what the ingress does with it, not the test's own allocations.
const NESTED = Buffer.from("[".repeat(30_000) + "]".repeat(30_000));
const PADDED = Buffer.from(JSON.stringify({ event: "media", pad: "x".repeat(60_000) }));
const OVERSIZED = Buffer.alloc(200_000, "A");
const FLOOD = Buffer.from('{"event":"connected"}');

/** One junk message: mutated, truncated, garbage, oversized, deeply nested, binary, or invalid UTF-8. */
function sendJunk(client: TwilioClient, goodCallSid: string): void {
  const ws = client.ws;
  if (ws.readyState !== WebSocket.OPEN) return;
  const template = pick(templates(client, goodCallSid));
  switch (int(20)) {
    case 0:
    case 1:
    case 2:
    case 3:
    case 4:
    case 5:
    case 6:
    case 7:
      return ws.send(JSON.stringify(mutate(template)));
    case 8:
    case 9:
    case 10: {
      const text = JSON.stringify(template);
      return ws.send(text.slice(0, int(text.length)));
    }
    case 11:
    case 12:
      return ws.send(randomText(int(300)));
    case 13:
    case 14:
    case 15:
      return ws.send(JSON.stringify(template)); // valid, at a random moment (before start, twice, after stop)
    case 16:
      return ws.send(Buffer.from(Array.from({ length: 1 + int(400) }, () => int(256))), { binary: random() < 0.5 });
    case 17:
      return ws.send(JSON.stringify({ ...template, extra: Array.from({ length: 500 }, (_, i) => ({ i, s: randomText(10) })) }));
    case 18:
      for (let i = 0; i < 300; i++) ws.send(FLOOD, { binary: false }); // a flood above the rate limit
      return;
    default: {
      // Big: deeply nested, padded to just under the limit, or above it (the socket is then closed with 1009).
      const big = pick([NESTED, PADDED, OVERSIZED.subarray(0, 70_000 + int(130_000))]);
      return ws.send(big, { binary: false });
    }
  }
}

async function junkSocket(goodCallSid: string, until: number, stats: { sockets: number; refused: number }): Promise<void> {
  while (performance.now() < until) {
    let client: TwilioClient;
    try {
      client = await TwilioClient.connect(world.ingress.wsUrl, pick([newCallSid(), newCallSid(), goodCallSid]));
      stats.sockets++;
    } catch {
      stats.refused++;
      await sleep(10);
      continue;
    }
    const messages = 20 + int(200);
    for (let i = 0; i < messages && client.ws.readyState === WebSocket.OPEN && performance.now() < until; i++) {
      sendJunk(client, goodCallSid);
      if (i % 10 === 0) await sleep(int(15));
    }
    const ending = int(3);
    if (ending === 0) client.ws.terminate(); // no close handshake
    else if (ending === 1) client.close();
    else await sleep(int(300)); // leave it to the start timeout or the server's close
    client.ws.terminate();
  }
}

/** Junk over plain HTTP: bad call ids, huge paths, wrong methods, and raw bytes that are not HTTP at all. */
async function junkHttp(until: number, stats: { requests: number; statuses: Map<number, number> }): Promise<void> {
  const paths = [
    () => `/v1/calls/${encodeURIComponent(randomText(1 + int(40)))}`,
    () => `/v1/calls/${"CA".padEnd(int(5_000), "9")}`,
    () => `/v1/calls/%E0%A4%A`,
    () => `/v1/calls/..%2F..%2Fetc%2Fpasswd`,
    () => `/v1/calls/CA1/extra/segments`,
    () => `/v1/calls/`,
    () => `/twilio`,
    () => `/twilio/voice`,
    () => `/twilio/status`,
    () => `/twilio/status?relay=${encodeURIComponent(randomText(1 + int(60)))}`,
    () => `/twilio/amd?onMachine=${encodeURIComponent(randomText(1 + int(20)))}`,
    () => `/${"a/".repeat(int(3_000))}`,
  ];
  // node:http rather than fetch: this process's memory is what is measured, ingress's and the junk clients' alike,
  // and fetch grew it by 45 MB of RSS over 20 s of junk (node:http: 9 MB over 4 times the requests). A connection
  // per request: ingress may close a kept-alive one after refusing a request whose body it did not read.
  const agent = new http.Agent({ keepAlive: false });
  const base = new URL(world.ingress.baseUrl);
  const request = (method: string, path: string, body: string | undefined) =>
    new Promise<number>((resolve, reject) => {
      const req = http.request({ host: base.hostname, port: base.port, method, path, agent, timeout: 2_000 }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
        res.on("error", reject);
      });
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", reject);
      req.end(body);
    });
  try {
    while (performance.now() < until) {
      const method = pick(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]);
      try {
        const status = await request(method, pick(paths)(), method === "GET" || method === "HEAD" ? undefined : randomText(int(2_000)));
        stats.statuses.set(status, (stats.statuses.get(status) ?? 0) + 1);
      } catch {
        stats.statuses.set(0, (stats.statuses.get(0) ?? 0) + 1);
      }
      stats.requests++;
    }
  } finally {
    agent.destroy();
  }
}

async function junkTcp(until: number): Promise<void> {
  const payloads = [
    () => "GET // HTTP/1.1\r\nHost: x\r\n\r\n",
    () => "GET //[ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
    () => "GET /twilio HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 99\r\n\r\n",
    () => "GET /twilio HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
    () => `GET /v1/calls/${"x".repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
    () => `${randomText(int(500))}\r\n\r\n`,
    () => "GET /v1/calls/CA1 HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\npartial",
    () => "GET /v1/calls/CA1 HTTP/1.1\r\n" + "X-A: b\r\n".repeat(3_000) + "\r\n",
  ];
  while (performance.now() < until) {
    await new Promise<void>((resolve) => {
      const socket = net.connect(world.ingress.port, "127.0.0.1", () => socket.write(pick(payloads)()));
      socket.on("data", () => undefined);
      socket.on("error", () => resolve());
      socket.on("close", () => resolve());
      setTimeout(() => {
        socket.destroy();
        resolve();
      }, 50 + int(200));
    });
  }
}

describe("fuzz", () => {
  it("survives junk from many sockets and HTTP clients while a good call runs undisturbed", async () => {
    console.log(`fuzz seed ${seed} (replay with FUZZ_SEED=${seed})`);
    const errorsBefore = await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total");

    // The good call: caller audio every 20 ms, a bot turn every 500 ms, marks echoed as Twilio does.
    const good = await startCall(world.ingress.wsUrl, world.dialog.items, { agent: "order-line" });
    const callId = good.callSid;
    good.echoMarks(5);
    const callerAudio = collect(world.bus, subjects.callerAudio(callId), CallerAudio);
    const playback = collect(world.bus, subjects.playback(callId), PlaybackEvent);
    await world.bus.nc.flush();
    let sentFrames = 0;
    const streaming = setInterval(() => {
      sentFrames++;
      good.sendMedia(sentFrames, frames(1, sentFrames % 250));
    }, 20);
    let turns = 0;
    const speaking = setInterval(() => {
      turns++;
      for (let chunkSeq = 0; chunkSeq < 2; chunkSeq++) {
        publishBotAudio(world.bus, callId, `t${turns}`, chunkSeq, 0, frames(4, turns % 250), { chunkDone: true, turnDone: chunkSeq === 1, text: `Turn ${turns}.` });
      }
    }, 500);

    const socketStats = { sockets: 0, refused: 0 };
    const httpStats = { requests: 0, statuses: new Map<number, number>() };
    const fuzz = async (ms: number) => {
      const until = performance.now() + ms;
      await Promise.all([
        ...Array.from({ length: JUNK_SOCKETS }, () => junkSocket(callId, until, socketStats)),
        junkHttp(until, httpStats),
        junkTcp(until),
      ]);
      await waitFor(async () => (await metricValue(world.ingress.baseUrl, "voicebot_ingress_active_calls")) === 1, {
        what: "the junk sockets closed",
        timeoutMs: 5_000,
      });
      // What the test itself keeps of the junk calls (their dialog inputs, the captured log lines) is not the
      // ingress's memory.
      const keep = world.dialog.items.filter((i) => i.callId === callId);
      world.dialog.items.splice(0, world.dialog.items.length, ...keep);
      logs.splice(0);
      collectGarbage();
      const { rss, heapUsed, external } = process.memoryUsage();
      return { rss, live: heapUsed + external };
    };
    const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
    let start = { rss: 0, live: 0 };
    let warm = { rss: 0, live: 0 };
    let end = { rss: 0, live: 0 };
    let rssPeak = 0;
    const sampling = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)), 100);
    try {
      collectGarbage();
      start = { rss: process.memoryUsage().rss, live: process.memoryUsage().heapUsed + process.memoryUsage().external };
      // A first, short round takes the heap and socket buffers to their working size under this load; a leak
      // would keep growing through the measured round after it.
      warm = await fuzz(WARMUP_MS);
      end = await fuzz(FUZZ_MS);
    } finally {
      clearInterval(streaming);
      clearInterval(speaking);
      clearInterval(sampling);
    }
    const errors = (await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total")) - errorsBefore;
    const httpRejected = await metricValue(world.ingress.baseUrl, "voicebot_http_rejected_total");
    const hijacks = await metricValue(world.ingress.baseUrl, "voicebot_ingress_protocol_errors_total", { reason: "call_already_streaming" });
    console.log(
      `fuzz: ${socketStats.sockets} junk sockets (${socketStats.refused} refused), ${httpStats.requests} junk HTTP requests ` +
        `(statuses ${JSON.stringify(Object.fromEntries(httpStats.statuses))}), ${errors} protocol errors counted, ` +
        `${httpRejected} bad targets refused, ${hijacks} starts for the live call refused; ` +
        `RSS ${mb(start.rss)} MB, after ${WARMUP_MS} ms warm-up ${mb(warm.rss)} MB, after ${FUZZ_MS} ms more ${mb(end.rss)} MB ` +
        `(growth over the measured run ${mb(end.rss - warm.rss)} MB, peak ${mb(rssPeak)} MB); ` +
        `live heap+external after GC ${mb(start.live)} -> ${mb(warm.live)} -> ${mb(end.live)} MB; ` +
        `good call: ${sentFrames} frames in, ${turns} turns out`,
    );

    // No crash: the ingress still serves, and a new call works.
    expect((await fetch(`${world.ingress.baseUrl}/healthz`)).status).toBe(200);
    const after = await startCall(world.ingress.wsUrl, world.dialog.items);
    after.close();

    // The good call: every caller frame forwarded, in order, untouched...
    await waitFor(() => callerAudio.items.length >= sentFrames, { what: `all ${sentFrames} good frames`, timeoutMs: 10_000 });
    const received: Array<[number, number]> = callerAudio.items.map((a) => [Number(a.firstFrame), a.payload[0]]);
    expect(received).toEqual(Array.from({ length: sentFrames }, (_, i) => [i, (i + 1) % 250]));
    expect(callerAudio.items.every((a) => a.frameCount === 1 && a.payload.length === 160)).toBe(true);
    // ...and every bot turn played in full, in order, and reported as heard.
    await waitFor(() => playback.items.filter((e) => e.kind === PlaybackEvent_Kind.KIND_TURN_PLAYED).length === turns, {
      what: `${turns} turns played`,
      timeoutMs: 10_000,
    });
    const played = playback.items.filter((e) => e.kind === PlaybackEvent_Kind.KIND_TURN_PLAYED).map((e) => e.turnId);
    expect(played).toEqual(Array.from({ length: turns }, (_, i) => `t${i + 1}`));
    const expectedAudio = Buffer.concat(Array.from({ length: turns }, (_, i) => frames(8, (i + 1) % 250)));
    expect(good.audio().equals(expectedAudio)).toBe(true);
    expect(good.events("clear")).toHaveLength(0);
    expect(good.ws.readyState).toBe(WebSocket.OPEN);
    expect(world.dialog.items.filter((i) => i.callId === callId && i.input?.$case === "callEnded")).toHaveLength(0);

    // Bounded memory, and the junk was seen and counted.
    expect(end.rss - warm.rss).toBeLessThan(32 * 2 ** 20);
    expect(end.live - warm.live).toBeLessThan(16 * 2 ** 20);
    expect(errors).toBeGreaterThan(100);
    expect(httpRejected).toBeGreaterThan(0);

    callerAudio.sub.unsubscribe();
    playback.sub.unsubscribe();
    good.sendStop();
    await good.closed;
  });
});
