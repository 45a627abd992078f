// Reading uncertain digits back to the caller, shared by the scripted and the LLM engine.
import type { RecognitionHints } from "./types.js";
import { normalizeText, spell } from "./text.js";

/** Default confidence below which spoken digits are read back (DIGITS_CONFIRM_CONFIDENCE). */
export const DEFAULT_CONFIRM_CONFIDENCE = 0.8;

const YES = ["yes", "yeah", "yep", "yup", "correct", "thats right", "thats correct", "right", "sure", "affirmative", "exactly", "it is", "yes it is", "uh huh"];
const NO = ["no", "nope", "nah", "wrong", "incorrect", "not right", "thats wrong", "thats not right", "negative", "no it isnt", "it isnt"];

/** "yes", "no", or undefined when the caller said neither (a "no" anywhere wins: "yes, no wait"). */
export function yesNo(text: string): "yes" | "no" | undefined {
  const padded = ` ${normalizeText(text)} `;
  const has = (phrases: string[]) => phrases.some((p) => padded.includes(` ${p} `));
  if (has(NO)) return "no";
  if (has(YES)) return "yes";
  return undefined;
}

export function readback(digits: string): string {
  return `I heard ${spell(digits)}. Is that right? Say yes, or key in the number.`;
}

export const CORRECTION_PROMPT = "Sorry about that. Please say or key in the number again.";

export function keyItInPrompt(terminator = "#"): string {
  return `Please key in the number on your keypad, then press ${terminator === "*" ? "star" : "pound"}.`;
}

const DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"];

/** While a number is being confirmed the recognizer should expect yes/no or a new number. */
export function confirmHints(base?: Pick<RecognitionHints, "minSilenceMs" | "maxSilenceMs" | "completeSilenceMs">): RecognitionHints {
  const hints: RecognitionHints = { mode: "phrases", phrases: ["yes", "no", "that's right", "correct", "wrong", ...DIGIT_WORDS] };
  if (base?.minSilenceMs !== undefined) hints.minSilenceMs = base.minSilenceMs;
  if (base?.maxSilenceMs !== undefined) hints.maxSilenceMs = base.maxSilenceMs;
  // "No [pause] 4 5 6 7 8" is one answer: ending it after "no" would cut the number off. Only an agent that asks for
  // it ends "yes" early here.
  hints.completeSilenceMs = base?.completeSilenceMs ?? 0;
  return hints;
}
