// "Is the caller done?" from the words so far: a sentence that stops on "and" or "my order number is" is
// probably not finished, so the end of the utterance waits longer (up to the maximum silence) for the rest.

/** Each entry is one word or phrase, as lower-case words. */
export type Continuations = string[][];

/**
 * Words that rarely end what a caller means to say. Kept short on purpose: everything here delays the reply
 * when it does end an answer. Answers the demo agent expects ("that's it", "all set", "no") are not in it.
 */
export const DEFAULT_CONTINUATIONS = [
  "and", "or", "but", "so", "because", "if", "then",
  "the", "a", "an", "my", "your", "our", "their", "this",
  "to", "of", "for", "with", "from", "at", "in", "on", "by", "about",
  "is", "are", "was", "were", "am", "i", "i'm", "it's",
  "um", "uh", "er", "erm", "like", "that", "which",
  "number", "order number", "account number", "phone number",
];

/** Lower case, apostrophes kept, everything else that is not a letter or digit a word break. */
export function words(text: string): string[] {
  return text
    .toLowerCase()
    .replace(/[\u2019`]/g, "'")
    .replace(/[^a-z0-9']+/g, " ")
    .split(" ")
    .map((w) => w.replace(/^'+|'+$/g, ""))
    .filter(Boolean);
}

/** The configured list ("and, or, my order number is") as word lists; blank entries are dropped. */
export function parseContinuations(list: readonly string[]): Continuations {
  return list.map(words).filter((phrase) => phrase.length > 0);
}

/** True when the text ends with one of the continuations (whole words). */
export function looksUnfinished(text: string, continuations: Continuations): boolean {
  if (continuations.length === 0) return false;
  const said = words(text);
  return continuations.some((phrase) => phrase.length <= said.length && phrase.every((w, i) => said[said.length - phrase.length + i] === w));
}
