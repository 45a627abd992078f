#!/usr/bin/env node
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import { TwilioCallSimulator, type BotTurn } from "./simulator.js";
import { synthesize, writeWav, type SpeechEngine } from "./synthesize.js";

const HELP = `Places a simulated Twilio call against a running voicebot.

usage: pnpm call [options] [--say "text" | --dtmf KEYS]...

  --url URL        the bot's Twilio stream (default $INGRESS_URL or ws://127.0.0.1:8080/twilio)
  --say TEXT       speak TEXT (synthesized locally), then wait for the bot's reply
  --dtmf KEYS      press KEYS (0-9 * #), then wait for the bot's reply
                   --say and --dtmf repeat and run in the order given, after the greeting
  --voice NAME     voice of the caller (flite: slt, kal, awb, rms; espeak-ng: en-us ...) (default slt)
  --engine NAME    flite or espeak-ng (default flite)
  --param K=V      a TwiML <Parameter> sent in start.customParameters (repeatable), e.g. --param agent=support
  --noise DBFS     a phone line's hiss under all the caller sends, at this RMS level (e.g. -65; default none)
  --out DIR        save the bot's audio: turn-<n>.wav per turn and call.wav
  --record         print the call record (GET /v1/calls/<callSid>) at the end (sends $INGRESS_API_TOKEN if set)
  --timeout MS     longest wait for each bot turn (default 20000)
  -h, --help       this text

example: pnpm call --dtmf 1 --dtmf 12345#`;

interface Step {
  kind: "say" | "dtmf";
  value: string;
}

interface RecordLine {
  role: string;
  text: string;
  source?: string;
}

interface CallRecordView {
  state?: string;
  transcript?: RecordLine[];
}

class UsageError extends Error {}

/** `--noise -65` as `--noise=-65`: parseArgs takes a value that starts with a dash for an option. */
function joinNegativeValues(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--noise" && /^-\d/.test(argv[i + 1] ?? "")) out.push(`--noise=${argv[++i]}`);
    else out.push(argv[i]);
  }
  return out;
}

