import { apiDispatcher, hideSecret } from "@voicebot/service-kit";
import type { ValidateFunction } from "ajv";
import { schemas, type DeclaredTool, type WebhookConfig } from "./agents.js";
import { InvalidArgumentsError, PermanentToolError, type Tool } from "./tool.js";

/** Used when neither the request nor the declaration sets a timeout. */
export const WEBHOOK_DEFAULT_TIMEOUT_MS = 5_000;
/** Most of a response body that is read (the rest is not what a phone conversation needs). */
const MAX_RESPONSE_BYTES = 64 * 1024;
/** Deepest nesting of a JSON response taken (a few thousand levels overflow JSON.stringify's stack). */
const MAX_RESPONSE_DEPTH = 64;
/** Most of an error body quoted back (to the LLM and the call record). */
const MAX_ERROR_TEXT = 300;

/**
 * An HTTP webhook declared in an agent file: arguments are checked against the declared JSON Schema, then sent
 * as a JSON body (POST/PUT/PATCH) or as query parameters (GET/DELETE), with the declared headers and an
 * Idempotency-Key. A 2xx JSON body is the result; 4xx is a permanent failure; 5xx, 408, 429 and network errors
 * are retried when the tool is declared idempotent. Error texts never hold the URL, headers or secrets.
 */
export function webhookTool(declaration: DeclaredTool & { webhook: WebhookConfig }): Tool {
  const { name, webhook } = declaration;
  const validate: ValidateFunction = schemas.compile(declaration.parameters ?? { type: "object" });
  const scrub = (text: string) => webhook.secrets.reduce(hideSecret, text);
  return {
    name,
    defaultTimeoutMs: declaration.timeoutMs ?? WEBHOOK_DEFAULT_TIMEOUT_MS,
    idempotent: declaration.idempotent ?? false,
    async run(args, ctx) {
      if (!validate(args)) throw new InvalidArgumentsError(schemas.errorsText(validate.errors, { dataVar: "arguments" }));
      const url = new URL(webhook.url);
      const hasBody = !["GET", "DELETE"].includes(webhook.method);
      if (!hasBody) {
        for (const [key, value] of Object.entries(args)) {
          if (value === undefined || value === null) continue;
          // The configured URL's own parameters (an account, a key) are not the model's to replace.
          if (url.searchParams.has(key)) throw new InvalidArgumentsError(`argument ${JSON.stringify(key)} would replace a query parameter of the webhook's URL`);
          url.searchParams.set(key, typeof value === "object" ? JSON.stringify(value) : String(value));
        }
      }
      let response: Response;
      try {
        response = await fetch(url, {
          method: webhook.method,
          headers: {
            accept: "application/json",
            ...(hasBody ? { "content-type": "application/json" } : {}),
            "idempotency-key": ctx.toolCallId,
            "x-voicebot-call-id": ctx.callId,
            "x-voicebot-agent": ctx.agent,
            ...webhook.headers,
          },
          body: hasBody ? JSON.stringify(args) : undefined,
          signal: ctx.signal,
          redirect: "error",
          // Idle connections kept 25 s (fetch's own pool: 4 s): a lookup after a pause waits for no new TLS handshake.
          dispatcher: apiDispatcher(),
        } as RequestInit);
      } catch (error) {
        if (ctx.signal.aborted) throw new Error(`${name}: request aborted`);
        // fetch's own message names the URL in some runtimes: report only the cause's code.
        const cause = (error as { cause?: { code?: string; message?: string } }).cause;
        throw new Error(`${name}: connection failed (${cause?.code ?? scrub(cause?.message ?? "network error")})`);
      }
      const { body, truncated } = await readLimited(response);
      if (!response.ok) {
        // Scrubbed before the cut: a secret echoed across it would otherwise keep its first characters.
        const text = `${name}: HTTP ${response.status}${body.trim() ? `: ${scrub(body.trim()).slice(0, MAX_ERROR_TEXT)}` : ""}`;
        const retryable = response.status >= 500 || response.status === 408 || response.status === 429;
        throw retryable ? new Error(text) : new PermanentToolError(text);
      }
      if (!body.trim()) return { ok: true, status: response.status };
      if (/json/i.test(response.headers.get("content-type") ?? "") || /^[[{]/.test(body.trim())) {
        // Cut JSON would not parse: say why, rather than blame the webhook's JSON.
        if (truncated) throw new PermanentToolError(`${name}: the response is over ${MAX_RESPONSE_BYTES / 1024} KiB (the most a tool result may be)`);
        let value: unknown;
        try {
          value = JSON.parse(body);
        } catch {
          throw new PermanentToolError(`${name}: the response is not valid JSON`);
        }
        // Parsed, deep nesting still overflows the stack when written out again (result, record, history).
        if (nestedDeeperThan(value, MAX_RESPONSE_DEPTH)) throw new PermanentToolError(`${name}: the response is nested over ${MAX_RESPONSE_DEPTH} levels deep`);
        return value;
      }
      return { text: body.slice(0, 4_000) };
    },
  };
}

/** The body, at most MAX_RESPONSE_BYTES of it; `truncated` when there was more. */
async function readLimited(response: Response): Promise<{ body: string; truncated: boolean }> {
  if (!response.body) return { body: "", truncated: false };
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.byteLength;
    if (size > MAX_RESPONSE_BYTES) {
      await reader.cancel().catch(() => undefined);
      break;
    }
  }
  return { body: Buffer.concat(chunks).subarray(0, MAX_RESPONSE_BYTES).toString("utf8"), truncated: size > MAX_RESPONSE_BYTES };
}

/** Whether a parsed JSON value nests arrays or objects deeper than `limit` (walked without recursion). */
function nestedDeeperThan(value: unknown, limit: number): boolean {
  const pending: Array<[unknown, number]> = [[value, 0]];
  while (pending.length > 0) {
    const [item, depth] = pending.pop()!;
    if (item === null || typeof item !== "object") continue;
    if (depth >= limit) return true;
    for (const child of Object.values(item)) pending.push([child, depth + 1]);
  }
  return false;
}
