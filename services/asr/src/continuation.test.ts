import { describe, expect, it } from "vitest";
import { DEFAULT_CONTINUATIONS, looksUnfinished, parseContinuations, words } from "./continuation.js";

const defaults = parseContinuations(DEFAULT_CONTINUATIONS);

describe("looksUnfinished", () => {
  it("spots sentences that stop on a joining word or an announced number", () => {
    for (const text of ["I want to check my order and", "my order number is", "My order number is...", "it's for", "um", "I'd like to talk to", "The account number"]) {
      expect(looksUnfinished(text, defaults), text).toBe(true);
    }
  });

  it("lets complete answers end at the normal silence (the demo agent's phrases among them)", () => {
    for (const text of ["order status", "agent", "goodbye", "that's all", "that's it", "no thanks", "yes please", "4 2 7 1", "my order number is 4271", "Operator.", "I'm done", "all set"]) {
      expect(looksUnfinished(text, defaults), text).toBe(false);
    }
  });

  it("matches whole words and phrases only, case and punctuation aside", () => {
    const list = parseContinuations(["and", " Order Number ", "", "i'm"]);
    expect(list).toEqual([["and"], ["order", "number"], ["i'm"]]);
    expect(looksUnfinished("Band", list)).toBe(false);
    expect(looksUnfinished("the ORDER number", list)).toBe(true);
    expect(looksUnfinished("number", list)).toBe(false);
    expect(looksUnfinished("I’m", parseContinuations(["i'm"]))).toBe(true);
    expect(looksUnfinished("and", [])).toBe(false);
    expect(words("Hello, world... it's 4-2")).toEqual(["hello", "world", "it's", "4", "2"]);
  });
});
