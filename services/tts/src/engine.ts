export interface SynthesisRequest { text: string; voice?: string; rate?: number /* 1 = normal */; signal?: AbortSignal }
/** Audio comes out as 16-bit mono PCM pieces at `sampleRate`, in order, as soon as they exist. */
export interface TtsEngine {
  readonly label: string;           // "flite", "espeak-ng"
  readonly sampleRate: number;      // rate of the PCM it yields
  /** What else shapes the audio besides text, voice and rate (model, endpoint, settings): part of cache keys. */
  readonly variant?: string;
  synthesize(req: SynthesisRequest): AsyncIterable<Int16Array>;
  /** Readiness check instead of the warm-up synthesis, for engines where synthesizing costs money (cloud APIs). */
  warmUp?(signal: AbortSignal): Promise<void>;
  close(): Promise<void>;
}

/**
 * The engine cannot serve this request as asked (a voice it does not know), while it is well: the chunk moves to the
 * next engine, and the engine keeps serving every other call (no cool-down).
 */
export class RequestRefusedError extends Error {}

/** HTTP statuses with which a provider refuses the request itself (a voice it does not know, text it rejects). */
const REFUSED_STATUSES = new Set([400, 404, 422]);

/** The error for a provider's failed answer: a refusal of this request for those statuses, else the engine's failure. */
export function providerError(status: number | undefined, message: string): Error {
  return status !== undefined && REFUSED_STATUSES.has(status) ? new RequestRefusedError(message) : new Error(message);
}
