#!/usr/bin/env node
// Runs the whole voicebot locally: NATS and Redis (the ones at NATS_URL/REDIS_URL if they answer, else spawned
// here), then the five services as separate processes with their logs prefixed, until Ctrl-C drains everything.
// A service that exits once everything is up (a crash, a kill) is started again, as Kubernetes restarts a pod.
// Usage: pnpm start   (builds first)   or   node scripts/start.mjs [--replicas N]   (after pnpm build)
import { spawn } from "node:child_process";
import { accessSync, constants, existsSync, mkdirSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const env = process.env;
const ingressPort = Number(env.INGRESS_PORT || 8080);
/** The stages' HTTP ports (metrics, health) are this + 1…4, + 10 for each further replica. */
const httpPortBase = Number(env.VOICEBOT_HTTP_PORT_BASE || 9100);
const stages = [
  { name: "ingress", port: ingressPort, portEnv: "INGRESS_PORT" },
  { name: "asr", port: httpPortBase + 1, portEnv: "HTTP_PORT" },
  { name: "dialog", port: httpPortBase + 2, portEnv: "HTTP_PORT" },
  { name: "tools", port: httpPortBase + 3, portEnv: "HTTP_PORT" },
  { name: "tts", port: httpPortBase + 4, portEnv: "HTTP_PORT" },
];

/** `--replicas N` or VOICEBOT_REPLICAS: processes of each stateless stage (1–9; default 1). */
function replicasWanted() {
  let text = env.VOICEBOT_REPLICAS ?? "1";
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--replicas") text = argv[++i];
    else if (argv[i].startsWith("--replicas=")) text = argv[i].slice("--replicas=".length);
    else throw new Error(`unknown argument ${argv[i]} (usage: node scripts/start.mjs [--replicas N])`);
  }
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 9) throw new Error(`replicas must be a whole number from 1 to 9, not ${JSON.stringify(text ?? "")}`);
  return n;
}

let replicas;
try {
  replicas = replicasWanted();
} catch (error) {
  process.stderr.write(`start: ${error.message}\n`);
  process.exit(2);
}
// Each replica of asr, dialog, tools and tts is its own process on its own HTTP port (9101, 9111, 9121, … for asr);
// ingress runs once: it holds the callers' WebSockets on one port (in Kubernetes, replicas sit behind a Service).
const services = stages.flatMap((stage) =>
  Array.from({ length: stage.name === "ingress" ? 1 : replicas }, (_, i) => ({
    ...stage,
    label: i === 0 ? stage.name : `${stage.name}-${i + 1}`,
    port: stage.port + 10 * i,
  })),
);
const NAME_WIDTH = Math.max(7, ...services.map((s) => s.label.length));
// Node flags of every service, as in production (Dockerfile ENTRYPOINTs; SERVICE_NODE_FLAGS in libs/testing says why).
const serviceNodeFlags = ["--single-threaded-gc"];
// Longer than a service's own drain timeout, so a draining call is never cut short by us.
// A timer past 2^31-1 ms fires at once: the services refuse such a DRAIN_TIMEOUT_MS, and this wait is kept below it.
const drainTimeoutMs = env.DRAIN_TIMEOUT_MS?.trim() ? Number(env.DRAIN_TIMEOUT_MS) : 30_000;
const drainWaitMs = Math.min(Number.isFinite(drainTimeoutMs) ? Math.max(0, drainTimeoutMs) : 30_000, 2_147_483_647 - 10_000) + 10_000;

const color = process.stdout.isTTY && !env.NO_COLOR;
const paint = (code, text) => (color ? `\x1b[${code}m${text}\x1b[0m` : text);
const nameColors = { ingress: 36, asr: 35, dialog: 34, tools: 33, tts: 32, nats: 90, redis: 90, start: 1 };
const levelColors = { debug: 90, info: 32, warn: 33, error: 31 };
const stageOf = (label) => label.replace(/-\d+$/, "");

