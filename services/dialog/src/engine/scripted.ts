import type { Action, AgentConfig, Intent, Scalar, StateConfig } from "../agents/config.js";
import { CORRECTION_PROMPT, confirmHints, DEFAULT_CONFIRM_CONFIDENCE, keyItInPrompt, readback, yesNo } from "./confirm.js";
import type { DialogEngine, EngineInput, RecognitionHints, TurnIO, TurnResult } from "./types.js";
import { hasTemplate, lookup, normalizeText, renderTemplate, spokenDigits, spokenKey } from "./text.js";

/** What the scripted engine keeps between turns (saved with the call's dialog state). */
export interface ScriptedState {
  /** Current state; "" before the greeting. */
  state: string;
  /** Unrecognized inputs in a row in this state. */
  reprompts: number;
  slots: Record<string, string>;
  /** Digits of a keypad entry in progress. */
  keypad: string;
  /** Counts key presses: a `wake` asked for at one is stale once another key came. */
  keys?: number;
  /** Spoken digits read back to the caller, waiting for a yes, a no or a new number. */
  confirm?: { value: string; asks: number };
}

export interface ScriptedOptions {
  /** Spoken digits recognized with less confidence than this are read back for confirmation. */
  digitsConfirmConfidence: number;
  /** A keyed entry at its maximum length waits this long for the terminator (KEYPAD_PAUSE_MS). */
  keypadPauseMs: number;
}

interface CompiledIntent {
  intent: Intent;
  phrases: string[];
  keywords: string[];
}

interface CompiledState {
  name: string;
  config: StateConfig;
  /** The state's own intents, then the agent's (when enabled): earlier wins a tie. */
  intents: CompiledIntent[];
  keys: Map<string, Intent>;
  hints: RecognitionHints;
}

const KEY_WORDS: Record<string, string> = {
  "0": "zero",
  "1": "one",
  "2": "two",
  "3": "three",
  "4": "four",
  "5": "five",
  "6": "six",
  "7": "seven",
  "8": "eight",
  "9": "nine",
};

/** Runs an agent written in the JSON config language (agents/README.md). Pure: all effects go through TurnIO. */
export class ScriptedEngine implements DialogEngine<ScriptedState> {
  private readonly states = new Map<string, CompiledState>();
  private readonly startState: string;

  private readonly options: ScriptedOptions;

  constructor(
    readonly agent: AgentConfig,
    options: Partial<ScriptedOptions> = {},
  ) {
    this.options = { digitsConfirmConfidence: DEFAULT_CONFIRM_CONFIDENCE, keypadPauseMs: DEFAULT_KEYPAD_PAUSE_MS, ...options };
    for (const [name, config] of Object.entries(agent.states)) this.states.set(name, compileState(name, config, agent));
    this.startState = agent.greeting.goto ?? Object.keys(agent.states)[0];
  }

  initialState(): ScriptedState {
    return { state: "", reprompts: 0, slots: {}, keypad: "", keys: 0 };
  }

  /**
   * A copy of the saved state to work on. A call that began on the LLM (the LLM was switched off during the call)
   * continues from the state its fallback kept; anything unrecognizable starts over.
   */
  private adopt(previous: ScriptedState | undefined): ScriptedState {
    const saved = previous as (ScriptedState & { scripted?: ScriptedState }) | undefined;
    const candidate = saved && typeof saved.state !== "string" && saved.scripted ? saved.scripted : saved;
    if (candidate && typeof candidate.state === "string" && candidate.slots && typeof candidate.slots === "object") {
      return { ...this.initialState(), ...structuredClone(candidate) };
    }
    return this.initialState();
  }

  /** The no-input wait of the state the conversation is in: the state's own, else the agent's. */
  noInputMs(saved: ScriptedState): number | undefined {
    const name = (typeof saved?.state === "string" && saved.state) || this.startState;
    return this.states.get(name)?.config.noInputMs ?? this.agent.noInputMs;
  }

