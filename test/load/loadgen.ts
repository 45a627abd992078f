// The load generator: N simulated Twilio calls in one process on one timer. Each call speaks Twilio's
// Media Streams protocol to ingress (connected, start, a media frame every 20 ms, dtmf, mark echoes, stop), plays
// the bot's audio out on its own clock (a mark is echoed once the audio before it has played, `clear` echoes them
// all) and runs the caller script: greeting, then "order status", the order number, 1, the number again, and around.
// Everything per frame is precomputed or built as plain strings: this process shares the cores it measures.
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import WebSocket, { type RawData } from "ws";
import { FRAME_MS } from "./audio.js";
import { callScript, type Step } from "./script.js";
import { Histogram } from "./stats.js";

/** Wall-clock ms with sub-ms resolution (comparable with Date.now() in the other processes). */
export const wallNow = (): number => performance.timeOrigin + performance.now();

export type TurnKind = "greeting" | "speech" | "keys" | "key";

/** One bot reply as the caller lived it. Times are wall-clock ms. */
export interface TurnSample {
  slot: number;
  callSid: string;
  kind: TurnKind;
  /** The caller's end of input: last speech frame sent, last key sent, or the stream's start. */
  inputEndAt: number;
  /** Speech: when the frame the asr's VAD hears as the last speech was sent (inputEndAt or one frame later). */
  speechEndAt: number;
  /**
   * When the pipeline had everything it needed: for speech the frame that completes the asr's endpoint silence
   * (inputEndAt + the silence window), otherwise inputEndAt.
   */
  baseAt: number;
  firstAudioAt: number;
  /** The caller's playout buffer ran dry in the middle of the reply (an audible gap). */
  underruns: number;
}

export interface LoadOptions {
  /** ws://host:port/twilio */
  url: string;
  calls: number;
  /** Calls are started evenly over this long. */
  rampMs: number;
  /** Mean call length: a call lasts 0.5-1.5x this, hangs up after a reply, and a new call takes its slot. 0 = until stop(). */
  callMs: number;
  /**
   * The asr's endpoint silence for the callers' speech (ASR_COMPLETE_SILENCE_MS for an expected answer, else
   * ASR_MIN_SILENCE_MS): the endpoint is complete this long after the last speech frame.
   */
  endpointSilenceMs: number;
  /**
   * The chunk whose arrival lets the asr's VAD decide `chunk` (itself for a frame-by-frame VAD; Silero decides a
   * frame with the 32 ms window holding its middle sample, which may end in the next frame).
   */
  decidedBy?: (chunk: number) => number;
  /** The last frame the asr's VAD hears as speech when `chunk` is the burst's last loud frame (itself for energy). */
  lastSpeech?: (chunk: number) => number;
  /**
   * Media starts this long after `start`, so that the asr (which claims the call on CallStarted) hears the stream
   * from chunk 1 and its VAD windows line up with the chunk numbers.
   */
  mediaDelayMs?: number;
  /** The spoken burst as base64 frames. */
  speech: string[];
  /** Per slot: its watermarked silence frames as base64 (one, or several with line noise, sent in turn). */
  silence: string[][];
  keyGapMs?: number;
  /** Pause after a reply has played before the caller acts: uniform in [min, max]. */
  thinkMs?: [number, number];
  /** A reply is over once its audio has played and nothing new came for this long. */
  quietMs?: number;
  replyTimeoutMs?: number;
  /**
   * The generator's timer period. Each call sends a frame when its own 20 ms media clock (from its connect time)
   * is due, so with a 5 ms tick the calls' frames are spread over the 20 ms as independent real calls are; with
   * 20 every call sends in the same tick, a burst every 20 ms that real traffic does not have.
   */
  tickMs?: number;
}

export interface LoadCounters {
  callsStarted: number;
  callsEnded: number;
  connectErrors: number;
  /** Streams the server closed while the caller was still on the line. */
  serverCloses: number;
  /** Inputs that got no reply within replyTimeoutMs. */
  noReply: number;
  /** Messages from ingress that real Twilio would reject or that make no sense at that point. */
  anomalies: number;
  /** Bot audio that arrived while the caller was still giving its input. */
  earlyAudio: number;
  marksEchoed: number;
  clears: number;
  /** Ingress's own "no turn ends in silence" line played (its marks are named nosilence-...): a reply came too late. */
  fallbackLines: number;
  framesSent: number;
  mediaReceived: number;
}

