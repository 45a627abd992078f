import { readFileSync } from "node:fs";
import { isNatsCreds, nkeys, parseNatsServers, type NatsAuth, type NatsTls } from "@voicebot/bus";
import { redisDatabase, type RedisTarget } from "@voicebot/state";

/**
 * Typed configuration from environment variables. Every bad value is collected and reported together,
 * so an operator fixes a deployment in one go.
 */
export class ConfigError extends Error {}

type Env = Record<string, string | undefined>;

export class EnvReader {
  private readonly problems: string[] = [];
  constructor(private readonly env: Env = process.env) {}

  string(name: string, fallback: string): string {
    const raw = this.env[name];
    return raw === undefined || raw === "" ? fallback : raw;
  }

  /** The value exactly as set ("" included); undefined when unset. */
  raw(name: string): string | undefined {
    return this.env[name];
  }

  /** Reports a problem no single reader method can see (e.g. two settings that conflict). */
  problem(message: string): void {
    this.problems.push(message);
  }

  optional(name: string): string | undefined {
    const raw = this.env[name];
    return raw === undefined || raw === "" ? undefined : raw;
  }

  int(name: string, fallback: number, range: { min?: number; max?: number } = {}): number {
    return this.numeric(name, fallback, range, "an integer", Number.isSafeInteger);
  }

  number(name: string, fallback: number, range: { min?: number; max?: number } = {}): number {
    return this.numeric(name, fallback, range, "a number", Number.isFinite);
  }

  /** A decimal number within `range` that `valid` accepts; the fallback (and a problem reported) otherwise. */
  private numeric(name: string, fallback: number, range: { min?: number; max?: number }, what: string, valid: (value: number) => boolean): number {
    const raw = this.env[name]?.trim();
    if (raw === undefined || raw === "") return fallback;
    const value = DECIMAL.test(raw) ? Number(raw) : NaN;
    const { min = -Infinity, max = defaultMax(name) } = range;
    if (!valid(value) || value < min || value > max) {
      this.problems.push(`${name}=${JSON.stringify(raw)} must be ${what}${rangeText(min, max)}`);
      return fallback;
    }
    return value;
  }

  bool(name: string, fallback: boolean): boolean {
    const raw = this.env[name]?.trim().toLowerCase();
    if (raw === undefined || raw === "") return fallback;
    if (["1", "true", "yes", "on"].includes(raw)) return true;
    if (["0", "false", "no", "off"].includes(raw)) return false;
    this.problems.push(`${name}=${JSON.stringify(raw)} must be true or false`);
    return fallback;
  }

