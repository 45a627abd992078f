// The ingress replica that holds a call's Twilio stream dies, or is rolled, mid-call. Calls come in as Twilio places
// them: through the voice webhook, whose TwiML follows <Connect><Stream> with a <Redirect> back to it. When a stream
// closes without `stop`, Twilio runs that redirect and the webhook connects the call to a new stream on a live
// replica, which resumes it: same call, same dialog state, no second greeting. A TCP proxy in front of the ingress
// replicas stands for the Kubernetes Service (it stops sending to a replica that died or is draining).

import { dialThroughWebhook, synthesize, TwilioCallSimulator } from "@voicebot/callsim";
import { keys } from "@voicebot/state";
import { startTcpProxy, waitFor, type TcpProxy } from "@voicebot/testing";
import { beforeAll, expect, test } from "vitest";
import { answers, faultTestHooks, lines, logDelay, startCluster, type Cluster } from "./faults-cluster.js";

let cluster: Cluster;
let orderStatus: Uint8Array;
/** The Service in front of the ingress replicas: Twilio reaches whichever replica it points at. */
let service: TcpProxy;
const report: string[] = [];
const TURN_MS = 20_000;
/** A lost stream's call is ended after this (shorter than the default 10 s, so the test is quick). */
const STREAM_LEASE_MS = 4_000;

beforeAll(async () => {
  service = await startTcpProxy(1); // pointed at a replica once they run
  orderStatus = await synthesize("order status", { engine: "flite", voice: "slt" });
  cluster = await startCluster({
    counts: { ingress: 2 },
    serviceEnv: {
      ingress: {
        TWILIO_STREAM_URL: `ws://127.0.0.1:${service.port}/twilio`,
        INGRESS_STREAM_LEASE_MS: String(STREAM_LEASE_MS),
        INGRESS_RECORD_CHECK_MS: "1000",
      },
    },
  });
  service.targetPort = cluster.replicas.ingress[0].port;
}, 120_000);

faultTestHooks("faults-ingress.test.ts", report, () => [cluster, { stop: () => service.close() }]);

/** Two ingress replicas behind the Service (a test that killed or stopped one replaces it here). */
async function twoIngress(): Promise<void> {
  while (cluster.replicas.ingress.length < 2) await cluster.add("ingress");
}

async function dial(): Promise<TwilioCallSimulator> {
  const sim = await dialThroughWebhook(`http://127.0.0.1:${service.port}/twilio/voice`);
  await sim.waitForBotTurn({ timeoutMs: TURN_MS }); // the greeting
  return sim;
}

async function pressAndExpect(sim: TwilioCallSimulator, key: string, count = 1): Promise<void> {
  await sim.pressKeys(key);
  await cluster.waitForRecord(sim.callSid, `the answer to ${key}`, (r) => lines(r).bot.filter((b) => answers[key].test(b)).length >= count, TURN_MS);
}