  /** Whether the conversation is in the middle of something (a number being entered or confirmed). */
  isCollecting(state: ScriptedState): boolean {
    return Boolean(state.keypad || state.confirm || this.states.get(state.state)?.config.collect);
  }

  async turn(input: EngineInput, previous: ScriptedState, io: TurnIO): Promise<TurnResult<ScriptedState>> {
    const state = this.adopt(previous);
    // A wake from before a later key (or a leftover of an LLM turn) has nothing to do.
    if (input.kind === "wake" && input.token !== keysToken(state)) return { state: previous, outcome: "wake_ignored" };
    if (input.kind === "keypad") state.keys = (state.keys ?? 0) + 1;
    // A state that vanished from the config (redeployed mid-call) continues from the start state.
    if (input.kind !== "start" && !this.states.has(state.state)) {
      state.state = this.startState;
      state.reprompts = 0;
      state.keypad = "";
      state.confirm = undefined;
    }
    const turn = new Turn(this.agent, this.states, state, io, this.options);
    const outcome = await turn.play(input);
    const wake = turn.waitForTerminator ? { wake: { afterMs: this.options.keypadPauseMs, token: keysToken(state) } } : {};
    return { state, outcome, done: turn.done, ...wake };
  }
}

function compileState(name: string, config: StateConfig, agent: AgentConfig): CompiledState {
  const all = config.globalIntents ? [...config.intents, ...agent.intents] : [...config.intents];
  const intents = all.map((intent) => ({
    intent,
    phrases: intent.phrases.map(normalizeText).filter(Boolean),
    keywords: intent.keywords.map(normalizeText).filter(Boolean),
  }));
  const keys = new Map<string, Intent>();
  for (const intent of all) {
    for (const key of intent.keys) {
      // In a collecting state digits and the terminator belong to the entry.
      if (config.collect && (/\d/.test(key) || key === config.collect.terminator)) continue;
      if (!keys.has(key)) keys.set(key, intent); // the state's own intents shadow the agent's
    }
  }
  const derived = new Set<string>();
  for (const { intent } of intents) for (const phrase of [...intent.phrases, ...intent.keywords]) derived.add(phrase);
  if (!config.collect) for (const key of keys.keys()) if (KEY_WORDS[key]) derived.add(KEY_WORDS[key]);
  const hints: RecognitionHints = {
    mode: config.hints?.mode ?? (config.collect ? "digits" : "phrases"),
    phrases: config.hints?.phrases ?? [...derived],
  };
  // The state's own silences win over the agent's endpointing defaults.
  const minSilenceMs = config.hints?.minSilenceMs ?? agent.endpointing?.minSilenceMs;
  const maxSilenceMs = config.hints?.maxSilenceMs ?? agent.endpointing?.maxSilenceMs;
  const completeSilenceMs = config.hints?.completeSilenceMs ?? agent.endpointing?.completeSilenceMs;
  if (minSilenceMs !== undefined) hints.minSilenceMs = minSilenceMs;
  if (maxSilenceMs !== undefined) hints.maxSilenceMs = maxSilenceMs;
  if (completeSilenceMs !== undefined) hints.completeSilenceMs = completeSilenceMs;
  return { name, config, intents, keys, hints };
}

type Flow = "moved" | "ended" | undefined;

const DEFAULT_KEYPAD_PAUSE_MS = 2_000;

/** The token of a wake asked for at the state's latest key press. */
function keysToken(state: ScriptedState): string {
  return `scripted:${state.keys ?? 0}`;
}

/** An agent without a voicemail message hangs up on a machine. */
const HANG_UP_ON_MACHINE: Action = { tool: { name: "end_call", args: { reason: "answering machine" }, timeoutMs: 0 }, end: true };

