// AssemblyAI Universal Streaming (v3) through the official SDK. One streaming session per utterance: it is
// opened when the utterance starts, so the TLS/WebSocket handshake overlaps the caller's speech; audio pushed
// before `Begin` is held and sent on open. finish() forces the end of the turn and also asks the server to
// terminate, so the answer is the forced end-of-turn Turn or, failing that, whatever the Termination flushed.

import type { Logger } from "@voicebot/bus";
import type { EnvReader } from "@voicebot/service-kit";
import { AssemblyAI, type StreamingSpeechModel, type StreamingTranscriber, type StreamingWord, type TurnEvent } from "assemblyai";
import type { AsrEngine, RecognitionHints, RecognitionResult, UtteranceRecognizer } from "../engine.js";
import { normalizeSpokenDigits } from "./spoken-digits.js";

export const ASSEMBLYAI_DEFAULT_BASE_URL = "wss://streaming.assemblyai.com";

export interface AssemblyAIConfig {
  /** ASSEMBLYAI_API_KEY (required when the engine is used; checked by warmUp). */
  apiKey: string;
  /** ASSEMBLYAI_BASE_URL: streaming WebSocket base, wss://host[:port]; the API path /v3/ws is added. */
  baseUrl: string;
  /** ASSEMBLYAI_FINAL_TIMEOUT_MS: longest wait from finish() to the final transcript. */
  finalTimeoutMs: number;
  /**
   * ASSEMBLYAI_SPEECH_MODEL: the streaming model, always sent (the API has documented it both as required and as
   * defaulting to a pricier Pro model): universal-streaming-english (default), universal-streaming-multilingual,
   * u3-rt-pro, ...
   */
  speechModel: string;
}

export function readAssemblyAIConfig(env: EnvReader): AssemblyAIConfig {
  return {
    apiKey: env.string("ASSEMBLYAI_API_KEY", ""),
    baseUrl: env.url("ASSEMBLYAI_BASE_URL", ASSEMBLYAI_DEFAULT_BASE_URL, ["wss"]),
    finalTimeoutMs: env.int("ASSEMBLYAI_FINAL_TIMEOUT_MS", 3000, { min: 100, max: 60_000 }),
    speechModel: env.string("ASSEMBLYAI_SPEECH_MODEL", "universal-streaming-english"),
  };
}

const SAMPLE_RATE = 8000;
// The server rejects audio messages shorter than 50 ms or longer than 1000 ms (close code 3007).
const MIN_CHUNK_SAMPLES = (SAMPLE_RATE * 50) / 1000;
const MAX_CHUNK_SAMPLES = (SAMPLE_RATE * 800) / 1000;
// Handshake plus Begin. No SDK retries: they would also retry auth failures (close 1008) and print to the
// console; a failed session fails this utterance over to the next engine and the next utterance opens anew.
const CONNECT_TIMEOUT_MS = 2000;
// Keyterms prompting limits of the streaming API.
const MAX_KEYTERMS = 100;
const MAX_KEYTERM_CHARS = 50;
// Audio sent at once, longer than the server's own end-of-turn silence (~400 ms) with a word on each side: a pause
// inside it may end a turn (see sentAhead) ...
const BURST_MS = 700;
// ... whose Turn the server sends within about this long of the burst (it recognizes faster than real time).
const BURST_SETTLE_MS = 500;
// Bound on audio held while the session opens (the service caps utterances well below this).
const MAX_HELD_SAMPLES = SAMPLE_RATE * 60;

/** wss://host[:port] → wss://host[:port]/v3/ws; a URL that already names a path is used as given. */
export function streamingUrl(baseUrl: string): string {
  const url = new URL(baseUrl);
  if (url.pathname === "" || url.pathname === "/") url.pathname = "/v3/ws";
  return url.toString();
}

export function keytermsFrom(phrases: string[]): string[] {
  const seen = new Set<string>();
  for (const phrase of phrases) {
    const term = phrase.trim().replace(/\s+/g, " ");
    if (term && term.length <= MAX_KEYTERM_CHARS) seen.add(term);
    if (seen.size >= MAX_KEYTERMS) break;
  }
  return [...seen];
}