  oneOf<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
    const raw = this.env[name];
    if (raw === undefined || raw === "") return fallback;
    if (!allowed.includes(raw as T)) {
      this.problems.push(`${name}=${JSON.stringify(raw)} must be one of ${allowed.join(", ")}`);
      return fallback;
    }
    return raw as T;
  }

  /** Comma-separated list whose items must each be allowed. */
  list<T extends string>(name: string, allowed: readonly T[], fallback: T[]): T[] {
    const raw = this.env[name];
    if (raw === undefined || raw.trim() === "") return fallback;
    const items = raw.split(",").map((s) => s.trim()).filter(Boolean);
    const bad = items.filter((item) => !allowed.includes(item as T));
    if (bad.length > 0 || items.length === 0) {
      this.problems.push(`${name}=${JSON.stringify(raw)}: unknown ${bad.join(", ")} (allowed: ${allowed.join(", ")})`);
      return fallback;
    }
    return items as T[];
  }

  /** The content of the file a variable names (a mounted Secret: a key, a certificate); undefined when unset. */
  file(name: string): string | undefined {
    const file = this.optional(name);
    if (file === undefined) return undefined;
    try {
      return readFileSync(file, "utf8");
    } catch (error) {
      this.problems.push(`${name}: cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
      return undefined;
    }
  }

  url(name: string, fallback: string, protocols: readonly string[]): string {
    const raw = this.string(name, fallback);
    try {
      const parsed = new URL(raw);
      if (!protocols.includes(parsed.protocol.replace(/:$/, ""))) throw new Error("protocol");
    } catch {
      this.problems.push(`${name} must be a ${protocols.join("/")} URL`);
    }
    return raw;
  }

  /** Throws one ConfigError naming every bad variable. */
  done(): void {
    if (this.problems.length > 0) throw new ConfigError(`invalid configuration: ${this.problems.join("; ")}`);
  }
}

/**
 * Decimal numbers, exponent form included (Helm prints an unquoted 2592000 as "2.592e+06"); not " " (which Number
 * reads as 0), "0x1F" or "Infinity". An integer must come out whole.
 */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;
/** Node runs a timer longer than this at once (with only a warning): a duration in ms past it meant "very long". */
const MAX_TIMER_MS = 2_147_483_647;

function defaultMax(name: string): number {
  return name.endsWith("_MS") ? MAX_TIMER_MS : Infinity;
}

function rangeText(min: number, max: number): string {
  if (min > -Infinity && max < Infinity) return ` between ${min} and ${max}`;
  if (min > -Infinity) return ` >= ${min}`;
  if (max < Infinity) return ` <= ${max}`;
  return "";
}

/** Settings every service shares. */
export interface CommonConfig {
  /** Comma-separated NATS URLs (credentials in them are used, never logged). */
  natsUrl: string;
  natsAuth?: NatsAuth;
  natsTls?: NatsTls;
  /** Copies of each JetStream work queue in a NATS cluster (NATS_STREAM_REPLICAS). */
  natsStreamReplicas: number;
  redis: RedisTarget;
  httpPort: number;
  logLevel: "debug" | "info" | "warn" | "error";
  drainTimeoutMs: number;
  instanceId: string;
}

export function readCommonConfig(env: EnvReader, defaultHttpPort: number, service: string): CommonConfig {
  return {
    natsUrl: env.string("NATS_URL", "nats://127.0.0.1:4222"),
    ...readNatsSecurity(env),
    natsStreamReplicas: env.int("NATS_STREAM_REPLICAS", 1, { min: 1, max: 5 }),
    redis: readRedisTarget(env),
    httpPort: env.int("HTTP_PORT", defaultHttpPort, { min: 0, max: 65535 }),
    logLevel: env.oneOf("LOG_LEVEL", ["debug", "info", "warn", "error"] as const, "info"),
    drainTimeoutMs: env.int("DRAIN_TIMEOUT_MS", 30_000, { min: 0 }),
    instanceId: env.string("INSTANCE_ID", `${service}-${process.env.HOSTNAME ?? "local"}-${process.pid}`),
  };
}

/**
 * NATS credentials and TLS beyond the URL: NATS_USER + NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED_FILE or
 * NATS_CREDS_FILE (one of them), and NATS_TLS_CA_FILE / NATS_TLS_CERT_FILE + NATS_TLS_KEY_FILE.
 */
function readNatsSecurity(env: EnvReader): { natsAuth?: NatsAuth; natsTls?: NatsTls } {
  try {
    parseNatsServers(env.string("NATS_URL", "nats://127.0.0.1:4222"));
  } catch (error) {
    env.problem(`NATS_URL: ${(error as Error).message}`);
  }
  const user = env.optional("NATS_USER");
  const password = env.optional("NATS_PASSWORD");
  const token = env.optional("NATS_TOKEN");
  const seed = env.file("NATS_NKEY_SEED_FILE");
  const methods: NatsAuth[] = [];
  if (user !== undefined || password !== undefined) {
    if (user === undefined || password === undefined) env.problem("NATS_USER and NATS_PASSWORD go together");
    else methods.push({ kind: "user", user, pass: password });
  }
  if (token !== undefined) methods.push({ kind: "token", token });
  if (seed !== undefined) {
    const bytes = new TextEncoder().encode(seed.trim());
    try {
      nkeys.fromSeed(bytes); // a bad seed would fail every connection attempt, reported as NATS unreachable
      methods.push({ kind: "nkey", seed: bytes });
    } catch {
      env.problem("NATS_NKEY_SEED_FILE does not hold an nkey seed (SU...)");
    }
  }
  const creds = env.file("NATS_CREDS_FILE");
  if (creds !== undefined) {
    if (isNatsCreds(creds)) methods.push({ kind: "creds", creds: new TextEncoder().encode(creds) });
    else env.problem("NATS_CREDS_FILE does not hold a NATS user JWT and its nkey seed (a .creds file)");
  }
  if (methods.length > 1) env.problem("give one NATS authentication: NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED_FILE or NATS_CREDS_FILE");
  const tls = readTls(env, "NATS");
  return { ...(methods.length === 1 ? { natsAuth: methods[0] } : {}), ...(tls ? { natsTls: tls } : {}) };
}

/**
 * Redis: REDIS_URL (redis:// or rediss://), REDIS_USERNAME / REDIS_PASSWORD, REDIS_TLS_CA_FILE /
 * REDIS_TLS_CERT_FILE + REDIS_TLS_KEY_FILE, and for Sentinel REDIS_SENTINELS (host:port, comma separated),
 * REDIS_SENTINEL_MASTER (default mymaster) and REDIS_SENTINEL_PASSWORD.
 */
function readRedisTarget(env: EnvReader): RedisTarget {
  const url = env.url("REDIS_URL", "redis://127.0.0.1:6379", ["redis", "rediss"]);
  const username = env.optional("REDIS_USERNAME");
  const password = env.optional("REDIS_PASSWORD");
  const tls = readTls(env, "REDIS");
  const sentinelList = env.optional("REDIS_SENTINELS");
  const sentinels: { host: string; port: number }[] = [];
  for (const item of sentinelList?.split(",").map((s) => s.trim()).filter(Boolean) ?? []) {
    const match = /^(\[[0-9a-fA-F:]+\]|[^:\s]+)(?::(\d{1,5}))?$/.exec(item);
    const port = Number(match?.[2] ?? 26379);
    if (!match || port < 1 || port > 65535) env.problem(`REDIS_SENTINELS: ${JSON.stringify(item)} is not host:port`);
    else sentinels.push({ host: match[1].replace(/^\[|\]$/g, ""), port });
  }
  const sentinelMaster = env.optional("REDIS_SENTINEL_MASTER");
  const sentinelPassword = env.optional("REDIS_SENTINEL_PASSWORD");
  if (sentinels.length === 0 && (sentinelMaster || sentinelPassword)) env.problem("REDIS_SENTINEL_MASTER and REDIS_SENTINEL_PASSWORD need REDIS_SENTINELS");
  const parsed = URL.canParse(url) ? new URL(url) : undefined;
  if (parsed && Number.isNaN(redisDatabase(parsed))) env.problem(`REDIS_URL: ${JSON.stringify(parsed.pathname)} is not a database number`);
  return {
    url,
    ...(username ? { username } : {}),
    ...(password ? { password } : {}),
    ...(tls ? { tls } : {}),
    ...(sentinels.length > 0 ? { sentinels, sentinelMaster: sentinelMaster ?? "mymaster" } : {}),
    ...(sentinelPassword ? { sentinelPassword } : {}),
  };
}

/** PREFIX_TLS_CA_FILE, PREFIX_TLS_CERT_FILE and PREFIX_TLS_KEY_FILE (the last two together), as PEM text. */
function readTls(env: EnvReader, prefix: string): { ca?: string; cert?: string; key?: string } | undefined {
  const ca = env.file(`${prefix}_TLS_CA_FILE`);
  const cert = env.file(`${prefix}_TLS_CERT_FILE`);
  const key = env.file(`${prefix}_TLS_KEY_FILE`);
  if ((cert === undefined) !== (key === undefined)) env.problem(`${prefix}_TLS_CERT_FILE and ${prefix}_TLS_KEY_FILE go together`);
  if (ca === undefined && cert === undefined && key === undefined) return undefined;
  return { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) };
}
