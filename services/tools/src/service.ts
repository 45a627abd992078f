import { fileURLToPath } from "node:url";
import { queueGroups, subjects } from "@voicebot/bus";
import { CallControl, ToolCallRequest, ToolCallResult } from "@voicebot/proto";
import { ConfigError, type EnvReader, type ServiceDefinition } from "@voicebot/service-kit";
import { builtinTools, isDialableTarget } from "./builtins.js";
import { createExecutorMetrics, ToolExecutor } from "./executor.js";
import { JsonFileOrderSource, type OrderSource } from "./orders.js";

export interface ToolsConfig {
  ordersFile: string;
  transferTarget: string;
  allowedTransferTargets: string[];
}

// src/ and dist/ both sit one level below the package, so this finds the shipped demo data from either.
const DEFAULT_ORDERS_FILE = fileURLToPath(new URL("../data/orders.json", import.meta.url));

export function readToolsConfig(env: EnvReader): ToolsConfig {
  const transferTarget = env.string("TRANSFER_TARGET", "+15550100");
  const allowed = (env.optional("TRANSFER_ALLOWED_TARGETS") ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  const bad = [transferTarget, ...allowed].filter((target) => !isDialableTarget(target));
  if (bad.length > 0) {
    throw new ConfigError(
      `invalid configuration: TRANSFER_TARGET / TRANSFER_ALLOWED_TARGETS: ${bad.map((t) => JSON.stringify(t)).join(", ")} ` +
        "must be E.164 numbers (+15550100) or sip: URIs",
    );
  }
  return { ordersFile: env.string("ORDERS_FILE", DEFAULT_ORDERS_FILE), transferTarget, allowedTransferTargets: allowed };
}

export const definition: ServiceDefinition<ToolsConfig> = {
  name: "tools",
  defaultHttpPort: 9103,
  readConfig: readToolsConfig,
  async start(ctx, config) {
    // A missing or broken orders file is a deployment mistake: report it as configuration (exit code 2).
    const orders: OrderSource & { size?: number } = await JsonFileOrderSource.load(config.ordersFile).catch((error: Error) => {
      throw new ConfigError(`invalid configuration: ORDERS_FILE: ${error.message}`);
    });
    ctx.log.info("orders loaded", { file: config.ordersFile, orders: orders.size });
    const tools = builtinTools({
      orders,
      control: (callId, message) => ctx.bus.publish(subjects.control(callId), CallControl, message, callId),
      transferTarget: config.transferTarget,
      allowedTransferTargets: config.allowedTransferTargets,
    });
    const executor = new ToolExecutor(tools, ctx.store, createExecutorMetrics(ctx.registry), ctx.log);
    const sub = ctx.bus.serve(subjects.toolsCall, ToolCallRequest, ToolCallResult, (request) => executor.handle(request), {
      name: "tools.call",
      queue: queueGroups.tools,
    });
    return {
      activeCalls: () => executor.activeCalls(),
      async drain() {
        // Stop taking requests (those already delivered still run), then let executions finish and answer.
        await sub.drain().catch(() => undefined);
        await executor.idle();
      },
      async close() {
        await orders.close?.();
      },
    };
  },
};
