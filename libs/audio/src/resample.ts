// Band-limited sample-rate conversion: a Kaiser-windowed sinc evaluated on a polyphase grid.
//
// With g = gcd(from, to), L = to/g and M = from/g, output sample n sits at input time t = n·M/L, i.e. at
// input index base = floor(n·M/L) plus the fraction p/L (p = n·M mod L). Only L distinct fractions occur,
// so the filter is precomputed as L "phases" of 2H taps each and output n is
//   y[n] = Σ_k taps[p][k] · x[base − H + 1 + k],   k = 0 .. 2H−1.
// The kernel is in input-sample units with cutoff fc = 0.9 · min(from, to)/2, so the same formula both
// interpolates (upsampling) and removes what would alias (downsampling). Output is time-aligned with the
// input (zero-phase); a stream is delayed by H input samples only because those must arrive first.

const CUTOFF_FRACTION = 0.9; // of the lower Nyquist frequency
/** Kernel half-width in zero crossings; with the stop edge at the lower Nyquist this gives ~85 dB rejection. */
const ZERO_CROSSINGS = 24;
const KAISER_BETA = 8.5;
/** Above this many phases the taps are computed per output sample instead of cached (odd rate pairs). */
const MAX_CACHED_PHASES = 4096;

interface FilterBank {
  readonly up: number; // L
  readonly down: number; // M
  readonly half: number; // H
  /** All phases back to back (phase p at p·2H), or undefined when computed on the fly. */
  readonly taps: Float64Array | undefined;
  readonly cutoff: number; // cycles per input sample
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Modified Bessel function of the first kind, order 0 (power series; converges fast for β ≲ 20). */
function besselI0(x: number): number {
  let sum = 1;
  let term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 50; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

function computePhase(bank: Omit<FilterBank, "taps">, p: number): Float64Array {
  const { up, half, cutoff } = bank;
  const width = ZERO_CROSSINGS / (2 * cutoff); // kernel half-width in input samples (H = ceil(width))
  const i0Beta = besselI0(KAISER_BETA);
  const taps = new Float64Array(2 * half);
  let sum = 0;
  for (let k = 0; k < 2 * half; k++) {
    const tau = half - 1 - k + p / up; // distance from the output instant to input sample k
    let h = 0;
    if (Math.abs(tau) < width) {
      const x = 2 * cutoff * tau;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const r = tau / width;
      h = 2 * cutoff * sinc * (besselI0(KAISER_BETA * Math.sqrt(1 - r * r)) / i0Beta);
    }
    taps[k] = h;
    sum += h;
  }
  // Unity DC gain for every phase, so a constant input does not come out with a phase-dependent ripple.
  for (let k = 0; k < taps.length; k++) taps[k] /= sum;
  return taps;
}

const banks = new Map<string, FilterBank>();

function filterBank(fromRate: number, toRate: number): FilterBank {
  const key = `${fromRate}:${toRate}`;
  let bank = banks.get(key);
  if (!bank) {
    const g = gcd(fromRate, toRate);
    const cutoff = (CUTOFF_FRACTION * Math.min(fromRate, toRate)) / 2 / fromRate;
    const base = { up: toRate / g, down: fromRate / g, half: Math.ceil(ZERO_CROSSINGS / (2 * cutoff)), cutoff };
    let taps: Float64Array | undefined;
    if (base.up <= MAX_CACHED_PHASES) {
      taps = new Float64Array(base.up * 2 * base.half);
      for (let p = 0; p < base.up; p++) taps.set(computePhase(base, p), p * 2 * base.half);
    }
    bank = { ...base, taps };
    banks.set(key, bank);
  }
  return bank;
}

function checkRate(name: string, rate: number): void {
  if (!Number.isInteger(rate) || rate <= 0) throw new RangeError(`${name} must be a positive integer, got ${rate}`);
}

/**
 * Streaming resampler. Output depends only on the concatenated input, not on how it was split into pushes:
 * `push(a) ++ push(b) ++ flush()` equals `resample(a ++ b)`. Each push returns the samples whose filter
 * window is complete; `flush()` treats the input as ending there (zeros after) and returns the rest.
 */
export class Resampler {
  readonly fromRate: number;
  readonly toRate: number;
  private readonly bank: FilterBank | undefined; // undefined when fromRate === toRate (pass-through)
  private buf = new Float64Array(0); // input kept as float: the inner loop then does no int->float conversions
  private bufStart = 0; // absolute input index of buf[0]
  private base = 0; // absolute input index "base" of the next output sample
  private phase = 0; // its phase p (0 .. L−1)
  private flushed = false;

  constructor(fromRate: number, toRate: number) {
    checkRate("fromRate", fromRate);
    checkRate("toRate", toRate);
    this.fromRate = fromRate;
    this.toRate = toRate;
    this.bank = fromRate === toRate ? undefined : filterBank(fromRate, toRate);
  }

  push(pcm: Int16Array): Int16Array {
    if (this.flushed) throw new Error("Resampler: push after flush");
    if (!this.bank) return pcm.slice();
    // Drop input that no future output reaches (everything before base − H + 1), append the new piece.
    const keepFrom = Math.max(0, Math.min(this.buf.length, this.base - this.bank.half + 1 - this.bufStart));
    const merged = new Float64Array(this.buf.length - keepFrom + pcm.length);
    merged.set(this.buf.subarray(keepFrom));
    merged.set(pcm, this.buf.length - keepFrom);
    this.buf = merged;
    this.bufStart += keepFrom;
    return this.run(false);
  }

  flush(): Int16Array {
    if (this.flushed) return new Int16Array(0);
    this.flushed = true;
    return this.bank ? this.run(true) : new Int16Array(0);
  }

  private run(final: boolean): Int16Array {
    const bank = this.bank!;
    const { up, down, half } = bank;
    const taps2 = 2 * half;
    const buf = this.buf;
    const end = this.bufStart + buf.length; // absolute index one past the last input sample
    // Mid-stream an output needs x[base + H]; at the end every output with t = base + p/L < end is due.
    const lastBase = final ? end - 1 : end - 1 - half;
    const out = new Int16Array(Math.max(0, Math.ceil(((lastBase - this.base + 1) * up) / down) + 1));
    let count = 0;
    let base = this.base;
    let phase = this.phase;
    const cached = bank.taps;
    while (base <= lastBase) {
      const taps = cached ?? computePhase(bank, phase);
      const t0 = cached ? phase * taps2 : 0; // where this phase's taps start
      const j0 = base - half + 1 - this.bufStart; // index in buf of the first tap's sample
      // Usually the whole window is buffered; at the start of the stream or (at flush) its end the missing
      // samples are zero and are skipped.
      const kFrom = j0 >= 0 ? 0 : -j0;
      const kTo = j0 + taps2 <= buf.length ? taps2 : buf.length - j0;
      let acc = 0;
      for (let k = kFrom; k < kTo; k++) acc += taps[t0 + k] * buf[j0 + k];
      const s = Math.round(acc);
      out[count++] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
      phase += down;
      base += Math.floor(phase / up);
      phase %= up;
    }
    this.base = base;
    this.phase = phase;
    return count === out.length ? out : out.slice(0, count);
  }
}

/**
 * One-shot conversion of a whole signal; output length is ceil(n · toRate / fromRate).
 * Same result as a Resampler fed the same samples in any pieces.
 */
export function resample(pcm: Int16Array, fromRate: number, toRate: number): Int16Array {
  const r = new Resampler(fromRate, toRate);
  const head = r.push(pcm);
  const tail = r.flush();
  if (tail.length === 0) return head;
  const out = new Int16Array(head.length + tail.length);
  out.set(head);
  out.set(tail, head.length);
  return out;
}
