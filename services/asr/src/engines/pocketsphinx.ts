// Local recognizer: CMU pocketsphinx (Debian package 0.8+5prealpha) driven through its command-line decoder.
//
// How an utterance is decoded, and why. Latencies are finish() → result with the audio pushed in real time,
// on a shared 2-CPU box:
// - start() spawns `pocketsphinx_batch` with the grammar for the hints, and the audio is streamed into it
//   through a FIFO while the caller speaks (the control file names the FIFO; a FIFO is not seekable, so
//   ps_decode_raw() decodes it block by block instead of waiting for a whole file). After finish() closes
//   the FIFO only the last block and the best-path search are left: 3-8 ms in phrases mode, 7-13 ms for
//   digits, independent of the utterance's length, provided the decoders get their CPU while the caller
//   speaks (per speaking caller: phrases ~0.1 core for both processes, digits ~0.02, free text ~0.3). On
//   a starved machine they fall behind and the backlog is decoded after finish() (130-430 ms seen at load 9
//   on 2 CPUs).
// - Model load is ~10 ms with the small per-grammar dictionary (~150 ms with the full cmudict) and happens
//   while the caller is still speaking, so a warm process pool would buy nothing (and each warm process
//   would be tied to one grammar). Measured alternatives: a warm process decoding the whole utterance file
//   after finish() 70-90 ms, a process spawned at finish() 75-210 ms, both growing with the utterance.
// - Streaming means live cepstral mean normalization from a fixed prior, so the model copy's -cmninit is
//   measured for this front end (MODEL_CMN_INIT) and the front end normalizes the level; it also feeds the
//   decoder 16 kHz, not 8 kHz (telephone-frontend.ts says why).
// - Not pocketsphinx_continuous: it splits the audio at pauses (each piece must then match the grammar) and
//   has no N-best. Not `-infile /dev/stdin`: Node's stdio pipes are socketpairs, which cannot be reopened by
//   path, hence the FIFOs.
// - Phrases mode decodes a garbage-only grammar in a second process, in parallel, for the confidence
//   (pocketsphinx-grammar.ts). N-best is useless there: with the phone loop in the lattice A* takes 1.5 s.
//   Digits mode takes confidence and alternatives from a 10-best list (~2 ms).
// - Phrases mode with no phrases (or none pronounceable) decodes free text with the stock trigram LM and the
//   full dictionary: load ~300 ms, ~100 MB per process, ~0.3x real time, 150-240 ms after finish() (the LM's
//   second pass runs at the end). Its confidence is only "something" (0.5) vs "nothing" (0).
// No partial results: the command-line decoders print final hypotheses only, so onPartial is never called.
// onError is called (once) if setup fails or a decoder dies while the utterance is open; finish() rejects.
// Python bindings (python3-pocketsphinx 0.1.15) and the C library (libpocketsphinx-dev) are in Debian too,
// but would mean a Python runtime or a native addon in the service.

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { constants, openSync } from "node:fs";
import { access, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, symlink, unlink, writeFile } from "node:fs/promises";
import { Socket } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { promisify } from "node:util";
import type { Logger } from "@voicebot/bus";
import { dropOldest, type EnvReader } from "@voicebot/service-kit";
import type { Alternative, AsrEngine, RecognitionHints, RecognitionResult, UtteranceRecognizer } from "../engine.js";
import { buildDigitsGrammar, buildPhraseGrammar, digitsFromWords, loadDictionary, matchPhrase, spokenWords, type Dictionary, type Grammar, type PhraseEntry } from "./pocketsphinx-grammar.js";
import { TelephoneFrontEnd } from "./telephone-frontend.js";

const execFileAsync = promisify(execFile);

const SAMPLE_RATE = 8000;
const DEFAULT_MODEL_ROOT = "/usr/share/pocketsphinx/model/en-us";
const INSTALL_HINT = "apt-get install pocketsphinx pocketsphinx-en-us";

