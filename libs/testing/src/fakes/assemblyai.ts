// A local stand-in for AssemblyAI's Universal Streaming (v3) WebSocket API, speaking its wire protocol closely
// enough for the real `assemblyai` SDK: TLS (the SDK only accepts wss://), `Authorization` header or `token`
// query parameter, query-string session options, `Begin` / `Turn` / `Termination` / `Error` frames, binary
// audio chunks of 50–1000 ms, and `ForceEndpoint` / `Terminate` / `UpdateConfiguration` / `KeepAlive` messages.

import { randomUUID } from "node:crypto";
import https from "node:https";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { WebSocketServer, type RawData, type WebSocket } from "ws";
import { ensureTestCertificate } from "./tls.js";

/** What the fake "hears" in one session, decided per session by the test. */
export interface FakeAssemblyAIScript {
  /**
   * The caller's speech as turns. Every turn but the last is ended by the fake's own endpointing once all its
   * words were revealed (as the real server does after a pause); the last is ended by ForceEndpoint or
   * Terminate. `text` is shorthand for a single turn.
   */
  turns?: string[];
  text?: string;
  /** Word confidence: one value for all words, or one per word across all turns (default 0.9). */
  confidence?: number | number[];
  /** Audio needed per revealed word in partial Turns (default 200 ms). */
  msPerWord?: number;
  /** Never send Begin (the SDK's connect times out). */
  stallBeforeBegin?: boolean;
  /** Send Begin, then ignore everything: no Turns, no Termination. */
  stallAfterBegin?: boolean;
  /** Close with an Error frame and code 3005 once this much audio has arrived. */
  errorAfterAudioMs?: number;
  /** Send this frame as it is (a cut-off JSON text, or binary) once this much audio has arrived: a broken server. */
  garbage?: { afterAudioMs: number; frame: string | Buffer };
  /** Delay the end-of-turn Turn and the Termination by this long. */
  finalDelayMs?: number;
  /** Delay the Termination (after the forced end-of-turn Turn) by this long more. */
  terminationDelayMs?: number;
  /** Also send a formatted copy of each ended turn, as with `format_turns=true` (default: when requested). */
  formatTurns?: boolean;
}

export interface FakeAssemblyAITurn {
  type: "Turn";
  turn_order: number;
  turn_is_formatted: boolean;
  end_of_turn: boolean;
  transcript: string;
  end_of_turn_confidence: number;
  words: Array<{ start: number; end: number; confidence: number; text: string; word_is_final: boolean }>;
}

export interface FakeAssemblyAISession {
  id: string;
  /** Query parameters as sent (keyterms_prompt still JSON). */
  query: Record<string, string>;
  authorization?: string;
  token?: string;
  authorized: boolean;
  sampleRate: number;
  encoding: string;
  /** Parsed `keyterms_prompt`, if sent. */
  keyterms?: string[];
  /** Duration in ms of every binary audio message. */
  audioChunksMs: number[];
  audioMs: number;
  /** JSON messages from the client (ForceEndpoint, Terminate, ...). */
  received: Array<Record<string, unknown>>;
  /** JSON messages the fake sent. */
  sent: Array<Record<string, unknown>>;
  /** Close code once the socket closed (from either side). */
  closeCode?: number;
  closed: Promise<number>;
}

export interface FakeAssemblyAIOptions {
  /** Accepted `Authorization` header value (default "test-assemblyai-key"). */
  apiKey?: string;
  /** Accepted temporary tokens (`?token=`). */
  tokens?: string[];
  script?: (session: FakeAssemblyAISession) => FakeAssemblyAIScript;
}

