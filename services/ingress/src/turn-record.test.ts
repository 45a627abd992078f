import { TurnTiming } from "@voicebot/proto";
import { describe, expect, it } from "vitest";
import { turnLatency } from "./turn-record.js";

describe("turnLatency", () => {
  it("splits input end -> first audio by stage and leaves out the unknown ones", () => {
    const t0 = 1_700_000_000_000;
    const timing = TurnTiming.create({
      inputEndMs: t0,
      endpointWaitMs: 300,
      asrFinalMs: t0 + 350,
      dialogStartMs: t0 + 360,
      dialogFirstTextMs: t0 + 700,
      llmFirstTokenMs: 250,
      ttsRequestMs: t0 + 705,
      ttsFirstAudioMs: t0 + 805,
    });
    const { entry, inputLatencyMs } = turnLatency("t3", timing, t0 + 820);
    expect(inputLatencyMs).toBe(820);
    expect(entry).toEqual({
      turnId: "t3",
      latencyMs: 820,
      inputEndAt: new Date(t0).toISOString(),
      firstAudioAt: new Date(t0 + 820).toISOString(),
      stages: {
        endpointMs: 300,
        asrMs: 350,
        asrToDialogQueueMs: 10,
        dialogMs: 340,
        llmFirstTokenMs: 250,
        dialogToTtsQueueMs: 5,
        ttsMs: 100,
        ingressMs: 15,
      },
    });
  });

  it("measures a turn without caller input (greeting) from the dialog start", () => {
    const { entry, inputLatencyMs } = turnLatency("t0", TurnTiming.create({ dialogStartMs: 1000, ttsRequestMs: 1100, ttsFirstAudioMs: 1200 }), 1250);
    expect(inputLatencyMs).toBeUndefined();
    expect(entry.latencyMs).toBe(250);
    expect(entry.inputEndAt).toBe("");
    expect(entry.stages).toEqual({ ttsMs: 100, ingressMs: 50 });
  });
});
