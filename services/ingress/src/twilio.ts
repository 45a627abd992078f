// Twilio Media Streams wire format: parsing and validation of what Twilio sends, builders for what we send.
// Inbound numbers (sequenceNumber, chunk, timestamp) are strings on the wire; numbers are accepted too.
import { isValidCallId } from "@voicebot/bus";

export type ProtocolErrorReason =
  | "invalid_json"
  | "not_an_object"
  | "unknown_event"
  | "bad_start"
  | "missing_call_sid"
  | "invalid_call_sid"
  | "unsupported_media_format"
  | "duplicate_start"
  | "call_already_streaming"
  | "call_ended"
  | "bad_media"
  | "bad_base64"
  | "bad_payload_size"
  | "bad_chunk"
  | "media_before_start"
  | "event_before_start"
  | "start_timeout"
  | "stream_sid_mismatch"
  | "bad_dtmf"
  | "bad_mark"
  | "binary_frame"
  | "oversized_message"
  | "rate_limited"
  | "key_flood"
  | "flood"
  | "websocket_error"
  | "dead_socket"
  | "media_timeout";

/** A message we cannot use. `fatal` ones end the stream with 1008 (policy violation); the rest are dropped. */
export class ProtocolError extends Error {
  constructor(
    readonly reason: ProtocolErrorReason,
    message: string,
    readonly fatal = false,
  ) {
    super(message);
  }
}

export interface StartMessage {
  event: "start";
  sequenceNumber: number | undefined;
  streamSid: string;
  callSid: string;
  accountSid: string;
  tracks: string[];
  customParameters: Record<string, string>;
}

export interface MediaMessage {
  event: "media";
  streamSid: string | undefined;
  track: string;
  /** Twilio's 1-based chunk counter; 0 when the message carries none (a client that does not number its media). */
  chunk: number;
  /** ms since the stream started. */
  timestamp: number;
  payload: Buffer;
}

export interface DtmfMessage {
  event: "dtmf";
  streamSid: string | undefined;
  /** The message's sequence number; undefined from a client that numbers no message (Twilio numbers every one). */
  sequenceNumber: number | undefined;
  digit: string;
}

export interface MarkMessage {
  event: "mark";
  streamSid: string | undefined;
  name: string;
}

export interface StopMessage {
  event: "stop";
  streamSid: string | undefined;
}

export interface ConnectedMessage {
  event: "connected";
}

export type InboundMessage = ConnectedMessage | StartMessage | MediaMessage | DtmfMessage | MarkMessage | StopMessage;

export interface ParseLimits {
  maxMediaBytes: number;
}

