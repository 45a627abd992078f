import { fileURLToPath } from "node:url";
import { errorText, queueGroups, subjects } from "@voicebot/bus";
import { CallControl, CallControl_Action, CallEnded, CancelTurn, ToolCallRequest, ToolCallResult } from "@voicebot/proto";
import { ConfigError, type EnvReader, type ServiceDefinition } from "@voicebot/service-kit";
import type { FinalAction } from "@voicebot/state";
import { defaultAgentsDir, loadDeclaredTools, ToolConfigError, type DeclaredTool } from "./agents.js";
import { BUILTIN_TOOL_NAMES, builtinTools, isDialableTarget } from "./builtins.js";
import { createExecutorMetrics, ToolExecutor, type ToolResolver } from "./executor.js";
import { JsonFileOrderSource, type OrderSource } from "./orders.js";
import { createPool, isValidTableName, OrdersTableError, PgOrderSource } from "./orders-pg.js";
import type { Tool } from "./tool.js";
import { webhookTool } from "./webhook.js";

export interface ToolsConfig {
  ordersFile: string;
  /** When set, lookup_order reads PostgreSQL instead of the orders file. */
  ordersDatabaseUrl?: string;
  ordersTable: string;
  transferTarget: string;
  allowedTransferTargets: string[];
  /** Agent files whose `tools` declare webhooks and per-agent settings; none = built-in tools only. */
  agentsDir?: string;
  /** Reads an environment variable a webhook names as `${NAME}`. */
  secret(name: string): string | undefined;
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
  const ordersDatabaseUrl = env.optional("ORDERS_DATABASE_URL");
  if (ordersDatabaseUrl !== undefined) env.url("ORDERS_DATABASE_URL", ordersDatabaseUrl, ["postgres", "postgresql"]);
  const ordersTable = env.string("ORDERS_TABLE", "orders");
  if (!isValidTableName(ordersTable)) throw new ConfigError(`invalid configuration: ORDERS_TABLE=${JSON.stringify(ordersTable)} must be a table name or schema.table`);
  return {
    ordersFile: env.string("ORDERS_FILE", DEFAULT_ORDERS_FILE),
    ordersDatabaseUrl,
    ordersTable,
    transferTarget,
    allowedTransferTargets: allowed,
    agentsDir: env.optional("AGENTS_DIR") ?? defaultAgentsDir(import.meta.url),
    secret: (name) => env.optional(name),
  };
}

/** Each agent's tools (its webhooks, and built-ins with its own timeout or idempotency), then the built-ins. */
export function toolResolver(builtins: Tool[], declared: Map<string, DeclaredTool[]>): ToolResolver {
  const shared = new Map(builtins.map((tool) => [tool.name, tool]));
  const perAgent = new Map<string, Map<string, Tool>>();
  for (const [agent, tools] of declared) {
    const own = new Map<string, Tool>();
    for (const declaration of tools) {
      const { webhook } = declaration;
      if (webhook) own.set(declaration.name, webhookTool({ ...declaration, webhook }));
      else {
        const builtin = shared.get(declaration.name);
        if (!builtin) continue; // the loader already refused undeclared built-ins
        own.set(declaration.name, {
          ...builtin,
          defaultTimeoutMs: declaration.timeoutMs ?? builtin.defaultTimeoutMs,
          idempotent: declaration.idempotent ?? builtin.idempotent,
        });
      }
    }
    perAgent.set(agent, own);
  }
  return (agent, name) => perAgent.get(agent)?.get(name) ?? shared.get(name);
}

