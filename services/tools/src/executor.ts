import { randomBytes } from "node:crypto";
import { errorText, isValidCallId, LogThrottle, type Logger } from "@voicebot/bus";
import { ToolCallResult, type ToolCallRequest } from "@voicebot/proto";
import { isLinkFailure, retryWhileLinkLost } from "@voicebot/service-kit";
import type { CallStore, ToolCallEntry, ToolClaim, ToolClaimHolder } from "@voicebot/state";
import { Counter, Histogram, type Registry } from "prom-client";
import { LiveCalls } from "./live-calls.js";
import { InvalidArgumentsError, PermanentToolError, type Tool } from "./tool.js";

export type ToolErrorCode = "unknown_tool" | "invalid_arguments" | "timeout" | "failed" | "cancelled" | "unavailable" | "outcome_unknown" | "expired";

/** Longest a request may ask a tool to run. */
export const MAX_TOOL_TIMEOUT_MS = 30_000;
const MAX_TOOL_CALL_ID = 200;
// How often a duplicate request looks for the result of the execution it lost the claim to.
const RESULT_POLL_MS = 20;
// Extra time a duplicate waits beyond the tool timeout for the winner to store its result.
const RESULT_WAIT_GRACE_MS = 2_000;
/** Retries of a failed idempotent tool (within its timeout), after 100 ms, then 200 ms (plus jitter). */
const MAX_RETRIES = 2;
const RETRY_BASE_MS = 100;
/** How long writes after an answer (result, record line, claim) are tried again while Redis is unreachable. */
const STORE_RETRY_MS = 20_000;
/**
 * A claim on a tool call lasts this long unless its replica keeps it, every CLAIM_KEEP_MS while the tool runs: a
 * replica that died or froze mid-tool leaves a stale claim, which a repeat of the request (sent again when the
 * replica stopped confirming it) takes over at once rather than after the whole tool timeout.
 */
const CLAIM_TTL_MS = 3_000;
const CLAIM_KEEP_MS = 1_000;
/** How far the requester's clock may be behind this one before its deadline (`deadlineUnixMs`) is believed. */
const CLOCK_SKEW_MS = 1_000;

export interface ExecutorMetrics {
  calls: Counter<"tool" | "outcome">;
  duration: Histogram<"tool">;
  duplicates: Counter<"kind">;
  unclaimed: Counter;
  retries: Counter<"tool">;
  storeErrors: Counter;
  linkRetries: Counter<"step">;
  internalErrors: Counter;
}

/** Which tool runs a request: the tools of the request's agent first (webhooks, overrides), then the built-ins. */
export type ToolResolver = (agent: string, name: string) => Tool | undefined;