type Json = Record<string, unknown>;

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const DTMF_DIGIT = /^[0-9*#A-Da-d]$/;

/**
 * A valid `media` message exactly as Twilio writes it: its keys in its order (`streamSid` before or after `media`), no
 * whitespace, no escapes. Every caller frame is one, and JSON.parse was the largest cost of a frame in ingress's own
 * code: this match takes half its time. The classes exclude `"` and `\`, so a match is a JSON object with exactly
 * these keys (`streamSid` at most twice).
 */
const TWILIO_MEDIA =
  /^\{"event":"media","sequenceNumber":"\d{1,15}",(?:"streamSid":"([A-Za-z0-9]{1,64})",)?"media":\{"track":"(inbound|outbound)","chunk":"(\d{1,15})","timestamp":"(\d{1,15})","payload":"([A-Za-z0-9+/]*={0,2})"\}(?:,"streamSid":"([A-Za-z0-9]{1,64})")?\}$/;

/** Parses one text frame; throws ProtocolError for anything Twilio would not send. */
export function parseInbound(text: string, limits: ParseLimits): InboundMessage {
  return parseTwilioMedia(text, limits) ?? parseJsonMessage(text, limits);
}

/**
 * The `media` message of TWILIO_MEDIA's shape, when it is valid: what parseJsonMessage would return for it.
 * Undefined for anything else (parseJsonMessage then parses it, or says what is wrong with it).
 */
export function parseTwilioMedia(text: string, limits: ParseLimits): MediaMessage | undefined {
  const match = TWILIO_MEDIA.exec(text);
  if (!match) return undefined;
  const [, streamSidFirst, track, chunkText, timestampText, payloadText, streamSidLast] = match;
  const chunk = Number(chunkText);
  if (chunk < 1 || payloadText.length % 4 !== 0) return undefined;
  const payload = Buffer.from(payloadText, "base64");
  if (payload.length === 0 || payload.length > limits.maxMediaBytes) return undefined;
  // A key given twice: JSON.parse keeps the last one.
  return { event: "media", streamSid: streamSidLast ?? streamSidFirst, track, chunk, timestamp: Number(timestampText), payload };
}

/** Any message, through JSON.parse. */
export function parseJsonMessage(text: string, limits: ParseLimits): InboundMessage {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ProtocolError("invalid_json", "message is not JSON");
  }
  if (!isObject(raw)) throw new ProtocolError("not_an_object", "message is not a JSON object");
  const streamSid = optionalString(raw.streamSid);
  switch (raw.event) {
    case "connected":
      return { event: "connected" };
    case "start":
      return parseStart(raw);
    case "media":
      return parseMedia(raw, streamSid, limits);
    case "dtmf": {
      const dtmf = raw.dtmf;
      const digit = isObject(dtmf) ? dtmf.digit : undefined;
      if (typeof digit !== "string" || !DTMF_DIGIT.test(digit)) throw new ProtocolError("bad_dtmf", "dtmf.digit must be one key");
      const sequenceNumber = counter(raw.sequenceNumber);
      if (sequenceNumber === undefined && raw.sequenceNumber !== undefined) {
        throw new ProtocolError("bad_dtmf", "dtmf with an invalid sequenceNumber");
      }
      return { event: "dtmf", streamSid, sequenceNumber, digit: digit.toUpperCase() };
    }
    case "mark": {
      const mark = raw.mark;
      const name = isObject(mark) ? mark.name : undefined;
      if (typeof name !== "string" || name.length === 0 || name.length > 256) throw new ProtocolError("bad_mark", "mark.name missing");
      return { event: "mark", streamSid, name };
    }
    case "stop":
      return { event: "stop", streamSid };
    default:
      throw new ProtocolError("unknown_event", `unknown event ${JSON.stringify(String(raw.event)).slice(0, 60)}`);
  }
}

function parseStart(raw: Json): StartMessage {
  const start = raw.start;
  if (!isObject(start)) throw new ProtocolError("bad_start", "start without a start object", true);
  const streamSid = optionalString(start.streamSid) ?? optionalString(raw.streamSid);
  if (!streamSid) throw new ProtocolError("bad_start", "start without streamSid", true);
  const callSid = start.callSid;
  if (callSid === undefined || callSid === null || callSid === "") {
    throw new ProtocolError("missing_call_sid", "start without callSid", true);
  }
  if (typeof callSid !== "string" || !isValidCallId(callSid)) {
    throw new ProtocolError("invalid_call_sid", `invalid callSid ${JSON.stringify(callSid).slice(0, 80)}`, true);
  }
  // Twilio's bidirectional streams carry μ-law 8 kHz only: a start that names no format is taken as that one.
  const format = start.mediaFormat === undefined ? { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 } : start.mediaFormat;
  if (
    !isObject(format) ||
    format.encoding !== "audio/x-mulaw" ||
    Number(format.sampleRate) !== 8000 ||
    Number(format.channels ?? 1) !== 1
  ) {
    throw new ProtocolError("unsupported_media_format", `unsupported mediaFormat ${JSON.stringify(format ?? null).slice(0, 120)}`, true);
  }
  const tracks = Array.isArray(start.tracks) ? start.tracks.filter((t): t is string => typeof t === "string") : ["inbound"];
  if (!tracks.includes("inbound")) {
    throw new ProtocolError("unsupported_media_format", `stream has no inbound track (${tracks.join(",")})`, true);
  }
  const customParameters: Record<string, string> = {};
  if (isObject(start.customParameters)) {
    for (const [key, value] of Object.entries(start.customParameters)) {
      if (typeof value === "string") customParameters[key] = value;
      else if (typeof value === "number" || typeof value === "boolean") customParameters[key] = String(value);
    }
  }
  return {
    event: "start",
    sequenceNumber: counter(raw.sequenceNumber),
    streamSid,
    callSid,
    accountSid: optionalString(start.accountSid) ?? "",
    tracks,
    customParameters,
  };
}

