// A rolling update during a live call: for each stage a new replica is started and the old one gets SIGTERM while
// it is working on the call. The old replica must stop taking new work, finish (or hand over) what it has, and exit
// 0; the call goes on through its keypad flow without losing an input. Then ingress itself: SIGTERM drains it (no
// new calls; the live call runs to its end), while a second ingress takes new calls.
import { synthesize } from "@voicebot/callsim";
import { startFakeElevenLabs, waitFor, type FakeElevenLabs, type ServiceName, type ServiceProcess } from "@voicebot/testing";
import { beforeAll, expect, test } from "vitest";
import { WebSocket } from "ws";
import { answers, describeRecord, FAULT_AGENT, faultTestHooks, lines, startCluster, type Cluster } from "./faults-cluster.js";
import { loudnessDbfs } from "./system.js";

let cluster: Cluster;
let eleven: FakeElevenLabs;
let orderStatus: Uint8Array;
const report: string[] = [];

beforeAll(async () => {
  // ElevenLabs (fake) streams at real-time pace, so tts is busy with a chunk long enough to be stopped mid-way.
  eleven = await startFakeElevenLabs({ reply: () => ({ intervalMs: 100 }) });
  [cluster, orderStatus] = await Promise.all([
    startCluster({
      env: { DRAIN_TIMEOUT_MS: "30000" },
      serviceEnv: {
        tts: { TTS_ENGINES: "elevenlabs,flite", ELEVENLABS_API_KEY: "test-elevenlabs-key", ELEVENLABS_BASE_URL: eleven.baseUrl },
      },
    }),
    synthesize("order status", { engine: "flite", voice: "slt" }),
  ]);
});

faultTestHooks("faults-rolling.test.ts", report, () => [cluster, eleven]);

const TURN_MS = 20_000;

/** The old replica of `name` is busy with the call: start its successor, then SIGTERM it; resolves with its exit code. */
async function roll(name: ServiceName): Promise<{ old: ServiceProcess; exit: Promise<number | null>; stoppedAt: number }> {
  const old = await cluster.busy(name);
  await cluster.add(name);
  // Still working on the call when the signal comes (otherwise this would test nothing).
  expect(await cluster.metric(old, `voicebot_${name}_active_calls`)).toBeGreaterThan(0);
  const stoppedAt = Date.now();
  return { old, exit: cluster.terminate(old, 30_000), stoppedAt };
}

/** The HTTP status a WebSocket upgrade gets (101 when it is accepted). */
function upgradeStatus(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.once("upgrade", () => {
      resolve(101);
      ws.close();
    });
    ws.once("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
    });
    ws.once("error", reject);
  });
}

function drainedIn(old: ServiceProcess, stoppedAt: number): number {
  const stopped = old.logs.find((l) => l.msg === "stopped");
  return stopped ? Date.parse(String(stopped.time)) - stoppedAt : -1;
}

