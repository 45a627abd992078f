import { randomBytes } from "node:crypto";
import { mulawDecode, mulawEncode, mulawFrameEnergy } from "@voicebot/audio";
import WebSocket from "ws";
import { BYTES_PER_MS, PlayoutBuffer } from "./playout.js";

/** Twilio sends 20 ms of 8 kHz μ-law per media message. */
export const FRAME_MS = 20;
export const FRAME_BYTES = FRAME_MS * BYTES_PER_MS;
const SILENCE = 0xff;
/** A frame louder than this holds speech (the level a telephone VAD treats as voice, not line noise). */
const SPEECH_DBFS = -50;

export interface SimulatorOptions {
  /** ws://host:port/twilio */
  url: string;
  /** `<Parameter>` values from the TwiML, sent in `start.customParameters`. */
  customParameters?: Record<string, string>;
  /** Fixed ids (default: random, in Twilio's formats). */
  callSid?: string;
  streamSid?: string;
  accountSid?: string;
  /** Silence after the bot's audio has played that ends a bot turn (default 700 ms). */
  turnQuietMs?: number;
  /** Extra headers on the WebSocket upgrade request (e.g. X-Twilio-Signature). */
  headers?: Record<string, string>;
  /**
   * A phone line's hiss under everything the caller sends, speech and pauses: white (Gaussian) noise at this RMS
   * level in dBFS (e.g. -65 for a quiet line). Default none: pauses are digital silence.
   */
  lineNoiseDbfs?: number;
  /**
   * What Twilio does when the server closes the stream without the caller hanging up: it runs the TwiML after
   * `<Connect>`. Return the next stream to open (a `<Redirect>` to TwiML that connects a new one; see
   * dialThroughWebhook), or undefined for the call to end there. Default: the call ends.
   */
  resume?: (closed: CloseInfo) => Promise<ResumeTarget | undefined>;
}

/** A new stream of the same call: its URL and custom parameters (from the TwiML). */
export interface ResumeTarget {
  url: string;
  customParameters: Record<string, string>;
  headers?: Record<string, string>;
}

const clamp16 = (x: number) => Math.max(-32768, Math.min(32767, Math.round(x)));

/** `samples` of Gaussian white noise at `dbfs` RMS, as 16-bit PCM. */
export function lineNoise(samples: number, dbfs: number): Int16Array {
  const rms = 32768 * 10 ** (dbfs / 20);
  const out = new Int16Array(samples);
  for (let i = 0; i < samples; i++) out[i] = clamp16(rms * Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random()));
  return out;
}

/** μ-law audio with the line's noise added. */
function withNoise(mulaw: Uint8Array, dbfs: number): Uint8Array {
  const pcm = mulawDecode(mulaw);
  const noise = lineNoise(pcm.length, dbfs);
  const mixed = new Int16Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) mixed[i] = clamp16(pcm[i] + noise[i]);
  return mulawEncode(mixed);
}

export interface SimEvent {
  /** Wall-clock ms. */
  at: number;
  dir: "sent" | "received" | "local";
  type: string;
  detail?: unknown;
}

export interface BotTurn {
  /** 0 = the greeting. */
  index: number;
  /** The bot's μ-law audio for this turn, as received. */
  audio: Uint8Array;
  /** Wall-clock ms of the first audio frame received. */
  firstAudioAt: number;
  lastAudioAt: number;
  /** The caller's end of input this turn answers (last speech frame sent, last key press, or the stream start). */
  inputEndAt: number;
  /** What that input was ("start", "dtmf 12345#", "speech 1.24 s"). */
  input: string;
  /** inputEndAt → first bot audio frame received, ms. */
  latencyMs: number;
  /** Marks echoed while this turn played. */
  marks: string[];
  /** Audio the bot cleared (barge-in) during this turn, ms. */
  clearedMs: number;
  /** The turn ended because the socket closed. */
  endedByClose: boolean;
}

export interface SayResult {
  startedAt: number;
  /** When the last frame holding speech (above -50 dBFS) was sent: the caller's end of speech. */
  speechEndAt: number;
  /** When the last frame of the audio (trailing quiet included) was sent. */
  endedAt: number;
}

export interface CloseInfo {
  code: number;
  reason: string;
  by: "server" | "caller";
  /** Bot audio still queued, unheard, when the socket closed (0 when everything sent had played). */
  unplayedMs: number;
}