function parse(argv: string[]) {
  const { values, tokens } = parseArgs({
    args: joinNegativeValues(argv),
    allowPositionals: false,
    tokens: true,
    options: {
      url: { type: "string" },
      say: { type: "string", multiple: true },
      dtmf: { type: "string", multiple: true },
      voice: { type: "string" },
      engine: { type: "string" },
      param: { type: "string", multiple: true },
      noise: { type: "string" },
      out: { type: "string" },
      record: { type: "boolean" },
      timeout: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  const steps: Step[] = [];
  for (const token of tokens ?? []) {
    if (token.kind !== "option" || (token.name !== "say" && token.name !== "dtmf")) continue;
    const value = token.value ?? "";
    if (token.name === "dtmf" && !/^[0-9*#]+$/.test(value)) throw new UsageError(`--dtmf ${JSON.stringify(value)}: keys are 0-9, * and #`);
    if (token.name === "say" && value.trim() === "") throw new UsageError("--say needs some text");
    steps.push({ kind: token.name, value });
  }
  const url = values.url ?? process.env.INGRESS_URL ?? "ws://127.0.0.1:8080/twilio";
  try {
    const parsed = new URL(url);
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") throw new Error();
  } catch {
    throw new UsageError(`--url ${JSON.stringify(url)} is not a ws:// or wss:// URL`);
  }
  const engine = values.engine ?? "flite";
  if (engine !== "flite" && engine !== "espeak-ng") throw new UsageError(`--engine must be flite or espeak-ng`);
  const customParameters: Record<string, string> = {};
  for (const pair of values.param ?? []) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new UsageError(`--param ${JSON.stringify(pair)} must be key=value`);
    customParameters[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const lineNoiseDbfs = values.noise === undefined ? undefined : Number(values.noise);
  if (lineNoiseDbfs !== undefined && !(lineNoiseDbfs >= -90 && lineNoiseDbfs <= -20)) throw new UsageError("--noise must be a level in dBFS from -90 to -20");
  const timeoutMs = values.timeout === undefined ? 20_000 : Number(values.timeout);
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new UsageError("--timeout must be a positive number of ms");
  return {
    help: values.help ?? false,
    url,
    steps,
    engine: engine as SpeechEngine,
    voice: values.voice ?? (engine === "flite" ? "slt" : undefined),
    customParameters,
    lineNoiseDbfs,
    out: values.out,
    record: values.record ?? false,
    timeoutMs,
  };
}

/** http(s)://host:port/v1/calls/<callSid>, from the stream URL. */
function recordUrl(streamUrl: string, callSid: string): string {
  const url = new URL(streamUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = `/v1/calls/${callSid}`;
  url.search = "";
  return url.toString();
}

async function fetchRecord(url: string): Promise<CallRecordView | undefined> {
  try {
    // The ingress asks for its API token when it has one (INGRESS_API_TOKEN): the same variable here.
    const token = process.env.INGRESS_API_TOKEN;
    const res = await fetch(url, { signal: AbortSignal.timeout(3_000), headers: token ? { authorization: `Bearer ${token}` } : {} });
    return res.ok ? ((await res.json()) as CallRecordView) : undefined;
  } catch {
    return undefined;
  }
}

async function main(argv: string[]): Promise<number> {
  let options: ReturnType<typeof parse>;
  try {
    options = parse(argv);
  } catch (error) {
    console.error(`error: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (options.help) {
    console.log(HELP);
    return 0;
  }

  // Synthesize every utterance first, so engine problems show before the call is placed.
  const speech = new Map<string, Uint8Array>();
  for (const step of options.steps) {
    if (step.kind === "say" && !speech.has(step.value)) {
      speech.set(step.value, await synthesize(step.value, { engine: options.engine, voice: options.voice }));
    }
  }
  if (options.out) await mkdir(options.out, { recursive: true });

  const sim = new TwilioCallSimulator({ url: options.url, customParameters: options.customParameters, lineNoiseDbfs: options.lineNoiseDbfs });
  const recordAt = recordUrl(options.url, sim.callSid);
  let botLinesShown = 0;
  let callerLinesShown = 0;
  const latencies: string[] = [];

  // Prints what the record says the bot (and the recognizer) made of this turn; audio length if no record.
  const showTurn = async (turn: BotTurn, label: string) => {
    const record = await fetchRecord(recordAt);
    const lines = record?.transcript ?? [];
    const callerLines = lines.filter((l) => l.role === "caller").slice(callerLinesShown);
    callerLinesShown += callerLines.length;
    for (const line of callerLines) console.log(`           (heard as${line.source ? ` ${line.source}` : ""}: "${line.text}")`);
    const botLines = lines.filter((l) => l.role === "bot").slice(botLinesShown);
    botLinesShown += botLines.length;
    const seconds = (turn.audio.length / 8000).toFixed(1);
    const text = botLines.length > 0 ? botLines.map((l) => `"${l.text}"`).join(" ") : "(no transcript)";
    console.log(`  bot    : ${text}`);
    console.log(`           ${label} ${turn.latencyMs} ms, ${seconds} s of audio${turn.clearedMs > 0 ? `, ${turn.clearedMs.toFixed(0)} ms cleared` : ""}`);
    latencies.push(`${turn.index === 0 ? "greeting" : `turn ${turn.index}`} ${turn.latencyMs}`);
    if (options.out) await writeWav(path.join(options.out, `turn-${turn.index}.wav`), turn.audio);
  };

  const onSignal = () => void (sim.isConnected ? sim.hangUp() : Promise.resolve()).finally(() => process.exit(130));
  process.once("SIGINT", onSignal);

  let failure: string | undefined;
  console.log(`calling ${options.url} (callSid ${sim.callSid})`);
  try {
    await sim.connect();
    await showTurn(await sim.waitForBotTurn({ timeoutMs: options.timeoutMs }), "greeting: first audio after");
    for (const [i, step] of options.steps.entries()) {
      if (sim.isClosed) {
        failure = `the bot ended the call before step ${i + 1} of ${options.steps.length}`;
        break;
      }
      if (step.kind === "dtmf") {
        console.log(`  caller : [keys ${step.value}]`);
        await sim.pressKeys(step.value);
      } else {
        console.log(`  caller : "${step.value}"`);
        await sim.say(speech.get(step.value)!);
      }
      await showTurn(await sim.waitForBotTurn({ timeoutMs: options.timeoutMs }), "latency");
    }
  } catch (error) {
    failure = (error as Error).message;
    if (!sim.isConnected) failure += " (is voicebot running? pnpm start)";
  }

  if (sim.isConnected) {
    const close = sim.isClosed ? sim.closeDetails! : await sim.hangUp();
    console.log(close.by === "server" ? `the bot ended the call (close code ${close.code})` : "caller hung up");
  }
  if (latencies.length > 0) console.log(`latency per turn (ms): ${latencies.join(" | ")}`);
  if (sim.protocolErrors.length > 0) console.log(`protocol errors from the bot: ${sim.protocolErrors.join("; ")}`);
  if (options.out && sim.isConnected) {
    await writeWav(path.join(options.out, "call.wav"), sim.botAudio());
    console.log(`bot audio saved in ${options.out}`);
  }
  if (options.record && sim.isConnected) {
    // The record is marked ended a moment after the socket closes.
    let record: CallRecordView | undefined;
    for (let i = 0; i < 20; i++) {
      record = await fetchRecord(recordAt);
      if (record?.state === "ended") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    console.log(record ? JSON.stringify(record, null, 2) : `no call record at ${recordAt}`);
  }
  process.off("SIGINT", onSignal);
  if (failure) {
    console.error(`error: ${failure}`);
    return 1;
  }
  return 0;
}

const code = await main(process.argv.slice(2)).catch((error: Error) => {
  console.error(`error: ${error.message}`);
  return 1;
});
// Explicit exit: idle keep-alive HTTP sockets must not hold the finished call open (stdout to a pipe is synchronous).
process.exit(code);
