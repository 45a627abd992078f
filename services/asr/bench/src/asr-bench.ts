// bench:asr — accuracy and latency of the asr service on synthesized telephone speech, and how many calls one
// core holds with the VAD on. Run after a build: `node services/asr/bench/dist/asr-bench.js [options]`.
//
//   --quick               2 voices, 1 speed, 3 SNRs and a short capacity run (a smoke test, ~1 min)
//   --concurrency <n>     calls streamed at once (default: 6 per CPU; the pocketsphinx engine needs ~60 ms
//                         of CPU per second of call, and its process spawns block the service when starved)
//   --capacity-calls <n>  calls in the VAD capacity runs (default 600)
//   --skip-service        only the VAD capacity runs
//   --skip-capacity       only the service run
//   --json <file>         also write the figures as JSON
//   --verbose             list every utterance that was not recognized exactly
//   --service-env K=V     extra environment for the asr process (repeatable), e.g. ASR_VAD=energy
//   --engine-only         also decode every clip with pocketsphinx directly (no VAD, no service), for comparison
//   --digits-state        pocketsphinx on the order-number state: digit strings with and without the state's
//                         phrases in its grammar, and those phrases ("agent") said there

import { writeFile } from "node:fs/promises";
import os from "node:os";
import { parseArgs } from "node:util";
import { cpuPerCallSecond, measureCapacity, type CapacityResult } from "./capacity.js";
import { buildCalls, conditions, defaultCacheDir, SNRS, SPEEDS, VOICES, type Clip } from "./dataset.js";
import { ErrorRate, ms, normalizeWords, pct, percentile, table } from "./scoring.js";
import { runDigitsState, runEngineOnly } from "./engine-only.js";
import { runServiceBench, type ServiceRunResult, type UtteranceOutcome } from "./service-run.js";

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    concurrency: { type: "string" },
    "capacity-calls": { type: "string", default: "600" },
    "skip-service": { type: "boolean", default: false },
    "skip-capacity": { type: "boolean", default: false },
    json: { type: "string" },
    verbose: { type: "boolean", default: false },
    "engine-only": { type: "boolean", default: false },
    "digits-state": { type: "boolean", default: false },
    "service-env": { type: "string", multiple: true, default: [] },
  },
});

const log = (text: string) => process.stderr.write(`${text}\n`);

function machine(): string {
  const cpus = os.cpus();
  return `${cpus[0]?.model.trim() ?? "unknown CPU"}, ${cpus.length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`;
}

/** Other work on the machine skews every figure: the load average is printed with them. */
const load = (): string => os.loadavg().map((l) => l.toFixed(1)).join(" ");

interface Summary {
  phrases: ErrorRate;
  digits: ErrorRate;
  /** Digit strings as word sequences: WER over every utterance. */
  all: ErrorRate;
}

const summary = (): Summary => ({ phrases: new ErrorRate(), digits: new ErrorRate(), all: new ErrorRate() });

function score(outcomes: UtteranceOutcome[], key: (o: UtteranceOutcome) => string): Map<string, Summary> {
  const groups = new Map<string, Summary>();
  for (const o of outcomes) {
    const group = groups.get(key(o)) ?? summary();
    groups.set(key(o), group);
    const { kind, reference } = o.utterance.clip;
    if (kind === "phrase") {
      group.phrases.add(normalizeWords(reference), normalizeWords(o.hypothesis));
      group.all.add(normalizeWords(reference), normalizeWords(o.hypothesis));
    } else {
      const hyp = o.hypothesis.replace(/\D/g, "");
      group.digits.add([...reference], [...hyp]);
      group.all.add([...reference], [...hyp]);
    }
  }
  return groups;
}

