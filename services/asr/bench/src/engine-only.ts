// The same utterances decoded by the engine directly (no VAD, no segmenter, no bus): each clip with 300 ms of
// the call's audio on either side, pushed at once. Shows how much of the error is the engine's own.

import { mulawDecode } from "@voicebot/audio";
import { PocketsphinxEngine } from "../../dist/engines/pocketsphinx.js";
import type { BenchCall } from "./dataset.js";
import { DIGITS_STATE_PHRASES, HINT_PHRASES } from "./dataset.js";
import { ErrorRate } from "./scoring.js";
import type { UtteranceOutcome } from "./service-run.js";

const FRAME = 160;
const MARGIN_FRAMES = 15;

type Job = { call: BenchCall; utterance: BenchCall["utterances"][number] };

export async function runEngineOnly(calls: BenchCall[], parallel = 4): Promise<UtteranceOutcome[]> {
  const jobs = calls.flatMap((call) => call.utterances.map((utterance) => ({ call, utterance })));
  return withEngine(jobs, parallel, async (engine, { call, utterance }) => {
    const digits = utterance.clip.kind === "digits";
    const hypothesis = await decode(engine, call, utterance, digits ? { mode: "digits", phrases: [] } : { mode: "phrases", phrases: HINT_PHRASES });
    return { call, utterance, finals: [], hypothesis, onsetAtMs: 0, speechEndAtMs: 0 };
  });
}

/** Runs `each` over the jobs, `parallel` at a time, with one warmed-up engine that is closed at the end. */
async function withEngine<R>(jobs: Job[], parallel: number, each: (engine: PocketsphinxEngine, job: Job) => Promise<R>): Promise<R[]> {
  const engine = new PocketsphinxEngine();
  await engine.warmUp();
  const results: R[] = [];
  try {
    for (let i = 0; i < jobs.length; i += parallel) results.push(...(await Promise.all(jobs.slice(i, i + parallel).map((job) => each(engine, job)))));
  } finally {
    await engine.close();
  }
  return results;
}

type Hints = Parameters<PocketsphinxEngine["start"]>[0];

async function decode(engine: PocketsphinxEngine, call: BenchCall, utterance: Job["utterance"], hints: Hints): Promise<string> {
  const recognizer = engine.start(hints);
  const first = Math.max(0, Math.floor(utterance.onsetSample / FRAME) - MARGIN_FRAMES);
  const last = Math.min(call.frames.length, Math.ceil(utterance.endSample / FRAME) + MARGIN_FRAMES);
  for (let f = first; f < last; f++) recognizer.push(mulawDecode(call.frames[f]));
  return (await recognizer.finish()).text;
}

export interface DigitsStateResult {
  /** Digit strings decoded with the digits grammar alone, and with the state's phrases in it too. */
  digitsAlone: ErrorRate;
  digitsWithPhrases: ErrorRate;
  /** The state's phrases said in it: recognized as said, as another phrase, taken for digits, nothing. */
  phrases: { said: number; right: number; otherPhrase: number; digits: number; nothing: number };
  /** Digit strings heard as one of the phrases (the phrase → how often): a number taken for "goodbye" ends the call. */
  digitsAsPhrase: Record<string, number>;
  /** By line condition (SNR): phrases said / right, digit strings / heard as a phrase / exactly right. */
  bySnr: Record<string, { phrases: number; right: number; digits: number; asPhrase: number; exact: number }>;
}

/**
 * The order-number state: its number read out with and without the state's phrases in the digits grammar (what
 * they cost), and the phrases said there ("agent") heard with them (what they bring).
 */
export async function runDigitsState(calls: BenchCall[], parallel = 4): Promise<DigitsStateResult> {
  const result: DigitsStateResult = {
    digitsAlone: new ErrorRate(),
    digitsWithPhrases: new ErrorRate(),
    phrases: { said: 0, right: 0, otherPhrase: 0, digits: 0, nothing: 0 },
    digitsAsPhrase: {},
    bySnr: {},
  };
  const inState = new Set(DIGITS_STATE_PHRASES);
  const jobs = calls.flatMap((call) =>
    call.utterances.filter((u) => u.clip.kind === "digits" || inState.has(u.clip.reference)).map((utterance) => ({ call, utterance })),
  );
  const chars = (text: string) => [...text];
  await withEngine(jobs, parallel, async (engine, { call, utterance }) => {
    const reference = utterance.clip.reference;
    const withPhrases = await decode(engine, call, utterance, { mode: "digits", phrases: DIGITS_STATE_PHRASES });
    const snr = (result.bySnr[call.condition.snr] ??= { phrases: 0, right: 0, digits: 0, asPhrase: 0, exact: 0 });
    if (utterance.clip.kind === "digits") {
      snr.digits++;
      if (withPhrases === reference) snr.exact++;
      if (inState.has(withPhrases)) {
        snr.asPhrase++;
        result.digitsAsPhrase[withPhrases] = (result.digitsAsPhrase[withPhrases] ?? 0) + 1;
      }
      result.digitsWithPhrases.add(chars(reference), chars(withPhrases));
      result.digitsAlone.add(chars(reference), chars(await decode(engine, call, utterance, { mode: "digits", phrases: [] })));
      return;
    }
    const heard = result.phrases;
    heard.said++;
    snr.phrases++;
    if (withPhrases === reference) {
      heard.right++;
      snr.right++;
    } else if (inState.has(withPhrases)) heard.otherPhrase++;
    else if (/^[0-9#]+$/.test(withPhrases)) heard.digits++;
    else heard.nothing++;
  });
  return result;
}
