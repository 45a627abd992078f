import { describe, expect, it } from "vitest";
import { parseInbound, parseJsonMessage, parseTwilioMedia, ProtocolError, type ProtocolErrorReason } from "./twilio.js";

const limits = { maxMediaBytes: 8000 };
const start = (over: Record<string, unknown> = {}) =>
  JSON.stringify({
    event: "start",
    sequenceNumber: "1",
    streamSid: "MZ1",
    start: {
      accountSid: "AC1",
      streamSid: "MZ1",
      callSid: "CA1",
      tracks: ["inbound"],
      customParameters: { agent: "order-line", from: "+15550001" },
      mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
      ...over,
    },
  });
const media = (media: Record<string, unknown>) => JSON.stringify({ event: "media", sequenceNumber: "3", streamSid: "MZ1", media });

function reason(text: string): { reason: ProtocolErrorReason; fatal: boolean } {
  try {
    parseInbound(text, limits);
  } catch (error) {
    if (error instanceof ProtocolError) return { reason: error.reason, fatal: error.fatal };
    throw error;
  }
  throw new Error("parsed");
}

describe("parseInbound", () => {
  it("parses Twilio's documented messages, numbers given as strings", () => {
    expect(parseInbound('{"event":"connected","protocol":"Call","version":"1.0.0"}', limits)).toEqual({ event: "connected" });
    expect(parseInbound(start(), limits)).toEqual({
      event: "start",
      sequenceNumber: 1,
      streamSid: "MZ1",
      callSid: "CA1",
      accountSid: "AC1",
      tracks: ["inbound"],
      customParameters: { agent: "order-line", from: "+15550001" },
    });
    const payload = Buffer.alloc(160, 0x7f);
    expect(parseInbound(media({ track: "inbound", chunk: "1", timestamp: "5", payload: payload.toString("base64") }), limits)).toEqual({
      event: "media",
      streamSid: "MZ1",
      track: "inbound",
      chunk: 1,
      timestamp: 5,
      payload,
    });
    expect(
      parseInbound('{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"#"}}', limits),
    ).toEqual({ event: "dtmf", streamSid: "MZ1", sequenceNumber: 5, digit: "#" });
    expect(parseInbound('{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"t1.0"}}', limits)).toEqual({
      event: "mark",
      streamSid: "MZ1",
      name: "t1.0",
    });
    expect(parseInbound('{"event":"stop","sequenceNumber":"6","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}', limits)).toEqual({
      event: "stop",
      streamSid: "MZ1",
    });
  });

  it("rejects what Twilio would not send, with a reason", () => {
    expect(reason("not json")).toEqual({ reason: "invalid_json", fatal: false });
    expect(reason("[1]")).toEqual({ reason: "not_an_object", fatal: false });
    expect(reason('{"event":"hello"}')).toEqual({ reason: "unknown_event", fatal: false });
    expect(reason(media({ track: "inbound", chunk: "1", payload: "***" }))).toEqual({ reason: "bad_base64", fatal: false });
    expect(reason(media({ track: "inbound", chunk: "1", payload: "" }))).toEqual({ reason: "bad_payload_size", fatal: false });
    expect(reason(media({ track: "inbound", chunk: "1", payload: Buffer.alloc(8001).toString("base64") }))).toEqual({
      reason: "bad_payload_size",
      fatal: false,
    });
    expect(reason(media({ track: "inbound", chunk: "x", payload: "AAAA" }))).toEqual({ reason: "bad_media", fatal: false });
    expect(reason(media({ track: "inbound", chunk: "0", payload: "AAAA" }))).toEqual({ reason: "bad_media", fatal: false });
    expect(reason('{"event":"dtmf","sequenceNumber":"5","dtmf":{"digit":"12"}}')).toEqual({ reason: "bad_dtmf", fatal: false });
    expect(reason('{"event":"mark","mark":{}}')).toEqual({ reason: "bad_mark", fatal: false });
  });

  it("treats a start it cannot serve as fatal", () => {
    expect(reason(start({ callSid: undefined }))).toEqual({ reason: "missing_call_sid", fatal: true });
    expect(reason(start({ callSid: "CA 1/../x" }))).toEqual({ reason: "invalid_call_sid", fatal: true });
    expect(reason(start({ mediaFormat: { encoding: "audio/l16", sampleRate: 16000, channels: 1 } }))).toEqual({
      reason: "unsupported_media_format",
      fatal: true,
    });
    expect(reason(start({ tracks: ["outbound"] }))).toEqual({ reason: "unsupported_media_format", fatal: true });
    expect(reason('{"event":"start","start":null}')).toEqual({ reason: "bad_start", fatal: true });
  });
});