interface SpeechItem {
  bytes: Uint8Array;
  offset: number;
  startedAt?: number;
  /** Byte offset of the end of the last frame holding speech. */
  speechEndOffset: number;
  speechEndAt?: number;
  resolve(result: SayResult): void;
  reject(error: Error): void;
}

interface TurnWaiter {
  resolve(turn: BotTurn): void;
  reject(error: Error): void;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function twilioId(prefix: string): string {
  return prefix + randomBytes(16).toString("hex");
}

const DTMF_DIGIT = /^[0-9*#]$/;

/**
 * A caller on a Twilio bidirectional Media Stream: speaks Twilio's exact wire protocol to a bot's `/twilio`
 * WebSocket, with a continuous 20 ms media clock and a real-time playout buffer for the bot's audio (marks are
 * echoed only once the audio before them has played; `clear` echoes them all at once).
 */
export class TwilioCallSimulator {
  readonly callSid: string;
  /** The current stream's id (a resumed call gets a new one, as from Twilio). */
  streamSid: string;
  /** Streams opened after the first one (the call resumed after the server closed one), once each is open. */
  resumes = 0;
  readonly accountSid: string;
  readonly events: SimEvent[] = [];
  /** Anything the bot sent that real Twilio would reject or ignore. */
  readonly protocolErrors: string[] = [];
  /** Every completed bot turn, in order (also those already returned by waitForBotTurn). */
  readonly turns: BotTurn[] = [];
  /** Resolves with the close code when the socket closes (`closeDetails.by` says who closed it). */
  readonly closed: Promise<number>;

  private readonly options: SimulatorOptions;
  private readonly quietMs: number;
  private ws: WebSocket | undefined;
  private seq = 0;
  private mediaStartAt = 0;
  private framesSent = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly speech: SpeechItem[] = [];
  private playout: PlayoutBuffer;
  private readonly received: Uint8Array[] = [];
  private current: Omit<BotTurn, "audio" | "endedByClose"> & { chunks: Uint8Array[] } | undefined;
  private readonly unclaimed: BotTurn[] = [];
  private readonly waiters: TurnWaiter[] = [];
  private lastInput = { at: 0, what: "start" };
  private closeInfo: CloseInfo | undefined;
  private hangingUp = false;
  private resolveClosed!: (code: number) => void;

  constructor(options: SimulatorOptions) {
    this.options = options;
    this.quietMs = options.turnQuietMs ?? 700;
    this.callSid = options.callSid ?? twilioId("CA");
    this.streamSid = options.streamSid ?? twilioId("MZ");
    this.accountSid = options.accountSid ?? twilioId("AC");
    this.playout = new PlayoutBuffer((name) => this.echoMark(name));
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /** True once the stream is open (it stays true after it closes). */
  get isConnected(): boolean {
    return this.ws !== undefined;
  }

  /** True once the socket has closed. */
  get isClosed(): boolean {
    return this.closeInfo !== undefined;
  }

  get closeDetails(): CloseInfo | undefined {
    return this.closeInfo;
  }

  /** Audio queued at the caller's side that has not played yet, ms. */
  get bufferedMs(): number {
    return this.playout.bufferedMs;
  }

  /** Opens the stream: `connected`, `start`, then media every 20 ms until the call ends. */
  async connect(): Promise<void> {
    if (this.ws) throw new Error("already connected");
    await this.open({ url: this.options.url, customParameters: this.options.customParameters ?? {}, headers: this.options.headers });
  }

  private async open(target: ResumeTarget): Promise<void> {
    const ws = new WebSocket(target.url, { headers: target.headers, perMessageDeflate: false });
    this.ws = ws;
    await new Promise<void>((resolve, reject) => {
      // Kept on until the socket is given up: aborting a handshake (terminate() while connecting) emits one more
      // error, which must not become an uncaught exception. Rejecting a settled promise again is harmless.
      const onError = (error: Error) => reject(new Error(`cannot connect to ${target.url}: ${error.message}`));
      ws.on("error", onError);
      ws.once("unexpected-response", (_req, res) => reject(new Error(`cannot connect to ${target.url}: HTTP ${res.statusCode}`)));
      ws.once("open", () => {
        ws.off("error", onError);
        resolve();
      });
    }).catch((error: Error) => {
      this.ws = undefined;
      ws.terminate();
      throw error;
    });
    ws.on("error", (error) => this.log("local", "socket-error", error.message));
    ws.on("message", (data, isBinary) => this.onMessage(data as Buffer, isBinary));
    ws.on("close", (code, reason) => this.onClose(code, reason.toString()));

    this.send({ event: "connected", protocol: "Call", version: "1.0.0" });
    this.send({
      event: "start",
      sequenceNumber: this.nextSeq(),
      start: {
        accountSid: this.accountSid,
        streamSid: this.streamSid,
        callSid: this.callSid,
        tracks: ["inbound"],
        customParameters: target.customParameters,
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
      },
      streamSid: this.streamSid,
    });
    this.mediaStartAt = Date.now();
    this.lastInput = { at: this.mediaStartAt, what: "start" };
    this.tick();
  }

  /**
   * Speaks: the audio goes out through the continuous media clock at real time (8 kHz PCM is μ-law encoded).
   * Resolves when the last frame holding it has been sent; the caller's end of speech is when the last frame
   * with voice in it went out (trailing quiet the engine added does not count).
   */
  say(audio: Int16Array | Uint8Array): Promise<SayResult> {
    if (!this.ws || this.closeInfo) return Promise.reject(new Error("call is not connected"));
    const mulaw = audio instanceof Int16Array ? mulawEncode(audio) : audio;
    // Whole frames only, so one frame never mixes two utterances.
    const padded = new Uint8Array(Math.ceil(mulaw.length / FRAME_BYTES) * FRAME_BYTES).fill(SILENCE);
    padded.set(mulaw);
    // Engines pad speech with quiet: the caller's speech ends with the last frame that holds voice.
    let speechEndOffset = padded.length;
    while (speechEndOffset > FRAME_BYTES && mulawFrameEnergy(padded.subarray(speechEndOffset - FRAME_BYTES, speechEndOffset)) < SPEECH_DBFS) {
      speechEndOffset -= FRAME_BYTES;
    }
    const noiseDbfs = this.options.lineNoiseDbfs;
    return new Promise((resolve, reject) => {
      this.speech.push({
        bytes: noiseDbfs === undefined ? padded : withNoise(padded, noiseDbfs),
        offset: 0,
        speechEndOffset,
        resolve: (result) => {
          this.lastInput = { at: result.speechEndAt, what: `speech ${(mulaw.length / 8000).toFixed(2)} s` };
          resolve(result);
        },
        reject,
      });
    });
  }

  /** Presses keys one `dtmf` event at a time, `gapMs` apart; the last press is the caller's end of input. */
  async pressKeys(digits: string, gapMs = 150): Promise<void> {
    for (const digit of digits) {
      if (!DTMF_DIGIT.test(digit)) throw new Error(`not a keypad key: ${JSON.stringify(digit)}`);
    }
    for (let i = 0; i < digits.length; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, gapMs));
      if (!this.ws || this.closeInfo) throw new Error("call is not connected");
      this.send({
        event: "dtmf",
        streamSid: this.streamSid,
        sequenceNumber: this.nextSeq(),
        dtmf: { track: "inbound_track", digit: digits[i] },
      });
      this.lastInput = { at: Date.now(), what: `dtmf ${digits}` };
    }
  }

  /**
   * Waits for the bot's next reply: its audio started, the playout buffer drained and no new audio came for the
   * quiet time (or the socket closed). Turns are returned in order, each once.
   */
  waitForBotTurn({ timeoutMs = 20_000 }: { timeoutMs?: number } = {}): Promise<BotTurn> {
    const ready = this.unclaimed.shift();
    if (ready) return Promise.resolve(ready);
    if (this.closeInfo) return Promise.reject(new Error(`the call closed (${this.closeInfo.by}, code ${this.closeInfo.code}) before the bot spoke again`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const index = this.waiters.indexOf(waiter);
        if (index >= 0) this.waiters.splice(index, 1);
        const state = this.current
          ? `a reply is still playing (${(this.current.chunks.reduce((n, c) => n + c.length, 0) / 8000).toFixed(1)} s received, ${this.playout.bufferedMs.toFixed(0)} ms buffered)`
          : `no bot audio since the last turn (last input: ${this.lastInput.what})`;
        reject(new Error(`no bot turn within ${timeoutMs} ms: ${state}`));
      }, timeoutMs);
      const waiter: TurnWaiter = {
        resolve: (turn) => {
          clearTimeout(timer);
          resolve(turn);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      this.waiters.push(waiter);
    });
  }

  /** The caller hangs up: `stop`, then the socket closes. Resolves once closed. */
  async hangUp(): Promise<CloseInfo> {
    if (!this.ws) throw new Error("not connected");
    // A socket the bot is already closing just finishes closing: that hang-up was the bot's.
    if (!this.closeInfo && this.ws.readyState === WebSocket.OPEN) {
      this.hangingUp = true;
      this.stopClock();
      this.send({
        event: "stop",
        sequenceNumber: this.nextSeq(),
        streamSid: this.streamSid,
        stop: { accountSid: this.accountSid, callSid: this.callSid },
      });
      this.ws.close(1000, "caller hung up");
    }
    const force = setTimeout(() => this.ws?.terminate(), 3_000);
    await this.closed;
    clearTimeout(force);
    return this.closeInfo!;
  }

  /** Every byte of bot audio received so far (μ-law 8 kHz). */
  botAudio(): Uint8Array {
    return concat(this.received);
  }

  // ---- internals ----

  private nextSeq(): string {
    this.seq += 1;
    return String(this.seq);
  }

  private send(message: Record<string, unknown>): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(JSON.stringify(message));
    if (message.event !== "media") this.log("sent", String(message.event), message);
  }