/** One turn of the scripted engine: mutates `state` and acts through `io`. */
class Turn {
  done = false;
  /** A full-length entry waits a moment for its terminator (the engine asks for a wake). */
  waitForTerminator = false;

  constructor(
    private readonly agent: AgentConfig,
    private readonly states: Map<string, CompiledState>,
    private readonly state: ScriptedState,
    private readonly io: TurnIO,
    private readonly options: ScriptedOptions,
  ) {}

  private get current(): CompiledState {
    return this.states.get(this.state.state)!;
  }

  async play(input: EngineInput): Promise<string> {
    switch (input.kind) {
      case "start":
        await this.run(this.agent.greeting, {});
        return "greeting";
      case "noInput": {
        if (this.state.confirm) return this.askConfirm(this.state.confirm.value, this.state.confirm.asks + 1);
        // Keyed a whole number and waited without the terminator: take it, as a pause after the last key means.
        const collect = this.current.config.collect;
        const entry = this.state.keypad;
        if (collect && entry.length >= collect.minLength) {
          this.state.keypad = "";
          this.io.heard({ text: entry, source: "keypad" });
          return this.collected(entry);
        }
        return this.miss();
      }
      case "speech":
        // Nothing recognized while keys are being pressed (a key's tone, a breath): the entry goes on.
        if (!input.text.trim() && this.state.keypad) return "keying";
        this.io.heard({ text: input.text, source: "speech", confidence: input.confidence });
        return this.speech(input.text, input.confidence);
      case "keypad":
        return this.keypad(input.digit);
      case "wake": {
        // A full-length entry and no terminator after it: the pause ends it.
        const entry = this.state.keypad;
        if (!this.current.config.collect || !entry) return "wake_ignored";
        this.state.keypad = "";
        this.io.heard({ text: entry, source: "keypad" });
        return this.collected(entry);
      }
      case "resume":
        // Nothing left unheard (the LLM was to go on from there, and could not): the state's question is asked again,
        // not counted as a miss of the caller's.
        if (!input.text) this.io.say(this.current.config.prompt, {});
        else this.io.say(input.text, { cacheable: false });
        return "resumed";
      case "voicemail":
        // Done once its end_call succeeded (set by run); if that failed, the call is not over and goes on.
        await this.run(this.agent.voicemail ?? HANG_UP_ON_MACHINE, {});
        return "voicemail";
    }
  }

  private async speech(text: string, confidence: number): Promise<string> {
    const current = this.current;
    const collect = current.config.collect;
    this.state.keypad = ""; // speaking abandons a half-keyed entry
    if (collect) {
      if (this.state.confirm) return this.confirming(text, confidence);
      const digits = spokenDigits(text);
      const validLength = digits.length >= collect.minLength && digits.length <= collect.maxLength;
      if (validLength && (!collect.confirm || confidence >= this.options.digitsConfirmConfidence)) return this.collected(digits);
      // A number the recognizer was unsure of: read it back rather than act on a wrong one.
      if (validLength) return this.askConfirm(digits, 1);
      const intent = matchSpeech(text, current.intents);
      if (intent) return this.intent(intent);
      // Digits of the wrong length are often a misrecognized number: read them back too.
      if (digits.length > 0) return collect.confirm ? this.askConfirm(digits, 1) : this.miss(collect.invalid);
      return this.miss();
    }
    const key = spokenKey(text);
    const byKey = key !== undefined ? current.keys.get(key) : undefined;
    const intent = byKey ?? matchSpeech(text, current.intents);
    return intent ? this.intent(intent) : this.miss();
  }

