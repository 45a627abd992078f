import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, test } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { TwilioCallSimulator } from "./simulator.js";

type Json = Record<string, any>;

/** A stand-in bot: records every message with its arrival time and lets the test talk back. */
interface FakeBot {
  url: string;
  messages: Array<{ at: number; msg: Json }>;
  socket(): Promise<WebSocket>;
  sendAudio(ms: number, byte?: number): void;
  sendMark(name: string): void;
  sendClear(): void;
  streamSid(): string;
  waitForMessage(predicate: (m: Json) => boolean, timeoutMs?: number): Promise<{ at: number; msg: Json }>;
}

const servers: WebSocketServer[] = [];
const sims: TwilioCallSimulator[] = [];

afterEach(async () => {
  for (const sim of sims.splice(0)) if (!sim.isClosed) await sim.hangUp();
  for (const server of servers.splice(0)) {
    for (const client of server.clients) client.terminate();
    await new Promise((r) => server.close(r));
  }
});

async function fakeBot(): Promise<FakeBot> {
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1", path: "/twilio" });
  servers.push(server);
  await new Promise((r) => server.once("listening", r));
  const messages: FakeBot["messages"] = [];
  let current: WebSocket | undefined;
  const connected = new Promise<WebSocket>((resolve) =>
    server.on("connection", (ws) => {
      current = ws;
      ws.on("message", (data) => messages.push({ at: Date.now(), msg: JSON.parse(data.toString()) }));
      resolve(ws);
    }),
  );
  const streamSid = () => messages.find((m) => m.msg.event === "start")!.msg.streamSid as string;
  const waitForMessage: FakeBot["waitForMessage"] = async (predicate, timeoutMs = 3_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = messages.find((m) => predicate(m.msg));
      if (found) return found;
      if (Date.now() > deadline) throw new Error("timed out waiting for a message");
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  return {
    url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/twilio`,
    messages,
    socket: () => connected,
    streamSid,
    waitForMessage,
    sendAudio(ms, byte = 0x10) {
      const payload = Buffer.alloc(ms * 8, byte).toString("base64");
      current!.send(JSON.stringify({ event: "media", streamSid: streamSid(), media: { payload } }));
    },
    sendMark(name) {
      current!.send(JSON.stringify({ event: "mark", streamSid: streamSid(), mark: { name } }));
    },
    sendClear() {
      current!.send(JSON.stringify({ event: "clear", streamSid: streamSid() }));
    },
  };
}

async function call(bot: FakeBot, options: { turnQuietMs?: number } = {}): Promise<TwilioCallSimulator> {
  const sim = new TwilioCallSimulator({ url: bot.url, customParameters: { agent: "support" }, ...options });
  sims.push(sim);
  await sim.connect();
  await bot.socket();
  await bot.waitForMessage((m) => m.event === "start");
  return sim;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("TwilioCallSimulator connecting", () => {
  test("a refused upgrade rejects connect() with the HTTP status, and nothing is thrown afterwards", async () => {
    const server = createServer((_req, res) => res.writeHead(503).end("draining"));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const uncaught: unknown[] = [];
    const onUncaught = (error: unknown) => uncaught.push(error);
    process.on("uncaughtException", onUncaught);
    try {
      const sim = new TwilioCallSimulator({ url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/twilio` });
      await expect(sim.connect()).rejects.toThrow(/HTTP 503/);
      await sleep(50); // an error emitted by the aborted handshake would surface here
      expect(uncaught).toEqual([]);
      await expect(sim.connect()).rejects.toThrow(/HTTP 503/); // and it can try again
    } finally {
      process.off("uncaughtException", onUncaught);
      await new Promise((r) => server.close(r));
    }
  });

  test("nothing listening rejects connect() with the socket error", async () => {
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    await new Promise((r) => server.close(r));
    const sim = new TwilioCallSimulator({ url: `ws://127.0.0.1:${port}/twilio` });
    await expect(sim.connect()).rejects.toThrow(/cannot connect .*ECONNREFUSED/);
  });
});

