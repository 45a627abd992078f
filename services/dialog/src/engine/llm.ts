import type { Logger } from "@voicebot/bus";
import type { AgentConfig, LlmConfig, ToolDeclaration } from "../agents/config.js";
import { LlmError, type ChatMessage, type ChatTool, type LlmCompleter, type LlmToolCall } from "../llm/client.js";
import type { DialogMetrics } from "../metrics.js";
import { ClauseChunker } from "./chunker.js";
import { CORRECTION_PROMPT, confirmHints, keyItInPrompt, readback, yesNo } from "./confirm.js";
import type { ScriptedEngine, ScriptedState } from "./scripted.js";
import { spokenDigits, spokenNumbers } from "./text.js";
import type { DialogEngine, EngineInput, RecognitionHints, TurnIO, TurnResult } from "./types.js";

/** Tells the LLM to finish an answer a noise cut short (not the caller: they said nothing). */
const UNFINISHED_ANSWER_NOTE = "(A noise on the line cut your answer off; the caller said nothing. Go on from where it stopped, without repeating it.)";

type UserMessage = { role: "user"; content: string; source: "speech" | "keypad" | "system" };
type AssistantMessage = {
  role: "assistant";
  content: string;
  toolCalls?: LlmToolCall[];
  /** The bot turn that spoke `content`. */
  turnId?: string;
  /** The caller talked over it: `content` is only what they heard. */
  interrupted?: boolean;
  /** Its generation was stopped by that barge-in, before the LLM finished the answer. */
  unfinished?: boolean;
};
type ToolMessage = { role: "tool"; toolCallId: string; content: string };
export type HistoryMessage = UserMessage | AssistantMessage | ToolMessage;

/** Digits a tool argument needs confirmed before the tool runs. */
interface PendingConfirm {
  tool: string;
  args: Record<string, unknown>;
  argument: string;
  /** The number read back; "" while waiting for the caller to say or key a new one. */
  value: string;
  asks: number;
}

/** What the LLM engine keeps between turns (saved with the call's dialog state in Redis). */
export interface LlmState {
  history: HistoryMessage[];
  /** A keypad entry in progress; `seq` numbers the keys so a pause timer knows whether it is still current. */
  keypad: { digits: string; seq: number };
  /** Recent caller inputs that held digits (all of them, and each number said on its own), newest last. */
  heard: Array<{ digits: string; numbers?: string[]; confidence: number; source: "speech" | "keypad" }>;
  /** Numbers the caller keyed or confirmed. */
  trusted: string[];
  confirm?: PendingConfirm;
  /** The scripted fallback agent's own state. */
  scripted: ScriptedState;
  /** The scripted agent answered last and is in the middle of collecting a number: it keeps the call for now. */
  scriptedOwns: boolean;
  /** Counter for the ids of tool calls the engine makes itself (after a confirmation). */
  ownCalls: number;
}

export interface LlmEngineOptions {
  agent: AgentConfig;
  client: LlmCompleter;
  /** The scripted agent: answers whenever the LLM cannot. */
  fallback: ScriptedEngine;
  digitsConfirmConfidence: number;
  keypadPauseMs: number;
  metrics: DialogMetrics;
  log: Logger;
  now?: () => Date;
}

/** LLM rounds (answer, tool calls, answer...) per caller input; the last round may not call tools. */
const MAX_ROUNDS = 4;
const MAX_HISTORY = 60;
const MAX_HEARD = 6;
const MAX_KEYPAD_DIGITS = 32;
const MAX_TOOL_RESULT_CHARS = 4_000;
/**
 * The most one LLM round may speak (over a minute of speech): a runaway answer would hold the tts
 * queue every call shares. Past it the rest of the answer is not read.
 */
const MAX_SPOKEN_CHARS = 1_200;
/** Tool arguments larger than this are refused: no tool needs them, and the history would carry them on every request. */
const MAX_TOOL_ARGUMENTS_CHARS = 16_384;
/** The API's rule for function names: a stored call under any other name makes every later request fail (HTTP 400). */
const VALID_TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;
/** What the history calls a tool call made under an invalid name. */
const INVALID_TOOL_NAME = "invalid_tool_name";
const HANGS_UP = new Set(["end_call", "transfer_to_human"]);
const DEFAULT_LINES: Record<string, string> = {
  end_call: "Thanks for calling. Goodbye.",
  transfer_to_human: "Transferring you to an agent now.",
};
const BRIDGE = "Sorry, I had a problem there.";

