// The same utterances decoded by the engine directly (no VAD, no segmenter, no bus): each clip with 300 ms of
// the call's audio on either side, pushed at once. Shows how much of the error is the engine's own.

import { mulawDecode } from "@voicebot/audio";
import { PocketsphinxEngine } from "../../dist/engines/pocketsphinx.js";
import type { BenchCall } from "./dataset.js";
import { HINT_PHRASES } from "./dataset.js";
import type { UtteranceOutcome } from "./service-run.js";

const FRAME = 160;
const MARGIN_FRAMES = 15;

export async function runEngineOnly(calls: BenchCall[], parallel = 4): Promise<UtteranceOutcome[]> {
  const engine = new PocketsphinxEngine();
  await engine.warmUp();
  const jobs = calls.flatMap((call) => call.utterances.map((utterance) => ({ call, utterance })));
  const outcomes: UtteranceOutcome[] = [];
  try {
    for (let i = 0; i < jobs.length; i += parallel) {
      const batch = await Promise.all(
        jobs.slice(i, i + parallel).map(async ({ call, utterance }): Promise<UtteranceOutcome> => {
          const digits = utterance.clip.kind === "digits";
          const recognizer = engine.start({ mode: digits ? "digits" : "phrases", phrases: digits ? [] : HINT_PHRASES });
          const first = Math.max(0, Math.floor(utterance.onsetSample / FRAME) - MARGIN_FRAMES);
          const last = Math.min(call.frames.length, Math.ceil(utterance.endSample / FRAME) + MARGIN_FRAMES);
          for (let f = first; f < last; f++) recognizer.push(mulawDecode(call.frames[f]));
          const result = await recognizer.finish();
          return { call, utterance, finals: [], hypothesis: result.text, onsetAtMs: 0, speechEndAtMs: 0 };
        }),
      );
      outcomes.push(...batch);
    }
  } finally {
    await engine.close();
  }
  return outcomes;
}
