// Playback and barge-in latency of the whole voicebot: real nats-server and redis-server, the five services as
// processes, simulated Twilio callers with flite speech. Per call: the greeting, a barge-in over it ("order
// status" during its second sentence), then keypad and spoken turns. Prints a table against the targets and
// exits 1 when one is missed (or a call failed).
//
//   pnpm -s build && tsc -p test/latency && node test/latency/dist/latency/latency-bench.js [--calls 20] ...
// (docs/benchmarks.md, "Playback and barge-in", has the figures and how to read them.)
import os from "node:os";
import { spawnSync } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import { mulawFrameEnergy } from "@voicebot/audio";
import { synthesize, type BotTurn, type SimEvent, type TwilioCallSimulator } from "@voicebot/callsim";
import type { CallRecord, TurnEntry } from "@voicebot/state";
import { waitFor } from "@voicebot/testing";
import { startSystem, type System } from "../e2e/system.js";
import { afterClear, startTap, type TwilioTap } from "./twilio-tap.js";

const HELP = `Playback and barge-in latency benchmark (starts its own NATS, Redis and the five services).

usage: node test/latency/dist/latency/latency-bench.js [options]

  --calls N         calls in all (default 20)
  --cold N          of those, calls run first and alone, each after emptying the TTS cache (default 3)
  --concurrency N   warm calls at once (default 4)
  --env K=V         extra environment for the services (repeatable), e.g. --env TTS_ENGINES=espeak
  --json FILE       also write every measurement as JSON
  --logs DIR        also write each service's log lines to DIR/<service>.jsonl
  -h, --help        this text`;

const TARGETS = { greetingMs: 300, clearMs: 700, leakedBytes: 0 };
const TURN_TIMEOUT_MS = 20_000;

interface TurnSample {
  kind: "keypad" | "speech";
  input: string;
  /** Caller input end -> first bot audio received by the caller. */
  callerMs: number;
  /** The same turn in the call record (ingress: input end -> first frame sent), with its stage split. */
  ingress?: TurnEntry;
}

interface CallResult {
  index: number;
  cold: boolean;
  callSid: string;
  /** Twilio `start` sent -> first `media` received, at the caller. */
  greetingCallerMs?: number;
  /** Ingress: `start` handled (record.startedAt) -> greeting's first frame sent (record.turns[0].firstAudioAt). */
  greetingIngressMs?: number;
  greeting?: TurnEntry;
  /** Caller's speech onset (first voiced frame sent) -> `clear` received. */
  clearMs?: number;
  /** Ingress's own view: the asr's SpeechActivity STARTED time -> clear sent. */
  ingressClearMs?: number;
  leakedBytes?: number;
  leakedMessages?: number;
  turns: TurnSample[];
  error?: string;
}