function clock(date = new Date()) {
  return date.toTimeString().slice(0, 8) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

function say(message) {
  process.stdout.write(`${paint(90, clock())} ${paint(nameColors.start, "start".padEnd(NAME_WIDTH))} ${message}\n`);
}

function formatValue(value) {
  if (typeof value === "string") return /[\s"=]/.test(value) || value === "" ? JSON.stringify(value) : value;
  return JSON.stringify(value);
}

/** One service log line (JSON) as "time name level msg k=v ...". */
function prettyLine(name, line) {
  const prefix = paint(nameColors[stageOf(name)] ?? 0, name.padEnd(NAME_WIDTH));
  let record;
  try {
    record = JSON.parse(line);
  } catch {
    return `${paint(90, clock())} ${prefix} ${line}`;
  }
  if (!record || typeof record !== "object") return `${paint(90, clock())} ${prefix} ${line}`;
  const { time, level, msg, service: _service, instance: _instance, ...fields } = record;
  const at = typeof time === "string" && !Number.isNaN(Date.parse(time)) ? clock(new Date(time)) : clock();
  const extra = Object.entries(fields).map(([k, v]) => `${paint(90, k + "=")}${formatValue(v)}`).join(" ");
  return `${paint(90, at)} ${prefix} ${paint(levelColors[level] ?? 0, String(level ?? "").padEnd(5))} ${msg ?? ""}${extra ? " " + extra : ""}`;
}

function write(format, name, line) {
  if (!line.trim()) return;
  const text = format(name, line);
  if (text !== undefined) process.stdout.write(text + "\n");
}

function pipeLines(stream, name, format) {
  let partial = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk) => {
    const lines = (partial + chunk).split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) write(format, name, line);
  });
  stream.on("end", () => write(format, name, partial));
}

const rawLine = (name, line) => `${paint(90, clock())} ${paint(nameColors[stageOf(name)] ?? 0, name.padEnd(NAME_WIDTH))} ${line}`;
// nats-server's startup banner and info lines are noise here; its warnings and errors are not.
const natsLine = (name, line) => (/\[(INF|DBG|TRC)\]/.test(line) ? undefined : rawLine(name, line));

// ---- probing and spawning the infrastructure ----

/** Opens a TCP connection, optionally writes, and resolves with the first line the server sends (or undefined). */
function firstLine(host, port, write, timeoutMs = 1_000) {
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    let data = "";
    const done = (value) => {
      socket.destroy();
      resolve(value);
    };
    socket.setTimeout(timeoutMs, () => done(undefined));
    socket.once("error", () => done(undefined));
    socket.once("connect", () => write && socket.write(write));
    socket.on("data", (chunk) => {
      data += chunk.toString("utf8");
      const end = data.indexOf("\r\n");
      if (end >= 0) done(data.slice(0, end));
    });
  });
}

/** "up" (with JetStream), "no-jetstream", or "down". */
async function probeNats(url) {
  const { hostname, port } = new URL(url);
  const line = await firstLine(hostname, Number(port || 4222));
  if (!line?.startsWith("INFO ")) return "down";
  try {
    return JSON.parse(line.slice(5)).jetstream ? "up" : "no-jetstream";
  } catch {
    return "down";
  }
}

async function probeRedis(url) {
  const { hostname, port } = new URL(url);
  // Any RESP reply (+PONG, or -NOAUTH when the URL carries a password) means a Redis server is there.
  const line = await firstLine(hostname, Number(port || 6379), "PING\r\n");
  return line !== undefined && (line.startsWith("+") || line.startsWith("-")) ? "up" : "down";
}

function portFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const isLoopback = (host) => ["127.0.0.1", "localhost", "::1", "[::1]"].includes(host);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const children = []; // every Child: infrastructure we started, then the services
let stopping = false;
/** Set once everything was up: before that a process that exits is a set-up error and stops everything. */
let systemUp = false;

/** Restart back-off after an unexpected exit, doubling up to the cap (as Kubernetes' CrashLoopBackOff). */
const RESTART_FIRST_MS = 1_000;
const RESTART_MAX_MS = 30_000;
/** A process that ran this long before it exited starts again after the first back-off. */
const RESTART_RESET_AFTER_MS = 60_000;

/**
 * One supervised process. Once the system is up, a process that exits on its own (a crash, a SIGKILL, or a SIGTERM
 * from someone else: it drained first) is started again after a back-off, as a Kubernetes pod is: the other
 * replicas, or the new process, take its calls over.
 */
class Child {
  constructor(name, kind, launch, onRestarted) {
    this.name = name;
    this.kind = kind;
    this.launch = launch;
    this.onRestarted = onRestarted;
    this.backoffMs = RESTART_FIRST_MS;
    this.restarts = 0;
    this.restartTimer = undefined;
    children.push(this);
    this.start();
  }