type Outcome = Omit<TurnResult<LlmState>, "state">;
type Refusal = "unknown_tool" | "invalid_arguments" | "arguments_too_large";

/**
 * Runs an agent on an LLM: streamed answers are spoken clause by clause, tool calls go to the tools service,
 * uncertain digits are confirmed before a tool uses them, keypad entries become caller turns. Whenever the LLM
 * fails (error, first-token timeout, bad stream, open circuit) the scripted agent answers the same input, so
 * the caller always hears something sensible.
 */
export class LlmEngine implements DialogEngine<LlmState> {
  private readonly llm: LlmConfig;
  private readonly tools: ChatTool[];
  private readonly declared = new Map<string, ToolDeclaration>();
  private readonly hints: RecognitionHints;

  constructor(private readonly options: LlmEngineOptions) {
    if (!options.agent.llm) throw new Error(`agent ${options.agent.name} has no llm section`);
    this.llm = options.agent.llm;
    for (const tool of options.agent.tools) this.declared.set(tool.name, tool);
    this.tools = this.llm.tools.map((name) => {
      const tool = this.declared.get(name)!;
      return { type: "function", function: { name: tool.name, description: tool.description, parameters: tool.parameters } };
    });
    this.hints = { mode: "phrases", phrases: [] };
    const endpointing = options.agent.endpointing;
    if (endpointing?.minSilenceMs !== undefined) this.hints.minSilenceMs = endpointing.minSilenceMs;
    if (endpointing?.maxSilenceMs !== undefined) this.hints.maxSilenceMs = endpointing.maxSilenceMs;
    if (endpointing?.completeSilenceMs !== undefined) this.hints.completeSilenceMs = endpointing.completeSilenceMs;
  }

  initialState(): LlmState {
    return {
      history: [],
      keypad: { digits: "", seq: 0 },
      heard: [],
      trusted: [],
      scripted: this.options.fallback.initialState(),
      scriptedOwns: false,
      ownCalls: 0,
    };
  }

  /**
   * A copy of the saved state to work on. A call that began while the agent ran scripted (the LLM was configured
   * during the call) continues from the scripted agent's state.
   */
  private adopt(previous: LlmState | undefined): LlmState {
    if (previous && Array.isArray(previous.history)) return structuredClone(previous);
    const state = this.initialState();
    const scripted = previous as unknown as Partial<ScriptedState> | undefined;
    if (scripted && typeof scripted.state === "string" && scripted.slots && typeof scripted.slots === "object") {
      state.scripted = structuredClone(scripted as ScriptedState);
      state.scriptedOwns = this.options.fallback.isCollecting(state.scripted);
    }
    return state;
  }

  /** The scripted agent's state's wait while it owns the call (a number being collected), else the agent's. */
  noInputMs(state: LlmState): number | undefined {
    if (state?.scriptedOwns && state.scripted) return this.options.fallback.noInputMs(state.scripted);
    return this.options.agent.noInputMs;
  }

  interrupted(state: LlmState, event: { turnId: string; heardText: string }): LlmState {
    const next = this.adopt(state);
    // A turn may span several messages (an answer, then an apology or a readback): what was heard is their text from
    // the start; the message it ends in keeps only that, and any after it were not heard at all.
    let heard: string | undefined = event.heardText.trim();
    for (const message of next.history) {
      if (message.role !== "assistant" || message.turnId !== event.turnId) continue;
      const content = message.content.trim();
      if (heard !== undefined && heard.startsWith(content) && heard.length > content.length) {
        heard = heard.slice(content.length).trimStart(); // heard in full
        continue;
      }
      message.content = heard ?? "";
      message.interrupted = true;
      heard = undefined;
    }
    return next;
  }

  async turn(input: EngineInput, previous: LlmState, io: TurnIO): Promise<TurnResult<LlmState>> {
    const state = this.adopt(previous);
    const result = await new LlmTurn(this, state, io).play(input);
    trimHistory(state);
    return { state, ...result };
  }

  // ---- used by LlmTurn ----

  get config(): LlmEngineOptions {
    return this.options;
  }

  get llmConfig(): LlmConfig {
    return this.llm;
  }

  get recognitionHints(): RecognitionHints {
    return this.hints;
  }

  get offeredTools(): ChatTool[] {
    return this.tools;
  }

  declaration(name: string): ToolDeclaration | undefined {
    return this.llm.tools.includes(name) ? this.declared.get(name) : undefined;
  }

