import { silentLogger } from "@voicebot/bus";
import { ToolCallRequest } from "@voicebot/proto";
import { CallStore, defaultStoreOptions, keys } from "@voicebot/state";
import { metricSum, startRedis, startTcpProxy, waitFor, type ServerHandle } from "@voicebot/testing";
import { Registry } from "prom-client";
import { performance } from "node:perf_hooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createExecutorMetrics, parseArguments, ToolExecutor } from "./executor.js";
import { normalizeOrderNumber, JsonFileOrderSource, spokenDate } from "./orders.js";
import type { Tool } from "./tool.js";

let redis: ServerHandle;
let store: CallStore;

beforeAll(async () => {
  redis = await startRedis();
  store = CallStore.connect(redis.url);
});
afterAll(async () => {
  await store?.close();
  await redis?.stop();
});

async function liveCall(callId: string) {
  await store.createCall({ callSid: callId, provider: "twilio", streamSid: "MZ", agent: "a", from: "", to: "", startedAt: "" });
}

function request(callId: string, name: string, extra: Partial<ToolCallRequest> = {}) {
  return ToolCallRequest.create({ callId, toolCallId: `${name}-1`, name, argumentsJson: "{}", turnId: "t1", ...extra });
}

describe("ToolExecutor", () => {
  it("times out a slow tool, aborts it, and records the failure", async () => {
    let aborted = false;
    const slow: Tool = {
      name: "slow",
      defaultTimeoutMs: 5_000,
      run: (_args, ctx) =>
        new Promise((resolve) => {
          ctx.signal.addEventListener("abort", () => (aborted = true));
          setTimeout(() => resolve("late"), 2_000);
        }),
    };
    const registry = new Registry();
    const executor = new ToolExecutor([slow], store, createExecutorMetrics(registry), silentLogger);
    await liveCall("CAslow");
    const started = Date.now();
    const result = await executor.handle(request("CAslow", "slow", { timeoutMs: 100 }));
    expect(Date.now() - started).toBeLessThan(1_500);
    expect(result).toMatchObject({ ok: false, errorCode: "timeout" });
    expect(aborted).toBe(true);
    const record = await store.getRecord("CAslow");
    expect(record!.toolCalls).toEqual([expect.objectContaining({ name: "slow", ok: false, result: null })]);
    const counted = (await registry.getSingleMetric("voicebot_tools_calls_total")!.get()).values;
    expect(counted).toEqual([expect.objectContaining({ labels: { tool: "slow", outcome: "timeout" }, value: 1 })]);
  });

  it("reports a throwing tool as failed", async () => {
    const broken: Tool = { name: "broken", defaultTimeoutMs: 1_000, run: async () => Promise.reject(new Error("database down")) };
    const executor = new ToolExecutor([broken], store, createExecutorMetrics(new Registry()), silentLogger);
    await liveCall("CAbroken");
    const result = await executor.handle(request("CAbroken", "broken"));
    expect(result).toMatchObject({ ok: false, errorCode: "failed", errorMessage: "database down" });
  });

  it("answers a request it fails on itself (a result it cannot write out) with outcome_unknown, counted and logged", async () => {
    const odd: Tool = { name: "odd", defaultTimeoutMs: 1_000, run: async () => ({ points: BigInt(42) }) };
    const registry = new Registry();
    const executor = new ToolExecutor([odd], store, createExecutorMetrics(registry), silentLogger);
    await liveCall("CAodd");
    const result = await executor.handle(request("CAodd", "odd"));
    expect(result).toMatchObject({ ok: false, errorCode: "outcome_unknown" });
    expect(await metricSum(registry, "voicebot_tools_internal_errors_total")).toBe(1);
  });

  it("lets a duplicate wait for the execution that claimed the id", async () => {
    let runs = 0;
    const counted: Tool = {
      name: "counted",
      defaultTimeoutMs: 2_000,
      run: async () => {
        runs++;
        await new Promise((r) => setTimeout(r, 200));
        return { runs };
      },
    };
    const executor = new ToolExecutor([counted], store, createExecutorMetrics(new Registry()), silentLogger);
    await liveCall("CAdup");
    const [a, b] = await Promise.all([executor.handle(request("CAdup", "counted")), executor.handle(request("CAdup", "counted"))]);
    expect(runs).toBe(1);
    expect(a).toEqual(b);
    expect(JSON.parse(a.resultJson)).toEqual({ runs: 1 });
  });

  it("answers an idempotent tool before its result is stored, and a tool with effects only after; idle() waits for both", async () => {
    // The tool pauses Redis writes for a while as it finishes (reads go on): what the answer waited for shows.
    const pausesWrites = (name: string, idempotent: boolean): Tool => ({
      name,
      defaultTimeoutMs: 2_000,
      idempotent,
      run: async () => {
        await store.redis.call("CLIENT", "PAUSE", "400", "WRITE");
        return { found: true };
      },
    });
    const registry = new Registry();
    const executor = new ToolExecutor([pausesWrites("lookup", true), pausesWrites("refund", false)], store, createExecutorMetrics(registry), silentLogger);
    await liveCall("CAquick");

    // Read on a connection of its own: commands behind a paused write on the same connection wait with it.
    const reader = CallStore.connect(redis.url);
    const lookup = await executor.handle(request("CAquick", "lookup"));
    expect(lookup).toMatchObject({ ok: true });
    expect(await reader.toolResult("CAquick", "lookup-1")).toBeUndefined(); // answered, not stored yet
    await executor.idle();
    expect(await reader.toolResult("CAquick", "lookup-1")).toEqual(lookup);
    expect((await reader.getRecord("CAquick"))!.toolCalls.map((t) => t.name)).toEqual(["lookup"]);

    const refund = await executor.handle(request("CAquick", "refund"));
    expect(await reader.toolResult("CAquick", "refund-1")).toEqual(refund); // stored before the answer
    await reader.close();
    expect(await metricSum(registry, "voicebot_tools_store_errors_total")).toBe(0);
  });

  it("runs an idempotent tool of a call a claim found live without a round trip first, until the call ends", async () => {
    const lookup: Tool = { name: "lookup", defaultTimeoutMs: 6_000, idempotent: true, run: async () => ({ found: true }) };
    const refund: Tool = { name: "refund", defaultTimeoutMs: 6_000, run: async () => ({ refunded: true }) };
    const registry = new Registry();
    const executor = new ToolExecutor([lookup, refund], store, createExecutorMetrics(registry), silentLogger);
    await liveCall("CAknown");
    await liveCall("CAother");
    expect(await executor.handle(request("CAknown", "lookup"))).toMatchObject({ ok: true }); // claimed: now known live
    await executor.idle();

    // Redis answers nobody for 2 s (paused from a connection of its own): far above a busy machine's slips.
    const pauser = CallStore.connect(redis.url);
    await pauser.redis.call("CLIENT", "PAUSE", "2000", "ALL");
    const timed = async (req: ToolCallRequest) => {
      const started = performance.now();
      const result = await executor.handle(req);
      return { result, ms: performance.now() - started };
    };
    const [known, withEffects, unknown] = await Promise.all([
      timed(request("CAknown", "lookup", { toolCallId: "lookup-2" })),
      timed(request("CAknown", "refund")),
      timed(request("CAother", "lookup")), // live, but this replica has not seen it: claimed first
    ]);
    await pauser.close();
    expect(known.result).toMatchObject({ ok: true, toolCallId: "lookup-2" });
    expect(known.ms).toBeLessThan(1_000);
    expect(withEffects.result).toMatchObject({ ok: true });
    expect(withEffects.ms).toBeGreaterThan(1_500);
    expect(unknown.result).toMatchObject({ ok: true });
    expect(unknown.ms).toBeGreaterThan(1_500);
    await executor.idle();
    expect(await store.toolResult("CAknown", "lookup-2")).toEqual(known.result); // stored after the answer
    expect((await store.getRecord("CAknown"))!.toolCalls.map((t) => t.name)).toEqual(["lookup", "lookup", "refund"]);
    expect(await metricSum(registry, "voicebot_tools_unclaimed_runs_total")).toBe(1);

    // The call ends (CallEnded reaches the service, which stops the call's tools): claimed again, and refused.
    await store.endCall("CAknown", "caller_hangup");
    executor.cancelCall("CAknown");
    expect(await executor.handle(request("CAknown", "lookup", { toolCallId: "lookup-3" }))).toMatchObject({ ok: false, errorMessage: "the call has ended" });
    expect(await metricSum(registry, "voicebot_tools_unclaimed_runs_total")).toBe(1);
  });

  it("a repeat from a redone turn waits for the first execution of a known call's idempotent tool instead of running it again", async () => {
    let runs = 0;
    const slowLookup: Tool = {
      name: "slow",
      defaultTimeoutMs: 2_000,
      idempotent: true,
      run: async () => {
        runs++;
        await new Promise((r) => setTimeout(r, 300));
        return { run: runs };
      },
    };
    const registry = new Registry();
    const executor = new ToolExecutor([slowLookup], store, createExecutorMetrics(registry), silentLogger);
    await liveCall("CArepeat");
    await executor.handle(request("CArepeat", "slow", { toolCallId: "warm" })); // claimed: the call is known live
    runs = 0;

    // The dialog replica running the turn dies while the tool runs; the survivor redoes the turn with the same key.
    const first = executor.handle(request("CArepeat", "slow", { toolCallId: "slow-2" }));
    await new Promise((r) => setTimeout(r, 50));
    const repeat = await executor.handle(request("CArepeat", "slow", { toolCallId: "slow-2", repeat: true }));
    expect(repeat).toEqual(await first);
    expect(runs).toBe(1);
    await executor.idle();
    // After the result is stored, a repeat reads it.
    expect(await executor.handle(request("CArepeat", "slow", { toolCallId: "slow-2", repeat: true }))).toEqual(repeat);
    expect(runs).toBe(1);
    expect(await metricSum(registry, "voicebot_tools_duplicate_requests_total")).toBe(2);
  });

  it("a duplicate whose first execution left no result runs an idempotent tool again, and times out a tool with effects", async () => {
    const lookup: Tool = { name: "lookup", defaultTimeoutMs: 100, idempotent: true, run: async () => ({ found: true }) };
    const refund: Tool = { name: "refund", defaultTimeoutMs: 100, run: async () => ({ refunded: true }) };
    const executor = new ToolExecutor([lookup, refund], store, createExecutorMetrics(new Registry()), silentLogger);
    await liveCall("CAorphan");
    // A replica claimed both and still keeps the claims, but stores no result (it hangs, or cannot write).
    const hung = { holder: "tools-hung", ttlMs: 60_000, takeStale: false };
    expect(await store.claimToolCall("CAorphan", "lookup-1", hung)).toEqual({ kind: "claimed" });
    expect(await store.claimToolCall("CAorphan", "refund-1", hung)).toEqual({ kind: "claimed" });
    const [again, refused] = await Promise.all([executor.handle(request("CAorphan", "lookup")), executor.handle(request("CAorphan", "refund"))]);
    expect(again).toMatchObject({ ok: true });
    expect(JSON.parse(again.resultJson)).toEqual({ found: true });
    expect(refused).toMatchObject({ ok: false, errorCode: "timeout" });
    await executor.idle();
    expect(await store.toolResult("CAorphan", "lookup-1")).toEqual(again);
  });

  it("a repeat of a request whose replica died mid-tool runs an idempotent tool at once, and says a tool with effects has an unknown outcome", async () => {
    let lookups = 0;
    let refunds = 0;
    const lookup: Tool = { name: "lookup", defaultTimeoutMs: 10_000, idempotent: true, run: async () => ({ found: ++lookups }) };
    const refund: Tool = { name: "refund", defaultTimeoutMs: 10_000, run: async () => ({ refunded: ++refunds }) };
    const registry = new Registry();
    const executor = new ToolExecutor([lookup, refund], store, createExecutorMetrics(registry), silentLogger, "tools-survivor");
    await liveCall("CAdied");
    // The replica that took both claimed them and died before answering: nobody keeps its claims now.
    const dead = { holder: "tools-dead", ttlMs: 600, takeStale: false };
    expect(await store.claimToolCall("CAdied", "lookup-1", dead)).toEqual({ kind: "claimed" });
    expect(await store.claimToolCall("CAdied", "refund-1", dead)).toEqual({ kind: "claimed" });
    const started = Date.now();
    const [again, unknown] = await Promise.all([executor.handle(request("CAdied", "lookup")), executor.handle(request("CAdied", "refund"))]);
    // Within the dead claim's life, not the tools' 10 s timeout plus the wait's grace.
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(again).toMatchObject({ ok: true });
    expect(lookups).toBe(1);
    expect(unknown).toMatchObject({ ok: false, errorCode: "outcome_unknown" });
    expect(refunds).toBe(0);
    expect(await metricSum(registry, "voicebot_tools_duplicate_requests_total", { kind: "taken_over" })).toBe(1);
    expect(await metricSum(registry, "voicebot_tools_duplicate_requests_total", { kind: "stale" })).toBe(1);
    await executor.idle();
    expect(await store.toolResult("CAdied", "lookup-1")).toEqual(again);
  });

  it("a repeat that reaches the replica still running the tool (its claim lapsed while it was frozen) gets that execution's result", async () => {
    let refunds = 0;
    let started = false;
    const refund: Tool = {
      name: "refund",
      defaultTimeoutMs: 10_000,
      run: async () => ((started = true), await new Promise((r) => setTimeout(r, 500)), { refunded: ++refunds }),
    };
    const registry = new Registry();
    const executor = new ToolExecutor([refund], store, createExecutorMetrics(registry), silentLogger, "tools-frozen");
    await liveCall("CAlapsed");
    const first = executor.handle(request("CAlapsed", "refund"));
    await waitFor(() => started, { what: "the tool running" });
    // Its claim ran out while this process could not keep it (frozen): to Redis it looks like a dead replica's.
    await store.redis.hset(keys.once("CAlapsed"), "tool:refund-1", "tools-frozen 1");
    const repeat = await executor.handle(request("CAlapsed", "refund", { repeat: true }));
    expect(repeat).toMatchObject({ ok: true });
    expect(JSON.parse(repeat.resultJson)).toEqual({ refunded: 1 });
    expect(await first).toEqual(repeat);
    expect(refunds).toBe(1);
    expect(await metricSum(registry, "voicebot_tools_duplicate_requests_total", { kind: "stale" })).toBe(0);
  });

  it("a replica keeps the claim of a tool that runs long: a concurrent repeat elsewhere waits for its result instead of taking it over", async () => {
    let runs = 0;
    const slowLookup: Tool = {
      name: "slow",
      defaultTimeoutMs: 10_000,
      idempotent: true,
      run: async () => (await new Promise((r) => setTimeout(r, 4_000)), { run: ++runs }),
    };
    const running = new ToolExecutor([slowLookup], store, createExecutorMetrics(new Registry()), silentLogger, "tools-a");
    const other = new ToolExecutor([slowLookup], store, createExecutorMetrics(new Registry()), silentLogger, "tools-b");
    await liveCall("CAlong");
    const first = running.handle(request("CAlong", "slow"));
    await new Promise((r) => setTimeout(r, 100));
    // Past the claim's 3 s life without keeping: the repeat would take it over and run the tool a second time.
    const repeat = await other.handle(request("CAlong", "slow", { repeat: true }));
    expect(repeat).toEqual(await first);
    expect(runs).toBe(1);
  }, 15_000);

  it("does not run a request taken up after its requester stopped waiting, and ends a late one's tool by that deadline", async () => {
    let runs = 0;
    const slow: Tool = { name: "refund", defaultTimeoutMs: 10_000, run: async () => (runs++, await new Promise((r) => setTimeout(r, 5_000)), { refunded: true }) };
    const registry = new Registry();
    const executor = new ToolExecutor([slow], store, createExecutorMetrics(registry), silentLogger);
    await liveCall("CAlate");
    // Sat 5 s with a frozen replica; the dialog gave up 3 s ago.
    const stale = await executor.handle(request("CAlate", "refund", { deadlineUnixMs: Date.now() - 3_000 }));
    expect(stale).toMatchObject({ ok: false, errorCode: "expired" });
    expect(runs).toBe(0);
    expect(await metricSum(registry, "voicebot_tools_calls_total", { outcome: "expired" })).toBe(1);
    // Taken up late, 500 ms before the dialog gives up: the tool gets what is left (plus the clock allowance), not
    // its whole 10 s.
    const started = Date.now();
    const late = await executor.handle(request("CAlate", "refund", { toolCallId: "refund-2", deadlineUnixMs: Date.now() + 500 }));
    expect(late).toMatchObject({ ok: false, errorCode: "timeout" });
    expect(Date.now() - started).toBeLessThan(4_000);
    expect(runs).toBe(1);
  });

  it("keeps no claim or result of an ended call: a tool that ran across the hang-up stores nothing, a repeat is refused", async () => {
    let runs = 0;
    const hangsUp: Tool = {
      name: "hangs_up",
      defaultTimeoutMs: 2_000,
      run: async (_args, ctx) => {
        runs++;
        await store.endCall(ctx.callId, "caller_hangup"); // the caller hangs up while the tool runs
        return { done: true };
      },
    };
    const executor = new ToolExecutor([hangsUp], store, createExecutorMetrics(new Registry()), silentLogger);
    await liveCall("CAacross");
    expect(await executor.handle(request("CAacross", "hangs_up"))).toMatchObject({ ok: true });
    expect(await executor.handle(request("CAacross", "hangs_up"))).toMatchObject({ ok: false, errorCode: "failed", errorMessage: "the call has ended" });
    expect(runs).toBe(1);
    // Only the record is left, with the record's TTL (the line of the tool that ran is in it).
    const left = await store.redis.keys("vb:{CAacross}:*");
    expect(left.sort()).toEqual([keys.meta("CAacross"), keys.toolCalls("CAacross")].sort());
    for (const key of left) expect(await store.redis.pttl(key), key).toBeLessThanOrEqual(defaultStoreOptions.recordTtlMs);
    expect((await store.getRecord("CAacross"))!.toolCalls).toEqual([expect.objectContaining({ name: "hangs_up", ok: true })]);
  });

  it("deletes a live call's stored results and claims when it ends", async () => {
    const counted: Tool = { name: "counted", defaultTimeoutMs: 1_000, run: async () => ({ at: Date.now() }) };
    const executor = new ToolExecutor([counted], store, createExecutorMetrics(new Registry()), silentLogger);
    await liveCall("CAstored");
    const first = await executor.handle(request("CAstored", "counted"));
    expect(await executor.handle(request("CAstored", "counted"))).toEqual(first); // answered from the stored result
    await store.endCall("CAstored", "caller_hangup");
    const left = await store.redis.keys("vb:{CAstored}:*");
    expect(left.sort()).toEqual([keys.meta("CAstored"), keys.toolCalls("CAstored")].sort());
  });

  describe("while Redis is unreachable", () => {
    // The store reaches the real Redis through a proxy whose link the test cuts: Redis keeps its data, as it does
    // behind a failing-over endpoint or a network partition.
    async function storeBehindProxy() {
      const proxy = await startTcpProxy(redis.port);
      const behind = CallStore.connect(`redis://127.0.0.1:${proxy.port}`);
      await waitFor(() => behind.ready, { what: "the store behind the proxy" });
      return { proxy, behind, [Symbol.asyncDispose]: async () => (await behind.close(), await proxy.close()) };
    }

    it("waits out a lost link within the tool's time: a tool with effects runs once, answers ok and is stored", async () => {
      await using link = await storeBehindProxy();
      let runs = 0;
      const hangUp: Tool = { name: "hang_up", defaultTimeoutMs: 5_000, run: async () => ({ ended: ++runs }) };
      const registry = new Registry();
      const executor = new ToolExecutor([hangUp], link.behind, createExecutorMetrics(registry), silentLogger);
      await liveCall("CAcut1");
      link.proxy.cut();
      const answer = executor.handle(request("CAcut1", "hang_up"));
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(runs).toBe(0); // the claim comes first: without it, a duplicate could run the effect again
      link.proxy.restore();
      expect(await answer).toMatchObject({ ok: true, resultJson: JSON.stringify({ ended: 1 }) });
      expect(await metricSum(registry, "voicebot_tools_link_retries_total", { step: "claim" })).toBeGreaterThan(0);
      // A duplicate gets the stored result; the record has the line.
      expect(await executor.handle(request("CAcut1", "hang_up"))).toMatchObject({ ok: true, resultJson: JSON.stringify({ ended: 1 }) });
      expect(runs).toBe(1);
      expect((await store.getRecord("CAcut1"))!.toolCalls).toEqual([expect.objectContaining({ name: "hang_up", ok: true })]);
    });

    it("a link that stays lost answers unavailable at the request's deadline, not at once", async () => {
      await using link = await storeBehindProxy();
      const hangUp: Tool = { name: "hang_up", defaultTimeoutMs: 5_000, run: async () => ({ ended: true }) };
      const executor = new ToolExecutor([hangUp], link.behind, createExecutorMetrics(new Registry()), silentLogger);
      await liveCall("CAcut2");
      link.proxy.cut();
      const started = Date.now();
      expect(await executor.handle(request("CAcut2", "hang_up", { timeoutMs: 1_200 }))).toMatchObject({ ok: false, errorCode: "unavailable" });
      // Not before its time (a failover takes seconds), and not much after (the dialog waits the timeout + 1 s).
      expect(Date.now() - started).toBeGreaterThan(900);
      expect(Date.now() - started).toBeLessThan(2_200);
    });

    it("answers a tool whose effect happened though its result cannot be stored, and keeps an idempotent tool's record line", async () => {
      await using link = await storeBehindProxy();
      let cutDuringRun = true;
      const cuts = (name: string, idempotent: boolean): Tool => ({
        name,
        idempotent,
        defaultTimeoutMs: 300,
        run: async () => {
          if (cutDuringRun) link.proxy.cut();
          return { done: name };
        },
      });
      const registry = new Registry();
      const executor = new ToolExecutor([cuts("transfer", false), cuts("lookup", true)], link.behind, createExecutorMetrics(registry), silentLogger);
      await liveCall("CAcut3");
      // The transfer happened: the model must hear so, or it would try it again under a new id.
      expect(await executor.handle(request("CAcut3", "transfer"))).toMatchObject({ ok: true });
      expect(await metricSum(registry, "voicebot_tools_store_errors_total")).toBe(1);
      link.proxy.restore();
      await waitFor(() => link.behind.ready, { what: "the link back" });
      // An idempotent tool answers at once; its result and record line are written when the link is back.
      const started = Date.now();
      expect(await executor.handle(request("CAcut3", "lookup"))).toMatchObject({ ok: true });
      expect(Date.now() - started).toBeLessThan(200);
      await new Promise((resolve) => setTimeout(resolve, 700));
      link.proxy.restore();
      await executor.idle();
      expect(await metricSum(registry, "voicebot_tools_store_errors_total")).toBe(1);
      expect((await store.getRecord("CAcut3"))!.toolCalls.map((line) => line.name)).toEqual(["lookup"]);
    });
  });

  it("does not run a tool for a call whose end it has heard, though the record does not say ended yet, nor one whose end comes during its claim", async () => {
    let transfers = 0;
    const transfer: Tool = { name: "transfer", defaultTimeoutMs: 2_000, run: async () => ({ transferred: ++transfers }) };
    const executor = new ToolExecutor([transfer], store, createExecutorMetrics(new Registry()), silentLogger);
    // Ingress announces the hang-up (CancelTurn "" and CallEnded) before its record write lands.
    await liveCall("CAhungup");
    executor.cancelCall("CAhungup");
    expect(await executor.handle(request("CAhungup", "transfer"))).toMatchObject({ ok: false, errorMessage: "the call has ended" });
    // The end arrives while the claim's round trip is under way (Redis slow for a moment).
    await liveCall("CAmidclaim");
    const pauser = CallStore.connect(redis.url);
    await pauser.redis.call("CLIENT", "PAUSE", "1500", "ALL");
    const answer = executor.handle(request("CAmidclaim", "transfer"));
    await new Promise((resolve) => setTimeout(resolve, 100));
    executor.cancelCall("CAmidclaim");
    expect(await answer).toMatchObject({ ok: false, errorCode: "cancelled" });
    await pauser.close();
    await executor.idle();
    expect(transfers).toBe(0);
  });

  it("refuses ended calls", async () => {
    const executor = new ToolExecutor([], store, createExecutorMetrics(new Registry()), silentLogger);
    await liveCall("CAended");
    await store.endCall("CAended", "hangup");
    expect(await executor.handle(request("CAended", "end_call"))).toMatchObject({ ok: false, errorCode: "failed" });
    expect(await executor.handle(request("bad id!", "end_call"))).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
  });
});

