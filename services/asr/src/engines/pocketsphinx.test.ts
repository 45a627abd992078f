import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chunks, silence8k, synthesizeTo8kPcm, type Voice } from "../../test/fixtures/make-audio.js";
import type { RecognitionHints, RecognitionResult } from "../engine.js";
import { defaultPocketsphinxConfig, digitsResult, digitsStatePhraseResult, marginConfidence, MODEL_CMN_INIT, PocketsphinxEngine } from "./pocketsphinx.js";
import { buildDigitsGrammar, buildPhraseGrammar, digitsFromWords, matchPhrase, phraseWords, spokenWords, type Dictionary } from "./pocketsphinx-grammar.js";
import { TelephoneFrontEnd } from "./telephone-frontend.js";

// ---------------------------------------------------------------------------------------------------------
// Pure parts: no packages needed.

function tone(hz: number, ms: number, amplitude: number, rate = 8000): Int16Array {
  const n = Math.round((ms * rate) / 1000);
  const out = new Int16Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.round(amplitude * Math.sin((2 * Math.PI * hz * i) / rate));
  return out;
}

function rmsDbfs(x: Int16Array): number {
  let s = 0;
  for (const v of x) s += v * v;
  return 10 * Math.log10(s / x.length / 32768 ** 2 + 1e-20);
}

/** Power of one frequency (Goertzel), dB. */
function powerAt(x: Int16Array, hz: number, rate: number): number {
  const w = (2 * Math.PI * hz) / rate;
  let s1 = 0;
  let s2 = 0;
  for (const v of x) {
    const s = v + 2 * Math.cos(w) * s1 - s2;
    s2 = s1;
    s1 = s;
  }
  return 10 * Math.log10(s1 * s1 + s2 * s2 - 2 * Math.cos(w) * s1 * s2 + 1e-20);
}

