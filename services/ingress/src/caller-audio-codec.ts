// The codec ingress publishes caller audio with: every frame of every call goes through it.
import type { Codec } from "@voicebot/bus";
import { CallerAudio } from "@voicebot/proto";

/** One protobuf writer for every CallerAudio (ts-proto's encode makes one when it is given none). */
const callerAudioWriter = CallerAudio.encode(CallerAudio.create());
/**
 * CallerAudio's codec, encoding into that one writer: it keeps its grown buffer from message to message, where a new
 * writer per message allocates and regrows one (half the cost of encoding a frame). bus.publish finishes (copies out
 * and resets) each message right after encoding it, so two messages never share the writer.
 */
export const callerAudioCodec: Codec<CallerAudio> = {
  encode(message) {
    try {
      return CallerAudio.encode(message, callerAudioWriter);
    } catch (error) {
      callerAudioWriter.finish(); // drops the half-written message
      throw error;
    }
  },
  decode: (input) => CallerAudio.decode(input),
};
