// The system under load, as in production: real nats-server (with its monitoring port) and redis-server, the five
// services as separate processes from their built dist/, and the fake cloud engines in a process of their own.
// Service logs go straight to files (nothing is parsed while the load runs), and every process is sampled
// through /proc.
import { fork, spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CallStore } from "@voicebot/state";
import { freePort, repoRoot, SERVICE_NODE_FLAGS, startNats, startRedis, waitFor, type ServerHandle, type ServiceName } from "@voicebot/testing";
import type { FakesReady, FakesRecords } from "./fakes.js";
import { inspectFlag } from "./inspect.js";
import { ELEVENLABS_KEY, OPENAI_KEY, ordersFile } from "./script.js";

export const SERVICE_NAMES: ServiceName[] = ["ingress", "asr", "dialog", "tools", "tts"];

export interface ServiceProc {
  name: ServiceName;
  baseUrl: string;
  /** Loopback inspector port (live memory after a full GC, see inspect.ts). */
  inspectPort: number;
  child: ChildProcess;
  logFile: string;
}

export interface SystemOptions {
  /** Call slots: the orders file has one order per slot. */
  slots: number;
  /** The asr's endpoint silence. */
  minSilenceMs: number;
  /** The asr's silence after an expected answer (0: off). */
  completeSilenceMs: number;
  /** The fake transcription server's wait before it answers. */
  asrEngineMs: number;
  /** ASR_VAD (when the asr build has a choice). */
  vad: "energy" | "silero" | undefined;
  /** Services to run under `node --cpu-prof` (profiles land in `profileDir`). */
  profile: ServiceName[];
  profileDir: string;
  /** Extra environment for every service (overrides the bench's settings). */
  env: Record<string, string>;
  /** Extra node flags for every service (e.g. --max-semi-space-size=32, --trace-gc). */
  nodeArgs?: string[];
}

export interface BenchSystem {
  dir: string;
  nats: ServerHandle & { monitorUrl?: string };
  redis: ServerHandle;
  store: CallStore;
  services: Record<ServiceName, ServiceProc>;
  fakes: ChildProcess;
  twilioUrl: string;
  /** name -> pid of every process of the system (services, nats, redis, fakes). */
  pids(): Record<string, number>;
  /** Every series of a service's /metrics, keyed by `name{labels}`. */
  metrics(service: ServiceName): Promise<Map<string, number>>;
  varz(): Promise<{ in_msgs: number; out_msgs: number; in_bytes: number; out_bytes: number }>;
  /** Redis INFO fields of `section` (default: everything, command stats included). */
  redisInfo(section?: string): Promise<Record<string, string>>;
  engineRecords(): Promise<FakesRecords>;
  stop(): Promise<void>;
}

const here = path.dirname(fileURLToPath(import.meta.url));

/** True when the built asr reads `variable` (its settings changed over time: ASR_ENGINE became ASR_ENGINES). */
export function asrReads(variable: string): boolean {
  const dist = path.join(repoRoot, "services", "asr", "dist");
  return ["config.js", "service.js"].some((file) => {
    try {
      return readFileSync(path.join(dist, file), "utf8").includes(`"${variable}"`);
    } catch {
      return false;
    }
  });
}

function asrEnv(vad: "energy" | "silero" | undefined): Record<string, string> {
  return {
    ...(asrReads("ASR_ENGINES") ? { ASR_ENGINES: "openai" } : { ASR_ENGINE: "openai" }),
    ...(vad && asrReads("ASR_VAD") ? { ASR_VAD: vad } : {}),
  };
}

