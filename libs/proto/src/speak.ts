// What dialog and tts must agree on about a SpeakRequest, beyond its fields.
import type { SpeakRequest } from "./gen/voicebot/dialog/v1/dialog.js";

/** Text with a letter or digit; anything else makes no sound in any engine (tts sends one frame of silence). */
export function isSpeakable(text: string): boolean {
  return SPEAKABLE.test(text);
}

const SPEAKABLE = /[\p{L}\p{N}]/u;

/**
 * A line as the tts cache knows it: the same voice, format and text is the same audio (on a replica's engines).
 * The dialog derives the message id of a prefetch from it, tts spots the same line sent twice with it.
 */
export function speakLineKey(request: Pick<SpeakRequest, "voice" | "format" | "text">): string {
  return JSON.stringify([request.voice, request.format?.encoding ?? 0, request.format?.sampleRate ?? 0, request.text]);
}
