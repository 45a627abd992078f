import { describe, expect, it } from "vitest";
import { normalizeSpokenDigits } from "./spoken-digits.js";

describe("normalizeSpokenDigits", () => {
  const cases: Array<[string, string]> = [
    ["one two three", "123"],
    ["four oh seven", "407"],
    ["zero zero seven", "007"],
    ["twenty one", "21"],
    ["twenty-one", "21"],
    ["four oh five twenty", "40520"],
    ["fifteen", "15"],
    ["double five six", "556"],
    ["triple oh", "000"],
    ["1 2 3", "123"],
    ["123-456", "123456"],
    ["Four oh seven, twenty one.", "40721"],
    ["my order number is four five six", "my order number is 456"],
    ["It's 4 5, then 6.", "It's 45 then 6"],
    ["I don't know", "I don't know"],
    ["oh, sorry", "oh, sorry"],
    ["Oh, four five", "Oh, 45"],
    ["", ""],
    // Words that every object has as a property are words, not numbers.
    ["constructor toString one", "constructor toString 1"],
    ["double constructor", "double constructor"],
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(input)} → ${JSON.stringify(expected)}`, () => {
      expect(normalizeSpokenDigits(input)).toBe(expected);
    });
  }
});
