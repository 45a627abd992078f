// `pnpm start` (scripts/start.mjs) as a user runs it, with two replicas of each stage and its own NATS and Redis:
// a process that dies or is stopped once everything is up is started again (as Kubernetes restarts a pod), and
// a live call goes on through a killed dialog and tools replica, a stopped tts replica and a killed nats-server.
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { TwilioCallSimulator } from "@voicebot/callsim";
import type { CallRecord } from "@voicebot/state";
import { canConnect, freePort, waitFor } from "@voicebot/testing";
import { afterAll, expect, test } from "vitest";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TURN_MS = 20_000;

let launcher: ChildProcess | undefined;
const output: string[] = [];

afterAll(async () => {
  if (launcher && launcher.exitCode === null) {
    launcher.kill("SIGINT");
    await new Promise((resolve) => launcher!.once("exit", resolve));
  }
});

/** A base whose stage ports (base + 1…4 and + 11…14) are all free. */
async function freePortBase(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 400) * 100;
    const ports = [1, 2, 3, 4, 11, 12, 13, 14].map((offset) => base + offset);
    if (!(await Promise.all(ports.map((port) => canConnect(port)))).some(Boolean)) return base;
  }
  throw new Error("no free port range for the stages");
}

/** The launcher's child processes: the label a service's port or the binary names, and its pid. */
function children(ppid: number, ports: Record<string, number>): Record<string, number> {
  const found: Record<string, number> = {};
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) !== ppid) continue;
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      if (cmdline[0].endsWith("nats-server")) found.nats = Number(entry);
      const environ = readFileSync(`/proc/${entry}/environ`, "utf8").split("\0");
      // Every service inherits INGRESS_PORT; the stages' own port is HTTP_PORT (ingress has none).
      const port = (environ.find((v) => v.startsWith("HTTP_PORT=")) ?? environ.find((v) => v.startsWith("INGRESS_PORT=")))?.split("=")[1];
      const label = Object.entries(ports).find(([, p]) => String(p) === port)?.[0];
      if (label && cmdline.some((arg) => arg.endsWith("main.js"))) found[label] = Number(entry);
    } catch {
      // a process that ended meanwhile
    }
  }
  return found;
}

async function waitForOutput(what: RegExp, timeoutMs = 30_000): Promise<void> {
  await waitFor(() => output.some((line) => what.test(line)), { what: `the launcher to say ${what}`, timeoutMs });
}

