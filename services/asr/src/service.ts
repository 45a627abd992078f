import type { Logger } from "@voicebot/bus";
import type { EnvReader, RunningService, ServiceContext, ServiceDefinition } from "@voicebot/service-kit";
import { CallSession } from "./call-session.js";
import { readAsrConfig, type AsrConfig, type VadConfig } from "./config.js";
import type { AsrEngine } from "./engine.js";
import { AssemblyAIEngine, readAssemblyAIConfig, type AssemblyAIConfig } from "./engines/assemblyai.js";
import { FallbackEngine } from "./engines/fallback.js";
import { OpenAIEngine, readOpenAIAsrConfig, type OpenAIAsrConfig } from "./engines/openai.js";
import { PocketsphinxEngine, readPocketsphinxConfig, type PocketsphinxConfig } from "./engines/pocketsphinx.js";
import { createMetrics, type AsrMetrics } from "./metrics.js";
import { CallOwnership } from "./ownership.js";
import { SileroVad } from "./silero.js";
import { EnergyVadDetector, type VoiceActivityDetector } from "./vad.js";

const ENGINES = ["pocketsphinx", "assemblyai", "openai"] as const;

/** Only the listed engines' settings are read (and validated). */
export type EngineConfig =
  | { kind: "pocketsphinx"; config: PocketsphinxConfig }
  | { kind: "assemblyai"; config: AssemblyAIConfig }
  | { kind: "openai"; config: OpenAIAsrConfig };

export interface Config extends AsrConfig {
  /** ASR_ENGINES in order: an utterance runs on the first healthy one and fails over down the list. */
  engines: EngineConfig[];
  /** The list came from the deprecated ASR_ENGINE (logged at start). */
  deprecatedEngineVariable: boolean;
}

function readEngineList(env: EnvReader): { kinds: (typeof ENGINES)[number][]; deprecated: boolean } {
  if (env.optional("ASR_ENGINES") === undefined && env.optional("ASR_ENGINE") !== undefined) {
    return { kinds: [env.oneOf("ASR_ENGINE", ENGINES, "pocketsphinx")], deprecated: true };
  }
  const kinds = env.list("ASR_ENGINES", ENGINES, ["pocketsphinx"]);
  if (new Set(kinds).size !== kinds.length) env.problem(`ASR_ENGINES=${JSON.stringify(env.raw("ASR_ENGINES"))} names an engine twice`);
  return { kinds: [...new Set(kinds)], deprecated: false };
}

function readEngineConfig(kind: (typeof ENGINES)[number], env: EnvReader): EngineConfig {
  switch (kind) {
    case "pocketsphinx":
      return { kind, config: readPocketsphinxConfig(env) };
    case "assemblyai":
      return { kind, config: readAssemblyAIConfig(env) };
    case "openai":
      return { kind, config: readOpenAIAsrConfig(env) };
  }
}

function createEngine(engine: EngineConfig, log: Logger, metrics: AsrMetrics): AsrEngine {
  switch (engine.kind) {
    case "pocketsphinx":
      return new PocketsphinxEngine(engine.config, log);
    case "assemblyai":
      return new AssemblyAIEngine(engine.config, log);
    case "openai":
      return new OpenAIEngine(engine.config, log, () => metrics.providerErrors.inc({ engine: "openai", reason: "keep_warm" }));
  }
}

async function createVad(config: VadConfig, metrics: AsrMetrics, log: Logger): Promise<VoiceActivityDetector> {
  if (config.kind === "energy") return new EnergyVadDetector(config.energy);
  return SileroVad.create(config.silero, metrics, log);
}

export const definition: ServiceDefinition<Config> = {
  name: "asr",
  defaultHttpPort: 9101,
  readConfig: (env) => {
    const { kinds, deprecated } = readEngineList(env);
    return { ...readAsrConfig(env), engines: kinds.map((kind) => readEngineConfig(kind, env)), deprecatedEngineVariable: deprecated };
  },

  async start(ctx: ServiceContext, config: Config): Promise<RunningService> {
    const { bus, store, log, registry, common } = ctx;
    if (config.deprecatedEngineVariable) log.warn("ASR_ENGINE is deprecated: use ASR_ENGINES (an ordered failover list)");
    const metrics = createMetrics(registry);
    const engine = new FallbackEngine(
      config.engines.map((e) => createEngine(e, log, metrics)),
      config.fallback,
      metrics,
      log,
    );
    // Fails the start (exit 1, clear log line) when an engine or the VAD cannot run: better than failing every call.
    await engine.warmUp();
    const vad = await createVad(config.vad, metrics, log);
    log.info("asr engines ready", { engines: engine.label, vad: vad.kind });

    const ownership = new CallOwnership({
      bus,
      store,
      log,
      metrics,
      options: { instanceId: common.instanceId, leaseMs: config.leaseMs, orphanScanMs: config.orphanScanMs },
      createSession: (callId, onFinalPublished) => new CallSession({ callId, bus, store, engine, vad, log, metrics, options: config.session, onFinalPublished }),
    });
    ownership.start();

    return {
      activeCalls: () => ownership.activeCalls,
      drain: () => ownership.drain(),
      close: async () => {
        await ownership.close();
        await engine.close();
        await vad.close();
      },
    };
  },
};