/**
 * Prior cepstral mean for live CMN: the frame-weighted mean of pocketsphinx's own per-utterance means over
 * the front end's output for 100 flite utterances (4 voices; phrases, sentences, digit strings; 300 ms
 * pre-roll, 500 ms trailing line noise). espeak-ng voices give nearly the same mean (within ~4 per
 * coefficient). The stock prior (41.00,-5.29,-0.12,...) is for wideband speech: with it every streamed
 * utterance came out as one or two words.
 */
export const MODEL_CMN_INIT = "40.19,23.02,-39.54,34.75,-21.62,-19.16,12.42,-36.11,2.58,-11.52,-15.28,7.79,-16.79";

/** Scale from pocketsphinx path scores to log-probabilities for N-best posteriors (fitted on the test set). */
const NBEST_SCORE_SCALE = 0.003;
const NBEST_SIZE = 10;
/**
 * See digitsStatePhraseResult. Measured (pnpm bench:asr --digits-state, 7 voices x 2 speeds x 3 lines): at 0.9 a
 * digit string was taken for a phrase 1 time in 168 (0.6%; at 0, 12 times: "i'm done", "goodbye"...), while the
 * state's phrases said there were heard right 52 times in 227 (clean line: 40 in 75), never before.
 */
const MIN_DIGITS_STATE_PHRASE_CONFIDENCE = 0.9;
/** Confidence = logistic((phrase score − garbage score − CENTER) / WIDTH). */
const MARGIN_CENTER = 100;
const MARGIN_WIDTH = 60;
/** Most alternatives returned. */
const MAX_ALTERNATIVES = 4;
/** A decoder loads in ~10 ms (free text ~300 ms); this only catches a hung one. */
const OPEN_TIMEOUT_MS = 10_000;
/** Left-over utterance directories older than this are removed at start-up. */
const STALE_UTTERANCE_MS = 30 * 60_000;

export interface PocketsphinxConfig {
  /** ASR_POCKETSPHINX_BIN: the batch decoder, a path or a name looked up on PATH. */
  binary: string;
  /** ASR_POCKETSPHINX_HMM: the stock acoustic model (only read; a tuned copy is made in modelDir). */
  sourceModelDir: string;
  /** ASR_POCKETSPHINX_DICT: pronunciation dictionary. */
  dictionaryPath: string;
  /** ASR_POCKETSPHINX_LM: language model for free text (phrases mode without phrases). */
  languageModelPath: string;
  /** ASR_MODEL_DIR: where the model copy, grammar files and per-utterance FIFOs go. */
  modelDir: string;
  /** ASR_POCKETSPHINX_LOOKAHEAD_MS: front-end gain look-ahead (see telephone-frontend.ts). */
  lookaheadMs: number;
  /** ASR_POCKETSPHINX_CONFIDENCE: run the garbage-only decode for phrase confidence (doubles CPU). */
  confidenceDecode: boolean;
  /** ASR_POCKETSPHINX_TIMEOUT_MS: longest wait from finish() to the result. */
  timeoutMs: number;
}

export function defaultPocketsphinxConfig(env: NodeJS.ProcessEnv = process.env): PocketsphinxConfig {
  return {
    binary: "pocketsphinx_batch",
    sourceModelDir: join(DEFAULT_MODEL_ROOT, "en-us"),
    dictionaryPath: join(DEFAULT_MODEL_ROOT, "cmudict-en-us.dict"),
    languageModelPath: join(DEFAULT_MODEL_ROOT, "en-us.lm.bin"),
    modelDir: env.ASR_MODEL_DIR || join(tmpdir(), "voicebot-ps-8k"),
    lookaheadMs: 800,
    confidenceDecode: true,
    timeoutMs: 5000,
  };
}