export class AssemblyAIEngine implements AsrEngine {
  readonly label = "assemblyai";
  readonly sampleRate = SAMPLE_RATE;
  private readonly client: AssemblyAI;
  private readonly active = new Set<AssemblyAIRecognizer>();

  constructor(
    private readonly config: AssemblyAIConfig,
    private readonly log?: Logger,
  ) {
    // The SDK wants a key at construction; an empty one is reported by warmUp() and start().
    this.client = new AssemblyAI({ apiKey: config.apiKey || "unset" });
  }

  /** Checks the configuration only: a network probe would open (and bill) a streaming session. */
  async warmUp(): Promise<void> {
    this.checkConfig();
  }

  start(hints: RecognitionHints): UtteranceRecognizer {
    this.checkConfig();
    const keyterms = keytermsFrom(hints.phrases);
    const transcriber = this.client.streaming.transcriber({
      websocketBaseUrl: streamingUrl(this.config.baseUrl),
      apiKey: this.config.apiKey,
      sampleRate: SAMPLE_RATE,
      // Raw 16-bit PCM: exactly the samples we were given (μ-law would re-quantize anything the service
      // filtered, to save 64 kbit/s that do not matter here).
      encoding: "pcm_s16le",
      speechModel: this.config.speechModel as StreamingSpeechModel,
      ...(keyterms.length > 0 ? { keytermsPrompt: keyterms } : {}),
      connectTimeout: CONNECT_TIMEOUT_MS,
      maxConnectionRetries: 0,
    });
    const recognizer = new AssemblyAIRecognizer(transcriber, hints, this.config.finalTimeoutMs, this.log, () => this.active.delete(recognizer));
    this.active.add(recognizer);
    return recognizer;
  }

  async close(): Promise<void> {
    for (const recognizer of [...this.active]) recognizer.abort();
  }

  private checkConfig(): void {
    if (!this.config.apiKey) throw new Error("assemblyai: ASSEMBLYAI_API_KEY is not set");
  }
}

interface TurnText {
  order: number;
  transcript: string;
  words: StreamingWord[];
}

class AssemblyAIRecognizer implements UtteranceRecognizer {
  onPartial?: (text: string) => void;
  onError?: (error: Error) => void;
  private state: "streaming" | "finishing" | "done" = "streaming";
  private opened = false;
  /** ForceEndpoint and Terminate were sent: the next end-of-turn Turn is the answer (unless sentAhead). */
  private ending = false;
  /**
   * A burst of audio (held while the session opened, a failover's replay) went just before ForceEndpoint: the server
   * may still be ending turns inside it by its own endpointing, so the answer is its Termination, after every Turn,
   * not the first end-of-turn Turn. A burst long enough before (the usual backlog of a session opened at the
   * utterance's start) has had its Turns by then.
   */
  private sentAhead = false;
  /** When the latest burst (over BURST_MS of audio at once) was sent. */
  private burstSentAt: number | undefined;
  /** The SDK's close() was called (it sends Terminate when the socket is open). */
  private closing = false;
  private failure?: Error;
  /** Audio not yet sent: everything until Begin, then whatever is short of a 50 ms message. */
  private held: Int16Array[] = [];
  private heldSamples = 0;
  private readonly finals = new Map<number, TurnText>();
  private current?: TurnText;
  private lastPartial = "";
  private settle?: { resolve: (r: RecognitionResult) => void; reject: (e: Error) => void };
  private deadline?: NodeJS.Timeout;

  constructor(
    private readonly transcriber: StreamingTranscriber,
    private readonly hints: RecognitionHints,
    private readonly finalTimeoutMs: number,
    private readonly log: Logger | undefined,
    private readonly release: () => void,
  ) {
    transcriber.on("turn", (turn) => this.onTurn(turn));
    transcriber.on("error", (error) => this.fail(new Error(`assemblyai: ${describe(error)}`)));
    transcriber.on("close", (code, reason) => {
      this.opened = false;
      // 1000 after Terminate is the normal end (finish() is then settled by the close() promise); any other
      // close, or one before the turn was ended, loses the utterance.
      if (code !== 1000 || !this.ending) this.fail(new Error(`assemblyai: session closed (code ${code}${reason ? `: ${reason}` : ""})`));
    });
    transcriber.connect().then(
      () => this.onOpen(),
      (error: unknown) => this.fail(new Error(`assemblyai: could not open a streaming session: ${describe(error)}`)),
    );
    guardFrames(transcriber, (error) => this.fail(new Error(`assemblyai: unreadable frame from the server: ${describe(error)}`)));
  }

