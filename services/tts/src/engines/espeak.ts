// eSpeak NG (Debian package "espeak-ng") as a TtsEngine.
//
// `espeak-ng --stdout` writes a WAV to fd 1 while it synthesizes (4 KiB writes; the header's data size is
// the placeholder 0x7FFFF000), so samples are passed on as they arrive. Standard voices are 22050 Hz;
// mbrola voices (mb-*) are 16 kHz and get resampled to the engine's rate.

import { Resampler, WavStreamParser } from "@voicebot/audio";
import { RequestRefusedError, type SynthesisRequest, type TtsEngine } from "../engine.js";
import { pieces, startEngineProcess, type EngineProcess } from "./process.js";
import { groupSentences } from "./text.js";

/** What espeak-ng says on stderr when asked for a voice it does not have. */
const UNKNOWN_VOICE = /voice does not exist/i;

export interface EspeakEngineOptions {
  /** Path or name of the binary (default "espeak-ng", found on PATH). */
  binary?: string;
  /** Default voice (`espeak-ng --voices`), default "en-us". */
  voice?: string;
  /** Output rate (default 22050, espeak-ng's own). */
  sampleRate?: number;
  /** Speed at rate 1 (default 175, espeak-ng's default). */
  wordsPerMinute?: number;
  /** Largest piece yielded, in ms (default 100). espeak-ng outruns real time, so one pipe read often holds
   *  over a second of audio; it is passed on at once, cut into pieces of this size. */
  pieceMs?: number;
}

/** espeak-ng's accepted speed range. */
const MIN_WPM = 80;
const MAX_WPM = 450;
/** Text per process: well under Linux's 128 KiB argv string limit, big enough to keep sentences together. */
const MAX_CHARS_PER_RUN = 20_000;

export class EspeakEngine implements TtsEngine {
  readonly label = "espeak-ng";
  readonly sampleRate: number;
  private readonly binary: string;
  private readonly voice: string;
  private readonly wpm: number;
  private readonly pieceSamples: number;
  private readonly running = new Set<EngineProcess>();
  private closed = false;

  constructor(options: EspeakEngineOptions = {}) {
    this.binary = options.binary ?? "espeak-ng";
    this.voice = options.voice ?? "en-us";
    this.sampleRate = options.sampleRate ?? 22050;
    this.wpm = options.wordsPerMinute ?? 175;
    this.pieceSamples = Math.max(1, Math.round(((options.pieceMs ?? 100) * this.sampleRate) / 1000));
  }

  async *synthesize(req: SynthesisRequest): AsyncGenerator<Int16Array, void, undefined> {
    if (this.closed) throw new Error("espeak-ng engine is closed");
    const { signal } = req;
    signal?.throwIfAborted();
    const rate = req.rate ?? 1;
    if (!(rate > 0 && Number.isFinite(rate))) throw new RangeError(`espeak-ng: rate must be a positive number, got ${rate}`);
    const wpm = Math.min(MAX_WPM, Math.max(MIN_WPM, Math.round(this.wpm * rate)));
    for (const text of groupSentences(req.text, MAX_CHARS_PER_RUN)) {
      // "--" ends the options, so text starting with "-" is spoken, not parsed.
      const args = ["--stdout", "-v", req.voice ?? this.voice, "-s", String(wpm), "--", text];
      const proc = startEngineProcess(this.binary, args, { label: "espeak-ng", debianPackage: "espeak-ng", signal, stdout: "pipe" });
      this.running.add(proc);
      try {
        const parser = new WavStreamParser();
        let resampler: Resampler | undefined;
        let bytes = 0;
        for await (const chunk of proc.child.stdout as AsyncIterable<Buffer>) {
          signal?.throwIfAborted();
          bytes += chunk.length;
          let pcm = parser.push(chunk);
          const format = parser.format;
          if (format && format.sampleRate !== this.sampleRate) resampler ??= new Resampler(format.sampleRate, this.sampleRate);
          if (resampler) pcm = resampler.push(pcm);
          yield* pieces(pcm, this.pieceSamples, signal);
        }
        await proc.done; // the exit status (or the abort) decides whether the stream was complete
        if (bytes === 0) throw new Error(`espeak-ng wrote no audio${proc.stderr() ? `: ${proc.stderr()}` : ""}`);
        parser.end();
        const tail = resampler?.flush();
        if (tail) yield* pieces(tail, this.pieceSamples, signal);
      } catch (error) {
        if (UNKNOWN_VOICE.test(proc.stderr())) throw new RequestRefusedError(`espeak-ng: unknown voice ${JSON.stringify(args[2])}: ${proc.stderr()}`);
        throw error;
      } finally {
        proc.kill(); // no-op if it exited; stops it if the caller stopped early or aborted
        await proc.done.catch(() => undefined); // and it is gone once we return
        this.running.delete(proc);
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const proc of this.running) proc.kill();
  }
}
