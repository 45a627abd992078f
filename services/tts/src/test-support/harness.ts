// Shared by the tts service tests: an engine paced like a real-time one, and a tts started in-process.
import { setTimeout as sleep } from "node:timers/promises";
import { startService, type ServiceHandle } from "@voicebot/service-kit";
import { waitFor } from "@voicebot/testing";
import type { TtsEngine } from "../engine.js";
import type { EngineRegistry } from "../registry.js";
import { createDefinition } from "../service.js";

type EngineRequest = Parameters<TtsEngine["synthesize"]>[0];

/** Real audio of `inner` released at real-time pace in 20 ms pieces; remembers what it was asked and its signals. */
export class PacedEngine implements TtsEngine {
  readonly label: string;
  readonly sampleRate: number;
  readonly texts: string[] = [];
  readonly signals: AbortSignal[] = [];
  constructor(private readonly inner: TtsEngine) {
    this.label = `paced-${inner.label}`;
    this.sampleRate = inner.sampleRate;
  }
  async *synthesize(request: EngineRequest): AsyncGenerator<Int16Array> {
    this.texts.push(request.text);
    if (request.signal) this.signals.push(request.signal);
    const step = this.sampleRate / 50;
    for await (const pcm of this.inner.synthesize(request)) {
      for (let i = 0; i < pcm.length; i += step) {
        yield pcm.slice(i, i + step);
        await sleep(20, undefined, { signal: request.signal });
      }
    }
  }
  close() {
    return this.inner.close();
  }
}

/** A tts service in this process against the given NATS and Redis, ready unless `waitReady` is false. */
export async function startTts(
  servers: { natsUrl: string; redisUrl: string },
  env: Record<string, string>,
  options: { engines?: EngineRegistry; waitReady?: boolean } = {},
): Promise<ServiceHandle> {
  const handle = await startService(createDefinition({ engines: options.engines }), {
    NATS_URL: servers.natsUrl,
    REDIS_URL: servers.redisUrl,
    HTTP_PORT: "0",
    LOG_LEVEL: "error",
    ...env,
  });
  if (options.waitReady !== false) {
    await waitFor(async () => (await fetch(`http://127.0.0.1:${handle.ctx.port}/readyz`)).status === 200, { what: "tts to be ready" });
  }
  return handle;
}
