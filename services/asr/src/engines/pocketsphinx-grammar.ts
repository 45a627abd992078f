// Grammars for the pocketsphinx engine, written as Sphinx FSG files with a matching small dictionary.
//
// Phrases mode: the expected phrases, with a garbage loop before and after each and a garbage-only way
// through. Garbage is a loop of common short words plus the 39 phones as one-phone pseudo-words, so speech
// around the phrase ("I'd like to check my order status please") and speech with no phrase at all is soaked
// up instead of being forced onto a phrase. The full trigram LM was worse for this: 7/20 of the bare phrases
// right on flite voices, against 20/20 for the plain phrase list. Measured with the whole engine on flite
// voices (slt, kal, awb, rms) at -12, 0 and +4 dB, 5 phrases each (so 60 per row):
//   phrase alone 57/60 right; phrase inside a sentence 58/60; sentences with no phrase 54/60 left empty.
// Without garbage every sentence matches some phrase; word garbage alone let 3/20 through; more weight on
// the garbage (GARBAGE_BEFORE 0.9, 0.99) starts eating short phrases ("agent", "that's all"), less (0.8)
// lets 8/60 sentences through. Probabilities are FSG transition probabilities; the decoder multiplies their
// logs by its language weight (-lw 6.5), so they act as per-word insertion penalties.
//
// Digits mode: one or more digit words, optionally ending in "pound"/"hash", or nothing. The per-word
// probability (0.01 for the first digit, 0.002 for each further one) is the word insertion penalty: with
// the JSGF equivalent of <digit>+ pocketsphinx inserted digits into every pause (9/40 strings right); with
// these 25/40. A "pound" with no digit before it is not allowed: line noise boosted by the front end came
// out as "hash". A digits state's own phrases ("agent", "goodbye") are ways through too, all of them together
// weighted as one more first digit; the engine takes one only when the N-best list is sure of it (see
// MIN_DIGITS_STATE_PHRASE_CONFIDENCE: numbers read as before, the phrases heard on a clean line about half the time).
//
// The garbage-only grammar ("competitor") is decoded next to the phrases grammar for the confidence: the
// difference of the two best-path scores says how much better the phrase explains the audio than anything
// else.

import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";

/** word → pronunciations (space-separated phones), as in cmudict; alternates keep their order. */
export type Dictionary = Map<string, string[]>;

export async function loadDictionary(path: string): Promise<Dictionary> {
  const text = await readFile(path, "utf8");
  const dict: Dictionary = new Map();
  for (const line of text.split("\n")) {
    const space = line.indexOf(" ");
    if (space <= 0) continue;
    let word = line.slice(0, space);
    const phones = line.slice(space + 1).trim();
    // cmudict: "word(2) ..." is the second pronunciation of "word"; "#" starts a comment after the phones.
    const paren = word.indexOf("(");
    if (paren > 0) word = word.slice(0, paren);
    const hash = phones.indexOf("#");
    const pron = (hash >= 0 ? phones.slice(0, hash) : phones).trim();
    if (!pron) continue;
    const list = dict.get(word);
    if (list) list.push(pron);
    else dict.set(word, [pron]);
  }
  return dict;
}

export const DIGIT_WORDS: Record<string, string> = {
  zero: "0", oh: "0", one: "1", two: "2", three: "3", four: "4", five: "5", six: "6", seven: "7", eight: "8", nine: "9",
};
const DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
export const POUND_WORDS = ["pound", "hash"];

/** Short words that appear around phrases on the phone; phrase words are removed from this list. */
const GARBAGE_WORDS = (
  "i a the to and my is it you that yes no okay please thanks thank uh um can want like would talk speak check " +
  "with me on for what about have do need oh so well just get"
).split(" ");
/** The acoustic model's phones except SIL; each becomes a one-phone pseudo-word "ph_<phone>". */
const PHONES = (
  "AH N IH S L T R K IY D M ER Z EH AA AE B P OW F EY G AO AY V NG UW HH W SH JH Y CH AW TH UH OY DH ZH"
).split(" ");
const PHONE_WORD_PREFIX = "ph_";

// Phrases grammar weights (see the header).
const GARBAGE_BEFORE = 0.85; // probability mass of the garbage loop before the phrase
const GARBAGE_AFTER = 0.2; // ... and after it
const GARBAGE_ONLY_EXIT = 0.1; // leaving without any phrase
const GARBAGE_PHONE_SHARE = 0.5; // of the loop's mass, the part on phones (the rest on words)
// Digits grammar weights.
const DIGIT_FIRST = 0.01;
const DIGIT_NEXT = 0.002;
const DIGIT_POUND = 0.01;
const DIGIT_NOTHING = 0.001;
/** All of a digits state's phrases together, as one more first word. */
const DIGIT_PHRASES = 0.01;

export interface PhraseEntry {
  /** The phrase as the hints gave it; this is what the engine returns. */
  text: string;
  /** Dictionary words it is decoded as. */
  words: string[];
}

