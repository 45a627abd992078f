export interface SynthesisRequest { text: string; voice?: string; rate?: number /* 1 = normal */; signal?: AbortSignal }
/** Audio comes out as 16-bit mono PCM pieces at `sampleRate`, in order, as soon as they exist. */
export interface TtsEngine {
  readonly label: string;           // "flite", "espeak-ng"
  readonly sampleRate: number;      // rate of the PCM it yields
  synthesize(req: SynthesisRequest): AsyncIterable<Int16Array>;
  close(): Promise<void>;
}