const zeroMask = (mask: Buffer): void => void mask.fill(0);
const MEDIA_HEAD = Buffer.from('{"event":"media"');
const PAYLOAD_KEY = Buffer.from('"payload":"');
const EQUALS = 0x3d;
const QUOTE = 0x22;

export class LoadGenerator {
  readonly turns: TurnSample[] = [];
  /** Gaps between consecutive bot media messages of a reply, at the caller (measurement window only). */
  readonly gaps = new Histogram();
  /** How late the generator's own tick ran (if this grows, the generator itself is the bottleneck). */
  readonly tickLag = new Histogram();
  readonly counters: LoadCounters = {
    callsStarted: 0,
    callsEnded: 0,
    connectErrors: 0,
    serverCloses: 0,
    noReply: 0,
    anomalies: 0,
    earlyAudio: 0,
    marksEchoed: 0,
    clears: 0,
    fallbackLines: 0,
    framesSent: 0,
    mediaReceived: 0,
  };
  /** Every call sid used, with its slot (for the end-of-run checks). */
  readonly callSids: string[] = [];
  /** Live calls per tick during the window: min and sum (for the mean). */
  held = { min: Infinity, sum: 0, ticks: 0 };
  readonly anomalyExamples: string[] = [];

  readonly options: Required<LoadOptions>;
  private readonly live = new Set<SimCall>();
  private readonly slots: Array<{ call?: SimCall; startAt: number }>;
  private readonly startedAt = performance.now();
  private nextTickAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;
  private window = { start: Infinity, end: Infinity };

  constructor(options: LoadOptions) {
    this.options = { keyGapMs: 150, thinkMs: [300, 1500], quietMs: 300, replyTimeoutMs: 15_000, decidedBy: (chunk) => chunk, lastSpeech: (chunk) => chunk, mediaDelayMs: 1_000, tickMs: 5, ...options };
    const { calls, rampMs } = this.options;
    this.slots = Array.from({ length: calls }, (_, i) => ({ startAt: this.startedAt + (rampMs * i) / Math.max(1, calls) }));
  }

  /** Only turns whose input ended, and gaps that happened, inside [start, end) (performance.now() ms) are kept. */
  setWindow(start: number, end: number): void {
    this.window = { start, end };
  }

  inWindow(now: number): boolean {
    return now >= this.window.start && now < this.window.end;
  }

  get liveCalls(): number {
    return this.live.size;
  }

  start(): void {
    this.nextTickAt = performance.now();
    this.tick();
  }

  /** Every caller hangs up; resolves once every stream is closed (or after timeoutMs). */
  async stop(timeoutMs = 15_000): Promise<void> {
    this.stopping = true;
    // Every slot's call, also one still dialing: not live yet, it would otherwise connect after this and stay up.
    const calls = () => this.slots.flatMap((slot) => (slot.call ? [slot.call] : []));
    for (const call of calls()) call.hangUp();
    const deadline = performance.now() + timeoutMs;
    while (calls().length > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const call of calls()) call.terminate();
    clearTimeout(this.timer);
  }

  anomaly(what: string): void {
    this.counters.anomalies++;
    if (this.anomalyExamples.length < 10) this.anomalyExamples.push(what);
  }

  /** A call is over (hung up, closed or failed): its slot gets a new call after a short pause. */
  ended(call: SimCall, pauseMs: number, wasLive: boolean): void {
    this.live.delete(call);
    if (wasLive) this.counters.callsEnded++;
    const slot = this.slots[call.slot];
    if (slot.call === call) {
      slot.call = undefined;
      slot.startAt = performance.now() + pauseMs;
    }
  }

  private tick = (): void => {
    const now = performance.now();
    if (this.inWindow(now)) {
      this.tickLag.add(now - this.nextTickAt);
      const live = this.live.size;
      this.held.min = Math.min(this.held.min, live);
      this.held.sum += live;
      this.held.ticks++;
    }
    if (!this.stopping) {
      for (let i = 0; i < this.slots.length; i++) {
        const slot = this.slots[i];
        if (!slot.call && now >= slot.startAt) {
          slot.call = new SimCall(this, i);
          slot.startAt = Infinity;
        }
      }
    }
    for (const call of this.live) call.onTick(now);
    const { tickMs } = this.options;
    this.nextTickAt += tickMs;
    // Behind by more than a few frames: the media clocks catch up by themselves; keep the timer on a fresh grid.
    if (this.nextTickAt < now - 5 * FRAME_MS) this.nextTickAt = now + tickMs;
    this.timer = setTimeout(this.tick, Math.max(0, this.nextTickAt - performance.now()));
  };

