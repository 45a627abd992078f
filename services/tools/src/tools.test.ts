import { Bus, silentLogger, subjects } from "@voicebot/bus";
import { CallControl, CallControl_Action, ToolCallRequest, ToolCallResult } from "@voicebot/proto";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { CallStore } from "@voicebot/state";
import { metricSum, startNats, startRedis, waitFor, type ServerHandle } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { definition } from "./service.js";

let nats: ServerHandle;
let redis: ServerHandle;
let service: ServiceHandle;
let bus: Bus;
let store: CallStore;
let callCounter = 0;

beforeAll(async () => {
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  service = await startService(definition, { NATS_URL: nats.url, REDIS_URL: redis.url, HTTP_PORT: "0", LOG_LEVEL: "error", TRANSFER_ALLOWED_TARGETS: "+15557654321" });
  bus = await Bus.connect({ servers: nats.url, name: "tools-test", log: silentLogger, registry: new Registry() });
  store = CallStore.connect(redis.url);
});

afterAll(async () => {
  await bus?.close();
  await store?.close();
  await service?.stop();
  await Promise.all([nats?.stop(), redis?.stop()]);
});

async function newCall(): Promise<string> {
  const callId = `CAtools${++callCounter}${Date.now()}`;
  await store.createCall({ callSid: callId, provider: "twilio", streamSid: "MZ1", agent: "order-line", from: "+1555", to: "+1666", startedAt: new Date().toISOString() });
  return callId;
}

function call(callId: string, name: string, args: unknown, extra: Partial<ToolCallRequest> = {}): Promise<ToolCallResult> {
  const request = ToolCallRequest.create({
    callId,
    toolCallId: `${name}-${Math.random().toString(36).slice(2)}`,
    name,
    argumentsJson: typeof args === "string" ? args : JSON.stringify(args),
    turnId: "t2",
    agent: "order-line",
    ...extra,
  });
  return bus.request(subjects.toolsCall, ToolCallRequest, request, ToolCallResult, 5_000, callId);
}

function controls(callId: string): CallControl[] {
  const received: CallControl[] = [];
  bus.subscribe(subjects.control(callId), CallControl, (m) => void received.push(m), { name: "test.control" });
  return received;
}

const metric = (name: string, labels: Record<string, string>) => metricSum(service.ctx.registry, name, labels);

/** The call record once it holds `count` tool calls. */
async function waitForToolCalls(callId: string, count: number) {
  await waitFor(async () => ((await store.getRecord(callId))?.toolCalls.length ?? 0) >= count, { what: `${count} tool call lines` });
  return store.getRecord(callId);
}