  /** The request messages: system prompt, then the history as the API wants it. */
  messages(history: HistoryMessage[]): ChatMessage[] {
    const today = new Intl.DateTimeFormat("en-US", { weekday: "long", year: "numeric", month: "long", day: "numeric" }).format(
      (this.options.now ?? (() => new Date()))(),
    );
    const out: ChatMessage[] = [{ role: "system", content: `${this.llm.systemPrompt.trim()}\n\nToday is ${today}.` }];
    for (const message of history) {
      if (message.role === "user") out.push({ role: "user", content: message.content });
      else if (message.role === "tool") out.push({ role: "tool", tool_call_id: message.toolCallId, content: message.content });
      else {
        // An interrupted answer ends where the caller stopped listening; "..." tells the model it was cut off.
        const content = message.interrupted ? `${message.content}...` : message.content;
        if (message.toolCalls?.length) {
          out.push({
            role: "assistant",
            content: content || null,
            tool_calls: message.toolCalls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } })),
          });
        } else out.push({ role: "assistant", content: content || "..." });
      }
    }
    return out;
  }
}

/** One input's handling by the LLM engine: mutates `state`, acts through `io`. */
class LlmTurn {
  /** Something was spoken for this input. */
  private spoke = false;

  constructor(
    private readonly engine: LlmEngine,
    private readonly state: LlmState,
    private readonly io: TurnIO,
  ) {}

  private get options(): LlmEngineOptions {
    return this.engine.config;
  }

  private say(text: string, options: { cacheable?: boolean; now?: boolean } = {}): string {
    const turnId = this.io.say(text, options);
    if (turnId) this.spoke = true;
    return turnId;
  }

  async play(input: EngineInput): Promise<Outcome> {
    const state = this.state;
    switch (input.kind) {
      case "start":
        return this.greet();
      case "wake": {
        if (state.scriptedOwns) return this.scripted([input]); // its own full-length entry's pause
        // A keypad entry that ended with a pause; stale if more keys or other input came since.
        if (input.token !== keypadToken(state.keypad.seq) || !state.keypad.digits) return { outcome: "wake_stale" };
        return this.keypadEntry(this.takeKeypad());
      }
      case "keypad": {
        if (state.scriptedOwns) return this.scripted([input]);
        if (input.digit === "#") return this.keypadEntry(this.takeKeypad() + "#");
        state.keypad.digits += input.digit;
        state.keypad.seq += 1;
        if (state.keypad.digits.length >= MAX_KEYPAD_DIGITS) return this.keypadEntry(this.takeKeypad());
        return { outcome: "collecting", ...this.wake() };
      }
      case "speech": {
        if (state.scriptedOwns) return this.scripted([input]);
        // Nothing recognized while keys are being pressed (a key's tone): the entry and its pause timer go on.
        if (!input.text.trim() && state.keypad.digits) return { outcome: "keying" };
        // Keys pressed just before speaking are part of what the caller said.
        if (state.keypad.digits) this.noteKeypad(this.takeKeypad());
        this.io.heard({ text: input.text, source: "speech", confidence: input.confidence });
        const digits = spokenDigits(input.text);
        if (digits) this.noteHeard({ digits, numbers: spokenNumbers(input.text), confidence: input.confidence, source: "speech" });
        if (!input.text.trim()) {
          state.history.push({ role: "user", content: "(The caller spoke, but nothing was understood.)", source: "system" });
        } else state.history.push({ role: "user", content: input.text, source: "speech" });
        if (state.confirm) return this.confirming({ text: input.text, digits, confidence: input.confidence, keyed: false });
        return this.converse(input);
      }
      case "voicemail":
        return this.scripted([input]); // a fixed message, as the agent file says it
      case "resume": {
        // A tool's result came in while the caller was cut off, and the answer to it was never asked for: the rest
        // of the cut answer is said, then the LLM answers the result (a scripted fallback has nothing to repeat).
        const answering = state.history.at(-1)?.role === "tool" ? lastToolCaller(state.history) : undefined;
        if (answering) {
          if (input.text && this.say(input.text)) {
            answering.content = [answering.content, input.text].filter(Boolean).join(" ");
            answering.interrupted = undefined; // heard in full now
          }
          return this.converse({ kind: "resume", text: "" });
        }
        // The history holds what was heard of the cut turn; the rest is said now, as its own turn.
        const cut = state.history.at(-1);
        const turnId = this.say(input.text);
        if (turnId) state.history.push({ role: "assistant", content: input.text, turnId });
        if (cut?.role === "assistant" && cut.unfinished) {
          // The noise also stopped the answer's generation: the LLM is asked for the rest of it.
          cut.unfinished = undefined;
          state.history.push({ role: "user", content: UNFINISHED_ANSWER_NOTE, source: "system" });
          return this.converse({ kind: "resume", text: "" });
        }
        return { outcome: "resumed" };
      }
      case "noInput": {
        if (state.scriptedOwns) return this.scripted([input]);
        if (state.confirm?.value) return this.askConfirm(state.confirm.value);
        state.history.push({ role: "user", content: "(The caller said nothing.)", source: "system" });
        return this.converse(input);
      }
    }
  }

