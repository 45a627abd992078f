// CMU flite (Debian package "flite") as a TtsEngine.
//
// How the binary behaves (flite 2.2, measured):
// - With `-t TEXT` flite synthesizes the whole text as one utterance and writes the WAV only at the end
//   (proper header, sizes filled in); nothing streams within one run. Synthesis is fast (slt: ~1-2% of real
//   time), so the text is cut into sentences, one run each: the first audio waits only for the first sentence.
// - `-o /dev/stdout` works on a shell pipe but not on Node's child stdout, which is a socketpair: flite's
//   fopen() of /dev/stdout fails ("cst_wave_save: can't open file") and flite still exits 0. `-f` with
//   per-utterance appending needs a seekable file (on a pipe it blocks). So each run writes a temp file.
// - An unknown `-voice` name silently falls back to kal (8 kHz), so names are checked against `flite -lv`;
//   a voice file that fails to load also falls back to kal, exit 0, with "Error load voice" on stderr.
// - Voices: kal is 8 kHz, the others (slt, rms, awb, kal16, awb_time) 16 kHz.

import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseWav, resample } from "@voicebot/audio";
import { RequestRefusedError, type SynthesisRequest, type TtsEngine } from "../engine.js";
import { pieces, startEngineProcess, type EngineProcess } from "./process.js";
import { splitSentences } from "./text.js";

export interface FliteEngineOptions {
  /** Path or name of the flite binary (default "flite", found on PATH). */
  binary?: string;
  /** Default voice: a built-in name (`flite -lv`) or a .flitevox path (default "slt"). */
  voice?: string;
  /** Output rate; default: the default voice's rate. Voices at another rate are resampled to it. */
  sampleRate?: number;
  /** Size of the yielded pieces in ms (default 100). */
  pieceMs?: number;
  /** Where the per-engine scratch directory goes (default the OS temp dir). */
  tmpDir?: string;
}

const VOICE_RATES: Record<string, number> = { kal: 8000 };
const DEFAULT_RATE = 16000;

export class FliteEngine implements TtsEngine {
  readonly label = "flite";
  readonly sampleRate: number;
  private readonly binary: string;
  private readonly voice: string;
  private readonly pieceSamples: number;
  private readonly tmpParent: string;
  private scratch: Promise<string> | undefined;
  private voices: Promise<Set<string>> | undefined;
  private readonly running = new Set<EngineProcess>();
  private closed = false;

  constructor(options: FliteEngineOptions = {}) {
    this.binary = options.binary ?? "flite";
    this.voice = options.voice ?? "slt";
    this.sampleRate = options.sampleRate ?? VOICE_RATES[this.voice] ?? DEFAULT_RATE;
    this.pieceSamples = Math.max(1, Math.round(((options.pieceMs ?? 100) * this.sampleRate) / 1000));
    this.tmpParent = options.tmpDir ?? tmpdir();
  }

  async *synthesize(req: SynthesisRequest): AsyncGenerator<Int16Array, void, undefined> {
    if (this.closed) throw new Error("flite engine is closed");
    const { signal } = req;
    signal?.throwIfAborted();
    const voice = req.voice ?? this.voice;
    const rate = req.rate ?? 1;
    if (!(rate > 0 && Number.isFinite(rate))) throw new RangeError(`flite: rate must be a positive number, got ${rate}`);
    await this.checkVoice(voice);
    const sentences = splitSentences(req.text);
    if (sentences.length === 0) return;
    const dir = await this.scratchDir();
    const id = randomUUID();
    const started: Promise<Int16Array>[] = [];
    const mine = new Set<EngineProcess>(); // this request's flite processes
    const run = (i: number) => {
      const p = this.runOnce(sentences[i], voice, rate, join(dir, `${id}-${i}.wav`), signal, mine);
      p.catch(() => undefined); // awaited below, unless the caller stops first
      started.push(p);
      return p;
    };
    try {
      let next = run(0);
      for (let i = 0; i < sentences.length; i++) {
        const pcm = await next;
        // Start the next sentence now: it is synthesized while the caller plays this one.
        if (i + 1 < sentences.length) next = run(i + 1);
        yield* pieces(pcm, this.pieceSamples, signal);
      }
    } finally {
      // Caller stopped early, aborted or a run failed: a prefetched run must not outlive us.
      for (const proc of mine) proc.kill();
      await Promise.allSettled(started);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const proc of this.running) proc.kill();
    const dir = this.scratch && (await this.scratch.catch(() => undefined));
    if (dir) await rm(dir, { recursive: true, force: true });
  }

  /** Voice names the binary knows (`flite -lv`). */
  listVoices(): Promise<Set<string>> {
    this.voices ??= this.queryVoices();
    this.voices.catch(() => (this.voices = undefined)); // a failed query (e.g. not installed yet) is retried
    return this.voices;
  }

  private async queryVoices(): Promise<Set<string>> {
    const proc = startEngineProcess(this.binary, ["-lv"], { label: "flite", debianPackage: "flite", stdout: "pipe" });
    let out = "";
    proc.child.stdout!.setEncoding("utf8").on("data", (text: string) => (out += text));
    await proc.done;
    const match = /Voices available:(.*)/.exec(out);
    if (!match) throw new Error(`flite -lv: unexpected output ${JSON.stringify(out.slice(0, 200))}`);
    return new Set(match[1].trim().split(/\s+/));
  }

  private async checkVoice(voice: string): Promise<void> {
    if (voice.includes("/") || voice.endsWith(".flitevox")) return; // a voice file: flite reports load errors
    const voices = await this.listVoices();
    if (!voices.has(voice)) throw new RequestRefusedError(`flite: unknown voice ${JSON.stringify(voice)} (available: ${[...voices].join(", ")})`);
  }

  private scratchDir(): Promise<string> {
    this.scratch ??= mkdtemp(join(this.tmpParent, "voicebot-flite-"));
    return this.scratch;
  }

  /** One flite run for one sentence -> its samples at this.sampleRate. */
  private async runOnce(
    text: string,
    voice: string,
    rate: number,
    file: string,
    signal: AbortSignal | undefined,
    mine: Set<EngineProcess>,
  ): Promise<Int16Array> {
    // argv, no shell: `-t` takes the next argument verbatim as text, even one starting with "-".
    const args = ["-voice", voice, "--setf", `duration_stretch=${1 / rate}`, "-t", text, "-o", file];
    const proc = startEngineProcess(this.binary, args, { label: "flite", debianPackage: "flite", signal, stdout: "ignore" });
    this.running.add(proc);
    mine.add(proc);
    let wav: Uint8Array;
    try {
      await proc.done;
      // flite exits 0 even when it could not load a voice file (it then speaks with kal instead).
      if (/error/i.test(proc.stderr())) throw new Error(`flite: ${proc.stderr()}`);
      wav = await readFile(file).catch(() => {
        // flite also exits 0 when it cannot write its output; what went wrong is on stderr.
        throw new Error(`flite wrote no audio${proc.stderr() ? `: ${proc.stderr()}` : ""}`);
      });
    } finally {
      this.running.delete(proc);
      mine.delete(proc);
      await rm(file, { force: true });
    }
    signal?.throwIfAborted();
    const { sampleRate, pcm } = parseWav(wav);
    // e.g. kal (8 kHz) asked of an engine set up for slt (16 kHz).
    return sampleRate === this.sampleRate ? pcm : resample(pcm, sampleRate, this.sampleRate);
  }
}
