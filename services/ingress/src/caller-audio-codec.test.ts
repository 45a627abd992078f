import { AudioEncoding, CallerAudio } from "@voicebot/proto";
import { describe, expect, it } from "vitest";
import { callerAudioCodec } from "./caller-audio-codec.js";

const format = { encoding: AudioEncoding.AUDIO_ENCODING_MULAW, sampleRate: 8000 };

function audio(callId: string, firstFrame: number, frameCount: number): CallerAudio {
  const payload = Buffer.alloc(frameCount * 160);
  for (let i = 0; i < payload.length; i++) payload[i] = (firstFrame + i * 7) % 256;
  return { callId, firstFrame, frameCount, format, payload, receivedAtMs: 1_764_000_000_000 + firstFrame };
}

describe("callerAudioCodec (one writer for every message)", () => {
  it("encodes each message on its own, whatever was encoded before it", () => {
    // Large before small: bytes of an earlier, longer message must not leak into a later one.
    const messages = [audio("CA1", 0, 10), audio("CA2", 10, 1), audio("CA-long-call-id-" + "x".repeat(100), 11, 50), audio("CA1", 61, 1)];
    const encoded = messages.map((m) => callerAudioCodec.encode(m).finish());
    encoded.forEach((bytes, i) => {
      expect(Buffer.from(bytes)).toEqual(Buffer.from(CallerAudio.encode(messages[i]).finish()));
      expect(callerAudioCodec.decode(bytes)).toEqual(messages[i]);
    });
  });

  it("a message that fails to encode leaves nothing behind for the next one", () => {
    expect(() => callerAudioCodec.encode({ ...audio("CA1", 0, 1), firstFrame: -1 }).finish()).toThrow(/uint64/);
    const next = audio("CA2", 5, 2);
    // Bytes, not the decoded message: a leftover call id field would be overwritten by the next one when decoded.
    expect(Buffer.from(callerAudioCodec.encode(next).finish())).toEqual(Buffer.from(CallerAudio.encode(next).finish()));
  });
});
