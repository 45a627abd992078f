// Front end for the pocketsphinx engine: 8 kHz telephone PCM in, 16 kHz PCM out, with a level-normalizing gain.
//
// Why 16 kHz: the stock en-us acoustic model is wideband. Fed the 8 kHz audio directly (-samprate 8000
// -nfft 256, model copy with -upperf 3500 in feat.params) it got 13/20 phrases and 2/40 digit strings of a
// flite test set; the same audio interpolated to 16 kHz and decoded with the model's own wideband features,
// same grammars, got 20/20 and 9/40 (25/40 with the tuned digits grammar). The empty 4-8 kHz band must be
// really empty and the same on every call: the interpolation filter has to reject the images of the 0-4 kHz
// line noise (a 63-tap half-band filter, which leaks 4.0-4.4 kHz, gave 18% digit errors instead of 13%),
// and 1-LSB triangular dither (as sox adds) sets the floor the cepstral-mean prior was measured on.
//
// Why a gain: streaming, pocketsphinx normalizes cepstra with a fixed prior mean (the model copy's -cmninit)
// until ~8 s of speech have been seen, so c0 (loudness) has to be near what the prior expects: 20 dB quieter
// audio gave 21% digit errors instead of 13%. The gain brings the loudest 20 ms frame seen so far to
// -15 dBFS and only ever falls (no pumping). A gain from the past alone gives the first word the gain of its
// quiet onset (over-boosted, misrecognized), so the first `lookaheadMs` of each utterance (800 ms = the
// service's 300 ms pre-roll + half a second of speech) is held back and released with the gain of that whole
// window; the decoder, ~50x faster than real time, catches up at once. With the whole engine on flite voices
// at -12/0/+4 dB: 13.2/11.3/10.3% digit errors, as good as normalizing each whole utterance beforehand.
// Delaying every frame by the look-ahead instead was no more accurate and left up to 800 ms of audio to
// decode after finish() (35-45 ms instead of 3-8 ms).

const IN_RATE = 8000;
const FRAME = 160; // 20 ms at 8 kHz
const TAPS = 187; // at 16 kHz; odd so the filter has an exact centre (delay 93 output samples)
const CUTOFF_HZ = 3725;
const KAISER_BETA = 9;
const CLIP_GUARD = 31000; // never let the gain push a sample past this

export interface FrontEndOptions {
  /** Audio held at the start of the utterance so the first frames' gain knows the speech that follows. */
  lookaheadMs: number;
  /** Target level of the loudest 20 ms frame (RMS, dBFS). */
  targetPeakDbfs: number;
  /** Gain limits in dB. */
  maxGainDb: number;
  minGainDb: number;
  /** Frames quieter than this are treated as no speech: the gain never rises above what this level needs. */
  floorDbfs: number;
}

export const DEFAULT_FRONT_END: FrontEndOptions = {
  lookaheadMs: 800,
  targetPeakDbfs: -15,
  maxGainDb: 24,
  minGainDb: -12,
  floorDbfs: -55,
};

function besselI0(x: number): number {
  let sum = 1;
  let term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 60; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

/** Kaiser-windowed sinc low-pass at 16 kHz, scaled to a DC gain of 2 (it runs on zero-stuffed input). */
function designInterpolator(): { even: Float64Array; odd: Float64Array } {
  const h = new Float64Array(TAPS);
  const fc = CUTOFF_HZ / (2 * IN_RATE); // cycles per output sample
  const mid = (TAPS - 1) / 2;
  const i0 = besselI0(KAISER_BETA);
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const n = i - mid;
    const x = 2 * fc * n;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const r = n / mid;
    h[i] = 2 * fc * sinc * (besselI0(KAISER_BETA * Math.sqrt(Math.max(0, 1 - r * r))) / i0);
    sum += h[i];
  }
  // Polyphase split: output 2m uses the even taps against x[m], x[m-1], ...; output 2m+1 the odd taps.
  const even = new Float64Array(Math.ceil(TAPS / 2));
  const odd = new Float64Array(Math.floor(TAPS / 2));
  for (let i = 0; i < TAPS; i++) {
    const v = (h[i] * 2) / sum;
    if (i % 2 === 0) even[i / 2] = v;
    else odd[(i - 1) / 2] = v;
  }
  return { even, odd };
}

const FILTER = designInterpolator();
/** Input samples of history the filter needs. */
const HISTORY = FILTER.even.length;
/** Zeros pushed at the end so the last real sample reaches the filter's centre. */
const TAIL_INPUT_SAMPLES = Math.ceil((TAPS - 1) / 2 / 2) + 1;
/** Output samples to drop at the start: the filter's delay (the centre tap). */
const DELAY_OUTPUT_SAMPLES = (TAPS - 1) / 2;

const dbToGain = (db: number): number => Math.pow(10, db / 20);

/**
 * Streaming 8 kHz → 16 kHz converter with a level-normalizing gain. push() returns whatever 16 kHz audio is
 * final so far (nothing while the start-up look-ahead fills); flush() returns the rest. Output length is
 * exactly twice the input length.
 */