  start() {
    this.restartTimer = undefined;
    this.exitCode = undefined;
    this.startedAt = Date.now();
    this.process = this.launch();
    let settle;
    this.exited = new Promise((resolve) => (settle = resolve));
    const finished = (code, why) => {
      if (this.exitCode !== undefined) return;
      this.exitCode = code;
      settle(code);
      if (stopping) return;
      if (!systemUp) {
        say(paint(31, `${this.name} ${why}: stopping everything`));
        void shutdown(1);
        return;
      }
      this.scheduleRestart(why);
    };
    this.process.once("exit", (code, signal) => finished(code ?? signal, signal ? `exited (${signal})` : `exited (code ${code})`));
    // A binary that cannot be run emits "error" and no "exit".
    this.process.once("error", (error) => {
      const hint =
        error.code === "ENOENT" && this.kind === "infra"
          ? ` (apt-get install ${this.name === "nats" ? "nats-server" : "redis-server"}, or point ${this.name === "nats" ? "NATS_URL" : "REDIS_URL"} at a running server)`
          : "";
      finished(-1, `could not be started: ${error.message}${hint}`);
    });
  }

  scheduleRestart(why) {
    if (Date.now() - this.startedAt >= RESTART_RESET_AFTER_MS) this.backoffMs = RESTART_FIRST_MS;
    const delayMs = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, RESTART_MAX_MS);
    this.restarts += 1;
    say(paint(33, `${this.name} ${why}: starting it again in ${delayMs / 1000} s (restart ${this.restarts})`));
    this.restartTimer = setTimeout(() => {
      if (stopping) return;
      this.start();
      this.onRestarted?.(this);
    }, delayMs);
  }

  get running() {
    return this.exitCode === undefined && this.restartTimer === undefined;
  }

  /**
   * SIGKILL goes to the child's whole process group (it leads one: spawned detached), so the engines a service runs
   * (pocketsphinx, flite, espeak-ng) go with it; SIGTERM to the service alone, which still needs them to drain.
   */
  kill(signal) {
    if (this.exitCode !== undefined) return;
    try {
      if (signal === "SIGKILL") process.kill(-this.process.pid, signal);
      else this.process.kill(signal);
    } catch {
      this.process.kill(signal); // the group is gone already
    }
  }

  /**
   * SIGTERM, then SIGKILL after `timeoutMs`; resolves with the exit code. A pending restart is called off, and counts
   * as a clean stop: the exit that caused it was reported when it happened.
   */
  async stop(timeoutMs) {
    if (this.restartTimer !== undefined) {
      clearTimeout(this.restartTimer);
      this.restartTimer = undefined;
      return 0;
    }
    if (this.exitCode !== undefined) return this.exitCode;
    this.kill("SIGTERM");
    const timer = setTimeout(() => {
      say(paint(33, `${this.name} did not stop in ${timeoutMs / 1000} s: killing it`));
      this.kill("SIGKILL");
    }, timeoutMs);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

/**
 * A server binary's full path: Debian installs nats-server (and, on some releases, redis-server) in /usr/sbin, which
 * is not on a normal user's PATH. The bare name when it is nowhere (the spawn error then says how to install it).
 */
function serverBinary(name) {
  const dirs = (env.PATH ?? "").split(path.delimiter).concat(["/usr/sbin", "/usr/local/sbin", "/sbin"]);
  for (const dir of dirs.filter(Boolean)) {
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      /* keep looking */
    }
  }
  return name;
}

function spawnChild(name, kind, command, args, childEnv, format, onRestarted) {
  return new Child(
    name,
    kind,
    () => {
      // Own process group: a terminal Ctrl-C reaches only this launcher, which then drains the services in order.
      const child = spawn(command, args, { cwd: repoRoot, env: childEnv, stdio: ["ignore", "pipe", "pipe"], detached: true });
      pipeLines(child.stdout, name, format);
      pipeLines(child.stderr, name, format);
      return child;
    },
    onRestarted,
  );
}

async function waitUntil(what, entry, probe, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (stopping || entry.exitCode !== undefined) throw new Error(`${what} did not start`);
    if (await probe()) return;
    await sleep(100);
  }
  throw new Error(`${what} did not answer within ${timeoutMs / 1000} s`);
}