describe("tools service", () => {
  it("looks up a shipped order, normalizing keyed input", async () => {
    const callId = await newCall();
    const result = await call(callId, "lookup_order", { order_number: "#12 345#" });
    expect(result.ok).toBe(true);
    const value = JSON.parse(result.resultJson);
    expect(value).toMatchObject({ found: true, order_number: "12345", status: "shipped", carrier: "UPS" });
    expect(value.eta).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(value.eta_text).toMatch(/^[A-Z][a-z]+day, [A-Z][a-z]+ \d{1,2}$/);

    // An idempotent tool is answered before its record line is written: it comes right after.
    const record = await waitForToolCalls(callId, 1);
    expect(record!.toolCalls[0]).toMatchObject({ name: "lookup_order", ok: true, arguments: { order_number: "#12 345#" } });
    expect(record!.toolCalls[0].result).toMatchObject({ status: "shipped" });
    expect(await metric("voicebot_tools_calls_total", { tool: "lookup_order", outcome: "ok" })).toBeGreaterThan(0);
  });

  it("knows the other demo orders and says found:false for unknown ones", async () => {
    const callId = await newCall();
    const processing = JSON.parse((await call(callId, "lookup_order", { order_number: 67890 })).resultJson);
    expect(processing).toMatchObject({ found: true, status: "processing" });
    const delivered = JSON.parse((await call(callId, "lookup_order", { order_number: "five five five five five" })).resultJson);
    expect(delivered).toMatchObject({ found: true, status: "delivered" });
    expect(delivered.delivered_text).toBeTruthy();
    const missing = await call(callId, "lookup_order", { order_number: "99999" });
    expect(missing.ok).toBe(true);
    expect(JSON.parse(missing.resultJson)).toMatchObject({ found: false });
  });

  it("rejects unknown tools and bad arguments with error codes", async () => {
    const callId = await newCall();
    const unknown = await call(callId, "launch_rocket", {});
    expect(unknown).toMatchObject({ ok: false, errorCode: "unknown_tool" });
    const badJson = await call(callId, "lookup_order", "{not json");
    expect(badJson).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
    const noDigits = await call(callId, "lookup_order", { order_number: "hello" });
    expect(noDigits).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
    const missing = await call(callId, "lookup_order", {});
    expect(missing).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
    // A number too long for JSON's numbers lost digits on parsing: refused, not looked up as some other number.
    const lossy = await call(callId, "lookup_order", '{"order_number": 12345678901234567890}');
    expect(lossy).toMatchObject({ ok: false, errorCode: "invalid_arguments", errorMessage: "order_number must be sent as a string (a number this long loses digits)" });

    const record = await waitForToolCalls(callId, 5);
    expect(record!.toolCalls.map((t) => [t.name, t.ok])).toEqual([
      ["launch_rocket", false],
      ["lookup_order", false],
      ["lookup_order", false],
      ["lookup_order", false],
      ["lookup_order", false],
    ]);
    expect(record!.toolCalls[0].error).toContain("unknown_tool");
    expect(await metric("voicebot_tools_calls_total", { tool: "unknown", outcome: "unknown_tool" })).toBe(1);
  });

  it("refuses requests for unknown calls without recording them", async () => {
    const result = await call("CAnosuchcall", "lookup_order", { order_number: "12345" });
    expect(result).toMatchObject({ ok: false, errorCode: "failed" });
    expect(await store.getRecord("CAnosuchcall")).toBeUndefined();
  });

  it("end_call publishes a hang-up after the request's turn", async () => {
    const callId = await newCall();
    const received = controls(callId);
    await bus.nc.flush();
    const result = await call(callId, "end_call", { reason: "caller said goodbye" }, { turnId: "t4" });
    expect(result.ok).toBe(true);
    await waitFor(() => received.length === 1, { what: "CallControl" });
    expect(received[0]).toMatchObject({ callId, action: CallControl_Action.ACTION_HANGUP, afterTurnId: "t4", reason: "caller said goodbye" });
  });

  it("transfer_to_human publishes a transfer to the default or the given target", async () => {
    const callId = await newCall();
    const received = controls(callId);
    await bus.nc.flush();
    expect((await call(callId, "transfer_to_human", {}, { turnId: "t3" })).ok).toBe(true);
    expect((await call(callId, "transfer_to_human", { target: "+15557654321", reason: "billing" }, { turnId: "t5" })).ok).toBe(true);
    expect(await call(callId, "transfer_to_human", { target: "not a number" })).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
    // A number the model chose (a caller can steer it) that is neither TRANSFER_TARGET nor allowed is not dialled.
    expect(await call(callId, "transfer_to_human", { target: "+881234567890" })).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
    await waitFor(() => received.length === 2, { what: "two CallControls" });
    expect(received[0]).toMatchObject({ action: CallControl_Action.ACTION_TRANSFER, target: "+15550100", afterTurnId: "t3" });
    expect(received[1]).toMatchObject({ action: CallControl_Action.ACTION_TRANSFER, target: "+15557654321", afterTurnId: "t5", reason: "billing" });
  });

  it("send_dtmf publishes SEND_DTMF with the digits after the request's turn, and refuses other characters", async () => {
    const callId = await newCall();
    const received = controls(callId);
    await bus.nc.flush();
    const result = await call(callId, "send_dtmf", { digits: "1w23#" }, { turnId: "t6" });
    expect(result.ok).toBe(true);
    expect(JSON.parse(result.resultJson)).toEqual({ action: "send_dtmf", digits: "1w23#", after_turn_id: "t6" });
    expect(await call(callId, "send_dtmf", { digits: "12; rm" })).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
    expect(await call(callId, "send_dtmf", {})).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
    await waitFor(() => received.length === 1, { what: "CallControl" });
    expect(received[0]).toMatchObject({ callId, action: CallControl_Action.ACTION_SEND_DTMF, target: "1w23#", afterTurnId: "t6" });
  });

  it("runs a toolCallId once: a retry gets the stored result", async () => {
    const callId = await newCall();
    const received = controls(callId);
    await bus.nc.flush();
    const first = await call(callId, "end_call", {}, { toolCallId: "in1#0", turnId: "t2" });
    const second = await call(callId, "end_call", {}, { toolCallId: "in1#0", turnId: "t2" });
    expect(first.ok).toBe(true);
    expect(second).toEqual(first);
    const record = await store.getRecord(callId);
    expect(record!.toolCalls).toHaveLength(1);
    // Let any second (wrong) CallControl arrive before counting.
    await bus.nc.flush();
    await call(callId, "lookup_order", { order_number: "1" });
    expect(received).toHaveLength(1);
  });

  it("runs concurrent duplicates once", async () => {
    const callId = await newCall();
    const received = controls(callId);
    await bus.nc.flush();
    const results = await Promise.all(
      Array.from({ length: 5 }, () => call(callId, "transfer_to_human", {}, { toolCallId: "dup#0", turnId: "t3" })),
    );
    for (const r of results) expect(r).toEqual(results[0]);
    expect(results[0].ok).toBe(true);
    const record = await store.getRecord(callId);
    expect(record!.toolCalls).toHaveLength(1);
    await call(callId, "lookup_order", { order_number: "1" });
    expect(received).toHaveLength(1);
  });
});