test("pnpm start with two replicas: killed and stopped processes start again, and a live call goes on", async () => {
  const [natsPort, redisPort, ingressPort, base] = await Promise.all([freePort(), freePort(), freePort(), freePortBase()]);
  const ports = { ingress: ingressPort, asr: base + 1, dialog: base + 2, tools: base + 3, tts: base + 4, "tts-2": base + 14 };
  launcher = spawn(process.execPath, ["scripts/start.mjs", "--replicas", "2"], {
    cwd: repoRoot,
    env: {
      ...process.env,
      // A normal user's PATH, without the sbin directories where Debian puts nats-server.
      PATH: (process.env.PATH ?? "").split(":").filter((dir) => !dir.endsWith("sbin")).join(":"),
      NATS_URL: `nats://127.0.0.1:${natsPort}`,
      REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      INGRESS_PORT: String(ingressPort),
      VOICEBOT_HTTP_PORT_BASE: String(base),
      DRAIN_TIMEOUT_MS: "5000",
      NO_COLOR: "1",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let partial = "";
  const collect = (chunk: Buffer) => {
    const lines = (partial + chunk.toString("utf8")).split("\n");
    partial = lines.pop() ?? "";
    output.push(...lines);
  };
  launcher.stdout!.on("data", collect);
  launcher.stderr!.on("data", collect);
  const exited = new Promise<number | null>((resolve) => launcher!.once("exit", (code) => resolve(code)));
  let callSid = "";
  try {
    await waitForOutput(/voicebot is ready/, 90_000);
    expect(output.join("\n")).toContain(`started nats-server at nats://127.0.0.1:${natsPort}`);
    expect(output.join("\n")).toMatch(/replicas: +2 of asr, dialog, tools and tts/);
    const pids = children(launcher.pid!, ports);
    expect(Object.keys(pids).sort()).toEqual(["asr", "dialog", "ingress", "nats", "tools", "tts", "tts-2"].sort());

    const sim = new TwilioCallSimulator({ url: `ws://127.0.0.1:${ingressPort}/twilio` });
    callSid = sim.callSid;
    const record = async (): Promise<CallRecord> => (await (await fetch(`http://127.0.0.1:${ingressPort}/v1/calls/${sim.callSid}`)).json()) as CallRecord;
    const botSaid = async (pattern: RegExp) => (await record()).transcript.filter((e) => e.role === "bot" && pattern.test(e.text)).length;
    await sim.connect();
    await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    await sim.pressKeys("1");
    await waitFor(async () => (await botSaid(/key in your order number/)) >= 1, { what: "the number prompt", timeoutMs: TURN_MS });

    // Mid-call: a dialog and a tools replica crash, a tts replica is rolled (SIGTERM: it drains, then exits 0).
    process.kill(pids.dialog, "SIGKILL");
    process.kill(pids.tools, "SIGKILL");
    process.kill(pids["tts-2"], "SIGTERM");
    await sim.pressKeys("12345#");
    await waitFor(async () => (await botSaid(/Order 1 2 3 4 5 has shipped/)) >= 1, { what: "the order's answer", timeoutMs: TURN_MS });
    await waitForOutput(/dialog +exited \(SIGKILL\): starting it again in 1 s/);
    await waitForOutput(/tts-2 +exited \(code 0\): starting it again/);
    await waitForOutput(/dialog is ready again/);
    await waitForOutput(/tools is ready again/);
    await waitForOutput(/tts-2 is ready again/);
    const restarted = children(launcher.pid!, ports);
    for (const label of ["dialog", "tools", "tts-2"]) {
      expect(restarted[label], `${label} running again`).toBeGreaterThan(0);
      expect(restarted[label], `${label} is a new process`).not.toBe(pids[label]);
    }

    // nats-server dies: it is started again on its port and store; the services reconnect and the call goes on.
    process.kill(pids.nats, "SIGKILL");
    await waitForOutput(/nats-server started again at/);
    const callerLines = (await record()).transcript.filter((e) => e.role === "caller").length;
    await sim.pressKeys("1");
    // The prompt after this key (an earlier prompt's line may have been cut to what was heard: keys barge in).
    const promptAfterKey = async () => {
      const transcript = (await record()).transcript;
      const key = transcript.findIndex((e, i) => e.role === "caller" && transcript.slice(0, i + 1).filter((c) => c.role === "caller").length === callerLines + 1);
      return key >= 0 && transcript.slice(key + 1).some((e) => e.role === "bot" && /key in your order number/.test(e.text));
    };
    await waitFor(promptAfterKey, { what: "the number prompt after NATS came back", timeoutMs: 30_000 });
  } catch (error) {
    const transcript = await fetch(`http://127.0.0.1:${ingressPort}/v1/calls/${callSid}`)
      .then(async (res) => ((await res.json()) as CallRecord).transcript.map((e) => `${e.role}: ${e.text}`).join("\n"))
      .catch(() => "(no record)");
    throw new Error(`${(error as Error).message}\n--- the call's transcript ---\n${transcript}\n--- launcher output (last 60 lines) ---\n${output.slice(-60).join("\n")}`);
  }

  // Ctrl-C with the call still live: ingress drains it while every other stage still runs; they stop after it.
  const running = children(launcher.pid!, ports);
  const goneAt: Record<string, number> = {};
  const sweep = () => {
    const now = children(launcher!.pid!, ports);
    for (const label of Object.keys(running)) if (!(label in now)) goneAt[label] ??= performance.now();
  };
  const watching = setInterval(sweep, 20);
  launcher.kill("SIGINT");
  expect(await exited).toBe(0);
  clearInterval(watching);
  sweep();
  await waitForOutput(/start +stopped$/, 1_000);
  for (const label of ["asr", "dialog", "tools", "tts", "tts-2", "nats"]) {
    expect(goneAt[label] - goneAt.ingress, `${label} stopped after ingress`).toBeGreaterThanOrEqual(0);
  }
}, 240_000);
