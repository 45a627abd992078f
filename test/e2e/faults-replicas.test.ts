// Crashes (SIGKILL) and freezes (SIGSTOP, then SIGCONT) of one replica of each stage in the middle of a live call,
// with two replicas of every stage (one ingress: the caller's WebSocket lives on it). The call must go on, and every
// key the caller pressed must get its answer. A frozen replica keeps its connections open, so NATS and Redis see a
// client gone quiet, not one that left (a long GC pause, a starved or swapped-out node): its work must be taken over
// all the same, and when it wakes with its stale work it must not speak, answer or recognize anything a second time.
// tts speaks through a fake ElevenLabs that streams at real-time pace (so a chunk is in flight long enough to be
// caught mid-synthesis), with flite as the fallback engine.
import { synthesize } from "@voicebot/callsim";
import { startFakeElevenLabs, waitFor, type FakeElevenLabs, type ServiceName } from "@voicebot/testing";
import { beforeAll, describe, expect, test } from "vitest";
import { answers, connected, FAULT_AGENT, describeRecord, faultTestHooks, lines, logDelay, startCluster, type Cluster } from "./faults-cluster.js";
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

faultTestHooks("faults-replicas.test.ts", report, () => [cluster, eleven]);

const TURN_MS = 20_000;

/** Presses `key` and waits for the record to show its answer (the n-th such answer). */
async function pressAndExpect(sim: ReturnType<Cluster["call"]>, key: string, count = 1): Promise<void> {
  await sim.pressKeys(key);
  await cluster.waitForRecord(sim.callSid, `the answer to ${key}`, (r) => lines(r).bot.filter((b) => answers[key].test(b)).length >= count, TURN_MS);
}

async function replace(name: ServiceName): Promise<void> {
  await cluster.add(name);
}

/** A call whose turn waits for the slow tool (2.5 s), and the dialog replica taking that turn. */
async function dialogInSlowTool() {
  cluster.slow.delayMs = 2_500;
  const callsBefore = cluster.slow.calls;
  // Keys come while earlier answers (or ingress's fallback line) still play; with barge-in each would cut them off,
  // and the answers are the test.
  const sim = await connected(cluster, { customParameters: { agent: FAULT_AGENT, bargeIn: "false" } });
  await sim.pressKeys("5"); // the slow tool
  const replica = await cluster.busy("dialog");
  await waitFor(() => cluster.slow.calls > callsBefore, { what: "the slow tool to start" });
  return { sim, replica, callsBefore };
}