export async function startBenchSystem(options: SystemOptions): Promise<BenchSystem> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "vb-load-"));
  // Stopped in reverse order of starting; the services (the last group) all at once, so they drain in parallel.
  const started: Array<Array<() => Promise<void>>> = [];
  const cleanup = async () => {
    for (const group of started.reverse()) await Promise.all(group.map((stop) => stop().catch(() => undefined)));
  };
  try {
    const [nats, redis] = await Promise.all([startNats({ monitor: true }), startRedis()]);
    started.push([() => nats.stop(), () => redis.stop()]);
    const store = CallStore.connect(redis.url);
    started.push([() => store.close()]);

    const fakesLog = openSync(path.join(dir, "fakes.log"), "a");
    const fakes = fork(path.join(here, "fakes.js"), [String(options.asrEngineMs)], { stdio: ["ignore", fakesLog, fakesLog, "ipc"] });
    closeSync(fakesLog);
    started.push([
      async () => {
        if (fakes.connected) fakes.send({ type: "stop" });
        await Promise.race([new Promise((r) => fakes.once("exit", r)), new Promise((r) => setTimeout(r, 3_000))]);
        fakes.kill("SIGKILL");
      },
    ]);
    const ready = await new Promise<FakesReady>((resolve, reject) => {
      fakes.once("message", (m) => resolve(m as FakesReady));
      fakes.once("exit", (code) => reject(new Error(`fake engines exited with ${code}; see ${dir}/fakes.log`)));
    });

    const orders = path.join(dir, "orders.json");
    await writeFile(orders, ordersFile(options.slots));
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? os.tmpdir(),
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      LOG_LEVEL: "info",
      DRAIN_TIMEOUT_MS: "10000",
      ...asrEnv(options.vad),
      ASR_OPENAI_BASE_URL: ready.openaiBaseUrl,
      ASR_OPENAI_API_KEY: OPENAI_KEY,
      ASR_MIN_SILENCE_MS: String(options.minSilenceMs),
      ASR_COMPLETE_SILENCE_MS: String(options.completeSilenceMs),
      TTS_ENGINES: "elevenlabs",
      ELEVENLABS_BASE_URL: ready.elevenLabsBaseUrl,
      ELEVENLABS_API_KEY: ELEVENLABS_KEY,
      ELEVENLABS_OUTPUT_FORMAT: "ulaw_8000",
      // The engine is a network service: the default (2 per core) would queue chunks behind each other.
      TTS_MAX_CONCURRENT: "512",
      ORDERS_FILE: orders,
      ...options.env,
    };

    const services = {} as Record<ServiceName, ServiceProc>;
    const serviceStops: Array<() => Promise<void>> = [];
    started.push(serviceStops);
    await Promise.all(
      SERVICE_NAMES.map(async (name) => {
        const port = await freePort();
        const inspectPort = await freePort();
        const logFile = path.join(dir, `${name}.log`);
        const fd = openSync(logFile, "a");
        const nodeArgs = [
          inspectFlag(inspectPort),
          ...SERVICE_NODE_FLAGS,
          ...(options.nodeArgs ?? []),
          ...(options.profile.includes(name) ? ["--cpu-prof", `--cpu-prof-dir=${options.profileDir}`, `--cpu-prof-name=${name}.cpuprofile`] : []),
        ];
        const child = spawn(process.execPath, [...nodeArgs, path.join(repoRoot, "services", name, "dist", "main.js")], {
          env: { ...env, [name === "ingress" ? "INGRESS_PORT" : "HTTP_PORT"]: String(port), INSTANCE_ID: `${name}-load` },
          stdio: ["ignore", fd, fd],
        });
        closeSync(fd);
        services[name] = { name, baseUrl: `http://127.0.0.1:${port}`, inspectPort, child, logFile };
        serviceStops.push(() => terminate(child, 20_000));
      }),
    );
    await Promise.all(
      SERVICE_NAMES.map((name) =>
        waitFor(
          async () => {
            const { child, baseUrl, logFile } = services[name];
            if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}: ${(await readFile(logFile, "utf8")).slice(-1500)}`);
            const res = await fetch(`${baseUrl}/readyz`).catch(() => undefined);
            await res?.arrayBuffer();
            return res?.status === 200 || undefined;
          },
          { timeoutMs: 60_000, intervalMs: 100, what: `${name} to be ready` },
        ),
      ),
    );

    const system: BenchSystem = {
      dir,
      nats,
      redis,
      store,
      services,
      fakes,
      twilioUrl: `ws://127.0.0.1:${services.ingress.baseUrl.split(":").pop()}/twilio`,
      pids() {
        const pids: Record<string, number> = {};
        for (const name of SERVICE_NAMES) pids[name] = services[name].child.pid!;
        pids["nats-server"] = nats.process.pid!;
        pids["redis-server"] = redis.process.pid!;
        pids.fakes = fakes.pid!;
        return pids;
      },
      async metrics(service) {
        const res = await fetch(`${services[service].baseUrl}/metrics`, { signal: AbortSignal.timeout(10_000) });
        return parseMetrics(await res.text());
      },
      async varz() {
        const res = await fetch(`${nats.monitorUrl}/varz`, { signal: AbortSignal.timeout(5_000) });
        return (await res.json()) as { in_msgs: number; out_msgs: number; in_bytes: number; out_bytes: number };
      },
      async redisInfo(section = "all") {
        const text = await store.redis.info(section);
        const info: Record<string, string> = {};
        for (const line of text.split("\r\n")) {
          const at = line.indexOf(":");
          if (at > 0 && !line.startsWith("#")) info[line.slice(0, at)] = line.slice(at + 1);
        }
        return info;
      },
      engineRecords() {
        return new Promise<FakesRecords>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error("the fake engines did not send their records")), 10_000);
          fakes.once("message", (m) => {
            clearTimeout(timer);
            resolve(m as FakesRecords);
          });
          fakes.send({ type: "collect" });
        });
      },
      stop: cleanup,
    };
    return system;
  } catch (error) {
    await cleanup();
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

/** SIGTERM (the service drains) and wait; SIGKILL after timeoutMs. */
async function terminate(child: ChildProcess, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  await exited;
  clearTimeout(timer);
}

export function parseMetrics(text: string): Map<string, number> {
  const series = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    series.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return series;
}

/** Sum of every series of `name` (any labels), optionally only those whose labels contain `label`. */
export function metricSum(series: Map<string, number>, name: string, label?: string): number {
  let sum = 0;
  for (const [key, value] of series) {
    if ((key === name || key.startsWith(`${name}{`)) && (!label || key.includes(label))) sum += value;
  }
  return sum;
}

// ---- /proc sampling ----

const CLOCK_TICKS = 100; // getconf CLK_TCK on Linux
const PAGE_BYTES = 4096;

/** CPU seconds (user + system, all threads) a process has used. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/** CPU seconds the whole machine was busy (all cores), from /proc/stat. */
export function machineBusySeconds(): number {
  const fields = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = fields;
  return (user + nice + system + irq + softirq + (steal ?? 0)) / CLOCK_TICKS;
}

/** Resident set size in bytes. */
export function rssBytes(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/statm`, "utf8").split(" ")[1]) * PAGE_BYTES;
  } catch {
    return NaN;
  }
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
}
