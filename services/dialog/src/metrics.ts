import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export interface DialogMetrics {
  turns: Counter<"outcome">;
  turnSeconds: Histogram;
  toolSeconds: Histogram<"tool" | "outcome">;
  dropped: Counter<"reason">;
  reprompts: Counter<"agent">;
  leaseBusy: Counter;
  earlierInputWaits: Counter<"outcome">;
  waitingInputs: Gauge;
  leaseLost: Counter;
  conflicts: Counter;
  unknownAgents: Counter;
  llmRequests: Counter<"model" | "outcome">;
  llmFirstToken: Histogram<"model">;
  llmTokens: Counter<"model" | "kind">;
  llmFallbacks: Counter<"agent" | "reason">;
  llmAnswersCut: Counter<"agent">;
  llmHistoryShortened: Counter<"agent">;
  llmToolCallsRefused: Counter<"agent" | "reason">;
  llmCircuit: Gauge<"model">;
  llmKeepWarmFailures: Counter;
  bargeIns: Counter;
  unplayedTurns: Counter<"reason">;
  cancelledTurns: Counter;
  confirmations: Counter<"outcome">;
  fillers: Counter;
  speakPublishErrors: Counter;
  restarts: Counter<"reason">;
  retriesInPlace: Counter;
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
    retriesInPlace: new Counter({
      name: "voicebot_dialog_input_retries_in_place_total",
      help: "Inputs tried again in place (keeping the call's order) after Redis or NATS failed under them",
      registers: [registry],
    }),
    waitingInputs: new Gauge({
      name: "voicebot_dialog_waiting_inputs",
      help: "Inputs this replica holds that wait for an earlier input of their call (up to DIALOG_CONCURRENCY of them give their consumer slot back)",
      registers: [registry],
    }),
    earlierInputWaits: new Counter({
      name: "voicebot_dialog_earlier_input_waits_total",
      help: "Inputs that waited for an earlier input of their call still in the queue (its replica died), by outcome (arrived, in_progress: the lease redid it, gave_up, error)",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    leaseBusy: new Counter({
      name: "voicebot_dialog_lease_busy_total",
      help: "Inputs handed back because another replica was taking a turn of the call",
      registers: [registry],
    }),
    leaseLost: new Counter({
      name: "voicebot_dialog_lease_lost_total",
      help: "Inputs this replica stopped because it paused past its lease and another replica took the turn over",
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
    llmRequests: new Counter({
      name: "voicebot_dialog_llm_requests_total",
      help: "LLM requests by outcome (ok, first_token_timeout, timeout, stalled, truncated, http_error, connection, malformed, empty, circuit_open, cancelled)",
      labelNames: ["model", "outcome"],
      registers: [registry],
    }),
    llmFirstToken: new Histogram({
      name: "voicebot_dialog_llm_first_token_seconds",
      help: "LLM request sent -> first content or tool call token",
      labelNames: ["model"],
      buckets: [0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 5],
      registers: [registry],
    }),
    llmTokens: new Counter({
      name: "voicebot_dialog_llm_tokens_total",
      help: "Tokens used, from the usage the endpoint reports at the end of a stream (kind: prompt or completion)",
      labelNames: ["model", "kind"],
      registers: [registry],
    }),
    llmFallbacks: new Counter({
      name: "voicebot_dialog_llm_fallbacks_total",
      help: "Inputs the scripted agent answered because the LLM failed, by reason",
      labelNames: ["agent", "reason"],
      registers: [registry],
    }),
    llmAnswersCut: new Counter({
      name: "voicebot_dialog_llm_answers_cut_total",
      help: "LLM answers cut off at the most one input may speak (the rest was not read from the stream)",
      labelNames: ["agent"],
      registers: [registry],
    }),
    llmHistoryShortened: new Counter({
      name: "voicebot_dialog_llm_history_shortened_total",
      help: "Conversations cut to their later half because they outgrew the model's context window (the request was sent again)",
      labelNames: ["agent"],
      registers: [registry],
    }),
    llmToolCallsRefused: new Counter({
      name: "voicebot_dialog_llm_tool_calls_refused_total",
      help: "LLM tool calls the dialog refused without calling the tool, by reason (unknown_tool, invalid_arguments, arguments_too_large)",
      labelNames: ["agent", "reason"],
      registers: [registry],
    }),
    llmCircuit: new Gauge({
      name: "voicebot_dialog_llm_circuit_state",
      help: "LLM circuit breaker of this replica: 0 closed, 1 half-open (probing), 2 open (every input falls back)",
      labelNames: ["model"],
      registers: [registry],
    }),
    llmKeepWarmFailures: new Counter({
      name: "voicebot_dialog_llm_keep_warm_failures_total",
      help: "Keep-warm requests (GET /models) to an LLM endpoint that got no answer",
      registers: [registry],
    }),
    bargeIns: new Counter({
      name: "voicebot_dialog_barge_ins_total",
      help: "Bot turns the caller talked over (PlaybackEvent INTERRUPTED inputs applied to the history)",
      registers: [registry],
    }),
    unplayedTurns: new Counter({
      name: "voicebot_dialog_unplayed_turns_total",
      help: "Bot turns ingress dropped unplayed because their audio came too late (reason: superseded, overtaken); applied to the history as unheard",
      labelNames: ["reason"],
      registers: [registry],
    }),
    cancelledTurns: new Counter({
      name: "voicebot_dialog_cancelled_turns_total",
      help: "Inputs whose speech generation was stopped by a CancelTurn (barge-in while the dialog was still producing)",
      registers: [registry],
    }),
    confirmations: new Counter({
      name: "voicebot_dialog_digit_confirmations_total",
      help: "Spoken digits read back for confirmation, and how the caller answered (asked, confirmed, corrected, rejected)",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    fillers: new Counter({
      name: "voicebot_dialog_tool_fillers_total",
      help: "Filler lines spoken because a tool took longer than TOOL_FILLER_MS",
      registers: [registry],
    }),
    speakPublishErrors: new Counter({
      name: "voicebot_dialog_speak_publish_errors_total",
      help: "SpeakRequests that could not be queued for tts (the caller misses that speech)",
      registers: [registry],
    }),
    restarts: new Counter({
      name: "voicebot_dialog_conversation_restarts_total",
      help: "Live calls whose dialog state was lost (restart: ingress re-announced the call; recovered: an input found no state): the caller is told and greeted again",
      labelNames: ["reason"],
      registers: [registry],
    }),
  };
}
