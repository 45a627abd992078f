// The caller hangs up in the middle of a turn: every stage must drop the call's work within a second and leave no
// live state behind (only the call record stays, with its TTL). And no turn ends in silence: with every tts replica
// gone, ingress answers the caller's input with its own fallback line; the real answer follows once tts is back.
import { keys, leaseRoles } from "@voicebot/state";
import { startFakeElevenLabs, waitFor, type FakeElevenLabs, type ServiceName } from "@voicebot/testing";
import { beforeAll, expect, test } from "vitest";
import { answers, faultTestHooks, lines, startCluster, type Cluster } from "./faults-cluster.js";
import { audioMs, loudnessDbfs } from "./system.js";

let cluster: Cluster;
let eleven: FakeElevenLabs;
const report: string[] = [];
const DEADLINE_MS = 3_000;
const FALLBACK_TEXT = "Sorry, I'm having trouble. One moment please.";
const services: ServiceName[] = ["ingress", "asr", "dialog", "tools", "tts"];

beforeAll(async () => {
  // ElevenLabs (fake) streams at real-time pace: tts is still speaking when the caller hangs up.
  eleven = await startFakeElevenLabs({ reply: () => ({ intervalMs: 100 }) });
  cluster = await startCluster({
    serviceEnv: {
      ingress: { NO_SILENCE_DEADLINE_MS: String(DEADLINE_MS) },
      tts: { TTS_ENGINES: "elevenlabs,flite", ELEVENLABS_API_KEY: "test-elevenlabs-key", ELEVENLABS_BASE_URL: eleven.baseUrl },
    },
  });
});

faultTestHooks("faults-hangup.test.ts", report, () => [cluster, eleven]);

const TURN_MS = 20_000;

/** What is left of a call: gauges above 0 and live Redis state (empty when all is clean). */
async function leftovers(callId: string): Promise<string[]> {
  const left: string[] = [];
  for (const name of services) {
    for (const replica of cluster.replicas[name]) {
      const active = await cluster.metric(replica, `voicebot_${name}_active_calls`);
      if (active > 0) left.push(`${name} active_calls=${active}`);
    }
  }
  const redis = cluster.store.redis;
  for (const key of [keys.dialog(callId), keys.hints(callId), ...leaseRoles.map((role) => keys.lease(callId, role))]) {
    if (await redis.exists(key)) left.push(key);
  }
  for (const role of leaseRoles) if ((await redis.zscore(keys.leaseIndex(role), callId)) !== null) left.push(`${keys.leaseIndex(role)} ∋ call`);
  return left;
}

/** Hangs up and waits until nothing of the call is left; returns how long that took. */
async function hangUpAndMeasure(sim: ReturnType<Cluster["call"]>): Promise<number> {
  const hungUpAt = Date.now();
  await sim.hangUp();
  let last: string[] = [];
  await waitFor(
    async () => {
      last = await leftovers(sim.callSid);
      return last.length === 0 || undefined;
    },
    { timeoutMs: 5_000, intervalMs: 20, what: "the call's work and live state to be gone" },
  ).catch((error: Error) => {
    throw new Error(`${error.message}; left: ${last.join(", ")}`);
  });
  const cleanMs = Date.now() - hungUpAt;
  // The record stays, every key of it with a TTL no longer than the record's (2 h by default).
  const record = await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  expect(record.endReason).toBe("caller_hangup");
  for (const key of await cluster.store.redis.keys(`vb:{${sim.callSid}}:*`)) {
    const ttl = await cluster.store.redis.pttl(key);
    expect(ttl, key).toBeGreaterThan(0);
    if (/:(meta|transcript|tools|turns)$/.test(key)) expect(ttl, key).toBeLessThanOrEqual(2 * 3600_000);
  }
  return cleanMs;
}

test("hang-up while the bot speaks (tts still synthesizing): every stage lets go of the call within 1 s", async () => {
  const sim = cluster.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("7");
  await cluster.busy("tts");
  await waitFor(() => sim.bufferedMs > 0 || undefined, { what: "the answer to start playing" });
  const cleanMs = await hangUpAndMeasure(sim);
  expect(cleanMs).toBeLessThan(1_000);
  report.push(`hang-up while speaking: all gauges 0 and no live keys ${cleanMs} ms after the hang-up`);
});

test("hang-up while a tool runs: the webhook is stopped and every stage lets go of the call within 1 s", async () => {
  cluster.slow.delayMs = 5_000;
  const sim = cluster.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  await sim.pressKeys("5");
  await Promise.all([cluster.busy("tools"), cluster.busy("dialog")]);
  const cleanMs = await hangUpAndMeasure(sim);
  expect(cleanMs).toBeLessThan(1_000);
  const tools = cluster.replicas.tools[0];
  await tools.waitForLog((l) => l.msg === "tools stopped: the call ended" && l.callId === sim.callSid);
  report.push(`hang-up during a 5 s tool: tool stopped, all gauges 0 and no live keys ${cleanMs} ms after the hang-up`);
});

test("no turn ends in silence: a digit entry is not mistaken for silence; with tts gone the caller hears the fallback line, then the answer once tts is back", async () => {
  const fallbacks = () => cluster.metric(cluster.ingress, "voicebot_ingress_no_silence_fallbacks_total");
  const sim = cluster.call();
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });

  // Keys of an entry the dialog collects silently: a pause longer than the deadline is not silence.
  await sim.pressKeys("6");
  await sim.waitForBotTurn({ timeoutMs: TURN_MS }); // "Number please."
  await sim.pressKeys("1");
  await new Promise((r) => setTimeout(r, DEADLINE_MS + 1_000));
  await sim.pressKeys("2345#");
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  expect(await fallbacks()).toBe(0);

  // Every tts replica is gone: the answer to the next key cannot be spoken.
  for (const replica of [...cluster.replicas.tts]) await cluster.kill(replica);
  await sim.pressKeys("1");
  const fallback = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  expect(fallback.latencyMs).toBeGreaterThanOrEqual(DEADLINE_MS - 100);
  expect(fallback.latencyMs).toBeLessThan(DEADLINE_MS + 1_000);
  expect(audioMs(fallback.audio)).toBeGreaterThan(2_000);
  expect(loudnessDbfs(fallback.audio)).toBeGreaterThan(-40);
  expect(await fallbacks()).toBe(1);
  await cluster.waitForRecord(sim.callSid, "the fallback line", (r) => lines(r).bot.includes(FALLBACK_TEXT));

  // tts comes back: the answer, kept in its work queue, is spoken after all.
  await cluster.add("tts");
  const late = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  expect(loudnessDbfs(late.audio)).toBeGreaterThan(-40);
  await cluster.waitForRecord(sim.callSid, "the answer to 1", (r) => lines(r).bot.some((b) => answers["1"].test(b)));
  report.push(
    `all tts down: fallback line heard ${fallback.latencyMs} ms after the key (deadline ${DEADLINE_MS} ms); the queued answer played once tts was back (${late.latencyMs} ms after the key)`,
  );

  // Back to normal: answers in time, no fallback.
  await sim.pressKeys("2");
  const normal = await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  expect(normal.latencyMs).toBeLessThan(DEADLINE_MS);
  expect(await fallbacks()).toBe(1);
  await hangUpAndMeasure(sim);
});

test("no service crashed or wrote to stderr", () => {
  for (const replica of Object.values(cluster.replicas).flat()) {
    expect(replica.process.exitCode, `${replica.name}:${replica.port}`).toBeNull();
    expect(replica.stderr(), `${replica.name}:${replica.port}`).toBe("");
  }
});