  private wake(): { wake: { afterMs: number; token: string } } {
    return { wake: { afterMs: this.options.keypadPauseMs, token: keypadToken(this.state.keypad.seq) } };
  }

  private takeKeypad(): string {
    const digits = this.state.keypad.digits;
    this.state.keypad.digits = "";
    this.state.keypad.seq += 1; // any pending pause timer is stale now
    return digits;
  }

  private noteHeard(entry: LlmState["heard"][number]): void {
    this.state.heard.push(entry);
    if (this.state.heard.length > MAX_HEARD) this.state.heard.splice(0, this.state.heard.length - MAX_HEARD);
    if (entry.source === "keypad" && !this.state.trusted.includes(entry.digits)) this.state.trusted.push(entry.digits);
    if (this.state.trusted.length > MAX_HEARD) this.state.trusted.splice(0, this.state.trusted.length - MAX_HEARD);
  }

  /** Records a keypad entry as the caller's line, in the history and the call record. */
  private noteKeypad(entry: string): string {
    this.io.heard({ text: entry, source: "keypad" });
    const digits = entry.replace(/\D/g, "");
    if (digits) this.noteHeard({ digits, confidence: 1, source: "keypad" });
    this.state.history.push({ role: "user", content: `[keypad] ${entry}`, source: "keypad" });
    return digits;
  }

  private async keypadEntry(entry: string): Promise<Outcome> {
    const digits = this.noteKeypad(entry);
    if (this.state.confirm) return this.confirming({ text: entry, digits, confidence: 1, keyed: true });
    return this.converse({ kind: "keypad", digit: entry, atMs: 0 }, entry);
  }

  private async greet(): Promise<Outcome> {
    const greeting = this.engine.llmConfig.greeting;
    if (!greeting) {
      // No greeting of its own: the scripted greeting, which also starts the fallback agent's conversation.
      return this.scripted([{ kind: "start" }], true);
    }
    const turnId = this.say(greeting, { cacheable: true });
    this.state.history.push({ role: "assistant", content: greeting, turnId });
    this.io.setHints(this.engine.recognitionHints);
    return { outcome: "greeting" };
  }

  // ---- the LLM conversation ----

