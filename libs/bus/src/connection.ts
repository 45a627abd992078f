// How a service reaches a secured NATS: credentials and TLS. nats.js takes credentials only as options (userinfo in a
// server URL is ignored, and the server then refuses the connection), so they are taken out of the URLs here.

import { credsAuthenticator, nkeyAuthenticator, nkeys, type ConnectionOptions } from "nats";

export { nkeys };

/**
 * Whether a credentials file holds what the server will ask for: a user JWT and the user's nkey seed (a file cut
 * short or a seed file given by mistake would fail every connection attempt, reported as NATS unreachable).
 */
export function isNatsCreds(text: string): boolean {
  const jwt = /-{3,}BEGIN NATS USER JWT-{3,}\s*\n\s*([\w-]+\.[\w-]+\.[\w-]+)\s*\n/.exec(text);
  const seed = /-{3,}BEGIN USER NKEY SEED-{3,}\s*\n\s*(SU[A-Z2-7]+)\s*\n/.exec(text);
  if (!jwt || !seed) return false;
  try {
    nkeys.fromSeed(new TextEncoder().encode(seed[1]));
    return true;
  } catch {
    return false;
  }
}

/** One way to authenticate, as the server is configured (at most one; none for an open server). */
export type NatsAuth =
  | { kind: "user"; user: string; pass: string }
  | { kind: "token"; token: string }
  /** An nkey seed (`SU…`, the content of a seed file). */
  | { kind: "nkey"; seed: Uint8Array }
  /** A credentials file's content (`nsc`/Synadia Cloud: a user JWT and its nkey seed), for servers in operator mode. */
  | { kind: "creds"; creds: Uint8Array };

/** TLS to the server, as PEM text; `{}` = TLS with the system's trusted CAs. */
export interface NatsTls {
  ca?: string;
  cert?: string;
  key?: string;
}

export interface NatsServers {
  /** Server URLs without userinfo: safe to log. */
  servers: string[];
  /** Credentials found in the URLs' userinfo (`nats://user:pass@host` or `nats://token@host`). */
  auth?: NatsAuth;
  /** Some URL said `tls://`. */
  tls: boolean;
}

/**
 * Splits a comma-separated NATS_URL into server URLs and the credentials written into them. Credentials written
 * into one URL serve them all (one connection authenticates the same way to whichever server it reaches); URLs
 * carrying different ones are an error.
 */
export function parseNatsServers(list: string): NatsServers {
  const servers: string[] = [];
  const found = new Set<string>();
  let auth: NatsAuth | undefined;
  let tls = false;
  for (const item of list.split(",").map((s) => s.trim()).filter(Boolean)) {
    const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(item) ? item : `nats://${item}`;
    const url = new URL(withScheme);
    if (url.protocol === "tls:") tls = true;
    if (url.username || url.password) {
      const user = decodeURIComponent(url.username);
      const pass = decodeURIComponent(url.password);
      auth = url.password ? { kind: "user", user, pass } : { kind: "token", token: user };
      found.add(`${user}\u0000${pass}`);
      url.username = "";
      url.password = "";
    }
    servers.push(`${url.protocol}//${url.host}`);
  }
  if (servers.length === 0) throw new Error("no NATS server given");
  if (found.size > 1) {
    throw new Error("the NATS URLs carry different credentials: give them once (NATS_USER/NATS_PASSWORD or NATS_TOKEN)");
  }
  return { servers, ...(auth ? { auth } : {}), tls };
}

/** The nats.js connection options for these credentials and TLS settings. */
export function natsSecurityOptions(auth: NatsAuth | undefined, tls: NatsTls | undefined): Partial<ConnectionOptions> {
  const options: Partial<ConnectionOptions> = {};
  if (auth?.kind === "user") Object.assign(options, { user: auth.user, pass: auth.pass });
  if (auth?.kind === "token") options.token = auth.token;
  if (auth?.kind === "nkey") options.authenticator = nkeyAuthenticator(auth.seed);
  if (auth?.kind === "creds") options.authenticator = credsAuthenticator(auth.creds);
  if (tls) options.tls = { ...tls };
  return options;
}
