// The fault tests' system: real nats-server and redis-server, every service as its own process with any number of
// replicas, the fault agent (test/e2e/fixtures/faults-agent.yaml) and a slow webhook backend the test controls.
// Replicas can be added, killed (SIGKILL), terminated (SIGTERM) and frozen (SIGSTOP, then SIGCONT) while calls run.
import { execFile } from "node:child_process";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Bus, silentLogger } from "@voicebot/bus";
import { TwilioCallSimulator, type SimulatorOptions } from "@voicebot/callsim";
import { CallStore, type CallRecord } from "@voicebot/state";
import { Registry } from "prom-client";
import { startNats, startNatsCluster, startRedis, startRedisSentinel, startServiceProcess, waitFor, type ServerHandle, type ServiceName, type ServiceProcess } from "@voicebot/testing";
import { afterAll, afterEach } from "vitest";

export const FAULT_AGENT = "faults";
const here = path.dirname(fileURLToPath(import.meta.url));

export interface SlowBackend {
  url: string;
  /** Delay before each answer, ms. */
  delayMs: number;
  /** Requests received. */
  calls: number;
}

export interface Cluster {
  /** The running servers (replaced by restartNats / restartRedis). */
  readonly nats: ServerHandle & { storeDir: string };
  readonly redis: ServerHandle;
  /** SIGKILL nats-server; after `downMs`, a new one on the same port with the same JetStream store. */
  restartNats(downMs?: number): Promise<void>;
  /** SIGKILL redis-server; after `downMs`, a new, empty one on the same port (no persistence). */
  restartRedis(downMs?: number): Promise<void>;
  /** With `natsNodes`: the NATS cluster. */
  natsCluster: Awaited<ReturnType<typeof startNatsCluster>> | undefined;
  /** With `natsNodes`: SIGKILL the node leading a JetStream stream; resolves with its name. */
  crashStreamLeader(stream: string): Promise<string>;
  /**
   * With `sentinel`: SIGKILL the Redis master; resolves with the ms until the sentinel named the promoted replica,
   * once a new replica of it is in sync (ready for the next crash).
   */
  crashRedisMaster(): Promise<number>;
  store: CallStore;
  slow: SlowBackend;
  /** Live replicas per service, oldest first (killed and stopped ones are removed). */
  replicas: Record<ServiceName, ServiceProcess[]>;
  /** Every replica ever started (for logs). */
  all: ServiceProcess[];
  env: Record<string, string>;
  /** The ingress callers connect to (the first live one). */
  readonly ingress: ServiceProcess;
  add(name: ServiceName, env?: Record<string, string>): Promise<ServiceProcess>;
  /** SIGKILL, and waits for the exit. */
  kill(replica: ServiceProcess): Promise<void>;
  /**
   * SIGSTOP: the replica stops running but keeps its connections open (a long GC pause, a starved or swapped-out
   * node, a VM migration): NATS and Redis see a client that has gone quiet, not one that left. Resolves with thaw (SIGCONT).
   */
  freeze(replica: ServiceProcess): () => void;
  /** SIGTERM (drain), resolves with the exit code. */
  terminate(replica: ServiceProcess, timeoutMs?: number): Promise<number | null>;
  call(options?: Partial<SimulatorOptions>): TwilioCallSimulator;
  record(callSid: string): Promise<CallRecord | undefined>;
  waitForRecord(callSid: string, what: string, predicate: (record: CallRecord) => boolean, timeoutMs?: number): Promise<CallRecord>;
  /** Sum of every series of a metric on one replica's /metrics. */
  metric(replica: ServiceProcess, name: string): Promise<number>;
  /** The replica of `name` whose gauge `voicebot_<name>_active_calls` is above 0 (the one working on the call). */
  busy(name: ServiceName, timeoutMs?: number): Promise<ServiceProcess>;
  recentLogs(lines?: number): string;
  stop(): Promise<void>;
}

export interface ClusterOptions {
  /** Replicas per service (default 1 each). */
  counts?: Partial<Record<ServiceName, number>>;
  env?: Record<string, string>;
  /** Per-service settings on top of env. */
  serviceEnv?: Partial<Record<ServiceName, Record<string, string>>>;
  /** Redis as a Sentinel group (master, replica, one sentinel) that the services and the test reach through the sentinel. */
  sentinel?: boolean;
  /** NATS as a cluster of this many nodes (the services given every node, work queues with 3 copies). */
  natsNodes?: number;
}