  /** LLM rounds until an answer without tool calls; any failure hands the input to the scripted agent. */
  private async converse(input: EngineInput, keypadEntry?: string): Promise<Outcome> {
    /** The messages cut from the front of the history for a model whose context it outgrew (once a turn). */
    let cutAway: HistoryMessage[] | undefined;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      if (this.io.signal?.aborted) return { outcome: "cancelled" };
      const chunker = new ClauseChunker();
      const spoken: string[] = [];
      let spokenChars = 0;
      /** The answer reached MAX_SPOKEN_CHARS: nothing more of it is spoken. */
      let cut = false;
      let turnId = "";
      const speak = (text: string, now: boolean) => {
        if (cut || spokenChars + text.length > MAX_SPOKEN_CHARS) {
          cut = true;
          return;
        }
        const id = this.say(text, { now });
        if (id) {
          turnId = id;
          spoken.push(text);
          spokenChars += text.length;
        }
      };
      let response;
      try {
        response = await this.options.client.complete(
          { messages: this.engine.messages(this.state.history), tools: this.engine.offeredTools, toolChoice: round === MAX_ROUNDS - 1 ? "none" : "auto" },
          {
            signal: this.io.signal,
            onFirstToken: (ms) => this.io.llmFirstToken?.(ms),
            onText: (delta) => {
              for (const chunk of chunker.push(delta)) speak(chunk, true);
              return cut ? "stop" : undefined;
            },
          },
        );
      } catch (error) {
        const reason = error instanceof LlmError ? error.reason : "connection";
        const cancelled = reason === "cancelled" || this.io.signal?.aborted === true;
        // What the caller already heard stays in the history.
        if (spoken.length > 0) this.state.history.push({ role: "assistant", content: spoken.join(" "), turnId, ...(cancelled ? { unfinished: true } : {}) });
        if (cancelled) return { outcome: "cancelled" };
        if (reason === "context_length") {
          if (cutAway === undefined) {
            const before = this.state.history;
            if (spoken.length === 0 && shortenHistory(this.state)) {
              // A model with a small context (a local 4-8k one) outgrew the call: asked again with its later half,
              // so that this and every later turn is not the fallback's.
              cutAway = before.slice(0, before.length - this.state.history.length);
              this.options.metrics.llmHistoryShortened.inc({ agent: this.options.agent.name });
              this.options.log.warn("llm context exceeded: asking again with the later half of the conversation", { agent: this.options.agent.name, messages: this.state.history.length });
              round--;
              continue;
            }
          } else {
            // Cut in vain (the request is too long by itself, e.g. max_tokens over the window): the conversation is kept.
            this.state.history = [...cutAway, ...this.state.history];
          }
        }
        return this.fallback(input, reason, keypadEntry);
      }
      const rest = chunker.flush();
      if (rest) speak(rest, false);
      if (response.finishReason === "length") {
        // The endpoint stopped at its token limit: the caller heard an answer that may end mid-sentence.
        this.options.log.warn("llm answer ended at the token limit (maxTokens)", { agent: this.options.agent.name, chars: response.text.length });
      }
      if (cut) {
        const agent = this.options.agent.name;
        this.options.metrics.llmAnswersCut.inc({ agent });
        this.options.log.warn("llm answer too long; only its beginning was spoken", { agent, spokenChars, receivedChars: response.text.length });
        // The history holds what the caller heard; tool calls of a cut answer are not run.
        this.state.history.push({ role: "assistant", content: spoken.join(" "), ...(turnId ? { turnId } : {}) });
        return this.finish("llm");
      }
      // The last round may not call tools (tool_choice "none"): a model that does anyway is not obeyed.
      const ignored = round === MAX_ROUNDS - 1 ? response.toolCalls.length : 0;
      const calls = ignored > 0 ? [] : withUniqueIds(response.toolCalls);
      if (calls.length === 0 && spoken.length === 0) {
        // Nothing to say (only emoji, punctuation or markup, or tool calls again): as with an empty answer.
        if (this.io.signal?.aborted) return { outcome: "cancelled" };
        return this.fallback(input, ignored > 0 ? "tool_loop" : "empty", keypadEntry);
      }
      if (ignored > 0) this.options.log.warn("llm asked for tools in its last round; they are not run", { agent: this.options.agent.name, toolCalls: ignored });
      this.state.history.push({
        role: "assistant",
        content: response.text,
        ...(calls.length > 0 ? { toolCalls: calls.map(storedCall) } : {}),
        ...(turnId ? { turnId } : {}),
      });
      if (calls.length === 0) return this.finish("llm");
      const stop = await this.runToolCalls(calls);
      if (stop) return stop;
    }
    // Not reached: the last round either speaks or falls back above.
    return this.fallback(input, "tool_loop", keypadEntry);
  }

  private finish(outcome: string): Outcome {
    if (!this.state.confirm) this.io.setHints(this.engine.recognitionHints);
    return { outcome };
  }

  /** Runs the tool calls of one answer in order; returns an outcome when the turn must stop there. */
  private async runToolCalls(calls: LlmToolCall[]): Promise<Outcome | undefined> {
    for (let i = 0; i < calls.length; i++) {
      const call = calls[i];
      if (this.io.signal?.aborted) {
        // The caller talked over this answer: what it was about to do may no longer be wanted.
        for (const skipped of calls.slice(i)) this.toolMessage(skipped.id, { status: "skipped", message: "Not run: the caller interrupted." });
        return { outcome: "cancelled" };
      }
      const declaration = this.engine.declaration(call.name);
      if (!declaration) {
        this.refuse(call, "unknown_tool", `There is no tool named ${call.name.slice(0, 100)}.`);
        continue;
      }
      if (call.arguments.length > MAX_TOOL_ARGUMENTS_CHARS) {
        this.refuse(call, "arguments_too_large", `The arguments are ${call.arguments.length} characters of JSON; the limit is ${MAX_TOOL_ARGUMENTS_CHARS}.`);
        continue;
      }
      const args = argumentsObject(call.arguments);
      if (!args) {
        this.refuse(call, "invalid_arguments", "The arguments must be a JSON object.");
        continue;
      }
      // Digits the caller may not have said that way are read back before the tool acts on them.
      const rule = declaration.confirm;
      if (rule) {
        const value = spokenDigits(String(args[rule.argument] ?? ""));
        if (!this.trusted(value, rule)) {
          this.toolMessage(call.id, {
            status: "needs_confirmation",
            message: `The number was read back to the caller (${value || "no digits"}); wait for them to confirm or correct it.`,
          });
          for (const skipped of calls.slice(i + 1)) this.toolMessage(skipped.id, { status: "skipped", message: "Not run: a number is being confirmed first." });
          this.state.confirm = { tool: call.name, args, argument: rule.argument, value, asks: 0 };
          return value ? this.askConfirm(value) : this.askForNumber();
        }
      }
      const stop = await this.runTool(call.id, call.name, args, declaration);
      if (stop) {
        for (const skipped of calls.slice(i + 1)) this.toolMessage(skipped.id, { status: "skipped", message: "Not run: the call is ending." });
        return stop;
      }
    }
    return undefined;
  }

  /** Calls one tool and adds its result to the history; returns an outcome when the call is ending. */
  private async runTool(id: string, name: string, args: Record<string, unknown>, declaration: ToolDeclaration): Promise<Outcome | undefined> {
    // A hang-up or transfer without a word first would leave the caller wondering what happened.
    if (HANGS_UP.has(name) && !this.spoke && DEFAULT_LINES[name]) {
      const line = DEFAULT_LINES[name];
      const turnId = this.say(line, { cacheable: true });
      // The line is part of the answer that called the tool. A message of its own would sit between that answer's
      // tool_calls and their results, which the API refuses (400) on the next round: when the tool fails, and on
      // every later turn of the call.
      const answer = this.state.history.findLast((m) => m.role === "assistant" && m.toolCalls?.some((c) => c.id === id));
      if (answer) Object.assign(answer, { content: line, turnId });
    }
    const outcome = await this.io.callTool(name, args, declaration.timeoutMs ? { timeoutMs: declaration.timeoutMs } : {});
    if (outcome.ok) {
      this.toolMessage(id, outcome.result ?? { ok: true });
      if (HANGS_UP.has(name)) return { outcome: "llm", done: true };
    } else {
      this.toolMessage(id, { error: outcome.errorCode, message: outcome.errorMessage });
    }
    return undefined;
  }

  /** A tool call the dialog answers itself, without running the tool: the model is told why. */
  private refuse(call: LlmToolCall, reason: Refusal, message: string): void {
    const agent = this.options.agent.name;
    this.options.metrics.llmToolCallsRefused.inc({ agent, reason });
    this.options.log.warn("llm tool call refused", { agent, reason, tool: call.name.slice(0, 100), argumentsChars: call.arguments.length });
    this.toolMessage(call.id, { error: reason === "unknown_tool" ? "unknown_tool" : "invalid_arguments", message });
  }

  private toolMessage(toolCallId: string, content: unknown): void {
    let text = JSON.stringify(content) ?? "null";
    // The history is saved with the call on every turn: a large webhook answer is cut to what a call can use.
    if (text.length > MAX_TOOL_RESULT_CHARS) text = JSON.stringify({ truncated: true, partial: text.slice(0, MAX_TOOL_RESULT_CHARS) });
    this.state.history.push({ role: "tool", toolCallId, content: text });
  }

  /** A number is trusted when the caller keyed or confirmed it, or said it clearly, and it has a valid length. */
  private trusted(value: string, rule: { minLength: number; maxLength: number }): boolean {
    if (value.length < rule.minLength || value.length > rule.maxLength) return false;
    if (this.state.trusted.includes(value)) return true;
    for (let i = this.state.heard.length - 1; i >= 0; i--) {
      const heard = this.state.heard[i];
      // The whole number as the caller said or keyed it: "12345" is not trusted from "123456".
      if (heard.digits === value || heard.numbers?.includes(value)) {
        return heard.source === "keypad" || heard.confidence >= this.options.digitsConfirmConfidence;
      }
    }
    return false; // never said like that (joined from pieces, cut short, or made up): read it back
  }

  // ---- confirming digits ----

  private askConfirm(value: string): Outcome {
    const pending = this.state.confirm!;
    pending.value = value;
    pending.asks += 1;
    const max = this.options.agent.maxReprompts + 1;
    if (pending.asks > max) return this.askForNumber(true);
    const line = readback(value);
    const turnId = this.say(line);
    this.state.history.push({ role: "assistant", content: line, turnId });
    this.io.setHints(confirmHints(this.engine.recognitionHints));
    return { outcome: "confirm_asked" };
  }

  /** Asks the caller to say or key the number (after a "no"), or only to key it (after too many tries). */
  private askForNumber(keyOnly = false): Outcome {
    const pending = this.state.confirm!;
    pending.value = "";
    if (keyOnly) pending.asks = 0;
    const line = keyOnly ? keyItInPrompt() : CORRECTION_PROMPT;
    const turnId = this.say(line, { cacheable: true });
    this.state.history.push({ role: "assistant", content: line, turnId });
    this.io.setHints(confirmHints(this.engine.recognitionHints));
    return { outcome: keyOnly ? "reprompt" : "confirm_rejected" };
  }

  private async confirming(answer: { text: string; digits: string; confidence: number; keyed: boolean }): Promise<Outcome> {
    const pending = this.state.confirm!;
    const rule = this.engine.declaration(pending.tool)?.confirm;
    if (!rule) {
      this.state.confirm = undefined; // the agent changed under a live call
      return this.converse({ kind: "speech", text: answer.text, confidence: answer.confidence });
    }
    const yes = answer.keyed ? undefined : yesNo(answer.text);
    const validLength = (value: string) => value.length >= rule.minLength && value.length <= rule.maxLength;
    if (answer.digits && !(yes === "yes" && answer.digits === pending.value)) {
      // A new number: keyed or said clearly it is taken as it is, otherwise it is read back in turn.
      if (answer.keyed && !validLength(answer.digits)) return this.askForNumber(true);
      if (validLength(answer.digits) && (answer.keyed || answer.confidence >= this.options.digitsConfirmConfidence)) {
        return this.runConfirmed(answer.digits, "corrected");
      }
      return this.askConfirm(answer.digits);
    }
    if (yes === "yes" && pending.value) {
      if (!validLength(pending.value)) return this.askForNumber(true);
      return this.runConfirmed(pending.value, "confirmed");
    }
    if (yes === "no") {
      return this.askForNumber();
    }
    // Something else entirely: the LLM takes it from here (it knows a number was being confirmed).
    this.state.confirm = undefined;
    return this.converse({ kind: "speech", text: answer.text, confidence: answer.confidence });
  }

  /** Runs the tool that waited for the confirmed number, then lets the LLM answer with its result. */
  private async runConfirmed(value: string, outcome: string): Promise<Outcome> {
    const pending = this.state.confirm!;
    this.state.confirm = undefined;
    if (!this.state.trusted.includes(value)) this.state.trusted.push(value);
    const args = { ...pending.args, [pending.argument]: value };
    const id = `confirmed_${++this.state.ownCalls}`;
    this.state.history.push({
      role: "assistant",
      content: "",
      toolCalls: [{ id, name: pending.tool, arguments: JSON.stringify(args) }],
    });
    const stop = await this.runTool(id, pending.tool, args, this.engine.declaration(pending.tool)!);
    if (stop) return stop;
    const result = await this.converse({ kind: "speech", text: value, confidence: 1 });
    return { ...result, outcome };
  }

  // ---- the scripted agent ----

  /** The LLM failed: the scripted agent answers the same input. */
  private async fallback(input: EngineInput, reason: string, keypadEntry?: string): Promise<Outcome> {
    this.options.metrics.llmFallbacks.inc({ agent: this.options.agent.name, reason });
    this.options.log.warn("llm unavailable; the scripted agent answers", { agent: this.options.agent.name, reason });
    this.state.confirm = undefined;
    if (this.spoke) {
      const turnId = this.say(BRIDGE, { cacheable: true });
      this.state.history.push({ role: "assistant", content: BRIDGE, turnId });
    }
    // A resume with nothing left to say (the LLM was to answer a tool's result, or finish its cut answer): the scripted
    // agent asks its question again.
    const inputs = keypadEntry !== undefined ? this.scriptedKeys(keypadEntry) : [input];
    const result = await this.scripted(inputs, true);
    return { ...result, outcome: `fallback` };
  }

  /** A keypad entry as the scripted agent takes keys: all of it where it collects digits, else its first key. */
  private scriptedKeys(entry: string): EngineInput[] {
    const keys = this.options.fallback.isCollecting(this.state.scripted) ? [...entry] : [...entry].slice(0, 1);
    return keys.map((digit): EngineInput => ({ kind: "keypad", digit, atMs: 0 }));
  }

  /**
   * Plays inputs on the scripted agent. Its words go into the LLM history too, so the LLM can take over again
   * with the whole conversation. `heardAlready`: the caller's line is already recorded.
   */
  private async scripted(inputs: EngineInput[], heardAlready = false): Promise<Outcome> {
    const said: string[] = [];
    let turnId = "";
    const io: TurnIO = {
      ...this.io,
      heard: (entry) => {
        if (heardAlready) return;
        this.io.heard(entry);
        this.state.history.push({ role: "user", content: entry.source === "keypad" ? `[keypad] ${entry.text}` : entry.text, source: entry.source });
      },
      say: (text, options) => {
        const id = this.say(text, options);
        if (id) {
          said.push(text);
          turnId = id;
        }
        return id;
      },
    };
    let result: TurnResult<ScriptedState> = { state: this.state.scripted, outcome: "collecting" };
    for (const input of inputs) {
      result = await this.options.fallback.turn(input, result.state, io);
      if (result.done) break;
    }
    this.state.scripted = result.state;
    this.state.scriptedOwns = !result.done && this.options.fallback.isCollecting(result.state);
    if (said.length > 0) this.state.history.push({ role: "assistant", content: said.join(" "), turnId });
    if (!this.state.scriptedOwns) this.io.setHints(this.engine.recognitionHints);
    return { outcome: result.outcome, ...(result.done ? { done: true } : {}), ...(result.wake ? { wake: result.wake } : {}) };
  }
}

