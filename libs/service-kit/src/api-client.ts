import { Agent } from "undici";

/**
 * How long the cloud API clients (the OpenAI SDK's fetch) keep an idle connection. fetch's own pool closes one
 * after 4 s when the server names no time, so a turn after a longer pause (the caller speaking, listening) paid a
 * new TCP and TLS handshake to the API. API front ends keep idle connections 30 s or more (Cloudflare's shortest
 * known), so 25 s is reused without racing a server that closes first; a longer time the server names is capped
 * to it for the same reason.
 */
export const API_KEEP_ALIVE_MS = 25_000;

let shared: Agent | undefined;

/** The fetch dispatcher of the cloud API clients: `new OpenAI({ fetchOptions: { dispatcher: apiDispatcher() } })`. */
export function apiDispatcher(): Agent {
  shared ??= new Agent({ keepAliveTimeout: API_KEEP_ALIVE_MS, keepAliveMaxTimeout: API_KEEP_ALIVE_MS });
  return shared;
}
