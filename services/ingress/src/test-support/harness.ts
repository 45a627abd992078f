// Test harness: real NATS + Redis, the ingress in-process, a Twilio-speaking WebSocket client, and helpers that
// play the other stages' roles on the bus.
import { performance } from "node:perf_hooks";
import { Bus, silentLogger, streams, subjects, type Codec, type Subscription } from "@voicebot/bus";
import { AudioEncoding, BotAudio, DialogInput } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { startNats, startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll } from "vitest";
import WebSocket from "ws";
import { definition } from "../service.js";

// ---- log capture: the service logs JSON lines to stdout ----

export const logs: Array<Record<string, unknown>> = [];
let captured = false;

/** Collects every JSON log line written to stdout (and keeps the console quiet unless VB_TEST_LOGS is set). */
export function captureLogs(): void {
  if (captured) return;
  captured = true;
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    const text = typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8");
    let isLog = false;
    for (const line of text.split("\n")) {
      if (!line.startsWith("{")) continue;
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
        isLog = true;
      } catch {
        /* not a log line */
      }
    }
    if (isLog && !process.env.VB_TEST_LOGS) return true;
    return (write as (...args: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stdout.write;
}

export function waitForLog(predicate: (line: Record<string, unknown>) => boolean, what = "a log line", timeoutMs = 5_000) {
  return waitFor(() => logs.find(predicate), { timeoutMs, what });
}

// ---- the service ----

export interface Ingress {
  handle: ServiceHandle;
  port: number;
  baseUrl: string;
  wsUrl: string;
}

export async function startIngress(env: Record<string, string>): Promise<Ingress> {
  const handle = await startService(definition, {
    INGRESS_PORT: "0",
    INGRESS_REQUIRE_SERVICES: "",
    LOG_LEVEL: "debug",
    DRAIN_TIMEOUT_MS: "5000",
    ...env,
  });
  const port = handle.ctx.port;
  return { handle, port, baseUrl: `http://127.0.0.1:${port}`, wsUrl: `ws://127.0.0.1:${port}/twilio` };
}

/** A counter/gauge value from /metrics (sum over series matching the labels). */
export async function metricValue(baseUrl: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const match = line.match(/^([a-z_]+)(\{[^}]*\})?\s+([-\d.e+]+)$/i);
    if (!match || match[1] !== name) continue;
    const labelText = match[2] ?? "";
    if (Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) sum += Number(match[3]);
  }
  return sum;
}

// ---- the other stages, on the bus ----

export async function connectBus(url: string): Promise<Bus> {
  return Bus.connect({ servers: url, name: "ingress-test", log: silentLogger, registry: new Registry() });
}

export interface Collected<T> {
  items: T[];
  sub: Subscription;
}

export function collect<T>(bus: Bus, subject: string, codec: Codec<T>): Collected<T> {
  const items: T[] = [];
  const sub = bus.subscribe(subject, codec, (message) => void items.push(message), { name: "test", ordered: true });
  return { items, sub };
}

export interface DialogInputs {
  items: DialogInput[];
  stop(): Promise<void>;
}

/** Plays the dialog's role on the work queue: every DialogInput, acked. */
export async function consumeDialogInputs(bus: Bus): Promise<DialogInputs> {
  const items: DialogInput[] = [];
  const consumer = await bus.consume(
    streams.dialog,
    DialogInput,
    async (input, item) => {
      items.push(input);
      item.ack();
    },
    { name: "test-dialog", ackWaitMs: 30_000, maxDeliver: 5, concurrency: 16 },
  );
  return { items, stop: () => consumer.stop() };
}

/** Plays one tts replica: a BotAudio part, μ-law 8000. */
export function publishBotAudio(
  bus: Bus,
  callId: string,
  turnId: string,
  chunkSeq: number,
  partSeq: number,
  payload: Buffer,
  extra: Partial<BotAudio> = {},
): void {
  bus.publish(
    subjects.botAudio(callId),
    BotAudio,
    BotAudio.create({ callId, turnId, chunkSeq, partSeq, payload, format: { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 }, ...extra }),
    callId,
  );
}

/** Connects, starts a call and waits until its DialogInput{callStarted} is in the work queue. */
export async function startCall(
  wsUrl: string,
  dialogInputs: DialogInput[],
  params: Record<string, string> = {},
): Promise<TwilioClient> {
  const client = await TwilioClient.connect(wsUrl, newCallSid());
  client.sendConnected();
  client.sendStart(params);
  await waitFor(() => dialogInputs.some((i) => i.callId === client.callSid && i.input?.$case === "callStarted"), {
    what: "DialogInput callStarted",
  });
  return client;
}

/** p-th percentile (0..100) of the values. */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

// ---- a Twilio Media Streams client ----

export interface Received {
  at: number;
  message: Record<string, any>;
}

export class TwilioClient {
  readonly received: Received[] = [];
  /** Messages that came as binary WebSocket frames (each is still parsed into `received`). */
  binaryFrames = 0;
  readonly closed: Promise<{ code: number; reason: string }>;
  private sequence = 0;
  private markEchoDelayMs: number | undefined;
  readonly streamSid: string;

