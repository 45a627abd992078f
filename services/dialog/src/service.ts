import { fileURLToPath } from "node:url";
import { streams, subjects, type Logger } from "@voicebot/bus";
import { CancelTurn, DialogInput } from "@voicebot/proto";
import { ApiKeepWarm, ConfigError, type EnvReader, type ServiceDefinition } from "@voicebot/service-kit";
import { AgentConfigError, type AgentConfig } from "./agents/config.js";
import { loadAgents } from "./agents/load.js";
import { InFlightTurns } from "./cancel.js";
import { DEFAULT_CONFIRM_CONFIDENCE } from "./engine/confirm.js";
import { LlmEngine } from "./engine/llm.js";
import { ScriptedEngine } from "./engine/scripted.js";
import { TurnLease } from "./lease.js";
import { CircuitBreaker, type CircuitState } from "./llm/breaker.js";
import { OpenAiCompleter, type LlmSettings } from "./llm/client.js";
import { createDialogMetrics, type DialogMetrics } from "./metrics.js";
import { prewarmRequests, prewarmTts, type PrewarmAgent } from "./prewarm.js";
import { DIALOG_INPUT_MAX_DELIVER, TurnRunner, type Agent } from "./runner.js";
import { ToolClient } from "./tools.js";

/** LLM settings from the environment; each one set here wins over the agent file. */
export interface LlmEnv {
  baseUrl?: string;
  apiKey?: string;
  model?: string;
  temperature?: number;
  firstTokenTimeoutMs?: number;
  stallTimeoutMs: number;
  timeoutMs: number;
  maxRetries: number;
  breaker: { failures: number; windowMs: number; cooldownMs: number };
  /** LLM_KEEP_WARM_S (default 300): one connection to each LLM endpoint kept open this long after its last request. */
  keepWarmMs: number;
}

export interface DialogConfig {
  agentsDir: string;
  defaultAgent: string;
  leaseTtlMs: number;
  leaseWaitMs: number;
  ackWaitMs: number;
  toolFillerMs: number;
  keypadPauseMs: number;
  /**
   * DIALOG_CONCURRENCY: inputs this replica takes at once; up to as many more that wait for their call's earlier
   * input give their slot back, so at most twice this many are ever in hand.
   */
  concurrency: number;
  digitsConfirmConfidence: number;
  /** DIALOG_PREWARM_TTS: at start, have tts cache every fixed line of the agents (default on). */
  prewarmTts: boolean;
  llm: LlmEnv;
  /** Reads an environment variable an agent names (its `llm.apiKeyEnv`). */
  secret(name: string): string | undefined;
}

// src/ and dist/ both sit one level below the package, so this finds the shipped agents from either.
const DEFAULT_AGENTS_DIR = fileURLToPath(new URL("../agents", import.meta.url));
const DEFAULT_MODEL = "gpt-4o-mini";
const DEFAULT_FIRST_TOKEN_TIMEOUT_MS = 2_500;
const DEFAULT_STALL_TIMEOUT_MS = 3_000;

export function readDialogConfig(env: EnvReader): DialogConfig {
  const optionalInt = (name: string, range: { min: number; max: number }) =>
    env.optional(name) === undefined ? undefined : env.int(name, 0, range);
  const baseUrl = env.optional("LLM_BASE_URL");
  if (baseUrl !== undefined) env.url("LLM_BASE_URL", baseUrl, ["http", "https"]);
  return {
    agentsDir: env.string("AGENTS_DIR", DEFAULT_AGENTS_DIR),
    defaultAgent: env.string("DEFAULT_AGENT", "order-line"),
    // Both bound how long a call waits when the replica taking its turn dies: its lease must expire, and (when the
    // caller does nothing meanwhile) JetStream hands its input to another replica after the ack wait. Turns in
    // progress renew the lease every third of its TTL and heartbeat the input every third of the ack wait.
    leaseTtlMs: env.int("DIALOG_LEASE_TTL_MS", 3_000, { min: 1_000, max: 60_000 }),
    leaseWaitMs: env.int("DIALOG_LEASE_WAIT_MS", 1_000, { min: 0, max: 10_000 }),
    ackWaitMs: env.int("DIALOG_ACK_WAIT_MS", 4_000, { min: 1_000, max: 120_000 }),
    toolFillerMs: env.int("TOOL_FILLER_MS", 1_200, { min: 100, max: 30_000 }),
    keypadPauseMs: env.int("KEYPAD_PAUSE_MS", 2_000, { min: 300, max: 30_000 }),
    concurrency: env.int("DIALOG_CONCURRENCY", 64, { min: 1, max: 4_096 }),
    digitsConfirmConfidence: env.number("DIGITS_CONFIRM_CONFIDENCE", DEFAULT_CONFIRM_CONFIDENCE, { min: 0, max: 1 }),
    prewarmTts: env.bool("DIALOG_PREWARM_TTS", true),
    llm: {
      baseUrl,
      apiKey: env.optional("LLM_API_KEY"),
      model: env.optional("LLM_MODEL"),
      temperature: env.optional("LLM_TEMPERATURE") === undefined ? undefined : env.number("LLM_TEMPERATURE", 0, { min: 0, max: 2 }),
      firstTokenTimeoutMs: optionalInt("LLM_FIRST_TOKEN_TIMEOUT_MS", { min: 100, max: 60_000 }),
      stallTimeoutMs: env.int("LLM_STALL_TIMEOUT_MS", DEFAULT_STALL_TIMEOUT_MS, { min: 100, max: 60_000 }),
      timeoutMs: env.int("LLM_TIMEOUT_MS", 15_000, { min: 1_000, max: 120_000 }),
      maxRetries: env.int("LLM_MAX_RETRIES", 1, { min: 0, max: 5 }),
      breaker: {
        failures: env.int("LLM_BREAKER_FAILURES", 5, { min: 1, max: 1_000 }),
        windowMs: env.int("LLM_BREAKER_WINDOW_MS", 30_000, { min: 1_000, max: 3_600_000 }),
        cooldownMs: env.int("LLM_BREAKER_COOLDOWN_MS", 30_000, { min: 100, max: 3_600_000 }),
      },
      keepWarmMs: env.int("LLM_KEEP_WARM_S", 300, { min: 0, max: 86_400 }) * 1000,
    },
    secret: (name) => env.optional(name),
  };
}