export function readPocketsphinxConfig(env: EnvReader): PocketsphinxConfig {
  const d = defaultPocketsphinxConfig({});
  return {
    binary: env.string("ASR_POCKETSPHINX_BIN", d.binary),
    sourceModelDir: env.string("ASR_POCKETSPHINX_HMM", d.sourceModelDir),
    dictionaryPath: env.string("ASR_POCKETSPHINX_DICT", d.dictionaryPath),
    languageModelPath: env.string("ASR_POCKETSPHINX_LM", d.languageModelPath),
    modelDir: env.string("ASR_MODEL_DIR", d.modelDir),
    lookaheadMs: env.int("ASR_POCKETSPHINX_LOOKAHEAD_MS", d.lookaheadMs, { min: 0, max: 3000 }),
    confidenceDecode: env.bool("ASR_POCKETSPHINX_CONFIDENCE", d.confidenceDecode),
    timeoutMs: env.int("ASR_POCKETSPHINX_TIMEOUT_MS", d.timeoutMs, { min: 100, max: 120_000 }),
  };
}

/** What is prepared once (by warmUp() or the first start()): model copy, dictionary, directories, control files. */
interface Prepared {
  binary: string;
  acousticModel: string;
  dict: Dictionary;
  runDir: string;
  grammarDir: string;
  /** Control files: each names the FIFO "main"/"comp" inside the utterance's directory (-cepdir). */
  ctlMain: string;
  ctlComp: string;
}

interface GrammarFiles {
  grammar: Grammar;
  fsg: string;
  competitorFsg?: string;
  dict: string;
}

async function findBinary(binary: string): Promise<string> {
  const candidates = binary.includes("/") ? [binary] : (process.env.PATH ?? "").split(delimiter).filter(Boolean).map((d) => join(d, binary));
  for (const path of candidates) {
    try {
      await access(path, constants.X_OK);
      return path;
    } catch {
      // next
    }
  }
  throw new Error(`pocketsphinx is not installed (${binary} not found): ${INSTALL_HINT}`);
}

/** Writes a file so that readers never see it half-written (other processes may share the directory). */
async function writeAtomic(path: string, content: string): Promise<void> {
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  await writeFile(tmp, content);
  await rename(tmp, path);
}

/**
 * The model copy: every file of the stock model symlinked, and feat.params rewritten with our -cmninit
 * (feat.params overrides command-line flags, so the prior cannot be passed as an argument).
 */
async function makeModelCopy(sourceDir: string, modelDir: string): Promise<string> {
  let params: string;
  try {
    params = await readFile(join(sourceDir, "feat.params"), "utf8");
    await access(join(sourceDir, "mdef"));
  } catch {
    throw new Error(`pocketsphinx acoustic model not found in ${sourceDir}: ${INSTALL_HINT}`);
  }
  const dir = join(modelDir, "en-us-telephone");
  await mkdir(dir, { recursive: true });
  for (const name of await readdir(sourceDir)) {
    if (name === "feat.params") continue;
    const link = join(dir, name);
    const tmp = `${link}.${process.pid}.tmp`;
    await unlink(tmp).catch(() => undefined);
    await symlink(join(sourceDir, name), tmp);
    await rename(tmp, link);
  }
  const lines = params.split("\n").filter((l) => l.trim() !== "" && !l.startsWith("-cmninit"));
  lines.push(`-cmninit ${MODEL_CMN_INIT}`);
  await writeAtomic(join(dir, "feat.params"), lines.join("\n") + "\n");
  return dir;
}

/**
 * Utterance directories are removed when the utterance ends, but not if the process dies first. Other
 * processes on the host may share the directory, so only ones far older than any utterance are removed.
 */
async function removeStaleUtterances(runDir: string): Promise<void> {
  const cutoff = Date.now() - STALE_UTTERANCE_MS;
  for (const name of await readdir(runDir)) {
    const path = join(runDir, name);
    const info = await stat(path).catch(() => undefined);
    if (info && info.mtimeMs < cutoff) await rm(path, { recursive: true, force: true }).catch(() => undefined);
  }
}