export class TelephoneFrontEnd {
  private readonly opts: FrontEndOptions;
  private readonly lookaheadFrames: number;
  private readonly target: number;
  private readonly floor: number;
  private partial: number[] = []; // input samples not yet making a whole frame
  private readonly pending: Int16Array[] = []; // whole frames waiting for the start-up look-ahead
  private loudestRms = 0;
  private loudestSample = 0;
  // Interpolator state: the last HISTORY gained input samples, newest last.
  private readonly history = new Float64Array(HISTORY);
  private toDrop = DELAY_OUTPUT_SAMPLES;
  private seed = 0x2545f491; // dither PRNG (xorshift32): the same input gives the same output
  private flushed = false;
  private released = false; // the start-up look-ahead is over
  private samplesIn = 0;
  private samplesOut = 0;
  /** Gain applied to the latest frame that left the front end (for logs and tests). */
  lastGainDb = 0;

  constructor(options: Partial<FrontEndOptions> = {}) {
    this.opts = { ...DEFAULT_FRONT_END, ...options };
    this.lookaheadFrames = Math.max(0, Math.round(this.opts.lookaheadMs / 20));
    this.target = 32768 * dbToGain(this.opts.targetPeakDbfs);
    this.floor = 32768 * dbToGain(this.opts.floorDbfs);
  }

  push(pcm: Int16Array): Int16Array {
    if (this.flushed) throw new Error("TelephoneFrontEnd: push after flush");
    this.samplesIn += pcm.length;
    const out: Int16Array[] = [];
    let i = 0;
    // Complete a frame started by the previous push.
    if (this.partial.length > 0) {
      while (this.partial.length < FRAME && i < pcm.length) this.partial.push(pcm[i++]);
      if (this.partial.length === FRAME) {
        this.addFrame(Int16Array.from(this.partial), out);
        this.partial = [];
      }
    }
    for (; i + FRAME <= pcm.length; i += FRAME) this.addFrame(pcm.subarray(i, i + FRAME), out);
    for (; i < pcm.length; i++) this.partial.push(pcm[i]);
    return this.count(concat(out));
  }

  flush(): Int16Array {
    if (this.flushed) return new Int16Array(0);
    this.flushed = true;
    const out: Int16Array[] = [];
    if (this.partial.length > 0) {
      const last = Int16Array.from(this.partial);
      this.observe(last);
      this.pending.push(last);
      this.partial = [];
    }
    while (this.pending.length > 0) out.push(this.emit(this.pending.shift()!));
    out.push(this.interpolate(new Float64Array(TAIL_INPUT_SAMPLES)));
    // The zeros only push the last real samples through the filter; what they produce beyond that is cut.
    const all = concat(out);
    return this.count(all.subarray(0, Math.max(0, 2 * this.samplesIn - this.samplesOut)));
  }

  private count(out: Int16Array): Int16Array {
    this.samplesOut += out.length;
    return out;
  }

  private addFrame(frame: Int16Array, out: Int16Array[]): void {
    this.observe(frame);
    this.pending.push(frame);
    // The first `lookaheadFrames` frames wait so that their gain already knows the speech that follows;
    // after that every frame leaves as soon as it arrives.
    if (!this.released && this.pending.length <= this.lookaheadFrames) return;
    this.released = true;
    while (this.pending.length > 0) out.push(this.emit(this.pending.shift()!));
  }

  private observe(frame: Int16Array): void {
    let sum = 0;
    for (let k = 0; k < frame.length; k++) {
      const v = frame[k];
      sum += v * v;
      const a = Math.abs(v);
      if (a > this.loudestSample) this.loudestSample = a;
    }
    const rms = Math.sqrt(sum / frame.length);
    if (rms > this.loudestRms) this.loudestRms = rms;
  }

  /** Gain from everything observed so far; it only ever falls, so there is no pumping. */
  private gain(): number {
    const level = Math.max(this.loudestRms, this.floor);
    let g = Math.min(Math.max(this.target / level, dbToGain(this.opts.minGainDb)), dbToGain(this.opts.maxGainDb));
    if (this.loudestSample > 0) g = Math.min(g, CLIP_GUARD / this.loudestSample);
    return g;
  }

  private emit(frame: Int16Array): Int16Array {
    const g = this.gain();
    this.lastGainDb = 20 * Math.log10(g);
    const x = new Float64Array(frame.length);
    for (let k = 0; k < frame.length; k++) x[k] = frame[k] * g;
    return this.interpolate(x);
  }

  private interpolate(x: Float64Array): Int16Array {
    const { even, odd } = FILTER;
    const y = new Int16Array(2 * x.length);
    let n = 0;
    const h = this.history;
    for (let m = 0; m < x.length; m++) {
      h.copyWithin(0, 1);
      h[HISTORY - 1] = x[m];
      let a = 0;
      for (let j = 0; j < even.length; j++) a += even[j] * h[HISTORY - 1 - j];
      let b = 0;
      for (let j = 0; j < odd.length; j++) b += odd[j] * h[HISTORY - 1 - j];
      y[n++] = this.quantize(a);
      y[n++] = this.quantize(b);
    }
    // Drop the filter delay once, at the start, so output sample 2m lines up with input sample m.
    if (this.toDrop > 0) {
      const drop = Math.min(this.toDrop, n);
      this.toDrop -= drop;
      return y.subarray(drop, n);
    }
    return y;
  }

  private random(): number {
    let s = this.seed;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    this.seed = s >>> 0;
    return this.seed / 4294967296;
  }

  private quantize(v: number): number {
    const r = Math.round(v + this.random() - this.random()); // ±1 LSB triangular dither
    return r > 32767 ? 32767 : r < -32768 ? -32768 : r;
  }
}

function concat(parts: Int16Array[]): Int16Array {
  if (parts.length === 1) return parts[0];
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Int16Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