/** Uses the NATS at NATS_URL if it answers; otherwise runs one (JetStream on, store in .run/nats). */
async function ensureNats() {
  const url = env.NATS_URL || "nats://127.0.0.1:4222";
  // As the services take it: a comma-separated list, "host:port" meaning nats://host:port. Any server up will do.
  const servers = url.split(",").map((s) => s.trim()).filter(Boolean).map((s) => (s.includes("://") ? s : `nats://${s}`));
  const states = await Promise.all(servers.map(probeNats));
  if (states.includes("up")) {
    say(`using NATS at ${url.replace(/\/\/[^@/,]*@/g, "//***@")}`);
    return url;
  }
  const first = servers[0];
  const state = states[0];
  const { hostname, port } = new URL(first);
  if (state === "down" && !isLoopback(hostname)) throw new Error(`NATS_URL does not answer (${hostname}:${port || 4222})`);
  if (state === "no-jetstream") say(paint(33, `the NATS at ${hostname}:${port || 4222} has no JetStream; starting our own`));
  const wanted = Number(port || 4222);
  const usePort = state === "down" && (await portFree(wanted)) ? wanted : await freePort();
  const storeDir = path.join(repoRoot, ".run", "nats");
  mkdirSync(storeDir, { recursive: true });
  const args = ["-a", "127.0.0.1", "-p", String(usePort), "-js", "-sd", storeDir];
  // Started again on the same port and store: the services reconnect, and JetStream's queues are still there.
  const entry = spawnChild("nats", "infra", serverBinary("nats-server"), args, env, natsLine, () => say(`nats-server started again at nats://127.0.0.1:${usePort}`));
  const ownUrl = `nats://127.0.0.1:${usePort}`;
  await waitUntil("nats-server", entry, async () => (await probeNats(ownUrl)) === "up");
  say(`started nats-server at ${ownUrl} (JetStream store ${path.relative(repoRoot, storeDir)})`);
  return ownUrl;
}

/** Uses the Redis at REDIS_URL if it answers; otherwise runs one without persistence. */
async function ensureRedis() {
  const url = env.REDIS_URL || "redis://127.0.0.1:6379";
  const shown = url.replace(/\/\/([^@/]*):([^@/]*)@/, "//$1:***@");
  // A TLS server (rediss://) cannot be probed in plain text, nor can Sentinels be stood in for: used as configured.
  if (url.startsWith("rediss:") || env.REDIS_SENTINELS) {
    say(`using Redis at ${env.REDIS_SENTINELS ? `Sentinels ${env.REDIS_SENTINELS}` : shown} (not probed)`);
    return url;
  }
  if ((await probeRedis(url)) === "up") {
    say(`using Redis at ${shown}`);
    return url;
  }
  const { hostname, port } = new URL(url);
  if (!isLoopback(hostname)) throw new Error(`REDIS_URL does not answer (${hostname}:${port || 6379})`);
  const wanted = Number(port || 6379);
  const usePort = (await portFree(wanted)) ? wanted : await freePort();
  const args = ["--port", String(usePort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"];
  // Started again empty (no persistence): the services restore what live calls need or end them, telling the caller.
  const entry = spawnChild("redis", "infra", serverBinary("redis-server"), args, env, rawLine, () => say(`redis-server started again at redis://127.0.0.1:${usePort} (empty)`));
  const ownUrl = `redis://127.0.0.1:${usePort}`;
  await waitUntil("redis-server", entry, async () => (await probeRedis(ownUrl)) === "up");
  say(`started redis-server at ${ownUrl} (no persistence)`);
  return ownUrl;
}

// ---- the services ----

async function readiness(port) {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(1_000) });
    const body = await res.json().catch(() => ({}));
    return { ready: res.status === 200, reason: body.reason ?? `HTTP ${res.status}` };
  } catch {
    return { ready: false, reason: "not listening yet" };
  }
}

function lanAddresses() {
  return Object.values(os.networkInterfaces())
    .flat()
    .filter((a) => a && a.family === "IPv4" && !a.internal)
    .map((a) => a.address);
}

/** After a restart: says when the service is ready again (or that it still is not, a minute on). */
async function reportReadyAgain(service) {
  const since = Date.now();
  let state = { ready: false, reason: "not listening yet" };
  while (!stopping && Date.now() - since < 60_000) {
    state = await readiness(service.port);
    if (state.ready) return say(`${service.label} is ready again (${((Date.now() - since) / 1000).toFixed(1)} s after its restart)`);
    await sleep(100);
  }
  if (!stopping) say(paint(33, `${service.label} is still not ready a minute after its restart (${state.reason})`));
}