export class PocketsphinxEngine implements AsrEngine {
  readonly label = "pocketsphinx";
  readonly sampleRate = SAMPLE_RATE;
  private prepared?: Promise<Prepared>;
  private readonly grammars = new Map<string, Promise<GrammarFiles>>();
  private readonly active = new Set<PocketsphinxRecognizer>();
  /**
   * @internal Every decoder process alive, including those still starting (model loading, not yet reading its FIFO):
   * close() kills them, so none outlives the service blocked on a FIFO nobody will ever open.
   */
  readonly decoderProcesses = new Set<ChildProcess>();
  private closed = false;

  constructor(
    readonly config: PocketsphinxConfig = defaultPocketsphinxConfig(),
    private readonly log?: Logger,
  ) {}

  /** Prepares the model copy and dictionary, then decodes a short silence to prove the decoder runs. */
  async warmUp(): Promise<void> {
    await this.prepare();
    const recognizer = this.start({ mode: "digits", phrases: [] });
    recognizer.push(new Int16Array(SAMPLE_RATE / 5));
    const result = await recognizer.finish();
    if (result.text !== "") this.log?.warn("pocketsphinx warm-up heard something in silence", { text: result.text });
  }

  start(hints: RecognitionHints): UtteranceRecognizer {
    if (this.closed) throw new Error("pocketsphinx engine is closed");
    const recognizer = new PocketsphinxRecognizer(this, hints, () => this.active.delete(recognizer));
    this.active.add(recognizer);
    return recognizer;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const r of [...this.active]) r.abort();
    const alive = [...this.decoderProcesses];
    for (const child of alive) child.kill("SIGKILL");
    await Promise.all(alive.map((child) => (child.exitCode !== null || child.signalCode !== null ? undefined : new Promise((r) => child.once("close", r)))));
  }

  /** @internal */
  prepare(): Promise<Prepared> {
    this.prepared ??= this.doPrepare();
    // A failed preparation (say, the package missing) is retried by the next call.
    this.prepared.catch(() => (this.prepared = undefined));
    return this.prepared;
  }

  private async doPrepare(): Promise<Prepared> {
    const { config } = this;
    const binary = await findBinary(config.binary);
    const acousticModel = await makeModelCopy(config.sourceModelDir, config.modelDir);
    let dict: Dictionary;
    try {
      dict = await loadDictionary(config.dictionaryPath);
    } catch (error) {
      throw new Error(`pocketsphinx dictionary not readable at ${config.dictionaryPath}: ${INSTALL_HINT} (${String(error)})`);
    }
    const grammarDir = join(config.modelDir, "grammars");
    const runDir = join(config.modelDir, "run");
    await mkdir(grammarDir, { recursive: true });
    await mkdir(runDir, { recursive: true });
    await removeStaleUtterances(runDir);
    const ctlMain = join(config.modelDir, "main.ctl");
    const ctlComp = join(config.modelDir, "comp.ctl");
    // "<file> <start frame> <end frame> <utterance id>"; the file is relative to -cepdir, -cepext is "".
    await writeAtomic(ctlMain, "main 0 -1 utt\n");
    await writeAtomic(ctlComp, "comp 0 -1 utt\n");
    return { binary, acousticModel, dict, runDir, grammarDir, ctlMain, ctlComp };
  }

  /** @internal Grammar files for the hints, written once per distinct grammar; undefined = free text. */
  async grammarFor(hints: RecognitionHints, prepared: Prepared): Promise<GrammarFiles | undefined> {
    const phrases = hints.phrases.map((p) => p.trim()).filter(Boolean);
    if (hints.mode === "phrases" && phrases.length === 0) return undefined;
    const cacheKey = `${hints.mode}:${JSON.stringify(phrases)}`;
    let files = this.grammars.get(cacheKey);
    if (!files) {
      files = this.writeGrammar(hints.mode === "digits" ? buildDigitsGrammar(prepared.dict, phrases) : buildPhraseGrammar(phrases, prepared.dict), prepared);
      this.grammars.set(cacheKey, files);
      files.catch(() => this.grammars.delete(cacheKey));
      dropOldest(this.grammars, 500);
    }
    const result = await files;
    const { grammar } = result;
    // Nothing pronounceable: better free text than a grammar that can only say nothing.
    if (grammar.mode === "phrases" && grammar.phrases.length === 0) return undefined;
    return result;
  }

  private async writeGrammar(grammar: Grammar, prepared: Prepared): Promise<GrammarFiles> {
    if (grammar.skippedWords.length > 0) {
      this.log?.warn("pocketsphinx: words without a pronunciation were left out of the grammar", { words: grammar.skippedWords, skippedPhrases: grammar.skippedPhrases });
    }
    const base = join(prepared.grammarDir, `${grammar.mode}-${grammar.key}`);
    const files: GrammarFiles = { grammar, fsg: `${base}.fsg`, dict: `${base}.dict` };
    await writeAtomic(files.fsg, grammar.fsg);
    await writeAtomic(files.dict, grammar.dict);
    if (grammar.competitorFsg) {
      files.competitorFsg = `${base}.garbage.fsg`;
      await writeAtomic(files.competitorFsg, grammar.competitorFsg);
    }
    return files;
  }
}