/** The LLM settings of an agent (environment first), or undefined when it has no LLM to run on. */
export function llmSettingsFor(agent: AgentConfig, config: DialogConfig): LlmSettings | undefined {
  const llm = agent.llm;
  if (!llm) return undefined;
  const baseUrl = config.llm.baseUrl ?? llm.baseUrl ?? "";
  const apiKey = config.llm.apiKey ?? (llm.apiKeyEnv ? config.secret(llm.apiKeyEnv) : undefined);
  // Without an endpoint or a key there is nothing to call: the scripted agent runs the call.
  if (!baseUrl && !apiKey) return undefined;
  return {
    baseUrl,
    apiKey: apiKey ?? "unused", // local OpenAI-compatible servers take any key; the SDK wants one
    model: config.llm.model ?? llm.model ?? DEFAULT_MODEL,
    temperature: config.llm.temperature ?? llm.temperature,
    maxTokens: llm.maxTokens,
    firstTokenTimeoutMs: config.llm.firstTokenTimeoutMs ?? llm.firstTokenTimeoutMs ?? DEFAULT_FIRST_TOKEN_TIMEOUT_MS,
    stallTimeoutMs: config.llm.stallTimeoutMs,
    timeoutMs: config.llm.timeoutMs,
    maxRetries: config.llm.maxRetries,
  };
}

const CIRCUIT_VALUE: Record<CircuitState, number> = { closed: 0, half_open: 1, open: 2 };

/** The endpoint's host for logs (never the path or query, which may carry a key). */
function hostOf(baseUrl: string): string {
  if (!baseUrl) return "api.openai.com";
  try {
    return new URL(baseUrl).host;
  } catch {
    return "(invalid URL)";
  }
}

/** An agent ready to run calls, with the file it came from and whether it runs on the LLM. */
export interface LoadedAgent extends Agent, PrewarmAgent {}

/** Default endpoint of the OpenAI SDK (an empty LLM base URL). */
const OPENAI_BASE_URL = "https://api.openai.com/v1";