  register(call: SimCall): void {
    this.live.add(call);
    this.callSids.push(call.callSid);
    this.counters.callsStarted++;
  }
}

interface OpenTurn {
  kind: TurnSample["kind"];
  inputEndAt?: number;
  speechEndAt?: number;
  baseAt?: number;
  /** performance.now() of baseAt, for the reply timeout. */
  basePerf?: number;
  firstAudioAt?: number;
  underruns: number;
}

type Phase = "connecting" | "turn" | "thinking" | "ended";

class SimCall {
  readonly callSid = `CA${randomBytes(16).toString("hex")}`;
  private readonly streamSid = `MZ${randomBytes(16).toString("hex")}`;
  private readonly accountSid = `AC${randomBytes(16).toString("hex")}`;
  private readonly ws: WebSocket;
  private readonly script: Step[];
  private readonly silence: string[];
  private readonly endAt: number;
  private phase: Phase = "connecting";
  private seq = 0;
  private clockStart = 0;
  private framesSent = 0;
  /** The speech being sent (index of the next frame), and the chunk that completes its endpoint. */
  private burstPos = -1;
  private endpointChunk = 0;
  private keys: Array<{ digit: string; at: number }> = [];
  private step = 0;
  private turn: OpenTurn | undefined;
  private nextActionAt = 0;
  /** performance.now() at which everything received so far has played at the caller. */
  private playedUntil = 0;
  private readonly marks: Array<{ name: string; due: number }> = [];
  private lastMediaAt = 0;
  private hangingUp = false;

  constructor(
    private readonly gen: LoadGenerator,
    readonly slot: number,
  ) {
    const { options } = gen;
    this.script = callScript(slot);
    // Half the callers start with the key press instead of speech (both work from the menu), so calls that
    // started together do not keep hitting the same stage at the same moment.
    this.step = Math.random() < 0.5 ? 0 : 2;
    this.silence = options.silence[slot];
    this.endAt = options.callMs > 0 ? performance.now() + options.callMs * (0.5 + Math.random()) : Infinity;
    // A zero masking key makes ws skip masking (a real client masks with random keys; the server unmasks either way).
    this.ws = new WebSocket(options.url, { perMessageDeflate: false, skipUTF8Validation: true, generateMask: zeroMask });
    this.ws.on("open", () => this.onOpen());
    this.ws.on("message", (data, isBinary) => this.onMessage(data, isBinary));
    this.ws.on("error", (error) => {
      if (this.hangingUp) return; // hung up while still dialing: the aborted handshake is ours
      if (this.phase === "connecting") {
        gen.counters.connectErrors++;
        gen.anomaly(`connect: ${error.message}`);
      } else if (this.phase !== "ended") {
        gen.anomaly(`socket error on call ${this.callSid}: ${error.message}`);
      }
    });
    this.ws.on("close", (code) => this.onClose(code));
  }

  hangUp(): void {
    if (this.hangingUp || this.phase === "ended") return;
    this.hangingUp = true;
    if (this.ws.readyState === WebSocket.OPEN) {
      this.send(`{"event":"stop","sequenceNumber":"${++this.seq}","streamSid":"${this.streamSid}","stop":{"accountSid":"${this.accountSid}","callSid":"${this.callSid}"}}`);
      this.ws.close(1000, "caller hung up");
    } else {
      this.ws.terminate();
    }
  }

  terminate(): void {
    this.ws.terminate();
  }

  private onOpen(): void {
    this.gen.register(this);
    this.send(`{"event":"connected","protocol":"Call","version":"1.0.0"}`);
    this.send(
      JSON.stringify({
        event: "start",
        sequenceNumber: String(++this.seq),
        start: {
          accountSid: this.accountSid,
          streamSid: this.streamSid,
          callSid: this.callSid,
          tracks: ["inbound"],
          customParameters: {},
          mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
        },
        streamSid: this.streamSid,
      }),
    );
    const now = performance.now();
    this.clockStart = now + this.gen.options.mediaDelayMs;
    const at = wallNow();
    this.turn = { kind: "greeting", inputEndAt: at, baseAt: at, basePerf: now, underruns: 0 };
    this.phase = "turn";
  }