interface Hypothesis {
  text: string;
  score: number;
}

/** "words (utt -1234)" → words and score; pocketsphinx writes an empty text when it found no path. */
function parseHyp(content: string): Hypothesis {
  const m = /^(.*?)\s*\(utt (-?\d+)\)\s*$/m.exec(content);
  if (!m) throw new Error(`unexpected pocketsphinx output ${JSON.stringify(content.slice(0, 200))}`);
  return { text: m[1].trim(), score: Number(m[2]) };
}

/** N-best lines "w1 w2 ... score" → (words, digit string, score). */
function parseNbest(content: string): Array<{ words: string[]; digits: string; score: number }> {
  const out: Array<{ words: string[]; digits: string; score: number }> = [];
  for (const line of content.split("\n")) {
    const parts = line.trim().split(/\s+/);
    if (parts.length < 1 || parts[0] === "") continue;
    const score = Number(parts[parts.length - 1]);
    if (!Number.isFinite(score)) continue;
    const words = spokenWords(parts.slice(0, -1).join(" "));
    out.push({ words, digits: digitsFromWords(words), score });
  }
  return out;
}

/**
 * One of a digits state's phrases heard instead of a number: its confidence is its share of the N-best list (the
 * paths that read it, against those reading a number or another phrase). Below MIN_DIGITS_STATE_PHRASE_CONFIDENCE
 * nothing is returned: a number taken for "goodbye" would end the call, where nothing only asks again.
 */
export function digitsStatePhraseResult(phrase: PhraseEntry, nbest: Array<{ words: string[]; score: number }>, phrases: PhraseEntry[]): RecognitionResult {
  if (nbest.length === 0) return { text: phrase.text, confidence: 0.5, alternatives: [] };
  const best = Math.max(...nbest.map((n) => n.score));
  let own = 0;
  let total = 0;
  let weakest = Infinity;
  for (const { words, score } of nbest) {
    const weight = Math.exp(NBEST_SCORE_SCALE * (score - best));
    total += weight;
    weakest = Math.min(weakest, weight);
    if (matchPhrase(words, phrases) === phrase) own += weight;
  }
  if (own === 0) {
    own = weakest;
    total += weakest;
  }
  const confidence = round3(own / total);
  return confidence < MIN_DIGITS_STATE_PHRASE_CONFIDENCE ? { text: "", confidence: 0, alternatives: [] } : { text: phrase.text, confidence, alternatives: [] };
}

const round3 = (x: number): number => Math.round(x * 1000) / 1000;