export interface FakeAssemblyAI {
  /** Streaming base URL, `wss://127.0.0.1:<port>` (the API lives at /v3/ws). */
  url: string;
  port: number;
  /** The self-signed certificate clients must trust (NODE_EXTRA_CA_CERTS for a child process). */
  caFile: string;
  sessions: FakeAssemblyAISession[];
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const ENCODINGS: Record<string, number> = { pcm_s16le: 2, pcm_mulaw: 1 };

export async function startFakeAssemblyAI(options: FakeAssemblyAIOptions = {}): Promise<FakeAssemblyAI> {
  const apiKey = options.apiKey ?? "test-assemblyai-key";
  const certificate = await ensureTestCertificate();
  const server = https.createServer({ cert: certificate.cert, key: certificate.key }, (_req, res) => {
    res.writeHead(404).end();
  });
  const wss = new WebSocketServer({ noServer: true });
  const sessions: FakeAssemblyAISession[] = [];
  const sockets = new Set<WebSocket>();
  const timers = new Set<NodeJS.Timeout>();

  server.on("upgrade", (req, socket: Duplex, head) => {
    const url = new URL(req.url ?? "/", "wss://fake");
    if (url.pathname !== "/v3/ws") {
      socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const query = Object.fromEntries(url.searchParams);
      let closedResolve!: (code: number) => void;
      const session: FakeAssemblyAISession = {
        id: randomUUID(),
        query,
        authorization: req.headers.authorization,
        token: query.token,
        authorized: false,
        sampleRate: Number(query.sample_rate ?? NaN),
        encoding: query.encoding ?? "pcm_s16le",
        audioChunksMs: [],
        audioMs: 0,
        received: [],
        sent: [],
        closed: new Promise((r) => (closedResolve = r)),
      };
      sessions.push(session);
      sockets.add(ws);
      ws.on("close", (code) => {
        sockets.delete(ws);
        session.closeCode ??= code;
        closedResolve(code);
      });
      ws.on("error", () => undefined);
      runSession(ws, session);
    });
  });