  private log(dir: SimEvent["dir"], type: string, detail?: unknown): void {
    this.events.push({ at: Date.now(), dir, type, detail });
  }

  /** The media clock: sends every frame due since the stream started (catching up after a late timer). */
  private tick(): void {
    this.timer = undefined;
    if (this.closeInfo || this.hangingUp) return;
    const now = Date.now();
    const due = Math.floor((now - this.mediaStartAt) / FRAME_MS) + 1;
    while (this.framesSent < due) this.sendFrame(now);
    this.playout.advance(now);
    this.checkTurnDone(now);
    const next = this.mediaStartAt + this.framesSent * FRAME_MS;
    this.timer = setTimeout(() => this.tick(), Math.max(0, next - Date.now()));
  }

  private sendFrame(now: number): void {
    let payload: Uint8Array;
    const item = this.speech[0];
    if (item) {
      if (item.offset === 0) {
        item.startedAt = now;
        this.log("local", "speech-start", { bytes: item.bytes.length });
      }
      payload = item.bytes.subarray(item.offset, item.offset + FRAME_BYTES);
      item.offset += FRAME_BYTES;
      if (item.offset === item.speechEndOffset) item.speechEndAt = now;
      if (item.offset >= item.bytes.length) {
        this.speech.shift();
        this.log("local", "speech-end");
        item.resolve({ startedAt: item.startedAt ?? now, speechEndAt: item.speechEndAt ?? now, endedAt: now });
      }
    } else {
      const noiseDbfs = this.options.lineNoiseDbfs;
      payload = noiseDbfs === undefined ? new Uint8Array(FRAME_BYTES).fill(SILENCE) : mulawEncode(lineNoise(FRAME_BYTES, noiseDbfs));
    }
    const chunk = this.framesSent + 1;
    this.send({
      event: "media",
      sequenceNumber: this.nextSeq(),
      streamSid: this.streamSid,
      media: {
        track: "inbound",
        chunk: String(chunk),
        timestamp: String(this.framesSent * FRAME_MS),
        payload: Buffer.from(payload).toString("base64"),
      },
    });
    this.framesSent = chunk;
  }

