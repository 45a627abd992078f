// "Has the caller already said all they will?" from the words so far: in a state that expects one of a few answers
// ("order status", "agent", "goodbye"), an utterance that is exactly one of them is over, and waiting out the full
// endpoint silence (600 ms) only delays the reply. It ends after a shorter silence instead (ASR_COMPLETE_SILENCE_MS).
import { words } from "./continuation.js";

/** Spoken digits: a number said digit by digit has no length to be complete at ("one [pause] two three"). */
const DIGIT_WORD = /^(?:\d+|zero|oh|one|two|three|four|five|six|seven|eight|nine)$/;

/** Sounds and politeness that do not change which answer was given. */
const FILLERS = new Set(["um", "uh", "er", "erm", "hmm", "mm", "please"]);

/**
 * An answer as compared: its words in lower case without apostrophes (the dialog writes "thats all", the engine hears
 * "That's all."), fillers left out, joined by single spaces.
 */
function answerKey(text: string): string {
  return words(text)
    .map((word) => word.replace(/'/g, ""))
    .filter((word) => !FILLERS.has(word))
    .join(" ");
}

/**
 * The answers a state expects, from its hints, that can end an utterance early: only a phrases state has any (digits
 * have no length to be complete at, and a free-text state no list); not spoken digits ("one" may begin a number);
 * and not an answer that begins a longer one ("order" of "order status", "bye" of "bye bye"): the caller may be
 * pausing inside the longer one.
 */
export function expectedAnswers(hints: { mode: "phrases" | "digits"; phrases: readonly string[] }): Set<string> | undefined {
  if (hints.mode !== "phrases") return undefined;
  const all = [...new Set(hints.phrases.map(answerKey).filter(Boolean))];
  const answers = new Set(
    all.filter((answer) => !answer.split(" ").every((word) => DIGIT_WORD.test(word)) && !all.some((longer) => longer.startsWith(answer + " "))),
  );
  return answers.size > 0 ? answers : undefined;
}

/** True when the text is, word for word (fillers aside), one of the expected answers. */
export function isCompleteAnswer(text: string, answers: Set<string> | undefined): boolean {
  if (!answers) return false;
  const key = answerKey(text);
  return key !== "" && answers.has(key);
}
