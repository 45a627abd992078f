import { describe, expect, it } from "vitest";
import { unheardPart } from "./runner.js";

describe("unheardPart", () => {
  it("is what follows the heard sentences, or the whole turn when nothing heard matches its start", () => {
    expect(unheardPart("One. Two. Three.", "One.")).toBe("Two. Three.");
    expect(unheardPart("One. Two. Three.", "One. Two. Three.")).toBe("");
    expect(unheardPart("One. Two.", "")).toBe("One. Two.");
    expect(unheardPart("One. Two.", "Zero.")).toBe("One. Two.");
  });
});
