// The contract between the turn runner and a dialog engine (scripted and LLM): an engine gets the caller's input
// and its own saved state, and acts through TurnIO.

/** What the caller did, as an engine sees it. */
export type EngineInput =
  | { kind: "start" }
  | { kind: "speech"; text: string; confidence: number }
  | { kind: "keypad"; digit: string; atMs: number }
  /** Nothing came from the caller within the state's timeout. */
  | { kind: "noInput" }
  /** A timer the engine asked for (TurnResult.wake) is due; `token` is the one it chose. */
  | { kind: "wake"; token: string }
  /** An answering machine took the placed call and its greeting is over: leave the agent's message and hang up. */
  | { kind: "voicemail" }
  /** A cough or click cut the last turn off (no words followed): say `text`, the part the caller did not hear, again. */
  | { kind: "resume"; text: string };

/** What the recognizer should expect next; written to keys.hints(callId) as JSON for the asr stage. */
export interface RecognitionHints {
  mode: "phrases" | "digits";
  phrases: string[];
  minSilenceMs?: number;
  maxSilenceMs?: number;
  /** Silence after which an utterance that is exactly one of the phrases ends; 0: never early; absent: the asr's. */
  completeSilenceMs?: number;
}

export type ToolOutcome =
  | { ok: true; result: unknown; ms: number }
  | { ok: false; errorCode: string; errorMessage: string; ms: number };

export interface SayOptions {
  /** A fixed phrase (greeting, prompt, reprompt) whose audio tts may cache. */
  cacheable?: boolean;
  /**
   * Send every sentence at once. By default the last sentence is held back until more text or the end of the
   * turn, so it can carry `turnDone`; streamed text must not wait for the next clause.
   */
  now?: boolean;
}

export interface TurnIO {
  /** The caller's side of the turn, for the record (once per complete input; keypad digits of an entry together). */
  heard(entry: { text: string; source: "speech" | "keypad"; confidence?: number }): void;
  /**
   * Speaks text: it is split into sentence chunks and sent to tts. Returns the id of the bot turn the text went
   * into ("" when nothing is spoken any more because the caller barged in).
   */
  say(text: string, options?: SayOptions): string;
  /**
   * Runs a tool. Speech said before the call is finished as its own bot turn first, so a tool that acts on the
   * call (end_call, transfer_to_human) runs after that turn (its CallControl waits for it to play).
   */
  callTool(name: string, args: Record<string, unknown>, options?: { timeoutMs?: number }): Promise<ToolOutcome>;
  /** The recognizer hints for what comes next (call when the conversation moves to a new state). */
  setHints(hints: RecognitionHints): void;
  /** The LLM's time to first token for the text said from now on (goes into TurnTiming). */
  llmFirstToken?(ms: number): void;
  /** Aborted when the caller barged in on this input's speech: stop generating; nothing more will be spoken. */
  signal?: AbortSignal;
}

export interface TurnResult<S> {
  /** The engine's state after the turn (JSON-serializable; saved with the call's dialog state). */
  state: S;
  /** Short fixed label for metrics ("greeting", "intent", "slot", "reprompt", ...). */
  outcome: string;
  /** The conversation is over (the call is being hung up or transferred): later inputs are ignored. */
  done?: boolean;
  /**
   * Ask for a `wake` input with this token after `afterMs` (a keypad entry that ends with a pause). The runner
   * queues it durably on the call's work queue, so it fires even if this replica dies.
   */
  wake?: { afterMs: number; token: string };
}

export interface DialogEngine<S = unknown> {
  /** State for a new call. */
  initialState(): S;
  /**
   * Plays one turn. Turns may be redone after a crash or a concurrent save; tool calls are deduplicated by their
   * position, name and arguments, so a redone turn that makes the same calls gets the first results.
   */
  turn(input: EngineInput, state: S, io: TurnIO): Promise<TurnResult<S>>;
  /**
   * The caller barged in on bot turn `turnId` and heard only `heardText` of it: returns the state with the
   * conversation history corrected. Optional (an engine without history has nothing to correct).
   */
  interrupted?(state: S, event: { turnId: string; heardText: string }): S;
  /**
   * How long ingress waits for the caller after the bot's turns in this state before asking for a reprompt
   * (undefined: ingress's default). Optional.
   */
  noInputMs?(state: S): number | undefined;
}
