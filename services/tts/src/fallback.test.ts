// What an engine that broke off mid-sentence leaves for the next one to say.

import { describe, expect, it } from "vitest";
import { unsaidRest } from "./fallback.js";

const SENTENCE = "Order 1 0 0 0 4 2 has shipped and arrives on Friday.";

describe("unsaidRest", () => {
  it("restarts from the word before the one the estimate (10 characters a second) falls in", () => {
    // 2.1 s: 21 characters, inside "has" (18-20): "2 has shipped..." is said again.
    expect(unsaidRest(SENTENCE, 2.1)).toBe("2 has shipped and arrives on Friday.");
    // On a word's first character ("shipped", 22): that word and the one before it.
    expect(unsaidRest(SENTENCE, 2.2)).toBe("has shipped and arrives on Friday.");
  });

  it("says the whole sentence again when the break came within its first word or two", () => {
    expect(unsaidRest(SENTENCE, 0)).toBe(SENTENCE);
    expect(unsaidRest(SENTENCE, 0.7)).toBe(SENTENCE);
    expect(unsaidRest(`  ${SENTENCE}`, 0.1)).toBe(SENTENCE);
  });

  it("leaves nothing once the audio outlasts the slowest reading of the text", () => {
    expect(unsaidRest(SENTENCE, SENTENCE.length / 10)).toBe("");
    expect(unsaidRest("Goodbye.", 5)).toBe("");
  });

  it("counts a slower speaking rate as less said, and a faster one not as more (engines clamp it)", () => {
    expect(unsaidRest(SENTENCE, 4.4, 0.5)).toBe(unsaidRest(SENTENCE, 2.2));
    expect(unsaidRest(SENTENCE, 2.2, 2)).toBe(unsaidRest(SENTENCE, 2.2));
  });
});