function runFrontEnd(input: Int16Array, pieceSamples: number, lookaheadMs = 800): Int16Array {
  const fe = new TelephoneFrontEnd({ lookaheadMs });
  const parts: Int16Array[] = [];
  for (let i = 0; i < input.length; i += pieceSamples) parts.push(fe.push(input.subarray(i, i + pieceSamples)));
  parts.push(fe.flush());
  const out = new Int16Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

describe("TelephoneFrontEnd (8 kHz → 16 kHz with look-ahead gain)", () => {
  it("returns exactly twice the samples, the same however the input is split", () => {
    const input = tone(440, 1234, 3000);
    const whole = runFrontEnd(input, input.length);
    expect(whole.length).toBe(2 * input.length);
    for (const piece of [160, 7, 333]) expect(runFrontEnd(input, piece)).toEqual(whole);
  });

  it("holds audio back by the look-ahead and releases it all on flush", () => {
    const fe = new TelephoneFrontEnd({ lookaheadMs: 200 });
    expect(fe.push(tone(440, 200, 3000)).length).toBe(0); // 10 frames: all still waiting
    expect(fe.push(tone(440, 20, 3000)).length).toBeGreaterThan(0);
    expect(fe.flush().length).toBeGreaterThan(0);
  });

  it("keeps the tone, rejects its image above 4 kHz", () => {
    const out = runFrontEnd(tone(3000, 1000, 8000), 160);
    const steady = out.subarray(4000, 28000);
    // 3 kHz stays; its image at 16 − 3... i.e. 8 kHz + (8 − 3) = 5 kHz must be gone.
    expect(powerAt(steady, 3000, 16000) - powerAt(steady, 5000, 16000)).toBeGreaterThan(70);
  });

  it("brings quiet and loud speech to the same level, without clipping", () => {
    const quiet = runFrontEnd(tone(700, 1000, 1000), 160); // ≈ −33 dBFS
    const loud = runFrontEnd(tone(700, 1000, 20000), 160); // ≈ −7 dBFS
    expect(rmsDbfs(quiet.subarray(2000))).toBeCloseTo(-15, 0);
    expect(rmsDbfs(loud.subarray(2000))).toBeCloseTo(-15, 0);
    expect(Math.max(...loud.map(Math.abs))).toBeLessThan(32767);
  });

  it("gives a quiet start the gain of the loud speech that follows within the look-ahead", () => {
    const input = new Int16Array(8000);
    input.set(tone(700, 300, 200), 0);
    input.set(tone(700, 700, 6000), 2400);
    const out = runFrontEnd(input, 160);
    // The quiet part is scaled by the loud part's gain (−15 dBFS target), not boosted on its own.
    const quietOut = rmsDbfs(out.subarray(200, 4400));
    expect(quietOut).toBeLessThan(-40);
  });

  it("leaves silence as a 1-LSB dither floor", () => {
    const out = runFrontEnd(new Int16Array(8000), 160);
    expect(Math.max(...out.map(Math.abs))).toBeLessThanOrEqual(2);
  });
});

const DICT: Dictionary = new Map<string, string[]>([
  ["order", ["AO R D ER"]],
  ["status", ["S T AE T AH S", "S T EY T AH S"]],
  ["agent", ["EY JH AH N T"]],
  ["that's", ["DH AE T S"]],
  ["all", ["AO L"]],
  ["yes", ["Y EH S"]],
  ["and", ["AH N D", "AE N D"]],
  ["rock", ["R AA K"]],
  ["roll", ["R OW L"]],
  ["support", ["S AH P AO R T"]],
  ["f", ["EH F"]],
  ["a", ["AH", "EY"]],
  ["q", ["K Y UW"]],
  ["dont", ["D OW N T"]],
  ["i", ["AY"]],
  ["the", ["DH AH"]],
  ...["zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "pound", "hash"].map((w): [string, string[]] => [w, ["AH"]]),
]);

describe("pocketsphinx grammar", () => {
  it("turns phrases into dictionary words, mapping what it can and dropping what it cannot", () => {
    expect(phraseWords("That's all!", DICT)).toEqual({ words: ["that's", "all"], missing: [] });
    expect(phraseWords("24/7 support", DICT)).toEqual({ words: ["two", "four", "seven", "support"], missing: [] });
    expect(phraseWords("FAQ", DICT)).toEqual({ words: ["f", "a", "q"], missing: [] });
    expect(phraseWords("rock & roll", DICT).words).toEqual(["rock", "and", "roll"]);
    expect(phraseWords("don’t", DICT).words).toEqual(["dont"]);
    expect(phraseWords("agent zorblax", DICT)).toEqual({ words: ["agent"], missing: ["zorblax"] });
  });

  it("builds a phrase grammar with garbage around it, skipping phrases it cannot say", () => {
    const g = buildPhraseGrammar(["order status", "Yes", "zorblaxian", "ORDER STATUS"], DICT);
    expect(g.phrases).toEqual([
      { text: "order status", words: ["order", "status"] },
      { text: "Yes", words: ["yes"] },
    ]);
    expect(g.skippedPhrases).toEqual(["zorblaxian"]);
    expect(g.fsg).toMatch(/^FSG_BEGIN phrases\nNUM_STATES \d+\nSTART_STATE 0\nFINAL_STATE 1\n/);
    expect(g.fsg).toContain(" order\n");
    // A phrase word is never garbage, or the garbage loop could swallow the phrase.
    expect(g.fsg).not.toMatch(/TRANSITION (\d+) \1 \S+ yes\n/);
    expect(g.fsg).toMatch(/TRANSITION (\d+) \1 \S+ the\n/);
    expect(g.fsg).toMatch(/TRANSITION (\d+) \1 \S+ ph_zh\n/);
    expect(g.competitorFsg).not.toContain(" order\n");
    expect(g.dict).toContain("status(2) S T EY T AH S\n");
    expect(g.dict).toContain("ph_aa AA\n");
    expect(buildPhraseGrammar(["order status", "Yes"], DICT).key).toBe(buildPhraseGrammar(["order status", "Yes"], DICT).key);
  });

  it("builds a digits grammar that can also end in pound or be empty", () => {
    const g = buildDigitsGrammar(DICT);
    expect(g.fsg).toContain("TRANSITION 0 2 0.01 oh\n");
    expect(g.fsg).toContain("TRANSITION 2 1 0.01 pound\n");
    expect(g.fsg).toContain("TRANSITION 0 1 0.001\n");
    expect(g.dict).not.toContain("ph_");
  });

  it("lets a digits grammar hear the state's phrases too, leaving a phrase of digit words to the digits", () => {
    const g = buildDigitsGrammar(DICT, ["agent", "order status", "1 2", "Agent"]);
    expect(g.phrases.map((p) => p.text)).toEqual(["agent", "order status"]);
    expect(g.fsg).toContain("TRANSITION 0 1 0.005 agent\n");
    expect(g.fsg).toMatch(/TRANSITION 0 (\d+) 0\.005 order\n/);
    expect(g.fsg).toMatch(/TRANSITION \d+ 1 1 status\n/);
    expect(g.dict).toContain("agent ");
    expect(g.key).not.toBe(buildDigitsGrammar(DICT).key);
  });

  it("reads results back", () => {
    expect(spokenWords("<sil> ph_ay want my order status(2) [NOISE]")).toEqual(["want", "my", "order", "status"]);
    const phrases = [{ text: "Order", words: ["order"] }, { text: "Order status", words: ["order", "status"] }];
    expect(matchPhrase(["my", "order", "status"], phrases)?.text).toBe("Order status");
    expect(matchPhrase(["my", "order"], phrases)?.text).toBe("Order");
    expect(matchPhrase(["border"], phrases)).toBeUndefined();
    expect(digitsFromWords(["one", "two", "oh", "zero", "nine", "pound"])).toBe("12009#");
  });

  it("makes digit confidences and alternatives from the N-best list", () => {
    const r = digitsResult("one two three", [
      { digits: "123", score: -1000 },
      { digits: "123", score: -1100 },
      { digits: "183", score: -1050 },
    ]);
    expect(r.text).toBe("123");
    expect(r.alternatives.map((a) => a.text)).toEqual(["183"]);
    expect(r.confidence).toBeGreaterThan(r.alternatives[0].confidence);
    expect(r.confidence + r.alternatives[0].confidence).toBeCloseTo(1, 2);
    expect(digitsResult("", [{ digits: "1", score: -5 }])).toEqual({ text: "", confidence: 0, alternatives: [] });
    expect(marginConfidence(-1000, -1500)).toBeGreaterThan(0.99);
    expect(marginConfidence(-1000, -1000)).toBeLessThan(0.2);
  });

  it("takes a phrase heard in a digits state only when the N-best list is sure of it (a number taken for 'goodbye' ends the call)", () => {
    const phrases = [{ text: "agent", words: ["agent"] }, { text: "goodbye", words: ["goodbye"] }];
    const sure = digitsStatePhraseResult(phrases[0], [{ words: ["agent"], score: -1000 }, { words: ["one", "two"], score: -3000 }], phrases);
    expect(sure.text).toBe("agent");
    expect(sure.confidence).toBeGreaterThan(0.9);
    // A number about as likely: nothing (the state asks again) rather than a guess.
    const torn = digitsStatePhraseResult(phrases[1], [{ words: ["goodbye"], score: -1000 }, { words: ["two", "five"], score: -1050 }], phrases);
    expect(torn).toEqual({ text: "", confidence: 0, alternatives: [] });
  });
});

// ---------------------------------------------------------------------------------------------------------
// The real decoder, on synthesized phone audio. Needs: pocketsphinx pocketsphinx-en-us flite sox.

function installed(command: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const MODEL = defaultPocketsphinxConfig().sourceModelDir;
const HAVE_TOOLS = installed("pocketsphinx_batch") && installed("flite") && installed("sox") && existsSync(join(MODEL, "mdef"));

const PHRASES = ["order status", "agent", "representative", "goodbye", "that's all"];
const PHRASE_HINTS: RecognitionHints = { mode: "phrases", phrases: PHRASES };
const DIGIT_HINTS: RecognitionHints = { mode: "digits", phrases: [] };

/** Like the service: 300 ms pre-roll, the speech, ~500 ms of the silence that ended it, line noise. */
function callAudio(text: string, voice: Voice): Promise<Int16Array> {
  return synthesizeTo8kPcm(text, voice, { leadMs: 300, trailMs: 500, noiseDbfs: -70 });
}

interface Timed {
  result: RecognitionResult;
  /** finish() → result, ms. */
  latencyMs: number;
}

/** Pushes the audio in 20 ms pieces (in real time when `paced`) and measures finish() → result. */
async function recognize(engine: PocketsphinxEngine, hints: RecognitionHints, pcm: Int16Array, paced = false): Promise<Timed> {
  const recognizer = engine.start(hints);
  const start = performance.now();
  let sent = 0;
  for (const piece of chunks(pcm, 20)) {
    recognizer.push(piece);
    sent += piece.length;
    if (paced) {
      const due = start + (sent / 8000) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
  const t0 = performance.now();
  const result = await recognizer.finish();
  return { result, latencyMs: performance.now() - t0 };
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const next = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = next;
    }
  }
  return d[b.length];
}

describe.skipIf(!HAVE_TOOLS)("PocketsphinxEngine on synthesized phone audio", () => {
  let modelDir: string;
  let engine: PocketsphinxEngine;

  beforeAll(async () => {
    modelDir = await mkdtemp(join(tmpdir(), "ps-engine-test-"));
    engine = new PocketsphinxEngine({ ...defaultPocketsphinxConfig(), modelDir });
    const t0 = performance.now();
    await engine.warmUp();
    console.log(`pocketsphinx warmUp: ${(performance.now() - t0).toFixed(0)} ms`);
  }, 30_000);

  afterAll(async () => {
    await engine?.close();
    if (modelDir) await rm(modelDir, { recursive: true, force: true });
  });

  it("makes the model copy: stock files linked, feat.params with the telephone cepstral prior", async () => {
    const copy = join(modelDir, "en-us-telephone");
    const params = await readFile(join(copy, "feat.params"), "utf8");
    expect(params).toContain(`-cmninit ${MODEL_CMN_INIT}\n`);
    expect(params).toContain("-upperf 6800"); // the wideband features stay: the audio is decoded at 16 kHz
    expect(await readlink(join(copy, "mdef"))).toBe(join(MODEL, "mdef"));
  });

  // Measured with this fixture: these three right for slt, kal, awb and rms. Over 5 phrases x 4 flite voices x
  // -12/0/+4 dB, 57/60 bare phrases right (misses, all at -12 dB: slt "agent", awb "goodbye", rms "that's all").
  for (const voice of ["slt", "kal", "awb"] as const) {
    it(`recognizes the expected phrase (${voice})`, async () => {
      for (const phrase of ["order status", "agent", "goodbye"]) {
        const { result, latencyMs } = await recognize(engine, PHRASE_HINTS, await callAudio(phrase, voice));
        console.log(`phrases ${voice} "${phrase}" → ${JSON.stringify(result)} in ${latencyMs.toFixed(0)} ms (unpaced)`);
        expect(result.text).toBe(phrase);
        expect(result.confidence).toBeGreaterThan(0);
        expect(result.confidence).toBeLessThanOrEqual(1);
      }
    }, 30_000);
  }

  it("finds the phrase inside a sentence and returns the phrase as the hints spelled it", async () => {
    const hints = { mode: "phrases" as const, phrases: ["Order Status", "Agent", "Goodbye"] };
    const { result } = await recognize(engine, hints, await callAudio("i want to check my order status please", "slt"));
    expect(result.text).toBe("Order Status");
  }, 30_000);

  it("returns nothing for speech that contains none of the phrases", async () => {
    const { result } = await recognize(engine, PHRASE_HINTS, await callAudio("what time is it", "slt"));
    expect(result).toEqual({ text: "", confidence: 0, alternatives: [] });
  }, 30_000);

  it("reads digits as a digit string with alternatives", async () => {
    // Measured: "12345" exactly for slt, kal, awb and rms. On 10 random 3-8 digit strings x 4 voices at 0 dB,
    // 26/40 exact and 11% of digits wrong (worst: "six", whose s is above the phone band, becomes "eight";
    // inserted "eight"/"two" at the edges); per voice slt 4/10, kal 3/10, awb 9/10, rms 10/10. espeak-ng
    // en-us: 1/10 (49% of digits wrong), engine-limited. Asserted here: at most one digit off.
    for (const voice of ["slt", "kal", "awb"] as const) {
      const { result, latencyMs } = await recognize(engine, DIGIT_HINTS, await callAudio("one two three four five", voice));
      console.log(`digits ${voice} → ${JSON.stringify(result)} in ${latencyMs.toFixed(0)} ms (unpaced)`);
      expect(result.text).toMatch(/^[0-9#]{4,6}$/);
      expect(editDistance(result.text, "12345")).toBeLessThanOrEqual(1);
      expect(result.confidence).toBeGreaterThan(0);
      for (const alt of result.alternatives) {
        expect(alt.text).not.toBe(result.text);
        expect(alt.confidence).toBeLessThanOrEqual(1);
      }
    }
  }, 30_000);

  it("hears the state's phrases in a digits state (\"agent\" while asked for a number), and still reads the number", async () => {
    const hints = { mode: "digits" as const, phrases: ["agent", "goodbye", "order status"] };
    for (const voice of ["slt", "awb"] as const) {
      expect((await recognize(engine, hints, await callAudio("agent", voice))).result.text).toBe("agent");
      const { result } = await recognize(engine, hints, await callAudio("one two three four five", voice));
      expect(editDistance(result.text, "12345")).toBeLessThanOrEqual(1);
    }
  }, 30_000);

  it("returns nothing, quickly, for an utterance of line noise", async () => {
    for (const hints of [PHRASE_HINTS, DIGIT_HINTS]) {
      const latencies: number[] = [];
      for (let attempt = 0; attempt < 3; attempt++) {
        const { result, latencyMs } = await recognize(engine, hints, silence8k(1000, -60), true);
        expect(result.text).toBe("");
        latencies.push(latencyMs);
        if (latencyMs < 100) break;
      }
      console.log(`silence (${hints.mode}): finish → result ${latencies.map((l) => l.toFixed(1)).join(", ")} ms (paced)`);
      // Typically 3-5 ms. A retry absorbs a CPU-starved moment on a shared machine.
      expect(Math.min(...latencies)).toBeLessThan(100);
    }
  }, 30_000);

  it("has the result within milliseconds of finish() when audio arrives in real time", async () => {
    const cases: Array<[RecognitionHints, string, string]> = [
      [PHRASE_HINTS, "order status", "order status"],
      [DIGIT_HINTS, "eight six seven five three oh nine", "8675309"],
    ];
    for (const [hints, text, expected] of cases) {
      const audio = await callAudio(text, "slt");
      const latencies: number[] = [];
      for (let attempt = 0; attempt < 3; attempt++) {
        const { result, latencyMs } = await recognize(engine, hints, audio, true);
        if (hints.mode === "phrases") expect(result.text).toBe(expected);
        else expect(editDistance(result.text, expected)).toBeLessThanOrEqual(2);
        latencies.push(latencyMs);
        if (latencyMs < 100) break;
      }
      console.log(`paced ${hints.mode} "${text}": finish → result ${latencies.map((l) => l.toFixed(1)).join(", ")} ms`);
      // Typically 4-10 ms (decoding the whole utterance after finish() would take 60-200 ms). The decoder
      // keeps up with real time only if it gets the CPU: on a starved machine it falls behind, hence a retry.
      expect(Math.min(...latencies)).toBeLessThan(100);
    }
  }, 60_000);

  it("decodes several utterances at once", async () => {
    const [a, b, c] = await Promise.all([callAudio("goodbye", "slt"), callAudio("agent", "awb"), callAudio("four four two", "slt")]);
    const results = await Promise.all([recognize(engine, PHRASE_HINTS, a), recognize(engine, PHRASE_HINTS, b), recognize(engine, DIGIT_HINTS, c)]);
    expect(results[0].result.text).toBe("goodbye");
    expect(results[1].result.text).toBe("agent");
    expect(editDistance(results[2].result.text, "442")).toBeLessThanOrEqual(1);
  }, 30_000);

  it("decodes free text when phrases mode has no phrases", async () => {
    const { result, latencyMs } = await recognize(engine, { mode: "phrases", phrases: [] }, await callAudio("i have a question about my bill", "slt"), true);
    console.log(`free text → ${JSON.stringify(result)}: finish → result ${latencyMs.toFixed(0)} ms (paced)`);
    expect(result.text).toContain("question");
  }, 30_000);

  it("copes with phrases whose words are not in the dictionary", async () => {
    const hints = { mode: "phrases" as const, phrases: ["talk to zorblax", "qwxzt", "goodbye"] };
    const { result } = await recognize(engine, hints, await callAudio("goodbye", "slt"));
    expect(result.text).toBe("goodbye");
  }, 30_000);

  it("aborts: the decoders go and finish() refuses", async () => {
    const recognizer = engine.start(PHRASE_HINTS);
    recognizer.push(await callAudio("order status", "slt"));
    await new Promise((resolve) => setTimeout(resolve, 100)); // let the decoders start
    recognizer.abort();
    await expect(recognizer.finish()).rejects.toThrow(/aborted/);
    // The utterance directory (FIFOs, outputs) is removed once the processes are gone.
    const runDir = join(modelDir, "run");
    for (let i = 0; i < 50 && (await readdir(runDir)).length > 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await readdir(runDir)).toEqual([]);
  }, 30_000);

  it("close() kills decoders still starting, so none outlives the service", async () => {
    const closing = new PocketsphinxEngine({ ...defaultPocketsphinxConfig(), modelDir });
    closing.start(PHRASE_HINTS).push(new Int16Array(800));
    // Spawned, and (loading the model) not yet reading its FIFO: the moment a stopping service used to leak it.
    for (let i = 0; i < 500 && closing.decoderProcesses.size === 0; i++) await new Promise((resolve) => setTimeout(resolve, 2));
    const children = [...closing.decoderProcesses];
    expect(children.length).toBeGreaterThan(0);
    await closing.close();
    for (const child of children) expect(child.exitCode !== null || child.signalCode !== null).toBe(true);
    expect(closing.decoderProcesses.size).toBe(0);
  }, 30_000);

  it("says how to install pocketsphinx when it is missing", async () => {
    const broken = new PocketsphinxEngine({ ...defaultPocketsphinxConfig(), modelDir, binary: "/nonexistent/pocketsphinx_batch" });
    await expect(broken.warmUp()).rejects.toThrow(/apt-get install pocketsphinx pocketsphinx-en-us/);
    const recognizer = broken.start(PHRASE_HINTS);
    const reported = new Promise<Error>((resolve) => (recognizer.onError = resolve));
    recognizer.push(new Int16Array(800));
    // Reported at once through onError (so a fallback can take over), and by finish().
    expect((await reported).message).toMatch(/not installed/);
    await expect(recognizer.finish()).rejects.toThrow(/not installed/);
  });
});
