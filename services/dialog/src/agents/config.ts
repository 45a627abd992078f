import { TEMPLATE } from "../engine/text.js";

// The scripted agent language: types and validation. Pure (no I/O), so it is tested directly; see agents/README.md.

export type Scalar = string | number | boolean | null;

export interface ToolStep {
  name: string;
  /** Argument values; strings may hold templates ({{slots.order_number}}). */
  args: Record<string, unknown>;
  /** Tool timeout (0 = the tool's default). */
  timeoutMs: number;
}

export interface Action {
  /** Said first (template). */
  say?: string;
  tool?: ToolStep;
  /** After a tool that succeeded: the first branch whose `when` matches the result runs. */
  results?: ResultBranch[];
  /** After a tool that failed. */
  onError?: Action;
  /** Enter this state (its prompt is spoken, its hints apply). */
  goto?: string;
  /**
   * The conversation is over after this action: its tool (end_call, transfer_to_human) runs once the speech so far
   * is finished as a turn; if that tool fails, onError (or the agent's onToolError) runs and the conversation goes on.
   */
  end?: boolean;
}

export interface ResultBranch extends Action {
  /** Result path -> expected value (or any of a list). Missing = always matches. */
  when?: Record<string, Scalar | Scalar[]>;
}

export interface Intent {
  name: string;
  phrases: string[];
  keywords: string[];
  /** Keypad keys that select the intent at once (in states that collect no digits). */
  keys: string[];
  do: Action;
}

export interface Collect {
  slot: string;
  minLength: number;
  maxLength: number;
  /** The key that ends a keypad entry. */
  terminator: string;
  /** Said when the entry has the wrong length (default: the state's reprompt). */
  invalid?: string;
  /** Read spoken digits back for confirmation when the recognizer was unsure or the length is wrong (default true). */
  confirm: boolean;
  do: Action;
}

export interface HintsConfig {
  /** Default: digits in a collecting state, else phrases. */
  mode?: "phrases" | "digits";
  /** Expected phrases; default: every phrase and keyword the state understands. */
  phrases?: string[];
  minSilenceMs?: number;
  maxSilenceMs?: number;
  /** Silence after which an utterance that is exactly one of the phrases ends (0: never early). */
  completeSilenceMs?: number;
}

export interface StateConfig {
  prompt: string;
  intents: Intent[];
  /** The agent-wide intents also apply here (default true). */
  globalIntents: boolean;
  collect?: Collect;
  hints?: HintsConfig;
  reprompt?: string;
  maxReprompts?: number;
  onMaxReprompts?: Action;
  /** How long the caller may stay silent after the bot's turn before the reprompt (default: the agent's). */
  noInputMs?: number;
}

/** A tool the agent may call: its schema (offered to the LLM) and how the tools service runs it. */
export interface ToolDeclaration {
  name: string;
  description: string;
  /** JSON Schema of the arguments (an object schema). */
  parameters: Record<string, unknown>;
  /** Safe to retry (the tools service retries failures of idempotent tools). */
  idempotent?: boolean;
  timeoutMs?: number;
  /**
   * Digits of this argument are read back to the caller before the tool runs when they came from speech the
   * recognizer was unsure of, have the wrong length, or were never said (LLM agents).
   */
  confirm?: { argument: string; minLength: number; maxLength: number };
  /** An HTTP webhook; the tools service validates and runs it (see agents/README.md). */
  webhook?: Record<string, unknown>;
}

export interface LlmConfig {
  systemPrompt: string;
  /** Said when the call starts, without asking the LLM (default: the scripted greeting). */
  greeting?: string;
  model?: string;
  baseUrl?: string;
  /** Environment variable holding the API key (LLM_API_KEY wins). */
  apiKeyEnv?: string;
  temperature?: number;
  maxTokens?: number;
  /** Declared tools offered to the LLM as functions. */
  tools: string[];
  firstTokenTimeoutMs?: number;
}

export interface Endpointing {
  minSilenceMs?: number;
  maxSilenceMs?: number;
  completeSilenceMs?: number;
}

