import { describe, expect, it } from "vitest";
import { parseHints } from "./hints.js";

const defaults = { minSilenceMs: 600, maxSilenceMs: 1500, completeSilenceMs: 300 };

describe("parseHints", () => {
  it("uses free phrases and the service endpointing when nothing is stored", () => {
    expect(parseHints(undefined, defaults)).toEqual({ hints: { mode: "phrases", phrases: [], ...defaults }, problems: [] });
  });

  it("takes the dialog's mode, phrases and silence overrides", () => {
    const { hints, problems } = parseHints({ mode: "digits", phrases: [" one ", "two"], minSilenceMs: 1200, maxSilenceMs: 3000 }, defaults);
    expect(problems).toEqual([]);
    expect(hints).toEqual({ mode: "digits", phrases: ["one", "two"], minSilenceMs: 1200, maxSilenceMs: 3000, completeSilenceMs: 300 });
  });

  it("takes a complete-answer silence, where 0 turns it off for the state", () => {
    expect(parseHints({ phrases: ["yes"], completeSilenceMs: 450 }, defaults).hints.completeSilenceMs).toBe(450);
    expect(parseHints({ phrases: ["yes"], completeSilenceMs: 0 }, defaults).hints.completeSilenceMs).toBe(0);
    expect(parseHints({ phrases: ["yes"] }, defaults).hints.completeSilenceMs).toBe(300);
    const { hints, problems } = parseHints({ completeSilenceMs: "soon" }, defaults);
    expect(hints.completeSilenceMs).toBe(300);
    expect(problems).toEqual(["completeSilenceMs is not a positive number"]);
  });

  it("treats 0 as the default, keeps max >= min and clamps absurd values", () => {
    expect(parseHints({ mode: "phrases", phrases: [], minSilenceMs: 0, maxSilenceMs: 0 }, defaults).hints).toMatchObject(defaults);
    expect(parseHints({ minSilenceMs: 2000 }, defaults).hints).toMatchObject({ minSilenceMs: 2000, maxSilenceMs: 2000 });
    expect(parseHints({ minSilenceMs: 5, maxSilenceMs: 999_999 }, defaults).hints).toMatchObject({ minSilenceMs: 200, maxSilenceMs: 10_000 });
  });

  it("falls back field by field on malformed hints and names the problems", () => {
    const { hints, problems } = parseHints({ mode: "spelling", phrases: ["yes", 3, ""], minSilenceMs: "long" }, defaults);
    expect(hints).toEqual({ mode: "phrases", phrases: ["yes"], ...defaults });
    expect(problems).toHaveLength(3);
    expect(parseHints(["digits"], defaults).problems).toEqual(["hints are not an object"]);
  });
});