  private stopClock(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    const now = Date.now();
    if (isBinary) {
      this.protocolError("binary frame (Twilio accepts JSON text frames only)");
      return;
    }
    let message: { event?: unknown; streamSid?: unknown; media?: { payload?: unknown }; mark?: { name?: unknown } };
    try {
      message = JSON.parse(data.toString("utf8"));
    } catch {
      this.protocolError(`not JSON: ${data.toString("utf8").slice(0, 80)}`);
      return;
    }
    if (message.streamSid !== this.streamSid) {
      this.protocolError(`${String(message.event)} with streamSid ${JSON.stringify(message.streamSid)} (expected ${this.streamSid})`);
      return;
    }
    switch (message.event) {
      case "media": {
        const payload = message.media?.payload;
        if (typeof payload !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(payload) || payload.length % 4 !== 0) {
          this.protocolError("media without a valid base64 payload");
          return;
        }
        this.onBotAudio(new Uint8Array(Buffer.from(payload, "base64")), now);
        return;
      }
      case "mark": {
        const name = message.mark?.name;
        if (typeof name !== "string" || name === "") {
          this.protocolError("mark without a name");
          return;
        }
        this.log("received", "mark", name);
        this.playout.pushMark(name, now);
        return;
      }
      case "clear": {
        const droppedMs = this.playout.clear(now);
        this.log("received", "clear", { droppedMs });
        if (this.current) this.current.clearedMs += droppedMs;
        return;
      }
      default:
        this.protocolError(`unknown event ${JSON.stringify(message.event)}`);
    }
  }