export const definition: ServiceDefinition<ToolsConfig> = {
  name: "tools",
  defaultHttpPort: 9103,
  readConfig: readToolsConfig,
  async start(ctx, config) {
    let orders: OrderSource;
    if (config.ordersDatabaseUrl) {
      const pool = createPool(config.ordersDatabaseUrl);
      pool.on("error", (error) => ctx.log.warn("orders database connection error", { error: error.message }));
      const source = new PgOrderSource(pool, config.ordersTable);
      try {
        const check = await PgOrderSource.check(pool, config.ordersTable);
        if (check.reachable) ctx.log.info("orders database ready", { table: config.ordersTable });
        // Not fatal: end_call and transfer must keep working; lookups fail (and are retried) until it is back.
        else ctx.log.warn("orders database unreachable; lookups fail until it answers", { table: config.ordersTable, error: check.error });
      } catch (error) {
        await pool.end().catch(() => undefined);
        if (error instanceof OrdersTableError) throw new ConfigError(`invalid configuration: ORDERS_DATABASE_URL: ${error.message}`);
        throw error;
      }
      orders = source;
    } else {
      // A missing or broken orders file is a deployment mistake: report it as configuration (exit code 2).
      const file = await JsonFileOrderSource.load(config.ordersFile).catch((error: Error) => {
        throw new ConfigError(`invalid configuration: ORDERS_FILE: ${error.message}`);
      });
      ctx.log.info("orders loaded", { file: config.ordersFile, orders: file.size });
      orders = file;
    }
    const builtins = builtinTools({
      orders,
      control: async (callId, message) => {
        ctx.bus.publish(subjects.control(callId), CallControl, message, callId);
        const final = finalActionOf(message);
        // Kept for a stream that resumes the call (the message reaches only the stream of this moment): a backup, so
        // the control does not wait for it (a slow Redis must not make a hang-up late or report it failed).
        if (final) {
          void ctx.store.saveFinalAction(callId, final).catch((error) => {
            ctx.log.warn("the bot's hang-up or transfer was not kept for a resumed stream", { callId, error: errorText(error) });
          });
        }
      },
      transferTarget: config.transferTarget,
      allowedTransferTargets: config.allowedTransferTargets,
    });
    let declared = new Map<string, DeclaredTool[]>();
    if (config.agentsDir) {
      try {
        declared = await loadDeclaredTools(config.agentsDir, config.secret, BUILTIN_TOOL_NAMES);
      } catch (error) {
        await orders.close?.();
        if (error instanceof ToolConfigError) throw new ConfigError(`invalid agent tool configuration:\n  ${error.problems.join("\n  ")}`);
        throw error;
      }
    }
    ctx.log.info("tools ready", {
      builtins: builtins.map((t) => t.name),
      agentsDir: config.agentsDir ?? null,
      webhooks: [...declared.values()].flat().filter((t) => t.webhook).map((t) => `${t.agent}/${t.name}`),
    });
    const executor = new ToolExecutor(toolResolver(builtins, declared), ctx.store, createExecutorMetrics(ctx.registry), ctx.log, ctx.common.instanceId);
    const sub = ctx.bus.serve(subjects.toolsCall, ToolCallRequest, ToolCallResult, (request) => executor.handle(request), {
      name: "tools.call",
      queue: queueGroups.tools,
    });
    // A call that ends stops its tools at once: ingress cancels all its turns ("") first, CallEnded follows.
    const stopCall = (callId: string, signal: string) => {
      const stopped = executor.cancelCall(callId);
      if (stopped > 0) ctx.log.info("tools stopped: the call ended", { callId, requests: stopped, signal });
    };
    ctx.bus.subscribe(
      subjects.cancelAll,
      CancelTurn,
      (cancel, delivery) => {
        if (cancel.turnId === "") stopCall(cancel.callId || callIdOf(delivery.subject), "cancel");
      },
      { name: "tools.cancel" },
    );
    ctx.bus.subscribe(subjects.endedAll, CallEnded, (ended, delivery) => stopCall(ended.callId || callIdOf(delivery.subject), "ended"), {
      name: "tools.ended",
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

/** vb.v1.call.<id>.<kind>: the call id token of a per-call subject. */
function callIdOf(subject: string): string {
  return subject.split(".")[3] ?? "";
}

/** The hang-up or transfer a control message asks for, as the call's state keeps it (undefined for other controls). */
function finalActionOf(message: CallControl): FinalAction | undefined {
  if (message.action === CallControl_Action.ACTION_HANGUP) return { action: "hangup", reason: message.reason };
  if (message.action === CallControl_Action.ACTION_TRANSFER) return { action: "transfer", target: message.target, reason: message.reason };
  return undefined;
}