/**
 * Digit-string posteriors from the N-best list: paths that read the same digits are summed. The best-path
 * text is kept as the answer even when the sum favours another string (it was more often right: 25/40 vs
 * 23/40); if it is not in the list at all it is given the weight of the weakest entry.
 */
export function digitsResult(hypText: string, nbest: Array<{ digits: string; score: number }>): RecognitionResult {
  const text = digitsFromWords(spokenWords(hypText));
  if (text === "") return { text: "", confidence: 0, alternatives: [] };
  if (nbest.length === 0) return { text, confidence: 0.5, alternatives: [] };
  const best = Math.max(...nbest.map((n) => n.score));
  const weights = new Map<string, number>();
  for (const { digits, score } of nbest) weights.set(digits, (weights.get(digits) ?? 0) + Math.exp(NBEST_SCORE_SCALE * (score - best)));
  if (!weights.has(text)) weights.set(text, Math.min(...weights.values()));
  let total = 0;
  for (const w of weights.values()) total += w;
  const alternatives: Alternative[] = [...weights.entries()]
    .filter(([digits]) => digits !== text && digits !== "")
    .sort((a, b) => b[1] - a[1])
    .slice(0, MAX_ALTERNATIVES)
    .map(([digits, w]) => ({ text: digits, confidence: round3(w / total) }));
  return { text, confidence: round3(weights.get(text)! / total), alternatives };
}

/** Confidence from how much better the phrase path scored than the garbage-only path. */
export function marginConfidence(phraseScore: number, garbageScore: number): number {
  const margin = phraseScore - garbageScore;
  return round3(1 / (1 + Math.exp(-(margin - MARGIN_CENTER) / MARGIN_WIDTH)));
}

/** One pocketsphinx_batch process decoding the FIFO it was given. */
class Decoder {
  private socket?: Socket;
  private stderr = "";
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private exitedNow = false;