  private onBotAudio(bytes: Uint8Array, now: number): void {
    if (bytes.length === 0) return;
    this.received.push(bytes);
    if (!this.current) {
      this.current = {
        index: this.turns.length,
        chunks: [],
        firstAudioAt: now,
        lastAudioAt: now,
        inputEndAt: this.lastInput.at,
        input: this.lastInput.what,
        latencyMs: now - this.lastInput.at,
        marks: [],
        clearedMs: 0,
      };
      this.log("received", "audio-start", { turn: this.current.index, latencyMs: this.current.latencyMs });
    }
    this.current.chunks.push(bytes);
    this.current.lastAudioAt = now;
    this.playout.pushAudio(bytes, now);
  }

  private echoMark(name: string): void {
    this.current?.marks.push(name);
    this.send({ event: "mark", sequenceNumber: this.nextSeq(), streamSid: this.streamSid, mark: { name } });
  }

  private checkTurnDone(now: number): void {
    // The caller has heard all of it, and then silence for the quiet time.
    if (!this.current || !this.playout.idle) return;
    if (now - Math.max(this.current.lastAudioAt, this.playout.drainedAt) < this.quietMs) return;
    this.finishTurn(false);
  }

  private finishTurn(endedByClose: boolean): void {
    const { chunks, ...rest } = this.current!;
    this.current = undefined;
    const turn: BotTurn = { ...rest, audio: concat(chunks), endedByClose };
    this.turns.push(turn);
    this.log("local", "bot-turn", { index: turn.index, ms: turn.audio.length / BYTES_PER_MS, latencyMs: turn.latencyMs });
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(turn);
    else this.unclaimed.push(turn);
  }

  private protocolError(text: string): void {
    this.protocolErrors.push(text);
    this.log("received", "protocol-error", text);
  }

  private onClose(code: number, reason: string): void {
    this.stopClock();
    const now = Date.now();
    this.playout.advance(now);
    const info: CloseInfo = { code, reason, by: this.hangingUp ? "caller" : "server", unplayedMs: this.playout.bufferedMs };
    if (info.by === "server" && this.options.resume) {
      // Twilio drops what it had not played and runs the TwiML after <Connect>.
      this.log("local", "stream-closed", info);
      if (this.current) this.finishTurn(true);
      void this.followTwiml(info);
      return;
    }
    this.closeForGood(info);
  }

  /** The server closed the stream: the call goes on on the next stream the TwiML connects, or ends. */
  private async followTwiml(info: CloseInfo): Promise<void> {
    let target: ResumeTarget | undefined;
    try {
      target = await this.options.resume!(info);
    } catch (error) {
      this.log("local", "resume-failed", (error as Error).message);
    }
    if (!target) return this.closeForGood(info);
    this.streamSid = twilioId("MZ");
    this.seq = 0;
    this.framesSent = 0;
    this.playout = new PlayoutBuffer((name) => this.echoMark(name));
    try {
      await this.open(target);
      this.resumes++;
      this.log("local", "stream-resumed", { url: target.url, streamSid: this.streamSid });
    } catch (error) {
      this.log("local", "resume-failed", (error as Error).message);
      this.closeForGood(info);
    }
  }

  private closeForGood(info: CloseInfo): void {
    const { code } = info;
    this.closeInfo = info;
    this.log("local", "closed", this.closeInfo);
    if (this.current) this.finishTurn(true);
    const error = new Error(`the call closed (${this.closeInfo.by}, code ${code}) before the bot spoke again`);
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
    for (const item of this.speech.splice(0)) item.reject(new Error("the call closed while the caller was speaking"));
    this.resolveClosed(code);
  }
}