  private onClose(code: number): void {
    if (this.phase === "ended") return;
    const wasConnected = this.phase !== "connecting";
    this.phase = "ended";
    if (wasConnected && !this.hangingUp) {
      this.gen.counters.serverCloses++;
      this.gen.anomaly(`stream closed by the server (${code}) on call ${this.callSid}`);
    }
    // A call that never connected was never live, but its slot still needs a new attempt.
    this.gen.ended(this, wasConnected && this.hangingUp ? 200 + Math.random() * 800 : 1_000, wasConnected);
  }

  onTick(now: number): void {
    if (this.phase === "connecting" || this.phase === "ended" || this.hangingUp) return;
    this.sendDueFrames(now);
    while (this.marks.length > 0 && this.marks[0].due <= now) this.echoMark(this.marks.shift()!.name);
    this.sendDueKeys(now);

    if (this.phase === "turn") {
      const turn = this.turn!;
      if (turn.firstAudioAt === undefined) {
        if (turn.basePerf !== undefined && now - turn.basePerf > this.gen.options.replyTimeoutMs) {
          this.gen.counters.noReply++;
          this.gen.anomaly(`no reply to ${turn.kind} within ${this.gen.options.replyTimeoutMs} ms on call ${this.callSid}`);
          this.replyDone(now, false);
        }
      } else if (now >= this.playedUntil && this.marks.length === 0 && now - this.lastMediaAt >= this.gen.options.quietMs) {
        this.replyDone(now, true);
      }
    } else if (this.phase === "thinking" && now >= this.nextActionAt) {
      this.nextInput(now);
    }
  }

  private replyDone(now: number, answered: boolean): void {
    const turn = this.turn!;
    if (answered && turn.basePerf !== undefined && this.gen.inWindow(turn.basePerf)) {
      this.gen.turns.push({
        slot: this.slot,
        callSid: this.callSid,
        kind: turn.kind,
        inputEndAt: turn.inputEndAt!,
        speechEndAt: turn.speechEndAt ?? turn.inputEndAt!,
        baseAt: turn.baseAt!,
        firstAudioAt: turn.firstAudioAt!,
        underruns: turn.underruns,
      });
    }
    this.turn = undefined;
    if (now >= this.endAt) {
      this.hangUp();
      return;
    }
    const [min, max] = this.gen.options.thinkMs;
    this.phase = "thinking";
    this.nextActionAt = now + min + Math.random() * (max - min);
  }

  private nextInput(now: number): void {
    const step = this.script[this.step++ % this.script.length];
    this.turn = { kind: step.kind, underruns: 0 };
    this.phase = "turn";
    if (step.kind === "speech") {
      this.burstPos = 0; // goes out with the next frames
    } else {
      const gap = this.gen.options.keyGapMs;
      this.keys = [...step.digits!].map((digit, i) => ({ digit, at: now + i * gap }));
      this.sendDueKeys(now);
    }
  }

  /** The media clock: every frame due since the stream started (catching up if this process ran late). */
  private sendDueFrames(now: number): void {
    const due = Math.floor((now - this.clockStart) / FRAME_MS) + 1;
    const { speech } = this.gen.options;
    while (this.framesSent < due) {
      const chunk = this.framesSent + 1;
      let payload = this.silence[chunk % this.silence.length];
      if (this.burstPos >= 0) {
        payload = speech[this.burstPos++];
        if (this.burstPos === speech.length) {
          this.burstPos = -1;
          const { decidedBy, lastSpeech, endpointSilenceMs } = this.gen.options;
          this.turn!.inputEndAt = wallNow();
          this.turn!.speechEndAt = this.turn!.inputEndAt + (lastSpeech(chunk) - chunk) * FRAME_MS;
          this.endpointChunk = decidedBy(lastSpeech(chunk) + Math.ceil(endpointSilenceMs / FRAME_MS));
        }
      }
      this.send(
        `{"event":"media","sequenceNumber":"${++this.seq}","streamSid":"${this.streamSid}","media":{"track":"inbound","chunk":"${chunk}","timestamp":"${(chunk - 1) * FRAME_MS}","payload":"${payload}"}}`,
      );
      this.framesSent = chunk;
      this.gen.counters.framesSent++;
      if (chunk === this.endpointChunk) {
        // The asr now has all the audio it needs to end the utterance: from here on it is pipeline work.
        this.endpointChunk = 0;
        this.turn!.baseAt = wallNow();
        this.turn!.basePerf = performance.now();
      }
    }
  }

