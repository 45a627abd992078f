// Cutting text into pieces an engine process can take.

/**
 * Linux refuses argv strings over 128 KiB (E2BIG), and one flite run is one utterance that only appears when
 * it is complete, so text is handed over in pieces. Pieces longer than `maxChars` are cut at a space.
 */
export function splitSentences(text: string, maxChars = 1000): string[] {
  const sentences = text
    .split(/(?<=[.!?])\s+/) // end punctuation followed by space; "3.50" stays whole
    .map((s) => s.trim())
    .filter((s) => /[\p{L}\p{N}]/u.test(s)); // nothing speakable: skip (flite would render a lone "." as silence)
  return sentences.flatMap((s) => cutLong(s, maxChars));
}

/** Sentences joined back into runs of at most `maxChars` (for engines that stream within one process). */
export function groupSentences(text: string, maxChars: number): string[] {
  const groups: string[] = [];
  let current = "";
  for (const sentence of splitSentences(text, maxChars)) {
    if (current && current.length + 1 + sentence.length > maxChars) {
      groups.push(current);
      current = "";
    }
    current = current ? `${current} ${sentence}` : sentence;
  }
  if (current) groups.push(current);
  return groups;
}

function cutLong(sentence: string, maxChars: number): string[] {
  const pieces: string[] = [];
  let rest = sentence;
  while (rest.length > maxChars) {
    const space = rest.lastIndexOf(" ", maxChars);
    const cut = space > maxChars / 2 ? space : maxChars;
    pieces.push(rest.slice(0, cut).trim());
    rest = rest.slice(cut).trim();
  }
  if (rest) pieces.push(rest);
  return pieces;
}
