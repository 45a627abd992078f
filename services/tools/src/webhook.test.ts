import http from "node:http";
import type { AddressInfo } from "node:net";
import { silentLogger } from "@voicebot/bus";
import { ToolCallRequest } from "@voicebot/proto";
import { CallStore } from "@voicebot/state";
import { freePort, startRedis, type ServerHandle } from "@voicebot/testing";
import { Registry } from "prom-client";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { declaredTools, type DeclaredTool } from "./agents.js";
import { BUILTIN_TOOL_NAMES } from "./builtins.js";
import { createExecutorMetrics, ToolExecutor } from "./executor.js";
import { toolResolver } from "./service.js";
import type { Tool } from "./tool.js";

let redis: ServerHandle;
let store: CallStore;
let server: http.Server;
let base: string;
type Handler = (req: http.IncomingMessage, body: string, res: http.ServerResponse) => void;
let handler: Handler;
const received: Array<{ method: string; url: string; headers: http.IncomingHttpHeaders; body: string }> = [];
let callCounter = 0;

beforeAll(async () => {
  redis = await startRedis();
  store = CallStore.connect(redis.url);
  server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      received.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      handler(req, body, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await store?.close();
  await redis?.stop();
  await new Promise((resolve) => server?.close(resolve));
});

beforeEach(() => {
  received.length = 0;
  handler = (_req, _body, res) => void res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
});

const SECRETS: Record<string, string> = { CRM_URL: "", CRM_TOKEN: "tok-very-secret" };
const env = (name: string) => (name === "CRM_URL" ? base : SECRETS[name]);

function declare(tools: unknown[], problems: string[] = []): DeclaredTool[] {
  return declaredTools({ tools }, "crm", "crm.yaml", env, BUILTIN_TOOL_NAMES, problems);
}

const POINTS = {
  name: "get_points",
  parameters: { type: "object", properties: { member_id: { type: "string", pattern: "^[0-9]{6}$" } }, required: ["member_id"], additionalProperties: false },
  webhook: { url: "${CRM_URL}/points", method: "POST", headers: { Authorization: "Bearer ${CRM_TOKEN}" } },
};

async function newCall(): Promise<string> {
  const callId = `CAhook${++callCounter}${Date.now()}`;
  await store.createCall({ callSid: callId, provider: "twilio", streamSid: "MZ", agent: "crm", from: "", to: "", startedAt: "" });
  return callId;
}

function executorFor(declarations: DeclaredTool[], builtins: Tool[] = []) {
  const registry = new Registry();
  const metrics = createExecutorMetrics(registry);
  const executor = new ToolExecutor(toolResolver(builtins, new Map([["crm", declarations]])), store, metrics, silentLogger);
  return { executor, registry };
}

function request(callId: string, name: string, args: unknown, extra: Partial<ToolCallRequest> = {}): ToolCallRequest {
  return ToolCallRequest.create({ callId, toolCallId: `${name}-${Math.random().toString(36).slice(2)}`, name, argumentsJson: JSON.stringify(args), turnId: "t2", agent: "crm", ...extra });
}

describe("declared tools", () => {
  it("fills ${SECRET} values from the environment and reports problems without revealing secrets", () => {
    const problems: string[] = [];
    const tools = declare(
      [
        POINTS,
        { name: "lookup_order", timeoutMs: 1500 },
        { name: "missing_secret", webhook: { url: "https://crm.example.com/x", headers: { "X-Key": "${NOT_SET}" } } },
        { name: "no_webhook" },
        { name: "bad", webhook: { url: "ftp://x", method: "TRACE", headers: { "bad header": "1" }, extra: 1 }, parameters: { type: "nonsense" } },
        { name: "end_call", webhook: { url: "https://x" } },
      ],
      problems,
    );
    expect(tools[0].webhook).toEqual({ url: `${base}/points`, method: "POST", headers: { Authorization: "Bearer tok-very-secret" }, secrets: [base, "tok-very-secret"] });
    expect(tools[1]).toEqual({ agent: "crm", name: "lookup_order", timeoutMs: 1500 });
    expect(problems).toEqual([
      "crm.yaml: tools[2] (missing_secret).webhook.headers.X-Key: uses ${NOT_SET}, which is not set in the environment",
      "crm.yaml: tools[3] (no_webhook): is not a built-in tool (lookup_order, end_call, transfer_to_human, send_dtmf) and has no webhook",
      expect.stringContaining("tools[4] (bad).parameters: is not a valid JSON Schema"),
      "crm.yaml: tools[4] (bad).webhook.extra: unknown field (allowed: url, method, headers)",
      "crm.yaml: tools[4] (bad).webhook.url: must be an http or https URL",
      "crm.yaml: tools[4] (bad).webhook.method: must be one of GET, POST, PUT, PATCH, DELETE",
      "crm.yaml: tools[4] (bad).webhook.headers.bad header: is not a valid header name",
      'crm.yaml: tools[5] (end_call).name: "end_call" is a built-in tool; a webhook needs another name',
    ]);
    expect(problems.join("\n")).not.toContain("tok-very-secret");
  });

  it("takes a secret from a file-made Secret without its trailing newline (what HTTP sends, what errors must hide)", () => {
    const problems: string[] = [];
    const fromFiles = (name: string) => ({ CRM_URL: "https://crm.example.com", CRM_TOKEN: "tok-from-file\n", TWO_LINES: "tok\nsecond" })[name];
    const tools = declaredTools(
      { tools: [POINTS, { name: "broken", webhook: { url: "https://crm.example.com/x", headers: { "X-Key": "${TWO_LINES}" } } }] },
      "crm",
      "crm.yaml",
      fromFiles,
      BUILTIN_TOOL_NAMES,
      problems,
    );
    expect(tools[0].webhook).toMatchObject({ headers: { Authorization: "Bearer tok-from-file" }, secrets: ["https://crm.example.com", "tok-from-file"] });
    expect(problems).toEqual(["crm.yaml: tools[1] (broken).webhook.headers.X-Key: uses ${TWO_LINES}, whose value holds a line break"]);
  });
});

describe("webhook tools", () => {
  it("posts the arguments with the secret header and the idempotency key, and returns the JSON answer", async () => {
    handler = (_req, body, res) => void res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ points: 4200, echo: JSON.parse(body) }));
    const { executor } = executorFor(declare([POINTS]));
    const callId = await newCall();
    const result = await executor.handle(request(callId, "get_points", { member_id: "123456" }, { toolCallId: "in1/0:get_points:abc" }));
    expect(result).toMatchObject({ ok: true });
    expect(JSON.parse(result.resultJson)).toEqual({ points: 4200, echo: { member_id: "123456" } });
    expect(received[0]).toMatchObject({ method: "POST", url: "/points" });
    expect(received[0].headers).toMatchObject({
      authorization: "Bearer tok-very-secret",
      "idempotency-key": "in1/0:get_points:abc",
      "x-voicebot-call-id": callId,
      "content-type": "application/json",
    });
  });

  it("a call after a 5 s pause reuses the connection (fetch's own pool drops it after 4 s)", async () => {
    const sockets: object[] = [];
    handler = (req, _body, res) => {
      sockets.push(req.socket);
      res.writeHead(200, { "content-type": "application/json" }).end('{"points":1}');
    };
    const keepAlive = server.keepAliveTimeout;
    server.keepAliveTimeout = 0; // names no keep-alive time and never closes an idle connection itself
    try {
      const { executor } = executorFor(declare([POINTS]));
      const callId = await newCall();
      expect(await executor.handle(request(callId, "get_points", { member_id: "123456" }))).toMatchObject({ ok: true });
      await new Promise((resolve) => setTimeout(resolve, 5_000));
      expect(await executor.handle(request(callId, "get_points", { member_id: "654321" }))).toMatchObject({ ok: true });
      expect(sockets).toHaveLength(2);
      expect(sockets[1]).toBe(sockets[0]);
    } finally {
      server.keepAliveTimeout = keepAlive;
    }
  });

  it("sends GET arguments as query parameters and accepts a text answer", async () => {
    handler = (_req, _body, res) => void res.writeHead(200, { "content-type": "text/plain" }).end("gold member");
    const { executor } = executorFor(declare([{ name: "tier", parameters: { type: "object" }, webhook: { url: "${CRM_URL}/tier?src=bot", method: "get" } }]));
    const result = await executor.handle(request(await newCall(), "tier", { member_id: "123456", flags: ["a"] }));
    expect(JSON.parse(result.resultJson)).toEqual({ text: "gold member" });
    expect(received[0].url).toBe("/tier?src=bot&member_id=123456&flags=%5B%22a%22%5D");
    expect(received[0].body).toBe("");
    // The URL's own parameters are not the model's to replace (src here; an account or a key elsewhere).
    const replaced = await executor.handle(request(await newCall(), "tier", { member_id: "123456", src: "attacker" }));
    expect(replaced).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
    expect(replaced.errorMessage).toContain('"src" would replace a query parameter');
    expect(received).toHaveLength(1);
  });

  it("refuses a JSON answer over 64 KiB as too large (not as invalid JSON); one at the limit is taken", async () => {
    const json = (bytes: number) => JSON.stringify({ items: "x".repeat(bytes - 13) });
    const { executor } = executorFor(declare([POINTS]));
    handler = (_req, _body, res) => void res.writeHead(200, { "content-type": "application/json" }).end(json(64 * 1024 + 5_000));
    const big = await executor.handle(request(await newCall(), "get_points", { member_id: "123456" }));
    expect(big).toMatchObject({ ok: false });
    expect(big.errorMessage).toBe("get_points: the response is over 64 KiB (the most a tool result may be)");
    handler = (_req, _body, res) => void res.writeHead(200, { "content-type": "application/json" }).end(json(64 * 1024));
    const fits = await executor.handle(request(await newCall(), "get_points", { member_id: "123456" }));
    expect(fits.ok).toBe(true);
    expect(JSON.parse(fits.resultJson).items).toHaveLength(64 * 1024 - 13);
  });

  it("refuses a JSON answer nested too deeply to be written out again, with an answer, not a crash or silence", async () => {
    const { executor } = executorFor(declare([POINTS]));
    const depth = 20_000; // 40 KB, within the size limit; JSON.stringify overflows its stack on it
    handler = (_req, _body, res) => void res.writeHead(200, { "content-type": "application/json" }).end("[".repeat(depth) + "]".repeat(depth));
    const deep = await executor.handle(request(await newCall(), "get_points", { member_id: "123456" }));
    expect(deep).toMatchObject({ ok: false, errorCode: "failed", errorMessage: "get_points: the response is nested over 64 levels deep" });
    // 64 levels are taken.
    handler = (_req, _body, res) => void res.writeHead(200, { "content-type": "application/json" }).end("[".repeat(64) + "]".repeat(64));
    expect((await executor.handle(request(await newCall(), "get_points", { member_id: "123456" }))).ok).toBe(true);
  });

  it("takes two agents' webhook tools whose schemas carry the same $id (a copied agent file)", () => {
    const withId = (description: string) => ({ ...POINTS, parameters: { ...POINTS.parameters, $id: "https://schemas.example.com/points", description } });
    const resolve = toolResolver([], new Map([["crm", declare([withId("points")])], ["crm-copy", declare([withId("points, edited")])]]));
    expect(resolve("crm", "get_points")).toBeDefined();
    expect(resolve("crm-copy", "get_points")).toBeDefined();
    // And two tools of one file.
    const problems: string[] = [];
    const both = declare([withId("points"), { ...withId("points, again"), name: "get_points_again" }], problems);
    expect(problems).toEqual([]);
    expect(both.map((t) => t.name)).toEqual(["get_points", "get_points_again"]);
  });

  it("checks the arguments against the schema before calling", async () => {
    const { executor } = executorFor(declare([POINTS]));
    const result = await executor.handle(request(await newCall(), "get_points", { member_id: "12" }));
    expect(result).toMatchObject({ ok: false, errorCode: "invalid_arguments" });
    expect(result.errorMessage).toContain("arguments/member_id must match pattern");
    expect(received).toHaveLength(0);
  });

  it("retries an idempotent webhook on 5xx and succeeds", async () => {
    let calls = 0;
    handler = (_req, _body, res) => {
      calls++;
      if (calls < 3) res.writeHead(503).end("busy");
      else res.writeHead(200, { "content-type": "application/json" }).end('{"ok":1}');
    };
    const { executor, registry } = executorFor(declare([{ ...POINTS, idempotent: true }]));
    const result = await executor.handle(request(await newCall(), "get_points", { member_id: "123456" }));
    expect(result.ok).toBe(true);
    expect(calls).toBe(3);
    const retries = (await registry.getSingleMetric("voicebot_tools_retries_total")!.get()).values;
    expect(retries).toEqual([expect.objectContaining({ labels: { tool: "get_points" }, value: 2 })]);
  });

  it("does not retry a webhook that is not idempotent, nor a 4xx; errors never show the secret", async () => {
    handler = (req, _body, res) => void res.writeHead(500).end(`server error, you sent ${req.headers.authorization}`);
    const { executor } = executorFor(declare([POINTS]));
    const failed = await executor.handle(request(await newCall(), "get_points", { member_id: "123456" }));
    expect(failed).toMatchObject({ ok: false, errorCode: "failed" });
    expect(received).toHaveLength(1);
    expect(failed.errorMessage).toBe("get_points: HTTP 500: server error, you sent Bearer ***");
    // Echoed across the 300-character cut, the secret still leaves nothing of itself.
    received.length = 0;
    handler = (req, _body, res) => void res.writeHead(500).end(`${"x".repeat(288)} ${req.headers.authorization}`);
    const cut = await executor.handle(request(await newCall(), "get_points", { member_id: "123456" }));
    expect(cut.errorMessage).not.toContain("tok-");

    received.length = 0;
    handler = (_req, _body, res) => void res.writeHead(404, { "content-type": "application/json" }).end('{"error":"no such member"}');
    const idempotent = executorFor(declare([{ ...POINTS, idempotent: true }])).executor;
    const missing = await idempotent.handle(request(await newCall(), "get_points", { member_id: "123456" }));
    expect(missing.errorMessage).toBe('get_points: HTTP 404: {"error":"no such member"}');
    expect(received).toHaveLength(1);
  });

  it("times out a slow webhook within the declared timeout", async () => {
    handler = (_req, _body, res) => void setTimeout(() => res.writeHead(200).end("{}"), 1_500);
    const { executor } = executorFor(declare([{ ...POINTS, timeoutMs: 200 }]));
    const started = Date.now();
    const result = await executor.handle(request(await newCall(), "get_points", { member_id: "123456" }));
    expect(result).toMatchObject({ ok: false, errorCode: "timeout" });
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it("reports an unreachable backend without its URL", async () => {
    const problems: string[] = [];
    const port = await freePort(); // nothing listens there
    const tools = declaredTools({ tools: [{ name: "down", webhook: { url: `http://127.0.0.1:${port}/x?key=\${CRM_TOKEN}` } }] }, "crm", "crm.yaml", env, BUILTIN_TOOL_NAMES, problems);
    const { executor } = executorFor(tools);
    const result = await executor.handle(request(await newCall(), "down", {}));
    expect(result).toMatchObject({ ok: false, errorCode: "failed" });
    expect(result.errorMessage).toMatch(/^down: connection failed \(ECONNREFUSED\)$/);
  });

  it("resolves tools per agent: an agent's webhook is unknown to other agents; built-ins get the agent's timeout", async () => {
    const slow: Tool = { name: "lookup_order", defaultTimeoutMs: 5_000, idempotent: true, run: () => new Promise((r) => setTimeout(() => r({ found: false }), 1_000)) };
    const { executor } = executorFor(declare([POINTS, { name: "lookup_order", timeoutMs: 150 }]), [slow]);
    const callId = await newCall();
    expect(await executor.handle(request(callId, "get_points", { member_id: "123456" }, { agent: "other" }))).toMatchObject({ ok: false, errorCode: "unknown_tool" });
    expect(await executor.handle(request(callId, "lookup_order", { order_number: "1" }))).toMatchObject({ ok: false, errorCode: "timeout" });
  });
});
