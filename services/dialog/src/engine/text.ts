// Text helpers of the scripted engine: normalizing what the caller said, spoken digits, templates, sentences.

/** Lowercase words separated by single spaces; apostrophes vanish ("that's" -> "thats"), other punctuation splits. */
export function normalizeText(text: string): string {
  return text
    .toLowerCase()
    .replace(/['\u2019`]/g, "")
    .replace(/[^\p{L}\p{N}]+/gu, " ")
    .trim();
}

const UNITS: Record<string, number> = { zero: 0, one: 1, two: 2, three: 3, four: 4, five: 5, six: 6, seven: 7, eight: 8, nine: 9 };
const TEENS: Record<string, number> = {
  ten: 10,
  eleven: 11,
  twelve: 12,
  thirteen: 13,
  fourteen: 14,
  fifteen: 15,
  sixteen: 16,
  seventeen: 17,
  eighteen: 18,
  nineteen: 19,
};
const TENS: Record<string, number> = { twenty: 2, thirty: 3, forty: 4, fifty: 5, sixty: 6, seventy: 7, eighty: 8, ninety: 9 };
const REPEAT: Record<string, number> = { double: 2, triple: 3 };

/** The digit a single token stands for ("7", "seven", "oh" next to other digits), or undefined. */
function unitDigit(token: string | undefined): string | undefined {
  if (token === undefined) return undefined;
  if (/^\d$/.test(token)) return token;
  return token in UNITS ? String(UNITS[token]) : undefined;
}

/**
 * The digits in what a caller said: "one two three four five", "12345", "1 2 3 4 5", "twelve three forty five",
 * "double five", "six oh two". Words that are not numbers are skipped; "" when there are none.
 */
export function spokenDigits(text: string): string {
  const tokens = normalizeText(text).split(" ").filter(Boolean);
  let out = "";
  const isNumberToken = (t: string | undefined) =>
    t !== undefined && (/^\d+$/.test(t) || t in UNITS || t in TEENS || t in TENS);
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    if (/^\d+$/.test(token)) out += token;
    else if (token in UNITS) out += UNITS[token];
    else if (token in TEENS) out += TEENS[token];
    else if (token in TENS) {
      const unit = tokens[i + 1] !== "zero" ? unitDigit(tokens[i + 1]) : undefined;
      if (unit !== undefined && unit !== "0") {
        out += `${TENS[token]}${unit}`;
        i++;
      } else out += `${TENS[token]}0`;
    } else if ((token === "oh" || token === "o") && (isNumberToken(tokens[i - 1]) || isNumberToken(tokens[i + 1]))) {
      out += "0"; // "six oh two"; a lone "oh" is an interjection
    } else if (token in REPEAT) {
      const unit = unitDigit(tokens[i + 1]) ?? (tokens[i + 1] === "oh" ? "0" : undefined);
      if (unit !== undefined) {
        out += unit.repeat(REPEAT[token]);
        i++;
      }
    }
  }
  return out;
}

/**
 * The numbers in what a caller said, each run of number words on its own: "my order is 1 2 3 4 5 and my zip is
 * 90210" -> ["12345", "90210"]. Words between numbers separate them; "oh", "double" and "triple" belong to a run.
 */
export function spokenNumbers(text: string): string[] {
  const tokens = normalizeText(text).split(" ").filter(Boolean);
  const runs: string[] = [];
  let run: string[] = [];
  const flush = () => {
    const digits = spokenDigits(run.join(" "));
    if (digits) runs.push(digits);
    run = [];
  };
  for (const token of tokens) {
    if (/^\d+$/.test(token) || token in UNITS || token in TEENS || token in TENS || token in REPEAT || token === "oh" || token === "o") run.push(token);
    else flush();
  }
  flush();
  return runs;
}

const FILLERS = new Set(["press", "pressed", "pressing", "option", "number", "key", "please", "the", "i", "ill", "want", "choose", "um", "uh"]);

/** The single key a caller said instead of pressing it ("one", "press 1", "option zero"), or undefined. */
export function spokenKey(text: string): string | undefined {
  const words = normalizeText(text).split(" ").filter((w) => w && !FILLERS.has(w));
  if (words.length !== 1) return undefined;
  const word = words[0];
  if (/^\d$/.test(word)) return word;
  if (word in UNITS) return String(UNITS[word]);
  if (word === "star") return "*";
  if (word === "pound" || word === "hash") return "#";
  return undefined;
}

export const TEMPLATE = /\{\{\s*([^}|\s]+)\s*(?:\|\s*([^}\s]+)\s*)?\}\}/g;

export function hasTemplate(text: string): boolean {
  return /\{\{/.test(text);
}

/** Fills {{path}} and {{path|spell}} from scope; missing values become "". */
export function renderTemplate(text: string, scope: Record<string, unknown>): string {
  return text
    .replace(TEMPLATE, (_m, ref: string, filter: string | undefined) => {
      const value = lookup(scope, ref);
      const rendered = valueText(value);
      return filter === "spell" ? spell(rendered) : rendered;
    })
    .replace(/\s{2,}/g, " ")
    .trim();
}

export function lookup(scope: unknown, ref: string): unknown {
  let value: unknown = scope;
  for (const part of ref.split(".")) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<string, unknown>)[part];
  }
  return value;
}

function valueText(value: unknown): string {
  if (value === undefined || value === null) return "";
  if (Array.isArray(value)) {
    const items = value.map(valueText).filter(Boolean);
    if (items.length <= 2) return items.join(" and ");
    return `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
  }
  if (typeof value === "object") return "";
  return String(value);
}

/** "12345" -> "1 2 3 4 5": read out one character at a time. */
export function spell(text: string): string {
  return [...text.replace(/\s+/g, "")].join(" ");
}

/** Sentences to speak one by one: split after . ! ? followed by whitespace. */
export function splitSentences(text: string): string[] {
  return text
    .split(/(?<=[.!?])\s+/)
    .map((s) => s.trim())
    .filter(Boolean);
}
