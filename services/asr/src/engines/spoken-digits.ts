// Digits mode: cloud recognizers write numbers as words ("four oh seven") or as digits with separators
// ("407-12"); the dialog wants one digit string. Number words become digits and adjacent digit groups join;
// other words are kept, so "my order is four oh seven" reads "my order is 407" and "I don't know" survives.

const UNITS: Record<string, string> = {
  zero: "0", one: "1", two: "2", three: "3", four: "4", five: "5", six: "6", seven: "7", eight: "8", nine: "9",
};
const TEENS: Record<string, string> = {
  ten: "10", eleven: "11", twelve: "12", thirteen: "13", fourteen: "14", fifteen: "15", sixteen: "16",
  seventeen: "17", eighteen: "18", nineteen: "19",
};
const TENS: Record<string, string> = {
  twenty: "2", thirty: "3", forty: "4", fifty: "5", sixty: "6", seventy: "7", eighty: "8", ninety: "9",
};
const REPEAT: Record<string, number> = { double: 2, triple: 3 };
// "oh"/"o" are zero only next to other digits ("four oh seven"), not on their own ("oh, sorry").
const ZERO_LETTERS = new Set(["oh", "o"]);

type Token = { word: string; raw: string };

function isDigitWord(word: string): boolean {
  return Object.hasOwn(UNITS, word) || Object.hasOwn(TEENS, word) || Object.hasOwn(TENS, word) || /^\d+$/.test(word);
}

export function normalizeSpokenDigits(text: string): string {
  const tokens: Token[] = [];
  for (const raw of text.split(/\s+/).filter(Boolean)) {
    // "twenty-one" is two words; "407-12" and "4.07" are one digit group.
    const cleaned = raw.toLowerCase().replace(/^[^\p{L}\p{N}]+|[^\p{L}\p{N}]+$/gu, "");
    if (/^[\d][\d\-.,/]*\d$|^\d$/.test(cleaned)) tokens.push({ word: cleaned.replace(/\D/g, ""), raw });
    else if (cleaned.includes("-") && cleaned.split("-").every((p) => Object.hasOwn(TENS, p) || Object.hasOwn(UNITS, p))) {
      for (const part of cleaned.split("-")) tokens.push({ word: part, raw: part });
    } else tokens.push({ word: cleaned, raw });
  }

  const out: string[] = [];
  let run = "";
  const flush = () => {
    if (run) out.push(run);
    run = "";
  };
  for (let i = 0; i < tokens.length; i++) {
    const { word, raw } = tokens[i];
    const next = tokens[i + 1]?.word;
    if (/^\d+$/.test(word)) run += word;
    else if (Object.hasOwn(UNITS, word)) run += UNITS[word];
    else if (Object.hasOwn(TEENS, word)) run += TEENS[word];
    else if (Object.hasOwn(TENS, word)) {
      // "twenty one" → 21, "twenty" → 20.
      if (next !== undefined && Object.hasOwn(UNITS, next) && next !== "zero") {
        run += TENS[word] + UNITS[next];
        i++;
      } else run += TENS[word] + "0";
    } else if (Object.hasOwn(REPEAT, word) && next !== undefined && (Object.hasOwn(UNITS, next) || ZERO_LETTERS.has(next))) {
      run += (UNITS[next] ?? "0").repeat(REPEAT[word]);
      i++;
    } else if (ZERO_LETTERS.has(word) && (run !== "" || (next !== undefined && isDigitWord(next) && !/[,;:!?.]$/.test(raw)))) run += "0";
    else {
      flush();
      out.push(raw);
    }
  }
  flush();
  return out.join(" ");
}
