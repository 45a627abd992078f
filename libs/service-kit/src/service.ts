import { Bus, errorText, Logger, LogThrottle, parseNatsServers, queueGroups, subjects, type Subscription } from "@voicebot/bus";
import { ReadinessRequest, ReadinessResponse } from "@voicebot/proto";
import { CallStore, DEFAULT_RECORD_MAX_ENTRIES, defaultStoreOptions, describeRedisTarget } from "@voicebot/state";
import { collectDefaultMetrics, Gauge, Registry } from "prom-client";
import { ConfigError, EnvReader, readCommonConfig, type CommonConfig } from "./config.js";
import { HttpServer, sendJson } from "./http.js";
import { createLogger } from "./log.js";

export interface ServiceContext {
  name: string;
  common: CommonConfig;
  log: Logger;
  registry: Registry;
  bus: Bus;
  store: CallStore;
  http: HttpServer;
  /** The port the HTTP server actually listens on. */
  port: number;
}

export interface RunningService {
  /** Why this replica cannot take new work right now (engine not warm, at capacity...), or undefined. */
  notReadyReason?(): string | undefined;
  /** Calls this replica is working on (exported as a gauge, used by drain). */
  activeCalls(): number;
  /** Stop taking new calls; resolve once live calls have finished or been handed over. */
  drain(): Promise<void>;
  /** Release engines and timers, after drain. */
  close?(): Promise<void>;
}

export interface ServiceDefinition<C> {
  /** Service name: log field, metric label, queue group and ping subject. */
  name: keyof typeof queueGroups | "ingress";
  defaultHttpPort: number;
  /** Environment variable that overrides the port (default HTTP_PORT). */
  portEnv?: string;
  readConfig(env: EnvReader): C;
  start(ctx: ServiceContext, config: C): Promise<RunningService>;
}

export interface ServiceHandle {
  ctx: ServiceContext;
  /** Drains and stops; resolves when everything is closed. */
  stop(): Promise<void>;
}

/**
 * Runs a service the same way everywhere: config, JSON logs, /metrics /healthz /readyz /info, NATS + Redis
 * links, a readiness ping on the bus, and a drain on SIGTERM that finishes live calls before exiting.
 * Only this function touches `process` (signals, exit codes).
 */
