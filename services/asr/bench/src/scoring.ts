// Word error rate, digit-string accuracy and percentiles for the benchmark tables.

/** Lower case, apostrophes kept, other punctuation dropped: "That's all." → ["that's", "all"]. */
export function normalizeWords(text: string): string[] {
  return text
    .toLowerCase()
    .replace(/[\u2019`]/g, "'")
    .replace(/[^a-z0-9']+/g, " ")
    .split(" ")
    .filter(Boolean);
}

/** Edit distance (substitutions, insertions, deletions) between two sequences. */
export function editDistance<T>(ref: readonly T[], hyp: readonly T[]): number {
  const row = Array.from({ length: hyp.length + 1 }, (_, j) => j);
  for (let i = 1; i <= ref.length; i++) {
    let diagonal = row[0];
    row[0] = i;
    for (let j = 1; j <= hyp.length; j++) {
      const above = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diagonal + (ref[i - 1] === hyp[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[hyp.length];
}

/** Errors and reference length, summed so that rates are weighted by length. */
export class ErrorRate {
  errors = 0;
  length = 0;
  count = 0;
  exact = 0;

  add(ref: readonly string[], hyp: readonly string[]): void {
    const errors = editDistance(ref, hyp);
    this.errors += errors;
    this.length += ref.length;
    this.count++;
    if (errors === 0 && ref.length === hyp.length) this.exact++;
  }

  get rate(): number {
    return this.length === 0 ? NaN : this.errors / this.length;
  }

  get exactRate(): number {
    return this.count === 0 ? NaN : this.exact / this.count;
  }
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

export const pct = (x: number, digits = 1): string => (Number.isFinite(x) ? `${(x * 100).toFixed(digits)}%` : "–");
export const ms = (x: number): string => (Number.isFinite(x) ? `${Math.round(x)} ms` : "–");

/** A plain text table: first row is the header, columns padded, numbers right-aligned. */
export function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  const line = (r: string[]) =>
    r.map((cell, c) => (c === 0 || !/^[-\d.,%–<>~ ]+(ms|µs|%)?$/.test(cell) ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join("  ").trimEnd();
  return [line(rows[0]), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)].join("\n");
}