function parse() {
  const { values } = parseArgs({
    options: {
      calls: { type: "string", default: "20" },
      cold: { type: "string", default: "3" },
      concurrency: { type: "string", default: "4" },
      env: { type: "string", multiple: true, default: [] },
      json: { type: "string" },
      logs: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    process.exit(0);
  }
  const int = (name: string, value: string, min: number) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min} (got ${value})`);
    return n;
  };
  const calls = int("calls", values.calls, 1);
  const cold = Math.min(calls, int("cold", values.cold, 0));
  const env: Record<string, string> = {};
  for (const pair of values.env) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new Error(`--env takes KEY=VALUE (got ${pair})`);
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return { calls, cold, concurrency: int("concurrency", values.concurrency, 1), env, json: values.json, logs: values.logs };
}

/** Where the voice starts in synthesized speech (engines lead with quiet the VAD rightly ignores), ms. */
function leadingQuietMs(mulaw: Uint8Array): number {
  let offset = 0;
  while (offset + 160 <= mulaw.length && mulawFrameEnergy(mulaw.subarray(offset, offset + 160)) < -50) offset += 160;
  return offset / 8;
}

const find = (sim: TwilioCallSimulator, predicate: (e: SimEvent) => boolean, what: string, timeoutMs = TURN_TIMEOUT_MS) =>
  waitFor(() => sim.events.find(predicate), { timeoutMs, intervalMs: 5, what });

/** Bot turn number `after` (0 = the greeting), once the caller has heard all of it. */
async function turnAfter(sim: TwilioCallSimulator, after: number): Promise<BotTurn> {
  const deadline = Date.now() + TURN_TIMEOUT_MS;
  while (!sim.turns[after]) {
    if (sim.isClosed) throw new Error(`the call closed before bot turn ${after}`);
    if (Date.now() > deadline) throw new Error(`no bot turn ${after} within ${TURN_TIMEOUT_MS} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return sim.turns[after];
}

/** Empties every cache in Redis (the TTS audio cache lives under vb:cache:*), so the next greeting is synthesized. */
function flushCaches(system: System): number {
  const script = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) n = n + 1 end return n";
  const out = spawnSync("redis-cli", ["-p", String(system.redis.port), "EVAL", script, "0", "vb:cache:*"], { encoding: "utf8" });
  if (out.status !== 0) throw new Error(`redis-cli failed: ${out.stderr || out.error?.message}`);
  return Number(out.stdout.trim());
}

async function lastBotLine(system: System, callSid: string, botLines: number): Promise<string> {
  const record = await system.waitForRecord(callSid, `${botLines} bot lines`, (r) => r.transcript.filter((e) => e.role === "bot").length >= botLines);
  return record.transcript.filter((e) => e.role === "bot").at(-1)!.text;
}

async function runCall(system: System, tap: TwilioTap, speech: Uint8Array, index: number, cold: boolean): Promise<CallResult> {
  const sim = system.call({ url: tap.url });
  const result: CallResult = { index, cold, callSid: sim.callSid, turns: [] };
  const samples: Array<{ kind: TurnSample["kind"]; turn: BotTurn }> = [];
  try {
    await sim.connect();
    const started = sim.events.find((e) => e.dir === "sent" && e.type === "start")!;
    const firstAudio = await find(sim, (e) => e.type === "audio-start", "the greeting's first audio");
    result.greetingCallerMs = firstAudio.at - started.at;

    // Barge-in: once the greeting's first chunk has played (its mark echoed), the caller talks over the second.
    await find(sim, (e) => e.dir === "sent" && e.type === "mark", "the greeting's first chunk to play");
    const speaking = sim.say(speech);
    const speechStart = await find(sim, (e) => e.type === "speech-start", "the caller to start speaking", 2_000);
    const onsetAt = speechStart.at + leadingQuietMs(speech);
    const clear = await find(sim, (e) => e.dir === "received" && e.type === "clear", "ingress to send clear", 5_000).catch(() => undefined);
    if (clear) result.clearMs = clear.at - onsetAt;
    await speaking;
    await turnAfter(sim, 0); // the cut greeting
    samples.push({ kind: "speech", turn: await turnAfter(sim, 1) });
    const wire = afterClear(tap.call(sim.callSid));
    result.leakedBytes = wire.leakedBytes;
    result.leakedMessages = wire.leakedMessages;
    const line = system.services.ingress.logs.find((l) => l.callId === sim.callSid && String(l.msg).startsWith("barge-in"));
    if (typeof line?.onsetToClearMs === "number") result.ingressClearMs = line.onsetToClearMs;
    if (!clear) throw new Error("no clear: the caller's speech did not cut the greeting");

    // The asr may have misheard "order status": get to the order number question by keypad then.
    let botLines = 2;
    if (!/order number/i.test(await lastBotLine(system, sim.callSid, botLines))) {
      await sim.pressKeys("1");
      samples.push({ kind: "keypad", turn: await turnAfter(sim, sim.turns.length) });
      botLines += 1;
    }
    await sim.pressKeys("12345#");
    samples.push({ kind: "keypad", turn: await turnAfter(sim, sim.turns.length) });
    botLines += 1;
    if (!/shipped/i.test(await lastBotLine(system, sim.callSid, botLines))) throw new Error("the order lookup did not answer 'shipped'");
    // Back to the order question: by voice on even calls, by keypad on odd ones.
    if (index % 2 === 0) {
      await sim.say(speech);
      samples.push({ kind: "speech", turn: await turnAfter(sim, sim.turns.length) });
    } else {
      await sim.pressKeys("1");
      samples.push({ kind: "keypad", turn: await turnAfter(sim, sim.turns.length) });
    }
  } catch (error) {
    result.error = (error as Error).message;
  } finally {
    if (sim.isConnected && !sim.isClosed) await sim.hangUp().catch(() => undefined);
  }
  const record = await system.waitForRecord(sim.callSid, "the call ended", (r) => r.state === "ended").catch(() => undefined);
  if (record) attachRecord(result, record, samples);
  if (sim.protocolErrors.length > 0) result.error ??= `protocol errors: ${sim.protocolErrors.join("; ")}`;
  return result;
}