describe("arguments and orders", () => {
  it("parses JSON object arguments only", () => {
    expect(parseArguments("")).toEqual({ ok: true, value: {} });
    expect(parseArguments('{"a":1}')).toEqual({ ok: true, value: { a: 1 } });
    expect(parseArguments("[1]").ok).toBe(false);
    expect(parseArguments("nope").ok).toBe(false);
  });

  it("normalizes spoken and keyed order numbers", () => {
    expect(normalizeOrderNumber("#12345#")).toBe("12345");
    expect(normalizeOrderNumber("12 34 5")).toBe("12345");
    expect(normalizeOrderNumber("one two three four five")).toBe("12345");
    expect(normalizeOrderNumber("Order number: 6 7 eight nine oh")).toBe("67890");
    expect(normalizeOrderNumber("none")).toBe("");
  });

  it("validates the orders file and resolves relative dates", async () => {
    expect(() => JsonFileOrderSource.fromEntries([{ order_number: "x", status: "" }])).toThrow(/orders\[0\]\.order_number.*orders\[0\]\.status/);
    expect(() => JsonFileOrderSource.fromEntries([{ order_number: "1", status: "a" }, { order_number: "1", status: "b" }])).toThrow(/appears twice/);
    const source = JsonFileOrderSource.fromEntries([{ order_number: 42, status: "shipped", eta_in_days: 2 }], () => new Date("2025-03-04T23:30:00Z"));
    expect(await source.findOrder("42")).toMatchObject({ orderNumber: "42", status: "shipped", etaDate: "2025-03-06" });
    expect(spokenDate("2025-03-06")).toBe("Thursday, March 6");
    // No calendar day: no words for it (a RangeError here failed every lookup of the order).
    expect(spokenDate("2025-02-30")).toBeUndefined();
    expect(spokenDate("Thu Mar 06 2025")).toBeUndefined();
    expect(() => JsonFileOrderSource.fromEntries([{ order_number: "7", status: "shipped", eta: "2025-02-30" }])).toThrow(/orders\[0\]\.eta: must be a calendar date/);
  });
});
