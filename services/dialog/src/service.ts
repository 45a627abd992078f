import { fileURLToPath } from "node:url";
import { streams } from "@voicebot/bus";
import { DialogInput } from "@voicebot/proto";
import { ConfigError, type EnvReader, type ServiceDefinition } from "@voicebot/service-kit";
import { AgentConfigError } from "./agents/config.js";
import { loadAgents } from "./agents/load.js";
import { ScriptedEngine } from "./engine/scripted.js";
import { TurnLease } from "./lease.js";
import { createDialogMetrics } from "./metrics.js";
import { TurnRunner, type Agent } from "./runner.js";
import { ToolClient } from "./tools.js";

export interface DialogConfig {
  agentsDir: string;
  defaultAgent: string;
  leaseTtlMs: number;
  leaseWaitMs: number;
}

// src/ and dist/ both sit one level below the package, so this finds the shipped agents from either.
const DEFAULT_AGENTS_DIR = fileURLToPath(new URL("../agents", import.meta.url));

/** Work-queue settings: a turn is short (tools time out in seconds), so 30 s without an ack means its worker died. */
const CONSUME = { name: "dialog.in", ackWaitMs: 30_000, maxDeliver: 5, concurrency: 64 } as const;

export function readDialogConfig(env: EnvReader): DialogConfig {
  return {
    agentsDir: env.string("AGENTS_DIR", DEFAULT_AGENTS_DIR),
    defaultAgent: env.string("DEFAULT_AGENT", "order-line"),
    leaseTtlMs: env.int("DIALOG_LEASE_TTL_MS", 5_000, { min: 1_000, max: 60_000 }),
    leaseWaitMs: env.int("DIALOG_LEASE_WAIT_MS", 1_000, { min: 0, max: 10_000 }),
  };
}

export async function loadEngines(dir: string, defaultAgent: string): Promise<Map<string, Agent>> {
  let configs;
  try {
    configs = await loadAgents(dir);
  } catch (error) {
    if (error instanceof AgentConfigError) throw new ConfigError(`invalid agent configuration:\n  ${error.problems.join("\n  ")}`);
    throw error;
  }
  if (!configs.has(defaultAgent)) {
    throw new ConfigError(`DEFAULT_AGENT=${JSON.stringify(defaultAgent)}: no ${defaultAgent}.json in ${dir} (found: ${[...configs.keys()].join(", ")})`);
  }
  const agents = new Map<string, Agent>();
  for (const [name, config] of configs) agents.set(name, { name, engine: new ScriptedEngine(config), voice: config.voice });
  return agents;
}

export const definition: ServiceDefinition<DialogConfig> = {
  name: "dialog",
  defaultHttpPort: 9102,
  readConfig: readDialogConfig,
  async start(ctx, config) {
    const agents = await loadEngines(config.agentsDir, config.defaultAgent);
    ctx.log.info("agents loaded", { dir: config.agentsDir, agents: [...agents.keys()], default: config.defaultAgent });
    const metrics = createDialogMetrics(ctx.registry);
    const runner = new TurnRunner({
      store: ctx.store,
      bus: ctx.bus,
      log: ctx.log,
      metrics,
      agents,
      defaultAgent: config.defaultAgent,
      lease: new TurnLease(ctx.store, ctx.common.instanceId, config.leaseTtlMs, config.leaseWaitMs, ctx.log),
      tools: new ToolClient(ctx.bus, metrics),
    });
    const consumer = await ctx.bus.consume(streams.dialog, DialogInput, runner.handle, CONSUME);
    return {
      activeCalls: () => runner.activeCalls(),
      // Stops pulling inputs and waits for the turns in hand; unpulled inputs stay queued for other replicas.
      drain: () => consumer.stop(),
    };
  },
};
