import type { Logger } from "@voicebot/bus";
import type { EnvReader, RunningService, ServiceContext, ServiceDefinition } from "@voicebot/service-kit";
import { CallSession } from "./call-session.js";
import { readAsrConfig, type AsrConfig } from "./config.js";
import type { AsrEngine } from "./engine.js";
import { AssemblyAIEngine, readAssemblyAIConfig, type AssemblyAIConfig } from "./engines/assemblyai.js";
import { OpenAIEngine, readOpenAIAsrConfig, type OpenAIAsrConfig } from "./engines/openai.js";
import { PocketsphinxEngine, readPocketsphinxConfig, type PocketsphinxConfig } from "./engines/pocketsphinx.js";
import { createMetrics } from "./metrics.js";
import { CallOwnership } from "./ownership.js";
import { EnergyVad } from "./vad.js";

const ENGINES = ["pocketsphinx", "assemblyai", "openai"] as const;

/** Only the chosen engine's settings are read (and validated). */
export type EngineConfig =
  | { kind: "pocketsphinx"; config: PocketsphinxConfig }
  | { kind: "assemblyai"; config: AssemblyAIConfig }
  | { kind: "openai"; config: OpenAIAsrConfig };

export interface Config extends AsrConfig {
  engine: EngineConfig;
}

function readEngineConfig(env: EnvReader): EngineConfig {
  const kind = env.oneOf("ASR_ENGINE", ENGINES, "pocketsphinx");
  switch (kind) {
    case "pocketsphinx":
      return { kind, config: readPocketsphinxConfig(env) };
    case "assemblyai":
      return { kind, config: readAssemblyAIConfig(env) };
    case "openai":
      return { kind, config: readOpenAIAsrConfig(env) };
  }
}

function createEngine(engine: EngineConfig, log: Logger): AsrEngine {
  switch (engine.kind) {
    case "pocketsphinx":
      return new PocketsphinxEngine(engine.config, log);
    case "assemblyai":
      return new AssemblyAIEngine(engine.config, log);
    case "openai":
      return new OpenAIEngine(engine.config, log);
  }
}

export const definition: ServiceDefinition<Config> = {
  name: "asr",
  defaultHttpPort: 9101,
  readConfig: (env) => ({ ...readAsrConfig(env), engine: readEngineConfig(env) }),

  async start(ctx: ServiceContext, config: Config): Promise<RunningService> {
    const { bus, store, log, registry, common } = ctx;
    const engine = createEngine(config.engine, log);
    // Fails the start (exit 1, clear log line) when the engine cannot run: better than failing every call.
    await engine.warmUp();
    log.info("asr engine ready", { engine: engine.label });

    const metrics = createMetrics(registry);
    const ownership = new CallOwnership({
      bus,
      store,
      log,
      metrics,
      options: { instanceId: common.instanceId, leaseMs: config.leaseMs, orphanScanMs: config.orphanScanMs },
      createSession: (callId) =>
        new CallSession({ callId, bus, store, engine, vad: new EnergyVad(config.vad), log, metrics, options: config.session }),
    });
    ownership.start();

    return {
      activeCalls: () => ownership.activeCalls,
      drain: () => ownership.drain(),
      close: async () => {
        await ownership.close();
        await engine.close();
      },
    };
  },
};
