import type { Logger } from "@voicebot/bus";

type Level = "debug" | "info" | "warn" | "error";
const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

// Field names whose values never reach a log line.
const SECRET_FIELD = /(key|token|secret|password|passwd|authorization|auth|credential|cookie)/i;
// Userinfo in URLs: redis://:pass@host and https://user:pass@host keep the user; nats://token@host is all secret.
const URL_CREDENTIALS = /(\b[a-z][a-z0-9+.-]*:\/\/)([^/\s]+)@/gi; // to the last @: a password may hold one
const hideUserinfo = (text: string) =>
  text.replace(URL_CREDENTIALS, (_all, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(":");
    return `${scheme}${colon >= 0 ? userinfo.slice(0, colon) + ":" : ""}***@`;
  });

/** `text` with every occurrence of `secret` (an API key, a token) masked; a cause quoted by a library may hold it. */
export function hideSecret(text: string, secret: string): string {
  return secret ? text.split(secret).join("***") : text;
}

export function redact(value: unknown, depth = 0): unknown {
  if (typeof value === "string") return hideUserinfo(value);
  if (value instanceof Error) return hideUserinfo(value.message);
  if (!value || typeof value !== "object") return value;
  // Deeper than any field we log on purpose: left out rather than written unredacted.
  if (depth > 4) return "[…]";
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = SECRET_FIELD.test(k) && v ? "***" : redact(v, depth + 1);
  return out;
}

/** One JSON object per line on stdout; secrets redacted by field name and in URLs. */
export function createLogger(
  base: Record<string, unknown>,
  level: Level = "info",
  write: (line: string) => void = (line) => process.stdout.write(line + "\n"),
): Logger {
  const min = order[level];
  const emit = (lvl: Level, msg: string, fields?: Record<string, unknown>) => {
    if (order[lvl] < min) return;
    const record = { time: new Date().toISOString(), level: lvl, ...base, msg, ...(fields ? (redact(fields) as object) : {}) };
    write(JSON.stringify(record));
  };
  return {
    debug: (msg, fields) => emit("debug", msg, fields),
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
    child: (fields) => createLogger({ ...base, ...fields }, level, write),
  };
}

export function isLevel(value: string): value is Level {
  return value in order;
}
