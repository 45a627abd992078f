/** What the current dialog state expects, so the recognizer can be constrained. */
export type RecognitionMode = "phrases" | "digits";
export interface RecognitionHints {
  mode: RecognitionMode;
  /** Phrases the state expects, e.g. ["order status", "agent", "goodbye"]. */
  phrases: string[];
}
export interface Alternative {
  text: string;
  confidence: number;
}
export interface RecognitionResult {
  /** "" when nothing was recognized. */
  text: string;
  confidence: number;
  alternatives: Alternative[];
  /** The engine that produced it, when the recognizer can choose between several (FallbackEngine). */
  engine?: string;
}
/** One utterance. The asr service pushes 8 kHz PCM as it arrives and calls finish() at end of speech. */
export interface UtteranceRecognizer {
  push(pcm: Int16Array): void;
  finish(): Promise<RecognitionResult>;
  abort(): void;
  /** Set by the caller; engines with interim results call it with the utterance's text so far. */
  onPartial?: (text: string) => void;
  /**
   * Set by the caller; engines call it (once) when the utterance is lost before finish() is called, e.g. the
   * provider closed the socket, so the caller can move to another engine at once. finish() then rejects.
   */
  onError?: (error: Error) => void;
  /** The engine recognizing right now, when the recognizer can switch engines (FallbackEngine). */
  readonly activeEngine?: string;
}
export interface AsrEngine {
  readonly label: string;
  readonly sampleRate: number;
  /**
   * True when the engine does all its work after finish() (it uploads the utterance) and a request costs money,
   * not this replica's CPU: the asr may then recognize the audio so far while the caller is silent, so the final
   * is ready when the endpoint comes (ASR_EARLY_FINAL_LEAD_MS). Streaming and local engines leave it unset.
   */
  readonly earlyFinals?: boolean;
  start(hints: RecognitionHints): UtteranceRecognizer;
  /** Load models / validate configuration so the first call is fast. */
  warmUp(): Promise<void>;
  close(): Promise<void>;
}