async function main() {
  for (const service of services) {
    const main = path.join(repoRoot, "services", service.name, "dist", "main.js");
    if (!existsSync(main)) throw new Error(`${path.relative(repoRoot, main)} is missing: build first (pnpm build)`);
    if (!(await portFree(service.port))) throw new Error(`port ${service.port} (${service.label}) is in use`);
  }
  const natsUrl = await ensureNats();
  const redisUrl = await ensureRedis();

  for (const service of services) {
    const childEnv = { ...env, NATS_URL: natsUrl, REDIS_URL: redisUrl, [service.portEnv]: String(service.port) };
    if (service.portEnv !== "HTTP_PORT") delete childEnv.HTTP_PORT;
    const args = [...serviceNodeFlags, path.join("services", service.name, "dist", "main.js")];
    spawnChild(service.label, "service", process.execPath, args, childEnv, prettyLine, () => void reportReadyAgain(service));
  }

  // Ready when every service says so; while waiting, say who is still not ready and why.
  let lastReport = Date.now();
  for (;;) {
    if (stopping) return;
    const states = await Promise.all(services.map(async (s) => ({ ...s, ...(await readiness(s.port)) })));
    if (states.every((s) => s.ready)) break;
    if (Date.now() - lastReport > 15_000) {
      lastReport = Date.now();
      say(`waiting for: ${states.filter((s) => !s.ready).map((s) => `${s.label} (${s.reason})`).join(", ")}`);
    }
    await sleep(250);
  }

  if (stopping) return;
  systemUp = true;

  const url = `ws://127.0.0.1:${ingressPort}/twilio`;
  const lan = lanAddresses().map((ip) => `ws://${ip}:${ingressPort}/twilio`);
  const callCmd = ingressPort === 8080 ? "pnpm call --dtmf 1 --dtmf 12345#" : `pnpm call --url ${url} --dtmf 1 --dtmf 12345#`;
  process.stdout.write(
    [
      "",
      paint(1, "voicebot is ready"),
      `  Twilio Media Stream:  ${url}${lan.length ? `   (on your network: ${lan.join(", ")})` : ""}`,
      `  TwiML for the number: <Response><Connect><Stream url="wss://YOUR_HOST/twilio"/></Connect></Response>`,
      `  place a test call:    ${callCmd}`,
      `  call records:         http://127.0.0.1:${ingressPort}/v1/calls/<callSid>`,
      `  metrics / readiness:  http://127.0.0.1:{${services.map((s) => s.port).join(",")}}/metrics and /readyz`,
      `  replicas:             ${replicas} of asr, dialog, tools and tts (--replicas N); a service that exits is started again`,
      "  stop:                 Ctrl-C (drains live calls first)",
      "",
    ].join("\n") + "\n",
  );
}

async function shutdown(exitCode) {
  if (stopping) return;
  stopping = true;
  const live = children.filter((c) => c.kind === "service" && c.running);
  if (live.length) say(`stopping ${live.map((c) => c.name).join(", ")} (draining live calls)`);
  // Ingress first: its live calls need every other stage while it drains them (asr hears, dialog answers, tts
  // speaks); the stages then stop with nothing left to do.
  const stages = children.filter((c) => c.kind === "service");
  const isIngress = (c) => c.name === "ingress" || c.name.startsWith("ingress-");
  const ingressCodes = await Promise.all(stages.filter(isIngress).map((c) => c.stop(drainWaitMs)));
  const codes = ingressCodes.concat(await Promise.all(stages.filter((c) => !isIngress(c)).map((c) => c.stop(drainWaitMs))));
  // Infrastructure last: the services need NATS and Redis while they drain.
  await Promise.all(children.filter((c) => c.kind === "infra").map((c) => c.stop(5_000)));
  const clean = codes.every((code) => code === 0);
  say(clean ? "stopped" : `stopped (service exit codes: ${children.filter((c) => c.kind === "service").map((c) => `${c.name}=${c.exitCode}`).join(" ")})`);
  process.exit(exitCode || (clean ? 0 : 1));
}

let signals = 0;
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(signal, () => {
    signals += 1;
    if (signals > 1) {
      say(paint(31, "second signal: killing everything"));
      for (const c of children) c.kill("SIGKILL");
      process.exit(130);
    }
    void shutdown(0);
  });
}
// Safety net: never leave children behind when this process dies of an error.
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

main().catch((error) => {
  say(paint(31, `error: ${error.message}`));
  void shutdown(1);
});
