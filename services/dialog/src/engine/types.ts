// The contract between the turn runner and a dialog engine. The scripted engine implements it today; an LLM engine
// implements the same interface: it gets the caller's input and its own saved state, and acts through TurnIO.

/** What the caller did, as an engine sees it. */
export type EngineInput =
  | { kind: "start" }
  | { kind: "speech"; text: string; confidence: number }
  | { kind: "keypad"; digit: string; atMs: number }
  /** Nothing came from the caller within the state's timeout. */
  | { kind: "noInput" };

/** What the recognizer should expect next; written to keys.hints(callId) as JSON for the asr stage. */
export interface RecognitionHints {
  mode: "phrases" | "digits";
  phrases: string[];
  minSilenceMs?: number;
  maxSilenceMs?: number;
}

export type ToolOutcome =
  | { ok: true; result: unknown; ms: number }
  | { ok: false; errorCode: string; errorMessage: string; ms: number };

export interface TurnIO {
  /** The caller's side of the turn, for the record (once per complete input; keypad digits of an entry together). */
  heard(entry: { text: string; source: "speech" | "keypad"; confidence?: number }): void;
  /**
   * Speaks text: it is split into sentence chunks and sent to tts right away. `cacheable` marks fixed phrases
   * (greeting, prompts, reprompts) whose audio tts may cache.
   */
  say(text: string, options?: { cacheable?: boolean }): void;
  /**
   * Runs a tool. Speech said before the call is finished as its own bot turn first, so a tool that acts on the
   * call (end_call, transfer_to_human) runs after that turn (its CallControl waits for it to play).
   */
  callTool(name: string, args: Record<string, unknown>, options?: { timeoutMs?: number }): Promise<ToolOutcome>;
  /** The recognizer hints for what comes next (call when the conversation moves to a new state). */
  setHints(hints: RecognitionHints): void;
}

export interface TurnResult<S> {
  /** The engine's state after the turn (JSON-serializable; saved with the call's dialog state). */
  state: S;
  /** Short fixed label for metrics ("greeting", "intent", "slot", "reprompt", ...). */
  outcome: string;
  /** The conversation is over (the call is being hung up or transferred): later inputs are ignored. */
  done?: boolean;
}

export interface DialogEngine<S = unknown> {
  /** State for a new call. */
  initialState(): S;
  /**
   * Plays one turn. Turns may be redone after a crash or a concurrent save, so the engine must make the same tool
   * calls in the same order for the same input and state (the runner derives idempotency keys from that order).
   */
  turn(input: EngineInput, state: S, io: TurnIO): Promise<TurnResult<S>>;
}
