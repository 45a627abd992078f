// Redis run for high availability: a master, a replica and a Sentinel, the services reaching Redis through the
// sentinel (REDIS_SENTINELS). The master crashes mid-call, in the middle of the caller keying an order number: the
// replica is promoted with the call's state, so the call goes on where it was — no restart line, no key lost.
import { synthesize } from "@voicebot/callsim";
import { waitFor } from "@voicebot/testing";
import { beforeAll, expect, test } from "vitest";
import { answers, describeRecord, faultTestHooks, lines, startCluster, type Cluster } from "./faults-cluster.js";

let cluster: Cluster;
let orderStatus: Uint8Array;
const report: string[] = [];

beforeAll(async () => {
  [cluster, orderStatus] = await Promise.all([startCluster({ sentinel: true }), synthesize("order status", { engine: "flite", voice: "slt" })]);
});

faultTestHooks("faults-sentinel.test.ts", report, () => [cluster]);

const TURN_MS = 20_000;

test("the Redis master crashes while the caller keys an order number: the promoted replica carries the call on", async () => {
  const sim = cluster.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("6");
  await cluster.waitForRecord(sim.callSid, "the order prompt", (r) => lines(r).bot.some((b) => /Number please/.test(b)), TURN_MS);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("123");

  const crashedAt = Date.now();
  const failover = cluster.crashRedisMaster();
  await sim.pressKeys("45#"); // while the master is gone and the sentinel promotes the replica
  const promotedMs = await failover;

  const answer = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  const answeredMs = answer.firstAudioAt - crashedAt;
  const record = await cluster.waitForRecord(sim.callSid, "the order answer", (r) => lines(r).bot.some((b) => /^Order /.test(b)), TURN_MS);
  const bot = lines(record).bot;
  expect(bot.find((b) => /^Order /.test(b))).toMatch(/^Order 1 2 3 4 5 has shipped\./); // every key arrived, in order
  expect(bot.some((b) => /technical problem/.test(b))).toBe(false); // the state survived: nothing started over
  expect(record.state).toBe("live");
  await waitFor(
    async () => {
      const codes = await Promise.all(cluster.all.map((r) => fetch(`${r.baseUrl}/readyz`).then((x) => x.status, () => 0)));
      return codes.every((c) => c === 200) || undefined;
    },
    { timeoutMs: 15_000, intervalMs: 50, what: "every service to be ready again" },
  );

  await sim.pressKeys("1");
  await cluster.waitForRecord(sim.callSid, "the answer to 1", (r) => lines(r).bot.some((b) => answers["1"].test(b)), TURN_MS);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("9");
  await sim.closed;
  const ended = await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  expect(ended.endReason).toBe("bot_hangup");
  report.push(`Redis master crashed: replica promoted ${promotedMs} ms after the crash; the order number keyed across it answered ${answeredMs} ms after the crash`);
  console.log(describeRecord(ended));
});

test("the Redis master crashes while the caller speaks: the utterance is recognized and answered", async () => {
  const sim = cluster.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  const failover = cluster.crashRedisMaster();
  await sim.say(orderStatus); // the asr hears it while its Redis fails over
  const promotedMs = await failover;
  const record = await cluster.waitForRecord(
    sim.callSid,
    "the spoken request answered",
    (r) => lines(r).bot.some((b) => answers["1"].test(b)) && r.transcript.some((e) => e.role === "caller" && e.source === "speech"),
    TURN_MS,
  );
  expect(lines(record).bot.some((b) => /technical problem/.test(b))).toBe(false);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("9");
  await sim.closed;
  expect((await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended")).endReason).toBe("bot_hangup");
  report.push(`Redis master crashed as the caller began to speak: replica promoted ${promotedMs} ms after the crash; the utterance recognized and answered`);
});

test("no service crashed or wrote to stderr", () => {
  for (const replica of cluster.all) {
    expect(replica.process.exitCode, `${replica.name}:${replica.port}`).toBeNull();
    expect(replica.stderr(), `${replica.name}:${replica.port}`).toBe("");
  }
});
