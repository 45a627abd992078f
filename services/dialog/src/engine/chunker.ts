// Cuts streamed LLM text into pieces tts can speak as soon as they are complete.

/** A clause shorter than this waits for more text ("Sure," alone sounds clipped and costs a tts request). */
const MIN_CLAUSE_CHARS = 24;
/** Text without any break is cut at a space once it grows this long. */
const MAX_CHUNK_CHARS = 220;

/**
 * Collects streamed text and hands out speakable chunks: every complete sentence (. ! ? followed by a space or
 * a line break), and a clause (, ; : or a dash followed by a space) once it is long enough. `flush()` gives what
 * is left when the stream ends. A piece with no word in it (only emoji, punctuation or markup) is left out: tts
 * would say nothing for it.
 */
export class ClauseChunker {
  private buffer = "";

  push(delta: string): string[] {
    this.buffer += delta;
    const chunks: string[] = [];
    for (;;) {
      const cut = this.findCut();
      if (cut <= 0) break;
      const chunk = speakable(this.buffer.slice(0, cut));
      this.buffer = this.buffer.slice(cut);
      if (hasWords(chunk)) chunks.push(chunk);
    }
    return chunks;
  }

  flush(): string {
    const rest = speakable(this.buffer);
    this.buffer = "";
    return hasWords(rest) ? rest : "";
  }

  /** Index just after the first place the buffer may be cut, or -1. */
  private findCut(): number {
    const text = this.buffer;
    const sentence = /[.!?]+["')\]]*(?=\s)|\n+/g;
    let match: RegExpExecArray | null;
    while ((match = sentence.exec(text))) {
      const end = match.index + match[0].length;
      // "3.5" inside a sentence is no sentence end: only a following space or line break counts. Nor is the period
      // of "Dr. Smith", "9 a.m. tomorrow" or a list's "1. ": cut there, tts would say them apart, with a pause.
      if (match[0] === "." && NOT_A_SENTENCE_END.test(text.slice(0, end))) continue;
      if (speakable(text.slice(0, end))) return end;
    }
    const clause = /[,;:]["')\]]*(?=\s)|\s[-\u2013\u2014]\s/g;
    while ((match = clause.exec(text))) {
      const end = match.index + match[0].length;
      if (end >= MIN_CLAUSE_CHARS) return end;
    }
    if (text.length > MAX_CHUNK_CHARS) {
      const space = text.lastIndexOf(" ", MAX_CHUNK_CHARS);
      return space > 0 ? space : MAX_CHUNK_CHARS;
    }
    return -1;
  }
}

/**
 * A keypad key named in a sentence: `*` or `#` standing alone (space, quote or bracket before; space, punctuation,
 * the end or a digit after: "*67") or right after a digit ("12345#"), not at a line's start (a bullet or heading).
 */
const KEYPAD_SYMBOL = /([^\s*#][ \t]+["'(]?|\d)([*#])(?=["')]?(?:[\s.,!?;:]|$)|\d)/g;

/** Text ending in a period that ends no sentence: a title or a common abbreviation, or a list item's number. */
const NOT_A_SENTENCE_END = /(?:(?:^|[\s("'])(?:mr|mrs|ms|dr|prof|st|jr|sr|vs|e\.g|i\.e|a\.m|p\.m)|(?:^|\n)[ \t]*\d{1,2})\.$/i;

/** Text with something to say: a letter or a digit. */
export function hasWords(text: string): boolean {
  return /[\p{L}\p{N}]/u.test(text);
}

/**
 * Text as tts should get it: markdown markers and list bullets removed, markup tags (SSML the engines would read
 * out: "break time equals two s") dropped, a web address said as its site ("example.com", not letter by letter),
 * whitespace collapsed.
 */
export function speakable(text: string): string {
  return text
    .replace(/```[\s\S]*?```/g, " ")
    .replace(/<\/?[a-zA-Z][^<>]*>/g, " ")
    .replace(/\bhttps?:\/\/(?:www\.)?([^\s/?#]+)[^\s]*/gi, "$1")
    // The phone's keys, not markup: a lone * or # inside a line (after a word or digit: "press * then 1", "12345#").
    .replace(KEYPAD_SYMBOL, (match: string, before: string, key: string, at: number, whole: string) => {
      const name = key === "*" ? "star" : "pound";
      return `${before}${/\d$/.test(before) ? " " : ""}${name}${/\d/.test(whole[at + match.length] ?? "") ? " " : ""}`;
    })
    .replace(/\*+|`+|~~/g, "")
    .replace(/^\s*#+\s|^\s*>\s/gm, " ")
    .replace(/^\s*[-\u2022]\s+/gm, " ")
    .replace(/\s+/g, " ")
    .replace(/\s+([,.!?;:])/g, "$1")
    .trim();
}
