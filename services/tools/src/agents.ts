// The `tools` section of the agent files (the same files the dialog service loads, from AGENTS_DIR): which tools
// each agent declares and how the tools service runs them. The dialog validates the rest of each file; this
// service checks what it needs to execute: webhook URLs, methods, headers and their secrets, argument schemas.
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv } from "ajv";
import { parse as parseYaml } from "yaml";

/**
 * Compiles the webhook tools' argument schemas (checked here, used by webhook.ts: each compiled once). Not registered
 * by their $id: tools of one file or of several agents (a copied one) may carry the same.
 */
export const schemas = new Ajv({ allErrors: true, strict: false, addUsedSchema: false });

export const WEBHOOK_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"] as const;
export type WebhookMethod = (typeof WEBHOOK_METHODS)[number];

export interface WebhookConfig {
  /** With secrets filled in. */
  url: string;
  method: WebhookMethod;
  /** With secrets filled in; never logged. */
  headers: Record<string, string>;
  /** The secret values used, so error texts can be scrubbed of them. */
  secrets: string[];
}

export interface DeclaredTool {
  agent: string;
  name: string;
  idempotent?: boolean;
  timeoutMs?: number;
  /** JSON Schema of the arguments, checked before a webhook is called. */
  parameters?: Record<string, unknown>;
  webhook?: WebhookConfig;
}

export class ToolConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join("\n"));
  }
}

const EXTENSIONS = [".json", ".yaml", ".yml"];
const SECRET = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g;
const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

/**
 * Reads the tool declarations of every agent file in `dir` (agent name = file name). Throws ToolConfigError
 * listing every problem as "<file>: tools[i] (<name>).<field>: <problem>".
 */
export async function loadDeclaredTools(
  dir: string,
  env: (name: string) => string | undefined,
  builtins: readonly string[],
): Promise<Map<string, DeclaredTool[]>> {
  let entries: string[];
  try {
    entries = (await readdir(dir)).filter((f) => EXTENSIONS.includes(path.extname(f))).sort();
  } catch (error) {
    throw new ToolConfigError([`${dir}: cannot read the agents directory: ${(error as Error).message}`]);
  }
  const problems: string[] = [];
  const agents = new Map<string, DeclaredTool[]>();
  for (const entry of entries) {
    const file = path.join(dir, entry);
    const agent = entry.slice(0, -path.extname(entry).length);
    let raw: unknown;
    try {
      const text = await readFile(file, "utf8");
      raw = entry.endsWith(".json") ? JSON.parse(text) : parseYaml(text, { uniqueKeys: true });
    } catch (error) {
      problems.push(`${file}: cannot be parsed: ${(error as Error).message.replace(/\s+/g, " ").trim()}`);
      continue;
    }
    agents.set(agent, declaredTools(raw, agent, file, env, builtins, problems));
  }
  if (problems.length > 0) throw new ToolConfigError(problems);
  return agents;
}

