import type { TurnTiming } from "@voicebot/proto";
import type { TurnEntry } from "@voicebot/state";

export interface TurnLatency {
  entry: TurnEntry;
  /** Caller input end -> first audio, when the input end is known (not for a greeting). */
  inputLatencyMs: number | undefined;
}

/**
 * The record line for a turn whose first frame was just sent at `firstAudioMs`: the latency from the caller's
 * input end and its split by stage. Stages whose timestamps are unknown (0) are left out. A turn with no caller
 * input (the greeting) is measured from when the dialog started it and has an empty inputEndAt.
 */
export function turnLatency(turnId: string, timing: TurnTiming | undefined, firstAudioMs: number): TurnLatency {
  const t: Partial<TurnTiming> = timing ?? {};
  const at = (ms: number | undefined) => (ms && ms > 0 ? ms : undefined);
  const span = (end: number | undefined, start: number | undefined) => {
    const e = at(end);
    const s = at(start);
    return e !== undefined && s !== undefined ? Math.round(e - s) : undefined;
  };
  const inputEnd = at(t.inputEndMs);
  const stages: Record<string, number | undefined> = {
    endpointMs: at(t.endpointWaitMs),
    asrMs: span(t.asrFinalMs, t.inputEndMs),
    // Queueing between stages: asr final (or, for keypad input, the input end) -> dialog picked it up.
    asrToDialogQueueMs: span(t.dialogStartMs, t.asrFinalMs),
    inputToDialogQueueMs: at(t.asrFinalMs) ? undefined : span(t.dialogStartMs, t.inputEndMs),
    dialogMs: span(t.dialogFirstTextMs, t.dialogStartMs),
    toolMs: at(t.toolMs),
    llmFirstTokenMs: at(t.llmFirstTokenMs),
    dialogToTtsQueueMs: span(t.ttsRequestMs, t.dialogFirstTextMs),
    ttsMs: span(t.ttsFirstAudioMs, t.ttsRequestMs),
    ingressMs: span(firstAudioMs, t.ttsFirstAudioMs),
  };
  const known: Record<string, number> = {};
  for (const [name, value] of Object.entries(stages)) if (value !== undefined) known[name] = Math.round(value);
  const base = inputEnd ?? at(t.dialogStartMs);
  return {
    entry: {
      turnId,
      latencyMs: base !== undefined ? Math.round(firstAudioMs - base) : 0,
      inputEndAt: inputEnd !== undefined ? new Date(inputEnd).toISOString() : "",
      firstAudioAt: new Date(firstAudioMs).toISOString(),
      stages: known,
    },
    inputLatencyMs: inputEnd !== undefined ? Math.round(firstAudioMs - inputEnd) : undefined,
  };
}