test("the replica streaming a call is killed: Twilio's redirect resumes it on the other replica, which carries the call on", async () => {
  await twoIngress();
  const [victim, survivor] = cluster.replicas.ingress;
  service.targetPort = victim.port;
  const sim = await dial();
  await pressAndExpect(sim, "1");
  const firstStream = sim.streamSid;

  service.targetPort = survivor.port; // the Service's endpoints lose the dead pod
  const killedAt = Date.now();
  await cluster.kill(victim);
  await waitFor(() => sim.resumes === 1, { what: "the call resumed on a new stream", timeoutMs: 10_000 });
  const resumedMs = await logDelay(survivor, "call resumed on this stream", killedAt);
  // The line was cut: the dialog prompts the caller again (the agent's reprompt) rather than both sides wait.
  await cluster.waitForRecord(sim.callSid, "the reprompt after the cut", (r) => lines(r).bot.some((b) => b.startsWith("Say again.")), TURN_MS);
  // Heard out (a key over it would cut it short): the turns the first stream's close ended do not count.
  while ((await sim.waitForBotTurn({ timeoutMs: TURN_MS })).endedByClose);
  await pressAndExpect(sim, "2");
  const answeredMs = Date.now() - killedAt;
  // Speech too: the new stream's frames go on from the call's clock (its chunk numbers start again at 1).
  await sim.say(orderStatus);
  await cluster.waitForRecord(sim.callSid, "the spoken answer", (r) => lines(r).bot.filter((b) => answers["1"].test(b)).length >= 2, TURN_MS);

  const record = (await cluster.record(sim.callSid))!;
  const { keys, bot } = lines(record);
  expect(keys).toEqual(["1", "2"]);
  expect(bot.filter((b) => b.startsWith("Say again."))).toHaveLength(1);
  expect(record.transcript.filter((e) => e.role === "caller" && e.source === "speech").map((e) => e.text)).toEqual(["order status"]);
  expect(bot.filter((b) => b.startsWith("Hello."))).toHaveLength(1); // the conversation went on: no second greeting
  expect(record.state).toBe("live");
  expect(record.streamSid).toBe(sim.streamSid);
  expect(sim.streamSid).not.toBe(firstStream);
  expect(await cluster.metric(survivor, "voicebot_ingress_resumes_total")).toBe(1);
  report.push(`ingress kill mid-call: resumed on the other replica ${resumedMs} ms after the kill; the agent's reprompt heard, the next key answered ${answeredMs} ms after the kill; lost keys 0`);

  await sim.hangUp();
  const ended = await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  expect(ended.endReason).toBe("caller_hangup");
});

test("a plain start for a call live on one replica, sent to the other, is refused and does not take the call over", async () => {
  await twoIngress();
  const [holder, other] = cluster.replicas.ingress;
  service.targetPort = holder.port;
  const sim = await dial();
  // Not Twilio: it brings a call back on a new stream only through the redirect, as a resume.
  const errorsBefore = await cluster.metric(other, "voicebot_ingress_protocol_errors_total");
  const intruder = new TwilioCallSimulator({ url: `ws://127.0.0.1:${other.port}/twilio`, callSid: sim.callSid });
  await intruder.connect();
  expect(await intruder.closed).toBe(1008);
  expect(intruder.closeDetails?.reason).toBe("call_already_streaming");
  expect(await cluster.metric(other, "voicebot_ingress_protocol_errors_total")).toBe(errorsBefore + 1);
  // The call goes on on its own stream, untouched.
  await pressAndExpect(sim, "1");
  const record = (await cluster.record(sim.callSid))!;
  expect(record).toMatchObject({ state: "live", streamSid: sim.streamSid });
  expect(sim.isClosed).toBe(false);
  await sim.hangUp();
  await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
});

test("SIGTERM: a draining ingress hands its live call over at a quiet moment and exits without waiting for the call's end", async () => {
  await twoIngress();
  const [old, next] = cluster.replicas.ingress;
  service.targetPort = old.port;
  const sim = await dial();
  await pressAndExpect(sim, "1");

  service.targetPort = next.port; // a draining pod is taken out of the Service
  const stoppedAt = Date.now();
  const exit = await cluster.terminate(old);
  const exitMs = Date.now() - stoppedAt;
  expect(exit).toBe(0);
  await waitFor(() => sim.resumes === 1, { what: "the call resumed on a new stream", timeoutMs: 10_000 });
  expect(sim.isClosed).toBe(false);
  await pressAndExpect(sim, "3");
  const record = (await cluster.record(sim.callSid))!;
  expect(lines(record).keys).toEqual(["1", "3"]);
  expect(lines(record).bot.filter((b) => b.startsWith("Hello."))).toHaveLength(1);
  expect(lines(record).bot.filter((b) => b.startsWith("Say again."))).toEqual([]); // handed over on purpose: nothing to say again
  expect(await cluster.metric(next, "voicebot_ingress_resumes_total")).toBeGreaterThanOrEqual(1);
  // Nothing the caller was hearing was cut: the hand-over waited for the answer to have played.
  const closed = sim.events.find((e) => e.type === "stream-closed")!.detail as { unplayedMs: number };
  expect(closed.unplayedMs).toBe(0);
  report.push(`ingress SIGTERM mid-call: handed over, exit 0 after ${exitMs} ms (drain timeout 10 s); the call went on on the other replica`);

  await sim.hangUp();
});

