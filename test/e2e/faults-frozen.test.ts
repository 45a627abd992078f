// One replica of a stage frozen (SIGSTOP) in the middle of a live call, with two replicas of every stage: its
// connections stay open, so NATS and Redis see a client gone quiet, not one that left (a long GC pause, a starved
// or swapped-out node). The other replica must take the call's work over, and when the frozen one wakes (SIGCONT)
// with its stale work it must not speak, answer or recognize anything a second time.
import { synthesize } from "@voicebot/callsim";
import { startFakeElevenLabs, waitFor, type FakeElevenLabs, type ServiceProcess } from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import { answers, describeRecord, lines, startCluster, type Cluster } from "./faults-cluster.js";

let cluster: Cluster;
let eleven: FakeElevenLabs;
let orderStatus: Uint8Array;
const report: string[] = [];

beforeAll(async () => {
  eleven = await startFakeElevenLabs({ reply: () => ({ intervalMs: 100 }) });
  [cluster, orderStatus] = await Promise.all([
    startCluster({
      counts: { asr: 2, dialog: 2, tools: 2, tts: 2 },
      serviceEnv: {
        tts: { TTS_ENGINES: "elevenlabs,flite", ELEVENLABS_API_KEY: "test-elevenlabs-key", ELEVENLABS_BASE_URL: eleven.baseUrl, TTS_MEMORY_CACHE_MB: "0" },
      },
    }),
    synthesize("order status", { engine: "flite", voice: "slt" }),
  ]);
});

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") console.log(`service logs after "${ctx.task.name}":\n${cluster?.recentLogs()}`);
});

afterAll(async () => {
  console.log(`faults-frozen.test.ts:\n  ${report.join("\n  ")}`);
  await cluster?.stop();
  await eleven?.stop();
});

const TURN_MS = 20_000;
/** How long a woken replica is given to do harm before the test looks. */
const AFTER_WAKE_MS = 3_000;

async function logDelay(replica: ServiceProcess, msg: string | RegExp, since: number, timeoutMs = 15_000): Promise<number> {
  const line = await replica.waitForLog(
    (l) => (typeof msg === "string" ? l.msg === msg : msg.test(String(l.msg))) && Date.parse(String(l.time)) >= since,
    timeoutMs,
  );
  return Date.parse(String(line.time)) - since;
}