function reportService(run: ServiceRunResult, concurrency: number): Record<string, unknown> {
  const { outcomes } = run;
  const overall = score(outcomes, () => "all").get("all")!;
  const startDelays = outcomes.filter((o) => o.startedAtMs !== undefined).map((o) => o.startedAtMs! - o.onsetAtMs);
  const finalDelays = (kind: string) =>
    outcomes.filter((o) => o.finalReceivedAtMs !== undefined && o.utterance.clip.kind === kind).map((o) => o.finalReceivedAtMs! - o.speechEndAtMs);
  const decode = outcomes.flatMap((o) => o.finals.map((f) => Number(f.finalAtMs) - Number(f.speechEndMs) - f.endpointWaitMs));
  const missed = outcomes.filter((o) => o.finals.length === 0).length;
  if (args.verbose) {
    for (const o of outcomes) {
      const { kind, reference } = o.utterance.clip;
      const right = kind === "digits" ? o.hypothesis.replace(/\D/g, "") === reference : normalizeWords(o.hypothesis).join(" ") === normalizeWords(reference).join(" ");
      const slow = o.finals.some((f) => Number(f.finalAtMs) - Number(f.speechEndMs) - f.endpointWaitMs > 500);
      if (right && !slow) continue;
      const c = o.call.condition;
      const finals = o.finals
        .map((f) => `"${f.text}" (${f.confidence.toFixed(2)}, utt ${f.utteranceId}, wait ${f.endpointWaitMs} ms, decode ${Number(f.finalAtMs) - Number(f.speechEndMs) - f.endpointWaitMs} ms)`)
        .join(", ");
      console.log(`  ${c.voice.name} ${c.speed} ${c.snr}: "${reference}" → ${finals || `no final (${o.startedAtMs === undefined ? "no STARTED" : "STARTED: too short?"})`}`);
    }
  }
  const split = outcomes.filter((o) => o.finals.length > 1).length;
  // The service's own view, from its /metrics: counters summed over labels, histograms as means.
  const sample = (name: string) =>
    run.metricsText
      .split("\n")
      .filter((l) => l.startsWith(name) && !l.startsWith(`${name}_`))
      .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
  const mean = (name: string) => sample(`${name}_sum`) / sample(`${name}_count`);
  const engineErrors = sample("voicebot_asr_engine_errors_total");
  const loopLagP99 = sample("nodejs_eventloop_lag_p99_seconds") * 1000;
  const vadLag = mean("voicebot_asr_vad_lag_seconds") * 1000;
  const serviceStartDelay = mean("voicebot_asr_speech_start_delay_seconds") * 1000;

  console.log(`\n== asr service: ${outcomes.length} utterances in ${run.outcomes.length ? new Set(outcomes.map((o) => o.call)).size : 0} calls, ${concurrency} at a time, ${(run.wallMs / 1000).toFixed(0)} s`);
  console.log(
    table([
      ["measure", "value"],
      ["WER, phrases (in-grammar)", pct(overall.phrases.rate)],
      ["WER, all (digit = word)", pct(overall.all.rate)],
      ["phrases exactly right", pct(overall.phrases.exactRate)],
      ["digit strings exactly right", pct(overall.digits.exactRate)],
      ["digit error rate", pct(overall.digits.rate)],
      ["utterances with no final", String(missed)],
      ["utterances split in two or more", String(split)],
      ["STARTEDs / finals outside any utterance", `${run.strayStarts} / ${run.strayFinals}`],
      ["speech onset → STARTED p50 / p95", `${ms(percentile(startDelays, 50))} / ${ms(percentile(startDelays, 95))}`],
      ["  service's view: onset frame → STARTED, mean", ms(serviceStartDelay)],
      ["end of speech → final, phrases p50 / p95", `${ms(percentile(finalDelays("phrase"), 50))} / ${ms(percentile(finalDelays("phrase"), 95))}`],
      ["end of speech → final, digits p50 / p95", `${ms(percentile(finalDelays("digits"), 50))} / ${ms(percentile(finalDelays("digits"), 95))}`],
      ["  of which decoding (after endpoint) p50 / p95", `${ms(percentile(decode, 50))} / ${ms(percentile(decode, 95))}`],
      ["empty finals from engine failures", String(engineErrors)],
      ["asr process CPU per call-second", `${((run.serviceCpuMs / run.callSeconds) || 0).toFixed(2)} ms`],
      ["pocketsphinx processes' CPU per call-second", `${((run.childCpuMs / run.callSeconds) || 0).toFixed(2)} ms`],
      ["asr event loop lag p99 / VAD batch lag mean", `${ms(loopLagP99)} / ${ms(vadLag)}`],
      ["load average before / after", `${run.loadBefore} / ${run.loadAfter}`],
    ]),
  );

  const byVoice = score(outcomes, (o) => o.call.condition.voice.name);
  const bySnr = (voice: string, snr: string) => score(outcomes.filter((o) => o.call.condition.voice.name === voice && o.call.condition.snr === snr), () => "x").get("x");
  console.log("\nWER of phrases / digit strings exactly right, by voice and SNR:");
  console.log(
    table([
      ["voice", ...SNRS, "all"],
      ...[...byVoice.keys()].map((voice) => [
        voice,
        ...SNRS.map((snr) => {
          const s = bySnr(voice, snr);
          return s ? `${pct(s.phrases.rate, 0)} / ${pct(s.digits.exactRate, 0)}` : "–";
        }),
        `${pct(byVoice.get(voice)!.phrases.rate, 0)} / ${pct(byVoice.get(voice)!.digits.exactRate, 0)}`,
      ]),
    ]),
  );
  const bySnrAll = score(outcomes, (o) => o.call.condition.snr);
  const bySpeed = score(outcomes, (o) => o.call.condition.speed);
  const started = (filter: (o: UtteranceOutcome) => boolean) => outcomes.filter((o) => filter(o) && o.startedAtMs !== undefined).map((o) => o.startedAtMs! - o.onsetAtMs);
  const startedBy = (kind: "snr" | "speed", key: string) => started((o) => o.call.condition[kind] === key);
  console.log("\nBy SNR and by speed:");
  console.log(
    table([
      ["condition", "WER phrases", "digits exact", "digit errors", "onset → STARTED p50 / p95"],
      ...[...bySnrAll.entries()].map(([k, s]) => [k, pct(s.phrases.rate), pct(s.digits.exactRate), pct(s.digits.rate), `${ms(percentile(startedBy("snr", k), 50))} / ${ms(percentile(startedBy("snr", k), 95))}`]),
      ...[...bySpeed.entries()].map(([k, s]) => [k, pct(s.phrases.rate), pct(s.digits.exactRate), pct(s.digits.rate), `${ms(percentile(startedBy("speed", k), 50))} / ${ms(percentile(startedBy("speed", k), 95))}`]),
    ]),
  );
  return {
    utterances: outcomes.length,
    concurrency,
    wallSeconds: Math.round(run.wallMs / 1000),
    werPhrases: overall.phrases.rate,
    werAll: overall.all.rate,
    phrasesExact: overall.phrases.exactRate,
    digitsExact: overall.digits.exactRate,
    digitErrorRate: overall.digits.rate,
    missed,
    split,
    strayFinals: run.strayFinals,
    strayStarts: run.strayStarts,
    startedP50: percentile(startDelays, 50),
    startedP95: percentile(startDelays, 95),
    finalPhrasesP50: percentile(finalDelays("phrase"), 50),
    finalPhrasesP95: percentile(finalDelays("phrase"), 95),
    finalDigitsP50: percentile(finalDelays("digits"), 50),
    finalDigitsP95: percentile(finalDelays("digits"), 95),
    decodeP50: percentile(decode, 50),
    decodeP95: percentile(decode, 95),
    engineErrors,
    eventLoopLagP99: loopLagP99,
    serviceStartDelayMean: serviceStartDelay,
    vadLagMean: vadLag,
    loadBefore: run.loadBefore,
    loadAfter: run.loadAfter,
    serviceCpuMsPerCallSecond: run.serviceCpuMs / run.callSeconds,
    decoderCpuMsPerCallSecond: run.childCpuMs / run.callSeconds,
    byVoice: Object.fromEntries([...byVoice].map(([k, s]) => [k, { werPhrases: s.phrases.rate, digitsExact: s.digits.exactRate }])),
    bySnr: Object.fromEntries(
      [...bySnrAll].map(([k, s]) => [
        k,
        { werPhrases: s.phrases.rate, digitsExact: s.digits.exactRate, digitErrorRate: s.digits.rate, startedP50: percentile(startedBy("snr", k), 50), startedP95: percentile(startedBy("snr", k), 95) },
      ]),
    ),
    bySpeed: Object.fromEntries([...bySpeed].map(([k, s]) => [k, { werPhrases: s.phrases.rate, digitsExact: s.digits.exactRate }])),
  };
}