export interface AgentConfig {
  name: string;
  voice: string;
  /** Declared tools (webhooks, and the schemas of built-in tools the LLM may call). */
  tools: ToolDeclaration[];
  /** Present when the agent can run on an LLM (with the scripted agent as its fallback). */
  llm?: LlmConfig;
  /** Default end-of-speech silences for the recognizer (states' own hints win). */
  endpointing?: Endpointing;
  /** Said as its own turn when a tool is slow (null = never). */
  toolFiller: string | null;
  greeting: Action;
  /** Default reprompt for states without their own. */
  reprompt: string;
  maxReprompts: number;
  onMaxReprompts?: Action;
  /** How long the caller may stay silent after the bot's turn before the reprompt (default: ingress's NO_INPUT_MS). */
  noInputMs?: number;
  /**
   * Run when an answering machine took a call placed with `onMachine: "voicemail"`, once its greeting is over: the
   * message, then end_call (it must end the call). Without one the agent hangs up on machines.
   */
  voicemail?: Action;
  /** Run when a tool fails and the action has no onError. */
  onToolError: Action;
  intents: Intent[];
  states: Record<string, StateConfig>;
}

export const KEYS = "0123456789*#";

/** Bounds of an agent's or a state's no-input wait: shorter rushes callers; ten minutes is as good as never. */
export const NO_INPUT_MIN_MS = 1_000;
export const NO_INPUT_MAX_MS = 600_000;
export const DEFAULT_TOOL_FILLER = "One moment while I check that.";
const TOOL_NAME = /^[a-zA-Z][\w-]{0,63}$/;
const ENV_NAME = /^[A-Z_][A-Z0-9_]*$/;
export const TEMPLATE_FILTERS = ["spell"] as const;
const NAME = /^[a-zA-Z][\w-]*$/;

export class AgentConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join("\n"));
  }
}

type Obj = Record<string, unknown>;

/**
 * Checks a parsed agent file and returns the typed config, or throws AgentConfigError listing every problem
 * as "<source>: <path>: <problem>" so an operator can fix the file in one go.
 */
export function validateAgent(raw: unknown, name: string, source = `${name}.json`): AgentConfig {
  const problems: string[] = [];
  const v = new Validator(source, problems);
  const config = v.agent(raw, name);
  if (problems.length > 0 || !config) throw new AgentConfigError(problems);
  return config;
}

class Validator {
  private slots = new Set<string>();
  private stateNames = new Set<string>();
  private gotos: Array<{ path: string; target: string }> = [];
  private slotRefs: Array<{ path: string; slot: string }> = [];

  constructor(
    private readonly source: string,
    private readonly problems: string[],
  ) {}

  private problem(path: string, text: string): void {
    this.problems.push(`${this.source}: ${path}: ${text}`);
  }

  private object(value: unknown, path: string, allowed: readonly string[], required: readonly string[] = []): Obj | undefined {
    if (!value || typeof value !== "object" || Array.isArray(value)) {
      this.problem(path, "must be an object");
      return undefined;
    }
    const obj = value as Obj;
    for (const key of Object.keys(obj)) {
      // Keys starting with "_" are comments.
      if (!key.startsWith("_") && !allowed.includes(key)) this.problem(`${path}.${key}`, `unknown field (allowed: ${allowed.join(", ")})`);
    }
    for (const key of required) if (obj[key] === undefined) this.problem(`${path}.${key}`, "is required");
    return obj;
  }

  private text(value: unknown, path: string, context: TextContext): string | undefined {
    if (typeof value !== "string" || value.trim() === "") {
      this.problem(path, "must be a non-empty string");
      return undefined;
    }
    this.template(value, path, context);
    return value;
  }