  private constructor(
    readonly ws: WebSocket,
    readonly callSid: string,
  ) {
    this.streamSid = `MZ${callSid.slice(2)}`;
    this.closed = new Promise((resolve) => ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on("message", (data, isBinary) => {
      if (isBinary) this.binaryFrames++; // Twilio takes text frames only
      const message = JSON.parse(data.toString()) as Record<string, any>;
      this.received.push({ at: performance.now(), message });
      if (message.event === "mark" && this.markEchoDelayMs !== undefined) {
        const name = message.mark.name as string;
        setTimeout(() => this.sendMark(name), this.markEchoDelayMs);
      }
    });
  }

  static async connect(url: string, callSid: string, headers: Record<string, string> = {}): Promise<TwilioClient> {
    const ws = new WebSocket(url, { headers });
    ws.on("error", () => undefined);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
      ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
    return new TwilioClient(ws, callSid);
  }

  /** Echo every mark after `delayMs`, the way Twilio does once the audio before it has played. */
  echoMarks(delayMs: number): void {
    this.markEchoDelayMs = delayMs;
  }

  send(message: unknown): void {
    this.ws.send(typeof message === "string" ? message : JSON.stringify(message));
  }

  sendConnected(): void {
    this.send({ event: "connected", protocol: "Call", version: "1.0.0" });
  }

  sendStart(customParameters: Record<string, string> = {}, overrides: Record<string, unknown> = {}): void {
    this.send({
      event: "start",
      sequenceNumber: String(++this.sequence),
      streamSid: this.streamSid,
      start: {
        accountSid: "ACtest",
        streamSid: this.streamSid,
        callSid: this.callSid,
        tracks: ["inbound"],
        customParameters,
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
        ...overrides,
      },
    });
  }

  sendMedia(chunk: number, payload: Uint8Array): void {
    this.send({
      event: "media",
      sequenceNumber: String(++this.sequence),
      streamSid: this.streamSid,
      media: { track: "inbound", chunk: String(chunk), timestamp: String((chunk - 1) * 20), payload: Buffer.from(payload).toString("base64") },
    });
  }

  sendDtmf(digit: string): number {
    const sequenceNumber = ++this.sequence;
    this.send({ event: "dtmf", sequenceNumber: String(sequenceNumber), streamSid: this.streamSid, dtmf: { track: "inbound_track", digit } });
    return sequenceNumber;
  }

  sendMark(name: string): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.send({ event: "mark", sequenceNumber: String(++this.sequence), streamSid: this.streamSid, mark: { name } });
  }

  sendStop(): void {
    this.send({
      event: "stop",
      sequenceNumber: String(++this.sequence),
      streamSid: this.streamSid,
      stop: { accountSid: "ACtest", callSid: this.callSid },
    });
  }

  events(kind: string): Received[] {
    return this.received.filter((r) => r.message.event === kind);
  }

  /** Outbound audio so far, concatenated. */
  audio(): Buffer {
    return Buffer.concat(this.events("media").map((r) => Buffer.from(r.message.media.payload as string, "base64")));
  }

  close(): void {
    this.ws.close();
  }
}

let callCounter = 0;
export function newCallSid(): string {
  callCounter++;
  return `CA${process.pid.toString(16)}${Date.now().toString(16)}${callCounter.toString().padStart(4, "0")}`;
}

/** `frames` 20 ms μ-law frames filled with `value`. */
export function frames(count: number, value: number): Buffer {
  return Buffer.alloc(count * 160, value);
}

export { waitFor };

// ---- a test file's world ----

export interface IngressWorld {
  nats: ServerHandle & { storeDir: string };
  redis: ServerHandle;
  /** NATS_URL and REDIS_URL of this world, for the ingresses a test starts itself. */
  env(): Record<string, string>;
  /** The test's own connection, on which it plays the other stages. */
  bus: Bus;
  /** What ingress put on the dialog's work queue (which this creates, as the dialog service does). */
  dialog: DialogInputs;
  /** Ingress in-process on this world with the file's settings. */
  ingress: Ingress;
}

export interface IngressWorldOptions {
  /** Settings of the file's ingress (on top of the world's NATS_URL and REDIS_URL). */
  env?: Record<string, string>;
  /** false: the file starts its own ingresses (world.ingress stays unset). */
  ingress?: boolean;
  /** false: nothing reads the dialog's work queue (world.dialog stays unset). */
  dialog?: boolean;
}

/**
 * Sets up what every ingress test file runs on: real nats-server and redis-server of its own, a bus, the dialog's
 * work queue read into `dialog.items`, and ingress. Registers the file's beforeAll and afterAll (call it at the top
 * level); the fields are there once beforeAll has run.
 */
export function useIngressWorld(options: IngressWorldOptions = {}): IngressWorld {
  const world = {} as IngressWorld;
  world.env = () => ({ NATS_URL: world.nats.url, REDIS_URL: world.redis.url });
  beforeAll(async () => {
    captureLogs();
    [world.nats, world.redis] = await Promise.all([startNats(), startRedis()]);
    world.bus = await connectBus(world.nats.url);
    if (options.dialog !== false) world.dialog = await consumeDialogInputs(world.bus);
    if (options.ingress !== false) world.ingress = await startIngress({ ...world.env(), ...options.env });
  });
  afterAll(async () => {
    await world.ingress?.handle.stop();
    await world.dialog?.stop();
    await world.bus?.close();
    await Promise.all([world.nats?.stop(), world.redis?.stop()]);
  });
  return world;
}
