import { BusError, errorText, subjects, type Bus } from "@voicebot/bus";
import { ToolCallRequest, ToolCallResult } from "@voicebot/proto";
import type { ToolOutcome } from "./engine/types.js";
import type { DialogMetrics } from "./metrics.js";

/** Wait for a tool whose request sets no timeout (the tools service applies its per-tool default, a few seconds). */
const DEFAULT_TOOL_WAIT_MS = 5_000;
/** Extra wait beyond the tool's own timeout for the request and reply to travel. */
const TRANSPORT_MARGIN_MS = 1_000;
/**
 * A tools replica confirms it took a request up at once; without that confirmation within this time the request is
 * sent again, for another replica (the one NATS chose may be frozen: NATS keeps routing to it for minutes). Far above
 * a live replica's event-loop delay; a confirmation that was merely late costs a duplicate the tools service answers
 * from the first execution (toolCallId).
 */
const TOOL_RECEIPT_MS = 500;

export interface ToolRequest {
  callId: string;
  /** Idempotency key: the same key returns the first result without running the tool again. */
  toolCallId: string;
  name: string;
  args: Record<string, unknown>;
  timeoutMs: number;
  /** The bot turn that must play before a tool acting on the call (hang-up, transfer) takes effect. */
  turnId: string;
  agent: string;
  /** A redone or replayed turn: this key may have been sent before, so tools looks for its first result. */
  repeat: boolean;
}

/** Calls tools over the bus (any tools replica answers) and turns every failure into a ToolOutcome. */
export class ToolClient {
  constructor(
    private readonly bus: Bus,
    private readonly metrics: DialogMetrics,
  ) {}

  /** `signal`: stop waiting (the call ended); the outcome is then `cancelled`. */
  async call(request: ToolRequest, signal?: AbortSignal): Promise<ToolOutcome> {
    const started = Date.now();
    const outcome = signal ? await untilAborted(this.request(request, started), signal, started) : await this.request(request, started);
    this.metrics.toolSeconds.observe({ tool: request.name, outcome: outcome.ok ? "ok" : outcome.errorCode }, outcome.ms / 1000);
    return outcome;
  }

  private async request(request: ToolRequest, started: number): Promise<ToolOutcome> {
    const waitMs = (request.timeoutMs || DEFAULT_TOOL_WAIT_MS) + TRANSPORT_MARGIN_MS;
    const message = ToolCallRequest.create({
      callId: request.callId,
      toolCallId: request.toolCallId,
      name: request.name,
      argumentsJson: JSON.stringify(request.args),
      timeoutMs: request.timeoutMs,
      turnId: request.turnId,
      agent: request.agent,
      repeat: request.repeat,
      deadlineUnixMs: started + waitMs,
    });
    let reply: ToolCallResult;
    try {
      reply = await this.bus.request(subjects.toolsCall, ToolCallRequest, message, ToolCallResult, waitMs, request.callId, {
        receiptMs: TOOL_RECEIPT_MS,
        // Sent again until one is taken up, for as long as the answer is waited for: with half the replicas frozen,
        // each sending has even odds.
        maxSends: Math.ceil(waitMs / TOOL_RECEIPT_MS),
      });
    } catch (error) {
      const code = error instanceof BusError ? (error.code === "no_responders" ? "unavailable" : error.code) : "failed";
      return { ok: false, errorCode: code, errorMessage: errorText(error), ms: Date.now() - started };
    }
    const ms = Date.now() - started;
    if (!reply.ok) return { ok: false, errorCode: reply.errorCode || "failed", errorMessage: reply.errorMessage, ms };
    try {
      return { ok: true, result: reply.resultJson ? JSON.parse(reply.resultJson) : null, ms };
    } catch (error) {
      return { ok: false, errorCode: "failed", errorMessage: `tool result is not JSON: ${errorText(error)}`, ms };
    }
  }
}

function untilAborted(outcome: Promise<ToolOutcome>, signal: AbortSignal, started: number): Promise<ToolOutcome> {
  const cancelled = (): ToolOutcome => ({ ok: false, errorCode: "cancelled", errorMessage: "the call ended", ms: Date.now() - started });
  if (signal.aborted) return Promise.resolve(cancelled());
  return new Promise((resolve) => {
    const onAbort = () => resolve(cancelled());
    signal.addEventListener("abort", onAbort, { once: true });
    outcome.then(resolve, () => resolve(cancelled())).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