  private constructor(
    private readonly child: ChildProcess,
    readonly name: string,
  ) {
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      this.stderr = (this.stderr + chunk).slice(-4000); // only the tail is useful, for errors
    });
    this.exited = new Promise((resolve) => {
      child.on("error", (error) => {
        this.stderr += `\n${String(error)}`;
        this.exitedNow = true;
        resolve({ code: -1, signal: null });
      });
      child.on("close", (code, signal) => {
        this.exitedNow = true;
        resolve({ code, signal });
      });
    });
  }

  /** Spawns the decoder and opens the write end of its FIFO once it is reading. */
  static async start(binary: string, args: string[], fifo: string, name: string, live: Set<ChildProcess>): Promise<Decoder> {
    const child = spawn(binary, args, { stdio: ["ignore", "ignore", "pipe"] });
    live.add(child);
    child.once("close", () => live.delete(child));
    child.once("error", () => live.delete(child));
    const decoder = new Decoder(child, name);
    // O_NONBLOCK open fails with ENXIO until the reader has opened its end; a blocking open would hang a
    // libuv thread forever if the decoder died first. The fd then becomes a stream (libuv pipe handle).
    const deadline = Date.now() + OPEN_TIMEOUT_MS;
    for (;;) {
      try {
        const fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
        const socket = new Socket({ fd, readable: false, writable: true });
        socket.on("error", () => undefined); // EPIPE if the decoder dies; its exit status reports it
        decoder.socket = socket;
        return decoder;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENXIO") {
          decoder.kill();
          throw error;
        }
      }
      if (decoder.exitedNow) throw new Error(`pocketsphinx (${name}) exited before reading audio: ${decoder.errorTail()}`);
      if (Date.now() > deadline) {
        decoder.kill();
        throw new Error(`pocketsphinx (${name}) did not open its audio FIFO within ${OPEN_TIMEOUT_MS} ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  }

  write(pcm16k: Int16Array): void {
    if (this.socket && !this.socket.destroyed) this.socket.write(Buffer.from(pcm16k.buffer, pcm16k.byteOffset, pcm16k.byteLength));
  }

  /** Closes the audio (end of utterance); the decoder then writes its result and exits. */
  endAudio(): void {
    this.socket?.end();
  }

  kill(): void {
    this.socket?.destroy();
    if (!this.exitedNow) this.child.kill("SIGKILL");
  }

  errorTail(): string {
    const lines = this.stderr.split("\n").filter((l) => /error|fatal|fail/i.test(l));
    return (lines.length > 0 ? lines.slice(-3) : this.stderr.split("\n").slice(-3)).join(" | ").trim();
  }
}

type State = "open" | "finishing" | "done" | "aborted";

class PocketsphinxRecognizer implements UtteranceRecognizer {
  onPartial?: (text: string) => void;
  onError?: (error: Error) => void;
  private state: State = "open";
  private errorReported = false;
  private readonly frontEnd: TelephoneFrontEnd;
  /** 16 kHz audio produced before the decoders were ready. */
  private queued: Int16Array[] = [];
  private decoders: Decoder[] = [];
  private dir?: string;
  private grammar?: GrammarFiles;
  private readonly setup: Promise<void>;

  constructor(
    private readonly engine: PocketsphinxEngine,
    private readonly hints: RecognitionHints,
    private readonly onEnd: () => void,
  ) {
    this.frontEnd = new TelephoneFrontEnd({ lookaheadMs: engine.config.lookaheadMs });
    this.setup = this.begin();
    // Reported at once (a caller may switch engines) and again by finish(), which rejects.
    this.setup.catch((error: unknown) => this.reportError(error instanceof Error ? error : new Error(String(error))));
  }

  push(pcm: Int16Array): void {
    if (this.state !== "open") return;
    const out = this.frontEnd.push(pcm);
    if (out.length > 0) this.send(out);
  }

  async finish(): Promise<RecognitionResult> {
    if (this.state === "aborted") throw new Error("utterance was aborted");
    if (this.state !== "open") throw new Error("finish() called twice");
    this.state = "finishing";
    const timeoutMs = this.engine.config.timeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`pocketsphinx gave no result within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      const tail = this.frontEnd.flush();
      await Promise.race([this.setup, timeout]);
      if (tail.length > 0) this.send(tail);
      for (const d of this.decoders) d.endAudio();
      const exits = await Promise.race([Promise.all(this.decoders.map((d) => d.exited)), timeout]);
      if (this.aborted()) throw new Error("utterance was aborted");
      exits.forEach((exit, i) => {
        if (exit.code !== 0) throw new Error(`pocketsphinx (${this.decoders[i].name}) failed (${exit.signal ?? exit.code}): ${this.decoders[i].errorTail()}`);
      });
      return await this.readResult();
    } finally {
      clearTimeout(timer);
      if (this.state === "finishing") this.state = "done";
      this.teardown();
    }
  }

  abort(): void {
    if (this.state === "done" || this.state === "aborted") return;
    this.state = "aborted";
    this.teardown();
  }

  private async begin(): Promise<void> {
    const prepared = await this.engine.prepare();
    this.grammar = await this.engine.grammarFor(this.hints, prepared);
    if (this.ended()) return;
    this.dir = await mkdtemp(join(prepared.runDir, "u-"));
    const competitor = this.grammar?.competitorFsg !== undefined && this.engine.config.confidenceDecode;
    const fifos = [join(this.dir, "main"), ...(competitor ? [join(this.dir, "comp")] : [])];
    await execFileAsync("mkfifo", fifos);

    const common = ["-hmm", prepared.acousticModel, "-adcin", "yes", "-cepdir", this.dir, "-cepext", ""];
    const main = [...common, "-ctl", prepared.ctlMain, "-hyp", join(this.dir, "main.hyp")];
    if (this.grammar) {
      main.push("-fsg", this.grammar.fsg, "-dict", this.grammar.dict);
      if (this.grammar.grammar.mode === "digits") main.push("-nbest", String(NBEST_SIZE), "-nbestdir", this.dir, "-nbestext", ".nbest");
    } else {
      main.push("-lm", this.engine.config.languageModelPath, "-dict", this.engine.config.dictionaryPath);
    }
    const starts = [Decoder.start(prepared.binary, main, fifos[0], "main", this.engine.decoderProcesses)];
    if (competitor) {
      const comp = [...common, "-ctl", prepared.ctlComp, "-hyp", join(this.dir, "comp.hyp"), "-fsg", this.grammar!.competitorFsg!, "-dict", this.grammar!.dict];
      starts.push(Decoder.start(prepared.binary, comp, fifos[1], "garbage", this.engine.decoderProcesses));
    }
    const settled = await Promise.allSettled(starts);
    this.decoders = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) {
      for (const d of this.decoders) d.kill();
      throw failed.reason;
    }
    // Aborted, or finish() gave up waiting, while the decoders were starting.
    if (this.ended()) {
      for (const d of this.decoders) d.kill();
      return;
    }
    for (const chunk of this.queued) for (const d of this.decoders) d.write(chunk);
    this.queued = [];
    for (const d of this.decoders) {
      void d.exited.then((exit) => {
        if (this.state === "open") this.reportError(new Error(`pocketsphinx (${d.name}) exited mid-utterance (${exit.signal ?? exit.code}): ${d.errorTail()}`));
      });
    }
  }

  /** onError, once, and only while the utterance is open (finish() reports errors after that). */
  private reportError(error: Error): void {
    if (this.state !== "open" || this.errorReported) return;
    this.errorReported = true;
    try {
      this.onError?.(error);
    } catch {
      // the caller's problem; finish() still rejects
    }
  }

  // Methods, not field tests, so TypeScript does not narrow the state across awaits.
  private aborted(): boolean {
    return this.state === "aborted";
  }

  private ended(): boolean {
    return this.state === "aborted" || this.state === "done";
  }

  private send(pcm16k: Int16Array): void {
    if (this.decoders.length > 0) for (const d of this.decoders) d.write(pcm16k);
    else this.queued.push(pcm16k);
  }

  private async readResult(): Promise<RecognitionResult> {
    const dir = this.dir!;
    const main = parseHyp(await readFile(join(dir, "main.hyp"), "utf8"));
    const grammar = this.grammar?.grammar;
    if (!grammar) {
      // Free text: no competitor and no N-best, so the confidence is only "something" vs "nothing".
      const text = spokenWords(main.text).join(" ");
      return { text, confidence: text ? 0.5 : 0, alternatives: [] };
    }
    if (grammar.mode === "digits") {
      const nbest = parseNbest(await readFile(join(dir, "utt.nbest"), "utf8").catch(() => ""));
      // One of the state's phrases instead of a number.
      const phrase = matchPhrase(spokenWords(main.text), grammar.phrases);
      if (phrase) return digitsStatePhraseResult(phrase, nbest, grammar.phrases);
      return digitsResult(main.text, nbest);
    }
    const phrase = matchPhrase(spokenWords(main.text), grammar.phrases);
    if (!phrase) return { text: "", confidence: 0, alternatives: [] };
    if (this.decoders.length < 2) return { text: phrase.text, confidence: 0.5, alternatives: [] };
    const garbage = parseHyp(await readFile(join(dir, "comp.hyp"), "utf8"));
    return { text: phrase.text, confidence: marginConfidence(main.score, garbage.score), alternatives: [] };
  }

  private teardown(): void {
    for (const d of this.decoders) d.kill();
    this.queued = [];
    // Setup may still be running (it kills what it starts after an abort); the directory goes when it is done.
    void this.setup
      .catch(() => undefined)
      .then(async () => {
        const dir = this.dir;
        this.dir = undefined;
        if (dir) await rm(dir, { recursive: true, force: true });
      })
      .catch(() => undefined);
    this.onEnd();
  }
}