/** The calls with ids unique within their answer (an endpoint may repeat one), so each result answers its own call. */
function withUniqueIds(calls: LlmToolCall[]): LlmToolCall[] {
  const used = new Set<string>();
  return calls.map((call) => {
    let id = call.id;
    for (let n = 2; used.has(id); n++) id = `${call.id}_${n}`;
    used.add(id);
    return id === call.id ? call : { ...call, id };
  });
}

/**
 * A tool call as the history keeps it: every later request sends it again, so it must be valid for the API (an
 * invalid name is replaced; its result still says there is no such tool) and small (huge arguments are replaced).
 */
function storedCall(call: LlmToolCall): LlmToolCall {
  const name = VALID_TOOL_NAME.test(call.name) ? call.name : INVALID_TOOL_NAME;
  return { id: call.id, name, arguments: storedArguments(call.arguments) };
}

/**
 * A tool call's arguments as the history keeps them: a JSON object. Servers such as vLLM parse the earlier calls of
 * every request again, and one they cannot parse fails every later request of the call (an HTTP 500, which also
 * counts against the endpoint's breaker for every call).
 */
function storedArguments(text: string): string {
  if (text.length > MAX_TOOL_ARGUMENTS_CHARS) return JSON.stringify({ omitted: `${text.length} characters, over the limit` });
  if (!text.trim()) return "{}";
  return argumentsObject(text) ? text : JSON.stringify({ invalid_json: text });
}

