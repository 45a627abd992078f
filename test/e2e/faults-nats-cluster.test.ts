// NATS run as a three-node cluster, as in production: the services are given every node and keep their work queues
// in three copies (NATS_STREAM_REPLICAS=3). A node crashes mid-call (the one leading the dialog's queue, then, once
// it is back, the one leading the tts queue): clients on it move to the others, the queue's copies elect a new
// leader, and the call goes on with every key answered in order.
import { streams } from "@voicebot/bus";
import { synthesize, type TwilioCallSimulator } from "@voicebot/callsim";
import { beforeAll, expect, test } from "vitest";
import { answers, describeRecord, faultTestHooks, lines, startCluster, type Cluster } from "./faults-cluster.js";

let cluster: Cluster;
let orderStatus: Uint8Array;
const report: string[] = [];

beforeAll(async () => {
  [cluster, orderStatus] = await Promise.all([startCluster({ natsNodes: 3 }), synthesize("order status", { engine: "flite", voice: "slt" })]);
});

faultTestHooks("faults-nats-cluster.test.ts", report, () => [cluster]);

const TURN_MS = 20_000;
/** A queue's new leader: nats-server 2.9's Raft election takes seconds (up to 12 s seen), plus a pull's renewal. */
const ELECTION_MS = 30_000;

/**
 * Lets the caller hear out every reply before the next input (so none is cut by a barge-in): an input during an
 * election gets ingress's no-silence line first, then its answer, two turns.
 */
async function heardOut(sim: TwilioCallSimulator): Promise<void> {
  // The answer itself (marks `t<n>.<chunk>`), not only ingress's no-silence line that fills an election: a caller who
  // spoke after that line alone would talk over the late answer and cut it from the record.
  for (;;) {
    const turn = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
    if (turn.marks.some((mark) => mark.startsWith("t"))) break;
  }
  while (await sim.waitForBotTurn({ timeoutMs: 3_000 }).then(() => true, () => false));
}

test("the node leading a work queue crashes mid-call, twice: keys pressed across each crash and speech are answered", async () => {
  const sim = cluster.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("1");
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });

  const dialogCrashAt = Date.now();
  const dialogLeader = await cluster.crashStreamLeader(streams.dialog.name);
  await sim.pressKeys("2"); // right after the crash: the dialog queue is electing its new leader
  await cluster.waitForRecord(sim.callSid, "the answer to 2", (r) => lines(r).bot.some((b) => answers["2"].test(b)), ELECTION_MS);
  const twoMs = Date.now() - dialogCrashAt;
  await heardOut(sim);

  await sim.say(orderStatus);
  await cluster.waitForRecord(sim.callSid, "the spoken request answered", (r) => r.transcript.some((e) => e.role === "caller" && e.source === "speech") && lines(r).bot.filter((b) => answers["1"].test(b)).length >= 2, TURN_MS);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });

  // The crashed node comes back (it catches up from the others), then the tts queue's leader crashes.
  const cluster3 = cluster.natsCluster!;
  await cluster3.restart(cluster3.nodes.findIndex((n) => n.name === dialogLeader));
  await new Promise((resolve) => setTimeout(resolve, 2_000)); // the node rejoins its streams' groups
  const ttsCrashAt = Date.now();
  const ttsLeader = await cluster.crashStreamLeader(streams.tts.name);
  await sim.pressKeys("3");
  await cluster.waitForRecord(sim.callSid, "the answer to 3", (r) => lines(r).bot.some((b) => answers["3"].test(b)), ELECTION_MS);
  const threeMs = Date.now() - ttsCrashAt;
  await heardOut(sim);
  await sim.pressKeys("4");
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });

  await sim.pressKeys("9");
  await sim.closed;
  const record = await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  expect(record.endReason).toBe("bot_hangup");
  expect(lines(record).keys).toEqual(["1", "2", "3", "4", "9"]);
  const bot = lines(record).bot;
  for (const key of ["1", "2", "3", "4"]) expect(bot.some((b) => answers[key].test(b)), `answer to ${key}`).toBe(true);
  expect(bot.findIndex((b) => answers["3"].test(b))).toBeLessThan(bot.findIndex((b) => answers["4"].test(b)));
  // Each answer waits for the queue's new leader: nats-server's Raft election (seconds; the no-silence line fills it).
  report.push(`dialog queue leader ${dialogLeader} crashed: the key pressed right after answered ${twoMs} ms after the crash; tts queue leader ${ttsLeader} crashed: the next key answered ${threeMs} ms after`);
  console.log(describeRecord(record));
});

test("no service crashed or wrote to stderr", () => {
  for (const replica of cluster.all) {
    expect(replica.process.exitCode, `${replica.name}:${replica.port}`).toBeNull();
    expect(replica.stderr(), `${replica.name}:${replica.port}`).toBe("");
  }
});
