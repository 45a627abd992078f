import { describe, expect, it } from "vitest";
import { parseInbound, ProtocolError, type ProtocolErrorReason } from "./twilio.js";

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

describe("outbound messages", () => {
  it("match Twilio's documented shapes", async () => {
    const { mediaMessage, markMessage, clearMessage } = await import("./twilio.js");
    const payload = Buffer.from([0xff, 0x7f, 0x00]);
    expect(JSON.parse(mediaMessage('MZ"1', payload))).toEqual({ event: "media", streamSid: 'MZ"1', media: { payload: payload.toString("base64") } });
    expect(JSON.parse(markMessage("MZ1", "t1.0"))).toEqual({ event: "mark", streamSid: "MZ1", mark: { name: "t1.0" } });
    expect(JSON.parse(clearMessage("MZ1"))).toEqual({ event: "clear", streamSid: "MZ1" });
  });
});