function parseMedia(raw: Json, streamSid: string | undefined, limits: ParseLimits): MediaMessage {
  const media = raw.media;
  if (!isObject(media)) throw new ProtocolError("bad_media", "media without a media object");
  const track = media.track === undefined ? "inbound" : media.track;
  if (typeof track !== "string") throw new ProtocolError("bad_media", "media.track is not a string");
  // Twilio numbers every chunk; a client that numbers none has its media taken in the order it arrives.
  const chunk = media.chunk === undefined ? 0 : counter(media.chunk);
  if (chunk === undefined || (chunk < 1 && media.chunk !== undefined)) {
    throw new ProtocolError("bad_media", "media.chunk must be a positive integer");
  }
  const timestamp = counter(media.timestamp) ?? 0;
  const payloadText = media.payload;
  if (typeof payloadText !== "string" || payloadText.length % 4 !== 0 || !BASE64.test(payloadText)) {
    throw new ProtocolError("bad_base64", "media.payload is not base64");
  }
  const payload = Buffer.from(payloadText, "base64");
  if (payload.length === 0 || payload.length > limits.maxMediaBytes) {
    throw new ProtocolError("bad_payload_size", `media payload of ${payload.length} bytes (1..${limits.maxMediaBytes})`);
  }
  return { event: "media", streamSid, track, chunk, timestamp, payload };
}

/** Twilio's counters: a non-negative integer, as a decimal string (or a number from lenient clients). */
function counter(value: unknown): number | undefined {
  if (typeof value === "number") return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value === "string" && /^\d{1,15}$/.test(value)) return Number(value);
  return undefined;
}

function optionalString(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" ? value : undefined;
}

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// ---- bot -> Twilio ----

const MEDIA_TAIL = Buffer.from(`"}}`);

/**
 * `media` messages of one stream: the hot path (every bot frame of every call). The JSON around the payload is made
 * once per stream (base64 never needs JSON escaping), and each message is built as bytes: the WebSocket sends a
 * Buffer as it is, where a string would be measured and encoded again on every send.
 */
export class MediaMessages {
  private readonly head: Buffer;

  constructor(streamSid: string) {
    // A buffer of its own (Buffer.from would cut it from an 8 KB pool slab, which the call would then keep alive).
    const head = `{"event":"media","streamSid":${JSON.stringify(streamSid)},"media":{"payload":"`;
    this.head = Buffer.alloc(Buffer.byteLength(head));
    this.head.write(head);
  }

  /** The UTF-8 text of one `media` message carrying `payload`. */
  message(payload: Uint8Array): Buffer {
    const bytes = Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    const base64 = bytes.toString("base64");
    const head = this.head;
    const out = Buffer.allocUnsafe(head.length + base64.length + MEDIA_TAIL.length);
    head.copy(out, 0);
    out.write(base64, head.length, "latin1");
    MEDIA_TAIL.copy(out, head.length + base64.length);
    return out;
  }
}

export function markMessage(streamSid: string, name: string): string {
  return JSON.stringify({ event: "mark", streamSid, mark: { name } });
}

export function clearMessage(streamSid: string): string {
  return JSON.stringify({ event: "clear", streamSid });
}