  private template(value: string, path: string, context: TextContext): void {
    if (/\{\{/.test(value.replace(TEMPLATE, "")) || /\}\}/.test(value.replace(TEMPLATE, ""))) {
      this.problem(path, `malformed template in ${JSON.stringify(value)} (use {{slots.name}} or {{result.field|spell}})`);
    }
    for (const match of value.matchAll(TEMPLATE)) {
      const [, ref, filter] = match;
      const [root, ...rest] = ref.split(".");
      if (filter !== undefined && !(TEMPLATE_FILTERS as readonly string[]).includes(filter)) {
        this.problem(path, `unknown filter "${filter}" in {{${ref}|${filter}}} (known: ${TEMPLATE_FILTERS.join(", ")})`);
      }
      if (root === "slots" && rest.length === 1) this.slotRefs.push({ path, slot: rest[0] });
      else if (root === "result" && rest.length >= 1) {
        if (!context.result) this.problem(path, `{{${ref}}} is only available in a tool's results or onError`);
      } else if (root === "error" && rest.length === 1 && ["code", "message"].includes(rest[0])) {
        if (!context.error) this.problem(path, `{{${ref}}} is only available in a tool's onError`);
      } else {
        this.problem(path, `unknown template value {{${ref}}} (use slots.<name>, result.<field> or error.code/error.message)`);
      }
    }
  }

