// The shared infrastructure fails under a live call: nats-server is killed and restarted on the same port with its
// JetStream store (every client reconnects, the work queues survive); redis-server is killed and restarted empty
// (no persistence: every call's record, dialog state, leases and hints are gone). Either way the call must go on,
// and the caller must never be left waiting in silence.
import { synthesize } from "@voicebot/callsim";
import { waitFor } from "@voicebot/testing";
import { beforeAll, expect, test } from "vitest";
import { answers, describeRecord, faultTestHooks, lines, startCluster, type Cluster } from "./faults-cluster.js";
import { loudnessDbfs } from "./system.js";

let cluster: Cluster;
let orderStatus: Uint8Array;
const report: string[] = [];

beforeAll(async () => {
  [cluster, orderStatus] = await Promise.all([startCluster(), synthesize("order status", { engine: "flite", voice: "slt" })]);
});

faultTestHooks("faults-infra.test.ts", report, () => [cluster]);

const TURN_MS = 20_000;

async function allReady(): Promise<void> {
  await waitFor(
    async () => {
      const codes = await Promise.all(cluster.all.filter((r) => r.process.exitCode === null).map((r) => fetch(`${r.baseUrl}/readyz`).then((x) => x.status, () => 0)));
      return codes.every((c) => c === 200) || undefined;
    },
    { timeoutMs: 15_000, intervalMs: 50, what: "every service to be ready again" },
  );
}

test("NATS restarted mid-call: a key pressed while it was down and the ones after are answered, speech is recognized again", async () => {
  const sim = cluster.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("1");
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });

  const killedAt = Date.now();
  const restarting = cluster.restartNats(1_000);
  await sim.pressKeys("2"); // while NATS is down
  await restarting;
  const upAt = Date.now();
  await allReady();
  const readyMs = Date.now() - upAt;

  await cluster.waitForRecord(sim.callSid, "the key pressed during the outage answered", (r) => lines(r).bot.some((b) => answers["2"].test(b)), TURN_MS);
  const answerToOutageKeyMs = Date.now() - killedAt;
  const during = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  expect(loudnessDbfs(during.audio)).toBeGreaterThan(-40);

  await sim.pressKeys("3");
  const after = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  expect(loudnessDbfs(after.audio)).toBeGreaterThan(-40);
  await sim.say(orderStatus);
  const record = await cluster.waitForRecord(
    sim.callSid,
    "the spoken request answered",
    (r) => lines(r).bot.some((b) => answers["3"].test(b)) && r.transcript.some((e) => e.role === "caller" && e.source === "speech"),
    TURN_MS,
  );
  expect(lines(record).keys).toEqual(["1", "2", "3"]);
  report.push(
    `NATS down 1 s: all services ready ${readyMs} ms after it was back; the key pressed while it was down was answered ${answerToOutageKeyMs} ms after the kill; ` +
      `the next key after ${after.latencyMs} ms; speech recognized again; lost inputs 0`,
  );
  await sim.hangUp();
  await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
});

/** SIGSTOP for `ms`, then SIGCONT: a server that stops answering with every connection left open (a stalled VM, a partition that heals). */
async function frozenFor(server: { process: { kill(signal: NodeJS.Signals): boolean } }, ms: number, during: () => Promise<void>): Promise<void> {
  server.process.kill("SIGSTOP");
  try {
    await during();
    await new Promise((resolve) => setTimeout(resolve, ms));
  } finally {
    server.process.kill("SIGCONT");
  }
}

// 3 s: a stall the links wait out. 8 s: past the Redis link timeout (5 s), so every service drops its connection,
// its commands in flight fail, and the dialog tries its input again in place once Redis answers.
for (const [which, frozenMs] of [["NATS", 3_000], ["Redis", 3_000], ["Redis", 8_000]] as const) {
  test(`${which} frozen ${frozenMs / 1000} s mid-call: keys pressed while it did not answer are answered when it is back, in order, and the call goes on`, async () => {
    const sim = cluster.call();
    await sim.connect();
    await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    const frozenAt = Date.now();
    await frozenFor(which === "NATS" ? cluster.nats : cluster.redis, frozenMs, () => sim.pressKeys("1"));
    const thawedAt = Date.now();
    await sim.pressKeys("2");
    const record = await cluster.waitForRecord(
      sim.callSid,
      "the answers to 1 and 2",
      (r) => lines(r).bot.some((b) => answers["1"].test(b)) && lines(r).bot.some((b) => answers["2"].test(b)),
      TURN_MS,
    );
    const answeredMs = Date.now() - thawedAt;
    expect(lines(record).keys).toEqual(["1", "2"]);
    expect(lines(record).bot.filter((b) => /You chose/.test(b))).toEqual(["You chose one.", "You chose two."]);
    // What was said across the outage (the answers, maybe ingress's fallback line) plays out first.
    for (;;) {
      const heard = await sim.waitForBotTurn({ timeoutMs: 2_500 }).catch(() => undefined);
      if (!heard && sim.bufferedMs === 0) break;
    }
    await sim.pressKeys("3");
    const after = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    expect(loudnessDbfs(after.audio)).toBeGreaterThan(-40);
    expect(after.latencyMs, "the call is back to its pace").toBeLessThan(1_500);
    report.push(`${which} frozen ${thawedAt - frozenAt} ms: both keys answered ${answeredMs} ms after it was back; the next key after ${after.latencyMs} ms`);
    await sim.hangUp();
    await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  });
}

test("Redis restarted empty mid-call: the caller is told and the conversation starts over; the call goes on and ends cleanly", async () => {
  const sim = cluster.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("6"); // into the order-number state: the dialog state now matters
  await cluster.waitForRecord(sim.callSid, "the order prompt", (r) => lines(r).bot.some((b) => /Number please/.test(b)), TURN_MS);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });

  const killedAt = Date.now();
  await cluster.restartRedis(500);
  // Everything about the call is gone from Redis; ingress writes the record again and the dialog starts over.
  const restarted = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  const toldMs = restarted.firstAudioAt - killedAt;
  expect(loudnessDbfs(restarted.audio)).toBeGreaterThan(-40);
  const record = await cluster.waitForRecord(sim.callSid, "the restart line", (r) => lines(r).bot.some((b) => /technical problem/.test(b)), TURN_MS);
  expect(record.state).toBe("live");
  expect(lines(record).bot[0]).toMatch(/^Sorry, we had a technical problem, so let's start again\. Hello\. Ready\.$/);
  await allReady();

  // The conversation goes on from the start: keys and speech (asr claimed the call again).
  await sim.pressKeys("1");
  await cluster.waitForRecord(sim.callSid, "the answer to 1", (r) => lines(r).bot.some((b) => answers["1"].test(b)), TURN_MS);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.say(orderStatus);
  const spoken = await cluster.waitForRecord(
    sim.callSid,
    "the spoken request answered",
    (r) => lines(r).bot.filter((b) => answers["1"].test(b)).length >= 2 && r.transcript.some((e) => e.role === "caller" && e.source === "speech"),
    TURN_MS,
  );
  report.push(`Redis restarted empty: the caller heard the restart line ${toldMs} ms after the kill; keys and speech answered afterwards`);

  await sim.pressKeys("9");
  await sim.closed;
  const ended = await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  expect(ended.endReason).toBe("bot_hangup");
  console.log(describeRecord(spoken));
});

test("no service crashed or wrote to stderr", () => {
  for (const replica of cluster.all) {
    expect(replica.process.exitCode, `${replica.name}:${replica.port}`).toBeNull();
    expect(replica.stderr(), `${replica.name}:${replica.port}`).toBe("");
  }
});
