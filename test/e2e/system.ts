// The whole voicebot as in production: real nats-server and redis-server, the five services as separate
// processes, and callers that speak Twilio's protocol to ingress.
import { TwilioCallSimulator, type BotTurn, type SimulatorOptions } from "@voicebot/callsim";
import type { CallRecord } from "@voicebot/state";
import { startNats, startRedis, startServiceProcess, waitFor, type ServerHandle, type ServiceName, type ServiceProcess } from "@voicebot/testing";
import { mulawDecode, rmsDbfs } from "@voicebot/audio";

export const serviceNames: ServiceName[] = ["ingress", "asr", "dialog", "tools", "tts"];

export interface System {
  nats: ServerHandle & { storeDir: string };
  redis: ServerHandle;
  services: Record<ServiceName, ServiceProcess>;
  /** ws://127.0.0.1:<port>/twilio */
  twilioUrl: string;
  /** http://127.0.0.1:<port> of ingress */
  ingressUrl: string;
  call(options?: Partial<SimulatorOptions>): TwilioCallSimulator;
  record(callSid: string): Promise<CallRecord | undefined>;
  waitForRecord(callSid: string, what: string, predicate: (record: CallRecord) => boolean, timeoutMs?: number): Promise<CallRecord>;
  /** Sum of every series of a counter/gauge on a service's /metrics (0 when absent); `label` (e.g. `batched="true"`) picks series. */
  metric(service: ServiceName, name: string, label?: string): Promise<number>;
  readyz(service: ServiceName): Promise<number>;
  /** Recent log lines of every service, for failure reports. */
  recentLogs(lines?: number): string;
  stop(): Promise<void>;
}

export interface StartSystemOptions {
  env?: Record<string, string>;
  nats?: ServerHandle & { storeDir: string };
  redis?: ServerHandle;
}

export async function startSystem(options: StartSystemOptions = {}): Promise<System> {
  const nats = options.nats ?? (await startNats());
  const redis = options.redis ?? (await startRedis());
  const env = { NATS_URL: nats.url, REDIS_URL: redis.url, DRAIN_TIMEOUT_MS: "5000", ...options.env };
  const started = await Promise.allSettled(
    serviceNames.map((name) => startServiceProcess(name, env, { readyTimeoutMs: 45_000 })),
  );
  const failed = started.flatMap((s) => (s.status === "rejected" ? [String(s.reason)] : []));
  if (failed.length > 0) {
    for (const s of started) if (s.status === "fulfilled") s.value.kill();
    await nats.stop();
    await redis.stop();
    throw new Error(`the system did not start: ${failed.join("; ")}`);
  }
  const services = Object.fromEntries(
    started.map((s, i) => [serviceNames[i], (s as PromiseFulfilledResult<ServiceProcess>).value]),
  ) as Record<ServiceName, ServiceProcess>;
  const ingress = services.ingress;
  const twilioUrl = `ws://127.0.0.1:${ingress.port}/twilio`;

  const record = async (callSid: string): Promise<CallRecord | undefined> => {
    const res = await fetch(`${ingress.baseUrl}/v1/calls/${callSid}`);
    if (res.status === 404) return undefined;
    if (!res.ok) throw new Error(`GET /v1/calls/${callSid}: HTTP ${res.status}`);
    return (await res.json()) as CallRecord;
  };

  return {
    nats,
    redis,
    services,
    twilioUrl,
    ingressUrl: ingress.baseUrl,
    call: (simOptions = {}) => new TwilioCallSimulator({ url: twilioUrl, ...simOptions }),
    record,
    async waitForRecord(callSid, what, predicate, timeoutMs = 10_000) {
      let last: CallRecord | undefined;
      try {
        return await waitFor(
          async () => {
            last = await record(callSid);
            return last && predicate(last) ? last : undefined;
          },
          { timeoutMs, intervalMs: 100, what: `the call record to show ${what}` },
        );
      } catch (error) {
        throw new Error(`${(error as Error).message}\nlast record: ${JSON.stringify(last, null, 1)}`);
      }
    },
    metric: async (service, name, label) => {
      const text = await (await fetch(`${services[service].baseUrl}/metrics`)).text();
      let sum = 0;
      for (const line of text.split("\n")) {
        const series = line.slice(0, line.lastIndexOf(" "));
        if ((series === name || series.startsWith(name + "{")) && (!label || series.includes(label))) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
      }
      return sum;
    },
    readyz: async (service) => {
      const res = await fetch(`${services[service].baseUrl}/readyz`, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      return res.status;
    },
    recentLogs(lines = 25) {
      return serviceNames
        .map((name) => {
          const s = services[name];
          const tail = s.logs.slice(-lines).map((l) => JSON.stringify(l)).join("\n");
          return `--- ${name} (exit ${s.process.exitCode}) ---\n${tail}${s.stderr() ? `\nSTDERR: ${s.stderr()}` : ""}`;
        })
        .join("\n");
    },
    async stop() {
      await Promise.all(serviceNames.map((name) => services[name].terminate(15_000)));
      await nats.stop();
      await redis.stop();
    },
  };
}

/**
 * A well-formed call through the keypad flow (greeting, the menu key, an order lookup), then a hang-up: the call
 * that runs next to faults and junk and must not notice them.
 */
export async function keypadCall(system: System, turnMs = 20_000): Promise<TwilioCallSimulator> {
  const sim = system.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: turnMs });
  await sim.pressKeys("1");
  await sim.waitForBotTurn({ timeoutMs: turnMs });
  await sim.pressKeys("12345#");
  await sim.waitForBotTurn({ timeoutMs: turnMs });
  await system.waitForRecord(sim.callSid, "lookup_order", (r) => r.toolCalls.some((t) => t.name === "lookup_order"), turnMs);
  await sim.hangUp();
  return sim;
}

/** Loudness of μ-law audio in dBFS: speech sits well above -40, digital silence at -90 or below. */
export function loudnessDbfs(mulaw: Uint8Array): number {
  return rmsDbfs(mulawDecode(mulaw));
}

export const audioMs = (mulaw: Uint8Array) => mulaw.length / 8;

/** Per-turn latencies measured at the caller's side, printed at the end of each file. */
export const latencyLog: Array<{ call: string; turn: number; input: string; callerMs: number; ingressMs?: number; audioMs: number }> = [];

export function noteTurns(call: string, turns: BotTurn[], record?: CallRecord): void {
  turns.forEach((turn, i) => {
    latencyLog.push({
      call,
      turn: turn.index,
      input: turn.input,
      callerMs: turn.latencyMs,
      ingressMs: record?.turns[i]?.latencyMs,
      audioMs: audioMs(turn.audio),
    });
  });
}

export function printLatencies(title: string): void {
  if (latencyLog.length === 0) return;
  const rows = latencyLog.map(
    (r) => `  ${r.call.padEnd(22)} turn ${String(r.turn).padEnd(2)} ${r.input.padEnd(22)} caller ${String(r.callerMs).padStart(5)} ms   ingress ${String(r.ingressMs ?? "-").padStart(5)} ms   audio ${String(r.audioMs).padStart(5)} ms`,
  );
  console.log(`${title}: latency = caller's end of input -> first bot audio\n${rows.join("\n")}`);
}
