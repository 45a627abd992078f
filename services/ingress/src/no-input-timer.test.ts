// NoInputTimer alone, on fake time: the caller's speech without an end.
import { afterEach, describe, expect, it, vi } from "vitest";
import { NoInputTimer } from "./no-input.js";
import { UTTERANCE_STALE_MS } from "./silence-batch.js";

afterEach(() => {
  vi.useRealTimers();
});

describe("NoInputTimer", () => {
  it("takes an utterance whose STOPPED and final never came as over after UTTERANCE_STALE_MS, then waits again", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setImmediate", "clearImmediate", "performance"] });
    const prompts: string[] = [];
    const timer = new NoInputTimer(1_000, (turnId) => prompts.push(turnId), () => false);
    timer.botTurnStarted("t1");
    timer.botTurnEnded();
    timer.callerSpeechStarted();
    await vi.advanceTimersByTimeAsync(UTTERANCE_STALE_MS - 100);
    expect(prompts).toEqual([]); // still taken as speaking
    await vi.advanceTimersByTimeAsync(100 + 1_000 + 600);
    expect(prompts).toEqual(["t1"]);
    timer.close();
  });
});