export function createExecutorMetrics(registry: Registry): ExecutorMetrics {
  return {
    calls: new Counter({
      name: "voicebot_tools_calls_total",
      help: "Tool executions by tool and outcome (ok or an error code)",
      labelNames: ["tool", "outcome"],
      registers: [registry],
    }),
    duration: new Histogram({
      name: "voicebot_tools_duration_seconds",
      help: "Tool execution time",
      labelNames: ["tool"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    duplicates: new Counter({
      name: "voicebot_tools_duplicate_requests_total",
      help: "Requests answered from a stored result (stored) or after waiting for a concurrent execution (waited)",
      labelNames: ["kind"],
      registers: [registry],
    }),
    unclaimed: new Counter({
      name: "voicebot_tools_unclaimed_runs_total",
      help: "Idempotent tool requests run without a claim in Redis: a claim had found their call live moments before",
      registers: [registry],
    }),
    retries: new Counter({
      name: "voicebot_tools_retries_total",
      help: "Retries of failed idempotent tools",
      labelNames: ["tool"],
      registers: [registry],
    }),
    storeErrors: new Counter({
      name: "voicebot_tools_store_errors_total",
      help: "Claims, results or call-record lines that could not be stored (the answer went out without them)",
      registers: [registry],
    }),
    linkRetries: new Counter({
      name: "voicebot_tools_link_retries_total",
      help: "Redis steps of a tool request tried again in place because Redis was unreachable or failing over, by step",
      labelNames: ["step"],
      registers: [registry],
    }),
    internalErrors: new Counter({
      name: "voicebot_tools_internal_errors_total",
      help: "Tool requests the tools service failed on itself (answered outcome_unknown instead of left unanswered)",
      registers: [registry],
    }),
  };
}

/**
 * Runs tool requests exactly once per toolCallId: the first request claims the id and stores the result;
 * retries and concurrent duplicates get the stored result. Every execution is appended to the call record.
 */
export class ToolExecutor {
  private readonly resolve: ToolResolver;
  private readonly inFlight = new Map<Promise<unknown>, string>();
  /** Stores still being written after their answer went out (idempotent tools). */
  private readonly storing = new Set<Promise<void>>();
  /** Per call, the requests being handled for it (stopped when the call ends). */
  private readonly running = new Map<string, Set<AbortController>>();
  /** Calls a claim found live lately: their idempotent tools run without one. */
  private readonly liveCalls = new LiveCalls();
  /**
   * The tools running here, by call and tool call id: their claims are kept alive while they run, and a repeat of
   * one that reaches this replica waits for its result (its claim may have lapsed while this process was frozen).
   */
  private readonly claimsHeld = new Map<string, { claim: { callId: string; toolCallId: string; holder: string }; result: Promise<ToolCallResult> }>();
  private claimKeeper: NodeJS.Timeout | undefined;

  /**
   * `tools`: the same tools for every agent, or a resolver that knows each agent's own tools. `holder`: this
   * replica's name on the claims it holds (unique among replicas).
   */
  constructor(
    tools: Tool[] | ToolResolver,
    private readonly store: CallStore,
    private readonly metrics: ExecutorMetrics,
    private readonly log: Logger,
    private readonly holder = `tools-${randomBytes(6).toString("hex")}`,
  ) {
    if (typeof tools === "function") this.resolve = tools;
    else {
      const byName = new Map(tools.map((tool) => [tool.name, tool]));
      this.resolve = (_agent, name) => byName.get(name);
    }
  }

  /** Calls with a tool request being executed right now. */
  activeCalls(): number {
    return new Set(this.inFlight.values()).size;
  }

  /** Resolves when every execution in progress has finished and everything it stores is written. */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.inFlight.keys()]);
    await Promise.allSettled([...this.storing]);
  }

  async handle(request: ToolCallRequest): Promise<ToolCallResult> {
    const callId = request.callId;
    const cancel = new AbortController();
    let set = this.running.get(callId);
    if (!set) this.running.set(callId, (set = new Set()));
    set.add(cancel);
    const task = this.handleOnce(request, cancel.signal).catch((error: unknown) => {
      // Our own fault (a store answer we cannot read, a bug): the dialog still gets an answer now, not a timeout and
      // a resend that could run the tool again. Whether it ran is not known here.
      this.metrics.internalErrors.inc();
      this.log.error("tool request failed inside the tools service", { callId, toolCallId: request.toolCallId, tool: request.name, error: errorText(error) });
      return this.errorResult(request, "outcome_unknown", "the tools service failed while handling this request; whether the tool ran is unknown");
    });
    this.inFlight.set(task, callId);
    try {
      return await task;
    } finally {
      this.inFlight.delete(task);
      set.delete(cancel);
      if (set.size === 0 && this.running.get(callId) === set) this.running.delete(callId);
    }
  }

  /** The call ended: stops the tools running for it (a webhook's request is aborted). Returns how many. */
  cancelCall(callId: string): number {
    this.liveCalls.callEnded(callId);
    const set = this.running.get(callId);
    for (const cancel of set ?? []) cancel.abort();
    return set?.size ?? 0;
  }

  private async handleOnce(request: ToolCallRequest, cancelled: AbortSignal): Promise<ToolCallResult> {
    const arrived = Date.now();
    const { callId, toolCallId, name } = request;
    // Without a valid call and key there is nothing to record or deduplicate against: refuse before running.
    if (!isValidCallId(callId)) return this.refuse(request, "invalid_arguments", `invalid call id ${JSON.stringify(callId)}`);
    if (!toolCallId || toolCallId.length > MAX_TOOL_CALL_ID) {
      return this.refuse(request, "invalid_arguments", `tool_call_id must be 1..${MAX_TOOL_CALL_ID} characters`);
    }
    // The requester gave up before this replica took the request up (it sat here while the process was frozen or
    // starved): nobody would hear the answer, and a tool with effects run now could be run again under a new id.
    if (request.deadlineUnixMs > 0 && arrived > request.deadlineUnixMs + CLOCK_SKEW_MS) {
      return this.refuse(request, "expired", `taken up ${arrived - request.deadlineUnixMs} ms after the requester stopped waiting`);
    }
    // Ingress announces a hang-up before its record says so: a tool request of that moment (a turn still running) is
    // not run, a transfer or a webhook with effects least of all.
    if (this.liveCalls.hasEnded(callId)) return this.refuse(request, "failed", "the call has ended");
    const runningHere = this.claimsHeld.get(claimKey(callId, toolCallId));
    if (runningHere) {
      this.metrics.duplicates.inc({ kind: "waited" });
      this.log.info("tool request repeated while this replica runs it: answered with that execution's result", { callId, toolCallId, tool: name });
      return runningHere.result;
    }
    // Resolved once: its timeout, whether it may run twice, and the execution all come from it.
    const tool = this.resolve(request.agent, name);
    const timeoutMs = this.timeoutFor(request, tool);
    // The dialog waits the tool's timeout from sending the request: time spent here waiting for Redis comes out of
    // it, and so does time the request spent on its way (by the requester's deadline, when it gives one).
    const deadline = Math.min(arrived + timeoutMs, request.deadlineUnixMs > 0 ? request.deadlineUnixMs + CLOCK_SKEW_MS : Number.POSITIVE_INFINITY);
    // Each request claims as itself: a claim ioredis sent again after a lost link is then this request's own.
    const claimAs: ToolClaimHolder = { holder: `${this.holder}.${randomBytes(4).toString("hex")}`, ttlMs: CLAIM_TTL_MS, takeStale: tool?.idempotent === true };
    if (tool?.idempotent && !request.repeat && this.liveCalls.isLive(callId)) {
      // Running it twice is harmless and a claim found the call live moments ago: no round trip before it runs.
      // The claim still goes out, unawaited: a repeat of this request (a turn redone after its dialog replica died,
      // marked `repeat`, which always claims first) finds it and waits for this execution's result.
      this.metrics.unclaimed.inc();
      this.keepStoring(request, () => this.store.claimToolCall(callId, toolCallId, claimAs));
      return this.runHoldingClaim(request, tool, deadline, cancelled, claimAs.holder);
    }
    // The call's state, a stored result and the claim in one Redis round trip (every round trip here is on the
    // caller's wait for the answer), atomic with endCall: nothing is claimed for an ended call, so a request that
    // comes after the hang-up cannot run a tool again once endCall has deleted the claims.
    // A Redis failover or restart (seconds) is waited out within the tool's time rather than failing the tool.
    let firstClaim: ToolClaim<ToolCallResult>;
    try {
      firstClaim = await this.whileLinkLost("claim", request, deadline, () => this.store.claimToolCall<ToolCallResult>(callId, toolCallId, claimAs), cancelled);
    } catch (error) {
      if (!isLinkFailure(error)) throw error;
      // Not run: without the claim a duplicate could run it again, and the call may have ended meanwhile.
      return this.refuse(request, "unavailable", `call state unreachable: ${errorText(error)}`);
    }
    const waited = firstClaim.kind === "taken";
    if (waited) this.metrics.duplicates.inc({ kind: "waited" });
    const claim = firstClaim.kind === "taken" ? await this.waitForClaim(request, claimAs, deadline - Date.now() + RESULT_WAIT_GRACE_MS, cancelled) : firstClaim;
    if (claim === "cancelled") return this.errorResult(request, "cancelled", "the call ended");
    if (claim === "gave_up") {
      // The execution that claimed the id hangs, or could not store its result.
      if (!tool?.idempotent) {
        // It must not run twice: report a timeout.
        this.log.warn("duplicate tool request gave up waiting for the first execution", { callId, toolCallId, tool: name });
        return this.errorResult(request, "timeout", `an earlier request with the same tool_call_id did not finish within ${timeoutMs + RESULT_WAIT_GRACE_MS} ms`);
      }
      // Running it again is harmless: the caller gets an answer rather than a timeout.
      this.log.warn("duplicate tool request found no result of the first execution: running the idempotent tool again", { callId, toolCallId, tool: name });
      return this.runHoldingClaim(request, tool, deadline, cancelled, claimAs.holder);
    }
    switch (claim.kind) {
      case "not_live":
        return this.refuse(request, "failed", claim.call === "ended" ? "the call has ended" : "unknown call");
      case "stored":
        this.liveCalls.seenLive(callId);
        if (!waited) this.metrics.duplicates.inc({ kind: "stored" });
        this.log.info("tool request answered from stored result", { callId, toolCallId, tool: name });
        return claim.result;
      case "stale":
        // The replica running the first request died or froze before it answered: the effect may or may not have
        // happened, and running it again could do it twice. Said at once rather than after the whole timeout.
        this.metrics.duplicates.inc({ kind: "stale" });
        this.log.warn("tool request's first execution was lost with its replica: outcome unknown, not run again", { callId, toolCallId, tool: name });
        return this.errorResult(request, "outcome_unknown", "the replica running an earlier request with the same tool_call_id stopped before it answered; whether the tool ran is unknown");
    }
    // Claimed: this request runs it.
    this.liveCalls.seenLive(callId);
    if (claim.takenOver) {
      this.metrics.duplicates.inc({ kind: "taken_over" });
      this.log.warn("tool request's first execution was lost with its replica: running the idempotent tool again", { callId, toolCallId, tool: name });
    }
    return this.runHoldingClaim(request, tool, deadline, cancelled, claimAs.holder);
  }

  /** runAndStore, keeping this replica's claim on the call alive until the answer goes out. */
  private async runHoldingClaim(request: ToolCallRequest, tool: Tool | undefined, deadline: number, cancelled: AbortSignal, holder: string): Promise<ToolCallResult> {
    const claim = { callId: request.callId, toolCallId: request.toolCallId, holder };
    const key = claimKey(claim.callId, claim.toolCallId);
    const result = this.runAndStore(request, tool, deadline, cancelled);
    const held = { claim, result };
    this.claimsHeld.set(key, held);
    this.claimKeeper ??= setInterval(() => this.keepClaims(), CLAIM_KEEP_MS).unref();
    try {
      return await result;
    } finally {
      if (this.claimsHeld.get(key) === held) this.claimsHeld.delete(key);
      if (this.claimsHeld.size === 0) {
        clearInterval(this.claimKeeper);
        this.claimKeeper = undefined;
      }
    }
  }

  private readonly keepLog = new LogThrottle();

  private keepClaims(): void {
    this.store.keepToolClaims([...this.claimsHeld.values()].map((held) => held.claim), CLAIM_TTL_MS).catch((error: unknown) => {
      // Tried again at the next tick. Missed for the claim's whole life, a repeat may take it over and run an
      // idempotent tool a second time, or be told a tool with effects has an unknown outcome.
      this.metrics.linkRetries.inc({ step: "keep-claims" });
      const admitted = this.keepLog.admit("keep");
      if (admitted) this.log.warn("tool claims could not be kept alive", { claims: this.claimsHeld.size, error: errorText(error), ...admitted });
    });
  }

  /** `act` tried again while Redis is unreachable, until `deadline` or the call's end (`cancelled`, when given). */
  private whileLinkLost<T>(step: string, request: ToolCallRequest, deadline: number, act: () => Promise<T>, cancelled?: AbortSignal): Promise<T> {
    return retryWhileLinkLost(act, {
      limitMs: Math.max(0, deadline - Date.now()),
      giveUp: () => cancelled?.aborted === true,
      onRetry: (error) => this.linkRetried(step, request, error),
    });
  }

  private readonly linkLog = new LogThrottle();

  private linkRetried(step: string, request: ToolCallRequest, error: unknown): void {
    this.metrics.linkRetries.inc({ step });
    const admitted = this.linkLog.admit(step);
    if (admitted) {
      this.log.warn("tool request waits for Redis: trying again", { step, callId: request.callId, toolCallId: request.toolCallId, tool: request.name, error: errorText(error), ...admitted });
    }
  }

  /** Runs the tool within what is left of the request's time, stores its result (for repeats) and record line, and answers. */
  private async runAndStore(request: ToolCallRequest, tool: Tool | undefined, deadline: number, cancelled: AbortSignal): Promise<ToolCallResult> {
    const { callId, toolCallId } = request;
    const { result, record } = await this.execute(request, tool, Math.max(0, deadline - Date.now()), cancelled);
    // A tool stopped because its call ended writes nothing: the record is closed and nobody asks for the result;
    // the log line and metric tell it ran.
    if (cancelled.aborted) return result;
    // The result (for duplicates, kept only while the call is live) and the record line are independent writes:
    // one round trip for both.
    const store = () => Promise.all([this.store.saveToolResult(callId, toolCallId, result), this.store.appendToolCall(callId, record)]);
    if (!tool?.idempotent) {
      // Running it twice would do its effect twice: the answer waits until a duplicate is sure to find the result.
      // The effect has happened, so a store that fails is no reason to report the tool failed (the model would
      // try it again under a new id): the answer goes out, and a duplicate finds no result and reports a timeout.
      try {
        await this.whileLinkLost("store", request, Math.max(deadline, Date.now() + RESULT_WAIT_GRACE_MS), store);
      } catch (error) {
        this.metrics.storeErrors.inc();
        this.log.error("tool ran but its result was not stored", { callId, toolCallId, tool: request.name, error: errorText(error) });
      }
      return result;
    }
    // Running it again is harmless, so the caller does not wait for the writes (one Redis round trip less on the
    // turn). A duplicate meanwhile waits for the stored result as it would for a running execution.
    this.keepStoring(request, store);
    return result;
  }

  /** Writes that follow the answer, tried again while Redis is unreachable (the record line must not be lost). */
  private keepStoring(request: ToolCallRequest, write: () => Promise<unknown>): void {
    const stored = retryWhileLinkLost(write, { limitMs: STORE_RETRY_MS, onRetry: (error) => this.linkRetried("store-after-answer", request, error) });
    const writing = stored.then(
      () => undefined,
      (error: unknown) => {
        this.metrics.storeErrors.inc();
        this.log.warn("tool claim or result not stored after the answer", { callId: request.callId, toolCallId: request.toolCallId, tool: request.name, error: errorText(error) });
      },
    );
    this.storing.add(writing);
    void writing.finally(() => this.storing.delete(writing));
  }

  private timeoutFor(request: ToolCallRequest, tool: Tool | undefined): number {
    const requested = request.timeoutMs > 0 ? request.timeoutMs : (tool?.defaultTimeoutMs ?? 5_000);
    return Math.min(requested, MAX_TOOL_TIMEOUT_MS);
  }

  /** Runs the tool; returns its result and the call-record line (the caller stores both). */
  private async execute(
    request: ToolCallRequest,
    tool: Tool | undefined,
    timeoutMs: number,
    cancelled: AbortSignal,
  ): Promise<{ result: ToolCallResult; record: ToolCallEntry }> {
    const { callId, toolCallId, name } = request;
    const started = Date.now();
    let args: unknown = request.argumentsJson;
    let outcome: { ok: true; value: unknown } | { ok: false; code: ToolErrorCode; message: string };

    if (!tool) {
      outcome = { ok: false, code: "unknown_tool", message: `no tool named ${JSON.stringify(name)}` };
    } else {
      const parsed = parseArguments(request.argumentsJson);
      if (!parsed.ok) {
        outcome = { ok: false, code: "invalid_arguments", message: parsed.message };
      } else {
        args = parsed.value;
        outcome = await this.runWithTimeout(tool, parsed.value, request, timeoutMs, cancelled);
      }
    }

    const ms = Date.now() - started;
    const label = tool ? name : "unknown";
    this.metrics.calls.inc({ tool: label, outcome: outcome.ok ? "ok" : outcome.code });
    this.metrics.duration.observe({ tool: label }, ms / 1000);
    if (outcome.ok) this.log.info("tool ran", { callId, toolCallId, tool: name, ms });
    else this.log.warn("tool failed", { callId, toolCallId, tool: name, ms, errorCode: outcome.code, error: outcome.message });

    const record: ToolCallEntry = {
      name,
      arguments: args,
      result: outcome.ok ? outcome.value : null,
      ok: outcome.ok,
      ...(outcome.ok ? {} : { error: `${outcome.code}: ${outcome.message}` }),
      ms,
      at: new Date(started).toISOString(),
    };
    const result = ToolCallResult.create({
      callId,
      toolCallId,
      name,
      ok: outcome.ok,
      resultJson: outcome.ok ? JSON.stringify(outcome.value ?? null) : "",
      errorCode: outcome.ok ? "" : outcome.code,
      errorMessage: outcome.ok ? "" : outcome.message,
      durationMs: ms,
    });
    return { result, record };
  }

  private async runWithTimeout(
    tool: Tool,
    args: Record<string, unknown>,
    request: ToolCallRequest,
    timeoutMs: number,
    cancelled: AbortSignal,
  ): Promise<{ ok: true; value: unknown } | { ok: false; code: ToolErrorCode; message: string }> {
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    let onCancel: (() => void) | undefined;
    const stopped = new Promise<"timeout" | "cancelled">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
      onCancel = () => resolve("cancelled");
      if (cancelled.aborted) onCancel();
      else cancelled.addEventListener("abort", onCancel, { once: true });
    });
    // The call ended while its claim was on its way: not started (a built-in's control message goes out at once).
    if (cancelled.aborted) {
      clearTimeout(timer);
      return { ok: false, code: "cancelled", message: `${tool.name} not run: the call ended` };
    }
    const run = this.runWithRetries(tool, args, request, abort.signal, Date.now() + timeoutMs);
    try {
      const value = await Promise.race([run, stopped]);
      if (value === "timeout" || value === "cancelled") {
        abort.abort();
        run.catch(() => undefined); // the late outcome is not wanted
        if (value === "cancelled") return { ok: false, code: "cancelled", message: `${tool.name} stopped: the call ended` };
        return { ok: false, code: "timeout", message: `${tool.name} did not finish within ${timeoutMs} ms` };
      }
      return { ok: true, value };
    } catch (error) {
      if (error instanceof InvalidArgumentsError) return { ok: false, code: "invalid_arguments", message: error.message };
      return { ok: false, code: "failed", message: errorText(error) };
    } finally {
      clearTimeout(timer);
      if (onCancel) cancelled.removeEventListener("abort", onCancel);
    }
  }

  /** Runs the tool; a failure of an idempotent tool is tried again after a short back-off while time is left. */
  private async runWithRetries(tool: Tool, args: Record<string, unknown>, request: ToolCallRequest, signal: AbortSignal, deadline: number): Promise<unknown> {
    const ctx = { callId: request.callId, turnId: request.turnId, agent: request.agent, toolCallId: request.toolCallId, signal };
    for (let attempt = 0; ; attempt++) {
      try {
        return await tool.run(args, ctx);
      } catch (error) {
        const permanent = error instanceof InvalidArgumentsError || error instanceof PermanentToolError;
        const backoff = RETRY_BASE_MS * 2 ** attempt * (1 + Math.random() * 0.25);
        if (permanent || !tool.idempotent || attempt >= MAX_RETRIES || signal.aborted || Date.now() + backoff >= deadline) throw error;
        this.metrics.retries.inc({ tool: tool.name });
        this.log.info("tool failed; retrying", { callId: request.callId, toolCallId: request.toolCallId, tool: tool.name, attempt: attempt + 1, error: errorText(error) });
        await new Promise((resolve) => setTimeout(resolve, backoff));
        if (signal.aborted) throw error;
      }
    }
  }

  /**
   * Another request holds the claim: looks again until it stored its result, its holder stopped keeping it (stale,
   * or taken over here for an idempotent tool), or `waitMs` passed ("gave_up").
   */
  private async waitForClaim(
    request: ToolCallRequest,
    claimAs: ToolClaimHolder,
    waitMs: number,
    cancelled: AbortSignal,
  ): Promise<Exclude<ToolClaim<ToolCallResult>, { kind: "taken" }> | "cancelled" | "gave_up"> {
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      if (cancelled.aborted) return "cancelled";
      try {
        const claim = await this.store.claimToolCall<ToolCallResult>(request.callId, request.toolCallId, claimAs);
        if (claim.kind !== "taken") return claim;
      } catch (error) {
        if (!isLinkFailure(error)) throw error;
        this.linkRetried("wait-for-result", request, error); // Redis away: look again until the deadline
      }
      await new Promise((resolve) => setTimeout(resolve, RESULT_POLL_MS));
    }
    return "gave_up";
  }

  /** Refusals are counted in full and logged in samples (a flood of bad requests must not flood the log). */
  private readonly refusedLog = new LogThrottle();

  private refuse(request: ToolCallRequest, code: ToolErrorCode, message: string): ToolCallResult {
    this.metrics.calls.inc({ tool: this.resolve(request.agent, request.name) ? request.name : "unknown", outcome: code });
    const admitted = this.refusedLog.admit(code);
    if (admitted) {
      this.log.warn("tool request refused", {
        callId: request.callId.slice(0, 140),
        toolCallId: request.toolCallId.slice(0, 140),
        tool: request.name.slice(0, 80),
        errorCode: code,
        error: message,
        ...admitted,
      });
    }
    return this.errorResult(request, code, message);
  }

  private errorResult(request: ToolCallRequest, code: ToolErrorCode, message: string): ToolCallResult {
    return ToolCallResult.create({
      callId: request.callId,
      toolCallId: request.toolCallId,
      name: request.name,
      ok: false,
      errorCode: code,
      errorMessage: message,
    });
  }
}

export function parseArguments(json: string): { ok: true; value: Record<string, unknown> } | { ok: false; message: string } {
  if (json.trim() === "") return { ok: true, value: {} };
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (error) {
    return { ok: false, message: `arguments are not valid JSON: ${errorText(error)}` };
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) return { ok: false, message: "arguments must be a JSON object" };
  return { ok: true, value: value as Record<string, unknown> };
}

function claimKey(callId: string, toolCallId: string): string {
  return `${callId}\u0000${toolCallId}`;
}
