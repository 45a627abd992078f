// Percentiles and small formatting helpers for the load test.

export interface Summary {
  n: number;
  mean: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

const EMPTY: Summary = { n: 0, mean: NaN, p50: NaN, p95: NaN, p99: NaN, max: NaN };

/** Nearest-rank percentile of sorted values. */
function rank(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export function summarize(values: number[]): Summary {
  if (values.length === 0) return EMPTY;
  const sorted = Float64Array.from(values).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    n: sorted.length,
    mean: sum / sorted.length,
    p50: rank(sorted, 50),
    p95: rank(sorted, 95),
    p99: rank(sorted, 99),
    max: sorted[sorted.length - 1],
  };
}

/** Fixed-bucket histogram for the high-rate samples (frame gaps, timer lag): 0.25 ms buckets up to 10 s. */
export class Histogram {
  private static readonly BUCKET_MS = 0.25;
  private readonly buckets = new Uint32Array(40_000);
  private sum = 0;
  count = 0;
  max = 0;

  add(ms: number): void {
    const v = Math.max(0, ms);
    this.buckets[Math.min(this.buckets.length - 1, Math.floor(v / Histogram.BUCKET_MS))]++;
    this.count++;
    this.sum += v;
    if (v > this.max) this.max = v;
  }

  /** Upper edge of the bucket holding the p-th percentile (so at most 0.25 ms high). */
  quantile(p: number): number {
    if (this.count === 0) return NaN;
    const target = Math.max(1, Math.ceil((p / 100) * this.count));
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i];
      if (seen >= target) return Math.min(this.max, (i + 1) * Histogram.BUCKET_MS);
    }
    return this.max;
  }

  /** Samples above `ms` (to the bucket: samples in the bucket holding `ms` do not count). */
  above(ms: number): number {
    let n = 0;
    for (let i = Math.floor(ms / Histogram.BUCKET_MS) + 1; i < this.buckets.length; i++) n += this.buckets[i];
    return n;
  }

  summary(): Summary {
    if (this.count === 0) return EMPTY;
    return { n: this.count, mean: this.sum / this.count, p50: this.quantile(50), p95: this.quantile(95), p99: this.quantile(99), max: this.max };
  }
}

export const fmt = (v: number, digits = 1): string => (Number.isFinite(v) ? v.toFixed(digits) : "-");

export function table(header: string[], rows: Array<Array<string | number>>): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [line(cells[0]), widths.map((w) => "-".repeat(w)).join("  "), ...cells.slice(1).map(line)].join("\n");
}

/** "60s", "2m", "1500ms" or plain seconds -> ms. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (!match) throw new Error(`not a duration: ${text} (e.g. 60s, 2m, 1500ms)`);
  const value = Number(match[1]);
  return match[2] === "ms" ? value : match[2] === "m" ? value * 60_000 : value * 1000;
}