  const later = (ms: number, fn: () => void) => {
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms);
    timers.add(timer);
  };

  function runSession(ws: WebSocket, session: FakeAssemblyAISession): void {
    const send = (message: Record<string, unknown>) => {
      if (ws.readyState !== ws.OPEN) return;
      session.sent.push(message);
      ws.send(JSON.stringify(message));
    };
    // Real errors: an Error frame carrying the code, then a close with the same code.
    const fail = (code: number, error: string) => {
      send({ type: "Error", error_code: code, error });
      session.closeCode = code;
      ws.close(code, error.slice(0, 120));
    };

    session.authorized = session.authorization === apiKey || (session.token !== undefined && (options.tokens ?? []).includes(session.token));
    if (!session.authorized) {
      fail(1008, session.authorization || session.token ? "Unauthorized Connection: Invalid API key" : "Unauthorized Connection: Missing Authorization header");
      return;
    }
    const bytesPerSample = ENCODINGS[session.encoding];
    if (!bytesPerSample) return fail(3006, `Invalid Message: unsupported encoding ${session.encoding}`);
    if (!Number.isInteger(session.sampleRate) || session.sampleRate <= 0) return fail(3006, "Invalid Message: sample_rate must be a positive integer");
    // The API's documentation has said both that speech_model is required and that it defaults to a Pro model:
    // the fake holds a client to the strict reading.
    if (!session.query.speech_model) return fail(3006, "Invalid Message: speech_model is required");
    if (session.query.keyterms_prompt !== undefined) {
      try {
        const parsed: unknown = JSON.parse(session.query.keyterms_prompt);
        if (!Array.isArray(parsed) || !parsed.every((k) => typeof k === "string")) throw new Error("not a list of strings");
        session.keyterms = parsed;
      } catch {
        return fail(3006, "Invalid Message: keyterms_prompt must be a JSON list of strings");
      }
    }

    const script = options.script?.(session) ?? {};
    if (script.stallBeforeBegin) return;
    send({ type: "Begin", id: session.id, expires_at: Math.floor(Date.now() / 1000) + 3600 });
    if (script.stallAfterBegin) {
      ws.on("message", (data, isBinary) => {
        if (isBinary) recordAudio(data);
      });
      return;
    }

    const turnTexts = script.turns ?? (script.text !== undefined ? [script.text] : []);
    const turns = turnTexts.map((t) => t.split(/\s+/).filter(Boolean));
    const msPerWord = script.msPerWord ?? 200;
    const formatTurns = script.formatTurns ?? session.query.format_turns === "true";
    let wordIndex = 0; // across all turns, for per-word confidence
    let turn = 0; // index into turns = turn_order
    let revealed = 0; // words of the current turn revealed so far
    let revealedAtMs = 0; // audio time at which the current turn started revealing
    let ending = false;
    let terminated = false;
    let garbageSent = false;

    const confidenceOf = (i: number) =>
      Array.isArray(script.confidence) ? (script.confidence[i] ?? 0.9) : (script.confidence ?? 0.9);
    const turnMessage = (endOfTurn: boolean, formatted: boolean): FakeAssemblyAITurn => {
      const words = turns[turn].slice(0, revealed).map((text, i) => ({
        start: Math.round(revealedAtMs + i * msPerWord),
        end: Math.round(revealedAtMs + (i + 1) * msPerWord),
        confidence: confidenceOf(wordIndex + i),
        text: formatted ? formatWord(text, i, revealed) : text,
        word_is_final: endOfTurn || i < revealed - 1,
      }));
      return {
        type: "Turn",
        turn_order: turn,
        turn_is_formatted: formatted,
        end_of_turn: endOfTurn,
        // As the real service: an unfinished turn's transcript holds only its finalized words (all are in `words`).
        transcript: words.filter((w) => w.word_is_final).map((w) => w.text).join(" "),
        end_of_turn_confidence: endOfTurn ? 0.9 : 0.1,
        words,
      };
    };
    const endTurn = () => {
      send(turnMessage(true, false) as unknown as Record<string, unknown>);
      if (formatTurns) send(turnMessage(true, true) as unknown as Record<string, unknown>);
      wordIndex += revealed;
      turn++;
      revealed = 0;
      revealedAtMs = session.audioMs;
    };
    // Reveal words as audio arrives; a turn other than the last ends by itself once complete.
    const progress = () => {
      while (turn < turns.length && !ending) {
        const due = Math.min(turns[turn].length, Math.floor((session.audioMs - revealedAtMs) / msPerWord));
        if (due > revealed) {
          revealed = due;
          send(turnMessage(false, false) as unknown as Record<string, unknown>);
        }
        if (revealed === turns[turn].length && turn < turns.length - 1) {
          endTurn();
          continue;
        }
        break;
      }
    };
    // ForceEndpoint: the open turn ends with every scripted word (the audio is taken to have carried them all).
    const forceEndpoint = (then?: () => void) => {
      ending = true;
      later(script.finalDelayMs ?? 0, () => {
        if (turn < turns.length && session.audioMs > 0) {
          revealed = turns[turn].length;
          if (revealed > 0) endTurn();
        }
        ending = false;
        then?.();
      });
    };

    function recordAudio(data: RawData): number {
      const bytes = Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : (data as Buffer | ArrayBuffer).byteLength;
      const ms = (bytes / bytesPerSample / session.sampleRate) * 1000;
      session.audioChunksMs.push(ms);
      session.audioMs += ms;
      return ms;
    }

    ws.on("message", (data, isBinary) => {
      if (terminated) return;
      if (isBinary) {
        const ms = recordAudio(data);
        if (ms < 50 || ms > 1000) return fail(3007, `Input duration violation: ${ms.toFixed(0)} ms. Expected between 50 and 1000 ms`);
        if (script.errorAfterAudioMs !== undefined && session.audioMs >= script.errorAfterAudioMs) return fail(3005, "Session Cancelled: An error occurred");
        if (script.garbage && !garbageSent && session.audioMs >= script.garbage.afterAudioMs) {
          garbageSent = true;
          ws.send(script.garbage.frame);
        }
        progress();
        return;
      }
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(data.toString()) as Record<string, unknown>;
      } catch {
        return fail(3006, `Invalid JSON: ${data.toString().slice(0, 60)}`);
      }
      session.received.push(message);
      switch (message.type) {
        case "ForceEndpoint":
          forceEndpoint();
          break;
        case "Terminate":
          terminated = true;
          forceEndpoint(() =>
            later(script.terminationDelayMs ?? 0, () => {
              send({ type: "Termination", audio_duration_seconds: Math.round(session.audioMs / 1000), session_duration_seconds: 1 });
              ws.close(1000);
            }),
          );
          break;
        case "UpdateConfiguration":
        case "KeepAlive":
          break;
        default:
          fail(3006, `Invalid Message Type: ${String(message.type)}`);
      }
    });
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const stop = async () => {
    for (const timer of timers) clearTimeout(timer);
    for (const ws of sockets) ws.terminate();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { url: `wss://127.0.0.1:${port}`, port, caFile: certificate.certFile, sessions, stop, [Symbol.asyncDispose]: stop };
}

/** What `format_turns` does, roughly: capitalized first word, final period. */
function formatWord(word: string, index: number, count: number): string {
  let out = index === 0 ? word.charAt(0).toUpperCase() + word.slice(1) : word;
  if (index === count - 1 && !/[.?!]$/.test(out)) out += ".";
  return out;
}