test("every stage is replaced during one live call; its keypad flow completes and no key is lost", async () => {
  cluster.slow.delayMs = 3_000;
  // Keys come while earlier answers still play; with barge-in each would cut them off, and the answers are the test.
  const sim = cluster.call({ turnQuietMs: 1_500, customParameters: { agent: FAULT_AGENT, bargeIn: "false" } });
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  const answered = (pattern: RegExp, count: number, what: string) =>
    cluster.waitForRecord(sim.callSid, what, (r) => lines(r).bot.filter((b) => pattern.test(b)).length >= count, TURN_MS);

  // dialog: SIGTERM while it runs a turn (the slow tool); it finishes the turn, then exits.
  await sim.pressKeys("5");
  const dialog = await roll("dialog");
  await sim.pressKeys("2"); // taken by the new replica, answered after the turn in progress
  await answered(/slow tool finished/, 1, "the slow tool's answer");
  await answered(answers["2"], 1, "the answer to 2");
  expect(await dialog.exit).toBe(0);
  report.push(`dialog: SIGTERM during a turn; the old replica finished it and exited 0 after ${drainedIn(dialog.old, dialog.stoppedAt)} ms`);

  // tools: SIGTERM while the tool runs; the result still comes back, then it exits.
  await sim.pressKeys("5");
  const tools = await roll("tools");
  await answered(/slow tool finished/, 2, "the second slow tool answer");
  expect(await tools.exit).toBe(0);
  report.push(`tools: SIGTERM during a tool; it answered and exited 0 after ${drainedIn(tools.old, tools.stoppedAt)} ms`);

  // tts: SIGTERM while it speaks a long answer; every chunk still plays.
  await sim.pressKeys("7");
  const tts = await roll("tts");
  // The long answer's four chunks all play. The simulator's next turn may be an earlier answer still queued (the
  // dialog and tools steps above waited on the call record, not on the caller), so the marks are gathered until the
  // newest turn's last chunk has played.
  const long = await sim.waitForBotTurn({ timeoutMs: 30_000 });
  const marks = [...long.marks];
  const longTurn = () => marks.at(-1)!.split(".")[0];
  const chunksOf = (turn: string) => marks.filter((m) => m.startsWith(`${turn}.`)).map((m) => m.split(".")[1]);
  while (!chunksOf(longTurn()).includes("3")) marks.push(...(await sim.waitForBotTurn({ timeoutMs: 30_000 })).marks);
  expect(chunksOf(longTurn())).toEqual(["0", "1", "2", "3"]);
  expect(loudnessDbfs(long.audio)).toBeGreaterThan(-40);
  expect(await tts.exit).toBe(0);
  report.push(`tts: SIGTERM mid-synthesis; every chunk played (${(long.audio.length / 8000).toFixed(1)} s), exit 0 after ${drainedIn(tts.old, tts.stoppedAt)} ms`);

  // asr: SIGTERM while the caller speaks hands the call over; the new replica hears that utterance whole (ingress
  // replays it) and the next one.
  await sim.say(orderStatus);
  // Played to its end before the caller speaks again: speech over it would be a barge-in that cuts it short.
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await answered(answers["1"], 1, "the first spoken answer");
  const oldAsr = await cluster.busy("asr");
  await cluster.add("asr");
  const said = sim.say(orderStatus);
  await new Promise((resolve) => setTimeout(resolve, 550)); // "order st…": the old replica has the utterance open
  const asrStoppedAt = Date.now();
  const asrExit = cluster.terminate(oldAsr, 30_000);
  await said;
  expect(await asrExit).toBe(0);
  const successor = cluster.replicas.asr[0];
  const takeover = await successor.waitForLog((l) => l.msg === "call taken over" && l.callId === sim.callSid);
  await successor.waitForLog((l) => l.msg === "caller audio replayed" && l.callId === sim.callSid);
  report.push(`asr: SIGTERM mid-utterance handed the call over; the new replica took it ${Date.parse(String(takeover.time)) - asrStoppedAt} ms after the signal and replayed the utterance`);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await answered(answers["1"], 2, "the answer to the utterance spoken across the hand-over");
  await sim.say(orderStatus);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await answered(answers["1"], 3, "the third spoken answer");

  // The order flow, on the new replicas only.
  await sim.pressKeys("6");
  await cluster.waitForRecord(sim.callSid, "the order prompt", (r) => lines(r).bot.some((b) => /Number please/.test(b)), TURN_MS);
  await sim.pressKeys("12345#");
  const record = await answered(/Order 1 2 3 4 5 has shipped/, 1, "the order status");
  expect(lines(record).keys).toEqual(["5", "2", "5", "7", "6", "12345#"]);
  const heard = record.transcript.filter((e) => e.role === "caller" && e.source === "speech").map((e) => e.text);
  expect(heard, describeRecord(record)).toEqual(["order status", "order status", "order status"]);
  expect(record.toolCalls.filter((t) => t.name === "lookup_order" && t.ok)).toHaveLength(1);
  await sim.hangUp();
});

test("ingress: SIGTERM stops new calls, lets the live call finish, then exits; another ingress takes new calls", async () => {
  const sim = cluster.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  const old = cluster.ingress;
  const next = await cluster.add("ingress");
  const stoppedAt = Date.now();
  const exit = cluster.terminate(old, 40_000);

  // No new calls on the draining ingress...
  await waitFor(async () => (await fetch(`${old.baseUrl}/readyz`)).status === 503, { what: "the old ingress to report draining" });
  expect(await upgradeStatus(`ws://127.0.0.1:${old.port}/twilio`)).toBe(503);
  // ...while the live one goes on to its end.
  await sim.pressKeys("1");
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("9");
  await sim.closed;
  expect(sim.closeDetails?.by).toBe("server");
  expect(sim.closeDetails?.unplayedMs).toBe(0);
  expect(await exit).toBe(0);
  const record = (await cluster.record(sim.callSid))!;
  expect(record.state).toBe("ended");
  expect(record.endReason).toBe("bot_hangup");
  report.push(`ingress: SIGTERM; refused new streams, the live call ran to its goodbye, exit 0 after ${Date.now() - stoppedAt} ms`);

  // New calls go to the other ingress.
  expect(cluster.ingress).toBe(next);
  const fresh = cluster.call();
  await fresh.connect();
  await fresh.waitForBotTurn({ timeoutMs: TURN_MS });
  await fresh.pressKeys("4");
  await cluster.waitForRecord(fresh.callSid, "the answer to 4", (r) => lines(r).bot.some((b) => answers["4"].test(b)), TURN_MS);
  await fresh.hangUp();
});

test("no replica crashed or wrote to stderr", () => {
  for (const replica of cluster.all) {
    expect(replica.process.signalCode, `${replica.name}:${replica.port}`).toBeNull();
    expect(replica.stderr(), `${replica.name}:${replica.port}`).toBe("");
  }
});