describe("one replica of a stage crashes mid-call", () => {
  test("tts: the replica speaking a chunk dies; another replica speaks it again and the whole answer plays", async () => {
    const sim = await connected(cluster, { turnQuietMs: 2_500 });
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
    const { sim, replica: victim, callsBefore } = await dialogInSlowTool();
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

  test("tools: the replica running a tool dies; the other runs it again, and keys pressed meanwhile are answered", async () => {
    cluster.slow.delayMs = 2_500;
    const callsBefore = cluster.slow.calls;
    const sim = await connected(cluster);
    await sim.pressKeys("5");
    const victim = await cluster.busy("tools");
    await waitFor(() => cluster.slow.calls > callsBefore, { what: "the slow backend called" }); // mid-tool
    const killedAt = Date.now();
    await cluster.kill(victim);
    await sim.pressKeys("3");
    const record = await cluster.waitForRecord(
      sim.callSid,
      "an answer about the slow tool, then the answer to 3",
      (r) => lines(r).bot.some((b) => /slow tool (finished|failed)/.test(b)) && lines(r).bot.some((b) => answers["3"].test(b)),
      TURN_MS,
    );
    const answeredMs = Date.now() - killedAt;
    const { keys, bot } = lines(record);
    expect(keys).toEqual(["5", "3"]);
    // The dialog heard the dead replica fall silent and sent the request again; the survivor took over its stale
    // claim and ran the (idempotent) tool a second time, instead of the caller waiting out its 10 s timeout.
    expect(bot.filter((b) => /slow tool/.test(b))).toEqual(["The slow tool finished."]);
    expect(cluster.slow.calls - callsBefore).toBe(2);
    const survivor = cluster.replicas.tools[0];
    const takenOverMs = await logDelay(survivor, "tool request's first execution was lost with its replica: running the idempotent tool again", killedAt);
    report.push(`tools kill mid-tool: the survivor ran the tool again ${takenOverMs} ms after the kill; both answers in the record ${answeredMs} ms after it; lost keys 0`);
    await sim.hangUp();
    await replace("tools");
  });

  test("asr: the replica that owns the call dies; the other takes it over and recognizes the next utterance", async () => {
    const sim = await connected(cluster);
    await sim.say(orderStatus);
    await cluster.waitForRecord(sim.callSid, "the first utterance answered", (r) => lines(r).bot.filter((b) => answers["1"].test(b)).length >= 1, TURN_MS);
    // Played to the end before the second utterance: begun late (a loaded machine), its barge-in would cut it to
    // nothing heard, and the record would hold one answer too few.
    let answer = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    while (!answer.marks.some((m) => m.startsWith("t"))) answer = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
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

  test("asr: the owner dies while the caller is speaking; the survivor replays the caller's audio and hears the whole utterance", async () => {
    const sim = await connected(cluster);
    const owner = await cluster.store.leaseOwner(sim.callSid, "asr");
    const victim = cluster.replicas.asr.find((r) => owner === `asr-${r.port}`);
    expect(victim, `the owner ${owner} is one of ours`).toBeDefined();
    const survivor = cluster.replicas.asr.find((r) => r !== victim)!;
    const replayedBefore = await cluster.metric(cluster.ingress, "voicebot_ingress_caller_audio_replayed_frames_total");
    const said = sim.say(orderStatus); // ~0.85 s of speech after ~0.15 s of quiet
    await sleep(550); // the owner has an utterance open: "order st…"
    const killedAt = Date.now();
    await cluster.kill(victim!);
    await said;
    const replayedMs = await logDelay(survivor, "caller audio replayed", killedAt);

    const record = await cluster.waitForRecord(sim.callSid, "the utterance answered", (r) => lines(r).bot.some((b) => answers["1"].test(b)), TURN_MS);
    const heard = record.transcript.filter((e) => e.role === "caller" && e.source === "speech").map((e) => e.text);
    expect(heard, describeRecord(record)).toEqual(["order status"]);
    const replayedFrames = (await cluster.metric(cluster.ingress, "voicebot_ingress_caller_audio_replayed_frames_total")) - replayedBefore;
    // From before the onset to the takeover: the utterance and the quiet after it, no more than ingress keeps (5 s).
    expect(replayedFrames).toBeGreaterThan(50);
    expect(replayedFrames).toBeLessThanOrEqual(250);
    report.push(`asr kill mid-utterance: the survivor replayed ${replayedFrames} caller frames ${replayedMs} ms after the kill and heard ${JSON.stringify(heard)}`);
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
      const sim = await connected(cluster);
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

/** How long a woken replica is given to do harm before the test looks. */
const AFTER_WAKE_MS = 3_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("one replica of a stage frozen mid-call, then woken", () => {
  test("asr: the owner freezes; the other takes the call over; woken, the old owner recognizes nothing twice", async () => {
    const sim = await connected(cluster);
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
    const { sim, replica: frozen } = await dialogInSlowTool();
    const survivor = cluster.replicas.dialog.find((r) => r !== frozen)!;
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
    const sim = await connected(cluster, { turnQuietMs: 2_500 });
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
    // Keys come while earlier answers still play; with barge-in each would cut them off, and the answers are the test.
    const sim = await connected(cluster, { customParameters: { agent: FAULT_AGENT, bargeIn: "false" } });
    const callsBefore = cluster.slow.calls;
    await sim.pressKeys("5");
    const frozen = await cluster.busy("tools");
    await waitFor(() => cluster.slow.calls > callsBefore, { what: "the slow backend called" }); // mid-tool
    const frozenAt = Date.now();
    const thaw = cluster.freeze(frozen);
    await sim.pressKeys("3");
    const first = await cluster.waitForRecord(
      sim.callSid,
      "an answer about the slow tool, then the answer to 3",
      (r) => lines(r).bot.some((b) => /slow tool (finished|failed)/.test(b)) && lines(r).bot.some((b) => answers["3"].test(b)),
      TURN_MS,
    );
    const firstMs = Date.now() - frozenAt;
    // Gone silent mid-tool, the frozen replica's claim went stale: the other ran the tool again and it finished.
    expect(lines(first).bot.filter((b) => /slow tool/.test(b))).toEqual(["The slow tool finished."]);
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

test("no surviving replica crashed or wrote to stderr", () => {
  for (const replica of Object.values(cluster.replicas).flat()) {
    expect(replica.process.exitCode, `${replica.name}:${replica.port}`).toBeNull();
    expect(replica.stderr(), `${replica.name}:${replica.port}`).toBe("");
  }
});