export async function loadEngines(
  config: DialogConfig,
  metrics: DialogMetrics,
  log: Logger,
  keepWarms: Map<string, ApiKeepWarm> = new Map(),
): Promise<Map<string, LoadedAgent>> {
  let configs;
  try {
    configs = await loadAgents(config.agentsDir);
  } catch (error) {
    if (error instanceof AgentConfigError) throw new ConfigError(`invalid agent configuration:\n  ${error.problems.join("\n  ")}`);
    throw error;
  }
  if (!configs.has(config.defaultAgent)) {
    throw new ConfigError(
      `DEFAULT_AGENT=${JSON.stringify(config.defaultAgent)}: no ${config.defaultAgent}.json/.yaml in ${config.agentsDir} (found: ${[...configs.keys()].join(", ")})`,
    );
  }
  // One breaker per endpoint and model: agents sharing an endpoint share what is known about its health.
  const breakers = new Map<string, CircuitBreaker>();
  const agents = new Map<string, LoadedAgent>();
  for (const [name, agentConfig] of configs) {
    const scripted = new ScriptedEngine(agentConfig, { digitsConfirmConfidence: config.digitsConfirmConfidence, keypadPauseMs: config.keypadPauseMs });
    const settings = llmSettingsFor(agentConfig, config);
    let engine: Agent["engine"] = scripted;
    if (settings) {
      const key = `${settings.baseUrl} ${settings.model}`;
      let breaker = breakers.get(key);
      if (!breaker) {
        const model = settings.model;
        metrics.llmCircuit.set({ model }, 0);
        breaker = new CircuitBreaker({
          ...config.llm.breaker,
          onChange: (state) => {
            metrics.llmCircuit.set({ model }, CIRCUIT_VALUE[state]);
            log[state === "closed" ? "info" : "warn"]("llm circuit breaker changed", { model, state });
          },
        });
        breakers.set(key, breaker);
      }
      // One warm connection per origin (connections are pooled per origin, whatever the agent, path or key).
      const endpoint = settings.baseUrl || OPENAI_BASE_URL;
      const origin = new URL(endpoint).origin;
      let keepWarm = keepWarms.get(origin);
      if (!keepWarm) {
        keepWarm = new ApiKeepWarm({
          baseUrl: endpoint,
          apiKey: settings.apiKey,
          forMs: config.llm.keepWarmMs,
          onFailure: (error) => {
            metrics.llmKeepWarmFailures.inc();
            log.warn("llm keep-warm request failed; the next turn opens its own connection", { endpoint: hostOf(settings.baseUrl), error });
          },
        });
        keepWarms.set(origin, keepWarm);
      }
      engine = new LlmEngine({
        agent: agentConfig,
        client: new OpenAiCompleter(settings, breaker, metrics, log, keepWarm),
        fallback: scripted,
        digitsConfirmConfidence: config.digitsConfirmConfidence,
        keypadPauseMs: config.keypadPauseMs,
        metrics,
        log,
      });
    }
    log.info("agent ready", {
      agent: name,
      mode: settings ? "llm" : "scripted",
      ...(settings ? { model: settings.model, endpoint: hostOf(settings.baseUrl) } : {}),
      tools: agentConfig.tools.map((t) => t.name),
    });
    agents.set(name, { name, engine, voice: agentConfig.voice, toolFiller: agentConfig.toolFiller, config: agentConfig, onLlm: settings !== undefined });
  }
  return agents;
}

export const definition: ServiceDefinition<DialogConfig> = {
  name: "dialog",
  defaultHttpPort: 9102,
  readConfig: readDialogConfig,
  async start(ctx, config) {
    const metrics = createDialogMetrics(ctx.registry);
    const keepWarms = new Map<string, ApiKeepWarm>();
    const agents = await loadEngines(config, metrics, ctx.log, keepWarms);
    // The first call's first LLM turn finds a connection open.
    for (const keepWarm of keepWarms.values()) keepWarm.warm();
    ctx.log.info("agents loaded", { dir: config.agentsDir, agents: [...agents.keys()], default: config.defaultAgent });
    const inFlight = new InFlightTurns();
    const runner = new TurnRunner({
      store: ctx.store,
      bus: ctx.bus,
      log: ctx.log,
      metrics,
      agents,
      defaultAgent: config.defaultAgent,
      lease: new TurnLease(ctx.store, ctx.common.instanceId, config.leaseTtlMs, config.leaseWaitMs, ctx.log),
      tools: new ToolClient(ctx.bus, metrics),
      inFlight,
      ackWaitMs: config.ackWaitMs,
      toolFillerMs: config.toolFillerMs,
    });
    // Every replica hears every cancel; the one playing the call's input stops it (barge-in).
    const cancels = ctx.bus.subscribe(
      subjects.cancelAll,
      CancelTurn,
      (message, delivery) => {
        const callId = message.callId || delivery.callId || "";
        if (inFlight.cancel({ ...message, callId })) ctx.log.info("input in progress cancelled", { callId, turnId: message.turnId, reason: message.reason });
      },
      { name: "dialog.cancel" },
    );
    // Speech goes to tts through its work queue; make sure it exists even when tts has not started yet.
    await ctx.bus.ensureStream(streams.tts);
    const consumer = await ctx.bus.consume(streams.dialog, DialogInput, runner.handle, {
      name: "dialog.in",
      ackWaitMs: config.ackWaitMs,
      // Inputs handed back while another replica holds the call's turn count as deliveries too (the last ones wait).
      maxDeliver: DIALOG_INPUT_MAX_DELIVER,
      concurrency: config.concurrency,
    });
    // In the background once the replica takes calls: the first calls must not wait for it.
    const stopPrewarm = new AbortController();
    if (config.prewarmTts) {
      const requests = prewarmRequests([...agents.values()]);
      void prewarmTts({ bus: ctx.bus, log: ctx.log, registry: ctx.registry }, requests, stopPrewarm.signal);
    }
    return {
      activeCalls: () => runner.activeCalls(),
      // Stops pulling inputs and waits for the turns in hand; unpulled inputs stay queued for other replicas.
      drain: async () => {
        stopPrewarm.abort();
        runner.stopRetrying();
        await consumer.stop();
        cancels.unsubscribe();
        for (const keepWarm of keepWarms.values()) keepWarm.close();
      },
    };
  },
};