async function reportCapacity(clips: Clip[], calls: number, quick: boolean): Promise<Record<string, unknown>> {
  const warmUpMs = 2000;
  const measureMs = quick ? 5000 : 8000;
  const run = async (vad: "silero" | "energy" | "none", workload: "conversation" | "speech", n: number) => {
    log(`VAD capacity: ${vad}, ${workload}, ${n} calls...`);
    return measureCapacity(clips, { vad, workload, calls: n, warmUpMs, measureMs });
  };
  // Continuous speech never passes the gate: fewer calls, so one core keeps up with it.
  const speechCalls = Math.max(1, Math.round(calls / 2));
  // The harness's own cost per call does not depend on what the audio holds.
  const harness = await run("none", "conversation", calls);
  const harnessSpeech = harness;
  const silero = await run("silero", "conversation", calls);
  const sileroSpeech = await run("silero", "speech", speechCalls);
  const energy = await run("energy", "conversation", calls);
  const rows: Array<[string, CapacityResult, CapacityResult]> = [
    ["Silero + gate, conversation", silero, harness],
    ["Silero + gate, continuous speech", sileroSpeech, harnessSpeech],
    ["energy VAD, conversation", energy, harness],
  ];
  console.log(`\n== VAD capacity: calls streaming 20 ms frames at real time into one replica's VAD (${measureMs / 1000} s measured, load average ${load()})`);
  console.log(
    table([
      ["VAD, workload", "calls", "CPU per call-second", "calls per core", "model windows", "batch", "frame → decision p50 / p95", "kept up"],
      ...rows.map(([name, r, h]) => {
        const cost = cpuPerCallSecond(r, h);
        return [
          name,
          String(r.calls),
          `${cost.toFixed(3)} ms`,
          String(Math.floor(1000 / cost)),
          r.modelShare === undefined ? "–" : pct(r.modelShare, 0),
          r.batchSize === undefined ? "–" : r.batchSize.toFixed(1),
          `${ms(r.lagP50)} / ${ms(r.lagP95)}`,
          pct(r.keptUp, 1),
        ];
      }),
    ]),
  );
  console.log(`(harness alone: ${(harness.cpuMs / ((harness.calls * harness.measuredMs) / 1000)).toFixed(3)} ms per call-second, subtracted)`);
  const figure = (r: CapacityResult, h: CapacityResult) => ({
    calls: r.calls,
    cpuMsPerCallSecond: cpuPerCallSecond(r, h),
    callsPerCore: Math.floor(1000 / cpuPerCallSecond(r, h)),
    modelShare: r.modelShare,
    batchSize: r.batchSize,
    lagP50: r.lagP50,
    lagP95: r.lagP95,
    keptUp: r.keptUp,
  });
  return { conversation: figure(silero, harness), continuousSpeech: figure(sileroSpeech, harnessSpeech), energy: figure(energy, harness) };
}