describe("Twilio's own media messages (parsed without JSON.parse)", () => {
  const sid = "MZ18ad3ab5a668481ce02b83e7395059f0";
  const payload = Buffer.from(Array.from({ length: 160 }, (_, i) => (i * 37) % 256)).toString("base64");
  type Fields = { seq: string; sid: string; track: string; chunk: string; timestamp: string; payload: string };
  const base: Fields = { seq: "3", sid, track: "inbound", chunk: "1", timestamp: "5", payload };
  /** As Twilio writes it, with streamSid after `media` (its documentation), before it (our reference), twice or not at all. */
  function twilio(fields: Partial<Fields> = {}, where: "after" | "before" | "both" | "none" = "after"): string {
    const f = { ...base, ...fields };
    const body = `"media":{"track":"${f.track}","chunk":"${f.chunk}","timestamp":"${f.timestamp}","payload":"${f.payload}"}`;
    const before = where === "before" || where === "both" ? `"streamSid":"${f.sid}",` : "";
    const after = where === "after" || where === "both" ? `,"streamSid":"${where === "both" ? "MZlast" : f.sid}"` : "";
    return `{"event":"media","sequenceNumber":"${f.seq}",${before}${body}${after}}`;
  }
  /** What a parser makes of a text: the message, or the error's reason. */
  function outcome(parse: (text: string, l: typeof limits) => unknown, text: string): unknown {
    try {
      return { message: parse(text, limits) };
    } catch (error) {
      if (error instanceof ProtocolError) return { error: error.reason, fatal: error.fatal };
      throw error;
    }
  }
  const sameAsJson = (text: string) => expect(outcome(parseInbound, text), text).toEqual(outcome(parseJsonMessage, text));

  it("takes the fast way for Twilio's shapes, with the same result as JSON.parse", () => {
    for (const where of ["after", "before", "both"] as const) {
      expect(parseTwilioMedia(twilio({}, where), limits), where).toBeDefined();
      sameAsJson(twilio({}, where));
    }
    expect(parseTwilioMedia(twilio({}, "both"), limits)?.streamSid).toBe("MZlast"); // JSON keeps a repeated key's last value
  });

  it("gives the same message or the same error as JSON.parse for any variation", () => {
    const variations: Array<Partial<Fields>> = [
      ...["0", "00001", "123456789012345", "1234567890123456", "-1", "1.5", "", "x"].map((chunk) => ({ chunk })),
      ...["0", "", "x", "1234567890123456"].map((timestamp) => ({ timestamp })),
      ...["outbound", "both", "", "INBOUND"].map((track) => ({ track })),
      ...["", "AAA", "AA==", "AAA=", "A===", "****", "-_-_", "AAAA=AAA", Buffer.alloc(8001).toString("base64")].map((p) => ({ payload: p })),
      ...["", "MZ-1", "M".repeat(64), "M".repeat(65), "MZ\\u0031"].map((s) => ({ sid: s })),
      ...["", "x", "1234567890123456"].map((seq) => ({ seq })),
    ];
    for (const fields of variations) for (const where of ["after", "before", "both", "none"] as const) sameAsJson(twilio(fields, where));
    // Valid JSON in other shapes: whitespace, another key order, an extra key, escapes, a trailing newline.
    const text = twilio();
    for (const other of [
      text.replace('"chunk"', ' "chunk"'),
      text.replace('"chunk":"1","timestamp":"5"', '"timestamp":"5","chunk":"1"'),
      text.replace('"media":{', '"extra":1,"media":{'),
      text.replace('"event":"media"', '"event":"\\u006dedia"'),
      `${text}\n`,
    ]) {
      expect(parseTwilioMedia(other, limits), other).toBeUndefined();
      sameAsJson(other);
    }
  });

  it("gives the same outcome as JSON.parse for random edits of a Twilio message", () => {
    let seed = 42;
    const random = (n: number) => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31), seed % n);
    const alphabet = '"\\{}:,[] 0159aAzZ+/=-_.\n\u00e9';
    for (const where of ["after", "before"] as const) {
      const text = twilio({ payload: "AAECAw==" }, where);
      for (let i = 0; i < 3_000; i++) {
        let edited = text;
        for (let edits = 1 + random(3); edits > 0; edits--) {
          const at = random(edited.length + 1);
          const char = alphabet[random(alphabet.length)];
          const kind = random(3);
          edited = edited.slice(0, at) + (kind === 0 ? "" : char) + edited.slice(kind === 2 ? at : at + 1);
        }
        sameAsJson(edited);
      }
    }
  });
});

describe("outbound messages", () => {
  it("match Twilio's documented shapes", async () => {
    const { MediaMessages, markMessage, clearMessage } = await import("./twilio.js");
    const payload = Buffer.from([0xff, 0x7f, 0x00]);
    expect(JSON.parse(new MediaMessages('MZ"1').message(payload).toString("utf8"))).toEqual({
      event: "media",
      streamSid: 'MZ"1',
      media: { payload: payload.toString("base64") },
    });
    expect(JSON.parse(markMessage("MZ1", "t1.0"))).toEqual({ event: "mark", streamSid: "MZ1", mark: { name: "t1.0" } });
    expect(JSON.parse(clearMessage("MZ1"))).toEqual({ event: "clear", streamSid: "MZ1" });
  });

  it("media messages are valid UTF-8 JSON for any stream id and payload, each built on its own bytes", async () => {
    const { MediaMessages } = await import("./twilio.js");
    const streamSid = 'MZé\\"\u2028😀1';
    const messages = new MediaMessages(streamSid);
    // Every base64 padding case, a frame, a batch of frames, and a view into a larger buffer that is not a Buffer.
    const slab = new Uint8Array(1000).map((_, i) => (i * 37) % 256);
    const payloads: Uint8Array[] = [0, 1, 2, 3, 4, 5, 160, 800].map((n) => Buffer.from(slab.subarray(0, n)));
    payloads.push(new Uint8Array(slab.buffer, 7, 160));
    const built = payloads.map((payload) => messages.message(payload));
    built.forEach((text, i) => {
      const parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(text));
      expect(parsed).toEqual({ event: "media", streamSid, media: { payload: Buffer.from(payloads[i]).toString("base64") } });
    });
  });
});
