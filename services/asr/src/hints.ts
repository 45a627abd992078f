/** What the dialog stores at keys.hints(callId): the recognizer constraints and endpointing for its state. */
export interface StoredHints {
  mode: "phrases" | "digits";
  phrases: string[];
  /** Endpointing overrides in ms (absent or 0 = the service defaults). */
  minSilenceMs?: number;
  maxSilenceMs?: number;
  /** Silence after which an utterance that is exactly one of the phrases ends (0: never early; absent: the default). */
  completeSilenceMs?: number;
}

export interface ParsedHints {
  mode: "phrases" | "digits";
  phrases: string[];
  minSilenceMs: number;
  maxSilenceMs: number;
  /** 0: off. */
  completeSilenceMs: number;
}

/** Silence overrides outside this range are treated as mistakes and clamped. */
const SILENCE_MIN_MS = 200;
const SILENCE_MAX_MS = 10_000;

/**
 * Reads the stored hints leniently: a missing or malformed field falls back to the default, and `problems`
 * names what was wrong so the caller can log it.
 */
export function parseHints(
  raw: unknown,
  defaults: { minSilenceMs: number; maxSilenceMs: number; completeSilenceMs: number },
): { hints: ParsedHints; problems: string[] } {
  const problems: string[] = [];
  const hints: ParsedHints = { mode: "phrases", phrases: [], ...defaults };
  if (raw === undefined || raw === null) return { hints, problems };
  if (typeof raw !== "object" || Array.isArray(raw)) return { hints, problems: ["hints are not an object"] };
  const value = raw as Record<string, unknown>;

  if (value.mode === "digits" || value.mode === "phrases") hints.mode = value.mode;
  else if (value.mode !== undefined) problems.push(`unknown mode ${JSON.stringify(value.mode)}`);

  if (Array.isArray(value.phrases)) {
    hints.phrases = value.phrases.filter((p): p is string => typeof p === "string" && p.trim() !== "").map((p) => p.trim());
    if (hints.phrases.length !== value.phrases.length) problems.push("phrases must be non-empty strings");
  } else if (value.phrases !== undefined) {
    problems.push("phrases is not an array");
  }

  const silence = (name: "minSilenceMs" | "maxSilenceMs" | "completeSilenceMs"): number | undefined => {
    const v = value[name];
    if (v === undefined || v === null || v === 0) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
      problems.push(`${name} is not a positive number`);
      return undefined;
    }
    return Math.min(SILENCE_MAX_MS, Math.max(SILENCE_MIN_MS, Math.round(v)));
  };
  hints.minSilenceMs = silence("minSilenceMs") ?? defaults.minSilenceMs;
  hints.maxSilenceMs = Math.max(hints.minSilenceMs, silence("maxSilenceMs") ?? defaults.maxSilenceMs);
  // Here 0 means off, not the default.
  if (value.completeSilenceMs === 0) hints.completeSilenceMs = 0;
  else hints.completeSilenceMs = silence("completeSilenceMs") ?? defaults.completeSilenceMs;
  return { hints, problems };
}
