// Crashes (SIGKILL) of one replica of each stage in the middle of a live call, with two replicas of every stage
// (one ingress: the caller's WebSocket lives on it). The call must go on, and every key the caller pressed must
// get its answer. tts speaks through a fake ElevenLabs that streams at real-time pace (so a chunk is in flight long
// enough to be caught mid-synthesis), with flite as the fallback engine.
import { synthesize } from "@voicebot/callsim";
import { startFakeElevenLabs, waitFor, type FakeElevenLabs, type ServiceName, type ServiceProcess } from "@voicebot/testing";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import { answers, describeRecord, lines, startCluster, type Cluster } from "./faults-cluster.js";
import { loudnessDbfs } from "./system.js";

let cluster: Cluster;
let eleven: FakeElevenLabs;
/** How the fake ElevenLabs answers: streams at real-time pace unless a test makes it fail. */
let elevenFails = false;
let orderStatus: Uint8Array;
const report: string[] = [];

beforeAll(async () => {
  eleven = await startFakeElevenLabs({ reply: () => (elevenFails ? { status: 500, message: "fake outage" } : { intervalMs: 100 }) });
  [cluster, orderStatus] = await Promise.all([
    startCluster({
      counts: { asr: 2, dialog: 2, tools: 2, tts: 2 },
      serviceEnv: {
        // No memory tier: the engines test empties the Redis cache to have a line synthesized now, and a replica's
        // own copy of the pre-warmed line would answer instead.
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
  console.log(`faults-replicas.test.ts:\n  ${report.join("\n  ")}`);
  await cluster?.stop();
  await eleven?.stop();
});

const TURN_MS = 20_000;

/** Milliseconds from `since` to the first log line of `replica` matching `msg`. */
async function logDelay(replica: ServiceProcess, msg: string | RegExp, since: number, timeoutMs = 15_000): Promise<number> {
  const line = await replica.waitForLog(
    (l) => (typeof msg === "string" ? l.msg === msg : msg.test(String(l.msg))) && Date.parse(String(l.time)) >= since,
    timeoutMs,
  );
  return Date.parse(String(line.time)) - since;
}

/** Starts a call and waits out the greeting. */
async function connected(options: { turnQuietMs?: number } = {}) {
  const sim = cluster.call(options);
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  return sim;
}

/** Presses `key` and waits for the record to show its answer (the n-th such answer). */
async function pressAndExpect(sim: ReturnType<Cluster["call"]>, key: string, count = 1): Promise<void> {
  await sim.pressKeys(key);
  await cluster.waitForRecord(sim.callSid, `the answer to ${key}`, (r) => lines(r).bot.filter((b) => answers[key].test(b)).length >= count, TURN_MS);
}

async function replace(name: ServiceName): Promise<void> {
  await cluster.add(name);
}

describe("one replica of a stage crashes mid-call", () => {
  test("tts: the replica speaking a chunk dies; another replica speaks it again and the whole answer plays", async () => {
    const sim = await connected({ turnQuietMs: 2_500 });
    const skippedBefore = await cluster.metric(cluster.ingress, "voicebot_ingress_playout_skipped_chunks_total");
    const underrunsBefore = await cluster.metric(cluster.ingress, "voicebot_ingress_playout_underruns_total");
    await sim.pressKeys("7"); // a four-sentence answer: four chunks over the two replicas
    const victim = await cluster.busy("tts");
    await new Promise((r) => setTimeout(r, 300)); // mid-synthesis: each chunk streams for a second or more
    const killedAt = Date.now();
    await cluster.kill(victim);
    const survivor = cluster.replicas.tts[0];

    // When the takeover passes ingress's no-silence deadline (a loaded machine), its fallback line plays first: the
    // answer is the first turn with the dialog's marks (`t<n>.<chunk>`).
    let answer = await sim.waitForBotTurn({ timeoutMs: 30_000 });
    while (!answer.marks.some((m) => m.startsWith("t"))) answer = await sim.waitForBotTurn({ timeoutMs: 30_000 });
    const takeoverMs = await logDelay(survivor, "speak request redelivered: the replica that had it stopped before finishing", killedAt);
    const record = await cluster.waitForRecord(sim.callSid, "the long answer", (r) => lines(r).bot.some((b) => b.startsWith("Here is a long answer")));
    const turnId = answer.marks[0]?.split(".")[0];
    // Every chunk was played (a mark per chunk echoed), none skipped as lost.
    expect(answer.marks.map((m) => m.split(".")[1])).toEqual(["0", "1", "2", "3"]);
    expect(answer.marks.every((m) => m.startsWith(`${turnId}.`))).toBe(true);
    expect(await cluster.metric(cluster.ingress, "voicebot_ingress_playout_skipped_chunks_total")).toBe(skippedBefore);
    expect(loudnessDbfs(answer.audio)).toBeGreaterThan(-40);
    const underruns = (await cluster.metric(cluster.ingress, "voicebot_ingress_playout_underruns_total")) - underrunsBefore;
    report.push(
      `tts kill: a chunk in flight on the dead replica was redelivered to the survivor ${takeoverMs} ms after the kill; all 4 chunks played (${(answer.audio.length / 8000).toFixed(1)} s, ${underruns} playout underrun(s))`,
    );
    expect(describeRecord(record)).toContain("Here is a long answer");

    await pressAndExpect(sim, "1");
    await sim.hangUp();
    await replace("tts");
  });

  test("dialog: the replica taking a turn dies while its tool runs; the other redoes the turn, keys pressed meanwhile are answered", async () => {
    cluster.slow.delayMs = 2_500;
    const callsBefore = cluster.slow.calls;
    const sim = await connected();
    await sim.pressKeys("5"); // the slow tool
    const victim = await cluster.busy("dialog");
    await waitFor(() => cluster.slow.calls > callsBefore, { what: "the slow tool to start" });
    const killedAt = Date.now();
    await cluster.kill(victim);
    await sim.pressKeys("2"); // pressed while the turn is being taken over

    const record = await cluster.waitForRecord(
      sim.callSid,
      "the slow tool's answer, then the answer to 2",
      (r) => lines(r).bot.some((b) => /slow tool finished/.test(b)) && lines(r).bot.some((b) => answers["2"].test(b)),
      TURN_MS,
    );
    const answeredMs = Date.now() - killedAt;
    const { keys, bot } = lines(record);
    expect(keys).toEqual(["5", "2"]);
    // The answers come in the order of the keys, each once.
    const order = bot.filter((b) => /slow tool|You chose/.test(b));
    expect(order).toEqual(["The slow tool finished.", "You chose two."]);
    // The redo did not run the tool again: the tools service answered it from the first execution.
    expect(cluster.slow.calls - callsBefore).toBe(1);
    const survivor = cluster.replicas.dialog[0];
    const redoMs = await logDelay(survivor, "input was started before by a replica that did not finish it; redoing it", killedAt);
    report.push(`dialog kill mid-tool: the survivor redid the input ${redoMs} ms after the kill; both answers in the record ${answeredMs} ms after it; lost keys 0`);

    await sim.hangUp();
    await replace("dialog");
  });

  test("tools: the replica running a tool dies; the call goes on and keys pressed meanwhile are answered", async () => {
    cluster.slow.delayMs = 2_500;
    const sim = await connected();
    await sim.pressKeys("5");
    const victim = await cluster.busy("tools");
    const killedAt = Date.now();
    await cluster.kill(victim);
    await sim.pressKeys("3");
    const record = await cluster.waitForRecord(
      sim.callSid,
      "an answer about the slow tool, then the answer to 3",
      (r) => lines(r).bot.some((b) => /slow tool (finished|failed)/.test(b)) && lines(r).bot.some((b) => answers["3"].test(b)),
      TURN_MS,
    );
    const { keys, bot } = lines(record);
    expect(keys).toEqual(["5", "3"]);
    const toolLine = bot.find((b) => /slow tool/.test(b))!;
    report.push(`tools kill mid-tool: "${toolLine}" ${Date.now() - killedAt} ms after the kill; lost keys 0`);
    await sim.hangUp();
    await replace("tools");
  });

  test("asr: the replica that owns the call dies; the other takes it over and recognizes the next utterance", async () => {
    const sim = await connected();
    await sim.say(orderStatus);
    await cluster.waitForRecord(sim.callSid, "the first utterance answered", (r) => lines(r).bot.filter((b) => answers["1"].test(b)).length >= 1, TURN_MS);
    const owner = await cluster.store.leaseOwner(sim.callSid, "asr");
    const victim = cluster.replicas.asr.find((r) => owner === `asr-${r.port}`);
    expect(victim, `the owner ${owner} is one of ours`).toBeDefined();
    const killedAt = Date.now();
    await cluster.kill(victim!);
    const survivor = cluster.replicas.asr[0];
    const takeoverMs = await logDelay(survivor, "call taken over", killedAt);

    await sim.say(orderStatus);
    const record = await cluster.waitForRecord(
      sim.callSid,
      "the second utterance answered",
      (r) => lines(r).bot.filter((b) => answers["1"].test(b)).length >= 2,
      TURN_MS,
    );
    const heard = record.transcript.filter((e) => e.role === "caller" && e.source === "speech").map((e) => e.text);
    expect(heard).toHaveLength(2);
    expect(await cluster.store.leaseOwner(sim.callSid, "asr")).toBe(`asr-${survivor.port}`);
    report.push(`asr kill: the survivor took the call over ${takeoverMs} ms after the kill; the next utterance was recognized (${JSON.stringify(heard)})`);
    await sim.hangUp();
    await replace("asr");
  });

  test("engines: with ElevenLabs failing, calls still get audio from flite", async () => {
    elevenFails = true;
    try {
      // The dialog pre-warmed the tts cache with the agent's fixed lines (ElevenLabs still worked then): empty it,
      // so the answer must be synthesized now.
      const cached = await cluster.store.redis.keys("vb:cache:*");
      if (cached.length > 0) await cluster.store.redis.del(...cached);
      const before = await Promise.all(cluster.replicas.tts.map((r) => cluster.metric(r, "voicebot_tts_failovers_total")));
      const sim = await connected();
      await sim.pressKeys("8");
      const answer = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
      expect(answer.audio.length / 8000).toBeGreaterThan(0.5);
      expect(loudnessDbfs(answer.audio)).toBeGreaterThan(-40);
      await cluster.waitForRecord(sim.callSid, "the answer to 8", (r) => lines(r).bot.some((b) => answers["8"].test(b)));
      const after = await Promise.all(cluster.replicas.tts.map((r) => cluster.metric(r, "voicebot_tts_failovers_total")));
      expect(after.reduce((a, b) => a + b, 0)).toBeGreaterThan(before.reduce((a, b) => a + b, 0));
      report.push(`elevenlabs failing: the answer came from flite, ${answer.latencyMs} ms after the key`);
      await sim.hangUp();
    } finally {
      elevenFails = false;
    }
  });
});

test("no surviving replica crashed or wrote to stderr", () => {
  for (const replica of Object.values(cluster.replicas).flat()) {
    expect(replica.process.exitCode, `${replica.name}:${replica.port}`).toBeNull();
    expect(replica.stderr(), `${replica.name}:${replica.port}`).toBe("");
  }
});