describe("TwilioCallSimulator wire format", () => {
  test("connected, start and continuous 20 ms media with string numbers, exactly as Twilio sends them", async () => {
    const bot = await fakeBot();
    const before = Date.now();
    const sim = await call(bot);
    // The clock runs: 500 ms of audio arrives (however late a busy machine runs the timers) ...
    await bot.waitForMessage((m) => m.event === "media" && m.media.chunk === "25", 5_000);
    const [connected, start, ...rest] = bot.messages.map((m) => m.msg);
    expect(connected).toEqual({ event: "connected", protocol: "Call", version: "1.0.0" });
    expect(start).toEqual({
      event: "start",
      sequenceNumber: "1",
      streamSid: sim.streamSid,
      start: {
        accountSid: sim.accountSid,
        streamSid: sim.streamSid,
        callSid: sim.callSid,
        tracks: ["inbound"],
        customParameters: { agent: "support" },
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
      },
    });
    expect(sim.callSid).toMatch(/^CA[0-9a-f]{32}$/);
    expect(sim.streamSid).toMatch(/^MZ[0-9a-f]{32}$/);
    expect(sim.accountSid).toMatch(/^AC[0-9a-f]{32}$/);

    const media = rest.filter((m) => m.event === "media");
    expect(media.length).toBe(rest.length);
    // ... and never ahead of real time: frame i is not sent before i × 20 ms of the call, whether or not the caller speaks.
    const arrivals = bot.messages.filter((m) => m.msg.event === "media").map((m) => m.at);
    arrivals.forEach((at, i) => expect(at - before, `frame ${i + 1}`).toBeGreaterThanOrEqual(i * 20 - 2));
    expect(arrivals[24] - before).toBeLessThan(2_000); // nor far behind (a late timer's frames go out at once)
    media.forEach((m, i) => {
      expect(m).toEqual({
        event: "media",
        sequenceNumber: String(i + 2),
        streamSid: sim.streamSid,
        media: { track: "inbound", chunk: String(i + 1), timestamp: String(i * 20), payload: expect.any(String) },
      });
      expect(Buffer.from(m.media.payload, "base64")).toEqual(Buffer.alloc(160, 0xff));
    });
  });

  test("say() streams the audio at real time inside the media clock and resolves at the last speech frame", async () => {
    const bot = await fakeBot();
    const before = Date.now();
    const sim = await call(bot);
    const speech = new Uint8Array(400 * 8).map((_, i) => i % 200); // 400 ms, recognisable bytes
    const result = await sim.say(speech);
    await sleep(100);
    const frames = bot.messages.filter((m) => m.msg.event === "media");
    const payloads = frames.map((m) => Buffer.from(m.msg.media.payload, "base64"));
    const first = payloads.findIndex((p) => !p.equals(Buffer.alloc(160, 0xff)));
    expect(first).toBeGreaterThanOrEqual(0);
    expect(Buffer.concat(payloads.slice(first, first + 20))).toEqual(Buffer.from(speech));
    expect(payloads[first + 20]).toEqual(Buffer.alloc(160, 0xff)); // back to silence, clock keeps going
    // Real time: no frame, speech or silence, is sent before its place on the call's clock (a late timer sends
    // the frames it owes at once, so only this bound holds on a busy machine) ...
    frames.forEach((m, i) => expect(m.at - before, `frame ${i + 1}`).toBeGreaterThanOrEqual(i * 20 - 2));
    // ... and say() resolves with its last speech frame, not before.
    expect(result.endedAt).toBeGreaterThanOrEqual(before + (first + 19) * 20 - 2);
    expect(frames[first + 19].at).toBeGreaterThanOrEqual(result.endedAt - 2);
    // Chunks stay consecutive across speech and silence.
    frames.forEach((m, i) => expect(m.msg.media.chunk).toBe(String(i + 1)));
  });

  test("the caller's end of speech is the last frame with voice, not the quiet the engine appended", async () => {
    const bot = await fakeBot();
    const before = Date.now();
    const sim = await call(bot);
    const audio = new Uint8Array(600 * 8).fill(0xff); // 600 ms: voice for the first 200 ms, then quiet
    audio.fill(0x10, 0, 200 * 8);
    const result = await sim.say(audio);
    await sleep(50);
    const frames = bot.messages.filter((m) => m.msg.event === "media");
    const voiced = frames.map((m) => !Buffer.from(m.msg.media.payload, "base64").equals(Buffer.alloc(160, 0xff)));
    const first = voiced.indexOf(true);
    expect(voiced.lastIndexOf(true) - first).toBe(9); // 200 ms of voice
    // Sent with the last voiced frame: before the first quiet one arrived, and well before the say() ended (the
    // frames are sent on the call's clock, so 400 ms apart unless a stalled timer sent them together).
    expect(result.speechEndAt).toBeGreaterThanOrEqual(before + (first + 9) * 20 - 2); // not the first voiced frame
    expect(result.speechEndAt).toBeLessThanOrEqual(frames[first + 10].at);
    expect(result.endedAt).toBeGreaterThanOrEqual(before + (first + 29) * 20 - 2); // with the last frame, on the clock
    // A reply's latency counts from the end of speech.
    bot.sendAudio(100);
    const turn = await sim.waitForBotTurn({ timeoutMs: 3_000 });
    expect(turn.inputEndAt).toBe(result.speechEndAt);
  });

  test("pressKeys sends one dtmf event per key, spaced by the gap", async () => {
    const bot = await fakeBot();
    const sim = await call(bot);
    await sim.pressKeys("1#", 60);
    await bot.waitForMessage((m) => m.event === "dtmf" && m.dtmf.digit === "#");
    const dtmf = bot.messages.filter((m) => m.msg.event === "dtmf");
    expect(dtmf.map((m) => m.msg)).toEqual([
      { event: "dtmf", streamSid: sim.streamSid, sequenceNumber: expect.any(String), dtmf: { track: "inbound_track", digit: "1" } },
      { event: "dtmf", streamSid: sim.streamSid, sequenceNumber: expect.any(String), dtmf: { track: "inbound_track", digit: "#" } },
    ]);
    expect(dtmf[1].at - dtmf[0].at).toBeGreaterThanOrEqual(55);
    // sequenceNumber counts every message of the stream.
    const seqs = bot.messages.slice(1).map((m) => Number(m.msg.sequenceNumber));
    expect(seqs).toEqual(seqs.map((_, i) => i + 1));
    await expect(sim.pressKeys("1x")).rejects.toThrow(/not a keypad key/);
  });

  test("hangUp sends stop with the call's ids, then closes", async () => {
    const bot = await fakeBot();
    const sim = await call(bot);
    const ws = await bot.socket();
    const serverSawClose = new Promise<number>((r) => ws.once("close", (code) => r(code)));
    const info = await sim.hangUp();
    expect(info.by).toBe("caller");
    expect(await serverSawClose).toBe(1000);
    const stop = bot.messages.at(-1)!.msg;
    expect(stop).toEqual({
      event: "stop",
      sequenceNumber: expect.any(String),
      streamSid: sim.streamSid,
      stop: { accountSid: sim.accountSid, callSid: sim.callSid },
    });
    const count = bot.messages.length;
    await sleep(100);
    expect(bot.messages.length).toBe(count); // no media after stop
  });
});