  push(pcm: Int16Array): void {
    if (this.state !== "streaming" || this.failure || pcm.length === 0) return;
    if (this.heldSamples + pcm.length > MAX_HELD_SAMPLES) {
      this.fail(new Error("assemblyai: too much audio held while the session opens"));
      return;
    }
    this.held.push(pcm.slice());
    this.heldSamples += pcm.length;
    if (this.opened) this.send(false);
  }

  finish(): Promise<RecognitionResult> {
    if (this.state !== "streaming") return Promise.reject(new Error("assemblyai: finish() called twice or after abort()"));
    this.state = "finishing";
    return new Promise<RecognitionResult>((resolve, reject) => {
      this.settle = { resolve, reject };
      if (this.failure) return this.reject(this.failure);
      this.deadline = setTimeout(() => this.reject(new Error(`assemblyai: no final transcript within ${this.finalTimeoutMs} ms`)), this.finalTimeoutMs);
      // A session still opening ends the turn on Begin (onOpen), or fails.
      if (this.opened) this.endTurn();
    });
  }

  abort(): void {
    if (this.state === "done") return;
    this.reject(new Error("assemblyai: aborted"));
  }

  private onOpen(): void {
    if (this.state === "done") return this.closeSession();
    this.opened = true;
    this.send(false);
    if (this.state === "finishing") this.endTurn();
  }

  private endTurn(): void {
    if (!this.send(true)) return;
    try {
      this.transcriber.forceEndpoint();
    } catch (error) {
      return this.fail(new Error(`assemblyai: could not end the turn: ${describe(error)}`));
    }
    this.ending = true;
    this.sentAhead = this.burstSentAt !== undefined && Date.now() - this.burstSentAt < BURST_SETTLE_MS;
    // Terminate makes the server flush and answer Termination: the answer when no end-of-turn Turn comes
    // (nothing was said, or the server had already ended the turn by its own endpointing).
    this.closing = true;
    this.transcriber.close(true, this.finalTimeoutMs).then(
      () => this.resolve(true),
      (error: unknown) => this.fail(new Error(`assemblyai: ${describe(error)}`)),
    );
  }

  /** sendHeld, reporting a broken socket as the failure; false when it failed. */
  private send(final: boolean): boolean {
    try {
      this.sendHeld(final);
      return true;
    } catch (error) {
      this.fail(new Error(`assemblyai: could not send audio: ${describe(error)}`));
      return false;
    }
  }

  /** Sends held audio in 50–800 ms messages; `final` pads a short tail with silence to the 50 ms minimum. */
  private sendHeld(final: boolean): void {
    if (this.heldSamples === 0 || (this.heldSamples < MIN_CHUNK_SAMPLES && !final)) return;
    const all = new Int16Array(Math.max(this.heldSamples, MIN_CHUNK_SAMPLES));
    let at = 0;
    for (const piece of this.held) {
      all.set(piece, at);
      at += piece.length;
    }
    const total = final ? all.length : this.heldSamples;
    if ((total / SAMPLE_RATE) * 1000 > BURST_MS) this.burstSentAt = Date.now();
    let offset = 0;
    while (total - offset >= MIN_CHUNK_SAMPLES) {
      let take = Math.min(MAX_CHUNK_SAMPLES, total - offset);
      // Never leave a remainder shorter than the minimum behind a full-size message.
      const rest = total - offset - take;
      if (rest > 0 && rest < MIN_CHUNK_SAMPLES) take -= MIN_CHUNK_SAMPLES;
      this.transcriber.sendAudio(all.slice(offset, offset + take).buffer);
      offset += take;
    }
    this.held = offset < total ? [all.slice(offset, total)] : [];
    this.heldSamples = total - offset;
  }