export interface Grammar {
  mode: "phrases" | "digits";
  /** FSG text for the main decode. */
  fsg: string;
  /** FSG text of the garbage-only competitor (phrases mode). */
  competitorFsg?: string;
  /** Dictionary text covering every word of fsg and competitorFsg. */
  dict: string;
  phrases: PhraseEntry[];
  /** Phrases that could not be used at all, and words dropped from phrases, because no pronunciation exists. */
  skippedPhrases: string[];
  skippedWords: string[];
  /** Content hash: grammar files are cached under it. */
  key: string;
}

/**
 * The dictionary words for a phrase. Lower-cased, split on anything but letters, digits and apostrophes;
 * digits are read one by one ("24" → "two four"); a word missing from the dictionary is tried without its
 * apostrophes, then spelled if it is a short letter string ("FAQ" → "f a q"), else dropped.
 */
export function phraseWords(phrase: string, dict: Dictionary): { words: string[]; missing: string[] } {
  const words: string[] = [];
  const missing: string[] = [];
  const tokens = phrase
    .toLowerCase()
    .replace(/[’‘`]/g, "'")
    .replace(/&/g, " and ")
    .split(/[^a-z0-9']+/)
    .map((t) => t.replace(/^'+|'+$/g, ""))
    .filter(Boolean);
  for (const token of tokens) {
    if (/^\d+$/.test(token)) {
      for (const d of token) words.push(DIGIT_NAMES[Number(d)]);
    } else if (dict.has(token)) {
      words.push(token);
    } else if (token.includes("'") && dict.has(token.replace(/'/g, ""))) {
      words.push(token.replace(/'/g, ""));
    } else if (/^[a-z]{1,4}$/.test(token) && [...token].every((c) => dict.has(c))) {
      words.push(...token);
    } else {
      missing.push(token);
    }
  }
  return { words, missing };
}

function formatProb(p: number): string {
  return Number(p.toPrecision(6)).toString();
}

class FsgWriter {
  private readonly lines: string[] = [];
  private states = 2; // 0 = start, 1 = final
  newState(): number {
    return this.states++;
  }
  /** A transition; no word means an epsilon (null) transition. */
  add(from: number, to: number, prob: number, word?: string): void {
    this.lines.push(`TRANSITION ${from} ${to} ${formatProb(prob)}${word ? ` ${word}` : ""}`);
  }
  text(name: string): string {
    return [`FSG_BEGIN ${name}`, `NUM_STATES ${this.states}`, "START_STATE 0", "FINAL_STATE 1", ...this.lines, "FSG_END", ""].join("\n");
  }
}

function addGarbageLoop(fsg: FsgWriter, state: number, mass: number, garbageWords: string[]): void {
  const wordMass = garbageWords.length > 0 ? mass * (1 - GARBAGE_PHONE_SHARE) : 0;
  const phoneMass = mass - wordMass;
  for (const w of garbageWords) fsg.add(state, state, wordMass / garbageWords.length, w);
  for (const p of PHONES) fsg.add(state, state, phoneMass / PHONES.length, PHONE_WORD_PREFIX + p.toLowerCase());
}

function dictText(words: Iterable<string>, dict: Dictionary, withPhones: boolean): string {
  const lines: string[] = [];
  for (const word of [...new Set(words)].sort()) {
    const prons = dict.get(word);
    if (!prons) throw new Error(`no pronunciation for ${JSON.stringify(word)}`); // phraseWords() filtered these
    prons.forEach((pron, i) => lines.push(`${i === 0 ? word : `${word}(${i + 1})`} ${pron}`));
  }
  if (withPhones) for (const p of PHONES) lines.push(`${PHONE_WORD_PREFIX}${p.toLowerCase()} ${p}`);
  return lines.join("\n") + "\n";
}

function keyOf(...parts: string[]): string {
  const h = createHash("sha256");
  for (const p of parts) h.update(p).update("\0");
  return h.digest("hex").slice(0, 20);
}

/** The phrases as dictionary words, each once; those with no usable word are skipped (and said so). */
function phraseEntries(phrases: readonly string[], dict: Dictionary): { entries: PhraseEntry[]; skippedPhrases: string[]; skippedWords: string[] } {
  const entries: PhraseEntry[] = [];
  const skippedPhrases: string[] = [];
  const skippedWords: string[] = [];
  const seen = new Set<string>();
  for (const text of phrases) {
    const { words, missing } = phraseWords(text, dict);
    skippedWords.push(...missing);
    if (words.length === 0) {
      skippedPhrases.push(text);
      continue;
    }
    const id = words.join(" ");
    if (seen.has(id)) continue;
    seen.add(id);
    entries.push({ text, words });
  }
  return { entries, skippedPhrases, skippedWords };
}

/** The phrases grammar. Phrases with no usable word are skipped; `phrases` may come back empty. */
export function buildPhraseGrammar(phrases: string[], dict: Dictionary): Grammar {
  const { entries, skippedPhrases, skippedWords } = phraseEntries(phrases, dict);
  const phraseVocabulary = new Set(entries.flatMap((e) => e.words));
  const garbageWords = GARBAGE_WORDS.filter((w) => !phraseVocabulary.has(w) && dict.has(w));

  const fsg = new FsgWriter();
  const before = fsg.newState(); // 2
  const after = fsg.newState(); // 3
  fsg.add(0, before, 1);
  addGarbageLoop(fsg, before, GARBAGE_BEFORE, garbageWords);
  for (const entry of entries) {
    let from = before;
    entry.words.forEach((word, i) => {
      const last = i === entry.words.length - 1;
      const to = last ? after : fsg.newState();
      fsg.add(from, to, i === 0 ? (1 - GARBAGE_BEFORE) / entries.length : 1, word);
      from = to;
    });
  }
  addGarbageLoop(fsg, after, GARBAGE_AFTER, garbageWords);
  fsg.add(after, 1, 1 - GARBAGE_AFTER);
  fsg.add(before, 1, GARBAGE_ONLY_EXIT);

  // The competitor is the same garbage-only path, so the score difference is only about the phrase.
  const competitor = new FsgWriter();
  const loop = competitor.newState();
  competitor.add(0, loop, 1);
  addGarbageLoop(competitor, loop, GARBAGE_BEFORE, garbageWords);
  competitor.add(loop, 1, GARBAGE_ONLY_EXIT);

  const fsgText = fsg.text("phrases");
  const competitorText = competitor.text("garbage");
  const dictionary = dictText([...phraseVocabulary, ...garbageWords], dict, true);
  return {
    mode: "phrases",
    fsg: fsgText,
    competitorFsg: competitorText,
    dict: dictionary,
    phrases: entries,
    skippedPhrases,
    skippedWords,
    key: keyOf(fsgText, competitorText, dictionary),
  };
}

/**
 * The digits grammar; with `phrases` (what else the state listens for: "agent", "goodbye"), each of them is a way
 * through too, instead of the digits, so a caller asked for a number can still ask for a person.
 */
export function buildDigitsGrammar(dict: Dictionary, phrases: readonly string[] = []): Grammar {
  const digitWords = Object.keys(DIGIT_WORDS);
  // A phrase made of digit and pound words only is a number: the digit paths read it.
  const numberWords = new Set([...digitWords, ...POUND_WORDS]);
  const { entries: all, skippedPhrases, skippedWords } = phraseEntries(phrases, dict);
  const entries = all.filter((entry) => !entry.words.every((word) => numberWords.has(word)));
  const fsg = new FsgWriter();
  const inDigits = fsg.newState(); // 2
  for (const w of digitWords) fsg.add(0, inDigits, DIGIT_FIRST, w);
  for (const w of digitWords) fsg.add(inDigits, inDigits, DIGIT_NEXT, w);
  fsg.add(inDigits, 1, 1);
  for (const w of POUND_WORDS) fsg.add(inDigits, 1, DIGIT_POUND, w);
  fsg.add(0, 1, DIGIT_NOTHING);
  for (const entry of entries) {
    let from = 0;
    entry.words.forEach((word, i) => {
      const to = i === entry.words.length - 1 ? 1 : fsg.newState();
      fsg.add(from, to, i === 0 ? DIGIT_PHRASES / entries.length : 1, word);
      from = to;
    });
  }
  const fsgText = fsg.text("digits");
  const dictionary = dictText([...digitWords, ...POUND_WORDS, ...entries.flatMap((e) => e.words)], dict, false);
  return { mode: "digits", fsg: fsgText, dict: dictionary, phrases: entries, skippedPhrases, skippedWords, key: keyOf(fsgText, dictionary) };
}

/** Hypothesis words without fillers ("<sil>", "[NOISE]") and garbage phones. */
export function spokenWords(hyp: string): string[] {
  return hyp
    .split(/\s+/)
    .filter((w) => w !== "" && !w.startsWith("<") && !w.startsWith("[") && !w.startsWith(PHONE_WORD_PREFIX))
    .map((w) => w.replace(/\(\d+\)$/, ""));
}

/** The phrase whose words occur in the hypothesis (the longest, if several do). */
export function matchPhrase(words: string[], phrases: PhraseEntry[]): PhraseEntry | undefined {
  const hyp = ` ${words.join(" ")} `;
  let best: PhraseEntry | undefined;
  for (const entry of phrases) {
    if (hyp.includes(` ${entry.words.join(" ")} `) && (!best || entry.words.length > best.words.length)) best = entry;
  }
  return best;
}

/** "one two oh pound" → "120#". Non-digit words are ignored. */
export function digitsFromWords(words: string[]): string {
  let out = "";
  for (const w of words) {
    if (w in DIGIT_WORDS) out += DIGIT_WORDS[w];
    else if (POUND_WORDS.includes(w)) out += "#";
  }
  return out;
}