async function main(): Promise<void> {
  const quick = args.quick!;
  const started = Date.now();
  const list = quick ? conditions(VOICES.filter((v) => v.name === "flite slt" || v.name === "espeak en-us"), SPEEDS.slice(0, 1), SNRS) : conditions();
  log(`synthesizing ${list.length} conditions (cache: ${defaultCacheDir()})...`);
  const calls = await buildCalls(list, defaultCacheDir());
  const clips = calls.flatMap((c) => c.utterances.map((u) => u.clip));
  const results: Record<string, unknown> = { machine: machine(), date: new Date().toISOString() };
  console.log(`asr benchmark on ${results.machine as string}`);

  if (!args["skip-service"]) {
    const concurrency = Number(args.concurrency ?? Math.max(4, 6 * os.cpus().length));
    log(`streaming ${calls.length} calls through the asr service, ${concurrency} at a time...`);
    const env = Object.fromEntries(args["service-env"]!.map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
    if (Object.keys(env).length > 0) console.log(`asr service environment: ${JSON.stringify(env)}`);
    const run = await runServiceBench(calls, { concurrency, env, progress: log });
    results.service = reportService(run, concurrency);
  }
  if (args["engine-only"]) {
    log("decoding every clip with pocketsphinx directly...");
    const outcomes = await runEngineOnly(calls);
    const overall = score(outcomes, () => "all").get("all")!;
    const bySnr = score(outcomes, (o) => o.call.condition.snr);
    console.log("\n== pocketsphinx alone (each clip ±300 ms, no VAD or service):");
    console.log(
      table([
        ["condition", "WER phrases", "digits exact", "digit errors"],
        ["all", pct(overall.phrases.rate), pct(overall.digits.exactRate), pct(overall.digits.rate)],
        ...[...bySnr.entries()].map(([k, s]) => [k, pct(s.phrases.rate), pct(s.digits.exactRate), pct(s.digits.rate)]),
      ]),
    );
    results.engineOnly = { werPhrases: overall.phrases.rate, digitsExact: overall.digits.exactRate, digitErrorRate: overall.digits.rate };
  }
  if (args["digits-state"]) {
    log("decoding the order-number state's utterances with pocketsphinx directly...");
    const state = await runDigitsState(calls);
    const { phrases } = state;
    console.log("\n== pocketsphinx in the order-number state (digits grammar; each clip ±300 ms, no VAD or service):");
    console.log(
      table([
        ["grammar", "digits exact", "digit errors", "its phrases said: right / other phrase / digits / nothing"],
        ["digits alone", pct(state.digitsAlone.exactRate), pct(state.digitsAlone.rate), `— (no phrase can be heard; ${phrases.said} said)`],
        [
          "digits + the state's phrases",
          pct(state.digitsWithPhrases.exactRate),
          pct(state.digitsWithPhrases.rate),
          `${phrases.right} / ${phrases.otherPhrase} / ${phrases.digits} / ${phrases.nothing} of ${phrases.said}`,
        ],
      ]),
    );
    const asPhrase = Object.entries(state.digitsAsPhrase).sort((a, b) => b[1] - a[1]);
    console.log(`digit strings heard as a phrase: ${asPhrase.reduce((n, [, c]) => n + c, 0)} of ${state.digitsWithPhrases.count}${asPhrase.length ? ` (${asPhrase.map(([p, c]) => `${p} ${c}`).join(", ")})` : ""}`);
    console.log(
      table([
        ["line", "its phrases heard right", "digit strings taken for a phrase", "digit strings exact"],
        ...Object.entries(state.bySnr).map(([snr, n]) => [snr, `${n.right} of ${n.phrases}`, `${n.asPhrase} of ${n.digits}`, `${n.exact} of ${n.digits}`]),
      ]),
    );
    results.digitsState = {
      digitsAsPhrase: state.digitsAsPhrase,
      bySnr: state.bySnr,
      digitsAlone: { exact: state.digitsAlone.exactRate, errorRate: state.digitsAlone.rate },
      digitsWithPhrases: { exact: state.digitsWithPhrases.exactRate, errorRate: state.digitsWithPhrases.rate },
      phrases,
    };
  }
  if (!args["skip-capacity"]) {
    results.capacity = await reportCapacity(clips, quick ? 200 : Number(args["capacity-calls"]), quick);
  }
  console.log(`\nbenchmark took ${Math.round((Date.now() - started) / 1000)} s`);
  if (args.json) await writeFile(args.json, JSON.stringify(results, null, 2));
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