  private onTurn(turn: TurnEvent): void {
    if (this.state === "done") return;
    const words = turn.words ?? [];
    // An unfinished turn's transcript holds only its finalized words; its words hold the latest guess of the rest too.
    const transcript = !turn.end_of_turn && words.length > 0 ? words.map((w) => w.text).join(" ") : (turn.transcript ?? "");
    const text: TurnText = { order: turn.turn_order, transcript, words };
    if (turn.end_of_turn) {
      // A formatted copy (format_turns) replaces the unformatted one of the same turn.
      this.finals.set(turn.turn_order, text);
      if (this.current?.order === turn.turn_order) this.current = undefined;
    } else if (!this.finals.has(turn.turn_order)) {
      this.current = text;
    }
    if (this.ending && turn.end_of_turn && !this.sentAhead) this.resolve(false);
    else if (this.state === "streaming") this.emitPartial();
  }

  private emitPartial(): void {
    const text = this.text(true);
    if (!text || text === this.lastPartial || !this.onPartial) return;
    this.lastPartial = text;
    try {
      this.onPartial(text);
    } catch (error) {
      this.log?.warn("assemblyai: onPartial threw", { error: describe(error) });
    }
  }

  private turns(includeOpen: boolean): TurnText[] {
    const turns = [...this.finals.values()];
    if (includeOpen && this.current) turns.push(this.current);
    return turns.sort((a, b) => a.order - b.order);
  }

  private text(includeOpen: boolean): string {
    const text = this.turns(includeOpen)
      .map((t) => t.transcript.trim())
      .filter(Boolean)
      .join(" ");
    return this.hints.mode === "digits" ? normalizeSpokenDigits(text) : text;
  }

  /** `fallback`: the session ended without a forced end-of-turn Turn, so an unfinished last Turn counts too. */
  private resolve(fallback: boolean): void {
    if (this.state !== "finishing" || !this.settle) return;
    const words = this.turns(fallback).flatMap((t) => t.words);
    const text = this.text(fallback);
    const confidence = words.length > 0 ? words.reduce((sum, w) => sum + (w.confidence ?? 0), 0) / words.length : text ? 1 : 0;
    const { resolve } = this.settle;
    this.done(false);
    resolve({ text, confidence, alternatives: [] });
  }

  private reject(error: Error): void {
    const settle = this.settle;
    this.done(true);
    settle?.reject(error);
  }

  /** Remembers the first failure; a pending finish() rejects with it at once, an open utterance reports it. */
  private fail(error: Error): void {
    if (this.state === "done") return;
    const first = this.failure === undefined;
    this.failure ??= error;
    if (this.state === "finishing") return this.reject(this.failure);
    this.closeSession();
    // Lost while the caller is still talking: say so now, so the service can move to another engine.
    if (first && this.onError) {
      try {
        this.onError(this.failure);
      } catch (e) {
        this.log?.warn("assemblyai: onError threw", { error: describe(e) });
      }
    }
  }

  /** `force`: drop the socket now even if endTurn's close() is still waiting for Termination. */
  private done(force: boolean): void {
    this.state = "done";
    this.settle = undefined;
    clearTimeout(this.deadline);
    this.closeSession(force);
    this.release();
  }

  private closeSession(force = false): void {
    this.opened = false;
    this.held = [];
    this.heldSamples = 0;
    if (this.closing && !force) return; // endTurn's close() is ending the session gracefully
    this.closing = true;
    // Sends Terminate if the socket is still open (ends billing) and closes it, without waiting.
    this.transcriber.close(false).catch(() => undefined);
  }
}

/**
 * The SDK parses every frame with JSON.parse and no guard: one malformed or binary frame would throw out of the
 * socket's message handler and take the whole process down, every call with it. Wraps that handler (the SDK sets it
 * when connect() creates the socket, in the same tick) so such a frame fails only this session, which fails over.
 */
export function guardFrames(transcriber: StreamingTranscriber, onBadFrame: (error: unknown) => void): void {
  const socket = (transcriber as unknown as { socket?: { onmessage: ((event: unknown) => void) | null } }).socket;
  const handler = socket?.onmessage;
  if (!socket || typeof handler !== "function") {
    onBadFrame(new Error("the SDK's streaming socket was not found where expected (SDK changed?)"));
    return;
  }
  socket.onmessage = (event: unknown) => {
    try {
      handler.call(socket, event);
    } catch (error) {
      onBadFrame(error);
    }
  };
}

function describe(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const code = (error as { code?: unknown } | undefined)?.code;
  return code !== undefined && !message.includes(String(code)) ? `${message} (code ${String(code)})` : message;
}
