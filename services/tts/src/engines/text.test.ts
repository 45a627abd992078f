import { describe, it, expect } from "vitest";
import { groupSentences, splitSentences } from "./text.js";

describe("splitSentences", () => {
  it("cuts at sentence ends, not inside numbers", () => {
    expect(splitSentences("  Hello there.  It costs $3.50! Really?Yes. ...  ")).toEqual(["Hello there.", "It costs $3.50!", "Really?Yes."]);
    expect(splitSentences("")).toEqual([]);
    expect(splitSentences(" . ! ")).toEqual([]);
  });

  it("cuts over-long sentences at spaces", () => {
    const long = Array.from({ length: 300 }, (_, i) => `word${i}`).join(" ");
    const pieces = splitSentences(long, 100);
    expect(pieces.every((p) => p.length <= 100)).toBe(true);
    expect(pieces.join(" ")).toBe(long);
    expect(splitSentences("x".repeat(250), 100).map((p) => p.length)).toEqual([100, 100, 50]);
  });

  it("groups sentences up to a size", () => {
    expect(groupSentences("One two. Three four. Five six.", 20)).toEqual(["One two. Three four.", "Five six."]);
    expect(groupSentences("One two. Three four.", 1000)).toEqual(["One two. Three four."]);
  });
});