  private int(value: unknown, path: string, min: number, max: number): number | undefined {
    if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) {
      this.problem(path, `must be an integer between ${min} and ${max}`);
      return undefined;
    }
    return value as number;
  }

  private strings(value: unknown, path: string): string[] {
    if (value === undefined) return [];
    if (!Array.isArray(value) || value.some((s) => typeof s !== "string" || s.trim() === "")) {
      this.problem(path, "must be a list of non-empty strings");
      return [];
    }
    return value as string[];
  }

  agent(raw: unknown, name: string): AgentConfig | undefined {
    const obj = this.object(
      raw,
      "(agent)",
      ["voice", "greeting", "reprompt", "maxReprompts", "onMaxReprompts", "noInputMs", "voicemail", "onToolError", "intents", "states", "tools", "llm", "endpointing", "toolFiller"],
      ["greeting", "reprompt", "states"],
    );
    if (!obj) return undefined;
    const statesObj = obj.states === undefined ? undefined : this.object(obj.states, "states", Object.keys(obj.states as Obj));
    for (const stateName of Object.keys(statesObj ?? {})) {
      if (!NAME.test(stateName)) this.problem(`states.${stateName}`, "state names must start with a letter and use letters, digits, _ or -");
      this.stateNames.add(stateName);
    }
    if (statesObj && this.stateNames.size === 0) this.problem("states", "must define at least one state");
    // Slots first: templates anywhere may refer to any slot the agent collects.
    for (const state of Object.values(statesObj ?? {})) {
      const slot = (state as { collect?: { slot?: unknown } } | null)?.collect?.slot;
      if (typeof slot === "string") this.slots.add(slot);
    }

    if (obj.voice !== undefined && typeof obj.voice !== "string") this.problem("voice", "must be a string");
    const config: AgentConfig = {
      name,
      voice: typeof obj.voice === "string" ? obj.voice : "",
      tools: this.toolDeclarations(obj.tools, "tools"),
      endpointing: obj.endpointing === undefined ? undefined : this.endpointing(obj.endpointing, "endpointing"),
      toolFiller:
        obj.toolFiller === undefined
          ? DEFAULT_TOOL_FILLER
          : obj.toolFiller === false || obj.toolFiller === null
            ? null
            : (this.text(obj.toolFiller, "toolFiller", {}) ?? null),
      greeting: this.action(obj.greeting, "greeting", {}) ?? {},
      reprompt: this.text(obj.reprompt, "reprompt", {}) ?? "",
      maxReprompts: obj.maxReprompts === undefined ? 2 : (this.int(obj.maxReprompts, "maxReprompts", 0, 10) ?? 2),
      onMaxReprompts: obj.onMaxReprompts === undefined ? undefined : this.action(obj.onMaxReprompts, "onMaxReprompts", {}),
      noInputMs: obj.noInputMs === undefined ? undefined : this.int(obj.noInputMs, "noInputMs", NO_INPUT_MIN_MS, NO_INPUT_MAX_MS),
      voicemail: obj.voicemail === undefined ? undefined : this.action(obj.voicemail, "voicemail", {}),
      onToolError:
        obj.onToolError === undefined
          ? { say: "Sorry, something went wrong on my side." }
          : (this.action(obj.onToolError, "onToolError", { error: true }) ?? {}),
      intents: this.intents(obj.intents, "intents"),
      states: {},
    };
    if (config.greeting.goto === undefined && !config.greeting.end) {
      this.problem("greeting", "must go to a state (goto) or end the call");
    }
    // Nobody is there to answer: a voicemail that went on would talk to the machine's recording.
    if (config.voicemail && (!config.voicemail.end || config.voicemail.tool?.name !== "end_call" || config.voicemail.goto !== undefined)) {
      this.problem("voicemail", "must end the call: say the message, then tool end_call with end: true");
    }
    for (const [stateName, state] of Object.entries(statesObj ?? {})) {
      const checked = this.state(state, `states.${stateName}`);
      if (checked) config.states[stateName] = checked;
    }
    if (obj.llm !== undefined) config.llm = this.llm(obj.llm, "llm", config.tools);
    for (const { path, target } of this.gotos) {
      if (!this.stateNames.has(target)) this.problem(path, `unknown state "${target}" (states: ${[...this.stateNames].join(", ")})`);
    }
    for (const { path, slot } of this.slotRefs) {
      if (!this.slots.has(slot)) this.problem(path, `{{slots.${slot}}}: no state collects a slot named "${slot}"`);
    }
    return config;
  }

  private bool(value: unknown, path: string, fallback: boolean): boolean {
    if (typeof value !== "boolean") {
      this.problem(path, "must be true or false");
      return fallback;
    }
    return value;
  }

  /** completeSilenceMs: 0 (never early) or 200 ms up to, and below, the minimum silence given beside it. */
  private completeSilence(raw: unknown, path: string, minSilenceMs: unknown): number | undefined {
    if (raw === undefined) return undefined;
    const ms = this.int(raw, `${path}.completeSilenceMs`, 0, 10_000);
    if (ms === undefined) return undefined;
    if (ms > 0 && ms < 200) this.problem(`${path}.completeSilenceMs`, "must be 0 (off) or at least 200");
    if (ms > 0 && typeof minSilenceMs === "number" && ms >= minSilenceMs) this.problem(`${path}.completeSilenceMs`, "must be below minSilenceMs, or it never applies");
    return ms;
  }

  private endpointing(raw: unknown, path: string): Endpointing | undefined {
    const obj = this.object(raw, path, ["minSilenceMs", "maxSilenceMs", "completeSilenceMs"]);
    if (!obj) return undefined;
    const endpointing: Endpointing = {
      minSilenceMs: obj.minSilenceMs === undefined ? undefined : this.int(obj.minSilenceMs, `${path}.minSilenceMs`, 0, 10_000),
      maxSilenceMs: obj.maxSilenceMs === undefined ? undefined : this.int(obj.maxSilenceMs, `${path}.maxSilenceMs`, 0, 30_000),
      completeSilenceMs: this.completeSilence(obj.completeSilenceMs, path, obj.minSilenceMs),
    };
    if (endpointing.minSilenceMs !== undefined && endpointing.maxSilenceMs !== undefined && endpointing.minSilenceMs > endpointing.maxSilenceMs) {
      this.problem(path, "minSilenceMs is more than maxSilenceMs");
    }
    return endpointing;
  }

  private toolDeclarations(value: unknown, path: string): ToolDeclaration[] {
    if (value === undefined) return [];
    if (!Array.isArray(value)) {
      this.problem(path, "must be a list of tools");
      return [];
    }
    const tools: ToolDeclaration[] = [];
    const seen = new Set<string>();
    value.forEach((raw, i) => {
      const where = `${path}[${i}]`;
      const obj = this.object(raw, where, ["name", "description", "parameters", "idempotent", "timeoutMs", "confirm", "webhook"], ["name", "description"]);
      if (!obj) return;
      if (typeof obj.name !== "string" || !TOOL_NAME.test(obj.name)) {
        this.problem(`${where}.name`, "must be a tool name (a letter, then letters, digits, _ or -; at most 64)");
        return;
      }
      const toolPath = `${path}[${i}] (${obj.name})`;
      if (seen.has(obj.name)) this.problem(`${toolPath}.name`, `tool "${obj.name}" is declared twice`);
      seen.add(obj.name);
      const tool: ToolDeclaration = {
        name: obj.name,
        description: this.text(obj.description, `${toolPath}.description`, {}) ?? "",
        parameters: { type: "object", properties: {} },
      };
      if (obj.parameters !== undefined) {
        const schema = obj.parameters as Obj;
        if (!schema || typeof schema !== "object" || Array.isArray(schema) || schema.type !== "object") {
          this.problem(`${toolPath}.parameters`, 'must be a JSON Schema with "type": "object"');
        } else if (schema.properties !== undefined && (typeof schema.properties !== "object" || Array.isArray(schema.properties))) {
          this.problem(`${toolPath}.parameters.properties`, "must be an object");
        } else tool.parameters = schema;
      }
      if (obj.idempotent !== undefined) tool.idempotent = this.bool(obj.idempotent, `${toolPath}.idempotent`, false);
      if (obj.timeoutMs !== undefined) tool.timeoutMs = this.int(obj.timeoutMs, `${toolPath}.timeoutMs`, 100, 30_000);
      if (obj.confirm !== undefined) {
        const confirm = this.object(obj.confirm, `${toolPath}.confirm`, ["argument", "minLength", "maxLength"], ["argument"]);
        if (confirm) {
          const properties = (tool.parameters.properties ?? {}) as Obj;
          if (typeof confirm.argument !== "string" || !(confirm.argument in properties)) {
            this.problem(`${toolPath}.confirm.argument`, `must name one of the parameters (${Object.keys(properties).join(", ") || "none"})`);
          }
          const minLength = confirm.minLength === undefined ? 1 : (this.int(confirm.minLength, `${toolPath}.confirm.minLength`, 1, 32) ?? 1);
          const maxLength = confirm.maxLength === undefined ? 32 : (this.int(confirm.maxLength, `${toolPath}.confirm.maxLength`, 1, 32) ?? 32);
          if (minLength > maxLength) this.problem(`${toolPath}.confirm`, `minLength ${minLength} is more than maxLength ${maxLength}`);
          tool.confirm = { argument: String(confirm.argument), minLength, maxLength };
        }
      }
      if (obj.webhook !== undefined) {
        // The tools service checks the webhook in depth (URL, secrets); here only its shape.
        const webhook = this.object(obj.webhook, `${toolPath}.webhook`, ["url", "method", "headers"], ["url"]);
        if (webhook) {
          if (typeof webhook.url !== "string" || webhook.url.trim() === "") this.problem(`${toolPath}.webhook.url`, "must be a URL");
          tool.webhook = webhook;
        }
      }
      tools.push(tool);
    });
    return tools;
  }

  private llm(raw: unknown, path: string, declared: ToolDeclaration[]): LlmConfig | undefined {
    const obj = this.object(
      raw,
      path,
      ["systemPrompt", "greeting", "model", "baseUrl", "apiKeyEnv", "temperature", "maxTokens", "tools", "firstTokenTimeoutMs"],
      ["systemPrompt"],
    );
    if (!obj) return undefined;
    const llm: LlmConfig = {
      systemPrompt: typeof obj.systemPrompt === "string" && obj.systemPrompt.trim() ? obj.systemPrompt : "",
      tools: [],
    };
    if (!llm.systemPrompt) this.problem(`${path}.systemPrompt`, "must be a non-empty string");
    if (obj.greeting !== undefined) llm.greeting = this.text(obj.greeting, `${path}.greeting`, {});
    for (const key of ["model", "baseUrl"] as const) {
      if (obj[key] === undefined) continue;
      if (typeof obj[key] !== "string" || !(obj[key] as string).trim()) this.problem(`${path}.${key}`, "must be a non-empty string");
      else llm[key] = obj[key] as string;
    }
    if (llm.baseUrl !== undefined && !isHttpUrl(llm.baseUrl)) this.problem(`${path}.baseUrl`, "must be an http(s) URL");
    if (obj.apiKeyEnv !== undefined) {
      if (typeof obj.apiKeyEnv !== "string" || !ENV_NAME.test(obj.apiKeyEnv)) this.problem(`${path}.apiKeyEnv`, "must be an environment variable name (A-Z, 0-9, _)");
      else llm.apiKeyEnv = obj.apiKeyEnv;
    }
    if (obj.temperature !== undefined) {
      if (typeof obj.temperature !== "number" || obj.temperature < 0 || obj.temperature > 2) this.problem(`${path}.temperature`, "must be a number between 0 and 2");
      else llm.temperature = obj.temperature;
    }
    if (obj.maxTokens !== undefined) llm.maxTokens = this.int(obj.maxTokens, `${path}.maxTokens`, 16, 32_000);
    if (obj.firstTokenTimeoutMs !== undefined) llm.firstTokenTimeoutMs = this.int(obj.firstTokenTimeoutMs, `${path}.firstTokenTimeoutMs`, 100, 60_000);
    const names = declared.map((t) => t.name);
    if (obj.tools === undefined) llm.tools = names;
    else {
      llm.tools = this.strings(obj.tools, `${path}.tools`);
      for (const name of llm.tools) {
        if (!names.includes(name)) this.problem(`${path}.tools`, `"${name}" is not declared in tools (declared: ${names.join(", ") || "none"})`);
      }
    }
    return llm;
  }

  private intents(value: unknown, path: string): Intent[] {
    if (value === undefined) return [];
    if (!Array.isArray(value)) {
      this.problem(path, "must be a list of intents");
      return [];
    }
    const intents: Intent[] = [];
    const keysSeen = new Map<string, string>();
    value.forEach((raw, i) => {
      const where = `${path}[${i}]`;
      const obj = this.object(raw, where, ["name", "phrases", "keywords", "keys", "do"], ["name", "do"]);
      if (!obj) return;
      const name = typeof obj.name === "string" && obj.name ? obj.name : `#${i}`;
      if (obj.name !== undefined && (typeof obj.name !== "string" || !obj.name)) this.problem(`${where}.name`, "must be a non-empty string");
      const intentPath = `${path}[${i}] (${name})`;
      const keys = this.strings(obj.keys, `${intentPath}.keys`);
      for (const key of keys) {
        if (key.length !== 1 || !KEYS.includes(key)) this.problem(`${intentPath}.keys`, `"${key}" is not a keypad key (one of ${KEYS})`);
        const other = keysSeen.get(key);
        if (other) this.problem(`${intentPath}.keys`, `key "${key}" is already used by intent ${other}`);
        keysSeen.set(key, name);
      }
      const intent: Intent = {
        name,
        phrases: this.strings(obj.phrases, `${intentPath}.phrases`),
        keywords: this.strings(obj.keywords, `${intentPath}.keywords`),
        keys,
        do: this.action(obj.do, `${intentPath}.do`, {}) ?? {},
      };
      if (intent.phrases.length + intent.keywords.length + intent.keys.length === 0) {
        this.problem(intentPath, "needs phrases, keywords or keys to be recognized");
      }
      intents.push(intent);
    });
    return intents;
  }

  private state(raw: unknown, path: string): StateConfig | undefined {
    const obj = this.object(
      raw,
      path,
      ["prompt", "intents", "globalIntents", "collect", "hints", "reprompt", "maxReprompts", "onMaxReprompts", "noInputMs"],
      ["prompt"],
    );
    if (!obj) return undefined;
    if (obj.globalIntents !== undefined && typeof obj.globalIntents !== "boolean") this.problem(`${path}.globalIntents`, "must be true or false");
    const state: StateConfig = {
      prompt: this.text(obj.prompt, `${path}.prompt`, {}) ?? "",
      intents: this.intents(obj.intents, `${path}.intents`),
      globalIntents: obj.globalIntents !== false,
      collect: obj.collect === undefined ? undefined : this.collect(obj.collect, `${path}.collect`),
      hints: obj.hints === undefined ? undefined : this.hints(obj.hints, `${path}.hints`),
      reprompt: obj.reprompt === undefined ? undefined : this.text(obj.reprompt, `${path}.reprompt`, {}),
      maxReprompts: obj.maxReprompts === undefined ? undefined : this.int(obj.maxReprompts, `${path}.maxReprompts`, 0, 10),
      onMaxReprompts: obj.onMaxReprompts === undefined ? undefined : this.action(obj.onMaxReprompts, `${path}.onMaxReprompts`, {}),
      noInputMs: obj.noInputMs === undefined ? undefined : this.int(obj.noInputMs, `${path}.noInputMs`, NO_INPUT_MIN_MS, NO_INPUT_MAX_MS),
    };
    if (state.collect) {
      // Digits and the terminator belong to the entry in a collecting state; intents can only use the other keys.
      for (const intent of state.intents) {
        for (const key of intent.keys) {
          if (/\d/.test(key) || key === state.collect.terminator) {
            this.problem(`${path}.intents (${intent.name}).keys`, `key "${key}" is taken by the digits this state collects`);
          }
        }
      }
    }
    if (state.hints?.mode === "digits" && !state.collect) this.problem(`${path}.hints.mode`, `"digits" needs a collect in this state`);
    return state;
  }

  private collect(raw: unknown, path: string): Collect | undefined {
    const obj = this.object(raw, path, ["slot", "minLength", "maxLength", "terminator", "invalid", "confirm", "do"], ["slot", "do"]);
    if (!obj) return undefined;
    if (typeof obj.slot !== "string" || !NAME.test(obj.slot)) this.problem(`${path}.slot`, "must be a name (letters, digits, _)");
    const minLength = obj.minLength === undefined ? 1 : (this.int(obj.minLength, `${path}.minLength`, 1, 32) ?? 1);
    const maxLength = obj.maxLength === undefined ? 32 : (this.int(obj.maxLength, `${path}.maxLength`, 1, 32) ?? 32);
    if (minLength > maxLength) this.problem(`${path}`, `minLength ${minLength} is more than maxLength ${maxLength}`);
    const terminator = obj.terminator === undefined ? "#" : obj.terminator;
    if (terminator !== "#" && terminator !== "*") this.problem(`${path}.terminator`, `must be "#" or "*"`);
    return {
      slot: String(obj.slot),
      minLength,
      maxLength,
      terminator: String(terminator),
      invalid: obj.invalid === undefined ? undefined : this.text(obj.invalid, `${path}.invalid`, {}),
      confirm: obj.confirm === undefined ? true : this.bool(obj.confirm, `${path}.confirm`, true),
      do: this.action(obj.do, `${path}.do`, {}) ?? {},
    };
  }

  private hints(raw: unknown, path: string): HintsConfig | undefined {
    const obj = this.object(raw, path, ["mode", "phrases", "minSilenceMs", "maxSilenceMs", "completeSilenceMs"]);
    if (!obj) return undefined;
    if (obj.mode !== undefined && obj.mode !== "phrases" && obj.mode !== "digits") this.problem(`${path}.mode`, `must be "phrases" or "digits"`);
    const hints: HintsConfig = {
      mode: obj.mode === "digits" || obj.mode === "phrases" ? obj.mode : undefined,
      phrases: obj.phrases === undefined ? undefined : this.strings(obj.phrases, `${path}.phrases`),
      minSilenceMs: obj.minSilenceMs === undefined ? undefined : this.int(obj.minSilenceMs, `${path}.minSilenceMs`, 0, 10_000),
      maxSilenceMs: obj.maxSilenceMs === undefined ? undefined : this.int(obj.maxSilenceMs, `${path}.maxSilenceMs`, 0, 30_000),
      completeSilenceMs: this.completeSilence(obj.completeSilenceMs, path, obj.minSilenceMs),
    };
    if (hints.minSilenceMs !== undefined && hints.maxSilenceMs !== undefined && hints.minSilenceMs > hints.maxSilenceMs) {
      this.problem(path, "minSilenceMs is more than maxSilenceMs");
    }
    return hints;
  }

  private action(raw: unknown, path: string, context: TextContext, isBranch = false): Action | undefined {
    const fields = ["say", "tool", "results", "onError", "goto", "end"];
    const obj = this.object(raw, path, isBranch ? ["when", ...fields] : fields);
    if (!obj) return undefined;
    const action: Action = {};
    if (obj.say !== undefined) action.say = this.text(obj.say, `${path}.say`, context);
    if (obj.tool !== undefined) action.tool = this.tool(obj.tool, `${path}.tool`, context);
    if (obj.goto !== undefined) {
      if (typeof obj.goto !== "string") this.problem(`${path}.goto`, "must be a state name");
      else {
        action.goto = obj.goto;
        this.gotos.push({ path: `${path}.goto`, target: obj.goto });
      }
    }
    if (obj.end !== undefined) {
      if (typeof obj.end !== "boolean") this.problem(`${path}.end`, "must be true or false");
      else if (obj.end) action.end = true;
    }
    if (obj.results !== undefined) {
      if (!Array.isArray(obj.results)) this.problem(`${path}.results`, "must be a list of branches");
      else {
        action.results = obj.results
          .map((branch, i) => this.branch(branch, `${path}.results[${i}]`, { ...context, result: true }))
          .filter((b): b is ResultBranch => b !== undefined);
      }
    }
    if (obj.onError !== undefined) action.onError = this.action(obj.onError, `${path}.onError`, { ...context, error: true });

    if (action.end && action.goto !== undefined) this.problem(path, "cannot both end and goto");
    if (action.end && action.results) this.problem(path, "an ending action cannot have results (only onError, for when its tool fails)");
    // Ending without a tool would leave the caller on an open line that no longer answers.
    if (action.end && !action.tool) this.problem(path, "an ending action needs the tool that ends the conversation (end_call or transfer_to_human)");
    if ((action.results || action.onError) && !action.tool) this.problem(path, "results and onError need a tool");
    if (!isBranch && fields.every((field) => obj[field] === undefined)) {
      this.problem(path, "must do something (say, tool, goto or end)");
    }
    return action;
  }

  private branch(raw: unknown, path: string, context: TextContext): ResultBranch | undefined {
    const action = this.action(raw, path, context, true) as ResultBranch | undefined;
    if (!action) return undefined;
    const when = (raw as Obj).when;
    if (when !== undefined) {
      const obj = this.object(when, `${path}.when`, Object.keys((when as Obj) ?? {}));
      if (obj) {
        const isScalar = (x: unknown) => x === null || ["string", "number", "boolean"].includes(typeof x);
        for (const [key, expected] of Object.entries(obj)) {
          if (!(isScalar(expected) || (Array.isArray(expected) && expected.every(isScalar)))) {
            this.problem(`${path}.when.${key}`, "must be a string, number, boolean, null or a list of those");
          }
        }
        action.when = obj as Record<string, Scalar | Scalar[]>;
      }
    }
    return action;
  }

  private tool(raw: unknown, path: string, context: TextContext): ToolStep | undefined {
    const obj = this.object(raw, path, ["name", "args", "timeoutMs"], ["name"]);
    if (!obj) return undefined;
    if (typeof obj.name !== "string" || !/^[a-zA-Z][\w.-]*$/.test(obj.name)) this.problem(`${path}.name`, "must be a tool name");
    const args = obj.args === undefined ? {} : this.object(obj.args, `${path}.args`, Object.keys((obj.args as Obj) ?? {}));
    for (const [key, value] of Object.entries(args ?? {})) {
      if (typeof value === "string") this.template(value, `${path}.args.${key}`, context);
    }
    return {
      name: String(obj.name),
      args: args ?? {},
      timeoutMs: obj.timeoutMs === undefined ? 0 : (this.int(obj.timeoutMs, `${path}.timeoutMs`, 100, 30_000) ?? 0),
    };
  }
}

function isHttpUrl(text: string): boolean {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:";
  } catch {
    return false;
  }
}

interface TextContext {
  /** {{result.*}} is available (inside a tool's results). */
  result?: boolean;
  /** {{error.*}} is available (inside a tool's onError). */
  error?: boolean;
}
