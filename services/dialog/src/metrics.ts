import { Counter, Histogram, type Registry } from "prom-client";

export interface DialogMetrics {
  turns: Counter<"outcome">;
  turnSeconds: Histogram;
  toolSeconds: Histogram<"tool" | "outcome">;
  dropped: Counter<"reason">;
  reprompts: Counter<"agent">;
  leaseBusy: Counter;
  conflicts: Counter;
  unknownAgents: Counter;
}

export function createDialogMetrics(registry: Registry): DialogMetrics {
  return {
    turns: new Counter({
      name: "voicebot_dialog_turns_total",
      help: "Inputs handled by the engine, by outcome (greeting, intent, slot, collecting, reprompt, max_reprompts, ...)",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    turnSeconds: new Histogram({
      name: "voicebot_dialog_turn_duration_seconds",
      help: "Input received -> state saved (includes tool calls)",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    toolSeconds: new Histogram({
      name: "voicebot_dialog_tool_duration_seconds",
      help: "Tool calls as the dialog sees them (request -> reply), by tool and outcome",
      labelNames: ["tool", "outcome"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    dropped: new Counter({
      name: "voicebot_dialog_inputs_dropped_total",
      help: "Dialog inputs acked without a turn, by reason",
      labelNames: ["reason"],
      registers: [registry],
    }),
    reprompts: new Counter({
      name: "voicebot_dialog_reprompts_total",
      help: "Inputs that were not understood (reprompt or escalation)",
      labelNames: ["agent"],
      registers: [registry],
    }),
    leaseBusy: new Counter({
      name: "voicebot_dialog_lease_busy_total",
      help: "Inputs handed back because another replica was taking a turn of the call",
      registers: [registry],
    }),
    conflicts: new Counter({
      name: "voicebot_dialog_state_conflicts_total",
      help: "Turns redone because the dialog state changed while they ran",
      registers: [registry],
    }),
    unknownAgents: new Counter({
      name: "voicebot_dialog_unknown_agents_total",
      help: "Calls that asked for an agent that is not configured (the default agent took them)",
      registers: [registry],
    }),
  };
}