  private sendDueKeys(now: number): void {
    while (this.keys.length > 0 && this.keys[0].at <= now) {
      const { digit } = this.keys.shift()!;
      this.send(`{"event":"dtmf","streamSid":"${this.streamSid}","sequenceNumber":"${++this.seq}","dtmf":{"track":"inbound_track","digit":"${digit}"}}`);
      if (this.keys.length === 0) {
        const at = wallNow();
        this.turn!.inputEndAt = at;
        this.turn!.baseAt = at;
        this.turn!.basePerf = performance.now();
      }
    }
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (isBinary || !Buffer.isBuffer(data)) {
      this.gen.anomaly("binary or fragmented frame from ingress");
      return;
    }
    const now = performance.now();
    if (data.length > 40 && data.compare(MEDIA_HEAD, 0, MEDIA_HEAD.length, 0, MEDIA_HEAD.length) === 0) {
      const key = data.indexOf(PAYLOAD_KEY, MEDIA_HEAD.length);
      const end = key < 0 ? -1 : data.indexOf(QUOTE, key + PAYLOAD_KEY.length);
      const length = end - (key + PAYLOAD_KEY.length);
      if (key < 0 || end < 0 || length <= 0 || length % 4 !== 0) {
        this.gen.anomaly("media without a base64 payload");
        return;
      }
      const padding = (data[end - 1] === EQUALS ? 1 : 0) + (data[end - 2] === EQUALS ? 1 : 0);
      this.onBotAudio((length / 4) * 3 - padding, now);
      return;
    }
    let message: { event?: string; streamSid?: string; mark?: { name?: string } };
    try {
      message = JSON.parse(data.toString("utf8"));
    } catch {
      this.gen.anomaly(`not JSON: ${data.toString("utf8").slice(0, 60)}`);
      return;
    }
    if (message.streamSid !== this.streamSid) {
      this.gen.anomaly(`${message.event} for stream ${message.streamSid}`);
      return;
    }
    if (message.event === "mark" && typeof message.mark?.name === "string" && message.mark.name) {
      if (message.mark.name.startsWith("nosilence-")) {
        this.gen.counters.fallbackLines++;
        this.gen.anomaly(`ingress played its fallback line on call ${this.callSid} (turn ${this.turn?.kind ?? "none"})`);
      }
      // Echoed once everything sent before it has played.
      if (now >= this.playedUntil) this.echoMark(message.mark.name);
      else this.marks.push({ name: message.mark.name, due: this.playedUntil });
    } else if (message.event === "clear") {
      this.gen.counters.clears++;
      this.playedUntil = now;
      for (const mark of this.marks.splice(0)) this.echoMark(mark.name);
    } else {
      this.gen.anomaly(`unexpected ${message.event}`);
    }
  }

  private onBotAudio(bytes: number, now: number): void {
    const gen = this.gen;
    gen.counters.mediaReceived++;
    if (bytes <= 0 || bytes % 160 !== 0) gen.anomaly(`media of ${bytes} bytes (not whole 20 ms frames)`);
    const turn = this.turn;
    if (!turn || turn.baseAt === undefined) {
      gen.counters.earlyAudio++;
    } else if (turn.firstAudioAt === undefined) {
      turn.firstAudioAt = wallNow();
    } else {
      if (gen.inWindow(now)) gen.gaps.add(now - this.lastMediaAt);
      if (this.playedUntil < now) turn.underruns++;
    }
    this.playedUntil = Math.max(this.playedUntil, now) + (bytes / 160) * FRAME_MS;
    this.lastMediaAt = now;
  }

  private echoMark(name: string): void {
    this.gen.counters.marksEchoed++;
    this.send(`{"event":"mark","sequenceNumber":"${++this.seq}","streamSid":"${this.streamSid}","mark":{"name":${JSON.stringify(name)}}}`);
  }

  private send(text: string): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }
}
