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
    const raw = this.env[name];
    if (raw === undefined || raw === "") return fallback;
    const value = Number(raw);
    const { min = -Infinity, max = Infinity } = range;
    if (!Number.isInteger(value) || value < min || value > max) {
      this.problems.push(`${name}=${JSON.stringify(raw)} must be an integer${rangeText(min, max)}`);
      return fallback;
    }
    return value;
  }

  number(name: string, fallback: number, range: { min?: number; max?: number } = {}): number {
    const raw = this.env[name];
    if (raw === undefined || raw === "") return fallback;
    const value = Number(raw);
    const { min = -Infinity, max = Infinity } = range;
    if (!Number.isFinite(value) || value < min || value > max) {
      this.problems.push(`${name}=${JSON.stringify(raw)} must be a number${rangeText(min, max)}`);
      return fallback;
    }
    return value;
  }

  bool(name: string, fallback: boolean): boolean {
    const raw = this.env[name]?.toLowerCase();
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

function rangeText(min: number, max: number): string {
  if (min > -Infinity && max < Infinity) return ` between ${min} and ${max}`;
  if (min > -Infinity) return ` >= ${min}`;
  if (max < Infinity) return ` <= ${max}`;
  return "";
}

/** Settings every service shares. */
export interface CommonConfig {
  natsUrl: string;
  redisUrl: string;
  httpPort: number;
  logLevel: "debug" | "info" | "warn" | "error";
  drainTimeoutMs: number;
  instanceId: string;
}

export function readCommonConfig(env: EnvReader, defaultHttpPort: number, service: string): CommonConfig {
  return {
    natsUrl: env.string("NATS_URL", "nats://127.0.0.1:4222"),
    redisUrl: env.url("REDIS_URL", "redis://127.0.0.1:6379", ["redis", "rediss"]),
    httpPort: env.int("HTTP_PORT", defaultHttpPort, { min: 0, max: 65535 }),
    logLevel: env.oneOf("LOG_LEVEL", ["debug", "info", "warn", "error"] as const, "info"),
    drainTimeoutMs: env.int("DRAIN_TIMEOUT_MS", 30_000, { min: 0 }),
    instanceId: env.string("INSTANCE_ID", `${service}-${process.env.HOSTNAME ?? "local"}-${process.pid}`),
  };
}