const order: ServiceName[] = ["ingress", "asr", "dialog", "tools", "tts"];

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const natsCluster = options.natsNodes ? await startNatsCluster(options.natsNodes) : undefined;
  let [nats, redis] = await Promise.all([natsCluster ? undefined : startNats(), startRedis()]);
  /** Servers replaced by a restart; stopped last (the first nats handle owns the store's directory). */
  const replaced: ServerHandle[] = [];
  /** Thaws of the replicas frozen (all thawed before stopping). */
  const frozen = new Set<() => void>();
  const sentinelGroup = options.sentinel ? await startSentinelGroup(redis) : undefined;
  const slow: SlowBackend = { url: "", delayMs: 0, calls: 0 };
  const backend = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      slow.calls++;
      setTimeout(() => res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}'), slow.delayMs);
    });
  });
  await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
  slow.url = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`;
  const agentsDir = await mkdtemp(path.join(os.tmpdir(), "vb-fault-agents-"));
  await copyFile(path.join(here, "fixtures", "faults-agent.yaml"), path.join(agentsDir, `${FAULT_AGENT}.yaml`));

  const env: Record<string, string> = {
    NATS_URL: natsCluster ? natsCluster.url : nats!.url,
    ...(natsCluster ? { NATS_STREAM_REPLICAS: "3" } : {}),
    REDIS_URL: redis.url,
    ...(sentinelGroup ? { REDIS_SENTINELS: `127.0.0.1:${sentinelGroup.sentinel.port}`, REDIS_SENTINEL_MASTER: sentinelGroup.name } : {}),
    LOG_LEVEL: "info",
    DRAIN_TIMEOUT_MS: "10000",
    AGENTS_DIR: agentsDir,
    DEFAULT_AGENT: FAULT_AGENT,
    SLOW_URL: slow.url,
    ...options.env,
  };
  const store = CallStore.connect(
    sentinelGroup ? { url: redis.url, sentinels: [{ host: "127.0.0.1", port: sentinelGroup.sentinel.port }], sentinelMaster: sentinelGroup.name } : redis.url,
  );
  const replicas = Object.fromEntries(order.map((name) => [name, [] as ServiceProcess[]])) as Record<ServiceName, ServiceProcess[]>;
  const all: ServiceProcess[] = [];
  const envFor = (name: ServiceName, extra: Record<string, string> = {}) => ({ ...env, ...options.serviceEnv?.[name], ...extra });
  const add = async (name: ServiceName, extra?: Record<string, string>) => {
    const replica = await startServiceProcess(name, envFor(name, extra), { readyTimeoutMs: 45_000 });
    replicas[name].push(replica);
    all.push(replica);
    return replica;
  };
  const forget = (replica: ServiceProcess) => {
    const list = replicas[replica.name];
    const index = list.indexOf(replica);
    if (index >= 0) list.splice(index, 1);
  };
  const stopAll = async () => {
    for (const thaw of frozen) thaw(); // a stopped process would not see its SIGTERM
    await Promise.all(all.map((r) => (r.process.exitCode === null && r.process.signalCode === null ? r.terminate(15_000) : undefined)));
    await store.close();
    await new Promise((resolve) => backend.close(resolve));
    await nats?.stop();
    await natsCluster?.stop();
    await redis.stop();
    if (sentinelGroup) await Promise.all([sentinelGroup.sentinel.stop(), sentinelGroup.replica.stop()]);
    for (const server of replaced.reverse()) await server.stop();
    await rm(agentsDir, { recursive: true, force: true });
  };

  try {
    // Ingress last: it is ready only once every stage answers its readiness ping.
    await Promise.all(
      order.filter((n) => n !== "ingress").flatMap((name) => Array.from({ length: options.counts?.[name] ?? 1 }, () => add(name))),
    );
    for (let i = 0; i < (options.counts?.ingress ?? 1); i++) await add("ingress");
  } catch (error) {
    await stopAll();
    throw error;
  }

  const record = (callSid: string) => store.getRecord(callSid);
  const killServer = async (server: ServerHandle) => {
    const exited = new Promise((resolve) => server.process.once("exit", resolve));
    server.kill();
    await exited;
  };
  const cluster: Cluster = {
    get nats() {
      if (!nats) throw new Error("this cluster runs a NATS cluster: see natsCluster");
      return nats;
    },
    natsCluster,
    async crashStreamLeader(stream) {
      if (!natsCluster) throw new Error("crashStreamLeader needs a cluster started with natsNodes");
      const bus = await Bus.connect({ servers: natsCluster.url, name: "faults-test", log: silentLogger, registry: new Registry() });
      try {
        const leader = (await (await bus.nc.jetstreamManager()).streams.info(stream)).cluster?.leader;
        const node = natsCluster.nodes.find((n) => n.name === leader);
        if (!node) throw new Error(`no leader found for ${stream}`);
        node.kill();
        return node.name;
      } finally {
        await bus.close();
      }
    },
    get redis() {
      return redis;
    },
    async restartNats(downMs = 0) {
      if (!nats) throw new Error("restartNats needs a single NATS server");
      const old = nats;
      await killServer(old);
      replaced.push(old);
      await new Promise((r) => setTimeout(r, downMs));
      nats = await startNats({ port: old.port, storeDir: old.storeDir });
    },
    async restartRedis(downMs = 0) {
      const old = redis;
      await killServer(old);
      replaced.push(old);
      await new Promise((r) => setTimeout(r, downMs));
      redis = await startRedis({ port: old.port });
    },
    async crashRedisMaster() {
      if (!sentinelGroup) throw new Error("crashRedisMaster needs a cluster started with sentinel: true");
      const before = await sentinelGroup.masterPort();
      if (before !== redis.port) throw new Error(`the sentinel names ${before} as master, not ${redis.port}: an unplanned failover`);
      const crashedAt = Date.now();
      await killServer(redis);
      replaced.push(redis);
      const promoted = sentinelGroup.replica;
      await waitFor(async () => (await sentinelGroup.masterPort()) === promoted.port, {
        timeoutMs: 15_000,
        intervalMs: 50,
        what: "the sentinel to promote the replica",
      });
      const promotedMs = Date.now() - crashedAt;
      // The promoted replica is the master now; a new replica makes the group ready for the next crash.
      redis = promoted;
      sentinelGroup.replica = await startRedis({ args: ["--replicaof", "127.0.0.1", String(promoted.port)] });
      await waitFor(async () => (await sentinelGroup.replicasInSync()) >= 1, { timeoutMs: 20_000, intervalMs: 100, what: "the sentinel to see the new replica" });
      return promotedMs;
    },
    store,
    slow,
    replicas,
    all,
    env,
    get ingress() {
      const ingress = replicas.ingress[0];
      if (!ingress) throw new Error("no ingress running");
      return ingress;
    },
    add,
    async kill(replica) {
      forget(replica);
      replica.kill();
      await replica.exited;
    },
    freeze(replica) {
      replica.process.kill("SIGSTOP");
      let thawed = false;
      const thaw = () => {
        if (!thawed) replica.process.kill("SIGCONT");
        thawed = true;
      };
      frozen.add(thaw);
      return thaw;
    },
    async terminate(replica, timeoutMs = 20_000) {
      forget(replica);
      return replica.terminate(timeoutMs);
    },
    call: (simOptions = {}) =>
      new TwilioCallSimulator({ url: `ws://127.0.0.1:${cluster.ingress.port}/twilio`, customParameters: { agent: FAULT_AGENT }, ...simOptions }),
    record,
    async waitForRecord(callSid, what, predicate, timeoutMs = 10_000) {
      let last: CallRecord | undefined;
      try {
        return await waitFor(
          async () => {
            last = await record(callSid);
            return last && predicate(last) ? last : undefined;
          },
          { timeoutMs, intervalMs: 50, what: `the call record to show ${what}` },
        );
      } catch (error) {
        throw new Error(`${(error as Error).message}\nlast record: ${describeRecord(last)}`);
      }
    },
    metric: (replica, name) => metricOf(replica, name),
    busy: (name, timeoutMs = 5_000) =>
      waitFor(
        async () => {
          for (const replica of replicas[name]) {
            if ((await metricOf(replica, `voicebot_${name}_active_calls`).catch(() => 0)) > 0) return replica;
          }
          return undefined;
        },
        { timeoutMs, intervalMs: 10, what: `a ${name} replica working on a call` },
      ),
    recentLogs(lines = 30) {
      return all
        .map((r) => {
          const tail = r.logs.slice(-lines).map((l) => JSON.stringify(l)).join("\n");
          const exit = r.process.exitCode ?? r.process.signalCode;
          return `--- ${r.name} :${r.port} (exit ${exit}) ---\n${tail}${r.stderr() ? `\nSTDERR: ${r.stderr()}` : ""}`;
        })
        .join("\n");
    },
    stop: stopAll,
  };
  return cluster;
}

