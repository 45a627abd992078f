import { describe, expect, it } from "vitest";
import { expectedAnswers, isCompleteAnswer } from "./complete-answer.js";

describe("complete answers", () => {
  const answers = expectedAnswers({ mode: "phrases", phrases: ["order status", "Agent", "that's all", "no"] });

  it("is one of the state's answers word for word, whatever the case, punctuation or fillers", () => {
    for (const text of ["order status", "Order status.", "um, order status please", "AGENT!", "That's all.", "thats all", "no"]) {
      expect(isCompleteAnswer(text, answers), text).toBe(true);
    }
  });

  it("matches the dialog's phrases, which it writes without apostrophes", () => {
    const menu = expectedAnswers({ mode: "phrases", phrases: ["thats all", "im done"] });
    expect(isCompleteAnswer("That's all.", menu)).toBe(true);
    expect(isCompleteAnswer("I'm done", menu)).toBe(true);
  });

  it("is not a longer or shorter sentence, or nothing", () => {
    for (const text of ["order", "order status for order one two three", "I want an agent", "no thanks", "", "um", "please"]) {
      expect(isCompleteAnswer(text, answers), text).toBe(false);
    }
  });

  it("does not end on an answer that begins a longer one: the caller may be pausing inside it", () => {
    const menu = expectedAnswers({ mode: "phrases", phrases: ["order", "order status", "bye", "bye bye", "agent", "an agent"] });
    expect(isCompleteAnswer("order", menu)).toBe(false);
    expect(isCompleteAnswer("bye", menu)).toBe(false);
    expect(isCompleteAnswer("order status", menu)).toBe(true);
    expect(isCompleteAnswer("bye bye", menu)).toBe(true);
    expect(isCompleteAnswer("agent", menu)).toBe(true);
  });

  it("does not end on spoken digits, which may begin a number", () => {
    const confirm = expectedAnswers({ mode: "phrases", phrases: ["yes", "no", "one", "two", "oh", "1"] });
    for (const text of ["one", "two", "oh", "1", "one two"]) expect(isCompleteAnswer(text, confirm), text).toBe(false);
    expect(isCompleteAnswer("yes", confirm)).toBe(true);
  });

  it("has no answers to match in a digits state or a state without phrases", () => {
    expect(expectedAnswers({ mode: "digits", phrases: ["one", "two"] })).toBeUndefined();
    expect(expectedAnswers({ mode: "phrases", phrases: [] })).toBeUndefined();
    expect(expectedAnswers({ mode: "phrases", phrases: ["um", "please"] })).toBeUndefined();
    expect(isCompleteAnswer("order status", undefined)).toBe(false);
  });
});