/** Pairs the caller's turns with the record's (same turn = first audio within 100 ms of each other). */
function attachRecord(result: CallResult, record: CallRecord, samples: Array<{ kind: TurnSample["kind"]; turn: BotTurn }>): void {
  const byFirstAudio = (at: number) =>
    record.turns.find((t) => Math.abs(Date.parse(t.firstAudioAt) - at) <= 100);
  const greeting = record.turns[0];
  if (greeting) {
    result.greeting = greeting;
    result.greetingIngressMs = Date.parse(greeting.firstAudioAt) - Date.parse(record.startedAt);
  }
  for (const { kind, turn } of samples) {
    result.turns.push({ kind, input: turn.input, callerMs: turn.latencyMs, ingress: byFirstAudio(turn.firstAudioAt) });
  }
}

// ---- statistics and the report ----

function percentile(values: number[], p: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

const median = (values: number[]) => percentile(values, 50);
const defined = (values: Array<number | undefined>) => values.filter((v): v is number => v !== undefined);
const fmt = (v: number | undefined) => (v === undefined ? "-" : String(Math.round(v)));

interface Row {
  name: string;
  values: number[];
  unit: string;
  /** Pass when the p95 (max for "max") is at or below it. */
  target?: number;
  judge?: "p95" | "max";
  note?: string;
}

function table(rows: Row[]): { text: string; failed: string[] } {
  const failed: string[] = [];
  const header = ["metric", "n", "p50", "p95", "max", "target", "result"];
  const lines = rows.map((row) => {
    const p95 = percentile(row.values, 95);
    const max = row.values.length ? Math.max(...row.values) : undefined;
    let verdict = row.note ?? "info";
    if (row.target !== undefined) {
      const judged = row.judge === "max" ? max : p95;
      verdict = judged === undefined ? "FAIL (no data)" : judged <= row.target ? "PASS" : "FAIL";
      if (verdict !== "PASS") failed.push(row.name);
    }
    const target = row.target === undefined ? "-" : `${row.judge === "max" ? "max" : "p95"} <= ${row.target} ${row.unit}`;
    return [row.name, String(row.values.length), fmt(median(row.values)), fmt(p95), fmt(max), target, verdict];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const render = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return { text: [render(header), widths.map((w) => "-".repeat(w)).join("  "), ...lines.map(render)].join("\n"), failed };
}

function stageMedians(turns: TurnSample[]): string {
  const names = ["endpointMs", "asrMs", "asrToDialogQueueMs", "inputToDialogQueueMs", "dialogMs", "toolMs", "dialogToTtsQueueMs", "ttsMs", "ingressMs"];
  return names
    .map((name) => {
      const values = defined(turns.map((t) => t.ingress?.stages[name]));
      return values.length ? `${name.replace(/Ms$/, "")} ${fmt(median(values))}` : undefined;
    })
    .filter(Boolean)
    .join(", ");
}

function machine(): string {
  const cpus = os.cpus();
  return `${cpus.length} x ${cpus[0]?.model.trim() ?? "cpu"}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.type()} ${os.release()}, node ${process.version}, load avg ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}`;
}

async function main(): Promise<void> {
  const options = parse();
  const startedAt = Date.now();
  const loadBefore = machine();
  console.log(`starting nats, redis and the five services...`);
  // Cold calls empty the Redis cache to have the greeting synthesized; the tts replica's own copy would answer
  // instead, so it is off when there are cold calls (warm greetings then come from Redis: ~1 round trip slower).
  const env = options.cold > 0 ? { TTS_MEMORY_CACHE_MB: "0", ...options.env } : options.env;
  const [system, speech] = await Promise.all([startSystem({ env }), synthesize("order status", { engine: "flite", voice: "slt" })]);
  const tap = await startTap(system.twilioUrl);
  const asrReady = system.services.asr.logs.find((l) => l.msg === "asr engines ready");
  const pipeline = `asr ${String(asrReady?.engines ?? "?")} with VAD ${String(asrReady?.vad ?? "?")}, tts ${options.env.TTS_ENGINES ?? process.env.TTS_ENGINES ?? "flite (default)"}`;
  const results: CallResult[] = [];
  try {
    for (let i = 0; i < options.cold; i++) {
      const flushed = flushCaches(system);
      const result = await runCall(system, tap, speech, i, true);
      console.log(`call ${i + 1}/${options.calls} (cold, ${flushed} cache keys flushed): ${summary(result)}`);
      results.push(result);
    }
    let next = options.cold;
    const worker = async (slot: number) => {
      // Spread the first calls out a little, as real calls arrive.
      await new Promise((r) => setTimeout(r, slot * 750));
      while (next < options.calls) {
        const i = next++;
        const result = await runCall(system, tap, speech, i, false);
        console.log(`call ${i + 1}/${options.calls} (warm): ${summary(result)}`);
        results.push(result);
      }
    };
    await Promise.all(Array.from({ length: Math.min(options.concurrency, options.calls - options.cold) }, (_, slot) => worker(slot)));
  } finally {
    await tap.close();
    await system.stop();
    if (options.logs) {
      await mkdir(options.logs, { recursive: true });
      for (const [name, service] of Object.entries(system.services)) {
        await writeFile(path.join(options.logs, `${name}.jsonl`), service.logs.map((l) => JSON.stringify(l)).join("\n") + "\n");
      }
    }
  }

  const cold = results.filter((r) => r.cold);
  const warm = results.filter((r) => !r.cold);
  const turns = results.flatMap((r) => r.turns);
  const keypad = turns.filter((t) => t.kind === "keypad");
  const spoken = turns.filter((t) => t.kind === "speech");
  const lookups = keypad.filter((t) => t.input.endsWith("#"));
  const menuKeys = keypad.filter((t) => !t.input.endsWith("#"));
  const rows: Row[] = [
    { name: "(a) greeting: start sent -> first media at caller, warm", values: defined(warm.map((r) => r.greetingCallerMs)), unit: "ms", target: TARGETS.greetingMs },
    { name: "    ingress: start -> first frame sent, warm", values: defined(warm.map((r) => r.greetingIngressMs)), unit: "ms" },
    { name: "    record turn latencyMs (dialog start -> first frame), warm", values: defined(warm.map((r) => r.greeting?.latencyMs)), unit: "ms" },
    { name: "    tts stage of the greeting, warm (cache hit)", values: defined(warm.map((r) => r.greeting?.stages.ttsMs)), unit: "ms" },
    { name: "(a) greeting: start sent -> first media at caller, cold", values: defined(cold.map((r) => r.greetingCallerMs)), unit: "ms", note: "info (TTS cache miss)" },
    { name: "    ingress: start -> first frame sent, cold", values: defined(cold.map((r) => r.greetingIngressMs)), unit: "ms", note: "info" },
    { name: "    record turn latencyMs (dialog start -> first frame), cold", values: defined(cold.map((r) => r.greeting?.latencyMs)), unit: "ms" },
    { name: "    tts stage of the greeting, cold (synthesized)", values: defined(cold.map((r) => r.greeting?.stages.ttsMs)), unit: "ms" },
    { name: "(b) barge-in: speech onset -> clear at caller", values: defined(results.map((r) => r.clearMs)), unit: "ms", target: TARGETS.clearMs },
    { name: "    ingress: asr STARTED -> clear sent", values: defined(results.map((r) => r.ingressClearMs)), unit: "ms" },
    { name: "(c) cut-turn audio after clear, bytes per call", values: defined(results.map((r) => r.leakedBytes)), unit: "B", target: TARGETS.leakedBytes, judge: "max" },
    { name: "(d) keypad turns: last key -> first audio at caller", values: keypad.map((t) => t.callerMs), unit: "ms" },
    { name: "    ingress: last key -> first frame sent", values: defined(keypad.map((t) => t.ingress?.latencyMs)), unit: "ms" },
    { name: "    12345# (lookup_order, answer synthesized), caller", values: lookups.map((t) => t.callerMs), unit: "ms" },
    { name: "    1 (prompt from the TTS cache), caller", values: menuKeys.map((t) => t.callerMs), unit: "ms" },
    { name: "(d) spoken turns: speech end -> first audio at caller", values: spoken.map((t) => t.callerMs), unit: "ms" },
    { name: "    ingress: speech end -> first frame sent", values: defined(spoken.map((t) => t.ingress?.latencyMs)), unit: "ms" },
    { name: "    of which endpointing silence (asr)", values: defined(spoken.map((t) => t.ingress?.stages.endpointMs)), unit: "ms" },
  ];
  const { text, failed } = table(rows);
  const errors = results.filter((r) => r.error);
  console.log(`\nPlayback and barge-in latency: ${results.length} calls (${cold.length} cold, ${warm.length} warm, up to ${options.concurrency} at once), ${((Date.now() - startedAt) / 1000).toFixed(0)} s`);
  console.log(`machine: ${loadBefore}`);
  console.log(`pipeline: ${pipeline}`);
  if (Object.keys(options.env).length) console.log(`service env: ${JSON.stringify(options.env)}`);
  console.log(`\n${text}\n`);
  console.log(`stage medians, keypad turns (ms): ${stageMedians(keypad) || "-"}`);
  console.log(`stage medians, spoken turns (ms): ${stageMedians(spoken) || "-"}`);
  console.log(`greeting stages, cold (ms): ${cold.map((r) => JSON.stringify(r.greeting?.stages ?? {})).join(" ") || "-"}`);
  for (const r of errors) console.log(`call ${r.index + 1} (${r.callSid}) failed: ${r.error}`);
  if (options.json) await writeFile(options.json, JSON.stringify({ machine: loadBefore, pipeline, options, results }, null, 1));
  const ok = failed.length === 0 && errors.length === 0;
  console.log(ok ? "\nall targets met" : `\nNOT MET: ${[...failed, ...(errors.length ? [`${errors.length} call(s) failed`] : [])].join("; ")}`);
  process.exitCode = ok ? 0 : 1;
}

function summary(r: CallResult): string {
  const turns = r.turns.map((t) => `${t.kind} ${t.callerMs}`).join(", ");
  return `greeting ${fmt(r.greetingCallerMs)} ms, clear ${fmt(r.clearMs)} ms, leaked ${fmt(r.leakedBytes)} B, turns [${turns}]${r.error ? `, ERROR ${r.error}` : ""}`;
}

main().catch((error) => {
  console.error(error instanceof Error ? error.stack : error);
  process.exit(1);
});