describe("TwilioCallSimulator playout", () => {
  test("a mark is echoed only when the audio before it has played at real time", async () => {
    const bot = await fakeBot();
    const sim = await call(bot);
    const sentAt = Date.now();
    bot.sendAudio(1000);
    bot.sendMark("t1.0");
    const echo = await bot.waitForMessage((m) => m.event === "mark");
    expect(echo.msg).toEqual({ event: "mark", sequenceNumber: expect.any(String), streamSid: sim.streamSid, mark: { name: "t1.0" } });
    expect(echo.at - sentAt).toBeGreaterThanOrEqual(980);
    expect(echo.at - sentAt).toBeLessThan(1_150);
  });

  test("a mark with no audio before it is echoed at once", async () => {
    const bot = await fakeBot();
    await call(bot);
    const sentAt = Date.now();
    bot.sendMark("nothing-queued");
    const echo = await bot.waitForMessage((m) => m.event === "mark");
    expect(echo.at - sentAt).toBeLessThan(60);
  });

  test("clear empties the buffer and echoes all pending marks at once, in order", async () => {
    const bot = await fakeBot();
    const sim = await call(bot);
    bot.sendAudio(2000);
    bot.sendMark("t1.0");
    bot.sendAudio(1000);
    bot.sendMark("t1.1");
    await sleep(300);
    expect(bot.messages.some((m) => m.msg.event === "mark")).toBe(false);
    const clearedAt = Date.now();
    bot.sendClear();
    await bot.waitForMessage((m) => m.event === "mark" && m.mark.name === "t1.1");
    const marks = bot.messages.filter((m) => m.msg.event === "mark");
    expect(marks.map((m) => m.msg.mark.name)).toEqual(["t1.0", "t1.1"]);
    expect(marks[1].at - clearedAt).toBeLessThan(60);
    expect(sim.bufferedMs).toBe(0);
    const turn = await sim.waitForBotTurn({ timeoutMs: 2_000 });
    expect(turn.clearedMs).toBeGreaterThan(2_500);
    expect(turn.marks).toEqual(["t1.0", "t1.1"]);
  });
});