  private async keypad(digit: string): Promise<string> {
    const current = this.current;
    const collect = current.config.collect;
    if (collect && (/^\d$/.test(digit) || digit === collect.terminator)) {
      this.endConfirm(); // a keyed entry replaces a number being confirmed
      if (digit === collect.terminator) {
        const entry = this.state.keypad;
        this.state.keypad = "";
        this.io.heard({ text: entry + digit, source: "keypad" });
        return entry ? this.collected(entry) : this.miss();
      }
      this.state.keypad += digit;
      if (this.state.keypad.length < collect.maxLength) return "collecting";
      if (this.state.keypad.length === collect.maxLength) {
        // Taken now, the terminator the prompt asked for would come in after the answer started, cut it off (a key
        // barges in) and land on the next state as a key nobody meant. It ends the entry, or a short pause does.
        this.waitForTerminator = true;
        return "collecting";
      }
      // A key past the maximum: not a number of this kind.
      const entry = this.state.keypad;
      this.state.keypad = "";
      this.io.heard({ text: entry, source: "keypad" });
      return this.collected(entry);
    }
    // A menu key acts at once; any other key ends a half-keyed entry.
    const text = this.state.keypad + digit;
    this.state.keypad = "";
    this.io.heard({ text, source: "keypad" });
    const intent = current.keys.get(digit);
    return intent ? this.intent(intent) : this.miss();
  }

  /** The caller's answer to "I heard 1 2 3. Is that right?". */
  private async confirming(text: string, confidence: number): Promise<string> {
    const collect = this.current.config.collect!;
    const pending = this.state.confirm!;
    const digits = spokenDigits(text);
    const answer = yesNo(text);
    const validLength = (value: string) => value.length >= collect.minLength && value.length <= collect.maxLength;
    if (digits && !(answer === "yes" && digits === pending.value)) {
      // A new number corrects the one read back ("no, 1 2 3 4 6", or just the digits).
      if (validLength(digits) && confidence >= this.options.digitsConfirmConfidence) {
        this.endConfirm();
        await this.collected(digits);
        return "corrected";
      }
      return this.askConfirm(digits, pending.asks + 1);
    }
    if (answer === "yes") {
      this.endConfirm();
      if (!validLength(pending.value)) return this.miss(collect.invalid);
      await this.collected(pending.value);
      return "confirmed";
    }
    if (answer === "no") {
      // Counted as a miss: a caller whose words keep coming out as a wrong number ("agent" heard as "8") must
      // reach the state's escalation rather than go round the readback for good.
      const outcome = await this.miss(CORRECTION_PROMPT);
      return outcome === "reprompt" ? "confirm_rejected" : outcome;
    }
    const intent = matchSpeech(text, this.current.intents);
    if (intent) {
      this.endConfirm();
      return this.intent(intent);
    }
    return this.askConfirm(pending.value, pending.asks + 1);
  }

  /**
   * Ends a readback: the recognizer listens for the state's own answers again (its digits), not for yes or no. Left
   * on the readback's words, a number said next would come out of a local recognizer as one word.
   */
  private endConfirm(): void {
    if (!this.state.confirm) return;
    this.state.confirm = undefined;
    this.io.setHints(this.current.hints);
  }

  /** Reads the digits back; after too many tries asks for the keypad instead. */
  private askConfirm(value: string, asks: number): string {
    const current = this.current;
    const max = current.config.maxReprompts ?? this.agent.maxReprompts;
    if (asks > max + 1) {
      this.state.confirm = undefined;
      this.say(keyItInPrompt(current.config.collect?.terminator), {});
      this.io.setHints(current.hints);
      return "reprompt";
    }
    this.state.confirm = { value, asks };
    this.io.say(readback(value), { cacheable: false });
    this.io.setHints(confirmHints(current.hints));
    return "confirm_asked";
  }

  private async collected(value: string): Promise<string> {
    const collect = this.current.config.collect!;
    if (value.length < collect.minLength || value.length > collect.maxLength) return this.miss(collect.invalid);
    this.state.slots[collect.slot] = value;
    this.state.reprompts = 0;
    await this.run(collect.do, {});
    return "slot";
  }

  private async intent(intent: Intent): Promise<string> {
    this.state.reprompts = 0;
    await this.run(intent.do, {});
    return "intent";
  }