async function connected(options: { turnQuietMs?: number } = {}) {
  const sim = cluster.call(options);
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  return sim;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("one replica of a stage frozen mid-call, then woken", () => {
  test("asr: the owner freezes; the other takes the call over; woken, the old owner recognizes nothing twice", async () => {
    const sim = await connected();
    await sim.say(orderStatus);
    await cluster.waitForRecord(sim.callSid, "the first utterance answered", (r) => lines(r).bot.filter((b) => answers["1"].test(b)).length >= 1, TURN_MS);
    const owner = await cluster.store.leaseOwner(sim.callSid, "asr");
    const frozen = cluster.replicas.asr.find((r) => owner === `asr-${r.port}`)!;
    const survivor = cluster.replicas.asr.find((r) => r !== frozen)!;
    const frozenAt = Date.now();
    const thaw = cluster.freeze(frozen);
    const takeoverMs = await logDelay(survivor, "call taken over", frozenAt);
    await sim.say(orderStatus); // heard by the survivor, and waiting in the frozen replica's socket
    await cluster.waitForRecord(sim.callSid, "the second utterance answered", (r) => lines(r).bot.filter((b) => answers["1"].test(b)).length >= 2, TURN_MS);
    thaw();
    await sleep(AFTER_WAKE_MS);
    await sim.say(orderStatus);
    const record = await cluster.waitForRecord(sim.callSid, "the third utterance answered", (r) => lines(r).bot.filter((b) => answers["1"].test(b)).length >= 3, TURN_MS);
    await sleep(1_000);
    const final = (await cluster.record(sim.callSid))!;
    const heard = final.transcript.filter((e) => e.role === "caller" && e.source === "speech");
    expect(heard, describeRecord(final)).toHaveLength(3);
    expect(lines(final).bot.filter((b) => answers["1"].test(b)), describeRecord(record)).toHaveLength(3);
    report.push(`asr frozen: the survivor took the call over ${takeoverMs} ms after the freeze; woken, the old owner added nothing (3 utterances, 3 answers)`);
    await sim.hangUp();
  });

  test("dialog: the replica taking a turn freezes in its tool; the other redoes the turn; woken, the old one says nothing twice", async () => {
    cluster.slow.delayMs = 2_500;
    const callsBefore = cluster.slow.calls;
    const sim = await connected();
    await sim.pressKeys("5"); // the slow tool
    const frozen = await cluster.busy("dialog");
    const survivor = cluster.replicas.dialog.find((r) => r !== frozen)!;
    await waitFor(() => cluster.slow.calls > callsBefore, { what: "the slow tool to start" });
    const frozenAt = Date.now();
    const thaw = cluster.freeze(frozen);
    await sim.pressKeys("2");
    await cluster.waitForRecord(
      sim.callSid,
      "the slow tool's answer, then the answer to 2",
      (r) => lines(r).bot.some((b) => /slow tool finished/.test(b)) && lines(r).bot.some((b) => answers["2"].test(b)),
      TURN_MS,
    );
    const answeredMs = Date.now() - frozenAt;
    thaw();
    await sleep(AFTER_WAKE_MS);
    await sim.pressKeys("3");
    await cluster.waitForRecord(sim.callSid, "the answer to 3", (r) => lines(r).bot.some((b) => answers["3"].test(b)), TURN_MS);
    await sleep(1_000);
    const record = (await cluster.record(sim.callSid))!;
    const { keys, bot } = lines(record);
    expect(keys).toEqual(["5", "2", "3"]);
    expect(bot.filter((b) => /slow tool|You chose/.test(b)), describeRecord(record)).toEqual(["The slow tool finished.", "You chose two.", "You chose three."]);
    const redoMs = await logDelay(survivor, "input was started before by a replica that did not finish it; redoing it", frozenAt);
    // Woken, the old replica found its lease taken and stopped the turn (it did not merely lose a race).
    await logDelay(frozen, /^dialog lease lost/, frozenAt);
    expect(await cluster.metric(frozen, "voicebot_dialog_lease_lost_total")).toBeGreaterThan(0);
    report.push(`dialog frozen mid-tool: the survivor redid the input ${redoMs} ms after the freeze, answers ${answeredMs} ms after it; woken, the old one added nothing`);
    await sim.hangUp();
  });

  test("tts: the replica speaking a chunk freezes; another speaks it; woken, the old one plays nothing twice", async () => {
    const sim = await connected({ turnQuietMs: 2_500 });
    // The dialog pre-warmed the tts cache with the agent's fixed lines: empty it, so the answer is synthesized now.
    const cached = await cluster.store.redis.keys("vb:cache:*");
    if (cached.length > 0) await cluster.store.redis.del(...cached);
    await sim.pressKeys("7"); // a four-sentence answer: four chunks over the two replicas
    const frozen = await cluster.busy("tts");
    await sleep(300);
    const frozenAt = Date.now();
    const thaw = cluster.freeze(frozen);
    // When the takeover passes ingress's no-silence deadline (a loaded machine), its fallback line plays first: the
    // answer is the first turn with the dialog's marks (`t<n>.<chunk>`).
    let answer = await sim.waitForBotTurn({ timeoutMs: 30_000 });
    while (!answer.marks.some((m) => m.startsWith("t"))) answer = await sim.waitForBotTurn({ timeoutMs: 30_000 });
    const answeredMs = Date.now() - frozenAt;
    thaw();
    await sleep(AFTER_WAKE_MS);
    await sim.pressKeys("1");
    const next = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    const turnId = answer.marks[0]?.split(".")[0];
    expect(answer.marks.map((m) => m.split(".")[1])).toEqual(["0", "1", "2", "3"]);
    expect(answer.marks.every((m) => m.startsWith(`${turnId}.`))).toBe(true);
    // The next turn is the answer to 1 alone: no stale audio of the long answer woke with the frozen replica.
    expect(next.marks.some((m) => m.startsWith(`${turnId}.`)), JSON.stringify(next.marks)).toBe(false);
    await cluster.waitForRecord(sim.callSid, "the answer to 1", (r) => lines(r).bot.some((b) => answers["1"].test(b)), TURN_MS);
    report.push(`tts frozen mid-chunk: all 4 chunks played, the answer ended ${answeredMs} ms after the freeze; woken, the old one played nothing`);
    await sim.hangUp();
  });

  test("tools: the replica running a tool freezes; the call goes on, and later tools are answered", async () => {
    cluster.slow.delayMs = 2_500;
    const sim = await connected();
    await sim.pressKeys("5");
    const frozen = await cluster.busy("tools");
    const frozenAt = Date.now();
    const thaw = cluster.freeze(frozen);
    await sim.pressKeys("3");
    await cluster.waitForRecord(
      sim.callSid,
      "an answer about the slow tool, then the answer to 3",
      (r) => lines(r).bot.some((b) => /slow tool (finished|failed)/.test(b)) && lines(r).bot.some((b) => answers["3"].test(b)),
      TURN_MS,
    );
    const firstMs = Date.now() - frozenAt;
    // Still frozen: each tool request must still be answered (the queue group may pick the frozen replica).
    cluster.slow.delayMs = 0;
    const finished = (r: Parameters<typeof lines>[0]) => lines(r).bot.filter((b) => /slow tool finished/.test(b)).length;
    const before = finished((await cluster.record(sim.callSid))!);
    for (let i = 1; i <= 3; i++) {
      const pressedAt = Date.now();
      await sim.pressKeys("5");
      await cluster.waitForRecord(sim.callSid, `slow tool answer ${i} while frozen`, (r) => finished(r) >= before + i, TURN_MS);
      report.push(`tools frozen: tool request ${i} answered in ${Date.now() - pressedAt} ms`);
    }
    thaw();
    const record = (await cluster.record(sim.callSid))!;
    report.push(`tools frozen mid-tool: first answer ${firstMs} ms after the freeze; ${describeRecord(record).split("\n").filter((l) => /slow tool/.test(l)).join(" | ")}`);
    await sim.hangUp();
  });
});

test("no replica crashed or wrote to stderr", () => {
  for (const replica of Object.values(cluster.replicas).flat()) {
    expect(replica.process.exitCode, `${replica.name}:${replica.port}`).toBeNull();
    expect(replica.stderr(), `${replica.name}:${replica.port}`).toBe("");
  }
});