export async function runService<C>(definition: ServiceDefinition<C>, env = process.env): Promise<void> {
  const log = createLogger({ service: definition.name }, (env.LOG_LEVEL as "info") ?? "info");
  // A signal before the service is up (NATS unreachable, a slow warm-up) stops it at once: it holds no call yet, and
  // as PID 1 in a container a signal without a handler is ignored, so the pod would wait for SIGKILL.
  const onSignalWhileStarting = (signal: NodeJS.Signals) => {
    log.info("signal received while starting; exiting", { signal });
    process.exit(0);
  };
  process.on("SIGTERM", onSignalWhileStarting);
  process.on("SIGINT", onSignalWhileStarting);
  let handle: ServiceHandle;
  try {
    handle = await startService(definition, env);
  } catch (error) {
    log.error(error instanceof ConfigError ? error.message : "service failed to start", { error: errorText(error) });
    process.exit(error instanceof ConfigError ? 2 : 1);
  }
  process.off("SIGTERM", onSignalWhileStarting);
  process.off("SIGINT", onSignalWhileStarting);
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      handle.ctx.log.warn("second signal: exiting without drain", { signal });
      process.exit(130);
    }
    stopping = true;
    handle.ctx.log.info("signal received", { signal });
    handle.stop().then(
      () => process.exit(0),
      (error) => {
        handle.ctx.log.error("drain failed", { error: errorText(error) });
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  process.on("unhandledRejection", (reason) => handle.ctx.log.error("unhandled rejection", { error: errorText(reason) }));
}

/** Starts a service inside this process (used by runService, and by tests that need no separate process). */
export async function startService<C>(definition: ServiceDefinition<C>, env: NodeJS.ProcessEnv = process.env): Promise<ServiceHandle> {
  const reader = new EnvReader(env);
  const common = readCommonConfig(reader, definition.defaultHttpPort, definition.name);
  if (definition.portEnv) common.httpPort = reader.int(definition.portEnv, common.httpPort, { min: 0, max: 65535 });
  const config = definition.readConfig(reader);
  const recordTtlMs = reader.int("CALL_RECORD_TTL_SECONDS", defaultStoreOptions.recordTtlMs / 1000, { min: 3600 }) * 1000;
  const recordMaxEntries = reader.int("CALL_RECORD_MAX_ENTRIES", DEFAULT_RECORD_MAX_ENTRIES, { min: 100, max: 100_000 });
  reader.done();

  const log = createLogger({ service: definition.name, instance: common.instanceId }, common.logLevel);
  const registry = new Registry();
  registry.setDefaultLabels({ service: definition.name });
  collectDefaultMetrics({ register: registry });

  let draining = false;
  let running: RunningService | undefined;
  let bus: Bus | undefined;
  const store = CallStore.connect(common.redis, { ...defaultStoreOptions, recordTtlMs, recordMaxEntries });
  // Why Redis cannot be reached (a wrong password, a TLS problem, a failover) goes to the log: once per kind every 10 s.
  const redisErrors = new LogThrottle(10_000, 50);
  store.redis.on("error", (error: Error) => {
    const throttled = redisErrors.admit(error.message);
    if (throttled) log.warn("redis link error", { error: error.message, ...throttled });
  });
  const stall = watchEventLoop();

  const notReadyReason = (): string | undefined => {
    if (draining) return "draining";
    if (!bus) return "nats: connecting";
    if (!bus.connected) return "nats: disconnected";
    if (!store.ready) return `redis: ${store.redis.status}`;
    if (!running) return "starting";
    return running.notReadyReason?.();
  };

  const http = new HttpServer(log, registry);
  http.route("GET", /^\/healthz$/, (_req, res) => {
    const problem = bus?.nc.isClosed() ? "nats connection closed" : stall.stalledMs() > 5_000 ? "event loop stalled" : undefined;
    sendJson(res, problem ? 503 : 200, { status: problem ? "unhealthy" : "ok", reason: problem });
  });
  http.route("GET", /^\/readyz$/, (_req, res) => {
    const reason = notReadyReason();
    sendJson(res, reason ? 503 : 200, { status: reason ? "unready" : "ready", reason });
  });
  http.route("GET", /^\/info$/, (_req, res) =>
    sendJson(res, 200, { service: definition.name, instance: common.instanceId, activeCalls: running?.activeCalls() ?? 0, draining }),
  );
  http.route("GET", /^\/metrics$/, async (_req, res) => {
    const body = await registry.metrics();
    res.writeHead(200, { "content-type": registry.contentType });
    res.end(body);
  });
  const port = await http.listen(common.httpPort);
  log.info("http listening", { port });

  new Gauge({
    name: `voicebot_${definition.name}_active_calls`,
    help: "Calls this replica is working on",
    registers: [registry],
    collect() {
      this.set(running?.activeCalls() ?? 0);
    },
  });
  new Gauge({
    name: "voicebot_ready",
    help: "1 when this replica is ready for new work",
    registers: [registry],
    collect() {
      this.set(notReadyReason() ? 0 : 1);
    },
  });

  try {
    bus = await Bus.connect({
      servers: common.natsUrl,
      ...(common.natsAuth ? { auth: common.natsAuth } : {}),
      ...(common.natsTls ? { tls: common.natsTls } : {}),
      streamReplicas: common.natsStreamReplicas,
      name: common.instanceId,
      log,
      registry,
    });
    running = await definition.start({ name: definition.name, common, log, registry, bus, store, http, port }, config);
  } catch (error) {
    // Leave nothing open behind a service that could not start.
    await bus?.close().catch(() => undefined);
    await store.close();
    await http.close();
    stall.stop();
    throw error;
  }
  const ctx: ServiceContext = { name: definition.name, common, log, registry, bus, store, http, port };
  log.info("started", { nats: parseNatsServers(common.natsUrl).servers.join(","), redis: describeRedisTarget(common.redis) });

  // Only ready replicas answer readiness pings, so one answer means the service can take a call.
  let pingSub: Subscription | undefined;
  const readyBus = bus;
  const syncPing = () => {
    const ready = notReadyReason() === undefined;
    if (ready && !pingSub) {
      pingSub = readyBus.serve(
        subjects.ping(definition.name),
        ReadinessRequest,
        ReadinessResponse,
        async () => ({ service: definition.name, instance: common.instanceId, activeCalls: running?.activeCalls() ?? 0 }),
        { name: "ping", queue: definition.name },
      );
    } else if (!ready && pingSub) {
      pingSub.unsubscribe();
      pingSub = undefined;
    }
  };
  syncPing();
  const pingTimer = setInterval(syncPing, 250);

  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      draining = true;
      syncPing();
      log.info("drain started", { activeCalls: running?.activeCalls() ?? 0, timeoutMs: common.drainTimeoutMs });
      // A drain that fails is logged: the links and engines are closed all the same.
      const drained = running!.drain().then(
        () => true,
        (error: unknown) => {
          log.error("drain failed; closing anyway", { activeCalls: running?.activeCalls() ?? 0, error: errorText(error) });
          return true;
        },
      );
      const timedOut = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), common.drainTimeoutMs).unref());
      if (!(await Promise.race([drained, timedOut]))) {
        log.warn("drain timeout reached with calls still active", { activeCalls: running?.activeCalls() ?? 0 });
      }
      clearInterval(pingTimer);
      await running!.close?.();
      await readyBus.drain().catch(() => undefined);
      await store.close();
      await http.close();
      stall.stop();
      log.info("stopped");
    })());
  return { ctx, stop };
}

/** Measures how late a 250 ms timer fires, to report a stuck event loop on /healthz. */
function watchEventLoop() {
  let last = Date.now();
  const timer = setInterval(() => (last = Date.now()), 250);
  timer.unref();
  return {
    stalledMs: () => Date.now() - last - 250,
    stop: () => clearInterval(timer),
  };
}