test("the bot hangs up a resumable call: the redirect that follows finds it ended and hangs up", async () => {
  service.targetPort = cluster.replicas.ingress[0].port;
  const sim = await dial();
  await sim.pressKeys("9"); // "Goodbye." and the bot hangs up
  await sim.closed;
  expect(sim.resumes).toBe(0);
  expect(sim.closeDetails?.by).toBe("server");
  const record = await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  expect(record.endReason).toBe("bot_hangup");
  expect(lines(record).bot.at(-1)).toBe("Goodbye.");
});

test("the replica streaming a call dies while the bot's goodbye plays: the stream that resumes the call hangs up", async () => {
  await twoIngress();
  const [victim, survivor] = cluster.replicas.ingress;
  service.targetPort = victim.port;
  const sim = await dial();
  await sim.pressKeys("9"); // "Goodbye." and the bot hangs up once it has played
  await waitFor(async () => (await cluster.store.redis.exists(keys.finalAction(sim.callSid))) === 1, { what: "the bot's hang-up asked for" });
  service.targetPort = survivor.port;
  await cluster.kill(victim);
  await waitFor(() => sim.resumes === 1, { what: "the call resumed on a new stream", timeoutMs: 10_000 });
  await sim.closed;
  expect(sim.closeDetails?.by).toBe("server");
  const record = await cluster.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended");
  expect(record.endReason).toBe("bot_hangup");
  expect(lines(record).bot.filter((b) => b.startsWith("Say again."))).toEqual([]); // nothing prompted after the goodbye
  expect(await cluster.store.redis.exists(keys.finalAction(sim.callSid))).toBe(0);
});

test("a stream lost for good (its ingress died, no resume came): the call is ended everywhere once its stream lease lapses", async () => {
  await twoIngress();
  const [victim, survivor] = cluster.replicas.ingress;
  // A stream placed without our redirect (a TwiML Bin): nothing resumes it.
  service.targetPort = victim.port;
  const sim = cluster.call({ url: `ws://127.0.0.1:${service.port}/twilio` });
  await sim.connect();
  await sim.waitForBotTurn({ timeoutMs: TURN_MS });
  service.targetPort = survivor.port;
  const killedAt = Date.now();
  await cluster.kill(victim);
  const record = await cluster.waitForRecord(sim.callSid, "the lost call ended", (r) => r.state === "ended", STREAM_LEASE_MS + 10_000);
  expect(record.endReason).toBe("stream_lost");
  const endedMs = Date.now() - killedAt;
  // Every stage let the call go: no lease or live state left behind.
  expect(await cluster.store.leaseOwner(sim.callSid, "asr")).toBeUndefined();
  expect(await cluster.store.leaseOwner(sim.callSid, "stream")).toBeUndefined();
  await waitFor(async () => (await cluster.metric(cluster.replicas.asr[0], "voicebot_asr_active_sessions")) === 0, { what: "the asr to drop the call" });
  report.push(`ingress kill, stream not resumable: the call was ended as stream_lost ${endedMs} ms after the kill (lease ${STREAM_LEASE_MS} ms)`);
});

test("no surviving replica crashed or wrote to stderr", () => {
  for (const replica of Object.values(cluster.replicas).flat()) {
    expect(replica.process.exitCode, `${replica.name}:${replica.port}`).toBeNull();
    expect(replica.stderr(), `${replica.name}:${replica.port}`).toBe("");
  }
});