/** Validates one agent file's tool declarations (problems are appended). Exported for tests. */
export function declaredTools(
  raw: unknown,
  agent: string,
  file: string,
  env: (name: string) => string | undefined,
  builtins: readonly string[],
  problems: string[],
): DeclaredTool[] {
  const list = raw && typeof raw === "object" && !Array.isArray(raw) ? (raw as Record<string, unknown>).tools : undefined;
  if (list === undefined) return [];
  if (!Array.isArray(list)) {
    problems.push(`${file}: tools: must be a list of tools`);
    return [];
  }
  const tools: DeclaredTool[] = [];
  list.forEach((item, i) => {
    const problem = (field: string, text: string) => problems.push(`${file}: tools[${i}]${name ? ` (${name})` : ""}${field ? `.${field}` : ""}: ${text}`);
    const obj = item && typeof item === "object" && !Array.isArray(item) ? (item as Record<string, unknown>) : undefined;
    const name = typeof obj?.name === "string" ? obj.name : "";
    if (!obj) return problem("", "must be an object");
    if (!name) return problem("name", "is required");
    const tool: DeclaredTool = { agent, name };
    if (obj.idempotent !== undefined) {
      if (typeof obj.idempotent !== "boolean") problem("idempotent", "must be true or false");
      else tool.idempotent = obj.idempotent;
    }
    if (obj.timeoutMs !== undefined) {
      if (!Number.isInteger(obj.timeoutMs) || (obj.timeoutMs as number) < 100 || (obj.timeoutMs as number) > 30_000) {
        problem("timeoutMs", "must be an integer between 100 and 30000");
      } else tool.timeoutMs = obj.timeoutMs as number;
    }
    if (obj.parameters !== undefined) {
      try {
        schemas.compile(obj.parameters as object);
        tool.parameters = obj.parameters as Record<string, unknown>;
      } catch (error) {
        problem("parameters", `is not a valid JSON Schema: ${(error as Error).message}`);
      }
    }
    if (obj.webhook === undefined) {
      if (!builtins.includes(name)) problem("", `is not a built-in tool (${builtins.join(", ")}) and has no webhook`);
    } else {
      if (builtins.includes(name)) problem("name", `"${name}" is a built-in tool; a webhook needs another name`);
      tool.webhook = webhookConfig(obj.webhook, env, (field, text) => problem(`webhook${field ? `.${field}` : ""}`, text));
    }
    tools.push(tool);
  });
  return tools;
}

function webhookConfig(
  raw: unknown,
  env: (name: string) => string | undefined,
  problem: (field: string, text: string) => void,
): WebhookConfig | undefined {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    problem("", "must be an object with url, method and headers");
    return undefined;
  }
  const obj = raw as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (!key.startsWith("_") && !["url", "method", "headers"].includes(key)) problem(key, "unknown field (allowed: url, method, headers)");
  }
  const secrets: string[] = [];
  // `${NAME}` is filled from the environment (a Kubernetes secret), so no secret lives in the agent file.
  const fill = (value: string, field: string) =>
    value.replace(SECRET, (_m, name: string) => {
      // A Secret made from a file often ends in a newline: HTTP trims it from a header, so the value sent (and the
      // one to hide in error texts) is the trimmed one.
      const secret = env(name)?.trim();
      if (secret === undefined || secret === "") {
        problem(field, `uses \${${name}}, which is not set in the environment`);
        return "";
      }
      if (/[\r\n]/.test(secret)) {
        problem(field, `uses \${${name}}, whose value holds a line break`);
        return "";
      }
      secrets.push(secret);
      return secret;
    });
  let url = "";
  if (typeof obj.url !== "string" || !obj.url.trim()) problem("url", "must be a URL");
  else {
    url = fill(obj.url.trim(), "url");
    try {
      const parsed = new URL(url);
      if (parsed.protocol !== "http:" && parsed.protocol !== "https:") problem("url", "must be an http or https URL");
    } catch {
      // The value may hold a secret: do not repeat it.
      problem("url", "is not a valid URL (after filling in ${...} values)");
    }
  }
  const method = obj.method === undefined ? "POST" : typeof obj.method === "string" ? obj.method.toUpperCase() : "";
  if (!(WEBHOOK_METHODS as readonly string[]).includes(method)) problem("method", `must be one of ${WEBHOOK_METHODS.join(", ")}`);
  const headers: Record<string, string> = {};
  if (obj.headers !== undefined) {
    if (!obj.headers || typeof obj.headers !== "object" || Array.isArray(obj.headers)) problem("headers", "must be an object of header name -> value");
    else {
      for (const [name, value] of Object.entries(obj.headers as Record<string, unknown>)) {
        if (!HEADER_NAME.test(name)) problem(`headers.${name}`, "is not a valid header name");
        else if (typeof value !== "string") problem(`headers.${name}`, "must be a string");
        else headers[name] = fill(value, `headers.${name}`);
      }
    }
  }
  return { url, method: method as WebhookMethod, headers, secrets };
}

/** The dialog's shipped agents when running from a checkout of the repository (not in the tools image). */
export function defaultAgentsDir(moduleUrl: string): string | undefined {
  const candidate = new URL("../../dialog/agents", moduleUrl);
  return existsSync(candidate) ? fileURLToPath(candidate) : undefined;
}