  /** Input that was not understood: a short reprompt, or after too many the state's escalation. */
  private async miss(text?: string): Promise<string> {
    const config = this.current.config;
    this.state.keypad = "";
    this.endConfirm();
    this.state.reprompts += 1;
    const max = config.maxReprompts ?? this.agent.maxReprompts;
    const escalation = config.onMaxReprompts ?? this.agent.onMaxReprompts;
    if (this.state.reprompts > max && escalation) {
      this.state.reprompts = 0;
      await this.run(escalation, {});
      return "max_reprompts";
    }
    this.say(text ?? config.reprompt ?? this.agent.reprompt, {});
    return "reprompt";
  }

  private say(template: string, scope: Record<string, unknown>): void {
    const text = renderTemplate(template, { ...scope, slots: this.state.slots });
    if (text) this.io.say(text, { cacheable: !hasTemplate(template) });
  }

  private async run(action: Action, scope: Record<string, unknown>): Promise<Flow> {
    if (action.say !== undefined) this.say(action.say, scope);
    if (action.tool) {
      const args = renderArgs(action.tool.args, { ...scope, slots: this.state.slots }) as Record<string, unknown>;
      // The action's own timeout, else the one the agent declared for the tool (else the tools service's default):
      // the dialog waits for it, so it must know the longer declared ones.
      const name = action.tool.name;
      const timeoutMs = action.tool.timeoutMs || this.agent.tools.find((tool) => tool.name === name)?.timeoutMs;
      const outcome = await this.io.callTool(name, args, timeoutMs ? { timeoutMs } : {});
      let flow: Flow;
      if (outcome.ok) {
        if (action.end) {
          this.done = true;
          return "ended";
        }
        const branch = action.results?.find((b) => matches(b.when, outcome.result));
        if (branch) flow = await this.run(branch, { ...scope, result: outcome.result });
      } else {
        // Also after a failed end_call/transfer: the caller hears why, and the conversation goes on.
        flow = await this.run(action.onError ?? this.agent.onToolError, {
          ...scope,
          error: { code: outcome.errorCode, message: outcome.errorMessage },
        });
      }
      if (flow) return flow;
    }
    if (action.goto !== undefined) {
      this.enter(action.goto);
      return "moved";
    }
    return undefined;
  }

  private enter(name: string): void {
    this.state.state = name;
    this.state.reprompts = 0;
    this.state.keypad = "";
    this.state.confirm = undefined;
    const target = this.current;
    this.say(target.config.prompt, {});
    this.io.setHints(target.hints);
  }
}

/** The intent whose phrase (else keyword) occurs in the text as whole words; the longest match wins, then order. */
export function matchSpeech(text: string, intents: CompiledIntent[]): Intent | undefined {
  const normalized = normalizeText(text);
  if (!normalized) return undefined;
  const padded = ` ${normalized} `;
  for (const field of ["phrases", "keywords"] as const) {
    let best: { intent: Intent; length: number } | undefined;
    for (const compiled of intents) {
      for (const phrase of compiled[field]) {
        if (padded.includes(` ${phrase} `) && (!best || phrase.length > best.length)) best = { intent: compiled.intent, length: phrase.length };
      }
    }
    if (best) return best.intent;
  }
  return undefined;
}

function matches(when: Record<string, Scalar | Scalar[]> | undefined, result: unknown): boolean {
  if (!when) return true;
  return Object.entries(when).every(([path, expected]) => {
    const value = lookup(result, path) ?? null;
    return Array.isArray(expected) ? expected.includes(value as Scalar) : expected === value;
  });
}

function renderArgs(value: unknown, scope: Record<string, unknown>): unknown {
  if (typeof value === "string") return renderTemplate(value, scope);
  if (Array.isArray(value)) return value.map((v) => renderArgs(v, scope));
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, renderArgs(v, scope)]));
  }
  return value;
}