/** A tool call's arguments as the object they must be (none given: {}); undefined when they are no JSON object. */
function argumentsObject(text: string): Record<string, unknown> | undefined {
  if (!text.trim()) return {};
  try {
    const parsed: unknown = JSON.parse(text);
    return parsed && typeof parsed === "object" && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function keypadToken(seq: number): string {
  return `kp${seq}`;
}

/**
 * Cuts the history to about its later half, at a caller's line (tool calls keep their results); false when there is
 * no earlier caller line to cut at (the current one must stay).
 */
export function shortenHistory(state: LlmState): boolean {
  return cutAtCallerLine(state, Math.floor(state.history.length / 2));
}

/** Keeps the history within MAX_HISTORY messages, cut where a window may start: at a caller's line. */
export function trimHistory(state: LlmState): void {
  if (state.history.length > MAX_HISTORY) cutAtCallerLine(state, state.history.length - MAX_HISTORY);
}

/**
 * Drops the history before the first caller's line at or after `from`. With none there (one turn of many tool
 * rounds), it keeps from the caller's last line rather than lose the whole history (a window may never start inside
 * a tool call's results). False when nothing is dropped.
 */
function cutAtCallerLine(state: LlmState, from: number): boolean {
  const history = state.history;
  let start = from;
  while (start < history.length && history[start].role !== "user") start++;
  if (start === history.length) start = history.findLastIndex((m) => m.role === "user");
  if (start <= 0) return false;
  state.history = history.slice(start);
  return true;
}

/** The assistant message whose tool calls the history's trailing tool results answer. */
function lastToolCaller(history: HistoryMessage[]): AssistantMessage | undefined {
  for (let i = history.length - 1; i >= 0; i--) {
    const message = history[i];
    if (message.role === "assistant") return message.toolCalls?.length ? message : undefined;
    if (message.role === "user") return undefined;
  }
  return undefined;
}