describe("TwilioCallSimulator turns", () => {
  test("waitForBotTurn returns each reply once it has played, with latency from the caller's last input", async () => {
    const bot = await fakeBot();
    const sim = await call(bot, { turnQuietMs: 300 });
    // Greeting: 400 ms in two parts, then a mark.
    bot.sendAudio(200, 0x20);
    bot.sendAudio(200, 0x21);
    bot.sendMark("t0.0");
    const greeting = await sim.waitForBotTurn({ timeoutMs: 3_000 });
    expect(greeting.index).toBe(0);
    expect(greeting.input).toBe("start");
    expect(greeting.audio.length).toBe(400 * 8);
    expect(greeting.marks).toEqual(["t0.0"]);
    // It ends only after playout (400 ms) plus the quiet time (300 ms).
    expect(Date.now() - greeting.firstAudioAt).toBeGreaterThanOrEqual(650);

    await sim.pressKeys("5");
    await sleep(150);
    bot.sendAudio(100, 0x30);
    const reply = await sim.waitForBotTurn({ timeoutMs: 3_000 });
    expect(reply.index).toBe(1);
    expect(reply.input).toBe("dtmf 5");
    expect(reply.latencyMs).toBeGreaterThanOrEqual(140);
    expect(reply.latencyMs).toBeLessThan(300);
    expect(reply.audio).toEqual(new Uint8Array(800).fill(0x30));
    expect(sim.botAudio().length).toBe(400 * 8 + 800);
  });

  test("no reply: waitForBotTurn times out with a clear message", async () => {
    const bot = await fakeBot();
    const sim = await call(bot);
    await expect(sim.waitForBotTurn({ timeoutMs: 200 })).rejects.toThrow(/no bot turn within 200 ms: no bot audio/);
  });

  test("the bot closing the socket resolves `closed` with its code and ends the playing turn", async () => {
    const bot = await fakeBot();
    const sim = await call(bot);
    const ws = await bot.socket();
    bot.sendAudio(100);
    await sleep(150);
    ws.close(1000, "goodbye");
    expect(await sim.closed).toBe(1000);
    expect(sim.closeDetails).toEqual({ code: 1000, reason: "goodbye", by: "server", unplayedMs: 0 });
    const turn = await sim.waitForBotTurn();
    expect(turn.endedByClose).toBe(true);
    await expect(sim.waitForBotTurn()).rejects.toThrow(/closed \(server, code 1000\)/);
    expect(bot.messages.some((m) => m.msg.event === "stop")).toBe(false);
  });

  test("messages real Twilio would reject are reported as protocol errors", async () => {
    const bot = await fakeBot();
    const sim = await call(bot);
    const ws = await bot.socket();
    ws.send(Buffer.from([1, 2, 3]));
    ws.send("not json");
    ws.send(JSON.stringify({ event: "media", streamSid: "MZwrong", media: { payload: "" } }));
    ws.send(JSON.stringify({ event: "media", streamSid: sim.streamSid, media: { payload: "%%%" } }));
    ws.send(JSON.stringify({ event: "dance", streamSid: sim.streamSid }));
    await sleep(100);
    expect(sim.protocolErrors).toEqual([
      expect.stringMatching(/binary frame/),
      expect.stringMatching(/not JSON/),
      expect.stringMatching(/streamSid "MZwrong"/),
      expect.stringMatching(/base64/),
      expect.stringMatching(/unknown event "dance"/),
    ]);
  });
});