export async function metricOf(replica: ServiceProcess, name: string): Promise<number> {
  const text = await (await fetch(`${replica.baseUrl}/metrics`, { signal: AbortSignal.timeout(2_000) })).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

/** Caller and bot lines of a record, one per line, for failure messages and logs. */
export function describeRecord(record: CallRecord | undefined): string {
  if (!record) return "(no record)";
  const lines = record.transcript.map((e) => `  ${e.role}${e.source ? `/${e.source}` : ""}: ${e.text}`);
  return `state ${record.state}${record.endReason ? ` (${record.endReason})` : ""}\n${lines.join("\n")}`;
}

/** The answer the fault agent gives to each menu key. */
export const answers: Record<string, RegExp> = {
  "1": /You chose one/,
  "2": /You chose two/,
  "3": /You chose three/,
  "4": /You chose four/,
  "8": /You chose eight/,
};

/** Caller keypad lines and the bot lines of a record. */
export function lines(record: CallRecord): { keys: string[]; bot: string[] } {
  return {
    keys: record.transcript.filter((e) => e.role === "caller" && e.source === "keypad").map((e) => e.text),
    bot: record.transcript.filter((e) => e.role === "bot").map((e) => e.text),
  };
}

/** A replica of `master` and one sentinel watching both (quorum 1), ready to promote the replica. */
async function startSentinelGroup(master: ServerHandle) {
  const name = "voicebot";
  const replica = await startRedis({ args: ["--replicaof", "127.0.0.1", String(master.port)] });
  const sentinel = await startRedisSentinel({ masterPort: master.port, name, replicas: 1 });
  const ask = async (...command: string[]) => (await promisify(execFile)("redis-cli", ["-p", String(sentinel.port), "sentinel", ...command])).stdout;
  return {
    name,
    replica,
    sentinel,
    masterPort: async () => Number((await ask("get-master-addr-by-name", name)).trim().split("\n")[1]),
    replicasInSync: async () => (await ask("replicas", name)).match(/^master-link-status\nok$/gm)?.length ?? 0,
  };
}

/**
 * The hooks of a fault test file: after a failed test, the services' recent logs; after all, the file's report and
 * everything stopped. `started()`: what beforeAll started, the cluster first (undefined where it failed to start).
 */
export function faultTestHooks(file: string, report: string[], started: () => [Cluster | undefined, ...Array<{ stop(): Promise<void> } | undefined>]): void {
  afterEach((ctx) => {
    if (ctx.task.result?.state === "fail") console.log(`service logs after "${ctx.task.name}":\n${started()[0]?.recentLogs()}`);
  });
  afterAll(async () => {
    console.log(`${file}:\n  ${report.join("\n  ")}`);
    for (const server of started()) await server?.stop();
  });
}

/** Milliseconds from `since` to the first log line of `replica` matching `msg`. */
export async function logDelay(replica: ServiceProcess, msg: string | RegExp, since: number, timeoutMs = 15_000): Promise<number> {
  const line = await replica.waitForLog(
    (l) => (typeof msg === "string" ? l.msg === msg : msg.test(String(l.msg))) && Date.parse(String(l.time)) >= since,
    timeoutMs,
  );
  return Date.parse(String(line.time)) - since;
}

/** Starts a call on `cluster` and waits out the greeting. */
export async function connected(cluster: Cluster, options: Partial<SimulatorOptions> = {}): Promise<TwilioCallSimulator> {
  const sim = cluster.call(options);
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: 20_000 });
  return sim;
}
