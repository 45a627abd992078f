// How a service reaches Redis: one server by URL, or the master of a Sentinel group; a password and TLS either way.

import type { RedisOptions } from "ioredis";

export interface RedisTarget {
  /** `redis://` or `rediss://` (TLS): host, port, database (`/2`) and optionally `user:password@`. */
  url: string;
  /** ACL user and password given apart from the URL (they take precedence over the URL's). */
  username?: string;
  password?: string;
  /** TLS with a private CA or a client certificate (PEM text). `rediss://` alone trusts the system's CAs. */
  tls?: { ca?: string; cert?: string; key?: string };
  /**
   * Redis Sentinel: the sentinels that name the current master of `sentinelMaster` (the URL's host is unused). With
   * TLS (`rediss://` or `tls`), the sentinels and the data nodes alike are reached over TLS with the same settings.
   */
  sentinels?: { host: string; port: number }[];
  sentinelMaster?: string;
  sentinelPassword?: string;
}

/**
 * The ioredis options for a target, before the store's own (timeouts, retries). After a failover the old master
 * turns replica and answers writes with READONLY; a client still connected to it (behind a DNS name that moved, as
 * managed Redis does) reconnects, so the writes after the failing one reach the new master instead of failing until
 * the process restarts. The failing command is not resent: against a node that stays a replica, that loops forever.
 */
export function redisConnectionOptions(target: RedisTarget): RedisOptions {
  const url = new URL(target.url);
  const tls = url.protocol === "rediss:" || target.tls ? { ...target.tls } : undefined;
  const database = redisDatabase(url);
  const username = target.username ?? (url.username ? decodeURIComponent(url.username) : undefined);
  const password = target.password ?? (url.password ? decodeURIComponent(url.password) : undefined);
  const common: RedisOptions = {
    db: database,
    ...(username ? { username } : {}),
    ...(password ? { password } : {}),
    // Anywhere in the message: a script's write error comes back wrapped on some Redis versions.
    reconnectOnError: (error) => /\bREADONLY\b/.test(error.message),
  };
  if (target.sentinels && target.sentinels.length > 0) {
    return {
      ...common,
      sentinels: target.sentinels,
      name: target.sentinelMaster ?? "mymaster",
      ...(target.sentinelPassword ? { sentinelPassword: target.sentinelPassword } : {}),
      // ioredis takes TLS to the sentinels (sentinelTLS) and to the master they name (tls, only with the flag) apart.
      ...(tls ? { sentinelTLS: tls, tls, enableTLSForSentinelMode: true } : {}),
    };
  }
  // An IPv6 address comes bracketed in a URL ([::1]); the socket wants it bare.
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1";
  return { ...common, host, port: url.port ? Number(url.port) : 6379, ...(tls ? { tls } : {}) };
}

/** The database a URL names (`/2`, `/2/`; none = 0); NaN when it names something else (a config error). */
export function redisDatabase(url: URL): number {
  const path = url.pathname.replace(/\/$/, "");
  if (path === "" || path === "/") return 0;
  return /^\/\d{1,4}$/.test(path) ? Number(path.slice(1)) : Number.NaN;
}

/** Where the store connects, for a log line: no credentials. */
export function describeRedisTarget(target: RedisTarget): string {
  const url = new URL(target.url);
  const db = url.pathname.length > 1 ? url.pathname : "";
  if (target.sentinels && target.sentinels.length > 0) {
    const hosts = target.sentinels.map((s) => `${s.host}:${s.port}`).join(",");
    return `sentinel://${hosts}/${target.sentinelMaster ?? "mymaster"}${db}`;
  }
  return `${url.protocol}//${url.host}${db}`;
}
