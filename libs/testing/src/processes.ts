import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, waitFor } from "./servers.js";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

export type ServiceName = "ingress" | "asr" | "dialog" | "tools" | "tts";

/**
 * Node flags every service runs with, in production (each Dockerfile's ENTRYPOINT), under `pnpm start`
 * (scripts/start.mjs) and in the tests and benchmarks here; node-flags.test.ts keeps them equal.
 * `--single-threaded-gc`: V8 collects on the main thread only. With its helper threads, a collection's pause ends
 * only when every helper has finished, and a helper waits for a core whenever the process shares its cores (a pod
 * with a fraction of a CPU, nine processes on two cores): in the load test at 150 calls the overhead p99 was 31-48 ms
 * in three runs against 53-64 ms in three without it, and ingress's longest event-loop stall 12-18 against 24-28 ms,
 * at the same CPU (docs/benchmarks.md, "Load", session 8).
 */
export const SERVICE_NODE_FLAGS: readonly string[] = ["--single-threaded-gc"];

export interface ServiceProcess {
  name: ServiceName;
  port: number;
  baseUrl: string;
  process: ChildProcess;
  /** Parsed JSON log lines so far. */
  logs: Array<Record<string, unknown>>;
  /** Raw stderr text (should stay empty). */
  stderr(): string;
  /** SIGKILL: a crash. */
  kill(): void;
  /** SIGTERM and wait for the exit code. */
  terminate(timeoutMs?: number): Promise<number | null>;
  exited: Promise<number | null>;
  waitForLog(predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
}

/**
 * Runs a built service (`services/<name>/dist/main.js`) as its own process, exactly as in production,
 * and waits until its /readyz says ready (unless `waitReady` is false).
 */
export async function startServiceProcess(
  name: ServiceName,
  env: Record<string, string>,
  options: { waitReady?: boolean; readyTimeoutMs?: number } = {},
): Promise<ServiceProcess> {
  const port = await freePort();
  const portEnv = name === "ingress" ? "INGRESS_PORT" : "HTTP_PORT";
  const child = spawn(process.execPath, [...SERVICE_NODE_FLAGS, path.join(repoRoot, "services", name, "dist", "main.js")], {
    env: { ...process.env, LOG_LEVEL: "debug", ...env, [portEnv]: String(port), INSTANCE_ID: `${name}-${port}` },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Array<Record<string, unknown>> = [];
  let stderr = "";
  let partial = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    const lines = (partial + chunk).split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      if (!line) continue;
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ level: "raw", msg: line });
      }
    }
  });
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr = (stderr + chunk).slice(-20_000)));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const baseUrl = `http://127.0.0.1:${port}`;
  const handle: ServiceProcess = {
    name,
    port,
    baseUrl,
    process: child,
    logs,
    stderr: () => stderr,
    kill: () => child.kill("SIGKILL"),
    terminate: async (timeoutMs = 30_000) => {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    exited,
    waitForLog: (predicate, timeoutMs = 10_000) =>
      waitFor(() => logs.find(predicate), { timeoutMs, what: `a ${name} log line` }),
  };
  if (options.waitReady !== false) {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}: ${stderr} ${JSON.stringify(logs.slice(-5))}`);
        const res = await fetch(`${baseUrl}/readyz`).catch(() => undefined);
        return res?.status === 200 || undefined;
      },
      { timeoutMs: options.readyTimeoutMs ?? 20_000, intervalMs: 50, what: `${name} to be ready` },
    );
  }
  return handle;
}
