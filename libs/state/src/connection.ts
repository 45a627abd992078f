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
  /** Redis Sentinel: the sentinels that name the current master of `sentinelMaster` (the URL's host is unused). */
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
  const tlsWanted = url.protocol === "rediss:" || target.tls !== undefined;
  const tls = tlsWanted
    ? {
        ...(target.tls?.ca ? { ca: target.tls.ca } : {}),
        ...(target.tls?.cert ? { cert: target.tls.cert } : {}),
        ...(target.tls?.key ? { key: target.tls.key } : {}),
      }
    : undefined;
  const database = url.pathname.length > 1 ? Number(url.pathname.slice(1)) : 0;
  const username = target.username ?? (url.username ? decodeURIComponent(url.username) : undefined);
  const password = target.password ?? (url.password ? decodeURIComponent(url.password) : undefined);
  const common: RedisOptions = {
    db: database,
    ...(username ? { username } : {}),
    ...(password ? { password } : {}),
    reconnectOnError: (error) => error.message.startsWith("READONLY"),
  };
  if (target.sentinels && target.sentinels.length > 0) {
    return {
      ...common,
      sentinels: target.sentinels,
      name: target.sentinelMaster ?? "mymaster",
      ...(target.sentinelPassword ? { sentinelPassword: target.sentinelPassword } : {}),
      ...(tls ? { tls, enableTLSForSentinelMode: true } : {}),
    };
  }
  return { ...common, host: url.hostname || "127.0.0.1", port: url.port ? Number(url.port) : 6379, ...(tls ? { tls } : {}) };
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
